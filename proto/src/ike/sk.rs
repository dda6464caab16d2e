//! The Encrypted and Authenticated payload (SK, RFC 7296 3.14) and the
//! Encrypted Fragment payload (SKF, RFC 7383 2.5) with AEAD ciphers (RFC
//! 5282, RFC 7634): building protected messages, fragmented when they
//! would not fit, and opening them.
//!
//! Layout: IKE header ‖ SK generic header ‖ IV (8) ‖ ciphertext ‖ ICV (16),
//! where the plaintext is the inner payload chain ‖ padding ‖ pad length.
//! The associated data is the IKE header and the SK generic header
//! (RFC 5282 5.1). aokd sends no padding; it accepts any.
//!
//! A fragment is the same with SKF: its generic header is followed by
//! Fragment Number and Total Fragments, which the associated data covers
//! too, and its plaintext is one piece of the inner payload chain (RFC
//! 7383 2.5); only the first fragment names the first inner payload.
//! Reassembly is [`super::fragments`].

use super::error::{IkeError, Misbehaviour};
use crate::crypto::Encr;
use crate::numbers::PayloadType;
use crate::wire::{self, FragmentNumbers, Header, ParsedMessage, Payload, SkPayload};

/// Length of the SK generic payload header.
const SK_HEADER_LEN: usize = 4;

/// Octets an SKF fragment adds to its piece of the inner payload chain:
/// IKE header, SKF header with Fragment Number and Total Fragments, IV,
/// pad length, ICV.
pub(super) const FRAGMENT_OVERHEAD: usize =
    Header::LEN + SK_HEADER_LEN + 4 + Encr::IV_LEN + 1 + Encr::ICV_LEN;

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

/// Builds a protected message from its inner payload chain (`chain`,
/// whose first payload is `first_inner`) as one datagram when it is at most
/// `max_len` octets long (or `max_len` is `None`), else as SKF fragments
/// of at most `max_len` octets each (RFC 7383 2.5), each sealed on its own
/// with the IV `next_iv` gives (called once per datagram).
pub(super) fn protect_chain(
    header: &Header,
    first_inner: PayloadType,
    mut chain: Vec<u8>,
    encr: Encr,
    key: &[u8],
    max_len: Option<usize>,
    mut next_iv: impl FnMut() -> u64,
) -> Result<Vec<Vec<u8>>, IkeError> {
    let whole = Header::LEN + SK_HEADER_LEN + Encr::IV_LEN + chain.len() + 1 + Encr::ICV_LEN;
    let Some(max_len) = max_len.filter(|&m| whole > m) else {
        chain.push(0); // pad length
        return Ok(vec![seal(
            header,
            first_inner,
            chain,
            encr,
            key,
            next_iv(),
        )?]);
    };
    let piece = max_len
        .checked_sub(FRAGMENT_OVERHEAD)
        .filter(|&p| p > 0)
        .ok_or(Misbehaviour::Unexpected("fragment size too small"))?;
    let total = u16::try_from(chain.len().div_ceil(piece))
        .map_err(|_| Misbehaviour::Unexpected("message too long"))?;
    let mut out = Vec::with_capacity(usize::from(total));
    for (i, part) in chain.chunks(piece).enumerate() {
        let number =
            u16::try_from(i + 1).map_err(|_| Misbehaviour::Unexpected("message too long"))?;
        let mut plaintext = Vec::with_capacity(part.len() + 1 + Encr::ICV_LEN);
        plaintext.extend_from_slice(part);
        plaintext.push(0); // pad length
                           // RFC 7383 2.5: Next Payload is zero in every fragment but the first.
        let next = if number == 1 {
            first_inner
        } else {
            PayloadType::NONE
        };
        let fragment = FragmentNumbers { number, total };
        out.push(seal_with(
            header,
            next,
            Some(fragment),
            plaintext,
            encr,
            key,
            next_iv(),
        )?);
    }
    Ok(out)
}

/// Encrypts `plaintext` (the inner payload chain, padding and pad length)
/// into an SK payload whose Next Payload is `first_inner`, behind `header`.
pub(crate) fn seal(
    header: &Header,
    first_inner: PayloadType,
    plaintext: Vec<u8>,
    encr: Encr,
    key: &[u8],
    iv: u64,
) -> Result<Vec<u8>, IkeError> {
    seal_with(header, first_inner, None, plaintext, encr, key, iv)
}

/// [`seal`] into SK, or into SKF with `fragment`'s numbers.
pub(crate) fn seal_with(
    header: &Header,
    first_inner: PayloadType,
    fragment: Option<FragmentNumbers>,
    mut plaintext: Vec<u8>,
    encr: Encr,
    key: &[u8],
    iv: u64,
) -> Result<Vec<u8>, IkeError> {
    let body_len = Encr::IV_LEN + plaintext.len() + Encr::ICV_LEN;
    let fields = if fragment.is_some() { 4 } else { 0 };
    let total = Header::LEN + SK_HEADER_LEN + fields + body_len;
    u16::try_from(SK_HEADER_LEN + fields + body_len)
        .map_err(|_| Misbehaviour::Unexpected("message too long"))?;
    u32::try_from(total).map_err(|_| Misbehaviour::Unexpected("message too long"))?;
    let mut out = match fragment {
        None => wire::emit_sk_prefix(header, &[], first_inner, body_len),
        Some(f) => wire::emit_skf_prefix(header, &[], first_inner, f, body_len),
    };
    out.reserve(body_len);
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
/// not verify, which is also what a forged or corrupted datagram gives; an
/// SKF fragment is opened with [`open`] and reassembled first.
pub fn unprotect(
    datagram: &[u8],
    msg: &ParsedMessage,
    encr: Encr,
    key: &[u8],
) -> Result<Vec<Payload>, IkeError> {
    let sk = msg
        .sk
        .as_ref()
        .filter(|sk| sk.fragment.is_none())
        .ok_or(Misbehaviour::MissingPayload(PayloadType::SK))?;
    let inner = open(datagram, sk, encr, key)?;
    Ok(wire::parse_payload_chain(sk.first_inner, &inner)?)
}

/// Decrypts and verifies `sk` (an SK or SKF payload parsed from
/// `datagram`) and returns its plaintext without padding: the inner payload
/// chain, or for SKF one piece of it.
pub(super) fn open(
    datagram: &[u8],
    sk: &SkPayload,
    encr: Encr,
    key: &[u8],
) -> Result<Vec<u8>, IkeError> {
    let aad = sk
        .associated_data(datagram)
        .ok_or(Misbehaviour::Integrity)?;
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
    Ok(buf)
}
