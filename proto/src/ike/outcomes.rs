//! How negotiations ended, counted since the endpoint started: IKE SAs
//! established and failed, MKTs created and failed, rekeys and their
//! collisions, each failure by a stable reason ([`FailureReason`], the
//! class of its [`IkeError`]). Counted from the events the endpoint
//! reports ([`NegotiationCounters::note`]), so that a count and the event a
//! driver logs never disagree; read with
//! [`super::Endpoint::counters`] (aokd's metrics, docs/metrics.md).

use super::error::{IkeError, Misbehaviour, NegotiationError};
use super::event::Event;
use crate::numbers::NotifyType;

/// Why a negotiation failed: the class of its [`IkeError`], a fixed set so
/// that it can label a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureReason {
    /// A message that does not parse (INVALID_SYNTAX).
    Malformed,
    /// A required payload is missing.
    MissingPayload,
    /// An unsupported critical payload.
    UnsupportedCritical,
    /// An SK payload that does not verify.
    Integrity,
    /// The key exchange failed.
    KeyExchange,
    /// The response selects something that was not proposed.
    BadSelection,
    /// A message this side did not expect.
    Unexpected,
    /// NO_PROPOSAL_CHOSEN.
    NoProposalChosen,
    /// INVALID_KE_PAYLOAD.
    InvalidKe,
    /// AUTHENTICATION_FAILED.
    AuthenticationFailed,
    /// TS_UNACCEPTABLE.
    TsUnacceptable,
    /// Another error Notify from the peer (one naming a failure above
    /// counts as that failure).
    PeerReported,
    /// No answer (retransmissions exhausted).
    Timeout,
    /// The peer supports neither TCP-AO keying nor childless IKE SAs.
    NotCapable,
    /// Refused by this side's API (an unknown peer, a bad configuration).
    Misuse,
}

impl FailureReason {
    /// Every reason, in the order of [`FailureCounters`].
    pub const ALL: [FailureReason; 15] = [
        FailureReason::Malformed,
        FailureReason::MissingPayload,
        FailureReason::UnsupportedCritical,
        FailureReason::Integrity,
        FailureReason::KeyExchange,
        FailureReason::BadSelection,
        FailureReason::Unexpected,
        FailureReason::NoProposalChosen,
        FailureReason::InvalidKe,
        FailureReason::AuthenticationFailed,
        FailureReason::TsUnacceptable,
        FailureReason::PeerReported,
        FailureReason::Timeout,
        FailureReason::NotCapable,
        FailureReason::Misuse,
    ];

    /// The reason of `error`.
    pub fn of(error: &IkeError) -> FailureReason {
        match error {
            IkeError::Malformed(_) => FailureReason::Malformed,
            IkeError::PeerMisbehaviour(m) => match m {
                Misbehaviour::MissingPayload(_) => FailureReason::MissingPayload,
                Misbehaviour::UnsupportedCritical(_) => FailureReason::UnsupportedCritical,
                Misbehaviour::Integrity => FailureReason::Integrity,
                Misbehaviour::KeyExchange(_) => FailureReason::KeyExchange,
                Misbehaviour::BadSelection(_) => FailureReason::BadSelection,
                Misbehaviour::Unexpected(_) => FailureReason::Unexpected,
            },
            IkeError::Negotiation(n) => match n {
                NegotiationError::NoProposalChosen(_) => FailureReason::NoProposalChosen,
                NegotiationError::InvalidKe(_) => FailureReason::InvalidKe,
                NegotiationError::AuthenticationFailed(_) => FailureReason::AuthenticationFailed,
                NegotiationError::TsUnacceptable(_) => FailureReason::TsUnacceptable,
                // The peer's Notify of a failure this side also detects
                // counts as that failure.
                NegotiationError::PeerReported(t) => match *t {
                    NotifyType::NO_PROPOSAL_CHOSEN => FailureReason::NoProposalChosen,
                    NotifyType::INVALID_KE_PAYLOAD => FailureReason::InvalidKe,
                    NotifyType::AUTHENTICATION_FAILED => FailureReason::AuthenticationFailed,
                    NotifyType::TS_UNACCEPTABLE => FailureReason::TsUnacceptable,
                    _ => FailureReason::PeerReported,
                },
                NegotiationError::Timeout => FailureReason::Timeout,
                NegotiationError::NotCapable => FailureReason::NotCapable,
            },
            IkeError::Misuse(_) => FailureReason::Misuse,
        }
    }

    /// The stable name (metric labels, aoctl's `--json` keys).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Malformed => "malformed",
            FailureReason::MissingPayload => "missing_payload",
            FailureReason::UnsupportedCritical => "unsupported_critical",
            FailureReason::Integrity => "integrity",
            FailureReason::KeyExchange => "key_exchange",
            FailureReason::BadSelection => "bad_selection",
            FailureReason::Unexpected => "unexpected",
            FailureReason::NoProposalChosen => "no_proposal_chosen",
            FailureReason::InvalidKe => "invalid_ke_payload",
            FailureReason::AuthenticationFailed => "authentication_failed",
            FailureReason::TsUnacceptable => "ts_unacceptable",
            FailureReason::PeerReported => "peer_reported",
            FailureReason::Timeout => "timeout",
            FailureReason::NotCapable => "not_capable",
            FailureReason::Misuse => "misuse",
        }
    }
}

