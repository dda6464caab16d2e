//! IKEv2 wire codec (RFC 7296 section 3): the header and the payloads aokd
//! uses, parsed and emitted without panicking on any input.
//!
//! Parsing is bounds-checked: every length field is checked against the
//! octets that remain, nested lengths are bounded by their container, and
//! trailing octets are rejected. Unknown payload types are kept as
//! [`Payload::Unknown`] with their critical bit, so the exchange layer can
//! answer UNSUPPORTED_CRITICAL_PAYLOAD (RFC 7296 2.5). The SK payload
//! (RFC 7296 3.14) and the Encrypted Fragment payload (SKF, RFC 7383 2.5)
//! are returned raw as [`SkPayload`]: decryption lives in `crate::ike::sk`,
//! which parses the inner chain with [`parse_payload_chain`].

use std::net::IpAddr;

use crate::numbers::*;

mod header;
mod payload;
mod reader;
mod sa;
#[cfg(test)]
mod tests;
mod ts;

pub use header::GENERIC_HEADER_LEN;
pub use payload::{emit_sk_prefix, emit_skf_prefix, NONCE_MAX, NONCE_MIN};

/// Errors from parsing octets that do not form a valid IKEv2 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer octets than a field or a length needs.
    #[error("truncated {what}: need {need} octets, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    /// A length field that is impossible for its structure.
    #[error("invalid length {len} in {what}")]
    BadLength { what: &'static str, len: usize },
    /// Octets after the end of a structure.
    #[error("{0} trailing octets after {1}")]
    Trailing(usize, &'static str),
    /// An IKE major version other than 2.
    #[error("unsupported IKE major version {0}")]
    Version(u8),
    /// A field with a value the RFC forbids (for example a zero-length nonce).
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// An SK or SKF payload that is not the last payload of the message.
    #[error("SK payload is not the last payload")]
    SkNotLast,
}

/// Header flag: the sender is the original initiator of the IKE SA.
pub const FLAG_INITIATOR: u8 = 0x08;
/// Header flag: the sender can speak a higher major version.
pub const FLAG_VERSION: u8 = 0x10;
/// Header flag: this message is a response.
pub const FLAG_RESPONSE: u8 = 0x20;

/// The IKE header (RFC 7296 3.1), 28 octets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub spi_i: u64,
    pub spi_r: u64,
    pub next_payload: PayloadType,
    /// Major version in the high nibble, minor in the low (0x20 for IKEv2).
    pub version: u8,
    pub exchange: ExchangeType,
    pub flags: u8,
    pub message_id: u32,
    /// Total message length including the header.
    pub length: u32,
}

impl Header {
    pub const LEN: usize = 28;

    /// Parses the first 28 octets; the rest of `bytes` is not looked at.
    pub fn parse(bytes: &[u8]) -> Result<Header, WireError> {
        header::parse(bytes)
    }

    /// Appends the 28 header octets to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        header::emit(self, out)
    }

    /// The R flag.
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    /// The I flag: sent by the original initiator.
    pub fn is_initiator(&self) -> bool {
        self.flags & FLAG_INITIATOR != 0
    }
}

/// A transform attribute (RFC 7296 3.3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    /// Type/Value format (AF bit set); the Key Length attribute uses this.
    Tv { ty: u16, value: u16 },
    /// Type/Length/Value format.
    Tlv { ty: u16, value: Vec<u8> },
}

/// A transform substructure (RFC 7296 3.3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transform {
    pub ty: TransformType,
    pub id: u16,
    pub attrs: Vec<Attribute>,
}

/// A proposal substructure (RFC 7296 3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub num: u8,
    pub protocol: ProtocolId,
    pub spi: Vec<u8>,
    pub transforms: Vec<Transform>,
}

/// Security Association payload (RFC 7296 3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaPayload {
    pub proposals: Vec<Proposal>,
}

/// Key Exchange payload (RFC 7296 3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KePayload {
    pub group: DhGroup,
    pub data: Vec<u8>,
}

/// Identification payload, IDi or IDr (RFC 7296 3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPayload {
    pub id_type: IdType,
    pub data: Vec<u8>,
}

/// Authentication payload (RFC 7296 3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPayload {
    pub method: AuthMethod,
    pub data: Vec<u8>,
}

/// Certificate payload (RFC 7296 3.6) or Certificate Request payload (3.7):
/// the encoding and its data (a DER certificate; for CERTREQ, the
/// concatenated SHA-1 hashes of the CAs' SubjectPublicKeyInfo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPayload {
    pub encoding: CertEncoding,
    pub data: Vec<u8>,
}

/// Notify payload (RFC 7296 3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyPayload {
    pub protocol: ProtocolId,
    pub spi: Vec<u8>,
    pub ty: NotifyType,
    pub data: Vec<u8>,
}

