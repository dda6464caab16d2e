//! MKT expiry while the peer's aokd is down, with real TCP-AO inside the qemu VM of
//! tests/vm/ (the host kernel has no CONFIG_TCP_AO): the cached kernel boots with
//! aokd, aoctl and `stream-peer` in its initramfs and runs tests/vm/e2e-expiry.sh,
//! which prints one `E2E-RESULT case=... key=value ...` line per result and one
//! `E2E-CHECK NAME ok|FAIL: why` line per check. This test asserts on them:
//!
//! - two namespaces joined by a veth pair, an aokd in each (backend `tcp-ao`,
//!   `mkt_rekey = "8s"`, `mkt_lifetime = "16s"`, a `state_dir` each); one
//!   `stream-peer` connection carries data both ways, captured on the link;
//! - b's aokd is killed with SIGKILL and kept down until the newest MKT's hard
//!   lifetime (`expires_at` of `aoctl mkts`) plus a margin, then started again with
//!   the same configuration and state directory;
//! - (a) after each of a's MKTs' hard deadline, no segment from a carries its KeyID
//!   (allowing [`GRACE_MS`]: `expires_at` is whole seconds rounded down; measured
//!   from a's log line of the guard's installation, nothing later than
//!   [`LOG_SLACK_MS`] after it), and a's segments carry the guard's KeyID instead;
//! - (b) no unsigned segment between the endpoints, anywhere in the capture;
//! - (c) a's socket is `guarded` in `aoctl sockets` after the deadline, and its
//!   TCP_AO_INFO shows that b's retransmissions with the expired key (which b's
//!   kernel still holds while b's aokd is down: counted and printed) are refused
//!   (pkt_good does not move; pkt_key_not_found/pkt_bad do);
//! - no segment from b with an expired key once b's aokd has restarted (it restores
//!   and reconciles its sockets before it answers on its control socket);
//! - (d) a new MKT (new fingerprint, new KeyIDs, the same in both) is negotiated with
//!   no operator command (the time it took is printed), and data flows again under it
//!   or its successors (KeyIDs negotiated after the restart): either the same connection
//!   resumes or stream-peer reconnects (printed: which, and whether the original
//!   connection survived);
//! - `aoctl verify` of the capture with every collected MKT: no bad MAC, nothing
//!   unsigned; the only unknown KeyIDs are the guards'.
//!
//! The binaries are those `cargo build --workspace` built (nothing is built here),
//! copied without debug information into the VM. With `CI` set, a missing
//! prerequisite is a failure; otherwise the test is skipped with a printed reason
//! (also when `AOKD_SKIP_VM` is set). Warm cache: about 1.5 minutes when the new
//! MKT comes quickly (b negotiates at once after its restart); the guest waits at most
//! 30 s for it and 180 s more for data.

use aokd_tests::vm::{E2e, Program, Results};

/// Seconds the guest may run before run.sh kills qemu.
const VM_TIMEOUT_S: u32 = 900;
/// How late after `expires_at` a's last segment with the expired KeyID may be (the
/// guest script's `E2E_GRACE_MS`).
const GRACE_MS: i64 = 2000;

/// How much later than the log line of the guard's installation a segment under the
/// expired key may be captured (the line is written after the kernel call).
const LOG_SLACK_MS: i64 = 50;

fn is_num(r: &Results, case: &str, key: &str) -> bool {
    r.str(case, key).parse::<i64>().is_ok()
}

