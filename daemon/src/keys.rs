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

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aokd_proto::attach::{Installed, SocketRole};
use aokd_proto::control::SocketStatus;
use aokd_proto::ike::PeerView;
use aokd_proto::mkt::MasterKeyTuple;
use tracing::{info, warn};

use crate::attach::{result_error, result_ok, AttachCall};
use crate::config::{BackendChoice, Config};
use crate::kernel::installer::guard_key;
use crate::kernel::{ao, sys, Backend, Support};
use crate::sockets::{reconcile, AttachedSocket, SocketRegistry};

/// A peer as the key manager sees it.
struct CoveredPeer {
    name: String,
    ip: IpAddr,
    ports: Vec<u16>,
    backend: Backend,
    guard: MasterKeyTuple,
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

/// Keys on sockets for every configured peer.
pub struct KeyManager {
    peers: Vec<CoveredPeer>,
    registry: SocketRegistry,
    waiting: Vec<Waiting>,
    acquire_timeout: Duration,
    /// Peers with sockets whose stale keys are still in use (the peer has
    /// not switched to the new MKT yet): reconciled again at this time.
    retry: Option<(Instant, Vec<String>)>,
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
            });
        }
        Ok(KeyManager {
            peers,
            registry: SocketRegistry::new(),
            waiting: Vec::new(),
            acquire_timeout: cfg.daemon.acquire_timeout,
            retry: None,
        })
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
            reconcile(
                call.socket.as_fd(),
                p.backend,
                p.ip,
                &desired,
                guard,
                call.listening(),
            )
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
        self.registry.add(record);
        call.answer(result_ok(installed, names, mechanism, reason));
        // The call, and with it aokd's descriptor of the socket, is dropped here.
    }

    /// The earliest deadline: a waiting `connect`, or a deferred re-key.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let waiting = self.waiting.iter().map(|w| w.deadline).min();
        let retry = self.retry.as_ref().map(|(t, _)| *t);
        match (waiting, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
        let Some(idx) = self.peers.iter().position(|p| p.name == peer) else {
            return;
        };
        let desired = mkts_of(view, peer);
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
            match reconcile(fd.as_fd(), p.backend, p.ip, &desired, guard, listening) {
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
            self.registry.remove(id);
        }
    }

    /// `aoctl sockets`.
    pub fn status(&mut self) -> Vec<SocketStatus> {
        self.registry.prune();
        self.registry
            .iter()
            .map(|s| {
                let backend = s.peers.first().and_then(|p| self.backend(p));
                let (pkt_good, pkt_bad) = match backend {
                    Some(Backend::Ao) => match self
                        .registry
                        .reacquire(s)
                        .ok()
                        .and_then(|fd| ao::info(fd.as_fd()).ok())
                    {
                        Some(i) => (Some(i.pkt_good), Some(i.pkt_bad)),
                        None => (None, None),
                    },
                    _ => (None, None),
                };
                SocketStatus {
                    pid: s.pid,
                    fd: s.fd,
                    role: match s.role {
                        SocketRole::Connect => "connect",
                        SocketRole::Listen => "listen",
                        SocketRole::Accepted => "accepted",
                    }
                    .to_string(),
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
                    pkt_good,
                    pkt_bad,
                }
            })
            .collect()
    }
}
