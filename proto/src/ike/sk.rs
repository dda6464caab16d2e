//! The Encrypted and Authenticated payload (SK, RFC 7296 3.14) with AEAD
//! ciphers (RFC 5282, RFC 7634): building protected messages and opening
//! them.
//!
//! Layout: IKE header ‖ SK generic header ‖ IV (8) ‖ ciphertext ‖ ICV (16),
//! where the plaintext is the inner payload chain ‖ padding ‖ pad length.
//! The associated data is the IKE header and the SK generic header
//! (RFC 5282 5.1). aokd sends no padding; it accepts any.

use super::error::{IkeError, Misbehaviour};
use crate::crypto::Encr;
use crate::numbers::PayloadType;
use crate::wire::{self, Header, ParsedMessage, Payload};

/// Length of the SK generic payload header.
const SK_HEADER_LEN: usize = 4;

/// Builds a protected message. `header.next_payload` and `header.length` are
/// set here; `iv` must never repeat under one key (aokd uses a per-SA
/// message counter).
pub fn protect(
    header: &Header,
    payloads: &[Payload],
    encr: Encr,
    key: &[u8],
    iv: u64,
) -> Result<Vec<u8>, IkeError> {
    let mut plaintext = Vec::new();
    let first_inner = wire::emit_payload_chain(payloads, PayloadType::NONE, &mut plaintext);
    plaintext.push(0); // pad length
    seal(header, first_inner, plaintext, encr, key, iv)
}

/// Encrypts `plaintext` (the inner payload chain, padding and pad length)
/// into an SK payload whose Next Payload is `first_inner`, behind `header`.
pub(crate) fn seal(
    header: &Header,
    first_inner: PayloadType,
    mut plaintext: Vec<u8>,
    encr: Encr,
    key: &[u8],
    iv: u64,
) -> Result<Vec<u8>, IkeError> {
    let sk_len = SK_HEADER_LEN + Encr::IV_LEN + plaintext.len() + Encr::ICV_LEN;
    let total = Header::LEN + sk_len;
    let mut h = header.clone();
    h.next_payload = PayloadType::SK;
    h.length = u32::try_from(total).map_err(|_| Misbehaviour::Unexpected("message too long"))?;
    let mut out = Vec::with_capacity(total);
    h.emit(&mut out);
    out.push(first_inner.0);
    out.push(0);
    out.extend_from_slice(
        &u16::try_from(sk_len)
            .map_err(|_| Misbehaviour::Unexpected("message too long"))?
            .to_be_bytes(),
    );
    let iv = iv.to_be_bytes();
    let aad = out.clone();
    out.extend_from_slice(&iv);
    encr.seal(key, &iv, &aad, &mut plaintext)
        .map_err(|_| Misbehaviour::Unexpected("encryption failed"))?;
    out.extend_from_slice(&plaintext);
    Ok(out)
}

/// Opens the SK payload of `msg` (parsed from `datagram`) and returns the
/// inner payloads. Fails with [`Misbehaviour::Integrity`] when the ICV does
/// not verify, which is also what a forged or corrupted datagram gives.
pub fn unprotect(
    datagram: &[u8],
    msg: &ParsedMessage,
    encr: Encr,
    key: &[u8],
) -> Result<Vec<Payload>, IkeError> {
    let sk = msg
        .sk
        .as_ref()
        .ok_or(Misbehaviour::MissingPayload(PayloadType::SK))?;
    let aad_end = sk
        .offset
        .checked_add(SK_HEADER_LEN)
        .ok_or(Misbehaviour::Integrity)?;
    let aad = datagram.get(..aad_end).ok_or(Misbehaviour::Integrity)?;
    if sk.body.len() < Encr::IV_LEN + Encr::ICV_LEN + 1 {
        return Err(Misbehaviour::Integrity.into());
    }
    let (iv, rest) = sk.body.split_at(Encr::IV_LEN);
    let mut iv8 = [0u8; 8];
    iv8.copy_from_slice(iv);
    let mut buf = rest.to_vec();
    encr.open(key, &iv8, aad, &mut buf)
        .map_err(|_| Misbehaviour::Integrity)?;
    let pad_len = usize::from(*buf.last().ok_or(Misbehaviour::Integrity)?);
    let inner_len = buf
        .len()
        .checked_sub(pad_len + 1)
        .ok_or(IkeError::Malformed(wire::WireError::Invalid(
            "SK pad length",
        )))?;
    buf.truncate(inner_len);
    Ok(wire::parse_payload_chain(sk.first_inner, &buf)?)
}
