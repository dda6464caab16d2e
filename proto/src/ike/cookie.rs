//! Stateless responder cookies (RFC 7296 2.6) and the endpoint-wide
//! half-open accounting that decides when to demand them.
//!
//! A cookie is `<version> | HMAC-SHA256(secret, SPIi | IPi | Ni)[..16]`,
//! the construction 2.6 suggests (`<VersionIDofSecret> | Hash(Ni | IPi |
//! SPIi | <secret>)`) with the fixed-length fields first, so that the
//! variable-length nonce cannot shift them (the IP address is preceded by
//! its length). Nothing is stored per cookie: checking one recomputes it.
//!
//! The secret is drawn from the endpoint's RNG on first use and replaced
//! once it is `lifetime` old (strongSwan: 120 s, `COOKIE_SECRET_SWITCH`);
//! the previous one is kept, and its version byte selects it, so a cookie
//! handed out just before a rotation still verifies. A cookie is therefore
//! accepted for at least `lifetime` and at most twice that: after two
//! rotations (or `2 * lifetime` without any), its secret is gone. Rotation
//! happens when a cookie is made or checked, at the `now` of that input:
//! no timer, and the same inputs give the same cookies.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand_core::CryptoRngCore;
use ring::hmac;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// Octets of the truncated MAC in a cookie.
const MAC_LEN: usize = 16;
/// Octets of a cookie this endpoint makes (RFC 7296 2.6 allows 1 to 64).
pub(super) const COOKIE_LEN: usize = 1 + MAC_LEN;

struct Secret {
    version: u8,
    key: hmac::Key,
}

impl Secret {
    fn mac(&self, spi_i: u64, ip: IpAddr, ni: &[u8]) -> [u8; MAC_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&spi_i.to_be_bytes());
        match ip {
            IpAddr::V4(a) => {
                ctx.update(&[4]);
                ctx.update(&a.octets());
            }
            IpAddr::V6(a) => {
                ctx.update(&[16]);
                ctx.update(&a.octets());
            }
        }
        ctx.update(ni);
        let tag = ctx.sign();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
        out
    }
}

/// The cookie secrets: the current one (with when it was drawn) and the
/// one before it.
#[derive(Default)]
pub(super) struct CookieJar {
    current: Option<(Secret, Instant)>,
    previous: Option<Secret>,
}

impl CookieJar {
    /// Replaces the current secret when it is `lifetime` old (both when it
    /// is twice that: the previous one is then too old as well).
    fn rotate(&mut self, now: Instant, lifetime: Duration, rng: &mut dyn CryptoRngCore) {
        let next_version = match &self.current {
            None => 0,
            Some((s, drawn)) => {
                let age = now.saturating_duration_since(*drawn);
                if age < lifetime {
                    return;
                }
                let next = s.version.wrapping_add(1);
                let old = self.current.take().map(|(s, _)| s);
                self.previous = if age < lifetime.saturating_mul(2) {
                    old
                } else {
                    None
                };
                next
            }
        };
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &bytes);
        bytes.zeroize();
        self.current = Some((
            Secret {
                version: next_version,
                key,
            },
            now,
        ));
    }

    /// A cookie for the IKE_SA_INIT request with `spi_i` and `ni` from `ip`.
    pub(super) fn make(
        &mut self,
        now: Instant,
        lifetime: Duration,
        rng: &mut dyn CryptoRngCore,
        spi_i: u64,
        ip: IpAddr,
        ni: &[u8],
    ) -> Vec<u8> {
        self.rotate(now, lifetime, rng);
        let Some((s, _)) = &self.current else {
            return Vec::new();
        };
        let mut c = Vec::with_capacity(COOKIE_LEN);
        c.push(s.version);
        c.extend_from_slice(&s.mac(spi_i, ip, ni));
        c
    }

    /// Whether `cookie` is one [`CookieJar::make`] gave for these values
    /// with the current or the previous secret.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn check(
        &mut self,
        now: Instant,
        lifetime: Duration,
        rng: &mut dyn CryptoRngCore,
        cookie: &[u8],
        spi_i: u64,
        ip: IpAddr,
        ni: &[u8],
    ) -> bool {
        self.rotate(now, lifetime, rng);
        let (Some(&version), Some(mac)) = (cookie.first(), cookie.get(1..)) else {
            return false;
        };
        if mac.len() != MAC_LEN {
            return false;
        }
        let secret = [
            self.current.as_ref().map(|(s, _)| s),
            self.previous.as_ref(),
        ]
        .into_iter()
        .flatten()
        .find(|s| s.version == version);
        secret.is_some_and(|s| bool::from(s.mac(spi_i, ip, ni).ct_eq(mac)))
    }
}

