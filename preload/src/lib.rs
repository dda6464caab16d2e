//! `libaokd_preload.so`: an `LD_PRELOAD` library that gives unmodified
//! routing daemons (BIRD, FRR, OpenBGPD-portable, ExaBGP) aokd's TCP-AO or
//! TCP-MD5 keys without a patch (docs/preload.md).
//!
//! It interposes four libc functions and, for the sockets the policy
//! ([`policy`], from the environment) covers, hands the socket to aokd over
//! the attach protocol (docs/attach.md, through the [`aokd_attach`] client) before the
//! program's call proceeds:
//!
//! | Call | Covered when | Role sent | Then |
//! |---|---|---|---|
//! | `connect()` | IPv4/IPv6 TCP socket not yet connecting; remote port in `AOKD_PORTS`, remote address in `AOKD_PEERS` (if set) | `connect` (remote, port, `AOKD_WAIT_MS`) | the real `connect()`: the first SYN already carries the key (or the guard) |
//! | `listen()` | IPv4/IPv6 TCP socket not yet listening; local port in `AOKD_PORTS` | `listen` | the real `listen()`; the descriptor is remembered as an attached listener |
//! | `accept()`, `accept4()` | the listener is attached; the accepted socket's local port is covered | `accepted` | the socket is returned to the program |
//!
//! aokd may make `connect()` wait for a negotiation (bounded by the acquire
//! timeout); a non-blocking socket waits the same way, before its
//! `EINPROGRESS`. When aokd cannot attach a covered socket, `AOKD_ON_ERROR`
//! decides: `fail-closed` (default) fails closed **on the wire, not in the
//! system call**: the library puts its own random guard key ([`guard`]) on
//! the socket and the call proceeds, so nothing unsigned goes out or comes
//! in; a guarded listener is handed to aokd by a background thread as soon
//! as aokd answers ([`takeover`]); only a socket that cannot even get a
//! guard fails with `EACCES`. An accepted socket aokd cannot reconcile
//! becomes an `accept()` failure with `ECONNABORTED` (the socket is
//! closed). `open` lets the call go on without keys.
//!
//! Every interposer saves `errno` on entry and restores it before passing
//! through to the real function, is reentrant (the attach client reaches
//! aokd's Unix socket with the raw `connect` system call; were any call to
//! come back into the library while it talks to aokd, a thread-local flag
//! passes it straight through, and an `AF_UNIX` address is never covered
//! anyway), never lets a panic cross the C boundary,
//! and takes no lock a forked child could inherit held: the policy and the
//! real functions are resolved in the library's constructor, and the set of
//! attached listeners is a bitmap of atomics, the guarded ones an array of
//! atomic slots. Diagnostics go to stderr only (`AOKD_PRELOAD_DEBUG=1`;
//! guards and takeovers are always reported); the library never writes to
//! stdout.
//!
//! All `unsafe` code is in the four exported functions and [`sys`].

mod client;
mod guard;
mod listeners;
pub mod policy;
mod sys;
mod takeover;

use std::cell::Cell;
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use libc::{c_int, sockaddr, socklen_t};

use crate::policy::{OnError, Policy, PolicyError};

/// `errno` of a covered `connect()` or `listen()` that aokd could not
/// attach and that could not get the library's guard key either, under
/// `fail-closed`: "Permission denied", a local policy refusal
/// (what a local firewall or LSM denial looks like), not a remote one.
pub const DENIED_ERRNO: c_int = libc::EACCES;
/// `errno` of an `accept()` whose socket aokd could not reconcile, under
/// `fail-closed`: the program sees a connection aborted before it accepted
/// it, which every server already handles by accepting the next one.
pub const ABORTED_ERRNO: c_int = libc::ECONNABORTED;

/// The environment as read at load time.
enum Config {
    /// A valid policy.
    Ready(Policy),
    /// A malformed variable: every IPv4/IPv6 TCP `connect()` and `listen()`
    /// is treated as covered and unattachable, so `on_error` decides.
    Broken {
        error: PolicyError,
        on_error: OnError,
        debug: bool,
    },
}

