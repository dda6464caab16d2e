//! `aoctl verify`: checks the TCP-AO (RFC 5925) and TCP-MD5 (RFC 2385)
//! signatures of every segment in a pcap or pcapng capture.
//!
//! ```text
//! aoctl verify --pcap FILE [--mkt KEYID:ALG:HEXKEY[:exclude-options]]...
//!              [--md5 HEXKEY]... [--from-daemon [--socket PATH]] [--json]
//! ```
//!
//! The verification logic (connections, ISNs, SNE, keys, MACs) is
//! `aokd_tcpao::CaptureVerifier`; this module reads the file, collects
//! the keys and prints the result (docs/verify.md).
//!
//! Exit status: 0 when every signed segment verified and no connection that
//! carries TCP-AO or TCP-MD5 has an unsigned (or malformed) segment; 1
//! otherwise (including signed segments that could not be checked: unknown
//! KeyID, ISNs never seen, truncated by the snap length, or IP packets that
//! may carry TCP but could not be parsed); 2 when the capture cannot be read
//! (the message names the file and the byte offset), a key argument is
//! invalid, or `--from-daemon` fails.
//!
//! `--json` prints one document (version 1; fields are only ever added):
//!
//! ```text
//! {
//!   "version": 1,
//!   "file": "capture.pcapng",
//!   "keys": { "tcp_ao": 2, "tcp_md5": 0 },      // how many, never the keys
//!   "connections": [
//!     { "src": "10.11.12.13", "sport": 59863,     // the SYN's sender (else
//!       "dst": "172.27.28.29", "dport": 179,      //  the first segment's)
//!       "signing": "tcp-ao",                      // none|tcp-ao|tcp-md5|mixed
//!       "isns_seen": true,
//!       "segments": 4, "verified": 4, "bad_mac": 0, "unsigned": 0,
//!       "unknown_key_id": 0, "no_isn": 0, "truncated": 0, "malformed": 0,
//!       "result": "pass" }                        // pass|fail
//!   ],
//!   "totals": { "packets": 4, "ignored": 0, "unparsed": 0, "connections": 1,
//!               "segments": 4, "verified": 4, "bad_mac": 0, "unsigned": 0,
//!               "unknown_key_id": 0, "no_isn": 0, "truncated": 0,
//!               "malformed": 0 },
//!   "result": "pass"                              // pass|fail
//! }
//! ```

mod keys;

use std::path::{Path, PathBuf};

use aokd_tcpao::{CaptureVerifier, ConnectionReport, Counters, Endpoint, KeySet, Totals};
use serde::Serialize;

use aoctl::capture_file::{read_frames, Frame};

/// The control socket of aokd when neither `--socket` nor `AOKD_SOCKET`
/// names one.
pub const DEFAULT_SOCKET: &str = "/run/aokd/control.sock";
/// The environment variable that names aokd's control socket.
pub const SOCKET_ENV: &str = "AOKD_SOCKET";

/// Arguments of `aoctl verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The capture file (pcap or pcapng).
    #[arg(long)]
    pub pcap: PathBuf,
    /// A TCP-AO key: KEYID:ALG:HEXKEY[:exclude-options]. KEYID is the KeyID
    /// on the wire (the sender's SendID); ALG is hmac-sha1-96,
    /// aes128-cmac-96 or hmac-sha256-128; HEXKEY the master key.
    #[arg(long = "mkt", value_name = "KEYID:ALG:HEXKEY[:exclude-options]")]
    pub mkt: Vec<String>,
    /// A TCP-MD5 key, in hex.
    #[arg(long = "md5", value_name = "HEXKEY")]
    pub md5: Vec<String>,
    /// Ask the running aokd for the MKTs it holds (root only).
    #[arg(long)]
    pub from_daemon: bool,
    /// aokd's control socket, for --from-daemon.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl std::fmt::Debug for VerifyArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyArgs")
            .field("pcap", &self.pcap)
            .field("mkt", &format_args!("{} key(s)", self.mkt.len()))
            .field("md5", &format_args!("{} key(s)", self.md5.len()))
            .field("from_daemon", &self.from_daemon)
            .field("socket", &self.socket)
            .field("json", &self.json)
            .finish()
    }
}

