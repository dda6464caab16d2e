//! The IKEv2 endpoint: every IKE SA with every configured peer, driven by
//! datagrams and time (quinn-proto style). This is the engine's one object
//! and the only `impl Endpoint`: it finds the peer an input concerns, lends
//! that peer's state to the exchange that handles it ([`Ctx`]), takes the
//! IKE SA back as the handler says ([`Fate`]), and after every input
//! re-indexes that peer: its SPIs, its deadline in the timer queue, and its
//! key set ([`Event::MktsChanged`]) when its MKTs changed.
//!
//! Inputs: [`Endpoint::handle_datagram`], [`Endpoint::handle_timeout`],
//! [`Endpoint::initiate`], [`Endpoint::terminate`], [`Endpoint::rekey`],
//! [`Endpoint::rekey_ike`], [`Endpoint::retire_mkt`], each with `now`, and
//! [`Endpoint::reserve_key_ids`]; a reload's [`Endpoint::add_peer`],
//! [`Endpoint::remove_peer`] and [`Endpoint::update_peer`]. Outputs, to be drained after every input:
//! [`Endpoint::poll_transmit`] (datagrams), [`Endpoint::poll_event`]
//! (events), and [`Endpoint::poll_timeout`] (when to call `handle_timeout`
//! next).
//!
//! The exchanges are modules of their own, each with its `start`,
//! `on_request` and `on_response`: [`super::init`] (IKE_SA_INIT),
//! [`super::auth`] (IKE_AUTH), [`super::informational`] (Delete, liveness),
//! [`super::create_child`] (MKTs) and [`super::ike_rekey`] (the IKE SA
//! itself). [`super::window`] alone knows message IDs; [`super::maintenance`]
//! is what time does to a peer; [`super::lifecycle`] and [`super::mkts`]
//! hold what outlives one exchange.
//!
//! Cost: a datagram finds its SA by SPI and an IKE_SA_INIT its peer by
//! address (ordered maps, O(log n)); the handler sees one peer; the timer
//! queue gives `poll_timeout` in O(log n) and lets `handle_timeout` visit
//! only due peers. Nothing iterates a hash map, so the same seed gives the
//! same datagrams in every process.
//!
//! Peers live in slots that keep their index for as long as anything
//! refers to it (the SPI index, the timer queue, the SAs' `peer`): a
//! removed peer leaves the name and address indexes at once, but keeps
//! its slot while its IKE SA's Delete is out and its MKTs last; then the
//! slot is vacant and the next added peer takes it. A peer added again
//! while its old slot winds down takes that slot back, MKTs and all, so a
//! name always means one slot.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand_core::CryptoRngCore;

use super::config::{self, EndpointConfig, PeerConfig};
use super::context::{Ctx, Fate, Outbox};
use super::cookie::DosState;
use super::error::{IkeError, MisuseError};
use super::event::{
    Counters, DropReason, Event, KeyIdReservation, PeerState, PeerView, Role, SaView, Transmit,
};
use super::group::{self, PeerGroupConfig};
use super::outcomes::NegotiationCounters;
use super::peer::PeerRuntime;
use super::reconfig::{self, PeerChange};
use super::sa::{IkeSa, SaState};
use super::table::PeerSas;
use super::timers::TimerQueue;
use super::traffic::notify;
use super::window::PendingKind;
use super::PayloadsExt;
use super::{
    auth, create_child, ike_rekey, informational, init, lifecycle, maintenance, mkts, proposal,
};
use crate::numbers::{ExchangeType, NotifyType, ProtocolId};
use crate::wire::{self, DeletePayload, ParsedMessage, Payload};

pub use super::init::VENDOR_ID;
/// KeyIDs aokd allocates for negotiated MKTs (the guard's are
/// [`crate::mkt::GUARD_KEY_IDS`]).
pub use crate::mkt::NEGOTIATED_KEY_IDS as KEY_ID_RANGE;

/// One configured peer: its state, its IKE SAs, and the SPIs of those the
/// endpoint's index knows.
#[derive(Default)]
struct Peer {
    rt: PeerRuntime,
    sas: PeerSas,
    /// Sorted: a peer has one SA or a few (a `BTreeSet`'s first node
    /// alone is about 100 octets; issue: scale, memory per peer).
    indexed: Vec<u64>,
    /// Its half-open responder SAs at the end of the last input (what
    /// [`DosState`] counts for it).
    half_open: usize,
    /// No longer configured: out of the name and address indexes, its
    /// slot kept while its Delete is out and its MKTs last.
    removed: bool,
    /// Removed and done: the slot is free ([`Endpoint::vacant`]).
    vacant: bool,
    /// The peer group it is a member of (index in
    /// [`EndpointConfig::groups`]); `None` for a configured peer.
    group: Option<usize>,
    /// A member the driver knows of: it authenticated
    /// ([`Event::MemberAdded`]) or the driver added it.
    announced: bool,
}

/// All IKE SAs of this node. See the module documentation.
pub struct Endpoint {
    cfg: EndpointConfig,
    /// The `now` of [`Endpoint::new`], when the wall clock read
    /// [`EndpointConfig::wall_clock`].
    started: Instant,
    rng: Box<dyn CryptoRngCore + Send>,
    peers: Vec<Peer>,
    /// Every IKE SA's local SPI, and its peer.
    owners: BTreeMap<u64, usize>,
    /// Peers by IP address and by name. (IP address, peer): a set of pairs
    /// rather than a list per address, since most addresses have one peer;
    /// the peer with an address and port is found among those of its IP
    /// address, not in an index of its own (issue: scale, memory per peer).
    by_ip: BTreeSet<(IpAddr, usize)>,
    /// Configured peers by name. Group members are not in it: a member's
    /// name is its group's and its address ([`Endpoint::find`]), which
    /// saves a copy of the name and an entry per member (issue: scale,
    /// memory per peer).
    by_name: BTreeMap<String, usize>,
    /// Removed peers still winding down, by name.
    removed_by_name: BTreeMap<String, usize>,
    /// Free slots, taken by the next added peer.
    vacant: BTreeSet<usize>,
    /// One deadline per peer ([`maintenance::deadline`]).
    timers: TimerQueue,
    out: Outbox,
    /// Cookie secrets and half-open counts (docs/protocol.md, "Denial of
    /// service").
    dos: DosState,
}

