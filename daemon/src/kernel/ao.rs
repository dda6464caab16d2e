//! Safe TCP-AO (RFC 5925) key management on one socket: the Linux
//! `TCP_AO_ADD_KEY`, `TCP_AO_DEL_KEY`, `TCP_AO_INFO` and `TCP_AO_GET_KEYS`
//! socket options (uapi `linux/tcp.h`, reference §1).
//!
//! Rules the kernel enforces and callers must plan for (reference §1.5-1.8):
//!
//! - The first key must be added while the socket is closed or listening
//!   (`EISCONN` afterwards): install before `connect()`/`listen()`.
//! - Listening sockets have no Current_key/RNext_key: `set_current`/
//!   `set_rnext` on them is `EINVAL`.
//! - On an established socket Current_key follows the peer's RNextKeyID;
//!   this side drives a rollover by adding the new MKT and then moving
//!   RNext_key to its RecvID with [`set_rnext`].
//! - A key that is Current_key or RNext_key cannot be deleted (`EBUSY`)
//!   unless the same [`del_key`] names replacements ("forced delete").
//!
//! Prefixes of IPv4 peers are IPv4 prefixes (at most 32) even on IPv6
//! sockets, where the key is given to the kernel as a v4-mapped address.

use std::net::IpAddr;
use std::os::fd::AsFd;

use aokd_proto::mkt::{MacAlgorithm, MasterKeyTuple};

use super::sys::{self, TcpAoAdd, TcpAoDel, TcpAoGetsockopt, TcpAoInfoOpt, SOL_TCP};
use super::{canonical, host_prefix, peer_sockaddr, Cause, KernelError, KeyContext, Operation};

/// The socket-wide TCP-AO state (`struct tcp_ao_info_opt` as returned by
/// `getsockopt(TCP_AO_INFO)`, reference §1.10-1.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AoInfo {
    /// SendID of Current_key, if there is one.
    pub current_key: Option<u8>,
    /// RecvID of RNext_key, if there is one.
    pub rnext: Option<u8>,
    /// Segments without TCP-AO are refused.
    pub ao_required: bool,
    /// ICMP errors that RFC 5925 7.8 says to ignore are acted on.
    pub accept_icmps: bool,
    /// Segments that verified.
    pub pkt_good: u64,
    /// Segments that failed verification.
    pub pkt_bad: u64,
    /// Segments whose KeyID matched no MKT.
    pub pkt_key_not_found: u64,
    /// Segments dropped for lacking TCP-AO.
    pub pkt_ao_required: u64,
    /// ICMP errors ignored.
    pub pkt_dropped_icmp: u64,
}

/// One MKT on a socket, as `TCP_AO_GET_KEYS` reports it, without the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AoKeyInfo {
    /// Peer address (IPv4 for v4-mapped keys).
    pub peer: IpAddr,
    /// Peer prefix length.
    pub prefix: u8,
    /// SendID.
    pub send_id: u8,
    /// RecvID.
    pub recv_id: u8,
    /// The kernel's algorithm name (`"cmac(aes)"` for AES-128-CMAC).
    pub alg_name: String,
    /// MAC length in octets.
    pub mac_len: u8,
    /// Whether TCP options are covered by the MAC (no
    /// `TCP_AO_KEYF_EXCLUDE_OPT`).
    pub include_options: bool,
    /// L3 (VRF) index, when the key is bound to one.
    pub ifindex: Option<i32>,
    /// This key is Current_key.
    pub is_current: bool,
    /// This key is RNext_key.
    pub is_rnext: bool,
    /// Segments that verified with this key.
    pub pkt_good: u64,
    /// Segments that failed verification with this key.
    pub pkt_bad: u64,
}

impl AoKeyInfo {
    /// The aokd algorithm this key uses, if it is one of the three.
    pub fn algorithm(&self) -> Option<MacAlgorithm> {
        match self.alg_name.as_str() {
            "hmac(sha1)" => Some(MacAlgorithm::HmacSha1_96),
            "hmac(sha256)" => Some(MacAlgorithm::HmacSha256_128),
            "cmac(aes)" | "cmac(aes128)" => Some(MacAlgorithm::AesCmac96),
            _ => None,
        }
    }
}

