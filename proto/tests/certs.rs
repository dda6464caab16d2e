//! Signature authentication (RFC 7427 Digital Signature, RFC 8420 Ed25519,
//! ECDSA P-256 and P-384) between two endpoints on the virtual clock: each
//! scheme, mixed schemes, SIGNATURE_HASH_ALGORITHMS in IKE_SA_INIT, the
//! wrong public key and PSK/signature mismatches (AUTHENTICATION_FAILED
//! with the reason named), and reproducibility of ECDSA from the seed.

mod harness;

use std::time::Duration;

use aokd_proto::crypto::sig::{PrivateKey, SignatureScheme};
use aokd_proto::ike::{Event, PeerConfig, SignatureAuth};
use aokd_proto::numbers::NotifyType;
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
    pa.signature = Some(SignatureAuth {
        peer_key: kb.public_key(),
        private_key: ka,
    });
    pb.signature = Some(SignatureAuth {
        peer_key: key(a, 1).public_key(),
        private_key: kb,
    });
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
    pb.signature.as_mut().unwrap().peer_key = key(SignatureScheme::Ed25519, 9).public_key();
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
    pa.signature.as_mut().unwrap().peer_key = key(SignatureScheme::Ed25519, 2).public_key();
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
