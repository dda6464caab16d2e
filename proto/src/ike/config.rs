//! Configuration of an [`Endpoint`](super::Endpoint): the peers, their
//! credentials and algorithms, and the timers. The daemon builds these from
//! its TOML file; tests build them directly.

use core::fmt;
use core::str::FromStr;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::cert::TrustAnchors;
use super::group::PeerGroupConfig;
use crate::crypto::sig::{PrivateKey, PublicKey};
use crate::crypto::{Encr, Prf, Secret};
use crate::mkt::MacAlgorithm;
use crate::numbers::{DhGroup, IdType};

/// An IKE identity (RFC 7296 3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id_type: IdType,
    pub data: IdData,
}

/// An identity's octets: inline up to [`IdData::INLINE`] of them (an
/// address, a short name), in a box beyond, so that the two identities of
/// each of a peer group's thousands of members need no allocation (issue:
/// scale, memory per peer). 24 octets, as a `Vec` would be.
#[derive(Clone)]
pub struct IdData(IdRepr);

#[derive(Clone)]
enum IdRepr {
    Inline { len: u8, buf: [u8; IdData::INLINE] },
    Boxed(Box<[u8]>),
}

impl IdData {
    /// The longest identity kept inline.
    pub const INLINE: usize = 22;

    /// The octets.
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            IdRepr::Inline { len, buf } => &buf[..usize::from(*len)],
            IdRepr::Boxed(b) => b,
        }
    }
}

impl From<&[u8]> for IdData {
    fn from(v: &[u8]) -> Self {
        match u8::try_from(v.len()) {
            Ok(len) if v.len() <= Self::INLINE => {
                let mut buf = [0; Self::INLINE];
                buf[..v.len()].copy_from_slice(v);
                IdData(IdRepr::Inline { len, buf })
            }
            _ => IdData(IdRepr::Boxed(v.into())),
        }
    }
}

impl From<Vec<u8>> for IdData {
    fn from(v: Vec<u8>) -> Self {
        if v.len() <= Self::INLINE {
            IdData::from(v.as_slice())
        } else {
            IdData(IdRepr::Boxed(v.into_boxed_slice()))
        }
    }
}

impl<const N: usize> From<[u8; N]> for IdData {
    fn from(v: [u8; N]) -> Self {
        IdData::from(&v[..])
    }
}

impl std::ops::Deref for IdData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for IdData {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for IdData {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for IdData {}

impl fmt::Debug for IdData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_slice().fmt(f)
    }
}

impl Identity {
    /// ID_IPV4_ADDR or ID_IPV6_ADDR.
    pub fn from_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Identity {
                id_type: IdType::ID_IPV4_ADDR,
                data: a.octets().into(),
            },
            IpAddr::V6(a) => Identity {
                id_type: IdType::ID_IPV6_ADDR,
                data: a.octets().into(),
            },
        }
    }

    /// An address if the text is one, ID_RFC822_ADDR if it has an '@',
    /// ID_FQDN otherwise.
    pub fn parse(text: &str) -> Self {
        if let Ok(ip) = text.parse::<IpAddr>() {
            Identity::from_ip(ip)
        } else if text.contains('@') {
            Identity {
                id_type: IdType::ID_RFC822_ADDR,
                data: text.as_bytes().into(),
            }
        } else {
            Identity {
                id_type: IdType::ID_FQDN,
                data: text.as_bytes().into(),
            }
        }
    }
}

impl Identity {
    /// ID_DER_ASN1_DN from text such as `C=CH, O=Example, CN=r1`
    /// ([`super::dn::encode`]); the error names the part that is wrong.
    pub fn parse_dn(text: &str) -> Result<Self, String> {
        Ok(Identity {
            id_type: IdType::ID_DER_ASN1_DN,
            data: super::dn::encode(text)?.into(),
        })
    }

