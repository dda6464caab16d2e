//! The aokd configuration file (docs/configuration.md).
//!
//! A TOML file is first deserialized into private `Raw*` structs that mirror
//! the file (every one with `deny_unknown_fields`, so a misspelled key is an
//! error, not a silently ignored setting), and then validated into the typed
//! [`Config`]: addresses parsed, defaults filled in, algorithm names
//! resolved, relative paths made relative to the configuration file's
//! directory, and each peer's pre-shared key read from its `psk_file` (or,
//! with `auth = "pubkey"`, its certificates, private key, trust anchors
//! and CRLs read from PEM (or, for CRLs, DER) files into a
//! [`SignatureFiles`]).
//!
//! Every [`ConfigError`] names the file, the key (for example
//! `peer[1].mac_algorithms`, where `peer[0]` is the first `[[peer]]` table)
//! and, where there is one, the peer's name. The pre-shared key is held in a
//! [`Psk`], which zeroizes its memory and never prints its contents.

use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aokd_proto::mkt::MacAlgorithm;
use serde::Deserialize;
use zeroize::Zeroizing;

/// The identity and proposal types of the configuration are the IKE
/// endpoint's own: [`Identity`] (ID type and data, parsed with
/// [`parse_identity`]) and [`IkeSuite`] (an `ENCR-PRF-GROUP` proposal).
pub use aokd_proto::ike::{Identity, IkeSuite, IpPrefix, MemberIdentity};

/// Where aokd looks for its configuration when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/aokd/aokd.toml";
/// Default of `daemon.listen`.
pub const DEFAULT_LISTEN: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// Default of `daemon.port` and `peer.remote_port` (RFC 7296 2.11).
pub const DEFAULT_IKE_PORT: u16 = 500;
/// Default of `daemon.control_socket`.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/aokd/control.sock";
/// Default of `daemon.state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/aokd";
/// Default of `daemon.attach_socket`.
pub const DEFAULT_ATTACH_SOCKET: &str = "/run/aokd/attach.sock";
/// Default of `daemon.attach_socket_mode`: only root may attach sockets.
pub const DEFAULT_ATTACH_SOCKET_MODE: u32 = 0o600;
/// Default of `daemon.acquire_timeout`: how long an attached `connect()`
/// waits for a negotiation before it proceeds under the guard.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of `daemon.liveness`: an IKE SA idle this long is checked with
/// an empty INFORMATIONAL (strongSwan's usual `dpd_delay`).
pub const DEFAULT_LIVENESS: Duration = Duration::from_secs(30);
/// Default of `daemon.cookie_threshold`
/// ([`aokd_proto::ike::config::DEFAULT_COOKIE_THRESHOLD`], strongSwan's 30).
pub const DEFAULT_COOKIE_THRESHOLD: usize = aokd_proto::ike::config::DEFAULT_COOKIE_THRESHOLD;
/// Default of `daemon.cookie_threshold_per_source`
/// ([`aokd_proto::ike::config::DEFAULT_COOKIE_THRESHOLD_PER_SOURCE`],
/// strongSwan's `cookie_threshold_ip`, 3).
pub const DEFAULT_COOKIE_THRESHOLD_PER_SOURCE: usize =
    aokd_proto::ike::config::DEFAULT_COOKIE_THRESHOLD_PER_SOURCE;
/// Largest `daemon.cookie_threshold` and `cookie_threshold_per_source`:
/// more half-open SAs than that never exist (each peer holds at most 5).
pub const MAX_COOKIE_THRESHOLD: i64 = 1_000_000;
/// Default of `daemon.fragment_size`
/// ([`aokd_proto::ike::config::DEFAULT_FRAGMENT_SIZE`], 1,280: the IPv6
/// minimum MTU, strongSwan's `fragment_size`).
pub const DEFAULT_FRAGMENT_SIZE: usize = aokd_proto::ike::config::DEFAULT_FRAGMENT_SIZE;
/// Smallest `daemon.fragment_size` (576, RFC 791's datagram every host
/// accepts).
pub const MIN_FRAGMENT_SIZE: usize = aokd_proto::ike::config::MIN_FRAGMENT_SIZE;
/// Largest `daemon.fragment_size` (65,535).
pub const MAX_FRAGMENT_SIZE: usize = aokd_proto::ike::config::MAX_FRAGMENT_SIZE;
/// Default of `daemon.metrics_interval`: how often the metrics file is
/// written (node_exporter's usual scrape interval).
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(15);
/// Shortest `daemon.metrics_interval`.
pub const MIN_METRICS_INTERVAL: Duration = Duration::from_secs(1);
/// Longest `daemon.metrics_interval`.
pub const MAX_METRICS_INTERVAL: Duration = Duration::from_secs(3600);
/// Default of `peer.tcp_ports` (BGP).
pub const DEFAULT_TCP_PORTS: [u16; 1] = [179];
/// Default of `peer.ike_proposals`.
pub const DEFAULT_IKE_PROPOSAL: IkeSuite = IkeSuite::DEFAULT;
/// How long a superseded MKT stays on the sockets after its successor
/// exists (defined once, in proto: [`aokd_proto::ike::Lifetimes::overlap_for`]).
pub fn mkt_overlap(l: &Lifetimes) -> Duration {
    aokd_proto::ike::Lifetimes::overlap_for(l.mkt_rekey, l.mkt_lifetime)
}

/// Default of `peer.lifetimes.pfs` ([`aokd_proto::ike::config::DEFAULT_PFS`]).
pub const DEFAULT_PFS: bool = aokd_proto::ike::config::DEFAULT_PFS;
/// Default of `peer.lifetimes.ike_rekey` (4h).
pub const DEFAULT_IKE_REKEY: Duration = aokd_proto::ike::config::DEFAULT_IKE_REKEY;
/// Default of `peer.lifetimes.mkt_rekey` (1h).
pub const DEFAULT_MKT_REKEY: Duration = aokd_proto::ike::config::DEFAULT_MKT_REKEY;
/// Default of `peer.lifetimes.mkt_lifetime` (1h6m).
pub const DEFAULT_MKT_LIFETIME: Duration = aokd_proto::ike::config::DEFAULT_MKT_LIFETIME;

/// Longest `peer.lifetimes.ike_rekey`, `mkt_rekey` and `mkt_lifetime`
/// (30 days): far longer than any sensible key lifetime, and far enough
/// from the limits of the clock arithmetic (`Instant + Duration`) that
/// adding it, its jitter and the overlap can never overflow.
pub const MAX_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// Shortest `daemon.liveness` (5 s): a dead peer is declared after the
/// liveness interval plus the retransmission schedule (165.5 s), so a
/// shorter interval hardly detects it sooner but multiplies the traffic;
/// "off" disables the checks.
pub const MIN_LIVENESS: Duration = Duration::from_secs(5);
/// Longest `daemon.liveness` (1 h): a check less often than the default
/// MKT rekey (which proves liveness itself) detects nothing.
pub const MAX_LIVENESS: Duration = Duration::from_secs(3600);
/// Default of `daemon.retired_keys`: how long the keys of MKTs that ended
/// stay in memory for `aoctl verify --from-daemon`.
pub const DEFAULT_RETIRED_KEYS: Duration = Duration::from_secs(600);
/// Longest `daemon.retired_keys` (1 day).
pub const MAX_RETIRED_KEYS: Duration = Duration::from_secs(86_400);
/// Longest `daemon.acquire_timeout` (3 min): a negotiation has given up
/// after its retransmissions (165.5 s), so a `connect()` waiting longer
/// waits for nothing.
pub const MAX_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(180);

/// A PSK file larger than this is refused (it is surely the wrong file).
const MAX_PSK_FILE_LEN: u64 = 64 * 1024;
/// A CRL file larger than this is refused (64 MiB: some hundred thousand
/// entries; a public CA's CRL of millions is not what a router trusts).
const MAX_CRL_FILE_LEN: u64 = 64 * 1024 * 1024;
/// The shortest pre-shared key accepted, in octets. RFC 7296 2.15 asks for
/// a key as strong as the PRF's (32 octets for PRF_HMAC_SHA2_256); a key
/// of a few octets falls to an offline dictionary search over one captured
/// IKE_AUTH. 16 octets (128 bits, or a passphrase of 16 characters) is the
/// floor; `aoctl gen-psk` writes 32 random octets.
pub const MIN_PSK_LEN: usize = 16;
/// Longest peer name.
const MAX_PEER_NAME_LEN: usize = 64;
/// Longest FQDN or RFC 822 identity (the ID payload allows more, but no
/// sensible name is longer).
const MAX_IDENTITY_LEN: usize = 255;
/// `sun_path` holds 108 octets including the terminating NUL.
const MAX_SOCKET_PATH_LEN: usize = 107;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("{}: cannot read configuration: {source}", .file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrongly typed value; `message` is
    /// toml's own, with line and column.
    #[error("{}: {message}", .file.display())]
    Syntax { file: PathBuf, message: String },
    /// A value that parsed but is not acceptable.
    #[error("{}: {key}{}: {message}", .file.display(), peer_suffix(.key, .peer))]
    Invalid {
        file: PathBuf,
        /// The key, for example `peer[1].mac_algorithms`.
        key: String,
        /// The name of the peer the key belongs to, if known.
        peer: Option<String>,
        message: String,
    },
}

/// ` (peer "r2")`, or ` (peer group "rs")` for a key of a `[[peer_group]]`.
fn peer_suffix(key: &str, peer: &Option<String>) -> String {
    let what = if key.starts_with("peer_group[") {
        "peer group"
    } else {
        "peer"
    };
    match peer {
        Some(name) => format!(" ({what} {name:?})"),
        None => String::new(),
    }
}

impl ConfigError {
    /// The configuration file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            ConfigError::Read { file, .. }
            | ConfigError::Syntax { file, .. }
            | ConfigError::Invalid { file, .. } => file,
        }
    }

    /// The offending key, for [`ConfigError::Invalid`].
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The peer the error is about, if any.
    pub fn peer(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { peer, .. } => peer.as_deref(),
            _ => None,
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (as given).
    pub file: PathBuf,
    pub daemon: DaemonSection,
    /// The `[[peer]]` tables, in file order.
    pub peers: Vec<PeerConfig>,
    /// The `[[peer_group]]` tables, in file order.
    pub groups: Vec<PeerGroup>,
}

