//! `aoctl`'s answers ([`Command`]): the status displays, read from the
//! endpoint's views ([`Endpoint::peers`], which serves these answers and
//! nothing else) and the key manager, and the commands that ask the
//! endpoint to initiate, rekey or terminate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use aokd_api::attach::{AttachResult, Installed};
use aokd_api::control::{
    Command, DaemonStatus, DosStatus, MktKey, MktStatus, NegotiationStatus, PeerStatus,
    ResponseData, ResponseResult, SaStatus, StateFileStatus,
};
use aokd_proto::ike::{Endpoint, FailureCounters, PeerView};
use tracing::info;

use crate::attach::{result_error, result_ok};
use crate::clock::WallClock;
use crate::keys::{Answer, KeyManager};
use crate::persist::{Persist, StateHealth};
use crate::retired_keys::RetiredKeys;

/// What the answers read and act on.
pub struct Answers<'a> {
    /// The IKE endpoint.
    pub endpoint: &'a mut Endpoint,
    /// The key manager, when this daemon keys sockets.
    pub keys: Option<&'a mut KeyManager>,
    /// The daemon's clock.
    pub clock: &'a WallClock,
    /// The bound IKE addresses.
    pub listen: &'a [SocketAddr],
    /// The state writer, for the state file's health.
    pub persist: &'a Persist,
    /// Keys of MKTs that ended (`mkt-keys` answers them, marked retired).
    pub retired: &'a mut RetiredKeys,
}

impl Answers<'_> {
    /// Answers one control command at `now` (the wake-up's time).
    pub fn control(self, command: Command, peer_uid: u32, now: Instant) -> ResponseResult {
        let peers = self.endpoint.peers();
        let data = match command {
            Command::Status => ResponseData::Status(self.status(&peers)),
            Command::Sas => ResponseData::Sas {
                sas: sas(self.clock, &peers),
            },
            Command::Mkts => ResponseData::Mkts {
                mkts: mkts(self.clock, self.keys, &peers),
            },
            Command::Sockets => ResponseData::Sockets {
                sockets: self
                    .keys
                    .map(|k| k.status(|names| guard_reason(&peers, names)))
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
                let mut keys = mkt_keys(&peers);
                keys.extend(self.retired.list(now).map(|r| MktKey {
                    peer: r.peer.clone(),
                    send_id: r.mkt.send_id,
                    recv_id: r.mkt.recv_id,
                    algorithm: r.mkt.algorithm.name().to_string(),
                    include_options: r.mkt.include_options,
                    master_key: hex::encode(r.mkt.master_key.as_bytes()),
                    retired_at: Some(self.clock.unix(r.at)),
                }));
                ResponseData::MktKeys { keys }
            }
            Command::Initiate { peer } => match self.endpoint.initiate(&peer, now) {
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
            Command::Rekey { peer, ike: true } => match self.endpoint.rekey_ike(&peer, now) {
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
            },
            Command::Rekey { peer, ike: false } => match self.endpoint.rekey(&peer, now) {
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
            // The event loop answers it (Daemon::reload) before it gets here.
            Command::Reload => {
                return ResponseResult::Error {
                    message: "this aokd instance cannot reload".into(),
                }
            }
            Command::Terminate { peer } => match self.endpoint.terminate(&peer, now) {
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

    /// The OpenMetrics text of the answers `aoctl metrics` asks for
    /// (`status`, `sas`, `mkts`, `sockets`), rendered by the same code
    /// ([`aokd_api::metrics::render`]): O(peers + SAs + MKTs + sockets),
    /// a read of TCP_AO_INFO per TCP-AO socket.
    pub fn metrics(mut self) -> String {
        let peers = self.endpoint.peers();
        let status = self.status(&peers);
        let sas = sas(self.clock, &peers);
        let sockets = self
            .keys
            .as_deref_mut()
            .map(|k| k.status(|names| guard_reason(&peers, names)))
            .unwrap_or_default();
        let mkts = mkts(self.clock, self.keys.as_deref_mut(), &peers);
        aokd_api::metrics::render(&aokd_api::metrics::Snapshot {
            status: &status,
            sas: &sas,
            mkts: &mkts,
            sockets: &sockets,
        })
    }

    fn status(&self, peers: &[PeerView]) -> DaemonStatus {
        DaemonStatus {
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.clock.started_at(),
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
                    rollovers: self.keys.as_ref().and_then(|k| k.rollovers(&p.name)),
                    group: p.group.clone(),
                })
                .collect(),
            state_file: state_file_status(&self.persist.health()).map(Box::new),
            dos: Some(Box::new(dos_status(self.endpoint))),
            negotiations: Some(Box::new(negotiation_status(self.endpoint))),
        }
    }
}

/// The state file's line of `aoctl status`.
fn state_file_status(h: &StateHealth) -> Option<StateFileStatus> {
    let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Some(StateFileStatus {
        path: h.file.as_ref()?.display().to_string(),
        health: if h.failing { "failing" } else { "ok" }.to_string(),
        error: h.failing.then(|| h.error.clone()).flatten(),
        failing_since: h.failing_since.map(unix),
        pending: h.pending,
        lost: h.lost,
        commits: h.commits,
        failed_commits: h.failed_commits,
        reopened: h.reopened,
    })
}

/// The endpoint's counters (O(1): a copy of a fixed-size struct).
fn dos_status(endpoint: &Endpoint) -> DosStatus {
    let c = endpoint.counters();
    DosStatus {
        half_open: endpoint.half_open() as u64,
        cookies_sent: c.cookies_sent,
        cookies_accepted: c.cookies_accepted,
        cookies_rejected: c.cookies_rejected,
        half_open_evicted: c.half_open_evicted,
        half_open_superseded: c.half_open_superseded,
        dropped: c
            .dropped
            .iter()
            .map(|(r, n)| (r.as_str().to_string(), n))
            .collect(),
    }
}

/// How negotiations ended (O(1) in peers: fixed-size counters).
fn negotiation_status(endpoint: &Endpoint) -> NegotiationStatus {
    let c = endpoint.negotiation_counters();
    let by_reason = |f: &FailureCounters| -> BTreeMap<String, u64> {
        f.iter().map(|(r, n)| (r.as_str().to_string(), n)).collect()
    };
    NegotiationStatus {
        ike_sas_established: c.ike_sas_established,
        ike_sa_failures: by_reason(&c.ike_sa_failures),
        mkts_created: c.mkts_created,
        mkt_failures: by_reason(&c.mkt_failures),
        ike_sa_rekeys: c.ike_sa_rekeys,
        ike_sa_rekey_failures: by_reason(&c.ike_sa_rekey_failures),
        mkt_rekeys: c.mkt_rekeys,
        ike_sa_rekey_collisions: c.ike_sa_rekey_collisions,
        mkt_rekey_collisions: c.mkt_rekey_collisions,
    }
}

/// `aoctl sas`.
fn sas(clock: &WallClock, peers: &[PeerView]) -> Vec<SaStatus> {
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
                established_at: s.established_at.map(|t| clock.unix(t)),
                rekey_at: s.rekey_at.map(|t| clock.unix(t)),
                tcp_ao_capable: p.tcp_ao_capable,
                last_error: p.last_error.clone(),
            })
        })
        .collect()
}

