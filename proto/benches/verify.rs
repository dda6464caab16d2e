//! Verification throughput benchmark (being written).
fn main() {}
