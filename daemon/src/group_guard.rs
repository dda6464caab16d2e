//! The peer groups' prefix guard on listeners (docs/attach.md, "Peer
//! groups"): a listener on one of a `[[peer_group]]`'s TCP ports gets, for
//! each of the group's prefixes, a key that was never sent anywhere, so
//! that a SYN from an address of the prefix that is not a member yet fails
//! closed instead of being accepted unsigned.
//!
//! - The members' own keys (their MKTs, or their host guard) are host keys
//!   on the same listener and win: TCP-MD5 takes the longest matching
//!   prefix, and TCP-AO looks a key up by address and KeyID, and the
//!   prefix guard's KeyIDs ([`GROUP_GUARD_KEY_ID`], 247) are no member
//!   key's.
//! - Linux refuses (`EEXIST`) two TCP-AO keys of overlapping prefixes that
//!   share a KeyID, so a prefix inside another of the listener's guarded
//!   prefixes gets no key of its own ([`listener_prefixes`]).
//! - An IPv4 socket can hold keys for IPv4 addresses only; an IPv6 socket
//!   holds IPv4 prefixes as v4-mapped ones.
//! - After a restart the guard keys already on a TCP-AO listener are kept
//!   (any never-sent key guards as well as another) and only the missing
//!   ones added; other keys with KeyID 247 (a peer's guard from an aokd
//!   whose peer guards still used it) are deleted first. TCP-MD5 keys are
//!   replaced in place, never removed.

use std::net::SocketAddr;
use std::sync::Arc;

use aokd_proto::mkt::MasterKeyTuple;

use crate::config::IpPrefix;
use crate::kernel::{canonical, Backend, Cause, KernelError};
use crate::socket_keys::{SocketKeys, GROUP_GUARD_KEY_ID};

/// A peer group as the key manager sees it.
pub struct CoveredGroup {
    /// The group's name (unique among peers and groups).
    pub name: String,
    /// Where its members may be.
    pub prefixes: Vec<IpPrefix>,
    /// Its members' TCP ports (the template's).
    pub ports: Arc<[u16]>,
    /// The backend its members use.
    pub backend: Backend,
}

impl CoveredGroup {
    /// Whether a listener on `port` is the group's.
    pub fn covers_port(&self, port: u16) -> bool {
        self.ports.contains(&port)
    }
}

/// Why a listener is guarded, for `aoctl sockets` and the attach answer:
/// `peers` (the guarded peers' reason, if any) followed by one part for
/// each group in `groups`.
pub fn with_groups(peers: Option<String>, groups: &[String]) -> String {
    let mut parts: Vec<String> = peers.into_iter().collect();
    parts.extend(groups.iter().map(|g| {
        format!("peer group {g}: the addresses of its prefixes without a member are guarded")
    }));
    parts.join("; ")
}

/// The prefixes of `groups` a listener bound to `local` gets a guard key
/// for, sorted: those of its address family (IPv4 ones on an IPv6 socket
/// too), without duplicates and without those inside another one.
pub fn listener_prefixes<'a>(
    local: Option<SocketAddr>,
    groups: impl IntoIterator<Item = &'a CoveredGroup>,
) -> Vec<IpPrefix> {
    let v4_socket = matches!(local, Some(SocketAddr::V4(_)));
    let mut all: Vec<IpPrefix> = groups
        .into_iter()
        .flat_map(|g| g.prefixes.iter().copied())
        .filter(|p| !v4_socket || p.addr().is_ipv4())
        .collect();
    all.sort();
    all.dedup();
    let inside_another = |p: &IpPrefix| {
        all.iter()
            .any(|q| q != p && q.len() < p.len() && q.contains(p.addr()))
    };
    all.iter().copied().filter(|p| !inside_another(p)).collect()
}

