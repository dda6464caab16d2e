//! Network namespaces for the end-to-end tests: [`Netns`] (a fresh named
//! namespace with `lo` up, deleted with everything left in it when
//! dropped), [`veth_pair`] (a veth link between two namespaces, with private
//! addresses that exist only inside them), [`Netns::command`] (`ip netns
//! exec`), [`Capture`] (tcpdump on an interface of a namespace, confirmed
//! listening before it returns, stopped with SIGINT) and [`netstat`] (the
//! namespace's `TcpExt` counters of `/proc/net/netstat`, e.g.
//! `TCPMD5Failure`, `TCPMD5NotFound`).
//!
//! Only `ip` (iproute2 or busybox), `tcpdump` and `cat` are used, so the
//! same code runs inside the test VM (tests/vm/). Every namespace gets a
//! unique name `aokd-<pid>-<n>`; nothing is configured outside the
//! namespaces the tests create.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::host::{can_run, is_root, on_path, target_dir};
use crate::process::{self, Proc};
use crate::{temp_dir, Daemon, Side};

/// Runs `ip ARGS` and returns its output, or an error naming the command.
pub fn ip(args: &[&str]) -> Result<Output, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `aokd-<pid>-<n>` and brings its `lo` up.
    pub fn new() -> Result<Netns, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "aokd-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        // A leftover of a crashed run with the same pid would make `add` fail.
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME PROGRAM`: a command to run inside the namespace
    /// (`ip` execs the program, so the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program args` in the namespace to completion.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output, String> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {program} in {}: {e}", self.name))?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(format!(
                "`{program} {}` in {} failed ({}): {}",
                args.join(" "),
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The pids of the processes inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        ip(&["netns", "pids", &self.name])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Everything in the namespace was started by the test; a process a
        // failed test left behind must not outlive it.
        for pid in self.pids() {
            // SAFETY: kill(2) with a pid `ip netns pids` listed for our own
            // namespace.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("netns cleanup: {e}");
        }
    }
}

/// A veth link: `if_a` in namespace A with `addr_a`, `if_b` in B with `addr_b`.
#[derive(Debug, Clone)]
pub struct Veth {
    pub if_a: String,
    pub if_b: String,
    pub addr_a: String,
    pub addr_b: String,
}

