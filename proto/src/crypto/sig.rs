//! Signature authentication of IKEv2 (RFC 7296 2.15): the Digital Signature
//! method (AUTH method 14, RFC 7427) with Ed25519 (RFC 8420), ECDSA P-256 /
//! SHA-256, ECDSA P-384 / SHA-384 and RSASSA-PSS / SHA-256, and the RFC 4754
//! ECDSA methods 9 and 10 (accepted on receipt, and sent to a peer that does
//! not announce SIGNATURE_HASH_ALGORITHMS).
//!
//! Private keys are read from PKCS#8 DER, public keys from
//! SubjectPublicKeyInfo DER (what a certificate carries). Verification is
//! `ring`'s. Signing: Ed25519 with `ring` (deterministic), ECDSA with the
//! RustCrypto `p256`/`p384` crates, RFC 6979 nonces hedged with the
//! endpoint's random number generator (passed in: never the OS's, so that a
//! seeded endpoint is reproducible; `ring`'s ECDSA signer takes only its own
//! sealed `SecureRandom`). RSA keys are accepted for verification only: RSA
//! signing needs randomness for the PSS salt, and `ring` takes it only from
//! its sealed `SecureRandom` too.

use core::fmt;

use p256::ecdsa::signature::RandomizedSigner;
use p256::pkcs8::DecodePrivateKey;
use rand_core::CryptoRngCore;
use spki::der::asn1::ObjectIdentifier;
use spki::SubjectPublicKeyInfoRef;
use zeroize::Zeroizing;

use crate::numbers::AuthMethod;

/// The signature schemes of aokd, each with its RFC 7427 AlgorithmIdentifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SignatureScheme {
    /// Ed25519 (RFC 8032, RFC 8420): signs the octets themselves.
    Ed25519,
    /// ECDSA on P-256 with SHA-256 (RFC 7427 A.3.1 / RFC 4754 method 9).
    EcdsaP256Sha256,
    /// ECDSA on P-384 with SHA-384 (RFC 7427 A.3.2 / RFC 4754 method 10).
    EcdsaP384Sha384,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, 32 octets of salt (RFC 7427
    /// A.4.3); verification only.
    RsaPssSha256,
}

/// SIGNATURE_HASH_ALGORITHMS hash IDs (RFC 7427 4, IANA "Hash Algorithms").
pub mod hash_id {
    pub const SHA2_256: u16 = 2;
    pub const SHA2_384: u16 = 3;
    pub const SHA2_512: u16 = 4;
    /// RFC 8420: the "hash" of Ed25519, which signs the message itself.
    pub const IDENTITY: u16 = 5;
}

/// The hashes aokd announces and verifies, in the order sent.
pub const SUPPORTED_HASHES: [u16; 3] = [hash_id::SHA2_256, hash_id::SHA2_384, hash_id::IDENTITY];

/// DER AlgorithmIdentifier of ecdsa-with-SHA256 (RFC 7427 A.3.1).
const ALG_ECDSA_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];
/// DER AlgorithmIdentifier of ecdsa-with-SHA384 (RFC 7427 A.3.2).
const ALG_ECDSA_SHA384: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
];
/// DER AlgorithmIdentifier of id-Ed25519 (RFC 8420 2, RFC 8410).
const ALG_ED25519: &[u8] = &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER AlgorithmIdentifier of RSASSA-PSS with SHA-256, MGF1 with SHA-256 and
/// a 32-octet salt (RFC 7427 A.4.3), with the hashes' NULL parameters.
const ALG_RSA_PSS_SHA256: &[u8] = &[
    0x30, 0x41, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30, 0x34, 0xa0,
    0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
    0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08, 0x30,
    0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0xa2, 0x03,
    0x02, 0x01, 0x20,
];
/// The same without the NULL parameters of the two hash identifiers (RFC
/// 4055 allows both encodings; some implementations omit them).
const ALG_RSA_PSS_SHA256_ABSENT: &[u8] = &[
    0x30, 0x3d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30, 0x30, 0xa0,
    0x0d, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0xa1, 0x1a,
    0x30, 0x18, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08, 0x30, 0x0b, 0x06,
    0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0xa2, 0x03, 0x02, 0x01, 0x20,
];

