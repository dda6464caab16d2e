//! `Endpoint::handle_datagram` on an initiator in the middle of an
//! exchange. The first octet picks the state (modulo 3): 0, its IKE_SA_INIT
//! request is outstanding; 1, its IKE_AUTH request is (B's real IKE_SA_INIT
//! response was handled); 2, established (for requests from the responder).
//! The rest is a sequence of records (aokd_fuzz::records).
#![no_main]

use aokd_fuzz::ike::{Handshake, B_ADDR};
use aokd_fuzz::records;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: {
    Handshake::get();
}, |data: &[u8]| {
    let Some((&state, rest)) = data.split_first() else {
        return;
    };
    let mut a = Handshake::get().a_after(usize::from(state % 3));
    records::run(&mut a, B_ADDR, rest);
});
