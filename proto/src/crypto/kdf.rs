//! IKEv2 key derivation (RFC 7296 2.14, 2.17, 2.18), PSK authentication
//! (RFC 7296 2.15) and key fingerprints.
//!
//! All functions are thin compositions of [`Prf::prf`] and [`Prf::prf_plus`];
//! intermediate buffers that hold secrets are zeroized.

use zeroize::Zeroizing;

use super::{CryptoError, Encr, Prf, Secret};

/// The keys of an IKE SA (RFC 7296 2.14). With AEAD ciphers SK_ai/SK_ar are
/// empty. They are kept as prf+ made them, in one allocation
/// (SK_d | SK_ei | SK_er | SK_pi | SK_pr): an SA of a route server's
/// thousands holds one buffer, not five (issue: scale, memory per peer).
pub struct IkeKeys {
    keys: Secret,
    prf_len: usize,
    encr_len: usize,
}

impl IkeKeys {
    /// SK_d, for the keys of child SAs and of a rekeyed IKE SA.
    pub fn sk_d(&self) -> &[u8] {
        &self.keys.as_bytes()[..self.prf_len]
    }

    /// SK_ei: key and salt of the initiator's messages.
    pub fn sk_ei(&self) -> &[u8] {
        let at = self.prf_len;
        &self.keys.as_bytes()[at..at + self.encr_len]
    }

    /// SK_er: key and salt of the responder's messages.
    pub fn sk_er(&self) -> &[u8] {
        let at = self.prf_len + self.encr_len;
        &self.keys.as_bytes()[at..at + self.encr_len]
    }

    /// SK_pi, for the initiator's AUTH payload; empty once
    /// [`IkeKeys::forget_auth_keys`] has dropped it.
    pub fn sk_pi(&self) -> &[u8] {
        let at = self.prf_len + 2 * self.encr_len;
        self.keys
            .as_bytes()
            .get(at..at + self.prf_len)
            .unwrap_or(&[])
    }

    /// SK_pr, for the responder's AUTH payload; empty once
    /// [`IkeKeys::forget_auth_keys`] has dropped it.
    pub fn sk_pr(&self) -> &[u8] {
        let at = 2 * self.prf_len + 2 * self.encr_len;
        self.keys
            .as_bytes()
            .get(at..at + self.prf_len)
            .unwrap_or(&[])
    }

    /// Drops SK_pi and SK_pr, which only the AUTH payloads of IKE_AUTH use
    /// (RFC 7296 2.15): an established SA, or one made by a rekey, never
    /// needs them again (issue: scale, memory per peer; 64 octets of 168
    /// with SHA-256). The old buffer is zeroized.
    pub fn forget_auth_keys(&mut self) {
        let keep = self.prf_len + 2 * self.encr_len;
        if self.keys.as_bytes().len() > keep {
            self.keys = Secret::new(self.keys.as_bytes()[..keep].to_vec());
        }
    }
}

/// SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 2.14).
///
/// The nonces are used whole: only the AES-XCBC/CMAC PRFs, which aokd does not
/// implement, truncate them. For the SKEYSEED of a rekeyed IKE SA
/// (RFC 7296 2.18) see [`rekey_skeyseed`].
pub fn skeyseed(prf: Prf, ni: &[u8], nr: &[u8], gir: &[u8]) -> Secret {
    let mut key = Zeroizing::new(Vec::with_capacity(ni.len() + nr.len()));
    key.extend_from_slice(ni);
    key.extend_from_slice(nr);
    prf.prf(&key, gir)
}

/// SKEYSEED of the IKE SA created by a rekey (RFC 7296 2.18):
/// prf(SK_d (old), g^ir (new) | Ni | Nr), with the old IKE SA's PRF and the
/// nonces of the rekey exchange. The new keys then come from
/// [`derive_ike_keys`] with the new SA's PRF, SPIs and these nonces.
pub fn rekey_skeyseed(
    prf_old: Prf,
    sk_d_old: &[u8],
    gir_new: &[u8],
    ni: &[u8],
    nr: &[u8],
) -> Secret {
    let mut data = Zeroizing::new(Vec::with_capacity(gir_new.len() + ni.len() + nr.len()));
    data.extend_from_slice(gir_new);
    data.extend_from_slice(ni);
    data.extend_from_slice(nr);
    prf_old.prf(sk_d_old, &data)
}

