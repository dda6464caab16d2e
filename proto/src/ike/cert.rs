//! X.509 certificates of IKE peers (RFC 7296 3.6, 3.7, RFC 4945): trust
//! anchors and their CERTREQ hashes, validation of a peer's end-entity
//! certificate and intermediates with `rustls-webpki` at a wall-clock time
//! passed in, extended key usage, revocation from configured CRLs (RFC 5280
//! 5, every certificate of the chain), and the match of the peer's IKE
//! identity with the certificate. Errors name the reason (expired, not yet
//! valid, unknown CA, key usage, revoked with serial and reason, identity
//! received against the certificate's).
//!
//! Revocation policy: a certificate is checked against the first
//! configured CRL whose issuer is the certificate's issuer (webpki's
//! choice; its signature must verify with the issuer's key, else the chain
//! is refused; a CRL of a trust anchor is verified when it is added). A
//! certificate whose issuer has no CRL configured is
//! accepted, and a CRL of another CA is not about these certificates and
//! is not used. A CRL past its nextUpdate is still used (as strongSwan
//! does): an old list of revocations is better than none.
//!
//! IKE_AUTH (`auth`) uses it for a peer configured with
//! [`PeerKey::Certificate`](super::PeerKey::Certificate).

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use spki::der::{AnyRef, Decode, Tagged};
use webpki::{
    CertRevocationList, EndEntityCert, Error as WebpkiError, ExpirationPolicy, KeyPurposeId,
    KeyPurposeIdIter, OwnedCertRevocationList, RevocationCheckDepth, RevocationOptionsBuilder,
    RevocationReason, UnknownStatusPolicy,
};

use super::config::Identity;
use crate::crypto::sig::PublicKey;
use crate::numbers::IdType;

/// The signature algorithms accepted in certificates.
static CERT_ALGS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ED25519,
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// id-kp-ipsecIKE (RFC 4945 5.1.3.12), id-kp-serverAuth, id-kp-clientAuth
/// (RFC 5280 4.2.1.12), anyExtendedKeyUsage: the OID contents.
const EKU_IPSEC_IKE: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x11];
const EKU_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
const EKU_ANY: &[u8] = &[0x55, 0x1d, 0x25, 0x00];

/// The EKU rule for IKE peers: no EKU extension, or one that lists
/// ipsecIKE, serverAuth, clientAuth or anyExtendedKeyUsage (strongSwan's
/// certificates carry serverAuth, RFC 4945 allows all of these).
struct IkeUsage;

impl webpki::ExtendedKeyUsageValidator for IkeUsage {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), WebpkiError> {
        let accepted =
            [EKU_IPSEC_IKE, EKU_SERVER_AUTH, EKU_CLIENT_AUTH, EKU_ANY].map(KeyPurposeId::new);
        let mut present = Vec::new();
        for id in iter {
            let id = id?;
            if accepted.contains(&id) {
                return Ok(());
            }
            present.push(id.to_decoded_oid());
        }
        if present.is_empty() {
            return Ok(());
        }
        Err(WebpkiError::RequiredEkuNotFoundContext(
            webpki::RequiredEkuNotFoundContext {
                required: webpki::KeyUsage::required(EKU_IPSEC_IKE),
                present,
            },
        ))
    }
}

/// Why a peer's certificate was not accepted, for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("the certificate is not valid DER X.509: {0}")]
    Malformed(String),
    #[error("the certificate expired at {not_after} (now {now})")]
    Expired { not_after: String, now: String },
    #[error("the certificate is not valid before {not_before} (now {now})")]
    NotYetValid { not_before: String, now: String },
    #[error("the certificate is not issued by a configured CA (no chain to a trust anchor)")]
    UnknownCa,
    #[error(
        "the certificate's extended key usage allows neither ipsecIKE, serverAuth nor clientAuth"
    )]
    KeyUsage,
    #[error("a certificate in the chain has a bad signature")]
    BadSignature,
    #[error("the {which} (serial {serial}) is revoked: {detail}")]
    Revoked {
        /// `end-entity certificate` or `intermediate certificate 1`, ...
        which: String,
        /// The serial number in hex, `01:a2:...`.
        serial: String,
        /// When and why, as the CRL says.
        detail: String,
    },
    #[error("a configured CRL cannot be used for this chain: {0}")]
    Crl(String),
    #[error("the identity {got} ({got_type}) is not in the certificate ({names})")]
    Identity {
        got: String,
        got_type: IdType,
        names: String,
    },
    #[error("the certificate's public key is not usable: {0}")]
    Key(String),
    #[error("the certificate chain is refused: {0}")]
    Other(String),
}