impl Endpoint {
    /// Creates the endpoint. Peers with `initiate` set are due for initiation at `now`.
    pub fn new(
        cfg: EndpointConfig,
        now: Instant,
        rng: Box<dyn CryptoRngCore + Send>,
    ) -> Result<Endpoint, IkeError> {
        for p in &cfg.peers {
            check_peer(p)?;
        }
        for g in &cfg.groups {
            check_peer(&g.template)
                .map_err(|e| MisuseError::Config(format!("peer group {:?}: {e}", g.name)))?;
            if g.prefixes.is_empty() {
                return Err(
                    MisuseError::Config(format!("peer group {:?}: no prefixes", g.name)).into(),
                );
            }
        }
        let (min, max) = (config::MIN_FRAGMENT_SIZE, config::MAX_FRAGMENT_SIZE);
        if !(min..=max).contains(&cfg.fragment_size) {
            return Err(MisuseError::Config(format!(
                "fragment_size {} is outside {min}..={max}",
                cfg.fragment_size
            ))
            .into());
        }
        let mut by_ip = BTreeSet::new();
        let mut by_name = BTreeMap::new();
        let mut timers = TimerQueue::new(cfg.peers.len());
        let mut peers = Vec::with_capacity(cfg.peers.len());
        for (i, p) in cfg.peers.iter().enumerate() {
            by_ip.insert((p.remote.ip(), i));
            by_name.entry(p.name.clone()).or_insert(i);
            timers.set(i, p.initiate.then_some(now));
            peers.push(Peer {
                rt: PeerRuntime {
                    next_attempt: p.initiate.then_some(now),
                    ..Default::default()
                },
                ..Default::default()
            });
        }
        Ok(Endpoint {
            cfg,
            started: now,
            rng,
            peers,
            owners: BTreeMap::new(),
            by_ip,
            by_name,
            removed_by_name: BTreeMap::new(),
            vacant: BTreeSet::new(),
            timers,
            out: Outbox::default(),
            dos: DosState::default(),
        })
    }

    /// The configuration this endpoint runs with.
    pub fn config(&self) -> &EndpointConfig {
        &self.cfg
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] must be called next: the first
    /// entry of the timer queue, O(log n).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// What the endpoint counted: dropped datagrams by reason, cookies,
    /// evicted half-open SAs. A copy of a fixed-size struct; O(1).
    pub fn counters(&self) -> Counters {
        self.out.counters
    }

    /// How negotiations ended since the endpoint started: IKE SAs and MKTs
    /// created and failed by reason, rekeys and collisions (O(1): a copy of
    /// a fixed-size struct).
    pub fn negotiation_counters(&self) -> NegotiationCounters {
        self.out.negotiations
    }

    /// Half-open responder SAs held now, with all peers (a maintained
    /// count, O(1)).
    pub fn half_open(&self) -> usize {
        self.dos.half_open
    }

