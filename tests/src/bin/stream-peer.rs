//! `stream-peer`: an attach-aware TCP program that keeps one connection
//! busy in both directions for a long time, for the MKT rollover test of
//! the VM (tests/vm/e2e-rollover.sh). Like `tcp-peer` it creates each
//! socket itself and hands it to aokd with `aokd-attach` before listening
//! or connecting (docs/attach.md).
//!
//! ```text
//! stream-peer server --listen IP:PORT --attach SOCK [STREAM-OPTIONS]
//! stream-peer client --connect IP:PORT --attach SOCK [--timeout S]
//!                    [--seconds S] [--min-rollovers K] [--settle S]
//!                    [--stop-file PATH] [STREAM-OPTIONS]
//! stream-peer mkt-keys --control SOCK [--every-ms MS --seconds S]
//! STREAM-OPTIONS: [--interval-ms MS] [--chunk N] [--io-timeout S] [--linger-limit S]
//! ```
//!
//! Both ends write `--chunk` octets (default 1024) every `--interval-ms`
//! (default 10) and read and check everything the other end writes: each
//! direction carries the pattern of `aokd_tests::echo::pattern_byte` from
//! offset 0, so every octet is verified. The client stops writing after
//! `--seconds` (default 60), or earlier once its socket's Current_key has
//! changed `--min-rollovers` times and `--settle` seconds (default 10) have
//! passed since the last of those changes (more rollovers may come meanwhile),
//! or as soon as `--stop-file` exists (a test script decides when to stop);
//! it then shuts down its sending side. The server writes until it reads the client's end of stream, then
//! shuts down its own; the client reads until that end of stream. An error,
//! an end of stream before that, or no data for `--io-timeout` seconds
//! (default 10) ends the run as a failure.
//!
//! The socket's TCP-AO state is sampled every 100 ms (`TCP_AO_INFO` and
//! `TCP_AO_GET_KEYS`; a socket that never has TCP-AO state, such as a
//! TCP-MD5 one, or any socket on a kernel without TCP-AO, where
//! `TCP_AO_INFO` fails with `ENOENT` or `ENOPROTOOPT`, has no counters: they
//! are null, which is no error) and printed once per second:
//! `{"event":"sample","role":...,"t_ms":...,"unix_ms":...,"current_key":N,
//! "rnext":N,"pkt_good":N,"pkt_bad":N,"pkt_key_not_found":N,
//! "keys":[[SENDID,RECVID],...],"current":[S,R],"bytes_in":N,"bytes_out":N,
//! "rollovers":N}` (`t_ms` since the start; `unix_ms` the wall clock, which
//! is also tcpdump's and aokd's, when the counters and keys printed were
//! read). A key is *replaced* when
//! Current_key moves from it to another key; it must then leave the socket
//! within `--linger-limit` seconds (default 10): replaced keys still on the
//! socket at the end are `pending` when replaced less than that long ago,
//! `lingering` otherwise.
//!
//! At the end one line `{"event":"summary","role":...,"ok":...,"bytes":N
//! (octets received and verified),"bytes_in":N,"bytes_out":N,"errors":[...],
//! "disconnected":...,"stalled":...,"max_gap_ms":N,"rollovers":N,
//! "distinct_current_keys":N,"max_keys":N,"replaced":N,"removed":N,
//! "max_linger_ms":N,"lingering":N,"pending":N,"pkt_good":N,"pkt_bad":N,
//! "pkt_key_not_found":N,"elapsed_ms":N}`. Exit status 0 only if the
//! connection never dropped or stalled and all data verified.
//!
//! `mkt-keys` asks aokd's control socket for its MKTs with their master keys
//! (the root-only `mkt-keys` command, docs/control.md) and prints each as the
//! `aoctl verify --mkt` arguments for both its KeyIDs, one per line:
//! `KEYID:ALG:HEXKEY[:exclude-options]`. With `--every-ms` it asks again at
//! that interval for `--seconds` (or until killed), printing each key line
//! once, so that it collects every MKT of a run with rollovers.
//!
//! The server prints `{"event":"listening","addr":...,"attach":...}` once
//! it listens and `{"event":"accepted","peer":...,"attach":...}` for its one
//! connection; the client prints `{"event":"connected","attach":...}`.

