//! Cryptography for IKEv2 (RFC 7296 2.13-2.18, RFC 5282, RFC 7634, RFC 8031,
//! RFC 5903): the PRFs and prf+, SKEYSEED and the IKE SA keys, child KEYMAT,
//! the AEAD ciphers of the SK payload, the key exchange groups, and PSK
//! authentication. Primitives come from `ring`, `x25519-dalek` and `p256`;
//! nothing is hand-rolled. Randomness is always passed in.

use rand_core::CryptoRngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::numbers::{DhGroup, EncrId, PrfId};

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

/// Key material: zeroized on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A negotiated PRF (transform type 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prf {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl Prf {
    /// Maps a transform ID; `None` for PRFs aokd does not implement.
    pub fn from_id(id: PrfId) -> Option<Prf> {
        todo!("{id:?}")
    }
    pub fn id(self) -> PrfId {
        todo!()
    }
    /// The preferred key length, which is the output length for HMAC PRFs.
    pub fn key_len(self) -> usize {
        todo!()
    }
    /// prf(key, data).
    pub fn prf(self, key: &[u8], data: &[u8]) -> Secret {
        todo!("{key:?} {data:?}")
    }
    /// prf+(key, seed) truncated to `len` octets (RFC 7296 2.13).
    pub fn prf_plus(self, key: &[u8], seed: &[u8], len: usize) -> Result<Secret, CryptoError> {
        todo!("{key:?} {seed:?} {len}")
    }
}

/// A negotiated AEAD cipher for the SK payload (transform type 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encr {
    /// ENCR_AES_GCM_16 with a 128- or 256-bit key.
    AesGcm16 { key_bits: u16 },
    ChaCha20Poly1305,
}

impl Encr {
    /// Maps a transform ID and its Key Length attribute; `None` if unsupported.
    pub fn from_transform(id: EncrId, key_bits: Option<u16>) -> Option<Encr> {
        todo!("{id:?} {key_bits:?}")
    }
    pub fn id(self) -> EncrId {
        todo!()
    }
    /// The Key Length attribute to send, if this cipher takes one.
    pub fn key_length_attr(self) -> Option<u16> {
        todo!()
    }
    /// Key octets plus the 4-octet salt: the length of SK_ei / SK_er.
    pub fn keymat_len(self) -> usize {
        todo!()
    }
    /// IV octets carried in the SK payload (8).
    pub const IV_LEN: usize = 8;
    /// ICV octets appended to the ciphertext (16).
    pub const ICV_LEN: usize = 16;

    /// Encrypts `in_out` in place and appends the ICV. `key` is SK_e (key ‖ salt),
    /// nonce = salt ‖ iv (RFC 5282 4, RFC 7634 2).
    pub fn seal(self, key: &[u8], iv: &[u8; 8], aad: &[u8], in_out: &mut Vec<u8>) -> Result<(), CryptoError> {
        todo!("{key:?} {iv:?} {aad:?} {in_out:?}")
    }
    /// Checks the ICV and decrypts `in_out` (ciphertext ‖ ICV) in place,
    /// leaving the plaintext.
    pub fn open(self, key: &[u8], iv: &[u8; 8], aad: &[u8], in_out: &mut Vec<u8>) -> Result<(), CryptoError> {
        todo!("{key:?} {iv:?} {aad:?} {in_out:?}")
    }
}

/// The keys of an IKE SA (RFC 7296 2.14). With AEAD ciphers SK_ai/SK_ar are empty.
pub struct IkeKeys {
    pub sk_d: Secret,
    pub sk_ei: Secret,
    pub sk_er: Secret,
    pub sk_pi: Secret,
    pub sk_pr: Secret,
}

/// SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 2.14).
pub fn skeyseed(prf: Prf, ni: &[u8], nr: &[u8], gir: &[u8]) -> Secret {
    todo!("{prf:?} {ni:?} {nr:?} {gir:?}")
}

/// {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}
/// = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr) (RFC 7296 2.14).
pub fn derive_ike_keys(prf: Prf, encr: Encr, skeyseed: &Secret, ni: &[u8], nr: &[u8], spi_i: u64, spi_r: u64) -> Result<IkeKeys, CryptoError> {
    todo!("{prf:?} {encr:?} {ni:?} {nr:?} {spi_i} {spi_r} {}", skeyseed.len())
}

/// KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (RFC 7296 2.17).
pub fn child_keymat(prf: Prf, sk_d: &Secret, gir_new: Option<&[u8]>, ni: &[u8], nr: &[u8], len: usize) -> Result<Secret, CryptoError> {
    todo!("{prf:?} {gir_new:?} {ni:?} {nr:?} {len} {}", sk_d.len())
}

/// AUTH for a pre-shared key (RFC 7296 2.15):
/// prf(prf(Shared Secret, "Key Pad for IKEv2"), signed_octets).
pub fn psk_auth(prf: Prf, psk: &[u8], signed_octets: &[u8]) -> Secret {
    todo!("{prf:?} {psk:?} {signed_octets:?}")
}

/// The first 8 octets of SHA-256(key), in lower-case hex: how aokd names a
/// key in logs and aoctl without revealing it.
pub fn fingerprint(key: &[u8]) -> String {
    todo!("{key:?}")
}

/// An ephemeral key exchange private value (RFC 8031 for group 31,
/// RFC 5903 for group 19). Zeroized on drop, no `Debug`.
pub struct KeyExchange {
    _todo: (),
}

impl KeyExchange {
    /// Groups this crate implements, in aokd's default preference order.
    pub const SUPPORTED: [DhGroup; 2] = [DhGroup::CURVE25519, DhGroup::ECP_256];

    pub fn generate(group: DhGroup, rng: &mut dyn CryptoRngCore) -> Result<KeyExchange, CryptoError> {
        todo!("{group:?} {}", rng.next_u32())
    }
    pub fn group(&self) -> DhGroup {
        todo!()
    }
    /// The public value as carried in the KE payload (32 octets for group 31,
    /// x ‖ y = 64 octets for group 19).
    pub fn public(&self) -> Vec<u8> {
        todo!()
    }
    /// g^ir from the peer's KE data; rejects malformed or degenerate values.
    pub fn agree(&self, peer: &[u8]) -> Result<Secret, CryptoError> {
        todo!("{peer:?}")
    }
}
