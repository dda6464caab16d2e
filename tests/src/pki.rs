//! A small private PKI made with rcgen, for the certificate tests and the
//! load generators (issue 12): root CAs ([`Ca::root`]), intermediates
//! ([`Ca::intermediate`]) and end-entity certificates for an IP identity
//! ([`Ca::leaf`]: SAN IP = the address, CN = the address), with Ed25519,
//! ECDSA P-256 or P-384 keys ([`KeyType`]).
//!
//! Its users:
//!
//! - the real-daemon and strongSwan certificate tests (`tests/tests/certs.rs`,
//!   `groups.rs`, `strongswan_certs.rs`), which build chains of any depth
//!   and write each router's files with [`Leaf::write`] (certificate and
//!   intermediates, private key, trust anchors: a [`crate::CertFiles`]);
//! - `ike-load gen-certs` and `scale-bench --auth pubkey` ([`gen_certs`]: a
//!   CA and the responder's certificate in `ca.pem`, `ca.key`,
//!   `responder.pem`, `responder.key`), and `ike-load --auth pubkey`, which
//!   reads that CA back ([`Ca::from_pem_files`]) to issue a certificate to
//!   each initiator.
//!
//! Every certificate is valid from January 1st of last year to January 1st
//! ten years on, by the system clock, so nothing made here expires and no
//! certificate is kept in the repository. Files are PEM ([`pem`]: rcgen is
//! built without its `pem` feature); private keys are PKCS#8, Ed25519 ones
//! in version 1 (which OpenSSL 3.0, and with it strongSwan's swanctl,
//! reads), written mode 0600 ([`write_file`]).
//!
//! rcgen 0.13 without its `x509-parser` feature cannot take an issuer's
//! name from an existing certificate, so a CA read from files
//! ([`Ca::from_pem_files`]) must be one [`gen_certs`] made: its subject is
//! exactly `CN=`[`CA_NAME`]. [`Ca::from_pem_files`] proves that by issuing a
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
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls_pki_types::pem::PemObject as _;
use zeroize::Zeroizing;

use crate::CertFiles;

/// The subject common name of the CA [`gen_certs`] makes, the only one
/// [`Ca::from_pem_files`] reads.
pub const CA_NAME: &str = "aokd ike-load CA";

/// The key type of a CA or of a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// Ed25519 (RFC 8410 keys, RFC 8420 in IKEv2).
    Ed25519,
    /// ECDSA on P-256 with SHA-256.
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
}

impl KeyType {
    /// `ed25519`, `p256` or `p384`.
    pub fn parse(text: &str) -> Result<KeyType, String> {
        match text {
            "ed25519" => Ok(KeyType::Ed25519),
            "p256" => Ok(KeyType::EcdsaP256),
            "p384" => Ok(KeyType::EcdsaP384),
            other => Err(format!("key type {other:?}: ed25519, p256 or p384")),
        }
    }

    /// The name [`KeyType::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::EcdsaP256 => "p256",
            KeyType::EcdsaP384 => "p384",
        }
    }

    /// The name strongSwan logs for signatures with this key
    /// ("authentication of '...' with ED25519 successful").
    pub fn strongswan_name(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ED25519",
            KeyType::EcdsaP256 => "ECDSA_WITH_SHA256_DER",
            KeyType::EcdsaP384 => "ECDSA_WITH_SHA384_DER",
        }
    }

    fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }

    /// A fresh key pair of this type; `what` names it in the error.
    fn generate(self, what: &str) -> Result<KeyPair, String> {
        KeyPair::generate_for(self.algorithm())
            .map_err(|e| format!("generating a {} key for {what}: {e}", self.name()))
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

/// Sets the validity of every certificate made here: from January 1st of
/// last year to January 1st ten years on, by the system clock.
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

/// Parameters with subject `CN=cn` and the validity.
fn params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    validity(&mut p);
    p
}