    /// The peer's context for one input.
    fn ctx(&mut self, peer: usize) -> Ctx<'_> {
        let Peer { rt, sas, group, .. } = &mut self.peers[peer];
        Ctx {
            cfg: &self.cfg,
            started: self.started,
            index: peer,
            pc: &self.cfg.peers[peer],
            member_rule: group.map(|g| &self.cfg.groups[g].identity),
            peer: rt,
            sas,
            owners: &self.owners,
            rng: &mut *self.rng,
            out: &mut self.out,
            dos: &mut self.dos,
        }
    }

    /// Runs one input on one peer, then re-indexes the peer.
    fn with_peer<R>(&mut self, peer: usize, f: impl FnOnce(&mut Ctx<'_>) -> R) -> R {
        let mark = self.out.events.len();
        let r = f(&mut self.ctx(peer));
        self.finish(peer, mark);
        r
    }

    /// Ends an input on `peer`: the SPI index and the half-open counts
    /// follow its SAs, its key set is reported if the events since `mark`
    /// changed it, and its deadline goes back in the timer queue. O(its
    /// SAs and MKTs + log n).
    fn finish(&mut self, peer: usize, mark: usize) {
        let p = &mut self.peers[peer];
        let half_open = p
            .sas
            .iter()
            .filter(|s| s.role == Role::Responder && s.state() == SaState::HalfOpen)
            .count();
        self.dos
            .update(self.cfg.peers[peer].remote.ip(), p.half_open, half_open);
        p.half_open = half_open;
        let spis = p.sas.spis();
        for gone in p.indexed.iter().filter(|s| spis.binary_search(s).is_err()) {
            self.owners.remove(gone);
        }
        for new in spis.iter().filter(|s| p.indexed.binary_search(s).is_err()) {
            self.owners.insert(*new, peer);
        }
        p.indexed = spis;
        p.rt.tidy();
        if p.group.is_some() && !p.announced && p.sas.iter().any(IkeSa::is_authenticated) {
            p.announced = true;
            let g = &self.cfg.groups[p.group.unwrap_or_default()];
            self.out.event(Event::MemberAdded {
                peer: self.cfg.peers[peer].name.clone(),
                group: g.name.clone(),
                remote: self.cfg.peers[peer].remote,
            });
        }
        let changed = self.out.events.range(mark..).any(|e| {
            matches!(
                e,
                Event::MktCreated { .. } | Event::MktDeleted { .. } | Event::MktSuperseded { .. }
            )
        });
        if changed {
            let mkts = mkts::views(&self.peers[peer].rt);
            self.out.event(Event::MktsChanged {
                peer: self.cfg.peers[peer].name.clone(),
                mkts,
            });
        }
        let deadline = maintenance::deadline(&self.ctx(peer));
        self.timers.set(peer, deadline);
        self.forget_if_idle(peer);
        self.vacate_if_done(peer);
    }

    /// Forgets a group member that has no IKE SA, no MKT, no reserved
    /// KeyID and nothing due: it leaves the indexes and its slot is freed
    /// ([`Event::MemberForgotten`] if the driver knew it). A member made by
    /// a request that got no SA (a cookie demanded, a refusal) goes in the
    /// same input, so forged requests leave nothing behind.
    fn forget_if_idle(&mut self, peer: usize) {
        let p = &self.peers[peer];
        let idle = p.sas.iter().next().is_none()
            && p.rt.mkts.is_empty()
            && p.rt.rare().reservations.is_empty()
            && p.rt.next_attempt.is_none();
        let Some(g) = p.group else { return };
        if p.removed || !idle {
            return;
        }
        if p.announced {
            self.out.event(Event::MemberForgotten {
                peer: self.cfg.peers[peer].name.clone(),
                group: self.cfg.groups[g].name.clone(),
            });
        }
        self.unindex(peer);
        self.peers[peer].removed = true;
    }

    /// Frees a removed peer's slot once it has no IKE SA and no MKT left.
    fn vacate_if_done(&mut self, peer: usize) {
        let p = &self.peers[peer];
        if !p.removed || p.vacant || p.sas.iter().next().is_some() || !p.rt.mkts.is_empty() {
            return;
        }
        let name = &self.cfg.peers[peer].name;
        if self.removed_by_name.get(name) == Some(&peer) {
            self.removed_by_name.remove(name);
        }
        self.dos
            .update(self.cfg.peers[peer].remote.ip(), p.half_open, 0);
        self.timers.set(peer, None);
        self.peers[peer] = Peer {
            removed: true,
            vacant: true,
            ..Default::default()
        };
        self.vacant.insert(peer);
    }

    /// Puts peer `i` in the name (a configured peer) and address indexes.
    /// O(log n).
    fn index(&mut self, i: usize) {
        let p = &self.cfg.peers[i];
        if self.peers[i].group.is_none() {
            self.by_name.insert(p.name.clone(), i);
        }
        self.by_ip.insert((p.remote.ip(), i));
    }

    /// Takes peer `i` out of the name and address indexes. O(log n).
    fn unindex(&mut self, i: usize) {
        let p = &self.cfg.peers[i];
        if self.by_name.get(&p.name) == Some(&i) {
            self.by_name.remove(&p.name);
        }
        self.by_ip.remove(&(p.remote.ip(), i));
    }

    /// Adds a configured peer at `now` (a reload): it is initiated at once
    /// when its `initiate` is set, and answered from now on. A peer
    /// removed earlier whose Delete or MKTs are still winding down is
    /// configured again in its old slot (its MKTs kept). Errors: a peer of
    /// that name exists, or the configuration is unusable. O(log n).
    pub fn add_peer(&mut self, pc: PeerConfig, now: Instant) -> Result<(), IkeError> {
        check_peer(&pc)?;
        if self.find(&pc.name).is_some() {
            return Err(MisuseError::Config(format!("peer {:?} exists already", pc.name)).into());
        }
        let i = self.insert_peer(pc, None);
        self.with_peer(i, |ctx| {
            if ctx.pc.initiate && !lifecycle::has_live_sa(ctx, now) {
                ctx.peer.next_attempt = Some(now);
            }
        });
        Ok(())
    }

    /// Puts `pc` in a slot (its old one if it is winding down, a vacant
    /// one, or a new one) and in the indexes; `group`: the peer group it
    /// is a member of. O(log n).
    fn insert_peer(&mut self, pc: PeerConfig, group: Option<usize>) -> usize {
        let i = if let Some(i) = self.removed_by_name.remove(&pc.name) {
            self.peers[i].removed = false;
            self.cfg.peers[i] = pc;
            i
        } else if let Some(i) = self.vacant.pop_first() {
            self.peers[i] = Peer::default();
            self.cfg.peers[i] = pc;
            i
        } else {
            self.cfg.peers.push(pc);
            self.peers.push(Peer::default());
            self.timers.add_slot();
            self.peers.len() - 1
        };
        self.peers[i].group = group;
        self.index(i);
        i
    }

    /// The slot of the named peer (a configured peer or a group member)
    /// that is not removed. O(groups × prefixes + log n).
    fn find(&self, name: &str) -> Option<usize> {
        if let Some(&i) = self.by_name.get(name) {
            return Some(i);
        }
        let (g, ip) = self
            .cfg
            .groups
            .iter()
            .enumerate()
            .find_map(|(g, group)| Some((g, group.member_address(name)?)))?;
        // A member admitted from an IPv4-mapped source has that address
        // (its name has the IPv4 one).
        let mapped = match ip {
            IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
            IpAddr::V6(_) => None,
        };
        std::iter::once(ip).chain(mapped).find_map(|ip| {
            self.peers_at(ip)
                .find(|&j| self.peers[j].group == Some(g) && self.cfg.peers[j].name == name)
        })
    }

    /// A member for an IKE_SA_INIT from `from`, which is no configured
    /// peer: the first group whose prefixes hold the address gets a member
    /// there (a responder, answering from the address and port the request
    /// came from). O(groups + log n).
    fn admit_member(&mut self, from: SocketAddr) -> Option<usize> {
        let g = group::group_of(&self.cfg.groups, from.ip())?;
        let mut pc = self.cfg.groups[g].member(from.ip(), false);
        pc.remote = from;
        Some(self.insert_peer(pc, Some(g)))
    }

    /// The peer responsible for `ip` (a configured peer, or a group member
    /// made now if there is none and a group's prefixes hold the address):
    /// for the driver, when a routing daemon connects to a neighbour
    /// (then [`Endpoint::initiate`] the name returned) or when a member's
    /// state is restored after a restart (before
    /// [`Endpoint::reserve_key_ids`]). A member made here is known to the
    /// driver: it gets no [`Event::MemberAdded`], and
    /// [`Event::MemberForgotten`] when it goes; it initiates only when
    /// asked to. Returns the peer's name and whether it is a member new to
    /// the driver.
    /// Error: the address is in no group. O(groups + log n).
    pub fn add_member(&mut self, ip: IpAddr) -> Result<(String, bool), IkeError> {
        let first = self.peers_at(ip).next();
        if let Some(i) = first {
            // New to the driver: a member it was not told of yet.
            let p = &mut self.peers[i];
            let new = p.group.is_some() && !p.announced;
            p.announced |= p.group.is_some();
            return Ok((self.cfg.peers[i].name.clone(), new));
        }
        let Some(g) = group::group_of(&self.cfg.groups, ip) else {
            return Err(MisuseError::Config(format!("{ip} is in no peer group's prefixes")).into());
        };
        let pc = self.cfg.groups[g].member(ip, false);
        let name = pc.name.clone();
        let i = self.insert_peer(pc, Some(g));
        self.peers[i].announced = true;
        Ok((name, true))
    }

    /// The peer group the named peer is a member of, if it is one.
    pub fn member_group(&self, peer_name: &str) -> Option<&PeerGroupConfig> {
        let i = self.find(peer_name)?;
        self.peers[i].group.map(|g| &self.cfg.groups[g])
    }

    /// The peer group whose name is `group` and which would hold a member
    /// called `peer_name` (`GROUP/ADDRESS`), and that address: how a
    /// member's records in the state file are recognised after a restart.
    pub fn group_of_member_name(&self, peer_name: &str) -> Option<(&PeerGroupConfig, IpAddr)> {
        self.cfg
            .groups
            .iter()
            .find_map(|g| g.member_address(peer_name).map(|ip| (g, ip)))
    }

    /// Removes the named peer at `now` (a reload). Its IKE SAs are
    /// deleted: an authenticated one with INFORMATIONAL {Delete(IKE)},
    /// retransmitted until the peer answers (as for
    /// [`Endpoint::terminate`]), but with no Delete for the MKTs, which
    /// stay until their hard lifetime (not rekeyed: there is no IKE SA
    /// any more), so that the sockets keep their keys; the peer sees its
    /// IKE SA deleted and keeps its MKTs as well. From now on the peer's
    /// address is no configured peer and its name unknown to the other
    /// inputs; its view says [`PeerState::Removed`] until nothing is
    /// left. Returns how many IKE SAs it deletes. O(its SAs + log n).
    pub fn remove_peer(&mut self, peer_name: &str, now: Instant) -> Result<usize, IkeError> {
        let i = self.peer_index(peer_name)?;
        let count = self.with_peer(i, |ctx| {
            ctx.peer.next_attempt = None;
            ctx.peer.set_next_child_attempt(None);
            for m in &mut ctx.peer.mkts {
                m.rekey_at = None;
            }
            lifecycle::end_ike_sas_keeping_mkts(ctx, "peer removed from the configuration", now)
        });
        self.unindex(i);
        self.peers[i].removed = true;
        self.removed_by_name.insert(peer_name.to_string(), i);
        self.vacate_if_done(i);
        Ok(count)
    }

    /// Gives the peer named in `pc` this configuration at `now` (a
    /// reload) and does what the change needs ([`PeerChange`]):
    /// - `Applied`: lifetimes apply to the IKE SAs and MKTs negotiated
    ///   from now on (running ones keep their times); `initiate` turned on
    ///   starts a negotiation if there is no IKE SA, turned off stops
    ///   retries.
    /// - `RekeyMkts`: the newest MKT is rekeyed now with the new settings
    ///   (or a first one created) on the running IKE SA.
    /// - `Renegotiate`: the IKE SAs are deleted with a Delete (the MKTs
    ///   stay, as for [`Endpoint::remove_peer`]) and a new IKE SA is
    ///   negotiated at once when the peer is to initiate or had one (its
    ///   MKT then supersedes the old ones).
    ///
    /// Errors: no such peer, or an unusable configuration (nothing is
    /// changed then). O(its SAs and MKTs + log n).
    pub fn update_peer(&mut self, pc: PeerConfig, now: Instant) -> Result<PeerChange, IkeError> {
        check_peer(&pc)?;
        let i = self.peer_index(&pc.name)?;
        let change = reconfig::classify(&self.cfg.peers[i], &pc);
        match change {
            PeerChange::Unchanged => {}
            PeerChange::Applied => {
                let was_initiating = self.cfg.peers[i].initiate;
                self.cfg.peers[i] = pc;
                self.with_peer(i, |ctx| {
                    if ctx.pc.initiate && !was_initiating && !lifecycle::has_live_sa(ctx, now) {
                        ctx.peer.next_attempt = Some(now);
                    } else if !ctx.pc.initiate && was_initiating {
                        ctx.peer.next_attempt = None;
                    }
                });
            }
            PeerChange::RekeyMkts => {
                self.cfg.peers[i] = pc;
                self.with_peer(i, |ctx| {
                    let newest = ctx
                        .peer
                        .mkts
                        .iter_mut()
                        .filter(|m| m.retire_at.is_none())
                        .max_by_key(|m| m.created_at);
                    if let Some(m) = newest {
                        m.rekey_at = Some(now);
                    }
                    ctx.peer.set_next_child_attempt(None);
                    maintenance::handle_mkt_timers(ctx, now);
                });
            }
            PeerChange::Renegotiate => {
                let had_sa = self.with_peer(i, |ctx| {
                    let had = lifecycle::has_live_sa(ctx, now);
                    lifecycle::end_ike_sas_keeping_mkts(ctx, "peer configuration changed", now);
                    had
                });
                // The half-open count under the old address is 0 now.
                self.unindex(i);
                self.cfg.peers[i] = pc;
                self.index(i);
                self.with_peer(i, |ctx| {
                    ctx.peer.set_last_error(None);
                    ctx.peer.next_attempt = (had_sa || ctx.pc.initiate).then_some(now);
                });
            }
        }
        Ok(change)
    }

    /// Views of every configured peer, for status displays (not for the
    /// driver's key handling: [`Event::MktsChanged`] carries that).
    pub fn peers(&self) -> Vec<PeerView> {
        (0..self.peers.len())
            .filter(|&i| !self.peers[i].vacant)
            .map(|i| self.view(i))
            .collect()
    }

    /// The view of one peer, found by name in O(log n): for an answer about
    /// that peer alone.
    /// The IKE address of the named peer (a configured peer or a group
    /// member, still running or winding down), without building its view:
    /// where the datagrams of its exchanges go. O(log n).
    pub fn peer_remote(&self, name: &str) -> Option<SocketAddr> {
        let i = self
            .find(name)
            .or_else(|| self.removed_by_name.get(name).copied())?;
        Some(self.cfg.peers[i].remote)
    }

    pub fn peer(&self, name: &str) -> Option<PeerView> {
        self.find(name).map(|i| self.view(i))
    }

    fn view(&self, i: usize) -> PeerView {
        let (p, peer) = (&self.cfg.peers[i], &self.peers[i]);
        // A failed SA is kept only to replay its last response: not shown.
        let mut sas: Vec<&IkeSa> = peer
            .sas
            .iter()
            .filter(|s| s.state() != SaState::Failed)
            .collect();
        sas.sort_by_key(|s| s.created);
        let state = if peer.removed {
            PeerState::Removed
        } else if sas.iter().any(|s| s.state() == SaState::Established) {
            PeerState::Established
        } else if sas.iter().any(|s| s.is_live()) {
            PeerState::Connecting
        } else if peer.rt.rare().last_error.is_some() {
            PeerState::Failed
        } else {
            PeerState::None
        };
        PeerView {
            name: p.name.clone(),
            group: peer.group.map(|g| self.cfg.groups[g].name.clone()),
            remote: p.remote,
            state,
            tcp_ao_capable: peer.rt.tcp_ao_capable,
            last_error: peer.rt.rare().last_error.clone(),
            sas: sas
                .iter()
                .map(|s| SaView {
                    spi_i: s.spi_i,
                    spi_r: s.spi_r,
                    role: s.role,
                    state: match s.state() {
                        SaState::Established => "established",
                        SaState::Rekeyed => "rekeyed",
                        SaState::Successor => "rekeying",
                        SaState::Failed => "failed",
                        SaState::Deleting => "deleting",
                        _ => "connecting",
                    },
                    suite: s.suite,
                    established_at: s.established_at,
                    rekey_at: s.rekey_at,
                })
                .collect(),
            mkts: mkts::views(&peer.rt),
            reservations: peer.rt.rare().reservations.clone(),
        }
    }

    fn peer_index(&self, name: &str) -> Result<usize, IkeError> {
        self.find(name)
            .ok_or_else(|| MisuseError::UnknownPeer(name.to_string()).into())
    }

    /// Starts an IKE SA with the named peer now, unless one exists or is
    /// being set up. Returns whether a new negotiation started.
    pub fn initiate(&mut self, peer_name: &str, now: Instant) -> Result<bool, IkeError> {
        let peer = self.peer_index(peer_name)?;
        self.with_peer(peer, |ctx| {
            if lifecycle::has_live_sa(ctx, now) {
                return Ok(false);
            }
            init::start(ctx, now).map(|()| true)
        })
    }

    /// Deletes the peer's IKE SAs and their MKTs, and stops initiating to
    /// it until [`Endpoint::initiate`]. The MKTs go at once; an
    /// authenticated IKE SA sends INFORMATIONAL {Delete(TCP-AO),
    /// Delete(IKE)} (RFC 7296 1.4.1), a request retransmitted until the peer
    /// answers it, and is listed as deleting until then (or until the
    /// schedule runs out); the others go at once. Returns how many IKE SAs
    /// it deletes.
    pub fn terminate(&mut self, peer_name: &str, now: Instant) -> Result<usize, IkeError> {
        let peer = self.peer_index(peer_name)?;
        Ok(self.with_peer(peer, |ctx| {
            ctx.peer.next_attempt = None;
            let spis = ctx.sas.spis();
            let recv_ids: Vec<Vec<u8>> =
                ctx.peer.mkts.iter().map(|m| vec![m.mkt.recv_id]).collect();
            let mut count = 0;
            for spi in &spis {
                let Some(mut sa) = ctx.sas.remove(spi) else {
                    continue;
                };
                if sa.state() == SaState::Deleting {
                    // Already going, with its Delete out.
                    ctx.sas.insert(sa);
                    continue;
                }
                count += 1;
                if sa.is_authenticated() {
                    // One INFORMATIONAL deletes the MKTs and the IKE SA (RFC 7296 1.4.1).
                    let mut payloads = Vec::new();
                    if !recv_ids.is_empty() {
                        payloads.push(Payload::Delete(DeletePayload {
                            protocol: ProtocolId::TCP_AO,
                            spi_size: 1,
                            spis: recv_ids.clone(),
                        }));
                    }
                    sa.ike_rekey = None;
                    lifecycle::start_delete(ctx, &mut sa, payloads, "terminated by operator", now);
                    ctx.sas.insert(sa);
                } else {
                    lifecycle::report_deleted(ctx, &sa, "terminated by operator");
                }
            }
            lifecycle::delete_all_mkts(ctx, "terminated by operator", now);
            count
        }))
    }

    /// Handles expired timers of every due peer ([`maintenance::on_timeout`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        for peer in self.timers.due(now) {
            self.with_peer(peer, |ctx| maintenance::on_timeout(ctx, now));
        }
    }

    /// Handles one received datagram. Nothing in it can make this panic, and
    /// nothing that fails to authenticate changes an established SA.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let msg = match wire::parse_message(datagram) {
            Ok(m) => m,
            Err(e) => return self.dropped(from, DropReason::Malformed, format!("malformed: {e}")),
        };
        let h = &msg.header;
        if h.exchange == ExchangeType::IKE_SA_INIT && !h.is_response() {
            if h.message_id != 0 || h.spi_r != 0 || !h.is_initiator() || msg.sk.is_some() {
                return self.dropped(
                    from,
                    DropReason::BadHeader,
                    "IKE_SA_INIT request with a bad header",
                );
            }
            let Some(peer) = self.match_peer(from).or_else(|| self.admit_member(from)) else {
                return self.dropped(
                    from,
                    DropReason::NotConfiguredPeer,
                    "IKE_SA_INIT from an address that is no configured peer",
                );
            };
            return self.with_peer(peer, |ctx| init::on_request(ctx, now, from, datagram, &msg));
        }
        let local_spi = if h.is_initiator() { h.spi_r } else { h.spi_i };
        let Some(&peer) = self.owners.get(&local_spi) else {
            return self.dropped(
                from,
                DropReason::UnknownSpi,
                format!("no IKE SA with SPI {local_spi:016x}"),
            );
        };
        self.with_peer(peer, |ctx| {
            let Some(sa) = ctx.sas.remove(&local_spi) else {
                return ctx.dropped(
                    from,
                    DropReason::UnknownSpi,
                    format!("no IKE SA with SPI {local_spi:016x}"),
                );
            };
            if let Fate::Keep(sa) = on_message(ctx, now, from, datagram, &msg, sa) {
                ctx.sas.insert(sa);
            }
        });
    }

    /// Fuzzing hook (cargo feature `fuzzing`, not an API): seals `plaintext`
    /// (an inner payload chain, padding and pad length, taken as they are)
    /// in an SK payload, or an SKF fragment with the numbers `fragment`
    /// (RFC 7383, taken as they are), with the keys the peer of the IKE SA
    /// with local SPI `local_spi` sends with, behind `header` (its Next
    /// Payload and Length are set here), so that the SA opens it and the
    /// reassembly, the decrypted-payload parser and the exchanges see
    /// fuzzed contents. `None` if there is no such SA or it has no keys
    /// yet.
    #[cfg(feature = "fuzzing")]
    #[doc(hidden)]
    pub fn fuzz_seal_as_peer(
        &self,
        local_spi: u64,
        header: &wire::Header,
        first_inner: crate::numbers::PayloadType,
        fragment: Option<wire::FragmentNumbers>,
        plaintext: &[u8],
        iv: u64,
    ) -> Option<Vec<u8>> {
        let &peer = self.owners.get(&local_spi)?;
        let sa = self.peers[peer].sas.get(&local_spi)?;
        let (suite, keys) = (sa.suite.as_ref()?, sa.keys.as_ref()?);
        let key = match sa.role {
            Role::Initiator => keys.sk_er(),
            Role::Responder => keys.sk_ei(),
        };
        super::sk::seal_with(
            header,
            first_inner,
            fragment,
            plaintext.to_vec(),
            suite.encr,
            key,
            iv,
        )
        .ok()
    }

    /// A dropped datagram that concerns no peer.
    fn dropped(
        &mut self,
        from: SocketAddr,
        reason: DropReason,
        detail: impl Into<Cow<'static, str>>,
    ) {
        self.out.dropped(from, reason, detail);
    }

    /// The configured peer a datagram from `from` comes from: the first
    /// (by slot) with that address and port, else the only one with that
    /// address. O(log n + the peers configured with that IP address, one
    /// nearly always).
    fn match_peer(&self, from: SocketAddr) -> Option<usize> {
        let (mut only, mut at_ip) = (None, 0);
        for i in self.peers_at(from.ip()) {
            if self.cfg.peers[i].remote == from {
                return Some(i);
            }
            only = Some(i);
            at_ip += 1;
        }
        only.filter(|_| at_ip == 1)
    }

    /// The peers with IP address `ip`, by slot. O(log n) to the first.
    fn peers_at(&self, ip: IpAddr) -> impl Iterator<Item = usize> + '_ {
        self.by_ip
            .range((ip, 0)..=(ip, usize::MAX))
            .map(|&(_, i)| i)
    }

    /// Keeps a KeyID pair out of use with the peer until `until`: no new
    /// MKT gets `recv_id` as its RecvID, and a SendID equal to `send_id`
    /// chosen by the peer is refused with NO_PROPOSAL_CHOSEN, as for a live
    /// MKT (docs/protocol.md, "KeyID allocation").
    ///
    /// For the driver after a restart: the keys of MKTs negotiated before
    /// the restart stay installed on live TCP sockets until their hard
    /// lifetime, and Linux refuses (EEXIST) a new key for the same peer
    /// that shares its SendID or its RecvID with one of them. Call this for
    /// each such MKT before the first [`Endpoint::handle_timeout`] (which
    /// starts the initiations). Reserving a pair again extends it; expired
    /// reservations are dropped.
    pub fn reserve_key_ids(
        &mut self,
        peer_name: &str,
        send_id: u8,
        recv_id: u8,
        until: Instant,
    ) -> Result<(), IkeError> {
        let peer = self.peer_index(peer_name)?;
        self.with_peer(peer, |ctx| {
            let list = &mut ctx.peer.rare_mut().reservations;
            match list
                .iter_mut()
                .find(|r| (r.send_id, r.recv_id) == (send_id, recv_id))
            {
                Some(r) => r.until = r.until.max(until),
                None => list.push(KeyIdReservation {
                    send_id,
                    recv_id,
                    until,
                }),
            }
        });
        Ok(())
    }

    /// Tells the endpoint that an MKT with these KeyIDs ended at `now`
    /// while it did not hold it (the driver found it expired in its state
    /// file after a restart): new RecvIDs with the peer avoid both KeyIDs
    /// for a while, as after an MKT this endpoint deleted, so that the new
    /// key is told apart from the old one on the wire (docs/protocol.md,
    /// "KeyID allocation").
    pub fn note_ended_key_ids(
        &mut self,
        peer_name: &str,
        send_id: u8,
        recv_id: u8,
        now: Instant,
    ) -> Result<(), IkeError> {
        let peer = self.peer_index(peer_name)?;
        self.with_peer(peer, |ctx| {
            super::mkts::note_ended(ctx.peer, send_id, recv_id, now);
        });
        Ok(())
    }

    /// Deletes an MKT now (after the driver confirmed that every socket
    /// moved to its successor), telling the peer with a Delete payload.
    pub fn retire_mkt(
        &mut self,
        peer_name: &str,
        send_id: u8,
        recv_id: u8,
        now: Instant,
    ) -> Result<(), IkeError> {
        let peer = self.peer_index(peer_name)?;
        self.with_peer(peer, |ctx| {
            if let Some(m) = ctx
                .peer
                .mkts
                .iter_mut()
                .find(|m| (m.mkt.send_id, m.mkt.recv_id) == (send_id, recv_id))
            {
                m.retire_at = Some(now);
                m.retire_with_delete = true;
                m.retire_reason = mkts::RETIRED_ON_REQUEST;
            }
            maintenance::handle_mkt_timers(ctx, now);
        });
        Ok(())
    }

    /// Starts a rekey of the peer's newest MKT now (`aoctl rekey`).
    pub fn rekey(&mut self, peer_name: &str, now: Instant) -> Result<bool, IkeError> {
        let peer = self.peer_index(peer_name)?;
        Ok(self.with_peer(peer, |ctx| {
            let newest = ctx
                .peer
                .mkts
                .iter_mut()
                .filter(|m| m.retire_at.is_none())
                .max_by_key(|m| m.created_at);
            match newest {
                Some(m) => {
                    m.rekey_at = Some(now);
                    maintenance::handle_mkt_timers(ctx, now);
                    true
                }
                None => false,
            }
        }))
    }

    /// Rekeys the peer's IKE SA now (as when its `ike_rekey` time comes),
    /// or as soon as the outstanding request is answered. Returns false
    /// when there is no established IKE SA with the peer.
    pub fn rekey_ike(&mut self, peer_name: &str, now: Instant) -> Result<bool, IkeError> {
        let peer = self.peer_index(peer_name)?;
        Ok(self.with_peer(peer, |ctx| {
            let Some(spi) = ctx
                .sas
                .iter()
                .find(|s| s.state() == SaState::Established)
                .map(IkeSa::local_spi)
            else {
                return false;
            };
            if let Some(sa) = ctx.sas.get_mut(&spi) {
                if sa.ike_rekey.is_none() {
                    sa.rekey_at = Some(now);
                }
            }
            maintenance::handle_sa_timers(ctx, now);
            true
        }))
    }
}

