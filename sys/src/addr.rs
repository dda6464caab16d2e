//! Socket addresses: `SocketAddr` to and from the kernel's `sockaddr_in` and
//! `sockaddr_in6`, and the `getsockname(2)`/`getpeername(2)` queries.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

use libc::{c_int, sockaddr, socklen_t};

/// `addr` as a `sockaddr_in` or `sockaddr_in6` in a `sockaddr_storage`,
/// with its length, for `connect(2)` and `bind(2)`.
pub fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than, and aligned for,
            // sockaddr_in; `ss` is a live local.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than, and aligned for,
            // sockaddr_in6; `ss` is a live local.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as socklen_t)
}

/// Decodes an IPv4 or IPv6 socket address; `None` for any other family, a
/// null pointer or a length too short for the family. Allocates nothing.
///
/// # Safety
/// Unless null, `addr` points to at least `len` readable bytes.
pub unsafe fn read_sockaddr(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    if addr.is_null() || len < size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: addr is non-null and readable for at least the family field
    // (caller's promise, length checked); read_unaligned makes no
    // alignment assumption.
    let family = unsafe { std::ptr::addr_of!((*addr).sa_family).read_unaligned() };
    match c_int::from(family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: `len` readable bytes cover a whole sockaddr_in, and
            // every bit pattern is a valid one (integers only).
            let sin = unsafe { addr.cast::<libc::sockaddr_in>().read_unaligned() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { addr.cast::<libc::sockaddr_in6>().read_unaligned() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Decodes the first `len` bytes of `storage` (what `getsockname`,
/// `getpeername`, `accept` or `recvfrom` wrote) as an IPv4 or IPv6 address;
/// `None` for other families or a short length.
pub fn from_sockaddr_storage(
    storage: &libc::sockaddr_storage,
    len: socklen_t,
) -> Option<SocketAddr> {
    let len = len.min(size_of::<libc::sockaddr_storage>() as socklen_t);
    // SAFETY: `storage` is a live sockaddr_storage, readable for its whole
    // size, and `len` is clamped to that size.
    unsafe { read_sockaddr((storage as *const libc::sockaddr_storage).cast(), len) }
}

/// Which end of a socket [`socket_name`] asks about.
#[derive(Clone, Copy)]
enum End {
    Local,
    Peer,
}

fn socket_name(fd: BorrowedFd<'_>, end: End) -> io::Result<Option<SocketAddr>> {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as socklen_t;
    let addr = (&mut storage as *mut libc::sockaddr_storage).cast::<sockaddr>();
    // SAFETY: `fd` is live; `addr` points to a writable sockaddr_storage of
    // `len` bytes, and the kernel writes at most `len` bytes there and the
    // real length to `len`.
    let rc = unsafe {
        match end {
            End::Local => libc::getsockname(fd.as_raw_fd(), addr, &mut len),
            End::Peer => libc::getpeername(fd.as_raw_fd(), addr, &mut len),
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(from_sockaddr_storage(&storage, len))
}

/// `getsockname(2)`: the socket's local address as the kernel reports it
/// (`0.0.0.0:0` for an unbound IPv4 socket); `None` when it is not IPv4 or
/// IPv6. Allocates nothing.
pub fn getsockname(fd: BorrowedFd<'_>) -> io::Result<Option<SocketAddr>> {
    socket_name(fd, End::Local)
}

/// `getpeername(2)`: the remote address as the kernel reports it; `None`
/// when it is not IPv4 or IPv6. `ENOTCONN` is an error here.
pub fn getpeername(fd: BorrowedFd<'_>) -> io::Result<Option<SocketAddr>> {
    socket_name(fd, End::Peer)
}

/// The remote address of a connected socket; `None` when the socket is not
/// connected (`ENOTCONN`) or not IPv4/IPv6.
pub fn peer_address(fd: BorrowedFd<'_>) -> io::Result<Option<SocketAddr>> {
    match getpeername(fd) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(None),
        other => other,
    }
}

/// The local address of a socket; `None` when it is not bound (wildcard
/// address and port 0) or not IPv4/IPv6.
pub fn local_address(fd: BorrowedFd<'_>) -> io::Result<Option<SocketAddr>> {
    Ok(getsockname(fd)?.filter(|a| !(a.ip().is_unspecified() && a.port() == 0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn sockaddr_round_trips_v4_and_v6() {
        for text in [
            "192.0.2.1:179",
            "0.0.0.0:0",
            "[2001:db8::7]:179",
            "[::ffff:192.0.2.1]:65535",
            "[fe80::1%3]:22",
        ] {
            let mut addr: SocketAddr = text.parse().expect("literal");
            if let SocketAddr::V6(a) = &mut addr {
                a.set_flowinfo(0x12345);
            }
            let (ss, len) = to_sockaddr(addr);
            let expected = if addr.is_ipv4() {
                size_of::<libc::sockaddr_in>()
            } else {
                size_of::<libc::sockaddr_in6>()
            };
            assert_eq!(len as usize, expected);
            assert_eq!(from_sockaddr_storage(&ss, len), Some(addr), "{text}");
        }
    }

    #[test]
    fn sockaddr_in_is_network_byte_order() {
        let (ss, _) = to_sockaddr("192.0.2.1:179".parse().expect("literal"));
        // SAFETY: to_sockaddr wrote a sockaddr_in at the start of `ss`,
        // which is aligned for it.
        let sin = unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
        assert_eq!(sin.sin_port.to_ne_bytes(), 179u16.to_be_bytes());
        assert_eq!(sin.sin_addr.s_addr.to_ne_bytes(), [192, 0, 2, 1]);
    }

    #[test]
    fn short_null_and_foreign_addresses_are_none() {
        let (ss, len) = to_sockaddr("[2001:db8::1]:1".parse().expect("literal"));
        assert_eq!(from_sockaddr_storage(&ss, len - 1), None);
        assert_eq!(from_sockaddr_storage(&ss, 0), None);
        // SAFETY: a null pointer is accepted.
        assert_eq!(unsafe { read_sockaddr(std::ptr::null(), 16) }, None);
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut unix: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        unix.ss_family = libc::AF_UNIX as libc::sa_family_t;
        assert_eq!(from_sockaddr_storage(&unix, 110), None);
        // A length beyond the storage is clamped, not trusted.
        let (ss, _) = to_sockaddr("192.0.2.1:1".parse().expect("literal"));
        assert!(from_sockaddr_storage(&ss, socklen_t::MAX).is_some());
    }

    #[test]
    fn names_of_sockets() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        assert_eq!(
            local_address(listener.as_fd()).expect("getsockname"),
            Some(addr)
        );
        assert_eq!(peer_address(listener.as_fd()).expect("getpeername"), None);
        let e = getpeername(listener.as_fd()).expect_err("not connected");
        assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN));
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        assert_eq!(
            peer_address(stream.as_fd()).expect("getpeername"),
            Some(addr)
        );
        let (u, _) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        assert_eq!(getsockname(u.as_fd()).expect("getsockname"), None);
    }
}
