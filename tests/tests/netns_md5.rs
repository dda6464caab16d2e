//! End to end on the host kernel with TCP-MD5 (issue: attach API and preload
//! library): two network namespaces joined by a veth pair, an aokd in each,
//! and TCP programs exchanging data under the negotiated key, checked from a
//! capture on the veth with `aoctl verify`.
//!
//! - `md5_keys_protect_a_connection_between_two_namespaces`: an
//!   attach-aware program (`tcp-peer`) and an unmodified one (`plain-tcp`
//!   under `LD_PRELOAD=libaokd_preload.so`) each exchange data; every
//!   captured segment is signed and verifies with the daemon's MKT.
//! - `guard_when_the_peer_is_down`: no aokd on B; A's preloaded client never
//!   gets through, never puts an unsigned segment on the wire, and gives up
//!   within the acquire wait plus its connect timeout.
//! - `covered_server_refuses_unsigned_peer`: different PSKs, so negotiation
//!   fails; B's preloaded server (guarded) accepts neither A's unsigned
//!   client (B's TCPMD5NotFound rises) nor A's guarded one.
//! - `wrong_key_fails`: a client with a wrong TCP-MD5 key against an
//!   attached server: no connection, B's TCPMD5Failure rises.
//!
//! Needs root, `ip` and `tcpdump` (and `libaokd_preload.so` built by
//! `cargo build --workspace` for the tests that use it, or the file named by
//! `AOKD_TEST_PRELOAD`): when something is
//! missing the test fails if `CI` is set, and is otherwise skipped with the
//! reason printed. Addresses are 10.201.0.1 (A) and 10.201.0.2 (B), which
//! exist only inside the namespaces the tests create.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aokd_tests::netns::{self, netstat, Netns, Pair};
use aokd_tests::process::{self, Proc};
use aokd_tests::{aoctl_verify, logs_text, mkt_master_keys, mkts, Daemon};
use serde_json::Value;

const PSK: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";
const OTHER_PSK: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210\n";
/// Negotiation and daemon start-up.
const WAIT: Duration = Duration::from_secs(30);
/// A server reporting that it listens.
const LISTEN_WAIT: Duration = Duration::from_secs(15);
const ADDR_A: &str = "10.201.0.1";
const ADDR_B: &str = "10.201.0.2";
const BGP: &str = "10.201.0.2:179";
/// `AOKD_WAIT_MS` for connects that cannot get keys.
const WAIT_MS: u64 = 1500;
/// The `--timeout` (seconds) of clients expected to fail.
const FAIL_TIMEOUT_S: u64 = 3;

/// Two namespaces with the tests' addresses.
fn topo(tag: &str) -> Pair {
    Pair::new(tag, ADDR_A, ADDR_B)
}

/// Writes both configurations: TCP-MD5 for port 179, attach sockets in
/// the sides' directories, A initiates, B waits.
fn configure(t: &Pair, psk_a: &str, psk_b: &str) {
    for (me, other, psk, extra) in [
        (&t.side_a, &t.side_b, psk_a, ""),
        (&t.side_b, &t.side_a, psk_b, "initiate = false\n"),
    ] {
        let daemon = "acquire_timeout = \"5s\"\n";
        let peer = format!("backend = \"tcp-md5\"\ntcp_ports = [179]\n{extra}");
        me.write_config_with(other, psk, daemon, &peer);
    }
}

/// The `tcp-peer` program.
const TCP_PEER: &str = env!("CARGO_BIN_EXE_tcp-peer");

fn tcp_peer(ns: &Netns) -> Command {
    ns.command(TCP_PEER)
}

fn plain(ns: &Netns) -> Command {
    ns.command(env!("CARGO_BIN_EXE_plain-tcp"))
}

/// `plain-tcp` in `ns` under the preload library, attaching to `attach`.
fn preloaded_plain(ns: &Netns, attach: &Path, extra_env: &[(&str, String)]) -> Command {
    let mut cmd = ns.command("env");
    cmd.arg(format!(
        "LD_PRELOAD={}",
        aokd_tests::preload_library().display()
    ))
    .arg(format!("AOKD_ATTACH_SOCKET={}", attach.display()))
    .arg("AOKD_PORTS=179")
    .arg("AOKD_PRELOAD_DEBUG=1");
    for (k, v) in extra_env {
        cmd.arg(format!("{k}={v}"));
    }
    cmd.arg(env!("CARGO_BIN_EXE_plain-tcp"));
    cmd
}

