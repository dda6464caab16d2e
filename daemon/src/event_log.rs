//! One log line per endpoint event ([`Event`]), tagged with the daemon's
//! instance name (several share a process in `aokd demo`), except for
//! dropped datagrams: those are counted by reason and summarized
//! ([`DropLog`]), so that a flood of forged or malformed datagrams writes
//! a line per reason every [`DROP_LOG_INTERVAL`], never one per datagram.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use aokd_proto::ike::{DropReason, Event, IkeError};
use tracing::{debug, info, warn};

/// At most one summary line per drop reason this often.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Drops of one reason in one interval from which its summary is a
/// warning (a flood: one a second) rather than a debug line.
pub const DROP_FLOOD_THRESHOLD: u64 = 10;
/// Distinct source addresses remembered per reason and interval; drops
/// from further ones are counted together.
const MAX_SOURCES: usize = 64;

/// The endpoint's events as log lines: [`log_event`] for each, except
/// [`Event::Dropped`], which goes to the [`DropLog`].
pub struct EventLog {
    instance: String,
    drops: DropLog,
}

impl EventLog {
    pub fn new(instance: &str) -> EventLog {
        EventLog {
            instance: instance.to_string(),
            drops: DropLog::default(),
        }
    }

    /// Logs `ev`, received at `now`.
    pub fn log(&mut self, now: Instant, ev: &Event) {
        match ev {
            Event::Dropped {
                from,
                reason,
                detail,
            } => self
                .drops
                .record(&self.instance, now, *from, *reason, detail),
            _ => log_event(&self.instance, ev),
        }
    }

    /// When a drop summary is due ([`EventLog::handle_timeout`]).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.drops.poll_timeout()
    }

    /// Writes the drop summaries due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.drops.handle_timeout(&self.instance, now);
    }
}

/// One drop reason's current interval.
#[derive(Default)]
struct Window {
    /// When the interval began; `None`: quiet (the next drop is logged on
    /// its own, at debug level).
    since: Option<Instant>,
    /// Drops in the interval not logged on their own.
    count: u64,
    /// ... by source address (at most [`MAX_SOURCES`]).
    sources: BTreeMap<IpAddr, u64>,
    /// ... from sources beyond those.
    other_sources: u64,
}

/// Dropped datagrams, counted by reason: the first after a quiet interval
/// is logged at debug level with its detail; the rest of the interval
/// only counted, and summarized when it ends (reason, count, the top
/// source and its count, how many sources): a warning from
/// [`DROP_FLOOD_THRESHOLD`] drops on, a debug line below. A flood thus
/// writes one line per reason per [`DROP_LOG_INTERVAL`]. O(log
/// [`MAX_SOURCES`]) per drop.
#[derive(Default)]
pub struct DropLog {
    windows: [Window; DropReason::ALL.len()],
}

impl DropLog {
    /// Counts one drop at `now`.
    pub fn record(
        &mut self,
        instance: &str,
        now: Instant,
        from: SocketAddr,
        reason: DropReason,
        detail: &str,
    ) {
        self.expire(instance, reason, now);
        let w = &mut self.windows[reason.index()];
        let Some(_) = w.since else {
            w.since = Some(now);
            debug!(instance = %instance, %from, reason = reason.as_str(), %detail, "datagram dropped");
            return;
        };
        w.count += 1;
        let ip = from.ip();
        if let Some(n) = w.sources.get_mut(&ip) {
            *n += 1;
        } else if w.sources.len() < MAX_SOURCES {
            w.sources.insert(ip, 1);
        } else {
            w.other_sources += 1;
        }
    }