impl Config {
    fn load() -> Config {
        match Policy::from_env() {
            Ok(policy) => {
                debug_log(
                    policy.debug,
                    format_args!(
                        "policy: socket {}, ports {:?}, peers {}, wait {}, on_error {:?}",
                        policy.socket.display(),
                        policy.ports,
                        match &policy.peers {
                            None => "any".to_owned(),
                            Some(p) => p.iter().map(|p| format!("{p} ")).collect(),
                        },
                        match policy.wait {
                            None => "aokd's".to_owned(),
                            Some(w) => format!("{} ms", w.as_millis()),
                        },
                        policy.on_error,
                    ),
                );
                Config::Ready(policy)
            }
            Err(error) => {
                // Only AOKD_ON_ERROR=open, itself well-formed, opens.
                let on_error = match std::env::var(policy::ENV_ON_ERROR).as_deref() {
                    Ok("open") => OnError::Open,
                    _ => OnError::FailClosed,
                };
                let debug = policy::debug_enabled(std::env::var(policy::ENV_DEBUG).ok().as_deref());
                let then = match on_error {
                    OnError::FailClosed => "every TCP connect() and listen() fails with EACCES",
                    OnError::Open => "every TCP socket goes on without keys",
                };
                log(format_args!("invalid environment: {error}; {then}"));
                Config::Broken {
                    error,
                    on_error,
                    debug,
                }
            }
        }
    }

    fn debug(&self) -> bool {
        match self {
            Config::Ready(policy) => policy.debug,
            Config::Broken { debug, .. } => *debug,
        }
    }
}

static CONFIG: OnceLock<Config> = OnceLock::new();

fn config() -> &'static Config {
    CONFIG.get_or_init(Config::load)
}

/// Runs when the library is loaded, before the program's `main` (and so
/// before it can fork or start threads): reads the policy and finds the
/// real functions, so that no interposer has to initialize anything.
extern "C" fn constructor() {
    let _ = catch_unwind(|| {
        sys::resolve_all();
        config();
    });
}

#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn() = constructor;

/// Writes one diagnostic line to stderr.
fn log(args: fmt::Arguments<'_>) {
    let line = format!("aokd-preload[{}]: {args}\n", std::process::id());
    sys::write_stderr(line.as_bytes());
}

fn debug_log(enabled: bool, args: fmt::Arguments<'_>) {
    if enabled {
        log(args);
    }
}

thread_local! {
    /// Set while this thread is inside the library (talking to aokd).
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Proof that this thread was not already inside the library; clears the
/// flag when dropped.
struct Reentry;

impl Reentry {
    /// `None` when the thread is already inside (or its thread-locals are
    /// gone): the call must pass straight through.
    fn enter() -> Option<Reentry> {
        INSIDE
            .try_with(|inside| (!inside.replace(true)).then_some(Reentry))
            .ok()
            .flatten()
    }
}

impl Drop for Reentry {
    fn drop(&mut self) {
        let _ = INSIDE.try_with(|inside| inside.set(false));
    }
}

/// What an interposer does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Pass through (connect, listen) or return the socket (accept).
    Proceed,
    /// Return -1 with this errno.
    Fail(c_int),
}

/// The verdict for a covered socket aokd could not attach.
fn unattached(on_error: OnError, errno: c_int) -> Verdict {
    match on_error {
        OnError::FailClosed => Verdict::Fail(errno),
        OnError::Open => Verdict::Proceed,
    }
}

/// Runs `decide`, turning a panic into the `on_error` verdict.
fn guarded(errno: c_int, decide: impl FnOnce() -> Verdict) -> Verdict {
    catch_unwind(AssertUnwindSafe(decide)).unwrap_or_else(|_| unattached(current_on_error(), errno))
}

/// `on_error` of the loaded policy; `fail-closed` before it is loaded.
fn current_on_error() -> OnError {
    match CONFIG.get() {
        Some(Config::Ready(policy)) => policy.on_error,
        Some(Config::Broken { on_error, .. }) => *on_error,
        None => OnError::FailClosed,
    }
}

