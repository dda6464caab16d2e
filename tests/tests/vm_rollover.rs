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

use aokd_tests::vm::{E2e, Program, Results};

/// Seconds the guest may run before run.sh kills qemu. The stream stops after at
/// most 300 s (the guest script's `E2E_MAX_S`); a normal run takes about 200 s.
const VM_TIMEOUT_S: u32 = 600;
/// Rollovers each socket must see (the guest script's `E2E_ROLLOVERS`).
const ROLLOVERS: u64 = 20;

/// One end of the stream: connected throughout, every octet verified, enough
/// rollovers, no bad segment, old keys gone.
fn assert_end(r: &Results, role: &str) {
    r.assert_stream_end(role);
    let line = r.line(role);
    assert!(
        r.num(role, "rollovers") >= ROLLOVERS,
        "{role}: too few rollovers: {line}"
    );
    assert!(r.num(role, "max_keys") <= 3, "{role}: {line}");

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
    let Some((_, r)) = (E2e {
        test: "mkt_rollover_under_traffic_in_vm",
        tag: "vm_rollover",
        script: "e2e-rollover.sh",
        timeout_s: VM_TIMEOUT_S,
        tmp: env!("CARGO_TARGET_TMPDIR"),
        show: &[],
    })
    .run(&Program::for_stream(env!("CARGO_BIN_EXE_stream-peer"))) else {
        return;
    };
    r.assert_lifetimes(8, 16);

    assert_end(&r, "client");
    assert_end(&r, "server");
    // Every octet one end wrote, the other verified.
    r.assert_octets_both_ways();

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
    r.assert_all_verified(1);
    let v = "verify";

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
