//! Cryptography for IKEv2 (RFC 7296 2.13-2.18, RFC 5282, RFC 7634, RFC 8031,
//! RFC 5903): the PRFs and prf+, SKEYSEED and the IKE SA keys, child KEYMAT,
//! the AEAD ciphers of the SK payload, the key exchange groups, and PSK
//! authentication. Primitives come from `ring`, `x25519-dalek` and `p256`;
//! nothing is hand-rolled. Randomness is always passed in.
//!
//! The items live in submodules and are re-exported here:
//! - [`prf`]: [`Prf`], prf and prf+ (RFC 7296 2.13);
//! - [`kdf`]: [`skeyseed`], [`derive_ike_keys`], [`child_keymat`],
//!   [`psk_auth`], [`fingerprint`] (RFC 7296 2.14, 2.15, 2.17, 2.18);
//! - [`aead`]: [`Encr`], the SK payload ciphers (RFC 5282, RFC 7634);
//! - [`dh`]: [`KeyExchange`] (RFC 8031, RFC 5903);
//! - [`sig`]: signature authentication (RFC 7427, RFC 8420, RFC 4754).

use crate::numbers::DhGroup;

pub mod aead;
pub mod dh;
pub mod kdf;
pub mod prf;
pub mod sig;

pub use aead::Encr;
pub use dh::KeyExchange;
pub use kdf::{
    child_keymat, derive_ike_keys, fingerprint, psk_auth, rekey_skeyseed, skeyseed, IkeKeys,
};
pub use prf::Prf;

/// Errors from cryptographic operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// AEAD authentication failed: the message was altered or the key is wrong.
    #[error("integrity check failed")]
    Integrity,
    /// A peer's public value is malformed or not on the curve.
    #[error("invalid {group} public value")]
    InvalidPublic { group: DhGroup },
    /// The shared secret is degenerate (for example all zero for X25519).
    #[error("degenerate {group} shared secret")]
    Degenerate { group: DhGroup },
    /// An algorithm this crate does not implement.
    #[error("unsupported algorithm {0}")]
    Unsupported(&'static str),
    /// prf+ asked for more than 255 blocks (RFC 7296 2.13).
    #[error("prf+ output too long")]
    TooLong,
}

/// Key material: zeroized on drop, never printed. Defined in `aokd_tcpao`
/// (TCP-AO keys are secrets too, and aoctl uses them without this crate).
pub use aokd_tcpao::Secret;
