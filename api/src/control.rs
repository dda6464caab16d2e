//! The control protocol between aokd and aoctl (docs/control.md): one JSON
//! object per line over a Unix stream socket, versioned by
//! [`PROTOCOL_VERSION`]. These types are the stable `--json` schema of
//! aoctl as well; a field is only ever added, never renamed or removed,
//! within one version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The control protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// A request from aoctl.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    #[serde(flatten)]
    pub command: Command,
}

/// What aoctl asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Command {
    /// Daemon summary and one line per peer.
    Status,
    /// IKE SAs.
    Sas,
    /// MKTs, metadata only (no key bytes).
    Mkts,
    /// TCP sockets attached through the attach API or the preload library.
    Sockets,
    /// Start negotiation with a peer now.
    Initiate { peer: String },
    /// Delete a peer's IKE SA and its MKTs.
    Terminate { peer: String },
    /// Rekey the peer's newest MKT now, or with `ike` its IKE SA (the
    /// MKTs stay).
    Rekey {
        peer: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ike: bool,
    },
    /// MKTs with their master keys, for `aoctl verify --from-daemon`.
    /// Only answered for a root client (checked with SO_PEERCRED).
    MktKeys,
    /// Read the configuration file again and apply it (as SIGHUP does):
    /// answered with a [`ReloadReport`], or an error naming the file and
    /// the key when the new file is refused (nothing changes then).
    Reload,
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub version: u32,
    #[serde(flatten)]
    pub result: ResponseResult,
}

/// Success with data, or an error message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum ResponseResult {
    Ok { data: ResponseData },
    Error { message: String },
}

/// The data of a successful response, by command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ResponseData {
    Status(DaemonStatus),
    Sas {
        sas: Vec<SaStatus>,
    },
    Mkts {
        mkts: Vec<MktStatus>,
    },
    MktKeys {
        keys: Vec<MktKey>,
    },
    Sockets {
        sockets: Vec<SocketStatus>,
    },
    /// A command was accepted (initiate, terminate).
    Accepted {
        message: String,
    },
    /// The configuration was reloaded.
    Reloaded(ReloadReport),
}

/// What a reload did (`aoctl reload`, docs/configuration.md "Reload").
/// Peer lists are in configuration order; removed peers in the order of
/// the previous configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The configuration file read.
    pub file: String,
    /// Peers added (and initiated when configured to).
    pub added: Vec<String>,
    /// Peers removed: IKE SA deleted, MKTs kept until their hard lifetime.
    pub removed: Vec<String>,
    /// Peers whose settings changed, with what the change needed.
    pub changed: Vec<PeerReload>,
    /// Peers left as they were (same IKE SA, same MKTs).
    pub unchanged: Vec<String>,
    /// Settings that changed in the file but apply only after a restart
    /// (the running daemon keeps the old value), e.g. `daemon.listen`.
    pub needs_restart: Vec<String>,
}

/// One changed peer of a [`ReloadReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReload {
    pub peer: String,
    /// "new IKE SA", "MKTs rekeyed" or "applied to the next negotiation".
    pub action: String,
}

/// `aoctl status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub daemon_version: String,
    /// Seconds since the Unix epoch when aokd started.
    pub started_at: u64,
    pub listen: Vec<String>,
    pub peers: Vec<PeerStatus>,
    /// The state file's health; `None` when nothing is stored.
    #[serde(default)]
    pub state_file: Option<Box<StateFileStatus>>,
    /// Unwanted IKE traffic and the half-open policy. Added in version 1
    /// after the first release of the schema; absent means unknown.
    #[serde(default)]
    pub dos: Option<Box<DosStatus>>,
    /// How negotiations ended since aokd started. Added in version 1 after
    /// the first release of the schema; absent means unknown.
    #[serde(default)]
    pub negotiations: Option<Box<NegotiationStatus>>,
}

/// How IKE SA and MKT negotiations ended since aokd started (the metrics'
/// `aokd_negotiations_total`, `aokd_rekeys_total` and
/// `aokd_rekey_collisions_total`, docs/metrics.md). Failures are by
/// reason, every reason listed (zero included), for example
/// `"authentication_failed": 2`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NegotiationStatus {
    /// IKE SAs established (IKE_AUTH completed), as either role.
    pub ike_sas_established: u64,
    /// Failed IKE SA negotiations, by reason.
    pub ike_sa_failures: BTreeMap<String, u64>,
    /// MKTs created, fresh ones and rekeys.
    pub mkts_created: u64,
    /// Failed MKT negotiations (fresh ones and rekeys), by reason.
    pub mkt_failures: BTreeMap<String, u64>,
    /// IKE SAs rekeyed.
    pub ike_sa_rekeys: u64,
    /// Failed IKE SA rekeys, by reason.
    pub ike_sa_rekey_failures: BTreeMap<String, u64>,
    /// MKTs created by a rekey of another MKT.
    pub mkt_rekeys: u64,
    /// Simultaneous IKE SA rekeys (RFC 7296 2.8.2).
    pub ike_sa_rekey_collisions: u64,
    /// Simultaneous MKT rekeys (RFC 7296 2.8.1).
    pub mkt_rekey_collisions: u64,
}

