//! The system calls of the client, and its only `unsafe` code.
//!
//! - [`connect_unix`] connects with the raw `connect` system call
//!   (`syscall(SYS_connect)`), not libc's `connect()`: the client is meant to
//!   run inside an `LD_PRELOAD` wrapper of `connect()`, and calling the
//!   wrapped symbol from there would recurse into the wrapper.
//! - [`send_with_fd`] and [`send`] pass `MSG_NOSIGNAL`: a routing daemon
//!   that has not ignored `SIGPIPE` must not be killed because aokd went
//!   away mid-request.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use libc::{c_int, c_void};

/// `sun_path` holds 108 bytes including the terminating NUL.
pub(crate) const MAX_PATH_LEN: usize = 107;

/// Converts a `syscall(2)`/`socket(2)` result into an owned descriptor.
fn owned(rc: c_int) -> io::Result<OwnedFd> {
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `rc` is a descriptor the system call just created for this
    // process; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(rc) })
}

/// A close-on-exec `AF_UNIX` stream socket connected to `path`, with send
/// timeout `timeout` already set (it bounds a connect to a listener whose
/// backlog is full).
pub(crate) fn connect_unix(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_PATH_LEN || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the socket path must be 1 to 107 bytes without NUL",
        ));
    }
    // SAFETY: plain system call with constant arguments; no pointers.
    let fd =
        owned(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    let stream = UnixStream::from(fd);
    stream.set_write_timeout(Some(timeout))?;
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = (size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    loop {
        // SAFETY: `addr` is a valid sockaddr_un that lives across the call,
        // `len` does not exceed its size, and the descriptor is open. The
        // arguments are passed as longs, as syscall(2) reads them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_connect,
                libc::c_long::from(stream.as_raw_fd()),
                (&addr as *const libc::sockaddr_un) as libc::c_long,
                libc::c_long::from(len),
            )
        };
        if rc == 0 {
            return Ok(stream);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            // An interrupted connect that completed meanwhile.
            Some(libc::EISCONN) => return Ok(stream),
            // The send timeout expired while the backlog was full.
            Some(libc::EAGAIN) => return Err(io::Error::from(io::ErrorKind::TimedOut)),
            _ => return Err(e),
        }
    }
}

/// `sendmsg(sock, data, SCM_RIGHTS [fd], MSG_NOSIGNAL)`: sends `data` (not
/// empty) with `fd` attached to its first byte; returns the bytes sent.
pub(crate) fn send_with_fd(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fd: BorrowedFd<'_>,
) -> io::Result<usize> {
    if data.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a descriptor must travel with at least one byte",
        ));
    }
    /// Control buffer for one descriptor, aligned for `struct cmsghdr`.
    #[repr(C, align(8))]
    struct Cmsg([u8; 64]);
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let space = unsafe { libc::CMSG_SPACE(size_of::<c_int>() as libc::c_uint) } as usize;
    let mut cmsg = Cmsg([0; 64]);
    if space > cmsg.0.len() {
        return Err(io::Error::other("control message buffer too small"));
    }
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
    // SAFETY: `msg_control` points to `cmsg`, zeroed, aligned for cmsghdr,
    // with `space` = CMSG_SPACE(sizeof(int)) <= 64 bytes of control area:
    // CMSG_FIRSTHDR returns its start (checked non-null) and CMSG_DATA has
    // room for one int, written unaligned. `iov` points to `data`, which
    // the kernel only reads. All of it lives across the call.
    let rc = unsafe {
        let hdr = libc::CMSG_FIRSTHDR(&msg);
        if hdr.is_null() {
            return Err(io::Error::other("no room for the control message"));
        }
        (*hdr).cmsg_level = libc::SOL_SOCKET;
        (*hdr).cmsg_type = libc::SCM_RIGHTS;
        (*hdr).cmsg_len = libc::CMSG_LEN(size_of::<c_int>() as libc::c_uint) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(hdr).cast::<c_int>(), fd.as_raw_fd());
        libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// `send(sock, data, MSG_NOSIGNAL)`.
pub(crate) fn send(sock: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is readable for `data.len()` bytes during the call and
    // the kernel only reads it.
    let rc = unsafe {
        libc::send(
            sock.as_raw_fd(),
            data.as_ptr().cast::<c_void>(),
            data.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// Test helpers: the server side of the protocol.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// `recvmsg` with room for one descriptor (blocking).
    pub(crate) fn recv_with_fd(
        sock: BorrowedFd<'_>,
        buf: &mut [u8],
    ) -> io::Result<(usize, Option<OwnedFd>)> {
        #[repr(C, align(8))]
        struct Cmsg([u8; 64]);
        let mut cmsg = Cmsg([0; 64]);
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast::<c_void>(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.0.as_mut_ptr().cast::<c_void>();
        msg.msg_controllen = 64;
        // SAFETY: the buffers are writable for the lengths given and live
        // across the call.
        let rc = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut fd = None;
        // SAFETY: after recvmsg, the control area holds `msg_controllen`
        // valid bytes; an SCM_RIGHTS message carries descriptors installed
        // for us (64 bytes fit at most 10; tests send one).
        unsafe {
            let hdr = libc::CMSG_FIRSTHDR(&msg);
            if !hdr.is_null()
                && (*hdr).cmsg_level == libc::SOL_SOCKET
                && (*hdr).cmsg_type == libc::SCM_RIGHTS
            {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(hdr).cast::<c_int>());
                fd = Some(OwnedFd::from_raw_fd(raw));
            }
        }
        Ok((rc as usize, fd))
    }

    /// `getsockopt(SO_COOKIE)`.
    pub(crate) fn cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
        let mut v: u64 = 0;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: `v` is a writable u64 and `len` its size.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&mut v as *mut u64).cast::<c_void>(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(v)
    }
}
