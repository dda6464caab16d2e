//! The IKEv2 endpoint: every IKE SA with every configured peer, driven by
//! datagrams and time (quinn-proto style).
//!
//! Inputs: [`Endpoint::handle_datagram`], [`Endpoint::handle_timeout`],
//! [`Endpoint::initiate`], [`Endpoint::terminate`], [`Endpoint::rekey`],
//! [`Endpoint::rekey_ike`], [`Endpoint::retire_mkt`], each with `now`, and
//! [`Endpoint::reserve_key_ids`]. Outputs, to be drained after every input:
//! [`Endpoint::poll_transmit`] (datagrams), [`Endpoint::poll_event`]
//! (events), and [`Endpoint::poll_timeout`] (when to call `handle_timeout`
//! next).
//!
//! Exchanges (RFC 7296 1.2-1.4): IKE_SA_INIT (with INVALID_KE_PAYLOAD and
//! COOKIE retries), IKE_AUTH with PSK authentication (2.15) carrying the
//! first TCP-AO child SA or none (RFC 6023), CREATE_CHILD_SA for MKTs
//! ([`super::child`]) and for the IKE SA itself ([`super::sa_rekey`]), and
//! INFORMATIONAL (Delete, error notifications, liveness checks). The window
//! size is 1 (2.3): one request outstanding per direction, retransmitted by
//! the initiator of the exchange only (2.1), responses replayed for
//! retransmitted requests; further requests wait in a queue. A request
//! given up on an established IKE SA ends it locally (the peer is
//! unreachable); its MKTs stay.
//!
//! INITIAL_CONTACT (2.4) in IKE_AUTH means the peer holds no other IKE SA
//! with us: the others are deleted locally, without a Delete it could not
//! read; MKTs stay until a fresh MKT supersedes them (docs/protocol.md,
//! "Peer restarts"). KeyIDs of keys that outlive a restart on live sockets
//! can be reserved ([`Endpoint::reserve_key_ids`]).
//!
//! Simultaneous initiation (not covered by RFC 7296): when an IKE_SA_INIT
//! request arrives from a peer to which this side has an IKE SA of its own
//! that is not yet established, the two initiator nonces are compared as
//! octet strings (a shorter prefix is lower, as in 2.8.1). The exchange
//! whose initiator sent the higher nonce continues; the other initiator
//! abandons its attempt, and the winner drops the loser's request. Both
//! sides compare the same two nonces, so they agree without a message.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;

use super::child::child_master_key;
use super::config::{EndpointConfig, IkeSuite, PortRange};
use super::error::{IkeError, Misbehaviour, MisuseError, NegotiationError};
use super::event::{Event, KeyIdReservation, MktView, PeerState, PeerView, Role, SaView, Transmit};
use super::proposal;
use super::sa::{ChildOffer, IkeSa, SaState};
use super::table::SaTable;
use super::timers::TimerQueue;
use super::window::{PendingKind, Retransmit, Window};
use super::PayloadsExt;
use crate::crypto::{self, IkeKeys, KeyExchange, Secret};
use crate::mkt::MasterKeyTuple;
use crate::numbers::{AuthMethod, DhGroup, ExchangeType, NotifyType, PayloadType, ProtocolId};
use crate::wire::{
    self, AuthPayload, DeletePayload, Header, IdPayload, KePayload, NotifyPayload, ParsedMessage,
    Payload, SaPayload, TrafficSelector, TsPayload, FLAG_RESPONSE,
};

/// The Vendor ID aokd sends in IKE_SA_INIT (docs/protocol.md).
pub const VENDOR_ID: &[u8] = b"aokd TCP-AO keying 1";

/// Nonce length sent (RFC 7296 2.10: at least 16 octets and half the PRF key).
const NONCE_LEN: usize = 32;

/// KeyIDs aokd allocates for negotiated MKTs (the guard's are
/// [`crate::mkt::GUARD_KEY_IDS`]).
pub use crate::mkt::NEGOTIATED_KEY_IDS as KEY_ID_RANGE;

/// An MKT with its lifecycle. MKTs belong to the peer, not to the IKE SA
/// that negotiated them: they outlive a failed or replaced IKE SA until
/// their hard lifetime, so that live connections keep their keys until new
/// ones exist (docs/protocol.md).
pub(super) struct MktRecord {
    pub(super) mkt: MasterKeyTuple,
    pub(super) ports: Vec<PortRange>,
    pub(super) created_at: Instant,
    /// Local SPI of the IKE SA that created the MKT.
    pub(super) ike_spi: u64,
    pub(super) spi_i: u64,
    pub(super) spi_r: u64,
    /// When this side starts a rekey (`None`: rekeyed, or being rekeyed).
    pub(super) rekey_at: Option<Instant>,
    /// Hard lifetime: the MKT is deleted then, rekeyed or not.
    pub(super) expires_at: Instant,
    /// When a superseded MKT is deleted (with a Delete payload when this
    /// side initiated the rekey, locally otherwise).
    pub(super) retire_at: Option<Instant>,
    /// Send a Delete payload for it when it retires.
    pub(super) retire_with_delete: bool,
    /// (send_id, recv_id) of the MKT this one rekeys.
    pub(super) rekey_of: Option<(u8, u8)>,
    /// Created by an exchange this side initiated.
    pub(super) by_us: bool,
    /// Ni and Nr of the exchange that created it (RFC 7296 2.8.1).
    pub(super) nonces: [Vec<u8>; 2],
}

#[derive(Default)]
pub(super) struct PeerRuntime {
    pub(super) last_error: Option<String>,
    tcp_ao_capable: Option<bool>,
    next_attempt: Option<Instant>,
    /// The peer's live MKTs.
    pub(super) mkts: Vec<MktRecord>,
    /// When to try again to create an MKT on an IKE SA that has none.
    pub(super) next_child_attempt: Option<Instant>,
    /// KeyIDs kept out of use ([`Endpoint::reserve_key_ids`]).
    reservations: Vec<KeyIdReservation>,
}

/// All IKE SAs of this node. See the module documentation.
pub struct Endpoint {
    pub(super) cfg: EndpointConfig,
    pub(super) rng: Box<dyn CryptoRngCore + Send>,
    pub(super) peers: Vec<PeerRuntime>,
    pub(super) sas: SaTable,
    /// Peers by IKE address and port, by IP address, and by name: the
    /// lookups of the per-datagram path are O(log n).
    by_addr: BTreeMap<SocketAddr, usize>,
    by_ip: BTreeMap<IpAddr, Vec<usize>>,
    by_name: BTreeMap<String, usize>,
    /// One deadline per peer ([`Endpoint::peer_deadline`]).
    timers: TimerQueue,
    transmits: VecDeque<Transmit>,
    pub(super) events: VecDeque<Event>,
}

pub(super) fn notify(ty: NotifyType, data: Vec<u8>) -> Payload {
    Payload::Notify(NotifyPayload {
        protocol: ProtocolId::NONE,
        spi: Vec::new(),
        ty,
        data,
    })
}

pub(super) fn selectors(addr: IpAddr, ports: &[PortRange]) -> TsPayload {
    TsPayload {
        selectors: ports
            .iter()
            .map(|p| TrafficSelector::Range {
                ip_protocol: 6,
                start_port: p.start,
                end_port: p.end,
                start_addr: addr,
                end_addr: addr,
            })
            .collect(),
    }
}

fn addr_in(addr: IpAddr, start: IpAddr, end: IpAddr) -> bool {
    match (addr, start, end) {
        (IpAddr::V4(a), IpAddr::V4(s), IpAddr::V4(e)) => s <= a && a <= e,
        (IpAddr::V6(a), IpAddr::V6(s), IpAddr::V6(e)) => s <= a && a <= e,
        _ => false,
    }
}

/// Narrows offered selectors to `addr` and to the intersection of their
/// port ranges with `local` (RFC 7296 2.9). Empty when nothing is left.
pub(super) fn narrow(offer: &TsPayload, addr: IpAddr, local: &[PortRange]) -> Vec<PortRange> {
    let mut out: Vec<PortRange> = Vec::new();
    for ts in &offer.selectors {
        let TrafficSelector::Range {
            ip_protocol,
            start_port,
            end_port,
            start_addr,
            end_addr,
        } = ts
        else {
            continue;
        };
        if !(*ip_protocol == 6 || *ip_protocol == 0) || !addr_in(addr, *start_addr, *end_addr) {
            continue;
        }
        for l in local {
            let start = (*start_port).max(l.start);
            let end = (*end_port).min(l.end);
            if start <= end && !out.contains(&PortRange { start, end }) {
                out.push(PortRange { start, end });
            }
        }
    }
    out
}

