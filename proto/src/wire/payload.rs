//! Payload bodies (RFC 7296 3.3 to 3.13), payload chains linked by the Next
//! Payload field of the generic payload header (RFC 7296 3.2), and the SK
//! payload framing (RFC 7296 3.14).
//!
//! A chain is parsed by reading each generic header, cutting exactly
//! Payload Length octets, and interpreting the body by the type the previous
//! header (or the IKE header) announced. It must end with Next Payload 0
//! exactly at the end of its octets. The critical bit is kept only for
//! [`Payload::Unknown`]: RFC 7296 2.5 makes it meaningless for types the
//! recipient understands, so known payloads are emitted with it clear.

use super::header::{GenericHeader, GENERIC_HEADER_LEN};
use super::reader::{patch_len16, put_u16, sat_u16, sat_u8, Reader};
use super::{sa, ts};
use super::{
    AuthMethod, AuthPayload, CertEncoding, CertPayload, DeletePayload, DhGroup, FragmentNumbers,
    Header, IdPayload, IdType, KePayload, NotifyPayload, NotifyType, ParsedMessage, Payload,
    PayloadType, ProtocolId, SkPayload, WireError,
};

/// Length of the Fragment Number and Total Fragments fields of SKF (RFC
/// 7383 2.5), after the generic header.
const FRAGMENT_FIELDS_LEN: usize = 4;

/// Smallest Nonce Data length (RFC 7296 3.9).
pub const NONCE_MIN: usize = 16;
/// Largest Nonce Data length (RFC 7296 3.9).
pub const NONCE_MAX: usize = 256;

impl Payload {
    /// Parses the body of one payload of type `ty` (the octets after its
    /// generic header). Types this crate does not interpret, including CP
    /// and EAP, become [`Payload::Unknown`] with `critical`;
    /// the SK type is an error here (see [`super::parse_message`]).
    pub fn parse_body(ty: PayloadType, critical: bool, body: &[u8]) -> Result<Payload, WireError> {
        Ok(match ty {
            PayloadType::SA => Payload::Sa(sa::parse_sa(body)?),
            PayloadType::KE => Payload::Ke(parse_ke(body)?),
            PayloadType::IDI => Payload::IdI(parse_id(body)?),
            PayloadType::IDR => Payload::IdR(parse_id(body)?),
            PayloadType::AUTH => Payload::Auth(parse_auth(body)?),
            PayloadType::CERT => Payload::Cert(parse_cert(body, "CERT payload")?),
            PayloadType::CERTREQ => Payload::CertReq(parse_cert(body, "CERTREQ payload")?),
            PayloadType::NONCE => Payload::Nonce(parse_nonce(body)?),
            PayloadType::NOTIFY => Payload::Notify(parse_notify(body)?),
            PayloadType::DELETE => Payload::Delete(parse_delete(body)?),
            PayloadType::VENDOR_ID => Payload::VendorId(body.to_vec()),
            PayloadType::TSI => Payload::TsI(ts::parse_ts(body)?),
            PayloadType::TSR => Payload::TsR(ts::parse_ts(body)?),
            PayloadType::SK => return Err(WireError::Invalid("SK payload inside an SK payload")),
            PayloadType::SKF => return Err(WireError::Invalid("SKF payload inside an SK payload")),
            _ => Payload::Unknown {
                ty,
                critical,
                body: body.to_vec(),
            },
        })
    }