/// The `[daemon]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSection {
    /// Addresses to bind for IKE (at least one, no duplicates).
    pub listen: Vec<IpAddr>,
    /// UDP port for IKE.
    pub port: u16,
    /// Path of the control socket (made absolute against the config
    /// file's directory).
    pub control_socket: PathBuf,
    /// Directory for persistent state (made absolute likewise).
    pub state_dir: PathBuf,
    /// Path of the attach socket (docs/attach.md), made absolute likewise.
    pub attach_socket: PathBuf,
    /// File mode of the attach socket (0660 by default when
    /// `attach_socket_group` is set, else 0600).
    pub attach_socket_mode: u32,
    /// The attach socket's group (routing daemons that run as their own
    /// user, e.g. FRR's bgpd as `frr`).
    pub attach_socket_group: Option<SocketGroup>,
    /// The control socket's group: its members may run aoctl's read-only
    /// commands (status, sas, mkts, sockets); mode 0660.
    pub control_socket_group: Option<SocketGroup>,
    /// How long an attached `connect()` waits for an MKT.
    pub acquire_timeout: Duration,
    /// Liveness check after this long without a message from the peer
    /// (`None`: `"off"`).
    pub liveness: Option<Duration>,
    /// How long the keys of MKTs that ended stay in memory (never on disk)
    /// for `aoctl verify --from-daemon` (zero: `"off"`).
    pub retired_keys: Duration,
    /// Cookies (RFC 7296 2.6) are demanded while at least this many
    /// half-open IKE SAs exist in all (0: always).
    pub cookie_threshold: usize,
    /// The same, counting those from the request's source address (0:
    /// always).
    pub cookie_threshold_per_source: usize,
    /// The OpenMetrics file written for node_exporter's textfile collector
    /// (made absolute against the config file's directory); `None`: none.
    pub metrics_file: Option<PathBuf>,
    /// How often the metrics file is written.
    pub metrics_interval: Duration,
    /// The largest IP datagram sent to a peer that announced IKE
    /// fragmentation (RFC 7383), counting the IP and UDP headers; larger
    /// protected messages are sent in fragments.
    pub fragment_size: usize,
}

/// A group a socket is given (`*_socket_group`), by name and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketGroup {
    pub name: String,
    pub gid: u32,
}

impl DaemonSection {
    /// The control socket's mode: 0660 with a group, else 0600.
    pub fn control_socket_mode(&self) -> u32 {
        if self.control_socket_group.is_some() {
            0o660
        } else {
            0o600
        }
    }

    /// The UDP socket addresses to bind: each `listen` address with `port`.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listen
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.port))
            .collect()
    }
}

/// One `[[peer]]` table.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Unique name, `[A-Za-z0-9_.-]+`.
    pub name: String,
    /// The peer's IKE address.
    pub remote: IpAddr,
    /// The peer's IKE port.
    pub remote_port: u16,
    /// The local address to use with this peer, if configured (same family
    /// as `remote`).
    pub local: Option<IpAddr>,
    /// The configured local identity; `None` means "the local address" (see
    /// [`PeerConfig::local_identity`]).
    pub local_id: Option<Identity>,
    /// The identity the peer must authenticate as (default: its address).
    pub remote_id: Identity,
    /// The PSK file, resolved against the configuration file's directory.
    pub psk_file: PathBuf,
    /// The pre-shared key read from `psk_file`.
    pub psk: Psk,
    /// With `auth = "pubkey"`: what authenticates this peer instead of the
    /// PSK (then `psk_file` is empty and `psk` has no octets).
    pub signature: Option<SignatureFiles>,
    /// TCP-AO MAC algorithms in preference order (non-empty, no duplicates).
    pub mac_algorithms: Vec<MacAlgorithm>,
    /// Whether MKTs cover TCP options.
    pub include_tcp_options: bool,
    /// TCP ports the MKTs are for (non-empty, no duplicates, 1..=65535).
    /// Shared (a group's members use the group's; [`Config::unshared_copy`]
    /// copies it).
    pub tcp_ports: std::sync::Arc<[u16]>,
    /// IKE SA proposals in preference order (non-empty, no duplicates).
    pub ike_proposals: Vec<IkeSuite>,
    /// Whether aokd initiates an IKE SA with this peer at start.
    pub initiate: bool,
    /// How keys reach the kernel for this peer.
    pub backend: BackendChoice,
    pub lifetimes: Lifetimes,
}

impl PeerConfig {
    /// The peer's IKE address and port.
    pub fn remote_addr(&self) -> SocketAddr {
        SocketAddr::new(self.remote, self.remote_port)
    }

    /// The identity to send as IDi/IDr: `local_id` if configured, else the
    /// configured `local` address, else `actual_local`, the local address
    /// the IKE datagrams actually use.
    pub fn local_identity(&self, actual_local: IpAddr) -> Identity {
        match &self.local_id {
            Some(id) => id.clone(),
            None => Identity::from_ip(self.local.unwrap_or(actual_local)),
        }
    }
}

/// One `[[peer_group]]` table (docs/configuration.md, "Peer groups"):
/// every neighbour inside `prefixes` that authenticates with a certificate
/// from the group's CAs becomes a peer named `NAME/ADDRESS`.
#[derive(Debug, Clone)]
pub struct PeerGroup {
    /// Unique among peers and groups, `[A-Za-z0-9_.-]+`.
    pub name: String,
    /// `remote`: where members may be (IPv4 and IPv6), no duplicates.
    pub prefixes: Vec<IpPrefix>,
    /// `remote_id`: `"address"` (the default: the member's source address,
    /// in its certificate as SAN IP) or an FQDN pattern (`*.example.net`).
    pub identity: MemberIdentity,
    /// Everything else a member is configured with, checked as a
    /// `[[peer]]` would be: `name` is the group's, `remote` the first
    /// prefix's address, `remote_id` unused, `initiate` false.
    pub template: PeerConfig,
}

impl PeerGroup {
    /// The daemon's view of the member at `ip` (for the key manager and
    /// aoctl): the template with the member's name and address. The
    /// signature files stay with the group (`signature` is `None` here).
    pub fn member(&self, ip: IpAddr) -> PeerConfig {
        let t = &self.template;
        PeerConfig {
            name: format!("{}/{}", self.name, ip),
            remote: ip,
            remote_port: t.remote_port,
            local: t.local.filter(|l| l.is_ipv4() == ip.is_ipv4()),
            local_id: t.local_id.clone(),
            remote_id: Identity::from_ip(ip),
            psk_file: PathBuf::new(),
            psk: Psk::new(Vec::new()),
            signature: None,
            mac_algorithms: t.mac_algorithms.clone(),
            include_tcp_options: t.include_tcp_options,
            tcp_ports: t.tcp_ports.clone(),
            ike_proposals: t.ike_proposals.clone(),
            initiate: false,
            backend: t.backend,
            lifetimes: t.lifetimes,
        }
    }

    /// Whether `ip` is inside the group's prefixes.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.prefixes.iter().any(|p| p.contains(ip))
    }
}

/// `peer.backend`: how keys reach the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// TCP-AO where the kernel has it, TCP-MD5 otherwise (probed at start).
    Auto,
    /// TCP-AO only (RFC 5925).
    TcpAo,
    /// TCP-MD5 only (RFC 2385), for peers without TCP-AO.
    TcpMd5,
}

impl std::fmt::Display for BackendChoice {
    /// The configuration's spelling (`auto`, `tcp-ao`, `tcp-md5`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::TcpAo => "tcp-ao",
            BackendChoice::TcpMd5 => "tcp-md5",
        })
    }
}

/// `[peer.lifetimes]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// Rekey the IKE SA after this long.
    pub ike_rekey: Duration,
    /// Negotiate a new MKT after this long.
    pub mkt_rekey: Duration,
    /// Delete an MKT after this long (greater than `mkt_rekey`).
    pub mkt_lifetime: Duration,
    /// Each MKT rekey runs a fresh Diffie-Hellman exchange (PFS).
    pub pfs: bool,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            ike_rekey: DEFAULT_IKE_REKEY,
            mkt_rekey: DEFAULT_MKT_REKEY,
            mkt_lifetime: DEFAULT_MKT_LIFETIME,
            pfs: DEFAULT_PFS,
        }
    }
}

/// `auth = "pubkey"`: the PEM files of a peer and their DER contents, checked
/// at load (the key parses as PKCS#8 of a supported scheme, the trust anchors
/// as certificates). The private key is zeroized on drop and never printed.
#[derive(Clone)]
pub struct SignatureFiles {
    /// `certificate`, resolved against the configuration file's directory.
    pub certificate_file: PathBuf,
    /// This side's certificate (DER) first, then its intermediates.
    pub certificates: Vec<Vec<u8>>,
    /// `private_key`, resolved.
    pub private_key_file: PathBuf,
    /// The PKCS#8 DER of the private key.
    pub private_key: Zeroizing<Vec<u8>>,
    /// `ca`, resolved.
    pub ca_file: PathBuf,
    /// The trust anchors (DER certificates), at least one.
    pub ca: Vec<Vec<u8>>,
    /// `crl`: the CRL files, in configuration order (none: no revocation
    /// check).
    pub crl: Vec<CrlFile>,
}

impl SignatureFiles {
    /// Every CRL (DER) of every `crl` file, in order.
    pub fn crl_ders(&self) -> Vec<Vec<u8>> {
        self.crl
            .iter()
            .flat_map(|f| f.crls.iter().cloned())
            .collect()
    }
}

/// One `crl` file: its path (resolved) and the CRLs it holds (DER), each
/// parsed at load as the validation uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlFile {
    pub file: PathBuf,
    pub crls: Vec<Vec<u8>>,
}

impl fmt::Debug for SignatureFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureFiles")
            .field("certificate_file", &self.certificate_file)
            .field("certificates", &self.certificates.len())
            .field("private_key_file", &self.private_key_file)
            .field("private_key", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .field("ca", &self.ca.len())
            .field("crl", &self.crl)
            .finish()
    }
}

/// A pre-shared key: zeroized on drop, never printed (its `Debug` shows
/// only the length).
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(Zeroizing<Vec<u8>>);

