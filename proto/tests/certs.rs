//! Signature authentication (RFC 7427 Digital Signature, RFC 8420 Ed25519,
//! ECDSA P-256 and P-384) between two endpoints on the virtual clock: each
//! scheme, mixed schemes, SIGNATURE_HASH_ALGORITHMS in IKE_SA_INIT, the
//! wrong public key and PSK/signature mismatches (AUTHENTICATION_FAILED
//! with the reason named), reproducibility of ECDSA from the seed, and
//! certificates (chains of depth 1 and 3, bad certificates, revocation
//! from CRLs).

mod harness;

use std::sync::Arc;
use std::time::Duration;

use aokd_proto::crypto::sig::{PrivateKey, SignatureScheme};
use aokd_proto::ike::cert::TrustAnchors;
use aokd_proto::ike::{EndpointConfig, Event, PeerConfig, PeerKey, SignatureAuth};
use aokd_proto::numbers::NotifyType;
use harness::pki::{self, wall};
use harness::{peer, NetParams, Sim, A_ADDR, B_ADDR};
use p256::pkcs8::EncodePrivateKey;

const PSK: &[u8] = b"a shared secret of reasonable length";

/// A private key of `scheme` made from `seed`, through PKCS#8 DER as the
/// daemon reads it.
fn key(scheme: SignatureScheme, seed: u8) -> PrivateKey {
    let der = match scheme {
        SignatureScheme::Ed25519 => {
            // RFC 8410 7: PKCS#8 v1 of an Ed25519 seed.
            let mut d = vec![
                0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
                0x04, 0x20,
            ];
            d.extend_from_slice(&[seed; 32]);
            d
        }
        SignatureScheme::EcdsaP256Sha256 => p256::SecretKey::from_slice(&[seed; 32])
            .unwrap()
            .to_pkcs8_der()
            .unwrap()
            .as_bytes()
            .to_vec(),
        SignatureScheme::EcdsaP384Sha384 => p384::SecretKey::from_slice(&[seed; 48])
            .unwrap()
            .to_pkcs8_der()
            .unwrap()
            .as_bytes()
            .to_vec(),
        SignatureScheme::RsaPssSha256 => unreachable!("RSA keys do not sign"),
    };
    let k = PrivateKey::from_pkcs8_der(&der).expect("PKCS#8");
    assert_eq!(k.scheme(), scheme);
    k
}

/// A with key `a` (seed 1) and B with key `b` (seed 2), each trusting the
/// other's public key.
fn signature_pair(a: SignatureScheme, b: SignatureScheme) -> (PeerConfig, PeerConfig) {
    let (ka, kb) = (key(a, 1), key(b, 2));
    let mut pa = peer("b", A_ADDR, B_ADDR, b"unused");
    let mut pb = peer("a", B_ADDR, A_ADDR, b"unused, and different");
    pa.signature = Some(Arc::new(SignatureAuth {
        peer: PeerKey::PublicKey(kb.public_key()),
        certificates: Vec::new(),
        private_key: ka,
    }));
    pb.signature = Some(Arc::new(SignatureAuth {
        peer: PeerKey::PublicKey(key(a, 1).public_key()),
        certificates: Vec::new(),
        private_key: kb,
    }));
    (pa, pb)
}

