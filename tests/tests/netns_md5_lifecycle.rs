//! TCP-MD5 over time on the host kernel: two network namespaces joined by a
//! veth pair, an aokd in each with `backend = "tcp-md5"` and short MKT
//! lifetimes (`mkt_rekey` 6 s, `mkt_lifetime` 12 s), and one long-lived
//! `stream-peer` connection (attach API, client in A, server in B) carrying
//! data both ways without a pause (every 2 ms in the rekey test, every
//! 10 ms in the restart test), every octet checked.
//!
//! - `md5_connection_survives_rekeys`: the connection lives through at least
//!   [`MIN_REKEYS`] MKT rekeys. TCP-MD5 holds one key per peer on a socket,
//!   so aokd's documented choice (docs/configuration.md, "TCP-MD5 peers")
//!   is that both ends replace the key on live connections too, within one
//!   IKE round trip of each other; segments in flight at that moment are
//!   dropped by the receiver (`TCPMD5Failure`) and retransmitted. Checked:
//!   the connection never drops and all data arrives intact; both ends
//!   switch keys on the wire within [`MAX_SKEW`] of each other; segments
//!   signed with a key the receiver no longer (or not yet) uses, and
//!   `TCPMD5Failure` increments, occur only near a switch; a capture of the
//!   veth verifies with `aoctl verify` given every MKT key collected during
//!   the run (the root-only control command `mkt-keys`, polled every
//!   200 ms); no segment is unsigned (and no namespace counts a
//!   TCPMD5NotFound).
//! - `md5_restart_keeps_sockets`: with data flowing, A's aokd is killed with
//!   SIGKILL and started again with the same configuration. Checked: A's
//!   state file exists; the restarted aokd lists the same socket (same pid
//!   and fd); its first `aoctl mkts` shows the MKT from before the restart
//!   as `restored` (or a new one already); a new MKT with a new fingerprint
//!   follows with no operator action; the connection never drops, all data
//!   arrives intact, and no segment in the capture is unsigned.
//!
//! Both print their figures (switch times, skews, failures, retransmissions,
//! counters). The capture is also analysed here segment by segment (the
//! TCP-MD5 digest of each segment checked against every collected key with
//! `aokd_proto::tcpao`), which tells which key signed each segment and when.
//!
//! Needs root, `ip` and `tcpdump` and the aokd and aoctl binaries (`cargo
//! build --workspace`): when something is missing the test fails if `CI` is
//! set and is otherwise skipped with the reason printed. Addresses are
//! 10.203.0.1 (A) and 10.203.0.2 (B), which exist only inside the
//! namespaces the tests create.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aokd_proto::tcpao::{parse_ip_packet, verify_digest, AuthOption};
use aokd_tests::netns::{self, parse_netstat, Capture, Pair};
use aokd_tests::process::Proc;
use aokd_tests::{aoctl_verify, control, established_sas, mkt_master_keys, mkts, Daemon};
use serde_json::{json, Value};

const PSK: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";
/// Negotiation and daemon start-up.
const WAIT: Duration = Duration::from_secs(30);
/// A server reporting that it listens.
const LISTEN_WAIT: Duration = Duration::from_secs(15);
const ADDR_A: &str = "10.203.0.1";
const ADDR_B: &str = "10.203.0.2";
const BGP: &str = "10.203.0.2:179";
const MKT_REKEY: &str = "6s";
const MKT_LIFETIME: &str = "12s";
/// Rekeys the connection must live through.
const MIN_REKEYS: usize = 4;
/// How long the rekey test's client streams: about 6 rekeys at 5.4-6 s.
const REKEY_STREAM_S: u64 = 36;
/// How long the restart test's client streams.
const RESTART_STREAM_S: u64 = 30;
/// How far apart the two ends may switch to a new key on the wire ("within
/// one IKE round trip": milliseconds on a veth; generous here).
const MAX_SKEW: f64 = 1.0;
/// A receiver's rejection counts as "at a switch" within this window around
/// it (before: the receiver installs the key a moment before its first
/// segment under it shows the switch on the wire).
const NEAR_BEFORE: f64 = 0.5;
const NEAR_AFTER: f64 = 1.0;
/// The stream's pace (`--interval-ms`, `--chunk`) in the rekey test: dense
/// enough (about 500 data segments a second each way, plus ACKs) that some
/// segments are likely in flight when the keys change.
const REKEY_PACE: Pace = Pace {
    interval_ms: 2,
    chunk: 512,
};
/// stream-peer's default pace, for the restart test.
const DEFAULT_PACE: Pace = Pace {
    interval_ms: 10,
    chunk: 1024,
};
/// How often the sampler asks both daemons for their MKTs and keys.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------
// Topology and daemons
// ---------------------------------------------------------------------------

/// The two namespaces, configured ([`configure`]).
fn topo(tag: &str) -> Pair {
    let t = Pair::new(tag, ADDR_A, ADDR_B);
    configure(&t);
    t
}

/// Both configurations: TCP-MD5 for port 179 with short MKT lifetimes,
/// A initiates, B waits.
fn configure(t: &Pair) {
    for (me, other, extra) in [
        (&t.side_a, &t.side_b, ""),
        (&t.side_b, &t.side_a, "initiate = false\n"),
    ] {
        let peer = format!(
            "backend = \"tcp-md5\"\ntcp_ports = [179]\n{extra}\n[peer.lifetimes]\n\
             mkt_rekey = \"{MKT_REKEY}\"\nmkt_lifetime = \"{MKT_LIFETIME}\"\n"
        );
        me.write_config_with(other, PSK, "acquire_timeout = \"5s\"\n", &peer);
        // The configuration must say what the test thinks it says.
        let cfg = aokd::config::Config::load(&me.config_path())
            .unwrap_or_else(|e| panic!("{}: {e}", me.config_path().display()));
        let peer = &cfg.peers[0];
        assert_eq!(peer.backend, aokd::config::BackendChoice::TcpMd5);
        assert_eq!(peer.lifetimes.mkt_rekey, Duration::from_secs(6));
        assert_eq!(peer.lifetimes.mkt_lifetime, Duration::from_secs(12));
    }
}

fn wait_for_mkt(d: &Daemon) {
    d.wait_for(&["sas"], WAIT, |v| established_sas(v).len() == 1);
    d.wait_for(&["mkts"], WAIT, |v| !mkts(v).is_empty());
}

