//! `aoctl metrics`: aokd's state in the OpenMetrics text format
//! (Prometheus, node_exporter's textfile collector), built from the answers
//! to `status`, `sas`, `mkts` and `sockets` (docs/control.md). Label values
//! are escaped; every family has its HELP and TYPE; the text ends in
//! `# EOF`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use aokd_api::control::{DaemonStatus, MktStatus, SaStatus, SocketStatus};

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
    let mut ao: BTreeMap<&str, [u64; 3]> = BTreeMap::new();
    for k in s.sockets {
        for p in &k.peers {
            let e = ao.entry(p.as_str()).or_insert([0; 3]);
            e[0] += k.pkt_good.unwrap_or(0);
            e[1] += k.pkt_bad.unwrap_or(0);
            e[2] += k.pkt_key_not_found.unwrap_or(0);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd\x1b"), "a\\\"b\\\\c\\nd");
    }
}
