//! IKEv2 (RFC 7296) for negotiating TCP-AO Master Key Tuples.
//!
//! - [`config`]: peers, suites, timers.
//! - [`proposal`]: SA payloads for the IKE SA and the TCP-AO child SA.
//! - [`sk`]: the encrypted payload.
//! - [`endpoint`]: the state machine of every IKE SA ([`Endpoint`]).
//! - [`child`]: MKT rekeying, collisions, retirement and expiry.
//! - [`sa_rekey`]: rekeying the IKE SA itself, and liveness checks.
//! - [`event`]: what the endpoint reports.
//! - [`error`]: errors typed by fault.

pub mod child;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod event;
pub mod proposal;
mod sa;
pub mod sa_rekey;
pub mod sk;
mod table;
mod timers;
mod window;

pub use config::{
    EndpointConfig, Identity, IkeSuite, Lifetimes, PeerConfig, PortRange, RetransmitConfig,
};
pub use endpoint::Endpoint;
pub use error::{IkeError, Misbehaviour, MisuseError, NegotiationError};
pub use event::{Event, KeyIdReservation, MktView, PeerState, PeerView, Role, SaView, Transmit};

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
