//! IKEv2 (RFC 7296) for negotiating TCP-AO Master Key Tuples.
//!
//! The engine, from the outside in:
//! - [`endpoint`]: the one object ([`Endpoint`]): inputs, outputs, dispatch,
//!   per-peer re-indexing after every input.
//! - exchanges, each with `start` / `on_request` / `on_response` over one IKE
//!   SA and a narrow context: `init` (IKE_SA_INIT), `auth` (IKE_AUTH),
//!   `informational` (Delete, liveness), `create_child` (MKTs), `ike_rekey`
//!   (the IKE SA itself).
//! - `maintenance`: what time does to a peer (retransmissions, rekeys,
//!   expiry, initiation) and its next deadline.
//! - `lifecycle` (the peer's IKE SAs outside any one exchange) and `mkts`
//!   (the MKT lifecycle and KeyID space).
//! - [`dn`]: distinguished names as identities (text and DER).
//! - [`group`]: peer groups, whose members become peers when they first
//!   negotiate.
//! - `cookie`: responder cookies (RFC 7296 2.6) and the half-open counts
//!   that decide when to demand them.
//! - `context` (what a handler sees: [`context::Ctx`], and `Fate`, how it
//!   gives its SA back), `sa` (one IKE SA), `window` (message IDs,
//!   retransmission, replay), `stored_response` (the last response, kept
//!   for replay), `fragments` (reassembly of SKF messages,
//!   RFC 7383), `table` (a peer's SAs), `peer` (a peer's other state),
//!   `timers` (the timer queue), `traffic` (payload helpers).
//! - [`config`], [`proposal`], [`sk`], [`event`], [`error`]: configuration,
//!   SA payloads, the encrypted payload, what the endpoint reports, errors;
//!   [`reconfig`]: what a changed peer configuration needs (reload).
//!   [`outcomes`]: how negotiations ended, counted from the events.
//!
//! No module imports one above it: exchanges import `lifecycle`, `mkts`,
//! `context` and below, never `endpoint` or `maintenance`.

mod auth;
pub mod cert;
pub mod config;
mod context;
mod cookie;
mod create_child;
pub mod dn;
pub mod endpoint;
pub mod error;
pub mod event;
pub mod fragments;
pub mod group;
mod ike_rekey;
mod informational;
mod init;
mod lifecycle;
mod maintenance;
mod mkts;
pub mod outcomes;
mod peer;
pub mod proposal;
pub mod reconfig;
mod sa;
pub mod sk;
mod stored_response;
mod table;
mod timers;
mod traffic;
mod window;

pub use config::{
    EndpointConfig, IdData, Identity, IkeSuite, Lifetimes, PeerConfig, PeerKey, PeerTerms,
    PortRange, RetransmitConfig, SignatureAuth,
};
pub use endpoint::Endpoint;
pub use error::{IkeError, Misbehaviour, MisuseError, NegotiationError};
pub use event::{
    Counters, DropCounters, DropReason, Event, KeyIdReservation, MktView, PeerState, PeerView,
    Role, SaView, Transmit,
};
pub use group::{IpPrefix, MemberIdentity, PeerGroupConfig};
pub use outcomes::{FailureCounters, FailureReason, NegotiationCounters};
pub use reconfig::PeerChange;

use crate::numbers::NotifyType;
use crate::wire::{NotifyPayload, Payload};

/// Lookups in the payloads of a message, the one place where the payload
/// chain is searched: `payloads.find_payload(Payload::as_sa)` gives the
/// first SA payload, whatever the variant accessor of [`Payload`] returns.
pub(crate) trait PayloadsExt {
    /// The first payload for which `f` gives something.
    fn find_payload<'a, T: 'a>(&'a self, f: impl FnMut(&'a Payload) -> Option<T>) -> Option<T>;
    /// The first Notify of type `ty`.
    fn notify(&self, ty: NotifyType) -> Option<&NotifyPayload>;
    /// The first Notify of an error type (RFC 7296 3.10.1: below 16384).
    fn error_notify(&self) -> Option<&NotifyPayload>;
}

impl PayloadsExt for [Payload] {
    fn find_payload<'a, T: 'a>(&'a self, f: impl FnMut(&'a Payload) -> Option<T>) -> Option<T> {
        self.iter().find_map(f)
    }

    fn notify(&self, ty: NotifyType) -> Option<&NotifyPayload> {
        self.find_payload(|p| p.as_notify().filter(|n| n.ty == ty))
    }

    fn error_notify(&self) -> Option<&NotifyPayload> {
        self.find_payload(|p| p.as_notify().filter(|n| n.ty.is_error()))
    }
}
