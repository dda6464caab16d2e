//! Metrics (issue 14): two real aokd processes negotiate over real UDP;
//! `aoctl metrics` and the daemon's own metrics file are parsed by a real
//! OpenMetrics parser (the Python prometheus_client one, Debian's
//! python3-prometheus-client) and their values checked against what
//! happened: one MKT with the peer, a successful negotiation of each kind,
//! a rekey counted once the operator asked for one, and the file rewritten
//! after that change. The same run checks the `aoctl mkts` label of the
//! responder's old MKT during a rekey.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aokd_tests::{binary, loopback_sides, mkts, Daemon};
use serde_json::Value;

const PSK: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";
const WAIT: Duration = Duration::from_secs(20);
/// Debian's interpreter, where python3-prometheus-client installs (a
/// python3 earlier on PATH, for example pyenv's, may lack it).
const PYTHON: &str = "/usr/bin/python3";

/// Parses OpenMetrics text into its families (name, type, help, samples
/// with name, labels, value) as JSON.
const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "help": f.documentation,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value}
                            for s in f.samples]})
print(json.dumps(out))
"#;

/// Whether the parser is there; with CI set, its absence fails the test.
fn parser_available() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: {PYTHON} cannot import prometheus_client (install python3-prometheus-client)"
        );
        eprintln!("skipped: {PYTHON} cannot import prometheus_client (python3-prometheus-client)");
    }
    ok
}

