//! What the qemu VM tests (tests/tests/vm_*.rs) share: the prerequisite
//! checks and the skip-or-fail rule, copying the programs into the VM,
//! running a guest script with tests/vm/run.sh, and reading the lines the
//! guest prints.
//!
//! The rule: a test that needs root, qemu or the VM's kernel fails loudly
//! when `CI` is set and something is missing; elsewhere it is skipped with a
//! printed reason (also when `AOKD_SKIP_VM` is set). See tests/vm/README.md.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// tests/vm/, where the scripts are.
pub fn vm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vm")
}

pub use crate::host::{in_ci, is_root, on_path, target_dir};

/// A host file that goes into the VM.
#[derive(Clone, Debug)]
pub struct Program {
    /// Its file name (in the staging directory, and in /opt/aokd/bin).
    pub name: &'static str,
    /// Where cargo built it.
    pub host: PathBuf,
    /// Where it goes in the guest; `None`: /opt/aokd/bin/`name`.
    pub guest: Option<&'static str>,
}

impl Program {
    /// A program for /opt/aokd/bin.
    pub fn bin(name: &'static str, host: impl Into<PathBuf>) -> Program {
        Program {
            name,
            host: host.into(),
            guest: None,
        }
    }

    /// aokd and aoctl, which `cargo build --workspace` (or `cargo test
    /// --workspace`) puts into target/<profile>/.
    pub fn daemon_and_ctl() -> [Program; 2] {
        let t = target_dir();
        [
            Program::bin("aokd", t.join("aokd")),
            Program::bin("aoctl", t.join("aoctl")),
        ]
    }

    /// aokd, aoctl and `stream-peer` from `stream_peer` (the test's
    /// `env!("CARGO_BIN_EXE_stream-peer")`): what the stream tests run.
    pub fn for_stream(stream_peer: &str) -> Vec<Program> {
        let mut p = Vec::from(Program::daemon_and_ctl());
        p.push(Program::bin("stream-peer", stream_peer));
        p
    }
}

/// What is missing that the scripts cannot install themselves (they install
/// Debian packages only as root), and `programs` that were not built.
/// `strip`: the programs are copied with `strip --strip-debug`.
pub fn missing_prerequisites(programs: &[Program], strip: bool) -> Vec<String> {
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
    if strip && !on_path("strip") {
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
    for p in programs {
        if !p.host.exists() {
            missing.push(format!(
                "{} at {} (run `cargo build --workspace` or `cargo test --workspace`, which build it)",
                p.name,
                p.host.display()
            ));
        }
    }
    missing
}

/// The skip-or-fail rule. Returns true when the test can run; false (after
/// printing `SKIPPED <test>: <reason>`) when it must be skipped; panics when
/// something is missing and `CI` is set.
pub fn ready(test: &str, programs: &[Program], strip: bool) -> bool {
    if !crate::host::can_run(test, &missing_prerequisites(programs, strip)) {
        return false;
    }
    if !in_ci() && std::env::var_os("AOKD_SKIP_VM").is_some() {
        eprintln!("SKIPPED {test}: AOKD_SKIP_VM is set");
        return false;
    }
    true
}

/// A finished process's status and output, for failure messages.
pub fn show(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Copies `src` to `dst` without debug information (`strip --strip-debug`):
/// the debug builds would not fit the VM's RAM.
pub fn strip_copy(src: &Path, dst: &Path) {
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

/// Strips `programs` into `dir` (e.g. under the test's `CARGO_TARGET_TMPDIR`)
/// and returns run.sh's program arguments (`PATH`, or `PATH=GUEST`).
pub fn stage(dir: &Path, programs: &[Program]) -> Vec<String> {
    std::fs::create_dir_all(dir).expect("create the directory for stripped binaries");
    programs
        .iter()
        .map(|p| {
            let stripped = dir.join(p.name);
            strip_copy(&p.host, &stripped);
            match p.guest {
                Some(g) => format!("{}={g}", stripped.display()),
                None => stripped.display().to_string(),
            }
        })
        .collect()
}

/// An end-to-end test that runs one guest script (tests/vm/e2e-*.sh).
pub struct E2e<'a> {
    /// The test's name, for `SKIPPED` and failures.
    pub test: &'a str,
    /// The prefix of the lines printed (`<tag> timings: ...`, `<tag> <case>:
    /// ...`); the programs are staged in `<tmp>/<tag with - for _>`.
    pub tag: &'a str,
    /// The guest script, a file in tests/vm/.
    pub script: &'a str,
    /// Seconds the guest may run before run.sh kills qemu.
    pub timeout_s: u32,
    /// The test's `env!("CARGO_TARGET_TMPDIR")`.
    pub tmp: &'a str,
    /// Cases whose result lines are printed (those the guest printed) before
    /// the guest's own checks are asserted: the figures that matter most when
    /// something failed.
    pub show: &'a [&'a str],
}

impl E2e<'_> {
    /// [`ready`] (None: skipped), then stages `programs` (stripped), runs the
    /// script, prints the total time and the [`E2e::show`] cases, and asserts
    /// [`VmRun::assert_e2e_passed`]. Returns the run and its results.
    pub fn run(&self, programs: &[Program]) -> Option<(VmRun, Results)> {
        self.run_with(programs, &[])
    }

    /// Like [`E2e::run`], with `extra` after the staged programs in the
    /// script's arguments (e.g. `@bird`: a host program mkinitramfs.sh
    /// copies with its libraries).
    pub fn run_with(&self, programs: &[Program], extra: &[&str]) -> Option<(VmRun, Results)> {
        if !ready(self.test, programs, true) {
            return None;
        }
        let started = Instant::now();
        let mut args = stage(
            &Path::new(self.tmp).join(self.tag.replace('_', "-")),
            programs,
        );
        args.extend(extra.iter().map(|a| a.to_string()));
        let run = run_guest(self.script, &args, self.timeout_s);
        println!(
            "{} timings: total {:.1}s",
            self.tag,
            started.elapsed().as_secs_f64()
        );
        let r = run.results();
        for case in self.show {
            if r.has(case) {
                println!("{} {case}: {}", self.tag, r.line(case));
            }
        }
        run.assert_e2e_passed();
        Some((run, r))
    }
}