    /// Appends the body of this payload, without its generic header.
    ///
    /// Fields too small for what they count (more than 255 SPI octets or
    /// transforms, more than 65,535 octets in a payload, ...) saturate,
    /// which yields an encoding every parser rejects; callers keep their
    /// structures within the RFC's limits.
    pub fn emit_body(&self, out: &mut Vec<u8>) {
        match self {
            Payload::Sa(p) => sa::emit_sa(p, out),
            Payload::Ke(p) => {
                put_u16(out, p.group.0);
                put_u16(out, 0);
                out.extend_from_slice(&p.data);
            }
            Payload::IdI(p) | Payload::IdR(p) => out.extend_from_slice(&p.body()),
            Payload::Auth(p) => {
                out.extend_from_slice(&[p.method.0, 0, 0, 0]);
                out.extend_from_slice(&p.data);
            }
            Payload::Cert(p) | Payload::CertReq(p) => {
                out.push(p.encoding.0);
                out.extend_from_slice(&p.data);
            }
            Payload::Nonce(d) | Payload::VendorId(d) => out.extend_from_slice(d),
            Payload::Notify(p) => {
                out.extend_from_slice(&[p.protocol.0, sat_u8(p.spi.len())]);
                put_u16(out, p.ty.0);
                out.extend_from_slice(&p.spi);
                out.extend_from_slice(&p.data);
            }
            Payload::Delete(p) => {
                out.extend_from_slice(&[p.protocol.0, p.spi_size]);
                put_u16(out, sat_u16(p.spis.len()));
                for spi in &p.spis {
                    out.extend_from_slice(spi);
                }
            }
            Payload::TsI(p) | Payload::TsR(p) => ts::emit_ts(p, out),
            Payload::Unknown { body, .. } => out.extend_from_slice(body),
        }
    }

    /// The critical bit this payload is emitted with.
    fn critical(&self) -> bool {
        matches!(self, Payload::Unknown { critical: true, .. })
    }
}

/// Key Exchange payload body (RFC 7296 3.4): group, two reserved octets, data.
fn parse_ke(body: &[u8]) -> Result<KePayload, WireError> {
    let what = "KE payload";
    let mut r = Reader::new(body);
    let group = DhGroup(r.u16(what)?);
    r.skip(2, what)?;
    Ok(KePayload {
        group,
        data: r.rest().to_vec(),
    })
}

/// Identification payload body (RFC 7296 3.5): type, three reserved octets, data.
fn parse_id(body: &[u8]) -> Result<IdPayload, WireError> {
    let what = "ID payload";
    let mut r = Reader::new(body);
    let id_type = IdType(r.u8(what)?);
    r.skip(3, what)?;
    Ok(IdPayload {
        id_type,
        data: r.rest().to_vec(),
    })
}

/// Authentication payload body (RFC 7296 3.8): method, three reserved octets, data.
fn parse_auth(body: &[u8]) -> Result<AuthPayload, WireError> {
    let what = "AUTH payload";
    let mut r = Reader::new(body);
    let method = AuthMethod(r.u8(what)?);
    r.skip(3, what)?;
    Ok(AuthPayload {
        method,
        data: r.rest().to_vec(),
    })
}

/// CERT / CERTREQ body (RFC 7296 3.6, 3.7): one octet of encoding, data.
fn parse_cert(body: &[u8], what: &'static str) -> Result<CertPayload, WireError> {
    let mut r = Reader::new(body);
    let encoding = CertEncoding(r.u8(what)?);
    Ok(CertPayload {
        encoding,
        data: r.rest().to_vec(),
    })
}

/// Nonce payload body (RFC 7296 3.9): 16 to 256 octets of nonce data.
fn parse_nonce(body: &[u8]) -> Result<Vec<u8>, WireError> {
    if (NONCE_MIN..=NONCE_MAX).contains(&body.len()) {
        Ok(body.to_vec())
    } else {
        Err(WireError::Invalid("nonce length"))
    }
}

/// Notify payload body (RFC 7296 3.10): protocol ID, SPI size, type, SPI, data.
fn parse_notify(body: &[u8]) -> Result<NotifyPayload, WireError> {
    let what = "Notify payload";
    let mut r = Reader::new(body);
    let protocol = ProtocolId(r.u8(what)?);
    let spi_size = r.u8(what)?;
    let ty = NotifyType(r.u16(what)?);
    let spi = r.take(usize::from(spi_size), "Notify SPI")?.to_vec();
    Ok(NotifyPayload {
        protocol,
        spi,
        ty,
        data: r.rest().to_vec(),
    })
}

