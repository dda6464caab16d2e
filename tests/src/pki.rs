//! Certificates for the load generator and the benchmarks (issue 12): a
//! private CA and end-entity certificates for IP identities (SAN IP, the
//! subject's common name the address), made with rcgen, written as PEM
//! files (private keys mode 0600) and read back.
//!
//! rcgen 0.13 without its `x509-parser` feature cannot take an issuer's
//! name from an existing certificate, so a CA read from files
//! ([`Ca::from_pem_files`]) must be one made here: its subject is exactly
//! `CN=`[`CA_NAME`]. [`Ca::from_pem_files`] proves that by issuing a
//! certificate and validating it against the file with the engine's own
//! validator, so a CA from elsewhere is refused with the reason instead of
//! issuing certificates nobody accepts.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use aokd_proto::ike::cert::TrustAnchors;
use aokd_proto::ike::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls_pki_types::pem::PemObject as _;
use zeroize::Zeroizing;

/// The subject common name of every CA made here.
pub const CA_NAME: &str = "aokd ike-load CA";

/// The key type of a CA and of the certificates it issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// Ed25519 (RFC 8410 keys, RFC 8420 in IKEv2).
    Ed25519,
    /// ECDSA on P-256 with SHA-256.
    P256,
}

impl KeyType {
    /// `ed25519` or `p256`.
    pub fn parse(text: &str) -> Result<KeyType, String> {
        match text {
            "ed25519" => Ok(KeyType::Ed25519),
            "p256" => Ok(KeyType::P256),
            other => Err(format!("key type {other:?}: ed25519 or p256")),
        }
    }

    /// The name [`KeyType::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::P256 => "p256",
        }
    }

    fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
            KeyType::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }
}

/// The start of an Ed25519 PKCS#8 v1 key (RFC 8410 7), before the 32
/// octets of the seed.
const ED25519_V1: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The same in PKCS#8 v2 (RFC 5958 OneAsymmetricKey, with the public key
/// after the seed), as ring (under rcgen) writes Ed25519 keys.
const ED25519_V2: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// `key` (PKCS#8 DER) with an Ed25519 key in version 1, which every reader
/// takes: OpenSSL 3.0, and with it strongSwan 5.9.8's swanctl ("parsing
/// ANY private key failed"), cannot read ring's version 2. Other keys are
/// returned as they are.
fn pkcs8_v1(key: Vec<u8>) -> Zeroizing<Vec<u8>> {
    let key = Zeroizing::new(key);
    match key.get(..16).zip(key.get(16..48)) {
        Some((head, seed)) if head == ED25519_V2 && key.len() == 83 => {
            let mut v1 = Zeroizing::new(Vec::with_capacity(48));
            v1.extend_from_slice(&ED25519_V1);
            v1.extend_from_slice(seed);
            v1
        }
        _ => key,
    }
}

/// An end-entity certificate and its private key.
pub struct Leaf {
    /// The certificate, DER.
    pub certificate: Vec<u8>,
    /// The private key, PKCS#8 DER (Ed25519 in version 1), wiped on drop.
    pub private_key: Zeroizing<Vec<u8>>,
}

/// A CA that can issue certificates: its certificate and key.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// The files [`gen_certs`] writes.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub responder_cert: PathBuf,
    pub responder_key: PathBuf,
}

/// Valid from January 1st of last year to January 1st ten years on, by the
/// system clock (no fixture in the repository expires).
fn validity(p: &mut CertificateParams) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Average Gregorian year; off by a day at most around New Year, which
    // the year of margin on each side absorbs.
    let year = 1970 + (secs / 31_556_952) as i32;
    p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    p.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut p);
    p
}

impl Ca {
    /// A new CA with a fresh key of `key_type`.
    pub fn generate(key_type: KeyType) -> Result<Ca, String> {
        let key = KeyPair::generate_for(key_type.algorithm())
            .map_err(|e| format!("generating a {} CA key: {e}", key_type.name()))?;
        let cert = ca_params()
            .self_signed(&key)
            .map_err(|e| format!("signing the CA certificate: {e}"))?;
        Ok(Ca { cert, key })
    }