/// {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}
/// = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr) (RFC 7296 2.14).
///
/// SPIi and SPIr enter the seed as their 8 header octets (big-endian).
/// SK_d, SK_pi and SK_pr are `prf.key_len()` octets; the ciphers are AEAD, so
/// SK_ai and SK_ar are 0 octets and SK_ei/SK_er are key ‖ salt,
/// [`Encr::keymat_len`] octets (RFC 5282 7.1, RFC 7634 2). An `Encr` that
/// [`Encr::from_transform`] would not produce is [`CryptoError::Unsupported`].
pub fn derive_ike_keys(
    prf: Prf,
    encr: Encr,
    skeyseed: &Secret,
    ni: &[u8],
    nr: &[u8],
    spi_i: u64,
    spi_r: u64,
) -> Result<IkeKeys, CryptoError> {
    if Encr::from_transform(encr.id(), encr.key_length_attr()) != Some(encr) {
        return Err(CryptoError::Unsupported("ENCR key length"));
    }
    let prf_len = prf.key_len();
    let encr_len = encr.keymat_len();
    let mut seed = Vec::with_capacity(ni.len() + nr.len() + 16);
    seed.extend_from_slice(ni);
    seed.extend_from_slice(nr);
    seed.extend_from_slice(&spi_i.to_be_bytes());
    seed.extend_from_slice(&spi_r.to_be_bytes());
    let dkm = prf.prf_plus(skeyseed.as_bytes(), &seed, 3 * prf_len + 2 * encr_len)?;

    // SK_ai and SK_ar: 0 octets with an AEAD cipher. A copy of exactly
    // the length (prf+ may leave spare capacity); the original is zeroized.
    Ok(IkeKeys {
        keys: Secret::new(dkm.as_bytes().to_vec()),
        prf_len,
        encr_len,
    })
}

/// KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (RFC 7296 2.17).
///
/// `gir_new` is the fresh shared secret of a CREATE_CHILD_SA exchange with a
/// KE payload (PFS); `None` for the first Child SA or a rekey without PFS.
pub fn child_keymat(
    prf: Prf,
    sk_d: &[u8],
    gir_new: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    len: usize,
) -> Result<Secret, CryptoError> {
    let gir = gir_new.unwrap_or_default();
    let mut seed = Zeroizing::new(Vec::with_capacity(gir.len() + ni.len() + nr.len()));
    seed.extend_from_slice(gir);
    seed.extend_from_slice(ni);
    seed.extend_from_slice(nr);
    prf.prf_plus(sk_d, &seed, len)
}

/// The key pad of RFC 7296 2.15: 17 ASCII octets, no NUL terminator.
pub const KEY_PAD_IKEV2: &[u8; 17] = b"Key Pad for IKEv2";

/// AUTH for a pre-shared key (RFC 7296 2.15):
/// prf(prf(Shared Secret, "Key Pad for IKEv2"), signed_octets).
pub fn psk_auth(prf: Prf, psk: &[u8], signed_octets: &[u8]) -> Secret {
    let inner = prf.prf(psk, KEY_PAD_IKEV2);
    prf.prf(inner.as_bytes(), signed_octets)
}

/// Key fingerprints are `aokd_tcpao`'s (aoctl names keys without the IKE
/// code); re-exported so that IKE code finds them with the other KDFs.
pub use aokd_tcpao::fingerprint;

#[cfg(test)]
mod tests {
    use super::*;
    use ::hmac::{Hmac, Mac};
    use std::collections::HashMap;

    /// The RFC 7296 KDF vector set (PRF_HMAC_SHA2_256), copied from the
    /// project's research notes into testdata/.
    const VECTORS: &str = include_str!("../../testdata/ikev2-kdf-sha256.txt");

    /// Parses "label [= formula]" lines followed by indented hex lines into
    /// label → octets. Lines without indented values (the prose header) are
    /// dropped.
    fn vectors() -> HashMap<String, Vec<u8>> {
        let mut map: HashMap<String, Vec<u8>> = HashMap::new();
        let mut label: Option<String> = None;
        for line in VECTORS.lines() {
            if line.trim().is_empty() {
                continue;
            }
            if line.starts_with(char::is_whitespace) {
                let label = label.clone().expect("value before any label");
                let bytes = hex::decode(line.trim()).expect("hex value");
                map.entry(label).or_default().extend_from_slice(&bytes);
            } else {
                let name = line.split(" = ").next().unwrap_or(line).trim();
                label = Some(name.to_string());
            }
        }
        map
    }