/// (fingerprint, state) of each MKT in an `aoctl mkts` answer.
fn fingerprints(v: &Value) -> MktList {
    mkts(v)
        .iter()
        .map(|m| {
            (
                m["key_fingerprint"].as_str().unwrap_or("?").to_string(),
                m["state"].as_str().unwrap_or("null").to_string(),
            )
        })
        .collect()
}

/// How fast both ends of the stream write.
#[derive(Clone, Copy)]
struct Pace {
    interval_ms: u64,
    chunk: usize,
}

impl Pace {
    fn args(self) -> [String; 4] {
        [
            "--interval-ms".into(),
            self.interval_ms.to_string(),
            "--chunk".into(),
            self.chunk.to_string(),
        ]
    }
}

/// Starts a `stream-peer` server in B and waits for its "listening" line.
fn start_server(t: &Pair, pace: Pace) -> Proc {
    let mut cmd = t.b.command(env!("CARGO_BIN_EXE_stream-peer"));
    cmd.args(["server", "--listen", BGP, "--attach"])
        .arg(t.side_b.attach_socket())
        .args(pace.args());
    started(cmd, "server (B)", LISTEN_WAIT, "listening")
}

/// Starts a `stream-peer` client in A streaming for `seconds` and waits for
/// its "connected" line.
fn start_client(t: &Pair, seconds: u64, pace: Pace) -> Proc {
    let mut cmd = t.a.command(env!("CARGO_BIN_EXE_stream-peer"));
    cmd.args(["client", "--connect", BGP, "--attach"])
        .arg(t.side_a.attach_socket())
        .args(["--seconds", &seconds.to_string()])
        .args(pace.args());
    started(cmd, "client (A)", WAIT, "connected")
}

/// Spawns the stream-peer `cmd` and waits up to `wait` for its first event,
/// which must be `event` with keys installed by TCP-MD5.
fn started(cmd: Command, role: &str, wait: Duration, event: &str) -> Proc {
    let mut p = Proc::spawn(&format!("stream-peer {role}"), cmd);
    let Some(line) = p.wait_line(wait, |l| l.contains("\"event\"")) else {
        p.kill();
        panic!("{} did not report\n{}", p.name, p.report());
    };
    let v: Value = serde_json::from_str(&line).expect("stream-peer line is JSON");
    if v["event"] != event {
        p.kill();
        panic!("{}: not {event}: {v}\n{}", p.name, p.report());
    }
    assert_eq!(v["attach"]["installed"], "keys", "{v}");
    assert_eq!(v["attach"]["mechanism"], "tcp-md5", "{v}");
    p
}

/// Waits for a stream-peer to finish and returns its summary line.
fn finish(p: &mut Proc, limit: Duration) -> Value {
    let Some(status) = p.wait_exit(limit) else {
        p.kill();
        panic!("{} still running after {limit:?}\n{}", p.name, p.report());
    };
    let summary = p
        .stdout_lines()
        .iter()
        .rev()
        .find(|l| l.contains("\"summary\""))
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| panic!("{}: no summary\n{}", p.name, p.report()));
    let mut s = summary;
    s["exit_status"] = status.code().map_or(Value::Null, Value::from);
    s
}

/// Asserts that both ends streamed without a drop or a stall and that
/// every octet one end wrote, the other verified.
fn assert_stream_intact(client: &Value, server: &Value, detail: &dyn Fn() -> String) {
    for (role, s) in [("client", client), ("server", server)] {
        assert_eq!(
            s["disconnected"],
            false,
            "{role} disconnected: {s}\n{}",
            detail()
        );
        assert_eq!(s["stalled"], false, "{role} stalled: {s}\n{}", detail());
        assert_eq!(s["errors"], json!([]), "{role}: {s}\n{}", detail());
        assert_eq!(s["exit_status"], 0, "{role}: {s}\n{}", detail());
        assert!(s["bytes_in"].as_u64().unwrap_or(0) > 0, "{role}: {s}");
    }
    assert_eq!(
        client["bytes_out"],
        server["bytes_in"],
        "client wrote {}, server verified {}\n{}",
        client["bytes_out"],
        server["bytes_in"],
        detail()
    );
    assert_eq!(
        server["bytes_out"],
        client["bytes_in"],
        "server wrote {}, client verified {}\n{}",
        server["bytes_out"],
        client["bytes_in"],
        detail()
    );
}

// ---------------------------------------------------------------------------
// The control socket, and the sampler
// ---------------------------------------------------------------------------

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// An MKT master key collected from a daemon.
#[derive(Clone)]
struct Key {
    hex: String,
    bytes: Vec<u8>,
    fingerprint: String,
    /// When it was first collected (seconds since the sampler started).
    first_seen: f64,
    /// By which side: 0 = A, 1 = B.
    side: usize,
}

/// (fingerprint, state) of each MKT in one `mkts` answer.
type MktList = Vec<(String, String)>;

/// What the sampler saw.
#[derive(Default)]
struct Record {
    /// Every key, in the order collected.
    keys: Vec<Key>,
    /// Per side: (time, [(fingerprint, state)]) of each `mkts` answer.
    mkts: [Vec<(f64, MktList)>; 2],
    /// Per side: (time, TCPMD5Failure) of the side's namespace.
    md5_failures: [Vec<(f64, u64)>; 2],
    /// Per side: requests that failed (daemon down, ...).
    failed: [u64; 2],
}

impl Record {
    /// Distinct fingerprints a side listed, with when each first appeared.
    fn fingerprints(&self, side: usize) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = Vec::new();
        for (t, list) in &self.mkts[side] {
            for (fp, _) in list {
                if !out.iter().any(|(f, _)| f == fp) {
                    out.push((fp.clone(), *t));
                }
            }
        }
        out
    }

    /// The increments of a side's TCPMD5Failure: (window start, window end,
    /// increment) for each sample that saw the counter rise.
    fn failure_increments(&self, side: usize) -> Vec<(f64, f64, u64)> {
        self.md5_failures[side]
            .windows(2)
            .filter(|w| w[1].1 > w[0].1)
            .map(|w| (w[0].0, w[1].0, w[1].1 - w[0].1))
            .collect()
    }

    fn failure_delta(&self, side: usize) -> u64 {
        let v = &self.md5_failures[side];
        match (v.first(), v.last()) {
            (Some(a), Some(b)) => b.1 - a.1,
            _ => 0,
        }
    }
}

