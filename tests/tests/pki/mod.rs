//! A small private PKI made by the tests with rcgen (a module of the
//! certificate test binaries, `mod pki;`, as rcgen is a dev-dependency): a root CA
//! ([`Ca::root`]), intermediates ([`Ca::intermediate`]) and end-entity
//! certificates for a router address ([`Ca::leaf`]: SAN IP = the address,
//! CN = the address), written as PEM files ([`Leaf::write`]: certificate
//! and intermediates, PKCS#8 private key with mode 0600, trust anchors).
//!
//! Validity is taken from the system clock (from the start of last year to
//! the start of the year after next), so nothing here expires; no
//! certificate is kept in the repository. rcgen is built without its `pem`
//! feature, so [`pem`] encodes.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use aokd_tests::CertFiles;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
    SignatureAlgorithm,
};

/// The key types the tests use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Ed25519,
    EcdsaP256,
    EcdsaP384,
}

impl Alg {
    fn rcgen(self) -> &'static SignatureAlgorithm {
        match self {
            Alg::Ed25519 => &rcgen::PKCS_ED25519,
            Alg::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Alg::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }

    /// The name strongSwan logs for signatures with this key
    /// ("authentication of '...' with ED25519 successful").
    pub fn strongswan_name(self) -> &'static str {
        match self {
            Alg::Ed25519 => "ED25519",
            Alg::EcdsaP256 => "ECDSA_WITH_SHA256_DER",
            Alg::EcdsaP384 => "ECDSA_WITH_SHA384_DER",
        }
    }
}

/// A certification authority: its certificate and key.
pub struct Ca {
    pub name: String,
    pub cert: rcgen::Certificate,
    key: KeyPair,
}

/// An end-entity certificate, the intermediates between it and its root
/// (nearest first), and its private key.
pub struct Leaf {
    pub cert: Vec<u8>,
    pub intermediates: Vec<Vec<u8>>,
    key: KeyPair,
}

/// The current year by the system clock (to the day is not needed: the
/// validity has a year of margin each side).
fn this_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    1970 + (secs / 31_556_952) as i32
}

fn params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    let year = this_year();
    p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    p.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
    p
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = params(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

fn key(alg: Alg) -> KeyPair {
    KeyPair::generate_for(alg.rcgen()).expect("generate a key pair")
}

impl Ca {
    /// A self-signed root CA with a key of `alg`.
    pub fn root(name: &str, alg: Alg) -> Ca {
        let key = key(alg);
        let cert = ca_params(name).self_signed(&key).expect("self-sign");
        Ca {
            name: name.into(),
            cert,
            key,
        }
    }

    /// An intermediate CA signed by `self`.
    pub fn intermediate(&self, name: &str, alg: Alg) -> Ca {
        let key = key(alg);
        let cert = ca_params(name)
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign intermediate");
        Ca {
            name: name.into(),
            cert,
            key,
        }
    }

    /// An end-entity certificate for `ip` (SAN IP and CN), key of `alg`,
    /// signed by `self`; `above` are the intermediates from `self` up to
    /// (not including) the root, `self` first when it is not the root.
    pub fn leaf(&self, ip: IpAddr, alg: Alg, above: &[&Ca]) -> Leaf {
        let key = key(alg);
        let mut p = params(&ip.to_string());
        p.subject_alt_names = vec![SanType::IpAddress(ip)];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("sign leaf");
        Leaf {
            cert: cert.der().to_vec(),
            intermediates: above.iter().map(|c| c.cert.der().to_vec()).collect(),
            key,
        }
    }

    /// The certificate as PEM.
    pub fn pem(&self) -> String {
        pem("CERTIFICATE", self.cert.der())
    }
}

impl Leaf {
    /// The certificate alone, PEM.
    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", &self.cert)
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
    pub fn key_pem(&self) -> String {
        pem("PRIVATE KEY", &self.key.serialize_der())
    }

    /// Writes `dir/NAME.pem` (certificate and intermediates),
    /// `dir/NAME.key` (mode 0600) and `dir/NAME-ca.pem` (the PEM of
    /// `anchors`).
    pub fn write(&self, dir: &Path, name: &str, anchors: &[&Ca]) -> CertFiles {
        let files = CertFiles {
            certificate: dir.join(format!("{name}.pem")),
            private_key: dir.join(format!("{name}.key")),
            ca: dir.join(format!("{name}-ca.pem")),
        };
        fs::write(&files.certificate, self.chain_pem()).expect("write certificate");
        write_private(&files.private_key, &self.key_pem());
        let ca: String = anchors.iter().map(|c| c.pem()).collect();
        fs::write(&files.ca, ca).expect("write CA file");
        files
    }
}

/// Writes a file only its owner may read (mode 0600 from creation).
pub fn write_private(path: &Path, text: &str) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// `der` as a PEM block with `label` (RFC 7468: base64, 64 columns).
pub fn pem(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_is_base64_in_lines_of_64() {
        assert_eq!(
            pem("X", b"foobar"),
            "-----BEGIN X-----\nZm9vYmFy\n-----END X-----\n"
        );
        assert_eq!(
            pem("X", b"fo"),
            "-----BEGIN X-----\nZm8=\n-----END X-----\n"
        );
        assert_eq!(pem("X", b"f"), "-----BEGIN X-----\nZg==\n-----END X-----\n");
        let long = pem("X", &[0u8; 60]);
        let lines: Vec<&str> = long.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines[2], "A".repeat(16));
    }

    #[test]
    fn a_leaf_chains_and_is_written_private() {
        let root = Ca::root("test root", Alg::Ed25519);
        let i1 = root.intermediate("test i1", Alg::EcdsaP256);
        let leaf = i1.leaf("192.0.2.1".parse().unwrap(), Alg::Ed25519, &[&i1]);
        assert_eq!(leaf.intermediates.len(), 1);
        assert_eq!(leaf.chain_pem().matches("BEGIN CERTIFICATE").count(), 2);
        let dir = aokd_tests::temp_dir("pki");
        let f = leaf.write(&dir, "r1", &[&root]);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&f.private_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        assert!(fs::read_to_string(&f.private_key)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----\n"));
    }
}
