//! The control socket server (docs/control.md).
//!
//! aoctl talks to aokd over a Unix stream socket: one JSON [`Request`] per
//! line, each answered by one JSON [`Response`] line, several per connection.
//! This module owns the transport: it creates the socket (parent directory
//! 0700, socket 0600, a stale socket from a dead aokd replaced), reads
//! requests with a 64 KiB line limit, answers malformed requests and
//! version mismatches itself, refuses [`Command::MktKeys`] to non-root
//! clients (identified with SO_PEERCRED), and hands every other request to
//! the event loop as a [`ControlCall`] over an `mpsc` channel. The event loop
//! answers through the call's `oneshot` sender.
//!
//! [`run_placeholder`] is a stand-in event loop that answers from the
//! configuration with an empty state; the control server's tests use it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aokd_api::control::{
    Command, DaemonStatus, PeerStatus, Request, Response, ResponseData, ResponseResult,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::client_limit::{ClientLimit, IDLE_TIMEOUT, MAX_CONTROL_CLIENTS};
use crate::config::Config;
use crate::unix_listener::{bind_private_group, PrivateListener, UnixListenerError};

/// Longest accepted request line, newline excluded. A longer line is
/// answered with an error and the connection is closed.
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// How long a connection waits for the event loop to answer a call.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Message of the error returned to a non-root client asking for MKT keys.
pub const MKT_KEYS_REFUSED: &str = "only root may read MKT keys";

/// Message of the error returned to a non-root client (a member of
/// `control_socket_group`) asking aokd to initiate, terminate or rekey.
pub const CHANGES_REFUSED: &str =
    "only root may initiate, terminate or rekey; members of control_socket_group may run status, sas, mkts and sockets";

/// One request for the event loop. Answer it by sending the result on
/// `reply`; the server wraps it in a [`Response`] with the protocol version.
/// Dropping `reply` unanswered gives the client an error.
#[derive(Debug)]
pub struct ControlCall {
    pub command: Command,
    /// The client's uid (SO_PEERCRED). [`Command::MktKeys`] only ever
    /// arrives with uid 0.
    pub peer_uid: u32,
    pub reply: oneshot::Sender<ResponseResult>,
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Creating the socket's parent directory failed.
    #[error("control socket {}: cannot create directory {}: {source}", .path.display(), .dir.display())]
    CreateDir {
        path: PathBuf,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Something exists at the socket path that is not a socket.
    #[error("control socket {}: the path exists and is not a socket; refusing to replace it", .path.display())]
    NotASocket { path: PathBuf },
    /// A live server (probably another aokd) accepts connections there.
    #[error("control socket {}: another process is listening on it (is aokd already running?)", .path.display())]
    InUse { path: PathBuf },
    /// Another I/O error; `what` says what was being done.
    #[error("control socket {}: {what}: {source}", .path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl From<UnixListenerError> for ControlError {
    fn from(e: UnixListenerError) -> Self {
        match e {
            UnixListenerError::CreateDir { path, dir, source } => {
                ControlError::CreateDir { path, dir, source }
            }
            UnixListenerError::NotASocket { path } => ControlError::NotASocket { path },
            UnixListenerError::InUse { path } => ControlError::InUse { path },
            UnixListenerError::Io { path, what, source } => ControlError::Io { path, what, source },
        }
    }
}

/// A bound control socket. Dropping it removes the socket file (if it is
/// still the one this server created).
#[derive(Debug)]
pub struct ControlServer {
    socket: PrivateListener,
    limit: ClientLimit,
}

impl ControlServer {
    /// Creates the socket at `path`: creates the parent directory (mode
    /// 0700) if missing, removes a stale socket left by a dead process
    /// (never anything that is not a socket, nor a socket someone still
    /// listens on), binds, and sets mode 0600. The socket is bound under a
    /// temporary name, chmodded and then renamed into place, so it is
    /// never reachable with a wider mode (see [`crate::unix_listener`]).
    /// Must run inside a tokio runtime.
    pub async fn bind(path: &Path) -> Result<ControlServer, ControlError> {
        ControlServer::bind_with_group(path, None).await
    }