/// A thread that every [`SAMPLE_EVERY`] asks both daemons for their MKTs
/// (`mkts`) and master keys (`mkt-keys`), and reads both namespaces'
/// TCPMD5Failure counter (from `/proc/PID/net/netstat` of a process in the
/// namespace, once one is given with [`Sampler::watch`]).
struct Sampler {
    t0: Instant,
    /// `t0` on the wall clock (seconds since the epoch), for the capture.
    wall0: f64,
    pids: Arc<Mutex<[Option<u32>; 2]>>,
    record: Arc<Mutex<Record>>,
    stop: Option<Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Sampler {
    fn start(sockets: [PathBuf; 2]) -> Sampler {
        let t0 = Instant::now();
        let wall0 = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let pids = Arc::new(Mutex::new([None, None]));
        let record = Arc::new(Mutex::new(Record::default()));
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = {
            let pids = Arc::clone(&pids);
            let record = Arc::clone(&record);
            std::thread::spawn(move || {
                let sample = || {
                    for (side, socket) in sockets.iter().enumerate() {
                        let keys = mkt_master_keys(socket);
                        let list = control(socket, "mkts");
                        let pid = pids.lock().expect("pids")[side];
                        let failures = pid.and_then(|pid| {
                            let text =
                                std::fs::read_to_string(format!("/proc/{pid}/net/netstat")).ok()?;
                            parse_netstat(&text, "TcpExt")
                                .ok()?
                                .get("TCPMD5Failure")
                                .copied()
                        });
                        let t = t0.elapsed().as_secs_f64();
                        let mut r = record.lock().expect("record");
                        match keys {
                            Ok(hexes) => {
                                for hex in hexes {
                                    if r.keys.iter().any(|x| x.hex == hex) {
                                        continue;
                                    }
                                    let bytes = unhex(&hex).expect("master key is hex");
                                    let fingerprint = aokd_proto::crypto::fingerprint(&bytes);
                                    r.keys.push(Key {
                                        hex,
                                        bytes,
                                        fingerprint,
                                        first_seen: t,
                                        side,
                                    });
                                }
                            }
                            Err(_) => r.failed[side] += 1,
                        }
                        match list {
                            Ok(v) => r.mkts[side].push((t, fingerprints(&v))),
                            Err(_) => r.failed[side] += 1,
                        }
                        if let Some(n) = failures {
                            r.md5_failures[side].push((t, n));
                        }
                    }
                };
                loop {
                    sample();
                    match stopped.recv_timeout(SAMPLE_EVERY) {
                        Err(RecvTimeoutError::Timeout) => {}
                        // A last sample after the stream: an MKT negotiated
                        // since the previous one may have signed its last
                        // segments.
                        _ => {
                            sample();
                            break;
                        }
                    }
                }
            })
        };
        Sampler {
            t0,
            wall0,
            pids,
            record,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// Reads the namespaces' counters through these processes from now on.
    fn watch(&self, pid_a: u32, pid_b: u32) {
        *self.pids.lock().expect("pids") = [Some(pid_a), Some(pid_b)];
    }

    /// Seconds since the sampler started.
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// Stops the thread (after one last round) and returns the record.
    fn finish(&mut self) -> Record {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(h) = self.handle.take() {
            h.join().expect("sampler thread");
        }
        std::mem::take(&mut *self.record.lock().expect("record"))
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

// ---------------------------------------------------------------------------
// The capture
// ---------------------------------------------------------------------------

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The IP packets of a classic pcap file (as `tcpdump -w` writes it), with
/// their times (seconds since the epoch).
fn read_pcap(path: &Path) -> Result<Vec<(f64, Vec<u8>)>, String> {
    let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let head: [u8; 4] = b
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or("pcap: no header")?;
    let (le, nanos) = match u32::from_le_bytes(head) {
        0xa1b2_c3d4 => (true, false),
        0xa1b2_3c4d => (true, true),
        0xd4c3_b2a1 => (false, false),
        0x4d3c_b2a1 => (false, true),
        m => return Err(format!("pcap: magic {m:#x} (pcapng is not read here)")),
    };
    let u32_at = |at: usize| -> Option<u32> {
        let s: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(s)
        } else {
            u32::from_be_bytes(s)
        })
    };
    let linktype = u32_at(20).ok_or("pcap: short header")? & 0x0fff_ffff;
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= b.len() {
        let sec = u32_at(off).unwrap_or(0) as f64;
        let frac = u32_at(off + 4).unwrap_or(0) as f64;
        let len = u32_at(off + 8).unwrap_or(0) as usize;
        off += 16;
        let frame = b.get(off..off + len).ok_or("pcap: truncated record")?;
        off += len;
        let ip = match linktype {
            // Ethernet, with 802.1Q/802.1ad tags.
            1 => {
                let mut at = 12;
                let mut et = be16(frame, at);
                while matches!(et, Some(0x8100 | 0x88a8)) {
                    at += 4;
                    et = be16(frame, at);
                }
                matches!(et, Some(0x0800 | 0x86dd)).then(|| &frame[at + 2..])
            }
            // Linux cooked capture (SLL, SLL2).
            113 => matches!(be16(frame, 14), Some(0x0800 | 0x86dd)).then(|| &frame[16..]),
            276 => matches!(be16(frame, 0), Some(0x0800 | 0x86dd)).then(|| &frame[20..]),
            101 | 228 | 229 => Some(frame),
            other => return Err(format!("pcap: link type {other}")),
        };
        if let Some(ip) = ip {
            let t = sec + frac / if nanos { 1e9 } else { 1e6 };
            out.push((t, ip.to_vec()));
        }
    }
    Ok(out)
}

/// One captured segment of the connection to port 179.
#[derive(Clone, Debug)]
struct Seg {
    /// Seconds since the sampler started.
    t: f64,
    /// Sent by A.
    from_a: bool,
    /// Carries a TCP-MD5 option.
    md5: bool,
    /// Carries any authentication option.
    signed: bool,
    /// The collected key whose digest matches.
    key: Option<usize>,
    sport: u16,
    seq: u32,
    len: u32,
    syn: bool,
}

/// The segments between A and B with port 179 on either end.
fn segments(pcap: &Path, keys: &[Key], wall0: f64) -> Vec<Seg> {
    let a: IpAddr = ADDR_A.parse().expect("A");
    let b: IpAddr = ADDR_B.parse().expect("B");
    let packets = read_pcap(pcap).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    // The key that matched the last segment of each direction goes first.
    let mut last = [0usize; 2];
    for (t, ip) in &packets {
        let Ok(seg) = parse_ip_packet(ip) else {
            continue;
        };
        let (src, dst) = (seg.addresses.src(), seg.addresses.dst());
        if !((src == a && dst == b) || (src == b && dst == a)) {
            continue;
        }
        if seg.src_port != 179 && seg.dst_port != 179 {
            continue;
        }
        let from_a = src == a;
        let dir = usize::from(!from_a);
        let md5 = matches!(seg.auth, AuthOption::Md5(_));
        let key = if md5 {
            std::iter::once(last[dir])
                .chain(0..keys.len())
                .filter(|&i| i < keys.len())
                .find(|&i| verify_digest(&keys[i].bytes, &seg).is_ok())
        } else {
            None
        };
        if let Some(k) = key {
            last[dir] = k;
        }
        out.push(Seg {
            t: t - wall0,
            from_a,
            md5,
            signed: seg.is_signed(),
            key,
            sport: if from_a { seg.src_port } else { seg.dst_port },
            seq: seg.seq,
            len: seg.tcp_len.saturating_sub(seg.header.len() as u32),
            syn: seg.syn(),
        });
    }
    out
}

/// A change of the key a side signs with, seen on the wire.
#[derive(Debug, Clone)]
struct Switch {
    key: usize,
    /// First segment under it from A, from B.
    a: Option<f64>,
    b: Option<f64>,
}

impl Switch {
    fn at(&self) -> f64 {
        match (self.a, self.b) {
            (Some(a), Some(b)) => a.min(b),
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => f64::NAN,
        }
    }
    fn skew(&self) -> Option<f64> {
        Some((self.a? - self.b?).abs())
    }
}

/// What the capture shows.
struct Analysis {
    segs: Vec<Seg>,
    /// Every key used on the wire, in the order first used; the first is
    /// the connection's initial key, each later one a switch.
    switches: Vec<Switch>,
    /// Per direction (0: A->B, 1: B->A): segments signed with another key
    /// than the one the receiver signed its own latest segment with (the
    /// receiver had already moved, or not yet): what the receiver drops.
    mismatched: [Vec<f64>; 2],
    /// Per direction: data segments sent again (sequence range already seen).
    retransmitted: [Vec<f64>; 2],
    /// Per direction: times the sender went back to a key it had left.
    back_switches: [usize; 2],
    unsigned: usize,
    unmatched: usize,
    connections: BTreeSet<u16>,
}

impl Analysis {
    fn new(segs: Vec<Seg>) -> Analysis {
        let mut switches: Vec<Switch> = Vec::new();
        let mut current: [Option<usize>; 2] = [None, None];
        let mut mismatched: [Vec<f64>; 2] = Default::default();
        let mut retransmitted: [Vec<f64>; 2] = Default::default();
        let mut back_switches = [0usize; 2];
        let mut used: [BTreeSet<usize>; 2] = Default::default();
        let mut isn: [Option<u32>; 2] = [None, None];
        let mut top: [u64; 2] = [0, 0];
        for s in &segs {
            let dir = usize::from(!s.from_a);
            if let Some(k) = s.key {
                match switches.iter_mut().find(|w| w.key == k) {
                    Some(w) => {
                        let first = if s.from_a { &mut w.a } else { &mut w.b };
                        first.get_or_insert(s.t);
                    }
                    None => switches.push(Switch {
                        key: k,
                        a: s.from_a.then_some(s.t),
                        b: (!s.from_a).then_some(s.t),
                    }),
                }
                if current[dir].is_some_and(|c| c != k) && used[dir].contains(&k) {
                    back_switches[dir] += 1;
                }
                used[dir].insert(k);
                current[dir] = Some(k);
                // The receiver's key: the one it signed its latest segment with.
                if current[1 - dir].is_some_and(|r| r != k) {
                    mismatched[dir].push(s.t);
                }
            }
            if s.syn {
                isn[dir] = Some(s.seq);
                top[dir] = 1;
            } else if let Some(i) = isn[dir] {
                let start = u64::from(s.seq.wrapping_sub(i));
                let end = start + u64::from(s.len);
                if s.len > 0 && end <= top[dir] {
                    retransmitted[dir].push(s.t);
                }
                top[dir] = top[dir].max(end);
            }
        }
        Analysis {
            unsigned: segs.iter().filter(|s| !s.signed).count(),
            unmatched: segs.iter().filter(|s| s.signed && s.key.is_none()).count(),
            connections: segs.iter().map(|s| s.sport).collect(),
            segs,
            switches,
            mismatched,
            retransmitted,
            back_switches,
        }
    }

    /// The switch times (the initial key excluded).
    fn switch_times(&self) -> Vec<f64> {
        self.switches.iter().skip(1).map(Switch::at).collect()
    }

    /// Distance (s) from `t` to the nearest switch, signed: negative before it.
    fn nearest_switch(&self, t: f64) -> Option<f64> {
        self.switch_times()
            .into_iter()
            .map(|s| t - s)
            .min_by(|x, y| x.abs().total_cmp(&y.abs()))
    }

    /// Whether the window [from, to] meets [s - NEAR_BEFORE, s + NEAR_AFTER]
    /// for some switch s.
    fn near_switch(&self, from: f64, to: f64) -> bool {
        self.switch_times()
            .into_iter()
            .any(|s| from <= s + NEAR_AFTER && to >= s - NEAR_BEFORE)
    }

    fn first_t(&self) -> f64 {
        self.segs.first().map_or(0.0, |s| s.t)
    }
}

fn key_name(keys: &[Key], k: usize) -> String {
    keys.get(k)
        .map_or_else(|| format!("#{k}"), |x| format!("#{k} {}", x.fingerprint))
}

/// The collected keys, for output: number, fingerprint, who and when.
fn key_list(keys: &[Key]) -> String {
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            format!(
                "#{i} {} ({} at {:.2} s)",
                k.fingerprint,
                ["A", "B"][k.side],
                k.first_seen
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The per-switch table, for output.
fn switch_table(an: &Analysis, keys: &[Key]) -> String {
    let mut out = String::new();
    for (i, w) in an.switches.iter().enumerate() {
        let f = |x: Option<f64>| x.map_or("-".to_string(), |t| format!("{t:.3}"));
        let _ = write!(
            out,
            "  {} key {}: A first {} s, B first {} s",
            if i == 0 { "initial" } else { "switch " },
            key_name(keys, w.key),
            f(w.a),
            f(w.b)
        );
        if i > 0 {
            let s = w.at();
            let next = an.switches.get(i + 1).map_or(f64::INFINITY, Switch::at);
            let within = |v: &[f64]| {
                v.iter()
                    .filter(|&&t| t >= s - NEAR_BEFORE && t < next)
                    .count()
            };
            let _ = write!(
                out,
                ", skew {}, rejected A->B {} B->A {}, retransmitted A->B {} B->A {}",
                w.skew()
                    .map_or("-".to_string(), |x| format!("{:.1} ms", x * 1e3)),
                within(&an.mismatched[0]),
                within(&an.mismatched[1]),
                within(&an.retransmitted[0]),
                within(&an.retransmitted[1]),
            );
        }
        out.push('\n');
    }
    out
}

/// `aoctl verify --pcap FILE --json --md5 KEY...`: exit status and JSON.
fn verify(pcap: &Path, keys: &[Key]) -> (Option<i32>, Value) {
    aoctl_verify(pcap, keys.iter().flat_map(|k| ["--md5", k.hex.as_str()]))
}

/// Asserts that `aoctl verify` passed: one connection from A to port 179,
/// every segment TCP-MD5 and verified, none unsigned.
fn assert_verified(code: Option<i32>, v: &Value, detail: &dyn Fn() -> String) -> String {
    let conns = v["connections"].as_array().cloned().unwrap_or_default();
    assert_eq!(conns.len(), 1, "verify: {v:#}\n{}", detail());
    let c = &conns[0];
    assert_eq!(c["src"], ADDR_A, "{c}");
    assert_eq!(c["dport"], 179, "{c}");
    assert_eq!(c["signing"], "tcp-md5", "{c}\n{}", detail());
    assert_eq!(c["unsigned"], 0, "unsigned segments: {c}\n{}", detail());
    let segments = c["segments"].as_u64().expect("segments");
    assert!(segments > 0, "{c}");
    assert_eq!(c["verified"].as_u64(), Some(segments), "{c}\n{}", detail());
    assert_eq!(code, Some(0), "verify: {v:#}\n{}", detail());
    assert_eq!(v["result"], "pass", "{v:#}\n{}", detail());
    format!(
        "verified {}/{} segments, unsigned {}, bad_mac {}, {} MD5 keys tried",
        c["verified"], c["segments"], c["unsigned"], c["bad_mac"], v["keys"]["tcp_md5"]
    )
}

/// Log lines worth showing: warnings, errors, rekeys, collisions, socket
/// updates, restore.
fn log_digest(log: &str) -> String {
    log.lines()
        .filter(|l| {
            [
                "WARN",
                "ERROR",
                "rekey",
                "simultaneous",
                "socket keys",
                "restor",
                "MKT negotiated",
                "MKT deleted",
                "MKT from",
                "IKE SA",
            ]
            .iter()
            .any(|w| l.contains(w))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// Checks of the capture and the counters common to both tests; returns
/// the figures as text.
fn judge_capture(an: &Analysis, rec: &Record, keys: &[Key], detail: &dyn Fn() -> String) -> String {
    assert_eq!(
        an.connections.len(),
        1,
        "connections to port 179 in the capture (A's ports): {:?}\n{}",
        an.connections,
        detail()
    );
    assert_eq!(
        an.unsigned,
        0,
        "unsigned segments in the capture\n{}",
        detail()
    );
    assert!(
        an.segs.iter().all(|s| s.md5),
        "segments without TCP-MD5\n{}",
        detail()
    );
    assert_eq!(
        an.unmatched,
        0,
        "TCP-MD5 segments that match no collected key\n{}",
        detail()
    );
    for (dir, name) in [(0, "A->B"), (1, "B->A")] {
        for &t in &an.mismatched[dir] {
            let d = an.nearest_switch(t);
            assert!(
                d.is_some_and(|d| (-NEAR_BEFORE..=NEAR_AFTER).contains(&d)),
                "{name}: segment at {t:.3} s signed with a key its receiver did not use, \
                 {d:?} s from the nearest switch\n{}",
                detail()
            );
        }
    }
    for (side, name) in [(0, "A"), (1, "B")] {
        for (from, to, n) in rec.failure_increments(side) {
            assert!(
                an.near_switch(from, to),
                "{name}: TCPMD5Failure +{n} between {from:.2} s and {to:.2} s, \
                 not near a key switch\n{}",
                detail()
            );
        }
    }
    let fmt_times = |v: &[f64]| {
        v.iter()
            .map(|t| match an.nearest_switch(*t) {
                Some(d) => format!("{t:.3}({:+.0}ms)", d * 1e3),
                None => format!("{t:.3}"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let incs = |side: usize| {
        rec.failure_increments(side)
            .iter()
            .map(|(a, b, n)| format!("+{n} in {a:.1}-{b:.1}s"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "capture: {} segments (A->B {}, B->A {}) from {:.3} s, unsigned {}, no matching key {}\n\
         key switches on the wire: {} (keys used {}), back-switches A {} B {}\n{}\
         segments signed with a key the receiver was not using: A->B {} [{}], B->A {} [{}]\n\
         retransmitted data segments: A->B {} [{}], B->A {} [{}]\n\
         TCPMD5Failure: A +{} ({}), B +{} ({})\n\
         keys collected: {}",
        an.segs.len(),
        an.segs.iter().filter(|s| s.from_a).count(),
        an.segs.iter().filter(|s| !s.from_a).count(),
        an.first_t(),
        an.unsigned,
        an.unmatched,
        an.switches.len().saturating_sub(1),
        an.switches.len(),
        an.back_switches[0],
        an.back_switches[1],
        switch_table(an, keys),
        an.mismatched[0].len(),
        fmt_times(&an.mismatched[0]),
        an.mismatched[1].len(),
        fmt_times(&an.mismatched[1]),
        an.retransmitted[0].len(),
        fmt_times(&an.retransmitted[0]),
        an.retransmitted[1].len(),
        fmt_times(&an.retransmitted[1]),
        rec.failure_delta(0),
        incs(0),
        rec.failure_delta(1),
        incs(1),
        key_list(keys),
    )
}

/// The namespaces' TCP-MD5 counters over the stream (from `ip netns exec
/// cat /proc/net/netstat` before and after): no segment arrived without
/// TCP-MD5 where a key was expected (TCPMD5NotFound), and the sampler's
/// readings of TCPMD5Failure (through the stream-peers' /proc entries)
/// agree with the totals. Returns the figures as text.
fn judge_counters(
    before: &[BTreeMap<String, u64>; 2],
    after: &[BTreeMap<String, u64>; 2],
    rec: &Record,
    detail: &dyn Fn() -> String,
) -> String {
    let delta = |side: usize, name: &str| {
        let get = |m: &BTreeMap<String, u64>| {
            *m.get(name)
                .unwrap_or_else(|| panic!("no {name} in TcpExt: {m:?}"))
        };
        get(&after[side]) - get(&before[side])
    };
    let mut out = Vec::new();
    for (side, name) in [(0, "A"), (1, "B")] {
        assert_eq!(
            delta(side, "TCPMD5NotFound"),
            0,
            "{name}: segments without TCP-MD5 arrived on a keyed socket\n{}",
            detail()
        );
        assert!(
            rec.md5_failures[side].len() >= 10,
            "{name}: the sampler read TCPMD5Failure only {} times",
            rec.md5_failures[side].len()
        );
        assert!(
            rec.failure_delta(side) <= delta(side, "TCPMD5Failure"),
            "{name}: sampled TCPMD5Failure rose by {}, more than the total {}",
            rec.failure_delta(side),
            delta(side, "TCPMD5Failure")
        );
        out.push(format!(
            "{name}: TCPMD5Failure +{} TCPMD5NotFound +{} TCPMD5Unexpected +{} ({} samples)",
            delta(side, "TCPMD5Failure"),
            delta(side, "TCPMD5NotFound"),
            delta(side, "TCPMD5Unexpected"),
            rec.md5_failures[side].len()
        ));
    }
    format!("kernel counters over the stream: {}", out.join("; "))
}

fn mkt_timeline(rec: &Record, side: usize) -> String {
    let mut out = String::new();
    let mut last: Option<&MktList> = None;
    for (t, list) in &rec.mkts[side] {
        if last != Some(list) {
            let l: Vec<String> = list.iter().map(|(f, s)| format!("{f}:{s}")).collect();
            let _ = writeln!(out, "  {t:7.2} s  {}", l.join(" "));
            last = Some(list);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// One stream, start to end
// ---------------------------------------------------------------------------

/// What both tests set up: the namespaces, the sampler, the capture, both
/// daemons holding an MKT, and a stream from A to B running. Fields drop in
/// declaration order: the processes first, the namespaces last.
struct Stream {
    client: Proc,
    server: Proc,
    da: Daemon,
    db: Daemon,
    cap: Capture,
    sampler: Sampler,
    /// Both namespaces' counters before the stream.
    counters0: [BTreeMap<String, u64>; 2],
    /// How long the client streams (s).
    seconds: u64,
    t: Pair,
}

impl Stream {
    fn start(tag: &str, seconds: u64, pace: Pace) -> Stream {
        let t = topo(tag);
        let sampler = Sampler::start([t.side_a.socket(), t.side_b.socket()]);
        let cap = t.capture();
        let da = t.start_a();
        let db = t.start_b();
        wait_for_mkt(&da);
        wait_for_mkt(&db);
        let counters0 = t.netstat();
        let server = start_server(&t, pace);
        let client = start_client(&t, seconds, pace);
        sampler.watch(client.pid(), server.pid());
        Stream {
            client,
            server,
            da,
            db,
            cap,
            sampler,
            counters0,
            seconds,
            t,
        }
    }

    /// Waits for both stream-peers to finish, then reads the counters and
    /// both daemons' MKTs, stops the sampler and the capture, and analyses
    /// the capture.
    fn end(&mut self) -> End {
        let limit = Duration::from_secs(self.seconds + 60);
        let cs = finish(&mut self.client, limit);
        let ss = finish(&mut self.server, Duration::from_secs(30));
        let t_end = self.sampler.now();
        let counters1 = self.t.netstat();
        // The MKTs both daemons hold at the end, as `aoctl mkts` shows them.
        let mkts_end = [
            fingerprints(&self.da.aoctl(&["mkts"]).expect("mkts A")),
            fingerprints(&self.db.aoctl(&["mkts"]).expect("mkts B")),
        ];
        let rec = self.sampler.finish();
        let summary = self.cap.stop().expect("stop tcpdump");
        let keys = rec.keys.clone();
        let an = Analysis::new(segments(self.cap.file(), &keys, self.sampler.wall0));
        End {
            cs,
            ss,
            t_end,
            counters1,
            mkts_end,
            rec,
            summary,
            keys,
            an,
        }
    }

    /// The capture as text (its start), for failure messages.
    fn capture_text(&self) -> String {
        netns::capture_text(self.cap.file(), "-tt", 60)
    }
}

/// What the end of a [`Stream`] shows.
struct End {
    /// The client's and the server's summaries.
    cs: Value,
    ss: Value,
    /// When both had finished (sampler time).
    t_end: f64,
    counters1: [BTreeMap<String, u64>; 2],
    /// A's and B's `aoctl mkts` after the stream.
    mkts_end: [MktList; 2],
    rec: Record,
    /// tcpdump's summary.
    summary: String,
    keys: Vec<Key>,
    an: Analysis,
}

impl End {
    /// The checks both tests make of the stream: intact both ways, `aoctl
    /// verify` of the capture with every collected key, the capture segment
    /// by segment, and the kernel counters. Returns the figures as text
    /// (verify, capture, counters).
    fn judge(&self, s: &Stream, detail: &dyn Fn() -> String) -> [String; 3] {
        assert_stream_intact(&self.cs, &self.ss, detail);
        let (code, v) = verify(s.cap.file(), &self.keys);
        let verified = assert_verified(code, &v, detail);
        let figures = judge_capture(&self.an, &self.rec, &self.keys, detail);
        let kernel = judge_counters(&s.counters0, &self.counters1, &self.rec, detail);
        [verified, figures, kernel]
    }

    /// Failure detail: `head`, the summaries, the switches, both sides' MKTs
    /// over time, the digest of each (name, log) in `logs`, and the start of
    /// the capture.
    fn detail(&self, st: &Stream, head: &str, logs: &[(&str, &str)]) -> String {
        let mut out = format!(
            "{head}client: {}\nserver: {}\nswitches:\n{}\nA's MKTs:\n{}B's MKTs:\n{}tcpdump: {}\n",
            self.cs,
            self.ss,
            switch_table(&self.an, &self.keys),
            mkt_timeline(&self.rec, 0),
            mkt_timeline(&self.rec, 1),
            self.summary
        );
        for (name, log) in logs {
            let _ = writeln!(out, "{name}:\n{}", log_digest(log));
        }
        let _ = write!(out, "capture (start):\n{}", st.capture_text());
        out
    }
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[test]
fn md5_connection_survives_rekeys() {
    if !netns::prerequisites("md5_connection_survives_rekeys", false) {
        return;
    }
    let mut st = Stream::start("md5rekey", REKEY_STREAM_S, REKEY_PACE);
    let stream_start = st.sampler.now();
    let end = st.end();
    let stream_end = end.t_end;
    let (log_a, log_b) = (st.da.log(), st.db.log());
    let detail = || end.detail(&st, "", &[("A log", &log_a), ("B log", &log_b)]);
    let [verified, figures, kernel] = end.judge(&st, &detail);
    let End {
        cs,
        ss,
        mkts_end: [end_a, end_b],
        rec,
        keys,
        an,
        ..
    } = &end;

    // The logs of a run with attached sockets, rekeys and rollovers read
    // as words, not Rust debug text.
    for (side, log) in [("A", &log_a), ("B", &log_b)] {
        let bad = aokd_tests::unreadable_log_lines(log);
        assert!(
            bad.is_empty(),
            "{side}'s log prints debug text:\n{}",
            bad.join("\n")
        );
    }

    // `aoctl verify --from-daemon` with A's keys alone: the segments sent
    // before the rekeys verify against the retired keys A still holds in
    // memory (`[daemon] retired_keys`), marked as such; none fails.
    let (code, v) = aoctl_verify(
        st.cap.file(),
        [
            "--from-daemon",
            "--socket",
            st.da.side.socket().to_str().unwrap(),
        ],
    );
    let t = &v["totals"];
    let retired_figures = format!(
        "verify --from-daemon: {} of {} segments verified, {} against a retired key, bad_mac {}",
        t["verified"], t["segments"], t["verified_retired"], t["bad_mac"]
    );
    assert_eq!(code, Some(0), "{retired_figures}\n{v:#}\n{}", detail());
    assert_eq!(t["verified"], t["segments"], "{retired_figures}");
    assert!(
        t["verified_retired"].as_u64().is_some_and(|n| n > 0),
        "{retired_figures}"
    );
    println!("{retired_figures}");

    // At least MIN_REKEYS rekeys, on the wire and in both daemons.
    let fps_a = rec.fingerprints(0);
    let fps_b = rec.fingerprints(1);
    let switches = an.switches.len().saturating_sub(1);
    assert!(
        switches >= MIN_REKEYS,
        "{switches} key switches on the connection, want >= {MIN_REKEYS}\n{}",
        detail()
    );
    assert!(
        fps_a.len() > MIN_REKEYS && fps_b.len() > MIN_REKEYS,
        "distinct MKTs: A {}, B {}\n{}",
        fps_a.len(),
        fps_b.len(),
        detail()
    );
    // Each daemon counted its socket's rollovers (the key replaced by a
    // newer MKT's: aoctl status, the metric aokd_rollovers_total), at least
    // one per rekey seen on the wire but one (the stream may end between a
    // daemon's switch and the first segment with the new key).
    let rollovers = [&st.da, &st.db].map(|d| {
        d.aoctl(&["status"]).expect("status")["peers"][0]["rollovers"]
            .as_u64()
            .unwrap_or(0)
    });
    for (side, n) in ["A", "B"].iter().zip(rollovers) {
        assert!(
            n as usize + 1 >= switches && n as usize >= MIN_REKEYS,
            "{side} counted {n} rollovers for {switches} key switches on the wire\n{}",
            detail()
        );
    }
    for w in an.switches.iter().skip(1) {
        let skew = w.skew();
        assert!(
            skew.is_some_and(|s| s <= MAX_SKEW),
            "switch to {}: A and B first used it {skew:?} s apart\n{}",
            key_name(keys, w.key),
            detail()
        );
    }
    // Every fingerprint either daemon listed has its key collected, and
    // every key collected was listed.
    let collected: BTreeSet<&str> = keys.iter().map(|k| k.fingerprint.as_str()).collect();
    for (side, fps) in [("A", &fps_a), ("B", &fps_b)] {
        for (fp, _) in fps.iter() {
            assert!(
                collected.contains(fp.as_str()),
                "{side} listed MKT {fp} whose key was never collected\n{}",
                detail()
            );
        }
    }

    let skews: Vec<String> = an
        .switches
        .iter()
        .skip(1)
        .filter_map(Switch::skew)
        .map(|s| format!("{:.1}", s * 1e3))
        .collect();
    println!(
        "md5_connection_survives_rekeys: stream {:.1} s ({:.2}-{:.2} s); client sent {} / received {} octets, \
         server sent {} / received {}, all verified; max gap client {} ms server {} ms\n\
         MKTs: A saw {} fingerprints, B {}; keys collected {} (A {}, B {}); at the end A holds {:?}, B {:?}\n\
         switch skews (ms): {}; rollovers counted A {} B {}\n{figures}\n{kernel}\n{verified}\n\
         logs: collisions A {} B {}, WARN/ERROR lines A {} B {}, socket key updates A {} B {}\n\
         A's MKTs over time:\n{}B's MKTs over time:\n{}",
        stream_end - stream_start,
        stream_start,
        stream_end,
        cs["bytes_out"],
        cs["bytes_in"],
        ss["bytes_out"],
        ss["bytes_in"],
        cs["max_gap_ms"],
        ss["max_gap_ms"],
        fps_a.len(),
        fps_b.len(),
        keys.len(),
        keys.iter().filter(|k| k.side == 0).count(),
        keys.iter().filter(|k| k.side == 1).count(),
        end_a,
        end_b,
        skews.join(" "),
        rollovers[0],
        rollovers[1],
        count(&log_a, "simultaneous"),
        count(&log_b, "simultaneous"),
        count(&log_a, " WARN ") + count(&log_a, " ERROR "),
        count(&log_b, " WARN ") + count(&log_b, " ERROR "),
        count(&log_a, "socket keys updated"),
        count(&log_b, "socket keys updated"),
        mkt_timeline(rec, 0),
        mkt_timeline(rec, 1),
    );
}

#[test]
fn md5_restart_keeps_sockets() {
    if !netns::prerequisites("md5_restart_keeps_sockets", false) {
        return;
    }
    let mut st = Stream::start("md5restart", RESTART_STREAM_S, DEFAULT_PACE);
    let mut timeline: Vec<(f64, String)> = vec![(st.sampler.now(), "stream started".into())];

    // A's socket as A's aokd recorded it.
    let before = st.da.wait_for(&["sockets"], WAIT, |v| {
        v["sockets"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["role"] == "connect" && s["state"] == "keys")
        })
    });
    let sock = before["sockets"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["role"] == "connect"))
        .cloned()
        .expect("connect socket");
    assert_eq!(
        sock["pid"].as_u64(),
        Some(u64::from(st.client.pid())),
        "the socket's owner is the client: {sock}"
    );
    assert_eq!(sock["mechanism"], "tcp-md5", "{sock}");
    // Data is flowing: the client's per-second sample shows octets in.
    let flowing = st.client.wait_line(WAIT, |l| {
        l.contains("\"sample\"")
            && serde_json::from_str::<Value>(l).is_ok_and(|v| {
                v["bytes_in"].as_u64().unwrap_or(0) > 0 && v["t_ms"].as_u64().unwrap_or(0) >= 2000
            })
    });
    assert!(flowing.is_some(), "no data flowing\n{}", st.client.report());
    let fps_before: BTreeSet<String> = fingerprints(&st.da.aoctl(&["mkts"]).expect("mkts A"))
        .into_iter()
        .map(|(f, _)| f)
        .chain(
            st.sampler
                .record
                .lock()
                .expect("record")
                .fingerprints(0)
                .into_iter()
                .map(|(f, _)| f),
        )
        .collect();

    // SIGKILL A's aokd.
    let cfg = aokd::config::Config::load(&st.t.side_a.config_path()).expect("A's config");
    let state_file = cfg.daemon.state_dir.join("aokd.redb");
    let aokd_pid = st.da.child.id();
    st.da.child.kill().expect("SIGKILL aokd A");
    let status = st.da.child.wait().expect("reap aokd A");
    let t_kill = st.sampler.now();
    timeline.push((
        t_kill,
        format!("A's aokd (pid {aokd_pid}) killed: {status}"),
    ));
    let log_before = st.da.log();
    assert!(
        state_file.is_file(),
        "A's state file {} does not exist after the kill\nA log:\n{log_before}",
        state_file.display()
    );
    let state_len = std::fs::metadata(&state_file).map(|m| m.len()).unwrap_or(0);
    timeline.push((
        st.sampler.now(),
        format!(
            "state file {} exists ({state_len} octets)",
            state_file.display()
        ),
    ));
    // Start it again with the same configuration (the killed one, already
    // reaped, is dropped).
    st.da = st.t.start_a();
    timeline.push((
        st.sampler.now(),
        format!("A's aokd restarted (pid {}), answering", st.da.child.id()),
    ));
    let first = st.da.wait_for(&["mkts"], WAIT, |_| true);
    let first_fps = fingerprints(&first);
    let t_first = st.sampler.now();
    let restored: Vec<&(String, String)> = first_fps
        .iter()
        .filter(|(f, s)| fps_before.contains(f) && s == "restored")
        .collect();
    let new_already: Vec<&(String, String)> = first_fps
        .iter()
        .filter(|(f, _)| !fps_before.contains(f))
        .collect();
    timeline.push((
        t_first,
        format!("A's first `aoctl mkts` after the restart: {first_fps:?}"),
    ));
    let detail_early = || {
        format!(
            "before the kill A had {fps_before:?}\nA log before:\n{}\nA log after:\n{}",
            log_digest(&log_before),
            st.da.log()
        )
    };
    assert!(
        !restored.is_empty() || !new_already.is_empty(),
        "A's first MKT list after the restart {first_fps:?} has neither a restored MKT from \
         before nor a new one\n{}",
        detail_early()
    );
    // The same socket again, with no re-attach.
    let (pid, fd) = (sock["pid"].clone(), sock["fd"].clone());
    let again = st.da.wait_for(&["sockets"], WAIT, |v| {
        v["sockets"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["pid"] == pid && s["fd"] == fd))
    });
    timeline.push((
        st.sampler.now(),
        format!(
            "A lists its socket again (pid {pid}, fd {fd}): {}",
            again["sockets"]
        ),
    ));
    // A new MKT, negotiated with no operator action, on both ends.
    let newer = st.da.wait_for(&["mkts"], WAIT, |v| {
        fingerprints(v)
            .iter()
            .any(|(f, s)| !fps_before.contains(f) && s == "active")
    });
    let new_fp = fingerprints(&newer)
        .into_iter()
        .find(|(f, s)| !fps_before.contains(f) && s == "active")
        .map(|(f, _)| f)
        .expect("new MKT");
    timeline.push((
        st.sampler.now(),
        format!("A has a new MKT {new_fp}: {:?}", fingerprints(&newer)),
    ));
    st.db.wait_for(&["mkts"], WAIT, |v| {
        fingerprints(v).iter().any(|(f, _)| f == &new_fp)
    });
    timeline.push((st.sampler.now(), format!("B has the new MKT {new_fp} too")));

    let end = st.end();
    timeline.push((end.t_end, "stream finished".into()));
    let log_after = st.da.log();
    let log_b = st.db.log();
    let times = timeline
        .iter()
        .map(|(t, s)| format!("  {t:7.2} s  {s}"))
        .collect::<Vec<_>>()
        .join("\n");
    let detail = || {
        let logs = [
            ("A log before", log_before.as_str()),
            ("A log after", &log_after),
            ("B log", &log_b),
        ];
        end.detail(&st, &format!("timeline:\n{times}\n"), &logs)
    };
    let [verified, figures, kernel] = end.judge(&st, &detail);
    let End {
        cs,
        ss,
        mkts_end: [end_a, _],
        rec,
        keys,
        an,
        ..
    } = &end;
    // The connection moved to the new MKT: its key was used on the wire by
    // both ends after the restart.
    let new_key = keys.iter().position(|k| k.fingerprint == new_fp);
    let used = an.switches.iter().find(|w| Some(w.key) == new_key);
    assert!(
        used.is_some_and(|w| w.a.is_some() && w.b.is_some()),
        "the new MKT {new_fp} never signed segments of both ends\n{}",
        detail()
    );
    let gap_a = rec.mkts[0]
        .iter()
        .filter(|(t, _)| *t > t_kill)
        .map(|(t, _)| t - t_kill)
        .next();
    println!(
        "md5_restart_keeps_sockets: timeline\n{times}\n\
         restored MKT listed first: {restored:?}; new already at the first answer: {new_already:?}\n\
         A's control socket answered again {:.2} s after the kill (sampler); sampler requests failed A {} B {}\n\
         client sent {} / received {} octets, server sent {} / received {}, all verified; max gap client {} ms server {} ms\n\
         at the end A holds {end_a:?}\n{figures}\n{kernel}\n{verified}\n\
         A log after the restart:\n{}\nA's MKTs over time:\n{}B's MKTs over time:\n{}",
        gap_a.unwrap_or(f64::NAN),
        rec.failed[0],
        rec.failed[1],
        cs["bytes_out"],
        cs["bytes_in"],
        ss["bytes_out"],
        ss["bytes_in"],
        cs["max_gap_ms"],
        ss["max_gap_ms"],
        log_digest(&log_after),
        mkt_timeline(rec, 0),
        mkt_timeline(rec, 1),
    );
}
