//! Unmodified BIRD 2 (Debian's bird2) over TCP-AO keys that aokd negotiated, inside
//! the qemu VM of tests/vm/ (the host kernel has no CONFIG_TCP_AO; issue 13): the cached
//! kernel boots with aokd, aoctl, the preload library and the host's own `bird` and
//! `birdc` (with their libraries, at their host paths) in its initramfs and runs
//! tests/vm/e2e-bird.sh, which prints `E2E-RESULT case=... key=value ...` and
//! `E2E-CHECK NAME ok|FAIL: why` lines. This test asserts on them:
//!
//! - two namespaces joined by a veth pair, an aokd in each (backend `tcp-ao`,
//!   `mkt_rekey = "8s"`, `mkt_lifetime = "16s"`) and a BIRD in each under the preload
//!   library, no password in its configuration: the BGP session gets Established;
//! - BIRD's own traffic flows all the time (a static protocol of 20 routes disabled
//!   and enabled again with birdc, each side in turn; keepalive 1 s) while both
//!   session sockets go through at least [`ROLLOVERS`] MKT rollovers (Current_key
//!   changes in `aoctl sockets`), and the KeyIDs on the wire change as often in both
//!   directions, every KeyID carrying some of BIRD's segments each way;
//! - hitless: the session is still Established at the end with the same `since`,
//!   BIRD logged exactly one "State changed to up" and no other state change; the
//!   routes flowed both ways (import updates and withdraws received);
//! - pkt_bad and pkt_key_not_found 0 on BIRD's sockets in every sample, none ever
//!   guarded, TcpExtTCPAOBad 0;
//! - `aoctl verify --from-daemon` of a capture of the whole run verifies every
//!   segment: none unsigned, no bad MAC, no unknown KeyID.
//!
//! aokd and aoctl are those `cargo build --workspace` built (nothing is built here).
//! With `CI` set a missing prerequisite (bird2 included) is a failure; otherwise the
//! test is skipped with a printed reason (also when `AOKD_SKIP_VM` is set). Warm
//! cache: about 2 minutes.

use aokd_tests::bird;
use aokd_tests::host::can_run;
use aokd_tests::vm::{E2e, Program, Results};

/// Seconds the guest may run before run.sh kills qemu (the flow of routes lasts at
/// most 120 s, the guest script's `E2E_MAX_S`; a normal run is about 90 s).
const VM_TIMEOUT_S: u32 = 420;
/// Rollovers each session socket must see (the guest script's `E2E_ROLLOVERS`).
const ROLLOVERS: u64 = 6;
/// Routes of the flapping static protocol (the guest script's `E2E_FLAP_ROUTES`).
const FLAP_ROUTES: u64 = 20;
/// Where the guest script looks for the preload library.
const GUEST_PRELOAD: &str = "/opt/aokd/lib/libaokd_preload.so";
const TEST: &str = "bird_over_tcp_ao_with_rollovers_in_vm";

fn programs() -> Vec<Program> {
    let mut p = Vec::from(Program::daemon_and_ctl());
    p.push(Program {
        name: "libaokd_preload.so",
        host: aokd_tests::preload_library(),
        guest: Some(GUEST_PRELOAD),
    });
    p
}

/// One side's session sockets: rollovers, no bad segment, never guarded.
fn assert_sockets(r: &Results, ns: &str) {
    let c = format!("sockets-{ns}");
    let line = r.line(&c);
    assert!(r.num(&c, "sessions") >= 1, "{c}: {line}");
    assert!(r.num(&c, "rollovers") >= ROLLOVERS, "{c}: {line}");
    assert!(r.num(&c, "pkt_good") > 0, "{c}: {line}");
    assert_eq!(r.num(&c, "max_pkt_bad"), 0, "{c}: {line}");
    assert_eq!(r.num(&c, "max_key_not_found"), 0, "{c}: {line}");
    assert_eq!(r.num(&c, "guarded_samples"), 0, "{c}: {line}");
}