/// The configured CAs of a peer, and the CRLs its certificates are checked
/// against.
pub struct TrustAnchors {
    anchors: Vec<TrustAnchor<'static>>,
    /// SHA-1 of each CA's SubjectPublicKeyInfo (RFC 7296 3.7), in order.
    hashes: Vec<[u8; 20]>,
    /// The CRLs, in configuration order (the first one of an issuer wins).
    crls: Vec<CertRevocationList<'static>>,
}

impl fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustAnchors")
            .field(
                "anchors",
                &self.hashes.iter().map(hex::encode).collect::<Vec<_>>(),
            )
            .field("crls", &self.crls.len())
            .finish()
    }
}

/// What a CRL holds, as parsed by webpki (for `check-config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlInfo {
    /// The issuer Name's contents (DER, without the SEQUENCE header).
    pub issuer: Vec<u8>,
    /// How many certificates it lists as revoked.
    pub revoked: usize,
}

/// Parses a CRL (DER, RFC 5280 5.1, version 2) as the validation will use
/// it; the error says why webpki refuses it (delta CRL, unsupported
/// critical extension, bad DER, ...). The signature is checked when the
/// CRL is used, against the issuer met in the chain.
pub fn parse_crl(der: &[u8]) -> Result<CrlInfo, String> {
    let crl = webpki::BorrowedCertRevocationList::from_der(der).map_err(|e| e.to_string())?;
    let mut revoked = 0usize;
    for entry in &crl {
        entry.map_err(|e| format!("revoked certificate entry {revoked}: {e}"))?;
        revoked += 1;
    }
    let issuer = CertRevocationList::from(crl).issuer().to_vec();
    Ok(CrlInfo { issuer, revoked })
}