impl Psk {
    /// Wraps key octets.
    pub fn new(bytes: Vec<u8>) -> Psk {
        Psk(Zeroizing::new(bytes))
    }

    /// The key octets, for `aokd_proto::crypto::psk_auth`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Number of octets.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false for a key from a validated configuration.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Psk(<redacted, {} octets>)", self.0.len())
    }
}

/// Parses a configured identity with [`Identity::parse`] (an IP address
/// gives ID_IPV4_ADDR or ID_IPV6_ADDR, a string containing `@`
/// ID_RFC822_ADDR, anything else ID_FQDN), after checking that a name is
/// not empty, at most 255 octets long, and printable ASCII without spaces.
pub fn parse_identity(s: &str) -> Result<Identity, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Identity::from_ip(ip));
    }
    if s.is_empty() {
        return Err("identity must not be empty".into());
    }
    // `C=CH, O=Example, CN=r1`: a distinguished name (ID_DER_ASN1_DN), as
    // certificates name their subject; FQDNs and addresses have no '='.
    if s.contains('=') {
        return Identity::parse_dn(s).map_err(|e| format!("identity {s:?}: {e}"));
    }
    if s.len() > MAX_IDENTITY_LEN {
        return Err(format!(
            "identity is {} octets long; at most {MAX_IDENTITY_LEN} allowed",
            s.len()
        ));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "identity {s:?} must be printable ASCII without spaces"
        ));
    }
    Ok(Identity::parse(s))
}

/// Parses a duration such as `90s`, `30m`, `4h`, `1d` or `1h6m`: one or
/// more `<integer><unit>` with units `d`, `h`, `m`, `s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration {s:?} (expected for example \"90s\", \"30m\", \"4h\", \"1d\" or \"1h30m\")")
    };
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        if digits.is_empty() {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration {s:?} is too long"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!(
            "duration {s:?} lacks a unit after {digits} (use s, m, h or d)"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration the way [`parse_duration`] reads it (`1h6m`).
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, name) in [(86_400, 'd'), (3_600, 'h'), (60, 'm'), (1, 's')] {
        if secs >= unit {
            out.push_str(&format!("{}{name}", secs / unit));
            secs %= unit;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    daemon: Option<RawDaemon>,
    #[serde(default)]
    peer: Vec<RawPeer>,
    #[serde(default)]
    peer_group: Vec<RawPeerGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeerGroup {
    name: Option<String>,
    remote: Option<Vec<String>>,
    remote_port: Option<i64>,
    local: Option<String>,
    local_id: Option<String>,
    remote_id: Option<String>,
    auth: Option<String>,
    certificate: Option<String>,
    private_key: Option<String>,
    ca: Option<String>,
    crl: Option<toml::Value>,
    mac_algorithms: Option<Vec<String>>,
    include_tcp_options: Option<bool>,
    tcp_ports: Option<Vec<i64>>,
    ike_proposals: Option<Vec<String>>,
    backend: Option<String>,
    lifetimes: Option<RawLifetimes>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    listen: Option<Vec<String>>,
    port: Option<i64>,
    control_socket: Option<String>,
    state_dir: Option<String>,
    attach_socket: Option<String>,
    attach_socket_mode: Option<String>,
    attach_socket_group: Option<String>,
    control_socket_group: Option<String>,
    acquire_timeout: Option<String>,
    liveness: Option<String>,
    retired_keys: Option<String>,
    cookie_threshold: Option<i64>,
    cookie_threshold_per_source: Option<i64>,
    metrics_file: Option<String>,
    metrics_interval: Option<String>,
    fragment_size: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: Option<String>,
    remote: Option<String>,
    remote_port: Option<i64>,
    local: Option<String>,
    local_id: Option<String>,
    remote_id: Option<String>,
    psk_file: Option<String>,
    auth: Option<String>,
    certificate: Option<String>,
    private_key: Option<String>,
    ca: Option<String>,
    /// One path or a list of paths: see [`Validator::crl_files`].
    crl: Option<toml::Value>,
    mac_algorithms: Option<Vec<String>>,
    include_tcp_options: Option<bool>,
    tcp_ports: Option<Vec<i64>>,
    ike_proposals: Option<Vec<String>>,
    initiate: Option<bool>,
    backend: Option<String>,
    lifetimes: Option<RawLifetimes>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLifetimes {
    ike_rekey: Option<String>,
    mkt_rekey: Option<String>,
    mkt_lifetime: Option<String>,
    pfs: Option<bool>,
}

// ---------------------------------------------------------------------------
// Loading and validation.

impl Config {
    /// A copy that shares nothing with `self`, not even what is behind an
    /// `Arc` (a plain clone shares those): what `aokd` keeps after parsing
    /// on a thread of its own, so that nothing kept stays in that thread's
    /// allocator arena and keeps its pages resident.
    pub fn unshared_copy(&self) -> Config {
        let mut c = self.clone();
        let templates = c.groups.iter_mut().map(|g| &mut g.template);
        for p in c.peers.iter_mut().chain(templates) {
            p.tcp_ports = p.tcp_ports.iter().copied().collect();
        }
        c
    }

    /// Reads, parses and validates the configuration file at `path`,
    /// including every peer's PSK file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `file` names it in errors
    /// and relative paths are resolved against its directory.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        Validator { file }.config(raw)
    }

    /// The peer with this name.
    pub fn peer(&self, name: &str) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// The peer whose `remote` and `remote_port` are `addr`.
    pub fn peer_by_remote(&self, addr: SocketAddr) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.remote_addr() == addr)
    }
}

struct Validator<'a> {
    file: &'a Path,
}

