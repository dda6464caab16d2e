//! One descriptor passed over a Unix stream socket with `SCM_RIGHTS`
//! (`sendmsg(2)`/`recvmsg(2)`, unix(7)): how a client hands aokd the TCP
//! socket it attaches (docs/attach.md).

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use libc::{c_int, c_void};

/// Most descriptors [`recv_with_fd`] makes room for in one message; more
/// are truncated by the kernel (`MSG_CTRUNC`, and closed by it).
pub const MAX_RECEIVED_FDS: usize = 16;

/// Bytes of control-message buffer for `n` descriptors.
const fn cmsg_space_for(n: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    unsafe { libc::CMSG_SPACE((n * size_of::<c_int>()) as libc::c_uint) as usize }
}

/// A control-message buffer aligned for `struct cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuffer<const N: usize>([u8; N]);

/// Control buffer size: room for [`MAX_RECEIVED_FDS`] descriptors.
const CMSG_BUFFER_LEN: usize = cmsg_space_for(MAX_RECEIVED_FDS);

/// `sendmsg(sock, data, SCM_RIGHTS [fd], MSG_NOSIGNAL)`: sends `data` with
/// one descriptor attached to its first byte. Returns the number of bytes
/// sent, which on a stream socket may be less than `data.len()`: send the
/// rest without the descriptor. `data` must not be empty (the descriptor
/// travels with data). `MSG_NOSIGNAL`: a process that has not ignored
/// `SIGPIPE` is not killed because the other end went away.
pub fn send_with_fd(sock: BorrowedFd<'_>, data: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
    send_with_fds(sock, data, &[fd])
}

