//! Key exchange (transform type 4): group 31, Curve25519 (RFC 8031, X25519 of
//! RFC 7748), and group 19, the 256-bit random ECP group (RFC 5903, P-256).
//!
//! X25519 comes from `x25519-dalek` and P-256 from the RustCrypto `p256`
//! crate. ring's P-256 is deliberately not used: ring only generates private
//! keys from its own `SecureRandom`, a sealed trait, so it cannot take the
//! injected `rand_core` RNG that this sans-IO library requires (generation
//! must be reproducible in tests and simulations).

use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::CryptoRngCore;
use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::{CryptoError, Secret};
use crate::numbers::DhGroup;

/// Octets of a group 31 public value and shared secret (RFC 8031 2).
const X25519_LEN: usize = 32;
/// Octets of one P-256 coordinate (RFC 5903 7).
const P256_COORD_LEN: usize = 32;
/// SEC1 tag of an uncompressed point, which the IKEv2 encoding omits.
const SEC1_UNCOMPRESSED: u8 = 0x04;

/// The private value, zeroized on drop: `SecretKey` zeroizes itself, and
/// the `Drop` below zeroizes the `StaticSecret` explicitly (x25519-dalek only
/// does so with its `zeroize` feature, and does not advertise it through
/// `ZeroizeOnDrop`). `StaticSecret` rather than `EphemeralSecret` because
/// [`KeyExchange::agree`] takes `&self`; `SecretKey` rather than
/// `p256::ecdh::EphemeralSecret` so that tests can load the RFC 5903 private
/// values (generation is the same `NonZeroScalar::random`).
enum Private {
    X25519(StaticSecret),
    P256(p256::SecretKey),
}

impl Drop for Private {
    fn drop(&mut self) {
        match self {
            Private::X25519(secret) => secret.zeroize(),
            // `SecretKey` zeroizes its scalar in its own `Drop`.
            Private::P256(_) => {}
        }
    }
}

impl ZeroizeOnDrop for Private {}

/// An ephemeral key exchange private value (RFC 8031 for group 31,
/// RFC 5903 for group 19). Zeroized on drop, no `Debug`.
pub struct KeyExchange {
    group: DhGroup,
    private: Private,
    /// The KE payload encoding of the public value (not secret).
    public: Vec<u8>,
}

impl KeyExchange {
    /// Groups this crate implements, in aokd's default preference order.
    pub const SUPPORTED: [DhGroup; 2] = [DhGroup::CURVE25519, DhGroup::ECP_256];

