//! Certificates for the simulations, made with rcgen: a root CA,
//! intermediates and end-entity certificates for an address or a name,
//! valid through 2026 (the simulations' wall clock is [`wall`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aokd_proto::crypto::sig::PrivateKey;
use aokd_proto::ike::cert::TrustAnchors;
use aokd_proto::ike::{PeerKey, SignatureAuth};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};

pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

/// 2026-05-28T20:26:40Z, inside the certificates' validity.
pub fn wall() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_780_000_000)
}

fn params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = rcgen::date_time_ymd(2026, 1, 1);
    p.not_after = rcgen::date_time_ymd(2027, 1, 1);
    p
}

/// A self-signed root (ECDSA P-384).
pub fn root(cn: &str) -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut p = params(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = p.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// An end-entity certificate (Ed25519) with these SANs, and its key.
pub fn leaf_with(by: &Ca, cn: &str, sans: Vec<SanType>) -> (Vec<u8>, PrivateKey) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut p = params(cn);
    p.subject_alt_names = sans;
    let cert = p.signed_by(&key, &by.cert, &by.key).unwrap();
    let pk = PrivateKey::from_pkcs8_der(&key.serialize_der()).unwrap();
    (cert.der().to_vec(), pk)
}

/// An end-entity certificate for `ip` (SAN iPAddress).
pub fn leaf_for_ip(by: &Ca, ip: IpAddr) -> (Vec<u8>, PrivateKey) {
    leaf_with(by, &ip.to_string(), vec![SanType::IpAddress(ip)])
}

/// Signature authentication with `cert` and `key`, trusting `trust`.
pub fn auth(cert: Vec<u8>, key: PrivateKey, trust: &Ca) -> Arc<SignatureAuth> {
    Arc::new(SignatureAuth {
        private_key: key,
        certificates: vec![cert],
        peer: PeerKey::Certificate(TrustAnchors::from_der(&[trust.cert.der().to_vec()]).unwrap()),
    })
}
