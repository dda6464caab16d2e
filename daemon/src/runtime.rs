//! The event loop: moves datagrams, time, control requests and attach
//! calls between the UDP sockets, the control and attach sockets and the
//! sans-IO [`Endpoint`], and hands the endpoint's events on. It reads the
//! clock once per wake-up and passes that time down. Protocol decisions
//! live in `aokd_proto`, key policy in [`crate::keys`], aoctl's answers in
//! [`crate::status`], event logging in [`crate::event_log`], state records
//! in [`crate::records`], the configuration's translation in
//! [`crate::endpoint_config`], what a reload changes in [`crate::reload`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aokd_proto::ike::{Endpoint, EndpointConfig, Event, Transmit};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use aokd_api::attach::{Installed, SocketRole};
use aokd_api::control::{Command, PeerReload, ReloadReport, ResponseData, ResponseResult};
use aokd_proto::ike::PeerChange;

use crate::attach::{AttachCall, Reply};
use crate::clock::WallClock;
use crate::config::Config;
use crate::control::ControlCall;
use crate::event_log::EventLog;
use crate::held::{HeldTurns, MktPeers};
use crate::keys::{Answer, Answered, AttachOutcome, KeyManager};
use crate::metrics_file::MetricsFile;
use crate::persist::{Op, Persist};
use crate::records::record_events;
use crate::retired_keys::RetiredKeys;
use crate::state::StateSnapshot;
use crate::status::{attach_result, guard_reason, Answers};

pub use crate::endpoint_config::endpoint_config;

/// Largest IKE datagram accepted (strongSwan's max_packet is 10000).
const MAX_DATAGRAM: usize = 65_535;
/// The most datagrams handled in one loop turn (one flush, one state-file
/// commit for all of them).
const DATAGRAMS_PER_TURN: usize = 64;
/// The IKE sockets' receive buffer, in octets (see [`Daemon::bind`]).
const UDP_RECEIVE_BUFFER: i32 = 8 << 20;

/// An attach call the key manager has not answered yet: where the answer
/// goes, and what the log line says about the socket.
struct Pending {
    reply: Reply,
    pid: i32,
    fd: i32,
    role: SocketRole,
}

/// What woke the event loop up.
enum Wake {
    Datagram(SocketAddr, Vec<u8>),
    Control(ControlCall),
    Attach(AttachCall),
    Timer,
    /// The first held-back turn's records are durable.
    Durable,
    Shutdown,
}