const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

impl SignatureScheme {
    /// The RFC 7427 AlgorithmIdentifier sent in the AUTH payload.
    pub fn algorithm_identifier(self) -> &'static [u8] {
        match self {
            SignatureScheme::Ed25519 => ALG_ED25519,
            SignatureScheme::EcdsaP256Sha256 => ALG_ECDSA_SHA256,
            SignatureScheme::EcdsaP384Sha384 => ALG_ECDSA_SHA384,
            SignatureScheme::RsaPssSha256 => ALG_RSA_PSS_SHA256,
        }
    }

    /// The scheme named by a received AlgorithmIdentifier.
    pub fn from_algorithm_identifier(der: &[u8]) -> Option<Self> {
        [
            (ALG_ED25519, SignatureScheme::Ed25519),
            (ALG_ECDSA_SHA256, SignatureScheme::EcdsaP256Sha256),
            (ALG_ECDSA_SHA384, SignatureScheme::EcdsaP384Sha384),
            (ALG_RSA_PSS_SHA256, SignatureScheme::RsaPssSha256),
            (ALG_RSA_PSS_SHA256_ABSENT, SignatureScheme::RsaPssSha256),
        ]
        .into_iter()
        .find(|(a, _)| *a == der)
        .map(|(_, s)| s)
    }

    /// The SIGNATURE_HASH_ALGORITHMS ID this scheme needs the peer to accept.
    pub fn hash_id(self) -> u16 {
        match self {
            SignatureScheme::Ed25519 => hash_id::IDENTITY,
            SignatureScheme::EcdsaP256Sha256 | SignatureScheme::RsaPssSha256 => hash_id::SHA2_256,
            SignatureScheme::EcdsaP384Sha384 => hash_id::SHA2_384,
        }
    }

    /// The RFC 4754 AUTH method of an ECDSA scheme.
    fn rfc4754_method(self) -> Option<AuthMethod> {
        match self {
            SignatureScheme::EcdsaP256Sha256 => Some(AuthMethod::ECDSA_SHA256_P256),
            SignatureScheme::EcdsaP384Sha384 => Some(AuthMethod::ECDSA_SHA384_P384),
            _ => None,
        }
    }
}

impl fmt::Display for SignatureScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignatureScheme::Ed25519 => "Ed25519",
            SignatureScheme::EcdsaP256Sha256 => "ECDSA P-256/SHA-256",
            SignatureScheme::EcdsaP384Sha384 => "ECDSA P-384/SHA-384",
            SignatureScheme::RsaPssSha256 => "RSASSA-PSS/SHA-256",
        })
    }
}

/// Why a signature was not accepted, for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("AUTH method {0} is not a signature method aokd accepts")]
    Method(AuthMethod),
    #[error("the AUTH data is truncated or its AlgorithmIdentifier is malformed")]
    Malformed,
    #[error("the signature algorithm is not one aokd accepts (Ed25519, ECDSA P-256/SHA-256, ECDSA P-384/SHA-384, RSASSA-PSS/SHA-256)")]
    UnknownAlgorithm,
    #[error("the signature is {got} but the peer's key is {key}")]
    KeyMismatch {
        got: SignatureScheme,
        key: SignatureScheme,
    },
    #[error("the {0} signature does not verify with the peer's public key")]
    BadSignature(SignatureScheme),
}

/// A private key for signing AUTH payloads. Zeroized on drop where the
/// library allows it (`p256`/`p384`), never printed.
pub struct PrivateKey(KeyInner);

enum KeyInner {
    // ring keeps the Ed25519 seed in its own type (not zeroized by ring);
    // the PKCS#8 copy is held in `Zeroizing` only for the time of parsing.
    Ed25519(ring::signature::Ed25519KeyPair),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({}, <redacted>)", self.scheme())
    }
}