/// `aoctl mkts`: the MKTs restored from before a restart that an attached
/// socket may still hold, then the live ones.
fn mkts(clock: &WallClock, keys: Option<&mut KeyManager>, peers: &[PeerView]) -> Vec<MktStatus> {
    // MKTs from before a restart: their keys are on the sockets taken
    // back until replaced (then for the overlap) or expired.
    let restored = keys.into_iter().flat_map(|k| k.restored_in_use()).map(|r| {
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
                created_at: clock.unix(m.created_at),
                key_fingerprint: m.mkt.fingerprint(),
                // Replaced on both sides of a rekey: the initiator retires
                // the old MKT, the responder holds it until the Delete.
                state: Some(if m.replaced { "retiring" } else { "active" }.to_string()),
                rekey_at: m.rekey_at.map(|t| clock.unix(t)),
                expires_at: Some(clock.unix(m.expires_at)),
            })
        })
        .collect();
    restored.chain(live).collect()
}

/// `aoctl verify --from-daemon`: the MKTs with their keys.
fn mkt_keys(peers: &[PeerView]) -> Vec<MktKey> {
    peers
        .iter()
        .flat_map(|p| {
            p.mkts.iter().map(|m| MktKey {
                peer: p.name.clone(),
                send_id: m.mkt.send_id,
                recv_id: m.mkt.recv_id,
                algorithm: m.mkt.algorithm.name().to_string(),
                include_options: m.mkt.include_options,
                master_key: hex::encode(m.mkt.master_key.as_bytes()),
                retired_at: None,
            })
        })
        .collect()
}

/// Why the guard of the peers `names` is on a socket: no MKT with each,
/// and the peer's state and last error.
pub fn guard_reason(peers: &[PeerView], names: &[String]) -> String {
    let parts: Vec<String> = names
        .iter()
        .map(|name| {
            let why = peers
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

/// The attach reply for the key manager's `answer`; `reason` explains a
/// guard ([`guard_reason`]).
pub fn attach_result(answer: Answer, reason: impl FnOnce(&[String]) -> String) -> AttachResult {
    match answer {
        Answer::Ok {
            installed,
            mut peers,
            mechanism,
            guarded,
            groups,
        } => {
            let peers_reason = (!guarded.is_empty()).then(|| reason(&guarded));
            // The groups' guard is the reason only where no member's keys
            // are (a listener with no member yet).
            let reason = match installed {
                Installed::Guard => Some(crate::group_guard::with_groups(peers_reason, &groups)),
                _ => peers_reason,
            };
            peers.extend(groups);
            result_ok(installed, peers, mechanism, reason)
        }
        Answer::Error(e) => result_error(e),
    }
}