/// [`send_with_fd`] with 1 to [`MAX_RECEIVED_FDS`] descriptors (tests use it
/// to send more than the attach protocol allows).
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if data.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a descriptor must travel with at least one byte",
        ));
    }
    if fds.is_empty() || fds.len() > MAX_RECEIVED_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("1 to {MAX_RECEIVED_FDS} descriptors per message"),
        ));
    }
    let mut cmsg = CmsgBuffer([0u8; CMSG_BUFFER_LEN]);
    let space = cmsg_space_for(fds.len());
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast::<c_void>();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points to `cmsg`, a zeroed buffer aligned for cmsghdr
    // whose first `space` = CMSG_SPACE(n * sizeof(int)) <= CMSG_BUFFER_LEN
    // bytes are the control area, so CMSG_FIRSTHDR returns its start
    // (non-null, checked) and CMSG_DATA has room for `n` ints, written
    // unaligned. `iov` points to `data`, which the kernel only reads.
    // Everything lives across the sendmsg call.
    let rc = unsafe {
        let hdr = libc::CMSG_FIRSTHDR(&msg);
        if hdr.is_null() {
            return Err(io::Error::other("no room for the control message"));
        }
        (*hdr).cmsg_level = libc::SOL_SOCKET;
        (*hdr).cmsg_type = libc::SCM_RIGHTS;
        (*hdr).cmsg_len = libc::CMSG_LEN((fds.len() * size_of::<c_int>()) as libc::c_uint) as _;
        let data = libc::CMSG_DATA(hdr).cast::<c_int>();
        for (i, fd) in fds.iter().enumerate() {
            std::ptr::write_unaligned(data.add(i), fd.as_raw_fd());
        }
        libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// `recvmsg(sock, buf, MSG_CMSG_CLOEXEC | MSG_DONTWAIT)`: reads bytes and
/// at most one descriptor passed with `SCM_RIGHTS`. Returns the number of
/// bytes read (0 at end of stream) and the descriptor, if one came with
/// these bytes. Does not block: `WouldBlock` when there is nothing to read.
///
/// Descriptors are always taken over, never leaked: if a message carries
/// more than one, or more than [`MAX_RECEIVED_FDS`] (`MSG_CTRUNC`), every
/// one of them is closed and the call fails with `InvalidData`; the bytes
/// read with them are then lost to the caller, so a stream protocol should
/// treat that error as the end of the conversation. Control messages other
/// than `SCM_RIGHTS` are ignored.
pub fn recv_with_fd(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    recv(sock, buf, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT)
}

/// [`recv_with_fd`] that waits for data unless the socket is non-blocking.
pub fn recv_with_fd_wait(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<OwnedFd>)> {
    recv(sock, buf, libc::MSG_CMSG_CLOEXEC)
}

fn recv(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: c_int,
) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut cmsg = CmsgBuffer([0u8; CMSG_BUFFER_LEN]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast::<c_void>(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast::<c_void>();
    msg.msg_controllen = CMSG_BUFFER_LEN as _;
    // SAFETY: `iov` points to `buf` (writable, `buf.len()` bytes) and
    // `msg_control` to `cmsg` (writable, CMSG_BUFFER_LEN bytes, aligned for
    // cmsghdr); the kernel writes within those bounds and updates
    // `msg_controllen`/`msg_flags`. All live across the call.
    let rc = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds: Vec<OwnedFd> = Vec::new();
    // SAFETY: after a successful recvmsg, `msg` describes `msg_controllen`
    // bytes of valid control messages in `cmsg`: CMSG_FIRSTHDR/CMSG_NXTHDR
    // walk them within that length and return null at the end. For an
    // SCM_RIGHTS message, the `cmsg_len - CMSG_LEN(0)` bytes at CMSG_DATA
    // are descriptors just installed in this process for us (read
    // unaligned, as CMSG_DATA gives no alignment guarantee), each owned by
    // nothing else, so wrapping each in an OwnedFd exactly once is sound.
    unsafe {
        let mut hdr = libc::CMSG_FIRSTHDR(&msg);
        while !hdr.is_null() {
            if (*hdr).cmsg_level == libc::SOL_SOCKET && (*hdr).cmsg_type == libc::SCM_RIGHTS {
                let data_len =
                    ((*hdr).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                let data = libc::CMSG_DATA(hdr).cast::<c_int>();
                for i in 0..data_len / size_of::<c_int>() {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    if raw >= 0 {
                        fds.push(OwnedFd::from_raw_fd(raw));
                    }
                }
            }
            hdr = libc::CMSG_NXTHDR(&msg, hdr);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        drop(fds);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("more than {MAX_RECEIVED_FDS} descriptors in one message; all were closed"),
        ));
    }
    if fds.len() > 1 {
        let n = fds.len();
        drop(fds);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{n} descriptors in one message, at most one expected; all were closed"),
        ));
    }
    Ok((rc as usize, fds.pop()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sock::{socket_cookie, tcp_socket};
    use std::os::fd::AsFd;

    fn cookie(fd: &impl AsFd) -> u64 {
        socket_cookie(fd.as_fd()).expect("SO_COOKIE")
    }

    #[test]
    fn descriptors_round_trip_over_a_socketpair() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let tcp = tcp_socket(false).expect("socket");
        let n = send_with_fd(a.as_fd(), b"hello\n", tcp.as_fd()).expect("sendmsg");
        assert_eq!(n, 6);
        let mut buf = [0u8; 64];
        let (n, fd) = recv_with_fd(b.as_fd(), &mut buf).expect("recvmsg");
        assert_eq!(&buf[..n], b"hello\n");
        let fd = fd.expect("a descriptor");
        assert_ne!(fd.as_raw_fd(), tcp.as_raw_fd());
        assert_eq!(cookie(&fd), cookie(&tcp), "the same socket");
        // close-on-exec (MSG_CMSG_CLOEXEC).
        // SAFETY: fcntl(F_GETFD) on a live descriptor reads no memory.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert!(flags >= 0 && flags & libc::FD_CLOEXEC != 0, "{flags}");

        // Plain data: no descriptor; nothing to read: WouldBlock.
        std::io::Write::write_all(&mut &a, b"x").expect("write");
        let (n, fd) = recv_with_fd(b.as_fd(), &mut buf).expect("recvmsg");
        assert_eq!((n, fd.is_none()), (1, true));
        let e = recv_with_fd(b.as_fd(), &mut buf).expect_err("empty");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);

        // Empty data cannot carry a descriptor.
        let e = send_with_fd(a.as_fd(), b"", tcp.as_fd()).expect_err("empty");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);

        // End of stream. Awaited with poll: a process that another test of
        // this binary spawns holds a copy of `a` between its fork and its
        // exec (close-on-exec), so the end may come a moment later.
        drop(a);
        let mut pfd = libc::pollfd {
            fd: b.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, its length 1.
        let ready = unsafe { libc::poll(&mut pfd, 1, 10_000) };
        assert_eq!(ready, 1, "no end of stream within 10 s");
        let (n, fd) = recv_with_fd(b.as_fd(), &mut buf).expect("eof");
        assert_eq!((n, fd.is_none()), (0, true));
    }

    #[test]
    fn the_waiting_receive_waits_for_the_sender() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let tcp = tcp_socket(true).expect("socket");
        let expected = cookie(&tcp);
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            send_with_fd(a.as_fd(), b"{}\n", tcp.as_fd()).expect("sendmsg")
        });
        let mut buf = [0u8; 16];
        let (n, fd) = recv_with_fd_wait(b.as_fd(), &mut buf).expect("recvmsg");
        assert_eq!(sender.join().expect("sender"), 3);
        assert_eq!(&buf[..n], b"{}\n");
        assert_eq!(cookie(&fd.expect("a descriptor")), expected);
    }

    #[test]
    fn more_than_one_descriptor_is_refused_and_closed() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let one = tcp_socket(false).expect("socket");
        let two = tcp_socket(false).expect("socket");
        send_with_fds(a.as_fd(), b"{}\n", &[one.as_fd(), two.as_fd()]).expect("sendmsg");
        let mut buf = [0u8; 64];
        let e = recv_with_fd(b.as_fd(), &mut buf).expect_err("two descriptors");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("2 descriptors"), "{e}");
        // The originals are untouched.
        assert_ne!(cookie(&one), cookie(&two));
        let e = send_with_fds(a.as_fd(), b"x", &[]).expect_err("none");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
