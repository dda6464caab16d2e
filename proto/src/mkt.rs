//! Master Key Tuples (RFC 5925 3.1) as aokd negotiates them.

use core::fmt;
use core::str::FromStr;

use crate::crypto::Secret;
use crate::numbers::IntegId;

/// The KeyID space of a peer (docs/protocol.md, "KeyID allocation"): the
/// KeyIDs that negotiated MKTs use. Each side draws its RecvID from here.
pub const NEGOTIATED_KEY_IDS: core::ops::RangeInclusive<u8> = 0..=239;

/// KeyIDs reserved for the dummy-key guard, which keeps a covered socket
/// from sending or accepting unsigned segments while it has no MKT. No
/// negotiated MKT ever uses one, so a guard key never collides with a key
/// the peer could hold.
pub const GUARD_KEY_IDS: core::ops::RangeInclusive<u8> = 240..=255;

/// Whether `id` is a guard KeyID.
pub fn is_guard_id(id: u8) -> bool {
    GUARD_KEY_IDS.contains(&id)
}

/// A TCP-AO MAC algorithm together with its KDF (RFC 5926, and the
/// HMAC-SHA-256 pairing of docs/protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum MacAlgorithm {
    /// HMAC-SHA-1-96 with KDF_HMAC_SHA1 (RFC 5926 2.2, 3.1.1.1).
    #[serde(rename = "hmac-sha1-96")]
    HmacSha1_96,
    /// AES-128-CMAC-96 with KDF_AES_128_CMAC (RFC 5926 2.2, 3.1.1.2).
    #[serde(rename = "aes128-cmac-96")]
    AesCmac96,
    /// HMAC-SHA-256 truncated to 16 octets, with an HMAC-SHA-256 KDF.
    #[serde(rename = "hmac-sha256-128")]
    HmacSha256_128,
}

impl MacAlgorithm {
    pub const ALL: [MacAlgorithm; 3] = [
        MacAlgorithm::HmacSha256_128,
        MacAlgorithm::AesCmac96,
        MacAlgorithm::HmacSha1_96,
    ];

    /// The transform type 3 ID that names this algorithm in a TCP-AO proposal.
    pub fn integ_id(self) -> IntegId {
        match self {
            MacAlgorithm::HmacSha1_96 => IntegId::AUTH_HMAC_SHA1_96,
            MacAlgorithm::AesCmac96 => IntegId::AUTH_AES_CMAC_96,
            MacAlgorithm::HmacSha256_128 => IntegId::AUTH_HMAC_SHA2_256_128,
        }
    }

    pub fn from_integ_id(id: IntegId) -> Option<MacAlgorithm> {
        MacAlgorithm::ALL.into_iter().find(|a| a.integ_id() == id)
    }

    /// The name used in configuration, aoctl and JSON.
    pub fn name(self) -> &'static str {
        match self {
            MacAlgorithm::HmacSha1_96 => "hmac-sha1-96",
            MacAlgorithm::AesCmac96 => "aes128-cmac-96",
            MacAlgorithm::HmacSha256_128 => "hmac-sha256-128",
        }
    }

    /// The Linux crypto API name given to TCP_AO_ADD_KEY.
    pub fn kernel_name(self) -> &'static str {
        match self {
            MacAlgorithm::HmacSha1_96 => "hmac(sha1)",
            MacAlgorithm::AesCmac96 => "cmac(aes128)",
            MacAlgorithm::HmacSha256_128 => "hmac(sha256)",
        }
    }

    /// MAC length on the wire in octets.
    pub fn mac_len(self) -> usize {
        match self {
            MacAlgorithm::HmacSha1_96 | MacAlgorithm::AesCmac96 => 12,
            MacAlgorithm::HmacSha256_128 => 16,
        }
    }
}

impl fmt::Display for MacAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MacAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MacAlgorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| format!("unknown MAC algorithm {s:?} (expected hmac-sha1-96, aes128-cmac-96 or hmac-sha256-128)"))
    }
}

/// Length of the master key aokd derives for every MKT (docs/protocol.md).
pub const MASTER_KEY_LEN: usize = 32;

/// A negotiated MKT. The master key is a [`Secret`]: zeroized, never printed.
#[derive(Clone)]
pub struct MasterKeyTuple {
    /// KeyID this side puts in segments it sends (the peer's RecvID).
    pub send_id: u8,
    /// KeyID this side expects in segments it receives (the SPI it sent).
    pub recv_id: u8,
    pub algorithm: MacAlgorithm,
    /// RFC 5925 TCP option flag: true when TCP options are covered by the MAC.
    pub include_options: bool,
    pub master_key: Secret,
}

impl MasterKeyTuple {
    /// The key's fingerprint (first 8 octets of SHA-256, hex).
    pub fn fingerprint(&self) -> String {
        crate::crypto::fingerprint(self.master_key.as_bytes())
    }
}

impl fmt::Debug for MasterKeyTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKeyTuple")
            .field("send_id", &self.send_id)
            .field("recv_id", &self.recv_id)
            .field("algorithm", &self.algorithm)
            .field("include_options", &self.include_options)
            .field("master_key", &"<redacted>")
            .finish()
    }
}