/// The families of `text` as the parser read them, or its error.
fn parse(text: &str) -> Result<Vec<Value>, String> {
    use std::io::Write;
    let mut child = Command::new(PYTHON)
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {PYTHON}: {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "the OpenMetrics parser refused the text: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// The value of the sample `name` whose labels include `labels`; `None`
/// when there is none, a panic when several match.
fn value(families: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = families
        .iter()
        .flat_map(|f| f["samples"].as_array().cloned().unwrap_or_default())
        .filter(|s| s["name"] == name)
        .filter(|s| labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .filter_map(|s| s["value"].as_f64())
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
    found.first().copied()
}

/// `aoctl metrics` of `d`, parsed.
fn aoctl_metrics(d: &Daemon) -> Vec<Value> {
    let out = Command::new(binary("aoctl"))
        .arg("--socket")
        .arg(d.side.socket())
        .arg("metrics")
        .output()
        .expect("run aoctl");
    assert!(
        out.status.success(),
        "aoctl metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    parse(&text).unwrap_or_else(|e| panic!("{e}"))
}

/// Reads and parses the metrics file until `cond` holds on it, or panics
/// after `timeout` with the last text.
fn wait_file(path: &Path, timeout: Duration, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(path) {
            // Renamed into place whole: never a partial text.
            let families = parse(&text).unwrap_or_else(|e| panic!("{e}"));
            if cond(&families) {
                return families;
            }
            last = text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{}: condition not met within {timeout:?}; last text:\n{last}",
        path.display()
    );
}

/// Checks what holds for both texts after the first negotiation.
fn assert_negotiated(f: &[Value], peer: &str, what: &str) {
    let names: Vec<&str> = f.iter().filter_map(|x| x["name"].as_str()).collect();
    for family in [
        "aokd_peers",
        "aokd_ike_sas",
        "aokd_mkts",
        "aokd_peer_mkts",
        "aokd_negotiations",
        "aokd_rekeys",
        "aokd_rollovers",
        "aokd_sockets",
        "aokd_ike_datagrams_dropped",
        "aokd_tcp_ao_pkt_good",
        "aokd_tcp_ao_pkt_bad",
        "aokd_tcp_ao_key_not_found",
        "aokd_tcp_ao_ao_required",
    ] {
        assert!(
            names.contains(&family),
            "{what}: no family {family}: {names:?}"
        );
    }
    for x in f {
        assert!(
            !x["help"].as_str().unwrap_or("").is_empty(),
            "{what}: {} has no HELP",
            x["name"]
        );
    }
    let counter = |name: &str| {
        f.iter()
            .find(|x| x["name"] == name)
            .map(|x| x["type"].clone())
    };
    assert_eq!(
        counter("aokd_negotiations"),
        Some("counter".into()),
        "{what}"
    );
    assert_eq!(counter("aokd_peer_mkts"), Some("gauge".into()), "{what}");
    assert_eq!(
        value(f, "aokd_peer_mkts", &[("peer", peer)]),
        Some(1.0),
        "{what}"
    );
    assert_eq!(
        value(f, "aokd_peers", &[("state", "established")]),
        Some(1.0),
        "{what}"
    );
    assert_eq!(
        value(f, "aokd_mkts", &[("state", "active")]),
        Some(1.0),
        "{what}"
    );
    for kind in ["ike_sa", "mkt"] {
        let ok = value(
            f,
            "aokd_negotiations_total",
            &[("kind", kind), ("result", "success")],
        );
        assert!(
            ok.is_some_and(|n| n >= 1.0),
            "{what}: {kind} successes {ok:?}"
        );
    }
    assert_eq!(
        value(
            f,
            "aokd_negotiations_total",
            &[
                ("kind", "ike_sa"),
                ("result", "failure"),
                ("reason", "authentication_failed")
            ]
        ),
        Some(0.0),
        "{what}"
    );
    assert_eq!(
        value(f, "aokd_rekeys_total", &[("kind", "mkt")]),
        Some(0.0),
        "{what}"
    );
    assert_eq!(
        value(
            f,
            "aokd_ike_datagrams_dropped_total",
            &[("reason", "malformed")]
        ),
        Some(0.0),
        "{what}"
    );
}

#[test]
fn aoctl_metrics_and_the_metrics_file_parse_and_count_what_happened() {
    if !parser_available() {
        return;
    }
    let (a, b) = loopback_sides("metrics");
    let metrics_dir = a.dir.join("node-exporter");
    std::fs::create_dir_all(&metrics_dir).expect("dir");
    let file = metrics_dir.join("aokd.prom");
    a.write_config_with_metrics(&b, PSK, &file);
    b.write_config(&a, PSK, "initiate = false");
    let da = Daemon::start(&a);
    let db = Daemon::start(&b);
    for d in [&da, &db] {
        d.wait_keyed(WAIT);
    }
    assert_negotiated(&aoctl_metrics(&da), "b", "aoctl metrics of a");
    assert_negotiated(&aoctl_metrics(&db), "a", "aoctl metrics of b");
    // The daemon's file: the same facts once written after the MKT.
    let f = wait_file(&file, WAIT, |f| {
        value(f, "aokd_peer_mkts", &[("peer", "b")]) == Some(1.0)
    });
    assert_negotiated(&f, "b", "the metrics file of a");
    let mode = std::fs::metadata(&file).expect("file").permissions().mode();
    assert_eq!(mode & 0o777, 0o644, "mode {mode:o}");
    let mtime = std::fs::metadata(&file)
        .expect("file")
        .modified()
        .expect("mtime");

    // A change: the operator rekeys the MKT. Both sides count one MKT
    // rekey, and the file is rewritten with it.
    da.aoctl(&["rekey", "b"]).expect("rekey");
    let f = wait_file(&file, WAIT, |f| {
        value(f, "aokd_rekeys_total", &[("kind", "mkt")]) == Some(1.0)
    });
    assert!(
        std::fs::metadata(&file)
            .expect("file")
            .modified()
            .expect("mtime")
            > mtime
    );
    assert_eq!(
        value(
            &f,
            "aokd_negotiations_total",
            &[("kind", "mkt"), ("result", "success")]
        ),
        Some(2.0)
    );
    let fb = aoctl_metrics(&db);
    assert_eq!(
        value(&fb, "aokd_rekeys_total", &[("kind", "mkt")]),
        Some(1.0)
    );
    assert_eq!(
        value(&fb, "aokd_rekey_collisions_total", &[("kind", "mkt")]),
        Some(0.0)
    );

    // The responder of the rekey holds the old MKT until the initiator's
    // Delete after the overlap: it reads "retiring", not a second "active".
    let m = db.wait_for(&["mkts"], WAIT, |v| mkts(v).len() == 2);
    let mut states: Vec<(u64, String)> = mkts(&m)
        .iter()
        .map(|x| {
            (
                x["created_at"].as_u64().unwrap_or(0),
                x["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    states.sort();
    let labels: Vec<&str> = states.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(
        labels.iter().filter(|s| **s == "active").count(),
        1,
        "b's MKTs during the rekey: {m}"
    );
    assert!(
        labels.contains(&"retiring"),
        "b's MKTs during the rekey: {m}"
    );
    let fb = aoctl_metrics(&db);
    assert_eq!(value(&fb, "aokd_mkts", &[("state", "active")]), Some(1.0));
    assert_eq!(value(&fb, "aokd_mkts", &[("state", "retiring")]), Some(1.0));
}

/// Waits until `d`'s log contains `needle`; returns the log.
fn wait_log(d: &Daemon, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let log = d.log();
        if log.contains(needle) {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{}: no {needle:?} in the log:\n{}", d.side.name, d.log());
}

/// A failed negotiation is counted by its reason, and a metrics file that
/// cannot be written is logged once (not every interval), then written as
/// soon as its directory exists, with the recovery logged.
#[test]
fn failures_are_counted_by_reason_and_an_unwritable_file_is_logged_once() {
    if !parser_available() {
        return;
    }
    let other = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210\n";
    let (a, b) = loopback_sides("metrics-fail");
    // The directory does not exist yet.
    let metrics_dir = a.dir.join("later");
    let file = metrics_dir.join("aokd.prom");
    a.write_config_with_metrics(&b, PSK, &file);
    b.write_config(&a, other, "");
    let da = Daemon::start(&a);
    let _db = Daemon::start(&b);
    da.wait_for(&["status"], WAIT, |v| {
        v["peers"][0]["last_error"] == "AUTHENTICATION_FAILED"
    });
    let f = aoctl_metrics(&da);
    let failed = value(
        &f,
        "aokd_negotiations_total",
        &[
            ("kind", "ike_sa"),
            ("result", "failure"),
            ("reason", "authentication_failed"),
        ],
    );
    assert!(failed.is_some_and(|n| n >= 1.0), "{failed:?}");
    assert_eq!(
        value(
            &f,
            "aokd_negotiations_total",
            &[("kind", "ike_sa"), ("result", "success")]
        ),
        Some(0.0)
    );
    assert_eq!(value(&f, "aokd_peer_up", &[("peer", "b")]), Some(0.0));
    assert_eq!(
        value(
            &f,
            "aokd_peer_failing",
            &[("peer", "b"), ("error", "AUTHENTICATION_FAILED")]
        ),
        Some(1.0)
    );
    // The first write failed and was logged; a few more intervals pass
    // (on purpose: failures that must not be logged again).
    wait_log(&da, "cannot write the metrics file");
    std::thread::sleep(Duration::from_millis(2500));
    std::fs::create_dir_all(&metrics_dir).expect("dir");
    let f = wait_file(&file, WAIT, |f| {
        value(
            f,
            "aokd_peer_failing",
            &[("peer", "b"), ("error", "AUTHENTICATION_FAILED")],
        ) == Some(1.0)
    });
    assert!(value(&f, "aokd_start_time_seconds", &[]).is_some_and(|t| t > 0.0));
    let log = wait_log(&da, "metrics file written again");
    assert_eq!(
        log.matches("cannot write the metrics file").count(),
        1,
        "logged more than once:\n{log}"
    );
    let recovered = log
        .lines()
        .find(|l| l.contains("metrics file written again"))
        .expect("line");
    let failed_writes: u64 = recovered
        .split("failed_writes=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(failed_writes >= 2, "{recovered}");
}
