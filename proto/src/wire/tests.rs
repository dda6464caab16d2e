//! Whole-message tests of the IKEv2 codec (RFC 7296 section 3): round trips,
//! exact encodings, truncations, lying length fields, trailing octets,
//! critical unknown payloads, and a deterministic mutation fuzz test.

use super::*;

fn header(exchange: ExchangeType, flags: u8, message_id: u32) -> Header {
    Header {
        spi_i: 0x8899_aabb_ccdd_eeff,
        spi_r: if exchange == ExchangeType::IKE_SA_INIT && flags & FLAG_RESPONSE == 0 {
            0
        } else {
            0x0011_2233_4455_6677
        },
        next_payload: PayloadType::NONE,
        version: 0x20,
        exchange,
        flags,
        message_id,
        length: 0,
    }
}

fn ike_proposals() -> SaPayload {
    SaPayload {
        proposals: vec![
            Proposal {
                num: 1,
                protocol: ProtocolId::IKE,
                spi: vec![],
                transforms: vec![
                    Transform::with_key_length(TransformType::ENCR, EncrId::ENCR_AES_GCM_16.0, 256),
                    Transform::new(TransformType::PRF, PrfId::PRF_HMAC_SHA2_256.0),
                    Transform::new(TransformType::KE, DhGroup::CURVE25519.0),
                ],
            },
            Proposal {
                num: 2,
                protocol: ProtocolId::IKE,
                spi: vec![],
                transforms: vec![
                    Transform::new(TransformType::ENCR, EncrId::ENCR_CHACHA20_POLY1305.0),
                    Transform::new(TransformType::PRF, PrfId::PRF_HMAC_SHA2_512.0),
                    Transform::new(TransformType::KE, DhGroup::ECP_256.0),
                    Transform {
                        ty: TransformType(250),
                        id: 3,
                        attrs: vec![Attribute::Tlv {
                            ty: 99,
                            value: vec![1, 2, 3, 4, 5],
                        }],
                    },
                ],
            },
        ],
    }
}

fn ao_proposal() -> SaPayload {
    SaPayload {
        proposals: vec![Proposal {
            num: 1,
            protocol: ProtocolId::TCP_AO,
            spi: vec![0x11, 0x22, 0x33, 0x44],
            transforms: vec![
                Transform::new(TransformType::INTEG, IntegId::AUTH_HMAC_SHA2_256_128.0),
                Transform::new(TransformType::INTEG, IntegId::AUTH_AES_CMAC_96.0),
                Transform::new(TransformType::ESN, 0),
            ],
        }],
    }
}

fn range4(proto: u8, port: u16, a: &str) -> TrafficSelector {
    TrafficSelector::Range {
        ip_protocol: proto,
        start_port: port,
        end_port: port,
        start_addr: a.parse().unwrap(),
        end_addr: a.parse().unwrap(),
    }
}

fn notify(ty: NotifyType, data: &[u8]) -> Payload {
    Payload::Notify(NotifyPayload {
        protocol: ProtocolId::NONE,
        spi: vec![],
        ty,
        data: data.to_vec(),
    })
}

/// Payloads of an IKE_SA_INIT request.
fn sa_init_payloads() -> Vec<Payload> {
    vec![
        Payload::Sa(ike_proposals()),
        Payload::Ke(KePayload {
            group: DhGroup::CURVE25519,
            data: (0..32).collect(),
        }),
        Payload::Nonce((100..132).collect()),
        notify(NotifyType::NAT_DETECTION_SOURCE_IP, &[0xa5; 20]),
        notify(NotifyType::NAT_DETECTION_DESTINATION_IP, &[0x5a; 20]),
        notify(NotifyType::TCP_AO_SUPPORTED, &[]),
        Payload::VendorId(b"aokd-0.1".to_vec()),
    ]
}

