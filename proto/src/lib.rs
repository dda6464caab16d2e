//! # aokd-proto
//!
//! The sans-IO protocol library of aokd: IKEv2 (RFC 7296) negotiation of
//! TCP-AO Master Key Tuples, and the TCP-AO (RFC 5925/5926) and TCP-MD5
//! (RFC 2385) algorithms that use them.
//!
//! Nothing here opens a socket, reads a clock or draws from a global random
//! number generator: time and randomness are arguments, and datagrams,
//! timeouts and events are outputs (see docs/architecture.md).

pub mod crypto;
pub mod ike;
pub mod mkt;
pub mod numbers;
/// TCP-AO and TCP-MD5 on the wire: the `aokd-tcpao` crate, re-exported.
pub use aokd_tcpao as tcpao;
pub mod wire;
