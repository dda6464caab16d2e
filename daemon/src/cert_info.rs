//! What `aokd check-config` prints about a certificate (its subject and
//! when it expires, RFC 5280 4.1) and about a CRL (issuer, thisUpdate,
//! nextUpdate and how many entries, RFC 5280 5.1), read from the DER
//! without validating it (validation is `aokd_proto::ike::cert`'s job).
//! Malformed input gives `None`, never a panic.

use aokd_proto::ike::dn::element;

/// The subject and the notAfter time of a DER certificate, as
/// `("CN=r1, O=Example", "2027-01-31 12:00:00 UTC")`.
pub fn subject_and_expiry(der: &[u8]) -> Option<(String, String)> {
    let (_, cert, _) = element(der)?;
    let (_, tbs, _) = element(cert)?;
    let (tag, _, mut rest) = element(tbs)?;
    if tag == 0xa0 {
        // [0] version: the serial number follows.
        let (_, _, r) = element(rest)?;
        rest = r;
    }
    // signature algorithm, issuer
    let (_, _, rest) = element(rest)?;
    let (_, _, rest) = element(rest)?;
    let (_, validity, rest) = element(rest)?;
    let (_, subject, _) = element(rest)?;
    let (_, _, after) = element(validity)?;
    let (time_tag, not_after, _) = element(after)?;
    Some((name(subject)?, time(time_tag, not_after)?))
}

/// What `check-config` says about a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlSummary {
    /// The issuer, as `CN=ca, O=Example`.
    pub issuer: String,
    /// thisUpdate, as `2026-12-02 06:00:00 UTC`.
    pub this_update: String,
    /// nextUpdate, if present.
    pub next_update: Option<String>,
    /// nextUpdate as `YYYYMMDDHHMMSS`, to compare with [`compact_utc`].
    pub next_update_compact: Option<String>,
    /// How many certificates it revokes.
    pub revoked: usize,
}

/// The issuer, update times and entry count of a DER CRL.
pub fn crl_summary(der: &[u8]) -> Option<CrlSummary> {
    let (_, crl, _) = element(der)?;
    let (_, tbs, _) = element(crl)?;
    let (tag, _, after) = element(tbs)?;
    // version (INTEGER, v2), then the signature algorithm; a v1 CRL has
    // no version and `after` follows the algorithm already.
    let rest = if tag == 0x02 {
        element(after)?.2
    } else {
        after
    };
    let (_, issuer, rest) = element(rest)?;
    let (this_tag, this, mut rest) = element(rest)?;
    let mut next = None;
    if let Some((tag @ (0x17 | 0x18), t, r)) = element(rest) {
        next = Some((tag, t));
        rest = r;
    }
    let mut revoked = 0;
    if let Some((0x30, mut entries, _)) = element(rest) {
        while !entries.is_empty() {
            let (_, _, r) = element(entries)?;
            entries = r;
            revoked += 1;
        }
    }
    let next_update = match next {
        Some((tag, t)) => Some(time(tag, t)?),
        None => None,
    };
    let next_update_compact = next_update
        .as_deref()
        .map(|t| t.chars().filter(char::is_ascii_digit).collect::<String>());
    Some(CrlSummary {
        issuer: name(issuer)?,
        this_update: time(this_tag, this)?,
        next_update,
        next_update_compact,
        revoked,
    })
}

/// A Unix time as `YYYYMMDDHHMMSS` (UTC), to compare with a CRL's
/// nextUpdate.
pub fn compact_utc(unix: u64) -> String {
    let (days, rem) = (unix / 86_400, unix % 86_400);
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
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// An X.501 Name as `CN=r1, O=Example` (attribute types other than the
/// common ones as dotted OIDs).
fn name(mut rdns: &[u8]) -> Option<String> {
    let mut parts = Vec::new();
    while !rdns.is_empty() {
        let (_, set, rest) = element(rdns)?;
        rdns = rest;
        let mut set = set;
        while !set.is_empty() {
            let (_, atv, r) = element(set)?;
            set = r;
            let (_, oid, value) = element(atv)?;
            let (_, value, _) = element(value)?;
            let value = String::from_utf8_lossy(value);
            let value: String = value
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            parts.push(format!("{}={value}", attribute(oid)));
        }
    }
    if parts.is_empty() {
        return Some("(empty)".into());
    }
    Some(parts.join(", "))
}

/// The short name of an attribute type OID (RFC 4514 2.3), else the OID.
fn attribute(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x0a] => "O".into(),
        [0x55, 0x04, 0x0b] => "OU".into(),
        _ => {
            let mut arcs: Vec<String> = Vec::new();
            if let Some((&first, rest)) = oid.split_first() {
                arcs.push((first / 40).to_string());
                arcs.push((first % 40).to_string());
                let mut v: u64 = 0;
                for b in rest {
                    v = (v << 7) | u64::from(b & 0x7f);
                    if b & 0x80 == 0 {
                        arcs.push(v.to_string());
                        v = 0;
                    }
                }
            }
            arcs.join(".")
        }
    }
}