/// The state file's health (`aoctl status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFileStatus {
    pub path: String,
    /// "ok", or "failing" while changes cannot be written (they are kept
    /// in memory and written once the file works again).
    pub health: String,
    /// The error of the last failed write, while failing.
    pub error: Option<String>,
    /// Seconds since the Unix epoch when the file started failing.
    pub failing_since: Option<u64>,
    /// Changes not yet written.
    pub pending: usize,
    /// Changes dropped because too many waited.
    pub lost: u64,
    /// Transactions committed since start.
    pub commits: u64,
    /// Commits that failed since start.
    pub failed_commits: u64,
    /// Times the file was opened again after a failure.
    pub reopened: u64,
}

/// What aokd counted of unwanted IKE traffic since it started, and its
/// half-open IKE SAs now (docs/protocol.md, "Denial of service: cookies
/// and half-open SAs").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DosStatus {
    /// Half-open responder IKE SAs held now, with all peers.
    pub half_open: u64,
    /// N(COOKIE) answers sent.
    pub cookies_sent: u64,
    /// IKE_SA_INIT requests whose cookie verified.
    pub cookies_accepted: u64,
    /// IKE_SA_INIT requests whose cookie did not verify.
    pub cookies_rejected: u64,
    /// Half-open SAs removed to admit a request with a valid cookie at the
    /// peer's limit.
    pub half_open_evicted: u64,
    /// Half-open SAs removed when another IKE SA with the peer completed
    /// IKE_AUTH.
    pub half_open_superseded: u64,
    /// Dropped datagrams by reason, every reason listed (zero included),
    /// for example `"cookie_required": 3`.
    pub dropped: BTreeMap<String, u64>,
}

/// One configured peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    /// The peer's IKE address and port.
    pub address: String,
    /// IKE SA state: "none", "connecting", "established", "failed".
    pub ike_state: String,
    /// Whether the peer advertised TCP-AO keying; `None` until known.
    pub tcp_ao_capable: Option<bool>,
    /// Number of live MKTs with this peer.
    pub mkts: usize,
    /// The last error with this peer (for example "AUTHENTICATION_FAILED").
    pub last_error: Option<String>,
    /// How keys reach the kernel for this peer: "tcp-ao" or "tcp-md5".
    #[serde(default)]
    pub backend: Option<String>,
    /// Rollovers since aokd started: times an attached socket of this
    /// peer moved from one MKT to a newer one (docs/metrics.md); `None`
    /// when this aokd keys no sockets.
    #[serde(default)]
    pub rollovers: Option<u64>,
    /// The `[[peer_group]]` this peer is a member of (named
    /// `GROUP/ADDRESS`); `None` for a configured peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// One IKE SA (`aoctl sas`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaStatus {
    pub peer: String,
    pub address: String,
    pub state: String,
    /// "initiator" or "responder".
    pub role: String,
    /// SPIs in hex, 16 digits each.
    pub spi_i: String,
    pub spi_r: String,
    /// For example "aes256gcm16-prfsha256-x25519".
    pub suite: Option<String>,
    /// Seconds since the Unix epoch.
    pub established_at: Option<u64>,
    /// When this side will rekey the IKE SA (seconds since the Unix epoch).
    #[serde(default)]
    pub rekey_at: Option<u64>,
    pub tcp_ao_capable: Option<bool>,
    pub last_error: Option<String>,
}

/// One MKT (`aoctl mkts`); never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MktStatus {
    pub peer: String,
    pub send_id: u8,
    pub recv_id: u8,
    pub algorithm: String,
    pub include_options: bool,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// First 8 octets of SHA-256 of the master key, hex.
    pub key_fingerprint: String,
    /// "active"; "retiring" once a successor exists (on both sides of a
    /// rekey, before the old one is deleted); after a restart "restored"
    /// while an attached socket may hold it, "restored-stale" once a new
    /// MKT replaced it.
    #[serde(default)]
    pub state: Option<String>,
    /// When this side will rekey it (seconds since the Unix epoch).
    #[serde(default)]
    pub rekey_at: Option<u64>,
    /// Its hard lifetime (seconds since the Unix epoch).
    #[serde(default)]
    pub expires_at: Option<u64>,
}