    /// Whether `other` is this identity: the same type and octets, or two
    /// distinguished names with the same attributes and values (whatever
    /// string types encode them).
    pub fn matches(&self, other: &Identity) -> bool {
        if self == other {
            return true;
        }
        self.id_type == IdType::ID_DER_ASN1_DN
            && other.id_type == IdType::ID_DER_ASN1_DN
            && super::dn::decode(&self.data).is_some_and(|a| {
                super::dn::decode(&other.data).is_some_and(|b| a.eq_ignore_ascii_case(&b))
            })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.id_type == IdType::ID_DER_ASN1_DN {
            if let Some(text) = super::dn::decode(&self.data) {
                return f.write_str(&text);
            }
        }
        match (self.id_type, self.data.len()) {
            (IdType::ID_IPV4_ADDR, 4) => {
                let o: [u8; 4] = [self.data[0], self.data[1], self.data[2], self.data[3]];
                write!(f, "{}", std::net::Ipv4Addr::from(o))
            }
            (IdType::ID_IPV6_ADDR, 16) => {
                let mut o = [0u8; 16];
                o.copy_from_slice(&self.data);
                write!(f, "{}", std::net::Ipv6Addr::from(o))
            }
            (IdType::ID_FQDN | IdType::ID_RFC822_ADDR, _) => {
                f.write_str(&String::from_utf8_lossy(&self.data))
            }
            _ => write!(f, "{}:{}", self.id_type, hex::encode(&self.data)),
        }
    }
}

/// An IKE SA cipher suite: AEAD cipher, PRF and key exchange group, named
/// like strongSwan's proposals, e.g. `aes256gcm16-prfsha256-x25519`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IkeSuite {
    pub encr: Encr,
    pub prf: Prf,
    pub group: DhGroup,
}

impl IkeSuite {
    /// aokd's default proposal: aes256gcm16-prfsha256-x25519.
    pub const DEFAULT: IkeSuite = IkeSuite {
        encr: Encr::AesGcm16 { key_bits: 256 },
        prf: Prf::HmacSha256,
        group: DhGroup::CURVE25519,
    };

    /// The name of a cipher for suite strings.
    pub fn encr_name(encr: Encr) -> &'static str {
        match encr {
            Encr::AesGcm16 { key_bits: 128 } => "aes128gcm16",
            Encr::AesGcm16 { .. } => "aes256gcm16",
            Encr::ChaCha20Poly1305 => "chacha20poly1305",
        }
    }

    pub fn prf_name(prf: Prf) -> &'static str {
        match prf {
            Prf::HmacSha256 => "prfsha256",
            Prf::HmacSha384 => "prfsha384",
            Prf::HmacSha512 => "prfsha512",
        }
    }

    pub fn group_name(group: DhGroup) -> String {
        match group {
            DhGroup::CURVE25519 => "x25519".into(),
            DhGroup::ECP_256 => "ecp256".into(),
            g => format!("group{}", g.0),
        }
    }
}

impl fmt::Display for IkeSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}-{}",
            Self::encr_name(self.encr),
            Self::prf_name(self.prf),
            Self::group_name(self.group)
        )
    }
}

/// Parses the proposal names of aokd's `ike_proposals` setting
/// (docs/configuration.md): the ciphers, PRFs and groups above, lower case,
/// no aliases. The error is a message for the operator.
impl FromStr for IkeSuite {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('-').collect();
        let [e, p, g] = parts.as_slice() else {
            return Err(format!(
                "IKE proposal {s:?} must have the form ENCR-PRF-GROUP, \
                 for example aes256gcm16-prfsha256-x25519"
            ));
        };
        let encr = match *e {
            "aes128gcm16" => Encr::AesGcm16 { key_bits: 128 },
            "aes256gcm16" => Encr::AesGcm16 { key_bits: 256 },
            "chacha20poly1305" => Encr::ChaCha20Poly1305,
            other => {
                return Err(format!(
                    "unknown IKE cipher {other:?} (expected aes128gcm16, aes256gcm16 or chacha20poly1305)"
                ))
            }
        };
        let prf = match *p {
            "prfsha256" => Prf::HmacSha256,
            "prfsha384" => Prf::HmacSha384,
            "prfsha512" => Prf::HmacSha512,
            other => {
                return Err(format!(
                    "unknown IKE PRF {other:?} (expected prfsha256, prfsha384 or prfsha512)"
                ))
            }
        };
        let group = match *g {
            "x25519" => DhGroup::CURVE25519,
            "ecp256" => DhGroup::ECP_256,
            other => {
                return Err(format!(
                    "unknown IKE group {other:?} (expected x25519 or ecp256)"
                ))
            }
        };
        Ok(IkeSuite { encr, prf, group })
    }
}

