//! Support for the integration tests: finds the real `aokd` and `aoctl`
//! binaries, writes configurations and PSK files into a private temporary
//! directory, starts daemons, and reads their state through `aoctl --json`.

use std::fs;
use std::io::Read;
use std::net::UdpSocket;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod bird;
pub mod echo;
pub mod host;
pub mod ike;
pub mod netns;
pub mod pki;
pub mod process;
pub mod sock;
pub mod strongswan;
pub mod vm;

/// Path of a binary built by `cargo test --workspace` / `cargo build --workspace`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>; a binary of
    // this crate (target/<profile>/<bin>) finds its siblings.
    let parent = exe.parent().expect("target directory");
    let dir = if parent.file_name().is_some_and(|n| n == "deps") {
        parent.parent().expect("target directory")
    } else {
        parent
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run the tests with `cargo test --workspace` (it builds every binary)",
        path.display()
    );
    path
}

/// The preload library: `AOKD_TEST_PRELOAD` if set, else the one `cargo
/// test --workspace` just built (it builds cdylibs into `target/<profile>/deps`),
/// else the copy `cargo build` puts in `target/<profile>`.
pub fn preload_library() -> PathBuf {
    if let Some(p) = std::env::var_os("AOKD_TEST_PRELOAD") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("target/<profile>/deps").to_path_buf();
    let built_for_test = deps.join("libaokd_preload.so");
    if built_for_test.exists() {
        return built_for_test;
    }
    deps.parent()
        .map(|d| d.join("libaokd_preload.so"))
        .unwrap_or(built_for_test)
}

/// A fresh directory under the system temporary directory, mode 0700.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "aokd-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create temp dir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod temp dir");
    dir
}

/// A UDP port that was free a moment ago on `ip`.
pub fn free_udp_port(ip: &str) -> u16 {
    let s = UdpSocket::bind((ip, 0)).expect("bind UDP port 0");
    s.local_addr().expect("local addr").port()
}

/// Writes a PSK file with mode 0600.
pub fn write_psk(path: &Path, psk: &str) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("write psk");
    std::io::Write::write_all(&mut f, psk.as_bytes()).expect("write psk");
}

/// The PEM files of one side with `auth = "pubkey"`: `certificate` (its
/// certificate then intermediates), `private_key` (PKCS#8, mode 0600) and
/// `ca` (the trust anchors for the peer's certificate).
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    pub ca: PathBuf,
}

/// One side of a test: its address, port and files.
#[derive(Clone, Debug)]
pub struct Side {
    pub name: String,
    pub ip: String,
    pub port: u16,
    pub dir: PathBuf,
}

impl Side {
    pub fn new(root: &Path, name: &str, ip: &str) -> Side {
        let dir = root.join(name);
        fs::create_dir_all(&dir).expect("side dir");
        Side {
            name: name.into(),
            ip: ip.into(),
            port: free_udp_port(ip),
            dir,
        }
    }

    /// Like [`Side::new`] with a given IKE port (e.g. 500 inside a network
    /// namespace of its own, where `ip` is not a local address of the
    /// caller's namespace).
    pub fn with_port(root: &Path, name: &str, ip: &str, port: u16) -> Side {
        let dir = root.join(name);
        fs::create_dir_all(&dir).expect("side dir");
        Side {
            name: name.into(),
            ip: ip.into(),
            port,
            dir,
        }
    }

