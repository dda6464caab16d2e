//! The library's own guard key: what a covered socket carries when aokd
//! cannot be reached, so that `connect()` and `listen()` succeed and yet
//! nothing unsigned leaves or enters through the socket (docs/preload.md,
//! "When aokd cannot be reached").
//!
//! A guard is a random 32-octet key that is never written anywhere else
//! and is zeroized as soon as the kernel has it, so no peer can ever sign
//! with it:
//!
//! - TCP-AO: an MKT with SendID and RecvID drawn from the library's half
//!   of the guard range, 248-255 ([`GUARD_KEY_IDS`]: aokd never negotiates
//!   240-255, and its own guard uses 240-247, so aokd's guard never clashes
//!   with the library's on a listener it takes over), HMAC-SHA-1-96;
//! - TCP-MD5: a key.
//!
//! A listener's guard is for every address (`0.0.0.0/0`, and for an IPv6
//! socket also `::/0`): every SYN needs a valid signature, which none has.
//! A connecting socket's guard is for its peer's address: the SYN goes out
//! signed with it and the peer drops it.
//!
//! [`Choice::Auto`] takes TCP-AO where the kernel has it and TCP-MD5
//! otherwise, like aokd's `backend = "auto"`. A [`Guard`] packs into a
//! `u32` ([`Guard::pack`]) so that the set of guarded listeners
//! ([`crate::takeover`]) holds it in an atomic.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::BorrowedFd;

use zeroize::Zeroize;

use crate::policy::GuardChoice as Choice;
use crate::sys;

/// `TCP_MD5SIG_EXT` (uapi `linux/tcp.h`).
const TCP_MD5SIG_EXT: libc::c_int = 32;
/// `TCP_MD5SIG_FLAG_PREFIX`.
const TCP_MD5SIG_FLAG_PREFIX: u8 = 1;
/// `TCP_AO_ADD_KEY`.
const TCP_AO_ADD_KEY: libc::c_int = 38;
/// `TCP_AO_DEL_KEY`.
const TCP_AO_DEL_KEY: libc::c_int = 39;
/// `sizeof(struct tcp_md5sig)`.
const MD5SIG_LEN: usize = 216;
/// `sizeof(struct tcp_ao_add)`.
const AO_ADD_LEN: usize = 288;
/// `sizeof(struct tcp_ao_del)`.
const AO_DEL_LEN: usize = 144;
/// The guard's key length.
const KEY_LEN: usize = 32;
/// The guard's MAC: HMAC-SHA-1-96, which every TCP-AO kernel has.
const AO_ALG: &[u8] = b"hmac(sha1)";
const AO_MACLEN: u8 = 12;
/// The library's guard KeyIDs (`aokd_proto::mkt::LIBRARY_GUARD_KEY_IDS`,
/// a copy: the library does not link the protocol crate): disjoint from
/// aokd's guard's (`AOKD_GUARD_KEY_IDS`, 240-247), since Linux refuses
/// (`EEXIST`) a key that shares its SendID or RecvID with an overlapping
/// one, and the library's `/0` guard is still on a listener when aokd adds
/// its own guard for a peer with no MKT while it takes the socket over.
pub const GUARD_KEY_IDS: std::ops::RangeInclusive<u8> = 248..=255;

/// The mechanism of a guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// TCP-AO with these KeyIDs.
    TcpAo { send_id: u8, recv_id: u8 },
    /// TCP-MD5.
    TcpMd5,
}

/// A guard on one socket: what [`remove`] needs to take it off again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    /// Its mechanism.
    pub mechanism: Mechanism,
    /// Whether the socket is IPv6 (a listener's guard then has an IPv6
    /// and an IPv4-mapped part).
    pub ipv6: bool,
}

impl Guard {
    /// The guard as a `u32`: byte 0 the mechanism (1 TCP-AO, 2 TCP-MD5),
    /// byte 1 the IPv6 flag, bytes 2-3 the KeyIDs.
    pub fn pack(self) -> u32 {
        let (kind, s, r) = match self.mechanism {
            Mechanism::TcpAo { send_id, recv_id } => (1u32, send_id, recv_id),
            Mechanism::TcpMd5 => (2, 0, 0),
        };
        kind | (u32::from(self.ipv6) << 8) | (u32::from(s) << 16) | (u32::from(r) << 24)
    }