use std::collections::{BTreeSet, HashSet};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use aokd::kernel::{ao, Cause, KernelError};
use aokd_attach::Attached;
use aokd_tests::echo::{self, pattern_byte, Args};
use aokd_tests::sock::{self, tcp_socket};
use serde_json::{json, Value};

const USAGE: &str = "usage: stream-peer server --listen IP:PORT --attach SOCK [--interval-ms MS] [--chunk N] [--io-timeout S] [--linger-limit S]
       stream-peer client --connect IP:PORT --attach SOCK [--timeout S] [--seconds S] [--min-rollovers K] [--settle S] [--stop-file PATH] [--interval-ms MS] [--chunk N] [--io-timeout S] [--linger-limit S]
       stream-peer mkt-keys --control SOCK [--every-ms MS --seconds S]";

/// How often the socket's TCP-AO state is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How often a sample line is printed.
const REPORT_EVERY: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    echo::main("stream-peer", run)
}

/// What both ends stream and how they judge it.
struct Opts {
    interval: Duration,
    chunk: usize,
    io_timeout: Duration,
    linger_limit: Duration,
    /// Client only: when to stop writing.
    max_time: Duration,
    min_rollovers: Option<u64>,
    settle: Duration,
    stop_file: Option<PathBuf>,
}

fn secs(args: &Args, name: &str, default: f64) -> Result<Duration, String> {
    let s: f64 = args.parsed(name, default)?;
    Duration::try_from_secs_f64(s).map_err(|e| format!("--{name}: {e}"))
}

