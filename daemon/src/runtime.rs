//! The event loop: moves datagrams, time and control requests between the
//! UDP sockets, the control socket and the sans-IO [`Endpoint`]. Protocol
//! decisions live in `aokd_proto`; this module only drives it, logs its
//! events and answers `aoctl`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use aokd_api::control::{
    Command, DaemonStatus, MktKey, MktStatus, PeerStatus, ResponseData, ResponseResult, SaStatus,
};
use aokd_proto::crypto::Secret;
use aokd_proto::ike::{self, Endpoint, EndpointConfig, Event, PeerView, PortRange};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::attach::AttachCall;
use crate::config::Config;
use crate::control::ControlCall;
use crate::keys::{AttachOutcome, KeyManager};
use crate::persist::{Op, Persist};
use crate::state::{IkeSaRecord, MktRecord, StateSnapshot};

/// Largest IKE datagram accepted (strongSwan's max_packet is 10000).
const MAX_DATAGRAM: usize = 65_535;

/// Converts the daemon configuration into the endpoint's.
pub fn endpoint_config(cfg: &Config) -> anyhow::Result<EndpointConfig> {
    let mut peers = Vec::new();
    for p in &cfg.peers {
        let local = match p.local {
            Some(ip) => ip,
            None => route_source(p.remote_addr()).with_context(|| {
                format!(
                    "peer {:?}: cannot find the local address toward {}",
                    p.name, p.remote
                )
            })?,
        };
        peers.push(ike::PeerConfig {
            name: p.name.clone(),
            remote: p.remote_addr(),
            local,
            local_id: p.local_identity(local),
            remote_id: p.remote_id.clone(),
            psk: Secret::new(p.psk.as_bytes().to_vec()),
            ike_suites: p.ike_proposals.clone(),
            mac_algorithms: p.mac_algorithms.clone(),
            include_options: p.include_tcp_options,
            tcp_ports: p
                .tcp_ports
                .iter()
                .map(|port| PortRange::single(*port))
                .collect(),
            initiate: p.initiate,
            lifetimes: mkt_lifetimes(&p.lifetimes),
        });
    }
    let mut ec = EndpointConfig::new(peers);
    ec.liveness = cfg.daemon.liveness;
    Ok(ec)
}

/// The endpoint's MKT lifetimes from the configured ones (jitter and
/// overlap are derived in proto, [`ike::Lifetimes::new`]).
fn mkt_lifetimes(l: &crate::config::Lifetimes) -> ike::Lifetimes {
    ike::Lifetimes::new(Some(l.ike_rekey), l.mkt_rekey, l.mkt_lifetime, l.pfs)
}