/// Refuses a peer configuration the endpoint cannot run with.
fn check_peer(p: &PeerConfig) -> Result<(), IkeError> {
    if p.ike_suites.is_empty() {
        return Err(MisuseError::Config(format!("peer {:?}: no IKE suites", p.name)).into());
    }
    if p.tcp_ports.is_empty() {
        return Err(MisuseError::Config(format!("peer {:?}: no TCP ports", p.name)).into());
    }
    Ok(())
}

/// A message on one of the peer's IKE SAs: checks that it belongs to the SA,
/// then hands it to the exchange it is a request or response of.
fn on_message(
    ctx: &mut Ctx<'_>,
    now: Instant,
    from: SocketAddr,
    datagram: &[u8],
    msg: &ParsedMessage,
    sa: IkeSa,
) -> Fate {
    let h = &msg.header;
    let roles_match = match sa.role {
        Role::Initiator => !h.is_initiator(),
        Role::Responder => h.is_initiator(),
    };
    let spis_match =
        h.spi_i == sa.spi_i && (h.spi_r == sa.spi_r || sa.state() == SaState::InitSent);
    if !roles_match || !spis_match || from.ip() != sa.remote.ip() {
        ctx.dropped(
            from,
            DropReason::SaMismatch,
            "SPIs, flags or address do not match the IKE SA",
        );
        return Fate::Keep(sa);
    }
    if h.is_response() {
        on_response(ctx, now, from, datagram, msg, sa)
    } else {
        on_request(ctx, now, from, datagram, msg, sa)
    }
}