/// Checks `peer`/`prefix` the way tcp_ao_verify_ipv4()/_ipv6() will, so
/// that mistakes get a precise message instead of a bare `EINVAL`.
fn check_prefix(
    peer: IpAddr,
    prefix: u8,
    op: Operation,
    context: KeyContext,
) -> Result<(), KernelError> {
    let invalid = |reason| {
        Err(KernelError::Invalid {
            op,
            context,
            reason,
        })
    };
    let peer = canonical(peer);
    if prefix > host_prefix(peer) {
        return invalid("the prefix is longer than the address");
    }
    if prefix == 0 {
        if !peer.is_unspecified() {
            return invalid("prefix 0 needs the wildcard address (0.0.0.0 or ::)");
        }
        return Ok(());
    }
    if peer.is_unspecified() {
        return invalid("the wildcard address needs prefix 0");
    }
    let host_bits = match peer {
        IpAddr::V4(a) => {
            u128::from(u32::from(a) & u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0))
        }
        IpAddr::V6(a) => u128::from(a) & u128::MAX.checked_shr(u32::from(prefix)).unwrap_or(0),
    };
    if host_bits != 0 {
        return invalid("the address has bits set beyond the prefix");
    }
    Ok(())
}

/// Adds `mkt` for `peer`/`prefix` with `setsockopt(TCP_AO_ADD_KEY)`
/// (`struct tcp_ao_add`): SendID `mkt.send_id`, RecvID `mkt.recv_id`, the
/// algorithm's kernel name and MAC length, `TCP_AO_KEYF_EXCLUDE_OPT` when
/// `mkt.include_options` is false. `set_current`/`set_rnext` make it
/// Current_key/RNext_key at once (not allowed on listening sockets).
///
/// The command's copy of the key is zeroized when this returns.
pub fn add_key(
    fd: impl AsFd,
    peer: IpAddr,
    prefix: u8,
    mkt: &MasterKeyTuple,
    set_current: bool,
    set_rnext: bool,
) -> Result<(), KernelError> {
    let fd = fd.as_fd();
    let op = Operation::AoAddKey;
    let context = KeyContext::peer(peer, prefix).ids(Some(mkt.send_id), Some(mkt.recv_id));
    check_prefix(peer, prefix, op, context)?;
    let addr = peer_sockaddr(fd, peer, op, context)?;
    let mut cmd = TcpAoAdd::for_mkt(addr, prefix, mkt).ok_or(KernelError::Invalid {
        op,
        context,
        reason: "the master key is longer than TCP_AO_MAXKEYLEN (80 octets)",
    })?;
    cmd.set_current(set_current);
    cmd.set_rnext(set_rnext);
    let result = sys::setsockopt_raw(fd, SOL_TCP, sys::TCP_AO_ADD_KEY, &cmd);
    cmd.wipe_key();
    result.map_err(|e| KernelError::os(op, context, e))
}

/// Deletes the MKT (`peer`, `prefix`, `send_id`, `recv_id`) with
/// `setsockopt(TCP_AO_DEL_KEY)` (`struct tcp_ao_del`).
///
/// Deleting Current_key or RNext_key fails with `EBUSY` ([`Cause::KeyInUse`])
/// unless `set_current` (a SendID) and/or `set_rnext` (a RecvID) name other
/// keys on the socket to switch to in the same call: the kernel's forced
/// delete, meant only for a peer that ignores RNextKeyID, which may break
/// the connection (reference §1.8, tcp_ao.rst FAQ 3).
pub fn del_key(
    fd: impl AsFd,
    peer: IpAddr,
    prefix: u8,
    send_id: u8,
    recv_id: u8,
    set_current: Option<u8>,
    set_rnext: Option<u8>,
) -> Result<(), KernelError> {
    let fd = fd.as_fd();
    let op = Operation::AoDelKey;
    let context = KeyContext::peer(peer, prefix).ids(Some(send_id), Some(recv_id));
    check_prefix(peer, prefix, op, context)?;
    let mut cmd = TcpAoDel::zeroed();
    cmd.addr = peer_sockaddr(fd, peer, op, context)?;
    cmd.prefix = prefix;
    cmd.sndid = send_id;
    cmd.rcvid = recv_id;
    if let Some(id) = set_current {
        cmd.set_current(true);
        cmd.current_key = id;
    }
    if let Some(id) = set_rnext {
        cmd.set_rnext(true);
        cmd.rnext = id;
    }
    sys::setsockopt_raw(fd, SOL_TCP, sys::TCP_AO_DEL_KEY, &cmd)
        .map_err(|e| KernelError::os(op, context, e))
}

fn get_info_raw(fd: std::os::fd::BorrowedFd<'_>) -> Result<TcpAoInfoOpt, KernelError> {
    let mut opt = TcpAoInfoOpt::zeroed();
    sys::getsockopt_raw(fd, SOL_TCP, sys::TCP_AO_INFO, &mut opt)
        .map_err(|e| KernelError::os(Operation::AoGetInfo, KeyContext::socket(), e))?;
    Ok(opt)
}