/// An inclusive TCP port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        PortRange {
            start: port,
            end: port,
        }
    }
    pub const ANY: PortRange = PortRange {
        start: 0,
        end: 65535,
    };
}

/// `179`, or `1000-2000` for a range.
impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// Share of [`Lifetimes::ike_rekey`] subtracted at random from each IKE SA's
/// rekey time: strongSwan's default `rand_time` (its `over_time`, 10% of
/// `rekey_time`). Without it two peers configured alike, or every peer of a
/// daemon that started at once, would rekey in the same second: collisions
/// (RFC 7296 2.8.2) and bursts of key exchanges.
pub const IKE_REKEY_JITTER_PERCENT: u32 = 10;

/// IKE SA and MKT lifetimes of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// Rekey the IKE SA (CREATE_CHILD_SA, RFC 7296 1.3.2, 2.18) this long
    /// after it was established, minus up to [`IKE_REKEY_JITTER_PERCENT`] at
    /// random; `None`: this side never starts one (it still answers the
    /// peer's). MKTs are not touched by an IKE SA rekey.
    pub ike_rekey: Option<Duration>,
    /// Rekey this long after creation (minus jitter).
    pub rekey: Duration,
    /// Delete the MKT this long after creation, rekeyed or not.
    pub hard: Duration,
    /// Up to this much is subtracted at random from `rekey`.
    pub jitter: Duration,
    /// How long a superseded MKT stays after its successor exists, so that
    /// both peers and every connection have switched before it goes.
    pub overlap: Duration,
    /// Run a fresh key exchange with each rekey (perfect forward secrecy).
    pub pfs: bool,
}

/// Default IKE SA rekey time: strongSwan's IKE `rekey_time` (4 h).
pub const DEFAULT_IKE_REKEY: Duration = Duration::from_secs(4 * 3600);
/// Default MKT rekey time: strongSwan's CHILD SA `rekey_time` (1 h).
pub const DEFAULT_MKT_REKEY: Duration = Duration::from_secs(3600);
/// Default MKT hard lifetime: 10% after the rekey (strongSwan's
/// `life_time`), 1 h 6 min.
pub const DEFAULT_MKT_LIFETIME: Duration = Duration::from_secs(66 * 60);
/// Default of PFS for MKT rekeys: on, so that a later compromise of the IKE
/// SA's keys does not reveal MKTs made before it (one X25519 per peer and
/// hour costs nothing).
pub const DEFAULT_PFS: bool = true;
/// Longest overlap of a superseded MKT with its successor.
pub const MAX_OVERLAP: Duration = Duration::from_secs(60);

impl Lifetimes {
    /// The lifetimes from the configured times, with the derived ones
    /// defined here once: jitter is 10% of `rekey`, and a superseded MKT
    /// stays half the time between rekey and hard lifetime, at most
    /// [`MAX_OVERLAP`], so that both ends and every connection have
    /// switched before it goes.
    pub fn new(ike_rekey: Option<Duration>, rekey: Duration, hard: Duration, pfs: bool) -> Self {
        Lifetimes {
            ike_rekey,
            rekey,
            hard,
            jitter: rekey / 10,
            overlap: Self::overlap_for(rekey, hard),
            pfs,
        }
    }

    /// The overlap of a superseded MKT for these rekey and hard times.
    pub fn overlap_for(rekey: Duration, hard: Duration) -> Duration {
        (hard.saturating_sub(rekey) / 2).min(MAX_OVERLAP)
    }
}

impl Default for Lifetimes {
    /// The daemon's defaults: IKE SA rekey after 4 h minus up to 10%; MKTs
    /// rekeyed after 1 h minus up to 10%, hard lifetime 1 h 6 min, 60 s
    /// overlap, PFS on.
    fn default() -> Self {
        Lifetimes::new(
            Some(DEFAULT_IKE_REKEY),
            DEFAULT_MKT_REKEY,
            DEFAULT_MKT_LIFETIME,
            DEFAULT_PFS,
        )
    }
}