    /// [`ControlServer::bind`], the socket given group `group` and mode
    /// 0660 (`control_socket_group`): the group's members may connect, and
    /// [`authorize`] answers them the read-only commands only.
    pub async fn bind_with_group(
        path: &Path,
        group: Option<u32>,
    ) -> Result<ControlServer, ControlError> {
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        let socket = bind_private_group(path, mode, 0o700, group, "control")?;
        info!(path = %path.display(), group = %crate::unix_listener::gid_field(group), "control socket listening");
        Ok(ControlServer {
            socket,
            limit: ClientLimit::new("control", MAX_CONTROL_CLIENTS, IDLE_TIMEOUT),
        })
    }

    /// Replaces the connection cap and idle timeout (tests use small ones).
    pub fn set_limit(&mut self, limit: ClientLimit) {
        self.limit = limit;
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        self.socket.path()
    }

    /// Accepts connections forever, serving each in its own task. Calls go
    /// to `handler`. Returns only if `handler` is closed (the event loop
    /// has gone away).
    pub async fn run(&self, handler: mpsc::Sender<ControlCall>) {
        loop {
            let stream = tokio::select! {
                r = self.socket.listener().accept() => r,
                () = handler.closed() => return,
            };
            let stream = match stream {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = self.limit.admit() else {
                let response = Response {
                    version: PROTOCOL_VERSION,
                    result: ResponseResult::Error {
                        message: self.limit.refusal(),
                    },
                };
                self.limit.refuse(&stream, &response);
                continue;
            };
            let uid = match stream.peer_cred() {
                Ok(cred) => cred.uid(),
                Err(e) => {
                    warn!(error = %e, "control socket: cannot read client credentials; closing");
                    continue;
                }
            };
            debug!(uid, "control connection");
            let handler = handler.clone();
            let idle = self.limit.idle();
            tokio::spawn(async move {
                if let Err(e) = serve_connection_with_idle(stream, uid, handler, idle).await {
                    debug!(uid, error = %e, "control connection ended with an error");
                }
                drop(slot);
            });
        }
    }
}

/// Binds `path` and serves it until `handler` closes: [`ControlServer::bind`]
/// then [`ControlServer::run`].
pub async fn serve(path: &Path, handler: mpsc::Sender<ControlCall>) -> Result<(), ControlError> {
    let server = ControlServer::bind(path).await?;
    server.run(handler).await;
    Ok(())
}

/// Serves one connection from a client with uid `peer_uid` until it closes,
/// sends an overlong line, or an I/O error occurs, with the default idle
/// timeout. Generic over the stream so that tests can drive it through
/// `tokio::io::duplex`.
pub async fn serve_connection<S>(
    stream: S,
    peer_uid: u32,
    handler: mpsc::Sender<ControlCall>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_connection_with_idle(stream, peer_uid, handler, IDLE_TIMEOUT).await
}

/// [`serve_connection`], closing the connection when no complete request
/// arrives within `idle`.
pub async fn serve_connection_with_idle<S>(
    stream: S,
    peer_uid: u32,
    handler: mpsc::Sender<ControlCall>,
    idle: Duration,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut rd).take(MAX_LINE_LEN as u64 + 1);
        let read = limited.read_until(b'\n', &mut line);
        let Ok(n) = tokio::time::timeout(idle, read).await else {
            debug!(
                uid = peer_uid,
                idle_s = idle.as_secs_f64(),
                "control connection idle; closing"
            );
            return Ok(());
        };
        let n = n?;
        if n == 0 {
            return Ok(());
        }
        let complete = line.last() == Some(&b'\n');
        if !complete && line.len() > MAX_LINE_LEN {
            warn!(
                uid = peer_uid,
                "control request longer than 64 KiB; closing the connection"
            );
            let msg =
                format!("request line longer than {MAX_LINE_LEN} octets; closing the connection");
            write_response(&mut wr, ResponseResult::Error { message: msg }).await?;
            return Ok(());
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            let result = handle_line(&line, peer_uid, &handler).await;
            write_response(&mut wr, result).await?;
        }
        if !complete {
            // End of stream after a last unterminated line.
            return Ok(());
        }
    }
}