/// The parameters of a CA named `cn` (any path length).
fn ca_params(cn: &str) -> CertificateParams {
    let mut p = params(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// A certification authority that can issue certificates: its certificate
/// and key.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// An end-entity certificate, the intermediates between it and its root
/// (nearest first), and its private key.
pub struct Leaf {
    /// The certificate, DER.
    pub certificate: Vec<u8>,
    /// The intermediate CAs' certificates, DER, nearest the leaf first.
    pub intermediates: Vec<Vec<u8>>,
    /// The private key, PKCS#8 DER (Ed25519 in version 1), wiped on drop.
    pub private_key: Zeroizing<Vec<u8>>,
}

impl Ca {
    /// A self-signed root CA named `CN=name` with a fresh key of `key_type`.
    pub fn root(name: &str, key_type: KeyType) -> Result<Ca, String> {
        let key = key_type.generate(&format!("the CA {name:?}"))?;
        let cert = ca_params(name)
            .self_signed(&key)
            .map_err(|e| format!("signing the certificate of the CA {name:?}: {e}"))?;
        Ok(Ca { cert, key })
    }

    /// An intermediate CA named `CN=name` with a fresh key of `key_type`,
    /// signed by `self`.
    pub fn intermediate(&self, name: &str, key_type: KeyType) -> Result<Ca, String> {
        let key = key_type.generate(&format!("the CA {name:?}"))?;
        let cert = ca_params(name)
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| format!("signing the certificate of the CA {name:?}: {e}"))?;
        Ok(Ca { cert, key })
    }

    /// An end-entity certificate for `ip` (SAN IP and common name) with a
    /// fresh key of `key_type`, signed by `self`; `above` are the
    /// intermediates from `self` up to (not including) the root, `self`
    /// first when it is not the root (empty when it is).
    pub fn leaf(&self, ip: IpAddr, key_type: KeyType, above: &[&Ca]) -> Result<Leaf, String> {
        let key = key_type.generate(&ip.to_string())?;
        let mut p = params(&ip.to_string());
        p.subject_alt_names = vec![SanType::IpAddress(ip)];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = p
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| format!("signing the certificate of {ip}: {e}"))?;
        Ok(Leaf {
            certificate: cert.der().to_vec(),
            intermediates: above.iter().map(|c| c.certificate().to_vec()).collect(),
            private_key: pkcs8_v1(key.serialize_der()),
        })
    }

    /// An Ed25519 [`Ca::leaf`] for `ip` signed by `self` (no intermediates),
    /// written with [`Leaf::write`] into `dir` as `name` with the trust
    /// anchors `anchors`: one side's files. Panics on an error.
    pub fn ed25519_leaf_files(
        &self,
        ip: &str,
        dir: &Path,
        name: &str,
        anchors: &[&Ca],
    ) -> CertFiles {
        let ip: IpAddr = ip
            .parse()
            .unwrap_or_else(|e| panic!("{ip:?} is not an address: {e}"));
        self.leaf(ip, KeyType::Ed25519, &[])
            .and_then(|l| l.write(dir, name, anchors))
            .unwrap_or_else(|e| panic!("the certificate files of {name} ({ip}): {e}"))
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
        let issuer = ca_params(CA_NAME)
            .self_signed(&key_pair)
            .map_err(|e| format!("CA key {}: {e}", key.display()))?;
        let ca = Ca {
            cert: issuer,
            key: key_pair,
        };
        // Issue one certificate and validate it against the file.
        let probe_ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let probe = ca.leaf(probe_ip, KeyType::Ed25519, &[])?;
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
    pub fn certificate(&self) -> &[u8] {
        self.cert.der()
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> String {
        pem("CERTIFICATE", self.certificate())
    }

    /// The CA's private key, PKCS#8 DER (Ed25519 in version 1).
    pub fn private_key(&self) -> Zeroizing<Vec<u8>> {
        pkcs8_v1(self.key.serialize_der())
    }
}

impl Leaf {
    /// The certificate alone, PEM.
    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", &self.certificate)
    }

    /// The certificate then its intermediates, PEM.
    pub fn chain_pem(&self) -> String {
        let mut s = self.cert_pem();
        for i in &self.intermediates {
            s.push_str(&pem("CERTIFICATE", i));
        }
        s
    }

    /// The private key, PKCS#8 PEM (`BEGIN PRIVATE KEY`).
    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(pem("PRIVATE KEY", &self.private_key))
    }

    /// Writes `dir/NAME.pem` (certificate and intermediates),
    /// `dir/NAME.key` (mode 0600) and `dir/NAME-ca.pem` (the certificates
    /// of `anchors`), the files of one side with `auth = "pubkey"`.
    pub fn write(&self, dir: &Path, name: &str, anchors: &[&Ca]) -> Result<CertFiles, String> {
        let files = CertFiles {
            certificate: dir.join(format!("{name}.pem")),
            private_key: dir.join(format!("{name}.key")),
            ca: dir.join(format!("{name}-ca.pem")),
        };
        write_file(&files.certificate, self.chain_pem().as_bytes(), false)?;
        write_file(&files.private_key, self.key_pem().as_bytes(), true)?;
        let ca: String = anchors.iter().map(|c| c.pem()).collect();
        write_file(&files.ca, ca.as_bytes(), false)?;
        Ok(files)
    }
}

/// The files [`gen_certs`] writes.
#[derive(Clone, Debug)]
pub struct GeneratedCerts {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub responder_cert: PathBuf,
    pub responder_key: PathBuf,
}

