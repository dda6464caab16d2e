//! Installing negotiated MKTs into the Linux kernel: TCP-AO (RFC 5925,
//! Linux 6.7+ with `CONFIG_TCP_AO`) and, where TCP-AO is missing, TCP-MD5
//! (RFC 2385, `CONFIG_TCP_MD5SIG`).
//!
//! Keys live on sockets, not in a global table (reference §1.7, §4): every
//! call here takes the socket (`AsFd`/`BorrowedFd`) that the key covers.
//!
//! - [`sys`]: the uapi structs (`struct tcp_ao_add`, `tcp_ao_del`,
//!   `tcp_ao_info_opt`, `tcp_ao_getsockopt`, `tcp_md5sig`) with asserted
//!   sizes, and the only `unsafe` code (the `setsockopt`/`getsockopt` calls).
//! - [`ao`]: TCP_AO_ADD_KEY, TCP_AO_DEL_KEY, TCP_AO_INFO, TCP_AO_GET_KEYS.
//! - [`md5`]: the TCP_MD5SIG_EXT option.
//! - [`probe`]: which of the two the running kernel has.
//!
//! Every failure is a [`KernelError`] that names the socket option, the
//! peer and KeyIDs, the errno, and what the errno means for that option
//! (docs/kernel.md has the table).
//!
//! "Reference §N" in these docs means section N of the project's Linux
//! TCP-AO notes (linux-tcp-ao.md), which cite `include/uapi/linux/tcp.h`,
//! `net/ipv4/tcp_ao.c` and `Documentation/networking/tcp_ao.rst`.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};

pub mod ao;
pub mod md5;
pub mod sys;

/// How keys reach the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// TCP-AO MKTs (TCP_AO_ADD_KEY and friends).
    Ao,
    /// TCP-MD5 keys (TCP_MD5SIG_EXT), derived from the MKT (docs/kernel.md).
    Md5,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Ao => "tcp-ao",
            Backend::Md5 => "tcp-md5",
        })
    }
}

/// What [`probe`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Support {
    /// The kernel has TCP-AO.
    pub tcp_ao: bool,
    /// The kernel has TCP-MD5 with TCP_MD5SIG_EXT.
    pub tcp_md5: bool,
}

impl Support {
    /// The usable backends, preferred first (TCP-AO, then TCP-MD5).
    pub fn backends(&self) -> Vec<Backend> {
        let mut v = Vec::with_capacity(2);
        if self.tcp_ao {
            v.push(Backend::Ao);
        }
        if self.tcp_md5 {
            v.push(Backend::Md5);
        }
        v
    }

    /// The preferred backend, if any.
    pub fn preferred(&self) -> Option<Backend> {
        self.backends().first().copied()
    }
}

/// Finds out whether the running kernel has TCP-AO and TCP-MD5, on a
/// throw-away TCP socket, without changing any state:
///
/// - TCP-AO: `getsockopt(TCP_AO_INFO)` with a zeroed `struct
///   tcp_ao_info_opt`. A TCP-AO kernel answers `ENOENT` (the fresh socket has
///   no `ao_info`, tcp_ao_get_sock_info()); a kernel without
///   `CONFIG_TCP_AO`, or older than 6.7, answers `ENOPROTOOPT` (the
///   `tcp_ao_get_sock_info()` stub, or the `default:` of
///   do_tcp_getsockopt()). A read is used rather than TCP_AO_ADD_KEY because
///   it cannot install anything, and because 38/39 were also the numbers of
///   the never-merged `TCP_AUTHOPT` ABI (reference §1.2), while 40 was not.
/// - TCP-MD5: `setsockopt(TCP_MD5SIG_EXT)` deleting (`tcpm_keylen` 0) a key
///   for the wildcard address that does not exist: `ENOENT` means TCP-MD5 is
///   there, `ENOPROTOOPT` that it is not (reference §3.2).
///
/// Any other answer is an error, not a guess.
pub fn probe() -> Result<Support, KernelError> {
    let sock = sys::tcp_socket(false)
        .or_else(|_| sys::tcp_socket(true))
        .map_err(|e| KernelError::os(Operation::Socket, KeyContext::socket(), e))?;
    let fd = sock.as_fd();
    let tcp_ao = match ao::info(fd) {
        Err(e) if e.cause() == Some(Cause::NotFound) => true,
        Err(e) if e.cause() == Some(Cause::NotSupported) => false,
        Err(e) => return Err(e),
        Ok(_) => {
            return Err(KernelError::UnexpectedReply {
                op: Operation::AoGetInfo,
                what: "TCP-AO state on a socket that was just created",
            })
        }
    };
    let tcp_md5 = match md5::del_key(fd, unspecified_of(fd)?, Some(0)) {
        Err(e) if e.cause() == Some(Cause::NotFound) => true,
        Err(e) if e.cause() == Some(Cause::NotSupported) => false,
        Err(e) => return Err(e),
        Ok(()) => {
            return Err(KernelError::UnexpectedReply {
                op: Operation::Md5SigExt,
                what: "a TCP-MD5 key on a socket that was just created",
            })
        }
    };
    Ok(Support { tcp_ao, tcp_md5 })
}