/// A UTCTime (tag 0x17, `YYMMDDHHMMSSZ`, RFC 5280 4.1.2.5.1) or
/// GeneralizedTime (0x18, `YYYYMMDDHHMMSSZ`) as `YYYY-MM-DD HH:MM:SS UTC`.
fn time(tag: u8, t: &[u8]) -> Option<String> {
    let t = std::str::from_utf8(t).ok()?;
    if !t.is_ascii() {
        return None;
    }
    let full = match (tag, t.len()) {
        (0x17, 13) => {
            let yy: u32 = t[..2].parse().ok()?;
            format!("{}{t}", if yy >= 50 { "19" } else { "20" })
        }
        (0x18, 15) => t.to_owned(),
        _ => return None,
    };
    if !full[..14].bytes().all(|b| b.is_ascii_digit()) || !full.ends_with('Z') {
        return None;
    }
    Some(format!(
        "{}-{}-{} {}:{}:{} UTC",
        &full[..4],
        &full[4..6],
        &full[6..8],
        &full[8..10],
        &full[10..12],
        &full[12..14]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject as _;
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("pem")
            .as_ref()
            .to_vec()
    }

    /// The test certificates (made with openssl, 36500 days from
    /// 2026-12-02: a GeneralizedTime).
    #[test]
    fn subject_and_expiry_of_the_test_certificates() {
        let ee = der(include_str!("../tests/data/pubkey/ee.pem"));
        assert_eq!(
            subject_and_expiry(&ee),
            Some(("CN=r1".into(), "2126-11-08 06:37:51 UTC".into()))
        );
        let ca = der(include_str!("../tests/data/pubkey/ca.pem"));
        let (subject, _) = subject_and_expiry(&ca).expect("ca");
        assert_eq!(subject, "CN=aokd-test-ca");
        // Truncations never panic and give None.
        for n in 0..ee.len() {
            assert_eq!(subject_and_expiry(&ee[..n]), None, "{n}");
        }
    }

    /// The CRL fixtures (daemon/tests/data/pubkey/make-crls.sh, OpenSSL).
    #[test]
    fn crl_summaries_of_the_test_crls() {
        use rustls_pki_types::pem::PemObject as _;
        let pem = include_bytes!("../tests/data/pubkey/crl.pem");
        let crl = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(pem).unwrap();
        let s = crl_summary(crl.as_ref()).expect("crl.pem");
        assert_eq!(s.issuer, "CN=aokd-test-crl-ca");
        assert_eq!(s.revoked, 2);
        assert!(
            s.next_update.as_deref().unwrap().starts_with("2126-"),
            "{s:?}"
        );
        assert_eq!(
            aokd_proto::ike::cert::parse_crl(crl.as_ref())
                .unwrap()
                .revoked,
            2
        );
        let old = include_bytes!("../tests/data/pubkey/crl-expired.der");
        let s = crl_summary(old).expect("crl-expired.der");
        assert_eq!(s.this_update, "2025-12-01 00:00:00 UTC");
        assert_eq!(s.next_update.as_deref(), Some("2026-01-02 00:00:00 UTC"));
        assert_eq!(s.next_update_compact.as_deref(), Some("20260102000000"));
        assert_eq!(s.revoked, 1);
        for n in 0..old.len() {
            assert_eq!(crl_summary(&old[..n]), None, "{n}");
        }
        assert_eq!(compact_utc(1_780_000_000), "20260528202640");
        assert_eq!(compact_utc(0), "19700101000000");
    }

    #[test]
    fn times() {
        assert_eq!(
            time(0x17, b"270131120000Z").as_deref(),
            Some("2027-01-31 12:00:00 UTC")
        );
        assert_eq!(
            time(0x17, b"991231235959Z").as_deref(),
            Some("1999-12-31 23:59:59 UTC")
        );
        assert_eq!(time(0x17, b"27013112000xZ"), None);
        assert_eq!(time(0x18, b"270131120000Z"), None);
    }
}