fn set_info_raw(
    fd: std::os::fd::BorrowedFd<'_>,
    opt: &TcpAoInfoOpt,
    context: KeyContext,
) -> Result<(), KernelError> {
    sys::setsockopt_raw(fd, SOL_TCP, sys::TCP_AO_INFO, opt)
        .map_err(|e| KernelError::os(Operation::AoSetInfo, context, e))
}

/// The socket's TCP-AO state, `getsockopt(TCP_AO_INFO)`. A socket without
/// any TCP-AO state gives [`Cause::NotFound`].
pub fn info(fd: impl AsFd) -> Result<AoInfo, KernelError> {
    let opt = get_info_raw(fd.as_fd())?;
    Ok(AoInfo {
        current_key: opt.has_current().then_some(opt.current_key),
        rnext: opt.has_rnext().then_some(opt.rnext),
        ao_required: opt.ao_required(),
        accept_icmps: opt.accept_icmps(),
        pkt_good: opt.pkt_good,
        pkt_bad: opt.pkt_bad,
        pkt_key_not_found: opt.pkt_key_not_found,
        pkt_ao_required: opt.pkt_ao_required,
        pkt_dropped_icmp: opt.pkt_dropped_icmp,
    })
}

/// The `TCP_AO_INFO` command that keeps `ao_required` and `accept_icmps`
/// as they are and changes nothing else: `tcp_ao_info_cmd()` assigns both
/// from every command, so a plain write would clear them (reference §1.8).
fn preserving(current: &TcpAoInfoOpt) -> TcpAoInfoOpt {
    let mut cmd = TcpAoInfoOpt::zeroed();
    cmd.set_ao_required(current.ao_required());
    cmd.set_accept_icmps(current.accept_icmps());
    cmd
}

/// Makes the key with RecvID `recv_id` RNext_key: a read-modify-write of
/// `TCP_AO_INFO` that keeps `ao_required` and `accept_icmps`. The peer then
/// sees RNextKeyID = `recv_id` and switches its Current_key, which is how a
/// rollover moves (reference §1.8, §1.14). Not allowed on listening sockets.
///
/// The read and the write are two calls; nothing else in aokd writes
/// `TCP_AO_INFO` on the same socket concurrently.
pub fn set_rnext(fd: impl AsFd, recv_id: u8) -> Result<(), KernelError> {
    let fd = fd.as_fd();
    let mut cmd = preserving(&get_info_raw(fd)?);
    cmd.set_rnext(true);
    cmd.rnext = recv_id;
    set_info_raw(fd, &cmd, KeyContext::socket().ids(None, Some(recv_id)))
}

/// Makes the key with SendID `send_id` Current_key (read-modify-write of
/// `TCP_AO_INFO`, as [`set_rnext`]). On an established socket the kernel
/// also moves Current_key by itself when the peer asks for another key.
pub fn set_current(fd: impl AsFd, send_id: u8) -> Result<(), KernelError> {
    let fd = fd.as_fd();
    let mut cmd = preserving(&get_info_raw(fd)?);
    cmd.set_current(true);
    cmd.current_key = send_id;
    set_info_raw(fd, &cmd, KeyContext::socket().ids(Some(send_id), None))
}

/// Sets `ao_required` (refuse segments without TCP-AO, reference §1.9),
/// keeping `accept_icmps`. On a socket without TCP-AO state this creates
/// it, which the kernel allows only while the socket is closed or
/// listening. Fails with [`Cause::Rejected`] if the socket has TCP-MD5 keys.
pub fn set_ao_required(fd: impl AsFd, required: bool) -> Result<(), KernelError> {
    let fd = fd.as_fd();
    let current = match get_info_raw(fd) {
        Ok(opt) => opt,
        Err(e) if e.cause() == Some(Cause::NotFound) => TcpAoInfoOpt::zeroed(),
        Err(e) => return Err(e),
    };
    let mut cmd = preserving(&current);
    cmd.set_ao_required(required);
    set_info_raw(fd, &cmd, KeyContext::socket())
}

