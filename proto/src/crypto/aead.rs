//! The AEAD ciphers of the SK payload (transform type 1): ENCR_AES_GCM_16
//! (RFC 5282) and ENCR_CHACHA20_POLY1305 (RFC 7634), using
//! `ring::aead::LessSafeKey`.
//!
//! SK_ei / SK_er are the cipher key followed by a 4-octet salt
//! (RFC 5282 7.1, RFC 7634 2); the 12-octet nonce is salt ‖ IV, where the
//! 8-octet IV is carried in the SK payload (RFC 5282 3.1, RFC 7634 2). The
//! 16-octet ICV follows the ciphertext.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroize;

use super::CryptoError;
use crate::numbers::EncrId;

/// A negotiated AEAD cipher for the SK payload (transform type 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encr {
    /// ENCR_AES_GCM_16 with a 128- or 256-bit key.
    AesGcm16 {
        key_bits: u16,
    },
    ChaCha20Poly1305,
}

impl Encr {
    /// Maps a transform ID and its Key Length attribute; `None` if unsupported.
    ///
    /// ENCR_AES_GCM_16 requires a Key Length attribute of 128 or 256 (192 is
    /// not implemented); ENCR_CHACHA20_POLY1305 must have none (RFC 7634 2).
    pub fn from_transform(id: EncrId, key_bits: Option<u16>) -> Option<Encr> {
        match (id, key_bits) {
            (EncrId::ENCR_AES_GCM_16, Some(bits @ (128 | 256))) => {
                Some(Encr::AesGcm16 { key_bits: bits })
            }
            (EncrId::ENCR_CHACHA20_POLY1305, None) => Some(Encr::ChaCha20Poly1305),
            _ => None,
        }
    }

    pub fn id(self) -> EncrId {
        match self {
            Encr::AesGcm16 { .. } => EncrId::ENCR_AES_GCM_16,
            Encr::ChaCha20Poly1305 => EncrId::ENCR_CHACHA20_POLY1305,
        }
    }

    /// The Key Length attribute to send, if this cipher takes one.
    pub fn key_length_attr(self) -> Option<u16> {
        match self {
            Encr::AesGcm16 { key_bits } => Some(key_bits),
            Encr::ChaCha20Poly1305 => None,
        }
    }

    /// Key octets plus the 4-octet salt: the length of SK_ei / SK_er.
    pub fn keymat_len(self) -> usize {
        let key_len = match self {
            Encr::AesGcm16 { key_bits } => usize::from(key_bits / 8),
            Encr::ChaCha20Poly1305 => 32,
        };
        key_len + Self::SALT_LEN
    }

    /// IV octets carried in the SK payload (8).
    pub const IV_LEN: usize = 8;
    /// ICV octets appended to the ciphertext (16).
    pub const ICV_LEN: usize = 16;
    /// Salt octets at the end of SK_ei / SK_er (4; RFC 5282 7.1, RFC 7634 2).
    pub const SALT_LEN: usize = 4;

    /// Splits SK_e into the ring key and the nonce salt ‖ iv.
    fn key_and_nonce(self, key: &[u8], iv: &[u8; 8]) -> Result<(LessSafeKey, Nonce), CryptoError> {
        let alg = match self {
            Encr::AesGcm16 { key_bits: 128 } => &aead::AES_128_GCM,
            Encr::AesGcm16 { key_bits: 256 } => &aead::AES_256_GCM,
            Encr::AesGcm16 { .. } => {
                return Err(CryptoError::Unsupported("ENCR_AES_GCM_16 key length"))
            }
            Encr::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        };
        if key.len() != alg.key_len() + Self::SALT_LEN {
            return Err(CryptoError::Unsupported("SK_e length for this cipher"));
        }
        let (cipher_key, salt) = key.split_at(alg.key_len());
        let unbound =
            UnboundKey::new(alg, cipher_key).map_err(|_| CryptoError::Unsupported("AEAD key"))?;
        let mut nonce = [0u8; aead::NONCE_LEN];
        nonce[..Self::SALT_LEN].copy_from_slice(salt);
        nonce[Self::SALT_LEN..].copy_from_slice(iv);
        Ok((
            LessSafeKey::new(unbound),
            Nonce::assume_unique_for_key(nonce),
        ))
    }

    /// Encrypts `in_out` in place and appends the ICV. `key` is SK_e (key ‖ salt),
    /// nonce = salt ‖ iv (RFC 5282 4, RFC 7634 2).
    ///
    /// The caller must never reuse an IV under one key (RFC 5282 3.1); the
    /// Message ID or a counter serves. A key of the wrong length for this
    /// cipher is [`CryptoError::Unsupported`].
    pub fn seal(
        self,
        key: &[u8],
        iv: &[u8; 8],
        aad: &[u8],
        in_out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let (key, nonce) = self.key_and_nonce(key, iv)?;
        key.seal_in_place_append_tag(nonce, Aad::from(aad), in_out)
            .map_err(|_| CryptoError::Unsupported("AEAD plaintext too long"))
    }

