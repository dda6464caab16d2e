//! The narrow context an exchange runs in ([`Ctx`]): the endpoint-wide
//! settings, the one peer's configuration and state (its MKTs, its other
//! IKE SAs), the RNG and the outbox; and how a handler gives the IKE SA it
//! was handed back ([`Fate`]).
//!
//! Every input concerns one peer, so a handler sees that peer and nothing
//! else: it cannot scan other peers' SAs, and what it costs depends on the
//! peer's few SAs and MKTs, never on how many peers there are.
//!
//! Ownership, not an entry API, keeps SAs from getting lost: a handler takes
//! the SA by value and returns its [`Fate`], so every path through it says
//! what becomes of the SA (the compiler checks that every path returns), and
//! only the endpoint puts it back. An entry API would leave the SA in the
//! map while the handler also needs the peer's other SAs (to replace older
//! ones, to adopt a rekey's successor), which the borrow checker does not
//! allow.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use rand_core::CryptoRngCore;

use super::config::{EndpointConfig, PeerConfig};
use super::cookie::DosState;
use super::event::{Counters, DropReason, Event, Transmit};
use super::group::MemberIdentity;
use super::outcomes::NegotiationCounters;
use super::peer::PeerRuntime;
use super::sa::IkeSa;
use super::table::PeerSas;
use super::window::{Datagrams, PendingKind};
use crate::numbers::ExchangeType;
use crate::wire::{ParsedMessage, Payload};

/// Datagrams and events, in the order they were produced, and the
/// counters of what was dropped and how negotiations ended.
#[derive(Default)]
pub(super) struct Outbox {
    pub(super) transmits: VecDeque<Transmit>,
    pub(super) events: VecDeque<Event>,
    pub(super) counters: Counters,
    pub(super) negotiations: NegotiationCounters,
}

impl Outbox {
    /// Reports `event`, counting what it says about negotiations
    /// ([`NegotiationCounters`]).
    pub(super) fn event(&mut self, event: Event) {
        self.negotiations.note(&event);
        self.events.push_back(event);
    }

    /// Counts a dropped datagram and reports it.
    pub(super) fn dropped(
        &mut self,
        from: SocketAddr,
        reason: DropReason,
        detail: impl Into<Cow<'static, str>>,
    ) {
        self.counters.dropped.add(reason);
        self.events.push_back(Event::Dropped {
            from,
            reason,
            detail: detail.into(),
        });
    }
}

/// What becomes of the IKE SA a handler was given.
#[allow(clippy::large_enum_variant)] // returned once per input, moved into the table
pub(super) enum Fate {
    /// Back into the peer's table (changed or not).
    Keep(IkeSa),
    /// Gone: deleted, failed without a response to replay, or replaced.
    Gone,
}

/// One peer's view of the endpoint, for the duration of one input.
pub(super) struct Ctx<'a> {
    pub(super) cfg: &'a EndpointConfig,
    /// When the endpoint was created ([`EndpointConfig::wall_clock`]).
    pub(super) started: Instant,
    /// The peer's index (what its IKE SAs record as `peer`).
    pub(super) index: usize,
    /// The peer's configuration.
    pub(super) pc: &'a PeerConfig,
    /// A peer group member's identity rule, in place of `pc.remote_id`.
    pub(super) member_rule: Option<&'a MemberIdentity>,
    /// The peer's state: errors, attempts, MKTs, reservations.
    pub(super) peer: &'a mut PeerRuntime,
    /// The peer's IKE SAs, except the one the handler holds.
    pub(super) sas: &'a mut PeerSas,
    /// The local SPIs of every IKE SA of every peer (before this input).
    pub(super) owners: &'a BTreeMap<u64, usize>,
    pub(super) rng: &'a mut (dyn CryptoRngCore + Send),
    pub(super) out: &'a mut Outbox,
    /// Cookie secrets and the half-open counts of every peer (before this
    /// input).
    pub(super) dos: &'a mut DosState,
}

