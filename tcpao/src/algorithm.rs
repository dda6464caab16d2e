//! The TCP-AO MAC algorithms aokd negotiates and installs (RFC 5926, and
//! the HMAC-SHA-256 pairing of docs/protocol.md), by the names that
//! configuration, aoctl, JSON and the kernel give them. Their IKEv2
//! transform IDs live with the IKE code (`aokd_proto::mkt`).

use core::fmt;
use core::str::FromStr;

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