/// The inner payloads of an IKE_AUTH request, every interpreted type.
fn auth_payloads() -> Vec<Payload> {
    vec![
        Payload::IdI(IdPayload {
            id_type: IdType::ID_FQDN,
            data: b"r1.example.net".to_vec(),
        }),
        Payload::IdR(IdPayload {
            id_type: IdType::ID_IPV6_ADDR,
            data: vec![0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        }),
        Payload::Auth(AuthPayload {
            method: AuthMethod::SHARED_KEY_MIC,
            data: vec![0x77; 32],
        }),
        notify(NotifyType::INITIAL_CONTACT, &[]),
        Payload::Sa(ao_proposal()),
        Payload::TsI(TsPayload {
            selectors: vec![range4(6, 179, "192.0.2.1")],
        }),
        Payload::TsR(TsPayload {
            selectors: vec![
                range4(6, 179, "192.0.2.2"),
                TrafficSelector::Range {
                    ip_protocol: 6,
                    start_port: 0,
                    end_port: 65535,
                    start_addr: "2001:db8::".parse().unwrap(),
                    end_addr: "2001:db8::ffff".parse().unwrap(),
                },
                TrafficSelector::Other {
                    ts_type: TsType(9),
                    body: vec![0, 1, 2, 3, 4, 5, 6, 7],
                },
            ],
        }),
        Payload::Delete(DeletePayload {
            protocol: ProtocolId::TCP_AO,
            spi_size: 4,
            spis: vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]],
        }),
        Payload::Notify(NotifyPayload {
            protocol: ProtocolId::TCP_AO,
            spi: vec![9, 9, 9, 9],
            ty: NotifyType::REKEY_SA,
            data: vec![],
        }),
        Payload::CertReq(CertPayload {
            encoding: CertEncoding::X509_SIGNATURE,
            data: vec![0xaa, 0xbb],
        }),
        Payload::Unknown {
            ty: PayloadType::CP,
            critical: false,
            body: vec![1, 0, 0, 0],
        },
        Payload::VendorId(vec![0xfe; 16]),
    ]
}

/// Valid datagrams, plain and with SK.
fn samples() -> Vec<Vec<u8>> {
    let mut v = vec![
        emit_message(
            &header(ExchangeType::IKE_SA_INIT, FLAG_INITIATOR, 0),
            &sa_init_payloads(),
        ),
        emit_message(
            &header(ExchangeType::IKE_AUTH, FLAG_INITIATOR, 1),
            &auth_payloads(),
        ),
        emit_message(
            &header(ExchangeType::INFORMATIONAL, FLAG_RESPONSE, 7),
            &[Payload::Delete(DeletePayload {
                protocol: ProtocolId::IKE,
                spi_size: 0,
                spis: vec![],
            })],
        ),
        emit_message(
            &header(
                ExchangeType::INFORMATIONAL,
                FLAG_RESPONSE | FLAG_INITIATOR,
                8,
            ),
            &[],
        ),
    ];
    let mut sk = emit_sk_prefix(
        &header(ExchangeType::IKE_AUTH, FLAG_INITIATOR, 1),
        &[],
        PayloadType::IDI,
        48,
    );
    sk.extend((0..48u8).map(|i| i.wrapping_mul(37)));
    v.push(sk);
    let mut sk = emit_sk_prefix(
        &header(ExchangeType::CREATE_CHILD_SA, FLAG_RESPONSE, 3),
        &[
            Payload::VendorId(vec![1; 4]),
            notify(NotifyType::COOKIE, &[2; 8]),
        ],
        PayloadType::SA,
        24,
    );
    sk.extend([0xc3; 24]);
    v.push(sk);
    v
}

/// Offsets of the generic payload headers in a valid datagram.
fn payload_offsets(m: &[u8]) -> Vec<usize> {
    let mut offs = Vec::new();
    let mut off = Header::LEN;
    let mut ty = m[16];
    while ty != PayloadType::NONE.0 {
        offs.push(off);
        if ty == PayloadType::SK.0 {
            break;
        }
        ty = m[off];
        off += usize::from(u16::from_be_bytes([m[off + 2], m[off + 3]]));
    }
    offs
}

#[test]
fn whole_messages_round_trip() {
    let h = header(ExchangeType::IKE_AUTH, FLAG_INITIATOR, 1);
    let payloads = auth_payloads();
    let bytes = emit_message(&h, &payloads);
    let parsed = parse_message(&bytes).unwrap();
    assert_eq!(parsed.payloads, payloads);
    assert_eq!(parsed.sk, None);
    assert_eq!(parsed.header.next_payload, PayloadType::IDI);
    assert_eq!(usize::try_from(parsed.header.length).unwrap(), bytes.len());
    assert_eq!(
        Header {
            next_payload: h.next_payload,
            length: h.length,
            ..parsed.header.clone()
        },
        h
    );
    assert_eq!(parsed.emit(), bytes);
    assert_eq!(parsed.unsupported_critical(), None);

    // The same payloads as the decrypted contents of SK.
    let mut inner = Vec::new();
    let first = emit_payload_chain(&payloads, PayloadType::NONE, &mut inner);
    assert_eq!(first, PayloadType::IDI);
    assert_eq!(&inner[..], &bytes[Header::LEN..]);
    assert_eq!(parse_payload_chain(first, &inner), Ok(payloads));

    for m in samples() {
        let p = parse_message(&m).unwrap();
        assert_eq!(p.emit(), m);
    }
}

