//! `scale-bench`: aokd and strongSwan 5.9.8 as IKEv2 responders under the
//! same load, one after the other in the same run (issue: scale; figures in
//! docs/performance.md). A benchmark, not a test: run it from a release
//! build, as root, with Debian's strongswan-charon and strongswan-swanctl:
//!
//! ```text
//! cargo build --release --workspace && sudo target/release/scale-bench [PEERS] [CONCURRENCY...] \
//!     [--auth psk|pubkey] [--key-type ed25519|p256|p384] [--pin] [--group]
//! ```
//!
//! `--group` (with `--auth pubkey`): aokd has one `[[peer_group]]` whose
//! prefix covers the initiators (127.16.0.0/16), as charon has one
//! connection, instead of PEERS `[[peer]]` tables; each initiator becomes
//! a member when its IKE_SA_INIT arrives.
//!
//! `--pin`: the responder (aokd with its state writer, or charon with all
//! its threads) runs on CPU 0 and the load generator on CPU 1 (taskset(1)),
//! as the issue measures: one core each.
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
//! With `--auth pubkey` (issue 12) both responders authenticate by
//! certificate instead of the PSK, with keys of `--key-type` (default
//! ed25519): a CA and the responders' certificate for 127.0.0.1 are made
//! first (`aokd_tests::pki::gen_certs`, as `ike-load gen-certs`), aokd has
//! `auth = "pubkey"` with them in each `[[peer]]`, charon a connection with
//! `auth = pubkey` on both sides (certificate, CA and key in a swanctl
//! tree of its own), and ike-load gives each initiator its own
//! certificate from that CA before its clock starts.
//!
//! `SCALE_BENCH_CHARON_LOG=1` keeps charon's log on (it is off for the
//! figures) and prints its end after each run.
//!
//! Prints each run's `ike-load` summary (with the responder's resident
//! memory before and after the storm, and its growth per handshake) and
//! the ratios of rates and p99 latencies. Needs the process's descriptor limit above PEERS (one socket
//! per initiator in flight only; PEERS addresses are bound one at a time).

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use aokd_tests::netns::Netns;
use aokd_tests::pki::{self, GeneratedCerts, KeyType};
use aokd_tests::strongswan::{Charon, CharonConfig};
use aokd_tests::{binary, temp_dir};
use serde_json::Value;

const PSK_HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const FIRST: [u8; 4] = [127, 16, 0, 1];
/// With `--pin`: the responder's CPU and the load generator's.
const RESPONDER_CPU: &str = "0";
const GENERATOR_CPU: &str = "1";

fn nth_source(k: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from_be_bytes(FIRST).wrapping_add(k))
}

/// How the initiators and the responders authenticate.
enum Auth {
    /// The PSK file (PSK_HEX).
    Psk(std::path::PathBuf),
    /// Certificates from one CA, keys of this type.
    Pubkey(GeneratedCerts, KeyType),
}

impl Auth {
    /// ike-load's arguments for this authentication.
    fn load_args(&self) -> Vec<String> {
        match self {
            Auth::Psk(psk) => vec!["--psk-file".into(), psk.display().to_string()],
            Auth::Pubkey(f, kt) => vec![
                "--auth".into(),
                "pubkey".into(),
                "--ca-cert".into(),
                f.ca_cert.display().to_string(),
                "--ca-key".into(),
                f.ca_key.display().to_string(),
                "--key-type".into(),
                kt.name().into(),
            ],
        }
    }

    fn name(&self) -> String {
        match self {
            Auth::Psk(_) => "psk".into(),
            Auth::Pubkey(_, kt) => format!("pubkey {}", kt.name()),
        }
    }
}