/// True when every selector of `reply` is for `addr`, TCP, and within `offered` ports.
pub(super) fn reply_within(
    reply: &TsPayload,
    addr: IpAddr,
    offered: &[PortRange],
) -> Option<Vec<PortRange>> {
    let mut ports = Vec::new();
    for ts in &reply.selectors {
        let TrafficSelector::Range {
            ip_protocol,
            start_port,
            end_port,
            start_addr,
            end_addr,
        } = ts
        else {
            return None;
        };
        let ok = *ip_protocol == 6
            && addr_in(addr, *start_addr, *end_addr)
            && offered
                .iter()
                .any(|o| o.start <= *start_port && *end_port <= o.end && start_port <= end_port);
        if !ok {
            return None;
        }
        ports.push(PortRange {
            start: *start_port,
            end: *end_port,
        });
    }
    (!ports.is_empty()).then_some(ports)
}

impl Endpoint {
    /// Creates the endpoint. Peers with `initiate` set are due for initiation at `now`.
    pub fn new(
        cfg: EndpointConfig,
        now: Instant,
        rng: Box<dyn CryptoRngCore + Send>,
    ) -> Result<Endpoint, IkeError> {
        for p in &cfg.peers {
            if p.ike_suites.is_empty() {
                return Err(
                    MisuseError::Config(format!("peer {:?}: no IKE suites", p.name)).into(),
                );
            }
            if p.tcp_ports.is_empty() {
                return Err(MisuseError::Config(format!("peer {:?}: no TCP ports", p.name)).into());
            }
        }
        let peers = cfg
            .peers
            .iter()
            .map(|p| PeerRuntime {
                next_attempt: p.initiate.then_some(now),
                ..Default::default()
            })
            .collect();
        let mut by_addr = BTreeMap::new();
        let mut by_ip: BTreeMap<IpAddr, Vec<usize>> = BTreeMap::new();
        let mut by_name = BTreeMap::new();
        let mut timers = TimerQueue::new(cfg.peers.len());
        for (i, p) in cfg.peers.iter().enumerate() {
            by_addr.entry(p.remote).or_insert(i);
            by_ip.entry(p.remote.ip()).or_default().push(i);
            by_name.entry(p.name.clone()).or_insert(i);
            timers.set(i, p.initiate.then_some(now));
        }
        Ok(Endpoint {
            cfg,
            rng,
            peers,
            sas: SaTable::default(),
            by_addr,
            by_ip,
            by_name,
            timers,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    /// The configuration this endpoint runs with.
    pub fn config(&self) -> &EndpointConfig {
        &self.cfg
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] must be called next: the first
    /// entry of the timer queue, O(log n).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The earliest deadline of a peer: retransmissions, half-open expiry
    /// and replay windows of its IKE SAs, their rekeys and liveness checks,
    /// its MKTs' rekeys, retirements and hard lifetimes, its next
    /// initiation and its KeyID reservations. O(its SAs and MKTs).
    fn peer_deadline(&self, peer: usize) -> Option<Instant> {
        let sa_deadlines = self.sas.of_peer(peer).flat_map(|sa| {
            let retransmit = sa.window.deadline();
            let half_open = match sa.state {
                SaState::HalfOpen => Some(sa.created + self.cfg.half_open_timeout),
                _ => None,
            };
            [retransmit, half_open, sa.expires]
        });
        let p = &self.peers[peer];
        let reservation = p.reservations.iter().map(|r| r.until).min();
        sa_deadlines
            .chain([p.next_attempt, reservation])
            .chain(self.mkt_deadlines(peer).map(Some))
            .chain(self.sa_deadlines(peer).map(Some))
            .flatten()
            .min()
    }

    /// Ends every input: reports the peers' changed key sets, and puts the
    /// deadlines of the peers the input touched back in the timer queue.
    pub(super) fn finish_input(&mut self, mark: usize) {
        self.announce_key_changes(mark);
        for peer in self.sas.take_touched() {
            let deadline = self.peer_deadline(peer);
            self.timers.set(peer, deadline);
        }
    }

    /// After an input: one [`Event::MktsChanged`] for each peer whose MKTs
    /// the events since `mark` changed.
    pub(super) fn announce_key_changes(&mut self, mark: usize) {
        let mut changed: Vec<usize> = Vec::new();
        for ev in self.events.range(mark..) {
            if let Event::MktCreated { peer, .. }
            | Event::MktDeleted { peer, .. }
            | Event::MktSuperseded { peer, .. } = ev
            {
                if let Ok(i) = self.peer_index(peer) {
                    if !changed.contains(&i) {
                        changed.push(i);
                    }
                }
            }
        }
        for peer in changed {
            let mkts = self.mkt_views(peer);
            self.events.push_back(Event::MktsChanged {
                peer: self.peer_name(peer),
                mkts,
            });
        }
    }

    /// The peer's MKTs in socket order: retiring ones first, then live ones
    /// from oldest to newest.
    fn mkt_views(&self, peer: usize) -> Vec<MktView> {
        let mut mkts: Vec<MktView> = self.peers[peer]
            .mkts
            .iter()
            .map(|m| MktView {
                mkt: m.mkt.clone(),
                ports: m.ports.clone(),
                created_at: m.created_at,
                spi_i: m.spi_i,
                spi_r: m.spi_r,
                rekey_at: m.rekey_at,
                expires_at: m.expires_at,
                retire_at: m.retire_at,
            })
            .collect();
        mkts.sort_by_key(|m| (m.retire_at.is_none(), m.created_at));
        mkts
    }

    /// Views of every configured peer, for status displays.
    pub fn peers(&self) -> Vec<PeerView> {
        self.cfg
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut sas: Vec<&IkeSa> = self.sas.of_peer(i).collect();
                sas.sort_by_key(|s| s.created);
                let state = if sas.iter().any(|s| s.state == SaState::Established) {
                    PeerState::Established
                } else if sas.iter().any(|s| s.is_live()) {
                    PeerState::Connecting
                } else if self.peers[i].last_error.is_some() {
                    PeerState::Failed
                } else {
                    PeerState::None
                };
                PeerView {
                    name: p.name.clone(),
                    remote: p.remote,
                    state,
                    tcp_ao_capable: self.peers[i].tcp_ao_capable,
                    last_error: self.peers[i].last_error.clone(),
                    sas: sas
                        .iter()
                        .map(|s| SaView {
                            spi_i: s.spi_i,
                            spi_r: s.spi_r,
                            role: s.role,
                            state: match s.state {
                                SaState::Established => "established",
                                SaState::Rekeyed => "rekeyed",
                                SaState::Successor => "rekeying",
                                SaState::Failed => "failed",
                                _ => "connecting",
                            },
                            suite: s.suite,
                            established_at: s.established_at,
                            rekey_at: s.rekey_at,
                        })
                        .collect(),
                    mkts: self.peers[i]
                        .mkts
                        .iter()
                        .map(|m| MktView {
                            mkt: m.mkt.clone(),
                            ports: m.ports.clone(),
                            created_at: m.created_at,
                            spi_i: m.spi_i,
                            spi_r: m.spi_r,
                            rekey_at: m.rekey_at,
                            expires_at: m.expires_at,
                            retire_at: m.retire_at,
                        })
                        .collect(),
                    reservations: self.peers[i].reservations.clone(),
                }
            })
            .collect()
    }

    pub(super) fn peer_index(&self, name: &str) -> Result<usize, IkeError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| MisuseError::UnknownPeer(name.to_string()).into())
    }

    fn peer_name(&self, peer: usize) -> String {
        self.cfg
            .peers
            .get(peer)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    }

    /// An IKE SA with the peer that is up or being set up. Failed ones and
    /// those superseded by a rekey, which only wait for their Delete, do not
    /// count.
    fn has_live_sa(&self, peer: usize) -> bool {
        self.sas
            .of_peer(peer)
            .any(|s| s.is_live() && !matches!(s.state, SaState::Rekeyed | SaState::Successor))
    }

    /// Drops the peer's IKE SAs that a rekey superseded or left waiting:
    /// with the current IKE SA gone they have nothing left to do.
    fn drop_rekey_leftovers(&mut self, peer: usize, reason: &'static str) {
        let spis: Vec<u64> = self
            .sas
            .of_peer(peer)
            .filter(|s| matches!(s.state, SaState::Rekeyed | SaState::Successor))
            .map(IkeSa::local_spi)
            .collect();
        for spi in spis {
            if let Some(sa) = self.sas.remove(&spi) {
                self.remove_sa(sa, reason);
            }
        }
    }

    fn random_spi(&mut self) -> u64 {
        loop {
            let spi = self.rng.next_u64();
            if spi != 0 && !self.sas.contains_key(&spi) {
                return spi;
            }
        }
    }

    fn random_bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.rng.fill_bytes(&mut v);
        v
    }

    fn send(&mut self, destination: SocketAddr, contents: Vec<u8>) {
        self.transmits.push_back(Transmit {
            destination,
            contents,
        });
    }

    fn dropped(&mut self, from: SocketAddr, reason: impl Into<String>) {
        self.events.push_back(Event::Dropped {
            from,
            reason: reason.into(),
        });
    }

    /// Starts an IKE SA with the named peer now, unless one exists or is
    /// being set up. Returns whether a new negotiation started.
    pub fn initiate(&mut self, peer_name: &str, now: Instant) -> Result<bool, IkeError> {
        let peer = self.peer_index(peer_name)?;
        if self.has_live_sa(peer) {
            return Ok(false);
        }
        let mark = self.events.len();
        self.sas.touch(peer);
        let r = self.start_initiator(peer, now);
        self.finish_input(mark);
        r.map(|()| true)
    }

    /// Deletes the peer's IKE SAs (with a Delete payload) and their MKTs,
    /// and stops initiating to it until [`Endpoint::initiate`].
    pub fn terminate(&mut self, peer_name: &str, now: Instant) -> Result<usize, IkeError> {
        let mark = self.events.len();
        let r = self.terminate_input(peer_name, now);
        self.finish_input(mark);
        r
    }

    fn terminate_input(&mut self, peer_name: &str, _now: Instant) -> Result<usize, IkeError> {
        let peer = self.peer_index(peer_name)?;
        self.sas.touch(peer);
        self.peers[peer].next_attempt = None;
        let spis = self.sas.spis_of(peer);
        let n = spis.len();
        let recv_ids: Vec<Vec<u8>> = self.peers[peer]
            .mkts
            .iter()
            .map(|m| vec![m.mkt.recv_id])
            .collect();
        for spi in spis {
            if let Some(mut sa) = self.sas.remove(&spi) {
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
                    payloads.push(Payload::Delete(DeletePayload {
                        protocol: ProtocolId::IKE,
                        spi_size: 0,
                        spis: Vec::new(),
                    }));
                    self.send_oneshot(&mut sa, &payloads);
                }
                self.remove_sa(sa, "terminated by operator");
            }
        }
        self.delete_all_mkts(peer, "terminated by operator");
        Ok(n)
    }

    /// Sends a one-shot INFORMATIONAL Delete for the IKE SA (RFC 7296 1.4.1).
    fn send_delete_ike(&mut self, sa: &mut IkeSa, _now: Instant) {
        let del = Payload::Delete(DeletePayload {
            protocol: ProtocolId::IKE,
            spi_size: 0,
            spis: Vec::new(),
        });
        self.send_oneshot(sa, &[del]);
    }

    /// Sends an INFORMATIONAL request that is not retransmitted (the SA is
    /// going away).
    fn send_oneshot(&mut self, sa: &mut IkeSa, payloads: &[Payload]) {
        if let Ok((_, bytes)) = sa.request(ExchangeType::INFORMATIONAL, payloads) {
            self.send(sa.remote, bytes);
        }
    }

    /// Deletes every MKT of a peer locally.
    fn delete_all_mkts(&mut self, peer: usize, reason: &'static str) {
        let name = self.peer_name(peer);
        for m in std::mem::take(&mut self.peers[peer].mkts) {
            self.events.push_back(Event::MktDeleted {
                peer: name.clone(),
                send_id: m.mkt.send_id,
                recv_id: m.mkt.recv_id,
                reason,
            });
        }
    }

    /// Drops an SA and reports it as deleted. Its MKTs stay until their
    /// lifetime ends or newer ones replace them.
    pub(super) fn remove_sa(&mut self, sa: IkeSa, reason: &'static str) {
        let peer = self.peer_name(sa.peer);
        if sa.announced {
            self.events.push_back(Event::IkeSaDeleted {
                peer,
                spi_i: sa.spi_i,
                spi_r: sa.spi_r,
                reason: reason.to_string(),
            });
        }
    }

    /// Records a failed negotiation, schedules a retry, and keeps the SA
    /// (as Failed, for replaying its last response) or drops it.
    fn fail(&mut self, mut sa: IkeSa, error: IkeError, by_peer: bool, now: Instant) {
        let peer = sa.peer;
        self.peers[peer].last_error = Some(match error.notify() {
            Some(n) if n.name().is_some() => n.to_string(),
            _ => error.to_string(),
        });
        self.events.push_back(Event::NegotiationFailed {
            peer: self.peer_name(peer),
            error,
            by_peer,
        });
        if self.cfg.peers[peer].initiate {
            self.peers[peer].next_attempt = Some(now + self.cfg.retry_interval);
        }
        if sa.is_authenticated() {
            self.remove_sa(sa, "IKE SA failed");
            self.drop_rekey_leftovers(peer, "IKE SA failed");
            return;
        }
        if sa.role == Role::Responder && sa.window.has_response() {
            sa.state = SaState::Failed;
            sa.window.complete();
            sa.expires = Some(now + self.cfg.half_open_timeout);
            self.sas.insert(sa);
        }
    }

    fn start_initiator(&mut self, peer: usize, now: Instant) -> Result<(), IkeError> {
        let group = self.cfg.peers[peer].ike_suites[0].group;
        let ke = KeyExchange::generate(group, &mut *self.rng).map_err(Misbehaviour::KeyExchange)?;
        let spi_i = self.random_spi();
        let ni = self.random_bytes(NONCE_LEN);
        let mut sa = IkeSa {
            peer,
            role: Role::Initiator,
            state: SaState::InitSent,
            spi_i,
            spi_r: 0,
            remote: self.cfg.peers[peer].remote,
            created: now,
            expires: None,
            ni,
            nr: Vec::new(),
            ke: Some(ke),
            suite: None,
            keys: None,
            init_request: Vec::new(),
            init_response: Vec::new(),
            cookie: None,
            peer_tcp_ao: false,
            peer_childless: false,
            window: Window::new(0),
            iv_counter: 0,
            established_at: None,
            child_offer: None,
            rekey_offer: None,
            rekey_at: None,
            last_received: now,
            ike_rekey: None,
            rekeyed_from: None,
            successor: None,
            peer_initial_contact: false,
            announced: false,
        };
        self.peers[peer].next_attempt = None;
        self.send_init_request(&mut sa, now);
        self.sas.insert(sa);
        Ok(())
    }

    fn capability_payloads(&self) -> Vec<Payload> {
        let mut v = vec![notify(NotifyType::CHILDLESS_IKEV2_SUPPORTED, Vec::new())];
        if self.cfg.advertise_tcp_ao {
            v.push(notify(NotifyType::TCP_AO_SUPPORTED, Vec::new()));
            v.push(Payload::VendorId(VENDOR_ID.to_vec()));
        }
        v
    }

    fn send_init_request(&mut self, sa: &mut IkeSa, now: Instant) {
        let Some(ke) = &sa.ke else { return };
        let mut payloads = Vec::new();
        if let Some(c) = &sa.cookie {
            payloads.push(notify(NotifyType::COOKIE, c.clone()));
        }
        payloads.push(Payload::Sa(proposal::ike_sa_payload(
            &self.cfg.peers[sa.peer].ike_suites,
        )));
        payloads.push(Payload::Ke(KePayload {
            group: ke.group(),
            data: ke.public(),
        }));
        payloads.push(Payload::Nonce(sa.ni.clone()));
        payloads.extend(self.capability_payloads());
        let id = sa.window.init_id();
        let h = sa.header(ExchangeType::IKE_SA_INIT, id, false);
        let bytes = wire::emit_message(&h, &payloads);
        sa.init_request = bytes.clone();
        self.send_request(sa, id, bytes, PendingKind::Init, now);
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

    fn send_request(
        &mut self,
        sa: &mut IkeSa,
        message_id: u32,
        bytes: Vec<u8>,
        kind: PendingKind,
        now: Instant,
    ) {
        self.send(sa.remote, bytes.clone());
        sa.window
            .sent(message_id, bytes, kind, now, &self.cfg.retransmit);
    }

    /// The retransmissions of `sa`'s pending request are exhausted (RFC
    /// 7296 2.4: the peer is considered dead).
    fn give_up(&mut self, mut sa: IkeSa, now: Instant) {
        let kind = sa.window.pending_kind();
        if sa.state == SaState::Rekeyed {
            // Its successor carries on; an unanswered Delete payload of an
            // MKT is sent again there.
            return self.retire_rekeyed_sa(sa, now);
        }
        sa.window.complete();
        match kind {
            Some(PendingKind::DeleteIke) => self.remove_sa(sa, "deleted"),
            // Also a rekey of the IKE SA that collided with the peer's: the
            // peer's SA is not adopted, since the peer, silent as well, may
            // never have received our answer to it.
            Some(k) if sa.state == SaState::Established => {
                let reason = if k == PendingKind::Liveness {
                    "peer unreachable (liveness check)"
                } else {
                    "peer unreachable (no answer to a request)"
                };
                self.peer_unreachable(sa, reason, now);
            }
            _ => self.fail(sa, NegotiationError::Timeout.into(), false, now),
        }
    }

    /// An established IKE SA whose peer stopped answering is deleted
    /// locally; its MKTs stay until their hard lifetime (or until a new IKE
    /// SA's MKT supersedes them), and an initiating peer is tried again
    /// after `retry_interval`.
    fn peer_unreachable(&mut self, sa: IkeSa, reason: &'static str, now: Instant) {
        let peer = sa.peer;
        self.peers[peer].last_error = Some(reason.to_string());
        self.events.push_back(Event::NegotiationFailed {
            peer: self.peer_name(peer),
            error: NegotiationError::Timeout.into(),
            by_peer: false,
        });
        if self.cfg.peers[peer].initiate {
            self.peers[peer].next_attempt = Some(now + self.cfg.retry_interval);
        }
        self.remove_sa(sa, reason);
        self.drop_rekey_leftovers(peer, reason);
    }

    /// Handles expired timers: retransmissions, give-ups, half-open expiry,
    /// and due initiations.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mark = self.events.len();
        self.timeout_input(now);
        self.finish_input(mark);
    }

    fn timeout_input(&mut self, now: Instant) {
        for peer in self.timers.due(now) {
            self.sas.touch(peer);
            self.peer_timeout(peer, now);
        }
    }

    /// Everything due for one peer: retransmissions, give-ups, half-open
    /// expiry, KeyID reservations, IKE SA rekeys and liveness checks, MKT
    /// timers, and its initiation.
    fn peer_timeout(&mut self, peer: usize, now: Instant) {
        let due: Vec<u64> = self
            .sas
            .of_peer(peer)
            .filter(|sa| {
                sa.window.deadline().is_some_and(|d| d <= now)
                    || sa.expires.is_some_and(|e| e <= now)
                    || (sa.state == SaState::HalfOpen
                        && sa.created + self.cfg.half_open_timeout <= now)
            })
            .map(IkeSa::local_spi)
            .collect();
        for spi in due {
            let Some(mut sa) = self.sas.remove(&spi) else {
                continue;
            };
            if sa.expires.is_some_and(|e| e <= now) {
                if sa.state == SaState::Rekeyed {
                    // The peer never deleted it.
                    self.retire_rekeyed_sa(sa, now);
                } else if sa.state == SaState::Successor {
                    self.remove_sa(sa, "rekeyed");
                }
                continue; // a failed SA's replay window ended
            }
            if sa.state == SaState::HalfOpen && sa.created + self.cfg.half_open_timeout <= now {
                self.dropped(
                    sa.remote,
                    format!(
                        "half-open IKE SA {:016x} expired without IKE_AUTH",
                        sa.spi_r
                    ),
                );
                continue;
            }
            match sa.window.retransmit(now, &self.cfg.retransmit) {
                Retransmit::GiveUp => self.give_up(sa, now),
                Retransmit::Send(bytes) => {
                    self.send(sa.remote, bytes);
                    self.sas.insert(sa);
                }
                Retransmit::NotDue => self.sas.insert(sa),
            }
        }
        self.peers[peer].reservations.retain(|r| r.until > now);
        self.handle_sa_timers(peer, now);
        self.handle_mkt_timers(peer, now);
        if self.peers[peer].next_attempt.is_some_and(|t| t <= now) {
            self.peers[peer].next_attempt = None;
            if !self.has_live_sa(peer) {
                if let Err(e) = self.start_initiator(peer, now) {
                    self.events.push_back(Event::NegotiationFailed {
                        peer: self.peer_name(peer),
                        error: e,
                        by_peer: false,
                    });
                }
            }
        }
    }

    /// Handles one received datagram. Nothing in it can make this panic, and
    /// nothing that fails to authenticate changes an established SA.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let mark = self.events.len();
        self.datagram_input(now, from, datagram);
        self.finish_input(mark);
    }

    fn datagram_input(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let msg = match wire::parse_message(datagram) {
            Ok(m) => m,
            Err(e) => return self.dropped(from, format!("malformed: {e}")),
        };
        let h = &msg.header;
        if h.exchange == ExchangeType::IKE_SA_INIT && !h.is_response() {
            return self.on_init_request(now, from, datagram, &msg);
        }
        let local_spi = if h.is_initiator() { h.spi_r } else { h.spi_i };
        let Some(sa) = self.sas.remove(&local_spi) else {
            return self.dropped(from, format!("no IKE SA with SPI {local_spi:016x}"));
        };
        let roles_match = match sa.role {
            Role::Initiator => !h.is_initiator(),
            Role::Responder => h.is_initiator(),
        };
        let spis_match =
            h.spi_i == sa.spi_i && (h.spi_r == sa.spi_r || sa.state == SaState::InitSent);
        if !roles_match || !spis_match || from.ip() != sa.remote.ip() {
            self.sas.insert(sa);
            return self.dropped(from, "SPIs, flags or address do not match the IKE SA");
        }
        if h.is_response() {
            self.on_response(now, from, datagram, &msg, sa);
        } else {
            self.on_request(now, from, datagram, &msg, sa);
        }
    }

    /// The configured peer a datagram from `from` comes from: the one with
    /// that address and port, else the only one with that address.
    fn match_peer(&self, from: SocketAddr) -> Option<usize> {
        if let Some(&i) = self.by_addr.get(&from) {
            return Some(i);
        }
        match self.by_ip.get(&from.ip()).map(Vec::as_slice) {
            Some([i]) => Some(*i),
            _ => None,
        }
    }

    /// An unauthenticated error response to IKE_SA_INIT (RFC 7296 2.21.1).
    fn send_init_error(&mut self, to: SocketAddr, req: &Header, ty: NotifyType, data: Vec<u8>) {
        let h = Header {
            spi_i: req.spi_i,
            spi_r: 0,
            next_payload: PayloadType::NONE,
            version: 0x20,
            exchange: ExchangeType::IKE_SA_INIT,
            flags: FLAG_RESPONSE,
            message_id: 0,
            length: 0,
        };
        self.send(to, wire::emit_message(&h, &[notify(ty, data)]));
    }

    fn on_init_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        msg: &ParsedMessage,
    ) {
        let h = &msg.header;
        if h.message_id != 0 || h.spi_r != 0 || !h.is_initiator() || msg.sk.is_some() {
            return self.dropped(from, "IKE_SA_INIT request with a bad header");
        }
        let Some(peer) = self.match_peer(from) else {
            return self.dropped(
                from,
                "IKE_SA_INIT from an address that is no configured peer",
            );
        };
        self.sas.touch(peer);
        // A retransmission of a request already answered (RFC 7296 2.1).
        let answered = self
            .sas
            .of_peer(peer)
            .find(|s| s.role == Role::Responder && s.spi_i == h.spi_i && s.remote == from)
            .map(|sa| {
                (sa.init_request == datagram && !sa.init_response.is_empty())
                    .then(|| sa.init_response.clone())
            });
        if let Some(replay) = answered {
            if let Some(r) = replay {
                self.send(from, r);
            }
            return;
        }
        let half_open = self
            .sas
            .of_peer(peer)
            .filter(|s| s.role == Role::Responder && s.state == SaState::HalfOpen)
            .count();
        if half_open >= self.cfg.half_open_per_peer {
            return self.dropped(from, "half-open IKE SA limit for this peer reached");
        }
        if let Some(ty) = msg.unsupported_critical() {
            self.send_init_error(
                from,
                h,
                NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD,
                vec![ty.0],
            );
            return;
        }
        let sa_offer = msg.payloads.find_payload(Payload::as_sa);
        let ke_in = msg.payloads.find_payload(Payload::as_ke);
        let ni = msg.payloads.find_payload(Payload::as_nonce);
        let (Some(sa_offer), Some(ke_in), Some(ni)) = (sa_offer, ke_in, ni) else {
            return self.dropped(from, "IKE_SA_INIT request without SA, KE or Nonce");
        };
        // Simultaneous initiation (module documentation).
        let own = self
            .sas
            .of_peer(peer)
            .find(|s| {
                s.role == Role::Initiator
                    && matches!(s.state, SaState::InitSent | SaState::AuthSent)
            })
            .map(|s| (s.local_spi(), s.ni.clone()));
        if let Some((own_spi, own_ni)) = own {
            let ours_wins = own_ni.as_slice() > ni;
            self.events.push_back(Event::SimultaneousInitiation {
                peer: self.peer_name(peer),
                kept_ours: ours_wins,
            });
            if ours_wins {
                return;
            }
            self.sas.remove(&own_spi);
        }
        let pc = &self.cfg.peers[peer];
        let choice = match proposal::choose_ike(sa_offer, &pc.ike_suites, ke_in.group) {
            Ok(c) => c,
            Err(NegotiationError::InvalidKe(g)) => {
                self.send_init_error(
                    from,
                    h,
                    NotifyType::INVALID_KE_PAYLOAD,
                    g.0.to_be_bytes().to_vec(),
                );
                return;
            }
            Err(e) => {
                self.send_init_error(from, h, NotifyType::NO_PROPOSAL_CHOSEN, Vec::new());
                let name = self.peer_name(peer);
                self.peers[peer].last_error = Some(NotifyType::NO_PROPOSAL_CHOSEN.to_string());
                self.events.push_back(Event::NegotiationFailed {
                    peer: name,
                    error: e.into(),
                    by_peer: false,
                });
                return;
            }
        };
        let ke = match KeyExchange::generate(choice.suite.group, &mut *self.rng) {
            Ok(k) => k,
            Err(e) => return self.dropped(from, format!("key exchange: {e}")),
        };
        let gir = match ke.agree(&ke_in.data) {
            Ok(g) => g,
            Err(e) => {
                self.send_init_error(from, h, NotifyType::INVALID_SYNTAX, Vec::new());
                return self.dropped(from, format!("peer's KE payload: {e}"));
            }
        };
        let spi_r = self.random_spi();
        let nr = self.random_bytes(NONCE_LEN);
        let keys = match derive_keys(choice.suite, &gir, ni, &nr, h.spi_i, spi_r) {
            Ok(k) => k,
            Err(e) => return self.dropped(from, format!("key derivation: {e}")),
        };
        let mut sa = IkeSa {
            peer,
            role: Role::Responder,
            state: SaState::HalfOpen,
            spi_i: h.spi_i,
            spi_r,
            remote: from,
            created: now,
            expires: None,
            ni: ni.to_vec(),
            nr: nr.clone(),
            ke: None,
            suite: Some(choice.suite),
            keys: Some(keys),
            init_request: datagram.to_vec(),
            init_response: Vec::new(),
            cookie: None,
            peer_tcp_ao: msg.payloads.notify(NotifyType::TCP_AO_SUPPORTED).is_some(),
            peer_childless: msg
                .payloads
                .notify(NotifyType::CHILDLESS_IKEV2_SUPPORTED)
                .is_some(),
            window: Window::new(1),
            iv_counter: 0,
            established_at: None,
            child_offer: None,
            rekey_offer: None,
            rekey_at: None,
            last_received: now,
            ike_rekey: None,
            rekeyed_from: None,
            successor: None,
            peer_initial_contact: false,
            announced: false,
        };
        let mut payloads = vec![
            Payload::Sa(proposal::ike_sa_reply(choice.proposal_num, choice.suite)),
            Payload::Ke(KePayload {
                group: ke.group(),
                data: ke.public(),
            }),
            Payload::Nonce(nr),
        ];
        payloads.extend(self.capability_payloads());
        let rh = sa.header(ExchangeType::IKE_SA_INIT, 0, true);
        let bytes = wire::emit_message(&rh, &payloads);
        sa.init_response = bytes.clone();
        self.send(from, bytes);
        self.sas.insert(sa);
    }

    fn on_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        msg: &ParsedMessage,
        sa: IkeSa,
    ) {
        let matches_pending = sa.window.answers_pending(msg.header.message_id);
        if !matches_pending {
            self.sas.insert(sa);
            return self.dropped(from, "response to no outstanding request");
        }
        match sa.state {
            SaState::InitSent if msg.header.exchange == ExchangeType::IKE_SA_INIT => {
                self.on_init_response(now, from, datagram, msg, sa)
            }
            SaState::AuthSent if msg.header.exchange == ExchangeType::IKE_AUTH => {
                self.on_auth_response(now, from, datagram, msg, sa)
            }
            SaState::Established | SaState::Rekeyed | SaState::Successor
                if msg.header.exchange == ExchangeType::INFORMATIONAL =>
            {
                self.on_informational_response(now, from, datagram, msg, sa)
            }
            SaState::Established | SaState::Rekeyed
                if msg.header.exchange == ExchangeType::CREATE_CHILD_SA =>
            {
                self.on_create_child_response_msg(now, from, datagram, msg, sa)
            }
            _ => {
                self.sas.insert(sa);
                self.dropped(from, "response of an unexpected exchange type")
            }
        }
    }

    fn on_init_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        msg: &ParsedMessage,
        mut sa: IkeSa,
    ) {
        let pc = &self.cfg.peers[sa.peer];
        if let Some(n) = msg.payloads.notify(NotifyType::COOKIE) {
            if (1..=64).contains(&n.data.len()) && sa.cookie.is_none() {
                sa.cookie = Some(n.data.clone());
                self.send_init_request(&mut sa, now);
                self.sas.insert(sa);
                return;
            }
        }
        if let Some(n) = msg.payloads.notify(NotifyType::INVALID_KE_PAYLOAD) {
            let wanted =
                <[u8; 2]>::try_from(n.data.as_slice()).map(|b| DhGroup(u16::from_be_bytes(b)));
            let current = sa.ke.as_ref().map(|k| k.group());
            match wanted {
                Ok(g) if Some(g) != current && pc.ike_suites.iter().any(|s| s.group == g) => {
                    match KeyExchange::generate(g, &mut *self.rng) {
                        Ok(ke) => {
                            sa.ke = Some(ke);
                            self.send_init_request(&mut sa, now);
                            self.sas.insert(sa);
                        }
                        Err(e) => self.fail(sa, Misbehaviour::KeyExchange(e).into(), false, now),
                    }
                }
                _ => self.fail(
                    sa,
                    NegotiationError::NoProposalChosen(
                        "INVALID_KE_PAYLOAD names a group not offered",
                    )
                    .into(),
                    true,
                    now,
                ),
            }
            return;
        }
        if let Some(n) = msg.payloads.error_notify() {
            let e = NegotiationError::PeerReported(n.ty);
            return self.fail(sa, e.into(), true, now);
        }
        if let Some(ty) = msg.unsupported_critical() {
            return self.fail(sa, Misbehaviour::UnsupportedCritical(ty).into(), false, now);
        }
        let sa_reply = msg.payloads.find_payload(Payload::as_sa);
        let ke_in = msg.payloads.find_payload(Payload::as_ke);
        let nr = msg.payloads.find_payload(Payload::as_nonce);
        let (Some(sa_reply), Some(ke_in), Some(nr)) = (sa_reply, ke_in, nr) else {
            self.sas.insert(sa);
            return self.dropped(from, "IKE_SA_INIT response without SA, KE or Nonce");
        };
        if msg.header.spi_r == 0 {
            self.sas.insert(sa);
            return self.dropped(from, "IKE_SA_INIT response without a responder SPI");
        }
        let Some(ke) = sa.ke.take() else {
            return self.fail(
                sa,
                Misbehaviour::Unexpected("no key exchange state").into(),
                false,
                now,
            );
        };
        let Some(suite) = proposal::check_ike_reply(sa_reply, &pc.ike_suites, ke.group()) else {
            return self.fail(
                sa,
                Misbehaviour::BadSelection("IKE SA proposal").into(),
                false,
                now,
            );
        };
        if ke_in.group != ke.group() {
            return self.fail(
                sa,
                Misbehaviour::BadSelection("KE group").into(),
                false,
                now,
            );
        }
        let gir = match ke.agree(&ke_in.data) {
            Ok(g) => g,
            Err(e) => return self.fail(sa, Misbehaviour::KeyExchange(e).into(), false, now),
        };
        sa.spi_r = msg.header.spi_r;
        sa.nr = nr.to_vec();
        sa.keys = match derive_keys(suite, &gir, &sa.ni, nr, sa.spi_i, sa.spi_r) {
            Ok(k) => Some(k),
            Err(e) => return self.fail(sa, Misbehaviour::KeyExchange(e).into(), false, now),
        };
        sa.suite = Some(suite);
        sa.init_response = datagram.to_vec();
        sa.peer_tcp_ao = msg.payloads.notify(NotifyType::TCP_AO_SUPPORTED).is_some();
        sa.peer_childless = msg
            .payloads
            .notify(NotifyType::CHILDLESS_IKEV2_SUPPORTED)
            .is_some();
        sa.window.complete();
        match self.send_auth_request(&mut sa, now) {
            Ok(()) => {
                self.sas.insert(sa);
            }
            Err(e) => self.fail(sa, e, false, now),
        }
    }

    /// prf(SK_px, RestOfIDPayload) and the AUTH value over the signed octets (RFC 7296 2.15).
    fn auth_value(&self, sa: &IkeSa, for_initiator: bool, id: &IdPayload) -> Option<Secret> {
        let suite = sa.suite?;
        let keys = sa.keys.as_ref()?;
        let (message, nonce, sk_p) = if for_initiator {
            (&sa.init_request, &sa.nr, &keys.sk_pi)
        } else {
            (&sa.init_response, &sa.ni, &keys.sk_pr)
        };
        let maced_id = suite.prf.prf(sk_p.as_bytes(), &id.body());
        let mut signed = Vec::with_capacity(message.len() + nonce.len() + maced_id.len());
        signed.extend_from_slice(message);
        signed.extend_from_slice(nonce);
        signed.extend_from_slice(maced_id.as_bytes());
        Some(crypto::psk_auth(
            suite.prf,
            self.cfg.peers[sa.peer].psk.as_bytes(),
            &signed,
        ))
    }

    /// A RecvID for a new MKT with the peer: in [`KEY_ID_RANGE`], at random,
    /// not the RecvID of a live MKT with the peer nor of a reservation
    /// ([`Endpoint::reserve_key_ids`]).
    pub(super) fn allocate_recv_id(&mut self, peer: usize, now: Instant) -> Option<u8> {
        let p = &self.peers[peer];
        let used: Vec<u8> = p
            .mkts
            .iter()
            .map(|m| m.mkt.recv_id)
            .chain(
                p.reservations
                    .iter()
                    .filter(|r| r.until > now)
                    .map(|r| r.recv_id),
            )
            .collect();
        let free: Vec<u8> = KEY_ID_RANGE.filter(|id| !used.contains(id)).collect();
        if free.is_empty() {
            return None;
        }
        let i = (self.rng.next_u32() as usize) % free.len();
        free.get(i).copied()
    }

    /// Whether a SendID the peer chose (the SPI of its TCP-AO proposal or
    /// reply) cannot be used: a live MKT with the peer or a reservation has
    /// it. Linux refuses a second key with the same SendID for one peer.
    pub(super) fn send_id_in_use(&self, peer: usize, send_id: u8, now: Instant) -> bool {
        let p = &self.peers[peer];
        p.mkts.iter().any(|m| m.mkt.send_id == send_id)
            || p.reservations
                .iter()
                .any(|r| r.until > now && r.send_id == send_id)
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
        let list = &mut self.peers[peer].reservations;
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
        Ok(())
    }

    fn send_auth_request(&mut self, sa: &mut IkeSa, now: Instant) -> Result<(), IkeError> {
        let peer = sa.peer;
        let pc = &self.cfg.peers[peer];
        let idi = IdPayload {
            id_type: pc.local_id.id_type,
            data: pc.local_id.data.clone(),
        };
        let auth = self
            .auth_value(sa, true, &idi)
            .ok_or(Misbehaviour::Unexpected("AUTH before keys"))?;
        let mut payloads = vec![Payload::IdI(idi)];
        let other_established = self.sas.of_peer(peer).any(IkeSa::is_authenticated);
        if !other_established {
            payloads.push(notify(NotifyType::INITIAL_CONTACT, Vec::new()));
        }
        let remote_id = IdPayload {
            id_type: pc.remote_id.id_type,
            data: pc.remote_id.data.clone(),
        };
        payloads.push(Payload::IdR(remote_id));
        payloads.push(Payload::Auth(AuthPayload {
            method: AuthMethod::SHARED_KEY_MIC,
            data: auth.as_bytes().to_vec(),
        }));
        let wants_child = self.cfg.advertise_tcp_ao && !pc.mac_algorithms.is_empty();
        self.peers[peer].tcp_ao_capable = Some(sa.peer_tcp_ao);
        if wants_child && sa.peer_tcp_ao {
            let recv_id =
                self.allocate_recv_id(peer, now)
                    .ok_or(NegotiationError::NoProposalChosen(
                        "no free KeyID for this peer",
                    ))?;
            let pc = &self.cfg.peers[peer];
            payloads.push(Payload::Sa(proposal::tcp_ao_sa_payload(
                recv_id,
                &pc.mac_algorithms,
            )));
            payloads.push(Payload::TsI(selectors(pc.local, &pc.tcp_ports)));
            payloads.push(Payload::TsR(selectors(pc.remote.ip(), &pc.tcp_ports)));
            let exclude_options = !pc.include_options;
            if exclude_options {
                payloads.push(notify(NotifyType::TCP_AO_EXCLUDE_OPTIONS, Vec::new()));
            }
            sa.child_offer = Some(ChildOffer {
                recv_id,
                exclude_options,
            });
        } else if sa.peer_childless {
            if !sa.peer_tcp_ao {
                self.events.push_back(Event::PeerNotCapable {
                    peer: self.peer_name(peer),
                });
            }
        } else {
            return Err(NegotiationError::NotCapable.into());
        }
        let (id, bytes) = sa.request(ExchangeType::IKE_AUTH, &payloads)?;
        sa.state = SaState::AuthSent;
        self.send_request(sa, id, bytes, PendingKind::Auth, now);
        Ok(())
    }

    /// Marks the SA established and replaces any older IKE SA with the
    /// peer: with a Delete payload, or locally when the peer sent
    /// INITIAL_CONTACT (RFC 7296 2.4: it holds no other IKE SA, and could
    /// not read the Delete). MKTs are not touched here.
    fn establish(&mut self, sa: &mut IkeSa, now: Instant) {
        sa.state = SaState::Established;
        sa.established_at = Some(now);
        sa.ke = None;
        sa.announced = true;
        sa.last_received = now;
        let peer = sa.peer;
        sa.rekey_at = self.ike_rekey_time(peer, now);
        self.peers[peer].last_error = None;
        self.peers[peer].next_attempt = None;
        let older: Vec<u64> = self
            .sas
            .of_peer(peer)
            .filter(|s| s.is_authenticated())
            .map(IkeSa::local_spi)
            .collect();
        for spi in older {
            if let Some(mut old) = self.sas.remove(&spi) {
                if sa.peer_initial_contact {
                    self.remove_sa(old, "the peer restarted (INITIAL_CONTACT)");
                } else {
                    if old.state == SaState::Established {
                        self.send_delete_ike(&mut old, now);
                    }
                    self.remove_sa(old, "replaced by a newer IKE SA");
                }
            }
        }
        let suite = sa.suite.unwrap_or(IkeSuite::DEFAULT);
        self.events.push_back(Event::IkeSaEstablished {
            peer: self.peer_name(peer),
            spi_i: sa.spi_i,
            spi_r: sa.spi_r,
            role: sa.role,
            suite,
            tcp_ao_capable: sa.peer_tcp_ao,
        });
    }

    fn add_mkt(
        &mut self,
        sa: &mut IkeSa,
        mkt: MasterKeyTuple,
        ports: Vec<PortRange>,
        now: Instant,
    ) {
        let nonces = [sa.ni.clone(), sa.nr.clone()];
        let by_us = sa.role == Role::Initiator;
        self.add_mkt_record(sa, mkt, ports, None, by_us, nonces, now);
    }

    /// Decrypts and authenticates `msg` on `sa`. When it does not
    /// authenticate, `sa` goes back unchanged and the datagram is reported
    /// as dropped (`what` names it).
    fn unprotect_or_drop(
        &mut self,
        mut sa: IkeSa,
        from: SocketAddr,
        datagram: &[u8],
        msg: &ParsedMessage,
        now: Instant,
        what: &str,
    ) -> Option<(IkeSa, Vec<Payload>)> {
        match sa.unprotect(datagram, msg, now) {
            Ok(payloads) => Some((sa, payloads)),
            Err(e) => {
                self.sas.insert(sa);
                self.dropped(from, format!("{what}: {e}"));
                None
            }
        }
    }

    fn on_auth_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        msg: &ParsedMessage,
        sa: IkeSa,
    ) {
        let Some((mut sa, payloads)) =
            self.unprotect_or_drop(sa, from, datagram, msg, now, "IKE_AUTH response")
        else {
            return;
        };
        sa.window.complete();
        if let Some(n) = payloads.notify(NotifyType::AUTHENTICATION_FAILED) {
            let e = NegotiationError::PeerReported(n.ty);
            return self.fail(sa, e.into(), true, now);
        }
        let idr = payloads.find_payload(Payload::as_idr);
        let auth = payloads.find_payload(Payload::as_auth);
        let (Some(idr), Some(auth)) = (idr, auth) else {
            if let Some(n) = payloads.error_notify() {
                return self.fail(sa, NegotiationError::PeerReported(n.ty).into(), true, now);
            }
            return self.fail(
                sa,
                Misbehaviour::MissingPayload(PayloadType::AUTH).into(),
                false,
                now,
            );
        };
        let pc = &self.cfg.peers[sa.peer];
        let id_ok = idr.id_type == pc.remote_id.id_type && idr.data == pc.remote_id.data;
        let auth_ok = auth.method == AuthMethod::SHARED_KEY_MIC
            && self
                .auth_value(&sa, false, idr)
                .is_some_and(|v| bool::from(v.as_bytes().ct_eq(&auth.data)));
        if !id_ok || !auth_ok {
            // RFC 7296 2.21.2: tell the responder in a separate INFORMATIONAL.
            if let Ok((_, bytes)) = sa.request(
                ExchangeType::INFORMATIONAL,
                &[notify(NotifyType::AUTHENTICATION_FAILED, Vec::new())],
            ) {
                self.send(sa.remote, bytes);
            }
            let why = if id_ok {
                "the responder's AUTH does not verify"
            } else {
                "the responder's identity is not the configured remote_id"
            };
            return self.fail(
                sa,
                NegotiationError::AuthenticationFailed(why).into(),
                false,
                now,
            );
        }
        // INITIAL_CONTACT may come in the response too (RFC 7296 2.4).
        sa.peer_initial_contact = payloads.notify(NotifyType::INITIAL_CONTACT).is_some();
        self.establish(&mut sa, now);
        if let Some(offer) = sa.child_offer.take() {
            let peer = sa.peer;
            let pc = &self.cfg.peers[peer];
            let sa_reply = payloads.find_payload(Payload::as_sa);
            let tsi = payloads.find_payload(Payload::as_tsi);
            let tsr = payloads.find_payload(Payload::as_tsr);
            let child = match (sa_reply, tsi, tsr) {
                (Some(s), Some(tsi), Some(tsr)) => {
                    match proposal::check_tcp_ao_reply(s, &pc.mac_algorithms) {
                        None => Err(IkeError::from(Misbehaviour::BadSelection(
                            "TCP-AO proposal",
                        ))),
                        Some((send_id, alg)) => {
                            let ports_i = reply_within(tsi, pc.local, &pc.tcp_ports);
                            let ports_r = reply_within(tsr, pc.remote.ip(), &pc.tcp_ports);
                            match (ports_i, ports_r) {
                                (Some(ports), Some(_))
                                    if !self.send_id_in_use(peer, send_id, now) =>
                                {
                                    Ok((send_id, alg, ports))
                                }
                                (Some(_), Some(_)) => Err(NegotiationError::NoProposalChosen(
                                    "the peer's KeyID is in use",
                                )
                                .into()),
                                _ => Err(NegotiationError::TsUnacceptable(
                                    "narrowed selectors outside the offer",
                                )
                                .into()),
                            }
                        }
                    }
                }
                _ => Err(match payloads.error_notify() {
                    Some(n) => NegotiationError::PeerReported(n.ty).into(),
                    None => Misbehaviour::MissingPayload(PayloadType::SA).into(),
                }),
            };
            match child {
                Ok((send_id, algorithm, ports)) => {
                    let exclude = offer.exclude_options
                        && payloads
                            .notify(NotifyType::TCP_AO_EXCLUDE_OPTIONS)
                            .is_some();
                    match child_master_key(&sa, None, &sa.ni, &sa.nr) {
                        Ok(master_key) => {
                            let mkt = MasterKeyTuple {
                                send_id,
                                recv_id: offer.recv_id,
                                algorithm,
                                include_options: !exclude,
                                master_key,
                            };
                            self.add_mkt(&mut sa, mkt, ports, now);
                        }
                        Err(e) => self.child_failed(&mut sa, e, false, now),
                    }
                }
                Err(e) => {
                    let by_peer =
                        matches!(e, IkeError::Negotiation(NegotiationError::PeerReported(_)));
                    if !by_peer {
                        // The responder may hold an MKT we refuse: delete it.
                        self.send_child_deletes(&mut sa, vec![offer.recv_id], now);
                    }
                    self.child_failed(&mut sa, e, by_peer, now);
                }
            }
        }
        self.sas.insert(sa);
    }

    fn child_failed(&mut self, sa: &mut IkeSa, error: IkeError, by_peer: bool, now: Instant) {
        let peer = sa.peer;
        self.peers[peer].next_child_attempt = Some(now + self.cfg.retry_interval);
        self.peers[peer].last_error = Some(match error.notify() {
            Some(n) if n.name().is_some() => n.to_string(),
            _ => error.to_string(),
        });
        self.events.push_back(Event::ChildFailed {
            peer: self.peer_name(peer),
            error,
            by_peer,
        });
    }

    fn on_informational_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        msg: &ParsedMessage,
        sa: IkeSa,
    ) {
        let Some((mut sa, _)) =
            self.unprotect_or_drop(sa, from, datagram, msg, now, "INFORMATIONAL response")
        else {
            return;
        };
        let kind = sa.window.complete().map(|p| p.kind);
        if kind == Some(PendingKind::DeleteIke) {
            if sa.state == SaState::Rekeyed {
                self.retire_rekeyed_sa(sa, now);
            } else {
                self.remove_sa(sa, "deleted");
            }
        } else {
            self.send_queued(&mut sa, now);
            self.sas.insert(sa);
        }
    }

    fn on_create_child_response_msg(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        msg: &ParsedMessage,
        sa: IkeSa,
    ) {
        let Some((mut sa, payloads)) =
            self.unprotect_or_drop(sa, from, datagram, msg, now, "CREATE_CHILD_SA response")
        else {
            return;
        };
        let kind = sa.window.complete().map(|p| p.kind);
        if kind == Some(PendingKind::RekeyIke) {
            return self.on_ike_rekey_response(now, payloads, sa);
        }
        self.on_create_child_response(now, payloads, &mut sa);
        self.send_queued(&mut sa, now);
        self.sas.insert(sa);
    }

    fn on_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        msg: &ParsedMessage,
        sa: IkeSa,
    ) {
        let id = msg.header.message_id;
        // Retransmitted request: replay the stored response (RFC 7296 2.1).
        if let Some(bytes) = sa.window.replay(id).map(<[u8]>::to_vec) {
            self.sas.insert(sa);
            return self.send(from, bytes);
        }
        if id != sa.window.expected() || sa.state == SaState::Failed {
            let expected = sa.window.expected();
            self.sas.insert(sa);
            return self.dropped(
                from,
                format!("request with message ID {id}, expected {expected}"),
            );
        }
        let Some((mut sa, payloads)) =
            self.unprotect_or_drop(sa, from, datagram, msg, now, "request")
        else {
            return;
        };
        match (sa.state, msg.header.exchange) {
            (SaState::HalfOpen, ExchangeType::IKE_AUTH) => self.on_auth_request(now, payloads, sa),
            (
                SaState::Established | SaState::Rekeyed | SaState::Successor,
                ExchangeType::INFORMATIONAL,
            ) => self.on_informational_request(now, payloads, sa),
            (
                SaState::Established | SaState::Rekeyed | SaState::Successor,
                ExchangeType::CREATE_CHILD_SA,
            ) => {
                let rekeys_ike = payloads
                    .find_payload(Payload::as_sa)
                    .and_then(proposal::first_protocol)
                    == Some(ProtocolId::IKE);
                if rekeys_ike {
                    self.on_ike_rekey_request(now, payloads, sa)
                } else if sa.state != SaState::Established || sa.ike_rekey.is_some() {
                    // RFC 7296 2.25.2: no new MKT while the IKE SA is being
                    // rekeyed (or on a superseded one); the peer tries later.
                    self.respond(
                        &mut sa,
                        ExchangeType::CREATE_CHILD_SA,
                        &[notify(NotifyType::TEMPORARY_FAILURE, Vec::new())],
                    );
                    self.sas.insert(sa);
                } else {
                    self.on_create_child_request(now, payloads, sa)
                }
            }
            _ => {
                self.sas.insert(sa);
                self.dropped(
                    from,
                    format!("{} request in this IKE SA state", msg.header.exchange),
                );
            }
        }
    }

    /// Sends a protected response to the request with the expected ID and stores it for replay.
    pub(super) fn respond(&mut self, sa: &mut IkeSa, exchange: ExchangeType, payloads: &[Payload]) {
        if let Ok(bytes) = sa.response(exchange, payloads) {
            self.send(sa.remote, bytes);
        }
    }

    fn on_auth_request(&mut self, now: Instant, payloads: Vec<Payload>, mut sa: IkeSa) {
        let peer = sa.peer;
        for p in &payloads {
            if let Payload::Unknown {
                ty, critical: true, ..
            } = p
            {
                self.respond(
                    &mut sa,
                    ExchangeType::IKE_AUTH,
                    &[notify(NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD, vec![ty.0])],
                );
                return self.fail(
                    sa,
                    Misbehaviour::UnsupportedCritical(*ty).into(),
                    false,
                    now,
                );
            }
        }
        let idi = payloads.find_payload(Payload::as_idi).cloned();
        let auth = payloads.find_payload(Payload::as_auth).cloned();
        let (Some(idi), Some(auth)) = (idi, auth) else {
            self.respond(
                &mut sa,
                ExchangeType::IKE_AUTH,
                &[notify(NotifyType::INVALID_SYNTAX, Vec::new())],
            );
            return self.fail(
                sa,
                Misbehaviour::MissingPayload(PayloadType::AUTH).into(),
                false,
                now,
            );
        };
        let pc = &self.cfg.peers[peer];
        let id_ok = idi.id_type == pc.remote_id.id_type && idi.data == pc.remote_id.data;
        let auth_ok = auth.method == AuthMethod::SHARED_KEY_MIC
            && self
                .auth_value(&sa, true, &idi)
                .is_some_and(|v| bool::from(v.as_bytes().ct_eq(&auth.data)));
        if !id_ok || !auth_ok {
            self.respond(
                &mut sa,
                ExchangeType::IKE_AUTH,
                &[notify(NotifyType::AUTHENTICATION_FAILED, Vec::new())],
            );
            let why = if id_ok {
                "the initiator's AUTH does not verify"
            } else {
                "the initiator's identity is not the configured remote_id"
            };
            return self.fail(
                sa,
                NegotiationError::AuthenticationFailed(why).into(),
                false,
                now,
            );
        }
        let idr = IdPayload {
            id_type: pc.local_id.id_type,
            data: pc.local_id.data.clone(),
        };
        let Some(my_auth) = self.auth_value(&sa, false, &idr) else {
            return self.fail(
                sa,
                Misbehaviour::Unexpected("AUTH before keys").into(),
                false,
                now,
            );
        };
        // RFC 7296 2.4: the peer holds no other IKE SA with us (it
        // restarted); `establish` deletes ours locally.
        sa.peer_initial_contact = payloads.notify(NotifyType::INITIAL_CONTACT).is_some();
        self.peers[peer].tcp_ao_capable = Some(sa.peer_tcp_ao);
        self.establish(&mut sa, now);
        let mut reply = vec![
            Payload::IdR(idr),
            Payload::Auth(AuthPayload {
                method: AuthMethod::SHARED_KEY_MIC,
                data: my_auth.as_bytes().to_vec(),
            }),
        ];
        let child_sa = payloads.find_payload(Payload::as_sa);
        match child_sa {
            None => {
                if !sa.peer_tcp_ao {
                    self.events.push_back(Event::PeerNotCapable {
                        peer: self.peer_name(peer),
                    });
                }
            }
            Some(offer) => match self.accept_child(&mut sa, offer, &payloads, now) {
                Ok(child_payloads) => reply.extend(child_payloads),
                Err(e) => {
                    if let Some(n) = e.notify() {
                        reply.push(notify(n, Vec::new()));
                    }
                    self.child_failed(&mut sa, e, false, now);
                }
            },
        }
        self.respond(&mut sa, ExchangeType::IKE_AUTH, &reply);
        self.sas.insert(sa);
    }

    /// The responder's side of the TCP-AO child SA in IKE_AUTH.
    fn accept_child(
        &mut self,
        sa: &mut IkeSa,
        offer: &SaPayload,
        payloads: &[Payload],
        now: Instant,
    ) -> Result<Vec<Payload>, IkeError> {
        let peer = sa.peer;
        if !self.cfg.advertise_tcp_ao || proposal::first_protocol(offer) != Some(ProtocolId::TCP_AO)
        {
            return Err(
                NegotiationError::NoProposalChosen("only TCP-AO child SAs are supported").into(),
            );
        }
        let t = self.child_terms(peer, offer, payloads)?;
        let recv_id = self.take_recv_id(peer, t.send_id, now)?;
        let master_key = child_master_key(sa, None, &sa.ni, &sa.nr)?;
        self.add_mkt(sa, t.mkt(recv_id, master_key), t.ports(), now);
        let mut reply = vec![t.sa_reply(recv_id, None)];
        reply.extend(t.selector_reply());
        Ok(reply)
    }

    fn on_informational_request(&mut self, now: Instant, payloads: Vec<Payload>, mut sa: IkeSa) {
        let spi = sa.local_spi();
        let peer_name = self.peer_name(sa.peer);
        if payloads.notify(NotifyType::AUTHENTICATION_FAILED).is_some() {
            self.respond(&mut sa, ExchangeType::INFORMATIONAL, &[]);
            sa.window.forget_response();
            let e = NegotiationError::PeerReported(NotifyType::AUTHENTICATION_FAILED);
            return self.fail(sa, e.into(), true, now);
        }
        let mut reply = Vec::new();
        let mut delete_ike = false;
        for d in payloads.iter().filter_map(Payload::as_delete) {
            if d.protocol == ProtocolId::IKE {
                delete_ike = true;
            } else if d.protocol == ProtocolId::TCP_AO {
                let mut ours = Vec::new();
                for s in &d.spis {
                    let [send_id] = s.as_slice() else { continue };
                    let mkts = &mut self.peers[sa.peer].mkts;
                    if let Some(pos) = mkts.iter().position(|m| m.mkt.send_id == *send_id) {
                        let m = mkts.remove(pos);
                        ours.push(vec![m.mkt.recv_id]);
                        self.events.push_back(Event::MktDeleted {
                            peer: peer_name.clone(),
                            send_id: m.mkt.send_id,
                            recv_id: m.mkt.recv_id,
                            reason: "deleted by the peer",
                        });
                    }
                }
                if !ours.is_empty() {
                    reply.push(Payload::Delete(DeletePayload {
                        protocol: ProtocolId::TCP_AO,
                        spi_size: 1,
                        spis: ours,
                    }));
                }
            }
        }
        self.respond(&mut sa, ExchangeType::INFORMATIONAL, &reply);
        if !delete_ike {
            self.sas.insert(sa);
            return;
        }
        match sa.state {
            // The old SA after a rekey, or the redundant one of a collision.
            SaState::Rekeyed => self.retire_rekeyed_sa(sa, now),
            // The peer found the SA it created redundant (RFC 7296 2.8.2).
            SaState::Successor => self.remove_sa(sa, "deleted by the peer"),
            _ => match self.passive_successor(sa.peer, spi) {
                // RFC 7296 2.25.2: the peer rekeyed this SA without noticing
                // our own rekey of it: its new SA survives, ours is forgotten.
                Some(succ) if sa.ike_rekey.is_some() => {
                    sa.ike_rekey = None;
                    sa.window.complete();
                    self.events.push_back(Event::IkeRekeyCollision {
                        peer: peer_name,
                        kept_ours: false,
                    });
                    self.adopt_successor(&mut sa, succ, now);
                    self.retire_rekeyed_sa(sa, now);
                }
                _ => {
                    let peer = sa.peer;
                    if self.cfg.peers[peer].initiate {
                        self.peers[peer].next_attempt = Some(now + self.cfg.retry_interval);
                    }
                    self.remove_sa(sa, "deleted by the peer");
                    self.drop_rekey_leftovers(peer, "deleted by the peer");
                }
            },
        }
    }
}

fn derive_keys(
    suite: IkeSuite,
    gir: &Secret,
    ni: &[u8],
    nr: &[u8],
    spi_i: u64,
    spi_r: u64,
) -> Result<IkeKeys, crypto::CryptoError> {
    let seed = crypto::skeyseed(suite.prf, ni, nr, gir.as_bytes());
    crypto::derive_ike_keys(suite.prf, suite.encr, &seed, ni, nr, spi_i, spi_r)
}