/// The wildcard address of the socket's family.
fn unspecified_of(fd: BorrowedFd<'_>) -> Result<IpAddr, KernelError> {
    let domain = sys::socket_domain(fd)
        .map_err(|e| KernelError::os(Operation::SocketInfo, KeyContext::socket(), e))?;
    Ok(if domain == libc::AF_INET6 {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    })
}

/// The socket option (or system call) a [`KernelError`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `setsockopt(TCP_AO_ADD_KEY)`.
    AoAddKey,
    /// `setsockopt(TCP_AO_DEL_KEY)`.
    AoDelKey,
    /// `getsockopt(TCP_AO_INFO)`.
    AoGetInfo,
    /// `setsockopt(TCP_AO_INFO)`.
    AoSetInfo,
    /// `getsockopt(TCP_AO_GET_KEYS)`.
    AoGetKeys,
    /// `setsockopt(TCP_MD5SIG_EXT)`.
    Md5SigExt,
    /// `socket(2)` (for [`probe`]).
    Socket,
    /// `getsockopt(SOL_SOCKET, SO_DOMAIN / SO_ACCEPTCONN)`.
    SocketInfo,
}

impl Operation {
    fn is_ao(self) -> bool {
        matches!(
            self,
            Operation::AoAddKey
                | Operation::AoDelKey
                | Operation::AoGetInfo
                | Operation::AoSetInfo
                | Operation::AoGetKeys
        )
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::AoAddKey => "TCP_AO_ADD_KEY",
            Operation::AoDelKey => "TCP_AO_DEL_KEY",
            Operation::AoGetInfo => "getsockopt(TCP_AO_INFO)",
            Operation::AoSetInfo => "setsockopt(TCP_AO_INFO)",
            Operation::AoGetKeys => "TCP_AO_GET_KEYS",
            Operation::Md5SigExt => "TCP_MD5SIG_EXT",
            Operation::Socket => "socket(SOCK_STREAM)",
            Operation::SocketInfo => "getsockopt(SOL_SOCKET)",
        })
    }
}

/// What a failed call was about: the peer (and prefix) and the KeyIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyContext {
    /// The peer address of the key.
    pub peer: Option<IpAddr>,
    /// The prefix length, when not a host key.
    pub prefix: Option<u8>,
    /// The SendID involved.
    pub send_id: Option<u8>,
    /// The RecvID involved.
    pub recv_id: Option<u8>,
}

impl KeyContext {
    /// A socket-wide call (no peer, no KeyID).
    pub fn socket() -> Self {
        KeyContext::default()
    }

    /// A call about `peer`/`prefix`.
    pub fn peer(peer: IpAddr, prefix: u8) -> Self {
        KeyContext {
            peer: Some(peer),
            prefix: Some(prefix),
            ..KeyContext::default()
        }
    }

    /// Adds the KeyIDs.
    pub fn ids(mut self, send_id: Option<u8>, recv_id: Option<u8>) -> Self {
        self.send_id = send_id;
        self.recv_id = recv_id;
        self
    }
}

impl fmt::Display for KeyContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peer {
            Some(peer) => {
                write!(f, "for {peer}")?;
                match self.prefix {
                    Some(p) if p != host_prefix(peer) => write!(f, "/{p}")?,
                    _ => {}
                }
            }
            None => {
                f.write_str("on the socket")?;
                if self.send_id.is_some() || self.recv_id.is_some() {
                    f.write_str(",")?;
                }
            }
        }
        if let Some(id) = self.send_id {
            write!(f, " send_id {id}")?;
        }
        if let Some(id) = self.recv_id {
            write!(f, " recv_id {id}")?;
        }
        Ok(())
    }
}