impl Validator<'_> {
    fn err(
        &self,
        key: impl Into<String>,
        peer: Option<&str>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            key: key.into(),
            peer: peer.map(str::to_owned),
            message: message.into(),
        }
    }

    /// Resolves a path against the configuration file's directory.
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            return p.to_owned();
        }
        let dir = self.file.parent().unwrap_or(Path::new(""));
        dir.join(p)
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let daemon = self.daemon(raw.daemon.unwrap_or_default())?;
        let mut peers: Vec<PeerConfig> = Vec::with_capacity(raw.peer.len());
        for (i, rp) in raw.peer.into_iter().enumerate() {
            let peer = self.peer(&format!("peer[{i}]"), rp, &daemon)?;
            if let Some(j) = peers.iter().position(|p| p.name == peer.name) {
                return Err(self.err(
                    format!("peer[{i}].name"),
                    Some(&peer.name),
                    format!("duplicate peer name; peer[{j}] has the same name"),
                ));
            }
            if let Some(other) = peers.iter().find(|p| p.remote_addr() == peer.remote_addr()) {
                return Err(self.err(
                    format!("peer[{i}].remote"),
                    Some(&peer.name),
                    format!(
                        "peer {:?} already uses remote {} port {}; each (remote, remote_port) must be unique",
                        other.name, peer.remote, peer.remote_port
                    ),
                ));
            }
            peers.push(peer);
        }
        let mut groups: Vec<PeerGroup> = Vec::with_capacity(raw.peer_group.len());
        for (i, rg) in raw.peer_group.into_iter().enumerate() {
            let g = self.group(i, rg, &daemon)?;
            let clash = peers
                .iter()
                .any(|p| p.name == g.name)
                .then_some("a [[peer]]")
                .or_else(|| {
                    groups
                        .iter()
                        .any(|o| o.name == g.name)
                        .then_some("another group")
                });
            if let Some(what) = clash {
                return Err(self.err(
                    format!("peer_group[{i}].name"),
                    Some(&g.name),
                    format!("duplicate name; {what} has the same name"),
                ));
            }
            groups.push(g);
        }
        Ok(Config {
            file: self.file.to_owned(),
            daemon,
            peers,
            groups,
        })
    }

    /// A `[[peer_group]]` table: its prefixes and identity rule, and the
    /// rest checked as a `[[peer]]` with certificate authentication.
    fn group(
        &self,
        i: usize,
        raw: RawPeerGroup,
        daemon: &DaemonSection,
    ) -> Result<PeerGroup, ConfigError> {
        let table = format!("peer_group[{i}]");
        let key = |k: &str| format!("{table}.{k}");
        let name = raw
            .name
            .ok_or_else(|| self.err(key("name"), None, "required key is missing"))?;
        check_peer_name(&name).map_err(|m| self.err(key("name"), None, m))?;
        let pn = Some(name.as_str());
        let list = raw.remote.ok_or_else(|| {
            self.err(
                key("remote"),
                pn,
                "required key is missing (a list of prefixes)",
            )
        })?;
        if list.is_empty() {
            return Err(self.err(key("remote"), pn, "must not be empty"));
        }
        let mut prefixes: Vec<IpPrefix> = Vec::with_capacity(list.len());
        for (j, s) in list.iter().enumerate() {
            let k = format!("{table}.remote[{j}]");
            let p: IpPrefix = s.parse().map_err(|m: String| self.err(&k, pn, m))?;
            if p.addr().is_multicast() {
                return Err(self.err(k, pn, format!("{p} is not a unicast prefix")));
            }
            if !daemon
                .listen
                .iter()
                .any(|l| l.is_ipv4() == p.addr().is_ipv4())
            {
                return Err(self.err(
                    k,
                    pn,
                    format!(
                        "{p} is an {} prefix but daemon.listen has no {} address",
                        family(p.addr()),
                        family(p.addr())
                    ),
                ));
            }
            if prefixes.contains(&p) {
                return Err(self.err(k, pn, format!("{p} is listed twice")));
            }
            prefixes.push(p);
        }
        let identity = match raw.remote_id.as_deref() {
            None | Some("address") => MemberIdentity::Address,
            Some(pattern) => {
                let name_part = pattern.strip_prefix("*.").unwrap_or(pattern);
                let valid = !name_part.is_empty()
                    && name_part.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    });
                if !valid {
                    return Err(self.err(
                        key("remote_id"),
                        pn,
                        format!(
                            "{pattern:?} is neither \"address\" nor a DNS name or pattern such as \"*.rs.example.net\""
                        ),
                    ));
                }
                MemberIdentity::Fqdn(pattern.to_string())
            }
        };
        match raw.auth.as_deref() {
            None | Some("pubkey") => {}
            Some(other) => {
                return Err(self.err(
                    key("auth"),
                    pn,
                    format!("peer groups authenticate by certificate only (auth = \"pubkey\"), not {other:?}"),
                ))
            }
        }
        // The first prefix's family is the template's; `local` may be of
        // either family (it applies to members of its own).
        let first = prefixes[0].addr();
        let (local, template_remote) =
            match raw.local.as_deref().map(|s| self.ip(&key("local"), pn, s)) {
                None => (None, first),
                Some(Err(e)) => return Err(e),
                Some(Ok(ip)) => {
                    let same = prefixes.iter().find(|p| p.addr().is_ipv4() == ip.is_ipv4());
                    match same {
                        Some(p) => (Some(ip.to_string()), p.addr()),
                        None => {
                            return Err(self.err(
                                key("local"),
                                pn,
                                format!(
                                    "local {ip} is an {} address but no prefix in remote is",
                                    family(ip)
                                ),
                            ))
                        }
                    }
                }
            };
        let template = self.peer(
            &table,
            RawPeer {
                name: Some(name.clone()),
                remote: Some(template_remote.to_string()),
                remote_port: raw.remote_port,
                local,
                local_id: raw.local_id,
                remote_id: None,
                psk_file: None,
                auth: Some("pubkey".into()),
                certificate: raw.certificate,
                private_key: raw.private_key,
                ca: raw.ca,
                crl: raw.crl,
                mac_algorithms: raw.mac_algorithms,
                include_tcp_options: raw.include_tcp_options,
                tcp_ports: raw.tcp_ports,
                ike_proposals: raw.ike_proposals,
                initiate: Some(false),
                backend: raw.backend,
                lifetimes: raw.lifetimes,
            },
            daemon,
        )?;
        Ok(PeerGroup {
            name,
            prefixes,
            identity,
            template,
        })
    }

    /// A half-open count from 0 to [`MAX_COOKIE_THRESHOLD`], or `default`.
    fn threshold(&self, key: &str, v: Option<i64>, default: usize) -> Result<usize, ConfigError> {
        match v {
            None => Ok(default),
            Some(n) => match usize::try_from(n) {
                Ok(n) if n as i64 <= MAX_COOKIE_THRESHOLD => Ok(n),
                _ => Err(self.err(
                    key,
                    None,
                    format!(
                        "{n} is out of range 0..={MAX_COOKIE_THRESHOLD} (0: always demand cookies)"
                    ),
                )),
            },
        }
    }

    fn port(&self, key: &str, peer: Option<&str>, v: i64) -> Result<u16, ConfigError> {
        match u16::try_from(v) {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(self.err(key, peer, format!("port {v} is out of range 1..=65535"))),
        }
    }

    fn ip(&self, key: &str, peer: Option<&str>, s: &str) -> Result<IpAddr, ConfigError> {
        s.parse::<IpAddr>().map_err(|_| {
            self.err(
                key,
                peer,
                format!("{s:?} is not an IP address (host names are not resolved)"),
            )
        })
    }

    fn daemon(&self, raw: RawDaemon) -> Result<DaemonSection, ConfigError> {
        let listen = match raw.listen {
            None => vec![DEFAULT_LISTEN],
            Some(list) => {
                if list.is_empty() {
                    return Err(self.err("daemon.listen", None, "must not be empty"));
                }
                let mut out = Vec::with_capacity(list.len());
                for (i, s) in list.iter().enumerate() {
                    let ip = self.ip(&format!("daemon.listen[{i}]"), None, s)?;
                    if out.contains(&ip) {
                        return Err(self.err(
                            format!("daemon.listen[{i}]"),
                            None,
                            format!("{ip} is listed twice"),
                        ));
                    }
                    out.push(ip);
                }
                out
            }
        };
        let port = match raw.port {
            None => DEFAULT_IKE_PORT,
            Some(v) => self.port("daemon.port", None, v)?,
        };
        let control_socket = match raw.control_socket {
            None => PathBuf::from(DEFAULT_CONTROL_SOCKET),
            Some(s) if s.is_empty() => {
                return Err(self.err("daemon.control_socket", None, "must not be empty"))
            }
            Some(s) => self.resolve(&s),
        };
        let sock_len = control_socket.as_os_str().len();
        if sock_len > MAX_SOCKET_PATH_LEN {
            return Err(self.err(
                "daemon.control_socket",
                None,
                format!(
                    "{} is {sock_len} octets long; a Unix socket path may have at most {MAX_SOCKET_PATH_LEN}",
                    control_socket.display()
                ),
            ));
        }
        let state_dir = match raw.state_dir {
            None => PathBuf::from(DEFAULT_STATE_DIR),
            Some(s) if s.is_empty() => {
                return Err(self.err("daemon.state_dir", None, "must not be empty"))
            }
            Some(s) => self.resolve(&s),
        };
        let attach_socket = match raw.attach_socket {
            None => PathBuf::from(DEFAULT_ATTACH_SOCKET),
            Some(s) if s.is_empty() => {
                return Err(self.err("daemon.attach_socket", None, "must not be empty"))
            }
            Some(s) => self.resolve(&s),
        };
        if attach_socket.as_os_str().len() > MAX_SOCKET_PATH_LEN {
            return Err(self.err(
                "daemon.attach_socket",
                None,
                format!(
                    "{} is too long for a Unix socket path",
                    attach_socket.display()
                ),
            ));
        }
        let attach_socket_group =
            self.socket_group("daemon.attach_socket_group", raw.attach_socket_group)?;
        let control_socket_group =
            self.socket_group("daemon.control_socket_group", raw.control_socket_group)?;
        let attach_socket_mode = match raw.attach_socket_mode {
            None if attach_socket_group.is_some() => 0o660,
            None => DEFAULT_ATTACH_SOCKET_MODE,
            Some(m) => match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
                Ok(v) if v <= 0o777 && v & 0o007 == 0 => v,
                _ => {
                    return Err(self.err(
                        "daemon.attach_socket_mode",
                        None,
                        format!("{m:?} is not an octal mode without bits for others, such as \"0600\" or \"0660\""),
                    ))
                }
            },
        };
        let acquire_timeout = match raw.acquire_timeout {
            None => DEFAULT_ACQUIRE_TIMEOUT,
            Some(t) => {
                let d =
                    parse_duration(&t).map_err(|e| self.err("daemon.acquire_timeout", None, e))?;
                at_most(&t, d, MAX_ACQUIRE_TIMEOUT)
                    .map_err(|e| self.err("daemon.acquire_timeout", None, e))?
            }
        };
        let liveness = match raw.liveness.as_deref() {
            None => Some(DEFAULT_LIVENESS),
            Some("off") => None,
            Some(t) => {
                let d = parse_duration(t).map_err(|e| {
                    self.err(
                        "daemon.liveness",
                        None,
                        format!("{e} (or \"off\" for no liveness checks)"),
                    )
                })?;
                if d < MIN_LIVENESS {
                    return Err(self.err(
                        "daemon.liveness",
                        None,
                        format!(
                            "{t:?} is shorter than the minimum of {} (use \"off\" for no liveness checks)",
                            format_duration(MIN_LIVENESS)
                        ),
                    ));
                }
                Some(
                    at_most(t, d, MAX_LIVENESS)
                        .map_err(|e| self.err("daemon.liveness", None, e))?,
                )
            }
        };
        let retired_keys = match raw.retired_keys.as_deref() {
            None => DEFAULT_RETIRED_KEYS,
            Some("off") => Duration::ZERO,
            Some(t) => {
                let d = parse_duration(t).map_err(|e| {
                    self.err(
                        "daemon.retired_keys",
                        None,
                        format!("{e} (or \"off\" to keep no retired key)"),
                    )
                })?;
                at_most(t, d, MAX_RETIRED_KEYS)
                    .map_err(|e| self.err("daemon.retired_keys", None, e))?
            }
        };
        let cookie_threshold = self.threshold(
            "daemon.cookie_threshold",
            raw.cookie_threshold,
            DEFAULT_COOKIE_THRESHOLD,
        )?;
        let cookie_threshold_per_source = self.threshold(
            "daemon.cookie_threshold_per_source",
            raw.cookie_threshold_per_source,
            DEFAULT_COOKIE_THRESHOLD_PER_SOURCE,
        )?;
        let metrics_file = match raw.metrics_file {
            None => None,
            Some(s) if s.is_empty() || s.ends_with('/') => {
                return Err(self.err(
                    "daemon.metrics_file",
                    None,
                    format!("{s:?} is not a file path (for example \"/var/lib/prometheus/node-exporter/aokd.prom\")"),
                ))
            }
            Some(s) => Some(self.resolve(&s)),
        };
        let metrics_interval = match raw.metrics_interval {
            None => DEFAULT_METRICS_INTERVAL,
            Some(_) if metrics_file.is_none() => {
                return Err(self.err(
                    "daemon.metrics_interval",
                    None,
                    "is set but daemon.metrics_file is not",
                ))
            }
            Some(t) => {
                let d =
                    parse_duration(&t).map_err(|e| self.err("daemon.metrics_interval", None, e))?;
                if d < MIN_METRICS_INTERVAL {
                    return Err(self.err(
                        "daemon.metrics_interval",
                        None,
                        format!(
                            "{t:?} is shorter than the minimum of {}",
                            format_duration(MIN_METRICS_INTERVAL)
                        ),
                    ));
                }
                at_most(&t, d, MAX_METRICS_INTERVAL)
                    .map_err(|e| self.err("daemon.metrics_interval", None, e))?
            }
        };
        let fragment_size = match raw.fragment_size {
            None => DEFAULT_FRAGMENT_SIZE,
            Some(n) => match usize::try_from(n) {
                Ok(n) if (MIN_FRAGMENT_SIZE..=MAX_FRAGMENT_SIZE).contains(&n) => n,
                _ => {
                    return Err(self.err(
                        "daemon.fragment_size",
                        None,
                        format!(
                            "{n} is out of range {MIN_FRAGMENT_SIZE}..={MAX_FRAGMENT_SIZE} (octets of an IP datagram, headers included)"
                        ),
                    ))
                }
            },
        };
        Ok(DaemonSection {
            listen,
            port,
            control_socket,
            state_dir,
            attach_socket,
            attach_socket_mode,
            attach_socket_group,
            control_socket_group,
            acquire_timeout,
            liveness,
            retired_keys,
            cookie_threshold,
            cookie_threshold_per_source,
            metrics_file,
            metrics_interval,
            fragment_size,
        })
    }

    /// A `*_socket_group` key: a group name (or number) that exists.
    fn socket_group(
        &self,
        key: &str,
        raw: Option<String>,
    ) -> Result<Option<SocketGroup>, ConfigError> {
        let Some(name) = raw else {
            return Ok(None);
        };
        match aokd_sys::group_id(&name) {
            Ok(Some(gid)) => Ok(Some(SocketGroup { name, gid })),
            Ok(None) => Err(self.err(
                key,
                None,
                format!("no group named {name:?} exists on this system"),
            )),
            Err(e) => Err(self.err(key, None, format!("cannot look up group {name:?}: {e}"))),
        }
    }

    /// A `[[peer]]` table, `table` naming it in errors (`peer[1]`; a peer
    /// group's template is checked here as well, as `peer_group[0]`).
    fn peer(
        &self,
        table: &str,
        raw: RawPeer,
        daemon: &DaemonSection,
    ) -> Result<PeerConfig, ConfigError> {
        let key = |k: &str| format!("{table}.{k}");

        // The name first, so that later errors can name the peer.
        let name = raw
            .name
            .ok_or_else(|| self.err(key("name"), None, "required key is missing"))?;
        check_peer_name(&name).map_err(|m| self.err(key("name"), None, m))?;
        let pn = Some(name.as_str());

        let remote_s = raw
            .remote
            .ok_or_else(|| self.err(key("remote"), pn, "required key is missing"))?;
        let remote = self.ip(&key("remote"), pn, &remote_s)?;
        if remote.is_unspecified() || remote.is_multicast() {
            return Err(self.err(
                key("remote"),
                pn,
                format!("{remote} is not a unicast address"),
            ));
        }
        if !daemon
            .listen
            .iter()
            .any(|l| l.is_ipv4() == remote.is_ipv4())
        {
            return Err(self.err(
                key("remote"),
                pn,
                format!(
                    "{remote} is an {} address but daemon.listen has no {} address",
                    family(remote),
                    family(remote)
                ),
            ));
        }
        let remote_port = match raw.remote_port {
            None => DEFAULT_IKE_PORT,
            Some(v) => self.port(&key("remote_port"), pn, v)?,
        };

        let local = match raw.local {
            None => None,
            Some(s) => {
                let ip = self.ip(&key("local"), pn, &s)?;
                if ip.is_ipv4() != remote.is_ipv4() {
                    return Err(self.err(
                        key("local"),
                        pn,
                        format!(
                            "local {ip} is an {} address but remote {remote} is {}",
                            family(ip),
                            family(remote)
                        ),
                    ));
                }
                if ip.is_unspecified() || ip.is_multicast() {
                    return Err(self.err(
                        key("local"),
                        pn,
                        format!("{ip} is not a unicast address"),
                    ));
                }
                let covered = daemon
                    .listen
                    .iter()
                    .any(|l| *l == ip || (l.is_unspecified() && l.is_ipv4() == ip.is_ipv4()));
                if !covered {
                    return Err(self.err(
                        key("local"),
                        pn,
                        format!(
                            "{ip} is not in daemon.listen (add it, or listen on {})",
                            if ip.is_ipv4() { "0.0.0.0" } else { "::" }
                        ),
                    ));
                }
                Some(ip)
            }
        };

        let local_id = match raw.local_id {
            None => local.map(Identity::from_ip),
            Some(s) => Some(parse_identity(&s).map_err(|m| self.err(key("local_id"), pn, m))?),
        };
        let remote_id = match raw.remote_id {
            None => Identity::from_ip(remote),
            Some(s) => parse_identity(&s).map_err(|m| self.err(key("remote_id"), pn, m))?,
        };

        let pubkey = match raw.auth.as_deref() {
            None | Some("psk") => false,
            Some("pubkey") => true,
            Some(other) => {
                return Err(self.err(
                    key("auth"),
                    pn,
                    format!("unknown authentication {other:?} (psk, pubkey)"),
                ))
            }
        };
        let (psk_file, psk, signature) = if pubkey {
            if raw.psk_file.is_some() {
                return Err(self.err(
                    key("psk_file"),
                    pn,
                    "is only used with auth = \"psk\" (this peer has auth = \"pubkey\")",
                ));
            }
            let mut sig =
                self.signature_files(&key, pn, raw.certificate, raw.private_key, raw.ca)?;
            sig.crl = self.crl_files(&key("crl"), pn, raw.crl, &sig.ca)?;
            (PathBuf::new(), Psk::new(Vec::new()), Some(sig))
        } else {
            for (k, v) in [
                ("certificate", &raw.certificate),
                ("private_key", &raw.private_key),
                ("ca", &raw.ca),
            ] {
                if v.is_some() {
                    return Err(self.err(
                        key(k),
                        pn,
                        "is only used with auth = \"pubkey\" (this peer uses a PSK)",
                    ));
                }
            }
            if raw.crl.is_some() {
                return Err(self.err(
                    key("crl"),
                    pn,
                    "is only used with auth = \"pubkey\" (this peer uses a PSK)",
                ));
            }
            let psk_s = raw
                .psk_file
                .ok_or_else(|| self.err(key("psk_file"), pn, "required key is missing"))?;
            if psk_s.is_empty() {
                return Err(self.err(key("psk_file"), pn, "must not be empty"));
            }
            let psk_file = self.resolve(&psk_s);
            let psk = read_psk(&psk_file).map_err(|m| self.err(key("psk_file"), pn, m))?;
            (psk_file, psk, None)
        };

        let mac_algorithms = match raw.mac_algorithms {
            None => MacAlgorithm::ALL.to_vec(),
            Some(list) => self.list(&key("mac_algorithms"), pn, &list, |s| {
                s.parse::<MacAlgorithm>()
            })?,
        };

        let tcp_ports = match raw.tcp_ports {
            None => DEFAULT_TCP_PORTS.to_vec(),
            Some(list) => {
                if list.is_empty() {
                    return Err(self.err(key("tcp_ports"), pn, "must not be empty"));
                }
                let mut out = Vec::with_capacity(list.len());
                for (j, v) in list.iter().enumerate() {
                    let k = format!("{table}.tcp_ports[{j}]");
                    let p = self.port(&k, pn, *v)?;
                    if out.contains(&p) {
                        return Err(self.err(k, pn, format!("port {p} is listed twice")));
                    }
                    out.push(p);
                }
                out
            }
        };

        let ike_proposals = match raw.ike_proposals {
            None => vec![DEFAULT_IKE_PROPOSAL],
            Some(list) => self.list(&key("ike_proposals"), pn, &list, |s| s.parse::<IkeSuite>())?,
        };

        let lifetimes = self.lifetimes(table, pn, raw.lifetimes)?;

        let backend = match raw.backend.as_deref() {
            None | Some("auto") => BackendChoice::Auto,
            Some("tcp-ao") => BackendChoice::TcpAo,
            Some("tcp-md5") => BackendChoice::TcpMd5,
            Some(other) => {
                return Err(self.err(
                    key("backend"),
                    Some(&name),
                    format!("unknown backend {other:?} (auto, tcp-ao, tcp-md5)"),
                ))
            }
        };
        Ok(PeerConfig {
            name: name.clone(),
            remote,
            remote_port,
            local,
            local_id,
            remote_id,
            psk_file,
            psk,
            signature,
            mac_algorithms,
            include_tcp_options: raw.include_tcp_options.unwrap_or(true),
            tcp_ports: tcp_ports.into(),
            ike_proposals,
            initiate: raw.initiate.unwrap_or(true),
            backend,
            lifetimes,
        })
    }

    /// The `certificate`, `private_key` and `ca` files of a peer with
    /// `auth = "pubkey"`, read and checked.
    fn signature_files(
        &self,
        key: &dyn Fn(&str) -> String,
        pn: Option<&str>,
        certificate: Option<String>,
        private_key: Option<String>,
        ca: Option<String>,
    ) -> Result<SignatureFiles, ConfigError> {
        let path = |k: &str, v: Option<String>| -> Result<PathBuf, ConfigError> {
            let v = v.ok_or_else(|| {
                self.err(key(k), pn, "required key is missing (auth = \"pubkey\")")
            })?;
            if v.is_empty() {
                return Err(self.err(key(k), pn, "must not be empty"));
            }
            Ok(self.resolve(&v))
        };
        let certificate_file = path("certificate", certificate)?;
        let private_key_file = path("private_key", private_key)?;
        let ca_file = path("ca", ca)?;
        let certificates = read_pem_certificates(&certificate_file, "certificate")
            .map_err(|m| self.err(key("certificate"), pn, m))?;
        let ca = read_pem_certificates(&ca_file, "ca").map_err(|m| self.err(key("ca"), pn, m))?;
        aokd_proto::ike::cert::TrustAnchors::from_der(&ca)
            .map_err(|m| self.err(key("ca"), pn, format!("ca {}: {m}", ca_file.display())))?;
        let private_key = read_pem_private_key(&private_key_file)
            .map_err(|m| self.err(key("private_key"), pn, m))?;
        Ok(SignatureFiles {
            certificate_file,
            certificates,
            private_key_file,
            private_key,
            ca_file,
            ca,
            crl: Vec::new(),
        })
    }

    /// `crl`, as written (`key` names it in errors, as `peer[0].crl`): one
    /// path or a list of paths, resolved against the configuration file's
    /// directory; each file holds PEM `X509 CRL` blocks or one DER CRL,
    /// and each CRL must parse as the validation uses it (RFC 5280 5.1,
    /// version 2; [`aokd_proto::ike::cert::parse_crl`]), and verify with
    /// the key of the `ca` certificate (DER) it names as issuer, if any.
    /// Absent: no CRLs. Any table with certificate authentication can pass
    /// its raw field and its trust anchors.
    pub(crate) fn crl_files(
        &self,
        key: &str,
        pn: Option<&str>,
        raw: Option<toml::Value>,
        ca: &[Vec<u8>],
    ) -> Result<Vec<CrlFile>, ConfigError> {
        let paths: Vec<(String, String)> = match raw {
            None => return Ok(Vec::new()),
            Some(toml::Value::String(s)) => vec![(key.to_owned(), s)],
            Some(toml::Value::Array(list)) => {
                let mut out = Vec::with_capacity(list.len());
                for (j, v) in list.into_iter().enumerate() {
                    let k = format!("{key}[{j}]");
                    match v {
                        toml::Value::String(s) => out.push((k, s)),
                        other => {
                            return Err(self.err(
                                k,
                                pn,
                                format!("must be a path (string), not {}", other.type_str()),
                            ))
                        }
                    }
                }
                out
            }
            Some(other) => {
                return Err(self.err(
                    key,
                    pn,
                    format!(
                        "must be a path or a list of paths (strings), not {}",
                        other.type_str()
                    ),
                ))
            }
        };
        let mut files: Vec<CrlFile> = Vec::with_capacity(paths.len());
        for (k, p) in paths {
            if p.is_empty() {
                return Err(self.err(&k, pn, "must not be empty"));
            }
            let file = self.resolve(&p);
            if files.iter().any(|f| f.file == file) {
                return Err(self.err(&k, pn, format!("{} is listed twice", file.display())));
            }
            let crls = read_crl_file(&file).map_err(|m| self.err(&k, pn, m))?;
            // A CRL of one of the `ca` certificates must be signed by it.
            aokd_proto::ike::cert::TrustAnchors::from_der(ca)
                .and_then(|a| a.with_crls(&crls))
                .map_err(|m| self.err(&k, pn, format!("crl {}: {m}", file.display())))?;
            files.push(CrlFile { file, crls });
        }
        Ok(files)
    }

    /// Parses a non-empty list of names without duplicates.
    fn list<T: PartialEq + fmt::Display>(
        &self,
        key: &str,
        peer: Option<&str>,
        list: &[String],
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, ConfigError> {
        if list.is_empty() {
            return Err(self.err(key, peer, "must not be empty"));
        }
        let mut out: Vec<T> = Vec::with_capacity(list.len());
        for (j, s) in list.iter().enumerate() {
            let k = format!("{key}[{j}]");
            let v = parse(s).map_err(|m| self.err(&k, peer, m))?;
            if out.contains(&v) {
                return Err(self.err(k, peer, format!("{v} is listed twice")));
            }
            out.push(v);
        }
        Ok(out)
    }

    fn lifetimes(
        &self,
        table: &str,
        pn: Option<&str>,
        raw: Option<RawLifetimes>,
    ) -> Result<Lifetimes, ConfigError> {
        let Some(raw) = raw else {
            return Ok(Lifetimes::default());
        };
        let one =
            |name: &str, v: Option<String>, default: Duration| -> Result<Duration, ConfigError> {
                let k = format!("{table}.lifetimes.{name}");
                match v {
                    None => Ok(default),
                    Some(s) => {
                        let d = parse_duration(&s).map_err(|m| self.err(&k, pn, m))?;
                        if d.is_zero() {
                            return Err(self.err(k, pn, "must be longer than 0s"));
                        }
                        at_most(&s, d, MAX_LIFETIME).map_err(|m| self.err(k, pn, m))
                    }
                }
            };
        let lt = Lifetimes {
            ike_rekey: one("ike_rekey", raw.ike_rekey, DEFAULT_IKE_REKEY)?,
            mkt_rekey: one("mkt_rekey", raw.mkt_rekey, DEFAULT_MKT_REKEY)?,
            mkt_lifetime: one("mkt_lifetime", raw.mkt_lifetime, DEFAULT_MKT_LIFETIME)?,
            pfs: raw.pfs.unwrap_or(DEFAULT_PFS),
        };
        if lt.mkt_rekey >= lt.mkt_lifetime {
            return Err(self.err(
                format!("{table}.lifetimes.mkt_rekey"),
                pn,
                format!(
                    "mkt_rekey ({}) must be shorter than mkt_lifetime ({}), so that a new MKT exists before the old one expires",
                    format_duration(lt.mkt_rekey),
                    format_duration(lt.mkt_lifetime)
                ),
            ));
        }
        Ok(lt)
    }
}