impl PrivateKey {
    /// A private key from PKCS#8 DER (v1 or v2): Ed25519, or ECDSA P-256 or
    /// P-384. The error says what the key is when it is not usable.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, String> {
        let der = Zeroizing::new(der.to_vec());
        if let Ok(k) = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
            return Ok(PrivateKey(KeyInner::Ed25519(k)));
        }
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_der(&der) {
            return Ok(PrivateKey(KeyInner::P256(k)));
        }
        if let Ok(k) = p384::ecdsa::SigningKey::from_pkcs8_der(&der) {
            return Ok(PrivateKey(KeyInner::P384(k)));
        }
        match p256::pkcs8::PrivateKeyInfo::try_from(&der[..]) {
            Ok(info) if info.algorithm.oid == OID_RSA => Err(
                "RSA private keys cannot sign in aokd (RSA public keys are accepted from peers); \
                 use an Ed25519 or ECDSA P-256/P-384 key"
                    .to_string(),
            ),
            Ok(info) => Err(format!(
                "unsupported private key algorithm {} (expected Ed25519, or ECDSA on P-256 or P-384)",
                info.algorithm.oid
            )),
            Err(_) => Err("not a PKCS#8 private key (DER)".to_string()),
        }
    }

    /// Ed25519 from its 32-octet seed (RFC 8032 5.1.5).
    pub fn ed25519_from_seed(seed: &[u8; 32]) -> Result<Self, String> {
        ring::signature::Ed25519KeyPair::from_seed_unchecked(seed)
            .map(|k| PrivateKey(KeyInner::Ed25519(k)))
            .map_err(|_| "invalid Ed25519 seed".to_string())
    }

    pub fn scheme(&self) -> SignatureScheme {
        match &self.0 {
            KeyInner::Ed25519(_) => SignatureScheme::Ed25519,
            KeyInner::P256(_) => SignatureScheme::EcdsaP256Sha256,
            KeyInner::P384(_) => SignatureScheme::EcdsaP384Sha384,
        }
    }

    /// The public key, as SubjectPublicKeyInfo DER.
    pub fn public_key(&self) -> PublicKey {
        use ring::signature::KeyPair;
        let raw = match &self.0 {
            KeyInner::Ed25519(k) => k.public_key().as_ref().to_vec(),
            KeyInner::P256(k) => k
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
            KeyInner::P384(k) => k
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
        };
        PublicKey {
            scheme: self.scheme(),
            raw,
        }
    }

    /// The AUTH payload (method and data) over `octets`: Digital Signature
    /// (method 14) when the peer announced the hash this key needs
    /// (`peer_hashes`, from its SIGNATURE_HASH_ALGORITHMS), else for ECDSA
    /// the RFC 4754 method; `None` (an Ed25519 key toward a peer that did
    /// not announce RFC 8420's Identity hash) when no method fits.
    pub fn sign_auth(
        &self,
        octets: &[u8],
        peer_hashes: Option<&[u16]>,
        rng: &mut dyn CryptoRngCore,
    ) -> Option<(AuthMethod, Vec<u8>)> {
        let scheme = self.scheme();
        let digital = peer_hashes.is_some_and(|h| h.contains(&scheme.hash_id()));
        if digital {
            let alg = scheme.algorithm_identifier();
            let sig = self.sign(octets, true, rng);
            let mut data = Vec::with_capacity(1 + alg.len() + sig.len());
            data.push(alg.len() as u8);
            data.extend_from_slice(alg);
            data.extend_from_slice(&sig);
            return Some((AuthMethod::DIGITAL_SIGNATURE, data));
        }
        let method = scheme.rfc4754_method()?;
        Some((method, self.sign(octets, false, rng)))
    }

    /// The signature value: ECDSA as DER `ECDSA-Sig-Value` (RFC 7427) or as
    /// fixed-length r | s (RFC 4754).
    fn sign(&self, octets: &[u8], der: bool, rng: &mut dyn CryptoRngCore) -> Vec<u8> {
        let mut rng = rng;
        match &self.0 {
            KeyInner::Ed25519(k) => k.sign(octets).as_ref().to_vec(),
            KeyInner::P256(k) => {
                let s: p256::ecdsa::Signature = k.sign_with_rng(&mut rng, octets);
                if der {
                    s.to_der().as_bytes().to_vec()
                } else {
                    s.to_bytes().to_vec()
                }
            }
            KeyInner::P384(k) => {
                let s: p384::ecdsa::Signature = k.sign_with_rng(&mut rng, octets);
                if der {
                    s.to_der().as_bytes().to_vec()
                } else {
                    s.to_bytes().to_vec()
                }
            }
        }
    }
}

