//! End to end with real TCP-AO, inside the qemu VM of tests/vm/ (the host kernel has
//! no CONFIG_TCP_AO): the cached kernel built from Debian's linux-source-6.12 boots
//! with aokd, aoctl, the test programs and libaokd_preload.so in its initramfs and
//! runs tests/vm/e2e-tcp-ao.sh, which prints one `E2E-RESULT case=... key=value ...`
//! line per case and one `E2E-CHECK NAME ok|FAIL: why` line per check. This test
//! asserts on them:
//!
//! - two namespaces joined by a veth pair, an aokd in each (backend `tcp-ao`), one
//!   MKT negotiated on each side, with mirrored KeyIDs;
//! - `tcp-peer` (attach API) and `plain-tcp` under `LD_PRELOAD` each carry 1 MiB
//!   both ways; the `TCP_AO_INFO` counters of both ends' sockets, read with
//!   `aoctl --json sockets` while the connection is open, show pkt_good rising and
//!   pkt_bad at 0 (the namespaces' TcpExt TCPAOGood/TCPAOBad agree);
//! - `aoctl verify --from-daemon` on a capture of b's veth verifies every segment of
//!   both connections, none unsigned;
//! - `ao-wrong-key` (right KeyIDs, random master key) cannot connect, and b's
//!   listener counts pkt_bad;
//! - guard: with different PSKs (negotiation fails), a preloaded client gets the
//!   guard and puts only TCP-AO-signed SYNs on the wire, and b's covered server
//!   (guarded) answers no unsigned SYN from a and accepts nothing.
//!
//! The binaries are those `cargo test --workspace` built (nothing is built here),
//! copied without debug information into the VM (the debug builds would not fit
//! its RAM). With `CI` set, a missing prerequisite is a failure; otherwise the test
//! is skipped with a printed reason (also when `AOKD_SKIP_VM` is set). Warm cache:
//! about 40 s; a cold cache first builds the kernel (about 5 min), see
//! tests/vm/README.md.

use aokd_tests::vm::{E2e, Program, Results};
use serde_json::Value;

/// Seconds the guest may run before run.sh kills qemu.
const VM_TIMEOUT_S: u32 = 300;
/// Octets each connection carries each way (the guest script's default).
const BYTES: u64 = 1_048_576;
/// Where the guest script looks for the preload library.
const GUEST_PRELOAD: &str = "/opt/aokd/lib/libaokd_preload.so";

/// The host files that go into the VM.
fn programs() -> Vec<Program> {
    let mut p = Vec::from(Program::daemon_and_ctl());
    p.extend([
        Program::bin("tcp-peer", env!("CARGO_BIN_EXE_tcp-peer")),
        Program::bin("plain-tcp", env!("CARGO_BIN_EXE_plain-tcp")),
        Program::bin("ao-wrong-key", env!("CARGO_BIN_EXE_ao-wrong-key")),
        Program {
            name: "libaokd_preload.so",
            host: aokd_tests::preload_library(),
            guest: Some(GUEST_PRELOAD),
        },
    ]);
    p
}

/// Data carried and TCP_AO_INFO counters on both ends for one connection case.
fn assert_connection(r: &Results, case: &str) {
    let line = r.line(case);
    assert_eq!(r.str(case, "client_status"), "0", "{case}: {line}");
    assert_eq!(r.str(case, "server_status"), "0", "{case}: {line}");
    assert_eq!(r.str(case, "client_ok"), "true", "{case}: {line}");
    assert_eq!(r.str(case, "server_ok"), "true", "{case}: {line}");
    assert_eq!(r.num(case, "bytes"), BYTES, "{case}: data carried: {line}");
    for key in ["client_attach", "server_attach", "accepted_attach"] {
        assert_eq!(r.str(case, key), "keys", "{case}: {key}: {line}");
    }
    for end in ["a", "b"] {
        let samples = r.num(case, &format!("{end}_samples"));
        let first = r.num(case, &format!("{end}_good_first"));
        let last = r.num(case, &format!("{end}_good_last"));
        assert!(
            samples >= 2,
            "{case}: {end}'s socket sampled {samples} times: {line}"
        );
        assert!(
            last > 0 && last > first,
            "{case}: {end}'s pkt_good did not rise ({first} -> {last}): {line}"
        );
        assert_eq!(
            r.num(case, &format!("{end}_bad")),
            0,
            "{case}: {end}'s pkt_bad: {line}"
        );
        assert!(
            r.num(case, &format!("{end}_ns_good")) > 0,
            "{case}: {end}'s TCPAOGood: {line}"
        );
        assert_eq!(
            r.num(case, &format!("{end}_ns_bad")),
            0,
            "{case}: {end}'s TCPAOBad: {line}"
        );
    }
}