/// Delete payload (RFC 7296 3.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletePayload {
    pub protocol: ProtocolId,
    pub spi_size: u8,
    pub spis: Vec<Vec<u8>>,
}

/// One traffic selector (RFC 7296 3.13.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrafficSelector {
    /// TS_IPV4_ADDR_RANGE or TS_IPV6_ADDR_RANGE (both addresses of one family).
    Range {
        ip_protocol: u8,
        start_port: u16,
        end_port: u16,
        start_addr: IpAddr,
        end_addr: IpAddr,
    },
    /// A selector type this crate does not interpret, kept as its body.
    Other { ts_type: TsType, body: Vec<u8> },
}

/// Traffic Selector payload, TSi or TSr (RFC 7296 3.13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsPayload {
    pub selectors: Vec<TrafficSelector>,
}

/// The SK payload (RFC 7296 3.14), or the Encrypted Fragment payload SKF
/// (RFC 7383 2.5) when `fragment` is set, as it appears in a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkPayload {
    /// The Next Payload field of the SK header: type of the first inner
    /// payload (of the whole message: 0 in SKF fragments other than the
    /// first, RFC 7383 2.5).
    pub first_inner: PayloadType,
    /// Offset of the SK generic payload header in the datagram; the AEAD
    /// associated data is the datagram up to the IV (RFC 5282 5.1): its
    /// first `offset + 4` octets, `offset + 8` for SKF
    /// ([`SkPayload::associated_data`]).
    pub offset: usize,
    /// SKF: the Fragment Number and Total Fragments fields.
    pub fragment: Option<FragmentNumbers>,
    /// IV, ciphertext and ICV.
    pub body: Vec<u8>,
}

/// The Fragment Number and Total Fragments fields of an SKF payload (RFC
/// 7383 2.5); parsing guarantees `1 <= number <= total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentNumbers {
    pub number: u16,
    pub total: u16,
}

/// Any payload except SK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Sa(SaPayload),
    Ke(KePayload),
    IdI(IdPayload),
    IdR(IdPayload),
    Auth(AuthPayload),
    Cert(CertPayload),
    CertReq(CertPayload),
    Nonce(Vec<u8>),
    Notify(NotifyPayload),
    Delete(DeletePayload),
    VendorId(Vec<u8>),
    TsI(TsPayload),
    TsR(TsPayload),
    /// A payload type this crate does not interpret, kept with its critical bit.
    Unknown {
        ty: PayloadType,
        critical: bool,
        body: Vec<u8>,
    },
}

/// A datagram split into header, plain payloads, and the SK payload if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedMessage {
    pub header: Header,
    /// Payloads before SK (all payloads of an unencrypted message).
    pub payloads: Vec<Payload>,
    pub sk: Option<SkPayload>,
}

/// Parses a whole datagram: header, then the payload chain. Stops at an SK
/// or SKF payload, which must be last. `header.length` must equal `datagram.len()`.
pub fn parse_message(datagram: &[u8]) -> Result<ParsedMessage, WireError> {
    let header = Header::parse(datagram)?;
    let length = usize::try_from(header.length).unwrap_or(usize::MAX);
    if length < Header::LEN {
        return Err(WireError::BadLength {
            what: "IKE header",
            len: length,
        });
    }
    if length > datagram.len() {
        return Err(WireError::Truncated {
            what: "message",
            need: length,
            have: datagram.len(),
        });
    }
    if length < datagram.len() {
        return Err(WireError::Trailing(datagram.len() - length, "message"));
    }
    let chain = datagram.get(Header::LEN..).unwrap_or(&[]);
    let (payloads, sk) = payload::parse_chain(header.next_payload, chain, Header::LEN, true)?;
    Ok(ParsedMessage {
        header,
        payloads,
        sk,
    })
}

/// Parses a chain of payloads starting with type `first` that must exactly
/// fill `bytes` (used for the decrypted contents of SK). An SK or SKF
/// payload inside is an error.
pub fn parse_payload_chain(first: PayloadType, bytes: &[u8]) -> Result<Vec<Payload>, WireError> {
    payload::parse_chain(first, bytes, 0, false).map(|(payloads, _)| payloads)
}

/// Appends `payloads` with their generic headers to `out`; the last one's
/// Next Payload is `last_next` (for example [`PayloadType::SK`] is never
/// needed; pass [`PayloadType::NONE`] normally). Returns the type of the
/// first payload ([`PayloadType::NONE`] if `payloads` is empty, in which case
/// `last_next` is returned).
pub fn emit_payload_chain(
    payloads: &[Payload],
    last_next: PayloadType,
    out: &mut Vec<u8>,
) -> PayloadType {
    payload::emit_chain(payloads, last_next, out)
}

