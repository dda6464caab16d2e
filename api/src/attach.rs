//! The attach protocol (docs/attach.md): how a routing daemon, or the
//! preload library acting for it, hands a TCP socket to aokd so that aokd
//! installs the peer's MKTs (or the dummy-key guard) on it.
//!
//! Transport: a Unix stream socket. Each request is one JSON object on one
//! line, sent with `sendmsg(2)` carrying exactly one file descriptor (the
//! TCP socket) as `SCM_RIGHTS` ancillary data on the same call. aokd
//! answers with one JSON line ([`AttachReply`]). aokd never keeps the
//! descriptor it received once it has answered: to change keys later it
//! takes a fresh one with `pidfd_getfd(2)` from the pid (`SO_PEERCRED`) and
//! the descriptor number the client reported, and checks `SO_COOKIE`.

use serde::{Deserialize, Serialize};

/// The attach protocol version this build speaks.
pub const ATTACH_VERSION: u32 = 1;

/// What the passed socket is about to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SocketRole {
    /// A socket about to `connect()` to `remote`.
    Connect,
    /// A socket about to `listen()` (keys for every covered peer).
    Listen,
    /// A socket just returned by `accept()` on an attached listener: aokd
    /// reconciles its keys with the current MKTs (the accept-queue race).
    Accepted,
}

impl std::fmt::Display for SocketRole {
    /// The wire spelling (`connect`, `listen`, `accepted`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SocketRole::Connect => "connect",
            SocketRole::Listen => "listen",
            SocketRole::Accepted => "accepted",
        })
    }
}

/// One request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    pub version: u32,
    pub role: SocketRole,
    /// The socket's descriptor number in the client process (for
    /// `pidfd_getfd` later).
    pub fd: i32,
    /// For `connect` (required) and `accepted` (optional: aokd can read the
    /// peer address itself): the remote IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// For `connect`: the remote TCP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<u16>,
    /// For `connect`: how long aokd may wait for a negotiation to finish
    /// before answering with the guard installed, in milliseconds. `None`:
    /// the daemon's configured acquire timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// What aokd put on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Installed {
    /// Negotiated MKTs (or the TCP-MD5 key derived from one).
    Keys,
    /// The dummy key: no valid MKT exists yet, traffic fails closed; aokd
    /// replaces it as soon as an MKT exists.
    Guard,
    /// Nothing: no configured peer covers this socket.
    NotCovered,
}

impl std::fmt::Display for Installed {
    /// The wire spelling (`keys`, `guard`, `not-covered`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Installed::Keys => "keys",
            Installed::Guard => "guard",
            Installed::NotCovered => "not-covered",
        })
    }
}

/// aokd's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachReply {
    pub version: u32,
    /// `Ok` with what was installed, or an error message.
    #[serde(flatten)]
    pub result: AttachResult,
}

/// Success or failure of an attach request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum AttachResult {
    Ok {
        installed: Installed,
        /// The peers whose keys (or guards) are on the socket, then the
        /// peer groups whose prefix guard is on it (a listener).
        peers: Vec<String>,
        /// "tcp-ao" or "tcp-md5" (absent when nothing was installed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mechanism: Option<String>,
        /// Why the guard is installed, when it is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Error {
        message: String,
    },
}

#[cfg(test)]
mod tests {
    //! The JSON of docs/attach.md, byte for byte (serde_json writes no
    //! spaces; the documentation's examples add them for reading).
    use super::*;

    fn compact(doc: &str) -> String {
        doc.replace(", ", ",").replace(": ", ":")
    }

    #[test]
    fn requests_are_the_documented_json() {
        let connect = AttachRequest {
            version: ATTACH_VERSION,
            role: SocketRole::Connect,
            fd: 7,
            remote: Some("192.0.2.2".into()),
            remote_port: Some(179),
            wait_ms: Some(5000),
        };
        let listen = AttachRequest {
            version: ATTACH_VERSION,
            role: SocketRole::Listen,
            fd: 5,
            remote: None,
            remote_port: None,
            wait_ms: None,
        };
        for (req, doc) in [
            (
                connect,
                r#"{"version": 1, "role": "connect", "fd": 7, "remote": "192.0.2.2", "remote_port": 179, "wait_ms": 5000}"#,
            ),
            (listen, r#"{"version": 1, "role": "listen", "fd": 5}"#),
        ] {
            assert_eq!(serde_json::to_string(&req).unwrap(), compact(doc));
            assert_eq!(serde_json::from_str::<AttachRequest>(doc).unwrap(), req);
        }
    }

    #[test]
    fn replies_are_the_documented_json() {
        let keys = AttachReply {
            version: ATTACH_VERSION,
            result: AttachResult::Ok {
                installed: Installed::Keys,
                peers: vec!["r2".into()],
                mechanism: Some("tcp-ao".into()),
                reason: None,
            },
        };
        let not_covered = AttachReply {
            version: ATTACH_VERSION,
            result: AttachResult::Ok {
                installed: Installed::NotCovered,
                peers: vec![],
                mechanism: None,
                reason: None,
            },
        };
        let error = AttachReply {
            version: ATTACH_VERSION,
            result: AttachResult::Error {
                message: "role connect needs \"remote_port\"".into(),
            },
        };
        for (reply, doc) in [
            (
                keys,
                r#"{"version": 1, "status": "ok", "installed": "keys", "peers": ["r2"], "mechanism": "tcp-ao"}"#,
            ),
            (
                not_covered,
                r#"{"version": 1, "status": "ok", "installed": "not-covered", "peers": []}"#,
            ),
            (
                error,
                r#"{"version": 1, "status": "error", "message": "role connect needs \"remote_port\""}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&reply).unwrap(), compact(doc));
            assert_eq!(serde_json::from_str::<AttachReply>(doc).unwrap(), reply);
        }
    }

    #[test]
    fn unknown_roles_are_errors_not_panics() {
        assert!(
            serde_json::from_str::<AttachRequest>(r#"{"version":1,"role":"bind","fd":3}"#).is_err()
        );
        assert!(serde_json::from_str::<AttachRequest>("not json").is_err());
    }
}