    /// The CA of the PEM files `cert` (its certificate) and `key` (its
    /// PKCS#8 private key), made by [`gen_certs`]. Refused, naming the
    /// files, when a certificate it issues does not validate against
    /// `cert` (another subject, or a key that is not the certificate's).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Ca, String> {
        let cert_der = read_pem_certificate(cert).map_err(|e| format!("CA certificate {e}"))?;
        let key_pem =
            Zeroizing::new(fs::read(key).map_err(|e| format!("CA key {}: {e}", key.display()))?);
        let pkcs8 =
            rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&key_pem).map_err(|e| {
                format!(
                    "CA key {}: no PEM PKCS#8 key (-----BEGIN PRIVATE KEY-----): {e}",
                    key.display()
                )
            })?;
        let key_pair = KeyPair::try_from(&pkcs8)
            .map_err(|e| format!("CA key {}: not a usable key: {e}", key.display()))?;
        let issuer = ca_params()
            .self_signed(&key_pair)
            .map_err(|e| format!("CA key {}: {e}", key.display()))?;
        let ca = Ca {
            cert: issuer,
            key: key_pair,
        };
        // Issue one certificate and validate it against the file.
        let probe_ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let probe = ca.issue(probe_ip, KeyType::Ed25519)?;
        let anchors = TrustAnchors::from_der(&[cert_der])
            .map_err(|e| format!("CA certificate {}: {e}", cert.display()))?;
        anchors
            .verify_peer(
                &probe.certificate,
                &[],
                SystemTime::now(),
                &Identity::from_ip(probe_ip),
            )
            .map_err(|e| {
                format!(
                    "CA certificate {} and key {}: a certificate issued with this key does not \
                     validate against this certificate ({e}); the CA must be one made by \
                     `ike-load gen-certs` (subject CN={CA_NAME}) and the key its own",
                    cert.display(),
                    key.display()
                )
            })?;
        Ok(ca)
    }

    /// The CA's certificate, DER.
    pub fn certificate(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    /// The CA's private key, PKCS#8 DER (Ed25519 in version 1).
    pub fn private_key(&self) -> Zeroizing<Vec<u8>> {
        pkcs8_v1(self.key.serialize_der())
    }

    /// A certificate for `ip` (SAN IP and common name) with a fresh key of
    /// `key_type`, signed by this CA.
    pub fn issue(&self, ip: IpAddr, key_type: KeyType) -> Result<Leaf, String> {
        let key = KeyPair::generate_for(key_type.algorithm())
            .map_err(|e| format!("generating a {} key for {ip}: {e}", key_type.name()))?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, ip.to_string());
        p.distinguished_name = dn;
        p.subject_alt_names = vec![SanType::IpAddress(ip)];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut p);
        let cert = p
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| format!("signing the certificate of {ip}: {e}"))?;
        Ok(Leaf {
            certificate: cert.der().to_vec(),
            private_key: pkcs8_v1(key.serialize_der()),
        })
    }
}

/// `der` as PEM with the label `label` (RFC 7468: base64 in lines of 64).
pub fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes `text` to `path`; with `private`, mode 0600 whatever the file's
/// mode was (and never readable by others in between), else 0644.
pub fn write_file(path: &Path, text: &[u8], private: bool) -> Result<(), String> {
    let mode = if private { 0o600 } else { 0o644 };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|()| f.write_all(text))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The first certificate of the PEM file `path`, DER.
pub fn read_pem_certificate(path: &Path) -> Result<Vec<u8>, String> {
    let buf = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    rustls_pki_types::CertificateDer::from_pem_slice(&buf)
        .map(|c| c.to_vec())
        .map_err(|e| {
            format!(
                "{}: no PEM certificate (-----BEGIN CERTIFICATE-----): {e}",
                path.display()
            )
        })
}

