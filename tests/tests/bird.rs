//! Unmodified BIRD 2 (Debian's bird2) over aokd's TCP-MD5 keys on the host
//! kernel (issue 13): two network namespaces joined by a veth pair, an aokd
//! and a BIRD in each, BIRD under the preload library with no password in
//! its configuration.
//!
//! - `bird_session_routes_and_capture`: Established, each side's static
//!   route learnt by the other, every captured segment signed and verified
//!   by `aoctl verify --from-daemon`.
//! - `bird_without_the_library_is_refused`: A's BIRD runs without the
//!   library: no session; B's kernel drops A's unsigned SYNs
//!   (TCPMD5NotFound) and A's drops B's signed ones (TCPMD5Unexpected).
//! - `bird_started_before_aokd_is_ready_gets_established`: BIRD listens
//!   before aokd's attach socket exists (aokd is started once BIRD's
//!   listen has found no aokd) and reaches Established with no operator
//!   action; nothing unsigned on the wire.
//! - `bird_session_reset_while_aokd_is_killed_recovers`: aokd killed with
//!   SIGKILL, `birdc restart` while it is down (BIRD reopens its listening
//!   socket then, under the library's guard: both kernels drop the other
//!   side's attempts, TCPMD5Failure), aokd started again: Established
//!   again without `birdc enable`; nothing unsigned in the capture.
//! - `bird_as_unprivileged_user_with_attach_socket_group`: A's BIRD drops
//!   to the user bird (`-u bird -g bird`); aokd's `attach_socket_group =
//!   "bird"` lets it attach; Established.
//!
//! Each prints its figures (time to Established, segments verified). Needs
//! root, `ip`, `tcpdump`, bird2 and the preload library (cargo build
//! --workspace): missing pieces fail under `CI` and skip otherwise.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use aokd_tests::bird::{self, Bird, BirdConfig, Preload};
use aokd_tests::netns::{self, Pair};
use aokd_tests::{aoctl_verify, established_sas, mkts, Daemon};
use serde_json::Value;

const PSK: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";
const ADDR_A: &str = "10.202.0.1";
const ADDR_B: &str = "10.202.0.2";
const ROUTE_A: &str = "192.0.2.0/25";
const ROUTE_B: &str = "198.51.100.0/25";
/// Negotiation and daemon start-up.
const WAIT: Duration = Duration::from_secs(30);
/// BGP: connect delay 1 s, retries every 3 s, plus negotiation.
const ESTABLISH_WAIT: Duration = Duration::from_secs(60);

fn bird_config(a: bool) -> BirdConfig {
    let (local, neighbor, local_as, neighbor_as, route) = if a {
        (ADDR_A, ADDR_B, 65001, 65002, ROUTE_A)
    } else {
        (ADDR_B, ADDR_A, 65002, 65001, ROUTE_B)
    };
    BirdConfig {
        protocol: if a { "to_b" } else { "to_a" }.into(),
        local: local.into(),
        local_as,
        neighbor: neighbor.into(),
        neighbor_as,
        route: route.into(),
    }
}

/// Both aokd configurations: TCP-MD5 for port 179; A initiates, B waits;
/// `daemon_a` is added to A's `[daemon]` table.
fn configure(t: &Pair, daemon_a: &str) {
    let daemon = "acquire_timeout = \"5s\"\n";
    let peer = "backend = \"tcp-md5\"\ntcp_ports = [179]\n";
    t.side_a
        .write_config_with(&t.side_b, PSK, &format!("{daemon}{daemon_a}"), peer);
    t.side_b
        .write_config_with(&t.side_a, PSK, daemon, &format!("{peer}initiate = false\n"));
}

fn wait_for_mkt(d: &Daemon) {
    d.wait_for(&["sas"], WAIT, |v| established_sas(v).len() == 1);
    d.wait_for(&["mkts"], WAIT, |v| !mkts(v).is_empty());
}

fn preload(side: &aokd_tests::Side) -> Preload {
    Preload {
        attach_socket: side.attach_socket(),
    }
}

/// BIRD in A (`a`) or B under the preload library.
fn start_bird(t: &Pair, a: bool) -> Bird {
    let (ns, side) = if a {
        (&t.a, &t.side_a)
    } else {
        (&t.b, &t.side_b)
    };
    let dir = t.root.join(if a { "bird-a" } else { "bird-b" });
    Bird::start(ns, &dir, &bird_config(a), Some(&preload(side)), None)
}