/// Puts the guard key `guard` (KeyIDs [`GROUP_GUARD_KEY_ID`]) for each of
/// `prefixes` on the listener `sock` with `backend`; TCP-AO keys with
/// KeyID 247 that are not one of these are deleted. Returns how many keys
/// were added or replaced.
pub fn guard_listener<K: SocketKeys>(
    keys: &K,
    sock: &K::Socket,
    backend: Backend,
    prefixes: &[IpPrefix],
    guard: &MasterKeyTuple,
) -> Result<usize, KernelError> {
    match backend {
        Backend::Md5 => {
            for p in prefixes {
                keys.md5_set_prefix(sock, p.addr(), p.len(), guard.master_key.as_bytes())?;
            }
            Ok(prefixes.len())
        }
        Backend::Ao => {
            let on_socket = match keys.ao_keys(sock) {
                Ok(k) => k,
                Err(e) if e.cause() == Some(Cause::NotFound) => Vec::new(),
                Err(e) => return Err(e),
            };
            let wanted = |addr, len| prefixes.iter().any(|p| (p.addr(), p.len()) == (addr, len));
            // Every key with KeyID 247 is a group guard, or the guard of a
            // peer from an aokd before peer guards left 247 (a listener
            // taken back after an upgrade): that one would make Linux
            // refuse the prefix guard, and the peer's own guard (240-246)
            // comes back with its next re-key.
            let mut present: Vec<(std::net::IpAddr, u8)> = Vec::new();
            for k in on_socket.iter().filter(|k| {
                (k.send_id == GROUP_GUARD_KEY_ID || k.recv_id == GROUP_GUARD_KEY_ID)
                    && k.ifindex.is_none()
            }) {
                let (addr, len) = (canonical(k.peer), k.prefix);
                let kept = k.send_id == GROUP_GUARD_KEY_ID
                    && k.recv_id == GROUP_GUARD_KEY_ID
                    && wanted(addr, len);
                if kept {
                    present.push((addr, len));
                } else {
                    // A listener has no Current_key or RNext_key to move.
                    keys.ao_del(sock, addr, len, k.send_id, k.recv_id, None, None)?;
                }
            }
            let mut added = 0;
            for p in prefixes {
                if !present.contains(&(p.addr(), p.len())) {
                    keys.ao_add(sock, p.addr(), p.len(), guard, false, false)?;
                    added += 1;
                }
            }
            Ok(added)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::sys::TcpState;
    use crate::socket_keys::fake::FakeKernel;
    use crate::socket_keys::{group_guard_key, guard_key};

    fn group(name: &str, prefixes: &[&str]) -> CoveredGroup {
        CoveredGroup {
            name: name.into(),
            prefixes: prefixes
                .iter()
                .map(|p| p.parse().expect("prefix"))
                .collect(),
            ports: Arc::from(&[179u16][..]),
            backend: Backend::Ao,
        }
    }

    #[test]
    fn a_listener_gets_the_outermost_prefixes_of_its_family() {
        let a = group("a", &["10.1.0.0/16", "10.1.2.0/24", "2001:db8::/32"]);
        let b = group("b", &["10.1.0.0/16", "192.0.2.0/24"]);
        let v4 = Some("0.0.0.0:179".parse().expect("literal"));
        let v6 = Some("[::]:179".parse().expect("literal"));
        let shown = |ps: Vec<IpPrefix>| ps.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shown(listener_prefixes(v4, [&a, &b])),
            ["10.1.0.0/16", "192.0.2.0/24"]
        );
        assert_eq!(
            shown(listener_prefixes(v6, [&a, &b])),
            ["10.1.0.0/16", "192.0.2.0/24", "2001:db8::/32"]
        );
        assert!(a.covers_port(179) && !a.covers_port(180));
    }

    #[test]
    fn tcp_ao_guard_keys_sit_beside_member_keys_and_are_kept_across_a_restart() {
        let k = FakeKernel::default();
        let sock = k.socket(1, 3, TcpState::Listen);
        let prefixes: Vec<IpPrefix> = vec!["10.1.0.0/16".parse().expect("prefix")];
        let guard = group_guard_key(&mut rand_core::OsRng);
        assert_eq!(
            guard_listener(&k, &sock, Backend::Ao, &prefixes, &guard).expect("guard"),
            1
        );
        // A member's host guard and its MKT on the same listener: no
        // KeyID of theirs overlaps the prefix guard's.
        let member: std::net::IpAddr = "10.1.0.5".parse().expect("literal");
        let host_guard = guard_key(&mut rand_core::OsRng);
        k.ao_add(&sock, member, 32, &host_guard, false, false)
            .expect("member guard beside the prefix guard");
        // A second prefix guard overlapping the first is refused, as Linux
        // does (EEXIST): why nested prefixes get no key of their own.
        let e = k
            .ao_add(
                &sock,
                "10.1.2.0".parse().expect("literal"),
                24,
                &guard,
                false,
                false,
            )
            .expect_err("overlapping guard");
        assert_eq!(e.cause(), Some(Cause::KeyIdConflict), "{e}");
        // Again (a restart, a new guard key): the key there is kept.
        let again = group_guard_key(&mut rand_core::OsRng);
        assert_eq!(
            guard_listener(&k, &sock, Backend::Ao, &prefixes, &again).expect("again"),
            0
        );
        // A prefix no longer configured goes, the new one comes.
        let moved: Vec<IpPrefix> = vec!["10.2.0.0/16".parse().expect("prefix")];
        assert_eq!(
            guard_listener(&k, &sock, Backend::Ao, &moved, &again).expect("moved"),
            1
        );
        // A peer guard from before peer guards left 247, on a listener
        // taken back after an upgrade: it goes, the prefix guard comes.
        let old_guard = MasterKeyTuple {
            send_id: 247,
            recv_id: 243,
            ..guard_key(&mut rand_core::OsRng)
        };
        k.ao_add(
            &sock,
            "10.3.0.9".parse().expect("literal"),
            32,
            &old_guard,
            false,
            false,
        )
        .expect("old guard");
        let upgraded: Vec<IpPrefix> = vec![
            "10.2.0.0/16".parse().expect("prefix"),
            "10.3.0.0/16".parse().expect("prefix"),
        ];
        assert_eq!(
            guard_listener(&k, &sock, Backend::Ao, &upgraded, &again).expect("upgraded"),
            1
        );
        assert!(
            !k.ao_keys(&sock)
                .expect("keys")
                .iter()
                .any(|x| x.peer.to_string() == "10.3.0.9"),
            "the old guard with KeyID 247 was deleted"
        );
        let _ = guard_listener(&k, &sock, Backend::Ao, &moved, &again).expect("back");
        let keys = k.ao_keys(&sock).expect("keys");
        let mut on: Vec<(String, u8, u8)> = keys
            .iter()
            .map(|k| (k.peer.to_string(), k.prefix, k.send_id))
            .collect();
        on.sort();
        assert_eq!(
            on,
            [
                ("10.1.0.5".to_string(), 32, host_guard.send_id),
                ("10.2.0.0".to_string(), 16, 247)
            ]
        );
    }

    #[test]
    fn tcp_md5_guard_keys_are_prefix_keys() {
        let k = FakeKernel::default();
        let sock = k.socket(1, 3, TcpState::Listen);
        let prefixes: Vec<IpPrefix> = vec![
            "10.1.0.0/16".parse().expect("prefix"),
            "192.0.2.0/24".parse().expect("prefix"),
        ];
        let guard = group_guard_key(&mut rand_core::OsRng);
        assert_eq!(
            guard_listener(&k, &sock, Backend::Md5, &prefixes, &guard).expect("guard"),
            2
        );
        let s = k.get(sock);
        let on: Vec<(String, u8)> = s
            .md5_prefix
            .keys()
            .map(|(a, l)| (a.to_string(), *l))
            .collect();
        assert_eq!(
            on,
            [("10.1.0.0".to_string(), 16), ("192.0.2.0".to_string(), 24)]
        );
        assert!(s.md5.is_empty(), "no host key");
    }
}