/// One configured peer. What a peer group's members share with the
/// group's template is in [`PeerConfig::terms`], one `Arc` for all of them
/// (issue: scale, memory per peer); `PeerConfig` dereferences to it, so
/// `pc.psk` reads the terms, and writing a term through `&mut PeerConfig`
/// gives this peer a copy of its own first ([`Arc::make_mut`]).
pub struct PeerConfig {
    /// Operator's name for the peer, used in logs, events and aoctl.
    pub name: String,
    /// The peer's IKE address and UDP port.
    pub remote: SocketAddr,
    /// The local address used toward this peer (the TCP endpoint, and the
    /// default identity).
    pub local: IpAddr,
    pub local_id: Identity,
    pub remote_id: Identity,
    /// Initiate at start and after failures; a passive peer only responds.
    pub initiate: bool,
    /// Authentication, proposals, ports and lifetimes.
    pub terms: Arc<PeerTerms>,
}

/// The part of a [`PeerConfig`] that a peer group's members share with the
/// group's template.
#[derive(Clone)]
pub struct PeerTerms {
    /// The pre-shared key (RFC 7296 2.15), used when `signature` is `None`.
    pub psk: Arc<Secret>,
    /// Authentication by signature (RFC 7427) instead of the PSK, on both
    /// sides: a peer configured so refuses a PSK AUTH, and the reverse.
    pub signature: Option<Arc<SignatureAuth>>,
    /// IKE SA suites in preference order; the first one's group is used for
    /// the first KE payload.
    pub ike_suites: Arc<[IkeSuite]>,
    /// TCP-AO MAC algorithms in preference order.
    pub mac_algorithms: Arc<[MacAlgorithm]>,
    /// RFC 5925 TCP option flag wanted by this side (docs/protocol.md: options
    /// are excluded only when both sides ask for it).
    pub include_options: bool,
    /// TCP ports covered by the MKTs (for BGP: 179).
    pub tcp_ports: Arc<[PortRange]>,
    /// MKT lifetimes.
    pub lifetimes: Arc<Lifetimes>,
}

impl std::ops::Deref for PeerConfig {
    type Target = PeerTerms;
    fn deref(&self) -> &PeerTerms {
        &self.terms
    }
}

impl std::ops::DerefMut for PeerConfig {
    fn deref_mut(&mut self) -> &mut PeerTerms {
        Arc::make_mut(&mut self.terms)
    }
}

impl PeerConfig {
    /// A peer authenticated by the PSK `psk`, with aokd's defaults: the
    /// identities are the addresses, the default IKE suite, every TCP-AO
    /// MAC algorithm, options included, TCP port 179 (BGP), initiating,
    /// default lifetimes. For demos, tests and load generators, which
    /// change what they need afterwards.
    pub fn with_psk(name: &str, local: IpAddr, remote: SocketAddr, psk: Secret) -> PeerConfig {
        PeerConfig {
            name: name.to_string(),
            remote,
            local,
            local_id: Identity::from_ip(local),
            remote_id: Identity::from_ip(remote.ip()),
            initiate: true,
            terms: Arc::new(PeerTerms {
                psk: Arc::new(psk),
                signature: None,
                ike_suites: Arc::from([IkeSuite::DEFAULT]),
                mac_algorithms: Arc::from(MacAlgorithm::ALL),
                include_options: true,
                tcp_ports: Arc::from([PortRange::single(179)]),
                lifetimes: Arc::new(Lifetimes::default()),
            }),
        }
    }
}

impl fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerConfig")
            .field("name", &self.name)
            .field("remote", &self.remote)
            .field("local", &self.local)
            .field("local_id", &self.local_id)
            .field("remote_id", &self.remote_id)
            .field("psk", &"<redacted>")
            .field("signature", &self.signature)
            .field("ike_suites", &self.ike_suites)
            .field("mac_algorithms", &self.mac_algorithms)
            .field("include_options", &self.include_options)
            .field("tcp_ports", &self.tcp_ports)
            .field("initiate", &self.initiate)
            .field("lifetimes", &self.lifetimes)
            .finish()
    }
}

