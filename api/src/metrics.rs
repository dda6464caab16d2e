//! aokd's state in the OpenMetrics text format (Prometheus, node_exporter's
//! textfile collector): the one renderer, used by `aoctl metrics` and by the
//! daemon's `metrics_file`, built from the answers to `status`, `sas`,
//! `mkts` and `sockets` (docs/control.md); and the atomic write of such a
//! file. Every family has its HELP and TYPE, counters' samples end in
//! `_total`, label values are escaped, the text ends in `# EOF`. The
//! families are listed in docs/metrics.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::control::{DaemonStatus, MktStatus, SaStatus, SocketStatus};

/// Everything the metrics are made from.
pub struct Snapshot<'a> {
    pub status: &'a DaemonStatus,
    pub sas: &'a [SaStatus],
    pub mkts: &'a [MktStatus],
    pub sockets: &'a [SocketStatus],
}

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
    /// Counters' samples are named `<family>_total` (OpenMetrics).
    suffix: &'static str,
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], value: u64) {
        let _ = write!(self.out, "{}{}", self.name, self.suffix);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn family<'a>(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "# HELP {name} {help}");
    let suffix = if kind == "counter" { "_total" } else { "" };
    Family { out, name, suffix }
}

/// A label value as OpenMetrics wants it: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c if c.is_control() => {}
            c => s.push(c),
        }
    }
    s
}