/// A running daemon: the endpoint and its sockets.
pub struct Daemon {
    endpoint: Endpoint,
    sockets: Vec<Arc<UdpSocket>>,
    listen: Vec<SocketAddr>,
    clock: WallClock,
    /// A name for log lines when several daemons share a process (`aokd demo`).
    instance: String,
    /// The endpoint's events as log lines (dropped datagrams summarized).
    log: EventLog,
    /// Keys on attached sockets; `None` when this daemon only negotiates.
    keys: Option<KeyManager>,
    /// Where MKT, IKE SA and socket records go (docs/state.md).
    persist: Persist,
    /// Attach calls waiting for the key manager's answer, by request id.
    pending: BTreeMap<u64, Pending>,
    /// The last request id handed out.
    last_request: u64,
    /// Keys of MKTs that ended, for `aoctl verify --from-daemon`.
    retired: RetiredKeys,
    /// The configuration running, to read its file again on a reload;
    /// `None` for a daemon without one (`aokd demo`).
    config: Option<Config>,
    /// The metrics file, when configured.
    metrics: Option<MetricsFile>,
    /// Turns waiting for the state file ([`crate::held`]).
    held: HeldTurns<(Reply, aokd_api::attach::AttachResult)>,
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
            let socket = UdpSocket::bind(addr)
                .await
                .with_context(|| format!("cannot bind UDP {addr}"))?;
            // Room for a burst (a flood of forged IKE_SA_INIT, a storm of
            // peers after a restart) while the loop works through it: with
            // the default 208 KiB, 5 % of a 100,000 a second flood was
            // dropped by the kernel, a real peer's datagrams among them.
            match aokd_sys::set_receive_buffer(socket.as_fd(), UDP_RECEIVE_BUFFER) {
                Ok(got) => debug!(%addr, bytes = got, "IKE socket receive buffer"),
                Err(e) => {
                    warn!(%addr, error = %e, "cannot enlarge the IKE socket's receive buffer")
                }
            }
            sockets.push(socket);
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
            log: EventLog::new(instance),
            keys,
            persist: Persist::disabled(),
            pending: BTreeMap::new(),
            last_request: 0,
            retired: RetiredKeys::new(crate::config::DEFAULT_RETIRED_KEYS),
            config: None,
            metrics: None,
            held: HeldTurns::default(),
        })
    }

    /// Keeps the keys of MKTs that end for `keep` from now on
    /// (`[daemon] retired_keys`; zero: none).
    pub fn set_retired_keys(&mut self, keep: Duration) {
        self.retired = RetiredKeys::new(keep);
    }

    /// Records state through `persist` from now on, and takes back what
    /// `snapshot` (the state file as aokd left it) describes: the attached
    /// sockets, and the MKTs on them, whose KeyIDs the endpoint will not
    /// negotiate again while those keys may still be on a socket. IKE SAs
    /// cannot be resumed (their keys are not stored): their records are
    /// dropped and new ones negotiated.
    pub fn restore(&mut self, persist: Persist, snapshot: &StateSnapshot) {
        self.persist = persist.clone();
        if !snapshot.ike_sas.is_empty() {
            info!(
                ike_sas = snapshot.ike_sas.len(),
                "IKE SAs from before the restart abandoned: new ones will be negotiated"
            );
        }
        for sa in &snapshot.ike_sas {
            debug!(peer = %sa.peer, spi_i = %sa.spi_i, spi_r = %sa.spi_r,
                "IKE SA from before the restart abandoned: a new one will be negotiated");
            self.persist.send(Op::DeleteIkeSa {
                peer: sa.peer.clone(),
                spi_i: sa.spi_i.clone(),
                spi_r: sa.spi_r.clone(),
            });
        }
        self.restore_members(snapshot);
        let Some(keys) = self.keys.as_mut() else {
            return;
        };
        keys.set_persist(persist);
        let now = Instant::now();
        let now_unix = self.clock.unix(now);
        let restored = keys.restore(snapshot, now, now_unix);
        for r in &restored.reservations {
            if let Err(e) = self
                .endpoint
                .reserve_key_ids(&r.peer, r.send_id, r.recv_id, r.until)
            {
                warn!(peer = %r.peer, error = %e, "cannot reserve the KeyIDs of a restored MKT");
            }
        }
        for (peer, send_id, recv_id) in &restored.ended {
            if let Err(e) = self
                .endpoint
                .note_ended_key_ids(peer, *send_id, *recv_id, now)
            {
                warn!(peer = %peer, error = %e, "cannot pass on the KeyIDs of an expired MKT");
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

    /// Makes again the peer group members the state file has records of
    /// (MKTs or sockets under a `GROUP/ADDRESS` name that is no configured
    /// peer), before their records are restored: a member keeps its state
    /// across a restart, and is forgotten as usual once nothing is left.
    fn restore_members(&mut self, snapshot: &StateSnapshot) {
        let names: BTreeSet<&str> = snapshot
            .mkts
            .iter()
            .map(|m| m.peer.as_str())
            .chain(
                snapshot
                    .sockets
                    .iter()
                    .flat_map(|s| s.peers.iter().map(String::as_str)),
            )
            .collect();
        let groups = self.config.as_ref().map_or(&[][..], |c| &c.groups[..]);
        for name in names {
            if self.endpoint.peer(name).is_some() {
                continue;
            }
            let Some((group, ip)) = self
                .endpoint
                .group_of_member_name(name)
                .map(|(g, ip)| (g.name.clone(), ip))
            else {
                continue;
            };
            let Some(g) = groups.iter().find(|g| g.name == group) else {
                continue;
            };
            match self.endpoint.add_member(ip) {
                Ok((peer, _)) => {
                    info!(%peer, %group, "peer group member restored from the state file");
                    if let Some(keys) = self.keys.as_mut() {
                        // No socket is registered yet: nothing to answer.
                        let _ = keys.add_peer(&g.member(ip), Instant::now());
                    }
                }
                Err(e) => warn!(peer = %name, error = %e, "cannot restore a peer group member"),
            }
        }
    }

    /// Reloads read `config.file` again ([`Daemon::reload`]): `config` is
    /// what the daemon was started with.
    pub fn set_config(&mut self, config: Config) {
        self.config = Some(config);
    }

    /// Reads the configuration file again and applies it at `now` (SIGHUP,
    /// `aoctl reload`): peers removed, added and changed as
    /// [`crate::reload::plan`] and the endpoint's [`PeerChange`] say. A
    /// file that is refused (syntax, a key's value, a PSK file, a local
    /// address that cannot be found, a backend this kernel lacks) changes
    /// nothing: the error names the file and the key. Logged either way.
    pub fn reload(&mut self, now: Instant) -> Result<ReloadReport, String> {
        let result = self.try_reload(now);
        match &result {
            Ok(r) => {
                info!(file = %r.file, added = ?r.added, removed = ?r.removed,
                    changed = r.changed.len(), unchanged = r.unchanged.len(), "configuration reloaded");
                for c in &r.changed {
                    info!(peer = %c.peer, action = %c.action, "peer changed by the reload");
                }
                for n in &r.needs_restart {
                    warn!(setting = %n, "changed in the configuration file, applies only after a restart");
                }
            }
            Err(e) => warn!(error = %e, "reload refused: the running configuration is unchanged"),
        }
        result
    }

    fn try_reload(&mut self, now: Instant) -> Result<ReloadReport, String> {
        let Some(running) = self.config.as_ref() else {
            return Err("this aokd instance has no configuration file to reload".into());
        };
        let file = running.file.display().to_string();
        let new = Config::load(&running.file).map_err(|e| e.to_string())?;
        let plan = crate::reload::plan(running, new);
        // Everything that can fail is done before anything changes.
        let ec = endpoint_config(&plan.config).map_err(|e| format!("{file}: {e:#}"))?;
        if let Some(keys) = self.keys.as_ref() {
            keys.check(&plan.config)
                .map_err(|e| format!("{file}: {e}"))?;
        }
        let mut ike_peers: BTreeMap<String, aokd_proto::ike::PeerConfig> =
            ec.peers.into_iter().map(|p| (p.name.clone(), p)).collect();
        let mut report = ReloadReport {
            file: file.clone(),
            needs_restart: plan.needs_restart.clone(),
            ..Default::default()
        };
        let mut answered = Vec::new();
        for name in &plan.removed {
            match self.endpoint.remove_peer(name, now) {
                Ok(_) => report.removed.push(name.clone()),
                Err(e) => warn!(peer = %name, error = %e, "cannot remove the peer"),
            }
            if let Some(keys) = self.keys.as_mut() {
                answered.extend(keys.remove_peer(name));
            }
        }
        let daemon_peer = |name: &str| plan.config.peers.iter().find(|p| p.name == name);
        for name in &plan.added {
            let Some(pc) = ike_peers.remove(name) else {
                continue;
            };
            match self.endpoint.add_peer(pc, now) {
                Ok(()) => report.added.push(name.clone()),
                Err(e) => warn!(peer = %name, error = %e, "cannot add the peer"),
            }
            if let (Some(keys), Some(p)) = (self.keys.as_mut(), daemon_peer(name)) {
                answered.extend(keys.add_peer(p, now));
            }
        }
        for name in &plan.common {
            let Some(pc) = ike_peers.remove(name) else {
                continue;
            };
            match self.endpoint.update_peer(pc, now) {
                Ok(PeerChange::Unchanged) => report.unchanged.push(name.clone()),
                Ok(change) => report.changed.push(PeerReload {
                    peer: name.clone(),
                    action: change.as_str().to_string(),
                }),
                Err(e) => warn!(peer = %name, error = %e, "cannot change the peer"),
            }
            if let (Some(keys), Some(p)) = (self.keys.as_mut(), daemon_peer(name)) {
                answered.extend(keys.update_peer(p, now));
            }
        }
        self.answer(answered);
        self.config = Some(plan.config);
        Ok(report)
    }

    /// Writes the metrics file through `metrics` from now on (the first
    /// text at once, then every interval).
    pub fn set_metrics_file(&mut self, metrics: MetricsFile) {
        self.metrics = Some(metrics);
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
        info!(instance = %self.instance, listen = %self.listen.iter().map(ToString::to_string).collect::<Vec<_>>().join(","), peers = self.endpoint.config().peers.len(), "aokd running");
        // What restore() started goes out first.
        self.flush(Instant::now()).await;
        loop {
            let key_deadline = self.keys.as_ref().and_then(KeyManager::poll_timeout);
            let deadline = [
                self.endpoint.poll_timeout(),
                key_deadline,
                self.log.poll_timeout(),
                self.metrics.as_ref().map(MetricsFile::poll_timeout),
            ]
            .into_iter()
            .flatten()
            .min();
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
            let wake = tokio::select! {
                () = self.held.first_durable() => Wake::Durable,
                Some((from, data)) = rx.recv() => Wake::Datagram(from, data),
                Some(call) = control.recv() => Wake::Control(call),
                Some(call) = attach_call => Wake::Attach(call),
                _ = sleep => Wake::Timer,
                _ = &mut shutdown => Wake::Shutdown,
            };
            // The one reading of the clock for this wake-up.
            let now = Instant::now();
            match wake {
                Wake::Datagram(from, data) => {
                    self.endpoint.handle_datagram(now, from, &data);
                    // Whatever else has arrived, in the same turn: one
                    // state-file commit and one flush for all of them.
                    for _ in 1..DATAGRAMS_PER_TURN {
                        match rx.try_recv() {
                            Ok((from, data)) => self.endpoint.handle_datagram(now, from, &data),
                            Err(_) => break,
                        }
                    }
                }
                Wake::Control(call) if call.command == Command::Reload => {
                    // The running peers' state settled first: a reload
                    // adds and removes peers of the key manager.
                    self.release_all().await;
                    let now = Instant::now();
                    let result = match self.reload(now) {
                        Ok(report) => ResponseResult::Ok {
                            data: ResponseData::Reloaded(report),
                        },
                        Err(message) => ResponseResult::Error { message },
                    };
                    let _ = call.reply.send(result);
                }
                Wake::Control(call) => {
                    let result = self.answers().control(call.command, call.peer_uid, now);
                    let _ = call.reply.send(result);
                }
                Wake::Attach(call) => self.attach(call, now),
                Wake::Timer => {
                    self.endpoint.handle_timeout(now);
                    if let Some(keys) = self.keys.as_mut() {
                        let answered = keys.handle_timeout(now);
                        self.answer(answered);
                    }
                }
                Wake::Durable => self.release(now).await,
                Wake::Shutdown => break,
            }
            self.flush(now).await;
            self.write_metrics(now);
        }
        // What is held back goes out once durable: keys on sockets, the
        // peers answered.
        self.release_all().await;
        for r in readers {
            r.abort();
        }
        info!(instance = %self.instance, "aokd stopped");
        Ok(())
    }

    /// Hands the metrics text to the metrics file's writer when it is due.
    fn write_metrics(&mut self, now: Instant) {
        if !self.metrics.as_ref().is_some_and(|m| m.due(now)) {
            return;
        }
        let text = self.answers().metrics();
        if let Some(m) = self.metrics.as_mut() {
            m.submit(text, now);
        }
    }

    /// What aoctl's answers read and act on.
    fn answers(&mut self) -> Answers<'_> {
        Answers {
            endpoint: &mut self.endpoint,
            keys: self.keys.as_mut(),
            clock: &self.clock,
            listen: &self.listen,
            persist: &self.persist,
            retired: &mut self.retired,
        }
    }

    /// Handles an attach call: keys the socket now, or lets it wait for
    /// the peer's negotiation (which starts if nothing is under way).
    fn attach(&mut self, call: AttachCall, now: Instant) {
        if self.keys.is_none() {
            call.answer(crate::attach::result_error(
                "this aokd instance does not key sockets",
            ));
            return;
        }
        self.last_request += 1;
        let id = self.last_request;
        let (pid, fd, role) = (call.pid, call.request.fd, call.request.role);
        let (request, reply) = call.into_request(id, self.clock.system_time(now));
        self.pending.insert(
            id,
            Pending {
                reply,
                pid,
                fd,
                role,
            },
        );
        if let Ok(r) = &request {
            self.member_on_demand(&r.record, now);
        }
        let outcome = match (request, self.keys.as_mut()) {
            (Ok(request), Some(keys)) => keys.attach(request, now),
            (Err(e), _) => {
                warn!(pid, fd, error = %e, "cannot key an attached socket");
                AttachOutcome::Answered(Answer::Error(e))
            }
            (Ok(_), None) => return,
        };
        match outcome {
            AttachOutcome::Answered(answer) => self.answer(vec![Answered { id, answer }]),
            AttachOutcome::Waiting { peer } => {
                if let Err(e) = self.endpoint.initiate(&peer, now) {
                    warn!(%peer, error = %e, "cannot start a negotiation for a waiting connect");
                }
            }
        }
    }

    /// A connect (or accepted connection) toward an address inside a peer
    /// group's prefixes, on one of its TCP ports, with no peer there yet:
    /// the neighbour becomes a member now, so that the key manager covers
    /// the socket and the negotiation starts as for a configured peer.
    fn member_on_demand(&mut self, socket: &crate::sockets::AttachedSocket, now: Instant) {
        let (Some(remote), Some(cfg)) = (socket.remote, self.config.as_ref()) else {
            return;
        };
        if socket.role == SocketRole::Listen {
            return;
        }
        let ip = crate::kernel::canonical(remote.ip());
        let Some(group) = cfg.groups.iter().find(|g| g.contains(ip)) else {
            return;
        };
        let ports = &group.template.tcp_ports;
        let on_port = ports.contains(&remote.port())
            || socket.local.is_some_and(|l| ports.contains(&l.port()));
        if !on_port {
            return;
        }
        match self.endpoint.add_member(ip) {
            Ok((name, true)) => {
                info!(peer = %name, group = %group.name, "peer group member made on demand for a connection");
                if let Some(keys) = self.keys.as_mut() {
                    let answered = keys.add_peer(&group.member(ip), now);
                    self.answer(answered);
                }
            }
            Ok((_, false)) => {}
            Err(e) => warn!(%ip, error = %e, "cannot make a peer group member"),
        }
    }

    /// Sends the key manager's answers to their attach calls. The reason
    /// for a guard is a status answer: the guarded peers' state and last
    /// error, read from the endpoint's view of each (O(log n) apiece).
    fn answer(&mut self, answered: Vec<Answered>) {
        if answered.is_empty() {
            return;
        }
        let mut replies = Vec::new();
        let mut view: Vec<aokd_proto::ike::PeerView> = Vec::new();
        let mut viewed: BTreeSet<&str> = BTreeSet::new();
        for a in &answered {
            if let Answer::Ok { guarded, .. } = &a.answer {
                for name in guarded {
                    if viewed.insert(name) {
                        view.extend(self.endpoint.peer(name));
                    }
                }
            }
        }
        for Answered { id, answer } in answered {
            let Some(p) = self.pending.remove(&id) else {
                continue;
            };
            let result = attach_result(answer, |names| guard_reason(&view, names));
            if let aokd_api::attach::AttachResult::Ok {
                installed,
                peers,
                reason,
                ..
            } = &result
            {
                if *installed != Installed::NotCovered {
                    info!(pid = p.pid, fd = p.fd, role = %p.role, peers = %peers.join(","),
                        installed = %installed, reason = reason.as_deref().unwrap_or(""), "socket attached");
                }
            }
            replies.push((p.reply, result));
        }
        // Each answer after its socket's record is durable (the key
        // manager sent it), without the loop waiting for the commit.
        if self.persist.enabled() {
            self.held.hold_answers(self.persist.durable(), replies);
        } else {
            for (reply, result) in replies {
                reply.answer(result);
            }
        }
    }

    /// Hands the endpoint's events on (state file, log), sends its
    /// datagrams, then gives the key manager its part of the events. When
    /// the turn made a new MKT, its datagrams to the MKT's peer and its key
    /// manager part wait for the MKT's record to be durable without
    /// stopping the loop ([`crate::held`]); so do a later turn's datagrams to
    /// an address with datagrams waiting, and its key manager part.
    ///
    /// The datagrams go first: the answer that gives the peer a new MKT
    /// lets the peer key its sockets while this side keys its own (the
    /// two passes over thousands of sockets run side by side instead of one
    /// after the other). That is safe: the peer cannot use the new key
    /// before this side has it, since with TCP-AO it moves to a key only
    /// when this side's RNextKeyID names it, which it does once the key is
    /// on its socket, and a first MKT has no connection using another yet.
    /// TCP-MD5 has no rollover: in either order one side signs with a key
    /// the other does not have yet for a moment (the segment is dropped
    /// and sent again); side by side, that moment is shorter.
    async fn flush(&mut self, now: Instant) {
        let mut events = Vec::new();
        while let Some(ev) = self.endpoint.poll_event() {
            events.push(ev);
        }
        let new_mkt = record_events(&self.persist, &self.clock, now, &events);
        for ev in &events {
            self.log.log(now, ev);
        }
        self.log.handle_timeout(now);
        let mut transmits = Vec::new();
        while let Some(t) = self.endpoint.poll_transmit() {
            transmits.push(t);
        }
        // One commit for all of the turn's records, durable before any of
        // their keys goes on a socket or their exchange goes out.
        let durable = new_mkt.then(|| self.persist.durable());
        if durable.is_none() && self.held.is_empty() {
            self.send(transmits).await;
            self.apply_keys(&events, now);
            return;
        }
        // What waits for the commit: the datagrams to the peers of this
        // turn's new MKTs, and what must stay behind earlier turns.
        let mut ips = BTreeSet::new();
        let mut unknown = false;
        for ev in &events {
            if let Event::MktCreated { peer, .. } = ev {
                match self.endpoint.peer_remote(peer) {
                    Some(a) => {
                        ips.insert(a.ip());
                    }
                    None => unknown = true,
                }
            }
        }
        let mkts = if unknown {
            MktPeers::Unknown
        } else {
            MktPeers::At(ips)
        };
        events.retain(|ev| {
            matches!(
                ev,
                Event::MemberAdded { .. }
                    | Event::MemberForgotten { .. }
                    | Event::MktsChanged { .. }
            )
        });
        let now_out = self.held.hold(durable, &mkts, events, transmits);
        self.send(now_out).await;
    }

    /// Releases, in order, the held turns whose records are durable.
    async fn release(&mut self, now: Instant) {
        for turn in self.held.ready() {
            self.send(turn.transmits).await;
            self.apply_keys(&turn.events, now);
            for (reply, result) in turn.answers {
                reply.answer(result);
            }
        }
    }

    /// Waits for every held turn and releases it. If the state file could
    /// not be opened (aokd is stopping with that error) nothing held will
    /// ever be durable: it is dropped, and no key of it goes on a socket.
    async fn release_all(&mut self) {
        while !self.held.is_empty() {
            let persist = self.persist.clone();
            tokio::select! {
                () = self.held.first_durable() => {}
                () = persist.until_refused() => {}
            }
            if self.persist.refused() {
                warn!("the state file could not be opened: what waited for it is dropped");
                self.held = HeldTurns::default();
                return;
            }
            self.release(Instant::now()).await;
        }
    }

    /// The key manager's part of a turn's events: members added and
    /// forgotten, MKTs on sockets.
    fn apply_keys(&mut self, events: &[Event], now: Instant) {
        let Some(keys) = self.keys.as_mut() else {
            return;
        };
        let groups = self.config.as_ref().map_or(&[][..], |c| &c.groups[..]);
        let mut answered = Vec::new();
        for ev in events {
            match ev {
                Event::MemberAdded { group, remote, .. } => {
                    if let Some(g) = groups.iter().find(|g| g.name == *group) {
                        answered.extend(keys.add_peer(&g.member(remote.ip()), now));
                    }
                }
                Event::MemberForgotten { peer, .. } => answered.extend(keys.remove_peer(peer)),
                Event::MktsChanged { peer, mkts } => {
                    // The set it replaces is the key manager's.
                    self.retired
                        .mkts_changed(peer, keys.peer_mkts(peer), mkts, now);
                    answered.extend(keys.mkts_changed(peer, mkts, now))
                }
                _ => {}
            }
        }
        self.answer(answered);
    }

    /// Sends IKE datagrams from the socket of their address family.
    async fn send(&mut self, transmits: Vec<Transmit>) {
        for t in transmits {
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
}
