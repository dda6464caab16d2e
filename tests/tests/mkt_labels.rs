//! The states `aoctl mkts` gives MKTs (issue 14), with real aokd
//! processes: after a restart, an MKT from before it that no attached
//! socket holds is not listed as "restored". (The responder's old MKT
//! during a rekey, "retiring", is checked in tests/metrics.rs.)

use std::time::{Duration, Instant};

use aokd_tests::{loopback_pair, mkts, Daemon};

const PSK: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";
const WAIT: Duration = Duration::from_secs(20);

/// Waits until `d`'s log contains `needle`.
fn wait_log(d: &Daemon, needle: &str) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if d.log().contains(needle) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{}: no {needle:?} in the log:\n{}", d.side.name, d.log());
}

#[test]
fn an_mkt_from_before_a_restart_that_no_socket_holds_is_not_listed_as_restored() {
    let (a, b) = loopback_pair("restored-label", PSK);
    let mut da = Daemon::start(&a);
    let db = Daemon::start(&b);
    let before = da.wait_keyed(WAIT);
    let old = mkts(&before)[0]["key_fingerprint"].clone();
    // Stopped cleanly (SIGTERM): the MKT's record is in the state file.
    // No socket was ever attached, so none can hold its key.
    let pid = i32::try_from(da.child.id()).expect("pid");
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = da.child.wait().expect("wait");
    assert!(status.success(), "aokd a: {status}\n{}", da.log());
    drop(da);
    let da = Daemon::start(&a);
    // The record was there and restored (so today's listing had it).
    wait_log(
        &da,
        "MKT from before the restart kept on its sockets until replaced or expired",
    );
    let after = da.wait_for(&["mkts"], WAIT, |v| {
        mkts(v)
            .iter()
            .any(|m| m["state"] == "active" && m["key_fingerprint"] != old)
    });
    for m in mkts(&after) {
        let state = m["state"].as_str().unwrap_or("");
        assert!(
            !state.starts_with("restored"),
            "an MKT on no socket listed as {state:?}: {after}"
        );
    }
    assert!(
        !mkts(&after).iter().any(|m| m["key_fingerprint"] == old),
        "{after}"
    );
    drop(db);
}