/// Signature authentication of one peer (docs/protocol.md, "Signature
/// authentication"): this side's private key and certificates, and how the
/// peer's key is known.
#[derive(Debug)]
pub struct SignatureAuth {
    /// Signs this side's AUTH payloads; its `Debug` prints only the scheme.
    pub private_key: PrivateKey,
    /// This side's certificate (DER) and then its intermediates, sent in
    /// CERT payloads; empty: none sent (the peer knows the public key).
    pub certificates: Vec<Vec<u8>>,
    /// The key the peer's AUTH must verify with.
    pub peer: PeerKey,
}

/// How the peer's public key is known.
#[derive(Debug)]
pub enum PeerKey {
    /// Configured as such (a raw public key).
    PublicKey(PublicKey),
    /// From the peer's CERT payloads, validated to one of these CAs at the
    /// endpoint's wall-clock time, with the peer's identity in the
    /// certificate; these CAs are also named in CERTREQ.
    Certificate(TrustAnchors),
}

/// Retransmission of requests (RFC 7296 2.1): the n-th retransmission is
/// sent `initial * 2^(n-1)` after the previous one, capped at `max`, and the
/// exchange fails after `transmissions` sends in all. The defaults send at
/// 0, 0.5, 1.5, 3.5, 7.5, 15.5 s and then every 10 s, 20 sends in all, and
/// give up after 165.5 s: the same time as strongSwan's defaults (4 s base,
/// 1.8 factor, 165 s), but with more, closer tries, so that a lossy path
/// still converges: at 30% loss per datagram a round trip fails with
/// probability 0.51, and an exchange with probability 0.51^20 < 2e-6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitConfig {
    pub initial: Duration,
    pub max: Duration,
    pub transmissions: u32,
}

impl Default for RetransmitConfig {
    fn default() -> Self {
        RetransmitConfig {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(10),
            transmissions: 20,
        }
    }
}

impl RetransmitConfig {
    /// The wait after the `sent`-th transmission (1-based).
    pub fn timeout_after(&self, sent: u32) -> Duration {
        let shift = sent.saturating_sub(1).min(20);
        self.initial.saturating_mul(1u32 << shift).min(self.max)
    }

    /// Total time from the first send until the exchange is given up.
    pub fn total(&self) -> Duration {
        (1..=self.transmissions)
            .map(|n| self.timeout_after(n))
            .sum()
    }
}

/// Default of [`EndpointConfig::cookie_threshold`]: strongSwan's
/// `cookie_threshold` (30 half-open IKE SAs in all).
pub const DEFAULT_COOKIE_THRESHOLD: usize = 30;
/// Default of [`EndpointConfig::cookie_threshold_per_source`]: strongSwan's
/// `cookie_threshold_ip` (3 half-open IKE SAs from one address).
pub const DEFAULT_COOKIE_THRESHOLD_PER_SOURCE: usize = 3;
/// Default of [`EndpointConfig::cookie_secret_lifetime`]: strongSwan's
/// `COOKIE_SECRET_SWITCH` (120 s).
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);

