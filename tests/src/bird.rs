//! BIRD 2 (Debian's `bird2`) as a test peer: [`BirdConfig`] writes a
//! minimal BGP configuration (a static route exported, everything
//! imported, short timers, no password anywhere), [`Bird::start`] runs
//! `bird -f` inside a network namespace with its own configuration, control
//! socket, pid file and log, optionally under the preload library
//! ([`Preload`]) and as another user, and [`Bird`] queries it with `birdc`:
//! a protocol's state, polled with a deadline until it is `Established`,
//! and the routes it learnt.
//!
//! BIRD is killed (SIGKILL, by pid) when the [`Bird`] is dropped, and the
//! namespace's own cleanup kills anything it left behind.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::host::{can_run, on_path};
use crate::netns::Netns;
use crate::process::Proc;

/// Where Debian installs BIRD 2.
pub const BIRD: &str = "/usr/sbin/bird";
/// BIRD's client.
pub const BIRDC: &str = "/usr/sbin/birdc";

/// How often a wait asks BIRD again.
const POLL: Duration = Duration::from_millis(50);

/// Whether the BIRD tests can run: everything [`crate::netns::prerequisites`]
/// needs, and `bird`/`birdc` (apt-get install bird2). Missing pieces fail
/// under `CI` and skip otherwise.
pub fn prerequisites(test: &str) -> bool {
    let mut missing = Vec::new();
    for (path, cmd) in [(BIRD, "bird"), (BIRDC, "birdc")] {
        if !Path::new(path).is_file() && !on_path(cmd) {
            missing.push(format!("{path} (apt-get install -y bird2)"));
        }
    }
    if !missing.is_empty() {
        return can_run(test, &missing);
    }
    crate::netns::prerequisites(test, true)
}

/// `bird` and `birdc` missing from /usr/sbin, where the VM tests copy them
/// from (with their libraries), each named with how to install it: the
/// `missing` of [`can_run`].
pub fn missing_from_usr_sbin() -> Vec<String> {
    [BIRD, BIRDC]
        .iter()
        .filter(|b| !Path::new(b).is_file())
        .map(|b| format!("{b} (apt-get install -y bird2)"))
        .collect()
}

/// One BIRD's BGP session and the route it originates.
#[derive(Debug, Clone)]
pub struct BirdConfig {
    /// The BGP protocol's name (used with `birdc`).
    pub protocol: String,
    /// Router ID and local address.
    pub local: String,
    /// Local AS.
    pub local_as: u32,
    /// The neighbour's address.
    pub neighbor: String,
    /// The neighbour's AS.
    pub neighbor_as: u32,
    /// A prefix announced by a static (blackhole) route, exported to the
    /// neighbour.
    pub route: String,
}

impl BirdConfig {
    /// The configuration text; `log` is the log file. Timers are short
    /// (first connect after 1 s, retries every 3 s, error wait 1-5 s, hold
    /// 9 s) so that tests do not wait for the 120 s defaults.
    pub fn text(&self, log: &Path) -> String {
        format!(
            r#"log "{log}" all;
router id {local};
protocol device {{ }}
protocol static {{ ipv4; route {route} blackhole; }}
protocol bgp {protocol} {{
  local {local} as {local_as};
  neighbor {neighbor} as {neighbor_as};
  ipv4 {{ import all; export all; }};
  connect delay time 1;
  connect retry time 3;
  error wait time 1, 5;
  hold time 9;
}}
"#,
            log = log.display(),
            local = self.local,
            route = self.route,
            protocol = self.protocol,
            local_as = self.local_as,
            neighbor = self.neighbor,
            neighbor_as = self.neighbor_as,
        )
    }
}

/// The preload library's environment for a BIRD.
#[derive(Debug, Clone)]
pub struct Preload {
    /// aokd's attach socket.
    pub attach_socket: PathBuf,
}

/// A running BIRD.
pub struct Bird {
    proc: Proc,
    /// Its directory (configuration, control socket, pid file, log).
    pub dir: PathBuf,
    /// The BGP protocol's name.
    pub protocol: String,
    /// When it was started.
    pub started: Instant,
}

