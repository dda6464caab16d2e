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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

/// Seconds the guest may run before run.sh kills qemu. The stream stops after at
/// most 300 s (the guest script's `E2E_MAX_S`); a normal run takes about 200 s.
const VM_TIMEOUT_S: u32 = 600;
/// Rollovers each socket must see (the guest script's `E2E_ROLLOVERS`).
const ROLLOVERS: u64 = 20;

fn vm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vm")
}

/// target/<profile>/, where cargo puts aokd and aoctl.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf()
}

/// The host programs that go into the VM's /opt/aokd/bin: (name, host path).
fn programs() -> Vec<(&'static str, PathBuf)> {
    let t = target_dir();
    vec![
        ("aokd", t.join("aokd")),
        ("aoctl", t.join("aoctl")),
        (
            "stream-peer",
            PathBuf::from(env!("CARGO_BIN_EXE_stream-peer")),
        ),
    ]
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn on_path(cmd: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .any(|d| d.join(cmd).is_file())
}

/// What is missing that the scripts cannot install themselves (they install Debian
/// packages only as root), and binaries `cargo build --workspace` should have built.
fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        missing.push("an x86-64 Linux host".to_string());
        return missing;
    }
    if !on_path("bash") || !Path::new("/usr/bin/dpkg-query").exists() {
        missing.push("bash and dpkg (a Debian host)".to_string());
        return missing;
    }
    if in_ci() && !is_root() {
        missing.push("root (CI must be able to apt-get install the VM's packages)".to_string());
    }
    if !on_path("strip") {
        missing.push("strip (binutils)".to_string());
    }
    if !is_root() {
        for (what, present) in [
            ("qemu-system-x86_64", on_path("qemu-system-x86_64")),
            ("gcc", on_path("gcc")),
            ("/bin/busybox", Path::new("/bin/busybox").exists()),
            ("ip (iproute2)", on_path("ip")),
            ("tcpdump", on_path("tcpdump")),
            (
                "/usr/src/linux-source-6.12.tar.xz",
                Path::new("/usr/src/linux-source-6.12.tar.xz").exists(),
            ),
        ] {
            if !present {
                missing.push(format!("{what} (not root, so it cannot be installed)"));
            }
        }
    }
    for (name, path) in programs() {
        if !path.exists() {
            missing.push(format!(
                "{name} at {} (run `cargo build --workspace`, which builds it)",
                path.display()
            ));
        }
    }
    missing
}