const EXIT_PASS: i32 = 0;
const EXIT_FAIL: i32 = 1;
const EXIT_ERROR: i32 = 2;

fn collect_keys(args: &VerifyArgs, global_socket: Option<&Path>) -> Result<KeySet, String> {
    let mut set = KeySet::default();
    for spec in &args.mkt {
        set.ao.push(keys::parse_mkt(spec)?);
    }
    for spec in &args.md5 {
        set.md5.push(keys::parse_md5(spec)?);
    }
    if args.from_daemon {
        // `aoctl verify --socket P`, then `aoctl --socket P verify`, then
        // AOKD_SOCKET, then the default.
        let socket = args
            .socket
            .clone()
            .or_else(|| global_socket.map(Path::to_path_buf))
            .or_else(|| std::env::var_os(SOCKET_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        let daemon = keys::from_daemon(&socket)?;
        set.ao.extend(daemon.ao);
        set.md5.extend(daemon.md5);
        set.md5_retired.extend(daemon.md5_retired);
    }
    Ok(set)
}

/// Runs the verification; returns the process exit status.
pub fn run(args: &VerifyArgs) -> i32 {
    run_with(args, None, false)
}

/// Runs the verification with aoctl's global options: `global_socket` is
/// used for `--from-daemon` when `verify --socket` is not given, and
/// `global_json` has the effect of `verify --json`.
pub fn run_with(args: &VerifyArgs, global_socket: Option<&Path>, global_json: bool) -> i32 {
    let json = args.json || global_json;
    let keys = match collect_keys(args, global_socket) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("aoctl verify: {e}");
            return EXIT_ERROR;
        }
    };
    let (n_ao, n_md5) = (keys.ao.len(), keys.md5.len());
    let mut verifier = CaptureVerifier::new(keys);
    let read = read_frames(&args.pcap, |frame| match frame {
        Frame::Ip(packet) => {
            verifier.process(packet);
        }
        Frame::NotIp => verifier.count_ignored(),
        Frame::Malformed => verifier.count_unparsed(),
    });
    if let Err(e) = read {
        eprintln!("aoctl verify: {e}");
        return EXIT_ERROR;
    }
    let reports = verifier.reports();
    let totals = verifier.totals();
    // A capture with no TCP segment proves nothing: not a pass.
    let empty = totals.counters.segments == 0;
    let passed = verifier.passed() && !empty;
    let result = if empty {
        RESULT_EMPTY
    } else {
        result_name(passed)
    };
    if json {
        let doc = JsonDocument {
            version: 1,
            file: args.pcap.display().to_string(),
            keys: JsonKeys {
                tcp_ao: n_ao,
                tcp_md5: n_md5,
            },
            connections: reports.iter().map(json_connection).collect(),
            totals: json_totals(&totals),
            result,
        };
        match serde_json::to_string_pretty(&doc) {
            Ok(s) => crate::print(&format!("{s}\n")),
            Err(e) => {
                eprintln!("aoctl verify: {e}");
                return EXIT_ERROR;
            }
        }
    } else {
        crate::print(&table(&reports, &totals, result, n_ao, n_md5));
    }
    if passed {
        EXIT_PASS
    } else {
        EXIT_FAIL
    }
}

/// The top-level result of a capture without a TCP segment (exit status 1).
const RESULT_EMPTY: &str = "nothing to verify";

fn result_name(passed: bool) -> &'static str {
    if passed {
        "pass"
    } else {
        "fail"
    }
}

#[derive(Serialize)]
struct JsonDocument {
    version: u32,
    file: String,
    keys: JsonKeys,
    connections: Vec<JsonConnection>,
    totals: JsonTotals,
    result: &'static str,
}

#[derive(Serialize)]
struct JsonKeys {
    tcp_ao: usize,
    tcp_md5: usize,
}

#[derive(Serialize)]
struct JsonCounters {
    segments: u64,
    verified: u64,
    /// Of `verified`, those checked against a retired key (an MKT that
    /// had ended, kept by the daemon for `[daemon] retired_keys`).
    verified_retired: u64,
    bad_mac: u64,
    unsigned: u64,
    unknown_key_id: u64,
    no_isn: u64,
    truncated: u64,
    malformed: u64,
}