impl Bird {
    /// Writes `cfg` into `dir` (created) and starts `bird -f` in `ns`, under
    /// the preload library when `preload` is given (`AOKD_PORTS=179`,
    /// `AOKD_WAIT_MS=1000`: BIRD's event loop must not stall for long,
    /// `AOKD_PRELOAD_DEBUG=1`: its decisions on BIRD's stderr), as
    /// `user:group` when `user` is given (BIRD's `-u`/`-g`; `dir` is then
    /// chowned to that user). Returns once `birdc` gets an answer.
    pub fn start(
        ns: &Netns,
        dir: &Path,
        cfg: &BirdConfig,
        preload: Option<&Preload>,
        user: Option<(&str, u32, u32)>,
    ) -> Bird {
        fs::create_dir_all(dir).expect("BIRD directory");
        let conf = dir.join("bird.conf");
        fs::write(&conf, cfg.text(&dir.join("bird.log"))).expect("write bird.conf");
        if let Some((_, uid, gid)) = user {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown BIRD directory");
        }
        let mut cmd = ns.command("env");
        if let Some(p) = preload {
            cmd.arg(format!("LD_PRELOAD={}", crate::preload_library().display()))
                .arg(format!("AOKD_ATTACH_SOCKET={}", p.attach_socket.display()))
                .args([
                    "AOKD_PORTS=179",
                    "AOKD_WAIT_MS=1000",
                    "AOKD_PRELOAD_DEBUG=1",
                ]);
        }
        cmd.arg(BIRD).arg("-f").arg("-c").arg(&conf);
        cmd.arg("-s").arg(dir.join("bird.ctl"));
        cmd.arg("-P").arg(dir.join("bird.pid"));
        if let Some((name, _, _)) = user {
            cmd.args(["-u", name, "-g", name]);
        }
        let started = Instant::now();
        let proc = Proc::spawn(&format!("bird ({})", cfg.local), cmd);
        let mut bird = Bird {
            proc,
            dir: dir.to_owned(),
            protocol: cfg.protocol.clone(),
            started,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(e) = bird.birdc(&["show", "status"]) {
            if Instant::now() > deadline || bird.proc.wait_exit(Duration::ZERO).is_some() {
                panic!("BIRD does not answer: {e}\n{}", bird.report());
            }
            std::thread::sleep(POLL);
        }
        bird
    }

    /// The pid of the BIRD process.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `birdc -s CTL ARGS`: its output, or an error with the output.
    pub fn birdc(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(BIRDC)
            .arg("-s")
            .arg(self.dir.join("bird.ctl"))
            .args(args)
            .output()
            .map_err(|e| format!("cannot run birdc: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && !text.contains("Unable to connect") {
            Ok(text)
        } else {
            Err(format!(
                "birdc {} failed ({}): {text}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The BGP protocol's state column as `birdc show protocols` gives it
    /// (`Established`, `Active`, `Connect`, `Idle`, ...), with `up`/`down`/
    /// `start` in front: e.g. `"up Established"`, `"start Active"`,
    /// `"down"`.
    pub fn state(&self) -> Result<String, String> {
        let text = self.birdc(&["show", "protocols", &self.protocol])?;
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(self.protocol.as_str()))
            .map(|l| {
                // name proto table state since info...
                let f: Vec<&str> = l.split_whitespace().collect();
                let state = f.get(3).copied().unwrap_or("");
                let info = f.get(5..).map(|i| i.join(" ")).unwrap_or_default();
                format!("{state} {info}").trim().to_owned()
            })
            .ok_or_else(|| format!("no protocol {} in: {text}", self.protocol))
    }

    /// Whether the BGP session is established now.
    pub fn established(&self) -> bool {
        self.state().is_ok_and(|s| s.contains("Established"))
    }

    /// Polls until the session is established; returns the time since
    /// `since`. Panics after `timeout`, with BIRD's state, log and stderr.
    pub fn wait_established(&mut self, since: Instant, timeout: Duration) -> Duration {
        let deadline = Instant::now() + timeout;
        loop {
            if self.established() {
                return since.elapsed();
            }
            if Instant::now() > deadline {
                panic!(
                    "BIRD {}: not Established within {timeout:?} (state {:?})\n{}",
                    self.protocol,
                    self.state(),
                    self.report()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Polls until the session is not established (after a reset).
    pub fn wait_not_established(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.established() {
            assert!(
                Instant::now() < deadline,
                "BIRD {}: still Established after {timeout:?}\n{}",
                self.protocol,
                self.report()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Polls until `birdc show route PREFIX` lists a route learnt from the
    /// BGP protocol; returns that output.
    pub fn wait_route(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.birdc(&["show", "route", prefix]).unwrap_or_default();
            if text.contains(prefix) && text.contains(&format!("[{}", self.protocol)) {
                return text;
            }
            if Instant::now() > deadline {
                panic!(
                    "BIRD {}: no route {prefix} from BGP within {timeout:?}: {text}\n{}",
                    self.protocol,
                    self.report()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits (up to `timeout`) for a line on BIRD's stderr matching `pred`
    /// that was not consumed by an earlier wait (the preload library's
    /// debug lines go there).
    pub fn wait_stderr_line(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        self.proc.wait_stderr_line(timeout, pred)
    }

    /// Consumes the stderr lines received so far, so that the next
    /// [`Bird::wait_stderr_line`] sees only newer ones.
    pub fn skip_stderr(&mut self) {
        let _ = self.proc.wait_stderr_line(Duration::ZERO, |_| false);
    }

    /// BIRD's log file so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default()
    }

    /// State, log and stderr, for failure messages.
    pub fn report(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "BIRD log ({}):\n{}\n{}",
            self.dir.display(),
            self.log(),
            self.proc.report()
        );
        s
    }
}
