//! TCP-AO traffic keys: the KDFs of RFC 5926 3.1 and the connection context
//! of RFC 5925 5.2.
//!
//! ```text
//! traffic_key = KDF_alg(Master_Key, Context, Output_Length)
//! KDF_alg     = PRF(Master_Key, i || Label || Context || Output_Length)
//!               i = 0x01 (one octet, counting blocks from 1), Label = "TCP-AO"
//!               (6 octets, no NUL), Output_Length = bits, 2 octets big-endian
//! Context     = src addr || dst addr || src port || dst port || src ISN || dst ISN
//! ```
//!
//! * KDF_HMAC_SHA1 (RFC 5926 3.1.1.1): PRF = HMAC-SHA1, Output_Length 160.
//! * KDF_AES_128_CMAC (RFC 5926 3.1.1.2): PRF = AES-CMAC-PRF-128 (RFC 4615),
//!   Output_Length 128. A master key that is not 16 octets is first reduced
//!   to `AES-CMAC(key = 0^128, Master_Key)`.
//! * For `hmac-sha256-128` (not in RFC 5926) aokd uses the same form with
//!   HMAC-SHA-256 and Output_Length 256, which is what Linux computes for an
//!   MKT whose algorithm is "hmac(sha256)".
//!
//! The SYN keys use a destination ISN of 0; the SYN-ACK and every later
//! segment use both ISNs (RFC 5925 5.2, checked by RFC 9235).

use core::fmt;

use ::hmac::Hmac;
use aes::Aes128;
use cmac::{Cmac, Mac};
use ring::hmac;
use sha1::Sha1;
use zeroize::Zeroizing;

use super::segment::Addresses;
use crate::{MacAlgorithm, Secret};

/// KDF label (RFC 5926 3.1.1).
const LABEL: &[u8; 6] = b"TCP-AO";

/// The Context of RFC 5925 5.2: 20 octets for IPv4, 44 for IPv6.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyContext {
    buf: [u8; 44],
    len: usize,
}

impl KeyContext {
    /// Builds the context from the sender's point of view: `addresses` and
    /// ports as in the segment, `src_isn` the sender's ISN, `dst_isn` the
    /// receiver's (0 for the SYN keys).
    pub fn new(
        addresses: &Addresses,
        src_port: u16,
        dst_port: u16,
        src_isn: u32,
        dst_isn: u32,
    ) -> KeyContext {
        let mut buf = [0u8; 44];
        let mut at = 0;
        let mut put = |b: &[u8]| {
            buf[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        };
        match addresses {
            Addresses::V4 { src, dst } => {
                put(src);
                put(dst);
            }
            Addresses::V6 { src, dst } => {
                put(src);
                put(dst);
            }
        }
        put(&src_port.to_be_bytes());
        put(&dst_port.to_be_bytes());
        put(&src_isn.to_be_bytes());
        put(&dst_isn.to_be_bytes());
        KeyContext { buf, len: at }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Debug for KeyContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyContext({})", hex::encode(self.as_bytes()))
    }
}

/// The keyed MAC state a traffic key prepares once.
///
/// HMAC-SHA-1 is RustCrypto's (`hmac` + `sha1`), which uses the CPU's SHA
/// extensions where it has them: about twice ring's SHA-1 on this
/// project's machines (docs/performance.md), and HMAC-SHA-1-96 is the MAC
/// every TCP-AO router supports. HMAC-SHA-256 stays with ring.
#[derive(Clone)]
enum Prepared {
    HmacSha1(Box<Hmac<Sha1>>),
    Hmac(hmac::Key),
    Cmac(Box<Cmac<Aes128>>),
}

/// A derived traffic key, ready to MAC segments. Zeroized on drop (the raw
/// octets; the prepared cipher state is owned by `ring` and `aes`), never
/// printed.
#[derive(Clone)]
pub struct TrafficKey {
    algorithm: MacAlgorithm,
    bytes: Secret,
    prepared: Prepared,
}

impl fmt::Debug for TrafficKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrafficKey")
            .field("algorithm", &self.algorithm)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl TrafficKey {
    /// Wraps traffic key octets (from [`derive_traffic_key`], or a test
    /// vector). The length must suit the algorithm: 16 octets for AES-128-CMAC;
    /// any length for the HMACs.
    pub fn from_bytes(algorithm: MacAlgorithm, bytes: &[u8]) -> Option<TrafficKey> {
        let prepared = match algorithm {
            MacAlgorithm::HmacSha1_96 => {
                Prepared::HmacSha1(Box::new(<Hmac<Sha1> as Mac>::new_from_slice(bytes).ok()?))
            }
            MacAlgorithm::HmacSha256_128 => {
                Prepared::Hmac(hmac::Key::new(hmac::HMAC_SHA256, bytes))
            }
            MacAlgorithm::AesCmac96 => {
                Prepared::Cmac(Box::new(Cmac::<Aes128>::new_from_slice(bytes).ok()?))
            }
        };
        Some(TrafficKey {
            algorithm,
            bytes: Secret::new(bytes.to_vec()),
            prepared,
        })
    }

    pub fn algorithm(&self) -> MacAlgorithm {
        self.algorithm
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_bytes()
    }

    /// Starts a MAC computation under this key.
    pub fn mac_context(&self) -> MacContext {
        match &self.prepared {
            Prepared::HmacSha1(mac) => MacContext::HmacSha1((**mac).clone()),
            Prepared::Hmac(key) => MacContext::Hmac(hmac::Context::with_key(key)),
            Prepared::Cmac(mac) => MacContext::Cmac((**mac).clone()),
        }
    }
}

/// An incremental MAC computation (HMAC-SHA-1, HMAC-SHA-256 or AES-CMAC).
// A short-lived value on the stack; boxing the CMAC state would cost an
// allocation per segment.
#[allow(clippy::large_enum_variant)]
pub enum MacContext {
    HmacSha1(Hmac<Sha1>),
    Hmac(hmac::Context),
    Cmac(Cmac<Aes128>),
}

impl MacContext {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            MacContext::HmacSha1(mac) => Mac::update(mac, data),
            MacContext::Hmac(ctx) => ctx.update(data),
            MacContext::Cmac(mac) => mac.update(data),
        }
    }

    /// The full-length tag (20, 32 or 16 octets); callers truncate.
    pub fn finish(self) -> FullTag {
        let mut tag = FullTag {
            buf: [0u8; 32],
            len: 0,
        };
        match self {
            MacContext::HmacSha1(mac) => {
                let t = mac.finalize().into_bytes();
                tag.buf[..t.len()].copy_from_slice(&t);
                tag.len = t.len();
            }
            MacContext::Hmac(ctx) => {
                let t = ctx.sign();
                let t = t.as_ref();
                tag.buf[..t.len()].copy_from_slice(t);
                tag.len = t.len();
            }
            MacContext::Cmac(mac) => {
                let t = mac.finalize().into_bytes();
                tag.buf[..t.len()].copy_from_slice(&t);
                tag.len = t.len();
            }
        }
        tag
    }
}

