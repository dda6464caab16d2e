//! Infrastructure smoke test for the qemu VM that gives the tests a kernel with
//! CONFIG_TCP_AO (the host's kernel has none): builds or reuses the cached kernel
//! (tests/vm/build-kernel.sh), compiles tests/vm/smoke/ao_smoke.c statically against
//! that kernel's uapi headers, boots the VM with tests/vm/run.sh and checks what the
//! guest printed: TCP-AO connections with matching MKTs verify segments (pkt_good > 0,
//! pkt_bad == 0), a wrong master key fails and is counted (pkt_bad > 0), on loopback
//! and across a veth pair into a network namespace, and ip netns / veth / tc netem /
//! tcpdump work in the guest.
//!
//! With `CI` set, a missing prerequisite is a failure; otherwise the test is skipped
//! with a printed reason (also when `AOKD_SKIP_VM` is set). Cold cache: ~5 min kernel
//! build; warm: well under a minute. See tests/vm/README.md.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use aokd_tests::vm::{self, fields, show};

/// Seconds the guest may run before run.sh kills qemu.
const VM_TIMEOUT_S: u32 = 240;

fn num(f: &HashMap<&str, &str>, key: &str, line: &str) -> u64 {
    f.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key}= in guest line: {line}"))
}

#[test]
fn vm_runs_tcp_ao_smoke() {
    if !vm::ready("vm_runs_tcp_ao_smoke", &[], false) {
        return;
    }
    let started = Instant::now();
    let vm = vm::vm_dir();

    // The kernel (cached after the first build) and its uapi headers.
    let headers = Command::new("bash")
        .arg(vm.join("build-kernel.sh"))
        .arg("--print-headers")
        .output()
        .expect("run tests/vm/build-kernel.sh");
    assert!(
        headers.status.success(),
        "kernel build failed\n{}",
        show(&headers)
    );
    let include = String::from_utf8_lossy(&headers.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(
        Path::new(&include).join("linux/tcp.h").exists(),
        "build-kernel.sh --print-headers gave no usable include dir: {include:?}\n{}",
        show(&headers)
    );
    let kernel_ready = started.elapsed();

    let smoke = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ao_smoke");
    let cc = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(&include)
        .arg("-o")
        .arg(&smoke)
        .arg(vm.join("smoke/ao_smoke.c"))
        .output()
        .expect("run gcc");
    assert!(cc.status.success(), "gcc ao_smoke.c failed\n{}", show(&cc));

    let run = vm::run_guest(
        "smoke/guest.sh",
        &[smoke.display().to_string()],
        VM_TIMEOUT_S,
    );
    println!(
        "vm_smoke timings: kernel ready after {:.1}s, total {:.1}s",
        kernel_ready.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    run.assert_exit_ok();
    let console = &run.console;

    // Tools later tests need inside the guest.
    for check in [
        "tcpdump-version",
        "netns-add",
        "veth-add",
        "veth-move",
        "ping-veth",
        "netem-add",
        "ao-loopback",
        "ao-veth-netns",
        "tcpdump-capture",
        "tcpdump-sees-ao",
    ] {
        let want = format!("SMOKE-CHECK {check} ok");
        assert!(
            console.lines().any(|l| l.trim() == want),
            "guest check {check} did not pass (no line {want:?})"
        );
    }
    assert!(
        !console
            .lines()
            .any(|l| l.starts_with("SMOKE-CHECK ") && l.contains("FAIL")),
        "a guest check failed"
    );

    // TCP-AO itself: per algorithm, on loopback and across the veth pair.
    let smoke_lines: Vec<&str> = console
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("AO-SMOKE case="))
        .collect();
    for alg in ["hmac(sha1)", "cmac(aes128)"] {
        let good: Vec<&str> = smoke_lines
            .iter()
            .copied()
            .filter(|l| l.starts_with("AO-SMOKE case=good ") && fields(l).get("alg") == Some(&alg))
            .collect();
        assert_eq!(good.len(), 2, "{alg}: want 2 good-key runs, got {good:?}");
        for line in good {
            let f = fields(line);
            assert_eq!(f.get("result"), Some(&"ok"), "{line}");
            assert!(num(&f, "bytes", line) > 0, "no data exchanged: {line}");
            assert!(num(&f, "client_good", line) > 0, "{line}");
            assert!(num(&f, "server_good", line) > 0, "{line}");
            assert_eq!(num(&f, "client_bad", line), 0, "{line}");
            assert_eq!(num(&f, "server_bad", line), 0, "{line}");
        }
        let wrong: Vec<&str> = smoke_lines
            .iter()
            .copied()
            .filter(|l| {
                l.starts_with("AO-SMOKE case=wrongkey ") && fields(l).get("alg") == Some(&alg)
            })
            .collect();
        assert_eq!(
            wrong.len(),
            2,
            "{alg}: want 2 wrong-key runs, got {wrong:?}"
        );
        for line in wrong {
            let f = fields(line);
            assert_eq!(f.get("result"), Some(&"ok"), "{line}");
            assert_ne!(
                f.get("connect"),
                Some(&"connected"),
                "wrong key connected: {line}"
            );
            assert!(num(&f, "listener_bad", line) > 0, "{line}");
        }
    }
    assert!(
        console
            .lines()
            .any(|l| l.trim() == "AO-SMOKE-RESULT pass=4 fail=0"),
        "ao_smoke summary missing or not all passed"
    );
}