/// Whether the TCP socket `fd` has already connected, is connecting or
/// listens: a repeated `connect()` or `listen()` is not attached again.
fn already_started(socket: BorrowedFd<'_>) -> bool {
    sys::tcp_state(socket).is_ok_and(|state| state != sys::TcpState::Close)
}

/// The policy; or, when the environment is invalid, the verdict for `fd`
/// (untouched unless it is a TCP socket), logged as `what`.
fn ready_policy(fd: c_int, what: fmt::Arguments<'_>) -> Result<&'static Policy, Verdict> {
    match config() {
        Config::Ready(policy) => Ok(policy),
        Config::Broken {
            error,
            on_error,
            debug,
        } => {
            if !sys::is_inet_tcp(fd) {
                return Err(Verdict::Proceed);
            }
            debug_log(
                *debug,
                format_args!("{what}: invalid environment ({error})"),
            );
            Err(unattached(*on_error, DENIED_ERRNO))
        }
    }
}

fn decide_connect(fd: c_int, remote: Option<SocketAddr>) -> Verdict {
    let Some(_inside) = Reentry::enter() else {
        return Verdict::Proceed;
    };
    let Some(remote) = remote else {
        return Verdict::Proceed;
    };
    let policy = match ready_policy(fd, format_args!("connect fd {fd} to {remote}")) {
        Ok(policy) => policy,
        Err(verdict) => return verdict,
    };
    if !policy.covers_connect(remote) {
        return Verdict::Proceed;
    }
    // After a fork(): the child's own takeover thread.
    takeover::ensure_thread();
    let decided = sys::with_inet_tcp(fd, |socket| {
        if already_started(socket) {
            return Verdict::Proceed;
        }
        // The peer as aokd knows it: an IPv4-mapped address is IPv4.
        let peer = SocketAddr::new(remote.ip().to_canonical(), remote.port());
        match client::connect(&policy.socket, socket, peer, policy.wait) {
            Ok(attached) => {
                debug_log(
                    policy.debug,
                    format_args!("connect fd {fd} to {peer}: {attached}"),
                );
                Verdict::Proceed
            }
            Err(failure) => {
                if policy.on_error == OnError::Open {
                    debug_log(
                        policy.debug,
                        format_args!(
                            "connect fd {fd} to {peer}: {failure}; proceeding without keys"
                        ),
                    );
                    return Verdict::Proceed;
                }
                // Fail closed on the wire: the SYN goes out signed with a
                // key nobody has, the peer drops it, and the program's
                // connect-retry timer tries again (with aokd, by then).
                match guard::install(socket, Some(peer.ip()), policy.guard) {
                    Ok(g) => {
                        log(format_args!(
                            "connect fd {fd} to {peer}: {failure}; the library's guard key ({g}) \
                             is on the socket, so the attempt cannot succeed unsigned"
                        ));
                        Verdict::Proceed
                    }
                    Err(e) => {
                        log(format_args!(
                            "connect fd {fd} to {peer}: {failure}; {e}; failing with EACCES"
                        ));
                        Verdict::Fail(DENIED_ERRNO)
                    }
                }
            }
        }
    });
    decided.unwrap_or(Verdict::Proceed)
}

/// Under `fail-closed`, what a covered `listen()` aokd could not attach
/// does: the library's guard key goes on the socket (every SYN needs a
/// signature no peer can make), the socket is recorded for the background
/// takeover ([`takeover`]), and `listen()` goes on. Only when no guard can
/// be installed does `listen()` fail with `EACCES`.
fn guard_listener(policy: &Policy, fd: c_int, socket: BorrowedFd<'_>, why: &str) -> Verdict {
    let g = match guard::install(socket, None, policy.guard) {
        Ok(g) => g,
        Err(e) => {
            log(format_args!(
                "listen fd {fd}: {why}; {e}; failing with EACCES"
            ));
            return Verdict::Fail(DENIED_ERRNO);
        }
    };
    match takeover::add(fd, socket, g) {
        Ok(()) => {
            log(format_args!(
                "listen fd {fd}: {why}; the library's guard key ({g}) is on the socket \
                 until aokd takes it over (retried every {} ms in the background)",
                takeover::RETRY_INTERVAL.as_millis()
            ));
            Verdict::Proceed
        }
        Err(e) => {
            let _ = guard::remove_listener_guard(socket, g);
            log(format_args!(
                "listen fd {fd}: {why}; {e}; failing with EACCES"
            ));
            Verdict::Fail(DENIED_ERRNO)
        }
    }
}

fn decide_listen(fd: c_int) -> Verdict {
    let Some(_inside) = Reentry::enter() else {
        return Verdict::Proceed;
    };
    let policy = match ready_policy(fd, format_args!("listen fd {fd}")) {
        Ok(policy) => policy,
        Err(verdict) => return verdict,
    };
    let decided = sys::with_inet_tcp(fd, |socket| {
        let port = sys::getsockname(socket)
            .ok()
            .flatten()
            .map(|local| local.port());
        if !port.is_some_and(|port| policy.covers_port(port)) {
            listeners::remove(fd);
            return Verdict::Proceed;
        }
        if already_started(socket) {
            return Verdict::Proceed;
        }
        takeover::ensure_thread();
        let result = client::listen(&policy.socket, socket);
        if let (Err(failure), OnError::FailClosed) = (&result, policy.on_error) {
            listeners::remove(fd);
            return guard_listener(policy, fd, socket, &failure.to_string());
        }
        // Attached, or `open`: aokd may be back by the time a peer
        // connects, so accepted sockets are offered to it either way.
        if !listeners::insert(fd) {
            debug_log(
                policy.debug,
                format_args!("listen fd {fd}: descriptor too large to track accepted sockets"),
            );
        }
        match result {
            Ok(attached) => debug_log(
                policy.debug,
                format_args!("listen fd {fd} on port {port:?}: {attached}"),
            ),
            Err(failure) => debug_log(
                policy.debug,
                format_args!("listen fd {fd} on port {port:?}: {failure}; proceeding without keys"),
            ),
        }
        Verdict::Proceed
    });
    decided.unwrap_or_else(|| {
        listeners::remove(fd);
        Verdict::Proceed
    })
}

fn decide_accepted(listener: c_int, fd: c_int) -> Verdict {
    let Some(_inside) = Reentry::enter() else {
        return Verdict::Proceed;
    };
    if !listeners::contains(listener) {
        return Verdict::Proceed;
    }
    let Config::Ready(policy) = config() else {
        return Verdict::Proceed;
    };
    let decided = sys::with_inet_tcp(fd, |socket| {
        let port = sys::getsockname(socket)
            .ok()
            .flatten()
            .map(|local| local.port());
        if !port.is_some_and(|port| policy.covers_port(port)) {
            // The listener's number now belongs to another socket.
            listeners::remove(listener);
            return Verdict::Proceed;
        }
        match client::accepted(&policy.socket, socket) {
            Ok(attached) => {
                debug_log(
                    policy.debug,
                    format_args!("accepted fd {fd} on listener fd {listener}: {attached}"),
                );
                Verdict::Proceed
            }
            Err(failure @ client::Failure::Unreachable(_)) => {
                // aokd is away: the connection completed its handshake
                // under the keys aokd put on the listener (the kernel
                // copied them), and with no aokd there is no rollover it
                // could have missed; closing it would only break BGP.
                debug_log(
                    policy.debug,
                    format_args!(
                        "accepted fd {fd} on listener fd {listener}: {failure}; \
                         keeping the listener's keys"
                    ),
                );
                Verdict::Proceed
            }
            Err(failure) => {
                let verdict = unattached(policy.on_error, ABORTED_ERRNO);
                debug_log(
                    policy.debug,
                    format_args!(
                        "accepted fd {fd} on listener fd {listener}: {failure}; {verdict:?}"
                    ),
                );
                verdict
            }
        }
    });
    decided.unwrap_or(Verdict::Proceed)
}

/// Hands a socket `accept` just returned to aokd when its listener is
/// attached; returns what the program gets.
fn after_accept(listener: c_int, accepted: c_int) -> c_int {
    if accepted < 0 {
        return accepted;
    }
    let saved = sys::errno();
    match guarded(ABORTED_ERRNO, || decide_accepted(listener, accepted)) {
        Verdict::Proceed => {
            sys::set_errno(saved);
            accepted
        }
        Verdict::Fail(errno) => {
            sys::close_accepted(accepted);
            if config().debug() {
                log(format_args!(
                    "accept on fd {listener}: closed the unattached socket"
                ));
            }
            sys::set_errno(errno);
            -1
        }
    }
}

/// `connect(2)`, attaching covered TCP sockets to aokd first.
///
/// # Safety
/// As for `connect(2)`: `addr` points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let saved = sys::errno();
    // SAFETY: connect(2) requires `addr` to point to `len` readable bytes;
    // read_sockaddr reads no more and accepts null.
    let remote = unsafe { sys::read_sockaddr(addr, len) };
    match guarded(DENIED_ERRNO, || decide_connect(fd, remote)) {
        Verdict::Proceed => {
            sys::set_errno(saved);
            // SAFETY: the program's own arguments, unchanged.
            unsafe { sys::real_connect(fd, addr, len) }
        }
        Verdict::Fail(errno) => {
            sys::set_errno(errno);
            -1
        }
    }
}

