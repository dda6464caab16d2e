//! Reassembly of messages sent as Encrypted Fragment payloads (SKF, RFC
//! 7383 2.6), with limits on what it may hold.
//!
//! An IKE SA keeps at most one message being reassembled per direction:
//! the peer's request (the one with the message ID the window expects) and
//! the response to our outstanding request. Only fragments that the SA's
//! keys authenticated are stored (the caller opens each one first, [`super::sk`]),
//! so a forged or corrupted fragment changes nothing. Limits: at most
//! [`MAX_FRAGMENTS`] fragments and [`MAX_REASSEMBLED`] octets of plaintext
//! per message, and a message not completed within the timeout the caller
//! passes (the peer's whole retransmission schedule) is forgotten when its
//! next fragment comes. A fragment with a larger Total Fragments than the
//! stored ones starts the message anew (the sender fragmented it again,
//! smaller); one with a smaller total is of an older fragmentation and is
//! dropped; a duplicate is dropped (RFC 7383 2.6).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::event::DropReason;
use crate::numbers::PayloadType;
use crate::wire::FragmentNumbers;

/// The most fragments one message may have (Total Fragments): 32 pieces
/// of the 1,171 octets a 1,280-octet IPv6 datagram carries are 37 KB,
/// more than any message aokd exchanges.
pub const MAX_FRAGMENTS: u16 = 32;

/// The most octets of plaintext one reassembled message may have.
pub const MAX_REASSEMBLED: usize = 64 * 1024;

/// Why a fragment was not stored: what the endpoint counts and says.
#[derive(Debug)]
pub(super) struct Refused {
    pub(super) reason: DropReason,
    pub(super) detail: String,
}

impl Refused {
    fn new(reason: DropReason, detail: String) -> Refused {
        Refused { reason, detail }
    }
}

/// What a stored fragment gave.
#[derive(Debug)]
pub(super) enum Added {
    /// More fragments are needed.
    Incomplete,
    /// The whole inner payload chain and the type of its first payload.
    Complete(PayloadType, Vec<u8>),
}

/// One message being reassembled.
struct Partial {
    message_id: u32,
    total: u16,
    /// The first inner payload's type, from fragment 1.
    first_inner: PayloadType,
    parts: BTreeMap<u16, Vec<u8>>,
    octets: usize,
    started: Instant,
}

/// An IKE SA's messages being reassembled: the peer's request and the
/// response to ours.
#[derive(Default)]
pub(super) struct Reassembler {
    request: Option<Partial>,
    response: Option<Partial>,
}

/// The checks a fragment must pass before it is decrypted.
pub(super) fn precheck(numbers: FragmentNumbers, message_id: u32) -> Result<(), Refused> {
    if numbers.total > MAX_FRAGMENTS {
        return Err(Refused::new(
            DropReason::Malformed,
            format!(
                "fragment {}/{} of message {message_id}: more than {MAX_FRAGMENTS} fragments",
                numbers.number, numbers.total
            ),
        ));
    }
    Ok(())
}

