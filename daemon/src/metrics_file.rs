//! The metrics file (`[daemon] metrics_file`, docs/metrics.md), for
//! node_exporter's textfile collector: every `metrics_interval` the event
//! loop renders the OpenMetrics text with the renderer `aoctl metrics`
//! uses ([`aokd_api::metrics::render`], from the answers aoctl's `status`,
//! `sas`, `mkts` and `sockets` get) and hands it to a writer thread, which
//! writes it atomically ([`aokd_api::metrics::write_atomically`]: a
//! temporary file in the same directory renamed over the file, mode 0644).
//!
//! The event loop never waits for the disk: when the writer is still busy
//! with the previous text, the new one is dropped (the next interval brings
//! a fresh one). A failure is logged when it starts, again at most once an
//! hour while it lasts (with the number of failed writes), and once more
//! when writing works again.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

/// How often a lasting failure to write the file is logged again.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(3600);

/// The metrics file's schedule and its writer thread.
pub struct MetricsFile {
    path: PathBuf,
    interval: Duration,
    /// When the next text is due.
    next: Instant,
    /// To the writer; `None` only while dropping.
    tx: Option<SyncSender<String>>,
    writer: Option<JoinHandle<()>>,
}

impl MetricsFile {
    /// Starts the writer of `path`; the first text is due at `now`.
    pub fn start(path: PathBuf, interval: Duration, now: Instant) -> io::Result<MetricsFile> {
        // One text waiting at most: the loop never blocks on a slow disk.
        let (tx, rx) = mpsc::sync_channel::<String>(1);
        let file = path.clone();
        let writer = std::thread::Builder::new()
            .name("aokd-metrics".into())
            .spawn(move || write_loop(&file, &rx))?;
        info!(file = %path.display(), interval_s = interval.as_secs(), "writing metrics for node_exporter's textfile collector");
        Ok(MetricsFile {
            path,
            interval,
            next: now,
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// When the next text is due (for the event loop's sleep).
    pub fn poll_timeout(&self) -> Instant {
        self.next
    }

    /// Whether a text is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.next <= now
    }

    /// Hands `text` to the writer (dropped when it is still busy) and
    /// schedules the next one an interval after `now`.
    pub fn submit(&mut self, text: String, now: Instant) {
        self.next = now + self.interval;
        let Some(tx) = &self.tx else {
            return;
        };
        match tx.try_send(text) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                debug!(file = %self.path.display(), "metrics writer still busy: this interval's text skipped")
            }
            Err(TrySendError::Disconnected(_)) => {
                warn!(file = %self.path.display(), "the metrics writer has stopped: no more metrics are written");
                self.tx = None;
            }
        }
    }
}

impl Drop for MetricsFile {
    fn drop(&mut self) {
        // The writer finishes the text it has, then sees the channel closed.
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Whether writing fails now, and what has been logged of it.
#[derive(Default)]
struct Failure {
    /// When the failure was last logged, while failing.
    logged_at: Option<Instant>,
    /// Failed writes since then.
    since_logged: u64,
    /// Failed writes since the failure began.
    total: u64,
}

/// The writer thread: each text to the file, until the channel closes.
fn write_loop(path: &Path, rx: &mpsc::Receiver<String>) {
    let mut failure = Failure::default();
    while let Ok(text) = rx.recv() {
        let result = aokd_api::metrics::write_atomically(path, &text);
        note(path, &mut failure, result, Instant::now());
    }
}

/// Logs the start of a failure, a lasting one at most once per
/// [`FAILURE_LOG_EVERY`], and the recovery.
fn note(path: &Path, failure: &mut Failure, result: io::Result<()>, now: Instant) {
    match (result, failure.logged_at) {
        (Ok(()), None) => {}
        (Ok(()), Some(_)) => {
            info!(file = %path.display(), failed_writes = failure.total, "metrics file written again");
            *failure = Failure::default();
        }
        (Err(e), None) => {
            warn!(file = %path.display(), error = %e, "cannot write the metrics file (logged again at most once an hour while it fails)");
            failure.logged_at = Some(now);
            failure.since_logged = 0;
            failure.total = 1;
        }
        (Err(e), Some(at)) => {
            failure.since_logged += 1;
            failure.total += 1;
            if now.duration_since(at) >= FAILURE_LOG_EVERY {
                warn!(file = %path.display(), error = %e, failed_writes = failure.since_logged,
                    "still cannot write the metrics file");
                failure.logged_at = Some(now);
                failure.since_logged = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_logged_once_then_hourly_then_its_end() {
        let path = Path::new("/nonexistent/aokd.prom");
        let mut f = Failure::default();
        let t0 = Instant::now();
        let err = || Err(io::Error::from(io::ErrorKind::NotFound));
        note(path, &mut f, err(), t0);
        assert_eq!(f.logged_at, Some(t0));
        for s in 1..100 {
            note(path, &mut f, err(), t0 + Duration::from_secs(s));
        }
        assert_eq!((f.logged_at, f.since_logged), (Some(t0), 99));
        let t1 = t0 + FAILURE_LOG_EVERY;
        note(path, &mut f, err(), t1);
        assert_eq!((f.logged_at, f.since_logged, f.total), (Some(t1), 0, 101));
        note(path, &mut f, Ok(()), t1);
        assert_eq!(f.logged_at, None);
    }

    #[test]
    fn the_file_is_written_and_replaced_and_the_loop_is_never_blocked() {
        let dir = std::env::temp_dir().join(format!("aokd-metrics-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("aokd.prom");
        let t0 = Instant::now();
        let mut m = MetricsFile::start(path.clone(), Duration::from_secs(15), t0).expect("start");
        assert!(m.due(t0));
        m.submit("a 1\n# EOF\n".into(), t0);
        assert_eq!(m.poll_timeout(), t0 + Duration::from_secs(15));
        assert!(!m.due(t0 + Duration::from_secs(14)));
        // Many texts at once: none blocks, and the last one handed over
        // while the writer was free is on disk once it is done.
        for i in 0..1000 {
            m.submit(format!("a {i}\n# EOF\n"), t0);
        }
        drop(m);
        let text = std::fs::read_to_string(&path).expect("written");
        assert!(
            text.starts_with("a ") && text.ends_with("# EOF\n"),
            "{text}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("aokd.prom")]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
