//! Child processes the tests start and wait on by events: [`Proc`] reads a
//! child's stdout line by line on a thread, so a test can wait (with a
//! deadline) for a line such as a server's "listening" report instead of
//! sleeping, collects its stderr for diagnostics, and kills the child (by
//! its pid, with SIGKILL) when dropped on any path.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running child with its stdout as a stream of lines.
pub struct Proc {
    /// What it is (for messages).
    pub name: String,
    child: Child,
    lines: Receiver<String>,
    err_lines: Receiver<String>,
    /// Every stdout line received so far (also those consumed by waits).
    stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout/stderr piped.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let (err_tx, err_lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let readers = vec![
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }),
            std::thread::spawn(move || {
                let mut err = BufReader::new(err);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match err.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let text = String::from_utf8_lossy(&line).into_owned();
                            sink.lock().expect("stderr lock").push_str(&text);
                            let _ = err_tx.send(text.trim_end().to_string());
                        }
                    }
                }
            }),
        ];
        Proc {
            name: name.into(),
            child,
            lines,
            err_lines,
            stdout: Vec::new(),
            stderr,
            readers,
            status: None,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for a stdout line for which `pred` holds and
    /// returns it; `None` when the time runs out or stdout closes first.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if pred(&line) {
                        return Some(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return None
                }
            }
        }
    }

    /// Like [`Proc::wait_line`], for stderr lines (all of stderr is also kept
    /// for [`Proc::stderr`]).
    pub fn wait_stderr_line(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.err_lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Waits up to `timeout` for the child to exit; `None` if it still runs.
    /// Once it has exited, the rest of its stdout is collected.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            // The child's exit as an event: its pidfd becomes readable.
            let exited = match self.child.try_wait() {
                Ok(Some(st)) => Some(st),
                Ok(None) => {
                    let pid = i32::try_from(self.child.id()).expect("pid");
                    let pidfd = aokd_sys::pidfd_open(pid)
                        .unwrap_or_else(|e| panic!("{}: pidfd_open: {e}", self.name));
                    let ended = aokd_sys::wait_exit(std::os::fd::AsFd::as_fd(&pidfd), timeout)
                        .unwrap_or_else(|e| panic!("{}: poll: {e}", self.name));
                    if !ended {
                        return None;
                    }
                    Some(
                        self.child
                            .wait()
                            .unwrap_or_else(|e| panic!("{}: wait: {e}", self.name)),
                    )
                }
                Err(e) => panic!("{}: wait: {e}", self.name),
            };
            self.status = exited;
            // The pipes close when the child (and anything it left holding
            // them) is gone; give the readers a bounded time to finish.
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.lines.recv_timeout(left) {
                    Ok(line) => self.stdout.push(line),
                    Err(_) => break,
                }
            }
            while Instant::now() < deadline && !self.readers.iter().all(|h| h.is_finished()) {
                std::thread::sleep(Duration::from_millis(5));
            }
            for h in self.readers.drain(..) {
                if h.is_finished() {
                    let _ = h.join();
                }
            }
        }
        self.status
    }

    /// Every stdout line seen so far (call [`Proc::wait_exit`] first for all).
    pub fn stdout_lines(&self) -> &[String] {
        &self.stdout
    }

    /// The last stdout line seen so far parsed as JSON (a test program's
    /// final report), if there is one and it is JSON.
    pub fn last_json(&self) -> Option<Value> {
        self.stdout
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
    }

    /// Asserts that the child exits 0 within `timeout`.
    pub fn assert_success(&mut self, timeout: Duration) {
        let st = self.wait_exit(timeout);
        assert!(
            st.is_some_and(|s| s.success()),
            "{}: {}",
            self.name,
            self.report()
        );
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Sends `signal` to the child (if it still runs).
    pub fn signal(&mut self, signal: i32) {
        if self.status.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on the pid of our own unreaped child: the pid
            // cannot have been reused while we have not waited for it.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, signal);
            }
        }
    }

    /// Kills the child (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.wait_exit(Duration::from_secs(10));
        }
    }

    /// A description of the child's output, for failure messages.
    pub fn report(&self) -> String {
        format!(
            "--- {} (status {:?})\nstdout:\n{}\nstderr:\n{}",
            self.name,
            self.status,
            self.stdout.join("\n"),
            self.stderr()
        )
    }
}

/// Spawns a server (one of the test programs, which print a JSON line with
/// an `"event"` once they listen) and waits up to `timeout` for that line:
/// the server and the line parsed. Panics, with the server's output, when
/// no such line comes or its event is not `listening`.
pub fn start_server(name: &str, cmd: Command, timeout: Duration) -> (Proc, Value) {
    let mut p = Proc::spawn(name, cmd);
    let Some(line) = p.wait_line(timeout, |l| l.contains("\"event\"")) else {
        p.kill();
        panic!("{name} did not report\n{}", p.report());
    };
    let v: Value = serde_json::from_str(&line).expect("server line is JSON");
    if v["event"] != "listening" {
        p.kill();
        panic!("{name} is not listening: {v}\n{}", p.report());
    }
    (p, v)
}

/// Runs a client (one of the test programs, which end with a JSON report
/// line) to completion within `limit`: whether it exited 0, its report and
/// the process. Panics, with its output, when it still runs after `limit`
/// or printed no JSON report.
pub fn run_client(name: &str, cmd: Command, limit: Duration) -> (bool, Value, Proc) {
    let mut p = Proc::spawn(name, cmd);
    let Some(status) = p.wait_exit(limit) else {
        p.kill();
        panic!("{name} still running after {limit:?}\n{}", p.report());
    };
    let v = p
        .last_json()
        .unwrap_or_else(|| panic!("{name}: no JSON report\n{}", p.report()));
    (status.success(), v, p)
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