    /// The attach socket path (every configuration written here sets it).
    pub fn attach_socket(&self) -> PathBuf {
        self.dir.join("attach.sock")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("aokd.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("aokd.log")
    }

    /// Writes this side's configuration with `other` as its only peer.
    /// `extra` is appended to the `[[peer]]` table.
    pub fn write_config(&self, other: &Side, psk: &str, extra: &str) {
        self.write_config_with(other, psk, "", extra)
    }

    /// Like [`Side::write_config`]; `daemon_extra` is appended to the
    /// `[daemon]` table.
    pub fn write_config_with(&self, other: &Side, psk: &str, daemon_extra: &str, extra: &str) {
        let psk_path = self.dir.join(format!("{}.psk", other.name));
        write_psk(&psk_path, psk);
        let auth = format!("psk_file = \"{}\"", psk_path.display());
        self.write_config_auth(other, &auth, daemon_extra, extra);
    }

    /// Like [`Side::write_config_with`] with the daemon's metrics written to
    /// `file` every second (`metrics_file`, `metrics_interval = "1s"`).
    pub fn write_config_with_metrics(&self, other: &Side, psk: &str, file: &Path) {
        let daemon = format!(
            "metrics_file = \"{}\"\nmetrics_interval = \"1s\"",
            file.display()
        );
        self.write_config_with(other, psk, &daemon, "")
    }

    /// Like [`Side::write_config_with`] with `auth = "pubkey"` and the
    /// PEM files `files` instead of a PSK.
    pub fn write_pubkey_config(
        &self,
        other: &Side,
        files: &CertFiles,
        daemon_extra: &str,
        extra: &str,
    ) {
        let auth = format!(
            "auth = \"pubkey\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\nca = \"{}\"",
            files.certificate.display(),
            files.private_key.display(),
            files.ca.display()
        );
        self.write_config_auth(other, &auth, daemon_extra, extra);
    }

    /// Writes this side's configuration with no `[[peer]]` but one
    /// `[[peer_group]]` named `group` over `prefixes`, authenticated with
    /// the PEM files `files`; `extra` is appended to the group's table.
    pub fn write_group_config(
        &self,
        group: &str,
        prefixes: &[&str],
        files: &CertFiles,
        extra: &str,
    ) {
        let remote: Vec<String> = prefixes.iter().map(|p| format!("\"{p}\"")).collect();
        let text = format!(
            r#"{daemon}
[[peer_group]]
name = "{group}"
remote = [{remote}]
local = "{ip}"
certificate = "{cert}"
private_key = "{key}"
ca = "{ca}"
{extra}
"#,
            daemon = self.daemon_table(),
            ip = self.ip,
            remote = remote.join(", "),
            cert = files.certificate.display(),
            key = files.private_key.display(),
            ca = files.ca.display(),
        );
        fs::write(self.config_path(), text).expect("write config");
    }

    /// The `[daemon]` table every configuration written here starts with
    /// (address, port, control and attach sockets, state directory), each
    /// line ending in a newline.
    fn daemon_table(&self) -> String {
        format!(
            r#"[daemon]
listen = ["{ip}"]
port = {port}
control_socket = "{sock}"
attach_socket = "{attach}"
state_dir = "{state}"
"#,
            ip = self.ip,
            port = self.port,
            sock = self.socket().display(),
            state = self.dir.join("state").display(),
            attach = self.attach_socket().display(),
        )
    }

    /// Writes this side's configuration with `other` as its only peer,
    /// authenticated by the lines `auth` of the `[[peer]]` table.
    fn write_config_auth(&self, other: &Side, auth: &str, daemon_extra: &str, extra: &str) {
        let text = format!(
            r#"{daemon}{daemon_extra}

[[peer]]
name = "{peer}"
remote = "{rip}"
remote_port = {rport}
local = "{ip}"
{auth}
{extra}
"#,
            daemon = self.daemon_table(),
            ip = self.ip,
            peer = other.name,
            rip = other.ip,
            rport = other.port,
        );
        fs::write(self.config_path(), text).expect("write config");
    }
}

/// Two sides on the loopback interface, `a` on 127.0.0.1 and `b` on
/// 127.0.0.2 (free IKE ports), in a fresh [`temp_dir`] named after `tag`; no
/// configuration written yet.
pub fn loopback_sides(tag: &str) -> (Side, Side) {
    let root = temp_dir(tag);
    let a = Side::new(&root, "a", "127.0.0.1");
    let b = Side::new(&root, "b", "127.0.0.2");
    (a, b)
}

/// [`loopback_sides`] with each side's configuration written: `psk` on
/// both, A initiates, B waits (`initiate = false`).
pub fn loopback_pair(tag: &str, psk: &str) -> (Side, Side) {
    let (a, b) = loopback_sides(tag);
    a.write_config(&b, psk, "");
    b.write_config(&a, psk, "initiate = false");
    (a, b)
}

/// A running aokd, killed when dropped.
pub struct Daemon {
    pub side: Side,
    pub child: Child,
}

impl Daemon {
    /// Starts `aokd --config` for `side`, logging to `side.log_path()`.
    pub fn start(side: &Side) -> Daemon {
        Daemon::start_with(side, Command::new(binary("aokd")))
    }

    /// Starts aokd for `side` inside the network namespace `ns`.
    pub fn start_in(side: &Side, ns: &netns::Netns) -> Daemon {
        Daemon::start_with(side, ns.command(binary("aokd")))
    }