/// One attached TCP socket (`aoctl sockets`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketStatus {
    /// The owning process and its descriptor number.
    pub pid: i32,
    pub fd: i32,
    /// "connect", "listen" or "accepted".
    pub role: String,
    pub local: Option<String>,
    pub remote: Option<String>,
    /// The peers whose keys are on the socket.
    pub peers: Vec<String>,
    /// "keys" or "guarded".
    pub state: String,
    /// Why the socket is guarded (no valid MKT), when it is.
    pub guard_reason: Option<String>,
    /// "tcp-ao" or "tcp-md5".
    pub mechanism: Option<String>,
    /// Seconds since the Unix epoch.
    pub attached_at: u64,
    /// TCP-AO counters from TCP_AO_INFO, when the socket uses TCP-AO.
    pub pkt_good: Option<u64>,
    pub pkt_bad: Option<u64>,
    /// Segments whose KeyID matched no key on the socket (TCP-AO).
    #[serde(default)]
    pub pkt_key_not_found: Option<u64>,
    /// Segments without TCP-AO dropped because the socket requires it
    /// (TCP-AO).
    #[serde(default)]
    pub pkt_ao_required: Option<u64>,
    /// SendID of Current_key (TCP-AO): the key the socket signs with.
    #[serde(default)]
    pub current_key: Option<u8>,
    /// RecvID of RNext_key (TCP-AO): the key it asks the peer to use.
    #[serde(default)]
    pub rnext_key: Option<u8>,
}

/// An MKT with its master key, only for `aoctl verify --from-daemon`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MktKey {
    pub peer: String,
    pub send_id: u8,
    pub recv_id: u8,
    pub algorithm: String,
    pub include_options: bool,
    /// Hex master key.
    pub master_key: String,
    /// When the MKT ended (Unix seconds): a retired key the daemon keeps
    /// in memory for `[daemon] retired_keys` so that older segments can
    /// still be verified. Absent for a live MKT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<u64>,
}

impl core::fmt::Debug for MktKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MktKey")
            .field("peer", &self.peer)
            .field("send_id", &self.send_id)
            .field("recv_id", &self.recv_id)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    //! The JSON of docs/control.md, byte for byte (serde_json writes no
    //! spaces; the documentation's examples add them for reading).
    use super::*;

    fn compact(doc: &str) -> String {
        doc.replace(", ", ",").replace(": ", ":")
    }

    #[test]
    fn requests_are_the_documented_json() {
        for (command, doc) in [
            (Command::Status, r#"{"version": 1, "command": "status"}"#),
            (Command::Sas, r#"{"version": 1, "command": "sas"}"#),
            (Command::Mkts, r#"{"version": 1, "command": "mkts"}"#),
            (Command::MktKeys, r#"{"version": 1, "command": "mkt-keys"}"#),
            (
                Command::Initiate { peer: "r2".into() },
                r#"{"version": 1, "command": "initiate", "peer": "r2"}"#,
            ),
            (
                Command::Terminate { peer: "r2".into() },
                r#"{"version": 1, "command": "terminate", "peer": "r2"}"#,
            ),
            (
                Command::Rekey {
                    peer: "r2".into(),
                    ike: false,
                },
                r#"{"version": 1, "command": "rekey", "peer": "r2"}"#,
            ),
            (
                Command::Rekey {
                    peer: "r2".into(),
                    ike: true,
                },
                r#"{"version": 1, "command": "rekey", "peer": "r2", "ike": true}"#,
            ),
        ] {
            let req = Request {
                version: PROTOCOL_VERSION,
                command,
            };
            assert_eq!(serde_json::to_string(&req).unwrap(), compact(doc));
            assert_eq!(serde_json::from_str::<Request>(doc).unwrap(), req);
        }
    }

    #[test]
    fn responses_are_the_documented_json() {
        for (result, doc) in [
            (
                ResponseResult::Ok {
                    data: ResponseData::Accepted {
                        message: "initiating IKE SA with r2".into(),
                    },
                },
                r#"{"version": 1, "status": "ok", "data": {"kind": "accepted", "message": "initiating IKE SA with r2"}}"#,
            ),
            (
                ResponseResult::Error {
                    message: "only root may read MKT keys".into(),
                },
                r#"{"version": 1, "status": "error", "message": "only root may read MKT keys"}"#,
            ),
        ] {
            let resp = Response {
                version: PROTOCOL_VERSION,
                result,
            };
            assert_eq!(serde_json::to_string(&resp).unwrap(), compact(doc));
            assert_eq!(serde_json::from_str::<Response>(doc).unwrap(), resp);
        }
    }

    #[test]
    fn mkt_key_debug_never_prints_the_key() {
        let key = MktKey {
            peer: "r2".into(),
            send_id: 1,
            recv_id: 2,
            algorithm: "hmac-sha256-128".into(),
            include_options: true,
            master_key: "00112233445566778899aabbccddeeff".into(),
            retired_at: None,
        };
        assert!(!format!("{key:?}").contains("0011"));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(serde_json::from_str::<Request>(r#"{"version":1,"command":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<Response>("{").is_err());
    }
}
