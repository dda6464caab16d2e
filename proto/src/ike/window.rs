//! The request window of an IKE SA (RFC 7296 2.1-2.3), the one place that
//! knows message IDs: the ID of our next request and of the peer's next
//! one, window size 1 (one request of ours outstanding, later ones queued),
//! retransmission of the outstanding request on the configured schedule,
//! and the stored last response, replayed when the peer retransmits its
//! request. Exchanges hand it payloads and get bytes back
//! ([`super::sa::IkeSa::request`], [`super::sa::IkeSa::response`]); none of
//! them sees a message ID. A message is stored as the datagrams it was
//! sent in (several when it was fragmented, RFC 7383), all of which a
//! retransmission or replay sends again.

use std::collections::VecDeque;
use std::time::Instant;

use super::config::RetransmitConfig;
use super::stored_response::StoredResponse;
use crate::numbers::ExchangeType;
use crate::wire::Payload;

/// The datagrams of one message: one, or its SKF fragments in order.
pub(super) type Datagrams = Vec<Vec<u8>>;

/// What an outstanding request of ours is for: the exchange that handles
/// its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PendingKind {
    Init,
    Auth,
    Informational,
    DeleteIke,
    CreateChild,
    /// CREATE_CHILD_SA rekeying the IKE SA (RFC 7296 2.18).
    RekeyIke,
    /// An empty INFORMATIONAL (RFC 7296 1.4).
    Liveness,
}

/// Our outstanding request.
pub(super) struct Pending {
    message_id: u32,
    bytes: Datagrams,
    sent: u32,
    deadline: Instant,
    pub(super) kind: PendingKind,
    /// An INFORMATIONAL's payloads, sent again on the successor if the IKE
    /// SA is rekeyed and deleted before the answer (Delete payloads of
    /// MKTs must still reach the peer).
    pub(super) requeue: Option<(ExchangeType, Vec<Payload>)>,
}

/// A request waiting for the window.
pub(super) type Queued = (ExchangeType, Vec<Payload>, PendingKind);

/// What the retransmission timer asks for.
pub(super) enum Retransmit {
    /// Nothing outstanding, or not due yet.
    NotDue,
    /// Send these datagrams again.
    Send(Datagrams),
    /// The schedule is exhausted: the peer is considered dead (2.4).
    GiveUp,
}

/// Message IDs, the outstanding request, the queue and the stored response.
pub(super) struct Window {
    next_request: u32,
    next_expected: u32,
    /// Boxed: an established SA is idle nearly always, and the 88 octets
    /// inline would be in each of a route server's thousands of SAs.
    pending: Option<Box<Pending>>,
    queued: VecDeque<Queued>,
    last_response: Option<(u32, StoredResponse)>,
}

impl Window {
    /// A window whose first request of the peer will carry `expected`: 0 on
    /// a new or rekeyed SA, 1 on a responder's SA after IKE_SA_INIT.
    pub(super) fn new(expected: u32) -> Window {
        Window {
            next_request: 0,
            next_expected: expected,
            pending: None,
            queued: VecDeque::new(),
            last_response: None,
        }
    }

    // Our requests.

    /// The message ID of IKE_SA_INIT (sent again with a cookie or another
    /// group, always 0); the next request is 1.
    pub(super) fn init_id(&mut self) -> u32 {
        self.next_request = 1;
        0
    }

