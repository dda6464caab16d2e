//! What `aokd check-config` prints about a certificate: its subject and
//! when it expires, read from the DER (RFC 5280 4.1) without validating it
//! (validation is `aokd_proto::ike::cert`'s job). Malformed input gives
//! `None`, never a panic.

/// One DER element: tag and contents; the rest of the input after it.
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

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