    /// Starts `cmd` (which runs aokd, possibly through a wrapper such as
    /// `ip netns exec`) with `--config` for `side`.
    pub fn start_with(side: &Side, mut cmd: Command) -> Daemon {
        let log = fs::File::create(side.log_path()).expect("log file");
        let child = cmd
            .arg("--config")
            .arg(side.config_path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start aokd");
        Daemon {
            side: side.clone(),
            child,
        }
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(self.side.log_path()) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// `aoctl --socket S --json ARGS...` parsed, or the error text.
    pub fn aoctl(&self, args: &[&str]) -> Result<Value, String> {
        aoctl_json(&self.side.socket(), args)
    }

    /// Waits (up to `timeout` for each) until the daemon has exactly one
    /// established IKE SA and then exactly one MKT; returns the `aoctl mkts`
    /// answer that showed it.
    pub fn wait_keyed(&self, timeout: Duration) -> Value {
        self.wait_for(&["sas"], timeout, |v| established_sas(v).len() == 1);
        self.wait_for(&["mkts"], timeout, |v| mkts(v).len() == 1)
    }

    /// Polls `aoctl` until `cond` holds on the value of `args` or `timeout` passes.
    pub fn wait_for(
        &self,
        args: &[&str],
        timeout: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Err("not asked yet".to_string());
        while Instant::now() < deadline {
            last = self.aoctl(args);
            if let Ok(v) = &last {
                if cond(v) {
                    return v.clone();
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{}: condition on `aoctl {}` not met within {timeout:?}; last answer: {last:?}\nlog:\n{}",
            self.side.name,
            args.join(" "),
            self.log()
        );
    }
}

/// The logs of `daemons` for a failure message: each as `\nLABEL:\n` and
/// the log.
pub fn logs_text(daemons: &[(&str, &Daemon)]) -> String {
    daemons
        .iter()
        .map(|(label, d)| format!("\n{label}:\n{}", d.log()))
        .collect()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `aoctl --socket SOCK --json ARGS` and parses its output.
pub fn aoctl_json(socket: &Path, args: &[&str]) -> Result<Value, String> {
    let out = Command::new(binary("aoctl"))
        .arg("--socket")
        .arg(socket)
        .arg("--json")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run aoctl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "aoctl exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("aoctl output is not JSON: {e}"))
}

/// The MKTs array of `aoctl --json mkts`.
pub fn mkts(v: &Value) -> Vec<Value> {
    v["mkts"].as_array().cloned().unwrap_or_default()
}

/// The established SAs of `aoctl --json sas`.
pub fn established_sas(v: &Value) -> Vec<Value> {
    v["sas"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| s["state"] == "established")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// One request (`{"version":PROTOCOL_VERSION,"command":COMMAND}`) on the control socket
/// `socket`, without aoctl (fast enough to poll): the answer's `data`, or
/// the error (connection, transport, or a status other than ok).
pub fn control(socket: &Path, command: &str) -> Result<Value, String> {
    use std::io::{BufRead, BufReader, Write};
    let mut s =
        std::os::unix::net::UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let version = aokd_api::control::PROTOCOL_VERSION;
    s.write_all(format!("{{\"version\":{version},\"command\":\"{command}\"}}\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    let v: Value = serde_json::from_str(&line).map_err(|e| format!("not JSON: {e}"))?;
    if v["status"] != "ok" {
        return Err(line.trim().to_string());
    }
    Ok(v["data"].clone())
}

/// The master keys (hex) of the daemon's MKTs, read with the control
/// command `mkt-keys` (root only; docs/control.md) and parsed as the
/// protocol's `MktKeys` answer: the TCP-MD5 key aokd installs for an MKT is
/// its master key.
pub fn mkt_master_keys(socket: &Path) -> Result<Vec<String>, String> {
    use aokd_api::control::ResponseData;
    match serde_json::from_value::<ResponseData>(control(socket, "mkt-keys")?) {
        Ok(ResponseData::MktKeys { keys }) => Ok(keys.into_iter().map(|k| k.master_key).collect()),
        other => Err(format!("mkt-keys: unexpected answer {other:?}")),
    }
}

/// `aoctl verify --pcap PCAP --json ARGS...`: exit status and the JSON
/// document (panics if aoctl printed none).
pub fn aoctl_verify<I, S>(pcap: &Path, args: I) -> (Option<i32>, Value)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(binary("aoctl"))
        .arg("verify")
        .arg("--pcap")
        .arg(pcap)
        .arg("--json")
        .args(args)
        .output()
        .expect("run aoctl verify");
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "aoctl verify printed no JSON ({e}), status {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

/// Lines of an aokd log whose fields print Rust debug text instead of
/// the words an operator reads (`ports=[PortRange { start: 179, .. }]`,
/// `added=[KeyIds { send_id: 89, .. }]`, `pid=Some(154)`, `role=Connect`,
/// `configured=TcpAo`, `peers=["b"]`), or say a phrase twice ("IKE
/// negotiation failed: negotiation failed:"). Empty when the log reads well.
pub fn unreadable_log_lines(log: &str) -> Vec<String> {
    const DEBUG_TEXT: &[&str] = &[
        " { start:",
        " { send_id:",
        "=Some(",
        "=None",
        "=[\"",
        "=[KeyIds",
        "=[PortRange",
        "role=Connect",
        "role=Listen",
        "role=Accepted",
        "configured=TcpAo",
        "configured=TcpMd5",
        "configured=Auto",
        "installed=Keys",
        "installed=Guard",
        "negotiation failed: negotiation failed",
    ];
    log.lines()
        .filter(|l| DEBUG_TEXT.iter().any(|p| l.contains(p)))
        .map(str::to_string)
        .collect()
}
