//! What the endpoint holds for one configured peer besides its IKE SAs: the
//! last error, when to initiate next, whether it advertised TCP-AO keying,
//! its MKTs with their lifecycle, and the KeyIDs reserved after a restart.

use std::collections::VecDeque;
use std::time::Instant;

use super::config::PortRange;
use super::event::KeyIdReservation;
use crate::mkt::MasterKeyTuple;

/// An MKT with its lifecycle. MKTs belong to the peer, not to the IKE SA
/// that negotiated them: they outlive a failed or replaced IKE SA until
/// their hard lifetime, so that live connections keep their keys until new
/// ones exist (docs/protocol.md).
pub(super) struct MktRecord {
    pub(super) mkt: MasterKeyTuple,
    /// Shared with the peer's configuration when they are its ports.
    pub(super) ports: std::sync::Arc<[PortRange]>,
    pub(super) created_at: Instant,
    /// Local SPI of the IKE SA that created the MKT.
    pub(super) ike_spi: u64,
    pub(super) spi_i: u64,
    pub(super) spi_r: u64,
    /// When this side starts a rekey (`None`: rekeyed, or being rekeyed).
    pub(super) rekey_at: Option<Instant>,
    /// Hard lifetime: the MKT is deleted then, rekeyed or not.
    pub(super) expires_at: Instant,
    /// When a superseded MKT is deleted (with a Delete payload when this
    /// side initiated the rekey, locally otherwise).
    pub(super) retire_at: Option<Instant>,
    /// Send a Delete payload for it when it retires.
    pub(super) retire_with_delete: bool,
    /// Why it retires, for [`super::event::Event::MktDeleted`]: set with
    /// `retire_at`.
    pub(super) retire_reason: &'static str,
    /// (send_id, recv_id) of the MKT this one rekeys.
    pub(super) rekey_of: Option<(u8, u8)>,
    /// Created by an exchange this side initiated.
    pub(super) by_us: bool,
    /// Ni and Nr of the exchange that created it (RFC 7296 2.8.1), for a
    /// rekey; `None` for the first MKT of an IKE SA, which succeeds none
    /// (a box: most MKTs have none; issue: scale, memory per peer).
    pub(super) nonces: Option<Box<[Vec<u8>; 2]>>,
}

/// The peer's state outside its IKE SAs.
#[derive(Default)]
pub(super) struct PeerRuntime {
    pub(super) tcp_ao_capable: Option<bool>,
    pub(super) next_attempt: Option<Instant>,
    /// The peer's live MKTs.
    pub(super) mkts: Vec<MktRecord>,
    /// What a peer holds only now and then ([`PeerRuntime::rare`]).
    pub(super) rare: Option<Box<PeerRare>>,
}

/// What a peer holds only after an error, a failed child SA, a restart or
/// the end of an MKT: in a box of its own, made when first needed and
/// dropped once empty again ([`PeerRuntime::tidy`]), so that the many
/// peers that need none carry one pointer (issue: scale, memory per peer).
#[derive(Default)]
pub(super) struct PeerRare {
    pub(super) last_error: Option<String>,
    /// When to try again to create an MKT on an IKE SA that has none.
    pub(super) next_child_attempt: Option<Instant>,
    /// KeyIDs kept out of use ([`super::Endpoint::reserve_key_ids`]).
    pub(super) reservations: Vec<KeyIdReservation>,
    /// KeyID pairs of MKTs that ended lately, newest last, with when they
    /// ended: new RecvIDs avoid them while others are free
    /// ([`super::mkts::note_ended`]).
    pub(super) recent_key_ids: VecDeque<(u8, u8, Instant)>,
    /// When an unauthenticated IKE_SA_INIT of this peer's address was last
    /// reported as failed (NO_PROPOSAL_CHOSEN): such reports are made at
    /// most once per [`super::init::INIT_REFUSAL_REPORT_EVERY`], since
    /// anyone can forge the request.
    pub(super) init_refusal_reported: Option<Instant>,
}

/// What [`PeerRuntime::rare`] reads when the box is not there.
static NO_RARE: PeerRare = PeerRare {
    last_error: None,
    next_child_attempt: None,
    reservations: Vec::new(),
    recent_key_ids: VecDeque::new(),
    init_refusal_reported: None,
};

impl PeerRare {
    fn is_empty(&self) -> bool {
        self.last_error.is_none()
            && self.next_child_attempt.is_none()
            && self.reservations.is_empty()
            && self.recent_key_ids.is_empty()
            && self.init_refusal_reported.is_none()
    }
}

impl PeerRuntime {
    /// The rarely held state (all empty when there is none).
    pub(super) fn rare(&self) -> &PeerRare {
        self.rare.as_deref().unwrap_or(&NO_RARE)
    }

    /// The rarely held state, to change (its box made when missing).
    pub(super) fn rare_mut(&mut self) -> &mut PeerRare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Sets the last error; clearing it makes no box.
    pub(super) fn set_last_error(&mut self, error: Option<String>) {
        match (error, self.rare.as_mut()) {
            (None, None) => {}
            (None, Some(r)) => r.last_error = None,
            (e, _) => self.rare_mut().last_error = e,
        }
    }

    /// Sets when to try again to create an MKT; clearing it makes no box.
    pub(super) fn set_next_child_attempt(&mut self, at: Option<Instant>) {
        match (at, self.rare.as_mut()) {
            (None, None) => {}
            (None, Some(r)) => r.next_child_attempt = None,
            (t, _) => self.rare_mut().next_child_attempt = t,
        }
    }

    /// Drops the box of rarely held state once it holds nothing (after
    /// each input).
    pub(super) fn tidy(&mut self) {
        if self.rare.as_deref().is_some_and(PeerRare::is_empty) {
            self.rare = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer with nothing rare to hold has no box; setting makes it,
    /// clearing alone does not, and `tidy` drops it once empty.
    #[test]
    fn the_rare_box_is_made_when_needed_and_dropped_when_empty() {
        let mut p = PeerRuntime::default();
        p.set_last_error(None);
        p.set_next_child_attempt(None);
        assert!(p.rare.is_none());
        assert!(p.rare().last_error.is_none());
        p.set_last_error(Some("AUTHENTICATION_FAILED".into()));
        assert_eq!(
            p.rare().last_error.as_deref(),
            Some("AUTHENTICATION_FAILED")
        );
        p.tidy();
        assert!(p.rare.is_some(), "still holds the error");
        p.set_last_error(None);
        p.tidy();
        assert!(p.rare.is_none());
    }
}