/// Delete payload body (RFC 7296 3.11): protocol ID, SPI size, number of
/// SPIs, the SPIs, which must fill the body exactly. A zero SPI size (an IKE
/// SA) with a non-zero number of SPIs is invalid.
fn parse_delete(body: &[u8]) -> Result<DeletePayload, WireError> {
    let what = "Delete payload";
    let mut r = Reader::new(body);
    let protocol = ProtocolId(r.u8(what)?);
    let spi_size = r.u8(what)?;
    let count = r.u16(what)?;
    if spi_size == 0 && count != 0 {
        return Err(WireError::Invalid("Delete SPI count with zero SPI size"));
    }
    let total = usize::from(spi_size).saturating_mul(usize::from(count));
    if total != r.remaining() {
        return Err(WireError::BadLength {
            what,
            len: body.len(),
        });
    }
    let mut spis = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        spis.push(r.take(usize::from(spi_size), "Delete SPI")?.to_vec());
    }
    r.finish(what)?;
    Ok(DeletePayload {
        protocol,
        spi_size,
        spis,
    })
}

/// Parses a payload chain that starts with type `first` and must fill
/// `bytes` exactly. If `allow_sk`, an SK or SKF payload ends the chain: it
/// must reach the end of `bytes`, and `base` (the offset of `bytes` in the
/// datagram) is added to its offset.
pub(super) fn parse_chain(
    first: PayloadType,
    bytes: &[u8],
    base: usize,
    allow_sk: bool,
) -> Result<(Vec<Payload>, Option<SkPayload>), WireError> {
    let mut r = Reader::new(bytes);
    let mut next = first;
    let mut payloads = Vec::new();
    while next != PayloadType::NONE {
        let offset = r.position();
        let g = GenericHeader::parse(&mut r)?;
        let body = r
            .sub(g.length, GENERIC_HEADER_LEN, GENERIC_HEADER_LEN, "payload")?
            .rest();
        if (next == PayloadType::SK || next == PayloadType::SKF) && allow_sk {
            if !r.is_empty() {
                return Err(WireError::SkNotLast);
            }
            let (fragment, body) = if next == PayloadType::SKF {
                let (numbers, rest) = parse_fragment_numbers(body)?;
                (Some(numbers), rest)
            } else {
                (None, body)
            };
            let sk = SkPayload {
                first_inner: g.next,
                offset: base.saturating_add(offset),
                fragment,
                body: body.to_vec(),
            };
            return Ok((payloads, Some(sk)));
        }
        payloads.push(Payload::parse_body(next, g.critical, body)?);
        next = g.next;
    }
    r.finish("payload chain")?;
    Ok((payloads, None))
}

/// Splits the Fragment Number and Total Fragments fields (RFC 7383 2.5)
/// off an SKF body: the number counts from 1 and is at most the total.
fn parse_fragment_numbers(body: &[u8]) -> Result<(FragmentNumbers, &[u8]), WireError> {
    let mut r = Reader::new(body);
    let what = "SKF payload";
    let number = r.u16(what)?;
    let total = r.u16(what)?;
    if number == 0 || total == 0 || number > total {
        return Err(WireError::Invalid(
            "SKF Fragment Number (0, or above Total Fragments)",
        ));
    }
    Ok((FragmentNumbers { number, total }, r.rest()))
}

/// Appends one payload with its generic header.
fn emit_payload(p: &Payload, next: PayloadType, out: &mut Vec<u8>) {
    let start = out.len();
    GenericHeader {
        next,
        critical: p.critical(),
        length: 0,
    }
    .emit(out);
    p.emit_body(out);
    patch_len16(out, start, 2);
}