    fn get<'a>(v: &'a HashMap<String, Vec<u8>>, name: &str) -> &'a [u8] {
        v.get(name)
            .unwrap_or_else(|| panic!("vector {name} missing"))
    }

    fn spi(bytes: &[u8]) -> u64 {
        u64::from_be_bytes(bytes.try_into().expect("8-octet SPI"))
    }

    #[test]
    fn vector_file_is_complete() {
        let v = vectors();
        for name in [
            "Ni",
            "Nr",
            "SPIi",
            "SPIr",
            "gir",
            "gir_new",
            "SKEYSEED",
            "DKM",
            "SK_d",
            "KEYMAT",
            "KEYMAT with PFS",
            "SKEYSEED for IKE SA rekey",
        ] {
            assert!(!get(&v, name).is_empty(), "{name}");
        }
        assert_eq!(get(&v, "SPIi").len(), 8);
        assert_eq!(get(&v, "SPIr").len(), 8);
    }

    #[test]
    fn kdf_vectors_sha256() {
        let v = vectors();
        let prf = Prf::HmacSha256;
        let (ni, nr) = (get(&v, "Ni"), get(&v, "Nr"));

        let seed = skeyseed(prf, ni, nr, get(&v, "gir"));
        assert_eq!(seed.as_bytes(), get(&v, "SKEYSEED"));

        let dkm_expected = get(&v, "DKM");
        let mut dkm_seed = [ni, nr].concat();
        dkm_seed.extend_from_slice(get(&v, "SPIi"));
        dkm_seed.extend_from_slice(get(&v, "SPIr"));
        let dkm = prf
            .prf_plus(seed.as_bytes(), &dkm_seed, dkm_expected.len())
            .unwrap();
        assert_eq!(dkm.as_bytes(), dkm_expected);

        let sk_d = Secret::new(dkm.as_bytes()[..prf.key_len()].to_vec());
        assert_eq!(sk_d.as_bytes(), get(&v, "SK_d"));

        let keymat = get(&v, "KEYMAT");
        let got = child_keymat(prf, sk_d.as_bytes(), None, ni, nr, keymat.len()).unwrap();
        assert_eq!(got.as_bytes(), keymat);

        let keymat_pfs = get(&v, "KEYMAT with PFS");
        let got = child_keymat(
            prf,
            sk_d.as_bytes(),
            Some(get(&v, "gir_new")),
            ni,
            nr,
            keymat_pfs.len(),
        )
        .unwrap();
        assert_eq!(got.as_bytes(), keymat_pfs);

        // RFC 7296 2.18: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr).
        let rekey_data = [get(&v, "gir_new"), ni, nr].concat();
        assert_eq!(
            prf.prf(sk_d.as_bytes(), &rekey_data).as_bytes(),
            get(&v, "SKEYSEED for IKE SA rekey")
        );
        assert_eq!(
            rekey_skeyseed(prf, sk_d.as_bytes(), get(&v, "gir_new"), ni, nr).as_bytes(),
            get(&v, "SKEYSEED for IKE SA rekey")
        );
    }

    #[test]
    fn ike_keys_are_slices_of_dkm_in_rfc_order() {
        let v = vectors();
        let prf = Prf::HmacSha256;
        let (ni, nr) = (get(&v, "Ni"), get(&v, "Nr"));
        let seed = Secret::new(get(&v, "SKEYSEED").to_vec());
        let dkm = get(&v, "DKM");
        for (encr, elen) in [
            (Encr::AesGcm16 { key_bits: 128 }, 20),
            (Encr::AesGcm16 { key_bits: 256 }, 36),
            (Encr::ChaCha20Poly1305, 36),
        ] {
            let keys = derive_ike_keys(
                prf,
                encr,
                &seed,
                ni,
                nr,
                spi(get(&v, "SPIi")),
                spi(get(&v, "SPIr")),
            )
            .unwrap();
            // SK_d | SK_ai (0) | SK_ar (0) | SK_ei | SK_er | SK_pi | SK_pr
            let mut at = 0;
            for (name, key, len) in [
                ("SK_d", keys.sk_d(), 32),
                ("SK_ei", keys.sk_ei(), elen),
                ("SK_er", keys.sk_er(), elen),
                ("SK_pi", keys.sk_pi(), 32),
                ("SK_pr", keys.sk_pr(), 32),
            ] {
                assert_eq!(key, &dkm[at..at + len], "{encr:?} {name}");
                at += len;
            }
        }
    }

    #[test]
    fn ike_key_lengths_follow_prf_and_cipher() {
        let seed = Secret::new(vec![7; 48]);
        for prf in [Prf::HmacSha256, Prf::HmacSha384, Prf::HmacSha512] {
            let keys = derive_ike_keys(
                prf,
                Encr::AesGcm16 { key_bits: 256 },
                &seed,
                &[1; 32],
                &[2; 32],
                1,
                2,
            )
            .unwrap();
            assert_eq!(keys.sk_d().len(), prf.key_len());
            assert_eq!(keys.sk_pi().len(), prf.key_len());
            assert_eq!(keys.sk_pr().len(), prf.key_len());
            assert_eq!(keys.sk_ei().len(), 36);
            assert_eq!(keys.sk_er().len(), 36);
            assert_ne!(keys.sk_ei(), keys.sk_er());
        }
    }

    #[test]
    fn forgetting_the_auth_keys_keeps_the_others() {
        let seed = Secret::new(vec![7; 48]);
        let mut keys = derive_ike_keys(
            Prf::HmacSha256,
            Encr::AesGcm16 { key_bits: 256 },
            &seed,
            &[1; 32],
            &[2; 32],
            1,
            2,
        )
        .unwrap();
        let (d, ei, er) = (
            keys.sk_d().to_vec(),
            keys.sk_ei().to_vec(),
            keys.sk_er().to_vec(),
        );
        keys.forget_auth_keys();
        assert_eq!(keys.keys.as_bytes().len(), 32 + 2 * 36);
        assert_eq!(
            (keys.sk_d(), keys.sk_ei(), keys.sk_er()),
            (&d[..], &ei[..], &er[..])
        );
        assert!(keys.sk_pi().is_empty() && keys.sk_pr().is_empty());
        keys.forget_auth_keys();
        assert_eq!(keys.sk_d(), &d[..]);
    }

    #[test]
    fn ike_keys_reject_unsupported_cipher_parameters() {
        let seed = Secret::new(vec![7; 32]);
        let r = derive_ike_keys(
            Prf::HmacSha256,
            Encr::AesGcm16 { key_bits: 192 },
            &seed,
            &[1; 16],
            &[2; 16],
            1,
            2,
        );
        assert!(matches!(r, Err(CryptoError::Unsupported(_))));
    }

    #[test]
    fn psk_auth_matches_independent_hmac() {
        fn hmac<M: Mac + ::hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
            let mut mac =
                <M as ::hmac::digest::KeyInit>::new_from_slice(key).expect("any key length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        fn reference<M: Mac + ::hmac::digest::KeyInit>(psk: &[u8], signed: &[u8]) -> Vec<u8> {
            // The pad is spelled out here rather than taken from KEY_PAD_IKEV2.
            let inner = hmac::<M>(psk, "Key Pad for IKEv2".as_bytes());
            hmac::<M>(&inner, signed)
        }
        assert_eq!(KEY_PAD_IKEV2.len(), 17);
        let psk = b"a pre-shared key that is an ASCII string of at least sixty-four octets....";
        let signed = [0x5au8; 300];
        assert_eq!(
            psk_auth(Prf::HmacSha256, psk, &signed).as_bytes(),
            reference::<Hmac<sha2::Sha256>>(psk, &signed).as_slice()
        );
        assert_eq!(
            psk_auth(Prf::HmacSha384, psk, &signed).as_bytes(),
            reference::<Hmac<sha2::Sha384>>(psk, &signed).as_slice()
        );
        assert_eq!(
            psk_auth(Prf::HmacSha512, psk, &signed).as_bytes(),
            reference::<Hmac<sha2::Sha512>>(psk, &signed).as_slice()
        );
        // A NUL-terminated pad would give a different value.
        let with_nul = hmac::<Hmac<sha2::Sha256>>(
            &hmac::<Hmac<sha2::Sha256>>(psk, b"Key Pad for IKEv2\0"),
            &signed,
        );
        assert_ne!(
            psk_auth(Prf::HmacSha256, psk, &signed).as_bytes(),
            with_nul.as_slice()
        );
    }
}
