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
//! - Whenever a peer's MKTs change, every socket of that peer is taken
//!   again with `pidfd_getfd` and reconciled.
//! - When a peer's last MKT is gone (hard lifetime passed, deleted by the
//!   peer or the operator), the guard replaces it even as Current_key of a
//!   live connection (a forced delete): traffic fails closed.
//! - After a restart ([`KeyManager::restore`], docs/state.md) the sockets
//!   of the state file are taken back, and the MKTs recorded there
//!   (KeyIDs and deadlines, no keys) are *restored*: their keys stay on the
//!   sockets, untouched, until a new MKT with the peer exists (then they are
//!   stale keys like any other: deleted once no connection uses them) or
//!   until their hard lifetime (then they are forced out).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aokd_api::attach::{Installed, SocketRole};
use aokd_api::control::SocketStatus;
use aokd_proto::ike::PeerView;
use aokd_proto::mkt::MasterKeyTuple;
use tracing::{info, warn};

use crate::attach::{result_error, result_ok, AttachCall};
use crate::config::{BackendChoice, Config};
use crate::kernel::installer::guard_key;
use crate::kernel::{ao, sys, Backend, Support};
use crate::persist::{Op, Persist};
use crate::sockets::{reconcile_with, AttachedSocket, How, KeyIds, SocketRegistry};
use crate::state::{MktRecord, SocketRecord, StateSnapshot};

/// A peer as the key manager sees it.
struct CoveredPeer {
    name: String,
    ip: IpAddr,
    ports: Vec<u16>,
    backend: Backend,
    guard: MasterKeyTuple,
    /// How long a restored MKT stays after a new one exists.
    overlap: Duration,
}

/// A `connect` waiting for its peer's first MKT.
struct Waiting {
    call: AttachCall,
    peer: usize,
    deadline: Instant,
}

/// What the event loop should do after an attach call.
pub enum AttachOutcome {
    /// Answered.
    Done,
    /// The socket waits for an MKT with this peer: start negotiating now if
    /// nothing is under way.
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
    /// Configured peers with a restored socket or MKT record.
    pub peers: Vec<String>,
}