fn show(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Copies `src` to `dst` without debug information (`strip --strip-debug`).
fn strip_copy(src: &Path, dst: &Path) {
    let out = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(dst)
        .arg(src)
        .output()
        .expect("run strip");
    assert!(
        out.status.success(),
        "strip {} failed\n{}",
        src.display(),
        show(&out)
    );
}

/// The guest's `E2E-RESULT` lines, by case.
struct Results {
    cases: HashMap<String, HashMap<String, String>>,
    console: String,
}

impl Results {
    fn parse(console: &str) -> Results {
        let mut cases = HashMap::new();
        for line in console.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix("E2E-RESULT ") else {
                continue;
            };
            let f: HashMap<String, String> = rest
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if let Some(case) = f.get("case") {
                cases.insert(case.clone(), f);
            }
        }
        Results {
            cases,
            console: console.to_string(),
        }
    }

    fn case(&self, case: &str) -> &HashMap<String, String> {
        self.cases.get(case).unwrap_or_else(|| {
            panic!(
                "no `E2E-RESULT case={case}` line from the guest\n{}",
                self.console
            )
        })
    }

    fn line(&self, case: &str) -> String {
        let mut f: Vec<_> = self.case(case).iter().collect();
        f.sort();
        f.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn str(&self, case: &str, key: &str) -> &str {
        self.case(case)
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {key}= in the {case} result: {}", self.line(case)))
    }

    fn num(&self, case: &str, key: &str) -> u64 {
        self.str(case, key).parse().unwrap_or_else(|_| {
            panic!(
                "{key}= is not a number in the {case} result: {}",
                self.line(case)
            )
        })
    }
}

/// One end of the stream: connected throughout, every octet verified, enough
/// rollovers, no bad segment, old keys gone.
fn assert_end(r: &Results, role: &str) {
    let line = r.line(role);
    assert_eq!(r.num(role, "status"), 0, "{role}: {line}");
    assert_eq!(r.str(role, "ok"), "true", "{role}: {line}");
    assert_eq!(r.str(role, "disconnected"), "false", "{role}: {line}");
    assert_eq!(r.str(role, "stalled"), "false", "{role}: {line}");
    assert!(r.num(role, "bytes_in") > 0, "{role}: {line}");
    assert!(
        r.num(role, "rollovers") >= ROLLOVERS,
        "{role}: too few rollovers: {line}"
    );
    assert!(r.num(role, "pkt_good") > 0, "{role}: {line}");
    assert_eq!(r.num(role, "pkt_bad"), 0, "{role}: {line}");
    assert_eq!(r.num(role, "pkt_key_not_found"), 0, "{role}: {line}");
    assert!(r.num(role, "max_keys") <= 3, "{role}: {line}");
    assert_eq!(r.num(role, "lingering"), 0, "{role}: {line}");

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
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        let reason = format!("missing: {}", missing.join("; "));
        assert!(!in_ci(), "VM rollover test cannot run in CI: {reason}");
        eprintln!("SKIPPED mkt_rollover_under_traffic_in_vm: {reason}");
        return;
    }
    if !in_ci() && std::env::var_os("AOKD_SKIP_VM").is_some() {
        eprintln!("SKIPPED mkt_rollover_under_traffic_in_vm: AOKD_SKIP_VM is set");
        return;
    }
    let started = Instant::now();
    let vm = vm_dir();

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-rollover");
    std::fs::create_dir_all(&dir).expect("create the directory for stripped binaries");
    let mut args = Vec::new();
    for (name, path) in programs() {
        let stripped = dir.join(name);
        strip_copy(&path, &stripped);
        args.push(stripped.display().to_string());
    }

    let run = Command::new("bash")
        .arg(vm.join("run.sh"))
        .arg("--timeout")
        .arg(VM_TIMEOUT_S.to_string())
        .arg(vm.join("e2e-rollover.sh"))
        .args(&args)
        .output()
        .expect("run tests/vm/run.sh");
    let console = String::from_utf8_lossy(&run.stdout).replace('\r', "");
    println!("{}", show(&run));
    println!(
        "vm_rollover timings: total {:.1}s",
        started.elapsed().as_secs_f64()
    );
    match run.status.code() {
        Some(0) => {}
        Some(124) => panic!("the VM timed out after {VM_TIMEOUT_S}s\n{}", show(&run)),
        Some(125) => panic!("the VM ended without reporting (panic?)\n{}", show(&run)),
        other => {
            let failed: Vec<&str> = console
                .lines()
                .filter(|l| l.contains("FAIL") || l.starts_with("E2E-FATAL"))
                .collect();
            panic!(
                "guest script failed (exit {other:?}):\n{}\n\n{}",
                failed.join("\n"),
                show(&run)
            )
        }
    }
    assert!(
        console.lines().any(|l| l.trim() == "AOKD-VM-EXIT 0"),
        "no AOKD-VM-EXIT 0 line on the console"
    );
    let failed: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("E2E-CHECK ") && !l.ends_with(" ok"))
        .collect();
    assert!(failed.is_empty(), "guest checks failed: {failed:#?}");
    assert!(
        console
            .lines()
            .any(|l| l.starts_with("E2E-DONE failures=0")),
        "the guest script did not finish"
    );

    let r = Results::parse(&console);
    assert_eq!(r.num("setup", "mkt_rekey_s"), 8, "{}", r.line("setup"));
    assert_eq!(r.num("setup", "mkt_lifetime_s"), 16, "{}", r.line("setup"));

    assert_end(&r, "client");
    assert_end(&r, "server");
    // Every octet one end wrote, the other verified.
    assert_eq!(
        r.num("client", "bytes_out"),
        r.num("server", "bytes_in"),
        "client {} / server {}",
        r.line("client"),
        r.line("server")
    );
    assert_eq!(
        r.num("server", "bytes_out"),
        r.num("client", "bytes_in"),
        "client {} / server {}",
        r.line("client"),
        r.line("server")
    );

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
    let v = "verify";
    assert_eq!(r.num(v, "status"), 0, "{}", r.line(v));
    assert_eq!(r.num(v, "connections"), 1, "{}", r.line(v));
    assert!(r.num(v, "segments") > 0, "{}", r.line(v));
    assert_eq!(r.num(v, "verified"), r.num(v, "segments"), "{}", r.line(v));
    assert_eq!(r.num(v, "unsigned"), 0, "{}", r.line(v));
    assert_eq!(r.num(v, "bad_mac"), 0, "{}", r.line(v));
    assert_eq!(r.num(v, "unknown_key_id"), 0, "{}", r.line(v));

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