/// Starts a server and waits for its "listening" line (parsed).
fn start_server(name: &str, cmd: Command) -> (Proc, Value) {
    process::start_server(name, cmd, LISTEN_WAIT)
}

/// B's attached `tcp-peer` server for one connection and A's attached
/// client, both keyed by TCP-MD5: the server listens with the keys, the
/// client exchanges 4096 octets (failure messages add `logs`), and the
/// server exits 0. Returns the server, its "listening" line and the
/// client's report.
fn attached_exchange(t: &Pair, logs: &[(&str, &Daemon)]) -> (Proc, Value, Value) {
    let (mut server, listening) = t.attached_server(TCP_PEER, BGP, LISTEN_WAIT);
    assert_eq!(
        listening["attach"]["installed"],
        "keys",
        "{listening}{}",
        logs_text(logs)
    );
    assert_eq!(listening["attach"]["mechanism"], "tcp-md5", "{listening}");
    let report = t.attached_client(TCP_PEER, BGP, Duration::from_secs(30), &server, logs);
    assert_eq!(report["bytes"], 4096);
    server.assert_success(Duration::from_secs(15));
    (server, listening, report)
}

/// Runs a client that must fail, `cmd` with `--timeout FAIL_TIMEOUT_S`
/// (bounded by `limit`): asserts that it exited non-zero with `"ok":false`
/// (the message starts with `what` and ends with `detail()`); returns its
/// report and process.
fn client_fails(
    name: &str,
    mut cmd: Command,
    limit: Duration,
    what: &str,
    detail: &dyn Fn() -> String,
) -> (Value, Proc) {
    cmd.args(["--timeout", &FAIL_TIMEOUT_S.to_string()]);
    let (ok, report, client) = process::run_client(name, cmd, limit);
    assert!(
        !ok && report["ok"] == false,
        "{what}: {report}\n{}{}",
        client.report(),
        detail()
    );
    (report, client)
}

/// A's `plain-tcp` client under the preload library with `AOKD_WAIT_MS`,
/// which gets no keys: [`client_fails`] within the acquire wait plus the
/// connect timeout, plus slack for process start-up (no hang).
fn guarded_client_fails(t: &Pair, what: &str) -> (Value, Proc) {
    let mut cmd = preloaded_plain(
        &t.a,
        &t.side_a.attach_socket(),
        &[("AOKD_WAIT_MS", WAIT_MS.to_string())],
    );
    cmd.args(["client", "--connect", BGP]);
    let limit = Duration::from_millis(WAIT_MS + FAIL_TIMEOUT_S * 1000 + 5000);
    client_fails("plain-tcp client (preload)", cmd, limit, what, &String::new)
}

/// Kills B's server and asserts that it never accepted a connection.
fn assert_never_accepted(server: &mut Proc) {
    server.kill();
    assert!(
        !server
            .stdout_lines()
            .iter()
            .any(|l| l.contains("\"accepted\"")),
        "B accepted a connection:\n{}",
        server.report()
    );
}

fn counter(m: &BTreeMap<String, u64>, name: &str) -> u64 {
    *m.get(name)
        .unwrap_or_else(|| panic!("no {name} in TcpExt: {m:?}"))
}

/// `aoctl verify --pcap FILE --json ARGS...`: exit status and the JSON
/// document.
fn verify(pcap: &Path, args: &[&std::ffi::OsStr]) -> (Option<i32>, Value) {
    aoctl_verify(pcap, args)
}

