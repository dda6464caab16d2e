//! The control socket's request parser (`aokd::control::parse_request`)
//! and the access check; a parsed command serializes to a request that
//! parses to the same command. Also aoctl's side: the daemon's responses
//! and the attach API's requests and replies as serde types.
#![no_main]

use aokd::control::{authorize, parse_request};
use aokd_api::attach::{AttachReply, AttachRequest};
use aokd_api::control::{Request, Response, PROTOCOL_VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(command) = parse_request(data) {
        let _ = authorize(&command, 0);
        let _ = authorize(&command, 1000);
        let line = serde_json::to_vec(&Request {
            version: PROTOCOL_VERSION,
            command: command.clone(),
        })
        .expect("a command serializes");
        assert_eq!(parse_request(&line).expect("round trip parses"), command);
    }
    if let Ok(r) = serde_json::from_slice::<Response>(data) {
        let _ = serde_json::to_vec(&r).expect("a response serializes");
    }
    let _ = serde_json::from_slice::<AttachRequest>(data);
    let _ = serde_json::from_slice::<AttachReply>(data);
});