impl TrustAnchors {
    /// Trust anchors from CA certificates (DER); the error names which one
    /// (0-based) is not a certificate.
    pub fn from_der(certs: &[Vec<u8>]) -> Result<Self, String> {
        let mut anchors = Vec::with_capacity(certs.len());
        let mut hashes = Vec::with_capacity(certs.len());
        for (i, der) in certs.iter().enumerate() {
            let cd = CertificateDer::from(der.as_slice());
            let a = webpki::anchor_from_trusted_cert(&cd)
                .map_err(|e| format!("CA certificate {i}: {e}"))?
                .to_owned();
            let ee =
                EndEntityCert::try_from(&cd).map_err(|e| format!("CA certificate {i}: {e}"))?;
            let spki = ee.subject_public_key_info();
            let digest =
                ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, spki.as_ref());
            let mut h = [0u8; 20];
            h.copy_from_slice(digest.as_ref());
            anchors.push(a);
            hashes.push(h);
        }
        Ok(TrustAnchors {
            anchors,
            hashes,
            crls: Vec::new(),
        })
    }

    /// These anchors with CRLs (DER) to check every certificate of a
    /// chain against; the error names which one (0-based) does not parse
    /// and why.
    ///
    /// A CRL whose issuer is one of these CAs must be signed by its key
    /// (checked here, so that a wrong file is found at load); the CRL of
    /// an intermediate is checked when a chain meets the intermediate.
    pub fn with_crls(mut self, crls: &[Vec<u8>]) -> Result<Self, String> {
        for (i, der) in crls.iter().enumerate() {
            let crl: CertRevocationList<'static> = OwnedCertRevocationList::from_der(der)
                .map_err(|e| format!("CRL {i}: {e}"))?
                .into();
            let same_name: Vec<usize> = (0..self.anchors.len())
                .filter(|&j| self.anchors[j].subject.as_ref() == crl.issuer())
                .collect();
            let signed = same_name
                .iter()
                .any(|&j| crl_signed_by(der, self.anchors[j].subject_public_key_info.as_ref()));
            if let (Some(j), false) = (same_name.first(), signed) {
                return Err(format!(
                    "CRL {i}: its issuer is the subject of CA certificate {j}, but it is not signed by that CA's key"
                ));
            }
            self.crls.push(crl);
        }
        Ok(self)
    }

    /// How many CRLs are configured.
    pub fn crl_count(&self) -> usize {
        self.crls.len()
    }

    /// The body of a CERTREQ payload after its encoding octet (RFC 7296
    /// 3.7): the SHA-1 hashes of the CAs' public keys, concatenated.
    pub fn certreq_hashes(&self) -> Vec<u8> {
        self.hashes.concat()
    }

    /// Whether a CERTREQ body names one of these CAs.
    pub fn any_requested(&self, certreq: &[u8]) -> bool {
        certreq
            .chunks_exact(20)
            .any(|c| self.hashes.iter().any(|h| h[..] == *c))
    }

    /// Validates `end_entity` and `intermediates` (DER) to one of these
    /// anchors at `now`, checks the EKU and that `id` names the certificate,
    /// and returns its public key.
    pub fn verify_peer(
        &self,
        end_entity: &[u8],
        intermediates: &[Vec<u8>],
        now: SystemTime,
        id: &Identity,
    ) -> Result<PublicKey, CertError> {
        let cd = CertificateDer::from(end_entity);
        let ee = EndEntityCert::try_from(&cd).map_err(|e| CertError::Malformed(e.to_string()))?;
        let inter: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|d| CertificateDer::from(d.as_slice()))
            .collect();
        let since = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let time = UnixTime::since_unix_epoch(since);
        let crls: Vec<&CertRevocationList<'_>> = self.crls.iter().collect();
        // `new` fails only without CRLs: then no revocation check.
        let revocation = RevocationOptionsBuilder::new(&crls).ok().map(|b| {
            b.with_depth(RevocationCheckDepth::Chain)
                .with_status_policy(UnknownStatusPolicy::Allow)
                .with_expiration_policy(ExpirationPolicy::Ignore)
                .build()
        });
        ee.verify_for_usage(
            CERT_ALGS,
            &self.anchors,
            &inter,
            time,
            IkeUsage,
            revocation,
            None,
        )
        .map_err(|e| match e {
            WebpkiError::CertRevoked => self.revoked(&ee, &inter),
            e => chain_error(e),
        })?;
        identity_in_cert(&ee, id)?;
        PublicKey::from_spki_der(ee.subject_public_key_info().as_ref()).map_err(CertError::Key)
    }
}

impl TrustAnchors {
    /// Which certificate of the chain a CRL lists, with serial and reason
    /// (webpki says only "revoked"): the first one, end entity first, that
    /// the first CRL of its issuer lists.
    fn revoked(&self, ee: &EndEntityCert<'_>, inter: &[CertificateDer<'_>]) -> CertError {
        let parsed: Vec<EndEntityCert<'_>> = inter
            .iter()
            .filter_map(|c| EndEntityCert::try_from(c).ok())
            .collect();
        let chain = std::iter::once(ee).chain(parsed.iter());
        for (i, cert) in chain.enumerate() {
            let Some(crl) = self.crls.iter().find(|c| c.issuer() == cert.issuer()) else {
                continue;
            };
            if let Ok(Some(entry)) = crl.find_serial(cert.serial()) {
                let which = match i {
                    0 => "end-entity certificate".to_string(),
                    n => format!("intermediate certificate {n}"),
                };
                let mut detail = format!(
                    "listed in the CRL of its issuer, revoked at {}",
                    utc(entry.revocation_date)
                );
                if let Some(r) = entry.reason_code {
                    detail.push_str(", reason ");
                    detail.push_str(reason_name(r));
                }
                return CertError::Revoked {
                    which,
                    serial: serial_hex(cert.serial()),
                    detail,
                };
            }
        }
        CertError::Revoked {
            which: "a certificate of the chain".into(),
            serial: "unknown".into(),
            detail: "listed in a configured CRL".into(),
        }
    }
}

