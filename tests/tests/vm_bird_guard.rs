//! The preload library's own TCP-AO guard on a real kernel (issue 13), in the qemu VM
//! of tests/vm/ (the host kernel has no CONFIG_TCP_AO): tests/vm/e2e-bird-guard.sh
//! starts Debian's BIRD 2 (passive) under the library with `AOKD_GUARD=tcp-ao` before
//! any aokd exists, and prints `E2E-RESULT case=... key=value ...` and
//! `E2E-CHECK NAME ok|FAIL: why` lines. This test asserts on them:
//!
//! - BIRD's `listen()` succeeded (its protocol waits in `start`) and the library put
//!   its TCP-AO guard on the listener, KeyIDs from the library's half of the guard
//!   range (248-255);
//! - an unsigned connect from the other namespace fails and the listener's
//!   namespace counts the dropped SYNs in TcpExtTCPAORequired;
//! - aokd then starts with no MKT for its peer: the library hands the listener over
//!   at its first try (no refusal, so no `EEXIST` between aokd's guard, KeyIDs
//!   240-247, and the library's, still on the socket), aokd puts its own guard on,
//!   the library removes its own, `aoctl sockets` lists the listener as guarded, and
//!   an unsigned connect is still dropped;
//! - the peer's aokd and BIRD start: the BGP session gets Established on both sides
//!   and stays up; the accepted socket carries aokd's keys with pkt_good > 0;
//!   TcpExtTCPAOBad 0;
//! - `aoctl verify --from-daemon` of a capture from before the peer started verifies
//!   every segment: none unsigned, no bad MAC, no unknown KeyID.
//!
//! aokd, aoctl and plain-tcp are those `cargo build --workspace` built. With `CI` set a
//! missing prerequisite (bird2 included) is a failure; otherwise the test is skipped
//! with a printed reason (also when `AOKD_SKIP_VM` is set).

use aokd_tests::bird;
use aokd_tests::host::can_run;
use aokd_tests::vm::{E2e, Program};

/// Seconds the guest may run before run.sh kills qemu (a normal run is under 60 s).
const VM_TIMEOUT_S: u32 = 300;
/// Where the guest script looks for the preload library.
const GUEST_PRELOAD: &str = "/opt/aokd/lib/libaokd_preload.so";
const TEST: &str = "bird_listener_under_library_tcp_ao_guard_in_vm";
/// The library's and aokd's halves of the guard range (docs/protocol.md).
const LIBRARY_GUARD_IDS: std::ops::RangeInclusive<u64> = 248..=255;

fn programs() -> Vec<Program> {
    let mut p = Vec::from(Program::daemon_and_ctl());
    p.push(Program::bin("plain-tcp", env!("CARGO_BIN_EXE_plain-tcp")));
    p.push(Program {
        name: "libaokd_preload.so",
        host: aokd_tests::preload_library(),
        guest: Some(GUEST_PRELOAD),
    });
    p
}

#[test]
fn bird_listener_under_library_tcp_ao_guard_in_vm() {
    if !can_run(TEST, &bird::missing_from_usr_sbin()) {
        return;
    }
    let Some((_, r)) = (E2e {
        test: TEST,
        tag: "vm_bird_guard",
        script: "e2e-bird-guard.sh",
        timeout_s: VM_TIMEOUT_S,
        tmp: env!("CARGO_TARGET_TMPDIR"),
        show: &[
            "library-guard",
            "probe-library",
            "takeover",
            "probe-aokd",
            "established",
            "session",
            "verify",
        ],
    })
    .run_with(&programs(), &["@bird", "@birdc"]) else {
        return;
    };

    // The library's guard, before any aokd.
    let g = "library-guard";
    assert!(
        LIBRARY_GUARD_IDS.contains(&r.num(g, "send_id")),
        "{}",
        r.line(g)
    );
    assert!(
        LIBRARY_GUARD_IDS.contains(&r.num(g, "recv_id")),
        "{}",
        r.line(g)
    );
    // listen() succeeded: the protocol waits for the peer, it is not down.
    assert!(r.str(g, "bird_a").starts_with("start/"), "{}", r.line(g));
    let p = "probe-library";
    assert_ne!(r.num(p, "status"), 0, "{}", r.line(p));
    assert_eq!(r.str(p, "ok"), "false", "{}", r.line(p));
    assert!(r.num(p, "ao_required") > 0, "{}", r.line(p));

    // The takeover: first try, aokd's guard next to the library's, then the
    // library's removed.
    let t = "takeover";
    assert_eq!(r.num(t, "refused"), 0, "{}", r.line(t));
    assert_eq!(r.num(t, "aokd_guard"), 1, "{}", r.line(t));
    assert_eq!(r.num(t, "library_guard_removed"), 1, "{}", r.line(t));
    assert_eq!(r.num(t, "listeners"), 1, "{}", r.line(t));
    assert_eq!(r.str(t, "listener_state"), "guarded", "{}", r.line(t));
    let p = "probe-aokd";
    assert_ne!(r.num(p, "status"), 0, "{}", r.line(p));
    assert!(r.num(p, "ao_required") > 0, "{}", r.line(p));

    // The session.
    let s = "session";
    assert_eq!(r.str(s, "a_state"), "up/Established", "{}", r.line(s));
    assert_eq!(r.str(s, "b_state"), "up/Established", "{}", r.line(s));
    assert_eq!(r.num(s, "a_ups"), 1, "{}", r.line(s));
    assert!(r.num(s, "accepted_with_keys") >= 1, "{}", r.line(s));
    assert!(r.num(s, "accepted_pkt_good") > 0, "{}", r.line(s));
    assert_eq!(r.str(s, "listener_state"), "keys", "{}", r.line(s));

    // Every captured segment signed.
    let v = "verify";
    r.assert_every_segment_verified();
    let vline = r.line(v);
    assert!(r.num(v, "connections") >= 1, "{vline}");
    assert_eq!(r.num(v, "without_ao_option"), 0, "{vline}");

    println!(
        "vm_bird_guard: library guard KeyIDs {}/{} on BIRD's listener {} ms after BIRD \
         started; unsigned SYNs dropped: TCPAORequired +{} (library guard), +{} (aokd \
         guard); takeover {} ms after aokd's attach socket appeared, 0 refusals; \
         Established {} ms after the peer's BIRD started; verified {}/{} segments in {} \
         connections, 0 unsigned",
        r.num(g, "send_id"),
        r.num(g, "recv_id"),
        r.num(g, "guard_ms"),
        r.num("probe-library", "ao_required"),
        r.num("probe-aokd", "ao_required"),
        r.num(t, "takeover_ms"),
        r.num("established", "ms"),
        r.num(v, "verified"),
        r.num(v, "segments"),
        r.num(v, "connections"),
    );
}
