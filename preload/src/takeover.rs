//! Handing guarded listeners to aokd once it is back: the library's
//! background retry (docs/preload.md, "When aokd cannot be reached").
//!
//! A covered `listen()` that could not be attached gets the library's own
//! guard key ([`crate::guard`]) and goes on; its socket is recorded here.
//! One thread per process ("aokd-preload"), started with the first such
//! socket and ending when none is left, retries the `listen` attach of
//! each recorded socket every [`RETRY_INTERVAL`] (a refused one every
//! [`REFUSED_INTERVAL`]). When aokd answers, its keys are on the socket;
//! the thread then takes the library's guard off, records the socket as an
//! attached listener ([`crate::listeners`]: its accepted sockets go to aokd
//! too) and forgets it. The program's own calls never wait for this.
//!
//! The thread works on a duplicate of the descriptor whose `SO_COOKIE`
//! matches the recorded one, so a socket the program closed (and a number
//! it reused, as BIRD does when it reopens its listening socket) is
//! dropped, never confused with another; aokd is told the program's
//! descriptor number, which it checks (`pidfd_getfd`) and keeps.
//!
//! The set is a fixed array of atomic slots: no allocation and no lock in
//! the interposers, nothing a forked child inherits held. A child inherits
//! the slots but not the thread; its next covered call starts its own
//! ([`ensure_thread`] compares the thread's pid with the caller's).

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aokd_attach::SocketRole;

use crate::client::{self, Failure};
use crate::guard::{self, Guard};
use crate::{config, listeners, log, sys, Config, Reentry};

/// Guarded listeners tracked at once; a further one fails `listen()`
/// with `EACCES` as before (no routing daemon has this many).
pub const SLOTS: usize = 64;
/// How often an unreachable aokd is tried again: its attach socket
/// appears a few hundred milliseconds after it starts.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(200);
/// How often a socket aokd refused is offered again.
pub const REFUSED_INTERVAL: Duration = Duration::from_secs(5);

/// Slot states in `cookie`: free, being filled, else the socket's cookie.
const FREE: u64 = 0;
const FILLING: u64 = u64::MAX;

struct Slot {
    cookie: AtomicU64,
    fd: AtomicI32,
    guard: AtomicU32,
    /// Milliseconds since [`epoch`] before which the slot is not tried.
    not_before_ms: AtomicU64,
    /// Attempts so far (for debug lines: the first, then every 25th).
    attempts: AtomicU32,
}

static SLOT_ARRAY: [Slot; SLOTS] = [const {
    Slot {
        cookie: AtomicU64::new(FREE),
        fd: AtomicI32::new(-1),
        guard: AtomicU32::new(0),
        not_before_ms: AtomicU64::new(0),
        attempts: AtomicU32::new(0),
    }
}; SLOTS];

/// The pid of the process whose thread runs (0: none).
static THREAD_PID: AtomicI32 = AtomicI32::new(0);

/// A socket recorded for takeover.
#[derive(Debug, Clone, Copy)]
struct Entry {
    fd: i32,
    cookie: u64,
    guard: Guard,
}

fn read(slot: &Slot) -> Option<Entry> {
    let cookie = slot.cookie.load(Ordering::Acquire);
    if cookie == FREE || cookie == FILLING {
        return None;
    }
    Some(Entry {
        fd: slot.fd.load(Ordering::Acquire),
        cookie,
        guard: Guard::unpack(slot.guard.load(Ordering::Acquire))?,
    })
}

fn free(slot: &Slot) {
    slot.cookie.store(FREE, Ordering::Release);
}

