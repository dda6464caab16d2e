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

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    slots: Arc<Semaphore>,
    max: usize,
    idle: Duration,
}

/// One admitted connection's slot, given back when dropped.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl ClientLimit {
    /// At most `max` connections, each closed after `idle` without a
    /// request.
    pub fn new(max: usize, idle: Duration) -> ClientLimit {
        ClientLimit {
            slots: Arc::new(Semaphore::new(max)),
            max,
            idle,
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

    /// What a client beyond the cap is told (`what`: "control").
    pub fn refusal(&self, what: &str) -> String {
        format!(
            "too many {what} connections ({} open, the most aokd serves at once); try again later",
            self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_given_back() {
        let l = ClientLimit::new(2, IDLE_TIMEOUT);
        let a = l.admit().expect("first");
        let _b = l.admit().expect("second");
        assert!(l.admit().is_none());
        assert_eq!(l.open(), 2);
        drop(a);
        assert!(l.admit().is_some());
        assert!(l
            .refusal("control")
            .contains("too many control connections (2 open"));
    }
}
