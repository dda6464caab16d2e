//! Human-readable renderings of aokd's answers (`aoctl status`, `sas`,
//! `mkts`) and the `--json` forms, which print the response's `data` object
//! without its `kind` tag (docs/control.md).

use aokd_api::control::{
    DaemonStatus, DosStatus, MktStatus, ReloadReport, SaStatus, SocketStatus, StateFileStatus,
};
use serde::Serialize;

use crate::table::{sanitize, Table};

/// `aoctl --json sas` prints `{"sas": [...]}`.
#[derive(Serialize)]
pub struct SasJson<'a> {
    pub sas: &'a [SaStatus],
}

/// `aoctl --json mkts` prints `{"mkts": [...]}`.
#[derive(Serialize)]
pub struct MktsJson<'a> {
    pub mkts: &'a [MktStatus],
}

/// `aoctl --json initiate|terminate` prints `{"message": "..."}`.
#[derive(Serialize)]
pub struct AcceptedJson<'a> {
    pub message: &'a str,
}

/// Pretty JSON with a trailing newline.
pub fn json<T: Serialize>(value: &T) -> String {
    match serde_json::to_string_pretty(value) {
        Ok(mut s) => {
            s.push('\n');
            s
        }
        // Not expected for these plain types.
        Err(e) => format!("{{\"error\": {:?}}}\n", e.to_string()),
    }
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// The SIGNING column of `aoctl status`: the backend that keys the peer's
/// sockets, and what the peer said about TCP-AO in IKE only where it
/// differs (a "TCP-AO yes" column beside "tcp-md5" read as if TCP-AO were
/// in use).
fn signing(backend: Option<&str>, peer_tcp_ao: Option<bool>) -> String {
    match (backend, peer_tcp_ao) {
        (None, _) => "-".into(),
        (Some(b), Some(true)) if b != "tcp-ao" => format!("{} (peer has TCP-AO)", sanitize(b)),
        (Some("tcp-ao"), Some(false)) => "tcp-ao (peer lacks TCP-AO)".into(),
        (Some(b), _) => sanitize(b),
    }
}

/// `aoctl status`.
pub fn status(s: &DaemonStatus, now: u64) -> String {
    let mut out = format!(
        "aokd {}, started {}, listening on {}\n",
        sanitize(&s.daemon_version),
        when(s.started_at, now),
        sanitize(&s.listen.join(", "))
    );
    if let Some(f) = &s.state_file {
        out.push_str(&state_file_line(f, now));
    }
    if s.peers.is_empty() {
        out.push_str("no peers configured\n");
        if let Some(d) = &s.dos {
            out.push('\n');
            out.push_str(&dos(d));
        }
        return out;
    }
    out.push('\n');
    let mut t = Table::new(&["PEER", "ADDRESS", "IKE", "MKTS", "SIGNING", "LAST ERROR"]);
    for p in &s.peers {
        t.row(vec![
            p.name.clone(),
            p.address.clone(),
            p.ike_state.clone(),
            p.mkts.to_string(),
            signing(p.backend.as_deref(), p.tcp_ao_capable),
            opt(&p.last_error),
        ]);
    }
    out.push_str(&t.render());
    if let Some(d) = &s.dos {
        out.push('\n');
        out.push_str(&dos(d));
    }
    out
}

/// The half-open, cookie and drop counters of `aoctl status`: one summary
/// line, then the drop reasons seen (none: one line saying so).
fn dos(d: &DosStatus) -> String {
    let mut out = format!(
        "half-open IKE SAs: {}; cookies sent {}, accepted {}, rejected {}; half-open evicted {}, superseded {}\n",
        d.half_open,
        d.cookies_sent,
        d.cookies_accepted,
        d.cookies_rejected,
        d.half_open_evicted,
        d.half_open_superseded
    );
    let seen: Vec<(&String, &u64)> = d.dropped.iter().filter(|(_, n)| **n > 0).collect();
    if seen.is_empty() {
        out.push_str("no datagrams dropped\n");
        return out;
    }
    let mut t = Table::new(&["DROPPED", "COUNT"]);
    for (reason, n) in seen {
        t.row(vec![reason.clone(), n.to_string()]);
    }
    out.push_str(&t.render());
    out
}

/// The state file's health, one line (two when it fails).
fn state_file_line(f: &StateFileStatus, now: u64) -> String {
    let mut line = format!("state file {}: {}", sanitize(&f.path), sanitize(&f.health));
    if f.health != "ok" {
        if let Some(since) = f.failing_since {
            line.push_str(&format!(" since {}", when(since, now)));
        }
        line.push_str(&format!(
            ", {} changes waiting in memory, {} failed writes, reopened {} times",
            f.pending, f.failed_commits, f.reopened
        ));
        if let Some(e) = &f.error {
            line.push_str(&format!("\n  error: {}", sanitize(e)));
        }
    }
    if f.lost > 0 {
        line.push_str(&format!(
            "\n  {} changes were lost (too many waited); the state file is incomplete until the next restart",
            f.lost
        ));
    }
    line.push('\n');
    line
}

/// `aoctl sas`.
pub fn sas(sas: &[SaStatus], now: u64) -> String {
    if sas.is_empty() {
        return "no IKE SAs\n".into();
    }
    let mut t = Table::new(&[
        "PEER",
        "ADDRESS",
        "STATE",
        "ROLE",
        "SPIS",
        "SUITE",
        "ESTABLISHED",
        "REKEY",
        "LAST ERROR",
    ]);
    for sa in sas {
        t.row(vec![
            sa.peer.clone(),
            sa.address.clone(),
            sa.state.clone(),
            sa.role.clone(),
            format!("{}_i {}_r", sa.spi_i, sa.spi_r),
            opt(&sa.suite),
            sa.established_at
                .map(|at| when(at, now))
                .unwrap_or_else(|| "-".into()),
            sa.rekey_at
                .map(|t| relative(t, now))
                .unwrap_or_else(|| "-".into()),
            opt(&sa.last_error),
        ]);
    }
    t.render()
}

/// `aoctl mkts`.
pub fn mkts(mkts: &[MktStatus], now: u64) -> String {
    if mkts.is_empty() {
        return "no MKTs\n".into();
    }
    let mut t = Table::new(&[
        "PEER",
        "SEND",
        "RECV",
        "ALGORITHM",
        "OPTIONS",
        "STATE",
        "CREATED",
        "REKEY",
        "EXPIRES",
        "FINGERPRINT",
    ]);
    for m in mkts {
        t.row(vec![
            m.peer.clone(),
            m.send_id.to_string(),
            m.recv_id.to_string(),
            m.algorithm.clone(),
            if m.include_options {
                "included"
            } else {
                "excluded"
            }
            .into(),
            m.state.clone().unwrap_or_else(|| "-".into()),
            when(m.created_at, now),
            m.rekey_at
                .map(|t| relative(t, now))
                .unwrap_or_else(|| "-".into()),
            m.expires_at
                .map(|t| relative(t, now))
                .unwrap_or_else(|| "-".into()),
            m.key_fingerprint.clone(),
        ]);
    }
    t.render()
}

/// `aoctl --json sockets` prints `{"sockets": [...]}`.
#[derive(serde::Serialize)]
pub struct SocketsJson<'a> {
    pub sockets: &'a [SocketStatus],
}

