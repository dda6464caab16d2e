//! A peer group's prefix guard on a listener under TCP-AO, in the qemu VM of
//! tests/vm/ (the host kernel has no CONFIG_TCP_AO): tests/vm/e2e-group-guard.sh runs
//! a route server (namespace a, one `[[peer_group]]` "rs" over 10.204.0.0/24, no
//! `[[peer]]`) and a neighbour (namespace b), with certificates this test makes, and
//! prints `E2E-RESULT case=... key=value ...` and `E2E-CHECK NAME ok|FAIL: why`
//! lines. This test asserts on them:
//!
//! - a's attached listener on port 179, before any member exists, is answered
//!   "guard" for the group and listed as guarded by `aoctl sockets`;
//! - an unsigned connect from b (inside the prefix, not a member) fails, a's kernel
//!   counts the dropped SYNs in TcpExtTCPAORequired, and the listener accepts
//!   nothing: without the prefix guard it would have been accepted unsigned;
//! - once b's aokd negotiates (b's attached connect asks for an MKT), b is a member,
//!   its MKT goes on a's listener beside the prefix guard (the kernel refuses
//!   neither: different KeyIDs), and the connection carries its data signed
//!   (a's TcpExtTCPAOGood rises, TcpExtTCPAOBad 0).
//!
//! aokd, aoctl, tcp-peer and plain-tcp are those `cargo build --workspace` built.
//! With `CI` set a missing prerequisite is a failure; otherwise the test is skipped
//! with a printed reason (also when `AOKD_SKIP_VM` is set).

use aokd_tests::pki::{Ca, KeyType};
use aokd_tests::vm::{E2e, Program};

/// Seconds the guest may run before run.sh kills qemu (a normal run is under 60 s).
const VM_TIMEOUT_S: u32 = 300;
const TEST: &str = "group_listener_guard_under_tcp_ao_in_vm";

#[test]
fn group_listener_guard_under_tcp_ao_in_vm() {
    let mut programs = Vec::from(Program::daemon_and_ctl());
    programs.push(Program::bin("tcp-peer", env!("CARGO_BIN_EXE_tcp-peer")));
    programs.push(Program::bin("plain-tcp", env!("CARGO_BIN_EXE_plain-tcp")));
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-group-guard-certs");
    std::fs::create_dir_all(&dir).expect("certificate directory");
    let root = Ca::root("aokd vm group test root", KeyType::Ed25519).expect("root CA");
    let fa = root.ed25519_leaf_files("10.204.0.1", &dir, "a", &[&root]);
    let fb = root.ed25519_leaf_files("10.204.0.2", &dir, "b", &[&root]);
    let file = |host: &std::path::Path, guest: &str| format!("{}={guest}", host.display());
    let certs = [
        file(&fa.certificate, "/opt/aokd/certs/a.crt"),
        file(&fa.private_key, "/opt/aokd/certs/a.key"),
        file(&fa.ca, "/opt/aokd/certs/ca.crt"),
        file(&fb.certificate, "/opt/aokd/certs/b.crt"),
        file(&fb.private_key, "/opt/aokd/certs/b.key"),
    ];
    let extra: Vec<&str> = certs.iter().map(String::as_str).collect();
    let Some((_, r)) = (E2e {
        test: TEST,
        tag: "vm_group_guard",
        script: "e2e-group-guard.sh",
        timeout_s: VM_TIMEOUT_S,
        tmp: env!("CARGO_TARGET_TMPDIR"),
        show: &["listener", "probe", "member"],
    })
    .run_with(&programs, &extra) else {
        return;
    };

    let l = "listener";
    assert_eq!(r.str(l, "installed"), "guard", "{}", r.line(l));
    assert_eq!(r.num(l, "group_named"), 1, "{}", r.line(l));
    assert_eq!(r.str(l, "listener_state"), "guarded", "{}", r.line(l));
    let p = "probe";
    assert_ne!(r.num(p, "status"), 0, "{}", r.line(p));
    assert_eq!(r.str(p, "ok"), "false", "{}", r.line(p));
    assert!(r.num(p, "ao_required") > 0, "{}", r.line(p));
    assert_eq!(r.num(p, "accepted"), 0, "{}", r.line(p));
    let m = "member";
    assert_eq!(r.num(m, "status"), 0, "{}", r.line(m));
    assert_eq!(r.num(m, "bytes"), 4096, "{}", r.line(m));
    assert!(r.num(m, "members") >= 1, "{}", r.line(m));
    assert_eq!(r.str(m, "listener_state"), "keys", "{}", r.line(m));
    assert!(r.num(m, "ao_good") > 0, "{}", r.line(m));
    println!(
        "vm_group_guard: unsigned SYNs from a non-member dropped (TCPAORequired +{}); \
         the member keyed and connected {} ms after its aokd started, TCPAOGood +{}",
        r.num(p, "ao_required"),
        r.num(m, "ms"),
        r.num(m, "ao_good"),
    );
}