#[test]
fn emit_payload_chain_links_next_payload() {
    let mut out = Vec::new();
    assert_eq!(
        emit_payload_chain(&[], PayloadType::NONE, &mut out),
        PayloadType::NONE
    );
    assert_eq!(
        emit_payload_chain(&[], PayloadType::SK, &mut out),
        PayloadType::SK
    );
    assert!(out.is_empty());
    let ps = [Payload::VendorId(vec![1]), Payload::Nonce(vec![2; 16])];
    let first = emit_payload_chain(&ps, PayloadType(99), &mut out);
    assert_eq!(first, PayloadType::VENDOR_ID);
    #[rustfmt::skip]
    let expected = [
        40, 0, 0, 5, 1,
        99, 0, 0, 20, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    ];
    assert_eq!(out, expected);
    assert_eq!(parse_payload_chain(PayloadType::NONE, &[]), Ok(vec![]));
    assert_eq!(
        parse_payload_chain(PayloadType::NONE, &[0]),
        Err(WireError::Trailing(1, "payload chain"))
    );
}

#[test]
fn small_message_encoding_is_exact() {
    let h = Header {
        spi_i: 1,
        spi_r: 0,
        next_payload: PayloadType::SA, // recomputed
        version: 0x20,
        exchange: ExchangeType::INFORMATIONAL,
        flags: FLAG_RESPONSE,
        message_id: 2,
        length: 999, // recomputed
    };
    let m = emit_message(&h, &[notify(NotifyType::INVALID_SYNTAX, &[])]);
    #[rustfmt::skip]
    let expected = [
        0, 0, 0, 0, 0, 0, 0, 1,  0, 0, 0, 0, 0, 0, 0, 0,
        41, 0x20, 37, 0x20,  0, 0, 0, 2,  0, 0, 0, 36,
        0, 0, 0, 8, 0, 0, 0, 7,
    ];
    assert_eq!(m, expected);
}

#[test]
fn every_truncation_fails() {
    for m in samples() {
        for n in 0..m.len() {
            assert!(parse_message(&m[..n]).is_err(), "prefix {n} of {m:02x?}");
            // Even with the header length patched to match.
            if n >= Header::LEN {
                let mut t = m[..n].to_vec();
                t[24..28].copy_from_slice(&u32::try_from(n).unwrap().to_be_bytes());
                assert!(parse_message(&t).is_err(), "patched prefix {n} of {m:02x?}");
            }
        }
    }
}

#[test]
fn header_length_must_match_datagram() {
    for m in samples() {
        let len = u32::try_from(m.len()).unwrap();
        for bad in [0, 1, 27, 28, len - 1, len + 1, u32::MAX] {
            if bad as usize == m.len() {
                continue;
            }
            let mut b = m.clone();
            b[24..28].copy_from_slice(&bad.to_be_bytes());
            assert!(parse_message(&b).is_err(), "header length {bad}");
        }
        let mut b = m.clone();
        b.push(0);
        assert_eq!(parse_message(&b), Err(WireError::Trailing(1, "message")));
        b[24..28].copy_from_slice(&(len + 1).to_be_bytes());
        assert!(parse_message(&b).is_err());
        let mut b = m.clone();
        b[24..28].copy_from_slice(&(len + 1).to_be_bytes());
        assert_eq!(
            parse_message(&b),
            Err(WireError::Truncated {
                what: "message",
                need: m.len() + 1,
                have: m.len()
            })
        );
    }
}

#[test]
fn lying_payload_lengths_fail() {
    for m in samples() {
        for off in payload_offsets(&m) {
            let len = u16::from_be_bytes([m[off + 2], m[off + 3]]);
            for bad in [0u16, 1, 2, 3, 4, len - 1, len + 1, len + 4, 0xffff] {
                if bad == len {
                    continue;
                }
                let mut b = m.clone();
                b[off + 2..off + 4].copy_from_slice(&bad.to_be_bytes());
                assert!(
                    parse_message(&b).is_err(),
                    "payload at {off} length {bad} in {m:02x?}"
                );
            }
        }
    }
}

#[test]
fn wrong_version_is_rejected() {
    let mut m = samples().remove(0);
    m[17] = 0x10;
    assert_eq!(parse_message(&m), Err(WireError::Version(1)));
    m[17] = 0x30;
    assert_eq!(parse_message(&m), Err(WireError::Version(3)));
    m[17] = 0x21;
    assert!(parse_message(&m).is_ok());
}