/// Keys on sockets for every configured peer.
pub struct KeyManager {
    peers: Vec<CoveredPeer>,
    registry: SocketRegistry,
    waiting: Vec<Waiting>,
    acquire_timeout: Duration,
    /// Peers with sockets whose stale keys are still in use (the peer has
    /// not switched to the new MKT yet): reconciled again at this time.
    retry: Option<(Instant, Vec<String>)>,
    /// MKTs from before a restart, until their hard lifetime.
    restored: Vec<RestoredMkt>,
    /// Where socket records go.
    persist: Persist,
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

/// A peer's MKTs in the order `reconcile` wants (the last one becomes
/// RNext): superseded ones (retiring) first, then by creation time.
fn mkts_of(view: &[PeerView], name: &str) -> Vec<MasterKeyTuple> {
    let mut mkts: Vec<(bool, Instant, MasterKeyTuple)> = view
        .iter()
        .filter(|p| p.name == name)
        .flat_map(|p| {
            p.mkts
                .iter()
                .map(|m| (m.retire_at.is_none(), m.created_at, m.mkt.clone()))
        })
        .collect();
    mkts.sort_by_key(|(live, t, _)| (*live, *t));
    mkts.into_iter().map(|(_, _, m)| m).collect()
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

impl KeyManager {
    /// Resolves each peer's backend against what the kernel supports.
    pub fn new(cfg: &Config, support: Support) -> Result<KeyManager, BackendUnavailable> {
        let mut peers = Vec::new();
        let have = format!(
            "TCP-AO {}, TCP-MD5 {}",
            if support.tcp_ao { "present" } else { "absent" },
            if support.tcp_md5 { "present" } else { "absent" }
        );
        for p in &cfg.peers {
            let backend = match p.backend {
                BackendChoice::Auto => support.preferred(),
                BackendChoice::TcpAo => support.tcp_ao.then_some(Backend::Ao),
                BackendChoice::TcpMd5 => support.tcp_md5.then_some(Backend::Md5),
            };
            let Some(backend) = backend else {
                return Err(BackendUnavailable {
                    peer: p.name.clone(),
                    wanted: match p.backend {
                        BackendChoice::Auto => "auto (TCP-AO or TCP-MD5)",
                        BackendChoice::TcpAo => "tcp-ao",
                        BackendChoice::TcpMd5 => "tcp-md5",
                    },
                    have,
                });
            };
            info!(peer = %p.name, backend = %backend, configured = ?p.backend, "key backend chosen");
            peers.push(CoveredPeer {
                name: p.name.clone(),
                ip: p.remote,
                ports: p.tcp_ports.clone(),
                backend,
                guard: guard_key(&mut rand_core::OsRng),
                overlap: crate::config::mkt_overlap(&p.lifetimes),
            });
        }
        Ok(KeyManager {
            peers,
            registry: SocketRegistry::new(),
            waiting: Vec::new(),
            acquire_timeout: cfg.daemon.acquire_timeout,
            retry: None,
            restored: Vec::new(),
            persist: Persist::disabled(),
        })
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
    pub fn restore(
        &mut self,
        snapshot: &StateSnapshot,
        now: Instant,
        now_unix: u64,
        view: &[PeerView],
    ) -> Restored {
        let mut out = Restored::default();
        for rec in &snapshot.mkts {
            let configured = self.peers.iter().any(|p| p.name == rec.peer);
            if !configured || rec.expires_at_unix <= now_unix {
                if configured {
                    out.mkts_expired += 1;
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
            }
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
            self.restored.push(RestoredMkt {
                record: rec.clone(),
                expires_at,
                keep_until: expires_at,
                released: false,
            });
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
        let names: Vec<String> = self.peers.iter().map(|p| p.name.clone()).collect();
        for name in names {
            let had_state = snapshot.mkts.iter().any(|m| m.peer == name)
                || self.registry.by_peer(&name).next().is_some();
            if had_state {
                out.peers.push(name.clone());
            }
            self.rekey_peer(&name, view, now, false);
        }
        out
    }

    fn restore_socket(&mut self, rec: &SocketRecord) -> Result<(), String> {
        let role = parse_role(&rec.role).ok_or_else(|| format!("unknown role {:?}", rec.role))?;
        let peers: Vec<String> = rec
            .peers
            .iter()
            .filter(|p| self.peers.iter().any(|c| &&c.name == p))
            .cloned()
            .collect();
        if peers.is_empty() {
            return Err("none of its peers is configured any more".into());
        }
        crate::sockets::reacquire(rec.pid, rec.fd, rec.cookie).map_err(|e| e.to_string())?;
        let addr = |a: &Option<String>| a.as_deref().and_then(|s| s.parse::<SocketAddr>().ok());
        let socket = AttachedSocket {
            id: 0,
            pid: rec.pid,
            fd: rec.fd,
            cookie: rec.cookie,
            role,
            local: addr(&rec.local),
            remote: addr(&rec.remote),
            peers,
            guarded: None,
            attached_at: UNIX_EPOCH + Duration::from_secs(rec.attached_at_unix),
        };
        info!(pid = rec.pid, fd = rec.fd, role = role_name(role), peers = ?socket.peers,
            "attached socket from before the restart taken back");
        self.registry.add(socket);
        Ok(())
    }

    /// MKTs from before a restart that are still on sockets.
    pub fn restored(&self) -> &[RestoredMkt] {
        &self.restored
    }

    /// The backend serving a peer, for `aoctl status`.
    pub fn backend(&self, peer: &str) -> Option<Backend> {
        self.peers
            .iter()
            .find(|p| p.name == peer)
            .map(|p| p.backend)
    }

    fn covering(
        &self,
        role: SocketRole,
        local: Option<SocketAddr>,
        remote: Option<SocketAddr>,
    ) -> Vec<usize> {
        let local_port = local.map(|l| l.port());
        (0..self.peers.len())
            .filter(|&i| {
                let p = &self.peers[i];
                match role {
                    SocketRole::Listen => local_port.is_some_and(|lp| p.ports.contains(&lp)),
                    SocketRole::Connect | SocketRole::Accepted => remote.is_some_and(|r| {
                        crate::kernel::canonical(r.ip()) == crate::kernel::canonical(p.ip)
                            && (p.ports.contains(&r.port())
                                || local_port.is_some_and(|lp| p.ports.contains(&lp)))
                    }),
                }
            })
            .collect()
    }

    /// Puts the right keys (or guards) for `peers` on the socket of `call`;
    /// returns the record to register and whether any peer is guarded.
    fn key_socket(
        &self,
        call: &AttachCall,
        peers: &[usize],
        view: &[PeerView],
    ) -> Result<(AttachedSocket, Vec<String>), String> {
        let mut record = AttachedSocket::describe(
            call.socket.as_fd(),
            call.pid,
            call.request.fd,
            call.request.role,
            call.remote(),
        )
        .map_err(|e| format!("cannot read the socket's addresses: {e}"))?;
        let mut guarded = Vec::new();
        for &i in peers {
            let p = &self.peers[i];
            let desired = mkts_of(view, &p.name);
            let guard = desired.is_empty().then_some(&p.guard);
            let how = How {
                keep: &[],
                listening: call.listening(),
                // No MKT: the guard goes in even as Current_key.
                force: desired.is_empty(),
            };
            reconcile_with(call.socket.as_fd(), p.backend, p.ip, &desired, guard, how)
                .map_err(|e| format!("peer {}: {e}", p.name))?;
            record.peers.push(p.name.clone());
            if desired.is_empty() {
                guarded.push(p.name.clone());
            }
        }
        Ok((record, guarded))
    }

    fn guard_reason(view: &[PeerView], peers: &[String]) -> String {
        let parts: Vec<String> = peers
            .iter()
            .map(|name| {
                let why = view
                    .iter()
                    .find(|v| &v.name == name)
                    .map(|v| match &v.last_error {
                        Some(e) => format!("{}, last error {e}", v.state.as_str()),
                        None => v.state.as_str().to_string(),
                    })
                    .unwrap_or_default();
                format!("no MKT with {name} ({why})")
            })
            .collect();
        parts.join("; ")
    }

    fn mechanism(&self, peers: &[usize]) -> Option<Backend> {
        peers.first().map(|&i| self.peers[i].backend)
    }

    /// Handles one attach call.
    pub fn attach(&mut self, call: AttachCall, view: &[PeerView], now: Instant) -> AttachOutcome {
        let local = sys::local_address(call.socket.as_fd()).ok().flatten();
        let remote = call.remote();
        let peers = self.covering(call.request.role, local, remote);
        if peers.is_empty() {
            call.answer(result_ok(Installed::NotCovered, Vec::new(), None, None));
            return AttachOutcome::Done;
        }
        let (record, guarded) = match self.key_socket(&call, &peers, view) {
            Ok(r) => r,
            Err(e) => {
                warn!(pid = call.pid, fd = call.request.fd, error = %e, "cannot key an attached socket");
                call.answer(result_error(e));
                return AttachOutcome::Done;
            }
        };
        if call.request.role == SocketRole::Connect && !guarded.is_empty() {
            let wait = call
                .request
                .wait_ms
                .map(Duration::from_millis)
                .unwrap_or(self.acquire_timeout);
            let peer = peers[0];
            let name = self.peers[peer].name.clone();
            info!(pid = call.pid, fd = call.request.fd, peer = %name, wait_ms = wait.as_millis() as u64,
                "connect waits for an MKT under the guard");
            self.waiting.push(Waiting {
                call,
                peer,
                deadline: now + wait,
            });
            return AttachOutcome::Waiting { peer: name };
        }
        self.finish(call, record, &peers, guarded, view);
        AttachOutcome::Done
    }

    fn finish(
        &mut self,
        call: AttachCall,
        mut record: AttachedSocket,
        peers: &[usize],
        guarded: Vec<String>,
        view: &[PeerView],
    ) {
        let mechanism = self.mechanism(peers);
        let (installed, reason) = if guarded.is_empty() {
            (Installed::Keys, None)
        } else {
            (Installed::Guard, Some(Self::guard_reason(view, &guarded)))
        };
        record.guarded = reason.clone();
        info!(pid = call.pid, fd = call.request.fd, role = ?call.request.role, peers = ?record.peers,
            installed = ?installed, reason = reason.as_deref().unwrap_or(""), "socket attached");
        let names = record.peers.clone();
        // Recorded before the owner is answered: once it goes on with the
        // socket, a restarted aokd must be able to find it.
        self.persist.send(Op::PutSocket(socket_record(&record)));
        self.persist.barrier();
        self.registry.add(record);
        call.answer(result_ok(installed, names, mechanism, reason));
        // The call, and with it aokd's descriptor of the socket, is dropped here.
    }

    /// The earliest deadline: a waiting `connect`, or a deferred re-key.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let waiting = self.waiting.iter().map(|w| w.deadline);
        let retry = self.retry.as_ref().map(|(t, _)| *t);
        let restored = self.restored.iter().map(|r| {
            if r.released {
                r.expires_at
            } else {
                r.keep_until
            }
        });
        waiting.chain(retry).chain(restored).min()
    }

    /// Lets waiting `connect`s whose acquire timeout passed proceed under
    /// the guard.
    pub fn handle_timeout(&mut self, now: Instant, view: &[PeerView]) {
        let (due, keep): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| w.deadline <= now);
        self.waiting = keep;
        for w in due {
            self.release(w, view);
        }
        if let Some((at, peers)) = self.retry.take() {
            if at <= now {
                for peer in peers {
                    self.mkts_changed(&peer, view, now);
                }
            } else {
                self.retry = Some((at, peers));
            }
        }
        // Restored MKTs: superseded ones leave once their overlap is over
        // (like any stale key: not while a connection still uses it);
        // expired ones are forced out.
        let mut superseded: Vec<String> = Vec::new();
        for r in self.restored.iter_mut() {
            if !r.released && r.keep_until <= now && r.keep_until < r.expires_at {
                // From now on it only waits for its hard lifetime.
                r.released = true;
                if !superseded.contains(&r.record.peer) {
                    superseded.push(r.record.peer.clone());
                }
            }
        }
        let (expired, keep): (Vec<RestoredMkt>, Vec<RestoredMkt>) =
            std::mem::take(&mut self.restored)
                .into_iter()
                .partition(|r| r.expires_at <= now);
        self.restored = keep;
        let mut forced: Vec<String> = Vec::new();
        for r in expired {
            let rec = r.record;
            info!(peer = %rec.peer, send_id = rec.send_id, recv_id = rec.recv_id,
                "MKT from before the restart reached its hard lifetime: removed from its sockets");
            self.persist.send(Op::DeleteMkt {
                peer: rec.peer.clone(),
                send_id: rec.send_id,
                recv_id: rec.recv_id,
            });
            if !forced.contains(&rec.peer) {
                forced.push(rec.peer);
            }
        }
        for peer in superseded.iter().filter(|p| !forced.contains(p)) {
            self.rekey_peer(peer, view, now, false);
        }
        for peer in forced {
            // Its key may still be Current_key of a connection whose peer
            // never switched: forced out now.
            self.rekey_peer(&peer, view, now, true);
        }
    }

    fn release(&mut self, w: Waiting, view: &[PeerView]) {
        let peers = [w.peer];
        match self.key_socket(&w.call, &peers, view) {
            Ok((record, guarded)) => self.finish(w.call, record, &peers, guarded, view),
            Err(e) => w.call.answer(result_error(e)),
        }
    }

    /// Re-keys every socket of `peer` after its MKTs changed, and releases
    /// the `connect`s that waited for them.
    pub fn mkts_changed(&mut self, peer: &str, view: &[PeerView], now: Instant) {
        self.rekey_peer(peer, view, now, false);
    }

    /// [`KeyManager::mkts_changed`]; `force` also replaces stale keys that
    /// connections still use as Current_key (their MKT expired). With no
    /// MKT and no restored one the guard is always forced in.
    fn rekey_peer(&mut self, peer: &str, view: &[PeerView], now: Instant, force: bool) {
        let Some(idx) = self.peers.iter().position(|p| p.name == peer) else {
            return;
        };
        let desired = mkts_of(view, peer);
        let overlap = self.peers[idx].overlap;
        let mut keep = Vec::new();
        for r in self.restored.iter_mut().filter(|r| r.record.peer == peer) {
            if !desired.is_empty() && !r.released && r.keep_until == r.expires_at {
                // Superseded now: the peer may still send with it for a while.
                r.keep_until = r.expires_at.min(now + overlap);
            }
            if !r.released && now < r.keep_until {
                keep.push(KeyIds {
                    send_id: r.record.send_id,
                    recv_id: r.record.recv_id,
                });
            }
        }
        if desired.is_empty() && !keep.is_empty() {
            // The keys from before the restart are valid until replaced or
            // expired: leave the sockets alone.
            return;
        }
        let force = force || desired.is_empty();
        if !desired.is_empty() {
            let (ready, keep): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.waiting)
                .into_iter()
                .partition(|w| w.peer == idx);
            self.waiting = keep;
            for w in ready {
                self.release(w, view);
            }
        }
        let p = &self.peers[idx];
        let guard = desired.is_empty().then_some(&p.guard);
        let ids: Vec<u64> = self.registry.by_peer(peer).map(|s| s.id).collect();
        let mut gone = Vec::new();
        for id in ids {
            let Some(rec) = self.registry.get(id).cloned() else {
                continue;
            };
            let fd = match self.registry.reacquire(&rec) {
                Ok(fd) => fd,
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
            match reconcile_with(fd.as_fd(), p.backend, p.ip, &desired, guard, how) {
                Ok(outcome) => {
                    if !outcome.deferred.is_empty() {
                        let (_, peers) = self
                            .retry
                            .get_or_insert_with(|| (now + DEFERRED_RETRY, Vec::new()));
                        if !peers.iter().any(|p| p == peer) {
                            peers.push(peer.to_string());
                        }
                    }
                    if outcome.changed() {
                        info!(pid = rec.pid, fd = rec.fd, peer, added = ?outcome.added, removed = ?outcome.removed,
                            guarded = outcome.guarded, "socket keys updated");
                    }
                    if let Some(r) = self.registry.get_mut(id) {
                        r.guarded = guard.map(|_| Self::guard_reason(view, &[peer.to_string()]));
                    }
                }
                Err(e) => {
                    warn!(pid = rec.pid, fd = rec.fd, peer, error = %e, "cannot update socket keys")
                }
            }
        }
        for id in gone {
            if let Some(s) = self.registry.remove(id) {
                self.persist.send(Op::DeleteSocket(s.cookie));
            }
        }
    }

    /// `aoctl sockets`.
    pub fn status(&mut self) -> Vec<SocketStatus> {
        for (s, _) in self.registry.prune() {
            self.persist.send(Op::DeleteSocket(s.cookie));
        }
        self.registry
            .iter()
            .map(|s| {
                let backend = s.peers.first().and_then(|p| self.backend(p));
                let info = match backend {
                    Some(Backend::Ao) => self
                        .registry
                        .reacquire(s)
                        .ok()
                        .and_then(|fd| ao::info(fd.as_fd()).ok()),
                    _ => None,
                };
                SocketStatus {
                    pid: s.pid,
                    fd: s.fd,
                    role: role_name(s.role).to_string(),
                    local: s.local.map(|a| a.to_string()),
                    remote: s.remote.map(|a| a.to_string()),
                    peers: s.peers.clone(),
                    state: if s.guarded.is_some() {
                        "guarded"
                    } else {
                        "keys"
                    }
                    .to_string(),
                    guard_reason: s.guarded.clone(),
                    mechanism: backend.map(|b| b.to_string()),
                    attached_at: unix(s.attached_at),
                    pkt_good: info.as_ref().map(|i| i.pkt_good),
                    pkt_bad: info.as_ref().map(|i| i.pkt_bad),
                    pkt_key_not_found: info.as_ref().map(|i| i.pkt_key_not_found),
                    current_key: info.as_ref().and_then(|i| i.current_key),
                    rnext_key: info.as_ref().and_then(|i| i.rnext),
                }
            })
            .collect()
    }
}
