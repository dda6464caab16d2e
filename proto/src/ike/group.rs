//! Peer groups (docs/protocol.md, "Peer groups"): one configuration for
//! every neighbour inside some address prefixes, authenticated by
//! certificate. A neighbour becomes a *member*, a peer like a configured
//! one (named `GROUP/ADDRESS`), when its IKE_SA_INIT arrives from inside a
//! prefix or when the driver asks for it ([`super::Endpoint::add_member`],
//! a connect on demand or a member's state after a restart); it is
//! forgotten once it has no IKE SA, no MKT and nothing due
//! ([`super::Event::MemberForgotten`]). Configured peers win: a datagram
//! from a configured peer's address never reaches a group.
//!
//! This module holds the group's configuration, the prefix type, the
//! identity rule and how a member's [`PeerConfig`] is made from the group's
//! template; the endpoint owns the members.

use core::fmt;
use core::str::FromStr;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::config::{Identity, PeerConfig};
use crate::numbers::IdType;

/// An IPv4 or IPv6 prefix, `192.0.2.0/24` or `2001:db8::/64`, with its
/// host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

impl IpPrefix {
    /// The prefix of `addr` with `len` bits; host bits are cleared. Error:
    /// `len` longer than the address.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, String> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("prefix length /{len} is longer than {max} bits"));
        }
        Ok(IpPrefix {
            addr: mask(addr, len),
            len,
        })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether this is `/0`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `ip` is inside (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// `ADDRESS/LEN`, or an address alone for a host prefix.
impl FromStr for IpPrefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IP prefix (ADDRESS/LENGTH)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .map_err(|_| format!("{s:?}: the prefix length {l:?} is not a number"))?,
        };
        IpPrefix::new(addr, len).map_err(|e| format!("{s:?}: {e}"))
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

/// Which IKE identity a member must present; its certificate must name it
/// as well (RFC 4945: SAN iPAddress for an address, SAN dNSName for a
/// name), which the certificate check enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberIdentity {
    /// Its source address (ID_IPV4_ADDR / ID_IPV6_ADDR), so the
    /// certificate's SAN IP must equal the address it speaks from.
    Address,
    /// An ID_FQDN matching the pattern: a name, or `*.` and a suffix that
    /// matches one or more labels (`*.rs.example.net` matches
    /// `r1.rs.example.net`), compared without regard to case.
    Fqdn(String),
}

impl MemberIdentity {
    /// Whether `id` is acceptable from the member at `ip`.
    pub fn accepts(&self, id: &Identity, ip: IpAddr) -> bool {
        match self {
            MemberIdentity::Address => *id == Identity::from_ip(canonical(ip)),
            MemberIdentity::Fqdn(pattern) => {
                id.id_type == IdType::ID_FQDN
                    && std::str::from_utf8(&id.data).is_ok_and(|name| fqdn_matches(pattern, name))
            }
        }
    }
}

impl fmt::Display for MemberIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemberIdentity::Address => f.write_str("its address"),
            MemberIdentity::Fqdn(p) => write!(f, "an FQDN matching {p}"),
        }
    }
}

fn fqdn_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    match p.strip_prefix("*.") {
        Some(suffix) => n.len() > suffix.len() + 1 && n.ends_with(&format!(".{suffix}")),
        None => p == n,
    }
}

/// One `[[peer_group]]`: prefixes, the member identity rule and the
/// template of every member's configuration.
#[derive(Debug)]
pub struct PeerGroupConfig {
    /// Operator's name; members are named `NAME/ADDRESS`.
    pub name: String,
    /// Where members may be (IPv4 and IPv6).
    pub prefixes: Vec<IpPrefix>,
    /// The members' IKE UDP port (for initiating to them).
    pub ike_port: u16,
    pub identity: MemberIdentity,
    /// A member's configuration but for `name`, `remote` and `remote_id`,
    /// which [`PeerGroupConfig::member`] sets. Its terms
    /// ([`PeerConfig::terms`]) are shared by all members. `local` is the local address toward members of the
    /// template's address family; `initiate` applies to members made on
    /// demand or restored (a member that first spoke is a responder).
    pub template: PeerConfig,
    /// The local address toward members of the other address family, if
    /// the group has prefixes of both.
    pub local_other_family: Option<IpAddr>,
}

