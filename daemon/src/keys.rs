//! Which keys go on which socket: the bridge between the MKTs the IKE
//! endpoint negotiated and the TCP sockets programs attached
//! (docs/attach.md).
//!
//! - A socket is *covered* by a peer when its remote address is the peer's
//!   address and one of the TCP ports (its local or remote port) is in the
//!   peer's `tcp_ports`; a listener is covered by every peer whose ports
//!   contain its local port.
//! - A covered socket holds the peer's live MKTs, or, when there is none,
//!   the peer's **guard**: a random MKT with KeyIDs 240-255 that was never
//!   sent anywhere, so that traffic fails closed (no segment of a covered
//!   socket goes out unsigned or is accepted unsigned).
//! - An attached `connect()` with no MKT yet waits for the negotiation, up
//!   to the acquire timeout, holding the socket (its owner is blocked in
//!   `connect()`); then it proceeds with the keys, or with the guard.
//! - Whenever a peer's MKTs change ([`KeyManager::mkts_changed`], from the
//!   endpoint's `MktsChanged` event, which gives the whole set in socket
//!   order; the manager keeps that copy and never asks the endpoint), every
//!   socket of that peer is taken again with `pidfd_getfd` and reconciled.
//! - When a peer's last MKT is gone (hard lifetime passed, deleted by the
//!   peer or the operator), the guard replaces it even as Current_key of a
//!   live connection (a forced delete): traffic fails closed.
//! - After a restart ([`KeyManager::restore`], docs/state.md) the sockets
//!   of the state file are taken back, and the MKTs recorded there
//!   (KeyIDs and deadlines, no keys) are *restored*: their keys stay on the
//!   sockets, untouched, until a new MKT with the peer exists (then they are
//!   stale keys like any other: deleted once no connection uses them) or
//!   until their hard lifetime (then they are forced out).
//!
//! The manager touches sockets only through [`SocketKeys`] (the kernel in
//! aokd, an in-memory kernel in the unit tests below) and is driven by
//! plain values: a [`KeyRequest`] in, an [`Answer`] out (now, or later as
//! [`Answered`] for a `connect` that waited); the attach transport's reply
//! channel stays with the event loop.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aokd_api::attach::{Installed, SocketRole};
use aokd_api::control::SocketStatus;
use aokd_proto::ike::MktView;
use aokd_proto::mkt::MasterKeyTuple;
use tracing::{debug, info, warn};

use crate::config::{BackendChoice, Config};
use crate::group_guard::{guard_listener, listener_prefixes, CoveredGroup};
use crate::kernel::{Backend, Support};
use crate::persist::{Op, Persist};
use crate::socket_keys::{group_guard_key, peer_guard_key, GuardSeed, KernelKeys, SocketKeys};
use crate::sockets::{reconcile_on, AttachedSocket, How, KeyIds, SocketRegistry};
use crate::state::{MktRecord, SocketRecord, StateSnapshot};

/// A peer as the key manager sees it.
struct CoveredPeer {
    /// Shared with [`KeyManager::peer_index`]'s key (one allocation per
    /// peer, not two: issue: scale, memory per peer).
    name: std::sync::Arc<str>,
    ip: IpAddr,
    /// Shared with the configuration (a group's members share the group's).
    ports: std::sync::Arc<[u16]>,
    backend: Backend,
    /// How long a restored MKT stays after a new one exists.
    overlap: Duration,
    /// The peer's MKTs in socket order (the last one becomes RNext), as
    /// the last [`aokd_proto::ike::Event::MktsChanged`] gave them.
    mkts: Vec<MasterKeyTuple>,
    /// Removed by a reload: it covers no new socket, and its sockets keep
    /// its keys until the endpoint reports them gone (hard lifetime), then
    /// its guard. Configured again, it is this entry again.
    removed: bool,
    /// The newest MKT when the peer's sockets were last reconciled.
    newest: Option<KeyIds>,
    /// Rollovers of the peer's sockets since start (see
    /// [`KeyManager::rollovers`]).
    rollovers: u64,
}

/// An attached socket to key: what the attach server validated, with the
/// socket aokd holds until it has answered.
#[derive(Debug)]
pub struct KeyRequest<S> {
    /// The caller's number for the request, to match a later [`Answered`]
    /// to its reply channel.
    pub id: u64,
    /// The socket (aokd's descriptor of it, for the kernel); dropped once
    /// the request is answered.
    pub socket: S,
    /// The socket as the registry will remember it (`peers` and `guarded`
    /// are filled in here).
    pub record: AttachedSocket,
    /// How long a `connect` may wait for an MKT (`None`: the acquire
    /// timeout).
    pub wait: Option<Duration>,
}

/// The answer to a [`KeyRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The socket is keyed (or not covered).
    Ok {
        /// Keys, the guard, or nothing (not covered).
        installed: Installed,
        /// The peers whose keys (or guards) are on it.
        peers: Vec<String>,
        /// The backend used.
        mechanism: Option<Backend>,
        /// The peers whose guard is on it (no MKT with them).
        guarded: Vec<String>,
        /// The peer groups whose prefix guard is on it (a listener).
        groups: Vec<String>,
    },
    /// The socket could not be keyed.
    Error(String),
}

/// A request answered later (a `connect` that waited).
#[derive(Debug)]
pub struct Answered {
    /// [`KeyRequest::id`].
    pub id: u64,
    /// The answer.
    pub answer: Answer,
}

/// A `connect` waiting for its peer's first MKT.
struct Waiting<S> {
    request: KeyRequest<S>,
    peer: usize,
    deadline: Instant,
    /// The socket's record, sent to the state file when it started to
    /// wait (committed while the negotiation runs, not after it).
    recorded: SocketRecord,
}

/// The waiting `connect`s, in the order they came (a sequence number),
/// indexed by peer and by deadline: releasing one peer's, finding the next
/// deadline and taking the due ones cost O(log n) in the number waiting
/// (plus the ones taken).
struct WaitingConnects<S> {
    next: u64,
    by_seq: BTreeMap<u64, Waiting<S>>,
    by_peer: BTreeMap<usize, BTreeSet<u64>>,
    deadlines: BTreeSet<(Instant, u64)>,
}

impl<S> WaitingConnects<S> {
    fn new() -> WaitingConnects<S> {
        WaitingConnects {
            next: 0,
            by_seq: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    fn push(&mut self, w: Waiting<S>) {
        self.next += 1;
        let seq = self.next;
        self.by_peer.entry(w.peer).or_default().insert(seq);
        self.deadlines.insert((w.deadline, seq));
        self.by_seq.insert(seq, w);
    }

    fn first_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(t, _)| t)
    }

    fn take(&mut self, seq: u64) -> Option<Waiting<S>> {
        let w = self.by_seq.remove(&seq)?;
        self.deadlines.remove(&(w.deadline, seq));
        if let Some(seqs) = self.by_peer.get_mut(&w.peer) {
            seqs.remove(&seq);
            if seqs.is_empty() {
                self.by_peer.remove(&w.peer);
            }
        }
        Some(w)
    }

    /// The ones whose deadline is not after `now`, in the order they came.
    fn take_due(&mut self, now: Instant) -> Vec<Waiting<S>> {
        let mut due: Vec<u64> = Vec::new();
        while let Some(&(t, seq)) = self.deadlines.first() {
            if t > now {
                break;
            }
            due.push(seq);
            self.deadlines.pop_first();
        }
        due.sort_unstable();
        due.into_iter().filter_map(|seq| self.take(seq)).collect()
    }

    /// The ones waiting for `peer`, in the order they came.
    fn take_peer(&mut self, peer: usize) -> Vec<Waiting<S>> {
        let seqs = self.by_peer.remove(&peer).unwrap_or_default();
        seqs.into_iter().filter_map(|seq| self.take(seq)).collect()
    }
}

/// What the event loop should do after an attach call.
#[derive(Debug)]
pub enum AttachOutcome {
    /// Answered now.
    Answered(Answer),
    /// The socket waits for an MKT with this peer (answered later, as an
    /// [`Answered`]): start negotiating now if nothing is under way.
    Waiting { peer: String },
}

/// An MKT from before a restart: its key is on sockets, aokd no longer
/// has it.
#[derive(Debug, Clone)]
pub struct RestoredMkt {
    /// What the state file says.
    pub record: MktRecord,
    /// `record.expires_at_unix` on the monotonic clock.
    pub expires_at: Instant,
    /// Its key stays on the sockets until then: the hard lifetime, or,
    /// once a new MKT with the peer exists, the overlap after that.
    pub keep_until: Instant,
    /// The overlap after a new MKT is over: now a stale key like any other.
    pub released: bool,
}

impl RestoredMkt {
    /// When [`KeyManager::handle_timeout`] must look at it next.
    fn deadline(&self) -> Instant {
        if self.released {
            self.expires_at
        } else {
            self.keep_until
        }
    }
}

/// The restored MKTs, in the state file's order (a sequence number),
/// indexed by peer and by [`RestoredMkt::deadline`]; every change to a
/// deadline goes through [`RestoredMkts::update`], which keeps the index in
/// step.
#[derive(Default)]
struct RestoredMkts {
    next: u64,
    /// Each with its peer's index in [`KeyManager::peers`].
    by_seq: BTreeMap<u64, (usize, RestoredMkt)>,
    by_peer: BTreeMap<usize, BTreeSet<u64>>,
    deadlines: BTreeSet<(Instant, u64)>,
}

impl RestoredMkts {
    fn push(&mut self, peer: usize, r: RestoredMkt) {
        self.next += 1;
        let seq = self.next;
        self.by_peer.entry(peer).or_default().insert(seq);
        self.deadlines.insert((r.deadline(), seq));
        self.by_seq.insert(seq, (peer, r));
    }

    fn first_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(t, _)| t)
    }

    fn get(&self, seq: u64) -> Option<&RestoredMkt> {
        self.by_seq.get(&seq).map(|(_, r)| r)
    }

    /// Changes the one with `seq`, keeping the deadline index in step.
    fn update(&mut self, seq: u64, f: impl FnOnce(&mut RestoredMkt)) {
        if let Some((_, r)) = self.by_seq.get_mut(&seq) {
            self.deadlines.remove(&(r.deadline(), seq));
            f(r);
            self.deadlines.insert((r.deadline(), seq));
        }
    }

    fn remove(&mut self, seq: u64) -> Option<(usize, RestoredMkt)> {
        let (peer, r) = self.by_seq.remove(&seq)?;
        self.deadlines.remove(&(r.deadline(), seq));
        if let Some(seqs) = self.by_peer.get_mut(&peer) {
            seqs.remove(&seq);
            if seqs.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
        Some((peer, r))
    }

    /// The sequence numbers of `peer`'s, in order.
    fn of_peer(&self, peer: usize) -> Vec<u64> {
        self.by_peer
            .get(&peer)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The sequence numbers of those whose deadline is not after `now`, in
    /// order.
    fn due(&self, now: Instant) -> Vec<u64> {
        let mut due: Vec<u64> = self
            .deadlines
            .iter()
            .take_while(|&&(t, _)| t <= now)
            .map(|&(_, seq)| seq)
            .collect();
        due.sort_unstable();
        due
    }

    /// Every one, in order (status answers).
    fn iter(&self) -> impl Iterator<Item = &RestoredMkt> {
        self.by_seq.values().map(|(_, r)| r)
    }
}

/// Peers with sockets whose stale keys are still in use: reconciled again
/// at `at`, in the order they were listed.
struct Retry {
    at: Instant,
    peers: Vec<usize>,
    listed: BTreeSet<usize>,
}

/// KeyIDs the endpoint must not negotiate with `peer` before `until`
/// (they are on live sockets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The peer's name.
    pub peer: String,
    /// SendID.
    pub send_id: u8,
    /// RecvID.
    pub recv_id: u8,
    /// The key's hard lifetime.
    pub until: Instant,
}