/// Asserts that `aoctl verify` passed with `count` connections from A to
/// port 179, each fully signed with TCP-MD5 and verified.
fn assert_all_verified(what: &str, code: Option<i32>, v: &Value, count: usize, detail: &str) {
    let conns = connections(v);
    assert_eq!(code, Some(0), "{what}: {v:#}\n{detail}");
    assert_eq!(v["result"], "pass", "{what}: {v:#}\n{detail}");
    assert_eq!(conns.len(), count, "{what}: {v:#}\n{detail}");
    for c in &conns {
        assert_eq!(c["signing"], "tcp-md5", "{what}: {c}\n{detail}");
        assert_eq!(c["dport"], 179, "{what}: {c}");
        assert_eq!(c["src"], ADDR_A, "{what}: {c}");
        let segments = c["segments"].as_u64().expect("segments");
        assert!(segments > 0, "{what}: {c}");
        assert_eq!(c["verified"].as_u64(), Some(segments), "{what}: {c}");
        assert_eq!(c["unsigned"], 0, "{what}: {c}");
    }
    println!(
        "{what}: {}",
        conns
            .iter()
            .map(|c| format!(
                "{}:{} -> {}:{} verified {}/{} unsigned {}",
                c["src"],
                c["sport"],
                c["dst"],
                c["dport"],
                c["verified"],
                c["segments"],
                c["unsigned"]
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

fn connections(v: &Value) -> Vec<Value> {
    v["connections"].as_array().cloned().unwrap_or_default()
}

/// The capture's table, for failure messages.
fn capture_text(pcap: &Path) -> String {
    netns::capture_text(pcap, "-v", usize::MAX)
}

#[test]
fn md5_keys_protect_a_connection_between_two_namespaces() {
    if !netns::prerequisites("md5_keys_protect_a_connection_between_two_namespaces", true) {
        return;
    }
    let t = topo("nsmd5");
    configure(&t, PSK, PSK);
    let mut cap = t.capture();
    let da = t.start_a();
    let db = t.start_b();
    da.wait_keyed(WAIT);
    db.wait_keyed(WAIT);

    // 1. The attach API, used by a program written for it.
    let (server, listening, report) = attached_exchange(&t, &[("A", &da)]);
    assert_eq!(listening["attach"]["status"], "ok", "{listening}");
    assert_eq!(report["attach"]["installed"], "keys", "{report}");
    let accepted: Value = server.last_json().expect("server JSON");
    assert_eq!(accepted["ok"], true, "{accepted}");
    assert_eq!(accepted["attach"]["status"], "ok", "{accepted}");

    // 2. A program that knows nothing about aokd, under the preload library.
    let (mut server, _) = start_server("plain-tcp server (preload)", {
        let mut c = preloaded_plain(&t.b, &t.side_b.attach_socket(), &[]);
        c.args(["server", "--listen", BGP, "--count", "1"]);
        c
    });
    let mut cmd = preloaded_plain(&t.a, &t.side_a.attach_socket(), &[]);
    cmd.args(["client", "--connect", BGP]);
    let (ok, report, client) =
        process::run_client("plain-tcp client (preload)", cmd, Duration::from_secs(30));
    assert!(
        ok && report["ok"] == true,
        "{report}\n{}\n{}",
        client.report(),
        server.report()
    );
    server.assert_success(Duration::from_secs(15));

    let summary = cap.stop().expect("stop tcpdump");
    let detail = format!("tcpdump: {summary}\n{}", capture_text(cap.file()));
    // With the daemon's key given explicitly as the TCP-MD5 key.
    let keys = mkt_master_keys(&t.side_a.socket()).expect("mkt-keys");
    assert_eq!(keys.len(), 1, "A holds one MKT");
    let (code, v) = verify(cap.file(), &["--md5".as_ref(), keys[0].as_ref()]);
    assert_all_verified("verify --md5 <A's MKT master key>", code, &v, 2, &detail);
    // The same, with the keys fetched by aoctl itself from A's aokd.
    let (code, v) = verify(
        cap.file(),
        &[
            "--from-daemon".as_ref(),
            "--socket".as_ref(),
            t.side_a.socket().as_os_str(),
        ],
    );
    assert_all_verified("verify --from-daemon", code, &v, 2, &detail);
}

#[test]
fn guard_when_the_peer_is_down() {
    if !netns::prerequisites("guard_when_the_peer_is_down", true) {
        return;
    }
    let t = topo("nsguard");
    configure(&t, PSK, PSK);
    let mut cap = t.capture();
    // Only A's aokd: B has neither aokd nor a key.
    let da = t.start_a();
    let (mut server, _) = start_server("plain-tcp server (B, no aokd)", {
        let mut c = plain(&t.b);
        c.args(["server", "--listen", BGP]);
        c
    });
    let before = netstat(&t.b).expect("netstat B");

    let (report, client) = guarded_client_fails(&t, "connected without a peer");
    let elapsed = report["elapsed_ms"].as_u64().expect("elapsed_ms");
    assert!(
        elapsed <= WAIT_MS + FAIL_TIMEOUT_S * 1000 + 1000,
        "client took {elapsed} ms: {report}"
    );

    assert_never_accepted(&mut server);
    let after = netstat(&t.b).expect("netstat B");
    let summary = cap.stop().expect("stop tcpdump");
    let (_, v) = verify(cap.file(), &[]);
    let conns = connections(&v);
    let detail = || {
        format!(
            "verify: {v:#}\ntcpdump: {summary}\n{}\nclient:\n{}\nA:\n{}",
            capture_text(cap.file()),
            client.report(),
            da.log()
        )
    };
    assert!(
        !conns.is_empty(),
        "no SYN on the wire (the guard should let signed SYNs out): {}",
        detail()
    );
    for c in &conns {
        assert_eq!(c["src"], ADDR_A, "{c}\n{}", detail());
        assert_eq!(c["signing"], "tcp-md5", "{c}\n{}", detail());
        assert_eq!(c["unsigned"], 0, "{c}\n{}", detail());
        assert!(c["segments"].as_u64().unwrap_or(0) > 0, "{c}");
    }
    // B's kernel saw the signed SYNs and, having no key, dropped them.
    assert!(
        counter(&after, "TCPMD5Unexpected") > counter(&before, "TCPMD5Unexpected"),
        "TCPMD5Unexpected before {} after {}",
        counter(&before, "TCPMD5Unexpected"),
        counter(&after, "TCPMD5Unexpected")
    );
    println!(
        "guard: {} connection(s) from A, all segments TCP-MD5; client gave up after {elapsed} ms",
        conns.len()
    );
}

#[test]
fn covered_server_refuses_unsigned_peer() {
    if !netns::prerequisites("covered_server_refuses_unsigned_peer", true) {
        return;
    }
    let t = topo("nsrefuse");
    configure(&t, PSK, OTHER_PSK);
    let mut cap = t.capture();
    let da = t.start_a();
    let db = t.start_b();
    for d in [&da, &db] {
        d.wait_for(&["status"], WAIT, |v| {
            v["peers"][0]["last_error"] == "AUTHENTICATION_FAILED"
        });
        assert!(mkts(&d.aoctl(&["mkts"]).expect("mkts")).is_empty());
    }

    let (mut server, _) = start_server("plain-tcp server (B, preload)", {
        let mut c = preloaded_plain(&t.b, &t.side_b.attach_socket(), &[]);
        c.args(["server", "--listen", BGP]);
        c
    });

    // An unsigned client (no preload).
    let before = netstat(&t.b).expect("netstat B");
    let mut cmd = plain(&t.a);
    cmd.args(["client", "--connect", BGP]);
    let limit = Duration::from_secs(FAIL_TIMEOUT_S + 10);
    client_fails(
        "plain-tcp client (unsigned)",
        cmd,
        limit,
        "unsigned client got through",
        &|| format!("\n{}", server.report()),
    );
    let mid = netstat(&t.b).expect("netstat B");
    assert!(
        counter(&mid, "TCPMD5NotFound") > counter(&before, "TCPMD5NotFound"),
        "TCPMD5NotFound before {} after {}\nB:\n{}",
        counter(&before, "TCPMD5NotFound"),
        counter(&mid, "TCPMD5NotFound"),
        db.log()
    );

    // A guarded client (preload; no MKT either): also refused.
    guarded_client_fails(&t, "guarded client got through");
    let after = netstat(&t.b).expect("netstat B");

    assert_never_accepted(&mut server);
    let summary = cap.stop().expect("stop tcpdump");
    let (_, v) = verify(cap.file(), &[]);
    let conns = connections(&v);
    let detail = || {
        format!(
            "verify: {v:#}\ntcpdump: {summary}\n{}",
            capture_text(cap.file())
        )
    };
    // Nothing ever came back from B: every segment was sent by A.
    assert!(!conns.is_empty(), "{}", detail());
    for c in &conns {
        assert_eq!(c["src"], ADDR_A, "{c}\n{}", detail());
        let sport = c["sport"].as_u64().unwrap_or(0);
        let unsigned = c["unsigned"].as_u64().unwrap_or(0);
        // The unsigned client's connection is all unsigned; the preloaded
        // client's all signed.
        assert!(
            (c["signing"] == "none" && unsigned > 0)
                || (c["signing"] == "tcp-md5" && unsigned == 0),
            "{c} (sport {sport})\n{}",
            detail()
        );
    }
    assert!(
        conns.iter().any(|c| c["signing"] == "tcp-md5"),
        "the preloaded client sent no signed SYN: {}",
        detail()
    );
    println!(
        "refused: TCPMD5NotFound {} -> {}, TCPMD5Failure {} -> {}",
        counter(&before, "TCPMD5NotFound"),
        counter(&after, "TCPMD5NotFound"),
        counter(&mid, "TCPMD5Failure"),
        counter(&after, "TCPMD5Failure")
    );
}

#[test]
fn wrong_key_fails() {
    if !netns::prerequisites("wrong_key_fails", false) {
        return;
    }
    let t = topo("nswrong");
    configure(&t, PSK, PSK);
    let da = t.start_a();
    let db = t.start_b();
    da.wait_keyed(WAIT);
    db.wait_keyed(WAIT);

    let mut cmd = tcp_peer(&t.b);
    cmd.args(["server", "--listen", BGP, "--attach"])
        .arg(t.side_b.attach_socket());
    let (mut server, listening) = start_server("tcp-peer server", cmd);
    assert_eq!(listening["attach"]["installed"], "keys", "{listening}");

    let before = netstat(&t.b).expect("netstat B");
    let wrong = "5a".repeat(32);
    let mut cmd = tcp_peer(&t.a);
    cmd.args(["client", "--connect", BGP, "--md5", &wrong]);
    let limit = Duration::from_secs(FAIL_TIMEOUT_S + 10);
    client_fails(
        "tcp-peer client (wrong key)",
        cmd,
        limit,
        "a wrong key got through",
        &String::new,
    );
    let after = netstat(&t.b).expect("netstat B");
    assert!(
        counter(&after, "TCPMD5Failure") > counter(&before, "TCPMD5Failure"),
        "TCPMD5Failure before {} after {}",
        counter(&before, "TCPMD5Failure"),
        counter(&after, "TCPMD5Failure")
    );

    // The same server with the right key (A's attach): works.
    t.attached_client(TCP_PEER, BGP, Duration::from_secs(30), &server, &[]);
    server.kill();
    let accepted = server
        .stdout_lines()
        .iter()
        .filter(|l| l.contains("\"accepted\""))
        .count();
    assert_eq!(accepted, 1, "{}", server.report());
    println!(
        "wrong key: TCPMD5Failure {} -> {}",
        counter(&before, "TCPMD5Failure"),
        counter(&after, "TCPMD5Failure")
    );
}

/// The capabilities aokd needs (docs/kernel.md, "Least privilege"):
/// CAP_NET_BIND_SERVICE for UDP port 500 and CAP_SYS_PTRACE for
/// pidfd_getfd on a routing daemon of another user. B's aokd runs as
/// nobody (65534) with exactly those two (setpriv: bounding, inheritable
/// and ambient sets), and still negotiates and keys a socket that a root
/// program attaches; the connection carries data.
#[test]
fn least_privilege_aokd_keys_an_attached_socket() {
    if !netns::prerequisites("least_privilege_aokd_keys_an_attached_socket", false) {
        return;
    }
    let t = topo("nsmd5cap");
    configure(&t, PSK, PSK);
    // nobody must own B's directory (state, sockets) and PSK file.
    let nobody = 65534;
    for entry in std::fs::read_dir(&t.side_b.dir).expect("B's dir") {
        let p = entry.expect("entry").path();
        std::os::unix::fs::chown(&p, Some(nobody), Some(nobody)).expect("chown");
    }
    std::os::unix::fs::chown(&t.side_b.dir, Some(nobody), Some(nobody)).expect("chown");
    // ...and be able to reach it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&t.root, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let caps = "-all,+net_bind_service,+sys_ptrace";
    let mut cmd = t.b.command("setpriv");
    cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(format!("--bounding-set={caps}"))
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg("--")
        .arg(aokd_tests::binary("aokd"));
    let db = Daemon::start_with(&t.side_b, cmd);
    let da = t.start_a();
    da.wait_keyed(WAIT);
    db.wait_keyed(WAIT);
    // B's aokd really runs as nobody with just those capabilities.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", db.child.id())).expect("status");
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    assert!(field("Uid:").starts_with("65534"), "{status}");
    // CAP_NET_BIND_SERVICE (10) and CAP_SYS_PTRACE (19).
    let eff = u64::from_str_radix(&field("CapEff:"), 16).expect("CapEff");
    assert_eq!(eff, (1 << 10) | (1 << 19), "{status}");

    attached_exchange(&t, &[("B", &db)]);
    let sockets = db.aoctl(&["sockets"]).expect("sockets");
    println!("least privilege: B's aokd as uid 65534 with CapEff {eff:#x} keyed {sockets}");
}