#[test]
fn sk_must_be_last() {
    let h = header(ExchangeType::IKE_AUTH, FLAG_INITIATOR, 1);
    let mut m = emit_sk_prefix(&h, &[], PayloadType::IDI, 20);
    m.extend([7; 20]);
    assert!(parse_message(&m).is_ok());
    // SK shorter than the rest of the message.
    let mut b = m.clone();
    b[28 + 3] -= 1;
    assert_eq!(parse_message(&b), Err(WireError::SkNotLast));
    // SK followed by another payload (SK length covers only its own body).
    let mut b = emit_sk_prefix(&h, &[], PayloadType::IDI, 20);
    b.extend([7; 20]);
    b.extend([0, 0, 0, 4]);
    let n = u32::try_from(b.len()).unwrap();
    b[24..28].copy_from_slice(&n.to_be_bytes());
    assert_eq!(parse_message(&b), Err(WireError::SkNotLast));
    // SK longer than the message.
    let mut b = m.clone();
    b[28 + 3] += 1;
    assert!(matches!(
        parse_message(&b),
        Err(WireError::Truncated { .. })
    ));
    // An SK payload inside a decrypted chain.
    assert!(parse_payload_chain(PayloadType::SK, &[0, 0, 0, 4]).is_err());
    let mut inner = Vec::new();
    emit_payload_chain(&[Payload::VendorId(vec![1])], PayloadType::SK, &mut inner);
    inner.extend([0, 0, 0, 4]);
    assert!(parse_payload_chain(PayloadType::VENDOR_ID, &inner).is_err());
}

#[test]
fn chain_must_end_exactly() {
    let m = samples().remove(0);
    // Last payload's Next Payload set to a type: the chain runs past the end.
    let offs = payload_offsets(&m);
    let last = *offs.last().unwrap();
    let mut b = m.clone();
    b[last] = PayloadType::VENDOR_ID.0;
    assert!(matches!(
        parse_message(&b),
        Err(WireError::Truncated { .. })
    ));
    // Next Payload 0 on an earlier payload: the rest is trailing.
    let mut b = m.clone();
    b[offs[0]] = 0;
    assert!(matches!(
        parse_message(&b),
        Err(WireError::Trailing(_, "payload chain"))
    ));
    // Header says no payloads but there are some.
    let mut b = m.clone();
    b[16] = 0;
    assert!(matches!(
        parse_message(&b),
        Err(WireError::Trailing(_, "payload chain"))
    ));
}

#[test]
fn unknown_critical_payload_is_kept_and_reported() {
    let h = header(ExchangeType::IKE_SA_INIT, FLAG_INITIATOR, 0);
    let mut payloads = sa_init_payloads();
    payloads.insert(
        1,
        Payload::Unknown {
            ty: PayloadType(60),
            critical: false,
            body: vec![1],
        },
    );
    payloads.insert(
        3,
        Payload::Unknown {
            ty: PayloadType(200),
            critical: true,
            body: vec![2, 3],
        },
    );
    payloads.push(Payload::Unknown {
        ty: PayloadType::EAP,
        critical: true,
        body: vec![],
    });
    let m = emit_message(&h, &payloads);
    let p = parse_message(&m).unwrap();
    assert_eq!(p.payloads, payloads);
    assert_eq!(p.unsupported_critical(), Some(PayloadType(200)));
    assert_eq!(p.emit(), m);
    // The critical bit on a known payload is ignored (RFC 7296 2.5).
    let mut b = emit_message(&h, &sa_init_payloads());
    b[Header::LEN + 1] = 0x80;
    let p = parse_message(&b).unwrap();
    assert_eq!(p.payloads, sa_init_payloads());
    assert_eq!(p.unsupported_critical(), None);
}

/// A tiny deterministic PRNG (xorshift64).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

const INTERESTING: [u16; 12] = [0, 1, 2, 3, 4, 5, 7, 8, 0x7f, 0x80, 0xff, 0xffff];