/// What [`KeyManager::restore`] found, for the log and the endpoint.
#[derive(Debug, Default)]
pub struct Restored {
    /// Sockets taken back.
    pub sockets: usize,
    /// Socket records dropped (owner gone, descriptor reused, no peer).
    pub sockets_gone: usize,
    /// MKTs whose keys stay on the sockets until replaced or expired.
    pub reservations: Vec<Reservation>,
    /// MKT records dropped because their hard lifetime passed while aokd
    /// was not running.
    pub mkts_expired: usize,
    /// The KeyIDs of those MKTs (peer, SendID, RecvID), for the endpoint
    /// to avoid in new MKTs for a while (`Endpoint::note_ended_key_ids`).
    pub ended: Vec<(String, u8, u8)>,
    /// Configured peers with a restored socket or MKT record.
    pub peers: Vec<String>,
}

/// Keys on sockets for every configured peer, put there through `K`.
///
/// Everything an event or a wake-up does costs O(log n) in the number of
/// peers, sockets, waiting `connect`s and restored MKTs, plus the work for
/// the peer or sockets concerned: peers are found by name, address and
/// port through indexes, and the deadlines of [`KeyManager::poll_timeout`]
/// are kept ordered as they change. Only the status answers
/// ([`KeyManager::status`], [`KeyManager::restored`]) visit everything.
pub struct KeyManager<K: SocketKeys = KernelKeys> {
    keys: K,
    peers: Vec<CoveredPeer>,
    /// Peer name -> index in `peers` (names are unique).
    peer_index: BTreeMap<std::sync::Arc<str>, usize>,
    /// (canonical address, peer): the peers with each address, in `peers`
    /// order. Sets of pairs rather than a list per key: O(log n) to add or
    /// take out a peer group's member among thousands on one port, and no
    /// allocation of its own per address (issue: scale).
    peers_by_ip: BTreeSet<(IpAddr, usize)>,
    /// (TCP port, peer): the peers with each port in `tcp_ports`, in
    /// `peers` order.
    peers_by_port: BTreeSet<(u16, usize)>,
    /// The `[[peer_group]]`s, in file order (read at start only).
    groups: Vec<CoveredGroup>,
    /// The key of every group prefix guard ([`group_guard_key`]).
    group_guard: MasterKeyTuple,
    /// What each peer's guard is derived from ([`KeyManager::guard_of`]).
    guard_seed: GuardSeed,
    registry: SocketRegistry,
    waiting: WaitingConnects<K::Socket>,
    acquire_timeout: Duration,
    /// Peers with sockets whose stale keys are still in use (the peer has
    /// not switched to the new MKT yet): reconciled again at this time.
    retry: Option<Retry>,
    /// MKTs from before a restart, until their hard lifetime.
    restored: RestoredMkts,
    /// The registry ids of the sockets taken back from the state file (the
    /// only ones that can hold a restored MKT).
    restored_sockets: BTreeSet<u64>,
    /// Where socket records go.
    persist: Persist,
    /// What the kernel supports (for peers added by a reload).
    support: Support,
}

/// How often sockets with deferred key deletions are looked at again.
const DEFERRED_RETRY: Duration = Duration::from_secs(1);

/// Why no backend can serve a peer.
#[derive(Debug, thiserror::Error)]
#[error("peer {peer:?}: backend {wanted} is not available in this kernel ({have})")]
pub struct BackendUnavailable {
    peer: String,
    wanted: &'static str,
    have: String,
}

/// The state file's text for a role.
fn role_name(role: SocketRole) -> &'static str {
    match role {
        SocketRole::Connect => "connect",
        SocketRole::Listen => "listen",
        SocketRole::Accepted => "accepted",
    }
}

fn parse_role(s: &str) -> Option<SocketRole> {
    match s {
        "connect" => Some(SocketRole::Connect),
        "listen" => Some(SocketRole::Listen),
        "accepted" => Some(SocketRole::Accepted),
        _ => None,
    }
}

