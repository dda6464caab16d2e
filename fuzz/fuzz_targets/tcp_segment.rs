//! The TCP segment and TCP-AO / TCP-MD5 option parser
//! (`aokd_tcpao::parse_ip_packet`), and the capture verifier on the one
//! packet (SNE, KDF and MAC paths run when the packet parses).
#![no_main]

use aokd_fuzz::tcpao_keys::keys;
use aokd_tcpao::{parse_ip_packet, CaptureVerifier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = parse_ip_packet(data) {
        let _ = (
            s.syn(),
            s.ack_flag(),
            s.rst(),
            s.fin(),
            s.is_signed(),
            s.seq_len(),
        );
        let _ = format!("{s:?}");
    }
    let mut verifier = CaptureVerifier::new(keys());
    verifier.process(data);
    let _ = verifier.passed();
    let _ = verifier.reports();
});