/// One DER element.
struct Tlv<'a> {
    tag: u8,
    /// The contents.
    value: &'a [u8],
    /// Tag, length and contents.
    whole: &'a [u8],
    /// What follows the element.
    rest: &'a [u8],
}

/// The first DER element of `der`, if it is complete.
fn tlv(der: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, head) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    if der.len() < end {
        return None;
    }
    Some(Tlv {
        tag,
        value: &der[head..end],
        whole: &der[..end],
        rest: &der[end..],
    })
}

/// The first DER element of `der` if its tag is `tag`.
fn tagged(der: &[u8], tag: u8) -> Option<Tlv<'_>> {
    tlv(der).filter(|t| t.tag == tag)
}

/// Whether the CRL `crl` (DER) is signed by the key of a SubjectPublicKeyInfo
/// (its contents, as a trust anchor holds it), with one of the accepted
/// algorithms. Malformed input: `false`.
fn crl_signed_by(crl: &[u8], spki: &[u8]) -> bool {
    let check = || -> Option<bool> {
        let list = tagged(crl, 0x30)?.value;
        let tbs = tlv(list)?;
        let sig_alg = tagged(tbs.rest, 0x30)?;
        let sig = tagged(sig_alg.rest, 0x03)?.value.strip_prefix(&[0])?;
        let key_alg = tagged(spki, 0x30)?;
        let key = tagged(key_alg.rest, 0x03)?.value.strip_prefix(&[0])?;
        Some(CERT_ALGS.iter().any(|a| {
            a.public_key_alg_id().as_ref() == key_alg.value
                && a.signature_alg_id().as_ref() == sig_alg.value
                && a.verify_signature(key, tbs.whole, sig).is_ok()
        }))
    };
    check().unwrap_or(false)
}

/// A serial number's INTEGER contents as `01:a2:...` (the sign octet of a
/// positive number left out).
fn serial_hex(serial: &[u8]) -> String {
    let s = match serial {
        [0, rest @ ..] if !rest.is_empty() => rest,
        s => s,
    };
    s.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// RFC 5280 5.3.1's name of a CRLReason.
fn reason_name(r: RevocationReason) -> &'static str {
    match r {
        RevocationReason::Unspecified => "unspecified",
        RevocationReason::KeyCompromise => "keyCompromise",
        RevocationReason::CaCompromise => "cACompromise",
        RevocationReason::AffiliationChanged => "affiliationChanged",
        RevocationReason::Superseded => "superseded",
        RevocationReason::CessationOfOperation => "cessationOfOperation",
        RevocationReason::CertificateHold => "certificateHold",
        RevocationReason::RemoveFromCrl => "removeFromCRL",
        RevocationReason::PrivilegeWithdrawn => "privilegeWithdrawn",
        RevocationReason::AaCompromise => "aACompromise",
    }
}

// Matches the deprecated variant too (older webpki code paths).
#[allow(deprecated)]
fn chain_error(e: WebpkiError) -> CertError {
    match e {
        WebpkiError::CertExpired { time, not_after } => CertError::Expired {
            not_after: utc(not_after),
            now: utc(time),
        },
        WebpkiError::CertNotValidYet { time, not_before } => CertError::NotYetValid {
            not_before: utc(not_before),
            now: utc(time),
        },
        WebpkiError::UnknownIssuer => CertError::UnknownCa,
        WebpkiError::RequiredEkuNotFound | WebpkiError::RequiredEkuNotFoundContext(_) => {
            CertError::KeyUsage
        }
        WebpkiError::InvalidSignatureForPublicKey => CertError::BadSignature,
        WebpkiError::InvalidCrlSignatureForPublicKey => CertError::Crl(
            "the CRL of a certificate's issuer is not signed by the issuer's key".into(),
        ),
        WebpkiError::IssuerNotCrlSigner => CertError::Crl(
            "a certificate's issuer may not sign CRLs (its key usage lacks cRLSign)".into(),
        ),
        WebpkiError::UnsupportedCrlSignatureAlgorithm
        | WebpkiError::UnsupportedCrlSignatureAlgorithmContext(_)
        | WebpkiError::UnsupportedCrlSignatureAlgorithmForPublicKey
        | WebpkiError::UnsupportedCrlSignatureAlgorithmForPublicKeyContext(_) => CertError::Crl(
            format!("the CRL of a certificate's issuer has an unsupported signature: {e}"),
        ),
        WebpkiError::BadDer | WebpkiError::BadDerTime => CertError::Malformed(e.to_string()),
        other => CertError::Other(other.to_string()),
    }
}

