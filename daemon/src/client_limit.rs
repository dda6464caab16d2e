//! Limits on the clients of aokd's Unix sockets (control and attach): how
//! many may be connected at once, and how long a connection may sit idle.
//!
//! Each connection costs a descriptor and its buffers. Without a cap, a
//! client that opens connections and never sends (about 20,000 were enough)
//! exhausts aokd's descriptors, after which it can neither accept `aoctl`
//! nor take sockets from routing daemons, and the buffers stay allocated.
//! So a server admits at most its cap ([`ClientLimit::admit`]); a client
//! beyond it is answered at once with an error naming the cap and
//! disconnected, and every connection that waits longer than its idle
//! timeout for a request (or for the rest of one) is closed. A connection
//! whose request is being answered (an attach `connect` waiting for a
//! negotiation) is not idle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

/// Control connections open at once (`aoctl` opens one per command).
pub const MAX_CONTROL_CLIENTS: usize = 64;
/// Attach connections open at once (the preload library opens one per
/// socket call, and a `connect` may wait for a negotiation).
pub const MAX_ATTACH_CLIENTS: usize = 1024;
/// How long a connection may wait for (the rest of) a request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A cap on concurrent connections; cheap to clone.
#[derive(Debug, Clone)]
pub struct ClientLimit {
    /// The socket's name in messages ("control", "attach").
    what: &'static str,
    slots: Arc<Semaphore>,
    max: usize,
    idle: Duration,
    /// Clients refused so far.
    refused: Arc<AtomicU64>,
}

/// One admitted connection's slot, given back when dropped.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl ClientLimit {
    /// At most `max` connections to the `what` socket ("control"), each
    /// closed after `idle` without a request.
    pub fn new(what: &'static str, max: usize, idle: Duration) -> ClientLimit {
        ClientLimit {
            what,
            slots: Arc::new(Semaphore::new(max)),
            max,
            idle,
            refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A slot for a new connection, or `None` when `max` are open.
    pub fn admit(&self) -> Option<Slot> {
        Arc::clone(&self.slots).try_acquire_owned().ok().map(Slot)
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The idle timeout.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// What a client beyond the cap is told.
    pub fn refusal(&self) -> String {
        format!(
            "too many {} connections ({} open, the most aokd serves at once); try again later",
            self.what, self.max
        )
    }

    /// Answers a client beyond the cap with `answer` (its protocol's error
    /// carrying [`ClientLimit::refusal`]) as one JSON line, in one
    /// non-blocking write, before the caller drops the connection. Logs a
    /// warning for the first refusal and every 1,000th after it.
    pub fn refuse(&self, stream: &UnixStream, answer: &impl Serialize) {
        let n = self.refused.fetch_add(1, Ordering::Relaxed);
        if n % 1000 == 0 {
            warn!(
                max = self.max,
                refused = n + 1,
                "{} socket: too many connections; refusing new ones",
                self.what
            );
        }
        if let Ok(mut line) = serde_json::to_vec(answer) {
            line.push(b'\n');
            let _ = stream.try_write(&line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_given_back() {
        let l = ClientLimit::new("control", 2, IDLE_TIMEOUT);
        let a = l.admit().expect("first");
        let _b = l.admit().expect("second");
        assert!(l.admit().is_none());
        assert_eq!(l.open(), 2);
        drop(a);
        assert!(l.admit().is_some());
        assert!(l.refusal().contains("too many control connections (2 open"));
    }
}