/// A new CA and a certificate for the responder at `responder` (SAN IP),
/// both of `key_type`, written into `dir` (created if missing): `ca.pem`,
/// `ca.key`, `responder.pem`, `responder.key`; the keys mode 0600.
pub fn gen_certs(dir: &Path, responder: IpAddr, key_type: KeyType) -> Result<CertFiles, String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ca = Ca::generate(key_type)?;
    let leaf = ca.issue(responder, key_type)?;
    let files = CertFiles {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        responder_cert: dir.join("responder.pem"),
        responder_key: dir.join("responder.key"),
    };
    write_file(
        &files.ca_cert,
        pem("CERTIFICATE", &ca.certificate()).as_bytes(),
        false,
    )?;
    let ca_key = Zeroizing::new(pem("PRIVATE KEY", &ca.private_key()));
    write_file(&files.ca_key, ca_key.as_bytes(), true)?;
    write_file(
        &files.responder_cert,
        pem("CERTIFICATE", &leaf.certificate).as_bytes(),
        false,
    )?;
    let key = Zeroizing::new(pem("PRIVATE KEY", &leaf.private_key));
    write_file(&files.responder_key, key.as_bytes(), true)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_through_the_pki_types_reader() {
        for len in 0..70 {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = pem("CERTIFICATE", &der);
            assert!(text.lines().all(|l| l.len() <= 64), "{text}");
            if len == 0 {
                continue;
            }
            let back = rustls_pki_types::CertificateDer::from_pem_slice(text.as_bytes())
                .unwrap_or_else(|e| panic!("{len}: {e}\n{text}"));
            assert_eq!(back.as_ref(), &der[..], "{len}");
        }
        assert_eq!(
            pem("X", b"Man"),
            "-----BEGIN X-----\nTWFu\n-----END X-----\n"
        );
        assert_eq!(
            pem("X", b"Ma"),
            "-----BEGIN X-----\nTWE=\n-----END X-----\n"
        );
    }

    #[test]
    fn ed25519_keys_are_written_in_pkcs8_version_1() {
        let ca = Ca::generate(KeyType::Ed25519).unwrap();
        let leaf = ca
            .issue(IpAddr::V4(Ipv4Addr::LOCALHOST), KeyType::Ed25519)
            .unwrap();
        for der in [ca.private_key(), leaf.private_key] {
            assert_eq!(der.len(), 48);
            assert_eq!(der[..16], ED25519_V1);
            // The engine and rcgen read it back.
            aokd_proto::crypto::sig::PrivateKey::from_pkcs8_der(&der).expect("engine");
            KeyPair::try_from(&der[..]).expect("rcgen");
        }
        // P-256 keys are left alone (OpenSSL reads ring's encoding).
        let p = Ca::generate(KeyType::P256).unwrap().private_key();
        assert_ne!(p[..16], ED25519_V1);
        aokd_proto::crypto::sig::PrivateKey::from_pkcs8_der(&p).expect("engine");
    }

    #[test]
    fn gen_certs_writes_a_ca_that_issues_verifiable_certificates() {
        let dir = crate::temp_dir("pki-unit");
        for kt in [KeyType::Ed25519, KeyType::P256] {
            let d = dir.join(kt.name());
            let responder = IpAddr::V4(Ipv4Addr::LOCALHOST);
            let f = gen_certs(&d, responder, kt).expect("gen_certs");
            for (p, mode) in [
                (&f.ca_key, 0o600),
                (&f.responder_key, 0o600),
                (&f.ca_cert, 0o644),
            ] {
                let m = fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
                assert_eq!(m, mode, "{}", p.display());
            }
            let ca = Ca::from_pem_files(&f.ca_cert, &f.ca_key).expect("CA from files");
            let anchors =
                TrustAnchors::from_der(&[read_pem_certificate(&f.ca_cert).unwrap()]).unwrap();
            let ip = IpAddr::V4(Ipv4Addr::new(127, 16, 0, 7));
            let leaf = ca.issue(ip, kt).unwrap();
            let now = SystemTime::now();
            anchors
                .verify_peer(&leaf.certificate, &[], now, &Identity::from_ip(ip))
                .expect("issued leaf validates");
            // Not for another address.
            let other = Identity::from_ip(IpAddr::V4(Ipv4Addr::new(127, 16, 0, 8)));
            assert!(anchors
                .verify_peer(&leaf.certificate, &[], now, &other)
                .is_err());
            let responder_der = read_pem_certificate(&f.responder_cert).unwrap();
            anchors
                .verify_peer(&responder_der, &[], now, &Identity::from_ip(responder))
                .expect("responder certificate validates");
            let key = fs::read(&f.responder_key).unwrap();
            let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&key).unwrap();
            let k = aokd_proto::crypto::sig::PrivateKey::from_pkcs8_der(pkcs8.secret_pkcs8_der())
                .expect("the engine reads the key");
            let want = match kt {
                KeyType::Ed25519 => aokd_proto::crypto::sig::SignatureScheme::Ed25519,
                KeyType::P256 => aokd_proto::crypto::sig::SignatureScheme::EcdsaP256Sha256,
            };
            assert_eq!(k.scheme(), want);
        }
        // A CA certificate with another CA's key is refused, naming both files.
        let a = gen_certs(
            &dir.join("a"),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            KeyType::Ed25519,
        )
        .unwrap();
        let b = gen_certs(
            &dir.join("b"),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            KeyType::Ed25519,
        )
        .unwrap();
        let e = Ca::from_pem_files(&a.ca_cert, &b.ca_key)
            .err()
            .expect("mismatched key refused");
        assert!(e.contains(&a.ca_cert.display().to_string()), "{e}");
        assert!(e.contains(&b.ca_key.display().to_string()), "{e}");
        assert!(e.contains("does not validate"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}