/// The SHA-1 of a certificate's SubjectPublicKeyInfo, as CERTREQ names a
/// CA (RFC 7296 3.7); `None` when `der` is not a certificate.
pub fn spki_sha1(der: &[u8]) -> Option<[u8; 20]> {
    let cd = CertificateDer::from(der);
    EndEntityCert::try_from(&cd).ok().map(|c| sha1_of_spki(&c))
}

fn sha1_of_spki(c: &EndEntityCert<'_>) -> [u8; 20] {
    let spki = c.subject_public_key_info();
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, spki.as_ref());
    let mut h = [0u8; 20];
    h.copy_from_slice(digest.as_ref());
    h
}

/// RFC 4945 3.1: ID_IPV4_ADDR / ID_IPV6_ADDR must be a SAN iPAddress,
/// ID_FQDN a SAN dNSName, ID_DER_ASN1_DN the subject.
fn identity_in_cert(ee: &EndEntityCert<'_>, id: &Identity) -> Result<(), CertError> {
    let ok = match id.id_type {
        IdType::ID_IPV4_ADDR | IdType::ID_IPV6_ADDR => ip_of(id).is_some_and(|ip| {
            let name = ServerName::IpAddress(ip.into());
            ee.verify_is_valid_for_subject_name(&name).is_ok()
        }),
        IdType::ID_FQDN => std::str::from_utf8(&id.data)
            .ok()
            .and_then(|s| ServerName::try_from(s).ok())
            .is_some_and(|name| ee.verify_is_valid_for_subject_name(&name).is_ok()),
        IdType::ID_DER_ASN1_DN => AnyRef::from_der(&id.data).is_ok_and(|name| {
            name.tag() == spki::der::Tag::Sequence
                && (name.value() == ee.subject()
                    || id.matches(&Identity {
                        id_type: IdType::ID_DER_ASN1_DN,
                        data: super::dn::sequence(ee.subject()).into(),
                    }))
        }),
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let mut names: Vec<String> = ee.valid_dns_names().map(|n| format!("DNS {n}")).collect();
    names.push("SAN IP addresses and the subject DN not listed here".to_string());
    Err(CertError::Identity {
        got: id.to_string(),
        got_type: id.id_type,
        names: names.join(", "),
    })
}

/// The subject of a certificate (DER) as an ID_DER_ASN1_DN identity, the
/// exact octets the certificate holds; `None` when `der` is no certificate.
pub fn subject_identity(der: &[u8]) -> Option<Identity> {
    let cd = CertificateDer::from(der);
    let ee = EndEntityCert::try_from(&cd).ok()?;
    Some(Identity {
        id_type: IdType::ID_DER_ASN1_DN,
        data: super::dn::sequence(ee.subject()).into(),
    })
}

fn ip_of(id: &Identity) -> Option<IpAddr> {
    match (id.id_type, id.data.len()) {
        (IdType::ID_IPV4_ADDR, 4) => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(&id.data[..]).ok()?,
        ))),
        (IdType::ID_IPV6_ADDR, 16) => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(&id.data[..]).ok()?,
        ))),
        _ => None,
    }
}