/// Failures by reason: a fixed array, one increment per failure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureCounters([u64; FailureReason::ALL.len()]);

impl FailureCounters {
    pub fn get(&self, reason: FailureReason) -> u64 {
        self.0[reason as usize]
    }

    /// Every reason with its count, in the order of [`FailureReason::ALL`].
    pub fn iter(&self) -> impl Iterator<Item = (FailureReason, u64)> + '_ {
        FailureReason::ALL.iter().map(|r| (*r, self.0[*r as usize]))
    }

    /// All failures.
    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    fn add(&mut self, error: &IkeError) {
        let c = &mut self.0[FailureReason::of(error) as usize];
        *c = c.saturating_add(1);
    }
}

/// How negotiations ended since the endpoint started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NegotiationCounters {
    /// IKE SAs established (IKE_AUTH completed), as either role.
    pub ike_sas_established: u64,
    /// Failed IKE SA negotiations ([`Event::NegotiationFailed`]).
    pub ike_sa_failures: FailureCounters,
    /// MKTs created, fresh ones and rekeys ([`Event::MktCreated`]).
    pub mkts_created: u64,
    /// Failed MKT negotiations, fresh ones and rekeys
    /// ([`Event::ChildFailed`]).
    pub mkt_failures: FailureCounters,
    /// IKE SAs rekeyed ([`Event::IkeSaRekeyed`]).
    pub ike_sa_rekeys: u64,
    /// Failed IKE SA rekeys ([`Event::IkeRekeyFailed`]).
    pub ike_sa_rekey_failures: FailureCounters,
    /// MKTs created by a rekey of another MKT (both successors of a
    /// collision among them).
    pub mkt_rekeys: u64,
    /// Simultaneous IKE SA rekeys (RFC 7296 2.8.2).
    pub ike_sa_rekey_collisions: u64,
    /// Simultaneous MKT rekeys (RFC 7296 2.8.1).
    pub mkt_rekey_collisions: u64,
}

impl NegotiationCounters {
    /// Counts what `event` reports.
    pub(super) fn note(&mut self, event: &Event) {
        let inc = |c: &mut u64| *c = c.saturating_add(1);
        match event {
            Event::IkeSaEstablished { .. } => inc(&mut self.ike_sas_established),
            Event::NegotiationFailed { error, .. } => self.ike_sa_failures.add(error),
            Event::MktCreated { .. } => inc(&mut self.mkts_created),
            Event::ChildFailed { error, .. } => self.mkt_failures.add(error),
            Event::IkeSaRekeyed { .. } => inc(&mut self.ike_sa_rekeys),
            Event::IkeRekeyFailed { error, .. } => self.ike_sa_rekey_failures.add(error),
            Event::IkeRekeyCollision { .. } => inc(&mut self.ike_sa_rekey_collisions),
            Event::RekeyCollision { .. } => inc(&mut self.mkt_rekey_collisions),
            _ => {}
        }
    }

    /// Counts an MKT created by a rekey (not an event of its own).
    pub(super) fn note_mkt_rekey(&mut self) {
        self.mkt_rekeys = self.mkt_rekeys.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_once_in_order() {
        for (i, r) in FailureReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let names: std::collections::BTreeSet<_> =
            FailureReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), FailureReason::ALL.len());
    }

    #[test]
    fn failures_are_counted_by_reason() {
        let mut c = NegotiationCounters::default();
        c.note(&Event::NegotiationFailed {
            peer: "r2".into(),
            error: NegotiationError::AuthenticationFailed("x".into()).into(),
            by_peer: true,
        });
        c.note(&Event::ChildFailed {
            peer: "r2".into(),
            error: NegotiationError::Timeout.into(),
            by_peer: false,
        });
        c.note(&Event::NegotiationFailed {
            peer: "r2".into(),
            error: NegotiationError::PeerReported(NotifyType::AUTHENTICATION_FAILED).into(),
            by_peer: true,
        });
        c.note(&Event::NegotiationFailed {
            peer: "r2".into(),
            error: NegotiationError::PeerReported(NotifyType::INVALID_SYNTAX).into(),
            by_peer: true,
        });
        c.note(&Event::PeerNotCapable { peer: "r2".into() });
        assert_eq!(
            c.ike_sa_failures.get(FailureReason::AuthenticationFailed),
            2
        );
        assert_eq!(c.ike_sa_failures.get(FailureReason::PeerReported), 1);
        assert_eq!(c.ike_sa_failures.total(), 3);
        assert_eq!(c.mkt_failures.get(FailureReason::Timeout), 1);
        assert_eq!(c.ike_sas_established + c.mkts_created, 0);
    }
}
