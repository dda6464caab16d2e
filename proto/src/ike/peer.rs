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
    pub(super) ports: Vec<PortRange>,
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
    /// Ni and Nr of the exchange that created it (RFC 7296 2.8.1).
    pub(super) nonces: [Vec<u8>; 2],
}

/// The peer's state outside its IKE SAs.
#[derive(Default)]
pub(super) struct PeerRuntime {
    pub(super) last_error: Option<String>,
    pub(super) tcp_ao_capable: Option<bool>,
    pub(super) next_attempt: Option<Instant>,
    /// The peer's live MKTs.
    pub(super) mkts: Vec<MktRecord>,
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