/// `2026-12-02T06:00:00Z` for a Unix time (proleptic Gregorian, UTC).
fn utc(t: UnixTime) -> String {
    let secs = t.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        SanType,
    };

    const NOW: u64 = 1_780_000_000; // 2026-05-28

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn params(cn: &str, ca: bool) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = rcgen::date_time_ymd(2026, 1, 1);
        p.not_after = rcgen::date_time_ymd(2027, 1, 1);
        if ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        p
    }

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn root(cn: &str) -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params(cn, true).self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn sub(cn: &str, by: &Ca) -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = params(cn, true).signed_by(&key, &by.cert, &by.key).unwrap();
        Ca { cert, key }
    }

    fn leaf(by: &Ca, f: impl FnOnce(&mut CertificateParams)) -> (Vec<u8>, KeyPair) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut p = params("r1", false);
        p.subject_alt_names = vec![
            SanType::IpAddress("192.0.2.1".parse().unwrap()),
            SanType::DnsName("r1.example.net".try_into().unwrap()),
        ];
        f(&mut p);
        let cert = p.signed_by(&key, &by.cert, &by.key).unwrap();
        (cert.der().to_vec(), key)
    }

    fn anchors(ca: &Ca) -> TrustAnchors {
        TrustAnchors::from_der(&[ca.cert.der().to_vec()]).unwrap()
    }

    fn ip_id() -> Identity {
        Identity::parse("192.0.2.1")
    }

    /// A CRL of `by` revoking `serials` (key compromise), next update at
    /// `next`.
    fn crl(by: &Ca, serials: &[u64], next: (i32, u8, u8)) -> Vec<u8> {
        let p = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2026, 1, 1),
            next_update: rcgen::date_time_ymd(next.0, next.1, next.2),
            crl_number: rcgen::SerialNumber::from(7u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2026, 4, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        p.signed_by(&by.cert, &by.key).unwrap().der().to_vec()
    }

    fn serial(n: u64) -> impl FnOnce(&mut CertificateParams) {
        move |p| p.serial_number = Some(rcgen::SerialNumber::from(n))
    }

    #[test]
    fn depth_one_and_three_chains_verify_and_give_the_key() {
        let ca = root("root");
        let (ee, key) = leaf(&ca, |_| {});
        let pk = anchors(&ca).verify_peer(&ee, &[], now(), &ip_id()).unwrap();
        let mine = crate::crypto::sig::PrivateKey::from_pkcs8_der(&key.serialize_der()).unwrap();
        assert_eq!(pk, mine.public_key());
        let fqdn = Identity::parse("r1.example.net");
        anchors(&ca).verify_peer(&ee, &[], now(), &fqdn).unwrap();

        let i1 = sub("intermediate 1", &ca);
        let i2 = sub("intermediate 2", &i1);
        let (ee, _) = leaf(&i2, |_| {});
        let inter = vec![i2.cert.der().to_vec(), i1.cert.der().to_vec()];
        anchors(&ca)
            .verify_peer(&ee, &inter, now(), &ip_id())
            .unwrap();
        // Without the intermediates the chain does not reach the root.
        assert_eq!(
            anchors(&ca).verify_peer(&ee, &[], now(), &ip_id()),
            Err(CertError::UnknownCa)
        );
    }

    #[test]
    fn expired_and_not_yet_valid_name_the_times() {
        let ca = root("root");
        let (ee, _) = leaf(&ca, |p| p.not_after = rcgen::date_time_ymd(2026, 3, 1));
        let e = anchors(&ca)
            .verify_peer(&ee, &[], now(), &ip_id())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the certificate expired at 2026-03-01T00:00:00Z (now 2026-05-28T20:26:40Z)"
        );
        let (ee, _) = leaf(&ca, |p| p.not_before = rcgen::date_time_ymd(2026, 12, 1));
        let e = anchors(&ca)
            .verify_peer(&ee, &[], now(), &ip_id())
            .unwrap_err();
        assert!(matches!(e, CertError::NotYetValid { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("not valid before 2026-12-01T00:00:00Z"),
            "{e}"
        );
    }

    #[test]
    fn wrong_ca_wrong_identity_and_wrong_usage_are_named() {
        let ca = root("root");
        let other = root("another root");
        let (ee, _) = leaf(&other, |_| {});
        assert_eq!(
            anchors(&ca).verify_peer(&ee, &[], now(), &ip_id()),
            Err(CertError::UnknownCa)
        );
        let (ee, _) = leaf(&ca, |_| {});
        let e = anchors(&ca)
            .verify_peer(&ee, &[], now(), &Identity::parse("192.0.2.9"))
            .unwrap_err();
        assert!(
            e.to_string().starts_with("the identity 192.0.2.9 (ID_IPV4_ADDR) is not in the certificate (DNS r1.example.net"),
            "{e}"
        );
        let (ee, _) = leaf(&ca, |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning]
        });
        assert_eq!(
            anchors(&ca).verify_peer(&ee, &[], now(), &ip_id()),
            Err(CertError::KeyUsage)
        );
        let (ee, _) = leaf(&ca, |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
        });
        anchors(&ca).verify_peer(&ee, &[], now(), &ip_id()).unwrap();
    }

    #[test]
    fn a_forged_signature_is_named() {
        let ca = root("root");
        let (mut ee, _) = leaf(&ca, |_| {});
        // The last octet is in the CA's ECDSA signature value (s).
        let last = ee.len() - 1;
        ee[last] ^= 0x01;
        assert_eq!(
            anchors(&ca).verify_peer(&ee, &[], now(), &ip_id()),
            Err(CertError::BadSignature)
        );
        assert!(matches!(
            anchors(&ca).verify_peer(&ee[..40], &[], now(), &ip_id()),
            Err(CertError::Malformed(_))
        ));
        assert_eq!(spki_sha1(&ee[..40]), None);
    }

    #[test]
    fn a_revoked_leaf_is_named_with_serial_and_reason() {
        let ca = root("root");
        let (ee, _) = leaf(&ca, serial(0x1234));
        let list = crl(&ca, &[0x99, 0x1234], (2026, 12, 1));
        let a = anchors(&ca).with_crls(std::slice::from_ref(&list)).unwrap();
        assert_eq!(a.crl_count(), 1);
        let e = a.verify_peer(&ee, &[], now(), &ip_id()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the end-entity certificate (serial 12:34) is revoked: listed in the CRL of its \
             issuer, revoked at 2026-04-01T00:00:00Z, reason keyCompromise"
        );
        // Not listed: accepted with the CRL present.
        let (ee, _) = leaf(&ca, serial(0x1235));
        a.verify_peer(&ee, &[], now(), &ip_id()).unwrap();
        // A CRL past its nextUpdate is still used.
        let old = crl(&ca, &[0x1235], (2026, 2, 1));
        let e = anchors(&ca)
            .with_crls(&[old])
            .unwrap()
            .verify_peer(&ee, &[], now(), &ip_id())
            .unwrap_err();
        assert!(matches!(e, CertError::Revoked { .. }), "{e}");
        let info = parse_crl(&list).unwrap();
        assert_eq!(info.revoked, 2);
        assert_eq!(
            info.issuer,
            EndEntityCert::try_from(&CertificateDer::from(ca.cert.der().as_ref()))
                .unwrap()
                .subject()
        );
    }

    #[test]
    fn a_revoked_intermediate_is_named() {
        let ca = root("root");
        let i1 = sub("intermediate 1", &ca);
        let i2 = sub("intermediate 2", &i1);
        let (ee, _) = leaf(&i2, serial(5));
        let i2_serial = {
            let cd = CertificateDer::from(i2.cert.der().as_ref());
            EndEntityCert::try_from(&cd).unwrap().serial().to_vec()
        };
        let inter = vec![i2.cert.der().to_vec(), i1.cert.der().to_vec()];
        // i1 revokes i2 (by its serial, derived from its key by rcgen);
        // the root's CRL lists other serials.
        let p = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2026, 1, 1),
            next_update: rcgen::date_time_ymd(2026, 12, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&i2_serial),
                revocation_time: rcgen::date_time_ymd(2026, 4, 1),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let by_i1 = p.signed_by(&i1.cert, &i1.key).unwrap().der().to_vec();
        let by_root = crl(&ca, &[5], (2026, 12, 1));
        let a = anchors(&ca).with_crls(&[by_root, by_i1]).unwrap();
        let e = a.verify_peer(&ee, &inter, now(), &ip_id()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the intermediate certificate 1 (serial "),
            "{e}"
        );
        assert!(
            e.to_string().contains("revoked at 2026-04-01T00:00:00Z"),
            "{e}"
        );
    }

    #[test]
    fn crls_of_other_cas_are_not_used_and_forged_ones_refuse() {
        let ca = root("root");
        let (ee, _) = leaf(&ca, serial(0x42));
        // Another CA's CRL listing the same serial is not about this chain.
        let other = root("another root");
        let a = anchors(&ca)
            .with_crls(&[crl(&other, &[0x42], (2026, 12, 1))])
            .unwrap();
        a.verify_peer(&ee, &[], now(), &ip_id()).unwrap();
        // A CRL naming this CA as its issuer but signed by another key is
        // refused at once.
        let impostor = root("root");
        let forged = crl(&impostor, &[0x43], (2026, 12, 1));
        assert_eq!(
            anchors(&ca).with_crls(std::slice::from_ref(&forged)).unwrap_err(),
            "CRL 0: its issuer is the subject of CA certificate 0, but it is not signed by that CA's key"
        );
        assert!(crl_signed_by(&forged, impostor_spki(&impostor).as_slice()));
        for n in 0..forged.len() {
            assert!(!crl_signed_by(
                &forged[..n],
                impostor_spki(&impostor).as_slice()
            ));
        }
        // One for an intermediate is checked when the chain meets it.
        let i1 = sub("intermediate 1", &ca);
        let (ee, _) = leaf(&i1, serial(0x44));
        let fake_i1 = sub("intermediate 1", &other);
        let a = anchors(&ca)
            .with_crls(&[crl(&fake_i1, &[0x45], (2026, 12, 1))])
            .unwrap();
        assert_eq!(
            a.verify_peer(&ee, &[i1.cert.der().to_vec()], now(), &ip_id()),
            Err(CertError::Crl(
                "the CRL of a certificate's issuer is not signed by the issuer's key".into()
            ))
        );
    }

    /// A CA's SubjectPublicKeyInfo contents, as a trust anchor holds them.
    fn impostor_spki(ca: &Ca) -> Vec<u8> {
        let der = ca.key.public_key_der();
        tlv(&der).unwrap().value.to_vec()
    }

    #[test]
    fn malformed_crls_are_refused_without_panics() {
        let ca = root("root");
        let list = crl(&ca, &[1, 2, 3], (2026, 12, 1));
        for n in 0..list.len() {
            assert!(parse_crl(&list[..n]).is_err(), "{n}");
        }
        let e = anchors(&ca)
            .with_crls(&[list.clone(), list[..10].to_vec()])
            .unwrap_err();
        assert!(e.starts_with("CRL 1: "), "{e}");
        assert_eq!(serial_hex(&[0x00, 0x80, 0x01]), "80:01");
        assert_eq!(serial_hex(&[0x00]), "00");
    }

    #[test]
    fn subject_dn_identity_and_certreq_hashes() {
        let ca = root("root");
        let (ee, _) = leaf(&ca, |_| {});
        let cd = CertificateDer::from(&ee[..]);
        let parsed = EndEntityCert::try_from(&cd).unwrap();
        let mut dn = vec![0x30, parsed.subject().len() as u8];
        dn.extend_from_slice(parsed.subject());
        let id = Identity {
            id_type: IdType::ID_DER_ASN1_DN,
            data: dn.clone().into(),
        };
        anchors(&ca).verify_peer(&ee, &[], now(), &id).unwrap();
        let last = dn.len() - 1;
        dn[last] ^= 1;
        let id = Identity {
            id_type: IdType::ID_DER_ASN1_DN,
            data: dn.into(),
        };
        assert!(matches!(
            anchors(&ca).verify_peer(&ee, &[], now(), &id),
            Err(CertError::Identity { .. })
        ));

        let a = anchors(&ca);
        let h = a.certreq_hashes();
        assert_eq!(h.len(), 20);
        let spki = ca.key.public_key_der();
        let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &spki);
        assert_eq!(h, d.as_ref());
        assert!(a.any_requested(&h));
        assert!(!a.any_requested(&anchors(&root("x")).certreq_hashes()));
    }
}
