//! `scale-bench`: aokd and strongSwan 5.9.8 as IKEv2 responders under the
//! same load, one after the other in the same run (issue: scale; figures in
//! docs/performance.md). A benchmark, not a test: run it from a release
//! build, as root, with Debian's strongswan-charon and strongswan-swanctl:
//!
//! ```text
//! cargo build --release --workspace && sudo target/release/scale-bench [PEERS] [CONCURRENCY...]
//! ```
//!
//! In a network namespace of its own (loopback only), for each
//! concurrency (default 8 and 64) and PEERS (default 1,000) initiators from
//! 127.16.0.1 on (`ike-load --mode storm`; the responders listen on port
//! 500, so charon, which drops IKE datagrams when neither port is 500,
//! takes them from any source port):
//!
//! - aokd on 127.0.0.1:500 with PEERS configured peers, a fresh state
//!   directory each run (a cold storm: every handshake creates its IKE SA
//!   and MKT);
//! - charon with `threads = 16`, `ikesa_table_size = 16384`,
//!   `init_limit_half_open = 0`, with DoS protection on and off, one
//!   connection whose `remote_addrs` covers 127.16.0.0/16 (childless IKE
//!   SAs, RFC 6023, as ike-load makes them toward a non-aokd responder).
//!
//! Prints each run's `ike-load` summary and the ratios of rates and p99
//! latencies. Needs the process's descriptor limit above PEERS (one socket
//! per initiator in flight only; PEERS addresses are bound one at a time).

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use aokd_tests::netns::Netns;
use aokd_tests::strongswan::{Charon, CharonConfig};
use aokd_tests::{binary, temp_dir};
use serde_json::Value;

const PSK_HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const FIRST: [u8; 4] = [127, 16, 0, 1];

fn nth_source(k: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from_be_bytes(FIRST).wrapping_add(k))
}

/// aokd's configuration for `peers` initiators, in `dir`.
fn aokd_config(dir: &Path, peers: u32) -> std::path::PathBuf {
    let psk = dir.join("psk");
    fs::write(&psk, format!("{PSK_HEX}\n")).expect("psk");
    fs::set_permissions(&psk, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let mut text = format!(
        "[daemon]\nlisten = [\"127.0.0.1\"]\nport = 500\ncontrol_socket = \"{d}/control.sock\"\n\
         attach_socket = \"{d}/attach.sock\"\nstate_dir = \"{d}/state\"\n\n",
        d = dir.display()
    );
    for k in 0..peers {
        text.push_str(&format!(
            "[[peer]]\nname = \"p{k}\"\nremote = \"{}\"\nremote_port = 500\npsk_file = \"{}\"\ninitiate = false\n\n",
            nth_source(k),
            psk.display()
        ));
    }
    let file = dir.join("aokd.toml");
    fs::write(&file, text).expect("config");
    file
}

/// Runs ike-load in `ns`; its summary.
fn load(ns: &Netns, psk: &Path, peers: u32, concurrency: u32) -> Value {
    let out = ns
        .command(binary("ike-load"))
        .args(["--target", "127.0.0.1:500", "--peers", &peers.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--timeout", "60"])
        .arg("--psk-file")
        .arg(psk)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .expect("run ike-load");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .rev()
        .find(|l| l.contains("summary"))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("ike-load printed no summary: {text}"))
}

fn wait_for_port(ns: &Netns) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let out = ns
            .run("ss", &["-Hlun", "sport", "= :500"])
            .map(|o| o.stdout)
            .unwrap_or_default();
        if !out.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on UDP 500 in {}", ns.name());
}

fn main() {
    let mut args = std::env::args().skip(1);
    let peers: u32 = args.next().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let mut conc: Vec<u32> = args.filter_map(|v| v.parse().ok()).collect();
    if conc.is_empty() {
        conc = vec![8, 64];
    }
    let psk = temp_dir("scale-psk").join("psk");
    fs::write(&psk, format!("{PSK_HEX}\n")).expect("psk");
    let ns = Netns::new().expect("network namespace (needs root)");
    let mut rows: Vec<(String, u32, Value)> = Vec::new();
    for &c in &conc {
        // aokd, cold.
        let dir = temp_dir("scale-aokd");
        let cfg = aokd_config(&dir, peers);
        let mut aokd = ns
            .command(binary("aokd"))
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aokd");
        wait_for_port(&ns);
        let s = load(&ns, &psk, peers, c);
        println!("aokd        c={c:<3} {s}");
        rows.push(("aokd".into(), c, s));
        let _ = aokd.kill();
        let _ = aokd.wait();
        for dos in ["yes", "no"] {
            let dir = temp_dir("scale-charon");
            let mut cc = CharonConfig::new("127.0.0.1", "127.16.0.0/16", PSK_HEX);
            cc.remote_id = Some("%any".into());
            cc.conn_extra = "        rekey_time = 0\n        dpd_delay = 0\n".into();
            cc.charon_extra = format!(
                "    threads = 16\n    ikesa_table_size = 16384\n    ikesa_table_segments = 16\n    \
                 init_limit_half_open = 0\n    dos_protection = {dos}\n    \
                 filelog {{\n        stderr {{\n            default = -1\n            ike = -1\n            net = -1\n        }}\n    }}\n"
            );
            let charon = match Charon::start(&ns, &dir, cc) {
                Ok(c) => c,
                Err(e) => panic!("charon: {e}"),
            };
            let s = load(&ns, &psk, peers, c);
            println!("strongswan  c={c:<3} dos_protection={dos:<3} {s}");
            rows.push((format!("strongswan dos={dos}"), c, s));
            drop(charon);
        }
    }
    println!("\nsummary ({peers} peers, cold storm):");
    for &c in &conc {
        let get = |who: &str| {
            rows.iter()
                .find(|r| r.0 == who && r.1 == c)
                .map(|r| r.2.clone())
        };
        let (Some(a), Some(s_on), Some(s_off)) = (
            get("aokd"),
            get("strongswan dos=yes"),
            get("strongswan dos=no"),
        ) else {
            continue;
        };
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        for (name, s) in [("dos on", &s_on), ("dos off", &s_off)] {
            println!(
                "c={c:<3} aokd {:>6.0}/s p99 {:>7.1} ms | strongSwan ({name}) {:>6.0}/s p99 {:>7.1} ms | rate x{:.1}, p99 /{:.1}",
                f(&a, "rate"),
                f(&a, "latency_ms_p99"),
                f(s, "rate"),
                f(s, "latency_ms_p99"),
                f(&a, "rate") / f(s, "rate"),
                f(s, "latency_ms_p99") / f(&a, "latency_ms_p99"),
            );
        }
    }
}