/// A peer's public key: its scheme and the key in `ring`'s form (Ed25519:
/// 32 octets; ECDSA: the uncompressed point; RSA: RSAPublicKey DER).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    scheme: SignatureScheme,
    raw: Vec<u8>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}, {})", self.scheme, hex::encode(&self.raw))
    }
}

impl PublicKey {
    /// From SubjectPublicKeyInfo DER: Ed25519, EC on P-256 or P-384, or RSA
    /// (2048 to 8192 bits, checked when verifying).
    pub fn from_spki_der(der: &[u8]) -> Result<Self, String> {
        let spki = SubjectPublicKeyInfoRef::try_from(der)
            .map_err(|e| format!("not a SubjectPublicKeyInfo (DER): {e}"))?;
        let raw = spki
            .subject_public_key
            .as_bytes()
            .ok_or("the public key is not a whole number of octets")?
            .to_vec();
        let oid = spki.algorithm.oid;
        let scheme = if oid == OID_ED25519 {
            SignatureScheme::Ed25519
        } else if oid == OID_RSA {
            SignatureScheme::RsaPssSha256
        } else if oid == OID_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
            match curve {
                Some(c) if c == OID_P256 => SignatureScheme::EcdsaP256Sha256,
                Some(c) if c == OID_P384 => SignatureScheme::EcdsaP384Sha384,
                Some(c) => {
                    return Err(format!(
                        "unsupported elliptic curve {c} (expected P-256 or P-384)"
                    ))
                }
                None => return Err("EC public key without a named curve".to_string()),
            }
        } else {
            return Err(format!(
                "unsupported public key algorithm {oid} (expected Ed25519, EC P-256/P-384 or RSA)"
            ));
        };
        Ok(PublicKey { scheme, raw })
    }

    pub fn scheme(&self) -> SignatureScheme {
        self.scheme
    }

    /// Verifies a received AUTH payload over `octets`.
    pub fn verify_auth(
        &self,
        method: AuthMethod,
        data: &[u8],
        octets: &[u8],
    ) -> Result<(), SigError> {
        use ring::signature as rs;
        let (got, sig, alg): (_, _, &dyn rs::VerificationAlgorithm) = match method {
            AuthMethod::DIGITAL_SIGNATURE => {
                let (&len, rest) = data.split_first().ok_or(SigError::Malformed)?;
                let len = usize::from(len);
                if rest.len() < len {
                    return Err(SigError::Malformed);
                }
                let (alg_id, sig) = rest.split_at(len);
                let got = SignatureScheme::from_algorithm_identifier(alg_id)
                    .ok_or(SigError::UnknownAlgorithm)?;
                let alg: &dyn rs::VerificationAlgorithm = match got {
                    SignatureScheme::Ed25519 => &rs::ED25519,
                    SignatureScheme::EcdsaP256Sha256 => &rs::ECDSA_P256_SHA256_ASN1,
                    SignatureScheme::EcdsaP384Sha384 => &rs::ECDSA_P384_SHA384_ASN1,
                    SignatureScheme::RsaPssSha256 => &rs::RSA_PSS_2048_8192_SHA256,
                };
                (got, sig, alg)
            }
            AuthMethod::ECDSA_SHA256_P256 => (
                SignatureScheme::EcdsaP256Sha256,
                data,
                &rs::ECDSA_P256_SHA256_FIXED,
            ),
            AuthMethod::ECDSA_SHA384_P384 => (
                SignatureScheme::EcdsaP384Sha384,
                data,
                &rs::ECDSA_P384_SHA384_FIXED,
            ),
            other => return Err(SigError::Method(other)),
        };
        if got != self.scheme {
            return Err(SigError::KeyMismatch {
                got,
                key: self.scheme,
            });
        }
        rs::UnparsedPublicKey::new(alg, &self.raw)
            .verify(octets, sig)
            .map_err(|_| SigError::BadSignature(got))
    }
}