/// `listen(2)`, attaching covered TCP sockets to aokd first.
///
/// # Safety
/// As for `listen(2)`.
#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    let saved = sys::errno();
    match guarded(DENIED_ERRNO, || decide_listen(fd)) {
        Verdict::Proceed => {
            sys::set_errno(saved);
            // SAFETY: the program's own arguments, unchanged.
            unsafe { sys::real_listen(fd, backlog) }
        }
        Verdict::Fail(errno) => {
            sys::set_errno(errno);
            -1
        }
    }
}

/// `accept(2)`, handing sockets accepted on attached listeners to aokd
/// before returning them.
///
/// # Safety
/// As for `accept(2)`: `addr` and `len` are null or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: the program's own arguments, unchanged.
    let accepted = unsafe { sys::real_accept(fd, addr, len) };
    after_accept(fd, accepted)
}

/// `accept4(2)`, handing sockets accepted on attached listeners to aokd
/// before returning them.
///
/// # Safety
/// As for `accept4(2)`: `addr` and `len` are null or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    // SAFETY: the program's own arguments, unchanged.
    let accepted = unsafe { sys::real_accept4(fd, addr, len, flags) };
    after_accept(fd, accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reentry_is_refused_until_dropped() {
        let outer = Reentry::enter().expect("first entry");
        assert!(Reentry::enter().is_none(), "nested entry refused");
        drop(outer);
        assert!(Reentry::enter().is_some(), "free again after drop");
    }

    #[test]
    fn on_error_verdicts() {
        assert_eq!(
            unattached(OnError::FailClosed, DENIED_ERRNO),
            Verdict::Fail(libc::EACCES)
        );
        assert_eq!(
            unattached(OnError::FailClosed, ABORTED_ERRNO),
            Verdict::Fail(libc::ECONNABORTED)
        );
        assert_eq!(unattached(OnError::Open, DENIED_ERRNO), Verdict::Proceed);
    }

    #[test]
    fn a_panic_fails_closed() {
        let verdict = guarded(DENIED_ERRNO, || panic!("test panic"));
        assert_eq!(verdict, unattached(current_on_error(), DENIED_ERRNO));
    }

    #[test]
    fn uncovered_and_foreign_addresses_pass_through() {
        assert_eq!(decide_connect(-1, None), Verdict::Proceed);
        let bgp = "127.0.0.1:179".parse().ok();
        assert_eq!(decide_connect(-1, bgp), Verdict::Proceed, "not a socket");
        assert_eq!(decide_listen(-1), Verdict::Proceed);
        assert_eq!(decide_accepted(-1, -1), Verdict::Proceed);
    }
}
