//! Sequence Number Extension tracking (RFC 5925 6.2), one tracker per
//! direction of a connection.
//!
//! The SNE is the high-order half of a 64-bit sequence number whose low half
//! is the TCP sequence number; it starts at 0 at the ISN and counts the
//! wraps of the 32-bit sequence number. RFC 5925 6.2 leaves reordering
//! around a wrap to the implementation; this tracker follows RFC 9187
//! (Sequence Number Extension for Windowed Protocols): it keeps the highest
//! 64-bit sequence number seen, and places each new 32-bit number at the
//! 64-bit value nearest to it (within 2^31). A segment sent just before a
//! wrap but seen after it therefore gets the old SNE, and one after the wrap
//! the new SNE, whatever the order they are seen in.

/// SNE state of one direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SneTracker {
    /// Highest 64-bit sequence number seen (SNE << 32 | seq).
    highest: u64,
}

impl SneTracker {
    /// Starts at the direction's ISN with SNE 0.
    pub fn new(isn: u32) -> SneTracker {
        SneTracker {
            highest: u64::from(isn),
        }
    }

    /// Starts at an arbitrary SNE (for a capture that begins mid-connection
    /// when the SNE is known by other means).
    pub fn with_sne(sne: u32, seq: u32) -> SneTracker {
        SneTracker {
            highest: (u64::from(sne) << 32) | u64::from(seq),
        }
    }

    /// The current SNE: that of the highest sequence number seen.
    pub fn sne(&self) -> u32 {
        (self.highest >> 32) as u32
    }

    /// The SNE a segment with sequence number `seq` was sent with, without
    /// recording it (RFC 9187 3).
    pub fn sne_for(&self, seq: u32) -> u32 {
        (self.extend(seq) >> 32) as u32
    }

    /// Records a segment's sequence number and returns the SNE to use in its
    /// MAC. The SNE is that of the segment's first sequence number (RFC 5925
    /// 6.2), even when its data runs across a wrap.
    pub fn observe(&mut self, seq: u32) -> u32 {
        let full = self.extend(seq);
        if full > self.highest {
            self.highest = full;
        }
        (full >> 32) as u32
    }

    /// The 64-bit value nearest to the highest seen whose low half is `seq`.
    fn extend(&self, seq: u32) -> u64 {
        let low = self.highest as u32;
        let delta = seq.wrapping_sub(low) as i32;
        let full = self.highest as i128 + i128::from(delta);
        // Before the ISN's SNE-0 window (only reachable by a segment from
        // before the ISN, which cannot be valid): clamp to SNE 0.
        if full < 0 {
            u64::from(seq)
        } else if full > u64::MAX as i128 {
            u64::MAX
        } else {
            full as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_zero_and_counts_wraps() {
        let mut t = SneTracker::new(0xffff_ff00);
        assert_eq!(t.observe(0xffff_ff00), 0);
        assert_eq!(t.observe(0xffff_ff80), 0);
        assert_eq!(t.observe(0x0000_0010), 1);
        assert_eq!(t.sne(), 1);
        assert_eq!(t.observe(0x8000_0000), 1);
        assert_eq!(t.observe(0xffff_0000), 1);
        assert_eq!(t.observe(0x0000_0100), 2);
    }

    #[test]
    fn reordering_around_a_wrap_keeps_the_old_sne() {
        let mut t = SneTracker::new(0xffff_0000);
        assert_eq!(t.observe(0x0000_0100), 1);
        // A retransmission or a late segment from before the wrap.
        assert_eq!(t.observe(0xffff_fff0), 0);
        assert_eq!(t.sne(), 1);
        assert_eq!(t.observe(0x0000_0200), 1);
    }

    #[test]
    fn old_segments_never_go_below_zero() {
        let mut t = SneTracker::new(10);
        assert_eq!(t.observe(5), 0);
        assert_eq!(t.observe(0xffff_fff0), 0);
        assert_eq!(t.sne(), 0);
    }

    #[test]
    fn long_transfer_counts_every_wrap() {
        let mut t = SneTracker::new(0x1234_5678);
        let mut seq = 0x1234_5678u32;
        let mut wraps = 0u32;
        for _ in 0..40_000 {
            let next = seq.wrapping_add(0x0004_0000);
            if next < seq {
                wraps += 1;
            }
            seq = next;
            assert_eq!(t.observe(seq), wraps);
        }
        assert!(wraps >= 2);
    }
}
