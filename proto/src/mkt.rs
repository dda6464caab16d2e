//! Master Key Tuples (RFC 5925 3.1) as aokd negotiates them, and the IKEv2
//! transform IDs of their MAC algorithms (the algorithms themselves are
//! `aokd_tcpao`'s, re-exported here).

use core::fmt;

use crate::crypto::Secret;
use crate::numbers::IntegId;

/// The KeyID space of a peer (docs/protocol.md, "KeyID allocation"): the
/// KeyIDs that negotiated MKTs use. Each side draws its RecvID from here.
pub const NEGOTIATED_KEY_IDS: core::ops::RangeInclusive<u8> = 0..=239;

/// KeyIDs reserved for the dummy-key guards, which keep a covered socket
/// from sending or accepting unsigned segments while it has no MKT. No
/// negotiated MKT ever uses one, so a guard key never collides with a key
/// the peer could hold. The range is split in two halves,
/// [`AOKD_GUARD_KEY_IDS`] and [`LIBRARY_GUARD_KEY_IDS`].
pub const GUARD_KEY_IDS: core::ops::RangeInclusive<u8> = 240..=255;

/// The KeyIDs (SendID and RecvID) of aokd's own guards: a peer's guard
/// draws from [`PEER_GUARD_KEY_IDS`], a peer group's prefix guard on a
/// listener is [`GROUP_GUARD_KEY_ID`].
pub const AOKD_GUARD_KEY_IDS: core::ops::RangeInclusive<u8> = 240..=247;

/// The KeyIDs of a peer's guard (a host key for the peer's address).
pub const PEER_GUARD_KEY_IDS: core::ops::RangeInclusive<u8> = 240..=246;

/// The SendID and RecvID of a peer group's prefix guard: a key for each
/// of the group's prefixes on a listener of its ports, so that the
/// addresses with no member yet fail closed. Distinct from every peer
/// guard's, since Linux refuses (`EEXIST`) a key that shares its SendID or
/// its RecvID with an overlapping one, and a member's host guard overlaps
/// its group's prefix.
pub const GROUP_GUARD_KEY_ID: u8 = 247;

/// The KeyIDs (SendID and RecvID) of the preload library's guard (its
/// `/0` key on a listener while aokd is away; preload/src/guard.rs keeps a
/// copy). Disjoint from [`AOKD_GUARD_KEY_IDS`]: Linux refuses (`EEXIST`) a
/// key that shares its SendID or its RecvID with an overlapping one, and
/// aokd adds its guard for a peer while the library's `/0` guard is still on
/// the listener it takes over.
pub const LIBRARY_GUARD_KEY_IDS: core::ops::RangeInclusive<u8> = 248..=255;

/// Whether `id` is a guard KeyID.
pub fn is_guard_id(id: u8) -> bool {
    GUARD_KEY_IDS.contains(&id)
}

pub use aokd_tcpao::{MacAlgorithm, MASTER_KEY_LEN};

/// The transform type 3 ID that names `alg` in a TCP-AO proposal.
pub fn integ_id(alg: MacAlgorithm) -> IntegId {
    match alg {
        MacAlgorithm::HmacSha1_96 => IntegId::AUTH_HMAC_SHA1_96,
        MacAlgorithm::AesCmac96 => IntegId::AUTH_AES_CMAC_96,
        MacAlgorithm::HmacSha256_128 => IntegId::AUTH_HMAC_SHA2_256_128,
    }
}

/// The MAC algorithm a TCP-AO proposal's transform type 3 ID names, if
/// aokd implements it.
pub fn mac_algorithm(id: IntegId) -> Option<MacAlgorithm> {
    MacAlgorithm::ALL.into_iter().find(|a| integ_id(*a) == id)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_ranges_split_the_reserved_range() {
        for id in 0..=255u8 {
            let aokd = AOKD_GUARD_KEY_IDS.contains(&id);
            let library = LIBRARY_GUARD_KEY_IDS.contains(&id);
            assert!(!(aokd && library), "{id} in both guard ranges");
            assert_eq!(aokd || library, is_guard_id(id), "{id}");
            assert_ne!(is_guard_id(id), NEGOTIATED_KEY_IDS.contains(&id), "{id}");
            let peer = PEER_GUARD_KEY_IDS.contains(&id);
            assert_eq!(peer || id == GROUP_GUARD_KEY_ID, aokd, "{id}");
            assert!(!(peer && id == GROUP_GUARD_KEY_ID), "{id}");
        }
    }
}
