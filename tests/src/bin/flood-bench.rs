//! `flood-bench`: what a flood of forged IKE_SA_INIT costs aokd, and
//! whether a real peer still keys during it (issue: hardening; figures in
//! docs/performance.md). A benchmark, not a test: run it from a release
//! build, as root:
//!
//! ```text
//! cargo build --release --workspace && sudo target/release/flood-bench [RATE] [SECONDS]
//! ```
//!
//! Two real aokd on loopback: A (127.0.0.1, initiator) and B (127.0.0.2,
//! the responder under attack). Once they are keyed, `ike-flood` sends
//! RATE (default 100,000) forged IKE_SA_INIT a second for SECONDS (20) to
//! B, half from random addresses in 127.0.0.0/8 and half from A's own
//! address with random ports. During the flood A is restarted (SIGKILL,
//! start) and later asked to `aoctl rekey`; each time the time until both
//! hold a new MKT is measured. B's CPU time and resident memory are
//! sampled every second, and its drop and cookie counters read at the end.
//! Prints one line per second and a summary; exits 1 if a keying took
//! longer than 2 s or did not happen.

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aokd_tests::{binary, loopback_pair, mkts, Daemon};
use serde_json::Value;

const PSK: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";
/// The longest a keying during the flood may take.
const KEYED_WITHIN: Duration = Duration::from_secs(2);

fn fingerprints(d: &Daemon) -> BTreeSet<String> {
    d.aoctl(&["mkts"])
        .map(|v| {
            mkts(&v)
                .iter()
                .filter_map(|m| m["key_fingerprint"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until both daemons hold an MKT that is not in `old`; the time it
/// took, or `None` after `limit`.
fn new_mkt_on_both(
    a: &Daemon,
    b: &Daemon,
    old: &BTreeSet<String>,
    limit: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let fa = fingerprints(a);
        if let Some(new) = fa.iter().find(|f| !old.contains(*f)) {
            if fingerprints(b).contains(new) {
                return Some(t0.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// (CPU seconds, resident KiB) of `pid`.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime is the 12th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf with a constant name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (ticks(11) + ticks(12)) / hz.max(1.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (cpu, rss)
}

/// The kernel's UDP counters (`/proc/net/snmp`): datagrams received and
/// dropped for a full receive buffer.
fn udp_counters() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return (0, 0);
    };
    let get = |name: &str| {
        names
            .split_whitespace()
            .position(|n| n == name)
            .and_then(|i| values.split_whitespace().nth(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("InDatagrams"), get("RcvbufErrors"))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rate: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let seconds: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(20);
    let (a, b) = loopback_pair("flood", PSK);
    let mut da = Daemon::start(&a);
    let db = Daemon::start(&b);
    let empty = BTreeSet::new();
    let first = new_mkt_on_both(&da, &db, &empty, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("A and B never keyed\nA:\n{}\nB:\n{}", da.log(), db.log()));
    let pid_b = db.child.id();
    let (cpu0, rss0) = usage(pid_b);
    println!(
        "keyed before the flood in {:.0} ms; B: RSS {rss0} KiB; flooding {}:{} with {rate}/s for {seconds} s",
        first.as_secs_f64() * 1e3,
        b.ip,
        b.port
    );

    let mut flood = Command::new(binary("ike-flood"))
        .args(["--target", &format!("{}:{}", b.ip, b.port)])
        .args([
            "--rate",
            &rate.to_string(),
            "--seconds",
            &seconds.to_string(),
        ])
        .args(["--from", "random", "--from", &a.ip])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ike-flood");
    let udp0 = udp_counters();
    let t0 = Instant::now();
    // B's CPU and memory, once a second, on a thread of their own (the
    // keyings below block).
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let sampler = std::thread::spawn(move || {
        let mut samples: Vec<(u64, f64, u64)> = Vec::new();
        let mut last = cpu0;
        for second in 1.. {
            let due = t0 + Duration::from_secs(second);
            let wait = due.saturating_duration_since(Instant::now());
            if stopped.recv_timeout(wait).is_ok() {
                break;
            }
            let (cpu, rss) = usage(pid_b);
            println!(
                "t={second:>2} s  B: CPU {:>3.0} %  RSS {rss} KiB",
                (cpu - last) * 100.0
            );
            samples.push((second, cpu - last, rss));
            last = cpu;
        }
        samples
    });
    let mut keyings: Vec<(String, f64, Option<Duration>)> = Vec::new();
    let at = |secs: f64| {
        let due = t0 + Duration::from_secs_f64(secs);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        t0.elapsed().as_secs_f64()
    };
    for (when, what) in [
        (3.0, "A restarted"),
        (8.0, "aoctl rekey b"),
        (13.0, "A restarted again"),
    ] {
        if when + 2.0 > seconds as f64 {
            break;
        }
        let t = at(when);
        let old = fingerprints(&da);
        let took = if what.starts_with("aoctl") {
            da.aoctl(&["rekey", "b"])
                .ok()
                .and_then(|_| new_mkt_on_both(&da, &db, &old, Duration::from_secs(10)))
        } else {
            let _ = da.child.kill();
            let _ = da.child.wait();
            da = Daemon::start(&a);
            new_mkt_on_both(&da, &db, &old, Duration::from_secs(10))
        };
        keyings.push((what.to_string(), t, took));
    }
    let _ = flood.wait();
    let _ = stop.send(());
    let samples = sampler.join().unwrap_or_default();
    let mut out = String::new();
    if let Some(mut o) = flood.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let summary: Value = out
        .lines()
        .rev()
        .find(|l| l.contains("summary"))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    let (cpu1, rss1) = usage(pid_b);
    let status = db.aoctl(&["status"]).unwrap_or_else(|e| {
        eprintln!("aoctl status on B: {e}");
        Value::Null
    });
    let dos = &status["dos"];
    println!("\nflood: {summary}");
    println!(
        "B during the flood: CPU {:.1} s in {:.1} s ({:.0} % of one core); RSS {rss0} KiB before, at most {} KiB, {rss1} KiB after",
        cpu1 - cpu0,
        t0.elapsed().as_secs_f64(),
        (cpu1 - cpu0) / t0.elapsed().as_secs_f64() * 100.0,
        samples.iter().map(|s| s.2).max().unwrap_or(rss1)
    );
    println!("B's counters: {dos}");
    let udp1 = udp_counters();
    println!(
        "kernel UDP (all sockets): {} datagrams received, {} dropped for a full receive buffer",
        udp1.0 - udp0.0,
        udp1.1 - udp0.1
    );
    let mut ok = true;
    for (what, at, took) in &keyings {
        match took {
            Some(d) => {
                println!(
                    "{what} at {at:.1} s: both keyed with a new MKT in {:.0} ms",
                    d.as_secs_f64() * 1e3
                );
                ok &= *d <= KEYED_WITHIN;
            }
            None => {
                println!("{what} at {at:.1} s: NOT keyed within 10 s");
                ok = false;
            }
        }
    }
    if !ok {
        eprintln!(
            "a keying took longer than {KEYED_WITHIN:?}\nB log tail:\n{}",
            {
                let log = db.log();
                log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
            }
        );
        std::process::exit(1);
    }
}
