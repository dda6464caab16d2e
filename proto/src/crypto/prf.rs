//! The IKEv2 pseudorandom functions (transform type 2) and prf+
//! (RFC 7296 2.13). PRF_HMAC_SHA2_256/384/512 are HMAC with the full hash
//! output (RFC 4868 2.1.2); the HMAC itself is `ring::hmac`.

use ring::hmac;
use zeroize::{Zeroize, Zeroizing};

use super::{CryptoError, Secret};
use crate::numbers::PrfId;

/// A negotiated PRF (transform type 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prf {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl Prf {
    /// Maps a transform ID; `None` for PRFs aokd does not implement.
    pub fn from_id(id: PrfId) -> Option<Prf> {
        match id {
            PrfId::PRF_HMAC_SHA2_256 => Some(Prf::HmacSha256),
            PrfId::PRF_HMAC_SHA2_384 => Some(Prf::HmacSha384),
            PrfId::PRF_HMAC_SHA2_512 => Some(Prf::HmacSha512),
            _ => None,
        }
    }

    pub fn id(self) -> PrfId {
        match self {
            Prf::HmacSha256 => PrfId::PRF_HMAC_SHA2_256,
            Prf::HmacSha384 => PrfId::PRF_HMAC_SHA2_384,
            Prf::HmacSha512 => PrfId::PRF_HMAC_SHA2_512,
        }
    }

    /// The preferred key length, which is the output length for HMAC PRFs.
    pub fn key_len(self) -> usize {
        self.output_len()
    }

    /// The output length of one prf invocation (one prf+ block).
    pub fn output_len(self) -> usize {
        match self {
            Prf::HmacSha256 => 32,
            Prf::HmacSha384 => 48,
            Prf::HmacSha512 => 64,
        }
    }

    fn algorithm(self) -> hmac::Algorithm {
        match self {
            Prf::HmacSha256 => hmac::HMAC_SHA256,
            Prf::HmacSha384 => hmac::HMAC_SHA384,
            Prf::HmacSha512 => hmac::HMAC_SHA512,
        }
    }

    /// prf(key, data).
    pub fn prf(self, key: &[u8], data: &[u8]) -> Secret {
        let key = hmac::Key::new(self.algorithm(), key);
        Secret::new(hmac::sign(&key, data).as_ref().to_vec())
    }

    /// prf+(key, seed) truncated to `len` octets (RFC 7296 2.13).
    ///
    /// ```text
    /// prf+ (K,S) = T1 | T2 | T3 | T4 | ...
    /// T1 = prf (K, S | 0x01)
    /// Tn = prf (K, Tn-1 | S | n)
    /// ```
    ///
    /// The counter is one octet, so at most 255 blocks can be produced; a
    /// longer request is [`CryptoError::TooLong`]. `len == 0` gives an empty
    /// secret.
    pub fn prf_plus(self, key: &[u8], seed: &[u8], len: usize) -> Result<Secret, CryptoError> {
        let block = self.output_len();
        let blocks = u8::try_from(len.div_ceil(block)).map_err(|_| CryptoError::TooLong)?;
        let key = hmac::Key::new(self.algorithm(), key);
        // Exact capacity: the buffer never reallocates, so no copy of the key
        // stream is left behind in a freed allocation.
        let mut out = Zeroizing::new(Vec::with_capacity(usize::from(blocks) * block));
        for n in 1..=blocks {
            let mut ctx = hmac::Context::with_key(&key);
            if n > 1 {
                ctx.update(&out[(usize::from(n) - 2) * block..]);
            }
            ctx.update(seed);
            ctx.update(&[n]);
            out.extend_from_slice(ctx.sign().as_ref());
        }
        out[len..].zeroize();
        out.truncate(len);
        Ok(Secret::new(core::mem::take(&mut *out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::hmac::{Hmac, Mac};

    fn reference_prf(prf: Prf, key: &[u8], data: &[u8]) -> Vec<u8> {
        fn run<M: Mac + ::hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
            let mut mac = <M as ::hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC takes any key length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        match prf {
            Prf::HmacSha256 => run::<Hmac<sha2::Sha256>>(key, data),
            Prf::HmacSha384 => run::<Hmac<sha2::Sha384>>(key, data),
            Prf::HmacSha512 => run::<Hmac<sha2::Sha512>>(key, data),
        }
    }

    /// prf+ written out from the RFC 7296 2.13 definition over the
    /// independent HMAC.
    fn reference_prf_plus(prf: Prf, key: &[u8], seed: &[u8], len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut t = Vec::new();
        let mut n = 1u16;
        while out.len() < len {
            let mut input = t.clone();
            input.extend_from_slice(seed);
            input.push(u8::try_from(n).expect("at most 255 blocks"));
            t = reference_prf(prf, key, &input);
            out.extend_from_slice(&t);
            n += 1;
        }
        out.truncate(len);
        out
    }

    const ALL: [Prf; 3] = [Prf::HmacSha256, Prf::HmacSha384, Prf::HmacSha512];

    #[test]
    fn ids_round_trip() {
        for prf in ALL {
            assert_eq!(Prf::from_id(prf.id()), Some(prf));
        }
        assert_eq!(
            Prf::from_id(PrfId::PRF_HMAC_SHA2_256),
            Some(Prf::HmacSha256)
        );
        assert_eq!(Prf::from_id(PrfId(5)), Some(Prf::HmacSha256));
        assert_eq!(Prf::from_id(PrfId(6)), Some(Prf::HmacSha384));
        assert_eq!(Prf::from_id(PrfId(7)), Some(Prf::HmacSha512));
        assert_eq!(Prf::from_id(PrfId::PRF_HMAC_SHA1), None);
        assert_eq!(Prf::from_id(PrfId::PRF_AES128_XCBC), None);
        assert_eq!(Prf::from_id(PrfId::PRF_AES128_CMAC), None);
        assert_eq!(Prf::from_id(PrfId(999)), None);
        assert_eq!(Prf::HmacSha256.key_len(), 32);
        assert_eq!(Prf::HmacSha384.key_len(), 48);
        assert_eq!(Prf::HmacSha512.key_len(), 64);
    }

    #[test]
    fn prf_matches_independent_hmac() {
        // RFC 4231 test case 2 inputs, plus a key longer than the block size.
        let long_key = [0xaau8; 131];
        for prf in ALL {
            for (key, data) in [
                (&b"Jefe"[..], &b"what do ya want for nothing?"[..]),
                (&long_key[..], &b"data"[..]),
                (&[][..], &[][..]),
            ] {
                assert_eq!(
                    prf.prf(key, data).as_bytes(),
                    reference_prf(prf, key, data).as_slice(),
                    "{prf:?}"
                );
            }
        }
    }

    #[test]
    fn prf_plus_matches_definition() {
        let key = b"prf+ key";
        let seed = b"some seed octets";
        for prf in ALL {
            let block = prf.output_len();
            for len in [
                0,
                1,
                block - 1,
                block,
                block + 1,
                3 * block + 7,
                255 * block,
            ] {
                let got = prf.prf_plus(key, seed, len).unwrap();
                assert_eq!(got.len(), len);
                assert_eq!(
                    got.as_bytes(),
                    reference_prf_plus(prf, key, seed, len).as_slice(),
                    "{prf:?} {len}"
                );
            }
        }
    }

    #[test]
    fn prf_plus_first_block_is_prf_of_seed_and_one() {
        let got = Prf::HmacSha256.prf_plus(b"k", b"s", 32).unwrap();
        assert_eq!(
            got.as_bytes(),
            Prf::HmacSha256.prf(b"k", b"s\x01").as_bytes()
        );
    }

    #[test]
    fn prf_plus_limit_is_255_blocks() {
        for prf in ALL {
            let max = 255 * prf.output_len();
            assert_eq!(prf.prf_plus(b"k", b"s", max).map(|s| s.len()), Ok(max));
            assert_eq!(
                prf.prf_plus(b"k", b"s", max + 1).err(),
                Some(CryptoError::TooLong)
            );
            assert_eq!(
                prf.prf_plus(b"k", b"s", usize::MAX).err(),
                Some(CryptoError::TooLong)
            );
        }
    }
}