async fn write_response<W: AsyncWrite + Unpin>(
    wr: &mut W,
    result: ResponseResult,
) -> io::Result<()> {
    let response = Response {
        version: PROTOCOL_VERSION,
        result,
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_else(|e| {
        // Not expected: every field serializes. Answer something valid.
        let fallback = Response {
            version: PROTOCOL_VERSION,
            result: ResponseResult::Error {
                message: format!("internal error: cannot encode the response: {e}"),
            },
        };
        serde_json::to_vec(&fallback).unwrap_or_default()
    });
    out.push(b'\n');
    wr.write_all(&out).await?;
    wr.flush().await
}

/// Answers one request line.
async fn handle_line(
    line: &[u8],
    peer_uid: u32,
    handler: &mpsc::Sender<ControlCall>,
) -> ResponseResult {
    let command = match parse_request(line) {
        Ok(c) => c,
        Err(message) => {
            debug!(uid = peer_uid, %message, "bad control request");
            return ResponseResult::Error { message };
        }
    };
    if let Err(message) = authorize(&command, peer_uid) {
        warn!(uid = peer_uid, command = %command_field(&command), "control request refused: {message}");
        return ResponseResult::Error { message };
    }
    if command == Command::MktKeys {
        info!(uid = peer_uid, "MKT keys requested over the control socket");
    } else {
        debug!(uid = peer_uid, command = %command_field(&command), "control request");
    }
    let (reply, answer) = oneshot::channel();
    let call = ControlCall {
        command,
        peer_uid,
        reply,
    };
    if handler.send(call).await.is_err() {
        return ResponseResult::Error {
            message: "aokd is shutting down".into(),
        };
    }
    match tokio::time::timeout(REPLY_TIMEOUT, answer).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => ResponseResult::Error {
            message: "internal error: the request was dropped unanswered".into(),
        },
        Err(_) => ResponseResult::Error {
            message: format!("aokd did not answer within {}s", REPLY_TIMEOUT.as_secs()),
        },
    }
}

/// Parses a request line: valid JSON, an object, the right `version`, a
/// known command. The error is the message sent back to the client.
pub fn parse_request(line: &[u8]) -> Result<Command, String> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let Some(obj) = value.as_object() else {
        return Err("invalid request: expected a JSON object".into());
    };
    match obj.get("version") {
        None => {
            return Err(format!(
                "invalid request: missing \"version\" (this aokd speaks control protocol version {PROTOCOL_VERSION})"
            ))
        }
        Some(v) => match v.as_u64() {
            Some(n) if n == u64::from(PROTOCOL_VERSION) => {}
            Some(n) => {
                return Err(format!(
                    "unsupported control protocol version {n}: this aokd speaks version {PROTOCOL_VERSION}"
                ))
            }
            None => {
                return Err(format!(
                    "invalid request: \"version\" must be an integer (this aokd speaks control protocol version {PROTOCOL_VERSION})"
                ))
            }
        },
    }
    let request: Request =
        serde_json::from_value(value).map_err(|e| format!("invalid request: {e}"))?;
    Ok(request.command)
}

/// The server's own access check: MKT keys only for root.
pub fn authorize(command: &Command, peer_uid: u32) -> Result<(), String> {
    match command {
        _ if peer_uid == 0 => Ok(()),
        Command::MktKeys => Err(MKT_KEYS_REFUSED.into()),
        Command::Status | Command::Sas | Command::Mkts | Command::Sockets => Ok(()),
        Command::Initiate { .. }
        | Command::Terminate { .. }
        | Command::Rekey { .. }
        | Command::Reload => Err(CHANGES_REFUSED.into()),
    }
}

