//! MKT rollover under traffic, with real TCP-AO inside the qemu VM of tests/vm/ (the
//! host kernel has no CONFIG_TCP_AO): the cached kernel boots with aokd, aoctl and
//! `stream-peer` in its initramfs and runs tests/vm/e2e-rollover.sh, which prints one
//! `E2E-RESULT case=... key=value ...` line per result and one `E2E-CHECK NAME ok|FAIL:
//! why` line per check. This test asserts on them:
//!
//! - two namespaces joined by a veth pair, an aokd in each (backend `tcp-ao`) with
//!   `mkt_rekey = "8s"` and `mkt_lifetime = "16s"`;
//! - one `stream-peer` connection (attach API) carries data both ways, every octet
//!   checked, through at least [`ROLLOVERS`] rollovers (Current_key changes seen on
//!   both sockets; at least `ROLLOVERS + 1` distinct MKTs in `aoctl mkts`), and never
//!   drops or stalls;
//! - both sockets' `TCP_AO_INFO` show pkt_bad and pkt_key_not_found 0 (and the
//!   namespaces' TCPAOBad does not move); at most 3 keys are ever on a socket, and
//!   every replaced key leaves both sockets within 10 s (the overlap is 4 s);
//! - `aoctl verify` of a capture of the whole connection, given the master key of
//!   every MKT (collected during the run with the control socket's `mkt-keys`),
//!   verifies every segment: no bad MAC, no unknown KeyID, nothing unsigned.
//!
//! The binaries are those `cargo build --workspace` built (nothing is built here),
//! copied without debug information into the VM. With `CI` set, a missing
//! prerequisite is a failure; otherwise the test is skipped with a printed reason
//! (also when `AOKD_SKIP_VM` is set). Warm cache: about 4 minutes (the stream alone
//! lasts until 21 rollovers plus 10 s, about 3 minutes).

use std::path::Path;
use std::time::Instant;

use aokd_tests::vm::{self, Program, Results};

/// Seconds the guest may run before run.sh kills qemu. The stream stops after at
/// most 300 s (the guest script's `E2E_MAX_S`); a normal run takes about 200 s.
const VM_TIMEOUT_S: u32 = 600;
/// Rollovers each socket must see (the guest script's `E2E_ROLLOVERS`).
const ROLLOVERS: u64 = 20;

/// The host programs that go into the VM's /opt/aokd/bin.
fn programs() -> Vec<Program> {
    let mut p = Vec::from(Program::daemon_and_ctl());
    p.push(Program::bin(
        "stream-peer",
        env!("CARGO_BIN_EXE_stream-peer"),
    ));
    p
}

/// One end of the stream: connected throughout, every octet verified, enough
/// rollovers, no bad segment, old keys gone.
fn assert_end(r: &Results, role: &str) {
    let line = r.line(role);
    assert_eq!(r.num(role, "status"), 0, "{role}: {line}");
    assert_eq!(r.str(role, "ok"), "true", "{role}: {line}");
    assert_eq!(r.str(role, "disconnected"), "false", "{role}: {line}");
    assert_eq!(r.str(role, "stalled"), "false", "{role}: {line}");
    assert!(r.num(role, "bytes_in") > 0, "{role}: {line}");
    assert!(
        r.num(role, "rollovers") >= ROLLOVERS,
        "{role}: too few rollovers: {line}"
    );
    assert!(r.num(role, "pkt_good") > 0, "{role}: {line}");
    assert_eq!(r.num(role, "pkt_bad"), 0, "{role}: {line}");
    assert_eq!(r.num(role, "pkt_key_not_found"), 0, "{role}: {line}");
    assert!(r.num(role, "max_keys") <= 3, "{role}: {line}");
    assert_eq!(r.num(role, "lingering"), 0, "{role}: {line}");

    // The same judged from the per-second key lists.
    let k = format!("{role}-keys");
    let kline = r.line(&k);
    assert!(r.num(&k, "rollovers") >= ROLLOVERS, "{k}: {kline}");
    assert!(r.num(&k, "max_keys") <= 3, "{k}: {kline}");
    assert_eq!(r.num(&k, "lingering"), 0, "{k}: {kline}");
    assert_eq!(
        r.num(&k, "removed") + r.num(&k, "pending"),
        r.num(&k, "replaced"),
        "{k}: {kline}"
    );
}

#[test]
fn mkt_rollover_under_traffic_in_vm() {
    let programs = programs();
    if !vm::ready("mkt_rollover_under_traffic_in_vm", &programs, true) {
        return;
    }
    let started = Instant::now();
    let args = vm::stage(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-rollover"),
        &programs,
    );
    let run = vm::run_guest("e2e-rollover.sh", &args, VM_TIMEOUT_S);
    println!(
        "vm_rollover timings: total {:.1}s",
        started.elapsed().as_secs_f64()
    );
    run.assert_e2e_passed();
    let r = run.results();
    assert_eq!(r.num("setup", "mkt_rekey_s"), 8, "{}", r.line("setup"));
    assert_eq!(r.num("setup", "mkt_lifetime_s"), 16, "{}", r.line("setup"));

    assert_end(&r, "client");
    assert_end(&r, "server");
    // Every octet one end wrote, the other verified.
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

    // Distinct MKTs over the run, seen by both daemons, all keys collected.
    let m = "mkts";
    assert!(r.num(m, "a_distinct") > ROLLOVERS, "{}", r.line(m));
    assert!(r.num(m, "b_distinct") > ROLLOVERS, "{}", r.line(m));
    assert!(
        r.num(m, "keys_distinct") >= r.num(m, "a_distinct"),
        "{}",
        r.line(m)
    );

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
        "vm_rollover: {} MKTs; rollovers client {} server {}; pkt_good client {} server {}, pkt_bad 0; max linger {} / {} ms; verified {}/{} segments; stream {} ms",
        r.num(m, "a_distinct"),
        r.num("client", "rollovers"),
        r.num("server", "rollovers"),
        r.num("client", "pkt_good"),
        r.num("server", "pkt_good"),
        r.num("client", "max_linger_ms"),
        r.num("server", "max_linger_ms"),
        r.num(v, "verified"),
        r.num(v, "segments"),
        r.num(m, "stream_ms"),
    );
}