/// How much of a capture must verify with A's MKTs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// aokd was up and keyed throughout: every segment verifies.
    AllVerified,
    /// aokd was away for a while: besides the session, which verifies,
    /// there are segments signed with keys aokd no longer has or never
    /// had (the library's guard, an MKT from before a restart); none is
    /// unsigned.
    SessionVerified,
}

/// Checks the capture with `aoctl verify --from-daemon` (A's aokd): every
/// segment to or from port 179 is TCP-MD5 signed (none unsigned), and as
/// `expect` says; prints the figures.
fn assert_capture(what: &str, t: &Pair, cap: &mut netns::Capture, expect: Expect) {
    let summary = cap.stop().expect("stop tcpdump");
    let (code, v) = aoctl_verify(
        cap.file(),
        [
            OsStr::new("--from-daemon"),
            OsStr::new("--socket"),
            t.side_a.socket().as_os_str(),
        ],
    );
    let detail = || {
        format!(
            "{what}: aoctl verify {code:?}: {v:#}\ntcpdump: {summary}\n{}",
            netns::capture_text(cap.file(), "-v", 400)
        )
    };
    let conns: Vec<Value> = v["connections"].as_array().cloned().unwrap_or_default();
    let bgp: Vec<&Value> = conns
        .iter()
        .filter(|c| c["dport"] == 179 || c["sport"] == 179)
        .collect();
    assert!(!bgp.is_empty(), "no BGP connection captured\n{}", detail());
    let (mut segments, mut verified, mut other_key) = (0, 0, 0);
    let mut session = false;
    for c in &bgp {
        assert_eq!(c["unsigned"], 0, "unsigned segments: {c}\n{}", detail());
        assert_eq!(c["signing"], "tcp-md5", "{c}\n{}", detail());
        let n = c["segments"].as_u64().unwrap_or(0);
        let ok = c["verified"].as_u64().unwrap_or(0);
        if expect == Expect::AllVerified {
            assert_eq!(ok, n, "not every segment verified: {c}\n{}", detail());
        }
        // The session: its handshake and data (more than a SYN or two).
        session |= ok >= 5;
        segments += n;
        verified += ok;
        other_key += c["bad_mac"].as_u64().unwrap_or(0);
    }
    assert!(session, "no session verified\n{}", detail());
    println!(
        "{what}: {} BGP connections captured; {verified}/{segments} segments verified \
         with A's MKTs, {other_key} signed with another key (guard, or an MKT from before \
         a restart), 0 unsigned",
        bgp.len()
    );
}

#[test]
fn bird_session_routes_and_capture() {
    if !bird::prerequisites("bird_session_routes_and_capture") {
        return;
    }
    let t = Pair::new("bird", ADDR_A, ADDR_B);
    configure(&t, "");
    let mut cap = t.capture();
    let da = t.start_a();
    let db = t.start_b();
    wait_for_mkt(&da);
    wait_for_mkt(&db);

    let mut ba = start_bird(&t, true);
    let mut bb = start_bird(&t, false);
    let took = ba.wait_established(ba.started, ESTABLISH_WAIT);
    bb.wait_established(bb.started, ESTABLISH_WAIT);
    println!(
        "BIRD with aokd keyed: Established {:.2} s after BIRD started",
        took.as_secs_f64()
    );

    // Routes both ways: each static route learnt over the session.
    let on_a = ba.wait_route(ROUTE_B, WAIT);
    let on_b = bb.wait_route(ROUTE_A, WAIT);
    let route = |text: &str, prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    println!("A learnt: {}", route(&on_a, ROUTE_B));
    println!("B learnt: {}", route(&on_b, ROUTE_A));

    // Both BIRD listeners and the session's socket are attached.
    let sockets = da.aoctl(&["sockets"]).expect("aoctl sockets");
    let ours: Vec<&Value> = sockets["sockets"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| s["pid"].as_u64() == Some(u64::from(ba.pid())))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !ours.is_empty(),
        "no socket of BIRD A attached: {sockets:#}"
    );

    assert_capture("BIRD session", &t, &mut cap, Expect::AllVerified);
    drop((ba, bb));
}

