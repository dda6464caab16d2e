//! The set of attached listeners: the descriptors on which `listen()` was
//! handed to aokd, whose accepted sockets are handed to aokd in turn (the
//! `accepted` role).
//!
//! A fixed bitmap of atomics indexed by descriptor number: no allocation,
//! no lock, so it is safe to use in a child after `fork()` (which inherits
//! the set along with the descriptors) and from any thread. Descriptors at
//! or above [`CAPACITY`] are never recorded; their accepted sockets are not
//! handed to aokd (the listener itself still got its keys).
//!
//! The library does not intercept `close()`, so a number can outlive its
//! listener; `listen()` on a socket that is not attached clears the bit, and
//! accept checks the accepted socket's local port against the policy.

use std::sync::atomic::{AtomicU64, Ordering};

/// Descriptors below this are tracked: 2^20, the usual hard `RLIMIT_NOFILE`
/// ceiling (`fs.nr_open`). The bitmap takes 128 KiB of zero-initialized
/// memory, which the kernel maps lazily.
pub const CAPACITY: usize = 1 << 20;

static BITS: [AtomicU64; CAPACITY / 64] = [const { AtomicU64::new(0) }; CAPACITY / 64];

fn slot(fd: i32) -> Option<(&'static AtomicU64, u64)> {
    let fd = usize::try_from(fd).ok()?;
    let word = BITS.get(fd / 64)?;
    Some((word, 1u64 << (fd % 64)))
}

/// Records `fd` as an attached listener; false if it is out of range.
pub fn insert(fd: i32) -> bool {
    match slot(fd) {
        Some((word, bit)) => {
            word.fetch_or(bit, Ordering::AcqRel);
            true
        }
        None => false,
    }
}

/// Forgets `fd`.
pub fn remove(fd: i32) {
    if let Some((word, bit)) = slot(fd) {
        word.fetch_and(!bit, Ordering::AcqRel);
    }
}

/// Whether `fd` is an attached listener.
pub fn contains(fd: i32) -> bool {
    slot(fd).is_some_and(|(word, bit)| word.load(Ordering::Acquire) & bit != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_contains_remove() {
        // Numbers no real descriptor of the test harness uses.
        for fd in [900_001, 900_063, 900_064, (CAPACITY - 1) as i32] {
            assert!(!contains(fd));
            assert!(insert(fd));
            assert!(contains(fd));
            assert!(!contains(fd + 1));
            remove(fd);
            assert!(!contains(fd));
        }
    }

    #[test]
    fn out_of_range() {
        for fd in [-1, i32::MIN, CAPACITY as i32, i32::MAX] {
            assert!(!insert(fd));
            assert!(!contains(fd));
            remove(fd);
        }
    }
}
