//! `Endpoint::handle_datagram` on a responder that holds an established IKE
//! SA with one MKT (B after a real handshake with A, replayed before every
//! input). The input is a sequence of records (aokd_fuzz::records): raw
//! datagrams, datagrams with the SA's SPIs, and fuzzed plaintext sealed in
//! an SK payload with the SA's keys; time may pass between them.
#![no_main]

use aokd_fuzz::ike::{Handshake, A_ADDR};
use aokd_fuzz::records;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: {
    Handshake::get();
}, |data: &[u8]| {
    let mut b = Handshake::get().established_b();
    records::run(&mut b, A_ADDR, data);
});