impl Ctx<'_> {
    /// The wall-clock time at `now`, for certificate validity:
    /// [`EndpointConfig::wall_clock`] advanced by the monotonic time since.
    pub(super) fn wall_clock(&self, now: Instant) -> SystemTime {
        let since = now.saturating_duration_since(self.started);
        // checked: `SystemTime + Duration` panics past the platform's range.
        self.cfg
            .wall_clock
            .checked_add(since)
            .unwrap_or(self.cfg.wall_clock)
    }

    /// The peer's name, for events.
    pub(super) fn name(&self) -> String {
        self.pc.name.clone()
    }

    pub(super) fn send(&mut self, destination: SocketAddr, contents: Vec<u8>) {
        self.out.transmits.push_back(Transmit {
            destination,
            contents,
        });
    }

    pub(super) fn event(&mut self, event: Event) {
        self.out.event(event);
    }

    pub(super) fn dropped(
        &mut self,
        from: SocketAddr,
        reason: DropReason,
        detail: impl Into<Cow<'static, str>>,
    ) {
        self.out.dropped(from, reason, detail);
    }

    pub(super) fn random_bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.rng.fill_bytes(&mut v);
        v
    }

    /// A fresh nonzero local SPI, unused by any IKE SA (of any peer, or of
    /// this one since the input began) and by this peer's outstanding rekey
    /// offers. (Another peer's outstanding offer is not looked at, to keep
    /// this O(log n): 64 random bits would have to hit it in the round trip
    /// the offer is out.)
    pub(super) fn fresh_spi(&mut self) -> u64 {
        loop {
            let spi = self.rng.next_u64();
            let offered = self
                .sas
                .iter()
                .any(|s| s.ike_rekey.as_ref().is_some_and(|o| o.spi == spi));
            if spi != 0
                && !self.owners.contains_key(&spi)
                && !self.sas.contains_key(&spi)
                && !offered
            {
                return spi;
            }
        }
    }

    /// A random duration in [0, max) (0 when `max` is 0), to the millisecond.
    pub(super) fn random_below(&mut self, max: Duration) -> Duration {
        let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(self.rng.next_u64() % ms)
    }

    /// The wait before trying again after TEMPORARY_FAILURE (RFC 7296 2.25:
    /// not at once): between half and all of `retry_interval`, at random,
    /// so that two sides that refused each other do not meet again.
    pub(super) fn temporary_failure_wait(&mut self) -> Duration {
        let half = self.cfg.retry_interval / 2;
        half + self.random_below(half)
    }

    /// How long a superseded IKE SA waits for its Delete: the peer's whole
    /// retransmission schedule for the rekey request (so that its
    /// retransmissions still get our stored answer) and then for the Delete.
    pub(super) fn rekeyed_sa_lifetime(&self) -> Duration {
        self.cfg.retransmit.total() * 2
    }

    /// Sends a request now, or queues it behind the outstanding one (the
    /// window is 1, RFC 7296 2.3).
    pub(super) fn enqueue(
        &mut self,
        sa: &mut IkeSa,
        exchange: ExchangeType,
        payloads: Vec<Payload>,
        kind: PendingKind,
        now: Instant,
    ) {
        if sa.window.busy() {
            sa.window.queue((exchange, payloads, kind));
            return;
        }
        if let Ok((id, bytes)) = sa.request(exchange, &payloads) {
            self.send_request(sa, id, bytes, kind, now);
            if kind == PendingKind::Informational {
                if let Some(p) = sa.window.pending_mut() {
                    p.requeue = Some((exchange, payloads));
                }
            }
        }
    }

    /// Sends the next queued request, if any.
    pub(super) fn send_queued(&mut self, sa: &mut IkeSa, now: Instant) {
        if let Some((exchange, payloads, kind)) = sa.window.next_queued() {
            self.enqueue(sa, exchange, payloads, kind, now);
        }
    }

    /// Sends every datagram of a message (its fragments, RFC 7383).
    pub(super) fn send_all(&mut self, destination: SocketAddr, datagrams: &[Vec<u8>]) {
        for d in datagrams {
            self.send(destination, d.clone());
        }
    }

    /// Sends a request built by the window and makes it the outstanding one.
    pub(super) fn send_request(
        &mut self,
        sa: &mut IkeSa,
        message_id: u32,
        bytes: Datagrams,
        kind: PendingKind,
        now: Instant,
    ) {
        self.send_all(sa.remote, &bytes);
        sa.window
            .sent(message_id, bytes, kind, now, &self.cfg.retransmit);
    }

    /// Sends a protected response to the expected request, stored for replay.
    pub(super) fn respond(&mut self, sa: &mut IkeSa, exchange: ExchangeType, payloads: &[Payload]) {
        if let Ok(bytes) = sa.response(exchange, payloads, self.pc.signature.as_ref()) {
            self.send_all(sa.remote, &bytes);
        }
    }

    /// Lends the peer's SA `spi` to `f` and puts it back afterwards,
    /// whatever `f` does: for work on an SA that cannot end it (starting an
    /// exchange on it). `None` when there is no such SA.
    pub(super) fn with_sa<R>(
        &mut self,
        spi: u64,
        f: impl FnOnce(&mut Self, &mut IkeSa) -> R,
    ) -> Option<R> {
        let mut sa = self.sas.remove(&spi)?;
        let r = f(self, &mut sa);
        self.sas.insert(sa);
        Some(r)
    }

    /// Decrypts and authenticates `msg` on `sa`. When it does not
    /// authenticate, the SA is kept unchanged and the datagram is reported
    /// as dropped (`what` names it). An SKF fragment is stored (or
    /// dropped, [`super::fragments`]) and the SA kept until the message is
    /// whole; the fragment that completes it gives the message's payloads.
    #[allow(clippy::result_large_err)] // the SA itself, moved back to the caller
    pub(super) fn unprotect_or_drop(
        &mut self,
        mut sa: IkeSa,
        from: SocketAddr,
        datagram: &[u8],
        msg: &ParsedMessage,
        now: Instant,
        what: &str,
    ) -> Result<(IkeSa, Vec<Payload>), Fate> {
        match sa.unprotect(datagram, msg, now, self.cfg.retransmit.total()) {
            Ok(Some(payloads)) => Ok((sa, payloads)),
            Ok(None) => Err(Fate::Keep(sa)),
            Err(e) => {
                self.dropped(from, e.reason, format!("{what}: {}", e.detail));
                Err(Fate::Keep(sa))
            }
        }
    }
}
