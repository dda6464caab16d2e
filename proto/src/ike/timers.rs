//! The timer queue: one deadline per peer (the earliest thing due for it
//! or for any of its IKE SAs and MKTs), in an ordered set, so that the
//! endpoint's next timeout is found in O(log n) and a timeout visits only
//! the peers that are due.

use std::collections::BTreeSet;
use std::time::Instant;

/// Deadlines by peer index.
#[derive(Default)]
pub(super) struct TimerQueue {
    queue: BTreeSet<(Instant, usize)>,
    at: Vec<Option<Instant>>,
}

impl TimerQueue {
    /// A queue for `peers` peers, nothing scheduled.
    pub(super) fn new(peers: usize) -> TimerQueue {
        TimerQueue {
            queue: BTreeSet::new(),
            at: vec![None; peers],
        }
    }

    /// Makes room for one more peer (index `peers`), nothing scheduled.
    pub(super) fn add_slot(&mut self) {
        self.at.push(None);
    }

    /// Sets (or clears) the peer's deadline.
    pub(super) fn set(&mut self, peer: usize, deadline: Option<Instant>) {
        let Some(slot) = self.at.get_mut(peer) else {
            return;
        };
        if *slot == deadline {
            return;
        }
        if let Some(old) = slot.take() {
            self.queue.remove(&(old, peer));
        }
        if let Some(t) = deadline {
            self.queue.insert((t, peer));
            *slot = Some(t);
        }
    }

    /// The earliest deadline.
    pub(super) fn next(&self) -> Option<Instant> {
        self.queue.first().map(|(t, _)| *t)
    }

    /// The peers whose deadline is at or before `now`, earliest first.
    pub(super) fn due(&self, now: Instant) -> Vec<usize> {
        self.queue
            .range(..=(now, usize::MAX))
            .map(|(_, p)| *p)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn earliest_first_and_moves() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new(3);
        q.set(0, Some(t0 + Duration::from_secs(5)));
        q.set(1, Some(t0 + Duration::from_secs(1)));
        q.set(2, Some(t0 + Duration::from_secs(3)));
        assert_eq!(q.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(q.due(t0 + Duration::from_secs(3)), vec![1, 2]);
        q.set(1, None);
        q.set(0, Some(t0));
        assert_eq!(q.next(), Some(t0));
        assert_eq!(q.due(t0 + Duration::from_secs(4)), vec![0, 2]);
        q.set(7, Some(t0)); // unknown peer: ignored
        assert_eq!(q.due(t0 + Duration::from_secs(10)), vec![0, 2]);
    }
}
