//! Errors of the IKE exchange layer, typed by who is at fault (the rustls
//! pattern): octets that do not parse, a peer that breaks the protocol, a
//! negotiation that cannot succeed, and misuse of this API. Each maps to the
//! Notify, if any, that is sent back (RFC 7296 2.21, 3.10.1).

use crate::crypto::CryptoError;
use crate::numbers::{DhGroup, NotifyType, PayloadType};
use crate::wire::WireError;

/// An error while handling a datagram or a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IkeError {
    /// The octets do not form a valid IKEv2 message.
    #[error("malformed message: {0}")]
    Malformed(#[from] WireError),
    /// The message parses but breaks the protocol.
    #[error("peer misbehaviour: {0}")]
    PeerMisbehaviour(#[from] Misbehaviour),
    /// The peers cannot agree.
    #[error("negotiation failed: {0}")]
    Negotiation(#[from] NegotiationError),
    /// The caller asked for something impossible.
    #[error("API misuse: {0}")]
    Misuse(#[from] MisuseError),
}

/// Ways a peer breaks the protocol with a well-formed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Misbehaviour {
    #[error("missing {0} payload")]
    MissingPayload(PayloadType),
    #[error("unsupported critical payload {0}")]
    UnsupportedCritical(PayloadType),
    #[error("integrity check of the SK payload failed")]
    Integrity,
    #[error("key exchange failed: {0}")]
    KeyExchange(CryptoError),
    #[error("the response selects something that was not proposed: {0}")]
    BadSelection(&'static str),
    #[error("unexpected {0}")]
    Unexpected(&'static str),
}

/// Negotiation failures, each with the Notify that reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("NO_PROPOSAL_CHOSEN: {0}")]
    NoProposalChosen(&'static str),
    #[error("INVALID_KE_PAYLOAD: the responder wants group {0}")]
    InvalidKe(DhGroup),
    #[error("AUTHENTICATION_FAILED: {0}")]
    AuthenticationFailed(String),
    #[error("TS_UNACCEPTABLE: {0}")]
    TsUnacceptable(&'static str),
    #[error("the peer reported {0}")]
    PeerReported(NotifyType),
    #[error("the peer does not answer (retransmissions exhausted)")]
    Timeout,
    #[error("the peer supports neither TCP-AO keying nor childless IKE SAs (RFC 6023)")]
    NotCapable,
}

/// Misuse of the [`Endpoint`](super::Endpoint) API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MisuseError {
    #[error("no peer named {0:?}")]
    UnknownPeer(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl IkeError {
    /// The Notify type sent back to the peer for this error, if any.
    pub fn notify(&self) -> Option<NotifyType> {
        match self {
            IkeError::Malformed(_) => Some(NotifyType::INVALID_SYNTAX),
            IkeError::PeerMisbehaviour(Misbehaviour::UnsupportedCritical(_)) => {
                Some(NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD)
            }
            IkeError::PeerMisbehaviour(Misbehaviour::Integrity) => None,
            IkeError::PeerMisbehaviour(_) => Some(NotifyType::INVALID_SYNTAX),
            IkeError::Negotiation(n) => n.notify(),
            IkeError::Misuse(_) => None,
        }
    }
}

impl NegotiationError {
    /// The Notify type that reports this failure.
    pub fn notify(&self) -> Option<NotifyType> {
        Some(match self {
            NegotiationError::NoProposalChosen(_) => NotifyType::NO_PROPOSAL_CHOSEN,
            NegotiationError::InvalidKe(_) => NotifyType::INVALID_KE_PAYLOAD,
            NegotiationError::AuthenticationFailed(_) => NotifyType::AUTHENTICATION_FAILED,
            NegotiationError::TsUnacceptable(_) => NotifyType::TS_UNACCEPTABLE,
            NegotiationError::PeerReported(t) => *t,
            NegotiationError::Timeout | NegotiationError::NotCapable => return None,
        })
    }
}
