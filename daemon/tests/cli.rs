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

/// A peer with `auth = "pubkey"`: check-config prints each certificate's
/// subject and expiry (daemon/tests/data/pubkey, made with openssl).
#[test]
fn check_config_prints_certificate_subject_and_expiry() {
    let dir = TempDir::new("cli-pubkey");
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pubkey");
    for f in ["ca.pem", "ee.pem", "ee.key"] {
        std::fs::copy(data.join(f), dir.join(f)).unwrap();
    }
    std::fs::set_permissions(
        dir.join("ee.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let file = dir.join("aokd.toml");
    std::fs::write(
        &file,
        "[[peer]]\nname = \"r2\"\nremote = \"127.0.0.2\"\nauth = \"pubkey\"\n\
         certificate = \"ee.pem\"\nprivate_key = \"ee.key\"\nca = \"ca.pem\"\n",
    )
    .unwrap();
    let out = Command::new(AOKD)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "auth: pubkey, 1 certificate(s)",
        "certificate: CN=r1, expires 2126-11-08 06:37:51 UTC",
        "ca: CN=aokd-test-ca, expires 2126-",
    ] {
        assert!(stdout.contains(needle), "{stdout:?} lacks {needle:?}");
    }
    assert!(!stdout.contains("psk:"), "{stdout}");
}

/// `crl`: check-config prints each CRL's file, issuer, update times and
/// number of entries, and says when nextUpdate has passed or the issuer is
/// not a configured CA (daemon/tests/data/pubkey/make-crls.sh).
#[test]
fn check_config_prints_each_crl() {
    let dir = TempDir::new("cli-crl");
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pubkey");
    for f in ["ca.pem", "ee.pem", "ee.key", "crl.pem", "crl-expired.der"] {
        std::fs::copy(data.join(f), dir.join(f)).unwrap();
    }
    // Both CAs are trust anchors: the CRLs' issuer is one of them.
    let cas = std::fs::read_to_string(data.join("ca.pem")).unwrap()
        + &std::fs::read_to_string(data.join("crl-ca.pem")).unwrap();
    std::fs::write(dir.join("cas.pem"), cas).unwrap();
    std::fs::set_permissions(
        dir.join("ee.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let file = dir.join("aokd.toml");
    let run = |ca: &str| {
        std::fs::write(
            &file,
            format!(
                "[[peer]]\nname = \"r2\"\nremote = \"127.0.0.2\"\nauth = \"pubkey\"\n\
                 certificate = \"ee.pem\"\nprivate_key = \"ee.key\"\nca = \"{ca}\"\n\
                 crl = [\"crl.pem\", \"crl-expired.der\"]\n"
            ),
        )
        .unwrap();
        let out = Command::new(AOKD)
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stdout = run("cas.pem");
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains("crl:")).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let pem = format!(
        "crl: {}: issuer CN=aokd-test-crl-ca, this update 2026-",
        dir.join("crl.pem").display()
    );
    assert!(lines[0].trim_start().starts_with(&pem), "{lines:?}");
    assert!(lines[0].contains(", next update 2126-"), "{lines:?}");
    assert!(lines[0].ends_with(", 2 revoked"), "{lines:?}");
    assert!(
        lines[1].ends_with(
            "issuer CN=aokd-test-crl-ca, this update 2025-12-01 00:00:00 UTC, \
             next update 2026-01-02 00:00:00 UTC, 1 revoked (nextUpdate has passed, still used)"
        ),
        "{lines:?}"
    );
    // With only the other CA as trust anchor, the CRLs' issuer is said.
    let stdout = run("ca.pem");
    assert!(
        stdout.contains("2 revoked (issuer is not a ca certificate"),
        "{stdout}"
    );
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
    let file = state_config(&dir);
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

/// A configuration in `dir` with its own sockets and state directory.
fn state_config(dir: &TempDir) -> std::path::PathBuf {
    dir.psk("r2.psk");
    let file = dir.join("aokd.toml");
    std::fs::write(
        &file,
        format!(
            "[daemon]\nlisten = [\"127.0.0.1\"]\nport = {}\ncontrol_socket = \"run/control.sock\"\n\
             attach_socket = \"run/attach.sock\"\nstate_dir = \"state\"\n\
             [[peer]]\nname = \"r2\"\nremote = \"127.0.0.2\"\nremote_port = {}\npsk_file = \"r2.psk\"\ninitiate = false\n",
            free_udp_port("127.0.0.1"),
            free_udp_port("127.0.0.2")
        ),
    )
    .unwrap();
    file
}

/// Starts aokd on `file` and expects it to exit 1 at once, naming `needles`
/// on stderr; the state file must be byte for byte what it was. Returns
/// aokd's stderr.
fn refused_at_start(
    file: &std::path::Path,
    state_file: &std::path::Path,
    needles: &[&str],
) -> String {
    let before = std::fs::read(state_file).unwrap();
    let mut child = Command::new(AOKD)
        .arg("--config")
        .arg(file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pidfd = aokd_sys::pidfd_open(i32::try_from(child.id()).unwrap()).unwrap();
    if !aokd_sys::wait_exit(std::os::fd::AsFd::as_fd(&pidfd), Duration::from_secs(20)).unwrap() {
        let _ = child.kill();
        panic!("aokd kept running with a refused state file");
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} not in: {stderr}");
    }
    assert_eq!(
        std::fs::read(state_file).unwrap(),
        before,
        "state file changed"
    );
    stderr
}

#[test]
fn a_corrupt_state_file_stops_aokd_untouched() {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = TempDir::new("cli-corrupt-state");
    let file = state_config(&dir);
    let state = dir.join("state");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&state)
        .unwrap();
    let state_file = state.join(aokd::state::STATE_FILE_NAME);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&state_file)
        .unwrap();
    f.write_all(&[0x5a; 8192]).unwrap();
    drop(f);
    let path = state_file.display().to_string();
    refused_at_start(&file, &state_file, &[path.as_str(), "corrupt"]);
}

#[test]
fn a_state_file_that_fails_its_page_check_stops_aokd_untouched() {
    // The records decode (the event loop starts from them) and the state
    // writer's page check, which runs beside it, stops aokd.
    let dir = TempDir::new("cli-page-check");
    let file = state_config(&dir);
    let state_file = common::state_file_with_a_damaged_record(&dir.join("state"));
    let path = state_file.display().to_string();
    let stderr = refused_at_start(&file, &state_file, &[path.as_str(), "corrupt"]);
    assert!(stderr.contains("state file opened"), "{stderr}");
}

#[test]
fn a_newer_state_file_stops_aokd_untouched() {
    let dir = TempDir::new("cli-newer-state");
    let file = state_config(&dir);
    let state = dir.join("state");
    let state_file = state.join(aokd::state::STATE_FILE_NAME);
    drop(aokd::state::StateStore::open(&state).unwrap());
    {
        let db = redb::Database::create(&state_file).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, &str>::new("meta"))
                .unwrap();
            let newer = (aokd::state::SCHEMA_VERSION + 1).to_string();
            meta.insert("schema_version", newer.as_str()).unwrap();
        }
        txn.commit().unwrap();
    }
    let path = state_file.display().to_string();
    refused_at_start(&file, &state_file, &[path.as_str(), "newer"]);
}