    /// Checks the ICV and decrypts `in_out` (ciphertext ‖ ICV) in place,
    /// leaving the plaintext.
    ///
    /// Any authentication failure, including an input shorter than the ICV,
    /// is [`CryptoError::Integrity`], and `in_out` is then zeroized and
    /// emptied so that no unauthenticated plaintext escapes.
    pub fn open(
        self,
        key: &[u8],
        iv: &[u8; 8],
        aad: &[u8],
        in_out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let (key, nonce) = self.key_and_nonce(key, iv)?;
        if in_out.len() < Self::ICV_LEN {
            return Err(CryptoError::Integrity);
        }
        match key.open_in_place(nonce, Aad::from(aad), in_out) {
            Ok(plaintext) => {
                let len = plaintext.len();
                in_out[len..].zeroize();
                in_out.truncate(len);
                Ok(())
            }
            Err(_) => {
                in_out.zeroize();
                Err(CryptoError::Integrity)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Encr; 3] = [
        Encr::AesGcm16 { key_bits: 128 },
        Encr::AesGcm16 { key_bits: 256 },
        Encr::ChaCha20Poly1305,
    ];

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn test_key(encr: Encr) -> Vec<u8> {
        (0..encr.keymat_len()).map(|i| i as u8 ^ 0x5c).collect()
    }

    #[test]
    fn transform_mapping() {
        assert_eq!(
            Encr::from_transform(EncrId::ENCR_AES_GCM_16, Some(128)),
            Some(Encr::AesGcm16 { key_bits: 128 })
        );
        assert_eq!(
            Encr::from_transform(EncrId::ENCR_AES_GCM_16, Some(256)),
            Some(Encr::AesGcm16 { key_bits: 256 })
        );
        assert_eq!(
            Encr::from_transform(EncrId::ENCR_AES_GCM_16, Some(192)),
            None
        );
        assert_eq!(Encr::from_transform(EncrId::ENCR_AES_GCM_16, Some(0)), None);
        assert_eq!(Encr::from_transform(EncrId::ENCR_AES_GCM_16, None), None);
        assert_eq!(
            Encr::from_transform(EncrId::ENCR_CHACHA20_POLY1305, None),
            Some(Encr::ChaCha20Poly1305)
        );
        assert_eq!(
            Encr::from_transform(EncrId::ENCR_CHACHA20_POLY1305, Some(256)),
            None
        );
        assert_eq!(
            Encr::from_transform(EncrId::ENCR_AES_GCM_8, Some(128)),
            None
        );
        assert_eq!(
            Encr::from_transform(EncrId::ENCR_AES_GCM_12, Some(128)),
            None
        );
        assert_eq!(Encr::from_transform(EncrId::ENCR_AES_CBC, Some(128)), None);
        assert_eq!(
            Encr::from_transform(EncrId(20), Some(256)),
            Some(Encr::AesGcm16 { key_bits: 256 })
        );
        assert_eq!(
            Encr::from_transform(EncrId(28), None),
            Some(Encr::ChaCha20Poly1305)
        );
        for encr in ALL {
            assert_eq!(
                Encr::from_transform(encr.id(), encr.key_length_attr()),
                Some(encr)
            );
        }
        assert_eq!(Encr::AesGcm16 { key_bits: 128 }.keymat_len(), 20);
        assert_eq!(Encr::AesGcm16 { key_bits: 256 }.keymat_len(), 36);
        assert_eq!(Encr::ChaCha20Poly1305.keymat_len(), 36);
        assert_eq!(Encr::ChaCha20Poly1305.key_length_attr(), None);
    }

    #[test]
    fn round_trip() {
        for encr in ALL {
            let key = test_key(encr);
            let iv = [1, 2, 3, 4, 5, 6, 7, 8];
            for len in [0usize, 1, 15, 16, 17, 1000] {
                let plain: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                let mut buf = plain.clone();
                encr.seal(&key, &iv, b"header", &mut buf).unwrap();
                assert_eq!(buf.len(), len + Encr::ICV_LEN);
                if len > 0 {
                    assert_ne!(&buf[..len], plain.as_slice());
                }
                encr.open(&key, &iv, b"header", &mut buf).unwrap();
                assert_eq!(buf, plain, "{encr:?} {len}");
            }
        }
    }

    #[test]
    fn any_flipped_bit_is_integrity_error() {
        for encr in ALL {
            let key = test_key(encr);
            let iv = [9u8; 8];
            let aad = b"IKE header and SK generic header".to_vec();
            let mut sealed = b"payloads".to_vec();
            encr.seal(&key, &iv, &aad, &mut sealed).unwrap();

            // Every bit of ciphertext and tag.
            for i in 0..sealed.len() * 8 {
                let mut buf = sealed.clone();
                buf[i / 8] ^= 1 << (i % 8);
                assert_eq!(
                    encr.open(&key, &iv, &aad, &mut buf),
                    Err(CryptoError::Integrity)
                );
                assert!(buf.is_empty(), "unauthenticated output left behind");
            }
            // Every bit of the AAD.
            for i in 0..aad.len() * 8 {
                let mut bad = aad.clone();
                bad[i / 8] ^= 1 << (i % 8);
                let mut buf = sealed.clone();
                assert_eq!(
                    encr.open(&key, &iv, &bad, &mut buf),
                    Err(CryptoError::Integrity)
                );
            }
            // Every bit of the IV.
            for i in 0..64 {
                let mut bad = iv;
                bad[i / 8] ^= 1 << (i % 8);
                let mut buf = sealed.clone();
                assert_eq!(
                    encr.open(&key, &bad, &aad, &mut buf),
                    Err(CryptoError::Integrity)
                );
            }
            // The salt is part of the nonce: a changed salt fails too.
            let mut bad_key = key.clone();
            *bad_key.last_mut().unwrap() ^= 1;
            let mut buf = sealed.clone();
            assert_eq!(
                encr.open(&bad_key, &iv, &aad, &mut buf),
                Err(CryptoError::Integrity)
            );
            // Truncated or extended input.
            let mut buf = sealed[..sealed.len() - 1].to_vec();
            assert_eq!(
                encr.open(&key, &iv, &aad, &mut buf),
                Err(CryptoError::Integrity)
            );
            let mut buf = sealed.clone();
            buf.push(0);
            assert_eq!(
                encr.open(&key, &iv, &aad, &mut buf),
                Err(CryptoError::Integrity)
            );
            // The untouched message still opens.
            let mut buf = sealed.clone();
            encr.open(&key, &iv, &aad, &mut buf).unwrap();
            assert_eq!(buf, b"payloads");
        }
    }

    #[test]
    fn short_input_is_integrity_error() {
        for encr in ALL {
            let key = test_key(encr);
            for len in 0..Encr::ICV_LEN {
                let mut buf = vec![0u8; len];
                assert_eq!(
                    encr.open(&key, &[0; 8], b"", &mut buf),
                    Err(CryptoError::Integrity)
                );
            }
        }
    }

    #[test]
    fn wrong_key_length_is_an_error_not_a_panic() {
        for encr in ALL {
            for len in [0, 16, 32, encr.keymat_len() - 1, encr.keymat_len() + 1] {
                let key = vec![0u8; len];
                let mut buf = b"x".to_vec();
                assert!(matches!(
                    encr.seal(&key, &[0; 8], b"", &mut buf),
                    Err(CryptoError::Unsupported(_))
                ));
                let mut buf = vec![0u8; 32];
                assert!(matches!(
                    encr.open(&key, &[0; 8], b"", &mut buf),
                    Err(CryptoError::Unsupported(_))
                ));
            }
        }
        let odd = Encr::AesGcm16 { key_bits: 192 };
        let mut buf = b"x".to_vec();
        assert!(matches!(
            odd.seal(&[0; 28], &[0; 8], b"", &mut buf),
            Err(CryptoError::Unsupported(_))
        ));
    }

    /// McGrew & Viega, "The Galois/Counter Mode of Operation", test case 4
    /// (AES-128, 96-bit IV cafebabe facedbaddecaf888, 20 octets of AAD). The
    /// first 4 IV octets play the role of the salt.
    #[test]
    fn aes_128_gcm_known_answer() {
        let mut key = h("feffe9928665731c6d6a8f9467308308");
        key.extend_from_slice(&h("cafebabe"));
        let iv: [u8; 8] = h("facedbaddecaf888").try_into().unwrap();
        let aad = h("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let plain = h(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                       1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let expected = h(
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
                          21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091\
                          5bc94fbc3221a5db94fae95ae7121a47",
        );
        let encr = Encr::AesGcm16 { key_bits: 128 };
        let mut buf = plain.clone();
        encr.seal(&key, &iv, &aad, &mut buf).unwrap();
        assert_eq!(buf, expected);
        encr.open(&key, &iv, &aad, &mut buf).unwrap();
        assert_eq!(buf, plain);
    }

    /// RFC 8439 2.8.2 (nonce 07000000 ‖ 4041424344454647: the first 4
    /// octets play the role of the salt).
    #[test]
    fn chacha20_poly1305_known_answer() {
        let mut key: Vec<u8> = (0x80..=0x9f).collect();
        key.extend_from_slice(&h("07000000"));
        let iv: [u8; 8] = h("4041424344454647").try_into().unwrap();
        let aad = h("50515253c0c1c2c3c4c5c6c7");
        let plain = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec();
        let expected = h(
            "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6\
                          3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36\
                          92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc\
                          3ff4def08e4b7a9de576d26586cec64b6116\
                          1ae10b594f09e26a7e902ecbd0600691",
        );
        let mut buf = plain.clone();
        Encr::ChaCha20Poly1305
            .seal(&key, &iv, &aad, &mut buf)
            .unwrap();
        assert_eq!(buf, expected);
        Encr::ChaCha20Poly1305
            .open(&key, &iv, &aad, &mut buf)
            .unwrap();
        assert_eq!(buf, plain);
    }
}