/// A finished VM run.
pub struct VmRun {
    pub output: Output,
    /// The serial console (stdout) without carriage returns.
    pub console: String,
    pub elapsed: Duration,
    pub timeout_s: u32,
}

/// Boots the VM with tests/vm/run.sh running `script` (a file in tests/vm/)
/// with `args` as its programs, and waits for it (at most `timeout_s`
/// seconds, then run.sh kills qemu). The console and run.sh's messages are
/// printed (visible with `--nocapture` or when the test fails).
pub fn run_guest(script: &str, args: &[String], timeout_s: u32) -> VmRun {
    let started = Instant::now();
    let vm = vm_dir();
    let output = Command::new("bash")
        .arg(vm.join("run.sh"))
        .arg("--timeout")
        .arg(timeout_s.to_string())
        .arg(vm.join(script))
        .args(args)
        .output()
        .expect("run tests/vm/run.sh");
    let console = String::from_utf8_lossy(&output.stdout).replace('\r', "");
    println!("{}", show(&output));
    VmRun {
        output,
        console,
        elapsed: started.elapsed(),
        timeout_s,
    }
}

impl VmRun {
    /// Panics unless run.sh exited 0 and the console has `AOKD-VM-EXIT 0`;
    /// the message names the guest's failed lines (those with `FAIL`, and
    /// `E2E-FATAL`).
    pub fn assert_exit_ok(&self) {
        let t = self.timeout_s;
        match self.output.status.code() {
            Some(0) => {}
            Some(124) => panic!("the VM timed out after {t}s\n{}", show(&self.output)),
            Some(125) => panic!(
                "the VM ended without reporting (panic?)\n{}",
                show(&self.output)
            ),
            other => {
                let failed: Vec<&str> = self
                    .console
                    .lines()
                    .filter(|l| l.contains("FAIL") || l.starts_with("E2E-FATAL"))
                    .collect();
                panic!(
                    "guest script failed (exit {other:?}):\n{}\n\n{}",
                    failed.join("\n"),
                    show(&self.output)
                )
            }
        }
        assert!(
            self.console.lines().any(|l| l.trim() == "AOKD-VM-EXIT 0"),
            "no AOKD-VM-EXIT 0 line on the console"
        );
    }

    /// [`VmRun::assert_exit_ok`], and for the e2e scripts: every `E2E-CHECK`
    /// line says ok and the script reached `E2E-DONE failures=0`.
    pub fn assert_e2e_passed(&self) {
        self.assert_exit_ok();
        let failed: Vec<&str> = self
            .console
            .lines()
            .filter(|l| l.starts_with("E2E-CHECK ") && !l.ends_with(" ok"))
            .collect();
        assert!(failed.is_empty(), "guest checks failed: {failed:#?}");
        assert!(
            self.console
                .lines()
                .any(|l| l.starts_with("E2E-DONE failures=0")),
            "the guest script did not finish"
        );
    }

    /// The `E2E-RESULT` lines.
    pub fn results(&self) -> Results {
        Results::parse(&self.console)
    }
}

/// The `key=value` fields of a line, e.g. `AO-SMOKE case=good alg=hmac(sha1) ...`.
pub fn fields(line: &str) -> HashMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

/// The guest's `E2E-RESULT case=NAME key=value ...` lines, by case (the last
/// line of a case wins).
pub struct Results {
    cases: HashMap<String, HashMap<String, String>>,
    console: String,
}

