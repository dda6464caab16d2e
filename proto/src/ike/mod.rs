//! IKEv2 (RFC 7296) for negotiating TCP-AO Master Key Tuples.
//!
//! - [`config`]: peers, suites, timers.
//! - [`proposal`]: SA payloads for the IKE SA and the TCP-AO child SA.
//! - [`sk`]: the encrypted payload.
//! - [`endpoint`]: the state machine of every IKE SA ([`Endpoint`]).
//! - [`child`]: MKT rekeying, collisions, retirement and expiry.
//! - [`event`]: what the endpoint reports.
//! - [`error`]: errors typed by fault.

pub mod child;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod event;
pub mod proposal;
pub mod sk;

pub use config::{
    EndpointConfig, Identity, IkeSuite, Lifetimes, PeerConfig, PortRange, RetransmitConfig,
};
pub use endpoint::Endpoint;
pub use error::{IkeError, Misbehaviour, MisuseError, NegotiationError};
pub use event::{Event, MktView, PeerState, PeerView, Role, SaView, Transmit};