/// A response: to our outstanding request, of the exchange that sent it.
fn on_response(
    ctx: &mut Ctx<'_>,
    now: Instant,
    from: SocketAddr,
    datagram: &[u8],
    msg: &ParsedMessage,
    sa: IkeSa,
) -> Fate {
    if !sa.window.answers_pending(msg.header.message_id) {
        ctx.dropped(
            from,
            DropReason::Unexpected,
            "response to no outstanding request",
        );
        return Fate::Keep(sa);
    }
    match sa.state() {
        SaState::Deleting => informational::on_response_deleting(ctx, now, from, datagram, msg, sa),
        SaState::InitSent if msg.header.exchange == ExchangeType::IKE_SA_INIT => {
            init::on_response(ctx, now, from, datagram, msg, sa)
        }
        SaState::AuthSent if msg.header.exchange == ExchangeType::IKE_AUTH => {
            auth::on_response(ctx, now, from, datagram, msg, sa)
        }
        SaState::Established | SaState::Rekeyed | SaState::Successor
            if msg.header.exchange == ExchangeType::INFORMATIONAL =>
        {
            informational::on_response(ctx, now, from, datagram, msg, sa)
        }
        SaState::Established | SaState::Rekeyed
            if msg.header.exchange == ExchangeType::CREATE_CHILD_SA =>
        {
            let (mut sa, payloads) = match ctx.unprotect_or_drop(
                sa,
                from,
                datagram,
                msg,
                now,
                "CREATE_CHILD_SA response",
            ) {
                Ok(x) => x,
                Err(fate) => return fate,
            };
            let kind = sa.window.complete().map(|p| p.kind);
            if kind == Some(PendingKind::RekeyIke) {
                return ike_rekey::on_response(ctx, now, payloads, sa);
            }
            create_child::on_response(ctx, now, payloads, &mut sa);
            ctx.send_queued(&mut sa, now);
            Fate::Keep(sa)
        }
        _ => {
            ctx.dropped(
                from,
                DropReason::Unexpected,
                "response of an unexpected exchange type",
            );
            Fate::Keep(sa)
        }
    }
}

