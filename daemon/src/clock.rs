//! Time as the event loop hands it down: the monotonic [`Instant`] read
//! once per wake-up, and [`WallClock`], which turns such instants into Unix
//! seconds (for the state file and `aoctl`) without reading the system
//! clock again.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Maps monotonic instants to wall-clock time, from one reading of both
/// clocks when the daemon started (rounded down to seconds where Unix
/// seconds are asked for).
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    base: Instant,
    base_wall: Duration,
    base_unix: u64,
}

impl WallClock {
    /// Reads both clocks now.
    pub fn now() -> WallClock {
        let base_wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        WallClock {
            base: Instant::now(),
            base_wall,
            base_unix: base_wall.as_secs(),
        }
    }

    /// When the clock was read: the daemon's start, in Unix seconds.
    pub fn started_at(&self) -> u64 {
        self.base_unix
    }

    fn since_epoch(&self, t: Instant) -> Duration {
        if t >= self.base {
            self.base_wall + (t - self.base)
        } else {
            self.base_wall.saturating_sub(self.base - t)
        }
    }

    /// `t` in Unix seconds, rounded down.
    pub fn unix(&self, t: Instant) -> u64 {
        self.since_epoch(t).as_secs()
    }

    /// `t` as wall-clock time.
    pub fn system_time(&self, t: Instant) -> SystemTime {
        UNIX_EPOCH + self.since_epoch(t)
    }
}