/// A [`DaemonStatus`] for `config` with nothing negotiated yet: every peer
/// in state "none".
pub fn empty_status(config: &Config, started_at: u64) -> DaemonStatus {
    DaemonStatus {
        daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at,
        listen: config
            .daemon
            .listen_addrs()
            .iter()
            .map(ToString::to_string)
            .collect(),
        peers: config
            .peers
            .iter()
            .map(|p| PeerStatus {
                name: p.name.clone(),
                address: p.remote_addr().to_string(),
                ike_state: "none".into(),
                tcp_ao_capable: None,
                mkts: 0,
                last_error: None,
                backend: None,
                rollovers: None,
                group: None,
            })
            .collect(),
        state_file: None,
        dos: None,
        negotiations: None,
    }
}

/// Answers calls from an empty state until the channel closes: `status`
/// lists the configured peers, `sas`, `mkts` and `mkt-keys` are empty, and
/// `initiate`/`terminate` are refused because nothing negotiates. A
/// stand-in for the event loop in tests of the control server.
pub async fn run_placeholder(status: DaemonStatus, mut calls: mpsc::Receiver<ControlCall>) {
    while let Some(call) = calls.recv().await {
        let known = |peer: &str| status.peers.iter().any(|p| p.name == peer);
        let result = match call.command {
            Command::Status => ResponseResult::Ok {
                data: ResponseData::Status(status.clone()),
            },
            Command::Sas => ResponseResult::Ok {
                data: ResponseData::Sas { sas: Vec::new() },
            },
            Command::Mkts => ResponseResult::Ok {
                data: ResponseData::Mkts { mkts: Vec::new() },
            },
            Command::MktKeys => ResponseResult::Ok {
                data: ResponseData::MktKeys { keys: Vec::new() },
            },
            Command::Sockets => ResponseResult::Ok {
                data: ResponseData::Sockets {
                    sockets: Vec::new(),
                },
            },
            Command::Initiate { peer }
            | Command::Terminate { peer }
            | Command::Rekey { peer, .. }
                if !known(&peer) =>
            {
                ResponseResult::Error {
                    message: format!("no peer named {peer:?}"),
                }
            }
            Command::Initiate { .. }
            | Command::Terminate { .. }
            | Command::Rekey { .. }
            | Command::Reload => ResponseResult::Error {
                message: "this aokd build does not negotiate yet".into(),
            },
        };
        // The client may have gone; nothing to do then.
        let _ = call.reply.send(result);
    }
}

/// A request for a log field, as it came on the wire (JSON: the command
/// and its arguments), not Rust's debug text.
fn command_field(command: &Command) -> String {
    serde_json::to_string(command).unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(
            parse_request(br#"{"version":1,"command":"status"}"#),
            Ok(Command::Status)
        );
        assert_eq!(
            parse_request(br#"{"version":1,"command":"initiate","peer":"r2"}"#),
            Ok(Command::Initiate { peer: "r2".into() })
        );
        let e = parse_request(br#"{"version":7,"command":"status"}"#).unwrap_err();
        assert!(e.contains('7') && e.contains('1'), "{e}");
        assert!(parse_request(b"{").unwrap_err().starts_with("invalid JSON"));
        assert!(parse_request(b"[]").is_err());
        assert!(parse_request(br#"{"command":"status"}"#)
            .unwrap_err()
            .contains("version"));
        assert!(parse_request(br#"{"version":1,"command":"reboot"}"#).is_err());
    }

    #[test]
    fn mkt_keys_only_for_root() {
        assert_eq!(authorize(&Command::MktKeys, 0), Ok(()));
        assert_eq!(
            authorize(&Command::MktKeys, 1000),
            Err(MKT_KEYS_REFUSED.to_owned())
        );
        assert_eq!(authorize(&Command::Status, 1000), Ok(()));
    }
}