#[test]
fn a_world_readable_state_directory_stops_aokd() {
    use std::os::unix::fs::DirBuilderExt;
    let dir = TempDir::new("cli-open-state");
    let file = state_config(&dir);
    let state = dir.join("state");
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&state)
        .unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new(AOKD)
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&state.display().to_string()), "{stderr}");
    assert!(stderr.contains("0755"), "{stderr}");
    assert!(!state.join(aokd::state::STATE_FILE_NAME).exists());
}

/// Connects to aokd's control socket, waiting up to 20 s for it to appear.
fn connect_control(sock: &std::path::Path) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = UnixStream::connect(sock) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "aokd did not create {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// aokd's answer to `status` on `sock`.
fn control_status(sock: &std::path::Path) -> serde_json::Value {
    let stream = connect_control(sock);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    writer
        .write_all(b"{\"version\":1,\"command\":\"status\"}\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// SIGHUP reloads the configuration (the default action would kill aokd
/// without its shutdown): each one is logged with its outcome, aokd keeps
/// serving with the same peers (the file did not change), and SIGTERM
/// then ends it cleanly.
#[test]
fn sighup_reloads_and_is_survived() {
    let dir = TempDir::new("cli-sighup");
    let file = state_config(&dir);
    let sock = dir.join("run/control.sock");
    let mut child = Command::new(AOKD)
        .arg("--config")
        .arg(&file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // stderr read as it comes, to wait for each reload's log line.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let log = log.clone();
        let mut stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut stderr, &mut buf) {
                if n == 0 {
                    break;
                }
                log.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let v = control_status(&sock);
    assert_eq!(v["status"], "ok", "{v}");
    let pid = child.id() as libc::pid_t;
    for n in 1..=2 {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while log
            .lock()
            .unwrap()
            .matches("configuration reloaded")
            .count()
            < n
        {
            assert!(
                std::time::Instant::now() < deadline,
                "reload {n} not logged: {}",
                log.lock().unwrap()
            );
            assert!(child.try_wait().unwrap().is_none(), "aokd ended on SIGHUP");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(child.try_wait().unwrap().is_none(), "aokd ended on SIGHUP");
        let v = control_status(&sock);
        assert_eq!(v["status"], "ok", "{v}");
        assert_eq!(v["data"]["peers"][0]["name"], "r2", "{v}");
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    reader.join().unwrap();
    assert!(!sock.exists(), "socket not removed");
    assert!(!dir.join("run/attach.sock").exists(), "socket not removed");
    let stderr = log.lock().unwrap().clone();
    assert_eq!(
        stderr
            .matches("SIGHUP: reloading the configuration")
            .count(),
        2,
        "{stderr}"
    );
    assert!(!stderr.contains("not supported"), "{stderr}");
    assert!(stderr.contains("SIGTERM: shutting down"), "{stderr}");
}

/// A real state file cut to half its length: redb panics reading it, and
/// aokd says only that the file is corrupt, naming it, without the panic
/// text, and leaves the file as it was.
#[test]
fn a_truncated_state_file_is_corrupt_without_a_panic_message() {
    let dir = TempDir::new("cli-truncated-state");
    let file = state_config(&dir);
    let state = dir.join("state");
    let state_file = state.join(aokd::state::STATE_FILE_NAME);
    drop(aokd::state::StateStore::open(&state).unwrap());
    let len = std::fs::metadata(&state_file).unwrap().len();
    assert!(len > 0);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&state_file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let path = state_file.display().to_string();
    let stderr = refused_at_start(&file, &state_file, &[path.as_str(), "corrupt"]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("RUST_BACKTRACE"), "{stderr}");
}

/// Starts aokd on `file`, expects exit 1 with `needles` on stderr, and
/// returns its stderr.
fn fails_at_start(file: &std::path::Path, needles: &[&str]) -> String {
    let out = Command::new(AOKD)
        .arg("--config")
        .arg(file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} not in: {stderr}");
    }
    stderr
}

/// A start that fails for want of a port or a socket path creates no state
/// directory or file, and leaves no socket or socket directory behind.
#[test]
fn a_failed_bind_creates_no_state() {
    // The IKE port is taken: held from the start (bound to port 0 first and
    // written into the configuration), so no other test can take it between.
    let dir = TempDir::new("cli-port-taken");
    let file = state_config(&dir);
    let taken = std::net::UdpSocket::bind(("127.0.0.1", 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = std::fs::read_to_string(&file).unwrap();
    let text: String = text
        .lines()
        .map(|l| match l.strip_prefix("port = ") {
            Some(_) => format!("port = {port}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&file, text).unwrap();
    let addr = format!("127.0.0.1:{port}");
    fails_at_start(&file, &["cannot bind UDP", addr.as_str()]);
    drop(taken);
    assert!(!dir.join("state").exists(), "state directory created");
    assert!(!dir.join("run").exists(), "socket directory created");

    // The control socket's directory cannot be created (a file is in the way).
    let dir = TempDir::new("cli-control-path");
    let file = state_config(&dir);
    std::fs::write(dir.join("run"), "not a directory").unwrap();
    let sock = dir.join("run/control.sock").display().to_string();
    fails_at_start(&file, &[sock.as_str()]);
    assert!(!dir.join("state").exists(), "state directory created");

    // The attach socket's path is taken by something that is not a socket:
    // the control socket bound before it is removed again.
    let dir = TempDir::new("cli-attach-path");
    let file = state_config(&dir);
    std::fs::create_dir(dir.join("run")).unwrap();
    std::fs::write(dir.join("run/attach.sock"), "a file").unwrap();
    let sock = dir.join("run/attach.sock").display().to_string();
    fails_at_start(&file, &[sock.as_str()]);
    assert!(!dir.join("state").exists(), "state directory created");
    assert!(
        !dir.join("run/control.sock").exists(),
        "control socket left"
    );

    // A corrupt state file, found after the binds: the sockets and the
    // socket directory created for them are removed again.
    let dir = TempDir::new("cli-state-after-bind");
    let file = state_config(&dir);
    let state = dir.join("state");
    drop(aokd::state::StateStore::open(&state).unwrap());
    std::fs::write(state.join(aokd::state::STATE_FILE_NAME), [0x5a; 8192]).unwrap();
    fails_at_start(&file, &["corrupt"]);
    assert!(!dir.join("run").exists(), "socket directory left");
}

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One request on a new control connection; the response line.
fn control_request(sock: &std::path::Path) -> std::io::Result<serde_json::Value> {
    let stream = UnixStream::connect(sock)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    (&stream).write_all(b"{\"version\":1,\"command\":\"status\"}\n")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// 20,000 idle control connections (the number that exhausted aokd's
/// descriptors): aokd serves at most 64 at once, tells the others so,
/// closes idle ones, keeps its descriptors and memory bounded, and answers
/// `status` again once the idle ones are gone.
#[test]
fn idle_control_connections_are_capped_and_timed_out() {
    // Room for 20,000 descriptors in this process.
    let want: libc::rlim_t = 30_000;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_max < want && libc::geteuid() == 0 {
            lim.rlim_max = want;
        }
        lim.rlim_cur = want.min(lim.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    let n = usize::try_from(lim.rlim_cur)
        .unwrap_or(1024)
        .saturating_sub(200)
        .min(20_000);
    if n < 19_000 {
        let why = format!("only {n} descriptors available (needs root to raise RLIMIT_NOFILE)");
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("running with {n} connections: {why}");
    }
    let dir = TempDir::new("cli-clients");
    let file = state_config(&dir);
    let sock = dir.join("run/control.sock");
    // Killed if the test fails half-way (it must not outlive the test).
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reaped(
        Command::new(AOKD)
            .arg("--config")
            .arg(&file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while control_request(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "aokd did not answer on {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.0.id();
    let fds_before = open_fds(pid);
    let rss_before = rss_kib(pid);

    let mut idle = Vec::with_capacity(n);
    let mut refused = 0;
    let mut max_fds = 0;
    for i in 0..n {
        match UnixStream::connect(&sock) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connection {i}: {e}"),
        }
        if i % 1000 == 0 {
            max_fds = max_fds.max(open_fds(pid));
        }
    }
    // The ones beyond the cap were told why and closed.
    for s in idle.iter().skip(64).take(50) {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(v["status"], "error", "{line}");
        assert!(
            v["message"]
                .as_str()
                .unwrap_or("")
                .contains("too many control connections (64 open"),
            "{line}"
        );
        refused += 1;
    }
    max_fds = max_fds.max(open_fds(pid));
    let rss_peak = rss_kib(pid);
    assert!(
        max_fds <= fds_before + 64 + 16,
        "aokd held {max_fds} descriptors with {n} clients (before: {fds_before})"
    );
    // While the cap is full a request is refused, with the reason. aokd
    // may have closed the connection before the request is written (EPIPE
    // under load): its line is read regardless.
    let busy: serde_json::Value = {
        let stream = UnixStream::connect(&sock).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = (&stream).write_all(b"{\"version\":1,\"command\":\"status\"}\n");
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_default()
    };
    assert_eq!(busy["status"], "error", "{busy}");
    // The idle ones are closed within the idle timeout (10 s), and status
    // is answered again; the 64 admitted connections see end of file.
    let t0 = Instant::now();
    let answered = loop {
        if let Ok(v) = control_request(&sock) {
            if v["status"] == "ok" {
                break t0.elapsed();
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "status still refused 30 s after the idle connections"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut eof = String::new();
    idle[0]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let got = BufReader::new(&idle[0]).read_line(&mut eof).unwrap();
    assert_eq!(
        got, 0,
        "an idle admitted connection was not closed: {eof:?}"
    );
    drop(idle);
    let rss_after = rss_kib(pid);
    println!(
        "{n} idle control connections: {refused} checked refusals, aokd descriptors {fds_before} before, at most {max_fds} during; \
         RSS {rss_before} KiB before, {rss_peak} KiB at the peak, {rss_after} KiB after; status answered again after {:.1} s",
        answered.as_secs_f64()
    );
    assert!(
        rss_peak < rss_before + 16 * 1024,
        "RSS grew from {rss_before} to {rss_peak} KiB"
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Under systemd (`Type=notify`, `NOTIFY_SOCKET`), aokd sends `READY=1`
/// only once its UDP socket, control socket and attach socket exist, and
/// `STOPPING=1` on SIGTERM; for a path and for an abstract socket name.
#[test]
fn readiness_is_sent_once_every_socket_exists() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    for abstract_name in [false, true] {
        let dir = TempDir::new("cli-notify");
        let file = state_config(&dir);
        let text = std::fs::read_to_string(&file).unwrap();
        let port: u16 = text
            .lines()
            .find_map(|l| l.strip_prefix("port = "))
            .and_then(|p| p.trim().parse().ok())
            .expect("port");
        let (notify, env) = if abstract_name {
            let name = format!("aokd-test-notify-{}", std::process::id());
            let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
            (UnixDatagram::bind_addr(&addr).unwrap(), format!("@{name}"))
        } else {
            let path = dir.join("notify.sock");
            (
                UnixDatagram::bind(&path).unwrap(),
                path.display().to_string(),
            )
        };
        notify
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut child = Command::new(AOKD)
            .arg("--config")
            .arg(&file)
            .env("NOTIFY_SOCKET", &env)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut buf = [0u8; 256];
        let n = notify.recv(&mut buf).expect("no READY=1 within 20 s");
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        // At this moment every socket exists.
        let control = dir.join("run/control.sock");
        let attach = dir.join("run/attach.sock");
        let udp_free = std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        let control_answers = UnixStream::connect(&control).is_ok();
        assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
        assert!(control_answers, "control socket missing at READY=1");
        assert!(attach.exists(), "attach socket missing at READY=1");
        assert!(!udp_free, "UDP port {port} not bound at READY=1");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let n = notify.recv(&mut buf).expect("no STOPPING=1");
        assert_eq!(&buf[..n], b"STOPPING=1");
        assert!(child.wait().unwrap().success());
    }
}

/// `control_socket_group` and `attach_socket_group`: the sockets get the
/// group and mode 0660 (their new directory lets the group through); a
/// user of that group who is not root may run aoctl's read-only commands
/// but not initiate, terminate or rekey, and may connect to the attach
/// socket. A group that does not exist is refused naming the key.
#[test]
fn socket_groups_let_a_routing_daemon_user_in() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "needs root (to run a client as another user)"
        );
        eprintln!("skipped: needs root");
        return;
    }
    const GID: u32 = 4242;
    const UID: u32 = 4243;
    let dir = TempDir::new("cli-groups");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let file = state_config(&dir);
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "state_dir = \"state\"\n",
        &format!("state_dir = \"state\"\ncontrol_socket_group = \"{GID}\"\nattach_socket_group = \"{GID}\"\n"),
    );
    std::fs::write(&file, text).unwrap();
    let mut child = Command::new(AOKD)
        .arg("--config")
        .arg(&file)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = dir.join("run/control.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while control_request(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "aokd did not answer on {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for name in ["run/control.sock", "run/attach.sock"] {
        let m = std::fs::metadata(dir.join(name)).unwrap();
        assert_eq!((m.gid(), m.mode() & 0o777), (GID, 0o660), "{name}");
    }
    let run = std::fs::metadata(dir.join("run")).unwrap();
    assert_eq!((run.gid(), run.mode() & 0o777), (GID, 0o710), "run/");
    // aoctl as UID:GID (not root), from a copy that user can reach (the
    // build directory may be private, as under a 0700 mktemp -d).
    let aoctl_copy = dir.join("aoctl");
    std::fs::copy(
        env!("CARGO_BIN_EXE_aokd").replace("/aokd", "/aoctl"),
        &aoctl_copy,
    )
    .unwrap();
    std::fs::set_permissions(&aoctl_copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let aoctl = |args: &[&str]| {
        Command::new(&aoctl_copy)
            .arg("--socket")
            .arg(&sock)
            .args(args)
            .uid(UID)
            .gid(GID)
            .output()
            .unwrap()
    };
    let st = aoctl(&["--json", "status"]);
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let init = aoctl(&["initiate", "r2"]);
    assert!(!init.status.success());
    let err = String::from_utf8_lossy(&init.stderr);
    assert!(err.contains("only root may initiate"), "{err}");
    // The attach socket lets the group connect: a child process that
    // becomes UID:GID and connect(2)s (only async-signal-safe calls after
    // fork).
    let attach = dir.join("run/attach.sock");
    // SAFETY: an all-zero sockaddr_un is valid; the path fits (checked).
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = attach.as_os_str().as_encoded_bytes();
    assert!(bytes.len() < sun.sun_path.len());
    for (d, b) in sun.sun_path.iter_mut().zip(bytes) {
        *d = *b as libc::c_char;
    }
    // SAFETY: fork(2); the child only calls setgroups, setgid, setuid,
    // socket, connect and _exit, which are async-signal-safe.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            let ok = libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(GID) == 0
                && libc::setuid(UID) == 0;
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let connected = ok
                && fd >= 0
                && libc::connect(
                    fd,
                    std::ptr::addr_of!(sun).cast(),
                    std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                ) == 0;
            libc::_exit(if connected { 0 } else { 1 });
        }
    }
    let mut wstatus = 0;
    // SAFETY: waitpid on the child just forked.
    unsafe { libc::waitpid(pid, &mut wstatus, 0) };
    assert!(
        libc::WIFEXITED(wstatus) && libc::WEXITSTATUS(wstatus) == 0,
        "a member of attach_socket_group cannot connect to {}",
        attach.display()
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());

    let bad = std::fs::read_to_string(&file).unwrap().replace(
        &format!("attach_socket_group = \"{GID}\""),
        "attach_socket_group = \"no-such-group-aokd\"",
    );
    std::fs::write(&file, bad).unwrap();
    let out = Command::new(AOKD)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("daemon.attach_socket_group") && err.contains("no-such-group-aokd"),
        "{err}"
    );
}
