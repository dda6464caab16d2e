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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use serde_json::Value;

/// Seconds the guest may run before run.sh kills qemu.
const VM_TIMEOUT_S: u32 = 300;
/// Octets each connection carries each way (the guest script's default).
const BYTES: u64 = 1_048_576;
/// Where the guest script looks for the preload library.
const GUEST_PRELOAD: &str = "/opt/aokd/lib/libaokd_preload.so";

fn vm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vm")
}

/// target/<profile>/, where cargo puts aokd, aoctl and the preload library.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf()
}

/// The host files that go into the VM: (name in the guest, host path, guest path
/// or None for /opt/aokd/bin/<name>).
fn programs() -> Vec<(&'static str, PathBuf, Option<&'static str>)> {
    let t = target_dir();
    vec![
        ("aokd", t.join("aokd"), None),
        ("aoctl", t.join("aoctl"), None),
        (
            "tcp-peer",
            PathBuf::from(env!("CARGO_BIN_EXE_tcp-peer")),
            None,
        ),
        (
            "plain-tcp",
            PathBuf::from(env!("CARGO_BIN_EXE_plain-tcp")),
            None,
        ),
        (
            "ao-wrong-key",
            PathBuf::from(env!("CARGO_BIN_EXE_ao-wrong-key")),
            None,
        ),
        (
            "libaokd_preload.so",
            aokd_tests::preload_library(),
            Some(GUEST_PRELOAD),
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
/// packages only as root), and binaries `cargo test --workspace` should have built.
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
    for (name, path, _) in programs() {
        if !path.exists() {
            missing.push(format!(
                "{name} at {} (run `cargo test --workspace`, which builds it)",
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
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        let reason = format!("missing: {}", missing.join("; "));
        assert!(!in_ci(), "VM TCP-AO test cannot run in CI: {reason}");
        eprintln!("SKIPPED tcp_ao_end_to_end_in_vm: {reason}");
        return;
    }
    if !in_ci() && std::env::var_os("AOKD_SKIP_VM").is_some() {
        eprintln!("SKIPPED tcp_ao_end_to_end_in_vm: AOKD_SKIP_VM is set");
        return;
    }
    let started = Instant::now();
    let vm = vm_dir();

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-tcp-ao");
    std::fs::create_dir_all(&dir).expect("create the directory for stripped binaries");
    let mut args = Vec::new();
    for (name, path, guest) in programs() {
        let stripped = dir.join(name);
        strip_copy(&path, &stripped);
        args.push(match guest {
            Some(g) => format!("{}={g}", stripped.display()),
            None => stripped.display().to_string(),
        });
    }

    let run = Command::new("bash")
        .arg(vm.join("run.sh"))
        .arg("--timeout")
        .arg(VM_TIMEOUT_S.to_string())
        .arg(vm.join("e2e-tcp-ao.sh"))
        .args(&args)
        .output()
        .expect("run tests/vm/run.sh");
    let console = String::from_utf8_lossy(&run.stdout).replace('\r', "");
    println!("{}", show(&run));
    println!(
        "vm_tcp_ao timings: total {:.1}s",
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

    // One MKT each, KeyIDs mirrored.
    assert_eq!(r.num("mkt", "a_mkts"), 1, "{}", r.line("mkt"));
    assert_eq!(r.num("mkt", "b_mkts"), 1, "{}", r.line("mkt"));
    assert_eq!(
        r.num("mkt", "a_send_id"),
        r.num("mkt", "b_recv_id"),
        "{}",
        r.line("mkt")
    );
    assert_eq!(
        r.num("mkt", "a_recv_id"),
        r.num("mkt", "b_send_id"),
        "{}",
        r.line("mkt")
    );

    // Data over the attach API and over the preload library.
    assert_connection(&r, "tcp-peer");
    assert_connection(&r, "preload");

    // The capture: every segment of both connections verifies with the daemon's MKT.
    let v = "verify";
    assert_eq!(r.num(v, "status"), 0, "{}", r.line(v));
    assert_eq!(r.num(v, "connections"), 2, "{}", r.line(v));
    assert!(r.num(v, "segments") > 0, "{}", r.line(v));
    assert_eq!(r.num(v, "verified"), r.num(v, "segments"), "{}", r.line(v));
    assert_eq!(r.num(v, "unsigned"), 0, "{}", r.line(v));
    assert_eq!(r.num(v, "bad_mac"), 0, "{}", r.line(v));
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