/// The source address the kernel would use toward `remote` (a connected
/// UDP socket sends nothing).
fn route_source(remote: SocketAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = match remote {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = StdUdpSocket::bind(any)?;
    s.connect(remote)?;
    Ok(s.local_addr()?.ip())
}

/// Maps monotonic instants to Unix seconds (rounded down once).
#[derive(Clone, Copy)]
struct WallClock {
    base: Instant,
    base_wall: Duration,
    base_unix: u64,
}

impl WallClock {
    fn now() -> WallClock {
        let base_wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        WallClock {
            base: Instant::now(),
            base_wall,
            base_unix: base_wall.as_secs(),
        }
    }

    fn unix(&self, t: Instant) -> u64 {
        let wall = if t >= self.base {
            self.base_wall + (t - self.base)
        } else {
            self.base_wall.saturating_sub(self.base - t)
        };
        wall.as_secs()
    }
}

/// A running daemon: the endpoint and its sockets.
pub struct Daemon {
    endpoint: Endpoint,
    sockets: Vec<Arc<UdpSocket>>,
    listen: Vec<SocketAddr>,
    clock: WallClock,
    /// A name for log lines when several daemons share a process (`aokd demo`).
    instance: String,
    /// Keys on attached sockets; `None` when this daemon only negotiates.
    keys: Option<KeyManager>,
    /// Where MKT, IKE SA and socket records go (docs/state.md).
    persist: Persist,
}

impl Daemon {
    /// Binds the IKE sockets and creates the endpoint.
    pub async fn bind(
        listen: &[SocketAddr],
        cfg: EndpointConfig,
        instance: &str,
        keys: Option<KeyManager>,
    ) -> anyhow::Result<Daemon> {
        let mut sockets = Vec::new();
        for addr in listen {
            sockets.push(
                UdpSocket::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind UDP {addr}"))?,
            );
        }
        Daemon::from_sockets(sockets, cfg, instance, keys)
    }

    /// Creates the daemon on sockets already bound (for `aokd demo`, which
    /// needs the ports before it can write the configurations).
    pub fn from_sockets(
        sockets: Vec<UdpSocket>,
        cfg: EndpointConfig,
        instance: &str,
        keys: Option<KeyManager>,
    ) -> anyhow::Result<Daemon> {
        let listen = sockets
            .iter()
            .map(|s| s.local_addr())
            .collect::<Result<Vec<_>, _>>()?;
        let endpoint = Endpoint::new(cfg, Instant::now(), Box::new(rand_core::OsRng))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let sockets = sockets.into_iter().map(Arc::new).collect();
        Ok(Daemon {
            endpoint,
            sockets,
            listen,
            clock: WallClock::now(),
            instance: instance.to_string(),
            keys,
            persist: Persist::disabled(),
        })
    }

    /// Records state through `persist` from now on, and takes back what
    /// `snapshot` (the state file as aokd left it) describes: the attached
    /// sockets, and the MKTs on them, whose KeyIDs the endpoint will not
    /// negotiate again while those keys may still be on a socket. IKE SAs
    /// cannot be resumed (their keys are not stored): their records are
    /// dropped and new ones negotiated.
    pub fn restore(&mut self, persist: Persist, snapshot: &StateSnapshot) {
        self.persist = persist.clone();
        for sa in &snapshot.ike_sas {
            info!(peer = %sa.peer, spi_i = %sa.spi_i, spi_r = %sa.spi_r,
                "IKE SA from before the restart abandoned: a new one will be negotiated");
            self.persist.send(Op::DeleteIkeSa {
                peer: sa.peer.clone(),
                spi_i: sa.spi_i.clone(),
                spi_r: sa.spi_r.clone(),
            });
        }
        let Some(keys) = self.keys.as_mut() else {
            return;
        };
        keys.set_persist(persist);
        let now = Instant::now();
        let now_unix = self.clock.unix(now);
        let restored = keys.restore(snapshot, now, now_unix, &self.endpoint.peers());
        for r in &restored.reservations {
            if let Err(e) = self
                .endpoint
                .reserve_key_ids(&r.peer, r.send_id, r.recv_id, r.until)
            {
                warn!(peer = %r.peer, error = %e, "cannot reserve the KeyIDs of a restored MKT");
            }
        }
        info!(
            sockets = restored.sockets,
            sockets_gone = restored.sockets_gone,
            mkts_kept = restored.reservations.len(),
            mkts_expired = restored.mkts_expired,
            "state restored"
        );
        // The peer does not know that this side lost its IKE SA: negotiate
        // now (with INITIAL_CONTACT) for every peer this side had state
        // with, even one configured not to initiate, instead of waiting for
        // the peer's liveness check or rekey to time out while its
        // connections run on restored keys or stall under the guard.
        let mut peers: Vec<&str> = restored.peers.iter().map(String::as_str).collect();
        for sa in &snapshot.ike_sas {
            if !peers.contains(&sa.peer.as_str()) {
                peers.push(&sa.peer);
            }
        }
        for peer in peers {
            match self.endpoint.initiate(peer, now) {
                Ok(true) => {
                    info!(%peer, "negotiating at once: this side had state with the peer before the restart")
                }
                Ok(false) => {}
                // A peer no longer configured.
                Err(e) => {
                    debug!(%peer, error = %e, "no negotiation for a peer from the state file")
                }
            }
        }
    }

    /// The bound IKE addresses (with the actual port when 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(
        mut self,
        mut control: mpsc::Receiver<ControlCall>,
        mut attach: Option<mpsc::Receiver<AttachCall>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let (tx, mut rx) = mpsc::channel::<(SocketAddr, Vec<u8>)>(1024);
        let mut readers = Vec::new();
        for s in &self.sockets {
            let s = Arc::clone(s);
            let tx = tx.clone();
            readers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    match s.recv_from(&mut buf).await {
                        Ok((n, from)) => {
                            if tx.send((from, buf[..n].to_vec())).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => debug!(error = %e, "UDP receive error"),
                    }
                }
            }));
        }
        drop(tx);
        tokio::pin!(shutdown);
        info!(instance = %self.instance, listen = ?self.listen, peers = self.endpoint.config().peers.len(), "aokd running");
        loop {
            self.flush().await;
            let key_deadline = self.keys.as_ref().and_then(KeyManager::poll_timeout);
            let deadline = match (self.endpoint.poll_timeout(), key_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let attach_call = async {
                match attach.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                Some((from, data)) = rx.recv() => {
                    self.endpoint.handle_datagram(Instant::now(), from, &data);
                }
                Some(call) = control.recv() => {
                    let result = self.control(call.command, call.peer_uid);
                    let _ = call.reply.send(result);
                }
                Some(call) = attach_call => self.attach(call),
                _ = sleep => {
                    let now = Instant::now();
                    self.endpoint.handle_timeout(now);
                    if let Some(keys) = self.keys.as_mut() {
                        keys.handle_timeout(now, &self.endpoint.peers());
                    }
                }
                _ = &mut shutdown => break,
            }
        }
        for r in readers {
            r.abort();
        }
        info!(instance = %self.instance, "aokd stopped");
        Ok(())
    }

    /// Handles an attach call: keys the socket now, or lets it wait for
    /// the peer's negotiation (which starts if nothing is under way).
    fn attach(&mut self, call: AttachCall) {
        let Some(keys) = self.keys.as_mut() else {
            call.answer(crate::attach::result_error(
                "this aokd instance does not key sockets",
            ));
            return;
        };
        let now = Instant::now();
        if let AttachOutcome::Waiting { peer } = keys.attach(call, &self.endpoint.peers(), now) {
            if let Err(e) = self.endpoint.initiate(&peer, now) {
                warn!(%peer, error = %e, "cannot start a negotiation for a waiting connect");
            }
        }
    }

    async fn flush(&mut self) {
        let mut changed: Vec<String> = Vec::new();
        let mut events = Vec::new();
        while let Some(ev) = self.endpoint.poll_event() {
            events.push(ev);
        }
        if !events.is_empty() && self.persist.enabled() {
            let view = self.endpoint.peers();
            for ev in &events {
                self.record(ev, &view);
            }
        }
        for ev in events {
            if let Event::MktCreated { peer, .. }
            | Event::MktDeleted { peer, .. }
            | Event::MktSuperseded { peer, .. } = &ev
            {
                if !changed.contains(peer) {
                    changed.push(peer.clone());
                }
            }
            self.log_event(ev);
        }
        if let (Some(keys), false) = (self.keys.as_mut(), changed.is_empty()) {
            let view = self.endpoint.peers();
            let now = Instant::now();
            for peer in changed {
                keys.mkts_changed(&peer, &view, now);
            }
        }
        while let Some(t) = self.endpoint.poll_transmit() {
            let socket = self
                .sockets
                .iter()
                .zip(&self.listen)
                .find(|(_, a)| a.is_ipv4() == t.destination.is_ipv4())
                .map(|(s, _)| s);
            match socket {
                Some(s) => {
                    if let Err(e) = s.send_to(&t.contents, t.destination).await {
                        warn!(destination = %t.destination, error = %e, "cannot send IKE datagram");
                    }
                }
                None => warn!(destination = %t.destination, "no IKE socket of this address family"),
            }
        }
    }

    /// Writes what `ev` changed to the state file. A new MKT's record is
    /// durable before its key goes on any socket.
    fn record(&self, ev: &Event, view: &[PeerView]) {
        match ev {
            Event::MktCreated {
                peer,
                spi_i,
                spi_r,
                mkt,
                ..
            } => {
                let m = view
                    .iter()
                    .filter(|p| &p.name == peer)
                    .flat_map(|p| p.mkts.iter())
                    .find(|m| m.mkt.send_id == mkt.send_id && m.mkt.recv_id == mkt.recv_id);
                let now = Instant::now();
                let rec = MktRecord::from_mkt(
                    peer,
                    mkt,
                    &format!("{spi_i:016x}"),
                    &format!("{spi_r:016x}"),
                    self.clock.unix(m.map_or(now, |m| m.created_at)),
                    m.and_then(|m| m.rekey_at).map(|t| self.clock.unix(t)),
                    // Rounded up: the record must not let a restarted aokd
                    // reuse the KeyIDs before the key is really gone.
                    self.clock.unix(m.map_or(now, |m| m.expires_at)) + 1,
                );
                self.persist.put_mkt_durable(rec);
            }
            // The record stays until the hard lifetime: a retired MKT's key
            // can linger on a connection that still uses it, and a restarted
            // aokd must not hand out its KeyIDs meanwhile.
            Event::MktDeleted { .. } => self.persist.send(Op::PruneMkts {
                now_unix: self.clock.unix(Instant::now()),
            }),
            Event::IkeSaEstablished {
                peer,
                spi_i,
                spi_r,
                role,
                ..
            } => self.persist.send(Op::PutIkeSa(
                self.ike_sa_record(peer, *spi_i, *spi_r, *role, view),
            )),
            Event::IkeSaRekeyed {
                peer,
                old_spi_i,
                old_spi_r,
                spi_i,
                spi_r,
                role,
                ..
            } => {
                self.persist.send(Op::PutIkeSa(
                    self.ike_sa_record(peer, *spi_i, *spi_r, *role, view),
                ));
                self.persist.send(Op::DeleteIkeSa {
                    peer: peer.clone(),
                    spi_i: format!("{old_spi_i:016x}"),
                    spi_r: format!("{old_spi_r:016x}"),
                });
            }
            Event::IkeSaDeleted {
                peer, spi_i, spi_r, ..
            } => self.persist.send(Op::DeleteIkeSa {
                peer: peer.clone(),
                spi_i: format!("{spi_i:016x}"),
                spi_r: format!("{spi_r:016x}"),
            }),
            _ => {}
        }
    }

    /// The state file's record of an IKE SA, with its rekey deadline.
    fn ike_sa_record(
        &self,
        peer: &str,
        spi_i: u64,
        spi_r: u64,
        role: ike::Role,
        view: &[PeerView],
    ) -> IkeSaRecord {
        let rekey_at = view
            .iter()
            .filter(|p| p.name == peer)
            .flat_map(|p| p.sas.iter())
            .find(|s| s.spi_i == spi_i && s.spi_r == spi_r)
            .and_then(|s| s.rekey_at);
        IkeSaRecord {
            peer: peer.to_string(),
            spi_i: format!("{spi_i:016x}"),
            spi_r: format!("{spi_r:016x}"),
            role: role.as_str().to_string(),
            established_at_unix: self.clock.unix(Instant::now()),
            rekey_at_unix: rekey_at.map(|t| self.clock.unix(t)),
        }
    }

    fn log_event(&self, ev: Event) {
        let inst = &self.instance;
        match ev {
            Event::IkeSaEstablished {
                peer,
                spi_i,
                spi_r,
                role,
                suite,
                tcp_ao_capable,
            } => info!(
                instance = %inst, %peer, spi_i = %format!("{spi_i:016x}"), spi_r = %format!("{spi_r:016x}"),
                role = role.as_str(), %suite, tcp_ao_capable, "IKE SA established"
            ),
            Event::MktCreated {
                peer, mkt, ports, ..
            } => info!(
                instance = %inst, %peer, send_id = mkt.send_id, recv_id = mkt.recv_id, algorithm = %mkt.algorithm,
                include_options = mkt.include_options, key_fingerprint = %mkt.fingerprint(), ports = ?ports,
                "MKT negotiated"
            ),
            Event::MktDeleted {
                peer,
                send_id,
                recv_id,
                reason,
            } => {
                info!(instance = %inst, %peer, send_id, recv_id, reason, "MKT deleted")
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
                by_peer, "IKE negotiation failed: {error}"
            ),
            Event::ChildFailed {
                peer,
                error,
                by_peer,
            } => warn!(
                instance = %inst, %peer, notify = %error.notify().map(|n| n.to_string()).unwrap_or_default(),
                by_peer, "TCP-AO child SA failed, IKE SA kept: {error}"
            ),
            Event::PeerNotCapable { peer } => warn!(
                instance = %inst, %peer,
                "peer did not advertise TCP-AO keying: IKE SA without MKT, TCP-AO not negotiated"
            ),
            Event::RekeyCollision { peer, kept_ours } => {
                info!(instance = %inst, %peer, kept_ours, "simultaneous MKT rekey resolved (RFC 7296 2.8.1)")
            }
            Event::SimultaneousInitiation { peer, kept_ours } => {
                info!(instance = %inst, %peer, kept_ours, "simultaneous initiation resolved")
            }
            Event::Dropped { from, reason } => {
                debug!(instance = %inst, %from, %reason, "datagram dropped")
            }
            Event::IkeSaRekeyed {
                peer,
                old_spi_i,
                old_spi_r,
                spi_i,
                spi_r,
                role,
                suite,
            } => info!(
                instance = %inst, %peer, old_spi_i = %format!("{old_spi_i:016x}"),
                old_spi_r = %format!("{old_spi_r:016x}"), spi_i = %format!("{spi_i:016x}"),
                spi_r = %format!("{spi_r:016x}"), role = role.as_str(), %suite, "IKE SA rekeyed"
            ),
            Event::IkeRekeyCollision { peer, kept_ours } => {
                info!(instance = %inst, %peer, kept_ours, "simultaneous IKE SA rekey resolved (RFC 7296 2.8.2)")
            }
            Event::IkeRekeyFailed {
                peer,
                error,
                by_peer,
            } => warn!(
                instance = %inst, %peer, notify = %error.notify().map(|n| n.to_string()).unwrap_or_default(),
                by_peer, "IKE SA rekey failed, IKE SA kept, retried later: {error}"
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
                instance = %inst, %peer, send_id, recv_id, reason,
                "MKT superseded, retired after the overlap without a Delete"
            ),
        }
    }

    /// Answers one control command.
    pub fn control(&mut self, command: Command, peer_uid: u32) -> ResponseResult {
        let peers = self.endpoint.peers();
        let data = match command {
            Command::Status => ResponseData::Status(self.status(&peers)),
            Command::Sas => ResponseData::Sas {
                sas: self.sas(&peers),
            },
            Command::Mkts => ResponseData::Mkts {
                mkts: self.mkts(&peers),
            },
            Command::Sockets => ResponseData::Sockets {
                sockets: self
                    .keys
                    .as_mut()
                    .map(KeyManager::status)
                    .unwrap_or_default(),
            },
            Command::MktKeys => {
                if peer_uid != 0 {
                    return ResponseResult::Error {
                        message: crate::control::MKT_KEYS_REFUSED.to_string(),
                    };
                }
                info!(
                    uid = peer_uid,
                    "MKT keys requested over the control socket (aoctl verify --from-daemon)"
                );
                let keys = peers
                    .iter()
                    .flat_map(|p| {
                        p.mkts.iter().map(|m| MktKey {
                            peer: p.name.clone(),
                            send_id: m.mkt.send_id,
                            recv_id: m.mkt.recv_id,
                            algorithm: m.mkt.algorithm.name().to_string(),
                            include_options: m.mkt.include_options,
                            master_key: hex::encode(m.mkt.master_key.as_bytes()),
                        })
                    })
                    .collect();
                ResponseData::MktKeys { keys }
            }
            Command::Initiate { peer } => match self.endpoint.initiate(&peer, Instant::now()) {
                Ok(true) => ResponseData::Accepted {
                    message: format!("initiating IKE SA with {peer}"),
                },
                Ok(false) => ResponseData::Accepted {
                    message: format!("{peer} already has an IKE SA or one is being set up"),
                },
                Err(e) => {
                    return ResponseResult::Error {
                        message: e.to_string(),
                    }
                }
            },
            Command::Rekey { peer, ike: true } => {
                match self.endpoint.rekey_ike(&peer, Instant::now()) {
                    Ok(true) => ResponseData::Accepted {
                        message: format!("rekeying the IKE SA with {peer}"),
                    },
                    Ok(false) => ResponseData::Accepted {
                        message: format!(
                            "{peer} has no established IKE SA to rekey, or a rekey is under way"
                        ),
                    },
                    Err(e) => {
                        return ResponseResult::Error {
                            message: e.to_string(),
                        }
                    }
                }
            }
            Command::Rekey { peer, ike: false } => match self.endpoint.rekey(&peer, Instant::now())
            {
                Ok(true) => ResponseData::Accepted {
                    message: format!("rekeying the newest MKT with {peer}"),
                },
                Ok(false) => ResponseData::Accepted {
                    message: format!("{peer} has no MKT to rekey"),
                },
                Err(e) => {
                    return ResponseResult::Error {
                        message: e.to_string(),
                    }
                }
            },
            Command::Terminate { peer } => match self.endpoint.terminate(&peer, Instant::now()) {
                Ok(n) => ResponseData::Accepted {
                    message: format!("deleted {n} IKE SA(s) with {peer}"),
                },
                Err(e) => {
                    return ResponseResult::Error {
                        message: e.to_string(),
                    }
                }
            },
        };
        ResponseResult::Ok { data }
    }

    fn status(&self, peers: &[PeerView]) -> DaemonStatus {
        DaemonStatus {
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.clock.base_unix,
            listen: self.listen.iter().map(|a| a.to_string()).collect(),
            peers: peers
                .iter()
                .map(|p| PeerStatus {
                    name: p.name.clone(),
                    address: p.remote.to_string(),
                    ike_state: p.state.as_str().to_string(),
                    tcp_ao_capable: p.tcp_ao_capable,
                    mkts: p.mkts.len(),
                    last_error: p.last_error.clone(),
                    backend: self
                        .keys
                        .as_ref()
                        .and_then(|k| k.backend(&p.name))
                        .map(|b| b.to_string()),
                })
                .collect(),
        }
    }

    fn sas(&self, peers: &[PeerView]) -> Vec<SaStatus> {
        peers
            .iter()
            .flat_map(|p| {
                p.sas.iter().map(|s| SaStatus {
                    peer: p.name.clone(),
                    address: p.remote.to_string(),
                    state: s.state.to_string(),
                    role: s.role.as_str().to_string(),
                    spi_i: format!("{:016x}", s.spi_i),
                    spi_r: format!("{:016x}", s.spi_r),
                    suite: s.suite.map(|x| x.to_string()),
                    established_at: s.established_at.map(|t| self.clock.unix(t)),
                    rekey_at: s.rekey_at.map(|t| self.clock.unix(t)),
                    tcp_ao_capable: p.tcp_ao_capable,
                    last_error: p.last_error.clone(),
                })
            })
            .collect()
    }

    fn mkts(&self, peers: &[PeerView]) -> Vec<MktStatus> {
        // MKTs from before a restart: their keys are on sockets until
        // replaced (then for the overlap) or expired.
        let restored = self.keys.iter().flat_map(|k| k.restored()).map(|r| {
            let rec = &r.record;
            MktStatus {
                peer: rec.peer.clone(),
                send_id: rec.send_id,
                recv_id: rec.recv_id,
                algorithm: rec.algorithm.clone(),
                include_options: rec.include_options,
                created_at: rec.created_at_unix,
                key_fingerprint: rec.key_fingerprint.clone(),
                state: Some(
                    if r.released {
                        "restored-stale"
                    } else {
                        "restored"
                    }
                    .to_string(),
                ),
                rekey_at: None,
                expires_at: Some(rec.expires_at_unix),
            }
        });
        let live: Vec<MktStatus> = peers
            .iter()
            .flat_map(|p| {
                p.mkts.iter().map(|m| MktStatus {
                    peer: p.name.clone(),
                    send_id: m.mkt.send_id,
                    recv_id: m.mkt.recv_id,
                    algorithm: m.mkt.algorithm.name().to_string(),
                    include_options: m.mkt.include_options,
                    created_at: self.clock.unix(m.created_at),
                    key_fingerprint: m.mkt.fingerprint(),
                    state: Some(
                        if m.retire_at.is_some() {
                            "retiring"
                        } else {
                            "active"
                        }
                        .to_string(),
                    ),
                    rekey_at: m.rekey_at.map(|t| self.clock.unix(t)),
                    expires_at: Some(self.clock.unix(m.expires_at)),
                })
            })
            .collect();
        restored.chain(live).collect()
    }

    /// A snapshot of the MKTs, for `aokd demo`.
    pub fn mkt_status(&self) -> Vec<MktStatus> {
        self.mkts(&self.endpoint.peers())
    }
}