/// Endpoint-wide settings.
#[derive(Debug)]
pub struct EndpointConfig {
    pub peers: Vec<PeerConfig>,
    /// Peer groups ([`super::group`]): neighbours inside their prefixes
    /// become peers when they first negotiate; configured peers win.
    pub groups: Vec<PeerGroupConfig>,
    pub retransmit: RetransmitConfig,
    /// How long a responder keeps an IKE SA that has not completed IKE_AUTH.
    /// Longer than the initiator's whole retransmission schedule, so that an
    /// IKE_AUTH that needs many retransmissions over a lossy path is not cut
    /// off (strongSwan's 30 s is shorter than its own 165 s schedule). Cheap:
    /// only configured peers can open SAs, at most `half_open_per_peer` each.
    pub half_open_timeout: Duration,
    /// Half-open responder SAs kept per peer (strongSwan's block_threshold
    /// is 5). At the limit a request without a valid cookie is answered
    /// with N(COOKIE) and no state; one with a valid cookie (its source
    /// address is reachable) makes room by removing the peer's oldest
    /// half-open SA, so that forged requests never keep the peer out
    /// (docs/protocol.md, "Denial of service"). At least 1 is used.
    pub half_open_per_peer: usize,
    /// Cookies (RFC 7296 2.6) are demanded of every IKE_SA_INIT request
    /// while the endpoint holds at least this many half-open responder SAs
    /// in all; 0: always. Default [`DEFAULT_COOKIE_THRESHOLD`].
    pub cookie_threshold: usize,
    /// The same, counting the half-open SAs from the request's source
    /// address only; 0: always. Default [`DEFAULT_COOKIE_THRESHOLD_PER_SOURCE`].
    pub cookie_threshold_per_source: usize,
    /// How long a cookie secret is used before a new one is drawn (the
    /// previous one is still accepted until the next rotation).
    pub cookie_secret_lifetime: Duration,
    /// Delay before initiating again after a failed negotiation.
    pub retry_interval: Duration,
    /// Liveness check (RFC 7296 1.4, 2.4): when nothing protected has been
    /// received on an established IKE SA for this long and no request is
    /// outstanding, send an empty INFORMATIONAL request. If it is never
    /// answered (the retransmission schedule ends), the IKE SA is deleted
    /// locally, its MKTs are kept until their hard lifetime, and a peer
    /// configured to initiate is tried again after `retry_interval`.
    /// `None`: never.
    ///
    /// Default 30 s. strongSwan (`dpd_delay`) and libreswan (`dpddelay`)
    /// leave it off because IPsec traffic itself triggers renegotiation;
    /// aokd carries no traffic over its SAs and the MKT rekey comes only
    /// hourly, so without a check a peer that restarted or vanished goes
    /// unnoticed for up to an hour. 30 s is BGP's keepalive interval (a
    /// third of the 90 s hold time, RFC 4271): a dead peer is noticed
    /// after 30 s plus the 165.5 s retransmission schedule, and the cost is
    /// one small exchange per peer every 30 s, only when nothing else is
    /// received.
    pub liveness: Option<Duration>,
    /// Send the TCP-AO capability (Notify and Vendor ID). Off only to test
    /// behaviour toward a peer that does not speak aokd's profile.
    pub advertise_tcp_ao: bool,
    /// The wall-clock time at the `now` given to
    /// [`Endpoint::new`](super::Endpoint::new) (the engine reads no
    /// clock): certificates are judged valid or not at this time plus the
    /// monotonic time since. Default: the Unix epoch, at which no
    /// certificate is valid; a daemon using certificates sets it.
    pub wall_clock: SystemTime,
    /// The largest IP datagram aokd sends in an IKE SA whose peer announced
    /// IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383): counting the IP and UDP
    /// headers (RFC 7383 2.5.1), as strongSwan's `fragment_size` does. A
    /// protected message that would be larger (IKE_AUTH with a certificate
    /// chain) is sent as Encrypted Fragment payloads that fit. Default
    /// [`DEFAULT_FRAGMENT_SIZE`]; at least [`MIN_FRAGMENT_SIZE`].
    pub fragment_size: usize,
    /// Send IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT (RFC 7383 2.3),
    /// without which neither side fragments. Off only to test behaviour
    /// toward a peer without fragmentation; fragments are accepted either
    /// way.
    pub advertise_fragmentation: bool,
}

/// Default of [`EndpointConfig::fragment_size`]: 1,280 octets, the IPv6
/// minimum MTU (RFC 8200 5), strongSwan's `fragment_size` default.
pub const DEFAULT_FRAGMENT_SIZE: usize = 1280;
/// Smallest [`EndpointConfig::fragment_size`]: 576 octets, the IPv4
/// datagram every host accepts (RFC 791), as RFC 7383 2.5.1 suggests.
pub const MIN_FRAGMENT_SIZE: usize = 576;
/// Largest [`EndpointConfig::fragment_size`]: a UDP datagram's limit.
pub const MAX_FRAGMENT_SIZE: usize = 65_535;