/// An untruncated PRF or MAC output.
pub struct FullTag {
    buf: [u8; 32],
    len: usize,
}

impl FullTag {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Output length of the KDF for an algorithm, in octets (RFC 5926 3.1.1).
pub fn traffic_key_len(algorithm: MacAlgorithm) -> usize {
    match algorithm {
        MacAlgorithm::HmacSha1_96 => 20,
        MacAlgorithm::AesCmac96 => 16,
        MacAlgorithm::HmacSha256_128 => 32,
    }
}

/// The PRF keyed with the master key (for AES-CMAC after the reduction of
/// RFC 5926 3.1.1.2).
fn kdf_prf(algorithm: MacAlgorithm, master_key: &[u8]) -> TrafficKey {
    let key = match algorithm {
        MacAlgorithm::AesCmac96 if master_key.len() != 16 => {
            // K = AES-CMAC(0^128, Master_Key): the AES-CMAC-PRF-128 of
            // RFC 4615 3 for a key that is not 128 bits.
            let zero = Cmac::<Aes128>::new(&Default::default());
            let mut reduce = zero;
            reduce.update(master_key);
            let k = Zeroizing::new(reduce.finalize().into_bytes().to_vec());
            return from_reduced(&k);
        }
        _ => master_key,
    };
    match TrafficKey::from_bytes(algorithm, key) {
        Some(k) => k,
        // Only AES-CMAC can refuse a key, and its key is 16 octets here.
        None => from_reduced(&[0u8; 16]),
    }
}

fn from_reduced(k: &[u8]) -> TrafficKey {
    let mut arr = Zeroizing::new([0u8; 16]);
    arr.copy_from_slice(&k[..16]);
    TrafficKey {
        algorithm: MacAlgorithm::AesCmac96,
        bytes: Secret::new(arr.to_vec()),
        prepared: Prepared::Cmac(Box::new(Cmac::<Aes128>::new(&(*arr).into()))),
    }
}

/// Derives a traffic key (RFC 5925 5.2 with the KDFs of RFC 5926 3.1.1).
pub fn derive_traffic_key(
    algorithm: MacAlgorithm,
    master_key: &[u8],
    context: &KeyContext,
) -> TrafficKey {
    let prf = kdf_prf(algorithm, master_key);
    let out_len = traffic_key_len(algorithm);
    let out_bits = (out_len * 8) as u16;
    let mut out = Zeroizing::new(Vec::with_capacity(out_len + 32));
    let mut i: u8 = 1;
    while out.len() < out_len {
        let mut ctx = prf.mac_context();
        ctx.update(&[i]);
        ctx.update(LABEL);
        ctx.update(context.as_bytes());
        ctx.update(&out_bits.to_be_bytes());
        out.extend_from_slice(ctx.finish().as_bytes());
        i = i.wrapping_add(1);
    }
    out.truncate(out_len);
    // The output lengths are those the MAC algorithms accept.
    TrafficKey::from_bytes(algorithm, &out).unwrap_or_else(|| from_reduced(&[0u8; 16]))
}

/// The four traffic keys of a connection from one endpoint's point of view
/// (RFC 5925 5.2).
#[derive(Debug, Clone)]
pub struct ConnectionKeys {
    pub send_syn: TrafficKey,
    pub receive_syn: TrafficKey,
    pub send_other: TrafficKey,
    pub receive_other: TrafficKey,
}

impl ConnectionKeys {
    /// `addresses` and ports as this endpoint sends them; `local_isn` is this
    /// endpoint's ISN, `remote_isn` the peer's.
    pub fn derive(
        algorithm: MacAlgorithm,
        master_key: &[u8],
        addresses: &Addresses,
        local_port: u16,
        remote_port: u16,
        local_isn: u32,
        remote_isn: u32,
    ) -> ConnectionKeys {
        let back = addresses.reversed();
        let ctx = |a: &Addresses, sp, dp, si, di| KeyContext::new(a, sp, dp, si, di);
        let k = |c: KeyContext| derive_traffic_key(algorithm, master_key, &c);
        ConnectionKeys {
            send_syn: k(ctx(addresses, local_port, remote_port, local_isn, 0)),
            receive_syn: k(ctx(&back, remote_port, local_port, remote_isn, 0)),
            send_other: k(ctx(
                addresses,
                local_port,
                remote_port,
                local_isn,
                remote_isn,
            )),
            receive_other: k(ctx(&back, remote_port, local_port, remote_isn, local_isn)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_cmac_prf_128_reduces_keys_that_are_not_16_octets() {
        // RFC 4615 4 test vectors for AES-CMAC-PRF-128 (key lengths 18, 16, 10),
        // message 000102...10 (20 octets).
        let msg: Vec<u8> = (0u8..20).collect();
        let cases = [
            (
                "000102030405060708090a0b0c0d0e0fedcb",
                "84a348a4a45d235babfffc0d2b4da09a",
            ),
            (
                "000102030405060708090a0b0c0d0e0f",
                "980ae87b5f4c9c5214f5b6a8455e4c2d",
            ),
            ("00010203040506070809", "290d9e112edb09ee141fcf64c0b72f3d"),
        ];
        for (key, want) in cases {
            let prf = kdf_prf(MacAlgorithm::AesCmac96, &hex::decode(key).unwrap());
            let mut ctx = prf.mac_context();
            ctx.update(&msg);
            assert_eq!(hex::encode(ctx.finish().as_bytes()), want, "key {key}");
        }
    }

    #[test]
    fn context_lengths() {
        let v4 = Addresses::V4 {
            src: [10, 11, 12, 13],
            dst: [172, 27, 28, 29],
        };
        let c = KeyContext::new(&v4, 59863, 179, 0xfbfbab5a, 0);
        assert_eq!(
            hex::encode(c.as_bytes()),
            "0a0b0c0dac1b1c1de9d700b3fbfbab5a00000000"
        );
        let v6 = Addresses::V6 {
            src: [0; 16],
            dst: [1; 16],
        };
        assert_eq!(KeyContext::new(&v6, 1, 2, 3, 4).as_bytes().len(), 44);
    }

    #[test]
    fn key_lengths() {
        let c = KeyContext::new(
            &Addresses::V4 {
                src: [1; 4],
                dst: [2; 4],
            },
            1,
            2,
            3,
            4,
        );
        for alg in MacAlgorithm::ALL {
            let k = derive_traffic_key(alg, b"testvector", &c);
            assert_eq!(k.as_bytes().len(), traffic_key_len(alg));
        }
    }
}