/// The state file's record of an attached socket.
pub fn socket_record(s: &AttachedSocket) -> SocketRecord {
    SocketRecord {
        pid: s.pid,
        fd: s.fd,
        cookie: s.cookie,
        role: role_name(s.role).to_string(),
        local: s.local.map(|a| a.to_string()),
        remote: s.remote.map(|a| a.to_string()),
        peers: s.peers.clone(),
        attached_at_unix: unix(s.attached_at),
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The backend that serves peer `p` on a kernel with `support`.
fn resolve_backend(
    p: &crate::config::PeerConfig,
    support: Support,
) -> Result<Backend, BackendUnavailable> {
    let backend = match p.backend {
        BackendChoice::Auto => support.preferred(),
        BackendChoice::TcpAo => support.tcp_ao.then_some(Backend::Ao),
        BackendChoice::TcpMd5 => support.tcp_md5.then_some(Backend::Md5),
    };
    backend.ok_or_else(|| BackendUnavailable {
        peer: p.name.clone(),
        wanted: match p.backend {
            BackendChoice::Auto => "auto (TCP-AO or TCP-MD5)",
            BackendChoice::TcpAo => "tcp-ao",
            BackendChoice::TcpMd5 => "tcp-md5",
        },
        have: format!(
            "TCP-AO {}, TCP-MD5 {}",
            if support.tcp_ao { "present" } else { "absent" },
            if support.tcp_md5 { "present" } else { "absent" }
        ),
    })
}

/// Whether peer `p` covers socket `s` (the rule of
/// [`KeyManager::attach`]'s coverage, for one peer and one socket).
fn covers(p: &CoveredPeer, s: &AttachedSocket) -> bool {
    let local_port = s.local.map(|l| l.port());
    match s.role {
        SocketRole::Listen => local_port.is_some_and(|lp| p.ports.contains(&lp)),
        SocketRole::Connect | SocketRole::Accepted => s.remote.is_some_and(|r| {
            crate::kernel::canonical(r.ip()) == crate::kernel::canonical(p.ip)
                && (p.ports.contains(&r.port())
                    || local_port.is_some_and(|lp| p.ports.contains(&lp)))
        }),
    }
}

impl KeyManager<KernelKeys> {
    /// Resolves each peer's backend against what the kernel supports.
    pub fn new(cfg: &Config, support: Support) -> Result<KeyManager, BackendUnavailable> {
        KeyManager::with_keys(cfg, support, KernelKeys)
    }
}

impl<K: SocketKeys> KeyManager<K> {
    /// [`KeyManager::new`], reaching sockets through `keys`.
    pub fn with_keys(
        cfg: &Config,
        support: Support,
        keys: K,
    ) -> Result<KeyManager<K>, BackendUnavailable> {
        let mut peers = Vec::new();
        // One line for all (a route server has thousands of peers), each
        // peer's at debug level.
        let mut chosen: BTreeMap<String, usize> = BTreeMap::new();
        for p in &cfg.peers {
            let backend = resolve_backend(p, support)?;
            debug!(peer = %p.name, backend = %backend, configured = %p.backend, "key backend chosen");
            *chosen.entry(backend.to_string()).or_default() += 1;
            peers.push(CoveredPeer {
                name: p.name.as_str().into(),
                ip: p.remote,
                ports: p.tcp_ports.clone(),
                backend,
                overlap: crate::config::mkt_overlap(&p.lifetimes),
                mkts: Vec::new(),
                removed: false,
                newest: None,
                rollovers: 0,
            });
        }
        let mut groups = Vec::with_capacity(cfg.groups.len());
        for g in &cfg.groups {
            groups.push(CoveredGroup {
                name: g.name.clone(),
                prefixes: g.prefixes.clone(),
                ports: g.template.tcp_ports.clone(),
                backend: resolve_backend(&g.template, support)?,
            });
        }
        if !chosen.is_empty() {
            let list: Vec<String> = chosen.iter().map(|(b, n)| format!("{b}={n}")).collect();
            info!(peers = %list.join(","), "key backends chosen");
        }
        let mut km = KeyManager {
            keys,
            peers,
            peer_index: BTreeMap::new(),
            peers_by_ip: BTreeSet::new(),
            peers_by_port: BTreeSet::new(),
            groups,
            group_guard: group_guard_key(&mut rand_core::OsRng),
            guard_seed: GuardSeed::new(&mut rand_core::OsRng),
            registry: SocketRegistry::new(),
            waiting: WaitingConnects::new(),
            acquire_timeout: cfg.daemon.acquire_timeout,
            retry: None,
            restored: RestoredMkts::default(),
            restored_sockets: BTreeSet::new(),
            persist: Persist::disabled(),
            support,
        };
        for i in 0..km.peers.len() {
            km.peer_index.entry(km.peers[i].name.clone()).or_insert(i);
            km.index_coverage(i);
        }
        Ok(km)
    }

    /// Puts peer `i` in the address and port indexes (coverage of new
    /// sockets), in `peers` order. O(its ports × log n + the peers listed
    /// with them).
    fn index_coverage(&mut self, i: usize) {
        let p = &self.peers[i];
        self.peers_by_ip.insert((crate::kernel::canonical(p.ip), i));
        for &port in p.ports.iter() {
            // Once per peer, even if its ports repeat.
            self.peers_by_port.insert((port, i));
        }
    }

    /// Takes peer `i` out of the address and port indexes.
    fn unindex_coverage(&mut self, i: usize) {
        let p = &self.peers[i];
        self.peers_by_ip
            .remove(&(crate::kernel::canonical(p.ip), i));
        for &port in p.ports.iter() {
            self.peers_by_port.remove(&(port, i));
        }
    }

    /// Checks that every peer of `cfg` can be served by this kernel (a
    /// reload, before anything changes).
    pub fn check(&self, cfg: &Config) -> Result<(), BackendUnavailable> {
        for p in &cfg.peers {
            resolve_backend(p, self.support)?;
        }
        for g in &cfg.groups {
            resolve_backend(&g.template, self.support)?;
        }
        Ok(())
    }

    /// A reload added peer `p` (or configured a removed one again, whose
    /// entry, MKTs and sockets it takes back): from now on it covers new
    /// sockets, and the attached sockets it covers (a listener on one of
    /// its ports) get its guard, or its keys once it has MKTs. Call
    /// [`KeyManager::check`] first; a backend this kernel lacks leaves the
    /// peer out (logged). Visits every attached socket: a reload, not a
    /// datagram.
    pub fn add_peer(&mut self, p: &crate::config::PeerConfig, now: Instant) -> Vec<Answered> {
        let backend = match resolve_backend(p, self.support) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "peer added by the reload cannot be keyed");
                return Vec::new();
            }
        };
        let idx = match self.peer_index.get(p.name.as_str()) {
            Some(&i) => {
                let old = &mut self.peers[i];
                old.removed = false;
                old.ip = p.remote;
                old.ports = p.tcp_ports.clone();
                old.overlap = crate::config::mkt_overlap(&p.lifetimes);
                if old.backend != backend {
                    warn!(peer = %p.name, running = %old.backend, configured = %backend,
                        "peer configured again keeps its backend until a restart");
                }
                i
            }
            None => {
                self.peers.push(CoveredPeer {
                    name: p.name.as_str().into(),
                    ip: p.remote,
                    ports: p.tcp_ports.clone(),
                    backend,
                    overlap: crate::config::mkt_overlap(&p.lifetimes),
                    mkts: Vec::new(),
                    removed: false,
                    newest: None,
                    rollovers: 0,
                });
                let i = self.peers.len() - 1;
                self.peer_index.insert(self.peers[i].name.clone(), i);
                i
            }
        };
        info!(peer = %p.name, backend = %self.peers[idx].backend, "key backend chosen (reload)");
        self.index_coverage(idx);
        self.cover_attached(idx);
        self.rekey_peer(idx, now, false)
    }

    /// Registers peer `idx` on the attached sockets it covers and does not
    /// hold yet (recorded in the state file).
    fn cover_attached(&mut self, idx: usize) {
        let p = &self.peers[idx];
        // Only the listeners and the sockets toward the peer's address can
        // be covered by it: a route server's thousandth member does not
        // look at the other members' sockets.
        let ids: Vec<u64> = self
            .registry
            .toward(p.ip)
            .filter(|s| !s.peers.iter().any(|n| **n == *p.name) && covers(p, s))
            .map(|s| s.id)
            .collect();
        for id in ids {
            if let Some(rec) = self.registry.add_peer(id, &self.peers[idx].name) {
                self.persist.send(Op::PutSocket(socket_record(&rec)));
            }
        }
    }

    /// A reload removed the peer named `name`: it covers no new socket and
    /// a `connect` waiting for it proceeds now (with its keys or its
    /// guard); the sockets it keys keep its keys until the endpoint
    /// reports them gone ([`KeyManager::mkts_changed`] at their hard
    /// lifetime), then hold its guard: never unkeyed. Returns the requests
    /// answered.
    pub fn remove_peer(&mut self, name: &str) -> Vec<Answered> {
        let Some(&idx) = self.peer_index.get(name) else {
            return Vec::new();
        };
        if self.peers[idx].removed {
            return Vec::new();
        }
        self.unindex_coverage(idx);
        self.peers[idx].removed = true;
        let mut answered = Vec::new();
        for w in self.waiting.take_peer(idx) {
            answered.push(self.release(w));
        }
        answered
    }

    /// A reload changed peer `p`: its address and ports apply to sockets
    /// attached from now on (and to the attached sockets they now cover);
    /// sockets it keys already keep its keys; the overlap of restored MKTs
    /// follows its lifetimes. The backend is not changed (a restart is
    /// needed, [`crate::reload::plan`]). Returns the requests answered.
    pub fn update_peer(&mut self, p: &crate::config::PeerConfig, now: Instant) -> Vec<Answered> {
        let Some(&idx) = self.peer_index.get(p.name.as_str()) else {
            return Vec::new();
        };
        let e = &self.peers[idx];
        let coverage_changed = e.ip != p.remote || e.ports != p.tcp_ports;
        self.peers[idx].overlap = crate::config::mkt_overlap(&p.lifetimes);
        if !coverage_changed {
            return Vec::new();
        }
        self.unindex_coverage(idx);
        self.peers[idx].ip = p.remote;
        self.peers[idx].ports = p.tcp_ports.clone();
        self.index_coverage(idx);
        self.cover_attached(idx);
        self.rekey_peer(idx, now, false)
    }

    /// Records attached sockets through `persist` from now on.
    pub fn set_persist(&mut self, persist: Persist) {
        self.persist = persist;
    }

    /// Takes back what the state file says aokd had before it stopped:
    /// each recorded socket whose owner still has it (same `SO_COOKIE`) is
    /// registered again, the others are forgotten; each recorded MKT of a
    /// configured peer whose hard lifetime has not passed is restored (its
    /// KeyIDs are returned, to be reserved in the endpoint). Then every
    /// socket of a peer without a restored MKT gets the guard, forced:
    /// whatever key it has expired while aokd was away.
    pub fn restore(&mut self, snapshot: &StateSnapshot, now: Instant, now_unix: u64) -> Restored {
        let mut out = Restored::default();
        for rec in &snapshot.mkts {
            let peer = self.peer_index.get(rec.peer.as_str()).copied();
            let configured = peer.is_some();
            let Some(peer) = peer.filter(|_| rec.expires_at_unix > now_unix) else {
                if configured {
                    out.mkts_expired += 1;
                    out.ended.push((rec.peer.clone(), rec.send_id, rec.recv_id));
                    info!(peer = %rec.peer, send_id = rec.send_id, recv_id = rec.recv_id,
                        "MKT from before the restart expired while aokd was not running");
                } else {
                    info!(peer = %rec.peer, send_id = rec.send_id, recv_id = rec.recv_id,
                        "MKT record of a peer no longer configured dropped");
                }
                self.persist.send(Op::DeleteMkt {
                    peer: rec.peer.clone(),
                    send_id: rec.send_id,
                    recv_id: rec.recv_id,
                });
                continue;
            };
            let expires_at = now + Duration::from_secs(rec.expires_at_unix - now_unix);
            info!(peer = %rec.peer, send_id = rec.send_id, recv_id = rec.recv_id,
                key_fingerprint = %rec.key_fingerprint, expires_in_s = rec.expires_at_unix - now_unix,
                "MKT from before the restart kept on its sockets until replaced or expired");
            out.reservations.push(Reservation {
                peer: rec.peer.clone(),
                send_id: rec.send_id,
                recv_id: rec.recv_id,
                until: expires_at,
            });
            self.restored.push(
                peer,
                RestoredMkt {
                    record: rec.clone(),
                    expires_at,
                    keep_until: expires_at,
                    released: false,
                },
            );
        }
        for rec in &snapshot.sockets {
            match self.restore_socket(rec) {
                Ok(()) => out.sockets += 1,
                Err(why) => {
                    out.sockets_gone += 1;
                    info!(pid = rec.pid, fd = rec.fd, cookie = rec.cookie, reason = %why,
                        "attached socket from before the restart is gone");
                    self.persist.send(Op::DeleteSocket(rec.cookie));
                }
            }
        }
        let with_mkts: BTreeSet<&str> = snapshot.mkts.iter().map(|m| m.peer.as_str()).collect();
        for idx in 0..self.peers.len() {
            let name = &self.peers[idx].name;
            let had_state =
                with_mkts.contains(&**name) || self.registry.by_peer(name).next().is_some();
            if had_state {
                out.peers.push(name.to_string());
            }
            // No connect waits yet: nothing to answer.
            let answered = self.rekey_peer(idx, now, false);
            debug_assert!(answered.is_empty());
        }
        out
    }

    fn restore_socket(&mut self, rec: &SocketRecord) -> Result<(), String> {
        let role = parse_role(&rec.role).ok_or_else(|| format!("unknown role {:?}", rec.role))?;
        let peers: Vec<String> = rec
            .peers
            .iter()
            .filter(|p| self.peer_index.contains_key(p.as_str()))
            .cloned()
            .collect();
        let addr = |a: &Option<String>| a.as_deref().and_then(|s| s.parse::<SocketAddr>().ok());
        let local = addr(&rec.local);
        // A listener of a peer group's port is covered by the group even
        // with no member (its record names no peer then).
        let groups = self.groups_covering(role, local);
        if peers.is_empty() && groups.is_empty() {
            return Err("none of its peers is configured any more".into());
        }
        let sock = self
            .keys
            .reacquire(rec.pid, rec.fd, rec.cookie)
            .map_err(|e| e.to_string())?;
        // The groups' guard keys it had are kept (TCP-AO) or replaced in
        // place (TCP-MD5); those of groups configured since are added.
        let group_names = match self.guard_groups(&sock, local, &groups) {
            Ok(names) => names,
            Err(e) => {
                warn!(pid = rec.pid, fd = rec.fd, error = %e, "cannot put the peer group guard on a listener");
                Vec::new()
            }
        };
        let socket = AttachedSocket {
            id: 0,
            pid: rec.pid,
            fd: rec.fd,
            cookie: rec.cookie,
            role,
            local,
            remote: addr(&rec.remote),
            peers,
            guarded: Vec::new(),
            groups: group_names,
            attached_at: UNIX_EPOCH + Duration::from_secs(rec.attached_at_unix),
        };
        info!(pid = rec.pid, fd = rec.fd, role = role_name(role), peers = %socket.peers.join(","),
            groups = %socket.groups.join(","), "attached socket from before the restart taken back");
        let id = self.registry.add(socket);
        self.restored_sockets.insert(id);
        Ok(())
    }

    /// MKTs from before a restart that aokd still accounts for (their
    /// KeyIDs, their deadlines), in the state file's order: O(n).
    pub fn restored(&self) -> Vec<&RestoredMkt> {
        self.restored.iter().collect()
    }

    /// The restored MKTs that an attached socket may still hold: those of
    /// peers with a socket taken back from the state file that is still
    /// open (`aoctl mkts`; a status answer: O(n), after dropping the
    /// sockets whose owner closed them). A restored MKT of a peer whose
    /// sockets are all gone is on no socket: only its KeyIDs are kept out
    /// of use.
    pub fn restored_in_use(&mut self) -> Vec<&RestoredMkt> {
        for (s, _) in self.registry.prune_with(&self.keys) {
            self.restored_sockets.remove(&s.id);
            self.persist.send(Op::DeleteSocket(s.cookie));
        }
        let mut held: BTreeSet<usize> = BTreeSet::new();
        self.restored_sockets
            .retain(|id| self.registry.get(*id).is_some());
        for id in &self.restored_sockets {
            if let Some(s) = self.registry.get(*id) {
                held.extend(
                    s.peers
                        .iter()
                        .filter_map(|p| self.peer_index.get(p.as_str())),
                );
            }
        }
        self.restored
            .by_seq
            .values()
            .filter(|(peer, _)| held.contains(peer))
            .map(|(_, r)| r)
            .collect()
    }

    /// Rollovers since start of the sockets of `peer` (`None`: no such
    /// peer): times a socket holding one of its MKTs moved to a newer one.
    /// TCP-AO: the old MKT was deleted from a socket that keeps a newer
    /// one (after the connection switched to it, or at once on a socket
    /// not yet connected); TCP-MD5: the socket's key was replaced by a
    /// newer MKT's.
    pub fn rollovers(&self, peer: &str) -> Option<u64> {
        self.peer_index.get(peer).map(|&i| self.peers[i].rollovers)
    }

    /// The backend serving a peer, for `aoctl status`.
    pub fn backend(&self, peer: &str) -> Option<Backend> {
        self.peer_index.get(peer).map(|&i| self.peers[i].backend)
    }

    fn covering(
        &self,
        role: SocketRole,
        local: Option<SocketAddr>,
        remote: Option<SocketAddr>,
    ) -> Vec<usize> {
        let local_port = local.map(|l| l.port());
        match role {
            SocketRole::Listen => local_port.map_or_else(Vec::new, |lp| {
                self.peers_by_port
                    .range((lp, 0)..=(lp, usize::MAX))
                    .map(|&(_, i)| i)
                    .collect()
            }),
            SocketRole::Connect | SocketRole::Accepted => {
                let Some(r) = remote else {
                    return Vec::new();
                };
                let ip = crate::kernel::canonical(r.ip());
                self.peers_by_ip
                    .range((ip, 0)..=(ip, usize::MAX))
                    .map(|&(_, i)| i)
                    .filter(|&i| {
                        let p = &self.peers[i];
                        p.ports.contains(&r.port())
                            || local_port.is_some_and(|lp| p.ports.contains(&lp))
                    })
                    .collect()
            }
        }
    }

    /// The peer groups (indexes in `groups`) whose prefix guard a socket
    /// with `role` bound to `local` gets: a listener on one of their ports.
    fn groups_covering(&self, role: SocketRole, local: Option<SocketAddr>) -> Vec<usize> {
        match (role, local) {
            (SocketRole::Listen, Some(l)) => (0..self.groups.len())
                .filter(|&i| self.groups[i].covers_port(l.port()))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Puts the prefix guards of `groups` on the listener `sock`, bound to
    /// `local` ([`crate::group_guard`]); returns the groups' names.
    fn guard_groups(
        &self,
        sock: &K::Socket,
        local: Option<SocketAddr>,
        groups: &[usize],
    ) -> Result<Vec<String>, String> {
        for backend in [Backend::Md5, Backend::Ao] {
            let of: Vec<&CoveredGroup> = groups
                .iter()
                .map(|&i| &self.groups[i])
                .filter(|g| g.backend == backend)
                .collect();
            if of.is_empty() {
                continue;
            }
            let prefixes = listener_prefixes(local, of.iter().copied());
            guard_listener(&self.keys, sock, backend, &prefixes, &self.group_guard).map_err(
                |e| {
                    let names: Vec<&str> = of.iter().map(|g| g.name.as_str()).collect();
                    format!("peer group {}: {e}", names.join(", "))
                },
            )?;
        }
        Ok(groups
            .iter()
            .map(|&i| self.groups[i].name.clone())
            .collect())
    }

    /// The backend of the peer group named `name`.
    fn group_backend(&self, name: &str) -> Option<Backend> {
        self.groups
            .iter()
            .find(|g| g.name == name)
            .map(|g| g.backend)
    }

    /// Puts the right keys (or guards) for `peers`, and the prefix guards
    /// of `groups`, on the socket of `request`; returns the record to
    /// register and the guarded peers.
    fn key_socket(
        &self,
        request: &KeyRequest<K::Socket>,
        peers: &[usize],
        groups: &[usize],
    ) -> Result<(AttachedSocket, Vec<String>), String> {
        let mut record = request.record.clone();
        record.peers.clear();
        // The groups' guard first: a listener never holds a member's keys
        // without the guard of the rest of its group's prefixes.
        record.groups = self.guard_groups(&request.socket, record.local, groups)?;
        let mut guarded = Vec::new();
        for &i in peers {
            let p = &self.peers[i];
            let desired = &p.mkts;
            let guard_key = desired.is_empty().then(|| self.guard_of(i));
            let guard = guard_key.as_ref();
            let how = How {
                keep: &[],
                listening: record.role == SocketRole::Listen,
                // No MKT: the guard goes in even as Current_key.
                force: desired.is_empty(),
            };
            reconcile_on(
                &self.keys,
                &request.socket,
                p.backend,
                p.ip,
                desired,
                guard,
                how,
            )
            .map_err(|e| format!("peer {}: {e}", p.name))?;
            record.peers.push(p.name.to_string());
            if desired.is_empty() {
                guarded.push(p.name.to_string());
            }
        }
        Ok((record, guarded))
    }

    fn mechanism(&self, peers: &[usize], groups: &[String]) -> Option<Backend> {
        peers
            .first()
            .map(|&i| self.peers[i].backend)
            .or_else(|| groups.first().and_then(|g| self.group_backend(g)))
    }

    /// Handles one attach request at `now`: keys the socket and answers,
    /// or, for a `connect` with no MKT yet, keeps it under the guard until
    /// the peer's first MKT or the acquire timeout.
    pub fn attach(&mut self, request: KeyRequest<K::Socket>, now: Instant) -> AttachOutcome {
        let role = request.record.role;
        let peers = self.covering(role, request.record.local, request.record.remote);
        let groups = self.groups_covering(role, request.record.local);
        if peers.is_empty() && groups.is_empty() {
            return AttachOutcome::Answered(Answer::Ok {
                installed: Installed::NotCovered,
                peers: Vec::new(),
                mechanism: None,
                guarded: Vec::new(),
                groups: Vec::new(),
            });
        }
        let (record, guarded) = match self.key_socket(&request, &peers, &groups) {
            Ok(r) => r,
            Err(e) => {
                warn!(pid = request.record.pid, fd = request.record.fd, error = %e, "cannot key an attached socket");
                return AttachOutcome::Answered(Answer::Error(e));
            }
        };
        if role == SocketRole::Connect && !guarded.is_empty() {
            let wait = request.wait.unwrap_or(self.acquire_timeout);
            let peer = peers[0];
            let name = self.peers[peer].name.clone();
            info!(pid = request.record.pid, fd = request.record.fd, peer = %name, wait_ms = wait.as_millis() as u64,
                "connect waits for an MKT under the guard");
            // Its record goes to the state file now, without waiting: it is
            // durable by the time the MKT is, and the answer then need not
            // wait for a commit of its own.
            let recorded = socket_record(&record);
            self.persist.send(Op::PutSocket(recorded.clone()));
            self.waiting.push(Waiting {
                request,
                peer,
                deadline: now + wait,
                recorded,
            });
            return AttachOutcome::Waiting {
                peer: name.to_string(),
            };
        }
        AttachOutcome::Answered(self.finish(record, &peers, guarded, None))
    }

    /// Registers a keyed socket, sends its record to the state file and
    /// gives the answer. The runtime hands the answer to the socket's owner
    /// only once the record is durable (`crate::held`): once the owner goes
    /// on with the socket, a restarted aokd must be able to find it.
    ///
    /// `recorded`: the record already sent for this socket (a `connect`
    /// that waited); it is not written again when it has not changed.
    fn finish(
        &mut self,
        mut record: AttachedSocket,
        peers: &[usize],
        guarded: Vec<String>,
        recorded: Option<&SocketRecord>,
    ) -> Answer {
        let mechanism = self.mechanism(peers, &record.groups);
        // A listener with only a group's guard (no member yet) is guarded.
        let installed = if guarded.is_empty() && !peers.is_empty() {
            Installed::Keys
        } else {
            Installed::Guard
        };
        record.guarded = guarded.clone();
        let names = record.peers.clone();
        let groups = record.groups.clone();
        let rec = socket_record(&record);
        if recorded != Some(&rec) {
            self.persist.send(Op::PutSocket(rec));
        }
        self.registry.add(record);
        Answer::Ok {
            installed,
            peers: names,
            mechanism,
            guarded,
            groups,
        }
    }

    /// The earliest deadline: a waiting `connect`, a deferred re-key, or a
    /// restored MKT's end of overlap or hard lifetime. O(log n): read from
    /// the ordered deadline indexes.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let waiting = self.waiting.first_deadline();
        let retry = self.retry.as_ref().map(|r| r.at);
        let restored = self.restored.first_deadline();
        [waiting, retry, restored].into_iter().flatten().min()
    }

    /// Lets waiting `connect`s whose acquire timeout passed proceed under
    /// the guard, retries deferred key deletions, and lets restored MKTs
    /// go once superseded or expired. Returns the requests answered.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Answered> {
        let mut answered = Vec::new();
        for w in self.waiting.take_due(now) {
            answered.push(self.release(w));
        }
        if let Some(retry) = self.retry.take() {
            if retry.at <= now {
                for peer in retry.peers {
                    answered.extend(self.rekey_peer(peer, now, false));
                }
            } else {
                self.retry = Some(retry);
            }
        }
        // Restored MKTs: superseded ones leave once their overlap is over
        // (like any stale key: not while a connection still uses it);
        // expired ones are forced out. Only those whose deadline passed
        // can be either (a deadline is never after the hard lifetime).
        let due = self.restored.due(now);
        let mut superseded: Vec<usize> = Vec::new();
        let mut superseded_set: BTreeSet<usize> = BTreeSet::new();
        for &seq in &due {
            let Some(&(peer, ref r)) = self.restored.by_seq.get(&seq) else {
                continue;
            };
            if !r.released && r.keep_until <= now && r.keep_until < r.expires_at {
                // From now on it only waits for its hard lifetime.
                self.restored.update(seq, |r| r.released = true);
                if superseded_set.insert(peer) {
                    superseded.push(peer);
                }
            }
        }
        let mut forced: Vec<usize> = Vec::new();
        let mut forced_set: BTreeSet<usize> = BTreeSet::new();
        for &seq in &due {
            let expired = self.restored.get(seq).is_some_and(|r| r.expires_at <= now);
            if !expired {
                continue;
            }
            let Some((peer, r)) = self.restored.remove(seq) else {
                continue;
            };
            let rec = r.record;
            info!(peer = %rec.peer, send_id = rec.send_id, recv_id = rec.recv_id,
                "MKT from before the restart reached its hard lifetime: removed from its sockets");
            self.persist.send(Op::DeleteMkt {
                peer: rec.peer.clone(),
                send_id: rec.send_id,
                recv_id: rec.recv_id,
            });
            if forced_set.insert(peer) {
                forced.push(peer);
            }
        }
        for &peer in superseded.iter().filter(|p| !forced_set.contains(p)) {
            answered.extend(self.rekey_peer(peer, now, false));
        }
        for peer in forced {
            // Its key may still be Current_key of a connection whose peer
            // never switched: forced out now.
            answered.extend(self.rekey_peer(peer, now, true));
        }
        answered
    }

    /// Keys a waiting `connect` with what its peer has now (the MKTs, or
    /// the guard) and answers it.
    fn release(&mut self, w: Waiting<K::Socket>) -> Answered {
        let peers = [w.peer];
        let id = w.request.id;
        let answer = match self.key_socket(&w.request, &peers, &[]) {
            Ok((record, guarded)) => self.finish(record, &peers, guarded, Some(&w.recorded)),
            Err(e) => Answer::Error(e),
        };
        // The request, and with it aokd's descriptor of the socket, is
        // dropped here.
        Answered { id, answer }
    }

    /// The MKTs of `peer` are now `mkts` (in socket order, from
    /// [`aokd_proto::ike::Event::MktsChanged`]): re-keys every socket of
    /// the peer and releases the `connect`s that waited for them. Returns
    /// the requests answered.
    /// The MKTs of `peer` as last handed to [`KeyManager::mkts_changed`]
    /// (none for a peer the manager does not know). O(log n).
    pub fn peer_mkts(&self, peer: &str) -> &[MasterKeyTuple] {
        self.peer_index
            .get(peer)
            .map_or(&[][..], |&i| &self.peers[i].mkts[..])
    }

    pub fn mkts_changed(&mut self, peer: &str, mkts: &[MktView], now: Instant) -> Vec<Answered> {
        let Some(&idx) = self.peer_index.get(peer) else {
            return Vec::new();
        };
        self.peers[idx].mkts = mkts.iter().map(|m| m.mkt.clone()).collect();
        self.rekey_peer(idx, now, false)
    }

    /// Peer `idx`'s guard ([`peer_guard_key`]): made when a socket needs
    /// it, the same each time.
    fn guard_of(&self, idx: usize) -> MasterKeyTuple {
        peer_guard_key(&self.guard_seed, &self.peers[idx].name)
    }

    /// [`KeyManager::mkts_changed`] with the MKTs the manager holds;
    /// `force` also replaces stale keys that connections still use as
    /// Current_key (their MKT expired). With no MKT and no restored one the
    /// guard is always forced in.
    ///
    /// `idx` is the peer's index in `peers`; the cost is that of the
    /// peer's own sockets, waiting `connect`s and restored MKTs.
    fn rekey_peer(&mut self, idx: usize, now: Instant, force: bool) -> Vec<Answered> {
        let mut answered = Vec::new();
        let peer = self.peers[idx].name.clone();
        let peer = &*peer;
        let has_mkts = !self.peers[idx].mkts.is_empty();
        let overlap = self.peers[idx].overlap;
        let mut keep = Vec::new();
        for seq in self.restored.of_peer(idx) {
            self.restored.update(seq, |r| {
                if has_mkts && !r.released && r.keep_until == r.expires_at {
                    // Superseded now: the peer may still send with it for a while.
                    r.keep_until = r.expires_at.min(now + overlap);
                }
            });
            if let Some(r) = self.restored.get(seq) {
                if !r.released && now < r.keep_until {
                    keep.push(KeyIds {
                        send_id: r.record.send_id,
                        recv_id: r.record.recv_id,
                    });
                }
            }
        }
        if !has_mkts && !keep.is_empty() {
            // The keys from before the restart are valid until replaced or
            // expired: leave the sockets alone.
            return answered;
        }
        let force = force || !has_mkts;
        if has_mkts {
            for w in self.waiting.take_peer(idx) {
                answered.push(self.release(w));
            }
        }
        let p = &self.peers[idx];
        let guard_key = (!has_mkts).then(|| self.guard_of(idx));
        let guard = guard_key.as_ref();
        let newest = p.mkts.last().map(|m| KeyIds {
            send_id: m.send_id,
            recv_id: m.recv_id,
        });
        // TCP-MD5 replaces the key at once: a rollover on every keyed
        // socket when the newest MKT changed.
        let md5_moved = p.newest.is_some() && newest.is_some() && newest != p.newest;
        let mut rollovers = 0u64;
        // One log line for the pass (a route reflector's peer may have
        // thousands of sockets): how many changed, and what the first of
        // them got; each socket's own line is at debug level.
        let pass_started = std::time::Instant::now();
        let mut changed = 0u64;
        let mut first_change: Option<(String, String, bool)> = None;
        let ids: Vec<u64> = self.registry.by_peer(peer).map(|s| s.id).collect();
        let mut gone = Vec::new();
        for id in ids {
            let Some(rec) = self.registry.get(id).cloned() else {
                continue;
            };
            let sock = match self.keys.reacquire(rec.pid, rec.fd, rec.cookie) {
                Ok(sock) => sock,
                Err(e) => {
                    info!(pid = rec.pid, fd = rec.fd, reason = %e, "attached socket is gone");
                    gone.push(id);
                    continue;
                }
            };
            let listening = rec.role == SocketRole::Listen;
            let how = How {
                keep: &keep,
                listening,
                force,
            };
            match reconcile_on(&self.keys, &sock, p.backend, p.ip, &p.mkts, guard, how) {
                Ok(outcome) => {
                    if !outcome.deferred.is_empty() {
                        let retry = self.retry.get_or_insert_with(|| Retry {
                            at: now + DEFERRED_RETRY,
                            peers: Vec::new(),
                            listed: BTreeSet::new(),
                        });
                        if retry.listed.insert(idx) {
                            retry.peers.push(idx);
                        }
                    }
                    if outcome.changed() {
                        let (added, removed) =
                            (KeyIds::list(&outcome.added), KeyIds::list(&outcome.removed));
                        debug!(pid = rec.pid, fd = rec.fd, peer, added = %added, removed = %removed,
                            guarded = outcome.guarded, "socket keys updated");
                        changed += 1;
                        first_change.get_or_insert((added, removed, outcome.guarded));
                    }
                    let rolled = match p.backend {
                        Backend::Ao => outcome.removed.iter().any(|k| !k.is_guard()),
                        Backend::Md5 => md5_moved && rec.guarded.is_empty(),
                    };
                    if rolled && !outcome.guarded && !listening {
                        rollovers += 1;
                    }
                    self.registry.set_guarded_peer(id, peer, guard.is_some());
                }
                Err(e) => {
                    warn!(pid = rec.pid, fd = rec.fd, peer, error = %e, "cannot update socket keys")
                }
            }
        }
        if let Some((added, removed, guarded)) = first_change {
            info!(peer, sockets = changed, added = %added, removed = %removed, guarded,
                took_ms = pass_started.elapsed().as_secs_f64() * 1e3, "socket keys updated");
        }
        let p = &mut self.peers[idx];
        p.rollovers = p.rollovers.saturating_add(rollovers);
        p.newest = newest;
        for id in gone {
            if let Some(s) = self.registry.remove(id) {
                self.restored_sockets.remove(&s.id);
                self.persist.send(Op::DeleteSocket(s.cookie));
            }
        }
        answered
    }

    /// `aoctl sockets`; `guard_reason` says why the guard of the named
    /// peers is on a socket.
    pub fn status(&mut self, guard_reason: impl Fn(&[String]) -> String) -> Vec<SocketStatus> {
        for (s, _) in self.registry.prune_with(&self.keys) {
            self.persist.send(Op::DeleteSocket(s.cookie));
        }
        self.registry
            .iter()
            .map(|s| {
                let backend = s
                    .peers
                    .first()
                    .and_then(|p| self.backend(p))
                    .or_else(|| s.groups.first().and_then(|g| self.group_backend(g)));
                let info = match backend {
                    Some(Backend::Ao) => self
                        .keys
                        .reacquire(s.pid, s.fd, s.cookie)
                        .ok()
                        .and_then(|sock| self.keys.ao_info(&sock).ok()),
                    _ => None,
                };
                // A listener with only a group's guard is guarded too.
                let guarded = !s.guarded.is_empty() || s.peers.is_empty();
                let mut peers = s.peers.clone();
                peers.extend(s.groups.iter().cloned());
                SocketStatus {
                    pid: s.pid,
                    fd: s.fd,
                    role: role_name(s.role).to_string(),
                    local: s.local.map(|a| a.to_string()),
                    remote: s.remote.map(|a| a.to_string()),
                    peers,
                    state: if guarded { "guarded" } else { "keys" }.to_string(),
                    guard_reason: guarded.then(|| {
                        crate::group_guard::with_groups(
                            (!s.guarded.is_empty()).then(|| guard_reason(&s.guarded)),
                            &s.groups,
                        )
                    }),
                    mechanism: backend.map(|b| b.to_string()),
                    attached_at: unix(s.attached_at),
                    pkt_good: info.as_ref().map(|i| i.pkt_good),
                    pkt_bad: info.as_ref().map(|i| i.pkt_bad),
                    pkt_key_not_found: info.as_ref().map(|i| i.pkt_key_not_found),
                    pkt_ao_required: info.as_ref().map(|i| i.pkt_ao_required),
                    current_key: info.as_ref().and_then(|i| i.current_key),
                    rnext_key: info.as_ref().and_then(|i| i.rnext),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    //! The key policy against the in-memory kernel
    //! ([`crate::socket_keys::fake`]): no root, no real sockets.

    use super::*;
    use crate::kernel::sys::TcpState;
    use crate::socket_keys::fake::FakeKernel;
    use crate::socket_keys::is_guard_id;
    use aokd_proto::crypto::Secret;
    use aokd_proto::mkt::MacAlgorithm;
    use std::sync::atomic::{AtomicU32, Ordering};

    const PID: i32 = 4242;
    const PEER: &str = "192.0.2.2";

    /// Peer "a" at 192.0.2.2, TCP port 179, TCP-AO; acquire timeout 5s.
    fn config() -> Config {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "aokd-keys-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let psk = dir.join("a.psk");
        std::fs::write(&psk, "a test pre-shared key\n").expect("psk");
        std::fs::set_permissions(&psk, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let text = format!(
            "[daemon]\nacquire_timeout = \"5s\"\n\n[[peer]]\nname = \"a\"\nremote = \"{PEER}\"\n\
             psk_file = \"{}\"\ntcp_ports = [179]\nbackend = \"tcp-ao\"\n",
            psk.display()
        );
        let cfg = Config::parse(&text, &dir.join("aokd.toml")).expect("config");
        let _ = std::fs::remove_dir_all(&dir);
        cfg
    }

    fn manager() -> (KeyManager<FakeKernel>, FakeKernel) {
        manager_with(config())
    }

    fn manager_with(cfg: Config) -> (KeyManager<FakeKernel>, FakeKernel) {
        let kernel = FakeKernel::default();
        let support = Support {
            tcp_ao: true,
            tcp_md5: true,
        };
        let km = KeyManager::with_keys(&cfg, support, kernel.clone()).expect("manager");
        (km, kernel)
    }

    /// Several peers `(name, remote, tcp port)`, TCP-AO; acquire timeout 5s.
    fn config_of(peers: &[(&str, &str, u16)]) -> Config {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "aokd-keys-test-n-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let psk = dir.join("p.psk");
        std::fs::write(&psk, "a test pre-shared key\n").expect("psk");
        std::fs::set_permissions(&psk, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let mut text = String::from("[daemon]\nacquire_timeout = \"5s\"\n");
        for (i, (name, remote, port)) in peers.iter().enumerate() {
            let ike_port = 5000 + i;
            text.push_str(&format!(
                "\n[[peer]]\nname = \"{name}\"\nremote = \"{remote}\"\nremote_port = {ike_port}\n\
                 psk_file = \"{}\"\ntcp_ports = [{port}]\nbackend = \"tcp-ao\"\n",
                psk.display()
            ));
        }
        let cfg = Config::parse(&text, &dir.join("aokd.toml")).expect("config");
        let _ = std::fs::remove_dir_all(&dir);
        cfg
    }

    fn mkt(send_id: u8, recv_id: u8) -> MasterKeyTuple {
        MasterKeyTuple {
            send_id,
            recv_id,
            algorithm: MacAlgorithm::HmacSha256_128,
            include_options: true,
            master_key: Secret::new(vec![send_id; 32]),
        }
    }

    /// The MKT as an [`aokd_proto::ike::Event::MktsChanged`] lists it.
    fn view(m: &MasterKeyTuple, now: Instant, retiring: bool) -> MktView {
        MktView {
            mkt: m.clone(),
            ports: Vec::new(),
            created_at: now,
            spi_i: 1,
            spi_r: 2,
            rekey_at: None,
            expires_at: now + Duration::from_secs(3600),
            retire_at: retiring.then(|| now + Duration::from_secs(60)),
            replaced: retiring,
        }
    }

    /// A new fake socket of `role` (`fd` in [`PID`]) and the request for it.
    fn request(
        kernel: &FakeKernel,
        fd: i32,
        role: SocketRole,
        state: TcpState,
        local: &str,
        remote: Option<&str>,
    ) -> (KeyRequest<u64>, u64) {
        let cookie = kernel.socket(PID, fd, state);
        let record = AttachedSocket {
            id: 0,
            pid: PID,
            fd,
            cookie,
            role,
            local: Some(local.parse().expect("local")),
            remote: remote.map(|r| r.parse().expect("remote")),
            peers: Vec::new(),
            guarded: Vec::new(),
            groups: Vec::new(),
            attached_at: UNIX_EPOCH,
        };
        let request = KeyRequest {
            id: u64::try_from(fd).expect("fd"),
            socket: cookie,
            record,
            wait: None,
        };
        (request, cookie)
    }

    fn answer(outcome: AttachOutcome) -> Answer {
        match outcome {
            AttachOutcome::Answered(a) => a,
            AttachOutcome::Waiting { peer } => panic!("waits for {peer}"),
        }
    }

    fn installed(a: &Answer) -> Installed {
        match a {
            Answer::Ok { installed, .. } => *installed,
            Answer::Error(e) => panic!("error: {e}"),
        }
    }

    fn is_guard(ids: (u8, u8)) -> bool {
        is_guard_id(ids.0) && is_guard_id(ids.1)
    }

    #[test]
    fn only_covered_sockets_get_keys() {
        let (mut km, k) = manager();
        let now = Instant::now();
        let m1 = mkt(1, 2);
        assert!(km
            .mkts_changed("a", &[view(&m1, now, false)], now)
            .is_empty());
        let cases = [
            // (role, state, local, remote, covered)
            (
                SocketRole::Connect,
                TcpState::Close,
                "0.0.0.0:0",
                Some("192.0.2.2:179"),
                true,
            ),
            (
                SocketRole::Connect,
                TcpState::Close,
                "0.0.0.0:0",
                Some("192.0.2.2:80"),
                false,
            ),
            (
                SocketRole::Connect,
                TcpState::Close,
                "0.0.0.0:0",
                Some("192.0.2.9:179"),
                false,
            ),
            (
                SocketRole::Connect,
                TcpState::Close,
                "192.0.2.1:179",
                Some("192.0.2.2:4000"),
                true,
            ),
            (
                SocketRole::Accepted,
                TcpState::Established,
                "192.0.2.1:179",
                Some("192.0.2.2:40000"),
                true,
            ),
            (
                SocketRole::Accepted,
                TcpState::Established,
                "192.0.2.1:80",
                Some("192.0.2.2:40000"),
                false,
            ),
            (
                SocketRole::Accepted,
                TcpState::Established,
                "[::ffff:192.0.2.1]:179",
                Some("[::ffff:192.0.2.2]:40000"),
                true,
            ),
            (
                SocketRole::Listen,
                TcpState::Close,
                "0.0.0.0:179",
                None,
                true,
            ),
            (
                SocketRole::Listen,
                TcpState::Close,
                "0.0.0.0:80",
                None,
                false,
            ),
        ];
        for (i, (role, state, local, remote, covered)) in cases.into_iter().enumerate() {
            let (req, cookie) = request(&k, 10 + i as i32, role, state, local, remote);
            let a = answer(km.attach(req, now));
            let what = format!("{role:?} {local} -> {remote:?}");
            if covered {
                assert_eq!(
                    a,
                    Answer::Ok {
                        installed: Installed::Keys,
                        peers: vec!["a".into()],
                        mechanism: Some(Backend::Ao),
                        guarded: Vec::new(),
                        groups: Vec::new(),
                    },
                    "{what}"
                );
                assert_eq!(k.ids(cookie), vec![(1, 2)], "{what}");
            } else {
                assert_eq!(installed(&a), Installed::NotCovered, "{what}");
                assert!(k.ids(cookie).is_empty(), "{what}");
            }
        }
        // Only the covered sockets are registered.
        assert_eq!(km.status(|_| String::new()).len(), 5);
        // A new connect socket gets the key selected; a listener does not.
        let s = k.get(1);
        assert_eq!((s.current, s.rnext), (Some((1, 2)), Some((1, 2))));
        let listener = k.get(8);
        assert_eq!((listener.current, listener.rnext), (None, None));
    }

    #[test]
    fn without_an_mkt_the_guard_is_on_and_a_connect_waits() {
        let (mut km, k) = manager();
        let now = Instant::now();
        // A listener: the guard, not selected (listeners have no
        // Current_key), answered at once.
        let (req, listener) = request(
            &k,
            10,
            SocketRole::Listen,
            TcpState::Close,
            "0.0.0.0:179",
            None,
        );
        let a = answer(km.attach(req, now));
        assert_eq!(
            a,
            Answer::Ok {
                installed: Installed::Guard,
                peers: vec!["a".into()],
                mechanism: Some(Backend::Ao),
                guarded: vec!["a".into()],
                groups: Vec::new(),
            }
        );
        let ids = k.ids(listener);
        assert!(ids.len() == 1 && is_guard(ids[0]), "{ids:?}");
        // A connect: the guard as Current_key and RNext_key while it waits.
        let (req, client) = request(
            &k,
            11,
            SocketRole::Connect,
            TcpState::Close,
            "0.0.0.0:0",
            Some("192.0.2.2:179"),
        );
        match km.attach(req, now) {
            AttachOutcome::Waiting { peer } => assert_eq!(peer, "a"),
            other => panic!("{other:?}"),
        }
        let s = k.get(client);
        assert!(s.keys.len() == 1 && is_guard((s.keys[0].send_id, s.keys[0].recv_id)));
        assert_eq!(s.current, Some((s.keys[0].send_id, s.keys[0].recv_id)));
        // The acquire timeout: it proceeds under the guard.
        let deadline = now + Duration::from_secs(5);
        assert_eq!(km.poll_timeout(), Some(deadline));
        assert!(km
            .handle_timeout(deadline - Duration::from_millis(1))
            .is_empty());
        let answered = km.handle_timeout(deadline);
        assert_eq!(answered.len(), 1);
        assert_eq!(answered[0].id, 11);
        assert_eq!(installed(&answered[0].answer), Installed::Guard);
        assert_eq!(km.poll_timeout(), None);
        // aoctl sockets: both guarded, with the reason asked for their peers.
        let status = km.status(|names| format!("no MKT with {}", names.join(",")));
        assert_eq!(status.len(), 2);
        for s in &status {
            assert_eq!(s.state, "guarded");
            assert_eq!(s.guard_reason.as_deref(), Some("no MKT with a"));
        }
    }

    #[test]
    fn the_first_mkt_replaces_the_guard_and_releases_the_waiting_connect() {
        let (mut km, k) = manager();
        let now = Instant::now();
        let (req, listener) = request(
            &k,
            10,
            SocketRole::Listen,
            TcpState::Close,
            "0.0.0.0:179",
            None,
        );
        answer(km.attach(req, now));
        let (req, client) = request(
            &k,
            11,
            SocketRole::Connect,
            TcpState::Close,
            "0.0.0.0:0",
            Some("192.0.2.2:179"),
        );
        assert!(matches!(km.attach(req, now), AttachOutcome::Waiting { .. }));
        k.take_log();
        let m1 = mkt(1, 2);
        let later = now + Duration::from_secs(1);
        let answered = km.mkts_changed("a", &[view(&m1, later, false)], later);
        // The waiting connect is answered with the keys...
        assert_eq!(answered.len(), 1);
        assert_eq!(answered[0].id, 11);
        assert_eq!(installed(&answered[0].answer), Installed::Keys);
        let s = k.get(client);
        assert_eq!(k.ids(client), vec![(1, 2)]);
        assert_eq!((s.current, s.rnext), (Some((1, 2)), Some((1, 2))));
        // ...and the listener's guard goes, after the real key is on (the
        // peer is never without a key).
        assert_eq!(k.ids(listener), vec![(1, 2)]);
        let log = k.take_log();
        let add = log
            .iter()
            .position(|l| l == "add 1/2")
            .expect("listener add");
        let del = log
            .iter()
            .rposition(|l| l.starts_with("del 24") || l.starts_with("del 25"));
        assert!(del.is_some_and(|d| d > add), "{log:?}");
        assert_eq!(km.poll_timeout(), None);
        let status = km.status(|_| panic!("no socket is guarded"));
        assert!(status
            .iter()
            .all(|s| s.state == "keys" && s.guard_reason.is_none()));
    }

    #[test]
    fn when_the_last_mkt_goes_the_guard_is_forced_in() {
        let (mut km, k) = manager();
        let now = Instant::now();
        let m1 = mkt(1, 2);
        km.mkts_changed("a", &[view(&m1, now, false)], now);
        let (req, conn) = request(
            &k,
            10,
            SocketRole::Accepted,
            TcpState::Established,
            "192.0.2.1:179",
            Some("192.0.2.2:40000"),
        );
        answer(km.attach(req, now));
        k.peer_switches_to(conn, 1);
        k.take_log();
        // Deleted by the peer, or expired: the guard replaces the key even
        // as Current_key of the live connection (fails closed).
        km.mkts_changed("a", &[], now);
        let s = k.get(conn);
        assert_eq!(s.keys.len(), 1);
        let g = (s.keys[0].send_id, s.keys[0].recv_id);
        assert!(is_guard(g));
        assert_eq!(s.current, Some(g));
        let log = k.take_log();
        assert_eq!(log.len(), 2, "{log:?}");
        assert!(
            log[0].starts_with("add ") && log[0].ends_with(" rnext"),
            "{log:?}"
        );
        assert_eq!(log[1], format!("del 1/2 current {}", g.0));
        assert_eq!(km.status(|_| "why".into())[0].state, "guarded");
    }

    #[test]
    fn rollover_adds_the_new_key_moves_rnext_and_deletes_the_old_one_after_current_moved() {
        let (mut km, k) = manager();
        let now = Instant::now();
        let (m1, m2) = (mkt(1, 2), mkt(3, 4));
        km.mkts_changed("a", &[view(&m1, now, false)], now);
        let (req, conn) = request(
            &k,
            10,
            SocketRole::Accepted,
            TcpState::Established,
            "192.0.2.1:179",
            Some("192.0.2.2:40000"),
        );
        answer(km.attach(req, now));
        k.peer_switches_to(conn, 1);
        k.take_log();
        // The rekey: the new MKT arrives, the old one retires (first in the
        // set), then goes.
        let t1 = now + Duration::from_secs(10);
        km.mkts_changed("a", &[view(&m1, now, true), view(&m2, t1, false)], t1);
        assert_eq!(k.take_log(), vec!["add 3/4 rnext"]);
        let s = k.get(conn);
        assert_eq!((s.current, s.rnext), (Some((1, 2)), Some((3, 4))));
        let t2 = t1 + Duration::from_secs(60);
        km.mkts_changed("a", &[view(&m2, t1, false)], t2);
        // The old key is still Current_key: its deletion waits for the peer.
        assert!(k.take_log().is_empty());
        assert_eq!(k.ids(conn), vec![(1, 2), (3, 4)]);
        let retry = t2 + DEFERRED_RETRY;
        assert_eq!(km.poll_timeout(), Some(retry));
        km.handle_timeout(retry);
        assert!(k.take_log().is_empty(), "still current: kept");
        // Not a rollover yet: the connection still sends with the old key.
        assert_eq!(km.rollovers("a"), Some(0));
        // The peer switches: the kernel moves Current_key, the old key goes.
        k.peer_switches_to(conn, 3);
        let retry = retry + DEFERRED_RETRY;
        assert_eq!(km.poll_timeout(), Some(retry));
        km.handle_timeout(retry);
        assert_eq!(k.take_log(), vec!["del 1/2"]);
        assert_eq!(k.ids(conn), vec![(3, 4)]);
        assert_eq!(km.poll_timeout(), None);
        // One socket moved to the new MKT: one rollover, counted once.
        assert_eq!(km.rollovers("a"), Some(1));
        km.mkts_changed("a", &[view(&m2, t1, false)], retry);
        assert_eq!(km.rollovers("a"), Some(1));
        assert_eq!(km.rollovers("nobody"), None);
    }

    #[test]
    fn a_new_socket_during_a_rollover_sends_with_the_newest_key() {
        let (mut km, k) = manager();
        let now = Instant::now();
        let (m1, m2) = (mkt(1, 2), mkt(3, 4));
        // Retiring keys first, then live ones oldest to newest.
        km.mkts_changed("a", &[view(&m1, now, true), view(&m2, now, false)], now);
        let (req, conn) = request(
            &k,
            10,
            SocketRole::Connect,
            TcpState::Close,
            "0.0.0.0:0",
            Some("192.0.2.2:179"),
        );
        assert_eq!(installed(&answer(km.attach(req, now))), Installed::Keys);
        assert_eq!(k.take_log(), vec!["add 1/2", "add 3/4 current rnext"]);
        let s = k.get(conn);
        assert_eq!((s.current, s.rnext), (Some((3, 4)), Some((3, 4))));
    }

    fn restored_record(m: &MasterKeyTuple, now_unix: u64, expires_in: u64) -> MktRecord {
        MktRecord::from_mkt(
            "a",
            m,
            "0000000000000001",
            "0000000000000002",
            now_unix - 100,
            None,
            now_unix + expires_in,
        )
    }

    /// A socket as the state file recorded it, with `m` on it (current
    /// and rnext) as aokd left it before the restart.
    fn restored_socket(k: &FakeKernel, fd: i32, m: &MasterKeyTuple) -> (SocketRecord, u64) {
        let cookie = k.socket(PID, fd, TcpState::Established);
        k.ao_add(&cookie, PEER.parse().expect("ip"), 32, m, false, false)
            .expect("key");
        k.peer_switches_to(cookie, m.send_id);
        k.ao_set_rnext(&cookie, m.recv_id).expect("rnext");
        k.take_log();
        let rec = SocketRecord {
            pid: PID,
            fd,
            cookie,
            role: "accepted".into(),
            local: Some("192.0.2.1:179".into()),
            remote: Some("192.0.2.2:40000".into()),
            peers: vec!["a".into()],
            attached_at_unix: 1,
        };
        (rec, cookie)
    }

    #[test]
    fn restored_keys_stay_until_a_new_mkt_replaces_them() {
        let (mut km, k) = manager();
        let (now, now_unix) = (Instant::now(), 1_000_000);
        let old = mkt(1, 2);
        let (rec, conn) = restored_socket(&k, 10, &old);
        // A socket whose owner closed it while aokd was away.
        let (gone, gone_cookie) = restored_socket(&k, 11, &old);
        k.close(gone_cookie);
        let snapshot = StateSnapshot {
            ike_sas: Vec::new(),
            mkts: vec![restored_record(&old, now_unix, 3000)],
            sockets: vec![rec, gone],
        };
        let out = km.restore(&snapshot, now, now_unix);
        assert_eq!((out.sockets, out.sockets_gone, out.mkts_expired), (1, 1, 0));
        assert_eq!(
            out.reservations,
            vec![Reservation {
                peer: "a".into(),
                send_id: 1,
                recv_id: 2,
                until: now + Duration::from_secs(3000),
            }]
        );
        assert_eq!(out.peers, vec!["a".to_string()]);
        // The restored key is left alone: no guard over it.
        assert!(k.take_log().is_empty());
        assert_eq!(km.restored().len(), 1);
        assert_eq!(km.status(|_| String::new())[0].state, "keys");
        // The new MKT: added as RNext, the restored key kept (no deferral)
        // for the overlap.
        let new = mkt(5, 6);
        let t1 = now + Duration::from_secs(10);
        km.mkts_changed("a", &[view(&new, t1, false)], t1);
        assert_eq!(k.take_log(), vec!["add 5/6 rnext"]);
        let overlap = crate::config::mkt_overlap(&config().peers[0].lifetimes);
        assert_eq!(km.poll_timeout(), Some(t1 + overlap));
        // The overlap is over: a stale key like any other, deleted once the
        // connection no longer uses it.
        km.handle_timeout(t1 + overlap);
        assert!(km.restored()[0].released);
        assert!(k.take_log().is_empty(), "still Current_key");
        k.peer_switches_to(conn, 5);
        let retry = t1 + overlap + DEFERRED_RETRY;
        km.handle_timeout(retry);
        assert_eq!(k.take_log(), vec!["del 1/2"]);
        assert_eq!(k.ids(conn), vec![(5, 6)]);
        // Its record goes at its hard lifetime.
        km.handle_timeout(now + Duration::from_secs(3000));
        assert!(km.restored().is_empty());
    }

    /// `aoctl mkts` lists a restored MKT only while a socket taken back
    /// from the state file may hold it: not when every recorded socket was
    /// gone at the restart, and no longer once the taken-back socket is
    /// closed.
    #[test]
    fn restored_mkts_on_no_socket_are_not_in_use() {
        let (now, now_unix) = (Instant::now(), 1_000_000);
        let old = mkt(1, 2);
        // The only socket was closed while aokd was away.
        let (mut km, k) = manager();
        let (gone, gone_cookie) = restored_socket(&k, 11, &old);
        k.close(gone_cookie);
        let snapshot = StateSnapshot {
            ike_sas: Vec::new(),
            mkts: vec![restored_record(&old, now_unix, 3000)],
            sockets: vec![gone],
        };
        let out = km.restore(&snapshot, now, now_unix);
        // Its KeyIDs are still kept out of use.
        assert_eq!(out.reservations.len(), 1);
        assert_eq!(km.restored().len(), 1);
        assert!(km.restored_in_use().is_empty());
        // No socket recorded at all (the routing daemon never attached).
        let (mut km, _k) = manager();
        let snapshot = StateSnapshot {
            ike_sas: Vec::new(),
            mkts: vec![restored_record(&old, now_unix, 3000)],
            sockets: Vec::new(),
        };
        km.restore(&snapshot, now, now_unix);
        assert!(km.restored_in_use().is_empty());
        // A socket taken back holds it, until its owner closes it.
        let (mut km, k) = manager();
        let (rec, conn) = restored_socket(&k, 10, &old);
        let snapshot = StateSnapshot {
            ike_sas: Vec::new(),
            mkts: vec![restored_record(&old, now_unix, 3000)],
            sockets: vec![rec],
        };
        km.restore(&snapshot, now, now_unix);
        assert_eq!(km.restored_in_use().len(), 1);
        k.close(conn);
        assert!(km.restored_in_use().is_empty());
    }

    #[test]
    fn restored_keys_are_forced_out_at_their_hard_lifetime() {
        let (mut km, k) = manager();
        let (now, now_unix) = (Instant::now(), 1_000_000);
        let old = mkt(1, 2);
        let (rec, conn) = restored_socket(&k, 10, &old);
        let expired = restored_record(&mkt(7, 8), now_unix, 0);
        let snapshot = StateSnapshot {
            ike_sas: Vec::new(),
            mkts: vec![restored_record(&old, now_unix, 600), expired],
            sockets: vec![rec],
        };
        let out = km.restore(&snapshot, now, now_unix);
        assert_eq!(
            (out.sockets, out.mkts_expired, out.reservations.len()),
            (1, 1, 1)
        );
        assert!(k.take_log().is_empty());
        // No new MKT in time: at the hard lifetime the guard goes in, as
        // Current_key of the live connection.
        let end = now + Duration::from_secs(600);
        assert_eq!(km.poll_timeout(), Some(end));
        km.handle_timeout(end);
        let s = k.get(conn);
        assert_eq!(s.keys.len(), 1);
        let g = (s.keys[0].send_id, s.keys[0].recv_id);
        assert!(is_guard(g));
        assert_eq!(s.current, Some(g));
        assert!(km.restored().is_empty());
        assert_eq!(km.status(|_| "why".into())[0].state, "guarded");
    }

    #[test]
    fn without_restored_mkts_a_restored_socket_gets_the_guard() {
        let (mut km, k) = manager();
        let (now, now_unix) = (Instant::now(), 1_000_000);
        let (rec, conn) = restored_socket(&k, 10, &mkt(1, 2));
        let snapshot = StateSnapshot {
            ike_sas: Vec::new(),
            mkts: Vec::new(),
            sockets: vec![rec],
        };
        km.restore(&snapshot, now, now_unix);
        let s = k.get(conn);
        assert_eq!(s.keys.len(), 1);
        assert!(is_guard((s.keys[0].send_id, s.keys[0].recv_id)));
    }

    /// [`KeyManager::poll_timeout`] follows the waiting connects and the
    /// restored MKTs as they come and go (it is read from ordered deadline
    /// indexes, never by scanning).
    #[test]
    fn poll_timeout_follows_waiting_connects_and_restored_mkts() {
        let (mut km, k) = manager();
        let (now, now_unix) = (Instant::now(), 1_000_000);
        let s = Duration::from_secs;
        let old = mkt(1, 2);
        let (rec, conn) = restored_socket(&k, 10, &old);
        let snapshot = StateSnapshot {
            ike_sas: Vec::new(),
            mkts: vec![
                restored_record(&old, now_unix, 3000),
                restored_record(&mkt(7, 8), now_unix, 6000),
            ],
            sockets: vec![rec],
        };
        km.restore(&snapshot, now, now_unix);
        assert_eq!(km.poll_timeout(), Some(now + s(3000)));
        // Two connects wait (under the guard: no MKT yet).
        for (fd, wait) in [(20, 2), (21, 4)] {
            let (mut req, _) = request(
                &k,
                fd,
                SocketRole::Connect,
                TcpState::Close,
                "0.0.0.0:0",
                Some("192.0.2.2:179"),
            );
            req.wait = Some(s(wait));
            assert!(matches!(km.attach(req, now), AttachOutcome::Waiting { .. }));
        }
        assert_eq!(km.poll_timeout(), Some(now + s(2)));
        // The first one's acquire timeout: released, the next deadline is
        // the second one's.
        let answered = km.handle_timeout(now + s(2));
        assert_eq!(answered.iter().map(|a| a.id).collect::<Vec<_>>(), vec![20]);
        assert_eq!(km.poll_timeout(), Some(now + s(4)));
        // The first MKT releases the second connect and starts the
        // restored MKTs' overlap.
        let t1 = now + s(3);
        let new = mkt(5, 6);
        let answered = km.mkts_changed("a", &[view(&new, t1, false)], t1);
        assert_eq!(answered.iter().map(|a| a.id).collect::<Vec<_>>(), vec![21]);
        let overlap = crate::config::mkt_overlap(&config().peers[0].lifetimes);
        assert!(t1 + overlap < now + s(3000), "{overlap:?}");
        assert_eq!(km.poll_timeout(), Some(t1 + overlap));
        // The overlap ends (the peer switched, so no deferred deletion):
        // both wait only for their hard lifetime now.
        k.peer_switches_to(conn, 5);
        km.handle_timeout(t1 + overlap);
        assert!(km.restored().iter().all(|r| r.released));
        assert_eq!(km.poll_timeout(), Some(now + s(3000)));
        // Each goes at its hard lifetime, and the deadline with it.
        km.handle_timeout(now + s(3000));
        assert_eq!(km.restored().len(), 1);
        assert_eq!(km.poll_timeout(), Some(now + s(6000)));
        km.handle_timeout(now + s(6000));
        assert!(km.restored().is_empty());
        assert_eq!(km.poll_timeout(), None);
        assert_eq!(k.ids(conn), vec![(5, 6)]);
    }

    /// With several peers, the indexes find exactly the peers a socket is
    /// for, and one peer's MKTs touch only that peer's sockets and waiting
    /// connects.
    #[test]
    fn each_peer_keys_only_its_own_sockets() {
        let (mut km, k) = manager_with(config_of(&[
            ("a", "192.0.2.2", 179),
            ("b", "192.0.2.3", 179),
            ("c", "192.0.2.2", 180),
        ]));
        let now = Instant::now();
        assert_eq!(km.backend("b"), Some(Backend::Ao));
        assert_eq!(km.backend("z"), None);
        // A listener on 179 is for a and b, in configuration order.
        let (req, listener) = request(
            &k,
            10,
            SocketRole::Listen,
            TcpState::Close,
            "0.0.0.0:179",
            None,
        );
        match answer(km.attach(req, now)) {
            Answer::Ok { peers, guarded, .. } => {
                assert_eq!(peers, vec!["a".to_string(), "b".to_string()]);
                assert_eq!(guarded, peers);
            }
            other => panic!("{other:?}"),
        }
        // Connects to each peer wait.
        let mut conns = Vec::new();
        for (fd, remote) in [
            (11, "192.0.2.2:179"),
            (12, "192.0.2.3:179"),
            (13, "[::ffff:192.0.2.2]:180"),
        ] {
            let (req, cookie) = request(
                &k,
                fd,
                SocketRole::Connect,
                TcpState::Close,
                "0.0.0.0:0",
                Some(remote),
            );
            conns.push(cookie);
            match km.attach(req, now) {
                AttachOutcome::Waiting { peer } => {
                    assert_eq!(peer, ["a", "b", "c"][conns.len() - 1])
                }
                other => panic!("{other:?}"),
            }
        }
        // b's first MKT: only b's connect is answered, only b's keys go on
        // the listener, a's and c's connects keep waiting.
        let m = mkt(1, 2);
        let answered = km.mkts_changed("b", &[view(&m, now, false)], now);
        assert_eq!(answered.iter().map(|a| a.id).collect::<Vec<_>>(), vec![12]);
        assert_eq!(k.ids(conns[1]), vec![(1, 2)]);
        assert!(k.ids(conns[0]).iter().all(|&ids| is_guard(ids)));
        assert!(k.ids(conns[2]).iter().all(|&ids| is_guard(ids)));
        assert!(k.ids(listener).contains(&(1, 2)));
        assert_eq!(km.poll_timeout(), Some(now + Duration::from_secs(5)));
        // An unknown peer changes nothing.
        assert!(km
            .mkts_changed("z", &[view(&m, now, false)], now)
            .is_empty());
        let answered = km.handle_timeout(now + Duration::from_secs(5));
        assert_eq!(
            answered.iter().map(|a| a.id).collect::<Vec<_>>(),
            vec![11, 13]
        );
        assert_eq!(km.poll_timeout(), None);
        assert_eq!(km.status(|_| String::new()).len(), 4);
    }

    /// A reload: an added peer's guard goes on the listener it covers
    /// and new connects to it are covered; a removed peer covers no new
    /// socket, its sockets keep its key until the endpoint reports its
    /// MKTs gone (hard lifetime), and then hold its guard, not nothing.
    #[test]
    fn reload_adds_and_removes_peers_without_unkeying_sockets() {
        let (mut km, k) = manager_with(config_of(&[("a", "192.0.2.2", 179)]));
        let now = Instant::now();
        let m = mkt(1, 2);
        km.mkts_changed("a", &[view(&m, now, false)], now);
        let (req, listener) = request(
            &k,
            10,
            SocketRole::Listen,
            TcpState::Close,
            "0.0.0.0:179",
            None,
        );
        answer(km.attach(req, now));
        let (req, accepted) = request(
            &k,
            11,
            SocketRole::Accepted,
            TcpState::Established,
            "192.0.2.1:179",
            Some("192.0.2.2:40000"),
        );
        answer(km.attach(req, now));
        assert_eq!(k.ids(listener), vec![(1, 2)]);
        // b added: its guard joins a's key on the listener.
        let both = config_of(&[("a", "192.0.2.2", 179), ("b", "192.0.2.3", 179)]);
        km.check(&both).expect("backends");
        assert!(km.add_peer(&both.peers[1], now).is_empty());
        let ids = k.ids(listener);
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(
            ids.contains(&(1, 2)) && ids.iter().any(|&i| is_guard(i)),
            "{ids:?}"
        );
        assert_eq!(
            km.registry
                .iter()
                .find(|s| s.fd == 10)
                .map(|s| s.peers.clone()),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        let (req, _) = request(
            &k,
            12,
            SocketRole::Connect,
            TcpState::Close,
            "0.0.0.0:0",
            Some("192.0.2.3:179"),
        );
        match km.attach(req, now) {
            AttachOutcome::Waiting { peer } => assert_eq!(peer, "b"),
            other => panic!("{other:?}"),
        }
        // a removed: no new socket is a's; its sockets keep its key.
        km.remove_peer("a");
        let (req, _) = request(
            &k,
            13,
            SocketRole::Connect,
            TcpState::Close,
            "0.0.0.0:0",
            Some("192.0.2.2:179"),
        );
        assert_eq!(
            installed(&answer(km.attach(req, now))),
            Installed::NotCovered
        );
        assert_eq!(k.ids(accepted), vec![(1, 2)]);
        // Its MKT's hard lifetime: the guard, forced in.
        let later = now + Duration::from_secs(60);
        km.mkts_changed("a", &[], later);
        let ids = k.ids(accepted);
        assert!(ids.len() == 1 && is_guard(ids[0]), "{ids:?}");
        // Configured again: it covers new sockets again, same entry.
        km.add_peer(&both.peers[0], later);
        let (req, _) = request(
            &k,
            14,
            SocketRole::Connect,
            TcpState::Close,
            "0.0.0.0:0",
            Some("192.0.2.2:179"),
        );
        assert!(matches!(
            km.attach(req, later),
            AttachOutcome::Waiting { .. }
        ));
        assert_eq!(km.peers.len(), 2);
    }

    #[test]
    fn the_fake_kernel_refuses_what_linux_refuses() {
        let k = FakeKernel::default();
        let peer: IpAddr = PEER.parse().expect("ip");
        let c = k.socket(PID, 3, TcpState::Established);
        k.ao_add(&c, peer, 32, &mkt(1, 2), true, true).expect("add");
        let e = k
            .ao_add(&c, peer, 32, &mkt(1, 9), false, false)
            .expect_err("same SendID");
        assert_eq!(e.cause(), Some(crate::kernel::Cause::KeyIdConflict));
        let e = k
            .ao_del(&c, peer, 32, 1, 2, None, None)
            .expect_err("current");
        assert_eq!(e.cause(), Some(crate::kernel::Cause::KeyInUse));
        let l = k.socket(PID, 4, TcpState::Listen);
        assert!(k.ao_add(&l, peer, 32, &mkt(1, 2), true, false).is_err());
        k.close(c);
        assert!(k.reacquire(PID, 3, c).is_err());
        assert_eq!(k.reacquire(PID, 4, l).ok(), Some(l));
    }

    /// A listener of a peer group's port gets the group's prefix guard
    /// before any member exists (the addresses with no member fail closed),
    /// keeps it beside the members' keys, and keeps it across a restart.
    #[test]
    fn a_group_listener_guards_the_prefix_beside_its_members() {
        use crate::config::{MemberIdentity, PeerGroup};
        // Peer "a" is on port 22 only: port 179 is the group's alone.
        let mut cfg = config_of(&[("a", "10.9.0.1", 22)]);
        let mut template = cfg.peers[0].clone();
        template.name = "rs".into();
        template.tcp_ports = std::sync::Arc::from(&[179u16][..]);
        let group = PeerGroup {
            name: "rs".into(),
            prefixes: vec!["10.1.0.0/16".parse().expect("prefix")],
            identity: MemberIdentity::Address,
            template,
        };
        cfg.groups.push(group.clone());
        let (mut km, k) = manager_with(cfg.clone());
        let now = Instant::now();
        let (req, listener) = request(
            &k,
            10,
            SocketRole::Listen,
            TcpState::Listen,
            "0.0.0.0:179",
            None,
        );
        let a = answer(km.attach(req, now));
        assert_eq!(
            a,
            Answer::Ok {
                installed: Installed::Guard,
                peers: Vec::new(),
                mechanism: Some(Backend::Ao),
                guarded: Vec::new(),
                groups: vec!["rs".into()],
            }
        );
        let prefix_keys = |k: &FakeKernel| -> Vec<(String, u8, u8, u8)> {
            let mut v: Vec<_> = k
                .get(listener)
                .keys
                .iter()
                .map(|x| (x.peer.to_string(), x.prefix, x.send_id, x.recv_id))
                .collect();
            v.sort();
            v
        };
        assert_eq!(prefix_keys(&k), [("10.1.0.0".to_string(), 16, 247, 247)]);
        // Another port is the group's neither.
        let (req, _) = request(
            &k,
            11,
            SocketRole::Listen,
            TcpState::Listen,
            "0.0.0.0:180",
            None,
        );
        assert_eq!(
            installed(&answer(km.attach(req, now))),
            Installed::NotCovered
        );
        let st = km.status(|_| "peer reason".into());
        let l = st.iter().find(|s| s.fd == 10).expect("listener listed");
        assert_eq!(
            (l.state.as_str(), l.peers.clone()),
            ("guarded", vec!["rs".to_string()])
        );
        assert!(
            l.guard_reason
                .as_deref()
                .is_some_and(|r| r.contains("peer group rs")),
            "{l:?}"
        );
        // A member: its guard, then its MKT, next to the prefix guard.
        let member = group.member("10.1.0.5".parse().expect("literal"));
        assert!(km.add_peer(&member, now).is_empty());
        let keys = prefix_keys(&k);
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(keys
            .iter()
            .any(|(a, p, s, r)| a == "10.1.0.5" && *p == 32 && is_guard((*s, *r)) && *s != 247));
        let m1 = mkt(1, 2);
        km.mkts_changed(&member.name, &[view(&m1, now, false)], now);
        assert_eq!(
            prefix_keys(&k),
            [
                ("10.1.0.0".to_string(), 16, 247, 247),
                ("10.1.0.5".to_string(), 32, 1, 2)
            ]
        );
        let st = km.status(|_| "peer reason".into());
        let l = st.iter().find(|s| s.fd == 10).expect("listener listed");
        assert_eq!(l.state, "keys", "{l:?}");
        assert_eq!(l.peers, vec![member.name.clone(), "rs".to_string()]);

        // A restart: the listener's record names no peer (the member is
        // made again later), and it is taken back for the group; the guard
        // key there is kept.
        let rec = SocketRecord {
            peers: Vec::new(),
            ..socket_record(km.registry.get(1).expect("registered"))
        };
        let (mut km2, _) = manager_with(cfg);
        let mut km2 = {
            km2.keys = k.clone();
            km2
        };
        let snapshot = StateSnapshot {
            ike_sas: Vec::new(),
            mkts: Vec::new(),
            sockets: vec![rec],
        };
        let out = km2.restore(&snapshot, now, 1_000);
        assert_eq!(out.sockets, 1, "{out:?}");
        assert_eq!(prefix_keys(&k)[0], ("10.1.0.0".to_string(), 16, 247, 247));
        let st = km2.status(|_| String::new());
        assert_eq!(st[0].peers, vec!["rs".to_string()], "{st:?}");
    }
}
