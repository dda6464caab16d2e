//! Distinguished names as IKE identities (ID_DER_ASN1_DN, RFC 7296 3.5,
//! RFC 4945 3.1.5): the text an operator writes (`C=CH, O=Example,
//! CN=r1`, relative distinguished names in the order they are encoded, as
//! strongSwan and OpenSSL's one-line form write them) to the DER of an
//! X.501 Name, and back for logs and errors.
//!
//! Only single-valued RDNs of the usual attribute types are written; any
//! DER Name is read back (unknown types as dotted OIDs, values that are not
//! strings as `#HEX`). Values are UTF8String, except C (PrintableString,
//! RFC 5280 4.1.2.4).

/// (short name, OID contents) of the attribute types understood in text.
const ATTRIBUTES: &[(&str, &[u8])] = &[
    ("CN", &[0x55, 0x04, 0x03]),
    ("SN", &[0x55, 0x04, 0x04]),
    ("SERIALNUMBER", &[0x55, 0x04, 0x05]),
    ("C", &[0x55, 0x04, 0x06]),
    ("L", &[0x55, 0x04, 0x07]),
    ("ST", &[0x55, 0x04, 0x08]),
    ("STREET", &[0x55, 0x04, 0x09]),
    ("O", &[0x55, 0x04, 0x0a]),
    ("OU", &[0x55, 0x04, 0x0b]),
    (
        "DC",
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19],
    ),
    ("E", &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01]),
];

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const UTF8: u8 = 0x0c;
const PRINTABLE: u8 = 0x13;
const IA5: u8 = 0x16;

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A DER SEQUENCE of `contents` (a Name from the contents webpki gives
/// for a certificate's subject).
pub(crate) fn sequence(contents: &[u8]) -> Vec<u8> {
    tlv(SEQUENCE, contents)
}

/// The DER Name for `C=CH, O=Example, CN=r1` (commas separate RDNs,
/// `\,` is a literal comma, spaces around names and values are dropped).
/// The error names the part that is wrong.
pub fn encode(text: &str) -> Result<Vec<u8>, String> {
    let mut rdns = Vec::new();
    for part in split_unescaped(text) {
        let part = part.trim();
        let Some((name, value)) = part.split_once('=') else {
            return Err(format!(
                "{part:?} in the distinguished name is not TYPE=VALUE"
            ));
        };
        let name = name.trim().to_ascii_uppercase();
        let value = value.trim().replace("\\,", ",");
        let Some((_, oid)) = ATTRIBUTES.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = ATTRIBUTES.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "unknown attribute type {name:?} in the distinguished name (known: {})",
                known.join(", ")
            ));
        };
        if value.is_empty() {
            return Err(format!(
                "{name} has an empty value in the distinguished name"
            ));
        }
        let string_tag = if name == "C" {
            PRINTABLE
        } else if name == "DC" || name == "E" {
            IA5
        } else {
            UTF8
        };
        let atv = [tlv(OID, oid), tlv(string_tag, value.as_bytes())].concat();
        rdns.extend(tlv(SET, &tlv(SEQUENCE, &atv)));
    }
    if rdns.is_empty() {
        return Err("the distinguished name is empty".into());
    }
    Ok(tlv(SEQUENCE, &rdns))
}

fn split_unescaped(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for i in 0..bytes.len() {
        if bytes[i] == b',' && (i == 0 || bytes[i - 1] != b'\\') {
            parts.push(&text[start..i]);
            start = i + 1;
        }
    }
    parts.push(&text[start..]);
    parts
}

/// One DER element: tag, contents, and the rest of the input (definite
/// lengths of up to four octets); `None` when the input is shorter than it
/// says. Also what `aokd check-config` reads certificates and CRLs with.
pub fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
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
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// `C=CH, O=Example, CN=r1` for a DER Name; `None` if it does not parse.
pub fn decode(der: &[u8]) -> Option<String> {
    let (tag, mut rdns, rest) = element(der)?;
    if tag != SEQUENCE || !rest.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    while !rdns.is_empty() {
        let (tag, mut set, r) = element(rdns)?;
        rdns = r;
        if tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (tag, atv, r) = element(set)?;
            set = r;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = element(atv)?;
            if tag != OID {
                return None;
            }
            let (vtag, value, _) = element(value)?;
            let name = ATTRIBUTES
                .iter()
                .find(|(_, o)| *o == oid)
                .map_or_else(|| dotted(oid), |(n, _)| (*n).to_string());
            let text = match (vtag, std::str::from_utf8(value)) {
                (UTF8 | PRINTABLE | IA5 | 0x14 | 0x1e, Ok(s))
                    if s.chars().all(|c| !c.is_control()) =>
                {
                    s.replace(',', "\\,")
                }
                _ => format!("#{}", hex::encode(value)),
            };
            parts.push(format!("{name}={text}"));
        }
    }
    Some(parts.join(", "))
}

fn dotted(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut v: u64 = 0;
    for &b in oid {
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (v / 40).min(2);
                arcs.push(first);
                arcs.push(v - first * 40);
            } else {
                arcs.push(v);
            }
            v = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_to_der_and_back() {
        let der = encode("C=CH, O=Example\\, Inc., CN=r1.example.net").unwrap();
        assert_eq!(
            decode(&der).unwrap(),
            "C=CH, O=Example\\, Inc., CN=r1.example.net"
        );
        // The C value is a PrintableString (0x13), the others UTF8String.
        assert!(der.windows(4).any(|w| w == [0x13, 2, b'C', b'H']));
        assert_eq!(decode(&encode("cn = r1").unwrap()).unwrap(), "CN=r1");
        let long = "x".repeat(300);
        let der = encode(&format!("CN={long}")).unwrap();
        assert_eq!(decode(&der).unwrap(), format!("CN={long}"));
    }

    #[test]
    fn bad_text_is_named() {
        assert!(encode("CN").unwrap_err().contains("not TYPE=VALUE"));
        assert!(encode("XX=1")
            .unwrap_err()
            .contains("unknown attribute type \"XX\""));
        assert!(encode("CN=").unwrap_err().contains("empty value"));
        assert!(decode(&[0x30, 0x05, 0x31]).is_none());
        assert!(decode(&[]).is_none());
    }

    #[test]
    fn rcgen_subjects_read_back() {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CountryName, "CH");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        p.distinguished_name.push(rcgen::DnType::CommonName, "r1");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = p.self_signed(&key).unwrap();
        let cd = rustls_pki_types::CertificateDer::from(cert.der().as_ref());
        let ee = webpki::EndEntityCert::try_from(&cd).unwrap();
        let subject = tlv(SEQUENCE, ee.subject());
        assert_eq!(decode(&subject).unwrap(), "C=CH, O=Example, CN=r1");
        // What an operator writes for it encodes to the same octets when
        // the string types agree (rcgen writes C as PrintableString too).
        assert_eq!(
            decode(&encode("C=CH, O=Example, CN=r1").unwrap()),
            decode(&subject)
        );
    }
}