    /// The end of the earliest open interval.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.windows
            .iter()
            .filter_map(|w| w.since)
            .map(|t| t + DROP_LOG_INTERVAL)
            .min()
    }

    /// Ends the intervals due at `now`.
    pub fn handle_timeout(&mut self, instance: &str, now: Instant) {
        for r in DropReason::ALL {
            self.expire(instance, r, now);
        }
    }

    /// Ends `reason`'s interval if it is over: a summary of what it
    /// counted and a new interval, or quiet when it counted nothing.
    fn expire(&mut self, instance: &str, reason: DropReason, now: Instant) {
        let w = &mut self.windows[reason.index()];
        let Some(since) = w.since else {
            return;
        };
        if now < since + DROP_LOG_INTERVAL {
            return;
        }
        if w.count == 0 {
            *w = Window::default();
            return;
        }
        let (top, top_count) = w
            .sources
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(ip, n)| (ip.to_string(), *n))
            .unwrap_or_default();
        let sources = w.sources.len() as u64 + w.other_sources.min(1);
        let secs = now.saturating_duration_since(since).as_secs();
        let (count, reason) = (w.count, reason.as_str());
        if count >= DROP_FLOOD_THRESHOLD {
            warn!(
                instance = %instance, reason, count, seconds = secs, top_source = %top,
                top_source_count = top_count, sources,
                "flood of dropped IKE datagrams: {count} ({reason}) in {secs} s, most from {top} ({top_count})"
            );
        } else {
            debug!(
                instance = %instance, reason, count, seconds = secs, top_source = %top,
                top_source_count = top_count, sources, "datagrams dropped"
            );
        }
        *w = Window {
            since: Some(now),
            ..Window::default()
        };
    }

    /// Drops counted and not yet summarized, for `reason`.
    #[cfg(test)]
    fn pending(&self, reason: DropReason) -> u64 {
        self.windows[reason.index()].count
    }
}

/// Logs `ev` for the daemon `instance`.
pub fn log_event(instance: &str, ev: &Event) {
    let inst = instance;
    match ev {
        Event::IkeSaEstablished {
            peer,
            spi_i,
            spi_r,
            role,
            suite,
            tcp_ao_capable,
            ..
        } => info!(
            instance = %inst, %peer, spi_i = %format!("{spi_i:016x}"), spi_r = %format!("{spi_r:016x}"),
            role = role.as_str(), %suite, tcp_ao_capable = *tcp_ao_capable, "IKE SA established"
        ),
        Event::MktCreated {
            peer, mkt, ports, ..
        } => info!(
            instance = %inst, %peer, send_id = mkt.send_id, recv_id = mkt.recv_id, algorithm = %mkt.algorithm,
            include_options = mkt.include_options, key_fingerprint = %mkt.fingerprint(),
            ports = %ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            "MKT negotiated"
        ),
        Event::MktDeleted {
            peer,
            send_id,
            recv_id,
            reason,
        } => {
            info!(instance = %inst, %peer, send_id = *send_id, recv_id = *recv_id, reason = *reason, "MKT deleted")
        }
        Event::IkeSaDeleted {
            peer,
            spi_i,
            spi_r,
            reason,
        } => info!(
            instance = %inst, %peer, spi_i = %format!("{spi_i:016x}"), spi_r = %format!("{spi_r:016x}"),
            %reason, "IKE SA deleted"
        ),
        Event::NegotiationFailed {
            peer,
            error,
            by_peer,
        } => warn!(
            instance = %inst, %peer, notify = %error.notify().map(|n| n.to_string()).unwrap_or_default(),
            by_peer = *by_peer, "IKE negotiation failed: {}", failure_text(error)
        ),
        Event::ChildFailed {
            peer,
            error,
            by_peer,
        } => warn!(
            instance = %inst, %peer, notify = %error.notify().map(|n| n.to_string()).unwrap_or_default(),
            by_peer = *by_peer, "TCP-AO child SA failed, IKE SA kept: {error}"
        ),
        Event::MemberAdded {
            peer,
            group,
            remote,
        } => {
            info!(instance = %inst, %peer, %group, %remote, "peer group member authenticated: a peer from now on")
        }
        Event::MemberForgotten { peer, group } => info!(
            instance = %inst, %peer, %group,
            "peer group member forgotten: no IKE SA and no MKT left"
        ),
        Event::PeerNotCapable { peer } => warn!(
            instance = %inst, %peer,
            "peer did not advertise TCP-AO keying: IKE SA without MKT, TCP-AO not negotiated"
        ),
        Event::RekeyCollision { peer, kept_ours } => {
            info!(instance = %inst, %peer, kept_ours = *kept_ours, "simultaneous MKT rekey resolved (RFC 7296 2.8.1)")
        }
        Event::SimultaneousInitiation { peer, kept_ours } => {
            info!(instance = %inst, %peer, kept_ours = *kept_ours, "simultaneous initiation resolved")
        }
        Event::Dropped {
            from,
            reason,
            detail,
        } => {
            debug!(instance = %inst, %from, reason = reason.as_str(), %detail, "datagram dropped")
        }
        Event::IkeSaRekeyed {
            peer,
            old_spi_i,
            old_spi_r,
            spi_i,
            spi_r,
            role,
            suite,
            ..
        } => info!(
            instance = %inst, %peer, old_spi_i = %format!("{old_spi_i:016x}"),
            old_spi_r = %format!("{old_spi_r:016x}"), spi_i = %format!("{spi_i:016x}"),
            spi_r = %format!("{spi_r:016x}"), role = role.as_str(), %suite, "IKE SA rekeyed"
        ),
        Event::IkeRekeyCollision { peer, kept_ours } => {
            info!(instance = %inst, %peer, kept_ours = *kept_ours, "simultaneous IKE SA rekey resolved (RFC 7296 2.8.2)")
        }
        Event::IkeRekeyFailed {
            peer,
            error,
            by_peer,
        } => warn!(
            instance = %inst, %peer, notify = %error.notify().map(|n| n.to_string()).unwrap_or_default(),
            by_peer = *by_peer, "IKE SA rekey failed, IKE SA kept, retried later: {error}"
        ),
        Event::MktsChanged { peer, mkts } => {
            debug!(instance = %inst, %peer, mkts = mkts.len(), "the peer's MKT set changed")
        }
        Event::MktSuperseded {
            peer,
            send_id,
            recv_id,
            reason,
            ..
        } => info!(
            instance = %inst, %peer, send_id = *send_id, recv_id = *recv_id, reason = *reason,
            "MKT superseded, retired after the overlap without a Delete"
        ),
    }
}