impl EndpointConfig {
    pub fn new(peers: Vec<PeerConfig>) -> Self {
        EndpointConfig {
            peers,
            groups: Vec::new(),
            retransmit: RetransmitConfig::default(),
            half_open_timeout: Duration::from_secs(300),
            half_open_per_peer: 5,
            cookie_threshold: DEFAULT_COOKIE_THRESHOLD,
            cookie_threshold_per_source: DEFAULT_COOKIE_THRESHOLD_PER_SOURCE,
            cookie_secret_lifetime: COOKIE_SECRET_LIFETIME,
            retry_interval: Duration::from_secs(30),
            liveness: Some(Duration::from_secs(30)),
            advertise_tcp_ao: true,
            wall_clock: SystemTime::UNIX_EPOCH,
            fragment_size: DEFAULT_FRAGMENT_SIZE,
            advertise_fragmentation: true,
        }
    }

    /// The largest IKE message (the UDP payload) sent unfragmented to a
    /// peer at `remote`: [`EndpointConfig::fragment_size`] less the IPv4
    /// (20) or IPv6 (40) header and the UDP header (8).
    pub fn max_message_len(&self, remote: IpAddr) -> usize {
        let ip = match remote {
            IpAddr::V4(_) => 20,
            IpAddr::V6(_) => 40,
        };
        self.fragment_size.saturating_sub(ip + 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_octets_inline_or_boxed_are_the_same_octets() {
        for len in [0, 1, 4, 16, IdData::INLINE, IdData::INLINE + 1, 300] {
            let v: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (a, b) = (IdData::from(v.clone()), IdData::from(v.as_slice()));
            assert_eq!(a.as_slice(), &v[..], "{len}");
            assert_eq!(&*b, &v[..], "{len}");
            assert_eq!(a, b);
            assert_eq!(a.clone(), b);
            assert_eq!(
                matches!(a.0, IdRepr::Inline { .. }),
                len <= IdData::INLINE,
                "{len}"
            );
        }
        // Equality is by content, not by representation or spare octets.
        assert_ne!(IdData::from(&[1u8, 2][..]), IdData::from(&[1u8, 2, 0][..]));
        assert_eq!(std::mem::size_of::<IdData>(), 24);
    }

    #[test]
    fn suite_names_round_trip() {
        for s in [
            "aes256gcm16-prfsha256-x25519",
            "aes128gcm16-prfsha384-ecp256",
            "chacha20poly1305-prfsha512-x25519",
        ] {
            assert_eq!(s.parse::<IkeSuite>().unwrap().to_string(), s);
        }
        for bad in [
            "aes256gcm16-prfsha256",
            "des-prfsha256-x25519",
            "aes256gcm16-prfsha1-x25519",
            "aes256gcm16-prfsha256-modp2048",
            "aes256gcm16-prfsha256-curve25519",
            "AES256GCM16-prfsha256-x25519",
            "a-b-c-d",
        ] {
            assert!(bad.parse::<IkeSuite>().is_err(), "{bad}");
        }
        let e = "aes256gcm16".parse::<IkeSuite>().unwrap_err();
        assert!(e.contains("ENCR-PRF-GROUP"), "{e}");
        assert_eq!(
            IkeSuite::DEFAULT.to_string(),
            "aes256gcm16-prfsha256-x25519"
        );
    }

    #[test]
    fn retransmit_schedule() {
        let r = RetransmitConfig::default();
        assert_eq!(r.timeout_after(1), Duration::from_millis(500));
        assert_eq!(r.timeout_after(5), Duration::from_secs(8));
        assert_eq!(r.timeout_after(6), Duration::from_secs(10));
        assert_eq!(r.total(), Duration::from_millis(165_500));
    }

    #[test]
    fn identities() {
        assert_eq!(Identity::parse("192.0.2.1").id_type, IdType::ID_IPV4_ADDR);
        assert_eq!(
            Identity::parse("r1@example.net").id_type,
            IdType::ID_RFC822_ADDR
        );
        assert_eq!(Identity::parse("r1.example.net").id_type, IdType::ID_FQDN);
        assert_eq!(Identity::parse("2001:db8::1").to_string(), "2001:db8::1");
    }
}