/// aokd's configuration for `peers` initiators, in `dir`.
fn aokd_config(dir: &Path, peers: u32, auth: &Auth, group: bool) -> std::path::PathBuf {
    let psk = dir.join("psk");
    fs::write(&psk, format!("{PSK_HEX}\n")).expect("psk");
    fs::set_permissions(&psk, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let peer_auth = match auth {
        Auth::Psk(_) => format!("psk_file = \"{}\"", psk.display()),
        Auth::Pubkey(f, _) => format!(
            "auth = \"pubkey\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\nca = \"{}\"",
            f.responder_cert.display(),
            f.responder_key.display(),
            f.ca_cert.display()
        ),
    };
    let mut text = format!(
        "[daemon]\nlisten = [\"127.0.0.1\"]\nport = 500\ncontrol_socket = \"{d}/control.sock\"\n\
         attach_socket = \"{d}/attach.sock\"\nstate_dir = \"{d}/state\"\n\n",
        d = dir.display()
    );
    if group {
        text.push_str(&format!(
            "[[peer_group]]\nname = \"load\"\nremote = [\"127.16.0.0/16\"]\nremote_port = 500\n{peer_auth}\n\n"
        ));
    } else {
        for k in 0..peers {
            text.push_str(&format!(
                "[[peer]]\nname = \"p{k}\"\nremote = \"{}\"\nremote_port = 500\n{peer_auth}\ninitiate = false\n\n",
                nth_source(k),
            ));
        }
    }
    let file = dir.join("aokd.toml");
    fs::write(&file, text).expect("config");
    file
}

/// Replaces the PSK connection [`Charon::start`] loaded with one that
/// authenticates both sides by certificate (`auth = pubkey`), the identity
/// 127.0.0.1 (the certificate's SAN IP) locally and any identity its
/// certificate names from the initiators. swanctl takes its credential
/// directories from the directory of the file it loads, and keys only from
/// those (`secrets.private*.file` only names the key a passphrase is for),
/// so the files go into a swanctl tree of their own: `swanctl/x509`
/// (charon's certificate), `x509ca` (the CA), `private` (its key, 0600).
fn charon_pubkey(charon: &Charon, f: &GeneratedCerts) {
    let base = charon.dir.join("swanctl");
    for (from, sub, private) in [
        (&f.responder_cert, "x509", false),
        (&f.ca_cert, "x509ca", false),
        (&f.responder_key, "private", true),
    ] {
        let dir = base.join(sub);
        fs::create_dir_all(&dir).expect("swanctl directory");
        let name = from.file_name().expect("file name");
        let text = fs::read(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        pki::write_file(&dir.join(name), &text, private).expect("swanctl file");
    }
    let text = format!(
        r#"connections {{
    {conn} {{
        version = 2
        local_addrs = 127.0.0.1
        remote_addrs = 127.16.0.0/16
        proposals = aes256gcm16-prfsha256-x25519
        rekey_time = 0
        dpd_delay = 0
        local {{
            auth = pubkey
            certs = {cert}
            id = 127.0.0.1
        }}
        remote {{
            auth = pubkey
            cacerts = {ca}
            id = %any
        }}
    }}
}}
"#,
        conn = charon.cfg.conn,
        cert = f
            .responder_cert
            .file_name()
            .expect("name")
            .to_string_lossy(),
        ca = f.ca_cert.file_name().expect("name").to_string_lossy(),
    );
    let file = base.join("swanctl.conf");
    fs::write(&file, text).expect("swanctl.conf");
    let file = file.to_string_lossy().into_owned();
    match charon.swanctl(&["--load-all", "--noprompt", "--file", &file]) {
        Ok(out) if out.contains("loaded ") && out.contains("private key") => {}
        Ok(out) => panic!("charon: swanctl loaded no private key from {file}:\n{out}"),
        Err(e) => panic!(
            "charon: loading the certificate connection: {e}\n{}",
            charon.log()
        ),
    }
}

