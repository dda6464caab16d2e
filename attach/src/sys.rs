//! The system calls of the client that are its own, and its only `unsafe`
//! code.
//!
//! - [`connect_unix`] connects with the raw `connect` system call
//!   (`syscall(SYS_connect)`), not libc's `connect()`: the client is meant to
//!   run inside an `LD_PRELOAD` wrapper of `connect()`, and calling the
//!   wrapped symbol from there would recurse into the wrapper.
//! - [`send`] passes `MSG_NOSIGNAL`, as `aokd_sys::send_with_fd` does: a
//!   routing daemon that has not ignored `SIGPIPE` must not be killed
//!   because aokd went away mid-request.
//!
//! The descriptor itself travels with `aokd_sys::send_with_fd`
//! (`SCM_RIGHTS`), the implementation the daemon receives with.

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
