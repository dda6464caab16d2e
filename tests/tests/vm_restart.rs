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

use std::path::Path;
use std::time::Instant;

use aokd_tests::vm::{self, Program, Results};

/// Seconds the guest may run before run.sh kills qemu.
const VM_TIMEOUT_S: u32 = 600;
/// Rollovers before the restart (the guest script's `E2E_BEFORE`).
const BEFORE: u64 = 3;
/// Rollovers each socket must see after it (the guest script's `E2E_AFTER`).
const AFTER: u64 = 3;

/// The host programs that go into the VM's /opt/aokd/bin.
fn programs() -> Vec<Program> {
    let mut p = Vec::from(Program::daemon_and_ctl());
    p.push(Program::bin(
        "stream-peer",
        env!("CARGO_BIN_EXE_stream-peer"),
    ));
    p
}

/// One end of the stream: connected throughout, rollovers after the restart, no
/// bad segment, old keys gone.
fn assert_end(r: &Results, role: &str) {
    let line = r.line(role);
    assert_eq!(r.num(role, "status"), 0, "{role}: {line}");
    assert_eq!(r.str(role, "ok"), "true", "{role}: {line}");
    assert_eq!(r.str(role, "disconnected"), "false", "{role}: {line}");
    assert_eq!(r.str(role, "stalled"), "false", "{role}: {line}");
    assert!(r.num(role, "bytes_in") > 0, "{role}: {line}");
    assert!(
        r.num(role, "rollovers") >= BEFORE + AFTER,
        "{role}: too few rollovers: {line}"
    );
    assert!(
        r.num(role, "rollovers_after_restart") >= AFTER,
        "{role}: Current_key stopped changing after the restart: {line}"
    );
    assert!(r.num(role, "pkt_good") > 0, "{role}: {line}");
    assert_eq!(r.num(role, "pkt_bad"), 0, "{role}: {line}");
    assert_eq!(r.num(role, "pkt_key_not_found"), 0, "{role}: {line}");
    assert_eq!(r.num(role, "lingering"), 0, "{role}: {line}");
}

#[test]
fn aokd_restart_under_traffic_in_vm() {
    let programs = programs();
    if !vm::ready("aokd_restart_under_traffic_in_vm", &programs, true) {
        return;
    }
    let started = Instant::now();
    let args = vm::stage(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-restart"),
        &programs,
    );
    let run = vm::run_guest("e2e-restart.sh", &args, VM_TIMEOUT_S);
    println!(
        "vm_restart timings: total {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let r = run.results();
    for case in ["setup", "restart", "client", "server", "mkts", "verify"] {
        if r.has(case) {
            println!("vm_restart {case}: {}", r.line(case));
        }
    }
    run.assert_e2e_passed();

    assert_eq!(r.num("setup", "mkt_rekey_s"), 8, "{}", r.line("setup"));
    assert_eq!(r.num("setup", "mkt_lifetime_s"), 16, "{}", r.line("setup"));

    // The socket is back in a's aokd after the restart.
    let s = "restart";
    assert_eq!(r.str(s, "client_socket_before"), "keys", "{}", r.line(s));
    assert_eq!(r.str(s, "client_socket_after"), "keys", "{}", r.line(s));
    assert!(r.num(s, "a_mkts_restored") >= 1, "{}", r.line(s));

    assert_end(&r, "client");
    assert_end(&r, "server");
    assert_eq!(
        r.num("client", "bytes_out"),
        r.num("server", "bytes_in"),
        "client {} / server {}",
        r.line("client"),
        r.line("server")
    );
    assert_eq!(
        r.num("server", "bytes_out"),
        r.num("client", "bytes_in"),
        "client {} / server {}",
        r.line("client"),
        r.line("server")
    );

    // New MKTs after the restart, in both daemons.
    let m = "mkts";
    assert!(r.num(m, "a_new_after_restart") >= AFTER, "{}", r.line(m));
    assert!(r.num(m, "b_new_after_restart") >= AFTER, "{}", r.line(m));

    // The capture: one connection, every segment verified.
    let v = "verify";
    assert_eq!(r.num(v, "status"), 0, "{}", r.line(v));
    assert_eq!(r.num(v, "connections"), 1, "{}", r.line(v));
    assert!(r.num(v, "segments") > 0, "{}", r.line(v));
    assert_eq!(r.num(v, "verified"), r.num(v, "segments"), "{}", r.line(v));
    assert_eq!(r.num(v, "unsigned"), 0, "{}", r.line(v));
    assert_eq!(r.num(v, "bad_mac"), 0, "{}", r.line(v));
    assert_eq!(r.num(v, "unknown_key_id"), 0, "{}", r.line(v));

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