/// Emits a plain (unencrypted) message; `header.next_payload` and
/// `header.length` are set from the payloads.
pub fn emit_message(header: &Header, payloads: &[Payload]) -> Vec<u8> {
    payload::emit_message(header, payloads)
}

impl Payload {
    /// The payload type number of this payload.
    pub fn payload_type(&self) -> PayloadType {
        match self {
            Payload::Sa(_) => PayloadType::SA,
            Payload::Ke(_) => PayloadType::KE,
            Payload::IdI(_) => PayloadType::IDI,
            Payload::IdR(_) => PayloadType::IDR,
            Payload::Auth(_) => PayloadType::AUTH,
            Payload::Cert(_) => PayloadType::CERT,
            Payload::CertReq(_) => PayloadType::CERTREQ,
            Payload::Nonce(_) => PayloadType::NONCE,
            Payload::Notify(_) => PayloadType::NOTIFY,
            Payload::Delete(_) => PayloadType::DELETE,
            Payload::VendorId(_) => PayloadType::VENDOR_ID,
            Payload::TsI(_) => PayloadType::TSI,
            Payload::TsR(_) => PayloadType::TSR,
            Payload::Unknown { ty, .. } => *ty,
        }
    }

    /// The SA payload, if this is one. These accessors serve lookups such as
    /// `payloads.iter().find_map(Payload::as_sa)` (the IKE layer wraps that
    /// as `find_payload`).
    pub fn as_sa(&self) -> Option<&SaPayload> {
        match self {
            Payload::Sa(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_ke(&self) -> Option<&KePayload> {
        match self {
            Payload::Ke(k) => Some(k),
            _ => None,
        }
    }

    pub fn as_idi(&self) -> Option<&IdPayload> {
        match self {
            Payload::IdI(i) => Some(i),
            _ => None,
        }
    }

    pub fn as_idr(&self) -> Option<&IdPayload> {
        match self {
            Payload::IdR(i) => Some(i),
            _ => None,
        }
    }

    pub fn as_auth(&self) -> Option<&AuthPayload> {
        match self {
            Payload::Auth(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_cert(&self) -> Option<&CertPayload> {
        match self {
            Payload::Cert(c) => Some(c),
            _ => None,
        }
    }

    pub fn as_certreq(&self) -> Option<&CertPayload> {
        match self {
            Payload::CertReq(c) => Some(c),
            _ => None,
        }
    }

    /// The nonce data, if this is a Nonce payload.
    pub fn as_nonce(&self) -> Option<&[u8]> {
        match self {
            Payload::Nonce(n) => Some(n),
            _ => None,
        }
    }

    pub fn as_notify(&self) -> Option<&NotifyPayload> {
        match self {
            Payload::Notify(n) => Some(n),
            _ => None,
        }
    }

    pub fn as_delete(&self) -> Option<&DeletePayload> {
        match self {
            Payload::Delete(d) => Some(d),
            _ => None,
        }
    }

    pub fn as_tsi(&self) -> Option<&TsPayload> {
        match self {
            Payload::TsI(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_tsr(&self) -> Option<&TsPayload> {
        match self {
            Payload::TsR(t) => Some(t),
            _ => None,
        }
    }
}

impl ParsedMessage {
    /// The first unknown payload with the critical bit set (RFC 7296 2.5).
    pub fn unsupported_critical(&self) -> Option<PayloadType> {
        self.payloads.iter().find_map(|p| match p {
            Payload::Unknown {
                ty, critical: true, ..
            } => Some(*ty),
            _ => None,
        })
    }
}

impl Transform {
    /// A transform without attributes.
    pub fn new(ty: TransformType, id: u16) -> Self {
        Transform {
            ty,
            id,
            attrs: Vec::new(),
        }
    }

    /// A transform with a Key Length attribute in bits.
    pub fn with_key_length(ty: TransformType, id: u16, bits: u16) -> Self {
        Transform {
            ty,
            id,
            attrs: vec![Attribute::Tv {
                ty: ATTR_KEY_LENGTH,
                value: bits,
            }],
        }
    }

    /// The Key Length attribute, if present.
    pub fn key_length(&self) -> Option<u16> {
        self.attrs.iter().find_map(|a| match a {
            Attribute::Tv { ty, value } if *ty == ATTR_KEY_LENGTH => Some(*value),
            _ => None,
        })
    }
}

impl IdPayload {
    /// RestOfIDPayload (RFC 7296 2.15): ID Type, three reserved octets, data.
    pub fn body(&self) -> Vec<u8> {
        let mut v = vec![self.id_type.0, 0, 0, 0];
        v.extend_from_slice(&self.data);
        v
    }
}