#[test]
fn bird_without_the_library_is_refused() {
    if !bird::prerequisites("bird_without_the_library_is_refused") {
        return;
    }
    let t = Pair::new("birdplain", ADDR_A, ADDR_B);
    configure(&t, "");
    let da = t.start_a();
    let db = t.start_b();
    wait_for_mkt(&da);
    wait_for_mkt(&db);
    let [a0, b0] = t.netstat();

    let ba = Bird::start(&t.a, &t.root.join("bird-a"), &bird_config(true), None, None);
    let bb = start_bird(&t, false);
    // Both directions tried and dropped by the kernel: A's unsigned SYNs at
    // B's keyed listener, B's signed SYNs at A's socket without a key.
    let deadline = Instant::now() + ESTABLISH_WAIT;
    let (a1, b1) = loop {
        let [a1, b1] = t.netstat();
        let not_found = b1["TCPMD5NotFound"] - b0["TCPMD5NotFound"];
        let unexpected = a1["TCPMD5Unexpected"] - a0["TCPMD5Unexpected"];
        if not_found >= 2 && unexpected >= 2 {
            break (a1, b1);
        }
        assert!(
            Instant::now() < deadline,
            "refusals not seen: B TCPMD5NotFound +{not_found}, A TCPMD5Unexpected +{unexpected}\n{}\n{}",
            ba.report(),
            bb.report()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!ba.established(), "{}", ba.report());
    assert!(!bb.established(), "{}", bb.report());
    println!(
        "BIRD without the library refused: B TCPMD5NotFound +{}, A TCPMD5Unexpected +{}; \
         states A {:?}, B {:?}",
        b1["TCPMD5NotFound"] - b0["TCPMD5NotFound"],
        a1["TCPMD5Unexpected"] - a0["TCPMD5Unexpected"],
        ba.state(),
        bb.state()
    );
}

/// BIRD in A starts while A's aokd is not there yet: its first `listen()`
/// (and connect) find no attach socket. aokd is started once BIRD reports
/// that listen (the preload library's line on its stderr): the order a
/// BIRD started 20 ms after aokd gets wherever aokd needs longer than that
/// to create its attach socket (here it is often faster, so the test
/// makes the order certain instead of hoping for it).
#[test]
fn bird_started_before_aokd_is_ready_gets_established() {
    if !bird::prerequisites("bird_started_before_aokd_is_ready_gets_established") {
        return;
    }
    let t = Pair::new("birdcold", ADDR_A, ADDR_B);
    configure(&t, "");
    let mut cap = t.capture();
    let db = t.start_b();
    let mut bb = start_bird(&t, false);
    let mut ba = start_bird(&t, true);
    let line = ba.wait_stderr_line(WAIT, |l| l.contains("listen fd"));
    assert!(line.is_some(), "BIRD A did not listen\n{}", ba.report());
    println!(
        "BIRD A listened with no aokd: {}",
        line.unwrap_or_default().trim()
    );

    let aokd_started = Instant::now();
    let da = Daemon::start_in(&t.side_a, &t.a);
    let deadline = aokd_started + WAIT;
    while !t.side_a.attach_socket().exists() {
        assert!(Instant::now() < deadline, "no attach socket\n{}", da.log());
        std::thread::sleep(Duration::from_millis(1));
    }
    let socket_after = aokd_started.elapsed();
    let took = ba.wait_established(aokd_started, ESTABLISH_WAIT);
    bb.wait_established(aokd_started, ESTABLISH_WAIT);
    println!(
        "cold start: aokd's attach socket appeared {} ms after aokd started; \
         Established {:.2} s after aokd started, {:.2} s after BIRD started, no operator action",
        socket_after.as_millis(),
        took.as_secs_f64(),
        ba.started.elapsed().as_secs_f64() - aokd_started.elapsed().as_secs_f64()
            + took.as_secs_f64()
    );
    assert!(
        !ba.log().contains("Cannot open listening socket"),
        "{}",
        ba.report()
    );
    ba.wait_route(ROUTE_B, WAIT);
    bb.wait_route(ROUTE_A, WAIT);
    assert_capture("cold start", &t, &mut cap, Expect::SessionVerified);
    drop((da, db));
}

#[test]
fn bird_session_reset_while_aokd_is_killed_recovers() {
    if !bird::prerequisites("bird_session_reset_while_aokd_is_killed_recovers") {
        return;
    }
    let t = Pair::new("birdkill", ADDR_A, ADDR_B);
    configure(&t, "");
    let mut cap = t.capture();
    let mut da = t.start_a();
    let db = t.start_b();
    wait_for_mkt(&da);
    wait_for_mkt(&db);
    let mut ba = start_bird(&t, true);
    let mut bb = start_bird(&t, false);
    ba.wait_established(ba.started, ESTABLISH_WAIT);
    bb.wait_established(bb.started, ESTABLISH_WAIT);

    let [a0, b0] = t.netstat();
    // aokd A dies (SIGKILL), and the session is reset meanwhile: BIRD A
    // closes its listening socket and opens a new one while no aokd
    // answers.
    let _ = da.child.kill();
    let _ = da.child.wait();
    ba.skip_stderr();
    let out = ba.birdc(&["restart", ba.protocol.as_str()]);
    assert!(out.is_ok(), "birdc restart: {out:?}");
    ba.wait_not_established(WAIT);
    let line = ba.wait_stderr_line(WAIT, |l| l.contains("listen fd"));
    assert!(
        line.is_some(),
        "BIRD A did not listen again while aokd was down\n{}",
        ba.report()
    );
    println!("while aokd was down: {}", line.unwrap_or_default().trim());
    // BGP attempts while aokd is away, both ways, dropped by the kernels
    // because of the library's guard on A's sockets: B's SYNs, signed with
    // the real key, at A's guarded listener, and A's SYNs, signed with the
    // guard, at B (TCPMD5Failure on each side).
    let deadline = Instant::now() + WAIT;
    let (failures_a, failures_b) = loop {
        let [a1, b1] = t.netstat();
        let fa = a1["TCPMD5Failure"] - a0["TCPMD5Failure"];
        let fb = b1["TCPMD5Failure"] - b0["TCPMD5Failure"];
        if fa >= 1 && fb >= 1 {
            break (fa, fb);
        }
        assert!(
            Instant::now() < deadline,
            "no guarded attempt seen: A TCPMD5Failure +{fa}, B +{fb}\n{}\n{}",
            ba.report(),
            bb.report()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!ba.established() && !bb.established());
    println!(
        "while aokd was down: segments dropped for a wrong signature: A +{failures_a}, B +{failures_b}"
    );

    let restarted = Instant::now();
    let da = t.start_a();
    let took = ba.wait_established(restarted, ESTABLISH_WAIT);
    bb.wait_established(restarted, ESTABLISH_WAIT);
    println!(
        "after SIGKILL + birdc restart: Established again {:.2} s after aokd was started again",
        took.as_secs_f64()
    );
    assert!(
        !ba.log().contains("Cannot open listening socket"),
        "{}",
        ba.report()
    );
    ba.wait_route(ROUTE_B, WAIT);
    assert_capture("after aokd SIGKILL", &t, &mut cap, Expect::SessionVerified);
    drop(da);
}

#[test]
fn bird_as_unprivileged_user_with_attach_socket_group() {
    if !bird::prerequisites("bird_as_unprivileged_user_with_attach_socket_group") {
        return;
    }
    let Some((uid, gid)) = user_ids("bird") else {
        aokd_tests::host::can_run(
            "bird_as_unprivileged_user_with_attach_socket_group",
            &["the user bird (Debian's bird2 package creates it)".to_string()],
        );
        return;
    };
    let t = Pair::new("birduser", ADDR_A, ADDR_B);
    // BIRD running as bird must reach the attach socket in A's directory.
    use std::os::unix::fs::PermissionsExt;
    for d in [&t.root, &t.side_a.dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    }
    configure(&t, "attach_socket_group = \"bird\"\n");
    let da = t.start_a();
    let db = t.start_b();
    wait_for_mkt(&da);
    wait_for_mkt(&db);
    let mut ba = Bird::start(
        &t.a,
        &t.root.join("bird-a"),
        &bird_config(true),
        Some(&preload(&t.side_a)),
        Some(("bird", uid, gid)),
    );
    let mut bb = start_bird(&t, false);
    let took = ba.wait_established(ba.started, ESTABLISH_WAIT);
    bb.wait_established(bb.started, ESTABLISH_WAIT);
    let status = std::fs::read_to_string(format!("/proc/{}/status", ba.pid())).unwrap_or_default();
    let runs_as = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|u| u.parse::<u32>().ok());
    assert_eq!(runs_as, Some(uid), "BIRD does not run as bird: {status}");
    ba.wait_route(ROUTE_B, WAIT);
    println!(
        "BIRD as user bird (uid {uid}): Established {:.2} s after it started",
        took.as_secs_f64()
    );
    assert!(
        Path::new(&t.side_a.attach_socket()).exists(),
        "attach socket gone"
    );
}

/// The uid and gid of `name`, from /etc/passwd.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name) && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    })
}
