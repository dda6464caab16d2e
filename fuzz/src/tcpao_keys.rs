//! The RFC 9235 keys ("testvector", KeyIDs 61 and 84, every algorithm,
//! options included and excluded) and one TCP-MD5 key, for the capture
//! verifier in the pcap and tcp_segment targets.

use aokd_tcpao::{AoKey, KeySet, MacAlgorithm, Secret};

pub fn keys() -> KeySet {
    let mut ao = Vec::new();
    for algorithm in MacAlgorithm::ALL.iter().copied() {
        for include_options in [true, false] {
            for key_id in [61, 84] {
                ao.push(AoKey {
                    key_id,
                    algorithm,
                    include_options,
                    master_key: Secret::new(b"testvector".to_vec()),
                    retired: false,
                });
            }
        }
    }
    KeySet {
        ao,
        md5: vec![Secret::new(b"testvector".to_vec())],
        md5_retired: vec![],
    }
}
