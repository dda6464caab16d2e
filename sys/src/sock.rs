//! TCP sockets (`socket(2)`, `connect(2)`) and the socket queries aokd and
//! its clients make: `SO_COOKIE`, `SO_DOMAIN`, `SO_TYPE`, `SO_PROTOCOL`,
//! `SO_ACCEPTCONN`, and the TCP state from `TCP_INFO`.

use std::io;
use std::mem::size_of;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use libc::{c_int, c_void, socklen_t};

use crate::addr::to_sockaddr;

/// A new, unbound, unconnected TCP socket (`SOCK_CLOEXEC`, blocking): the
/// state in which TCP-AO keys must be installed before `connect()`.
pub fn tcp_socket(ipv6: bool) -> io::Result<OwnedFd> {
    let domain = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain system call with constant arguments; no pointers.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2), is open, and is owned by
    // nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// libc's `connect(fd, addr)`, blocking unless the socket is non-blocking
/// (then `EINPROGRESS`). With `SO_SNDTIMEO` set, a connect that times out
/// fails with `EINPROGRESS`. (Not for the preload library, which must call
/// the real `connect` past its own interposer.)
pub fn connect(fd: BorrowedFd<'_>, addr: SocketAddr) -> io::Result<()> {
    let (ss, len) = to_sockaddr(addr);
    // SAFETY: `ss` holds a valid sockaddr of length `len` and lives across
    // the call; the kernel only reads it.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getsockopt(fd, level, name)` into `value`, a plain integer or
/// integer-only `repr(C)` struct; returns the length the kernel reported.
///
/// # Safety
/// Every bit pattern must be a valid `T`, and the option must be one for
/// which the kernel writes at most `optlen` bytes (every option this
/// module asks for).
unsafe fn getsockopt_into<T>(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    value: &mut T,
) -> io::Result<usize> {
    let mut len = size_of::<T>() as socklen_t;
    // SAFETY: `value` is writable for `len` = sizeof(T) bytes and lives
    // across the call; the kernel writes at most `len` bytes (caller's
    // promise) of a type for which any bytes are valid.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *mut T).cast::<c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(len as usize)
}

fn sockopt_int(fd: BorrowedFd<'_>, name: c_int) -> io::Result<c_int> {
    let mut v: c_int = 0;
    // SAFETY: SOL_SOCKET integer options write at most sizeof(int) bytes,
    // and any int is valid.
    unsafe { getsockopt_into(fd, libc::SOL_SOCKET, name, &mut v) }?;
    Ok(v)
}

/// `getsockopt(SOL_SOCKET, SO_DOMAIN)`: `AF_INET`, `AF_INET6`, ...
pub fn socket_domain(fd: BorrowedFd<'_>) -> io::Result<c_int> {
    sockopt_int(fd, libc::SO_DOMAIN)
}

/// `getsockopt(SOL_SOCKET, SO_TYPE)`: `SOCK_STREAM`, `SOCK_DGRAM`, ...
pub fn socket_type(fd: BorrowedFd<'_>) -> io::Result<c_int> {
    sockopt_int(fd, libc::SO_TYPE)
}

/// `getsockopt(SOL_SOCKET, SO_PROTOCOL)`: `IPPROTO_TCP` for TCP sockets.
pub fn socket_protocol(fd: BorrowedFd<'_>) -> io::Result<c_int> {
    sockopt_int(fd, libc::SO_PROTOCOL)
}

/// `getsockopt(SOL_SOCKET, SO_ACCEPTCONN)`: whether the socket listens.
pub fn is_listening(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(sockopt_int(fd, libc::SO_ACCEPTCONN)? != 0)
}

/// Sets the receive buffer to `bytes`: `SO_RCVBUFFORCE` (past
/// `net.core.rmem_max`, needs CAP_NET_ADMIN), else `SO_RCVBUF` (capped by
/// the kernel). Returns the size the kernel reports afterwards (it doubles
/// the value asked for its bookkeeping).
pub fn set_receive_buffer(fd: BorrowedFd<'_>, bytes: c_int) -> io::Result<c_int> {
    let set = |opt: c_int| {
        // SAFETY: setsockopt with a valid int option value and its size.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                std::ptr::addr_of!(bytes).cast(),
                size_of::<c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    set(libc::SO_RCVBUFFORCE).or_else(|_| set(libc::SO_RCVBUF))?;
    sockopt_int(fd, libc::SO_RCVBUF)
}

/// `getsockopt(SOL_SOCKET, SO_COOKIE)`: the socket's 64-bit cookie, unique
/// for the socket (not the descriptor) and never reused while the system
/// runs. Two descriptors with the same cookie refer to the same socket.
pub fn socket_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut v: u64 = 0;
    // SAFETY: SO_COOKIE writes at most 8 bytes; any u64 is valid.
    let len = unsafe { getsockopt_into(fd, libc::SOL_SOCKET, libc::SO_COOKIE, &mut v) }?;
    if len != size_of::<u64>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("SO_COOKIE returned {len} octets instead of 8"),
        ));
    }
    Ok(v)
}