/// A new CA (`CN=`[`CA_NAME`]) and a certificate for the responder at
/// `responder` (SAN IP), both of `key_type`, written into `dir` (created if
/// missing): `ca.pem`, `ca.key`, `responder.pem`, `responder.key`; the keys
/// mode 0600.
pub fn gen_certs(
    dir: &Path,
    responder: IpAddr,
    key_type: KeyType,
) -> Result<GeneratedCerts, String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ca = Ca::root(CA_NAME, key_type)?;
    let leaf = ca.leaf(responder, key_type, &[])?;
    let files = GeneratedCerts {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        responder_cert: dir.join("responder.pem"),
        responder_key: dir.join("responder.key"),
    };
    write_file(&files.ca_cert, ca.pem().as_bytes(), false)?;
    let ca_key = Zeroizing::new(pem("PRIVATE KEY", &ca.private_key()));
    write_file(&files.ca_key, ca_key.as_bytes(), true)?;
    write_file(&files.responder_cert, leaf.cert_pem().as_bytes(), false)?;
    write_file(&files.responder_key, leaf.key_pem().as_bytes(), true)?;
    Ok(files)
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

#[cfg(test)]
mod tests {
    use super::*;

    use aokd_proto::crypto::sig::{PrivateKey, SignatureScheme};

    const ALL: [KeyType; 3] = [KeyType::Ed25519, KeyType::EcdsaP256, KeyType::EcdsaP384];

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
        assert_eq!(pem("X", b"f"), "-----BEGIN X-----\nZg==\n-----END X-----\n");
        let lines: Vec<String> = pem("X", &[0u8; 60]).lines().map(String::from).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines[2], "A".repeat(16));
    }

    #[test]
    fn key_types_parse_their_names() {
        for kt in ALL {
            assert_eq!(KeyType::parse(kt.name()), Ok(kt));
        }
        assert!(KeyType::parse("rsa").is_err());
    }

    #[test]
    fn ed25519_keys_are_written_in_pkcs8_version_1() {
        let ca = Ca::root(CA_NAME, KeyType::Ed25519).unwrap();
        let leaf = ca
            .leaf(IpAddr::V4(Ipv4Addr::LOCALHOST), KeyType::Ed25519, &[])
            .unwrap();
        for der in [ca.private_key(), leaf.private_key] {
            assert_eq!(der.len(), 48);
            assert_eq!(der[..16], ED25519_V1);
            // The engine and rcgen read it back.
            PrivateKey::from_pkcs8_der(&der).expect("engine");
            KeyPair::try_from(&der[..]).expect("rcgen");
        }
        // ECDSA keys are left alone (OpenSSL reads ring's encoding).
        for (kt, scheme) in [
            (KeyType::EcdsaP256, SignatureScheme::EcdsaP256Sha256),
            (KeyType::EcdsaP384, SignatureScheme::EcdsaP384Sha384),
        ] {
            let p = Ca::root(CA_NAME, kt).unwrap().private_key();
            assert_ne!(p[..16], ED25519_V1);
            let k = PrivateKey::from_pkcs8_der(&p).expect("engine");
            assert_eq!(k.scheme(), scheme);
        }
    }

    #[test]
    fn a_chain_validates_and_its_key_is_written_private() {
        let root = Ca::root("test root", KeyType::Ed25519).unwrap();
        let i1 = root.intermediate("test i1", KeyType::EcdsaP256).unwrap();
        let i2 = i1.intermediate("test i2", KeyType::EcdsaP384).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let leaf = i2.leaf(ip, KeyType::Ed25519, &[&i2, &i1]).unwrap();
        assert_eq!(leaf.intermediates.len(), 2);
        assert_eq!(leaf.chain_pem().matches("BEGIN CERTIFICATE").count(), 3);
        let anchors = TrustAnchors::from_der(&[root.certificate().to_vec()]).unwrap();
        anchors
            .verify_peer(
                &leaf.certificate,
                &leaf.intermediates,
                SystemTime::now(),
                &Identity::from_ip(ip),
            )
            .expect("the chain validates");

        let dir = crate::temp_dir("pki-chain");
        let f = leaf.write(&dir, "r1", &[&root]).unwrap();
        let mode = fs::metadata(&f.private_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        assert!(fs::read_to_string(&f.private_key)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(fs::read_to_string(&f.ca).unwrap(), root.pem());
        assert_eq!(
            read_pem_certificate(&f.certificate).unwrap(),
            leaf.certificate
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn gen_certs_writes_a_ca_that_issues_verifiable_certificates() {
        let dir = crate::temp_dir("pki-unit");
        for kt in ALL {
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
            let leaf = ca.leaf(ip, kt, &[]).unwrap();
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
            let k = PrivateKey::from_pkcs8_der(pkcs8.secret_pkcs8_der())
                .expect("the engine reads the key");
            let want = match kt {
                KeyType::Ed25519 => SignatureScheme::Ed25519,
                KeyType::EcdsaP256 => SignatureScheme::EcdsaP256Sha256,
                KeyType::EcdsaP384 => SignatureScheme::EcdsaP384Sha384,
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
