//! The control protocol between aokd and aoctl (docs/control.md): one JSON
//! object per line over a Unix stream socket, versioned by
//! [`PROTOCOL_VERSION`]. These types are the stable `--json` schema of
//! aoctl as well; a field is only ever added, never renamed or removed,
//! within one version.

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
}

/// `aoctl status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub daemon_version: String,
    /// Seconds since the Unix epoch when aokd started.
    pub started_at: u64,
    pub listen: Vec<String>,
    pub peers: Vec<PeerStatus>,
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
    /// "active", or "retiring" once a successor exists.
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