impl From<&Counters> for JsonCounters {
    fn from(c: &Counters) -> Self {
        JsonCounters {
            segments: c.segments,
            verified: c.verified,
            verified_retired: c.verified_retired,
            bad_mac: c.bad_mac,
            unsigned: c.unsigned,
            unknown_key_id: c.unknown_key_id,
            no_isn: c.no_isn,
            truncated: c.truncated,
            malformed: c.malformed,
        }
    }
}

#[derive(Serialize)]
struct JsonConnection {
    src: String,
    sport: u16,
    dst: String,
    dport: u16,
    signing: &'static str,
    isns_seen: bool,
    #[serde(flatten)]
    counters: JsonCounters,
    result: &'static str,
}

#[derive(Serialize)]
struct JsonTotals {
    packets: u64,
    ignored: u64,
    unparsed: u64,
    connections: u64,
    #[serde(flatten)]
    counters: JsonCounters,
}

fn json_connection(r: &ConnectionReport) -> JsonConnection {
    JsonConnection {
        src: r.client.addr.to_string(),
        sport: r.client.port,
        dst: r.server.addr.to_string(),
        dport: r.server.port,
        signing: r.signing().name(),
        isns_seen: r.isns_seen,
        counters: (&r.counters).into(),
        result: result_name(r.passed()),
    }
}

fn json_totals(t: &Totals) -> JsonTotals {
    JsonTotals {
        packets: t.packets,
        ignored: t.ignored,
        unparsed: t.unparsed,
        connections: t.connections,
        counters: (&t.counters).into(),
    }
}

fn endpoint(e: &Endpoint) -> String {
    match e.addr {
        std::net::IpAddr::V4(a) => format!("{a}:{}", e.port),
        std::net::IpAddr::V6(a) => format!("[{a}]:{}", e.port),
    }
}

/// The table and the summary of `aoctl verify` without `--json`.
fn table(
    reports: &[ConnectionReport],
    t: &Totals,
    result: &str,
    n_ao: usize,
    n_md5: usize,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let conns: Vec<String> = reports
        .iter()
        .map(|r| format!("{} -> {}", endpoint(&r.client), endpoint(&r.server)))
        .collect();
    let w = conns.iter().map(String::len).max().unwrap_or(0).max(10);
    let _ = writeln!(
        out,
        "{:<w$}  {:<7}  {:>8}  {:>8}  {:>7}  {:>7}  {:>8}  {:>10}  {:>6}  {:>5}  {:>9}  RESULT",
        "CONNECTION",
        "SIGNING",
        "SEGMENTS",
        "VERIFIED",
        "RETIRED",
        "BAD_MAC",
        "UNSIGNED",
        "UNKNOWN_ID",
        "NO_ISN",
        "TRUNC",
        "MALFORMED",
    );
    for (r, name) in reports.iter().zip(&conns) {
        let c = &r.counters;
        let _ = writeln!(
            out,
            "{:<w$}  {:<7}  {:>8}  {:>8}  {:>7}  {:>7}  {:>8}  {:>10}  {:>6}  {:>5}  {:>9}  {}",
            name,
            r.signing().name(),
            c.segments,
            c.verified,
            c.verified_retired,
            c.bad_mac,
            c.unsigned,
            c.unknown_key_id,
            c.no_isn,
            c.truncated,
            c.malformed,
            result_name(r.passed()),
        );
    }
    let c = &t.counters;
    out.push('\n');
    let _ = writeln!(
        out,
        "{} packets, {} connections, {} TCP segments ({} TCP-AO, {} TCP-MD5); \
         {} verified ({} with a retired key), {} bad MAC, {} unsigned, {} unknown KeyID, {} without ISNs, \
         {} truncated, {} malformed; {} not TCP, {} unparsed; keys: {} TCP-AO, {} TCP-MD5",
        t.packets,
        t.connections,
        c.segments,
        c.tcp_ao,
        c.tcp_md5,
        c.verified,
        c.verified_retired,
        c.bad_mac,
        c.unsigned,
        c.unknown_key_id,
        c.no_isn,
        c.truncated,
        c.malformed,
        t.ignored,
        t.unparsed,
        n_ao,
        n_md5,
    );
    if result == RESULT_EMPTY {
        let _ = writeln!(out, "result: {result}: the capture holds no TCP segment");
    } else {
        let _ = writeln!(out, "result: {result}");
    }
    out
}
