//! The Security Association payload (RFC 7296 3.3): proposals (3.3.1),
//! transforms (3.3.2) and transform attributes (3.3.5).
//!
//! Every substructure length must nest exactly inside its container, the
//! Last Substruct octets must say 0 on the last substructure and 2 (proposal)
//! or 3 (transform) on the others, and a proposal's declared number of
//! transforms must match the transforms it contains.

use super::reader::{patch_len16, put_u16, sat_u16, sat_u8, Reader};
use super::{Attribute, Proposal, ProtocolId, SaPayload, Transform, TransformType, WireError};

/// Last Substruct value of a proposal followed by another (RFC 7296 3.3.1).
const MORE_PROPOSALS: u8 = 2;
/// Last Substruct value of a transform followed by another (RFC 7296 3.3.2).
const MORE_TRANSFORMS: u8 = 3;
/// Attribute Format bit: set for Type/Value attributes (RFC 7296 3.3.5).
const AF: u16 = 0x8000;

/// Fixed part of a proposal substructure (RFC 7296 3.3.1).
const PROPOSAL_HEADER_LEN: usize = 8;
/// Fixed part of a transform substructure (RFC 7296 3.3.2).
const TRANSFORM_HEADER_LEN: usize = 8;

/// Checks a Last Substruct octet against whether more substructures follow.
fn check_last(last: u8, more_value: u8, more: bool, what: &'static str) -> Result<(), WireError> {
    let expected = if more { more_value } else { 0 };
    if last == expected {
        Ok(())
    } else {
        Err(WireError::Invalid(what))
    }
}

/// Parses the body of an SA payload (after the generic header, RFC 7296 3.3).
pub(super) fn parse_sa(body: &[u8]) -> Result<SaPayload, WireError> {
    let mut r = Reader::new(body);
    let mut proposals = Vec::new();
    while !r.is_empty() {
        proposals.push(parse_proposal(&mut r)?);
    }
    Ok(SaPayload { proposals })
}

/// Parses one proposal substructure (RFC 7296 3.3.1).
fn parse_proposal(r: &mut Reader<'_>) -> Result<Proposal, WireError> {
    let what = "proposal";
    let last = r.u8(what)?;
    r.skip(1, what)?;
    let len = r.u16(what)?;
    let mut p = r.sub(len, 4, PROPOSAL_HEADER_LEN, what)?;
    check_last(
        last,
        MORE_PROPOSALS,
        !r.is_empty(),
        "proposal last substruct",
    )?;
    let num = p.u8(what)?;
    let protocol = ProtocolId(p.u8(what)?);
    let spi_size = p.u8(what)?;
    let num_transforms = p.u8(what)?;
    let spi = p.take(usize::from(spi_size), "proposal SPI")?.to_vec();
    let mut transforms = Vec::new();
    while !p.is_empty() {
        transforms.push(parse_transform(&mut p)?);
    }
    if transforms.len() != usize::from(num_transforms) {
        return Err(WireError::Invalid("proposal number of transforms"));
    }
    Ok(Proposal {
        num,
        protocol,
        spi,
        transforms,
    })
}

/// Parses one transform substructure (RFC 7296 3.3.2).
fn parse_transform(r: &mut Reader<'_>) -> Result<Transform, WireError> {
    let what = "transform";
    let last = r.u8(what)?;
    r.skip(1, what)?;
    let len = r.u16(what)?;
    let mut t = r.sub(len, 4, TRANSFORM_HEADER_LEN, what)?;
    check_last(
        last,
        MORE_TRANSFORMS,
        !r.is_empty(),
        "transform last substruct",
    )?;
    let ty = TransformType(t.u8(what)?);
    t.skip(1, what)?;
    let id = t.u16(what)?;
    let mut attrs = Vec::new();
    while !t.is_empty() {
        attrs.push(parse_attribute(&mut t)?);
    }
    Ok(Transform { ty, id, attrs })
}

/// Parses one data attribute (RFC 7296 3.3.5).
fn parse_attribute(r: &mut Reader<'_>) -> Result<Attribute, WireError> {
    let what = "transform attribute";
    let af_ty = r.u16(what)?;
    let ty = af_ty & !AF;
    if af_ty & AF != 0 {
        Ok(Attribute::Tv {
            ty,
            value: r.u16(what)?,
        })
    } else {
        let len = r.u16(what)?;
        let value = r.take(usize::from(len), what)?.to_vec();
        Ok(Attribute::Tlv { ty, value })
    }
}

/// Appends the body of an SA payload (RFC 7296 3.3).
pub(super) fn emit_sa(sa: &SaPayload, out: &mut Vec<u8>) {
    let count = sa.proposals.len();
    for (i, p) in sa.proposals.iter().enumerate() {
        let more = i.saturating_add(1) < count;
        emit_proposal(p, more, out);
    }
}