fn run() -> Result<ExitCode, String> {
    let args = Args::parse(USAGE)?;
    let stream_opts = ["interval-ms", "chunk", "io-timeout", "linger-limit"];
    let known: Vec<&str> = match args.command.as_str() {
        "server" => [&["listen", "attach"][..], &stream_opts].concat(),
        "client" => [
            &[
                "connect",
                "attach",
                "timeout",
                "seconds",
                "min-rollovers",
                "settle",
                "stop-file",
            ][..],
            &stream_opts,
        ]
        .concat(),
        "mkt-keys" => vec!["control", "every-ms", "seconds"],
        _ => return Err(USAGE.into()),
    };
    args.check_known(&known, USAGE)?;
    let required = |name: &str| -> Result<&str, String> {
        args.get(name)
            .ok_or(format!("--{name} is required\n{USAGE}"))
    };
    let addr = |name: &str| -> Result<SocketAddr, String> {
        required(name)?
            .parse()
            .map_err(|e| format!("--{name}: {e}"))
    };
    if args.command == "mkt-keys" {
        let every = args
            .get("every-ms")
            .map(|_| args.parsed("every-ms", 0u64))
            .transpose()?
            .map(Duration::from_millis);
        let seconds = secs(&args, "seconds", 0.0)?;
        return mkt_keys(Path::new(required("control")?), every, seconds);
    }
    let chunk: usize = args.parsed("chunk", 1024)?;
    if chunk == 0 {
        return Err("--chunk must be at least 1".into());
    }
    let opts = Opts {
        interval: Duration::from_millis(args.parsed("interval-ms", 10)?),
        chunk,
        io_timeout: secs(&args, "io-timeout", 10.0)?,
        linger_limit: secs(&args, "linger-limit", 10.0)?,
        max_time: secs(&args, "seconds", 60.0)?,
        min_rollovers: args
            .get("min-rollovers")
            .map(|_| args.parsed("min-rollovers", 0u64))
            .transpose()?,
        settle: secs(&args, "settle", 10.0)?,
        stop_file: args.get("stop-file").map(PathBuf::from),
    };
    let attach = Path::new(required("attach")?);
    let ok = if args.command == "server" {
        server(addr("listen")?, attach, &opts)?
    } else {
        let timeout = secs(&args, "timeout", 10.0)?;
        client(addr("connect")?, attach, timeout, &opts)?
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

// ---------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------

/// aokd's answer as JSON, and whether it put keys on the socket.
fn reply_json(r: &Result<Attached, String>) -> (Value, bool) {
    let v = sock::attach_reply_json(r);
    let keyed = v["installed"] == "keys";
    (v, keyed)
}

fn server(addr: SocketAddr, attach: &Path, opts: &Opts) -> Result<bool, String> {
    let fd = tcp_socket(addr).map_err(|e| format!("socket: {e}"))?;
    sock::bind(&fd, addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let reply = aokd_attach::attach_listen(attach, &fd.as_fd()).map_err(|e| e.to_string());
    let (attach_json, keyed) = reply_json(&reply);
    if !keyed {
        echo::emit(&json!({"event": "attach-error", "attach": attach_json}));
        return Ok(false);
    }
    sock::listen(&fd, 4).map_err(|e| format!("listen: {e}"))?;
    let listener = TcpListener::from(fd);
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    echo::emit(&json!({"event": "listening", "addr": local.to_string(), "attach": attach_json}));
    let (stream, peer) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    let reply = aokd_attach::attach_accepted(attach, &stream.as_fd()).map_err(|e| e.to_string());
    let (attach_json, keyed) = reply_json(&reply);
    echo::emit(&json!({"event": "accepted", "peer": peer.to_string(), "attach": attach_json}));
    if !keyed {
        return Ok(false);
    }
    drop(listener);
    Ok(stream_data(stream, Role::Server, opts))
}

fn client(addr: SocketAddr, attach: &Path, timeout: Duration, opts: &Opts) -> Result<bool, String> {
    let fd = tcp_socket(addr).map_err(|e| format!("socket: {e}"))?;
    let reply =
        aokd_attach::attach_connect(attach, &fd.as_fd(), addr, None).map_err(|e| e.to_string());
    let (attach_json, keyed) = reply_json(&reply);
    if !keyed {
        echo::emit(&json!({"event": "attach-error", "attach": attach_json}));
        return Ok(false);
    }
    sock::connect(&fd, addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    echo::emit(&json!({"event": "connected", "remote": addr.to_string(), "attach": attach_json}));
    Ok(stream_data(TcpStream::from(fd), Role::Client, opts))
}

// ---------------------------------------------------------------------------
// The stream
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Client,
    Server,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

/// What the writer thread did.
struct Written {
    bytes: u64,
    error: Option<String>,
}

/// Writes `chunk` octets of the pattern every `interval` until `stop`, then
/// shuts down the sending side.
fn writer(
    mut w: TcpStream,
    opts: (usize, Duration, Duration),
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> Written {
    let (chunk, interval, io_timeout) = opts;
    let mut sent: u64 = 0;
    let mut buf = vec![0u8; chunk];
    if let Err(e) = w.set_write_timeout(Some(io_timeout)) {
        return Written {
            bytes: 0,
            error: Some(format!("write timeout: {e}")),
        };
    }
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = pattern_byte(sent as usize + i);
        }
        if let Err(e) = w.write_all(&buf) {
            return Written {
                bytes: sent,
                error: Some(format!("write at offset {sent}: {e}")),
            };
        }
        sent += chunk as u64;
        progress.store(sent, Ordering::Relaxed);
        next += interval;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else {
            // Behind (a slow moment): no burst to catch up.
            next = now;
        }
    }
    let error = w
        .shutdown(Shutdown::Write)
        .err()
        .map(|e| format!("shutdown: {e}"));
    Written { bytes: sent, error }
}

/// A key on the socket: (SendID, RecvID).
type Pair = (u8, u8);

struct Replaced {
    key: Pair,
    at: Instant,
    gone: Option<Instant>,
}

/// The socket's TCP-AO state over time.
#[derive(Default)]
struct KeyTracker {
    info: Option<ao::AoInfo>,
    /// The wall clock (Unix ms) when `info` and `keys` were read: a
    /// report stamps its counters with it, not with its own time, which
    /// is up to a sample period later (counters read 100 ms before their
    /// stamp made a guard look as if it accepted segments).
    info_unix_ms: Option<u64>,
    keys: Vec<Pair>,
    current: Option<Pair>,
    rollovers: u64,
    last_rollover: Option<Instant>,
    distinct: BTreeSet<Pair>,
    replaced: Vec<Replaced>,
    max_keys: usize,
    error: Option<String>,
}

impl KeyTracker {
    fn sample(&mut self, fd: BorrowedFd<'_>, now: Instant) {
        let (info, keys) = match ao::info(fd).and_then(|i| Ok((i, ao::get_keys(fd)?))) {
            Ok(x) => x,
            // No TCP-AO on this socket (TCP-MD5, or a kernel without TCP-AO),
            // and there never was: no counters, which is no error. TCP-AO
            // state that goes away is one.
            Err(e) if self.info.is_none() && no_tcp_ao(&e) => return,
            Err(e) => {
                self.error.get_or_insert_with(|| e.to_string());
                return;
            }
        };
        let mut pairs: Vec<Pair> = keys.iter().map(|k| (k.send_id, k.recv_id)).collect();
        pairs.sort_unstable();
        let current = keys
            .iter()
            .find(|k| k.is_current)
            .map(|k| (k.send_id, k.recv_id));
        if current.is_some() && current != self.current {
            if let Some(old) = self.current {
                self.replaced.push(Replaced {
                    key: old,
                    at: now,
                    gone: None,
                });
                self.rollovers += 1;
                self.last_rollover = Some(now);
            }
            self.current = current;
        }
        if let Some(c) = current {
            self.distinct.insert(c);
        }
        for r in self.replaced.iter_mut().filter(|r| r.gone.is_none()) {
            if !pairs.contains(&r.key) {
                r.gone = Some(now);
            }
        }
        self.max_keys = self.max_keys.max(pairs.len());
        self.keys = pairs;
        self.info = Some(info);
        self.info_unix_ms = Some(unix_ms());
    }

    /// (removed, max linger in ms, lingering, pending) at `now`.
    fn linger(&self, now: Instant, limit: Duration) -> (usize, u128, usize, usize) {
        let (mut removed, mut max, mut lingering, mut pending) = (0, 0, 0, 0);
        for r in &self.replaced {
            let held = r.gone.unwrap_or(now) - r.at;
            max = max.max(held.as_millis());
            match r.gone {
                Some(_) => removed += 1,
                None if held >= limit => lingering += 1,
                None => pending += 1,
            }
        }
        (removed, max, lingering, pending)
    }
}

/// Whether `TCP_AO_INFO` failed because the socket has no TCP-AO state
/// (`ENOENT`) or the kernel has no TCP-AO (`ENOPROTOOPT`).
fn no_tcp_ao(e: &KernelError) -> bool {
    matches!(e.cause(), Some(Cause::NotFound | Cause::NotSupported))
}

fn pair_json(p: Option<Pair>) -> Value {
    p.map_or(Value::Null, |(s, r)| json!([s, r]))
}

/// Streams both ways on `stream` until the end described in the module
/// documentation; prints the sample lines and the summary; true on success.
fn stream_data(stream: TcpStream, role: Role, opts: &Opts) -> bool {
    let start = Instant::now();
    let mut errors: Vec<String> = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    let write_half = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            errors.push(format!("try_clone: {e}"));
            summary(
                role,
                start,
                &errors,
                false,
                false,
                0,
                0,
                0,
                &KeyTracker::default(),
                opts,
            );
            return false;
        }
    };
    let progress = Arc::new(AtomicU64::new(0));
    let handle = {
        let stop = Arc::clone(&stop);
        let progress = Arc::clone(&progress);
        let o = (opts.chunk, opts.interval, opts.io_timeout);
        thread::spawn(move || writer(write_half, o, stop, progress))
    };
    let mut tracker = KeyTracker::default();
    let mut r = &stream;
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes_in: u64 = 0;
    let mut last_data = start;
    let mut max_gap = Duration::ZERO;
    let mut disconnected = false;
    let mut stalled = false;
    let mut stopping = false;
    // When the socket had seen `--min-rollovers` rollovers.
    let mut reached: Option<Instant> = None;
    let mut last_sample: Option<Instant> = None;
    let mut next_report = start + REPORT_EVERY;
    if let Err(e) = stream.set_read_timeout(Some(SAMPLE_EVERY)) {
        errors.push(format!("read timeout: {e}"));
    }
    while errors.is_empty() {
        let now = Instant::now();
        if role == Role::Client && !stopping {
            if reached.is_none() && opts.min_rollovers.is_some_and(|k| tracker.rollovers >= k) {
                reached = tracker.last_rollover;
            }
            let enough = reached.is_some_and(|t| now - t >= opts.settle);
            let told = opts.stop_file.as_deref().is_some_and(Path::exists);
            if enough || told || now - start >= opts.max_time {
                stopping = true;
                stop.store(true, Ordering::Relaxed);
            }
        }
        match r.read(&mut buf) {
            Ok(0) => {
                match role {
                    // The client's end of stream: stop writing, then finish.
                    Role::Server => stop.store(true, Ordering::Relaxed),
                    Role::Client if stopping => {}
                    Role::Client => {
                        disconnected = true;
                        errors.push(format!(
                            "end of stream from the server after {bytes_in} octets, before the client stopped"
                        ));
                    }
                }
                break;
            }
            Ok(n) => {
                if let Some(i) = (0..n).find(|&i| buf[i] != pattern_byte(bytes_in as usize + i)) {
                    errors.push(format!(
                        "data differs at offset {}: got {:#04x}, want {:#04x}",
                        bytes_in + i as u64,
                        buf[i],
                        pattern_byte(bytes_in as usize + i)
                    ));
                }
                bytes_in += n as u64;
                let now = Instant::now();
                max_gap = max_gap.max(now - last_data);
                last_data = now;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let idle = Instant::now() - last_data;
                if idle >= opts.io_timeout {
                    stalled = true;
                    errors.push(format!(
                        "no data for {:.1} s after {bytes_in} octets",
                        idle.as_secs_f64()
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                disconnected = true;
                errors.push(format!("read after {bytes_in} octets: {e}"));
            }
        }
        let now = Instant::now();
        if last_sample.is_none_or(|t| now - t >= SAMPLE_EVERY) {
            tracker.sample(stream.as_fd(), now);
            last_sample = Some(now);
        }
        if now >= next_report {
            report(
                role,
                start,
                &tracker,
                bytes_in,
                progress.load(Ordering::Relaxed),
            );
            next_report += REPORT_EVERY;
        }
    }
    if !errors.is_empty() {
        // Wake a writer blocked on a dead connection.
        stop.store(true, Ordering::Relaxed);
        let _ = stream.shutdown(Shutdown::Both);
    }
    let written = handle.join().unwrap_or_else(|_| Written {
        bytes: 0,
        error: Some("writer thread panicked".into()),
    });
    if let Some(e) = written.error {
        if errors.is_empty() {
            disconnected = true;
        }
        errors.push(e);
    }
    if role == Role::Client && errors.is_empty() {
        // Read the server's remaining data up to its end of stream.
        if let Err(e) = drain(&stream, &mut bytes_in, &mut last_data, opts.io_timeout) {
            disconnected = true;
            errors.push(e);
        }
    }
    tracker.sample(stream.as_fd(), Instant::now());
    if let Some(e) = &tracker.error {
        errors.push(format!("TCP-AO state: {e}"));
    }
    report(role, start, &tracker, bytes_in, written.bytes);
    summary(
        role,
        start,
        &errors,
        disconnected,
        stalled,
        max_gap.as_millis(),
        bytes_in,
        written.bytes,
        &tracker,
        opts,
    )
}

/// Reads (and checks) until the end of stream.
fn drain(
    mut r: &TcpStream,
    bytes_in: &mut u64,
    last_data: &mut Instant,
    io_timeout: Duration,
) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                if let Some(i) = (0..n).find(|&i| buf[i] != pattern_byte(*bytes_in as usize + i)) {
                    return Err(format!("data differs at offset {}", *bytes_in + i as u64));
                }
                *bytes_in += n as u64;
                *last_data = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if last_data.elapsed() >= io_timeout {
                    return Err(format!(
                        "no end of stream from the server within {io_timeout:?}"
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read after {} octets: {e}", *bytes_in)),
        }
    }
}

fn report(role: Role, start: Instant, t: &KeyTracker, bytes_in: u64, bytes_out: u64) {
    let info = t.info;
    echo::emit(&json!({
        "event": "sample",
        "role": role.name(),
        "t_ms": start.elapsed().as_millis() as u64,
        "unix_ms": t.info_unix_ms.unwrap_or_else(unix_ms),
        "current_key": info.and_then(|i| i.current_key),
        "rnext": info.and_then(|i| i.rnext),
        "pkt_good": info.map(|i| i.pkt_good),
        "pkt_bad": info.map(|i| i.pkt_bad),
        "pkt_key_not_found": info.map(|i| i.pkt_key_not_found),
        "keys": t.keys.iter().map(|&(s, r)| json!([s, r])).collect::<Vec<_>>(),
        "current": pair_json(t.current),
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "rollovers": t.rollovers,
    }));
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[allow(clippy::too_many_arguments)]
fn summary(
    role: Role,
    start: Instant,
    errors: &[String],
    disconnected: bool,
    stalled: bool,
    max_gap_ms: u128,
    bytes_in: u64,
    bytes_out: u64,
    t: &KeyTracker,
    opts: &Opts,
) -> bool {
    let (removed, max_linger, lingering, pending) = t.linger(Instant::now(), opts.linger_limit);
    let ok = errors.is_empty() && !disconnected && !stalled;
    let info = t.info;
    echo::emit(&json!({
        "event": "summary",
        "role": role.name(),
        "ok": ok,
        "bytes": bytes_in,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "errors": errors,
        "disconnected": disconnected,
        "stalled": stalled,
        "max_gap_ms": max_gap_ms as u64,
        "rollovers": t.rollovers,
        "distinct_current_keys": t.distinct.len(),
        "max_keys": t.max_keys,
        "replaced": t.replaced.len(),
        "removed": removed,
        "max_linger_ms": max_linger as u64,
        "lingering": lingering,
        "pending": pending,
        "pkt_good": info.map(|i| i.pkt_good),
        "pkt_bad": info.map(|i| i.pkt_bad),
        "pkt_key_not_found": info.map(|i| i.pkt_key_not_found),
        "elapsed_ms": start.elapsed().as_millis() as u64,
    }));
    ok
}

// ---------------------------------------------------------------------------
// mkt-keys
// ---------------------------------------------------------------------------

/// One `mkt-keys` request: the `--mkt` arguments of every MKT (both KeyIDs).
fn ask_keys(control: &Path) -> Result<Vec<String>, String> {
    let name = control.display();
    let mut s = UnixStream::connect(control).map_err(|e| format!("connect {name}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    s.write_all(b"{\"version\":1,\"command\":\"mkt-keys\"}\n")
        .map_err(|e| format!("{name}: {e}"))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| format!("{name}: {e}"))?;
    let v: Value =
        serde_json::from_str(&line).map_err(|e| format!("{name}: answer is not JSON: {e}"))?;
    if v["status"] != "ok" {
        return Err(format!("{name}: {}", line.trim()));
    }
    let keys = v["data"]["keys"]
        .as_array()
        .ok_or_else(|| format!("{name}: no keys in {}", line.trim()))?;
    let mut out = Vec::new();
    for k in keys {
        let (Some(alg), Some(key)) = (k["algorithm"].as_str(), k["master_key"].as_str()) else {
            return Err(format!("{name}: malformed key entry"));
        };
        let suffix = if k["include_options"] == false {
            ":exclude-options"
        } else {
            ""
        };
        for id in [&k["send_id"], &k["recv_id"]] {
            let id = id
                .as_u64()
                .ok_or_else(|| format!("{name}: malformed KeyID"))?;
            out.push(format!("{id}:{alg}:{key}{suffix}"));
        }
    }
    Ok(out)
}

fn mkt_keys(
    control: &Path,
    every: Option<Duration>,
    seconds: Duration,
) -> Result<ExitCode, String> {
    let Some(every) = every else {
        let mut seen = HashSet::new();
        for k in ask_keys(control)? {
            if seen.insert(k.clone()) {
                println!("{k}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    let start = Instant::now();
    let mut seen = HashSet::new();
    let mut failures = 0u32;
    loop {
        match ask_keys(control) {
            Ok(keys) => {
                let mut out = io::stdout().lock();
                for k in keys {
                    if seen.insert(k.clone()) {
                        let _ = writeln!(out, "{k}");
                    }
                }
                let _ = out.flush();
            }
            Err(e) => {
                failures += 1;
                eprintln!("stream-peer mkt-keys: {e}");
            }
        }
        if !seconds.is_zero() && start.elapsed() >= seconds {
            break;
        }
        thread::sleep(every);
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
