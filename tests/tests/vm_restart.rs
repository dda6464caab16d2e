//! aokd killed and restarted under traffic, with real TCP-AO inside the qemu VM of
//! tests/vm/ (the host kernel has no CONFIG_TCP_AO): the cached kernel boots with
//! aokd, aoctl and `stream-peer` in its initramfs and runs tests/vm/e2e-restart.sh,
//! which prints one `E2E-RESULT case=... key=value ...` line per result and one
//! `E2E-CHECK NAME ok|FAIL: why` line per check. This test asserts on them:
//!
//! - two namespaces joined by a veth pair, an aokd in each (backend `tcp-ao`,
//!   `mkt_rekey = "8s"`, `mkt_lifetime = "16s"`, a `state_dir` each); one
//!   `stream-peer` connection carries data both ways without a pause, every octet
//!   checked;
//! - after [`BEFORE`] rollovers, a's aokd (the client's side) is killed with SIGKILL
//!   in the middle of the traffic and started again at once with the same
//!   configuration and state directory; the stream goes on until both sockets have
//!   seen [`AFTER`] more rollovers;
//! - the connection never drops or stalls, every octet arrives, Current_key keeps
//!   changing after the restart (new MKTs in both daemons), pkt_bad and
//!   pkt_key_not_found are 0 at both ends, no replaced key lingers on a socket;
//! - after the restart, `aoctl sockets` in a lists the client's socket again (with
//!   keys);
//! - `aoctl verify` of a capture of the whole connection with every MKT collected
//!   from both daemons over time: every segment verifies, none unsigned.
//!
//! The binaries are those `cargo build --workspace` built (nothing is built here),
//! copied without debug information into the VM. With `CI` set, a missing
//! prerequisite is a failure; otherwise the test is skipped with a printed reason
//! (also when `AOKD_SKIP_VM` is set). Warm cache: about 1.5 minutes.

use aokd_tests::vm::{E2e, Program, Results};

/// Seconds the guest may run before run.sh kills qemu.
const VM_TIMEOUT_S: u32 = 600;
/// Rollovers before the restart (the guest script's `E2E_BEFORE`).
const BEFORE: u64 = 3;
/// Rollovers each socket must see after it (the guest script's `E2E_AFTER`).
const AFTER: u64 = 3;

/// One end of the stream: connected throughout, rollovers after the restart, no
/// bad segment, old keys gone.
fn assert_end(r: &Results, role: &str) {
    r.assert_stream_end(role);
    let line = r.line(role);
    assert!(
        r.num(role, "rollovers") >= BEFORE + AFTER,
        "{role}: too few rollovers: {line}"
    );
    assert!(
        r.num(role, "rollovers_after_restart") >= AFTER,
        "{role}: Current_key stopped changing after the restart: {line}"
    );
}

#[test]
fn aokd_restart_under_traffic_in_vm() {
    let Some((_, r)) = (E2e {
        test: "aokd_restart_under_traffic_in_vm",
        tag: "vm_restart",
        script: "e2e-restart.sh",
        timeout_s: VM_TIMEOUT_S,
        tmp: env!("CARGO_TARGET_TMPDIR"),
        show: &["setup", "restart", "client", "server", "mkts", "verify"],
    })
    .run(&Program::for_stream(env!("CARGO_BIN_EXE_stream-peer"))) else {
        return;
    };
    r.assert_lifetimes(8, 16);

    // The socket is back in a's aokd after the restart.
    let s = "restart";
    assert_eq!(r.str(s, "client_socket_before"), "keys", "{}", r.line(s));
    assert_eq!(r.str(s, "client_socket_after"), "keys", "{}", r.line(s));
    assert!(r.num(s, "a_mkts_restored") >= 1, "{}", r.line(s));

    assert_end(&r, "client");
    assert_end(&r, "server");
    r.assert_octets_both_ways();

    // New MKTs after the restart, in both daemons.
    let m = "mkts";
    assert!(r.num(m, "a_new_after_restart") >= AFTER, "{}", r.line(m));
    assert!(r.num(m, "b_new_after_restart") >= AFTER, "{}", r.line(m));

    // The capture: one connection, every segment verified.
    r.assert_all_verified(1);
    let v = "verify";

    println!(
        "vm_restart: a's aokd back {} ms after SIGKILL ({} MKTs restored); rollovers after the restart client {} server {} (total {} / {}); new MKTs after it a {} b {} (first {} ms after the restart); pkt_good client {} server {}, pkt_bad 0, key_not_found 0; max gap {} / {} ms; verified {}/{} segments",
        r.num(s, "restart_ms"),
        r.num(s, "a_mkts_restored"),
        r.num("client", "rollovers_after_restart"),
        r.num("server", "rollovers_after_restart"),
        r.num("client", "rollovers"),
        r.num("server", "rollovers"),
        r.num(m, "a_new_after_restart"),
        r.num(m, "b_new_after_restart"),
        r.str(m, "first_new_after_ready_ms"),
        r.num("client", "pkt_good"),
        r.num("server", "pkt_good"),
        r.num("client", "max_gap_ms"),
        r.num("server", "max_gap_ms"),
        r.num(v, "verified"),
        r.num(v, "segments"),
    );
}
