//! The pcap/pcapng reader of `aoctl verify` (`aoctl::capture_file`), with
//! every IP packet it yields handed to the capture verifier
//! (`aokd_tcpao::CaptureVerifier`) holding the RFC 9235 keys, as
//! `aoctl verify` does.
#![no_main]

use std::path::Path;

use aoctl::capture_file::{read_frames_from, Frame};
use aokd_fuzz::tcpao_keys::keys;
use aokd_tcpao::CaptureVerifier;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut verifier = CaptureVerifier::new(keys());
    let _ = read_frames_from(data, Path::new("fuzz.pcap"), |frame| match frame {
        Frame::Ip(packet) => {
            verifier.process(packet);
        }
        Frame::NotIp => verifier.count_ignored(),
        Frame::Malformed => verifier.count_unparsed(),
    });
    let _ = verifier.passed();
    let _ = verifier.reports();
    let _ = verifier.totals();
});