impl PeerGroupConfig {
    /// Whether `ip` is inside one of the prefixes.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.prefixes.iter().any(|p| p.contains(ip))
    }

    /// The name of the member at `ip`.
    pub fn member_name(&self, ip: IpAddr) -> String {
        format!("{}/{}", self.name, canonical(ip))
    }

    /// The address of a member from its name, if `name` names one of
    /// this group's members.
    pub fn member_address(&self, name: &str) -> Option<IpAddr> {
        let rest = name.strip_prefix(&self.name)?.strip_prefix('/')?;
        let ip: IpAddr = rest.parse().ok()?;
        (self.contains(ip) && self.member_name(ip) == name).then_some(ip)
    }

    /// The configuration of the member at `ip`: the template with the
    /// member's name, address (and the group's IKE port) and expected
    /// identity.
    pub fn member(&self, ip: IpAddr, initiate: bool) -> PeerConfig {
        let ip = canonical(ip);
        let t = &self.template;
        let local = match self.local_other_family {
            Some(other) if other.is_ipv4() == ip.is_ipv4() => other,
            _ => t.local,
        };
        let local_id = if t.local_id == Identity::from_ip(t.local) {
            Identity::from_ip(local)
        } else {
            t.local_id.clone()
        };
        let remote_id = match &self.identity {
            MemberIdentity::Address => Identity::from_ip(ip),
            MemberIdentity::Fqdn(p) => Identity::parse(p),
        };
        PeerConfig {
            name: self.member_name(ip),
            remote: SocketAddr::new(ip, self.ike_port),
            local,
            local_id,
            remote_id,
            initiate,
            // The template's, shared: no copy per member.
            terms: Arc::clone(&t.terms),
        }
    }
}

/// The group of `ip`: the first whose prefixes contain it. O(groups ×
/// prefixes), a configuration size, not a number of peers.
pub(super) fn group_of(groups: &[PeerGroupConfig], ip: IpAddr) -> Option<usize> {
    groups.iter().position(|g| g.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_mask_and_contain() {
        let p: IpPrefix = "192.0.2.77/24".parse().unwrap();
        assert_eq!(p.to_string(), "192.0.2.0/24");
        assert!(p.contains("192.0.2.1".parse().unwrap()));
        assert!(p.contains("::ffff:192.0.2.9".parse().unwrap()));
        assert!(!p.contains("192.0.3.1".parse().unwrap()));
        assert!(!p.contains("2001:db8::1".parse().unwrap()));
        let p6: IpPrefix = "2001:db8:1::/48".parse().unwrap();
        assert!(p6.contains("2001:db8:1:2::3".parse().unwrap()));
        assert!(!p6.contains("2001:db8:2::3".parse().unwrap()));
        let host: IpPrefix = "10.1.2.3".parse().unwrap();
        assert_eq!(host.len(), 32);
        let all: IpPrefix = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.5".parse().unwrap()));
        for bad in ["10.0.0.0/33", "10.0.0.0/x", "nonsense/8", "2001:db8::/129"] {
            let e = bad.parse::<IpPrefix>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn member_identity_rules() {
        let ip: IpAddr = "192.0.2.5".parse().unwrap();
        let a = MemberIdentity::Address;
        assert!(a.accepts(&Identity::parse("192.0.2.5"), ip));
        assert!(!a.accepts(&Identity::parse("192.0.2.6"), ip));
        assert!(!a.accepts(&Identity::parse("r5.example.net"), ip));
        let f = MemberIdentity::Fqdn("*.rs.example.net".into());
        assert!(f.accepts(&Identity::parse("r1.rs.example.net"), ip));
        assert!(f.accepts(&Identity::parse("A.B.RS.example.net"), ip));
        assert!(!f.accepts(&Identity::parse("rs.example.net"), ip));
        assert!(!f.accepts(&Identity::parse("r1.xrs.example.net"), ip));
        assert!(!f.accepts(&Identity::parse("192.0.2.5"), ip));
        let exact = MemberIdentity::Fqdn("r1.example.net".into());
        assert!(exact.accepts(&Identity::parse("R1.example.net"), ip));
        assert!(!exact.accepts(&Identity::parse("r2.example.net"), ip));
    }

    #[test]
    fn members_share_the_templates_terms() {
        use crate::crypto::Secret;
        let local: IpAddr = "192.0.2.1".parse().unwrap();
        let template = PeerConfig::with_psk(
            "t",
            local,
            "192.0.2.1:500".parse().unwrap(),
            Secret::new(b"group key".to_vec()),
        );
        let g = PeerGroupConfig {
            name: "rs".into(),
            prefixes: vec!["198.51.100.0/24".parse().unwrap()],
            ike_port: 500,
            identity: MemberIdentity::Address,
            template,
            local_other_family: None,
        };
        let a = g.member("198.51.100.7".parse().unwrap(), false);
        let mut b = g.member("198.51.100.8".parse().unwrap(), true);
        assert!(Arc::ptr_eq(&a.terms, &g.template.terms));
        assert!(Arc::ptr_eq(&b.terms, &g.template.terms));
        assert_eq!(a.name, "rs/198.51.100.7");
        assert_eq!((a.initiate, b.initiate), (false, true));
        // Changing one member's term gives it terms of its own.
        b.include_options = false;
        assert!(!Arc::ptr_eq(&b.terms, &g.template.terms));
        assert!(a.include_options && g.template.include_options);
    }
}