/// `aoctl sockets`.
pub fn sockets(sockets: &[SocketStatus], now: u64) -> String {
    if sockets.is_empty() {
        return "no attached sockets\n".into();
    }
    let mut t = Table::new(&[
        "PID",
        "FD",
        "ROLE",
        "LOCAL",
        "REMOTE",
        "PEERS",
        "STATE",
        "MECHANISM",
        "CURRENT/RNEXT",
        "GOOD/BAD/NOKEY",
        "ATTACHED",
    ]);
    for s in sockets {
        let state = match &s.guard_reason {
            Some(r) => format!("{} ({})", s.state, r),
            None => s.state.clone(),
        };
        let counters = match (s.pkt_good, s.pkt_bad) {
            (Some(g), Some(b)) => match s.pkt_key_not_found {
                Some(n) => format!("{g}/{b}/{n}"),
                None => format!("{g}/{b}/-"),
            },
            _ => "-".into(),
        };
        let keys = match (s.current_key, s.rnext_key) {
            (None, None) => "-".to_string(),
            (c, r) => format!(
                "{}/{}",
                c.map_or("-".into(), |k| k.to_string()),
                r.map_or("-".into(), |k| k.to_string())
            ),
        };
        t.row(vec![
            s.pid.to_string(),
            s.fd.to_string(),
            s.role.clone(),
            opt(&s.local),
            opt(&s.remote),
            s.peers.join(","),
            state,
            opt(&s.mechanism),
            keys,
            counters,
            when(s.attached_at, now),
        ]);
    }
    t.render()
}