    /// The inverse of [`Guard::pack`].
    pub fn unpack(word: u32) -> Option<Guard> {
        let ipv6 = (word >> 8) & 0xff == 1;
        let mechanism = match word & 0xff {
            1 => Mechanism::TcpAo {
                send_id: (word >> 16) as u8,
                recv_id: (word >> 24) as u8,
            },
            2 => Mechanism::TcpMd5,
            _ => return None,
        };
        Some(Guard { mechanism, ipv6 })
    }
}

impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mechanism {
            Mechanism::TcpAo { send_id, recv_id } => {
                write!(f, "tcp-ao, KeyIDs {send_id}/{recv_id}")
            }
            Mechanism::TcpMd5 => f.write_str("tcp-md5"),
        }
    }
}

/// The addresses (and prefix lengths) a guard covers on a socket.
fn targets(ipv6: bool, peer: Option<IpAddr>) -> Vec<(IpAddr, u8)> {
    match (peer.map(|p| p.to_canonical()), ipv6) {
        (Some(IpAddr::V4(a)), false) => vec![(IpAddr::V4(a), 32)],
        (Some(IpAddr::V4(a)), true) => vec![(IpAddr::V6(a.to_ipv6_mapped()), 32)],
        (Some(IpAddr::V6(a)), _) => vec![(IpAddr::V6(a), 128)],
        (None, false) => vec![(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)],
        // IPv6 peers, and IPv4 peers of a dual-stack socket (the kernel
        // stores a v4-mapped key as IPv4, prefix at most 32).
        (None, true) => vec![
            (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            (IpAddr::V6(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped()), 0),
        ],
    }
}

/// `struct __kernel_sockaddr_storage` (128 octets) holding `addr`, port 0.
fn sockaddr(addr: IpAddr) -> [u8; 128] {
    let mut s = [0u8; 128];
    match addr {
        IpAddr::V4(a) => {
            s[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            s[4..8].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            s[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            s[8..24].copy_from_slice(&a.octets());
        }
    }
    s
}

/// `struct tcp_md5sig` for `addr`/`prefix` with `key` (empty: delete).
fn md5_command(addr: IpAddr, prefix: u8, key: &[u8]) -> [u8; MD5SIG_LEN] {
    let mut c = [0u8; MD5SIG_LEN];
    c[..128].copy_from_slice(&sockaddr(addr));
    c[128] = TCP_MD5SIG_FLAG_PREFIX;
    c[129] = prefix;
    c[130..132].copy_from_slice(&(key.len() as u16).to_ne_bytes());
    c[136..136 + key.len()].copy_from_slice(key);
    c
}

/// `struct tcp_ao_add` for `addr`/`prefix`; `set_current` and `set_rnext`
/// on a connecting socket.
fn ao_add_command(
    addr: IpAddr,
    prefix: u8,
    send_id: u8,
    recv_id: u8,
    key: &[u8],
    select: bool,
) -> [u8; AO_ADD_LEN] {
    let mut c = [0u8; AO_ADD_LEN];
    c[..128].copy_from_slice(&sockaddr(addr));
    c[128..128 + AO_ALG.len()].copy_from_slice(AO_ALG);
    if select {
        // set_current:1, set_rnext:1 (the first two bit-fields).
        let bits: u32 = if cfg!(target_endian = "little") {
            0b11
        } else {
            0b11 << 30
        };
        c[196..200].copy_from_slice(&bits.to_ne_bytes());
    }
    c[202] = prefix;
    c[203] = send_id;
    c[204] = recv_id;
    c[205] = AO_MACLEN;
    c[207] = key.len() as u8;
    c[208..208 + key.len()].copy_from_slice(key);
    c
}

/// `struct tcp_ao_del` for the key `addr`/`prefix`, `send_id`/`recv_id`.
fn ao_del_command(addr: IpAddr, prefix: u8, send_id: u8, recv_id: u8) -> [u8; AO_DEL_LEN] {
    let mut c = [0u8; AO_DEL_LEN];
    c[..128].copy_from_slice(&sockaddr(addr));
    c[138] = prefix;
    c[139] = send_id;
    c[140] = recv_id;
    c
}

/// A random key and two random KeyIDs from the guard range.
fn random_key() -> io::Result<([u8; KEY_LEN], u8, u8)> {
    let mut bytes = [0u8; KEY_LEN + 2];
    sys::random(&mut bytes)?;
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(&bytes[..KEY_LEN]);
    let span = GUARD_KEY_IDS.end() - GUARD_KEY_IDS.start() + 1;
    let send_id = GUARD_KEY_IDS.start() + bytes[KEY_LEN] % span;
    let recv_id = GUARD_KEY_IDS.start() + bytes[KEY_LEN + 1] % span;
    bytes.zeroize();
    Ok((key, send_id, recv_id))
}

/// Why no guard could be installed.
#[derive(Debug)]
pub struct GuardError(String);

impl fmt::Display for GuardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Installs a guard on `socket` for every address (`peer` `None`: a socket
/// about to listen) or for `peer` (a socket about to connect).
pub fn install(
    socket: BorrowedFd<'_>,
    peer: Option<IpAddr>,
    choice: Choice,
) -> Result<Guard, GuardError> {
    let ipv6 = aokd_sys::socket_domain(socket)
        .map_err(|e| GuardError(format!("cannot read the socket's family: {e}")))?
        == libc::AF_INET6;
    let (mut key, send_id, recv_id) =
        random_key().map_err(|e| GuardError(format!("no random key (getrandom): {e}")))?;
    let targets = targets(ipv6, peer);
    let result = match choice {
        Choice::TcpAo => install_ao(socket, &targets, send_id, recv_id, &key, peer.is_some()),
        Choice::TcpMd5 => install_md5(socket, &targets, &key),
        Choice::Auto => {
            match install_ao(socket, &targets, send_id, recv_id, &key, peer.is_some()) {
                Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
                    install_md5(socket, &targets, &key)
                }
                other => other,
            }
        }
    };
    key.zeroize();
    let mechanism = result.map_err(|e| GuardError(format!("cannot install a guard key: {e}")))?;
    Ok(Guard { mechanism, ipv6 })
}

fn install_ao(
    socket: BorrowedFd<'_>,
    targets: &[(IpAddr, u8)],
    send_id: u8,
    recv_id: u8,
    key: &[u8],
    select: bool,
) -> io::Result<Mechanism> {
    for (i, &(addr, prefix)) in targets.iter().enumerate() {
        let mut cmd = ao_add_command(addr, prefix, send_id, recv_id, key, select);
        let r = sys::setsockopt_bytes(socket, libc::IPPROTO_TCP, TCP_AO_ADD_KEY, &cmd);
        cmd.zeroize();
        if let Err(e) = r {
            for &(addr, prefix) in &targets[..i] {
                let del = ao_del_command(addr, prefix, send_id, recv_id);
                let _ = sys::setsockopt_bytes(socket, libc::IPPROTO_TCP, TCP_AO_DEL_KEY, &del);
            }
            return Err(e);
        }
    }
    Ok(Mechanism::TcpAo { send_id, recv_id })
}

fn install_md5(
    socket: BorrowedFd<'_>,
    targets: &[(IpAddr, u8)],
    key: &[u8],
) -> io::Result<Mechanism> {
    for (i, &(addr, prefix)) in targets.iter().enumerate() {
        let mut cmd = md5_command(addr, prefix, key);
        let r = sys::setsockopt_bytes(socket, libc::IPPROTO_TCP, TCP_MD5SIG_EXT, &cmd);
        cmd.zeroize();
        if let Err(e) = r {
            for &(addr, prefix) in &targets[..i] {
                let del = md5_command(addr, prefix, &[]);
                let _ = sys::setsockopt_bytes(socket, libc::IPPROTO_TCP, TCP_MD5SIG_EXT, &del);
            }
            return Err(e);
        }
    }
    Ok(Mechanism::TcpMd5)
}

/// Removes a listener's guard (installed with `peer` `None`) once aokd
/// has put its own keys on the socket. A part already gone is not an
/// error.
pub fn remove_listener_guard(socket: BorrowedFd<'_>, guard: Guard) -> io::Result<()> {
    let mut first_error = None;
    for (addr, prefix) in targets(guard.ipv6, None) {
        let r = match guard.mechanism {
            Mechanism::TcpAo { send_id, recv_id } => {
                let del = ao_del_command(addr, prefix, send_id, recv_id);
                sys::setsockopt_bytes(socket, libc::IPPROTO_TCP, TCP_AO_DEL_KEY, &del)
            }
            Mechanism::TcpMd5 => {
                let del = md5_command(addr, prefix, &[]);
                sys::setsockopt_bytes(socket, libc::IPPROTO_TCP, TCP_MD5SIG_EXT, &del)
            }
        };
        match r {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                first_error.get_or_insert(e);
            }
            _ => {}
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips() {
        for g in [
            Guard {
                mechanism: Mechanism::TcpMd5,
                ipv6: false,
            },
            Guard {
                mechanism: Mechanism::TcpAo {
                    send_id: 240,
                    recv_id: 255,
                },
                ipv6: true,
            },
        ] {
            assert_eq!(Guard::unpack(g.pack()), Some(g));
            assert_ne!(g.pack(), 0, "0 means no guard");
        }
        assert_eq!(Guard::unpack(0), None);
    }

    #[test]
    fn command_layouts() {
        let c = md5_command("192.0.2.1".parse().unwrap(), 0, &[7; 32]);
        assert_eq!(&c[0..2], &(libc::AF_INET as u16).to_ne_bytes());
        assert_eq!(&c[4..8], &[192, 0, 2, 1]);
        assert_eq!((c[128], c[129]), (TCP_MD5SIG_FLAG_PREFIX, 0));
        assert_eq!(&c[130..132], &32u16.to_ne_bytes());
        assert!(c[136..168].iter().all(|&b| b == 7) && c[168..].iter().all(|&b| b == 0));
        let a = ao_add_command(
            "2001:db8::1".parse().unwrap(),
            128,
            241,
            242,
            &[9; 32],
            true,
        );
        assert_eq!(&a[0..2], &(libc::AF_INET6 as u16).to_ne_bytes());
        assert_eq!(&a[128..138], b"hmac(sha1)");
        assert_eq!(
            (a[202], a[203], a[204], a[205], a[207]),
            (128, 241, 242, 12, 32)
        );
        assert!(a[208..240].iter().all(|&b| b == 9));
        let d = ao_del_command("0.0.0.0".parse().unwrap(), 0, 241, 242);
        assert_eq!((d[138], d[139], d[140]), (0, 241, 242));
    }

    #[test]
    fn random_ids_are_in_the_library_guard_range() {
        for _ in 0..64 {
            let (key, s, r) = random_key().expect("getrandom");
            assert!(GUARD_KEY_IDS.contains(&s) && GUARD_KEY_IDS.contains(&r));
            assert_ne!(key, [0; KEY_LEN]);
        }
    }

    /// The copy matches the protocol crate's, and aokd's own guard can
    /// never share a SendID or a RecvID with the library's.
    #[test]
    fn library_and_aokd_guard_ranges_are_disjoint() {
        use aokd_proto::mkt::{is_guard_id, AOKD_GUARD_KEY_IDS, LIBRARY_GUARD_KEY_IDS};
        assert_eq!(GUARD_KEY_IDS, LIBRARY_GUARD_KEY_IDS);
        for id in GUARD_KEY_IDS {
            assert!(is_guard_id(id), "{id} is negotiable");
            assert!(!AOKD_GUARD_KEY_IDS.contains(&id), "{id} is aokd's too");
        }
        assert!(!AOKD_GUARD_KEY_IDS.is_empty());
    }

    #[test]
    fn md5_listener_guard_installs_and_comes_off() {
        for ipv6 in [false, true] {
            let sock = aokd_sys::tcp_socket(ipv6).expect("socket");
            use std::os::fd::AsFd;
            let g = match install(sock.as_fd(), None, Choice::TcpMd5) {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("no TCP-MD5 here ({e}); skipping");
                    return;
                }
            };
            assert_eq!(g.mechanism, Mechanism::TcpMd5);
            assert_eq!(g.ipv6, ipv6);
            remove_listener_guard(sock.as_fd(), g).expect("remove");
            // Gone already: still fine.
            remove_listener_guard(sock.as_fd(), g).expect("remove again");
        }
    }
}