#[test]
fn mkt_expiry_while_peer_down_in_vm() {
    // The figures are printed first: they matter most when something failed.
    let Some((_, r)) = (E2e {
        test: "mkt_expiry_while_peer_down_in_vm",
        tag: "vm_expiry",
        script: "e2e-expiry.sh",
        timeout_s: VM_TIMEOUT_S,
        tmp: env!("CARGO_TARGET_TMPDIR"),
        show: &[
            "setup", "kill", "restart", "new-mkt", "resume", "expiry", "unsigned", "guard",
            "b-old", "verify",
        ],
    })
    .run(&Program::for_stream(env!("CARGO_BIN_EXE_stream-peer"))) else {
        return;
    };
    r.assert_lifetimes(8, 16);
    assert!(r.num("kill", "a_mkts") >= 1, "{}", r.line("kill"));
    // b was down past the deadline.
    assert!(
        r.num("restart", "t_restart_ms") >= r.num("kill", "a_deadline") * 1000,
        "restart {} / kill {}",
        r.line("restart"),
        r.line("kill")
    );

    // (a) nothing from a under the expired KeyIDs after the deadline; the guard instead.
    let e = "expiry";
    assert_eq!(r.num(e, "a_old_after_grace"), 0, "{}", r.line(e));
    if is_num(&r, e, "a_old_last_rel_ms") {
        assert!(r.int(e, "a_old_last_rel_ms") <= GRACE_MS, "{}", r.line(e));
    }
    // Measured from the moment a's aokd logged the guard on the socket, rather than
    // from the rounded expires_at: nothing later under the expired KeyID.
    if is_num(&r, e, "a_old_last_rel_guard_ms") {
        assert!(
            r.int(e, "a_old_last_rel_guard_ms") <= LOG_SLACK_MS,
            "{}",
            r.line(e)
        );
    }
    assert!(r.num(e, "a_guard_segments") > 0, "{}", r.line(e));

    // (b) nothing unsigned.
    let u = "unsigned";
    assert_eq!(r.num(u, "from_a"), 0, "{}", r.line(u));
    assert_eq!(r.num(u, "from_b"), 0, "{}", r.line(u));

    // (c) a's socket guarded; b's expired-key segments refused by a's kernel.
    let g = "guard";
    assert!(r.num(g, "a_guarded_samples") > 0, "{}", r.line(g));
    assert_eq!(r.num(g, "a_keyed_samples"), 0, "{}", r.line(g));
    assert!(r.num(g, "b_old_in_window") > 0, "{}", r.line(g));
    assert_eq!(r.num(g, "a_pkt_good_delta"), 0, "{}", r.line(g));
    assert!(r.num(g, "a_refused_delta") > 0, "{}", r.line(g));

    // b's expired key: unavoidable while its aokd is down, never after it is back.
    let b = "b-old";
    assert_eq!(r.num(b, "after_ready"), 0, "{}", r.line(b));

    // (d) a new MKT in both, new KeyIDs and fingerprint, and data under it.
    let n = "new-mkt";
    assert_eq!(r.num(n, "found_a"), 1, "{}", r.line(n));
    assert_eq!(r.num(n, "found_b"), 1, "{}", r.line(n));
    assert_eq!(r.str(n, "a_fp"), r.str(n, "b_fp"), "{}", r.line(n));
    r.assert_same((n, "a_send_id"), (n, "b_recv_id"));
    r.assert_same((n, "a_recv_id"), (n, "b_send_id"));
    assert_eq!(r.num(n, "keyids_new"), 1, "{}", r.line(n));
    let s = "resume";
    assert!(
        matches!(r.str(s, "mode"), "resumed" | "reconnected"),
        "{}",
        r.line(s)
    );
    assert!(r.num(s, "a_new_key_segments") > 0, "{}", r.line(s));
    assert!(r.num(s, "b_new_key_segments") > 0, "{}", r.line(s));
    if r.str(s, "mode") == "resumed" {
        assert_eq!(r.str(s, "original_survived"), "true", "{}", r.line(s));
        r.assert_same((s, "client_bytes_out"), (s, "server_bytes_in"));
        r.assert_same((s, "server_bytes_out"), (s, "client_bytes_in"));
    }

    // The capture: everything verifies but the guards' segments.
    let v = "verify";
    assert_eq!(r.num(v, "bad_mac"), 0, "{}", r.line(v));
    assert_eq!(r.num(v, "unsigned"), 0, "{}", r.line(v));
    r.assert_same((v, "unknown_key_id"), (v, "guard_segments"));
    assert_eq!(
        r.num(v, "verified") + r.num(v, "unknown_key_id"),
        r.num(v, "segments"),
        "{}",
        r.line(v)
    );

    println!(
        "vm_expiry: b down {} ms; a's deadline {} (+{} ms grace; a's aokd logged the guard {} ms after it): a's old-key segments after it {} (last {} ms after it, {} ms after the guard's log line), guard segments a {} b {}; a guarded in {} samples, b's old-key segments refused in the window {} (pkt_good +{}, refused +{}); b's old-key segments before restart {}, during start {}, after {}; new MKT {} ms after b answered, data {} ({} ms after b answered, original connection survived: {}); verified {}/{} (+{} guard)",
        r.num("restart", "down_ms"),
        r.num("kill", "a_deadline"),
        GRACE_MS,
        r.str(e, "guard_log_rel_ms"),
        r.num(e, "a_old_after_deadline"),
        r.str(e, "a_old_last_rel_ms"),
        r.str(e, "a_old_last_rel_guard_ms"),
        r.num(e, "a_guard_segments"),
        r.num(e, "b_guard_segments"),
        r.num(g, "a_guarded_samples"),
        r.num(g, "b_old_in_window"),
        r.num(g, "a_pkt_good_delta"),
        r.num(g, "a_refused_delta"),
        r.num(b, "before_restart"),
        r.num(b, "during_start"),
        r.num(b, "after_ready"),
        r.int(n, "a_after_ready_ms"),
        r.str(s, "mode"),
        r.int(s, "resume_after_ready_ms"),
        r.str(s, "original_survived"),
        r.num(v, "verified"),
        r.num(v, "segments"),
        r.num(v, "unknown_key_id"),
    );
}