/// Appends a chain; see [`super::emit_payload_chain`].
pub(super) fn emit_chain(
    payloads: &[Payload],
    last_next: PayloadType,
    out: &mut Vec<u8>,
) -> PayloadType {
    for (i, p) in payloads.iter().enumerate() {
        let next = payloads
            .get(i.saturating_add(1))
            .map_or(last_next, Payload::payload_type);
        emit_payload(p, next, out);
    }
    payloads.first().map_or(last_next, Payload::payload_type)
}

/// Writes the Next Payload and Length fields of the header at the start of
/// `out` (which holds the whole message).
fn patch_header(out: &mut [u8], next: PayloadType) {
    let len = u32::try_from(out.len()).unwrap_or(u32::MAX).to_be_bytes();
    if let Some(n) = out.get_mut(16) {
        *n = next.0;
    }
    if let Some(field) = out.get_mut(24..28) {
        field.copy_from_slice(&len);
    }
}

/// See [`super::emit_message`].
pub(super) fn emit_message(header: &Header, payloads: &[Payload]) -> Vec<u8> {
    let mut out = Vec::new();
    header.emit(&mut out);
    let first = emit_chain(payloads, PayloadType::NONE, &mut out);
    patch_header(&mut out, first);
    out
}

/// Emits the start of a message whose last payload is SK (RFC 7296 3.14):
/// the IKE header, the plain `payloads`, and the SK generic header with Next
/// Payload `first_inner`, with every length field (the header's and SK's)
/// already counting the `sk_body_len` octets of IV, ciphertext and ICV that
/// the caller appends. The returned octets are exactly the AEAD associated
/// data of RFC 5282 5.1.
pub fn emit_sk_prefix(
    header: &Header,
    payloads: &[Payload],
    first_inner: PayloadType,
    sk_body_len: usize,
) -> Vec<u8> {
    emit_encrypted_prefix(header, payloads, first_inner, None, sk_body_len)
}

/// [`emit_sk_prefix`] for an Encrypted Fragment payload (SKF, RFC 7383
/// 2.5): the generic header is followed by the Fragment Number and Total
/// Fragments fields, which the lengths and the returned associated data
/// include.
pub fn emit_skf_prefix(
    header: &Header,
    payloads: &[Payload],
    first_inner: PayloadType,
    fragment: FragmentNumbers,
    body_len: usize,
) -> Vec<u8> {
    emit_encrypted_prefix(header, payloads, first_inner, Some(fragment), body_len)
}

/// See [`emit_sk_prefix`] and [`emit_skf_prefix`].
fn emit_encrypted_prefix(
    header: &Header,
    payloads: &[Payload],
    first_inner: PayloadType,
    fragment: Option<FragmentNumbers>,
    sk_body_len: usize,
) -> Vec<u8> {
    let mut out = Vec::new();
    header.emit(&mut out);
    let (ty, fields) = match fragment {
        Some(_) => (PayloadType::SKF, FRAGMENT_FIELDS_LEN),
        None => (PayloadType::SK, 0),
    };
    let first = emit_chain(payloads, ty, &mut out);
    let sk_len = sat_u16(
        sk_body_len
            .saturating_add(fields)
            .saturating_add(GENERIC_HEADER_LEN),
    );
    GenericHeader {
        next: first_inner,
        critical: false,
        length: sk_len,
    }
    .emit(&mut out);
    if let Some(f) = fragment {
        put_u16(&mut out, f.number);
        put_u16(&mut out, f.total);
    }
    patch_header(&mut out, first);
    let total = out.len().saturating_add(sk_body_len);
    if let Some(field) = out.get_mut(24..28) {
        field.copy_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_be_bytes());
    }
    out
}