impl Results {
    pub fn parse(console: &str) -> Results {
        let mut cases = HashMap::new();
        for line in console.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix("E2E-RESULT ") else {
                continue;
            };
            let f: HashMap<String, String> = fields(rest)
                .into_iter()
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

    /// Whether the guest printed a line for `case`.
    pub fn has(&self, case: &str) -> bool {
        self.cases.contains_key(case)
    }

    pub fn case(&self, case: &str) -> &HashMap<String, String> {
        self.cases.get(case).unwrap_or_else(|| {
            panic!(
                "no `E2E-RESULT case={case}` line from the guest\n{}",
                self.console
            )
        })
    }

    /// The case's fields as one line (sorted), for messages.
    pub fn line(&self, case: &str) -> String {
        let mut f: Vec<_> = self.case(case).iter().collect();
        f.sort();
        f.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn str(&self, case: &str, key: &str) -> &str {
        self.case(case)
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {key}= in the {case} result: {}", self.line(case)))
    }

    pub fn num(&self, case: &str, key: &str) -> u64 {
        self.str(case, key).parse().unwrap_or_else(|_| {
            panic!(
                "{key}= is not a number in the {case} result: {}",
                self.line(case)
            )
        })
    }

    /// Asserts that `a` (case, key) and `b` are the same number.
    pub fn assert_same(&self, a: (&str, &str), b: (&str, &str)) {
        assert_eq!(
            self.num(a.0, a.1),
            self.num(b.0, b.1),
            "{}={} / {}={}: {} / {}",
            a.0,
            a.1,
            b.0,
            b.1,
            self.line(a.0),
            self.line(b.0)
        );
    }

    /// Asserts the `setup` case's MKT lifetimes (`mkt_rekey_s`,
    /// `mkt_lifetime_s`).
    pub fn assert_lifetimes(&self, rekey_s: u64, lifetime_s: u64) {
        let s = "setup";
        assert_eq!(self.num(s, "mkt_rekey_s"), rekey_s, "{}", self.line(s));
        assert_eq!(
            self.num(s, "mkt_lifetime_s"),
            lifetime_s,
            "{}",
            self.line(s)
        );
    }

    /// One end (`role`: the case `client` or `server`) of a stream-peer
    /// stream: exited 0 with ok, never disconnected or stalled, data in,
    /// pkt_good, no pkt_bad or pkt_key_not_found, no replaced key lingering.
    pub fn assert_stream_end(&self, role: &str) {
        let line = self.line(role);
        assert_eq!(self.num(role, "status"), 0, "{role}: {line}");
        assert_eq!(self.str(role, "ok"), "true", "{role}: {line}");
        assert_eq!(self.str(role, "disconnected"), "false", "{role}: {line}");
        assert_eq!(self.str(role, "stalled"), "false", "{role}: {line}");
        assert!(self.num(role, "bytes_in") > 0, "{role}: {line}");
        assert!(self.num(role, "pkt_good") > 0, "{role}: {line}");
        assert_eq!(self.num(role, "pkt_bad"), 0, "{role}: {line}");
        assert_eq!(self.num(role, "pkt_key_not_found"), 0, "{role}: {line}");
        assert_eq!(self.num(role, "lingering"), 0, "{role}: {line}");
    }

    /// Every octet one end of the stream wrote, the other verified.
    pub fn assert_octets_both_ways(&self) {
        self.assert_same(("client", "bytes_out"), ("server", "bytes_in"));
        self.assert_same(("server", "bytes_out"), ("client", "bytes_in"));
    }

    /// The `verify` case: `aoctl verify` exited 0 on `connections`
    /// connections and verified every segment (some): none unsigned, no bad
    /// MAC, no unknown KeyID.
    pub fn assert_all_verified(&self, connections: u64) {
        let v = "verify";
        assert_eq!(self.num(v, "connections"), connections, "{}", self.line(v));
        self.assert_every_segment_verified();
    }

    /// The `verify` case: `aoctl verify` exited 0 and verified every segment
    /// (some) of the connections it saw: none unsigned, no bad MAC, no
    /// unknown KeyID.
    pub fn assert_every_segment_verified(&self) {
        let v = "verify";
        let line = self.line(v);
        assert_eq!(self.num(v, "status"), 0, "{line}");
        assert!(self.num(v, "segments") > 0, "{line}");
        assert_eq!(self.num(v, "verified"), self.num(v, "segments"), "{line}");
        assert_eq!(self.num(v, "unsigned"), 0, "{line}");
        assert_eq!(self.num(v, "bad_mac"), 0, "{line}");
        assert_eq!(self.num(v, "unknown_key_id"), 0, "{line}");
    }

    /// A signed number (for differences such as times relative to a deadline).
    pub fn int(&self, case: &str, key: &str) -> i64 {
        self.str(case, key).parse().unwrap_or_else(|_| {
            panic!(
                "{key}= is not a number in the {case} result: {}",
                self.line(case)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_by_case() {
        let r = Results::parse(
            "noise\nE2E-RESULT case=a x=1 y=-2 z=w\r\n  E2E-RESULT case=b x=3\nE2E-RESULT case=a x=4\n",
        );
        assert!(r.has("a") && r.has("b") && !r.has("c"));
        assert_eq!(r.num("a", "x"), 4);
        assert_eq!(r.num("b", "x"), 3);
        assert_eq!(r.line("b"), "case=b x=3");
    }

    #[test]
    fn key_value_fields() {
        let f = fields("AO-SMOKE case=good alg=hmac(sha1) bytes=10");
        assert_eq!(f.get("alg"), Some(&"hmac(sha1)"));
        assert_eq!(f.get("bytes"), Some(&"10"));
    }
}
