//! aoctl's library part: what the binary uses that a fuzz target (fuzz/,
//! docs/fuzzing.md) must reach too.

pub mod capture_file;