fn failure_text(sim: &Sim, i: usize) -> String {
    sim.nodes[i]
        .events
        .iter()
        .find_map(|e| match e {
            Event::NegotiationFailed { error, .. } => Some(error.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("node {i} did not fail"))
}

fn assert_failed_both(sim: &Sim) {
    for i in 0..2 {
        assert!(sim.mkts(i).is_empty(), "node {i} has MKTs");
        assert_eq!(sim.established(i), 0, "node {i}");
        assert_eq!(
            sim.nodes[i].ep.peers()[0].last_error.as_deref(),
            Some("AUTHENTICATION_FAILED"),
            "node {i}"
        );
        assert!(sim.nodes[i].events.iter().any(|e| matches!(
            e,
            Event::NegotiationFailed { error, .. }
                if error.notify() == Some(NotifyType::AUTHENTICATION_FAILED)
        )));
    }
}

/// N(SIGNATURE_HASH_ALGORITHMS) = 16431 with SHA2-256, SHA2-384, Identity.
const HASH_NOTIFY: [u8; 8] = [0x40, 0x2f, 0x00, 0x02, 0x00, 0x03, 0x00, 0x05];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn rfc7427_each_scheme_establishes_with_mkts() {
    use SignatureScheme::*;
    let pairs = [
        (Ed25519, Ed25519),
        (EcdsaP256Sha256, EcdsaP256Sha256),
        (EcdsaP384Sha384, EcdsaP384Sha384),
        (Ed25519, EcdsaP384Sha384),
        (EcdsaP256Sha256, Ed25519),
    ];
    for (n, (a, b)) in pairs.into_iter().enumerate() {
        let (pa, pb) = signature_pair(a, b);
        let mut sim = Sim::pair(10 + n as u64, NetParams::default(), pa, pb);
        assert!(
            sim.run_until(Duration::from_secs(10), Sim::settled),
            "{a} / {b}"
        );
        assert_eq!(sim.established(0), 1, "{a} / {b}");
        assert_eq!(sim.established(1), 1, "{a} / {b}");
        assert!(sim.common_mkt(), "{a} / {b}");
        // Both IKE_SA_INIT messages announce the hashes (RFC 7427 4).
        let inits: Vec<_> = sim.sent.iter().take(2).collect();
        assert!(inits.iter().all(|(_, _, d)| contains(d, &HASH_NOTIFY)));
        println!("{a} / {b}: established, MKT in common");
    }
}

#[test]
fn psk_sends_no_signature_hash_notify() {
    let mut sim = Sim::pair_of(5, NetParams::default(), PSK, |_| {}, |_| {});
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    assert!(sim.sent.iter().all(|(_, _, d)| !contains(d, &HASH_NOTIFY)));
}

#[test]
fn rfc7427_signatures_over_a_lossy_network() {
    let (pa, pb) = signature_pair(SignatureScheme::EcdsaP256Sha256, SignatureScheme::Ed25519);
    let mut sim = Sim::pair(21, NetParams::LOSSY, pa, pb);
    assert!(sim.run_until(Duration::from_secs(300), Sim::settled));
    assert!(sim.common_mkt());
}

#[test]
fn ecdsa_signatures_are_reproducible_from_the_seed() {
    let run = |seed| {
        let (pa, pb) = signature_pair(
            SignatureScheme::EcdsaP384Sha384,
            SignatureScheme::EcdsaP256Sha256,
        );
        let mut sim = Sim::pair(seed, NetParams::default(), pa, pb);
        assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
        sim.sent
            .iter()
            .map(|(_, _, d)| d.clone())
            .collect::<Vec<_>>()
    };
    let first = run(31);
    assert_eq!(first, run(31), "same seed, same datagrams");
    assert_ne!(first, run(32), "another seed, other datagrams");
}

#[test]
fn wrong_public_key_fails_on_both_sides_with_the_reason() {
    // B expects A's key from seed 9, A signs with seed 1.
    let (pa, mut pb) = signature_pair(SignatureScheme::Ed25519, SignatureScheme::Ed25519);
    Arc::get_mut(pb.signature.as_mut().unwrap()).unwrap().peer =
        PeerKey::PublicKey(key(SignatureScheme::Ed25519, 9).public_key());
    pb.initiate = false;
    let mut sim = Sim::pair(6, NetParams::default(), pa, pb);
    sim.run_for(Duration::from_secs(20));
    assert_failed_both(&sim);
    let text = failure_text(&sim, 1);
    assert!(
        text.contains("the initiator's AUTH is refused: the Ed25519 signature does not verify with the peer's public key"),
        "{text}"
    );
    println!("B: {text}");
    println!("A: {}", failure_text(&sim, 0));
}

#[test]
fn responder_signature_with_another_key_type_is_refused_by_the_initiator() {
    // A expects an Ed25519 key from B; B signs with ECDSA P-256.
    let (mut pa, mut pb) =
        signature_pair(SignatureScheme::Ed25519, SignatureScheme::EcdsaP256Sha256);
    Arc::get_mut(pa.signature.as_mut().unwrap()).unwrap().peer =
        PeerKey::PublicKey(key(SignatureScheme::Ed25519, 2).public_key());
    pb.initiate = false;
    let mut sim = Sim::pair(7, NetParams::default(), pa, pb);
    sim.run_for(Duration::from_secs(20));
    let text = failure_text(&sim, 0);
    assert!(
        text.contains("the responder's AUTH is refused: the signature is ECDSA P-256/SHA-256 but the peer's key is Ed25519"),
        "{text}"
    );
    // A keeps no MKT and no IKE SA; B, which had accepted A's AUTH, loses
    // its IKE SA when it hears of the failure (its MKT, made with an
    // authenticated initiator, stays until A's delete or its lifetime).
    assert!(sim.mkts(0).is_empty());
    for i in 0..2 {
        assert_eq!(sim.established(i), 0, "node {i}");
    }
    // B hears of it in an INFORMATIONAL (RFC 7296 2.21.2).
    assert_eq!(
        sim.nodes[1].ep.peers()[0].last_error.as_deref(),
        Some("AUTHENTICATION_FAILED")
    );
    println!("A: {text}");
}

#[test]
fn psk_against_signature_is_refused_with_the_reason() {
    // A signs with ECDSA: B announced no hashes, so A uses RFC 4754.
    let (pa, _) = signature_pair(SignatureScheme::EcdsaP256Sha256, SignatureScheme::Ed25519);
    let mut pb = peer("a", B_ADDR, A_ADDR, PSK);
    pb.initiate = false;
    let mut sim = Sim::pair(8, NetParams::default(), pa, pb);
    sim.run_for(Duration::from_secs(20));
    assert_failed_both(&sim);
    let text = failure_text(&sim, 1);
    assert!(
        text.contains(
            "the initiator authenticated by AUTH method ECDSA_SHA256_P256, \
             but this peer is configured for a PSK"
        ),
        "{text}"
    );
    println!("B: {text}");

    // An Ed25519 signature needs RFC 8420's Identity hash announced: A
    // names what is missing and sends no AUTH.
    let (pa, _) = signature_pair(SignatureScheme::Ed25519, SignatureScheme::Ed25519);
    let mut pb = peer("a", B_ADDR, A_ADDR, PSK);
    pb.initiate = false;
    let mut sim = Sim::pair(8, NetParams::default(), pa, pb);
    sim.run_for(Duration::from_secs(20));
    let text = failure_text(&sim, 0);
    assert!(
        text.contains("this side's Ed25519 key needs the peer to announce hash 5 in SIGNATURE_HASH_ALGORITHMS (RFC 7427 4), and it announced none"),
        "{text}"
    );
    assert_eq!(sim.established(0), 0);
    assert_eq!(sim.established(1), 0);
    println!("A: {text}");

    let mut pa = peer("b", A_ADDR, B_ADDR, PSK);
    pa.initiate = true;
    let (_, mut pb) = signature_pair(SignatureScheme::Ed25519, SignatureScheme::Ed25519);
    pb.initiate = false;
    let mut sim = Sim::pair(9, NetParams::default(), pa, pb);
    sim.run_for(Duration::from_secs(20));
    assert_failed_both(&sim);
    let text = failure_text(&sim, 1);
    assert!(
        text.contains(
            "the initiator authenticated with a PSK, but this peer is configured for signatures"
        ),
        "{text}"
    );
}

// ---- Certificates (CERT, CERTREQ, chains to configured CAs) ----

/// A and B with certificates from `ca`, each trusting `ca`; B only
/// responds.
fn cert_sim(
    seed: u64,
    a: (Vec<Vec<u8>>, PrivateKey),
    b: (Vec<Vec<u8>>, PrivateKey),
    ca: &pki::Ca,
) -> Sim {
    cert_sim_crls(seed, a, b, ca, &[])
}

/// As [`cert_sim`], both sides checking chains against `crls`.
fn cert_sim_crls(
    seed: u64,
    a: (Vec<Vec<u8>>, PrivateKey),
    b: (Vec<Vec<u8>>, PrivateKey),
    ca: &pki::Ca,
    crls: &[Vec<u8>],
) -> Sim {
    let mut pa = peer("b", A_ADDR, B_ADDR, b"unused");
    let mut pb = peer("a", B_ADDR, A_ADDR, b"unused");
    pa.signature = Some(pki::chain_auth(a.0, a.1, ca, crls));
    pb.signature = Some(pki::chain_auth(b.0, b.1, ca, crls));
    pb.initiate = false;
    let mut ca_cfg = EndpointConfig::new(vec![pa]);
    let mut cb_cfg = EndpointConfig::new(vec![pb]);
    ca_cfg.wall_clock = wall();
    cb_cfg.wall_clock = wall();
    Sim::pair_with(seed, NetParams::default(), ca_cfg, cb_cfg)
}

/// [`pki::leaf`] as a chain of one certificate.
fn leaf_chain(
    ip: std::net::IpAddr,
    alg: &'static rcgen::SignatureAlgorithm,
    by: &pki::Ca,
    f: impl FnOnce(&mut rcgen::CertificateParams),
) -> (Vec<Vec<u8>>, PrivateKey) {
    let (der, key) = pki::leaf(ip, alg, by, f);
    (vec![der], key)
}

#[test]
fn certificates_of_depth_one_establish_and_certreq_names_the_ca() {
    let ca = pki::root("aokd test root");
    for (n, alg) in [
        &rcgen::PKCS_ED25519,
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
    ]
    .into_iter()
    .enumerate()
    {
        let a = leaf_chain(A_ADDR.ip(), alg, &ca, |_| {});
        let b = leaf_chain(B_ADDR.ip(), alg, &ca, |_| {});
        let mut sim = cert_sim(40 + n as u64, a, b, &ca);
        assert!(
            sim.run_until(Duration::from_secs(10), Sim::settled),
            "{alg:?}"
        );
        assert!(sim.common_mkt(), "{alg:?}");
        assert_eq!(sim.established(0), 1);
        assert_eq!(sim.established(1), 1);
        // The IKE_SA_INIT response carries CERTREQ (38) with encoding 4 and
        // the SHA-1 of the CA's public key.
        let hashes = TrustAnchors::from_der(&[ca.cert.der().to_vec()])
            .unwrap()
            .certreq_hashes();
        let mut certreq = vec![0, 0, 25, 4];
        certreq.extend_from_slice(&hashes);
        assert!(
            contains(&sim.sent[1].2, &certreq[2..]),
            "CERTREQ in IKE_SA_INIT response"
        );
        println!("{alg:?}: established with certificates, MKT in common");
    }
}

#[test]
fn certificates_of_depth_three_with_intermediates_establish() {
    let ca = pki::root("aokd test root");
    let i1 = pki::intermediate("intermediate 1", &ca);
    let i2 = pki::intermediate("intermediate 2", &i1);
    let chain = |ip, alg| {
        let (der, key) = pki::leaf(ip, alg, &i2, |_| {});
        (
            vec![der, i2.cert.der().to_vec(), i1.cert.der().to_vec()],
            key,
        )
    };
    let a = chain(A_ADDR.ip(), &rcgen::PKCS_ED25519);
    let b = chain(B_ADDR.ip(), &rcgen::PKCS_ECDSA_P256_SHA256);
    let mut sim = cert_sim(50, a, b, &ca);
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    assert!(sim.common_mkt());
    let biggest = sim.sent.iter().map(|(_, _, d)| d.len()).max().unwrap();
    println!("depth 3: established; largest datagram {biggest} octets");
}

/// B's certificate is bad in some way: A refuses it naming why, B hears
/// AUTHENTICATION_FAILED. Or A's is: B refuses it, A hears it.
#[test]
fn bad_certificates_are_refused_on_both_sides_with_the_reason() {
    let ca = pki::root("aokd test root");
    let other = pki::root("another root");
    type Tweak = Box<dyn Fn(&mut rcgen::CertificateParams)>;
    let cases: Vec<(&str, bool, Tweak, &str)> = vec![
        (
            "expired",
            false,
            Box::new(|p| p.not_after = rcgen::date_time_ymd(2026, 3, 1)),
            "the responder's certificate is refused: the certificate expired at 2026-03-01T00:00:00Z (now 2026-05-28T20:26",
        ),
        (
            "not yet valid",
            false,
            Box::new(|p| p.not_before = rcgen::date_time_ymd(2026, 12, 1)),
            "the responder's certificate is refused: the certificate is not valid before 2026-12-01T00:00:00Z",
        ),
        (
            "wrong key usage",
            true,
            Box::new(|p| {
                p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning]
            }),
            "the initiator's certificate is refused: the certificate's extended key usage allows neither ipsecIKE, serverAuth nor clientAuth",
        ),
        (
            "wrong identity",
            true,
            Box::new(|p| {
                p.subject_alt_names = vec![rcgen::SanType::IpAddress("192.0.2.9".parse().unwrap())]
            }),
            "the initiator's certificate is refused: the identity 192.0.2.1 (ID_IPV4_ADDR) is not in the certificate",
        ),
    ];
    for (n, (what, a_is_bad, tweak, expected)) in cases.into_iter().enumerate() {
        let (fa, fb): (Tweak, Tweak) = if a_is_bad {
            (tweak, Box::new(|_| {}))
        } else {
            (Box::new(|_| {}), tweak)
        };
        let a = leaf_chain(A_ADDR.ip(), &rcgen::PKCS_ED25519, &ca, |p| fa(p));
        let b = leaf_chain(B_ADDR.ip(), &rcgen::PKCS_ED25519, &ca, |p| fb(p));
        let mut sim = cert_sim(60 + n as u64, a, b, &ca);
        sim.run_for(Duration::from_secs(20));
        let checker = if a_is_bad { 1 } else { 0 };
        let text = failure_text(&sim, checker);
        assert!(text.contains(expected), "{what}: {text}");
        assert!(sim.mkts(0).is_empty(), "{what}");
        for i in 0..2 {
            assert_eq!(
                sim.nodes[i].ep.peers()[0].last_error.as_deref(),
                Some("AUTHENTICATION_FAILED"),
                "{what}: node {i}"
            );
        }
        println!("{what}: {text}");
    }

    // A's certificate from a CA B does not trust.
    let a = leaf_chain(A_ADDR.ip(), &rcgen::PKCS_ED25519, &other, |_| {});
    let b = leaf_chain(B_ADDR.ip(), &rcgen::PKCS_ED25519, &ca, |_| {});
    let mut sim = cert_sim(70, a, b, &ca);
    sim.run_for(Duration::from_secs(20));
    assert_failed_both(&sim);
    let text = failure_text(&sim, 1);
    assert!(
        text.contains("the initiator's certificate is refused: the certificate is not issued by a configured CA"),
        "{text}"
    );
    println!("wrong CA: {text}");
}

/// RFC 7296 3.7: B's CERTREQ names intermediate 2 as its CA, so A sends
/// its certificate only, not the intermediates: its IKE_AUTH request is
/// smaller by about both intermediates than toward a B that names the root.
#[test]
fn certreq_is_honoured_when_choosing_the_chain_to_send() {
    let ca = pki::root("aokd test root");
    let i1 = pki::intermediate("intermediate 1", &ca);
    let i2 = pki::intermediate("intermediate 2", &i1);
    let run = |b_trusts: &pki::Ca| {
        let chain = |ip| {
            let (der, key) = pki::leaf(ip, &rcgen::PKCS_ED25519, &i2, |_| {});
            (
                vec![der, i2.cert.der().to_vec(), i1.cert.der().to_vec()],
                key,
            )
        };
        let (a_chain, a_key) = chain(A_ADDR.ip());
        let (b_chain, b_key) = chain(B_ADDR.ip());
        let mut pa = peer("b", A_ADDR, B_ADDR, b"unused");
        let mut pb = peer("a", B_ADDR, A_ADDR, b"unused");
        pa.signature = Some(pki::chain_auth(a_chain, a_key, &ca, &[]));
        pb.signature = Some(pki::chain_auth(b_chain, b_key, b_trusts, &[]));
        pb.initiate = false;
        let mut ca_cfg = EndpointConfig::new(vec![pa]);
        let mut cb_cfg = EndpointConfig::new(vec![pb]);
        ca_cfg.wall_clock = wall();
        cb_cfg.wall_clock = wall();
        let mut sim = Sim::pair_with(80, NetParams::default(), ca_cfg, cb_cfg);
        assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
        assert!(sim.common_mkt());
        // A's IKE_AUTH request: every datagram of it (its fragments
        // toward a B that names the root, RFC 7383).
        sim.sent
            .iter()
            .filter(|(n, _, _)| *n == 0)
            .filter(|(_, _, d)| {
                aokd_proto::wire::parse_message(d).is_ok_and(|m| {
                    m.header.exchange == aokd_proto::numbers::ExchangeType::IKE_AUTH
                        && !m.header.is_response()
                })
            })
            .map(|(_, _, d)| d.len())
            .sum::<usize>()
    };
    let toward_root = run(&ca);
    let toward_i2 = run(&i2);
    let intermediates = i2.cert.der().len() + i1.cert.der().len();
    println!(
        "A's IKE_AUTH request: {toward_root} octets toward a B trusting the root, \
         {toward_i2} toward a B trusting intermediate 2 (intermediates: {intermediates} octets)"
    );
    // Two CERT payloads of 5 octets of headers each, less the few octets by
    // which the leaves' ECDSA signatures may differ between the runs.
    assert!(
        toward_root >= toward_i2 + intermediates,
        "{toward_root} - {toward_i2} < {intermediates}"
    );
}

/// Revocation (RFC 5280 5): a revoked leaf (depth 1) and a revoked
/// intermediate (depth 3), on either side, give AUTHENTICATION_FAILED on
/// both sides, the checking side naming the certificate, its serial and
/// "revoked"; certificates not listed pass with the CRLs present.
#[test]
fn revoked_certificates_are_refused_on_both_sides_with_the_reason() {
    let ca = pki::root("aokd test root");
    let i1 = pki::intermediate_with("intermediate 1", &ca, pki::serial(0x0101));
    let i2 = pki::intermediate_with("intermediate 2", &i1, pki::serial(0x0102));
    // The root revokes leaf 0x66; intermediate 1 revokes intermediate 2
    // (0x0102) when `revoke_i2`, else an unrelated serial; intermediate 2
    // revokes nothing used here.
    let crls = |revoke_i2: bool| {
        vec![
            pki::crl(&ca, &[0x65, 0x66]),
            pki::crl(&i1, &[if revoke_i2 { 0x0102 } else { 0x0103 }]),
            pki::crl(&i2, &[0x67]),
        ]
    };
    let depth1 =
        |ip: std::net::IpAddr, n: u64| leaf_chain(ip, &rcgen::PKCS_ED25519, &ca, pki::serial(n));
    let depth3 = |ip: std::net::IpAddr, n: u64| {
        let (der, key) = pki::leaf(ip, &rcgen::PKCS_ED25519, &i2, pki::serial(n));
        (
            vec![der, i2.cert.der().to_vec(), i1.cert.der().to_vec()],
            key,
        )
    };

    // Nothing revoked: both chain depths establish with the CRLs present.
    let mut sim = cert_sim_crls(
        90,
        depth1(A_ADDR.ip(), 0x10),
        depth3(B_ADDR.ip(), 0x11),
        &ca,
        &crls(false),
    );
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    assert!(sim.common_mkt());
    println!("CRLs present, nothing revoked: established");

    type Chain = (Vec<Vec<u8>>, PrivateKey);
    let cases: Vec<(&str, bool, Chain, Chain, bool, &str)> = vec![
        (
            "A's leaf revoked",
            true,
            depth1(A_ADDR.ip(), 0x66),
            depth1(B_ADDR.ip(), 0x12),
            false,
            "the initiator's certificate is refused: the end-entity certificate (serial 66) is revoked: listed in the CRL of its issuer, revoked at 2026-05-02T00:00:00Z, reason superseded",
        ),
        (
            "B's leaf revoked",
            false,
            depth1(A_ADDR.ip(), 0x13),
            depth1(B_ADDR.ip(), 0x66),
            false,
            "the responder's certificate is refused: the end-entity certificate (serial 66) is revoked",
        ),
        (
            "A's intermediate revoked",
            true,
            depth3(A_ADDR.ip(), 0x14),
            depth1(B_ADDR.ip(), 0x15),
            true,
            "the initiator's certificate is refused: the intermediate certificate 1 (serial 01:02) is revoked: listed in the CRL of its issuer",
        ),
        (
            "B's intermediate revoked",
            false,
            depth1(A_ADDR.ip(), 0x16),
            depth3(B_ADDR.ip(), 0x17),
            true,
            "the responder's certificate is refused: the intermediate certificate 1 (serial 01:02) is revoked",
        ),
    ];
    for (n, (what, a_is_bad, a, b, revoke_i2, expected)) in cases.into_iter().enumerate() {
        let mut sim = cert_sim_crls(91 + n as u64, a, b, &ca, &crls(revoke_i2));
        sim.run_for(Duration::from_secs(20));
        let checker = if a_is_bad { 1 } else { 0 };
        let text = failure_text(&sim, checker);
        assert!(text.contains(expected), "{what}: {text}");
        assert!(sim.mkts(0).is_empty(), "{what}");
        for i in 0..2 {
            assert_eq!(
                sim.nodes[i].ep.peers()[0].last_error.as_deref(),
                Some("AUTHENTICATION_FAILED"),
                "{what}: node {i}"
            );
            assert_eq!(sim.established(i), 0, "{what}: node {i}");
        }
        println!("{what}: {text}");
    }
}

/// A CRL signed by another CA: one with another issuer name is not about
/// the chain and is not used (the serial it lists is accepted); one that
/// names a configured CA as issuer but does not verify with its key is
/// refused with the trust anchors; one that names the chain's intermediate
/// but does not verify with its key makes the check fail closed,
/// AUTHENTICATION_FAILED naming the CRL.
#[test]
fn crls_signed_by_another_ca_do_not_count() {
    let ca = pki::root("aokd test root");
    let other = pki::root("another root");
    let impostor = pki::root("aokd test root");
    let a = || leaf_chain(A_ADDR.ip(), &rcgen::PKCS_ED25519, &ca, pki::serial(0x21));
    let b = || leaf_chain(B_ADDR.ip(), &rcgen::PKCS_ED25519, &ca, pki::serial(0x22));
    let e = TrustAnchors::from_der(&[ca.cert.der().to_vec()])
        .unwrap()
        .with_crls(&[pki::crl(&impostor, &[0x99])])
        .unwrap_err();
    assert!(e.contains("not signed by that CA's key"), "{e}");

    let mut sim = cert_sim_crls(100, a(), b(), &ca, &[pki::crl(&other, &[0x21, 0x22])]);
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    assert!(sim.common_mkt());
    println!("another CA's CRL listing both serials: not used, established");

    // Only B holds the forged CRL of A's intermediate: it refuses A's
    // chain.
    let i1 = pki::intermediate("intermediate 1", &ca);
    let fake_i1 = pki::intermediate("intermediate 1", &other);
    let mut pa = peer("b", A_ADDR, B_ADDR, b"unused");
    let mut pb = peer("a", B_ADDR, A_ADDR, b"unused");
    let (ac, ak) = pki::leaf(A_ADDR.ip(), &rcgen::PKCS_ED25519, &i1, pki::serial(0x23));
    let (bc, bk) = b();
    pa.signature = Some(pki::chain_auth(
        vec![ac, i1.cert.der().to_vec()],
        ak,
        &ca,
        &[],
    ));
    pb.signature = Some(pki::chain_auth(bc, bk, &ca, &[pki::crl(&fake_i1, &[0x99])]));
    pb.initiate = false;
    let mut ca_cfg = EndpointConfig::new(vec![pa]);
    let mut cb_cfg = EndpointConfig::new(vec![pb]);
    ca_cfg.wall_clock = wall();
    cb_cfg.wall_clock = wall();
    let mut sim = Sim::pair_with(101, NetParams::default(), ca_cfg, cb_cfg);
    sim.run_for(Duration::from_secs(20));
    assert_failed_both(&sim);
    let text = failure_text(&sim, 1);
    assert!(
        text.contains("the initiator's certificate is refused: a configured CRL cannot be used for this chain: the CRL of a certificate's issuer is not signed by the issuer's key"),
        "{text}"
    );
    println!("forged CRL: {text}");
}

/// B's IKE_AUTH answers in `sim.sent`, the one dropped included.
fn auth_answers(sim: &Sim) -> Vec<Vec<u8>> {
    sim.sent
        .iter()
        .filter(|(n, _, d)| {
            *n == 1
                && aokd_proto::wire::parse_message(d).is_ok_and(|m| {
                    m.header.exchange == aokd_proto::numbers::ExchangeType::IKE_AUTH
                        && m.header.is_response()
                })
        })
        .map(|(_, _, d)| d.clone())
        .collect()
}

#[test]
fn a_lost_answer_with_certificates_is_sealed_again_for_the_retransmitted_request() {
    // B keeps its IKE_AUTH answer without its certificate and puts it back
    // when A retransmits (issue: scale, memory per peer): A must get the
    // same answer, its certificate included, under another IV.
    let ca = pki::root("aokd test root");
    let a = leaf_chain(A_ADDR.ip(), &rcgen::PKCS_ED25519, &ca, |_| {});
    let b = leaf_chain(B_ADDR.ip(), &rcgen::PKCS_ED25519, &ca, |_| {});
    let b_cert = b.0[0].clone();
    let mut sim = cert_sim(90, a, b, &ca);
    let mut lost = false;
    sim.drop_if = Some(Box::new(move |i, d| {
        let answer = i == 1
            && aokd_proto::wire::parse_message(d).is_ok_and(|m| {
                m.header.exchange == aokd_proto::numbers::ExchangeType::IKE_AUTH
                    && m.header.is_response()
            });
        let drop = answer && !lost;
        lost |= answer;
        drop
    }));
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    assert!(sim.common_mkt());
    assert_eq!(sim.established(0), 1);
    assert_eq!(sim.established(1), 1);
    let answers = auth_answers(&sim);
    assert_eq!(answers.len(), 2, "the lost answer and its replay");
    let (first, again) = (&answers[0], &answers[1]);
    assert_eq!(first.len(), again.len(), "the same payloads");
    assert!(
        first.len() > b_cert.len(),
        "the answer carries B's certificate"
    );
    // IKE header (28), SK header (4), then the IV: a new one.
    assert_ne!(first[32..40], again[32..40]);
    assert_ne!(first, again);
    // B handled the request once; the retransmission got the replay.
    let established_b = sim.nodes[1]
        .events
        .iter()
        .filter(|e| matches!(e, Event::IkeSaEstablished { .. }))
        .count();
    assert_eq!(established_b, 1);
}