/// `d` (written `written`) if it is at most `max`, else the error message.
fn at_most(written: &str, d: Duration, max: Duration) -> Result<Duration, String> {
    if d > max {
        return Err(format!(
            "{written:?} is longer than the maximum of {}",
            format_duration(max)
        ));
    }
    Ok(d)
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn check_peer_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_PEER_NAME_LEN {
        return Err(format!(
            "{name:?} is longer than {MAX_PEER_NAME_LEN} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
    {
        return Err(format!(
            "{name:?} may only contain letters, digits, '_', '.' and '-'"
        ));
    }
    Ok(())
}

/// Reads and decodes a PSK file (see [`decode_psk`]), refusing files that
/// group or others may access. Errors are messages naming the file.
pub fn read_psk(path: &Path) -> Result<Psk, String> {
    let buf = read_file(path, "psk_file", "a PSK file", true)?;
    decode_psk(&buf).map_err(|m| format!("psk_file {} {m}", path.display()))
}

/// Reads a regular file of at most [`MAX_PSK_FILE_LEN`] octets; `private`:
/// refused when group or others may access it. `what` (the key) and `kind`
/// name it in errors.
fn read_file(
    path: &Path,
    what: &str,
    kind: &str,
    private: bool,
) -> Result<Zeroizing<Vec<u8>>, String> {
    read_file_limited(path, what, kind, private, MAX_PSK_FILE_LEN)
}

/// [`read_file`] with another size limit.
fn read_file_limited(
    path: &Path,
    what: &str,
    kind: &str,
    private: bool,
    max: u64,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let shown = path.display();
    // The file type is checked before the file is opened: opening a FIFO
    // for reading blocks until a writer comes, which would hang
    // `check-config` and the daemon for ever. The open itself is
    // non-blocking in case the path is swapped between the two calls, and
    // the opened file is checked again.
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot open {what} {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "{what} {shown} is not a regular file (it is {})",
            file_kind(&meta)
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot open {what} {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat {what} {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "{what} {shown} is not a regular file (it is {})",
            file_kind(&meta)
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if private && mode & 0o077 != 0 {
        return Err(format!(
            "{what} {shown} has mode {mode:04o}; it must not be readable by group or others (chmod 600)"
        ));
    }
    if meta.len() > max {
        return Err(format!(
            "{what} {shown} is {} octets long; {kind} has at most {max}",
            meta.len()
        ));
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read {what} {shown}: {e}"))?;
    Ok(buf)
}

/// The CRLs (DER) of a `crl` file: PEM `X509 CRL` blocks in file order, or
/// the whole file as one DER CRL when it starts as DER does (a SEQUENCE);
/// at least one, each parsed.
fn read_crl_file(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::pem::PemObject as _;
    let buf = read_file_limited(path, "crl", "a CRL file", false, MAX_CRL_FILE_LEN)?;
    let shown = path.display();
    let crls = if buf.first() == Some(&0x30) {
        vec![buf.to_vec()]
    } else {
        let mut out = Vec::new();
        for c in rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(&buf) {
            let c = c.map_err(|e| format!("crl {shown}: not valid PEM: {e}"))?;
            out.push(c.as_ref().to_vec());
        }
        if out.is_empty() {
            return Err(format!(
                "crl {shown} holds neither a PEM CRL (-----BEGIN X509 CRL-----) nor a DER one"
            ));
        }
        out
    };
    for (i, der) in crls.iter().enumerate() {
        aokd_proto::ike::cert::parse_crl(der).map_err(|e| {
            if crls.len() == 1 {
                format!("crl {shown}: not a usable CRL: {e}")
            } else {
                format!("crl {shown}: CRL {i} (0-based) is not usable: {e}")
            }
        })?;
    }
    Ok(crls)
}

/// The certificates (DER) of a PEM file, in file order, at least one.
fn read_pem_certificates(path: &Path, what: &str) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::pem::PemObject as _;
    let buf = read_file(path, what, "a PEM file", false)?;
    let shown = path.display();
    let mut out = Vec::new();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&buf) {
        let c = c.map_err(|e| format!("{what} {shown}: not valid PEM: {e}"))?;
        out.push(c.as_ref().to_vec());
    }
    if out.is_empty() {
        return Err(format!(
            "{what} {shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(out)
}

/// The PKCS#8 private key (DER) of a PEM file, refused when group or others
/// may read the file or when the key is not of a supported scheme.
fn read_pem_private_key(path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    use rustls_pki_types::pem::PemObject as _;
    let buf = read_file(path, "private_key", "a PEM file", true)?;
    let shown = path.display();
    let key = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&buf).map_err(|e| {
        format!("private_key {shown}: no PEM PKCS#8 key (-----BEGIN PRIVATE KEY-----): {e}")
    })?;
    let der = Zeroizing::new(key.secret_pkcs8_der().to_vec());
    aokd_proto::crypto::sig::PrivateKey::from_pkcs8_der(&der)
        .map_err(|m| format!("private_key {shown}: {m}"))?;
    Ok(der)
}

/// What kind of file `meta` describes, for the "not a regular file" error.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "a special file"
    }
}

/// Decodes the contents of a PSK file. One trailing newline (`\n` or
/// `\r\n`) is stripped; then `0x<hex>`, or plain hex of even length and at
/// least 32 digits, gives the decoded octets; such hex followed by more
/// white space is refused; anything else is the secret itself (RFC 7296
/// 2.15 ASCII keys). A key shorter than [`MIN_PSK_LEN`] octets is refused.
/// Errors are message fragments ("is empty").
pub fn decode_psk(contents: &[u8]) -> Result<Psk, String> {
    let psk = decode_psk_any_length(contents)?;
    if psk.len() < MIN_PSK_LEN {
        return Err(format!(
            "holds a key of {} octets; at least {MIN_PSK_LEN} are required (`aoctl gen-psk FILE` writes 32 random octets)",
            psk.len()
        ));
    }
    Ok(psk)
}

/// [`decode_psk`] without the length floor.
fn decode_psk_any_length(contents: &[u8]) -> Result<Psk, String> {
    let mut body = contents;
    if let Some(rest) = body.strip_suffix(b"\n") {
        body = rest.strip_suffix(b"\r").unwrap_or(rest);
    }
    if body.is_empty() {
        return Err("is empty".into());
    }
    let is_hex =
        |b: &[u8]| !b.is_empty() && b.len() % 2 == 0 && b.iter().all(u8::is_ascii_hexdigit);
    if let Some(hex_part) = body
        .strip_prefix(b"0x")
        .or_else(|| body.strip_prefix(b"0X"))
    {
        if !is_hex(hex_part) {
            return Err("starts with 0x but the rest is not an even number of hex digits".into());
        }
        return decode_hex(hex_part);
    }
    if body.len() >= 32 && is_hex(body) {
        return decode_hex(body);
    }
    // Hex followed by more white space than the one newline stripped above
    // (`echo` twice, a trailing blank or a second line) would otherwise be
    // taken as an ASCII secret of 65 or more octets, and authentication
    // would fail later without a word: refuse it here.
    let trimmed = body.trim_ascii_end();
    if trimmed.len() >= 32 && is_hex(trimmed) {
        return Err(format!(
            "holds {} hex digits followed by {} white space octets other than one final newline; remove them (a secret that only looks like hex is not supported)",
            trimmed.len(),
            body.len() - trimmed.len()
        ));
    }
    Ok(Psk::new(body.to_vec()))
}

fn decode_hex(digits: &[u8]) -> Result<Psk, String> {
    hex::decode(digits)
        .map(Psk::new)
        .map_err(|_| "contains invalid hex".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory with the test certificates (daemon/tests/data/pubkey:
    /// an Ed25519 CA and an end-entity for 127.0.0.1 signed by it), the
    /// key with `key_mode`, and a configuration with `peer` as its peer's
    /// keys; the configuration's load result.
    fn load_pubkey(key_mode: u32, peer: &str) -> Result<Config, ConfigError> {
        load_with_pubkey_files(
            key_mode,
            &format!("[[peer]]\nname = \"r1\"\nremote = \"127.0.0.1\"\n{peer}"),
        )
    }

    /// Loads `text` from a directory holding the PEM fixtures (ca.pem,
    /// ee.pem, ee.key with `key_mode`).
    fn load_with_pubkey_files(key_mode: u32, text: &str) -> Result<Config, ConfigError> {
        use rustls_pki_types::pem::PemObject as _;
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("aokd-pubkey-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pubkey");
        let files = [
            "ca.pem",
            "ee.pem",
            "ee.key",
            "crl-ca.pem",
            "crl.pem",
            "crl-expired.der",
        ];
        for f in files {
            std::fs::copy(data.join(f), dir.join(f)).expect("copy");
            // Private, so that a PEM file given as private_key fails on
            // its contents.
            std::fs::set_permissions(dir.join(f), fs_mode(0o600)).expect("chmod");
        }
        std::fs::set_permissions(dir.join("ee.key"), fs_mode(key_mode)).expect("chmod");
        // A truncated DER CRL and a file of both CRLs as PEM.
        let der = std::fs::read(data.join("crl-expired.der")).expect("der");
        std::fs::write(dir.join("short.der"), &der[..der.len() - 9]).expect("short");
        let pem = std::fs::read_to_string(data.join("crl.pem")).expect("pem");
        std::fs::write(dir.join("both.pem"), format!("{pem}{}", pem_crl(&der))).expect("both");
        // crl.pem with its signature altered, and both CAs in one file.
        let mut bad =
            rustls_pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
                .expect("crl.pem")
                .as_ref()
                .to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(dir.join("altered.der"), bad).expect("altered");
        let cas = std::fs::read_to_string(data.join("ca.pem")).expect("ca")
            + &std::fs::read_to_string(data.join("crl-ca.pem")).expect("crl-ca");
        std::fs::write(dir.join("cas.pem"), cas).expect("cas");
        let file = dir.join("aokd.toml");
        std::fs::write(&file, text).expect("config");
        let r = Config::load(&file);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    fn fs_mode(mode: u32) -> std::fs::Permissions {
        std::fs::Permissions::from_mode(mode)
    }

    /// A DER CRL as a PEM block (base64 by hand: no base64 crate here).
    fn pem_crl(der: &[u8]) -> String {
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in der.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(B64[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        let lines: Vec<&str> = out
            .as_bytes()
            .chunks(64)
            .map(|l| std::str::from_utf8(l).unwrap())
            .collect();
        format!(
            "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn crl_files_are_read_as_pem_or_der() {
        let cfg = load_pubkey(0o600, &format!("{PUBKEY}crl = \"crl.pem\"\n")).expect("one");
        let sig = cfg.peers[0].signature.as_ref().unwrap();
        assert_eq!(sig.crl.len(), 1);
        assert!(sig.crl[0].file.ends_with("crl.pem"));
        assert_eq!(sig.crl[0].crls.len(), 1);
        let cfg = load_pubkey(
            0o600,
            &format!("{PUBKEY}crl = [\"crl.pem\", \"crl-expired.der\", \"both.pem\"]\n"),
        )
        .expect("list");
        let sig = cfg.peers[0].signature.as_ref().unwrap();
        let counts: Vec<usize> = sig.crl.iter().map(|f| f.crls.len()).collect();
        assert_eq!(counts, [1, 1, 2]);
        let ders = sig.crl_ders();
        assert_eq!(ders.len(), 4);
        // The DER file and the second PEM block are the same CRL.
        assert_eq!(ders[1], ders[3]);
        assert_eq!(
            aokd_proto::ike::cert::parse_crl(&ders[0]).unwrap().revoked,
            2
        );
        // No crl: no CRLs.
        let cfg = load_pubkey(0o600, PUBKEY).expect("none");
        assert!(cfg.peers[0].signature.as_ref().unwrap().crl.is_empty());
        // Debug names the files, not only counts.
        let cfg = load_pubkey(0o600, &format!("{PUBKEY}crl = \"crl.pem\"\n")).expect("one");
        assert!(format!("{:?}", cfg.peers[0]).contains("crl.pem"));
    }

    #[test]
    fn crl_errors_name_file_key_and_peer() {
        let cases: &[(&str, &[&str])] = &[
            (
                "crl = 5",
                &["peer[0].crl", "r1", "a path or a list of paths", "integer"],
            ),
            (
                "crl = [\"crl.pem\", true]",
                &[
                    "peer[0].crl[1]",
                    "r1",
                    "must be a path (string), not boolean",
                ],
            ),
            (
                "crl = \"gone.crl\"",
                &["peer[0].crl", "gone.crl", "cannot open"],
            ),
            ("crl = [\"\"]", &["peer[0].crl[0]", "must not be empty"]),
            (
                "crl = [\"crl.pem\", \"./crl.pem\"]",
                &["peer[0].crl[1]", "crl.pem is listed twice"],
            ),
            (
                "crl = \"ca.pem\"",
                &[
                    "peer[0].crl",
                    "ca.pem",
                    "neither a PEM CRL (-----BEGIN X509 CRL-----) nor a DER one",
                ],
            ),
            (
                "crl = [\"crl.pem\", \"short.der\"]",
                &["peer[0].crl[1]", "r1", "short.der", "not a usable CRL"],
            ),
        ];
        for (line, needles) in cases {
            let e = load_pubkey(0o600, &format!("{PUBKEY}{line}\n"))
                .expect_err(line)
                .to_string();
            for n in *needles {
                assert!(e.contains(n), "{line}: {e:?} lacks {n:?}");
            }
        }
        // The CRL of a configured CA must verify with its key.
        let with_both = PUBKEY.replace("ca.pem", "cas.pem");
        load_pubkey(0o600, &format!("{with_both}crl = \"crl.pem\"\n")).expect("signed by crl-ca");
        let e = load_pubkey(0o600, &format!("{with_both}crl = \"altered.der\"\n"))
            .expect_err("altered")
            .to_string();
        for n in [
            "peer[0].crl",
            "altered.der",
            "its issuer is the subject of CA certificate 1, but it is not signed by that CA's key",
        ] {
            assert!(e.contains(n), "{e:?} lacks {n:?}");
        }
        let e = load_pubkey(0o600, "psk_file = \"p.psk\"\ncrl = \"crl.pem\"\n")
            .expect_err("psk peer")
            .to_string();
        assert!(
            e.contains("peer[0].crl") && e.contains("only used with auth"),
            "{e}"
        );
    }

    const PUBKEY: &str =
        "auth = \"pubkey\"\ncertificate = \"ee.pem\"\nprivate_key = \"ee.key\"\nca = \"ca.pem\"\n";

    #[test]
    fn pubkey_peer_reads_its_pem_files() {
        let cfg = load_pubkey(0o600, PUBKEY).expect("valid");
        let sig = cfg.peers[0].signature.as_ref().expect("signature");
        assert_eq!(sig.certificates.len(), 1);
        assert_eq!(sig.ca.len(), 1);
        assert!(sig.certificate_file.ends_with("ee.pem"));
        assert!(!sig.private_key.is_empty());
        assert!(cfg.peers[0].psk.is_empty());
        // Debug never shows the key.
        let shown = format!("{sig:?}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(
            !shown.contains(&format!("{:?}", &sig.private_key[..])),
            "{shown}"
        );
        // psk stays the default.
        let e = load_pubkey(0o600, "psk_file = \"x\"\n").expect_err("no psk file");
        assert!(e.to_string().contains("psk_file"), "{e}");
    }

    #[test]
    fn pubkey_errors_name_file_key_and_peer() {
        let cases: &[(u32, String, &[&str])] = &[
            (
                0o640,
                PUBKEY.to_owned(),
                &["peer[0].private_key", "r1", "ee.key", "mode 0640"],
            ),
            (
                0o600,
                PUBKEY.replace("ca = \"ca.pem\"", "ca = \"ee.key\""),
                &["peer[0].ca", "r1", "ee.key", "no PEM certificate"],
            ),
            (
                0o600,
                PUBKEY.replace("private_key = \"ee.key\"", "private_key = \"ca.pem\""),
                &["peer[0].private_key", "ca.pem", "PKCS#8"],
            ),
            (
                0o600,
                PUBKEY.replace("certificate = \"ee.pem\"", "certificate = \"gone.pem\""),
                &["peer[0].certificate", "r1", "gone.pem", "cannot open"],
            ),
            (
                0o600,
                PUBKEY.replace("ca = \"ca.pem\"\n", ""),
                &["peer[0].ca", "r1", "required key is missing"],
            ),
            (
                0o600,
                format!("{PUBKEY}psk_file = \"p.psk\"\n"),
                &["peer[0].psk_file", "only used with auth"],
            ),
            (
                0o600,
                "psk_file = \"p.psk\"\nca = \"ca.pem\"\n".to_owned(),
                &["peer[0].ca", "only used with auth"],
            ),
            (
                0o600,
                PUBKEY.replace("\"pubkey\"", "\"rsa\""),
                &["peer[0].auth", "r1", "psk, pubkey"],
            ),
        ];
        for (mode, peer, wanted) in cases {
            let e = load_pubkey(*mode, peer).expect_err(peer).to_string();
            for w in *wanted {
                assert!(e.contains(w), "{peer:?}: {e:?} lacks {w:?}");
            }
        }
    }

    const GROUP: &str =
        "[[peer_group]]\nname = \"rs\"\nremote = [\"127.16.0.0/16\", \"10.9.9.9\"]\n\
        certificate = \"ee.pem\"\nprivate_key = \"ee.key\"\nca = \"ca.pem\"\n";

    #[test]
    fn a_peer_group_reads_its_prefixes_rule_and_files() {
        let cfg =
            load_with_pubkey_files(0o600, &format!("{GROUP}tcp_ports = [179, 1790]\n")).unwrap();
        assert!(cfg.peers.is_empty());
        let g = &cfg.groups[0];
        assert_eq!(g.name, "rs");
        let prefixes: Vec<String> = g.prefixes.iter().map(ToString::to_string).collect();
        assert_eq!(prefixes, ["127.16.0.0/16", "10.9.9.9/32"]);
        assert_eq!(g.identity, MemberIdentity::Address);
        assert!(g.template.signature.is_some());
        assert!(!g.template.initiate);
        assert_eq!(*g.template.tcp_ports, [179, 1790]);
        let ip: IpAddr = "127.16.3.4".parse().unwrap();
        assert!(g.contains(ip));
        assert!(!g.contains("127.17.0.1".parse().unwrap()));
        let m = g.member(ip);
        assert_eq!(m.name, "rs/127.16.3.4");
        assert_eq!(m.remote, ip);
        assert_eq!(*m.tcp_ports, [179, 1790]);
        // A member shares the template's list; an unshared copy does not.
        assert!(std::sync::Arc::ptr_eq(&m.tcp_ports, &g.template.tcp_ports));
        let copy = cfg.unshared_copy();
        let t = &copy.groups[0].template;
        assert_eq!(t.tcp_ports, g.template.tcp_ports);
        assert!(!std::sync::Arc::ptr_eq(&t.tcp_ports, &g.template.tcp_ports));
        let cfg =
            load_with_pubkey_files(0o600, &format!("{GROUP}remote_id = \"*.rs.example.net\"\n"))
                .unwrap();
        assert_eq!(
            cfg.groups[0].identity,
            MemberIdentity::Fqdn("*.rs.example.net".into())
        );
    }

    #[test]
    fn peer_group_errors_name_the_key_and_the_group() {
        let peer = "[[peer]]\nname = \"rs\"\nremote = \"127.0.0.9\"\nauth = \"pubkey\"\n\
            certificate = \"ee.pem\"\nprivate_key = \"ee.key\"\nca = \"ca.pem\"\n";
        let cases: Vec<(String, &[&str])> = vec![
            (
                GROUP.replace("\"10.9.9.9\"", "\"10.9.9.9/40\""),
                &["peer_group[0].remote[1]", "(peer group \"rs\")", "/40"],
            ),
            (
                GROUP.replace("\"10.9.9.9\"", "\"127.16.0.0/16\""),
                &["peer_group[0].remote[1]", "listed twice"],
            ),
            (
                GROUP.replace("remote = [\"127.16.0.0/16\", \"10.9.9.9\"]\n", ""),
                &["peer_group[0].remote", "required key is missing"],
            ),
            (
                format!("{GROUP}auth = \"psk\"\n"),
                &["peer_group[0].auth", "certificate only"],
            ),
            (
                format!("{GROUP}remote_id = \"bad name!\"\n"),
                &["peer_group[0].remote_id", "bad name!"],
            ),
            (
                GROUP.replace("ca = \"ca.pem\"\n", ""),
                &["peer_group[0].ca", "rs", "required key is missing"],
            ),
            (
                format!("{GROUP}tcp_ports = [179, 179]\n"),
                &["peer_group[0].tcp_ports[1]", "listed twice"],
            ),
            (
                format!("{GROUP}local = \"::1\"\n"),
                &["peer_group[0].local", "no prefix in remote is"],
            ),
            (
                format!("{peer}{GROUP}"),
                &["peer_group[0].name", "a [[peer]] has the same name"],
            ),
            (format!("{GROUP}psk_file = \"x\"\n"), &["psk_file"]),
        ];
        for (text, want) in cases {
            let e = load_with_pubkey_files(0o600, &text)
                .unwrap_err()
                .to_string();
            for w in want {
                assert!(e.contains(w), "{w:?} not in: {e}");
            }
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(14400)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h6m"), Ok(Duration::from_secs(3960)));
        for bad in ["", "h", "10", "1x", "1 h", "-1h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_duration(DEFAULT_MKT_LIFETIME), "1h6m");
        assert_eq!(format_duration(Duration::from_secs(90061)), "1d1h1m1s");
    }

    #[test]
    fn psk_formats() {
        let hex64 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
        assert_eq!(decode_psk(hex64.as_bytes()).map(|p| p.len()), Ok(32));
        let hex16 = format!("0x{}\n", "ab".repeat(16));
        assert_eq!(
            decode_psk(hex16.as_bytes()).map(|p| p.as_bytes().to_vec()),
            Ok(vec![0xab; 16])
        );
        let phrase = b"correct horse battery\n";
        assert_eq!(
            decode_psk(phrase).map(|p| p.as_bytes().to_vec()),
            Ok(b"correct horse battery".to_vec())
        );
        assert_eq!(
            decode_psk(b"correct horse battery\r\n").map(|p| p.as_bytes().to_vec()),
            Ok(b"correct horse battery".to_vec())
        );
        // Short hex-looking strings are ASCII secrets.
        let short_hex = "abcd".repeat(4);
        assert_eq!(
            decode_psk(short_hex.as_bytes()).map(|p| p.as_bytes().to_vec()),
            Ok(short_hex.as_bytes().to_vec())
        );
        // Odd-length hex is ASCII too.
        let odd = "0".repeat(33);
        assert_eq!(decode_psk(odd.as_bytes()).map(|p| p.len()), Ok(33));
        // Only one newline is stripped.
        let two = b"sixteen octets!!\n\n";
        assert_eq!(
            decode_psk(two).map(|p| p.as_bytes().to_vec()),
            Ok(b"sixteen octets!!\n".to_vec())
        );
        assert!(decode_psk(b"").is_err());
        assert!(decode_psk(b"\n").is_err());
        assert!(decode_psk(b"0xabc").is_err());
        assert!(decode_psk(b"0x").is_err());
    }

    #[test]
    fn short_psks_are_refused() {
        for (contents, octets) in [
            (&b"x"[..], 1),
            (b"abc\n", 3),
            (b"secret\n", 6),
            (b"0x0102ff\n", 3),
            (b"fifteen octets!", 15),
        ] {
            let e = decode_psk(contents).err().unwrap_or_default();
            assert!(
                e.contains(&format!("a key of {octets} octets")) && e.contains("at least 16"),
                "{contents:?}: {e}"
            );
        }
        assert!(decode_psk(b"sixteen octets!!").is_ok());
    }

    #[test]
    fn psk_debug_is_redacted() {
        let p = Psk::new(b"topsecret".to_vec());
        assert!(!format!("{p:?}").contains("topsecret"));
    }

    #[test]
    fn distinguished_name_identities() {
        let id = parse_identity("C=CH, O=Example, CN=r1").unwrap();
        assert_eq!(id.id_type, aokd_proto::numbers::IdType::ID_DER_ASN1_DN);
        assert_eq!(id.to_string(), "C=CH, O=Example, CN=r1");
        let e = parse_identity("CN=r1, XX=2").unwrap_err();
        assert!(e.contains("unknown attribute type \"XX\""), "{e}");
    }

    #[test]
    fn identities() {
        use aokd_proto::numbers::IdType;
        assert_eq!(
            parse_identity("192.0.2.1"),
            Ok(Identity::from_ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))))
        );
        assert_eq!(
            parse_identity("2001:db8::1").map(|i| i.id_type),
            Ok(IdType::ID_IPV6_ADDR)
        );
        assert_eq!(
            parse_identity("r1.example.net"),
            Ok(Identity {
                id_type: IdType::ID_FQDN,
                data: b"r1.example.net"[..].into()
            })
        );
        assert_eq!(
            parse_identity("a@example.net").map(|i| i.id_type),
            Ok(IdType::ID_RFC822_ADDR)
        );
        assert!(parse_identity("").is_err());
        assert!(parse_identity("has space").is_err());
        assert!(parse_identity(&"x".repeat(MAX_IDENTITY_LEN + 1)).is_err());
        assert_eq!(
            parse_identity("r1.example.net").map(|i| i.to_string()),
            Ok("r1.example.net".to_owned())
        );
    }

    #[test]
    fn proposals() {
        use aokd_proto::crypto::{Encr, Prf};
        use aokd_proto::numbers::DhGroup;
        let p: IkeSuite = "chacha20poly1305-prfsha512-ecp256".parse().unwrap();
        assert_eq!(p.encr, Encr::ChaCha20Poly1305);
        assert_eq!(p.prf, Prf::HmacSha512);
        assert_eq!(p.group, DhGroup::ECP_256);
        assert_eq!(p.to_string(), "chacha20poly1305-prfsha512-ecp256");
        assert_eq!(
            DEFAULT_IKE_PROPOSAL.to_string(),
            "aes256gcm16-prfsha256-x25519"
        );
        for bad in [
            "aes256gcm16-prfsha256",
            "aes256gcm16-prfsha1-x25519",
            "aes-prfsha256-x25519",
            "aes256gcm16-prfsha256-modp2048",
            "aes256gcm16-prfsha256-curve25519",
            "a-b-c-d",
        ] {
            assert!(bad.parse::<IkeSuite>().is_err(), "{bad}");
        }
    }
}