/// Runs ike-load in `ns`; its summary.
fn load(ns: &Netns, auth: &Auth, peers: u32, concurrency: u32, pin: bool) -> Value {
    let mut cmd = if pin {
        let mut c = ns.command("taskset");
        c.args(["-c", GENERATOR_CPU]).arg(binary("ike-load"));
        c
    } else {
        ns.command(binary("ike-load"))
    };
    let out = cmd
        .args(["--target", "127.0.0.1:500", "--peers", &peers.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--timeout", "60"])
        .args(auth.load_args())
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

/// A process's resident memory in KiB (`VmRSS`), 0 when unreadable.
fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `summary` with the responder's resident memory before and after the
/// storm, and the growth per handshake completed.
fn with_memory(mut summary: Value, before: u64, after: u64) -> Value {
    let done = summary["completed"].as_u64().unwrap_or(0).max(1);
    summary["rss_kib_before"] = before.into();
    summary["rss_kib_after"] = after.into();
    summary["rss_bytes_per_handshake"] = (after.saturating_sub(before) * 1024 / done).into();
    summary
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

/// Waits until aokd answers on its control socket: it does once its
/// event loop runs (a large configuration takes a while to read, and a
/// storm sent before would be retransmissions).
fn wait_until_running(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let sock = dir.join("control.sock");
    while Instant::now() < deadline {
        let ok = std::process::Command::new(binary("aoctl"))
            .arg("--socket")
            .arg(&sock)
            .arg("status")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("aokd did not answer on {} within 60 s", sock.display());
}

fn main() {
    let mut numbers: Vec<u32> = Vec::new();
    let (mut pubkey, mut key_type, mut pin, mut group) = (false, KeyType::Ed25519, false, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--auth" => {
                pubkey = match args.next().as_deref() {
                    Some("psk") => false,
                    Some("pubkey") => true,
                    other => panic!("--auth {other:?}: psk or pubkey"),
                }
            }
            "--pin" => pin = true,
            "--group" => group = true,
            "--key-type" => {
                let v = args.next().unwrap_or_default();
                key_type = KeyType::parse(&v).unwrap_or_else(|e| panic!("--key-type: {e}"));
            }
            n => {
                numbers.push(n.parse().unwrap_or_else(|e| {
                    panic!("{n:?}: not a number of peers or a concurrency ({e})")
                }))
            }
        }
    }
    assert!(
        !group || pubkey,
        "--group needs --auth pubkey (peer groups authenticate by certificate only)"
    );
    let peers: u32 = numbers.first().copied().unwrap_or(1000);
    let mut conc: Vec<u32> = numbers.iter().skip(1).copied().collect();
    if conc.is_empty() {
        conc = vec![8, 64];
    }
    let psk = temp_dir("scale-psk").join("psk");
    fs::write(&psk, format!("{PSK_HEX}\n")).expect("psk");
    let auth = if pubkey {
        let dir = temp_dir("scale-certs");
        let localhost = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        let files = pki::gen_certs(&dir, localhost, key_type)
            .unwrap_or_else(|e| panic!("certificates: {e}"));
        Auth::Pubkey(files, key_type)
    } else {
        Auth::Psk(psk)
    };
    let charon_log = std::env::var_os("SCALE_BENCH_CHARON_LOG").is_some();
    let ns = Netns::new().expect("network namespace (needs root)");
    let mut rows: Vec<(String, u32, Value)> = Vec::new();
    for &c in &conc {
        // aokd, cold.
        let dir = temp_dir("scale-aokd");
        let cfg = aokd_config(&dir, peers, &auth, group);
        let mut aokd = if pin {
            let mut c = ns.command("taskset");
            c.args(["-c", RESPONDER_CPU]).arg(binary("aokd"));
            c
        } else {
            ns.command(binary("aokd"))
        };
        let mut aokd = aokd
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aokd");
        wait_for_port(&ns);
        wait_until_running(&dir);
        let before = rss_kib(aokd.id());
        let s = load(&ns, &auth, peers, c, pin);
        let s = with_memory(s, before, rss_kib(aokd.id()));
        println!("aokd        c={c:<3} {s}");
        rows.push(("aokd".into(), c, s));
        let _ = aokd.kill();
        let _ = aokd.wait();
        for dos in ["yes", "no"] {
            let dir = temp_dir("scale-charon");
            let mut cc = CharonConfig::new("127.0.0.1", "127.16.0.0/16", PSK_HEX);
            cc.remote_id = Some("%any".into());
            cc.cpus = pin.then(|| RESPONDER_CPU.to_string());
            cc.conn_extra = "        rekey_time = 0\n        dpd_delay = 0\n".into();
            // Logging off (it costs charon), unless SCALE_BENCH_CHARON_LOG
            // is set: then its log's end is printed after each run.
            let quiet = "    filelog {\n        stderr {\n            default = -1\n            ike = -1\n            net = -1\n        }\n    }\n";
            cc.charon_extra = format!(
                "    threads = 16\n    ikesa_table_size = 16384\n    ikesa_table_segments = 16\n    \
                 init_limit_half_open = 0\n    dos_protection = {dos}\n{}",
                if charon_log { "" } else { quiet }
            );
            let charon = match Charon::start(&ns, &dir, cc) {
                Ok(c) => c,
                Err(e) => panic!("charon: {e}"),
            };
            if let Auth::Pubkey(files, _) = &auth {
                charon_pubkey(&charon, files);
            }
            let before = rss_kib(charon.pid());
            let s = load(&ns, &auth, peers, c, pin);
            let s = with_memory(s, before, rss_kib(charon.pid()));
            println!("strongswan  c={c:<3} dos_protection={dos:<3} {s}");
            if charon_log {
                let log = charon.log();
                let lines: Vec<&str> = log.lines().collect();
                println!(
                    "charon's log, last lines:\n{}",
                    lines[lines.len().saturating_sub(60)..].join("\n")
                );
            }
            rows.push((format!("strongswan dos={dos}"), c, s));
            drop(charon);
        }
    }
    let load_avg = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nsummary ({peers} peers, cold storm, {}, {}; load average {}):",
        auth.name(),
        if pin {
            "responder on CPU 0, generator on CPU 1"
        } else {
            "not pinned"
        },
        load_avg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
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
                "c={c:<3} aokd {:>6.0}/s p99 {:>7.1} ms +{:>5.0} B/SA | strongSwan ({name}) {:>6.0}/s p99 {:>7.1} ms +{:>5.0} B/SA | rate x{:.1}, p99 /{:.1}",
                f(&a, "rate"),
                f(&a, "latency_ms_p99"),
                f(&a, "rss_bytes_per_handshake"),
                f(s, "rate"),
                f(s, "latency_ms_p99"),
                f(s, "rss_bytes_per_handshake"),
                f(&a, "rate") / f(s, "rate"),
                f(s, "latency_ms_p99") / f(&a, "latency_ms_p99"),
            );
        }
    }
}
