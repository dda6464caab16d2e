//! The preload policy: which sockets the library hands to aokd, and what it
//! does when aokd cannot be asked.
//!
//! The policy comes from the environment, read once when the library is
//! loaded (docs/preload.md):
//!
//! | Variable | Meaning | Default |
//! |---|---|---|
//! | `AOKD_ATTACH_SOCKET` | path of aokd's attach socket | `/run/aokd/attach.sock` |
//! | `AOKD_PORTS` | comma list of TCP ports: a `connect()` is covered when its remote port is listed, a `listen()` when its local port is | `179` |
//! | `AOKD_PEERS` | comma list of IP addresses or prefixes that restrict covered `connect()`s | every peer |
//! | `AOKD_WAIT_MS` | acquire timeout sent with each connect request | the daemon's own |
//! | `AOKD_ON_ERROR` | `fail-closed` or `open` | `fail-closed` |
//! | `AOKD_GUARD` | `auto`, `tcp-ao` or `tcp-md5`: the mechanism of the library's own guard key under `fail-closed` | `auto` |
//! | `AOKD_PRELOAD_DEBUG` | `1`: diagnostics on stderr | off |
//!
//! Parsing is pure ([`Policy::from_lookup`] takes the variable lookup as a
//! function) and never panics; a malformed variable is a [`PolicyError`]
//! naming the variable and the offending item.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Environment variable: path of aokd's attach socket.
pub const ENV_SOCKET: &str = "AOKD_ATTACH_SOCKET";
/// Environment variable: covered TCP ports.
pub const ENV_PORTS: &str = "AOKD_PORTS";
/// Environment variable: peers that restrict covered connects.
pub const ENV_PEERS: &str = "AOKD_PEERS";
/// Environment variable: acquire timeout override in milliseconds.
pub const ENV_WAIT_MS: &str = "AOKD_WAIT_MS";
/// Environment variable: behaviour when aokd cannot attach a socket.
pub const ENV_ON_ERROR: &str = "AOKD_ON_ERROR";
/// Environment variable: the mechanism of the library's guard key.
pub const ENV_GUARD: &str = "AOKD_GUARD";
/// Environment variable: diagnostics on stderr.
pub const ENV_DEBUG: &str = "AOKD_PRELOAD_DEBUG";

/// The attach socket used when `AOKD_ATTACH_SOCKET` is unset.
pub const DEFAULT_SOCKET: &str = "/run/aokd/attach.sock";
/// The covered port when `AOKD_PORTS` is unset: BGP (RFC 4271 8.2.1).
pub const DEFAULT_PORT: u16 = 179;
/// The largest accepted `AOKD_WAIT_MS`: one hour. A connect() never waits
/// longer than this for a negotiation.
pub const MAX_WAIT_MS: u64 = 3_600_000;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// What the library does when a covered socket cannot be attached: aokd is
/// unreachable, does not answer in time, or answers with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// The call fails: `connect()` and `listen()` return -1 with `EACCES`
    /// and no SYN is sent; an accepted socket is closed and `accept()`
    /// returns -1 with `ECONNABORTED`.
    FailClosed,
    /// The call goes on without keys.
    Open,
}

impl OnError {
    fn parse(value: &str) -> Result<Self, PolicyError> {
        match value.trim() {
            "fail-closed" | "closed" => Ok(OnError::FailClosed),
            "open" => Ok(OnError::Open),
            other => Err(PolicyError::new(
                ENV_ON_ERROR,
                other,
                "expected \"fail-closed\" or \"open\"",
            )),
        }
    }
}

/// `AOKD_GUARD`: which mechanism the library's own guard key uses when
/// aokd cannot be reached ([`crate::guard`]). It must match what aokd
/// will install on the socket (the kernel refuses TCP-AO and TCP-MD5 keys
/// for the same peer on one socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardChoice {
    /// TCP-AO where the kernel has it, TCP-MD5 otherwise (aokd's
    /// `backend = "auto"`).
    Auto,
    /// TCP-AO only.
    TcpAo,
    /// TCP-MD5 only (peers with `backend = "tcp-md5"` on a kernel that has
    /// TCP-AO).
    TcpMd5,
}

impl GuardChoice {
    fn parse(value: &str) -> Result<Self, PolicyError> {
        match value.trim() {
            "auto" => Ok(GuardChoice::Auto),
            "tcp-ao" => Ok(GuardChoice::TcpAo),
            "tcp-md5" => Ok(GuardChoice::TcpMd5),
            other => Err(PolicyError::new(
                ENV_GUARD,
                other,
                "expected \"auto\", \"tcp-ao\" or \"tcp-md5\"",
            )),
        }
    }
}