    /// Draws a fresh private value for `group` from `rng`; any other group
    /// than those in [`KeyExchange::SUPPORTED`] is [`CryptoError::Unsupported`].
    pub fn generate(
        group: DhGroup,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<KeyExchange, CryptoError> {
        match group {
            DhGroup::CURVE25519 => Ok(Self::from_x25519(StaticSecret::random_from_rng(rng))),
            DhGroup::ECP_256 => Ok(Self::from_p256(p256::SecretKey::random(&mut &mut *rng))),
            _ => Err(CryptoError::Unsupported("key exchange group")),
        }
    }

    fn from_x25519(secret: StaticSecret) -> KeyExchange {
        let public = x25519_dalek::PublicKey::from(&secret).as_bytes().to_vec();
        KeyExchange {
            group: DhGroup::CURVE25519,
            private: Private::X25519(secret),
            public,
        }
    }

    fn from_p256(secret: p256::SecretKey) -> KeyExchange {
        // RFC 5903 7: the KE data is x ‖ y without the SEC1 0x04 prefix.
        let point = secret.public_key().to_encoded_point(false);
        let public = point.as_bytes()[1..].to_vec();
        KeyExchange {
            group: DhGroup::ECP_256,
            private: Private::P256(secret),
            public,
        }
    }

    /// Builds a key exchange from a raw private value: 32 little-endian octets
    /// for X25519 (RFC 7748 5), a 32-octet big-endian scalar for P-256.
    /// Test-only, for known-answer vectors.
    #[cfg(test)]
    pub(crate) fn from_private_bytes(
        group: DhGroup,
        private: &[u8],
    ) -> Result<KeyExchange, CryptoError> {
        match group {
            DhGroup::CURVE25519 => {
                let bytes: [u8; X25519_LEN] = private
                    .try_into()
                    .map_err(|_| CryptoError::Unsupported("private value length"))?;
                Ok(Self::from_x25519(StaticSecret::from(bytes)))
            }
            DhGroup::ECP_256 => {
                let secret = p256::SecretKey::from_slice(private)
                    .map_err(|_| CryptoError::Unsupported("private value"))?;
                Ok(Self::from_p256(secret))
            }
            _ => Err(CryptoError::Unsupported("key exchange group")),
        }
    }

    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// The public value as carried in the KE payload (32 octets for group 31,
    /// x ‖ y = 64 octets for group 19).
    pub fn public(&self) -> Vec<u8> {
        self.public.clone()
    }

    /// g^ir from the peer's KE data; rejects malformed or degenerate values.
    ///
    /// - Group 31 (RFC 8031 2, RFC 7748 5 and 6.1): the peer value must be 32
    ///   octets; an all-zero shared secret (a low-order peer point) is
    ///   [`CryptoError::Degenerate`].
    /// - Group 19 (RFC 5903 7, 9): the peer value must be 64 octets x ‖ y of
    ///   a point on the curve; g^ir is the 32-octet x-coordinate of the shared
    ///   point.
    pub fn agree(&self, peer: &[u8]) -> Result<Secret, CryptoError> {
        let group = self.group;
        match &self.private {
            Private::X25519(secret) => {
                let bytes: [u8; X25519_LEN] = peer
                    .try_into()
                    .map_err(|_| CryptoError::InvalidPublic { group })?;
                let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(bytes));
                if !shared.was_contributory() {
                    return Err(CryptoError::Degenerate { group });
                }
                Ok(Secret::new(shared.as_bytes().to_vec()))
            }
            Private::P256(secret) => {
                if peer.len() != 2 * P256_COORD_LEN {
                    return Err(CryptoError::InvalidPublic { group });
                }
                let mut sec1 = [0u8; 1 + 2 * P256_COORD_LEN];
                sec1[0] = SEC1_UNCOMPRESSED;
                sec1[1..].copy_from_slice(peer);
                // Validates that the point is on the curve (and not the identity).
                let peer_key = p256::PublicKey::from_sec1_bytes(&sec1)
                    .map_err(|_| CryptoError::InvalidPublic { group })?;
                let scalar = Zeroizing::new(secret.to_nonzero_scalar());
                let shared = p256::ecdh::diffie_hellman(&*scalar, peer_key.as_affine());
                Ok(Secret::new(shared.raw_secret_bytes().to_vec()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    #[test]
    fn private_values_zeroize_on_drop() {
        fn zeroizes_on_drop<T: ZeroizeOnDrop>() {}
        zeroizes_on_drop::<Private>();
        zeroizes_on_drop::<p256::SecretKey>();
        zeroizes_on_drop::<Secret>();
    }

    #[test]
    fn unsupported_groups() {
        for group in [
            DhGroup::NONE,
            DhGroup::MODP_2048,
            DhGroup::ECP_384,
            DhGroup(32),
            DhGroup(9999),
        ] {
            assert_eq!(
                KeyExchange::generate(group, &mut rng(1)).err(),
                Some(CryptoError::Unsupported("key exchange group"))
            );
        }
    }

    #[test]
    fn generation_is_deterministic_in_the_rng() {
        for group in KeyExchange::SUPPORTED {
            let a = KeyExchange::generate(group, &mut rng(7)).unwrap();
            let b = KeyExchange::generate(group, &mut rng(7)).unwrap();
            let c = KeyExchange::generate(group, &mut rng(8)).unwrap();
            assert_eq!(a.group(), group);
            assert_eq!(a.public(), b.public());
            assert_ne!(a.public(), c.public());
        }
    }

    /// RFC 7748 6.1.
    #[test]
    fn x25519_rfc7748_vector() {
        let g = DhGroup::CURVE25519;
        let alice = KeyExchange::from_private_bytes(
            g,
            &h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"),
        )
        .unwrap();
        let bob = KeyExchange::from_private_bytes(
            g,
            &h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"),
        )
        .unwrap();
        assert_eq!(
            alice.public(),
            h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            bob.public(),
            h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let k = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(alice.agree(&bob.public()).unwrap().as_bytes(), k.as_slice());
        assert_eq!(bob.agree(&alice.public()).unwrap().as_bytes(), k.as_slice());
    }

    #[test]
    fn x25519_generated_pair_agrees() {
        let g = DhGroup::CURVE25519;
        let a = KeyExchange::generate(g, &mut rng(1)).unwrap();
        let b = KeyExchange::generate(g, &mut rng(2)).unwrap();
        assert_eq!(a.public().len(), 32);
        let s = a.agree(&b.public()).unwrap();
        assert_eq!(s.len(), 32);
        assert_eq!(s.as_bytes(), b.agree(&a.public()).unwrap().as_bytes());
    }

    #[test]
    fn x25519_rejects_bad_peer_values() {
        let g = DhGroup::CURVE25519;
        let a = KeyExchange::generate(g, &mut rng(3)).unwrap();
        // Low-order points (RFC 7748 6.1): u = 0 and u = 1 give an all-zero secret.
        let mut one = [0u8; 32];
        one[0] = 1;
        for low in [[0u8; 32], one] {
            assert_eq!(
                a.agree(&low).err(),
                Some(CryptoError::Degenerate { group: g })
            );
        }
        for len in [0, 1, 31, 33, 64, 65] {
            assert_eq!(
                a.agree(&vec![9u8; len]).err(),
                Some(CryptoError::InvalidPublic { group: g }),
                "{len}"
            );
        }
    }

    /// RFC 5903 8.1.
    #[test]
    fn p256_rfc5903_vector() {
        let g = DhGroup::ECP_256;
        let i = KeyExchange::from_private_bytes(
            g,
            &h("c88f01f510d9ac3f70a292daa2316de544e9aab8afe84049c62a9c57862d1433"),
        )
        .unwrap();
        let r = KeyExchange::from_private_bytes(
            g,
            &h("c6ef9c5d78ae012a011164acb397ce2088685d8f06bf9be0b283ab46476bee53"),
        )
        .unwrap();
        let gi = h(
            "dad0b65394221cf9b051e1feca5787d098dfe637fc90b9ef945d0c3772581180\
                    5271a0461cdb8252d61f1c456fa3e59ab1f45b33accf5f58389e0577b8990bb3",
        );
        let gr = h(
            "d12dfb5289c8d4f81208b70270398c342296970a0bccb74c736fc7554494bf63\
                    56fbf3ca366cc23e8157854c13c58d6aac23f046ada30f8353e74f33039872ab",
        );
        assert_eq!(i.public(), gi);
        assert_eq!(r.public(), gr);
        let girx = h("d6840f6b42f6edafd13116e0e12565202fef8e9ece7dce03812464d04b9442de");
        assert_eq!(i.agree(&gr).unwrap().as_bytes(), girx.as_slice());
        assert_eq!(r.agree(&gi).unwrap().as_bytes(), girx.as_slice());
    }

    #[test]
    fn p256_generated_pair_agrees() {
        let g = DhGroup::ECP_256;
        let a = KeyExchange::generate(g, &mut rng(4)).unwrap();
        let b = KeyExchange::generate(g, &mut rng(5)).unwrap();
        assert_eq!(a.public().len(), 64);
        assert_ne!(
            a.public()[0],
            0x04,
            "no SEC1 prefix expected (probabilistically)"
        );
        let s = a.agree(&b.public()).unwrap();
        assert_eq!(s.len(), 32);
        assert_eq!(s.as_bytes(), b.agree(&a.public()).unwrap().as_bytes());
    }

    #[test]
    fn p256_rejects_bad_peer_values() {
        let g = DhGroup::ECP_256;
        let a = KeyExchange::generate(g, &mut rng(6)).unwrap();
        let invalid = Some(CryptoError::InvalidPublic { group: g });
        // Not on the curve: (1, 1), and a valid point with y changed.
        let mut not_on_curve = [0u8; 64];
        not_on_curve[31] = 1;
        not_on_curve[63] = 1;
        assert_eq!(a.agree(&not_on_curve).err(), invalid);
        let mut tweaked = KeyExchange::generate(g, &mut rng(9)).unwrap().public();
        tweaked[63] ^= 1;
        assert_eq!(a.agree(&tweaked).err(), invalid);
        // The identity has no x ‖ y encoding; all zero is not a point.
        assert_eq!(a.agree(&[0u8; 64]).err(), invalid);
        // Coordinates not reduced modulo p (all 0xff).
        assert_eq!(a.agree(&[0xffu8; 64]).err(), invalid);
        // Wrong lengths, including SEC1 uncompressed (65) and compressed (33) forms.
        let good = KeyExchange::generate(g, &mut rng(10)).unwrap().public();
        let mut sec1 = vec![0x04];
        sec1.extend_from_slice(&good);
        let mut compressed = vec![0x02];
        compressed.extend_from_slice(&good[..32]);
        for bad in [
            vec![],
            vec![0x04],
            good[..63].to_vec(),
            sec1,
            compressed,
            [good.clone(), vec![0]].concat(),
        ] {
            assert_eq!(a.agree(&bad).err(), invalid, "{}", bad.len());
        }
        assert!(a.agree(&good).is_ok());
    }
}
