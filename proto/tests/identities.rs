//! Distinguished names as IKE identities (ID_DER_ASN1_DN): two peers whose
//! identities are their certificates' subjects, written as text in the
//! configuration (`C=CH, O=Example, CN=a`), establish; a DN that is not the
//! peer's subject is refused on both sides with both names in the error.

mod harness;

use std::time::Duration;

use aokd_proto::crypto::sig::PrivateKey;
use aokd_proto::ike::{EndpointConfig, Event, Identity};
use aokd_proto::numbers::IdType;
use harness::pki::{self, Ca};
use harness::{peer, NetParams, Sim, A_ADDR, B_ADDR};

/// A certificate with subject `C=CH, O=Example, CN={cn}` and no SAN.
fn dn_leaf(ca: &Ca, cn: &str) -> (Vec<u8>, PrivateKey) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CountryName, "CH");
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "Example");
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.not_before = rcgen::date_time_ymd(2026, 1, 1);
    p.not_after = rcgen::date_time_ymd(2027, 1, 1);
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let pk = PrivateKey::from_pkcs8_der(&key.serialize_der()).unwrap();
    (cert.der().to_vec(), pk)
}

fn sim(seed: u64, b_expects: &str) -> Sim {
    let ca = pki::root("DN test root");
    let (ca_a, ka) = dn_leaf(&ca, "a");
    let (ca_b, kb) = dn_leaf(&ca, "b");
    let mut pa = peer("b", A_ADDR, B_ADDR, b"");
    pa.local_id = Identity::parse_dn("C=CH, O=Example, CN=a").unwrap();
    pa.remote_id = Identity::parse_dn("C=CH, O=Example, CN=b").unwrap();
    pa.signature = Some(pki::auth(ca_a, ka, &ca));
    let mut pb = peer("a", B_ADDR, A_ADDR, b"");
    pb.local_id = Identity::parse_dn("C=CH,O=Example,CN=b").unwrap();
    pb.remote_id = Identity::parse_dn(b_expects).unwrap();
    pb.signature = Some(pki::auth(ca_b, kb, &ca));
    pb.initiate = false;
    let mut a = EndpointConfig::new(vec![pa]);
    let mut b = EndpointConfig::new(vec![pb]);
    a.wall_clock = pki::wall();
    b.wall_clock = pki::wall();
    Sim::pair_with(seed, NetParams::default(), a, b)
}

#[test]
fn subject_dns_written_as_text_authenticate() {
    let mut sim = sim(1, "c=CH, o=Example, cn=a");
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    assert!(sim.common_mkt());
    let id = Identity::parse_dn("C=CH, O=Example, CN=a").unwrap();
    assert_eq!(id.id_type, IdType::ID_DER_ASN1_DN);
    assert_eq!(id.to_string(), "C=CH, O=Example, CN=a");
}

#[test]
fn another_subject_is_refused_with_both_names() {
    let mut sim = sim(2, "C=CH, O=Example, CN=z");
    let failed = |s: &Sim| {
        s.nodes[1]
            .events
            .iter()
            .any(|e| matches!(e, Event::NegotiationFailed { .. }))
    };
    assert!(sim.run_until(Duration::from_secs(10), failed));
    let err = sim.nodes[1]
        .events
        .iter()
        .find_map(|e| match e {
            Event::NegotiationFailed { error, .. } => Some(error.to_string()),
            _ => None,
        })
        .unwrap();
    assert!(
        err.contains("the initiator's identity C=CH, O=Example, CN=a (ID_DER_ASN1_DN) is not the configured remote_id C=CH, O=Example, CN=z (ID_DER_ASN1_DN)"),
        "{err}"
    );
    sim.run_for(Duration::from_secs(1));
    let a_err = sim.nodes[0].ep.peer("b").unwrap().last_error.unwrap();
    assert_eq!(a_err, "AUTHENTICATION_FAILED");
}