/// Endpoint-wide state of the IKE_SA_INIT policy: the cookie secrets and
/// the number of half-open responder SAs, in all and by source address,
/// kept up to date by the endpoint after every input (so reading them is
/// O(log n), never a scan).
#[derive(Default)]
pub(super) struct DosState {
    pub(super) cookies: CookieJar,
    pub(super) half_open: usize,
    pub(super) half_open_by_ip: BTreeMap<IpAddr, usize>,
}

impl DosState {
    /// The half-open responder SAs from `ip`.
    pub(super) fn half_open_from(&self, ip: IpAddr) -> usize {
        self.half_open_by_ip.get(&ip).copied().unwrap_or(0)
    }

    /// A peer at `ip` went from `old` to `new` half-open SAs.
    pub(super) fn update(&mut self, ip: IpAddr, old: usize, new: usize) {
        if old == new {
            return;
        }
        self.half_open = (self.half_open + new).saturating_sub(old);
        let n = self.half_open_by_ip.entry(ip).or_insert(0);
        *n = (*n + new).saturating_sub(old);
        if *n == 0 {
            self.half_open_by_ip.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::RngCore;

    struct Rng(u64);
    impl RngCore for Rng {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1);
            self.0
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for b in dest {
                *b = (self.next_u64() >> 33) as u8;
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl rand_core::CryptoRng for Rng {}

    const LIFE: Duration = Duration::from_secs(120);

    #[test]
    fn cookies_verify_through_one_rotation_not_two() {
        let mut rng = Rng(7);
        let mut jar = CookieJar::default();
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let c = jar.make(t0, LIFE, &mut rng, 42, ip, b"nonce");
        assert_eq!(c.len(), COOKIE_LEN);
        assert!(jar.check(t0, LIFE, &mut rng, &c, 42, ip, b"nonce"));
        // Bound to SPIi, address and nonce.
        assert!(!jar.check(t0, LIFE, &mut rng, &c, 43, ip, b"nonce"));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(!jar.check(t0, LIFE, &mut rng, &c, 42, other, b"nonce"));
        assert!(!jar.check(t0, LIFE, &mut rng, &c, 42, ip, b"nonc"));
        assert!(!jar.check(t0, LIFE, &mut rng, &c[..5], 42, ip, b"nonce"));
        assert!(!jar.check(t0, LIFE, &mut rng, &[], 42, ip, b"nonce"));
        // One rotation: the previous secret still verifies.
        let t1 = t0 + LIFE + Duration::from_secs(1);
        let c1 = jar.make(t1, LIFE, &mut rng, 42, ip, b"nonce");
        assert_ne!(c1[0], c[0], "new version");
        assert!(jar.check(t1, LIFE, &mut rng, &c, 42, ip, b"nonce"));
        // Two: it does not.
        let t2 = t1 + LIFE;
        assert!(jar.check(t2, LIFE, &mut rng, &c1, 42, ip, b"nonce"));
        assert!(!jar.check(t2, LIFE, &mut rng, &c, 42, ip, b"nonce"));
        // Long idle: both secrets go at once.
        let t3 = t2 + LIFE * 3;
        let c2 = jar.make(t2, LIFE, &mut rng, 1, ip, b"n");
        assert!(!jar.check(t3, LIFE, &mut rng, &c2, 1, ip, b"n"));
    }

    #[test]
    fn half_open_accounting() {
        let mut d = DosState::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        d.update(a, 0, 3);
        d.update(b, 0, 1);
        assert_eq!(
            (d.half_open, d.half_open_from(a), d.half_open_from(b)),
            (4, 3, 1)
        );
        d.update(a, 3, 0);
        assert_eq!((d.half_open, d.half_open_from(a)), (1, 0));
        assert!(!d.half_open_by_ip.contains_key(&a));
    }
}