impl ParsedMessage {
    /// Re-emits the whole message: the header (Next Payload and Length
    /// recomputed), the plain payloads, and the SK payload if any.
    pub fn emit(&self) -> Vec<u8> {
        match &self.sk {
            None => emit_message(&self.header, &self.payloads),
            Some(sk) => {
                let mut out = emit_encrypted_prefix(
                    &self.header,
                    &self.payloads,
                    sk.first_inner,
                    sk.fragment,
                    sk.body.len(),
                );
                out.extend_from_slice(&sk.body);
                out
            }
        }
    }
}

impl SkPayload {
    /// The AEAD associated data for this SK payload (RFC 5282 5.1): the
    /// datagram up to and including the SK generic header, and for SKF the
    /// Fragment Number and Total Fragments fields (RFC 7383 2.5: the
    /// unencrypted part up to the IV). `None` if `datagram` is too short (it
    /// is not the one this was parsed from).
    pub fn associated_data<'a>(&self, datagram: &'a [u8]) -> Option<&'a [u8]> {
        let fields = if self.fragment.is_some() {
            FRAGMENT_FIELDS_LEN
        } else {
            0
        };
        datagram.get(..self.offset.checked_add(GENERIC_HEADER_LEN + fields)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emit_one(p: &Payload) -> Vec<u8> {
        let mut out = Vec::new();
        emit_payload(p, PayloadType::NONE, &mut out);
        out
    }

    fn parse_one(ty: PayloadType, bytes: &[u8]) -> Result<Vec<Payload>, WireError> {
        parse_chain(ty, bytes, 0, false).map(|(p, _)| p)
    }

    #[test]
    fn ke_encoding_is_exact() {
        let ke = Payload::Ke(KePayload {
            group: DhGroup::CURVE25519,
            data: vec![0xaa, 0xbb, 0xcc],
        });
        let bytes = emit_one(&ke);
        assert_eq!(
            bytes,
            [0x00, 0x00, 0x00, 0x0b, 0x00, 0x1f, 0x00, 0x00, 0xaa, 0xbb, 0xcc]
        );
        assert_eq!(parse_one(PayloadType::KE, &bytes), Ok(vec![ke.clone()]));
        // Reserved octets and the critical bit of a known payload are ignored.
        let mut b = bytes.clone();
        b[1] = 0xff;
        b[6] = 0x12;
        b[7] = 0x34;
        assert_eq!(parse_one(PayloadType::KE, &b), Ok(vec![ke]));
        assert!(parse_one(PayloadType::KE, &[0, 0, 0, 7, 0, 0x1f, 0]).is_err());
    }

    #[test]
    fn notify_and_delete_encodings_are_exact() {
        let n = Payload::Notify(NotifyPayload {
            protocol: ProtocolId::ESP,
            spi: vec![1, 2, 3, 4],
            ty: NotifyType::REKEY_SA,
            data: vec![9],
        });
        assert_eq!(emit_one(&n), [0, 0, 0, 13, 3, 4, 0x40, 0x09, 1, 2, 3, 4, 9]);
        let d = Payload::Delete(DeletePayload {
            protocol: ProtocolId::ESP,
            spi_size: 2,
            spis: vec![vec![1, 2], vec![3, 4]],
        });
        assert_eq!(emit_one(&d), [0, 0, 0, 12, 3, 2, 0, 2, 1, 2, 3, 4]);
        let ike = Payload::Delete(DeletePayload {
            protocol: ProtocolId::IKE,
            spi_size: 0,
            spis: vec![],
        });
        assert_eq!(emit_one(&ike), [0, 0, 0, 8, 1, 0, 0, 0]);
        for p in [n, d, ike] {
            assert_eq!(parse_one(p.payload_type(), &emit_one(&p)), Ok(vec![p]));
        }
    }

    #[test]
    fn every_payload_body_round_trips() {
        let payloads = [
            Payload::IdI(IdPayload {
                id_type: IdType::ID_FQDN,
                data: b"a.example".to_vec(),
            }),
            Payload::IdR(IdPayload {
                id_type: IdType::ID_IPV4_ADDR,
                data: vec![192, 0, 2, 1],
            }),
            Payload::Auth(AuthPayload {
                method: AuthMethod::SHARED_KEY_MIC,
                data: vec![7; 32],
            }),
            Payload::Nonce(vec![1; 16]),
            Payload::Nonce(vec![2; 256]),
            Payload::VendorId(vec![]),
            Payload::VendorId(b"aokd".to_vec()),
            Payload::Notify(NotifyPayload {
                protocol: ProtocolId::NONE,
                spi: vec![],
                ty: NotifyType::COOKIE,
                data: vec![],
            }),
            Payload::Cert(CertPayload {
                encoding: CertEncoding::X509_SIGNATURE,
                data: vec![0x30, 3, 2, 1, 0],
            }),
            Payload::CertReq(CertPayload {
                encoding: CertEncoding::X509_SIGNATURE,
                data: vec![0xab; 40],
            }),
            Payload::Unknown {
                ty: PayloadType::CP,
                critical: false,
                body: vec![4, 5],
            },
            Payload::Unknown {
                ty: PayloadType(200),
                critical: true,
                body: vec![],
            },
        ];
        for p in payloads {
            let bytes = emit_one(&p);
            assert_eq!(
                parse_one(p.payload_type(), &bytes),
                Ok(vec![p.clone()]),
                "{p:?}"
            );
            for n in 0..bytes.len() {
                assert!(
                    parse_one(p.payload_type(), &bytes[..n]).is_err(),
                    "{p:?} prefix {n}"
                );
            }
        }
    }

    #[test]
    fn unknown_keeps_critical_bit() {
        let bytes = [0, 0x80, 0, 6, 0xab, 0xcd];
        let p = parse_one(PayloadType(99), &bytes).unwrap();
        assert_eq!(
            p,
            vec![Payload::Unknown {
                ty: PayloadType(99),
                critical: true,
                body: vec![0xab, 0xcd]
            }]
        );
        assert_eq!(emit_one(&p[0]), bytes);
        // Reserved bits next to it are dropped.
        let p = parse_one(PayloadType(99), &[0, 0xff, 0, 4]).unwrap();
        assert_eq!(emit_one(&p[0]), [0, 0x80, 0, 4]);
    }

    #[test]
    fn nonce_length_limits() {
        for len in [0usize, 1, 15, 257, 300] {
            let total = u16::try_from(len + 4).unwrap().to_be_bytes();
            let mut bytes = vec![0, 0, total[0], total[1]];
            bytes.resize(len + 4, 5);
            assert_eq!(
                parse_one(PayloadType::NONCE, &bytes),
                Err(WireError::Invalid("nonce length")),
                "{len}"
            );
        }
    }

    #[test]
    fn delete_spis_must_fill_the_body() {
        let ok = [0, 0, 0, 12, 3, 4, 0, 2, 1, 2, 3, 4];
        assert!(parse_one(PayloadType::DELETE, &ok).is_err()); // 2 x 4 != 4
        let ok = [0, 0, 0, 12, 3, 4, 0, 1, 1, 2, 3, 4];
        assert!(parse_one(PayloadType::DELETE, &ok).is_ok());
        let extra = [0, 0, 0, 13, 3, 4, 0, 1, 1, 2, 3, 4, 5];
        assert!(parse_one(PayloadType::DELETE, &extra).is_err());
        let zero = [0, 0, 0, 8, 1, 0, 0, 3];
        assert_eq!(
            parse_one(PayloadType::DELETE, &zero),
            Err(WireError::Invalid("Delete SPI count with zero SPI size"))
        );
        let max = [0, 0, 0, 8, 3, 255, 255, 255];
        assert!(parse_one(PayloadType::DELETE, &max).is_err());
    }

    #[test]
    fn notify_spi_must_fit() {
        assert!(parse_one(PayloadType::NOTIFY, &[0, 0, 0, 10, 3, 4, 0, 1, 1, 2]).is_err());
        assert!(parse_one(PayloadType::NOTIFY, &[0, 0, 0, 7, 3, 0, 0]).is_err());
    }

    #[test]
    fn id_and_auth_need_their_fixed_part() {
        for ty in [PayloadType::CERT, PayloadType::CERTREQ] {
            assert!(parse_one(ty, &[0, 0, 0, 4]).is_err());
            assert!(parse_one(ty, &[0, 0, 0, 5, 4]).is_ok());
        }
        for ty in [PayloadType::IDI, PayloadType::IDR, PayloadType::AUTH] {
            assert!(parse_one(ty, &[0, 0, 0, 7, 1, 0, 0]).is_err());
            assert!(parse_one(ty, &[0, 0, 0, 8, 1, 0, 0, 0]).is_ok());
        }
    }

    #[test]
    fn sk_prefix_and_associated_data() {
        let h = Header {
            spi_i: 1,
            spi_r: 2,
            next_payload: PayloadType::NONE,
            version: 0x20,
            exchange: crate::numbers::ExchangeType::IKE_AUTH,
            flags: 0x08,
            message_id: 1,
            length: 0,
        };
        let body = [0x5a; 40];
        let mut m = emit_sk_prefix(&h, &[], PayloadType::IDI, body.len());
        assert_eq!(m.len(), 32);
        assert_eq!(&m[28..], [35, 0, 0, 44]);
        m.extend_from_slice(&body);
        let parsed = super::super::parse_message(&m).unwrap();
        assert_eq!(parsed.header.next_payload, PayloadType::SK);
        assert_eq!(parsed.header.length, 72);
        let sk = parsed.sk.unwrap();
        assert_eq!(
            sk,
            SkPayload {
                first_inner: PayloadType::IDI,
                offset: 28,
                fragment: None,
                body: body.to_vec()
            }
        );
        assert_eq!(sk.associated_data(&m), Some(&m[..32]));
        assert_eq!(sk.associated_data(&m[..31]), None);
    }

    #[test]
    fn skf_prefix_numbers_and_associated_data() {
        let h = Header {
            spi_i: 1,
            spi_r: 2,
            next_payload: PayloadType::NONE,
            version: 0x20,
            exchange: crate::numbers::ExchangeType::IKE_AUTH,
            flags: 0x08,
            message_id: 1,
            length: 0,
        };
        let body = [0x5a; 40];
        let numbers = FragmentNumbers {
            number: 2,
            total: 3,
        };
        let mut m = emit_skf_prefix(&h, &[], PayloadType::NONE, numbers, body.len());
        assert_eq!(m.len(), 36);
        assert_eq!(&m[28..], [0, 0, 0, 48, 0, 2, 0, 3]);
        m.extend_from_slice(&body);
        let parsed = super::super::parse_message(&m).unwrap();
        assert_eq!(parsed.header.next_payload, PayloadType::SKF);
        assert_eq!(parsed.header.length, 76);
        let sk = parsed.sk.clone().unwrap();
        assert_eq!(sk.fragment, Some(numbers));
        assert_eq!(sk.body, body);
        assert_eq!(sk.associated_data(&m), Some(&m[..36]));
        assert_eq!(parsed.emit(), m);
        // Fragment Number 0, or above Total Fragments; fields cut short.
        for (at, v) in [(33, 0u8), (33, 4), (35, 0)] {
            let mut b = m.clone();
            b[at] = v;
            assert!(super::super::parse_message(&b).is_err(), "{at} {v}");
        }
        let mut short = emit_skf_prefix(&h, &[], PayloadType::NONE, numbers, 0);
        short.truncate(34);
        short[31] = 6;
        short[27] = 34;
        assert!(super::super::parse_message(&short).is_err());
        // SKF inside SK.
        assert!(parse_one(PayloadType::SKF, &[0, 0, 0, 8, 0, 1, 0, 1]).is_err());
    }
}
