//! The IKE wire codec: whatever parses re-emits to octets that parse to the
//! same message and re-emit to the same octets (parse, emit, parse again).
//! The same for a bare payload chain (the decrypted contents of SK), whose
//! first payload type is the input's first octet.
#![no_main]

use aokd_proto::numbers::PayloadType;
use aokd_proto::wire::{emit_payload_chain, parse_message, parse_payload_chain, Header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = parse_message(data) {
        let emitted = msg.emit();
        let again = parse_message(&emitted).expect("re-emitted message parses");
        assert_eq!(again, msg, "round trip changed the message");
        assert_eq!(again.emit(), emitted, "second emit differs");
        let _ = msg.unsupported_critical();
        if let Some(sk) = &msg.sk {
            assert!(sk.associated_data(&emitted).is_some());
        }
    }
    let _ = Header::parse(data);
    if let Some((&first, chain)) = data.split_first() {
        if let Ok(payloads) = parse_payload_chain(PayloadType(first), chain) {
            let mut out = Vec::new();
            let first = emit_payload_chain(&payloads, PayloadType::NONE, &mut out);
            let again = parse_payload_chain(first, &out).expect("re-emitted chain parses");
            assert_eq!(again, payloads, "chain round trip changed the payloads");
            let mut out2 = Vec::new();
            emit_payload_chain(&again, PayloadType::NONE, &mut out2);
            assert_eq!(out2, out, "second chain emit differs");
        }
    }
});