/// An error's text for "IKE negotiation failed: ...", without the variant's
/// own "negotiation failed: " said a second time.
fn failure_text(error: &IkeError) -> String {
    match error {
        IkeError::Negotiation(e) => e.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_summarized_once_per_interval() {
        let mut log = DropLog::default();
        let t0 = Instant::now();
        let a: SocketAddr = "192.0.2.1:500".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:4500".parse().unwrap();
        let r = DropReason::CookieRequired;
        // The first is logged on its own, the rest counted.
        for i in 0..1000u32 {
            let from = if i % 4 == 0 { b } else { a };
            log.record("x", t0 + Duration::from_millis(u64::from(i)), from, r, "d");
        }
        assert_eq!(log.pending(r), 999);
        assert_eq!(log.poll_timeout(), Some(t0 + DROP_LOG_INTERVAL));
        // The interval ends: summarized, a new one begins.
        log.handle_timeout("x", t0 + DROP_LOG_INTERVAL);
        assert_eq!(log.pending(r), 0);
        assert_eq!(log.poll_timeout(), Some(t0 + DROP_LOG_INTERVAL * 2));
        // Nothing in it: quiet again.
        log.handle_timeout("x", t0 + DROP_LOG_INTERVAL * 2);
        assert_eq!(log.poll_timeout(), None);
        // Many sources: bounded.
        for i in 0..10_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let from = SocketAddr::new(ip.into(), 500);
            log.record(
                "x",
                t0 + DROP_LOG_INTERVAL * 3,
                from,
                DropReason::Malformed,
                "m",
            );
        }
        let w = &log.windows[DropReason::Malformed.index()];
        assert_eq!(w.sources.len(), MAX_SOURCES);
        assert_eq!(w.count, 9_999);
        assert_eq!(w.other_sources, 9_999 - MAX_SOURCES as u64);
    }
}