/// An IP prefix from `AOKD_PEERS`, host bits cleared. IPv4-mapped IPv6
/// addresses are stored and matched as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

impl IpPrefix {
    /// Parses `ADDR` (a host prefix) or `ADDR/LEN`.
    fn parse(item: &str) -> Result<Self, PolicyError> {
        let bad = |why: &'static str| PolicyError::new(ENV_PEERS, item, why);
        let (addr_text, len_text) = match item.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (item, None),
        };
        let parsed: IpAddr = addr_text
            .parse()
            .map_err(|_| bad("not an IP address or prefix"))?;
        let mapped_v4 = match parsed {
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
            IpAddr::V4(_) => None,
        };
        let max = if parsed.is_ipv4() { 32 } else { 128 };
        let len = match len_text {
            None => max,
            Some(text) => {
                let len: u8 = text.parse().map_err(|_| bad("bad prefix length"))?;
                if len > max {
                    return Err(bad("prefix length too long"));
                }
                len
            }
        };
        let (addr, len) = match mapped_v4 {
            // ::ffff:a.b.c.d/len covers the IPv4 prefix a.b.c.d/(len-96).
            Some(v4) if len >= 96 => (IpAddr::V4(v4), len - 96),
            Some(_) => return Err(bad("IPv4-mapped prefix shorter than /96")),
            None => (parsed, len),
        };
        Ok(IpPrefix {
            addr: mask(addr, len),
            len,
        })
    }

    /// Whether `ip` lies in this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// `addr` with all but the first `len` bits cleared.
fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let keep = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & keep))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let keep = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & keep))
        }
    }
}

/// A malformed policy variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The variable's name.
    pub variable: &'static str,
    /// The offending value or list item.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl PolicyError {
    fn new(variable: &'static str, value: &str, reason: &'static str) -> Self {
        PolicyError {
            variable,
            value: value.to_owned(),
            reason,
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?}: {}", self.variable, self.value, self.reason)
    }
}

impl std::error::Error for PolicyError {}

/// The parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// aokd's attach socket.
    pub socket: PathBuf,
    /// Covered TCP ports, sorted and deduplicated.
    pub ports: Vec<u16>,
    /// Peers that restrict covered connects; `None`: every peer.
    pub peers: Option<Vec<IpPrefix>>,
    /// Acquire timeout sent with connect requests; `None`: aokd's own.
    pub wait: Option<Duration>,
    /// Behaviour when a covered socket cannot be attached.
    pub on_error: OnError,
    /// The guard key's mechanism under `fail-closed`.
    pub guard: GuardChoice,
    /// Diagnostics on stderr.
    pub debug: bool,
}