/// `in 3h2m` or `3h2m ago`.
fn relative(at: u64, now: u64) -> String {
    if at >= now {
        format!("in {}", span(at - now))
    } else {
        format!("{} ago", span(now - at))
    }
}

/// `2024-05-01 12:00:00Z (3h2m ago)`.
pub fn when(at: u64, now: u64) -> String {
    let rel = if at <= now {
        format!("{} ago", span(now - at))
    } else {
        format!("in {}", span(at - now))
    };
    format!("{} ({rel})", utc(at))
}

/// A compact span with the two largest units: `42s`, `5m3s`, `3h2m`, `2d4h`.
pub fn span(secs: u64) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut out = String::new();
    let mut rest = secs;
    let mut shown = 0;
    for (size, name) in units {
        if rest >= size || (shown == 0 && size == 1) {
            out.push_str(&format!("{}{name}", rest / size));
            rest %= size;
            shown += 1;
            if shown == 2 {
                break;
            }
        } else if shown > 0 {
            break;
        }
    }
    out
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SSZ` (UTC).
pub fn utc(secs: u64) -> String {
    let days = secs / 86_400;
    let tod = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

/// Days since 1970-01-01 to (year, month, day): H. Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `aoctl reload`: one line per peer that was added, removed or changed,
/// a count of the unchanged ones, and the settings that need a restart.
pub fn reload(r: &ReloadReport) -> String {
    let mut out = format!("{}: reloaded\n", sanitize(&r.file));
    for p in &r.added {
        out.push_str(&format!("peer {}: added\n", sanitize(p)));
    }
    for p in &r.removed {
        out.push_str(&format!(
            "peer {}: removed (IKE SA deleted, MKTs kept until their hard lifetime)\n",
            sanitize(p)
        ));
    }
    for c in &r.changed {
        out.push_str(&format!(
            "peer {}: changed, {}\n",
            sanitize(&c.peer),
            sanitize(&c.action)
        ));
    }
    out.push_str(&format!("{} peer(s) unchanged\n", r.unchanged.len()));
    for n in &r.needs_restart {
        out.push_str(&format!(
            "needs a restart: {} (the running value is kept)\n",
            sanitize(n)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20Z");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(span(0), "0s");
        assert_eq!(span(42), "42s");
        assert_eq!(span(303), "5m3s");
        assert_eq!(span(3600), "1h");
        assert_eq!(span(3 * 3600 + 120 + 5), "3h2m");
        assert_eq!(span(2 * 86400 + 4 * 3600 + 7), "2d4h");
        assert_eq!(when(100, 160), "1970-01-01 00:01:40Z (1m ago)");
        assert_eq!(when(160, 100), "1970-01-01 00:02:40Z (in 1m)");
    }

    #[test]
    fn dos_counters() {
        let mut d = DosStatus {
            half_open: 3,
            cookies_sent: 5,
            cookies_accepted: 1,
            ..Default::default()
        };
        d.dropped.insert("malformed".into(), 0);
        assert_eq!(
            dos(&d),
            "half-open IKE SAs: 3; cookies sent 5, accepted 1, rejected 0; half-open evicted 0, superseded 0\n\
             no datagrams dropped\n"
        );
        d.dropped.insert("cookie_required".into(), 4);
        d.dropped.insert("not_configured_peer".into(), 12);
        let text = dos(&d);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "DROPPED              COUNT");
        assert_eq!(lines[2], "cookie_required      4");
        assert_eq!(lines[3], "not_configured_peer  12");
        assert_eq!(lines.len(), 4);
    }
}