/// A request of the peer: replayed when it is a retransmission (the
/// window's stored response), else handed to its exchange.
fn on_request(
    ctx: &mut Ctx<'_>,
    now: Instant,
    from: SocketAddr,
    datagram: &[u8],
    msg: &ParsedMessage,
    mut sa: IkeSa,
) -> Fate {
    let id = msg.header.message_id;
    // Retransmitted request: replay the stored response (RFC 7296 2.1);
    // when it comes in fragments, once, for its first fragment if that
    // authenticates (RFC 7383 2.6.1).
    if sa.window.replay(id).is_some() {
        if let Some(f) = msg.sk.as_ref().and_then(|sk| sk.fragment) {
            let (n, total) = (f.number, f.total);
            if n != 1 {
                ctx.dropped(
                    from,
                    DropReason::Unexpected,
                    format!("fragment {n}/{total} of request {id}, answered already (the answer is sent again for fragment 1)"),
                );
                return Fate::Keep(sa);
            }
            if !sa.fragment_verifies(datagram, msg) {
                ctx.dropped(
                    from,
                    DropReason::Integrity,
                    format!("fragment {n}/{total} of request {id}, answered already: integrity check failed"),
                );
                return Fate::Keep(sa);
            }
        }
        if let Some(Ok(bytes)) = sa.replay(id) {
            ctx.send_all(from, &bytes);
        }
        return Fate::Keep(sa);
    }
    if id != sa.window.expected() || sa.state() == SaState::Failed {
        let expected = sa.window.expected();
        ctx.dropped(
            from,
            DropReason::Unexpected,
            format!("request with message ID {id}, expected {expected}"),
        );
        return Fate::Keep(sa);
    }
    let (mut sa, payloads) = match ctx.unprotect_or_drop(sa, from, datagram, msg, now, "request") {
        Ok(x) => x,
        Err(fate) => return fate,
    };
    match (sa.state(), msg.header.exchange) {
        (SaState::HalfOpen, ExchangeType::IKE_AUTH) => auth::on_request(ctx, now, payloads, sa),
        (
            SaState::Established | SaState::Rekeyed | SaState::Successor | SaState::Deleting,
            ExchangeType::INFORMATIONAL,
        ) => informational::on_request(ctx, now, payloads, sa),
        (
            SaState::Established | SaState::Rekeyed | SaState::Successor | SaState::Deleting,
            ExchangeType::CREATE_CHILD_SA,
        ) => {
            let rekeys_ike = payloads
                .find_payload(Payload::as_sa)
                .and_then(proposal::first_protocol)
                == Some(ProtocolId::IKE);
            if rekeys_ike {
                ike_rekey::on_request(ctx, now, payloads, sa)
            } else if sa.state() != SaState::Established || sa.ike_rekey.is_some() {
                // RFC 7296 2.25.2: no new MKT while the IKE SA is being
                // rekeyed (or on a superseded one); the peer tries later.
                ctx.respond(
                    &mut sa,
                    ExchangeType::CREATE_CHILD_SA,
                    &[notify(NotifyType::TEMPORARY_FAILURE, Vec::new())],
                );
                Fate::Keep(sa)
            } else {
                create_child::on_request(ctx, now, payloads, sa)
            }
        }
        _ => {
            ctx.dropped(
                from,
                DropReason::Unexpected,
                format!("{} request in this IKE SA state", msg.header.exchange),
            );
            Fate::Keep(sa)
        }
    }
}