#[test]
fn tcp_ao_end_to_end_in_vm() {
    let Some((run, r)) = (E2e {
        test: "tcp_ao_end_to_end_in_vm",
        tag: "vm_tcp_ao",
        script: "e2e-tcp-ao.sh",
        timeout_s: VM_TIMEOUT_S,
        tmp: env!("CARGO_TARGET_TMPDIR"),
        show: &[],
    })
    .run(&programs()) else {
        return;
    };
    let console = &run.console;

    // One MKT each, KeyIDs mirrored.
    assert_eq!(r.num("mkt", "a_mkts"), 1, "{}", r.line("mkt"));
    assert_eq!(r.num("mkt", "b_mkts"), 1, "{}", r.line("mkt"));
    r.assert_same(("mkt", "a_send_id"), ("mkt", "b_recv_id"));
    r.assert_same(("mkt", "a_recv_id"), ("mkt", "b_send_id"));

    // Data over the attach API and over the preload library.
    assert_connection(&r, "tcp-peer");
    assert_connection(&r, "preload");

    // The capture: every segment of both connections verifies with the daemon's MKT.
    r.assert_all_verified(2);
    let v = "verify";
    let json = console
        .lines()
        .find_map(|l| l.strip_prefix("E2E-VERIFY-JSON "))
        .expect("no E2E-VERIFY-JSON line");
    let doc: Value = serde_json::from_str(json).expect("E2E-VERIFY-JSON is JSON");
    assert_eq!(doc["result"], "pass", "{doc:#}");
    let conns = doc["connections"].as_array().expect("connections");
    assert_eq!(conns.len(), 2, "{doc:#}");
    for c in conns {
        assert_eq!(c["signing"], "tcp-ao", "{c}");
        assert_eq!(c["src"], "10.201.0.1", "{c}");
        assert_eq!(c["dport"], 179, "{c}");
        assert_eq!(c["isns_seen"], true, "{c}");
        let segments = c["segments"].as_u64().expect("segments");
        assert!(segments > 0, "{c}");
        assert_eq!(c["verified"].as_u64(), Some(segments), "{c}");
        assert_eq!(c["unsigned"], 0, "{c}");
    }

    // A wrong key on purpose.
    let w = "wrong-key";
    assert_eq!(r.num(w, "status"), 0, "{}", r.line(w));
    assert_eq!(r.str(w, "connected"), "false", "{}", r.line(w));
    assert_eq!(r.num(w, "server_accepted"), 0, "{}", r.line(w));
    assert!(
        r.num(w, "listener_bad") > r.num(w, "listener_bad_before"),
        "b's listener did not count pkt_bad: {}",
        r.line(w)
    );
    assert!(r.num(w, "ns_bad_delta") > 0, "{}", r.line(w));

    // Guard: negotiation fails; nothing unsigned leaves a, nothing unsigned gets in.
    let g = "guard-preload";
    assert!(r.num(g, "a_auth_failed") > 0, "{}", r.line(g));
    assert_eq!(r.str(g, "client_attach"), "guard", "{}", r.line(g));
    assert_eq!(r.str(g, "server_attach"), "guard", "{}", r.line(g));
    assert_eq!(r.str(g, "listener_state"), "guarded", "{}", r.line(g));
    assert_ne!(r.num(g, "status"), 0, "{}", r.line(g));
    assert_eq!(r.str(g, "client_ok"), "false", "{}", r.line(g));
    assert!(r.num(g, "syn_ao") > 0, "{}", r.line(g));
    assert_eq!(r.num(g, "syn_unsigned"), 0, "{}", r.line(g));
    assert!(r.num(g, "segments") > 0, "{}", r.line(g));
    assert_eq!(r.num(g, "unsigned"), 0, "{}", r.line(g));
    assert_eq!(r.num(g, "a_mkts"), 0, "{}", r.line(g));
    assert_eq!(r.num(g, "b_mkts"), 0, "{}", r.line(g));
    let u = "guard-unsigned";
    assert_ne!(r.num(u, "status"), 0, "{}", r.line(u));
    assert_eq!(r.str(u, "client_ok"), "false", "{}", r.line(u));
    assert!(r.num(u, "syns") > 0, "{}", r.line(u));
    assert_eq!(r.num(u, "replies_from_b"), 0, "{}", r.line(u));
    assert_eq!(r.num(u, "server_accepted"), 0, "{}", r.line(u));
    assert!(r.num(u, "b_ns_ao_required_delta") > 0, "{}", r.line(u));

    // The embedded default uses TCP-AO where the kernel has it.
    let d = "demo";
    assert_eq!(r.num(d, "status"), 0, "{}", r.line(d));
    assert_eq!(r.num(d, "tcp_ao"), 1, "{}", r.line(d));
    assert_eq!(r.num(d, "info_lines_good"), 2, "{}", r.line(d));

    println!(
        "vm_tcp_ao: tcp-peer pkt_good a {} b {}, preload pkt_good a {} b {}; verified {}/{} segments; wrong key: listener pkt_bad {}",
        r.num("tcp-peer", "a_good_last"),
        r.num("tcp-peer", "b_good_last"),
        r.num("preload", "a_good_last"),
        r.num("preload", "b_good_last"),
        r.num(v, "verified"),
        r.num(v, "segments"),
        r.num(w, "listener_bad"),
    );
}