impl Reassembler {
    /// Stores an authenticated fragment (`piece`, its decrypted plaintext
    /// without padding; `first_inner`, its Next Payload) of message
    /// `message_id`, a response when `response`. `timeout`: how long an
    /// incomplete message is kept.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add(
        &mut self,
        response: bool,
        message_id: u32,
        numbers: FragmentNumbers,
        first_inner: PayloadType,
        piece: Vec<u8>,
        now: Instant,
        timeout: Duration,
    ) -> Result<Added, Refused> {
        let FragmentNumbers { number, total } = numbers;
        let what = format!("fragment {number}/{total} of message {message_id}");
        precheck(numbers, message_id)?;
        let slot = if response {
            &mut self.response
        } else {
            &mut self.request
        };
        let stale = slot.as_ref().is_some_and(|p| {
            p.message_id != message_id
                || now.saturating_duration_since(p.started) > timeout
                || total > p.total
        });
        if stale {
            *slot = None;
        }
        let partial = slot.get_or_insert_with(|| Partial {
            message_id,
            total,
            first_inner: PayloadType::NONE,
            parts: BTreeMap::new(),
            octets: 0,
            started: now,
        });
        if total < partial.total {
            return Err(Refused::new(
                DropReason::Unexpected,
                format!(
                    "{what}: of an older fragmentation (the stored fragments have Total Fragments {})",
                    partial.total
                ),
            ));
        }
        if partial.parts.contains_key(&number) {
            return Err(Refused::new(
                DropReason::Unexpected,
                format!("{what}: duplicate"),
            ));
        }
        let octets = partial.octets.saturating_add(piece.len());
        if octets > MAX_REASSEMBLED {
            *slot = None;
            return Err(Refused::new(
                DropReason::Malformed,
                format!("{what}: the message would exceed {MAX_REASSEMBLED} octets; discarded"),
            ));
        }
        partial.octets = octets;
        if number == 1 {
            partial.first_inner = first_inner;
        }
        partial.parts.insert(number, piece);
        if partial.parts.len() < usize::from(partial.total) {
            return Ok(Added::Incomplete);
        }
        let Some(done) = slot.take() else {
            return Ok(Added::Incomplete);
        };
        let mut chain = Vec::with_capacity(done.octets);
        for piece in done.parts.into_values() {
            chain.extend_from_slice(&piece);
        }
        Ok(Added::Complete(done.first_inner, chain))
    }

    /// Whether nothing is held (for tests).
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.request.is_none() && self.response.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    fn n(number: u16, total: u16) -> FragmentNumbers {
        FragmentNumbers { number, total }
    }

    #[test]
    fn reassembles_in_any_order_and_refuses_duplicates() {
        let t0 = Instant::now();
        let mut r = Reassembler::default();
        let add = |r: &mut Reassembler, f, ty, piece: &[u8]| {
            r.add(false, 1, f, ty, piece.to_vec(), t0, T)
        };
        assert!(matches!(
            add(&mut r, n(3, 3), PayloadType::NONE, b"ef"),
            Ok(Added::Incomplete)
        ));
        assert!(matches!(
            add(&mut r, n(1, 3), PayloadType::IDI, b"ab"),
            Ok(Added::Incomplete)
        ));
        let dup = add(&mut r, n(1, 3), PayloadType::IDI, b"ab").unwrap_err();
        assert_eq!(dup.reason, DropReason::Unexpected);
        assert!(dup.detail.contains("duplicate"), "{}", dup.detail);
        match add(&mut r, n(2, 3), PayloadType::NONE, b"cd") {
            Ok(Added::Complete(ty, chain)) => {
                assert_eq!(ty, PayloadType::IDI);
                assert_eq!(chain, b"abcdef");
            }
            _ => panic!("not complete"),
        }
        assert!(r.is_empty());
    }

    #[test]
    fn total_fragments_changes_limits_and_timeout() {
        let t0 = Instant::now();
        let mut r = Reassembler::default();
        r.add(true, 4, n(1, 2), PayloadType::SA, vec![1], t0, T)
            .unwrap();
        // A larger total starts anew; a smaller one is refused.
        r.add(true, 4, n(1, 3), PayloadType::SA, vec![1], t0, T)
            .unwrap();
        let old = r
            .add(true, 4, n(2, 2), PayloadType::NONE, vec![2], t0, T)
            .unwrap_err();
        assert!(old.detail.contains("older fragmentation"), "{}", old.detail);
        r.add(true, 4, n(2, 3), PayloadType::NONE, vec![2], t0, T)
            .unwrap();
        // After the timeout the stored fragments are forgotten.
        let late = t0 + T + Duration::from_secs(1);
        assert!(matches!(
            r.add(true, 4, n(3, 3), PayloadType::NONE, vec![3], late, T),
            Ok(Added::Incomplete)
        ));
        // Another message ID replaces the partial message.
        assert!(matches!(
            r.add(true, 5, n(1, 1), PayloadType::SA, vec![9], late, T),
            Ok(Added::Complete(PayloadType::SA, c)) if c == [9]
        ));
        let many = r
            .add(false, 1, n(1, 33), PayloadType::SA, vec![], t0, T)
            .unwrap_err();
        assert_eq!(many.reason, DropReason::Malformed);
        let big = vec![0; MAX_REASSEMBLED / 2 + 1];
        r.add(false, 1, n(1, 3), PayloadType::SA, big.clone(), t0, T)
            .unwrap();
        let e = r
            .add(false, 1, n(2, 3), PayloadType::NONE, big, t0, T)
            .unwrap_err();
        assert!(e.detail.contains("exceed"), "{}", e.detail);
        assert!(r.is_empty());
    }
}
