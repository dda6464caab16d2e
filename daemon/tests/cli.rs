//! Tests of the `aokd` command line: `check-config`, and a run that serves
//! the control socket until SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{examples, localize_example, TempDir};

const AOKD: &str = env!("CARGO_BIN_EXE_aokd");

#[test]
fn check_config_accepts_the_examples() {
    for (name, text) in examples() {
        let dir = TempDir::new("cli-check");
        let file = dir.join(&name);
        std::fs::write(&file, localize_example(&text, &dir)).unwrap();
        let out = Command::new(AOKD)
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(": OK"), "{stdout}");
        assert!(stdout.contains("peer "), "{stdout}");
        // The PSK written by localize_example never shows.
        assert!(!stdout.contains("00112233"), "{stdout}");
    }
}

#[test]
fn check_config_names_file_key_and_peer() {
    let dir = TempDir::new("cli-bad");
    dir.psk("r2.psk");
    let file = dir.join("aokd.toml");
    std::fs::write(
        &file,
        "[[peer]]\nname = \"r2\"\nremote = \"192.0.2.2\"\npsk_file = \"r2.psk\"\nmac_algorithms = [\"hmac-md5\"]\n",
    )
    .unwrap();
    let out = Command::new(AOKD)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        file.display().to_string().as_str(),
        "peer[0].mac_algorithms[0]",
        "\"r2\"",
        "hmac-md5",
    ] {
        assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
    }

    let out = Command::new(AOKD)
        .arg("check-config")
        .arg(dir.join("nope.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml"));
}

#[test]
fn config_is_required_to_run() {
    let out = Command::new(AOKD).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

/// A UDP port that was free a moment ago (tests bind loopback only).
fn free_udp_port(ip: &str) -> u16 {
    std::net::UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `aokd --config FILE --log-format json` serves status on its control
/// socket, and on SIGTERM exits 0 and removes the socket.
#[test]
fn runs_until_sigterm() {
    let dir = TempDir::new("cli-run");
    dir.psk("r2.psk");
    let file = dir.join("aokd.toml");
    std::fs::write(
        &file,
        format!(
            "[daemon]\nlisten = [\"127.0.0.1\"]\nport = {}\ncontrol_socket = \"run/control.sock\"\n\
             [[peer]]\nname = \"r2\"\nremote = \"127.0.0.2\"\nremote_port = {}\npsk_file = \"r2.psk\"\ninitiate = false\n",
            free_udp_port("127.0.0.1"),
            free_udp_port("127.0.0.2")
        ),
    )
    .unwrap();
    let sock = dir.join("run/control.sock");
    let mut child = Command::new(AOKD)
        .arg("--config")
        .arg(&file)
        .args(["--log-format", "json"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        if let Ok(s) = UnixStream::connect(&sock) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "aokd did not create {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut writer = stream.try_clone().unwrap();
    writer
        .write_all(b"{\"version\":1,\"command\":\"status\"}\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], "ok", "{line}");
    assert_eq!(v["data"]["peers"][0]["name"], "r2", "{line}");
    assert_eq!(v["data"]["peers"][0]["ike_state"], "none", "{line}");

    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists(), "socket not removed");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "not JSON logs: {stderr}"
    );
}