/// Counts by key, in key order.
fn count<'a>(items: impl Iterator<Item = &'a str>) -> BTreeMap<&'a str, u64> {
    let mut m = BTreeMap::new();
    for k in items {
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

/// The OpenMetrics text of `s`.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::new();
    {
        let mut f = family(
            &mut out,
            "aokd_build_info",
            "gauge",
            "1, with the version of aokd as a label.",
        );
        f.sample(&[("version", &s.status.daemon_version)], 1);
    }
    {
        let mut f = family(
            &mut out,
            "aokd_start_time_seconds",
            "gauge",
            "When aokd started (Unix time).",
        );
        f.sample(&[], s.status.started_at);
    }
    {
        let mut f = family(
            &mut out,
            "aokd_peers",
            "gauge",
            "Configured peers by IKE state.",
        );
        for (state, n) in count(s.status.peers.iter().map(|p| p.ike_state.as_str())) {
            f.sample(&[("state", state)], n);
        }
    }
    {
        let mut f = family(
            &mut out,
            "aokd_peer_up",
            "gauge",
            "1 when the peer has an established IKE SA and at least one MKT.",
        );
        for p in &s.status.peers {
            let up = u64::from(p.ike_state == "established" && p.mkts > 0);
            f.sample(
                &[
                    ("peer", &p.name),
                    ("backend", p.backend.as_deref().unwrap_or("unknown")),
                ],
                up,
            );
        }
    }
    {
        let mut f = family(
            &mut out,
            "aokd_peer_mkts",
            "gauge",
            "Live MKTs with each peer.",
        );
        for p in &s.status.peers {
            f.sample(&[("peer", &p.name)], p.mkts as u64);
        }
    }
    {
        let mut f = family(
            &mut out,
            "aokd_peer_failing",
            "gauge",
            "1 when the peer's last negotiation failed, with the error as a label.",
        );
        for p in &s.status.peers {
            let err = p.last_error.as_deref().unwrap_or("");
            f.sample(
                &[("peer", &p.name), ("error", err)],
                u64::from(!err.is_empty()),
            );
        }
    }
    {
        let mut f = family(
            &mut out,
            "aokd_ike_sas",
            "gauge",
            "IKE SAs by state and role.",
        );
        let keys = s.sas.iter().map(|a| (a.state.as_str(), a.role.as_str()));
        let mut m: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for k in keys {
            *m.entry(k).or_insert(0) += 1;
        }
        for ((state, role), n) in m {
            f.sample(&[("state", state), ("role", role)], n);
        }
    }
    {
        let mut f = family(
            &mut out,
            "aokd_mkts",
            "gauge",
            "MKTs by state and MAC algorithm.",
        );
        let mut m: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for k in s.mkts {
            *m.entry((
                k.state.as_deref().unwrap_or("unknown"),
                k.algorithm.as_str(),
            ))
            .or_insert(0) += 1;
        }
        for ((state, alg), n) in m {
            f.sample(&[("state", state), ("algorithm", alg)], n);
        }
    }
    {
        let mut f = family(
            &mut out,
            "aokd_sockets",
            "gauge",
            "Attached sockets: keyed or guarded, by mechanism.",
        );
        let mut m: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for k in s.sockets {
            *m.entry((k.state.as_str(), k.mechanism.as_deref().unwrap_or("none")))
                .or_insert(0) += 1;
        }
        for ((state, mech), n) in m {
            f.sample(&[("state", state), ("mechanism", mech)], n);
        }
    }
    // The TCP-AO counters of the attached sockets, summed per peer.
    let mut ao: BTreeMap<&str, [u64; 4]> = BTreeMap::new();
    for k in s.sockets {
        for p in &k.peers {
            let e = ao.entry(p.as_str()).or_insert([0; 4]);
            for (sum, v) in e.iter_mut().zip([
                k.pkt_good,
                k.pkt_bad,
                k.pkt_key_not_found,
                k.pkt_ao_required,
            ]) {
                *sum = sum.saturating_add(v.unwrap_or(0));
            }
        }
    }
    for (i, (name, help)) in [
        (
            "aokd_tcp_ao_pkt_good",
            "TCP-AO segments verified on the attached sockets, per peer.",
        ),
        (
            "aokd_tcp_ao_pkt_bad",
            "TCP-AO segments with a bad MAC on the attached sockets, per peer.",
        ),
        (
            "aokd_tcp_ao_key_not_found",
            "TCP-AO segments whose KeyID matched no key on the attached sockets, per peer.",
        ),
        (
            "aokd_tcp_ao_ao_required",
            "Segments without TCP-AO dropped by the attached sockets, which require it, per peer.",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        // Sums over sockets that come and go: a gauge, not a counter.
        let mut f = family(&mut out, name, "gauge", help);
        for (peer, v) in &ao {
            f.sample(&[("peer", peer)], v[i]);
        }
    }
    {
        let mut f = family(
            &mut out,
            "aokd_rollovers",
            "counter",
            "Times an attached socket of the peer moved from one MKT to a newer one.",
        );
        for p in &s.status.peers {
            if let Some(n) = p.rollovers {
                f.sample(&[("peer", &p.name)], n);
            }
        }
    }
    if let Some(n) = &s.status.negotiations {
        {
            let mut f = family(
                &mut out,
                "aokd_negotiations",
                "counter",
                "IKE SA and MKT negotiations since aokd started, by kind, result and failure reason.",
            );
            for (kind, ok, failures) in [
                ("ike_sa", n.ike_sas_established, &n.ike_sa_failures),
                ("ike_sa_rekey", n.ike_sa_rekeys, &n.ike_sa_rekey_failures),
                ("mkt", n.mkts_created, &n.mkt_failures),
            ] {
                f.sample(&[("kind", kind), ("result", "success"), ("reason", "")], ok);
                for (reason, v) in failures {
                    f.sample(
                        &[("kind", kind), ("result", "failure"), ("reason", reason)],
                        *v,
                    );
                }
            }
        }
        {
            let mut f = family(
                &mut out,
                "aokd_rekeys",
                "counter",
                "Completed rekeys since aokd started: of the IKE SA, or MKTs created by a rekey.",
            );
            f.sample(&[("kind", "ike_sa")], n.ike_sa_rekeys);
            f.sample(&[("kind", "mkt")], n.mkt_rekeys);
        }
        {
            let mut f = family(
                &mut out,
                "aokd_rekey_collisions",
                "counter",
                "Simultaneous rekeys (RFC 7296 2.8.1, 2.8.2) since aokd started.",
            );
            f.sample(&[("kind", "ike_sa")], n.ike_sa_rekey_collisions);
            f.sample(&[("kind", "mkt")], n.mkt_rekey_collisions);
        }
    }
    if let Some(dos) = &s.status.dos {
        {
            let mut f = family(
                &mut out,
                "aokd_ike_datagrams_dropped",
                "counter",
                "IKE datagrams dropped since aokd started, by reason.",
            );
            for (reason, n) in &dos.dropped {
                f.sample(&[("reason", reason)], *n);
            }
        }
        {
            let mut f = family(
                &mut out,
                "aokd_ike_cookies",
                "counter",
                "Responder cookies (RFC 7296 2.6) since start.",
            );
            f.sample(&[("event", "sent")], dos.cookies_sent);
            f.sample(&[("event", "accepted")], dos.cookies_accepted);
            f.sample(&[("event", "rejected")], dos.cookies_rejected);
        }
        {
            let mut f = family(
                &mut out,
                "aokd_ike_half_open",
                "gauge",
                "Half-open responder IKE SAs now.",
            );
            f.sample(&[], dos.half_open);
        }
    }
    if let Some(sf) = &s.status.state_file {
        {
            let mut f = family(
                &mut out,
                "aokd_state_file_failing",
                "gauge",
                "1 while the state file cannot be written.",
            );
            f.sample(&[], u64::from(sf.health != "ok"));
        }
        {
            let mut f = family(
                &mut out,
                "aokd_state_file_pending",
                "gauge",
                "State changes not yet written.",
            );
            f.sample(&[], sf.pending as u64);
        }
        {
            let mut f = family(
                &mut out,
                "aokd_state_file_commits",
                "counter",
                "State file transactions since start.",
            );
            f.sample(&[("result", "ok")], sf.commits);
            f.sample(&[("result", "failed")], sf.failed_commits);
        }
    }
    out.push_str("# EOF\n");
    out
}

/// Writes `text` to `path` atomically, for node_exporter's textfile
/// collector: into a temporary file in the same directory (hidden and
/// ending in `.tmp`, so the collector never reads it half-written), mode
/// 0644 whatever the umask, flushed, then renamed over `path`. The
/// temporary file is removed again when a step fails.
pub fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd\x1b"), "a\\\"b\\\\c\\nd");
    }

    /// The counters: every kind and reason of the negotiations, rekeys and
    /// collisions, rollovers per peer; HELP and TYPE before each family's
    /// samples, counters' samples ending in `_total`.
    #[test]
    fn counters_are_rendered_with_their_families() {
        use crate::control::{NegotiationStatus, PeerStatus};
        let reasons = |n: u64| -> BTreeMap<String, u64> {
            [
                ("timeout".to_string(), n),
                ("authentication_failed".to_string(), 0),
            ]
            .into()
        };
        let status = DaemonStatus {
            daemon_version: "0.1.0".into(),
            started_at: 1,
            listen: Vec::new(),
            peers: vec![PeerStatus {
                name: "r\"2".into(),
                address: "192.0.2.2:500".into(),
                ike_state: "established".into(),
                tcp_ao_capable: Some(true),
                mkts: 1,
                last_error: None,
                backend: Some("tcp-ao".into()),
                rollovers: Some(4),
                group: None,
            }],
            state_file: None,
            dos: None,
            negotiations: Some(Box::new(NegotiationStatus {
                ike_sas_established: 2,
                ike_sa_failures: reasons(3),
                mkts_created: 5,
                mkt_failures: reasons(0),
                ike_sa_rekeys: 1,
                ike_sa_rekey_failures: reasons(0),
                mkt_rekeys: 4,
                ike_sa_rekey_collisions: 0,
                mkt_rekey_collisions: 1,
            })),
        };
        let text = render(&Snapshot {
            status: &status,
            sas: &[],
            mkts: &[],
            sockets: &[],
        });
        for line in [
            "aokd_rollovers_total{peer=\"r\\\"2\"} 4",
            "aokd_negotiations_total{kind=\"ike_sa\",result=\"success\",reason=\"\"} 2",
            "aokd_negotiations_total{kind=\"ike_sa\",result=\"failure\",reason=\"timeout\"} 3",
            "aokd_negotiations_total{kind=\"mkt\",result=\"failure\",reason=\"authentication_failed\"} 0",
            "aokd_negotiations_total{kind=\"mkt\",result=\"success\",reason=\"\"} 5",
            "aokd_negotiations_total{kind=\"ike_sa_rekey\",result=\"success\",reason=\"\"} 1",
            "aokd_rekeys_total{kind=\"mkt\"} 4",
            "aokd_rekey_collisions_total{kind=\"mkt\"} 1",
            "aokd_build_info{version=\"0.1.0\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        let (mut typed, mut helped) = (None::<(String, String)>, None::<String>);
        for l in text.lines().filter(|l| *l != "# EOF") {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                typed = Some((name.to_string(), kind.to_string()));
            } else if let Some(rest) = l.strip_prefix("# HELP ") {
                helped = rest.split(' ').next().map(str::to_string);
            } else {
                let name = l.split(['{', ' ']).next().expect("name");
                let (family, kind) = typed.clone().expect("a TYPE first");
                assert_eq!(helped.as_deref(), Some(family.as_str()), "{l}");
                let want = if kind == "counter" {
                    format!("{family}_total")
                } else {
                    family
                };
                assert_eq!(name, want, "{l}");
            }
        }
    }
}