/// What an errno means for the option that returned it (reference §1.5,
/// §1.6, §1.8, §1.11, §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// `ENOPROTOOPT`: the kernel lacks TCP-AO (or TCP-MD5).
    NotSupported,
    /// `EEXIST` (TCP_AO_ADD_KEY): a key with the same SendID or RecvID
    /// already covers an overlapping peer (RFC 5925 3.1).
    KeyIdConflict,
    /// `EBUSY` (TCP_AO_DEL_KEY): the key is Current_key or RNext_key.
    KeyInUse,
    /// `ENOENT`: no such key, no TCP-AO state on the socket, or (on add) an
    /// algorithm the kernel does not know.
    NotFound,
    /// `EKEYREJECTED`: TCP-AO and TCP-MD5 would cover the same peer, or
    /// `ao_required` with TCP-MD5 keys present.
    Rejected,
    /// `EISCONN`: first TCP-AO key on a socket that is already connected.
    AlreadyConnected,
    /// `EINVAL`: the kernel refused the arguments.
    InvalidArgument,
    /// `EMSGSIZE`: the MAC does not fit in the SYN's option space.
    MacTooLong,
    /// `ENOMEM` / `EUSERS`: option memory (`net.core.optmem_max`) exhausted.
    NoMemory,
    /// `ENOTSOCK` / `EBADF`: the descriptor is not a socket.
    NotASocket,
    /// Any other errno.
    Other,
}

impl Cause {
    fn of(err: &io::Error) -> Cause {
        match err.raw_os_error() {
            Some(libc::ENOPROTOOPT) => Cause::NotSupported,
            Some(libc::EEXIST) => Cause::KeyIdConflict,
            Some(libc::EBUSY) => Cause::KeyInUse,
            Some(libc::ENOENT) => Cause::NotFound,
            Some(libc::EKEYREJECTED) => Cause::Rejected,
            Some(libc::EISCONN) => Cause::AlreadyConnected,
            Some(libc::EINVAL) => Cause::InvalidArgument,
            Some(libc::EMSGSIZE) => Cause::MacTooLong,
            Some(libc::ENOMEM) | Some(libc::ENOBUFS) | Some(libc::EUSERS) => Cause::NoMemory,
            Some(libc::ENOTSOCK) | Some(libc::EBADF) => Cause::NotASocket,
            _ => Cause::Other,
        }
    }

    /// The operator's explanation of this cause for `op`.
    fn hint(self, op: Operation) -> Option<&'static str> {
        use Operation as O;
        Some(match (self, op) {
            (Cause::NotSupported, O::Md5SigExt) => "this kernel has no TCP-MD5 (CONFIG_TCP_MD5SIG)",
            (Cause::NotSupported, op) if op.is_ao() => {
                "this kernel has no TCP-AO: it needs Linux 6.7 or later built with CONFIG_TCP_AO=y"
            }
            (Cause::KeyIdConflict, _) => "a key with these KeyIDs is already on the socket",
            (Cause::KeyInUse, _) => {
                "the key is the socket's current or RNext key: switch to another key first, \
                 or name the replacement (forced delete)"
            }
            (Cause::NotFound, O::AoAddKey) => "the kernel does not know this MAC algorithm",
            (Cause::NotFound, O::AoDelKey) => "no key with these KeyIDs for this address and prefix on the socket",
            (Cause::NotFound, O::AoGetInfo | O::AoGetKeys) => "the socket has no TCP-AO keys",
            (Cause::NotFound, O::AoSetInfo) => "no key with this KeyID on the socket",
            (Cause::NotFound, O::Md5SigExt) => "no TCP-MD5 key for this peer on the socket",
            (Cause::Rejected, O::AoAddKey) => {
                "the socket has a TCP-MD5 key for this peer; TCP-AO and TCP-MD5 cannot cover the same peer"
            }
            (Cause::Rejected, O::AoSetInfo) => "ao_required cannot be set while the socket has TCP-MD5 keys",
            (Cause::Rejected, O::Md5SigExt) => "a TCP-AO key covers this peer, or the socket requires TCP-AO",
            (Cause::AlreadyConnected, _) => {
                "the socket is already connected without TCP-AO: keys must be installed before connect() or listen()"
            }
            (Cause::InvalidArgument, O::AoAddKey) => {
                "the kernel refused the key: the address family must be the socket's, the prefix must not leave \
                 host bits, current/rnext cannot be set on a listening socket, and on a connected socket the key \
                 must match the peer"
            }
            (Cause::InvalidArgument, O::AoDelKey) => "current/rnext cannot be named on a listening socket",
            (Cause::InvalidArgument, O::AoSetInfo) => {
                "TCP-AO state can only be created on a closed or listening socket, and current/rnext cannot be \
                 set on a listening socket"
            }
            (Cause::InvalidArgument, O::Md5SigExt) => {
                "the kernel refused the key: the address family must be the socket's"
            }
            (Cause::MacTooLong, _) => "the MAC does not fit in the SYN's option space (at most 16 octets)",
            (Cause::NoMemory, _) => "socket option memory exhausted: raise net.core.optmem_max (about 300 bytes per key)",
            (Cause::NotASocket, _) => "the descriptor is not a TCP socket",
            _ => return None,
        })
    }
}