    /// Takes the message ID of our next request.
    pub(super) fn next_id(&mut self) -> u32 {
        let id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1);
        id
    }

    /// Records `bytes` (request `message_id`) as outstanding, sent once now.
    pub(super) fn sent(
        &mut self,
        message_id: u32,
        bytes: Datagrams,
        kind: PendingKind,
        now: Instant,
        schedule: &RetransmitConfig,
    ) {
        self.pending = Some(Box::new(Pending {
            message_id,
            bytes,
            sent: 1,
            deadline: now + schedule.timeout_after(1),
            kind,
            requeue: None,
        }));
    }

    /// A request of ours is outstanding.
    pub(super) fn busy(&self) -> bool {
        self.pending.is_some()
    }

    /// Nothing outstanding and nothing queued.
    pub(super) fn idle(&self) -> bool {
        self.pending.is_none() && self.queued.is_empty()
    }

    /// What the outstanding request is for.
    pub(super) fn pending_kind(&self) -> Option<PendingKind> {
        self.pending.as_ref().map(|p| p.kind)
    }

    /// The outstanding request, to attach what must be sent again elsewhere.
    pub(super) fn pending_mut(&mut self) -> Option<&mut Pending> {
        self.pending.as_deref_mut()
    }

    /// When the outstanding request is retransmitted (or given up).
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.deadline)
    }

    /// Whether a response with `message_id` answers our outstanding request.
    pub(super) fn answers_pending(&self, message_id: u32) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|p| p.message_id == message_id)
    }

    /// Ends the outstanding request (answered, or abandoned).
    pub(super) fn complete(&mut self) -> Option<Pending> {
        self.pending.take().map(|p| *p)
    }

    /// The retransmission timer at `now`.
    pub(super) fn retransmit(&mut self, now: Instant, schedule: &RetransmitConfig) -> Retransmit {
        let Some(p) = self.pending.as_mut() else {
            return Retransmit::NotDue;
        };
        if p.deadline > now {
            return Retransmit::NotDue;
        }
        if p.sent >= schedule.transmissions {
            return Retransmit::GiveUp;
        }
        p.sent += 1;
        p.deadline = now + schedule.timeout_after(p.sent);
        Retransmit::Send(p.bytes.clone())
    }

    /// Queues a request behind the outstanding one.
    pub(super) fn queue(&mut self, request: Queued) {
        self.queued.push_back(request);
    }

    /// The next queued request, when the window is free.
    pub(super) fn next_queued(&mut self) -> Option<Queued> {
        if self.pending.is_some() {
            return None;
        }
        self.queued.pop_front()
    }

    /// Every queued request, to move them to another SA.
    pub(super) fn take_queue(&mut self) -> VecDeque<Queued> {
        std::mem::take(&mut self.queued)
    }

    /// Appends requests moved from another SA.
    pub(super) fn extend_queue(&mut self, requests: impl IntoIterator<Item = Queued>) {
        self.queued.extend(requests);
    }

    // The peer's requests.

    /// The stored response to the peer's request `message_id`, when that
    /// request is a retransmission of the last one answered.
    pub(super) fn replay(&self, message_id: u32) -> Option<&StoredResponse> {
        match &self.last_response {
            Some((id, stored)) if *id == message_id => Some(stored),
            _ => None,
        }
    }

    /// The message ID the peer's next request must carry.
    pub(super) fn expected(&self) -> u32 {
        self.next_expected
    }

    /// Takes the message ID of our response to the expected request.
    pub(super) fn response_id(&mut self) -> u32 {
        let id = self.next_expected;
        self.next_expected = self.next_expected.wrapping_add(1);
        id
    }

    /// Stores our response for replay.
    pub(super) fn store_response(&mut self, message_id: u32, stored: StoredResponse) {
        self.last_response = Some((message_id, stored));
    }

    /// Whether a response is stored (a responder that answered something).
    pub(super) fn has_response(&self) -> bool {
        self.last_response.is_some()
    }

    /// Forgets the stored response (the SA is closing).
    pub(super) fn forget_response(&mut self) {
        self.last_response = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn schedule() -> RetransmitConfig {
        RetransmitConfig::default()
    }

    #[test]
    fn ids_retransmission_and_replay() {
        let t0 = Instant::now();
        let s = schedule();
        let mut w = Window::new(1);
        assert_eq!(w.init_id(), 0);
        assert_eq!(w.next_id(), 1);
        w.sent(1, vec![vec![1, 2], vec![3]], PendingKind::Auth, t0, &s);
        assert!(w.busy() && w.answers_pending(1) && !w.answers_pending(2));
        assert!(matches!(w.retransmit(t0, &s), Retransmit::NotDue));
        let due = w.deadline().unwrap();
        assert!(
            matches!(w.retransmit(due, &s), Retransmit::Send(b) if b == vec![vec![1, 2], vec![3]])
        );
        let mut now = due;
        for _ in 0..s.transmissions {
            now += Duration::from_secs(3600);
            if let Retransmit::GiveUp = w.retransmit(now, &s) {
                break;
            }
        }
        assert!(matches!(w.retransmit(now, &s), Retransmit::GiveUp));
        assert_eq!(w.complete().map(|p| p.kind), Some(PendingKind::Auth));
        assert!(w.idle());
        assert_eq!(w.expected(), 1);
        let id = w.response_id();
        w.store_response(id, StoredResponse::Sealed(vec![vec![9]]));
        assert!(matches!(w.replay(1), Some(StoredResponse::Sealed(d)) if d == &vec![vec![9u8]]));
        assert!(w.replay(2).is_none());
        assert_eq!(w.expected(), 2);
    }
}