/// Appends one proposal substructure (RFC 7296 3.3.1).
fn emit_proposal(p: &Proposal, more: bool, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[if more { MORE_PROPOSALS } else { 0 }, 0, 0, 0]);
    out.extend_from_slice(&[
        p.num,
        p.protocol.0,
        sat_u8(p.spi.len()),
        sat_u8(p.transforms.len()),
    ]);
    out.extend_from_slice(&p.spi);
    let count = p.transforms.len();
    for (i, t) in p.transforms.iter().enumerate() {
        emit_transform(t, i.saturating_add(1) < count, out);
    }
    patch_len16(out, start, 2);
}

/// Appends one transform substructure (RFC 7296 3.3.2).
fn emit_transform(t: &Transform, more: bool, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[if more { MORE_TRANSFORMS } else { 0 }, 0, 0, 0, t.ty.0, 0]);
    put_u16(out, t.id);
    for a in &t.attrs {
        emit_attribute(a, out);
    }
    patch_len16(out, start, 2);
}

/// Appends one data attribute (RFC 7296 3.3.5). The high bit of `ty` is
/// replaced by the Attribute Format bit of the variant.
fn emit_attribute(a: &Attribute, out: &mut Vec<u8>) {
    match a {
        Attribute::Tv { ty, value } => {
            put_u16(out, ty | AF);
            put_u16(out, *value);
        }
        Attribute::Tlv { ty, value } => {
            put_u16(out, ty & !AF);
            put_u16(out, sat_u16(value.len()));
            out.extend_from_slice(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numbers::*;

    fn emit(sa: &SaPayload) -> Vec<u8> {
        let mut out = Vec::new();
        emit_sa(sa, &mut out);
        out
    }

    fn transform_bytes(t: &Transform, more: bool) -> Vec<u8> {
        let mut out = Vec::new();
        emit_transform(t, more, &mut out);
        out
    }

    fn sample() -> SaPayload {
        SaPayload {
            proposals: vec![
                Proposal {
                    num: 1,
                    protocol: ProtocolId::IKE,
                    spi: vec![],
                    transforms: vec![
                        Transform::with_key_length(
                            TransformType::ENCR,
                            EncrId::ENCR_AES_GCM_16.0,
                            256,
                        ),
                        Transform::new(TransformType::PRF, PrfId::PRF_HMAC_SHA2_256.0),
                        Transform::new(TransformType::KE, DhGroup::CURVE25519.0),
                    ],
                },
                Proposal {
                    num: 2,
                    protocol: ProtocolId::TCP_AO,
                    spi: vec![0xde, 0xad, 0xbe, 0xef],
                    transforms: vec![
                        Transform::new(TransformType::INTEG, IntegId::AUTH_HMAC_SHA2_256_128.0),
                        Transform {
                            ty: TransformType(200),
                            id: 0xffff,
                            attrs: vec![
                                Attribute::Tlv {
                                    ty: 0x1234,
                                    value: vec![1, 2, 3],
                                },
                                Attribute::Tlv {
                                    ty: 7,
                                    value: vec![],
                                },
                                Attribute::Tv {
                                    ty: 0x7fff,
                                    value: 0xabcd,
                                },
                            ],
                        },
                    ],
                },
                Proposal {
                    num: 3,
                    protocol: ProtocolId::ESP,
                    spi: vec![9; 8],
                    transforms: vec![],
                },
            ],
        }
    }

    #[test]
    fn key_length_transform_encoding_is_exact() {
        let t = Transform::with_key_length(TransformType::INTEG, 20, 256);
        assert_eq!(
            transform_bytes(&t, true),
            [0x03, 0x00, 0x00, 0x0c, 0x03, 0x00, 0x00, 0x14, 0x80, 0x0e, 0x01, 0x00]
        );
        let t = Transform::with_key_length(TransformType::ENCR, 20, 256);
        assert_eq!(
            transform_bytes(&t, true),
            [0x03, 0x00, 0x00, 0x0c, 0x01, 0x00, 0x00, 0x14, 0x80, 0x0e, 0x01, 0x00]
        );
        let mut r = Reader::new(&[
            0x00, 0x00, 0x00, 0x0c, 0x01, 0x00, 0x00, 0x14, 0x80, 0x0e, 0x01, 0x00,
        ]);
        let back = parse_transform(&mut r).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.key_length(), Some(256));
    }

    #[test]
    fn proposal_encoding_is_exact() {
        let sa = SaPayload {
            proposals: vec![Proposal {
                num: 1,
                protocol: ProtocolId::ESP,
                spi: vec![0xaa, 0xbb, 0xcc, 0xdd],
                transforms: vec![
                    Transform::with_key_length(TransformType::ENCR, 20, 128),
                    Transform::new(TransformType::ESN, 0),
                ],
            }],
        };
        #[rustfmt::skip]
        let expected = [
            0x00, 0x00, 0x00, 0x20, 0x01, 0x03, 0x04, 0x02, 0xaa, 0xbb, 0xcc, 0xdd,
            0x03, 0x00, 0x00, 0x0c, 0x01, 0x00, 0x00, 0x14, 0x80, 0x0e, 0x00, 0x80,
            0x00, 0x00, 0x00, 0x08, 0x05, 0x00, 0x00, 0x00,
        ];
        assert_eq!(emit(&sa), expected);
        assert_eq!(parse_sa(&expected), Ok(sa));
    }

    #[test]
    fn sa_round_trip() {
        let sa = sample();
        let bytes = emit(&sa);
        assert_eq!(parse_sa(&bytes), Ok(sa.clone()));
        assert_eq!(emit(&parse_sa(&bytes).unwrap()), bytes);
        assert_eq!(parse_sa(&[]), Ok(SaPayload { proposals: vec![] }));
    }

    #[test]
    fn reserved_octets_are_ignored_and_emitted_zero() {
        let sa = sample();
        let mut bytes = emit(&sa);
        bytes[1] = 0xff; // proposal reserved
        bytes[9] = 0x55; // first transform reserved (offset 8 + 1)
        bytes[13] = 0x77; // first transform's reserved octet after the type
        assert_eq!(parse_sa(&bytes), Ok(sa.clone()));
        assert_eq!(emit(&sa)[1], 0);
    }

    #[test]
    fn every_truncation_fails() {
        let bytes = emit(&sample());
        for n in 1..bytes.len() {
            assert!(parse_sa(&bytes[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn bad_last_substruct_and_counts_fail() {
        let sa = sample();
        let bytes = emit(&sa);
        let mut b = bytes.clone();
        b[0] = 0; // first proposal claims to be last
        assert_eq!(
            parse_sa(&b),
            Err(WireError::Invalid("proposal last substruct"))
        );
        b[0] = 3;
        assert_eq!(
            parse_sa(&b),
            Err(WireError::Invalid("proposal last substruct"))
        );
        let mut b = bytes.clone();
        b[8] = 0; // first transform claims to be last
        assert_eq!(
            parse_sa(&b),
            Err(WireError::Invalid("transform last substruct"))
        );
        let mut b = bytes.clone();
        b[7] = 2; // first proposal says two transforms, has three
        assert_eq!(
            parse_sa(&b),
            Err(WireError::Invalid("proposal number of transforms"))
        );
        b[7] = 4;
        assert_eq!(
            parse_sa(&b),
            Err(WireError::Invalid("proposal number of transforms"))
        );
        // Last transform of a proposal claiming more.
        let one = SaPayload {
            proposals: vec![Proposal {
                num: 1,
                protocol: ProtocolId::IKE,
                spi: vec![],
                transforms: vec![Transform::new(TransformType::PRF, 5)],
            }],
        };
        let mut b = emit(&one);
        b[8] = 3;
        assert_eq!(
            parse_sa(&b),
            Err(WireError::Invalid("transform last substruct"))
        );
    }

    #[test]
    fn lying_lengths_fail() {
        let bytes = emit(&sample());
        // Proposal length: every value other than the true one fails.
        let true_len = u16::from_be_bytes([bytes[2], bytes[3]]);
        for len in [0u16, 1, 4, 7, 8, 12, true_len - 1, true_len + 1, 0xffff] {
            let mut b = bytes.clone();
            b[2..4].copy_from_slice(&len.to_be_bytes());
            assert!(parse_sa(&b).is_err(), "proposal length {len}");
        }
        // Transform length.
        for len in [0u16, 4, 7, 8, 11, 13, 0xffff] {
            let mut b = bytes.clone();
            b[10..12].copy_from_slice(&len.to_be_bytes());
            assert!(parse_sa(&b).is_err(), "transform length {len}");
        }
        // TLV attribute length running past its transform.
        let t = Transform {
            ty: TransformType(1),
            id: 1,
            attrs: vec![Attribute::Tlv {
                ty: 1,
                value: vec![5],
            }],
        };
        let mut b = transform_bytes(&t, false);
        b[11] = 2;
        assert!(parse_transform(&mut Reader::new(&b)).is_err());
        b[11] = 0;
        assert!(parse_transform(&mut Reader::new(&b)).is_err());
        // A TV attribute cut short by its transform.
        let b = [0, 0, 0, 10, 1, 0, 0, 1, 0x80, 0x0e];
        assert!(parse_transform(&mut Reader::new(&b)).is_err());
    }
}
