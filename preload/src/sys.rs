//! The library's one unsafe boundary with libc: the real `connect`,
//! `listen`, `accept` and `accept4` (found once with
//! `dlsym(RTLD_NEXT, ...)`), `errno`, and the few socket queries the
//! interposers make on descriptors the program passes (`getsockopt`,
//! `close`, `write` to stderr), and what the guard key and the takeover
//! need (`setsockopt` of an encoded struct, `getrandom`, a close-on-exec
//! `dup`, `getpid`). Socket addresses and the queries on a
//! borrowed socket come from `aokd-sys`.
//!
//! Everything here is async-signal-safe apart from `dlsym`, which
//! [`resolve_all`] calls once from the library's constructor, before the
//! program's `main` and before it can fork; afterwards the addresses are
//! plain atomic loads. Nothing here allocates or locks.

use std::ffi::CStr;
use std::mem::size_of;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicPtr, Ordering};

use libc::{c_int, c_void, sockaddr, socklen_t};

type ConnectFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;
type ListenFn = unsafe extern "C" fn(c_int, c_int) -> c_int;
type AcceptFn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;
type Accept4Fn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t, c_int) -> c_int;

static REAL_CONNECT: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
static REAL_LISTEN: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
static REAL_ACCEPT: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
static REAL_ACCEPT4: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// The next definition of `name` after this library (libc's), cached.
/// Null when there is none.
fn resolve(cache: &AtomicPtr<c_void>, name: &CStr) -> *mut c_void {
    let cached = cache.load(Ordering::Acquire);
    if !cached.is_null() {
        return cached;
    }
    // SAFETY: `name` is NUL-terminated and RTLD_NEXT is a valid pseudo
    // handle; dlsym only reads them.
    let found = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    cache.store(found, Ordering::Release);
    found
}

/// Finds all four real functions now (called from the constructor).
pub fn resolve_all() {
    resolve(&REAL_CONNECT, c"connect");
    resolve(&REAL_LISTEN, c"listen");
    resolve(&REAL_ACCEPT, c"accept");
    resolve(&REAL_ACCEPT4, c"accept4");
}

/// The real `connect(2)`.
///
/// # Safety
/// The caller's arguments, as for `connect(2)`.
pub unsafe fn real_connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let f = resolve(&REAL_CONNECT, c"connect");
    if f.is_null() {
        set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: `f` is libc's `connect`, whose C type is `ConnectFn`; the
    // caller vouches for the arguments.
    unsafe { std::mem::transmute::<*mut c_void, ConnectFn>(f)(fd, addr, len) }
}

/// The real `listen(2)`.
///
/// # Safety
/// None beyond `listen(2)`'s; `unsafe` for symmetry with the others.
pub unsafe fn real_listen(fd: c_int, backlog: c_int) -> c_int {
    let f = resolve(&REAL_LISTEN, c"listen");
    if f.is_null() {
        set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: `f` is libc's `listen`, whose C type is `ListenFn`.
    unsafe { std::mem::transmute::<*mut c_void, ListenFn>(f)(fd, backlog) }
}

/// The real `accept(2)`.
///
/// # Safety
/// The caller's arguments, as for `accept(2)`.
pub unsafe fn real_accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let f = resolve(&REAL_ACCEPT, c"accept");
    if f.is_null() {
        set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: `f` is libc's `accept`, whose C type is `AcceptFn`; the caller
    // vouches for the arguments.
    unsafe { std::mem::transmute::<*mut c_void, AcceptFn>(f)(fd, addr, len) }
}

/// The real `accept4(2)`.
///
/// # Safety
/// The caller's arguments, as for `accept4(2)`.
pub unsafe fn real_accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    let f = resolve(&REAL_ACCEPT4, c"accept4");
    if f.is_null() {
        set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: `f` is libc's `accept4`, whose C type is `Accept4Fn`; the
    // caller vouches for the arguments.
    unsafe { std::mem::transmute::<*mut c_void, Accept4Fn>(f)(fd, addr, len, flags) }
}

/// The calling thread's `errno`.
pub fn errno() -> c_int {
    // SAFETY: __errno_location returns a valid pointer to this thread's
    // errno.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
pub fn set_errno(value: c_int) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value }
}

/// An `int` socket option, or `None` if `fd` is not a socket.
fn sockopt_int(fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
    let mut value: c_int = 0;
    let mut len = size_of::<c_int>() as socklen_t;
    // SAFETY: value and len are valid for writes of the sizes given; a bad
    // fd only makes getsockopt fail.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut c_int).cast::<c_void>(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

/// Whether `fd` is an open IPv4 or IPv6 TCP socket.
pub fn is_inet_tcp(fd: c_int) -> bool {
    let domain = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN);
    matches!(domain, Some(libc::AF_INET | libc::AF_INET6))
        && sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && sockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL) == Some(libc::IPPROTO_TCP)
}

/// Runs `f` with `fd` borrowed, if `fd` is an open IPv4/IPv6 TCP socket.
///
/// The socket stays open while `f` runs unless another thread of the
/// program closes it at the same time, which would equally break the
/// program's own call on it.
pub fn with_inet_tcp<R>(fd: c_int, f: impl FnOnce(BorrowedFd<'_>) -> R) -> Option<R> {
    if !is_inet_tcp(fd) {
        return None;
    }
    // SAFETY: getsockopt just succeeded on `fd`, so it is open (and not
    // -1); the borrow does not outlive `f`.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    Some(f(borrowed))
}

/// Decoding the program's socket addresses, and the queries on a socket
/// that [`with_inet_tcp`] has borrowed, are `aokd-sys`'s: allocation-free
/// there too.
pub use aokd_sys::{getsockname, read_sockaddr, tcp_state, TcpState};

/// Closes a socket that `accept` just returned and the program will never
/// see, ignoring errors.
pub fn close_accepted(fd: c_int) {
    // SAFETY: `fd` was just returned by accept and is owned by this
    // library until it is handed to the program, which it now never is.
    unsafe {
        libc::close(fd);
    }
}

/// Writes `bytes` to stderr (fd 2) with `write(2)`, ignoring errors and
/// short writes; no locks, no buffering.
pub fn write_stderr(bytes: &[u8]) {
    // SAFETY: bytes is valid for reads of its length.
    unsafe {
        libc::write(2, bytes.as_ptr().cast::<c_void>(), bytes.len());
    }
}

/// `setsockopt(fd, level, name, bytes)`: a socket option whose value is
/// the C struct encoded in `bytes` (the guard keys, [`crate::guard`]).
pub fn setsockopt_bytes(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    bytes: &[u8],
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = socklen_t::try_from(bytes.len())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: bytes is valid for reads of `len` octets; the kernel copies
    // at most that; a bad option only makes setsockopt fail.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            bytes.as_ptr().cast::<c_void>(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Fills `buf` from the kernel's random source (`getrandom(2)`, blocking
/// only until the pool is first initialised, long before a routing daemon
/// runs).
pub fn random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: rest is valid for writes of its length.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast::<c_void>(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// A close-on-exec duplicate of the program's descriptor `fd`: the
/// background takeover works on the socket itself, even if the program
/// closes its `fd` (and the number is reused) meanwhile.
pub fn dup_cloexec(fd: c_int) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on any number either fails or returns
    // a new descriptor, which we then own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` was just returned by fcntl and is owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(new) })
}

/// The calling process's pid.
pub fn getpid() -> i32 {
    // SAFETY: getpid(2) has no preconditions.
    unsafe { libc::getpid() }
}
