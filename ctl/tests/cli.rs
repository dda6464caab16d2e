//! Tests of the aoctl command line: `gen-psk`, connection errors, and the
//! table and `--json` output of status/sas/mkts against a fake control
//! server that answers canned responses.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use aokd_api::control::{
    Command as Cmd, DaemonStatus, MktStatus, PeerStatus, Request, Response, ResponseData,
    ResponseResult, SaStatus, SocketStatus, StateFileStatus, PROTOCOL_VERSION,
};

const AOCTL: &str = env!("CARGO_BIN_EXE_aoctl");

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("aoctl-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn aoctl(args: &[&str]) -> Output {
    Command::new(AOCTL)
        .args(args)
        .env_remove("AOKD_SOCKET")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[test]
fn gen_psk_creates_a_private_hex_file() {
    let dir = TempDir::new("genpsk");
    let file = dir.join("r2.psk");
    let f = file.to_str().unwrap();
    let out = aoctl(&["gen-psk", f]);
    assert!(out.status.success(), "{}", stderr(&out));
    let key = std::fs::read_to_string(&file).unwrap();
    assert_eq!(key.len(), 65);
    assert!(key.ends_with('\n'));
    let hex = key.trim_end();
    assert!(is_lower_hex(hex), "{key:?}");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = stdout(&out);
    assert!(text.contains(f), "{text}");
    assert!(!text.contains(hex), "the key was printed");
    let fingerprint = text
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .unwrap_or_else(|| panic!("no fingerprint in {text:?}"));
    assert_eq!(fingerprint.len(), 16);
    assert!(is_lower_hex(fingerprint));

    // Not overwritten without --force.
    let out = aoctl(&["gen-psk", f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already exists") && stderr(&out).contains("--force"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), key);

    // --force replaces it with a new key, mode 0600 even if it was wider.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = aoctl(&["gen-psk", "--force", f]);
    assert!(out.status.success(), "{}", stderr(&out));
    let key2 = std::fs::read_to_string(&file).unwrap();
    assert_ne!(key, key2);
    assert_eq!(key2.len(), 65);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // No temporary file left.
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);

    // --json.
    let file3 = dir.join("r3.psk");
    let out = aoctl(&["--json", "gen-psk", file3.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["file"], file3.to_str().unwrap());
    assert_eq!(v["fingerprint"].as_str().map(str::len), Some(16));

    // Missing directories are created, mode 0700 (gen-psk /etc/aokd/x.psk
    // on a router without /etc/aokd).
    let deep = dir.join("no/such/dir/k.psk");
    let out = aoctl(&["gen-psk", deep.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for d in ["no", "no/such", "no/such/dir"] {
        let mode = std::fs::metadata(dir.join(d)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{d}");
    }
    let mode = std::fs::metadata(&deep).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A path that cannot be created is an error naming it.
    let bad = deep.join("under-a-file.psk");
    let out = aoctl(&["gen-psk", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(deep.to_str().unwrap()),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unreachable_socket_exits_2() {
    let out = aoctl(&["--socket", "/nonexistent/aokd.sock", "status"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("/nonexistent/aokd.sock"), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
    assert!(err.contains("is aokd running?"), "{err}");

    // AOKD_SOCKET is the default for --socket.
    let out = Command::new(AOCTL)
        .arg("sas")
        .env("AOKD_SOCKET", "/nonexistent/env.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/env.sock"),
        "{}",
        stderr(&out)
    );
}

/// A control socket that accepts and never answers: aoctl gives up after
/// `--timeout` (or AOKD_TIMEOUT) seconds, naming the socket and the wait.
#[test]
fn a_silent_control_socket_times_out() {
    let dir = TempDir::new("silent");
    let sock = dir.join("silent.sock");
    let s = sock.to_str().unwrap();
    let listener = UnixListener::bind(&sock).unwrap();
    // Accepts every connection and keeps it open, reading nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let started = std::time::Instant::now();
    let out = aoctl(&["--socket", s, "--timeout", "1", "status"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    let err = stderr(&out);
    assert!(err.contains(s), "{err}");
    assert!(err.contains("did not answer within 1 s"), "{err}");
    assert!(err.contains("--timeout"), "{err}");

    // AOKD_TIMEOUT is the default for --timeout.
    let started = std::time::Instant::now();
    let out = Command::new(AOCTL)
        .args(["--socket", s, "sas"])
        .env("AOKD_TIMEOUT", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(stderr(&out).contains("within 1 s"), "{}", stderr(&out));

    // A timeout of 0 would mean none at all: refused.
    let out = aoctl(&["--socket", s, "--timeout", "0", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--timeout"), "{}", stderr(&out));
}

/// Serves `n` connections on `path`, answering each request with
/// `answer(command)`; returns the commands received.
fn fake_server(
    path: &Path,
    n: usize,
    answer: impl Fn(&Cmd) -> String + Send + 'static,
) -> JoinHandle<Vec<Cmd>> {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..n {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 0 {
                let req: Request = serde_json::from_str(&line).unwrap();
                assert_eq!(req.version, PROTOCOL_VERSION);
                let mut reply = answer(&req.command);
                reply.push('\n');
                writer.write_all(reply.as_bytes()).unwrap();
                seen.push(req.command);
                line.clear();
            }
        }
        seen
    })
}

fn ok(data: ResponseData) -> String {
    serde_json::to_string(&Response {
        version: PROTOCOL_VERSION,
        result: ResponseResult::Ok { data },
    })
    .unwrap()
}

fn canned_status() -> DaemonStatus {
    DaemonStatus {
        daemon_version: "0.1.0".into(),
        started_at: 1_700_000_000,
        listen: vec!["0.0.0.0:500".into(), "[::]:500".into()],
        peers: vec![
            PeerStatus {
                name: "r2".into(),
                address: "192.0.2.2:500".into(),
                ike_state: "established".into(),
                tcp_ao_capable: Some(true),
                mkts: 2,
                last_error: None,
                backend: Some("tcp-md5".into()),
                rollovers: None,
                group: None,
            },
            PeerStatus {
                name: "r3-long-name".into(),
                address: "[2001:db8::3]:500".into(),
                ike_state: "failed".into(),
                tcp_ao_capable: None,
                mkts: 0,
                last_error: Some("AUTHENTICATION_FAILED\x1b[2J".into()),
                backend: None,
                rollovers: None,
                group: None,
            },
        ],
        state_file: Some(Box::new(StateFileStatus {
            path: "/var/lib/aokd/aokd.redb".into(),
            health: "failing".into(),
            error: Some("No space left on device (os error 28)".into()),
            failing_since: Some(1_700_000_000),
            pending: 3,
            lost: 0,
            commits: 10,
            failed_commits: 2,
            reopened: 1,
        })),
        dos: None,
        negotiations: None,
    }
}

fn canned_sas() -> Vec<SaStatus> {
    vec![SaStatus {
        peer: "r2".into(),
        address: "192.0.2.2:500".into(),
        state: "established".into(),
        role: "initiator".into(),
        spi_i: "0123456789abcdef".into(),
        spi_r: "fedcba9876543210".into(),
        suite: Some("aes256gcm16-prfsha256-x25519".into()),
        established_at: Some(1_700_000_100),
        rekey_at: None,
        tcp_ao_capable: Some(true),
        last_error: None,
    }]
}

fn canned_mkts() -> Vec<MktStatus> {
    vec![
        MktStatus {
            peer: "r2".into(),
            send_id: 17,
            recv_id: 200,
            algorithm: "hmac-sha256-128".into(),
            include_options: true,
            created_at: 1_700_000_200,
            key_fingerprint: "0011223344556677".into(),
            state: Some("active".into()),
            rekey_at: Some(1_700_003_600),
            expires_at: Some(1_700_004_000),
        },
        MktStatus {
            peer: "r2".into(),
            send_id: 18,
            recv_id: 201,
            algorithm: "aes128-cmac-96".into(),
            include_options: false,
            created_at: 1_700_000_300,
            key_fingerprint: "8899aabbccddeeff".into(),
            state: None,
            rekey_at: None,
            expires_at: None,
        },
    ]
}

fn canned(cmd: &Cmd) -> String {
    match cmd {
        Cmd::Status => ok(ResponseData::Status(canned_status())),
        Cmd::Sas => ok(ResponseData::Sas { sas: canned_sas() }),
        Cmd::Mkts => ok(ResponseData::Mkts {
            mkts: canned_mkts(),
        }),
        Cmd::Initiate { peer } => ok(ResponseData::Accepted {
            message: format!("initiating with {peer}"),
        }),
        Cmd::Terminate { peer } => serde_json::to_string(&Response {
            version: PROTOCOL_VERSION,
            result: ResponseResult::Error {
                message: format!("no peer named {peer:?}"),
            },
        })
        .unwrap(),
        Cmd::Sockets => ok(ResponseData::Sockets {
            sockets: vec![SocketStatus {
                pid: 4242,
                fd: 7,
                role: "connect".into(),
                local: Some("10.0.0.1:40000".into()),
                remote: Some("10.0.0.2:179".into()),
                peers: vec!["r2".into()],
                state: "guarded".into(),
                guard_reason: Some("no MKT yet".into()),
                mechanism: Some("tcp-md5".into()),
                attached_at: 1_700_000_000,
                pkt_good: None,
                pkt_bad: None,
                pkt_key_not_found: None,
                pkt_ao_required: None,
                current_key: None,
                rnext_key: None,
            }],
        }),
        Cmd::Rekey { peer, .. } => ok(ResponseData::Accepted {
            message: format!("rekeying {peer}"),
        }),
        Cmd::MktKeys => unreachable!("aoctl never asks for keys here"),
        Cmd::Reload => ok(ResponseData::Reloaded(aokd_api::control::ReloadReport {
            file: "/etc/aokd/aokd.toml".into(),
            added: vec!["r4".into()],
            removed: vec!["r3".into()],
            changed: vec![aokd_api::control::PeerReload {
                peer: "r5".into(),
                action: "new IKE SA".into(),
            }],
            unchanged: vec!["r2".into()],
            needs_restart: vec!["daemon.listen".into()],
        })),
    }
}

/// `aoctl reload`: the report as text and JSON; a refused file is aokd's
/// error on stderr and exit status 1.
#[test]
fn reload_prints_the_report_or_the_refusal() {
    let dir = TempDir::new("reload");
    let sock = dir.join("control.sock");
    let s = sock.to_str().unwrap();
    let server = fake_server(&sock, 2, canned);
    let out = aoctl(&["--socket", s, "reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "/etc/aokd/aokd.toml: reloaded\n\
         peer r4: added\n\
         peer r3: removed (IKE SA deleted, MKTs kept until their hard lifetime)\n\
         peer r5: changed, new IKE SA\n\
         1 peer(s) unchanged\n\
         needs a restart: daemon.listen (the running value is kept)\n"
    );
    let out = aoctl(&["--socket", s, "--json", "reload"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["changed"][0]["action"], "new IKE SA");
    assert_eq!(v["needs_restart"][0], "daemon.listen");
    assert_eq!(server.join().unwrap(), vec![Cmd::Reload, Cmd::Reload]);

    let sock = dir.join("refusing.sock");
    let s = sock.to_str().unwrap();
    let message = "/etc/aokd/aokd.toml: peer[0].mac_algorithms[0] (peer \"r2\"): unknown MAC algorithm \"hmac-md5\"";
    let server = fake_server(&sock, 1, move |_| {
        serde_json::to_string(&Response {
            version: PROTOCOL_VERSION,
            result: ResponseResult::Error {
                message: message.into(),
            },
        })
        .unwrap()
    });
    let out = aoctl(&["--socket", s, "reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(message), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    server.join().unwrap();
}

#[test]
fn tables_and_json_from_a_fake_server() {
    let dir = TempDir::new("fake");
    let sock = dir.join("control.sock");
    let s = sock.to_str().unwrap();
    let server = fake_server(&sock, 10, canned);

    // status
    let out = aoctl(&["--socket", s, "status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("aokd 0.1.0, started 2023-11-14 22:13:20Z ("),
        "{text}"
    );
    assert!(
        lines[0].ends_with("listening on 0.0.0.0:500, [::]:500"),
        "{text}"
    );
    // The state file's health: failing, with the error.
    assert!(
        lines[1].starts_with(
            "state file /var/lib/aokd/aokd.redb: failing since 2023-11-14 22:13:20Z ("
        ) && lines[1].ends_with(", 3 changes waiting in memory, 2 failed writes, reopened 1 times"),
        "{text}"
    );
    assert_eq!(lines[2], "  error: No space left on device (os error 28)");
    assert_eq!(lines[3], "");
    assert_eq!(
        lines[4],
        "PEER          ADDRESS            IKE          MKTS  SIGNING                    LAST ERROR"
    );
    assert_eq!(
        lines[5],
        "r2            192.0.2.2:500      established  2     tcp-md5 (peer has TCP-AO)  -"
    );
    // The escape sequence from the daemon is not passed to the terminal.
    assert_eq!(lines[6], "r3-long-name  [2001:db8::3]:500  failed       0     -                          AUTHENTICATION_FAILED\\u{1b}[2J");
    assert_eq!(lines.len(), 7);

    let out = aoctl(&["--socket", s, "--json", "status"]);
    assert!(out.status.success());
    let back: DaemonStatus = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(back, canned_status());
    let text = stdout(&out);
    assert!(
        text.starts_with(
            "{\n  \"daemon_version\": \"0.1.0\",\n  \"started_at\": 1700000000,\n  \"listen\""
        ),
        "{text}"
    );
    assert!(!text.contains("\"kind\""), "{text}");

    // sas: --json after the subcommand works too.
    let out = aoctl(&["--socket", s, "sas"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (header, value) in [
        ("PEER", "r2"),
        ("ADDRESS", "192.0.2.2:500"),
        ("STATE", "established"),
        ("ROLE", "initiator"),
        ("SPIS", "0123456789abcdef_i fedcba9876543210_r"),
        ("SUITE", "aes256gcm16-prfsha256-x25519"),
        ("ESTABLISHED", "2023-11-14 22:15:00Z ("),
        ("LAST ERROR", "-"),
    ] {
        let col = lines[0]
            .find(header)
            .unwrap_or_else(|| panic!("no {header} in {text}"));
        assert!(lines[1][col..].starts_with(value), "{header}: {text}");
    }
    let out = aoctl(&["--socket", s, "sas", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["sas"]
    );
    let back: Vec<SaStatus> = serde_json::from_value(v["sas"].clone()).unwrap();
    assert_eq!(back, canned_sas());

    // mkts
    let out = aoctl(&["--socket", s, "mkts"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("PEER  SEND  RECV  ALGORITHM        OPTIONS   STATE   CREATED"),
        "{text}"
    );
    assert!(
        lines[1].starts_with(
            "r2    17    200   hmac-sha256-128  included  active  2023-11-14 22:16:40Z ("
        ),
        "{text}"
    );
    assert!(lines[1].ends_with("0011223344556677"), "{text}");
    // Time left: rekey and hard lifetime, relative to now.
    assert!(lines[1].contains("ago  "), "{text}");
    assert!(
        lines[2].starts_with(
            "r2    18    201   aes128-cmac-96   excluded  -       2023-11-14 22:18:20Z ("
        ),
        "{text}"
    );
    let out = aoctl(&["--json", "--socket", s, "mkts"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let back: Vec<MktStatus> = serde_json::from_value(v["mkts"].clone()).unwrap();
    assert_eq!(back, canned_mkts());
    let text = stdout(&out);
    assert!(
        text.contains("\"peer\": \"r2\",\n      \"send_id\": 17,\n      \"recv_id\": 200,"),
        "{text}"
    );

    // sockets: a guarded socket shows why.
    let out = aoctl(&["--socket", s, "sockets"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.lines().next().unwrap().starts_with("PID   FD  ROLE"),
        "{text}"
    );
    assert!(text.contains("guarded (no MKT yet)"), "{text}");
    assert!(text.contains("10.0.0.2:179"), "{text}");
    let out = aoctl(&["--socket", s, "--json", "sockets"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sockets"][0]["state"], "guarded");
    assert_eq!(v["sockets"][0]["pid"], 4242);

    // initiate: accepted; terminate: an error response exits 1.
    let out = aoctl(&["--socket", s, "initiate", "r2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "initiating with r2\n");
    let out = aoctl(&["--socket", s, "terminate", "r9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no peer named \"r9\""),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "");

    let seen = server.join().unwrap();
    assert_eq!(seen.len(), 10);
    assert_eq!(seen[6], Cmd::Sockets);
    assert_eq!(seen[8], Cmd::Initiate { peer: "r2".into() });
    assert_eq!(seen[9], Cmd::Terminate { peer: "r9".into() });
}

#[test]
fn empty_answers_and_bad_servers() {
    let dir = TempDir::new("fake2");
    let sock = dir.join("control.sock");
    let s = sock.to_str().unwrap();
    let server = fake_server(&sock, 4, |cmd| match cmd {
        Cmd::Sas => ok(ResponseData::Sas { sas: vec![] }),
        Cmd::Mkts => ok(ResponseData::Mkts { mkts: vec![] }),
        // A newer daemon with an unknown version.
        Cmd::Status => r#"{"version":9,"status":"ok","data":{"kind":"new-thing"}}"#.into(),
        // Not JSON at all.
        _ => "garbage".into(),
    });
    let out = aoctl(&["--socket", s, "sas"]);
    assert_eq!(stdout(&out), "no IKE SAs\n");
    let out = aoctl(&["--socket", s, "mkts"]);
    assert_eq!(stdout(&out), "no MKTs\n");
    let out = aoctl(&["--socket", s, "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("version 9"), "{}", stderr(&out));
    let out = aoctl(&["--socket", s, "initiate", "r2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid response"),
        "{}",
        stderr(&out)
    );
    server.join().unwrap();
}

/// `aoctl metrics`: OpenMetrics text from status, sas, mkts and sockets,
/// on stdout or atomically into a file (node_exporter's textfile
/// collector).
#[test]
fn metrics_in_openmetrics_text() {
    let dir = TempDir::new("metrics");
    let sock = dir.join("control.sock");
    let s = sock.to_str().unwrap();
    let server = fake_server(&sock, 8, canned);
    let out = aoctl(&["--socket", s, "metrics"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "# TYPE aokd_peers gauge",
        "aokd_peers{state=\"established\"} 1",
        "aokd_peers{state=\"failed\"} 1",
        "aokd_peer_up{peer=\"r2\",backend=\"tcp-md5\"} 1",
        "aokd_peer_up{peer=\"r3-long-name\",backend=\"unknown\"} 0",
        "aokd_peer_failing{peer=\"r3-long-name\",error=\"AUTHENTICATION_FAILED[2J\"} 1",
        "aokd_ike_sas{state=\"established\",role=\"initiator\"} 1",
        "aokd_mkts{state=\"active\",algorithm=\"hmac-sha256-128\"} 1",
        "aokd_sockets{state=\"guarded\",mechanism=\"tcp-md5\"} 1",
        "aokd_state_file_failing 1",
        "aokd_state_file_pending 3",
        "# TYPE aokd_state_file_commits counter",
        "aokd_state_file_commits_total{result=\"failed\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
    // Every sample's family has a TYPE line before it.
    let mut typed = std::collections::BTreeSet::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_string());
        } else if !l.starts_with('#') {
            let name = l.split(['{', ' ']).next().unwrap();
            let family = name.strip_suffix("_total").unwrap_or(name);
            assert!(typed.contains(family), "{l}: no TYPE for {family}");
        }
    }
    let file = dir.join("aokd.prom");
    let out = aoctl(&["--socket", s, "metrics", "--output", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    assert!(!dir.join("aokd.prom.tmp").exists());
    drop(server);
}

/// `aoctl help`, `aoctl help CMD` and `aoctl help --help` all print help
/// and exit 0 (clap's generated help command refused the last one); an
/// unknown command is exit status 2.
#[test]
fn help_command_takes_help() {
    for (args, first) in [
        (&["help"][..], "Control tool for aokd"),
        (&["help", "--help"][..], "Print this message or the help"),
        (
            &["help", "verify"][..],
            "Verify TCP-AO / TCP-MD5 signatures",
        ),
        (&["help", "help"][..], "Print this message or the help"),
    ] {
        let out = aoctl(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(
            stdout(&out).starts_with(first),
            "{args:?}: {}",
            stdout(&out)
        );
        assert!(stdout(&out).contains("Usage: aoctl"), "{args:?}");
    }
    let out = aoctl(&["help", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no command \"nope\""),
        "{}",
        stderr(&out)
    );
}

/// aoctl finds the control socket through the daemon's configuration:
/// `--config FILE` reads `daemon.control_socket` (relative to the file's
/// directory, as aokd does); `--socket` and AOKD_SOCKET win over it; an
/// unreadable `--config` is exit status 2 naming the file.
#[test]
fn control_socket_from_the_configuration_file() {
    let dir = TempDir::new("config");
    let sock = dir.join("run").join("ctl.sock");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    let config = dir.join("aokd.toml");
    std::fs::write(
        &config,
        "[daemon]\ncontrol_socket = \"run/ctl.sock\"\n\n[[peer]]\nname = \"r2\"\n",
    )
    .unwrap();
    let server = fake_server(&sock, 1, canned);
    let out = aoctl(&["--config", config.to_str().unwrap(), "status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("r2"), "{}", stdout(&out));
    assert_eq!(server.join().unwrap(), vec![Cmd::Status]);

    // --socket and AOKD_SOCKET come first.
    let out = aoctl(&[
        "--config",
        config.to_str().unwrap(),
        "--socket",
        "/nonexistent/s.sock",
        "sas",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/s.sock"),
        "{}",
        stderr(&out)
    );
    let out = Command::new(AOCTL)
        .args(["--config", config.to_str().unwrap(), "sas"])
        .env("AOKD_SOCKET", "/nonexistent/env.sock")
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("/nonexistent/env.sock"),
        "{}",
        stderr(&out)
    );

    let out = aoctl(&["--config", "/nonexistent/aokd.toml", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read /nonexistent/aokd.toml"),
        "{}",
        stderr(&out)
    );
}