/// Records the guarded socket `fd` for takeover and makes sure the thread
/// runs. Err: no free slot, or the socket has no cookie.
pub fn add(fd: i32, socket: BorrowedFd<'_>, guard: Guard) -> Result<(), String> {
    let cookie = aokd_sys::socket_cookie(socket)
        .map_err(|e| format!("cannot read the socket's cookie: {e}"))?;
    if cookie == FREE || cookie == FILLING {
        return Err("the socket has no usable cookie".into());
    }
    let slot = SLOT_ARRAY
        .iter()
        .find(|s| {
            s.cookie
                .compare_exchange(FREE, FILLING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
        .ok_or_else(|| format!("already {SLOTS} guarded listeners waiting for aokd"))?;
    slot.fd.store(fd, Ordering::Release);
    slot.guard.store(guard.pack(), Ordering::Release);
    slot.not_before_ms.store(0, Ordering::Release);
    slot.attempts.store(0, Ordering::Release);
    slot.cookie.store(cookie, Ordering::Release);
    ensure_thread();
    Ok(())
}

/// Whether any socket waits for takeover.
fn any_waiting() -> bool {
    SLOT_ARRAY
        .iter()
        .any(|s| s.cookie.load(Ordering::Acquire) != FREE)
}

/// Starts this process's retry thread if sockets wait and none runs here
/// (also after a `fork()`, which keeps the slots and loses the thread).
pub fn ensure_thread() {
    let me = sys::getpid();
    let current = THREAD_PID.load(Ordering::Acquire);
    if current == me || !any_waiting() {
        return;
    }
    if THREAD_PID
        .compare_exchange(current, me, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("aokd-preload".into())
        .stack_size(256 * 1024)
        .spawn(move || run(me));
    if let Err(e) = spawned {
        THREAD_PID.store(0, Ordering::Release);
        log(format_args!(
            "cannot start the takeover thread ({e}); retrying at the next covered call"
        ));
    }
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The thread: tries every waiting socket, sleeps, and ends when none is
/// left (handing over to a new thread if one was added meanwhile).
fn run(me: i32) {
    // Everything this thread does passes straight through the library.
    let _inside = Reentry::enter();
    let Config::Ready(policy) = config() else {
        THREAD_PID.store(0, Ordering::Release);
        return;
    };
    loop {
        std::thread::sleep(RETRY_INTERVAL);
        if sys::getpid() != me {
            return;
        }
        let mut waiting = false;
        for slot in &SLOT_ARRAY {
            let Some(entry) = read(slot) else { continue };
            waiting = true;
            if slot.not_before_ms.load(Ordering::Acquire) > now_ms() {
                continue;
            }
            let n = slot.attempts.fetch_add(1, Ordering::AcqRel);
            let verbose = policy.debug && n % 25 == 0;
            let retry = std::panic::catch_unwind(|| attempt(policy, entry, verbose))
                .unwrap_or(Attempt::Retry(REFUSED_INTERVAL));
            match retry {
                Attempt::Done => free(slot),
                Attempt::Retry(after) => {
                    let at = now_ms().saturating_add(u64::try_from(after.as_millis()).unwrap_or(0));
                    slot.not_before_ms.store(at, Ordering::Release);
                }
            }
        }
        if !waiting {
            if THREAD_PID
                .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return;
            }
            // A socket added after the scan: keep going if no other thread
            // took over.
            if !any_waiting()
                || THREAD_PID
                    .compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                return;
            }
        }
    }
}

enum Attempt {
    /// Taken over, or gone: forget the slot.
    Done,
    /// Try again after this long.
    Retry(Duration),
}

/// One attempt to hand `entry` to aokd; `verbose`: say so when aokd is
/// still unreachable (debug lines, not one every 200 ms).
fn attempt(policy: &crate::policy::Policy, entry: Entry, verbose: bool) -> Attempt {
    let Ok(dup) = sys::dup_cloexec(entry.fd) else {
        // Closed by the program.
        return Attempt::Done;
    };
    let socket = dup.as_fd();
    if aokd_sys::socket_cookie(socket).ok() != Some(entry.cookie) {
        // The number now names another socket: ours was closed.
        return Attempt::Done;
    }
    if !matches!(
        sys::tcp_state(socket),
        Ok(sys::TcpState::Listen | sys::TcpState::Close)
    ) {
        return Attempt::Done;
    }
    let mut request = aokd_attach::request(SocketRole::Listen, &socket);
    // aokd checks (pidfd_getfd) and keeps the program's number, not the
    // duplicate's.
    request.fd = entry.fd;
    match client::request_with_fd(&policy.socket, socket, &request, client::LISTEN_TIMEOUT) {
        Ok(attached) => {
            let removed = guard::remove_listener_guard(socket, entry.guard);
            listeners::insert(entry.fd);
            match removed {
                Ok(()) => log(format_args!(
                    "listen fd {}: aokd is back and took the socket over: {attached}; \
                     the library's guard key ({}) is removed",
                    entry.fd, entry.guard
                )),
                Err(e) => log(format_args!(
                    "listen fd {}: aokd is back and took the socket over: {attached}; \
                     removing the library's guard key ({}) failed: {e}",
                    entry.fd, entry.guard
                )),
            }
            Attempt::Done
        }
        Err(Failure::Unreachable(why)) => {
            crate::debug_log(
                verbose,
                format_args!("listen fd {}: still no aokd ({why})", entry.fd),
            );
            Attempt::Retry(Duration::ZERO)
        }
        Err(failure @ Failure::Refused(_)) => {
            log(format_args!(
                "listen fd {}: {failure}; the guard key stays, next try in {} s",
                entry.fd,
                REFUSED_INTERVAL.as_secs()
            ));
            Attempt::Retry(REFUSED_INTERVAL)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::Mechanism;

    #[test]
    fn slots_fill_and_free() {
        let g = Guard {
            mechanism: Mechanism::TcpMd5,
            ipv6: false,
        };
        let slot = &SLOT_ARRAY[SLOTS - 1];
        assert!(read(slot).is_none());
        slot.cookie.store(FILLING, Ordering::Release);
        assert!(read(slot).is_none(), "a slot being filled is skipped");
        slot.fd.store(900_123, Ordering::Release);
        slot.guard.store(g.pack(), Ordering::Release);
        slot.cookie.store(42, Ordering::Release);
        let e = read(slot).expect("entry");
        assert_eq!((e.fd, e.cookie, e.guard), (900_123, 42, g));
        // A number that is not open: the attempt forgets it.
        assert!(matches!(
            attempt(
                &crate::policy::Policy::from_lookup(|_| None).expect("defaults"),
                e,
                false
            ),
            Attempt::Done
        ));
        free(slot);
        assert!(read(slot).is_none());
    }
}