/// Joins `a` and `b` with a veth pair (`veth0` in each; the link is created
/// directly inside the namespaces, never in the caller's), gives the ends
/// `addr_a` and `addr_b` (`IP/PREFIX`, e.g. `10.201.0.1/24`), brings them
/// up and waits (bounded) until both report carrier.
pub fn veth_pair(a: &Netns, b: &Netns, addr_a: &str, addr_b: &str) -> Result<Veth, String> {
    let (ia, ib) = ("veth0", "veth0");
    ip(&[
        "-n",
        a.name(),
        "link",
        "add",
        ia,
        "type",
        "veth",
        "peer",
        "name",
        ib,
        "netns",
        b.name(),
    ])?;
    for (ns, ifname, addr) in [(a, ia, addr_a), (b, ib, addr_b)] {
        ip(&["-n", ns.name(), "addr", "add", addr, "dev", ifname])?;
        ip(&["-n", ns.name(), "link", "set", ifname, "up"])?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (ns, ifname) in [(a, ia), (b, ib)] {
        loop {
            let out = ip(&["-n", ns.name(), "link", "show", ifname])?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains("LOWER_UP") {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{ifname} in {} never came up: {text}", ns.name()));
            }
            // Carrier has no event we can wait on without netlink.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let strip = |s: &str| s.split('/').next().unwrap_or(s).to_string();
    Ok(Veth {
        if_a: ia.into(),
        if_b: ib.into(),
        addr_a: strip(addr_a),
        addr_b: strip(addr_b),
    })
}

/// The `TcpExt` counters of `/proc/net/netstat` inside `ns`.
pub fn netstat(ns: &Netns) -> Result<BTreeMap<String, u64>, String> {
    let out = ns.run("cat", &["/proc/net/netstat"])?;
    parse_netstat(&String::from_utf8_lossy(&out.stdout), "TcpExt")
}

/// Parses the `section` (e.g. `TcpExt`) of a `/proc/net/netstat` text: a
/// line of names followed by a line of values, both prefixed `section:`.
pub fn parse_netstat(text: &str, section: &str) -> Result<BTreeMap<String, u64>, String> {
    let prefix = format!("{section}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let names = lines
        .next()
        .ok_or(format!("no {section} in /proc/net/netstat"))?;
    let values = lines
        .next()
        .ok_or(format!("no {section} values in /proc/net/netstat"))?;
    let names: Vec<&str> = names.split_whitespace().skip(1).collect();
    let values: Vec<&str> = values.split_whitespace().skip(1).collect();
    if names.len() != values.len() {
        return Err(format!(
            "{section}: {} names but {} values",
            names.len(),
            values.len()
        ));
    }
    names
        .iter()
        .zip(values)
        .map(|(n, v)| {
            v.parse::<u64>()
                .map(|v| (n.to_string(), v))
                .map_err(|e| format!("{section} {n} = {v:?}: {e}"))
        })
        .collect()
}

/// A running `tcpdump -w` inside a namespace.
pub struct Capture {
    proc: Proc,
    file: PathBuf,
    stopped: Option<String>,
}

impl Capture {
    /// Starts `tcpdump -i IFACE --immediate-mode -U -s 0 -n -w FILE` in `ns`
    /// and returns once
    /// tcpdump has reported "listening on" (so nothing sent afterwards is
    /// missed).
    pub fn start(ns: &Netns, iface: &str, file: &Path) -> Result<Capture, String> {
        let mut cmd = ns.command("tcpdump");
        // -Z root: keep writing the file in the test's 0700 directory
        // (Debian's tcpdump otherwise drops to the user tcpdump).
        // --immediate-mode: hand every packet to tcpdump at once; otherwise
        // TPACKET_V3 delivers in blocks, and packets still in the ring when
        // SIGINT arrives are never written.
        cmd.args([
            "-i",
            iface,
            "--immediate-mode",
            "-U",
            "-s",
            "0",
            "-n",
            "-Z",
            "root",
            "-w",
        ])
        .arg(file);
        let mut proc = Proc::spawn(&format!("tcpdump in {}", ns.name()), cmd);
        if proc
            .wait_stderr_line(Duration::from_secs(20), |l| l.contains("listening on"))
            .is_none()
        {
            proc.kill();
            return Err(format!(
                "tcpdump did not start listening\n{}",
                proc.report()
            ));
        }
        Ok(Capture {
            proc,
            file: file.to_path_buf(),
            stopped: None,
        })
    }

    /// The capture file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Stops tcpdump with SIGINT (it flushes and writes its statistics) and
    /// waits for it; returns its stderr (e.g. "N packets captured").
    pub fn stop(&mut self) -> Result<String, String> {
        if let Some(s) = &self.stopped {
            return Ok(s.clone());
        }
        self.proc.signal(libc::SIGINT);
        match self.proc.wait_exit(Duration::from_secs(20)) {
            Some(st) if st.success() => {
                let text = self.proc.stderr();
                self.stopped = Some(text.clone());
                Ok(text)
            }
            Some(st) => Err(format!("tcpdump exited with {st}\n{}", self.proc.report())),
            None => {
                self.proc.kill();
                Err(format!("tcpdump ignored SIGINT\n{}", self.proc.report()))
            }
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.stopped.is_none() {
            let _ = self.stop();
        }
    }
}

/// Whether a namespace test can run: root, `ip`, `tcpdump`, the aokd and
/// aoctl binaries, the preload library when `need_preload`, and a network
/// namespace that can be created. A missing prerequisite fails under `CI`
/// and skips (with the reason) otherwise ([`crate::host::can_run`]).
pub fn prerequisites(test: &str, need_preload: bool) -> bool {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (network namespaces, TCP-MD5 counters, tcpdump)".to_string());
    }
    for cmd in ["ip", "tcpdump"] {
        if !on_path(cmd) {
            missing.push(format!("`{cmd}` (apt-get install -y iproute2 tcpdump)"));
        }
    }
    for bin in ["aokd", "aoctl"] {
        if !target_dir().join(bin).exists() {
            missing.push(format!("{bin} binary (cargo build --workspace)"));
        }
    }
    let preload = crate::preload_library();
    if need_preload && !preload.exists() {
        missing.push(format!("{} (cargo build --workspace)", preload.display()));
    }
    if missing.is_empty() {
        if let Err(e) = Netns::new() {
            missing.push(format!("network namespaces: {e}"));
        }
    }
    can_run(test, &missing)
}

/// An nftables rule in the output path of a namespace that drops what it
/// matches (a lost datagram, on demand), in a table of its own
/// (`inet aokd_test`), deleted when dropped. Its packet counter says how
/// many it dropped.
pub struct NftDrop<'a> {
    ns: &'a Netns,
}

impl<'a> NftDrop<'a> {
    /// Adds `rule` (nft syntax before the verdict, e.g.
    /// `udp dport 500 quota until 1 bytes`) with `counter drop` to the
    /// output hook of `ns`.
    pub fn output(ns: &'a Netns, rule: &str) -> Result<NftDrop<'a>, String> {
        let script = format!(
            "table inet aokd_test {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  {rule} counter drop\n }}\n}}\n"
        );
        let path = crate::temp_dir("nft").join("rules.nft");
        std::fs::write(&path, script).map_err(|e| format!("write nft rules: {e}"))?;
        ns.run("nft", &["-f", &path.to_string_lossy()])?;
        Ok(NftDrop { ns })
    }

    /// The table as `nft list` shows it (with its counter).
    pub fn listing(&self) -> String {
        self.ns
            .run("nft", &["list", "table", "inet", "aokd_test"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| e)
    }

    /// Packets dropped so far.
    pub fn dropped(&self) -> u64 {
        let Ok(out) = self.ns.run("nft", &["list", "table", "inet", "aokd_test"]) else {
            return 0;
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // `... counter packets N bytes M drop`
        text.split_whitespace()
            .skip_while(|w| *w != "counter")
            .nth(2)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for NftDrop<'_> {
    fn drop(&mut self) {
        if let Err(e) = self
            .ns
            .run("nft", &["delete", "table", "inet", "aokd_test"])
        {
            eprintln!("nft cleanup: {e}");
        }
    }
}

/// How long [`start_daemon`] waits for aokd to answer and for its attach
/// socket.
pub const DAEMON_WAIT: Duration = Duration::from_secs(30);

/// Two namespaces A and B joined by a veth pair (`veth0` in A), with a
/// [`Side`] (configuration directory, IKE port 500) for each under `root`.
/// Fields drop in declaration order, and tests declare their processes
/// after this, so those go first.
pub struct Pair {
    pub a: Netns,
    pub b: Netns,
    pub side_a: Side,
    pub side_b: Side,
    pub root: PathBuf,
}

impl Pair {
    /// The namespaces, the veth pair with `addr_a`/24 and `addr_b`/24, and
    /// the sides (no configuration written yet).
    pub fn new(tag: &str, addr_a: &str, addr_b: &str) -> Pair {
        let a = Netns::new().expect("namespace A");
        let b = Netns::new().expect("namespace B");
        veth_pair(&a, &b, &format!("{addr_a}/24"), &format!("{addr_b}/24")).expect("veth");
        let root = temp_dir(tag);
        let side_a = Side::with_port(&root, "a", addr_a, 500);
        let side_b = Side::with_port(&root, "b", addr_b, 500);
        Pair {
            a,
            b,
            side_a,
            side_b,
            root,
        }
    }

    /// aokd in A, started with [`start_daemon`].
    pub fn start_a(&self) -> Daemon {
        start_daemon(&self.side_a, &self.a)
    }

    /// aokd in B, started with [`start_daemon`].
    pub fn start_b(&self) -> Daemon {
        start_daemon(&self.side_b, &self.b)
    }

    /// tcpdump on A's end of the veth, into `root/veth.pcap`.
    pub fn capture(&self) -> Capture {
        Capture::start(&self.a, "veth0", &self.root.join("veth.pcap")).expect("tcpdump")
    }

    /// B's `tcp-peer server --listen LISTEN --count 1 --attach <B's attach
    /// socket>` (`program`: the test's `env!("CARGO_BIN_EXE_tcp-peer")`),
    /// started with [`process::start_server`] (waiting up to `timeout`):
    /// the server and its "listening" line.
    pub fn attached_server(
        &self,
        program: &str,
        listen: &str,
        timeout: Duration,
    ) -> (Proc, serde_json::Value) {
        let mut cmd = self.b.command(program);
        cmd.args(["server", "--listen", listen, "--count", "1", "--attach"])
            .arg(self.side_b.attach_socket());
        process::start_server("tcp-peer server", cmd, timeout)
    }

    /// A's `tcp-peer client --connect CONNECT --attach <A's attach socket>`
    /// (`program` as for [`Pair::attached_server`]), run with
    /// [`process::run_client`] within `limit`; asserts that it exited 0 with
    /// `"ok": true` (the message shows its report, its output, `server`'s and
    /// the logs of `logs`, each after its label). Returns the report.
    pub fn attached_client(
        &self,
        program: &str,
        connect: &str,
        limit: Duration,
        server: &Proc,
        logs: &[(&str, &Daemon)],
    ) -> serde_json::Value {
        let mut cmd = self.a.command(program);
        cmd.args(["client", "--connect", connect, "--attach"])
            .arg(self.side_a.attach_socket());
        let (ok, report, client) = process::run_client("tcp-peer client", cmd, limit);
        assert!(
            ok && report["ok"] == true,
            "{report}\n{}\n{}{}",
            client.report(),
            server.report(),
            crate::logs_text(logs)
        );
        report
    }

    /// Both namespaces' `TcpExt` counters, A's first.
    pub fn netstat(&self) -> [BTreeMap<String, u64>; 2] {
        [
            netstat(&self.a).expect("netstat A"),
            netstat(&self.b).expect("netstat B"),
        ]
    }
}

/// Starts aokd in `ns` and waits (up to [`DAEMON_WAIT`]) until it answers on
/// its control socket and its attach socket exists.
pub fn start_daemon(side: &Side, ns: &Netns) -> Daemon {
    let d = Daemon::start_in(side, ns);
    d.wait_for(&["status"], DAEMON_WAIT, |_| true);
    let deadline = Instant::now() + DAEMON_WAIT;
    while !side.attach_socket().exists() {
        assert!(
            Instant::now() < deadline,
            "{}: no attach socket {} after {DAEMON_WAIT:?}\nlog:\n{}",
            side.name,
            side.attach_socket().display(),
            d.log()
        );
        // A path appearing is not an event we can wait on portably.
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

/// `tcpdump -nn FLAGS -r PCAP` as text (its first `max` lines), for failure
/// messages.
pub fn capture_text(pcap: &Path, flags: &str, max: usize) -> String {
    Command::new("tcpdump")
        .args(["-nn", flags, "-r"])
        .arg(pcap)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .take(max)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcpext() {
        let text = "TcpExt: SyncookiesSent TCPMD5NotFound TCPMD5Failure\n\
                    TcpExt: 0 3 1\n\
                    IpExt: InNoRoutes\n\
                    IpExt: 0\n";
        let m = parse_netstat(text, "TcpExt").expect("parse");
        assert_eq!(m["TCPMD5NotFound"], 3);
        assert_eq!(m["TCPMD5Failure"], 1);
        assert_eq!(parse_netstat(text, "IpExt").expect("ip")["InNoRoutes"], 0);
        assert!(parse_netstat("TcpExt: A B\nTcpExt: 1\n", "TcpExt").is_err());
    }
}