impl Policy {
    /// Reads the policy from the process environment.
    pub fn from_env() -> Result<Self, PolicyError> {
        Self::from_lookup(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Builds the policy from a variable lookup (`None`: unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, PolicyError> {
        let socket = match lookup(ENV_SOCKET) {
            None => PathBuf::from(DEFAULT_SOCKET),
            Some(path) => parse_socket(&path)?,
        };
        let ports = match lookup(ENV_PORTS) {
            None => vec![DEFAULT_PORT],
            Some(list) => parse_ports(&list)?,
        };
        let peers = match lookup(ENV_PEERS) {
            None => None,
            Some(list) => Some(parse_peers(&list)?),
        };
        let wait = match lookup(ENV_WAIT_MS) {
            None => None,
            Some(ms) => Some(parse_wait(&ms)?),
        };
        let on_error = match lookup(ENV_ON_ERROR) {
            None => OnError::FailClosed,
            Some(value) => OnError::parse(&value)?,
        };
        let guard = match lookup(ENV_GUARD) {
            None => GuardChoice::Auto,
            Some(value) => GuardChoice::parse(&value)?,
        };
        Ok(Policy {
            socket,
            ports,
            peers,
            wait,
            on_error,
            guard,
            debug: debug_enabled(lookup(ENV_DEBUG).as_deref()),
        })
    }

    /// Whether a TCP `connect()` to `remote` is covered.
    pub fn covers_connect(&self, remote: SocketAddr) -> bool {
        self.covers_port(remote.port())
            && match &self.peers {
                None => true,
                Some(prefixes) => prefixes.iter().any(|p| p.contains(remote.ip())),
            }
    }

    /// Whether a TCP `listen()` on local port `port` is covered.
    pub fn covers_port(&self, port: u16) -> bool {
        self.ports.binary_search(&port).is_ok()
    }
}

/// Whether `AOKD_PRELOAD_DEBUG` asks for diagnostics: anything but unset,
/// empty, `0`, `no`, `off` or `false`.
pub fn debug_enabled(value: Option<&str>) -> bool {
    match value.map(str::trim) {
        None | Some("" | "0" | "no" | "off" | "false") => false,
        Some(_) => true,
    }
}

/// The non-empty items of a comma list, trimmed.
fn items(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_socket(path: &str) -> Result<PathBuf, PolicyError> {
    if path.is_empty() {
        return Err(PolicyError::new(ENV_SOCKET, path, "empty path"));
    }
    if path.len() > MAX_SOCKET_PATH {
        return Err(PolicyError::new(
            ENV_SOCKET,
            path,
            "longer than a Unix socket path may be (107 bytes)",
        ));
    }
    Ok(PathBuf::from(path))
}

fn parse_ports(list: &str) -> Result<Vec<u16>, PolicyError> {
    let mut ports = Vec::new();
    for item in items(list) {
        match item.parse::<u16>() {
            Ok(0) => return Err(PolicyError::new(ENV_PORTS, item, "port 0")),
            Ok(port) => ports.push(port),
            Err(_) => {
                return Err(PolicyError::new(
                    ENV_PORTS,
                    item,
                    "not a TCP port (1-65535)",
                ))
            }
        }
    }
    if ports.is_empty() {
        return Err(PolicyError::new(ENV_PORTS, list, "no port listed"));
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

fn parse_peers(list: &str) -> Result<Vec<IpPrefix>, PolicyError> {
    let peers = items(list)
        .map(IpPrefix::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if peers.is_empty() {
        return Err(PolicyError::new(ENV_PEERS, list, "no peer listed"));
    }
    Ok(peers)
}

fn parse_wait(value: &str) -> Result<Duration, PolicyError> {
    match value.trim().parse::<u64>() {
        Ok(ms) if ms <= MAX_WAIT_MS => Ok(Duration::from_millis(ms)),
        Ok(_) => Err(PolicyError::new(
            ENV_WAIT_MS,
            value,
            "longer than one hour (3600000 ms)",
        )),
        Err(_) => Err(PolicyError::new(
            ENV_WAIT_MS,
            value,
            "not a number of milliseconds",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn policy(vars: &[(&str, &str)]) -> Result<Policy, PolicyError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Policy::from_lookup(|name| map.get(name).cloned())
    }

    fn sa(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn defaults() {
        let p = policy(&[]).unwrap();
        assert_eq!(p.socket, PathBuf::from("/run/aokd/attach.sock"));
        assert_eq!(p.ports, vec![179]);
        assert_eq!(p.peers, None);
        assert_eq!(p.wait, None);
        assert_eq!(p.on_error, OnError::FailClosed);
        assert_eq!(p.guard, GuardChoice::Auto);
        assert!(!p.debug);
        assert!(p.covers_connect(sa("192.0.2.1:179")));
        assert!(p.covers_connect(sa("[2001:db8::1]:179")));
        assert!(!p.covers_connect(sa("192.0.2.1:1790")));
        assert!(p.covers_port(179));
        assert!(!p.covers_port(22));
    }

    #[test]
    fn every_variable() {
        let p = policy(&[
            (ENV_SOCKET, "/tmp/a.sock"),
            (ENV_PORTS, " 1790, 179 ,179,,"),
            (ENV_PEERS, "10.0.0.0/8, 2001:db8::1"),
            (ENV_WAIT_MS, "2500"),
            (ENV_ON_ERROR, "open"),
            (ENV_DEBUG, "1"),
        ])
        .unwrap();
        assert_eq!(p.socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(p.ports, vec![179, 1790]);
        assert_eq!(p.wait, Some(Duration::from_millis(2500)));
        assert_eq!(p.on_error, OnError::Open);
        assert!(p.debug);
        assert!(p.covers_connect(sa("10.1.2.3:179")));
        assert!(p.covers_connect(sa("10.1.2.3:1790")));
        assert!(!p.covers_connect(sa("11.1.2.3:179")));
        assert!(p.covers_connect(sa("[2001:db8::1]:179")));
        assert!(!p.covers_connect(sa("[2001:db8::2]:179")));
        assert!(!p.covers_connect(sa("10.1.2.3:22")));
    }

    #[test]
    fn on_error_values() {
        for (text, want) in [
            ("fail-closed", OnError::FailClosed),
            ("closed", OnError::FailClosed),
            (" open ", OnError::Open),
        ] {
            assert_eq!(policy(&[(ENV_ON_ERROR, text)]).unwrap().on_error, want);
        }
        let err = policy(&[(ENV_ON_ERROR, "fail-open")]).unwrap_err();
        assert_eq!(err.variable, ENV_ON_ERROR);
        assert_eq!(err.value, "fail-open");
    }

    #[test]
    fn guard_values() {
        for (text, want) in [
            ("auto", GuardChoice::Auto),
            (" tcp-ao", GuardChoice::TcpAo),
            ("tcp-md5 ", GuardChoice::TcpMd5),
        ] {
            assert_eq!(policy(&[(ENV_GUARD, text)]).unwrap().guard, want);
        }
        let err = policy(&[(ENV_GUARD, "md5")]).unwrap_err();
        assert_eq!((err.variable, err.value.as_str()), (ENV_GUARD, "md5"));
    }

    #[test]
    fn debug_values() {
        for off in [None, Some(""), Some("0"), Some("no"), Some("off")] {
            assert!(!debug_enabled(off), "{off:?}");
        }
        for on in ["1", "yes", "true"] {
            assert!(debug_enabled(Some(on)), "{on}");
        }
    }

    #[test]
    fn bad_ports() {
        for bad in ["", " , ", "0", "65536", "bgp", "179;1790", "-1", "17 9"] {
            let err = policy(&[(ENV_PORTS, bad)]).unwrap_err();
            assert_eq!(err.variable, ENV_PORTS, "{bad:?}");
        }
        assert_eq!(
            policy(&[(ENV_PORTS, "179,x")]).unwrap_err().value,
            "x",
            "the error names the bad item"
        );
    }

    #[test]
    fn bad_peers() {
        for bad in [
            "",
            "10.0.0.0/33",
            "2001:db8::/129",
            "10.0.0.0/",
            "10.0.0",
            "example.net",
            "::ffff:10.0.0.0/95",
            "10.0.0.1:179",
        ] {
            let err = policy(&[(ENV_PEERS, bad)]).unwrap_err();
            assert_eq!(err.variable, ENV_PEERS, "{bad:?}");
        }
    }

    #[test]
    fn bad_wait_and_socket() {
        for bad in ["", "-5", "1.5", "3600001", "10s"] {
            let err = policy(&[(ENV_WAIT_MS, bad)]).unwrap_err();
            assert_eq!(err.variable, ENV_WAIT_MS, "{bad:?}");
        }
        assert_eq!(
            policy(&[(ENV_WAIT_MS, "0")]).unwrap().wait,
            Some(Duration::ZERO)
        );
        assert_eq!(
            policy(&[(ENV_WAIT_MS, "3600000")]).unwrap().wait,
            Some(Duration::from_secs(3600))
        );
        assert!(policy(&[(ENV_SOCKET, "")]).is_err());
        let long = format!("/{}", "a".repeat(107));
        assert!(policy(&[(ENV_SOCKET, &long)]).is_err());
        assert!(policy(&[(ENV_SOCKET, &long[..107])]).is_ok());
    }

    #[test]
    fn prefixes() {
        let p = IpPrefix::parse("192.0.2.77/24").unwrap();
        assert_eq!(p.to_string(), "192.0.2.0/24", "host bits are cleared");
        assert!(p.contains("192.0.2.1".parse().unwrap()));
        assert!(p.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!p.contains("192.0.3.1".parse().unwrap()));
        assert!(!p.contains("::c000:201".parse().unwrap()));

        let all4 = IpPrefix::parse("0.0.0.0/0").unwrap();
        assert!(all4.contains("203.0.113.9".parse().unwrap()));
        assert!(!all4.contains("2001:db8::1".parse().unwrap()));
        let all6 = IpPrefix::parse("::/0").unwrap();
        assert!(all6.contains("2001:db8::1".parse().unwrap()));
        assert!(!all6.contains("203.0.113.9".parse().unwrap()));

        let host6 = IpPrefix::parse("2001:db8::1").unwrap();
        assert_eq!(host6.to_string(), "2001:db8::1/128");
        assert!(!host6.contains("2001:db8::".parse().unwrap()));

        let mapped = IpPrefix::parse("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        assert!(mapped.contains("10.9.9.9".parse().unwrap()));
        assert!(mapped.contains("::ffff:10.9.9.9".parse().unwrap()));
    }

    #[test]
    fn peers_restrict_only_connects() {
        let p = policy(&[(ENV_PEERS, "127.0.0.2")]).unwrap();
        assert!(p.covers_connect(sa("127.0.0.2:179")));
        assert!(p.covers_connect(sa("[::ffff:127.0.0.2]:179")));
        assert!(!p.covers_connect(sa("127.0.0.3:179")));
        assert!(p.covers_port(179));
    }
}