/// The hash IDs of a SIGNATURE_HASH_ALGORITHMS notify body (2 octets each;
/// an odd trailing octet is ignored).
pub fn parse_hash_algorithms(data: &[u8]) -> Vec<u16> {
    data.chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

/// The body of aokd's SIGNATURE_HASH_ALGORITHMS notify.
pub fn hash_algorithms_notify() -> Vec<u8> {
    SUPPORTED_HASHES
        .iter()
        .flat_map(|h| h.to_be_bytes())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn rng() -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(7)
    }

    fn keys() -> Vec<PrivateKey> {
        use p256::pkcs8::EncodePrivateKey;
        let p256 = p256::SecretKey::from_slice(&[0x11; 32]).unwrap();
        let p384 = p384::SecretKey::from_slice(&[0x22; 48]).unwrap();
        vec![
            PrivateKey::ed25519_from_seed(&[0x33; 32]).unwrap(),
            PrivateKey::from_pkcs8_der(p256.to_pkcs8_der().unwrap().as_bytes()).unwrap(),
            PrivateKey::from_pkcs8_der(p384.to_pkcs8_der().unwrap().as_bytes()).unwrap(),
        ]
    }

    #[test]
    fn algorithm_identifiers_are_well_formed_der() {
        for s in [
            SignatureScheme::Ed25519,
            SignatureScheme::EcdsaP256Sha256,
            SignatureScheme::EcdsaP384Sha384,
            SignatureScheme::RsaPssSha256,
        ] {
            let a = s.algorithm_identifier();
            assert_eq!(a[0], 0x30, "{s}");
            assert_eq!(usize::from(a[1]) + 2, a.len(), "{s}");
            assert_eq!(SignatureScheme::from_algorithm_identifier(a), Some(s));
            let parsed = spki::AlgorithmIdentifierRef::try_from(a).expect("DER");
            assert!(!parsed.oid.as_bytes().is_empty());
        }
        let absent = spki::AlgorithmIdentifierRef::try_from(ALG_RSA_PSS_SHA256_ABSENT).unwrap();
        assert_eq!(absent.oid.to_string(), "1.2.840.113549.1.1.10");
    }

    #[test]
    fn sign_and_verify_each_scheme_and_method() {
        let octets = b"InitiatorSignedOctets";
        for k in keys() {
            let pk = k.public_key();
            let (m, d) = k
                .sign_auth(octets, Some(&SUPPORTED_HASHES), &mut rng())
                .unwrap();
            assert_eq!(m, AuthMethod::DIGITAL_SIGNATURE);
            pk.verify_auth(m, &d, octets).unwrap();
            assert_eq!(
                pk.verify_auth(m, &d, b"other octets"),
                Err(SigError::BadSignature(k.scheme()))
            );
            // A peer without SIGNATURE_HASH_ALGORITHMS: RFC 4754 for ECDSA.
            match k.sign_auth(octets, None, &mut rng()) {
                Some((m, d)) => {
                    assert_ne!(k.scheme(), SignatureScheme::Ed25519);
                    assert_ne!(m, AuthMethod::DIGITAL_SIGNATURE);
                    pk.verify_auth(m, &d, octets).unwrap();
                }
                None => assert_eq!(k.scheme(), SignatureScheme::Ed25519),
            }
        }
    }

    #[test]
    fn deterministic_from_the_rng_and_key_mismatch_named() {
        let k = &keys()[1];
        let a = k
            .sign_auth(b"x", Some(&SUPPORTED_HASHES), &mut rng())
            .unwrap();
        let b = k
            .sign_auth(b"x", Some(&SUPPORTED_HASHES), &mut rng())
            .unwrap();
        assert_eq!(a, b, "same rng state, same signature");
        let ed = keys()[0].public_key();
        assert_eq!(
            ed.verify_auth(a.0, &a.1, b"x"),
            Err(SigError::KeyMismatch {
                got: SignatureScheme::EcdsaP256Sha256,
                key: SignatureScheme::Ed25519
            })
        );
        assert_eq!(
            ed.verify_auth(AuthMethod::SHARED_KEY_MIC, b"", b"x"),
            Err(SigError::Method(AuthMethod::SHARED_KEY_MIC))
        );
        assert_eq!(
            ed.verify_auth(AuthMethod::DIGITAL_SIGNATURE, &[200, 1], b"x"),
            Err(SigError::Malformed)
        );
    }

    #[test]
    fn public_keys_from_spki() {
        use p256::pkcs8::EncodePublicKey;
        let p256 = p256::SecretKey::from_slice(&[0x11; 32]).unwrap();
        let der = p256.public_key().to_public_key_der().unwrap();
        let pk = PublicKey::from_spki_der(der.as_bytes()).unwrap();
        assert_eq!(pk, keys()[1].public_key());
        let p384 = p384::SecretKey::from_slice(&[0x22; 48]).unwrap();
        let der = p384.public_key().to_public_key_der().unwrap();
        assert_eq!(
            PublicKey::from_spki_der(der.as_bytes()).unwrap(),
            keys()[2].public_key()
        );
        // RFC 8410 10.1: an Ed25519 SubjectPublicKeyInfo.
        let ed = keys()[0].public_key();
        let mut spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        spki.extend_from_slice(&ed.raw);
        assert_eq!(PublicKey::from_spki_der(&spki).unwrap(), ed);
        assert!(PublicKey::from_spki_der(&spki[..20]).is_err());
    }

    /// RSASSA-PSS made by OpenSSL (testdata/gen-rsa-pss.sh) verifies under
    /// both encodings of the AlgorithmIdentifier, and not over other octets.
    #[test]
    fn rsa_pss_sha256_from_openssl_verifies() {
        let pk = PublicKey::from_spki_der(include_bytes!("testdata/rsa-spki.der")).unwrap();
        assert_eq!(pk.scheme(), SignatureScheme::RsaPssSha256);
        let msg = include_bytes!("testdata/rsa-pss-message.txt");
        for alg in [ALG_RSA_PSS_SHA256, ALG_RSA_PSS_SHA256_ABSENT] {
            let mut data = vec![alg.len() as u8];
            data.extend_from_slice(alg);
            data.extend_from_slice(include_bytes!("testdata/rsa-pss.sig"));
            pk.verify_auth(AuthMethod::DIGITAL_SIGNATURE, &data, msg)
                .unwrap();
            assert_eq!(
                pk.verify_auth(AuthMethod::DIGITAL_SIGNATURE, &data, b"other"),
                Err(SigError::BadSignature(SignatureScheme::RsaPssSha256))
            );
        }
        let rsa_pkcs8 = [
            0x30, 0x1a, 0x02, 0x01, 0x00, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7,
            0x0d, 0x01, 0x01, 0x01, 0x05, 0x00, 0x04, 0x06, 0x30, 0x04, 0x02, 0x02, 0x01, 0x01,
        ];
        let e = PrivateKey::from_pkcs8_der(&rsa_pkcs8).unwrap_err();
        assert!(e.contains("RSA private keys cannot sign"), "{e}");
    }

    #[test]
    fn hash_notify_round_trip() {
        assert_eq!(
            parse_hash_algorithms(&hash_algorithms_notify()),
            SUPPORTED_HASHES
        );
        assert_eq!(parse_hash_algorithms(&[0, 2, 0]), vec![2]);
    }
}
