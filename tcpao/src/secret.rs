//! Key material ([`Secret`]: zeroized on drop, never printed) and the
//! fingerprint by which aokd names a key in logs and aoctl.

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Key material: zeroized on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The first 8 octets of SHA-256(key), in lower-case hex: how aokd names a
/// key in logs and aoctl without revealing it.
pub fn fingerprint(key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    hex::encode(&digest.as_ref()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_of_zero_key() {
        // python3 -c 'import hashlib;print(hashlib.sha256(bytes(32)).hexdigest()[:16])'
        assert_eq!(fingerprint(&[0u8; 32]), "66687aadf862bd77");
        // SHA-256("") = e3b0c442 98fc1c14 ...
        assert_eq!(fingerprint(b""), "e3b0c44298fc1c14");
        assert_eq!(fingerprint(b"x").len(), 16);
    }
}
