//! # aokd-tcpao
//!
//! TCP-AO (RFC 5925) with the algorithms of RFC 5926, and TCP-MD5
//! (RFC 2385), on the wire: the MAC algorithms ([`algorithm`]), key
//! material and its fingerprints ([`secret`]), traffic keys, MACs, the SNE,
//! segment parsing, and a capture verifier that follows connections.
//!
//! A crate of its own, without IKE, so that aoctl (`aoctl verify`,
//! `aoctl gen-psk`) does not link the IKE key exchange and AEAD code of
//! `aokd-proto`, which re-exports this crate as `aokd_proto::tcpao`
//! (docs/dependencies.md).
//!
//! | What | Where | Status |
//! |---|---|---|
//! | RFC 5925 2.2 option format (kind 29) | [`segment`] | parsed; never panics |
//! | RFC 5925 5.1 MAC input (SNE, IPv4/IPv6 pseudo-header, TCP header with checksum and MAC zeroed, options included or excluded, data) | [`mac`] | yes |
//! | RFC 5925 5.2 traffic keys (Send/Receive SYN and other) | [`kdf`] | yes |
//! | RFC 5925 6.2 SNE, per direction across wraps | [`sne`] | yes (RFC 9187 windowed extension) |
//! | RFC 5926 3.1.1.1 KDF_HMAC_SHA1, 2.2 HMAC-SHA-1-96 | [`kdf`], [`mac`] | yes |
//! | RFC 5926 3.1.1.2 KDF_AES_128_CMAC (with reduction of a master key that is not 16 octets), 2.2 AES-128-CMAC-96 | [`kdf`], [`mac`] | yes |
//! | HMAC-SHA-256 KDF (RFC 5926 form, Output_Length 256) and MAC truncated to 16 octets (Linux "hmac(sha256)") | [`kdf`], [`mac`] | yes (not an RFC algorithm) |
//! | RFC 2385 TCP-MD5 digest, IPv4 and IPv6 | [`tcp_md5`] | yes |
//! | RFC 9235 test vectors | tests in this module | IPv4: all 16 segments; IPv6: the 6 obtainable segments plus constructed ones |
//! | IPv4 fragments, IPv6 fragment/ESP/AH/routing headers | [`segment`] | refused (reported, not verified) |
//! | RFC 5925 7.x key rollover (RNextKeyID), ICMP handling | — | out of scope for verification |
//!
//! Everything here is sans-IO and allocation-light: segments borrow the
//! packet, the MAC input is fed to the MAC piece by piece.

pub mod algorithm;
pub mod capture;
pub mod kdf;
pub mod mac;
pub mod secret;
pub mod segment;
pub mod sne;
pub mod tcp_md5;

#[cfg(test)]
mod vectors;

pub use algorithm::{MacAlgorithm, MASTER_KEY_LEN};
pub use capture::{
    AoKey, CaptureVerifier, ConnectionReport, Counters, Endpoint, KeySet, Outcome, Signing, Totals,
};
pub use kdf::{derive_traffic_key, ConnectionKeys, KeyContext, TrafficKey};
pub use mac::{compute_mac, mac_input, verify_mac, AoMac, VerifyError};
pub use secret::{fingerprint, Secret};
pub use segment::{parse_ip_packet, Addresses, AoOption, AuthOption, Segment, SegmentError};
pub use sne::SneTracker;
pub use tcp_md5::{compute_digest, verify_digest};