fn mutate(rng: &mut XorShift, m: &mut Vec<u8>) {
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let len = m.len();
        match rng.below(11) {
            0 if len > 0 => {
                let i = rng.below(len);
                m[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                m[i] = rng.byte();
            }
            2 if len > 0 => {
                let i = rng.below(len);
                m[i] = INTERESTING[rng.below(INTERESTING.len())] as u8;
            }
            3 => m.truncate(rng.below(len + 1)),
            4 if len >= 2 => {
                // Overwrite a 16-bit field, often a length, with a nearby or odd value.
                let i = rng.below(len - 1);
                let old = u16::from_be_bytes([m[i], m[i + 1]]);
                let v = match rng.below(3) {
                    0 => INTERESTING[rng.below(INTERESTING.len())],
                    1 => old.wrapping_add(rng.below(9) as u16).wrapping_sub(4),
                    _ => rng.next() as u16,
                };
                m[i..i + 2].copy_from_slice(&v.to_be_bytes());
            }
            5 if len >= Header::LEN => {
                // The IKE header length.
                let v = match rng.below(3) {
                    0 => len as u32,
                    1 => (len as u32)
                        .wrapping_add(rng.below(9) as u32)
                        .wrapping_sub(4),
                    _ => rng.next() as u32,
                };
                m[24..28].copy_from_slice(&v.to_be_bytes());
            }
            6 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let ins: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
                m.splice(i..i, ins);
            }
            7 if len > 0 => {
                let i = rng.below(len);
                let j = (i + 1 + rng.below(8)).min(len);
                m.drain(i..j);
            }
            8 => {
                let n = 1 + rng.below(16);
                m.extend((0..n).map(|_| rng.byte()));
            }
            9 => {
                // Random garbage, sometimes behind a plausible header.
                let keep = if rng.below(2) == 0 {
                    Header::LEN.min(len)
                } else {
                    0
                };
                m.truncate(keep);
                let n = rng.below(200);
                m.extend((0..n).map(|_| rng.byte()));
            }
            _ if len > 0 => {
                // Copy a run of the message over another place.
                let a = rng.below(len);
                let b = rng.below(len);
                let n = rng.below(16).min(len - a).min(len - b);
                let run = m[a..a + n].to_vec();
                m[b..b + n].copy_from_slice(&run);
            }
            _ => {}
        }
    }
}

/// `emitted` re-encodes `original`, so it has the same length and differs
/// only in reserved bits that it leaves zero.
fn assert_reencodes(original: &[u8], emitted: &[u8]) {
    assert_eq!(emitted.len(), original.len(), "{original:02x?}");
    for (e, o) in emitted.iter().zip(original) {
        assert_eq!(e & !o, 0, "{original:02x?} re-emitted as {emitted:02x?}");
    }
}

#[test]
fn fuzz_messages_never_panic_and_reparse() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut parsed_ok = 0usize;
    for base in samples() {
        for _ in 0..20_000 {
            let mut m = base.clone();
            mutate(&mut rng, &mut m);
            if let Ok(p) = parse_message(&m) {
                parsed_ok += 1;
                let e = p.emit();
                assert_reencodes(&m, &e);
                assert_eq!(parse_message(&e).as_ref(), Ok(&p), "{m:02x?}");
            }
        }
    }
    // The mutations are not so destructive that nothing ever parses.
    assert!(parsed_ok > 1000, "{parsed_ok}");
}

#[test]
fn fuzz_payload_chains_never_panic_and_reparse() {
    let mut rng = XorShift(0x0123_4567_89ab_cdef);
    let chains = [auth_payloads(), sa_init_payloads()];
    for payloads in chains {
        let mut base = Vec::new();
        let first = emit_payload_chain(&payloads, PayloadType::NONE, &mut base);
        for _ in 0..20_000 {
            let mut m = base.clone();
            mutate(&mut rng, &mut m);
            let first = if rng.below(16) == 0 {
                PayloadType(rng.byte())
            } else {
                first
            };
            if let Ok(p) = parse_payload_chain(first, &m) {
                let mut e = Vec::new();
                let f = emit_payload_chain(&p, PayloadType::NONE, &mut e);
                assert_eq!(
                    f,
                    if p.is_empty() {
                        PayloadType::NONE
                    } else {
                        first
                    }
                );
                assert_reencodes(&m, &e);
                assert_eq!(parse_payload_chain(f, &e).as_ref(), Ok(&p));
            }
        }
    }
}

#[test]
fn pure_garbage_never_panics() {
    let mut rng = XorShift(42);
    for _ in 0..20_000 {
        let n = rng.below(120);
        let mut m: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
        if m.len() >= Header::LEN && rng.below(2) == 0 {
            m[17] = 0x20;
            let len = m.len() as u32;
            m[24..28].copy_from_slice(&len.to_be_bytes());
        }
        let _ = parse_message(&m);
        let _ = parse_payload_chain(PayloadType(rng.byte()), &m);
        let _ = Header::parse(&m);
    }
}
