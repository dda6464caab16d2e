//! `startup-bench`: how long aokd takes from its start to its first MKT on
//! a socket, on loopback (issue: scale). A benchmark, not a test: run it
//! from a release build, as root (TCP-MD5 keys on the host kernel):
//!
//! ```text
//! cargo build --release --workspace && sudo target/release/startup-bench [ROUNDS]
//! ```
//!
//! A responder aokd A (127.0.0.1) runs throughout. Each round starts an
//! aokd B (127.0.0.2, `initiate = true`, one peer: A) and, as soon as B's
//! attach socket exists, attaches a TCP socket toward A's BGP port with
//! the attach API (role `connect`, as a routing daemon would before its
//! `connect()`). aokd answers that call once the MKT it negotiated with A
//! is durable in its state file and its key is on the socket (TCP-MD5 on
//! the host kernel): the round's figure is from just before B's `spawn` to
//! that answer. B is then stopped with SIGTERM. ROUNDS (default 20) rounds
//! with a new state directory (B's first start; A is started afresh
//! before it, since a B without its state file may pick a KeyID that A
//! still keeps from B's earlier life) and as many with the state file of
//! the round before (a restart), each printed, then the
//! median, minimum and largest of each kind, and B's own log times of the
//! phases of the last round (start, state file opened, event loop
//! running).

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aokd_tests::sock::tcp_socket;
use aokd_tests::{binary, temp_dir, Daemon, Side};

const PSK: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// The port the peers' MKTs cover (aokd's default, BGP).
const BGP: u16 = 179;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ROUNDS: a number"))
        .unwrap_or(20);
    let root = temp_dir("startup-bench");
    let a = Side::new(&root, "a", "127.0.0.1");
    let b = Side::new(&root, "b", "127.0.0.2");
    a.write_config_with(&b, PSK, "", "initiate = false");
    b.write_config_with(&a, PSK, "", "initiate = true");
    let start_responder = || {
        let _ = fs::remove_dir_all(a.dir.join("state"));
        let d = Daemon::start(&a);
        d.wait_for(&["status"], Duration::from_secs(10), |v| v.is_object());
        d
    };
    let mut responder = start_responder();

    let mut new_state = Vec::new();
    let mut restart = Vec::new();
    let mut phases = String::new();
    for round in 0..rounds {
        for kind in ["new state", "restart"] {
            if kind == "new state" {
                // A B without its state file does not know the KeyIDs of
                // its MKTs that A still keeps (retired, within the
                // overlap), and may pick one: A refuses it. A starts
                // afresh too, before the clock starts.
                let _ = fs::remove_dir_all(b.dir.join("state"));
                drop(responder);
                responder = start_responder();
            }
            let (took, log) = start_to_first_mkt(&b);
            println!("round {round:>3} {kind:<9} start to first MKT on a socket: {took:.2} ms");
            if kind == "new state" {
                new_state.push(took);
            } else {
                restart.push(took);
            }
            phases = log;
        }
    }
    assert!(responder.running(), "aokd A stopped:\n{}", responder.log());
    println!("\nB's log in the last round (times from its first line):\n{phases}");
    println!("summary (start to first MKT on a socket, loopback, {rounds} rounds each):");
    for (kind, v) in [("new state", &mut new_state), ("restart", &mut restart)] {
        v.sort_by(f64::total_cmp);
        println!(
            "  {kind:<9} median {:.2} ms, min {:.2} ms, max {:.2} ms",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        );
    }
    println!(
        "load average {}",
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// Starts B, attaches a socket toward A as soon as B's attach socket
/// exists, and returns the milliseconds from the start to aokd's answer
/// that the key is on it, with B's log lines of its start-up phases.
fn start_to_first_mkt(b: &Side) -> (f64, String) {
    let attach = b.attach_socket();
    let _ = fs::remove_file(&attach);
    let started = Instant::now();
    let mut child = Command::new(binary("aokd"))
        .arg("--config")
        .arg(b.config_path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start aokd B");
    // The socket file appearing is no event to wait on: a tight poll (the
    // figure would otherwise include a sleep's granularity).
    let deadline = started + Duration::from_secs(10);
    while !attach.exists() {
        assert!(Instant::now() < deadline, "B made no attach socket");
        assert!(child.try_wait().ok().flatten().is_none(), "B exited");
        std::thread::yield_now();
    }
    let a = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), BGP);
    let fd = tcp_socket(a).expect("socket");
    let reply = attach_when_listening(&attach, &fd, a, deadline);
    let took = started.elapsed().as_secs_f64() * 1e3;
    match &reply {
        Ok(r) if r.installed == aokd_api::attach::Installed::Keys => {}
        other => panic!("B's attach answer: {other:?}"),
    }
    drop(fd);
    let log = stop(&mut child);
    (took, log)
}

/// Attaches `fd` (role connect toward `a`); the attach socket may exist a
/// moment before it listens.
fn attach_when_listening(
    path: &Path,
    fd: &impl AsFd,
    a: SocketAddr,
    deadline: Instant,
) -> Result<aokd_attach::Attached, aokd_attach::AttachError> {
    loop {
        match aokd_attach::attach_connect(path, fd, a, Some(Duration::from_secs(5))) {
            Err(e) if Instant::now() < deadline && e.to_string().contains("refused") => {
                std::thread::yield_now()
            }
            r => return r,
        }
    }
}

/// Stops B with SIGTERM and returns its start-up log lines, each with its
/// time from the first line.
fn stop(child: &mut Child) -> String {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let stderr = child.stderr.take().expect("stderr");
    let lines: Vec<String> = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .collect();
    let _ = child.wait();
    let mut first = None;
    let mut out = String::new();
    for line in &lines {
        let wanted = [
            "starting",
            "state file opened",
            "aokd running",
            "MKT negotiated",
        ];
        if !wanted.iter().any(|w| line.contains(w)) {
            continue;
        }
        let Some(t) = line.split_whitespace().next().and_then(micros_of_day) else {
            continue;
        };
        let t0 = *first.get_or_insert(t);
        let what = line.split_whitespace().skip(2).take(5).collect::<Vec<_>>();
        out.push_str(&format!(
            "  {:>7.2} ms  {}\n",
            (t - t0) as f64 / 1e3,
            what.join(" ")
        ));
    }
    out
}

/// Microseconds since midnight of a log line's RFC 3339 time
/// (`2026-12-03T07:30:16.779770Z`).
fn micros_of_day(stamp: &str) -> Option<i64> {
    let time = stamp.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some((h * 3600 + m * 60) * 1_000_000 + (s * 1e6).round() as i64)
}