#[test]
fn bird_over_tcp_ao_with_rollovers_in_vm() {
    if !can_run(TEST, &bird::missing_from_usr_sbin()) {
        return;
    }
    let Some((_, r)) = (E2e {
        test: TEST,
        tag: "vm_bird",
        script: "e2e-bird.sh",
        timeout_s: VM_TIMEOUT_S,
        tmp: env!("CARGO_TARGET_TMPDIR"),
        show: &[
            "established",
            "session",
            "sockets-a",
            "sockets-b",
            "verify",
            "wire",
        ],
    })
    // BIRD as Debian ships it, with its libraries (mkinitramfs.sh's @COMMAND).
    .run_with(&programs(), &["@bird", "@birdc"]) else {
        return;
    };

    r.assert_lifetimes(8, 16);
    assert_eq!(
        r.num("setup", "rollovers"),
        ROLLOVERS,
        "{}",
        r.line("setup")
    );

    // Established, and hitless through the rollovers.
    let s = "session";
    let line = r.line(s);
    assert_eq!(r.str(s, "a_state"), "up/Established", "{line}");
    assert_eq!(r.str(s, "b_state"), "up/Established", "{line}");
    assert_eq!(
        r.str(s, "since_a"),
        r.str("established", "since_a"),
        "{line}"
    );
    assert_eq!(
        r.str(s, "since_b"),
        r.str("established", "since_b"),
        "{line}"
    );
    assert_eq!(r.num(s, "a_ups"), 1, "{line}");
    assert_eq!(r.num(s, "b_ups"), 1, "{line}");
    assert_eq!(r.num(s, "a_state_changes"), 2, "start, up: {line}");
    assert_eq!(r.num(s, "b_state_changes"), 2, "start, up: {line}");

    // BIRD's own traffic through every rollover.
    let rt = "routes";
    let want = FLAP_ROUTES * ROLLOVERS;
    for k in [
        "a_updates_received",
        "a_withdraws_received",
        "b_updates_received",
        "b_withdraws_received",
    ] {
        assert!(r.num(rt, k) >= want, "{k} < {want}: {}", r.line(rt));
    }

    assert_sockets(&r, "a");
    assert_sockets(&r, "b");

    // The capture: every segment verified, KeyIDs rolled over on the wire both ways.
    let v = "verify";
    r.assert_every_segment_verified();
    assert!(r.num(v, "connections") >= 1, "{}", r.line(v));
    let w = "wire";
    assert!(r.num(w, "keyid_changes") >= ROLLOVERS, "{}", r.line(w));
    assert!(
        r.num(w, "reverse_keyid_changes") >= ROLLOVERS,
        "{}",
        r.line(w)
    );
    // BIRD's traffic under every KeyID, both ways.
    assert!(r.num(w, "min_segments_per_key") >= 3, "{}", r.line(w));
    assert!(
        r.num(w, "reverse_min_segments_per_key") >= 3,
        "{}",
        r.line(w)
    );

    println!(
        "vm_bird: Established {} ms after BIRD started (a), {} ms (b); rollovers a {} b {} \
         (on the wire {} / {} KeyID changes); {} flaps of {FLAP_ROUTES} routes, updates \
         received a {} b {}; pkt_good a {} b {}, pkt_bad 0; verified {}/{} segments in {} \
         connections, 0 unsigned; flow {} ms",
        r.num("established", "a_ms"),
        r.num("established", "b_ms"),
        r.num("sockets-a", "rollovers"),
        r.num("sockets-b", "rollovers"),
        r.num(w, "keyid_changes"),
        r.num(w, "reverse_keyid_changes"),
        r.num(rt, "flaps"),
        r.num(rt, "a_updates_received"),
        r.num(rt, "b_updates_received"),
        r.num("sockets-a", "pkt_good"),
        r.num("sockets-b", "pkt_good"),
        r.num(v, "verified"),
        r.num(v, "segments"),
        r.num(v, "connections"),
        r.num(s, "flow_ms"),
    );
}