/// A TCP socket's state (`include/net/tcp_states.h`), as `TCP_INFO` reports
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// `TCP_ESTABLISHED` (1).
    Established,
    /// `TCP_SYN_SENT` (2): `connect()` has begun.
    SynSent,
    /// `TCP_SYN_RECV` (3).
    SynRecv,
    /// `TCP_FIN_WAIT1` (4).
    FinWait1,
    /// `TCP_FIN_WAIT2` (5).
    FinWait2,
    /// `TCP_TIME_WAIT` (6).
    TimeWait,
    /// `TCP_CLOSE` (7): a new socket, or one whose connection is over.
    Close,
    /// `TCP_CLOSE_WAIT` (8).
    CloseWait,
    /// `TCP_LAST_ACK` (9).
    LastAck,
    /// `TCP_LISTEN` (10).
    Listen,
    /// `TCP_CLOSING` (11).
    Closing,
    /// Any other value.
    Other(u8),
}

impl TcpState {
    /// The state for a `tcpi_state` value.
    pub fn from_raw(v: u8) -> TcpState {
        match v {
            1 => TcpState::Established,
            2 => TcpState::SynSent,
            3 => TcpState::SynRecv,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            6 => TcpState::TimeWait,
            7 => TcpState::Close,
            8 => TcpState::CloseWait,
            9 => TcpState::LastAck,
            10 => TcpState::Listen,
            11 => TcpState::Closing,
            other => TcpState::Other(other),
        }
    }

    /// The kernel's name of the state, for messages.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::Other(_) => "unknown",
        }
    }
}

/// `getsockopt(SOL_TCP, TCP_INFO)`: the socket's TCP state (`tcpi_state`,
/// the first octet of `struct tcp_info`). Allocates on no path.
pub fn tcp_state(fd: BorrowedFd<'_>) -> io::Result<TcpState> {
    // The first eight octets of struct tcp_info (tcpi_state and the small
    // fields after it): the kernel copies min(optlen, sizeof(struct
    // tcp_info)) bytes, so asking for eight is right on every kernel.
    let mut head = [0u8; 8];
    // SAFETY: TCP_INFO writes at most optlen bytes; any bytes are valid.
    let len = unsafe { getsockopt_into(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut head) }?;
    if len == 0 {
        return Err(io::Error::from(io::ErrorKind::InvalidData));
    }
    Ok(TcpState::from_raw(head[0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{local_address, peer_address};
    use std::os::fd::AsFd;

    fn cookie(fd: &impl AsFd) -> u64 {
        socket_cookie(fd.as_fd()).expect("SO_COOKIE")
    }

    #[test]
    fn cookies_identify_sockets_not_descriptors() {
        let sock = tcp_socket(false).expect("socket");
        let dup = sock.try_clone().expect("dup");
        assert_eq!(cookie(&sock), cookie(&dup));
        assert_ne!(cookie(&sock), 0);
        let other = tcp_socket(true).expect("socket");
        assert_ne!(cookie(&sock), cookie(&other));
        let file = std::fs::File::open("/proc/self/status").expect("open");
        let e = socket_cookie(file.as_fd()).expect_err("not a socket");
        assert_eq!(e.raw_os_error(), Some(libc::ENOTSOCK));
    }

    #[test]
    fn queries_and_states() {
        let sock = tcp_socket(false).expect("socket");
        assert_eq!(
            socket_domain(sock.as_fd()).expect("SO_DOMAIN"),
            libc::AF_INET
        );
        let six = tcp_socket(true).expect("socket");
        assert_eq!(
            socket_domain(six.as_fd()).expect("SO_DOMAIN"),
            libc::AF_INET6
        );
        assert_eq!(
            socket_type(sock.as_fd()).expect("SO_TYPE"),
            libc::SOCK_STREAM
        );
        assert_eq!(
            socket_protocol(sock.as_fd()).expect("SO_PROTOCOL"),
            libc::IPPROTO_TCP
        );
        assert!(!is_listening(sock.as_fd()).expect("SO_ACCEPTCONN"));
        assert_eq!(peer_address(sock.as_fd()).expect("getpeername"), None);
        assert_eq!(local_address(sock.as_fd()).expect("getsockname"), None);
        assert_eq!(tcp_state(sock.as_fd()).expect("TCP_INFO"), TcpState::Close);

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        assert!(is_listening(listener.as_fd()).expect("SO_ACCEPTCONN"));
        assert_eq!(
            tcp_state(listener.as_fd()).expect("TCP_INFO"),
            TcpState::Listen
        );
        connect(sock.as_fd(), addr).expect("connect");
        assert_eq!(peer_address(sock.as_fd()).expect("getpeername"), Some(addr));
        assert_eq!(
            tcp_state(sock.as_fd()).expect("TCP_INFO"),
            TcpState::Established
        );
        let (accepted, from) = listener.accept().expect("accept");
        assert_eq!(
            peer_address(accepted.as_fd()).expect("getpeername"),
            Some(from)
        );
        assert_eq!(
            local_address(accepted.as_fd()).expect("getsockname"),
            Some(addr)
        );
        let (u, _) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        assert!(tcp_state(u.as_fd()).is_err());
        assert_eq!(TcpState::from_raw(99), TcpState::Other(99));
        assert_eq!(TcpState::SynSent.name(), "SYN_SENT");
    }

    #[test]
    fn connect_to_a_closed_port_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let sock = tcp_socket(false).expect("socket");
        let e = connect(sock.as_fd(), addr).expect_err("refused");
        assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED));
    }
}