/// A failure to install, remove or read kernel keys.
///
/// Messages name the option, the peer and KeyIDs, the errno and its meaning,
/// for example `TCP_AO_ADD_KEY for 192.0.2.2 send_id 5 recv_id 7: File
/// exists (a key with these KeyIDs is already on the socket)`. Key bytes are
/// never part of an error.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The system call failed.
    #[error("{op} {context}: {}", describe(*.op, *.cause, .errno))]
    Os {
        /// The socket option.
        op: Operation,
        /// Peer and KeyIDs.
        context: KeyContext,
        /// The errno's meaning for `op`.
        cause: Cause,
        /// The errno.
        errno: io::Error,
    },
    /// The request was refused before any system call.
    #[error("{op} {context}: {reason}")]
    Invalid {
        /// The socket option.
        op: Operation,
        /// Peer and KeyIDs.
        context: KeyContext,
        /// Why.
        reason: &'static str,
    },
    /// The kernel answered something the uapi does not allow.
    #[error("{op}: the kernel returned {what}")]
    UnexpectedReply {
        /// The socket option.
        op: Operation,
        /// What was unexpected.
        what: &'static str,
    },
}

impl KernelError {
    /// Wraps an OS error from `op`.
    pub fn os(op: Operation, context: KeyContext, errno: io::Error) -> Self {
        KernelError::Os {
            op,
            context,
            cause: Cause::of(&errno),
            errno,
        }
    }

    /// The errno's meaning, for [`KernelError::Os`].
    pub fn cause(&self) -> Option<Cause> {
        match self {
            KernelError::Os { cause, .. } => Some(*cause),
            _ => None,
        }
    }

    /// The raw errno, for [`KernelError::Os`].
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Os { errno, .. } => errno.raw_os_error(),
            _ => None,
        }
    }

    /// The kernel lacks the facility (`ENOPROTOOPT`).
    pub fn is_not_supported(&self) -> bool {
        self.cause() == Some(Cause::NotSupported)
    }
}

/// `strerror` text followed by the hint: "File exists (a key with ...)".
fn describe(op: Operation, cause: Cause, errno: &io::Error) -> String {
    let text = errno.to_string();
    match cause.hint(op) {
        Some(hint) => {
            // io::Error renders "File exists (os error 17)"; the hint says more.
            let short = text
                .rsplit_once(" (os error ")
                .map_or(text.as_str(), |(s, _)| s);
            format!("{short} ({hint})")
        }
        None => text,
    }
}

