//! Code the fuzz targets (fuzz_targets/) and the corpus generator
//! (gen-corpus/) share: two in-process IKE endpoints with fixed seeds, a
//! recorded handshake between them to put an endpoint back in a known
//! state before every input, and the record format the endpoint targets
//! read their input in. See docs/fuzzing.md.

pub mod ike;
pub mod records;
pub mod tcpao_keys;