/// Every MKT on the socket, `getsockopt(TCP_AO_GET_KEYS)` with `get_all`
/// (filtering by address in the kernel also compares KeyIDs, reference
/// §1.11, so aokd filters in userspace). The kernel returns the key bytes
/// too; they are zeroized before this returns and not part of the result.
pub fn get_keys(fd: impl AsFd) -> Result<Vec<AoKeyInfo>, KernelError> {
    let fd = fd.as_fd();
    let op = Operation::AoGetKeys;
    let mut capacity: usize = 16;
    // Keys can be added between calls; three rounds are plenty.
    for _ in 0..3 {
        let mut buf: Vec<TcpAoGetsockopt> =
            (0..capacity).map(|_| TcpAoGetsockopt::zeroed()).collect();
        buf[0].set_get_all(true);
        let matched = sys::get_ao_keys(fd, &mut buf)
            .map_err(|e| KernelError::os(op, KeyContext::socket(), e))?;
        let matched = matched as usize;
        if matched > capacity {
            capacity = matched + 8;
            continue;
        }
        let mut keys = Vec::with_capacity(matched);
        for raw in buf.iter_mut().take(matched) {
            raw.wipe_key();
            let peer = raw.addr.ip().ok_or(KernelError::UnexpectedReply {
                op,
                what: "a key whose address is neither IPv4 nor IPv6",
            })?;
            keys.push(AoKeyInfo {
                peer: canonical(peer),
                prefix: raw.prefix,
                send_id: raw.sndid,
                recv_id: raw.rcvid,
                alg_name: raw.alg_name(),
                mac_len: raw.maclen,
                include_options: raw.keyflags & sys::TCP_AO_KEYF_EXCLUDE_OPT == 0,
                ifindex: (raw.keyflags & sys::TCP_AO_KEYF_IFINDEX != 0).then_some(raw.ifindex),
                is_current: raw.is_current(),
                is_rnext: raw.is_rnext(),
                pkt_good: raw.pkt_good,
                pkt_bad: raw.pkt_bad,
            });
        }
        return Ok(keys);
    }
    Err(KernelError::UnexpectedReply {
        op,
        what: "a key count that kept growing",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aokd_proto::crypto::Secret;

    fn ctx() -> KeyContext {
        KeyContext::socket()
    }

    fn ok(peer: &str, prefix: u8) -> bool {
        check_prefix(
            peer.parse().expect("literal"),
            prefix,
            Operation::AoAddKey,
            ctx(),
        )
        .is_ok()
    }

    #[test]
    fn prefixes_are_checked_like_the_kernel() {
        assert!(ok("192.0.2.2", 32));
        assert!(ok("192.0.2.0", 24));
        assert!(!ok("192.0.2.2", 24), "host bits");
        assert!(!ok("192.0.2.2", 33));
        assert!(ok("0.0.0.0", 0));
        assert!(!ok("192.0.2.2", 0), "prefix 0 needs the wildcard");
        assert!(!ok("0.0.0.0", 8), "wildcard needs prefix 0");
        assert!(ok("128.0.0.0", 1));
        assert!(!ok("192.0.0.0", 1));
        assert!(ok("2001:db8::1", 128));
        assert!(ok("2001:db8::", 32));
        assert!(!ok("2001:db8::1", 64));
        assert!(ok("::", 0));
        assert!(!ok("2001:db8::1", 129));
        // v4-mapped: IPv4 prefixes.
        assert!(ok("::ffff:192.0.2.2", 32));
        assert!(!ok("::ffff:192.0.2.2", 128));
    }

    #[test]
    fn add_key_without_tcp_ao_names_the_missing_kernel_feature() {
        let Ok(support) = super::super::probe() else {
            return;
        };
        if support.tcp_ao {
            eprintln!("TCP-AO present: covered by tests/kernel_md5.rs instead");
            return;
        }
        let sock = sys::tcp_socket(false).expect("socket");
        let mkt = MasterKeyTuple {
            send_id: 5,
            recv_id: 7,
            algorithm: MacAlgorithm::HmacSha1_96,
            include_options: true,
            master_key: Secret::new(vec![9; 32]),
        };
        let e = add_key(
            &sock,
            "127.0.0.1".parse().expect("literal"),
            32,
            &mkt,
            true,
            true,
        )
        .expect_err("no TCP-AO");
        assert_eq!(e.cause(), Some(Cause::NotSupported), "{e}");
        let e = info(&sock).expect_err("no TCP-AO");
        assert_eq!(e.cause(), Some(Cause::NotSupported), "{e}");
        let e = get_keys(&sock).expect_err("no TCP-AO");
        assert_eq!(e.cause(), Some(Cause::NotSupported), "{e}");
    }

    #[test]
    fn family_mismatch_is_refused_before_the_kernel() {
        let sock = sys::tcp_socket(false).expect("socket");
        let mkt = MasterKeyTuple {
            send_id: 1,
            recv_id: 2,
            algorithm: MacAlgorithm::HmacSha1_96,
            include_options: true,
            master_key: Secret::new(vec![9; 32]),
        };
        let e = add_key(
            &sock,
            "2001:db8::1".parse().expect("literal"),
            128,
            &mkt,
            false,
            false,
        )
        .expect_err("v6 on v4");
        assert!(matches!(e, KernelError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("IPv6 peer"), "{e}");
    }
}