/// The host prefix length of `peer`'s family (32 for IPv4 and v4-mapped).
pub fn host_prefix(peer: IpAddr) -> u8 {
    match canonical(peer) {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `peer` with a v4-mapped IPv6 address turned into IPv4, as the kernel
/// stores it (tcp_ao_verify_ipv6(), tcp_v6_parse_md5_keys()).
pub fn canonical(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    }
}

/// The `sockaddr` for `peer` in the family of the socket `fd`: IPv4 peers on
/// IPv6 sockets become v4-mapped (prefixes stay IPv4 prefixes, reference
/// §1.5 and tcp_v6_parse_md5_keys()).
pub(crate) fn peer_sockaddr(
    fd: BorrowedFd<'_>,
    peer: IpAddr,
    op: Operation,
    context: KeyContext,
) -> Result<sys::KernelSockaddr, KernelError> {
    let domain = sys::socket_domain(fd).map_err(|e| KernelError::os(op, context, e))?;
    match (domain, canonical(peer)) {
        (libc::AF_INET, IpAddr::V4(a)) => Ok(sys::KernelSockaddr::v4(a)),
        (libc::AF_INET, IpAddr::V6(_)) => Err(KernelError::Invalid {
            op,
            context,
            reason: "an IPv6 peer cannot have a key on an IPv4 socket",
        }),
        (libc::AF_INET6, IpAddr::V4(a)) => Ok(sys::KernelSockaddr::v6(a.to_ipv6_mapped())),
        (libc::AF_INET6, IpAddr::V6(a)) => Ok(sys::KernelSockaddr::v6(a)),
        _ => Err(KernelError::Invalid {
            op,
            context,
            reason: "not an IPv4 or IPv6 socket",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_option_peer_ids_and_meaning() {
        let ctx = KeyContext::peer("192.0.2.2".parse().expect("literal"), 32).ids(Some(5), Some(7));
        let e = KernelError::os(
            Operation::AoAddKey,
            ctx,
            io::Error::from_raw_os_error(libc::EEXIST),
        );
        assert_eq!(
            e.to_string(),
            "TCP_AO_ADD_KEY for 192.0.2.2 send_id 5 recv_id 7: File exists \
             (a key with these KeyIDs is already on the socket)"
        );
        assert_eq!(e.cause(), Some(Cause::KeyIdConflict));
        assert_eq!(e.errno(), Some(libc::EEXIST));

        let e = KernelError::os(
            Operation::AoAddKey,
            ctx,
            io::Error::from_raw_os_error(libc::ENOPROTOOPT),
        );
        assert!(e.is_not_supported());
        assert!(e.to_string().contains("no TCP-AO"), "{e}");

        let ctx =
            KeyContext::peer("2001:db8::".parse().expect("literal"), 32).ids(Some(1), Some(2));
        let e = KernelError::os(
            Operation::AoDelKey,
            ctx,
            io::Error::from_raw_os_error(libc::EBUSY),
        );
        assert!(
            e.to_string()
                .starts_with("TCP_AO_DEL_KEY for 2001:db8::/32 send_id 1 recv_id 2: "),
            "{e}"
        );
        assert!(e.to_string().contains("current or RNext"), "{e}");

        let e = KernelError::os(
            Operation::AoSetInfo,
            KeyContext::socket().ids(None, Some(9)),
            io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert_eq!(
            e.to_string(),
            "setsockopt(TCP_AO_INFO) on the socket, recv_id 9: No such file or directory \
             (no key with this KeyID on the socket)"
        );

        // Errnos without a hint keep io::Error's rendering.
        let e = KernelError::os(
            Operation::AoAddKey,
            ctx,
            io::Error::from_raw_os_error(libc::EPERM),
        );
        assert!(e.to_string().ends_with("(os error 1)"), "{e}");
    }

    #[test]
    fn canonical_unmaps_v4_mapped() {
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("literal");
        assert_eq!(
            canonical(mapped),
            "192.0.2.1".parse::<IpAddr>().expect("literal")
        );
        assert_eq!(host_prefix(mapped), 32);
        assert_eq!(host_prefix("2001:db8::1".parse().expect("literal")), 128);
    }

    #[test]
    fn support_prefers_tcp_ao() {
        let s = Support {
            tcp_ao: true,
            tcp_md5: true,
        };
        assert_eq!(s.backends(), vec![Backend::Ao, Backend::Md5]);
        let s = Support {
            tcp_ao: false,
            tcp_md5: true,
        };
        assert_eq!(s.preferred(), Some(Backend::Md5));
        assert_eq!(
            Support {
                tcp_ao: false,
                tcp_md5: false
            }
            .preferred(),
            None
        );
    }

    #[test]
    fn probe_answers_on_this_kernel() {
        // Whatever the kernel, the probe must give a definite answer.
        let s = probe().expect("probe");
        eprintln!("kernel support: {s:?}");
    }
}
