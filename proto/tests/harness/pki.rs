//! Certificates for the simulations, made with rcgen: a root CA,
//! intermediates, end-entity certificates for an address or a name and
//! CRLs, valid through 2026 (the simulations' wall clock is [`wall`]).

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

/// An intermediate CA (ECDSA P-256) issued by `by`.
pub fn intermediate(cn: &str, by: &Ca) -> Ca {
    intermediate_with(cn, by, |_| {})
}

/// An intermediate CA (ECDSA P-256) issued by `by`, adjusted by `f`.
pub fn intermediate_with(cn: &str, by: &Ca, f: impl FnOnce(&mut CertificateParams)) -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = params(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    f(&mut p);
    let cert = p.signed_by(&key, &by.cert, &by.key).unwrap();
    Ca { cert, key }
}

/// `p` issued by `by` for a new key of `alg` (DER), and that key as the
/// engine takes it.
fn issue(
    p: CertificateParams,
    alg: &'static rcgen::SignatureAlgorithm,
    by: &Ca,
) -> (Vec<u8>, PrivateKey) {
    let key = KeyPair::generate_for(alg).unwrap();
    let cert = p.signed_by(&key, &by.cert, &by.key).unwrap();
    let pk = PrivateKey::from_pkcs8_der(&key.serialize_der()).unwrap();
    (cert.der().to_vec(), pk)
}

/// An end-entity certificate (Ed25519) with these SANs, and its key.
pub fn leaf_with(by: &Ca, cn: &str, sans: Vec<SanType>) -> (Vec<u8>, PrivateKey) {
    let mut p = params(cn);
    p.subject_alt_names = sans;
    issue(p, &rcgen::PKCS_ED25519, by)
}

/// An end-entity certificate for `ip` (SAN iPAddress).
pub fn leaf_for_ip(by: &Ca, ip: IpAddr) -> (Vec<u8>, PrivateKey) {
    leaf_with(by, &ip.to_string(), vec![SanType::IpAddress(ip)])
}

/// An end-entity certificate for `ip` (SAN iPAddress) with a key of `alg`,
/// adjusted by `f`, and its key.
pub fn leaf(
    ip: IpAddr,
    alg: &'static rcgen::SignatureAlgorithm,
    by: &Ca,
    f: impl FnOnce(&mut CertificateParams),
) -> (Vec<u8>, PrivateKey) {
    let mut p = params(&ip.to_string());
    p.subject_alt_names = vec![SanType::IpAddress(ip)];
    f(&mut p);
    issue(p, alg, by)
}

/// Sets the certificate's serial number to `n` (for [`leaf`] and
/// [`intermediate_with`]).
pub fn serial(n: u64) -> impl FnOnce(&mut CertificateParams) {
    move |p| p.serial_number = Some(rcgen::SerialNumber::from(n))
}

/// A CRL (DER) of `by` revoking `serials` for a superseded key.
pub fn crl(by: &Ca, serials: &[u64]) -> Vec<u8> {
    rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2026, 5, 1),
        next_update: rcgen::date_time_ymd(2026, 6, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(*s),
                revocation_time: rcgen::date_time_ymd(2026, 5, 2),
                reason_code: Some(rcgen::RevocationReason::Superseded),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&by.cert, &by.key)
    .unwrap()
    .der()
    .to_vec()
}

/// Signature authentication with `cert` and `key`, trusting `trust`.
pub fn auth(cert: Vec<u8>, key: PrivateKey, trust: &Ca) -> Arc<SignatureAuth> {
    chain_auth(vec![cert], key, trust, &[])
}

/// Signature authentication sending `chain` (end-entity certificate
/// first) with `key`, trusting `trust` and checking chains against `crls`.
pub fn chain_auth(
    chain: Vec<Vec<u8>>,
    key: PrivateKey,
    trust: &Ca,
    crls: &[Vec<u8>],
) -> Arc<SignatureAuth> {
    let anchors = TrustAnchors::from_der(&[trust.cert.der().to_vec()])
        .unwrap()
        .with_crls(crls)
        .unwrap();
    Arc::new(SignatureAuth {
        private_key: key,
        certificates: chain,
        peer: PeerKey::Certificate(anchors),
    })
}
