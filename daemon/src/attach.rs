//! The attach socket server (docs/attach.md).
//!
//! A routing daemon, or the preload library acting inside it, passes each
//! TCP socket to aokd before `connect()` or `listen()` (and each socket
//! `accept()` returns), so that aokd can put the peer's MKTs, or the
//! dummy-key guard, on it while the kernel still allows that. The protocol
//! types are [`aokd_api::attach`]; this module owns the transport:
//!
//! - a Unix stream socket, created like the control socket
//!   ([`crate::unix_listener`]: a missing parent directory is created, a
//!   stale socket from a dead aokd replaced, the socket bound under a
//!   temporary name, chmodded, renamed into place), but with a
//!   configurable mode ([`DEFAULT_MODE`] 0600):
//!   routing daemons often run as their own user, and whoever can connect
//!   can put keys on a socket it owns and read them back with
//!   `TCP_AO_GET_KEYS`, so the mode (and the socket's group) decides who
//!   may obtain MKTs;
//! - one JSON request per line, sent with `sendmsg(2)` together with
//!   exactly one descriptor (`SCM_RIGHTS`); lines may arrive in pieces and
//!   are buffered up to [`MAX_LINE_LEN`]; one JSON reply per line;
//!   clients send a request only after reading the previous answer. Linux
//!   ends a read right after the message that carried descriptors (and may
//!   glue earlier plain messages in front of it), so a received descriptor
//!   belongs to the line that holds the last byte read with it;
//! - validation before the event loop sees anything: protocol version,
//!   exactly one descriptor, a TCP socket of the right family and state
//!   for its role, the role's fields, and that aokd will be able to
//!   reacquire the socket later (`pidfd_getfd` of the reported descriptor
//!   number in the client, `SO_PEERCRED` pid, gives the same `SO_COOKIE`).
//!   Invalid requests are answered with [`AttachResult::Error`] and the
//!   connection stays open for the next one;
//! - valid requests go to the event loop as [`AttachCall`]s over an `mpsc`
//!   channel; the event loop turns each into a plain
//!   [`crate::keys::KeyRequest`] for the key manager, which installs keys
//!   ([`crate::sockets::reconcile_on`]) and records the socket
//!   ([`crate::sockets::SocketRegistry`]); the event loop answers on the
//!   call's `oneshot` sender ([`Reply`]), and the descriptor is then
//!   **dropped**: aokd never keeps a routing daemon's socket open.
//!
//! Nothing a client sends can make the server panic or leak a descriptor.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aokd_api::attach::{
    AttachReply, AttachRequest, AttachResult, Installed, SocketRole, ATTACH_VERSION,
};
use serde::Deserialize;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::client_limit::{ClientLimit, IDLE_TIMEOUT, MAX_ATTACH_CLIENTS};
use crate::kernel::{canonical, sys, Backend};
use crate::keys::KeyRequest;
use crate::sockets::{self, AttachedSocket, Gone};
use crate::unix_listener::{bind_private_group, PrivateListener, UnixListenerError};

/// Where aokd listens for attach requests unless configured otherwise.
pub const DEFAULT_ATTACH_SOCKET: &str = "/run/aokd/attach.sock";

/// The attach socket's default mode: root (aokd's user) only.
pub const DEFAULT_MODE: u32 = 0o600;

/// Longest accepted request line, newline excluded. A longer line is
/// answered with an error and the connection is closed.
pub const MAX_LINE_LEN: usize = 4096;

/// How long the server waits for the event loop when the request has no
/// `wait_ms` (see [`AttachServer::set_default_wait`]).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// Added to the wait for the event loop's own work.
pub const REPLY_MARGIN: Duration = Duration::from_secs(5);

/// Largest `wait_ms` accepted: one hour.
pub const MAX_WAIT_MS: u64 = 3_600_000;

/// One validated attach request for the event loop.
///
/// The event loop puts keys on `socket`, answers on `reply`, and drops
/// `socket` (it must not keep it; it records `pid`, `request.fd` and the
/// cookie in a [`crate::sockets::SocketRegistry`] instead). Dropping
/// `reply` unanswered gives the client an error.
#[derive(Debug)]
pub struct AttachCall {
    /// The request, validated: the version is [`ATTACH_VERSION`];
    /// `connect` has a parseable `remote` and a non-zero `remote_port`;
    /// `accepted` has a peer address; `wait_ms` is at most [`MAX_WAIT_MS`].
    pub request: AttachRequest,
    /// aokd's descriptor of the client's socket: a TCP socket, not yet
    /// connected for `connect`, closed or listening for `listen`,
    /// connected for `accepted`.
    pub socket: OwnedFd,
    /// The client's pid (`SO_PEERCRED`); `pidfd_getfd(pid, request.fd)`
    /// was checked to give this same socket.
    pub pid: i32,
    /// The client's uid (`SO_PEERCRED`).
    pub uid: u32,
    /// Where the answer goes.
    pub reply: oneshot::Sender<AttachReply>,
}

impl AttachCall {
    /// The remote address: from the request for `connect` (and `accepted`
    /// when given), otherwise the socket's peer address; `None` for
    /// listeners.
    pub fn remote(&self) -> Option<SocketAddr> {
        request_remote(&self.request)
            .or_else(|| sys::peer_address(self.socket.as_fd()).ok().flatten())
    }

    /// Whether the socket listens or will (`listen` role): the `listening`
    /// argument of [`crate::sockets::reconcile`].
    pub fn listening(&self) -> bool {
        self.request.role == SocketRole::Listen
    }

    /// Answers the call (a client that went away is not an error).
    pub fn answer(self, result: AttachResult) {
        Reply(self.reply).answer(result);
    }

    /// Splits the call into the key manager's request, numbered `id`, for a
    /// socket attached at `attached_at` (its record: cookie, addresses),
    /// and where the answer goes. A socket whose addresses cannot be read
    /// gives the error to answer instead.
    pub fn into_request(
        self,
        id: u64,
        attached_at: SystemTime,
    ) -> (Result<KeyRequest<OwnedFd>, String>, Reply) {
        let record = AttachedSocket::describe_at(
            self.socket.as_fd(),
            self.pid,
            self.request.fd,
            self.request.role,
            self.remote(),
            attached_at,
        )
        .map_err(|e| format!("cannot read the socket's addresses: {e}"));
        let request = record.map(|record| KeyRequest {
            id,
            socket: self.socket,
            record,
            wait: self.request.wait_ms.map(Duration::from_millis),
        });
        (request, Reply(self.reply))
    }
}

/// Where the answer to an [`AttachCall`] goes once its socket went to the
/// key manager ([`AttachCall::into_request`]).
#[derive(Debug)]
pub struct Reply(oneshot::Sender<AttachReply>);

impl Reply {
    /// Answers the call (a client that went away is not an error).
    pub fn answer(self, result: AttachResult) {
        let _ = self.0.send(AttachReply {
            version: ATTACH_VERSION,
            result,
        });
    }
}

/// A successful result: what was installed, for which peers, with which
/// mechanism, and why the guard is on when it is.
pub fn result_ok(
    installed: Installed,
    peers: Vec<String>,
    mechanism: Option<Backend>,
    reason: Option<String>,
) -> AttachResult {
    AttachResult::Ok {
        installed,
        peers,
        mechanism: mechanism.map(|b| b.to_string()),
        reason,
    }
}

/// An error result.
pub fn result_error(message: impl Into<String>) -> AttachResult {
    AttachResult::Error {
        message: message.into(),
    }
}

fn request_remote(req: &AttachRequest) -> Option<SocketAddr> {
    let ip: IpAddr = req.remote.as_deref()?.parse().ok()?;
    Some(SocketAddr::new(ip, req.remote_port.unwrap_or(0)))
}

/// Why the attach socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AttachSocketError {
    /// The mode has bits other than permission bits.
    #[error("attach socket {}: mode {mode:o} is not a permission mode (at most 0777)", .path.display())]
    InvalidMode { path: PathBuf, mode: u32 },
    /// Creating the socket's parent directory failed.
    #[error("attach socket {}: cannot create directory {}: {source}", .path.display(), .dir.display())]
    CreateDir {
        path: PathBuf,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Something exists at the socket path that is not a socket.
    #[error("attach socket {}: the path exists and is not a socket; refusing to replace it", .path.display())]
    NotASocket { path: PathBuf },
    /// A live server (probably another aokd) accepts connections there.
    #[error("attach socket {}: another process is listening on it (is aokd already running?)", .path.display())]
    InUse { path: PathBuf },
    /// Another I/O error; `what` says what was being done.
    #[error("attach socket {}: {what}: {source}", .path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl From<UnixListenerError> for AttachSocketError {
    fn from(e: UnixListenerError) -> Self {
        match e {
            UnixListenerError::CreateDir { path, dir, source } => {
                AttachSocketError::CreateDir { path, dir, source }
            }
            UnixListenerError::NotASocket { path } => AttachSocketError::NotASocket { path },
            UnixListenerError::InUse { path } => AttachSocketError::InUse { path },
            UnixListenerError::Io { path, what, source } => {
                AttachSocketError::Io { path, what, source }
            }
        }
    }
}

/// A bound attach socket. Dropping it removes the socket file (if it is
/// still the one this server created).
#[derive(Debug)]
pub struct AttachServer {
    socket: PrivateListener,
    default_wait: Duration,
    limit: ClientLimit,
}

impl AttachServer {
    /// Creates the attach socket at `path` with permission bits `mode`
    /// (normally [`DEFAULT_MODE`]; e.g. 0660 with a group that only the
    /// routing daemons' users are in). A missing parent directory is
    /// created with mode 0700, or 0711 when `mode` grants access beyond
    /// the owner (other users must be able to reach the socket; 0711 lets
    /// them through without listing it); an existing directory is left
    /// alone. A stale socket left by a dead process is replaced (never
    /// anything that is not a socket, nor a socket someone listens on). The
    /// socket is bound under a temporary name, chmodded, and renamed into
    /// place, so it is never reachable with another mode. Must run inside a
    /// tokio runtime.
    pub async fn bind(path: &Path, mode: u32) -> Result<AttachServer, AttachSocketError> {
        AttachServer::bind_with_group(path, mode, None).await
    }

    /// [`AttachServer::bind`], the socket given group `group`
    /// (`attach_socket_group`: routing daemons that run as their own user).
    pub async fn bind_with_group(
        path: &Path,
        mode: u32,
        group: Option<u32>,
    ) -> Result<AttachServer, AttachSocketError> {
        if mode & !0o777 != 0 {
            return Err(AttachSocketError::InvalidMode {
                path: path.to_owned(),
                mode,
            });
        }
        let dir_mode = if mode & 0o077 != 0 { 0o711 } else { 0o700 };
        let socket = bind_private_group(path, mode, dir_mode, group, "attach")?;
        info!(path = %path.display(), mode = format!("{mode:o}"), group = %crate::unix_listener::gid_field(group), "attach socket listening");
        Ok(AttachServer {
            socket,
            default_wait: DEFAULT_WAIT,
            limit: ClientLimit::new("attach", MAX_ATTACH_CLIENTS, IDLE_TIMEOUT),
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

    /// How long to wait for the event loop when a request has no `wait_ms`
    /// (the daemon's acquire timeout; [`REPLY_MARGIN`] is added).
    pub fn set_default_wait(&mut self, wait: Duration) {
        self.default_wait = wait;
    }

    /// Accepts connections forever, serving each in its own task. Calls go
    /// to `calls`. Returns only if `calls` is closed (the event loop has
    /// gone away).
    pub async fn run(&self, calls: mpsc::Sender<AttachCall>) {
        loop {
            let stream = tokio::select! {
                r = self.socket.listener().accept() => r,
                () = calls.closed() => return,
            };
            let stream = match stream {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    warn!(error = %e, "attach socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = self.limit.admit() else {
                let reply = AttachReply {
                    version: ATTACH_VERSION,
                    result: result_error(self.limit.refusal()),
                };
                self.limit.refuse(&stream, &reply);
                continue;
            };
            let calls = calls.clone();
            let default_wait = self.default_wait;
            let idle = self.limit.idle();
            tokio::spawn(async move {
                if let Err(e) = serve_connection_with_idle(stream, calls, default_wait, idle).await
                {
                    debug!(error = %e, "attach connection ended with an error");
                }
                drop(slot);
            });
        }
    }
}

/// Binds `path` with `mode` and serves it until `calls` closes.
pub async fn serve(
    path: &Path,
    mode: u32,
    calls: mpsc::Sender<AttachCall>,
) -> Result<(), AttachSocketError> {
    let server = AttachServer::bind(path, mode).await?;
    server.run(calls).await;
    Ok(())
}

/// The client's identity (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy)]
struct Client {
    pid: Option<i32>,
    uid: u32,
}

/// Serves one connection until the client closes it, breaks the framing
/// (an overlong line, several descriptors in one message), or an I/O error
/// occurs, with the default idle timeout.
pub async fn serve_connection(
    stream: UnixStream,
    calls: mpsc::Sender<AttachCall>,
    default_wait: Duration,
) -> io::Result<()> {
    serve_connection_with_idle(stream, calls, default_wait, IDLE_TIMEOUT).await
}

/// [`serve_connection`], closing the connection when no complete request
/// arrives within `idle` (the wait for an answer does not count).
pub async fn serve_connection_with_idle(
    mut stream: UnixStream,
    calls: mpsc::Sender<AttachCall>,
    default_wait: Duration,
    idle: Duration,
) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    let client = Client {
        pid: cred.pid(),
        uid: cred.uid(),
    };
    debug!(pid = %pid_field(client.pid), uid = client.uid, "attach connection");
    let mut chunk = vec![0u8; MAX_LINE_LEN + 1];
    let mut buf: Vec<u8> = Vec::new();
    // Descriptors of the line still being assembled.
    let mut line_fds: Vec<OwnedFd> = Vec::new();
    // Reset after each request answered: a client dripping a request
    // octet by octet is idle too.
    let mut deadline = tokio::time::Instant::now() + idle;
    loop {
        let Ok(readable) = tokio::time::timeout_at(deadline, stream.readable()).await else {
            debug!(pid = %pid_field(client.pid), uid = client.uid, idle_s = idle.as_secs_f64(),
                "attach connection idle; closing");
            return Ok(());
        };
        readable?;
        let received = stream.try_io(Interest::READABLE, || {
            sys::recv_with_fd(stream.as_fd(), &mut chunk)
        });
        let (n, mut new_fd) = match received {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // Several descriptors in one message: they are closed, and
                // the bytes that came with them are lost.
                warn!(pid = %pid_field(client.pid), uid = client.uid, "attach request: {e}");
                let msg =
                    format!("{e}: send exactly one descriptor per request; closing the connection");
                write_reply(&mut stream, result_error(msg)).await?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(());
        }
        // Linux ends a read after the message that carried descriptors, and
        // may have glued earlier messages without descriptors in front of
        // it: a descriptor belongs to the line that holds the last byte
        // read with it.
        buf.extend_from_slice(&chunk[..n]);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            // Descriptors carried over belong to the first line completed.
            let mut fds = std::mem::take(&mut line_fds);
            if buf.is_empty() {
                fds.extend(new_fd.take());
            }
            let body = &line[..pos];
            if fds.is_empty() && body.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let extra = fds.len() > 1;
            let fd = fds.pop();
            drop(fds);
            let result = handle_request(body, fd, extra, client, &calls, default_wait).await;
            write_reply(&mut stream, result).await?;
            deadline = tokio::time::Instant::now() + idle;
        }
        line_fds.extend(new_fd);
        if buf.len() > MAX_LINE_LEN {
            warn!(pid = %pid_field(client.pid), uid = client.uid, "attach request longer than {MAX_LINE_LEN} octets; closing");
            let msg =
                format!("request line longer than {MAX_LINE_LEN} octets; closing the connection");
            write_reply(&mut stream, result_error(msg)).await?;
            return Ok(());
        }
    }
}

async fn write_reply(stream: &mut UnixStream, result: AttachResult) -> io::Result<()> {
    let reply = AttachReply {
        version: ATTACH_VERSION,
        result,
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_else(|e| {
        // Not expected: every field serializes. Answer something valid.
        let fallback = AttachReply {
            version: ATTACH_VERSION,
            result: result_error(format!("internal error: cannot encode the reply: {e}")),
        };
        serde_json::to_vec(&fallback).unwrap_or_default()
    });
    out.push(b'\n');
    stream.write_all(&out).await?;
    stream.flush().await
}

/// Validates one request and hands it to the event loop.
async fn handle_request(
    line: &[u8],
    fd: Option<OwnedFd>,
    extra_fds: bool,
    client: Client,
    calls: &mpsc::Sender<AttachCall>,
    default_wait: Duration,
) -> AttachResult {
    let (request, socket, pid) = match validate(line, fd, extra_fds, client.pid) {
        Ok(v) => v,
        Err(message) => {
            debug!(pid = %pid_field(client.pid), uid = client.uid, %message, "attach request refused");
            return result_error(message);
        }
    };
    info!(
        pid,
        uid = client.uid,
        fd = request.fd,
        role = %request.role,
        remote = request.remote.as_deref().unwrap_or("-"),
        "attach request"
    );
    let wait = request
        .wait_ms
        .map_or(default_wait, Duration::from_millis)
        .saturating_add(REPLY_MARGIN);
    let (tx, rx) = oneshot::channel();
    let call = AttachCall {
        request,
        socket,
        pid,
        uid: client.uid,
        reply: tx,
    };
    if calls.send(call).await.is_err() {
        return result_error("aokd is shutting down");
    }
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(reply)) => reply.result,
        Ok(Err(_)) => result_error("internal error: the request was dropped without an answer"),
        Err(_) => result_error(format!(
            "aokd did not answer within {} ms",
            wait.as_millis()
        )),
    }
}

/// Everything the server checks before the event loop sees a request:
/// the JSON and its version, the descriptor, the socket, the role's
/// fields, and that the socket can be reacquired from the client later.
fn validate(
    line: &[u8],
    fd: Option<OwnedFd>,
    extra_fds: bool,
    pid: Option<i32>,
) -> Result<(AttachRequest, OwnedFd, i32), String> {
    let value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| format!("malformed request (not a JSON object on one line): {e}"))?;
    match value.get("version").map(serde_json::Value::as_u64) {
        None => return Err("malformed request: no \"version\"".into()),
        Some(Some(v)) if v == u64::from(ATTACH_VERSION) => {}
        Some(v) => {
            return Err(format!(
                "unsupported attach protocol version {}; this aokd speaks version {ATTACH_VERSION}",
                v.map_or_else(|| "(not a number)".to_owned(), |v| v.to_string())
            ))
        }
    }
    let request =
        AttachRequest::deserialize(value).map_err(|e| format!("malformed request: {e}"))?;
    if extra_fds {
        return Err("more than one descriptor came with the request: send exactly one".into());
    }
    let socket = fd.ok_or(
        "no descriptor came with the request: send the socket with SCM_RIGHTS \
         on the same sendmsg(2) call as the request line",
    )?;
    check_request(&request, socket.as_fd())?;
    let pid = match pid {
        Some(p) if p > 0 => p,
        _ => {
            return Err(
                "cannot identify the client process (SO_PEERCRED has no pid: \
                        is the client in another PID namespace?)"
                    .into(),
            )
        }
    };
    let cookie = sys::socket_cookie(socket.as_fd())
        .map_err(|e| format!("cannot read the socket's SO_COOKIE: {e}"))?;
    match sockets::reacquire(pid, request.fd, cookie) {
        Ok(copy) => drop(copy),
        Err(Gone::DescriptorClosed { .. } | Gone::Replaced { .. }) => {
            return Err(format!(
                "descriptor {} of process {pid} is not the socket sent with the request: \
                 \"fd\" must be the socket's own descriptor number in the sending process",
                request.fd
            ))
        }
        Err(Gone::ProcessExited { .. }) => return Err(format!("process {pid} has exited")),
        Err(Gone::Inaccessible { source, .. }) => {
            return Err(format!(
                "aokd cannot take descriptors from process {pid} (pidfd_getfd: {source}), \
                 so it could not change the socket's keys later: aokd needs ptrace rights \
                 over the routing daemon, normally by running as root (docs/attach.md)"
            ))
        }
    }
    Ok((request, socket, pid))
}

/// The socket and the role's fields.
fn check_request(req: &AttachRequest, sock: BorrowedFd<'_>) -> Result<(), String> {
    let os = |what: &str, e: io::Error| {
        if e.raw_os_error() == Some(libc::ENOTSOCK) {
            "the descriptor is not a socket".to_owned()
        } else {
            format!("cannot read the socket's {what}: {e}")
        }
    };
    let ty = sys::socket_type(sock).map_err(|e| os("type", e))?;
    let protocol = sys::socket_protocol(sock).map_err(|e| os("protocol", e))?;
    let domain = sys::socket_domain(sock).map_err(|e| os("family", e))?;
    if ty != libc::SOCK_STREAM || protocol != libc::IPPROTO_TCP {
        return Err("the descriptor is not a TCP socket".into());
    }
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err("the socket is neither IPv4 nor IPv6".into());
    }
    if req.fd < 0 {
        return Err(format!("invalid descriptor number {}", req.fd));
    }
    if req.wait_ms.is_some_and(|w| w > MAX_WAIT_MS) {
        return Err(format!("wait_ms must be at most {MAX_WAIT_MS}"));
    }
    let state = sys::tcp_state(sock).map_err(|e| os("TCP state", e))?;
    let remote = match req.remote.as_deref() {
        None => None,
        Some(r) => Some(
            r.parse::<IpAddr>()
                .map_err(|_| format!("\"remote\" {r:?} is not an IP address"))?,
        ),
    };
    if let Some(ip) = remote {
        if domain == libc::AF_INET && canonical(ip).is_ipv6() {
            return Err(format!("remote {ip} is IPv6 but the socket is IPv4"));
        }
    }
    match req.role {
        SocketRole::Connect => {
            if remote.is_none() {
                return Err("role connect needs \"remote\" (the peer's IP address)".into());
            }
            match req.remote_port {
                None => return Err("role connect needs \"remote_port\"".into()),
                Some(0) => return Err("\"remote_port\" 0 is not a port to connect to".into()),
                Some(_) => {}
            }
            if state != sys::TcpState::Close {
                return Err(format!(
                    "the socket is already {} : attach before connect()",
                    state.name()
                ));
            }
        }
        SocketRole::Listen => {
            if req.remote.is_some() || req.remote_port.is_some() {
                return Err("role listen takes no \"remote\" or \"remote_port\"".into());
            }
            if !matches!(state, sys::TcpState::Close | sys::TcpState::Listen) {
                return Err(format!(
                    "the socket is {}, not a socket about to listen",
                    state.name()
                ));
            }
        }
        SocketRole::Accepted => {
            let peer = sys::peer_address(sock)
                .map_err(|e| os("peer address", e))?
                .ok_or("role accepted needs a connected socket (the one accept() returned)")?;
            if let Some(ip) = remote {
                if canonical(ip) != canonical(peer.ip()) {
                    return Err(format!(
                        "\"remote\" {ip} is not the socket's peer {}",
                        peer.ip()
                    ));
                }
            }
            if let Some(port) = req.remote_port {
                if port != peer.port() {
                    return Err(format!(
                        "\"remote_port\" {port} is not the socket's peer port {}",
                        peer.port()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A client's pid for a log field (`-` when SO_PEERCRED gave none).
fn pid_field(pid: Option<i32>) -> String {
    pid.map_or_else(|| "-".into(), |p| p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    fn pid() -> Option<i32> {
        i32::try_from(std::process::id()).ok()
    }

    fn request(role: SocketRole, fd: &impl AsRawFd) -> AttachRequest {
        AttachRequest {
            version: ATTACH_VERSION,
            role,
            fd: fd.as_raw_fd(),
            remote: None,
            remote_port: None,
            wait_ms: None,
        }
    }

    fn line(req: &AttachRequest) -> Vec<u8> {
        serde_json::to_vec(req).expect("encode")
    }

    /// `validate` with a duplicate of `sock` standing for the received
    /// descriptor.
    fn check(req: &AttachRequest, sock: &impl AsFd) -> Result<AttachRequest, String> {
        let fd = sock.as_fd().try_clone_to_owned().expect("dup");
        validate(&line(req), Some(fd), false, pid()).map(|(r, _, _)| r)
    }

    fn connect_request(sock: &impl AsRawFd) -> AttachRequest {
        AttachRequest {
            remote: Some("127.0.0.1".into()),
            remote_port: Some(179),
            ..request(SocketRole::Connect, sock)
        }
    }

    #[test]
    fn valid_requests_pass() {
        let sock = sys::tcp_socket(false).expect("socket");
        let req = connect_request(&sock);
        assert_eq!(check(&req, &sock), Ok(req));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let req = request(SocketRole::Listen, &listener);
        assert_eq!(check(&req, &listener), Ok(req.clone()));
        // A closed socket about to listen.
        let req = request(SocketRole::Listen, &sock);
        assert!(check(&req, &sock).is_ok());
        let addr = listener.local_addr().expect("addr");
        let client = std::net::TcpStream::connect(addr).expect("connect");
        let (accepted, from) = listener.accept().expect("accept");
        let mut req = request(SocketRole::Accepted, &accepted);
        assert!(check(&req, &accepted).is_ok());
        req.remote = Some(from.ip().to_string());
        req.remote_port = Some(from.port());
        assert!(check(&req, &accepted).is_ok());
        drop(client);
    }

    #[test]
    fn bad_requests_get_clear_messages() {
        let sock = sys::tcp_socket(false).expect("socket");
        let err = |req: &AttachRequest, sock: &dyn AsFd| {
            let fd = sock.as_fd().try_clone_to_owned().expect("dup");
            validate(&line(req), Some(fd), false, pid()).expect_err("refused")
        };
        let mut req = connect_request(&sock);
        req.remote = None;
        assert!(err(&req, &sock).contains("needs \"remote\""));
        let mut req = connect_request(&sock);
        req.remote = Some("not-an-ip".into());
        assert!(err(&req, &sock).contains("not an IP address"));
        let mut req = connect_request(&sock);
        req.remote_port = None;
        assert!(err(&req, &sock).contains("remote_port"));
        req.remote_port = Some(0);
        assert!(err(&req, &sock).contains("remote_port"));
        let mut req = connect_request(&sock);
        req.remote = Some("2001:db8::1".into());
        assert!(err(&req, &sock).contains("IPv6 but the socket is IPv4"));
        let mut req = connect_request(&sock);
        req.wait_ms = Some(MAX_WAIT_MS + 1);
        assert!(err(&req, &sock).contains("wait_ms"));
        let mut req = request(SocketRole::Listen, &sock);
        req.remote = Some("127.0.0.1".into());
        assert!(err(&req, &sock).contains("takes no"));
        let req = request(SocketRole::Accepted, &sock);
        assert!(err(&req, &sock).contains("connected socket"));

        // The wrong descriptor number (another socket of ours).
        let other = sys::tcp_socket(false).expect("socket");
        let req = connect_request(&other);
        assert!(
            err(&req, &sock).contains("not the socket sent"),
            "{}",
            err(&req, &sock)
        );

        // Not TCP.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let req = connect_request(&udp);
        assert!(err(&req, &udp).contains("not a TCP socket"));
        let (unix, _) = std::os::unix::net::UnixStream::pair().expect("pair");
        let req = connect_request(&unix);
        assert!(err(&req, &unix).contains("not a TCP socket"));
        let file = std::fs::File::open("/proc/self/status").expect("open");
        let req = connect_request(&file);
        assert!(err(&req, &file).contains("not a socket"));

        // Already connected.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let stream =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let req = connect_request(&stream);
        assert!(err(&req, &stream).contains("ESTABLISHED"));
        let req = request(SocketRole::Listen, &stream);
        assert!(err(&req, &stream).contains("not a socket about to listen"));

        // Framing and version.
        let fd = || Some(sock.try_clone().expect("dup"));
        let req = connect_request(&sock);
        let e = validate(b"{not json", fd(), false, pid()).expect_err("json");
        assert!(e.contains("malformed"), "{e}");
        let e = validate(br#"{"role":"connect"}"#, fd(), false, pid()).expect_err("no version");
        assert!(e.contains("version"), "{e}");
        let e = validate(br#"{"version":2,"role":"x"}"#, fd(), false, pid()).expect_err("v2");
        assert!(e.contains("unsupported attach protocol version 2"), "{e}");
        let e = validate(
            br#"{"version":1,"role":"dance","fd":3}"#,
            fd(),
            false,
            pid(),
        )
        .expect_err("role");
        assert!(e.contains("malformed request"), "{e}");
        let e = validate(&line(&req), None, false, pid()).expect_err("no fd");
        assert!(e.contains("no descriptor"), "{e}");
        let e = validate(&line(&req), fd(), true, pid()).expect_err("two fds");
        assert!(e.contains("more than one descriptor"), "{e}");
        let e = validate(&line(&req), fd(), false, None).expect_err("no pid");
        assert!(e.contains("PID namespace"), "{e}");
    }

    /// Sends `data` with `fd` from the client end, like the client library.
    fn send(client: &std::os::unix::net::UnixStream, data: &[u8], fd: Option<BorrowedFd<'_>>) {
        match fd {
            Some(fd) => {
                let n = sys::send_with_fd(client.as_fd(), data, fd).expect("sendmsg");
                assert_eq!(n, data.len());
            }
            None => std::io::Write::write_all(&mut &*client, data).expect("write"),
        }
    }

    fn read_reply(reader: &mut std::io::BufReader<std::os::unix::net::UnixStream>) -> AttachReply {
        let mut s = String::new();
        std::io::BufRead::read_line(reader, &mut s).expect("read reply");
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("bad reply {s:?}: {e}"))
    }

    #[tokio::test]
    async fn connections_forward_calls_and_survive_errors() {
        let (server_end, client) = std::os::unix::net::UnixStream::pair().expect("pair");
        server_end.set_nonblocking(true).expect("nonblocking");
        let server_end = UnixStream::from_std(server_end).expect("tokio stream");
        let (tx, mut rx) = mpsc::channel::<AttachCall>(4);
        let server = tokio::spawn(serve_connection(server_end, tx, Duration::from_secs(5)));

        // A fake event loop that answers Keys and checks what it got.
        let event_loop = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(call) = rx.recv().await {
                seen.push((
                    call.request.role,
                    sys::socket_cookie(call.socket.as_fd()).expect("cookie"),
                    call.pid,
                ));
                call.answer(result_ok(
                    Installed::Keys,
                    vec!["r1".into()],
                    Some(Backend::Md5),
                    None,
                ));
            }
            seen
        });

        let client_thread = tokio::task::spawn_blocking(move || {
            let sock = sys::tcp_socket(false).expect("socket");
            let cookie = sys::socket_cookie(sock.as_fd()).expect("cookie");
            let mut reader = std::io::BufReader::new(client.try_clone().expect("clone"));
            let mut req = line(&connect_request(&sock));
            req.push(b'\n');

            // A request split across two writes, the descriptor on the first.
            send(&client, &req[..10], Some(sock.as_fd()));
            std::thread::sleep(Duration::from_millis(50));
            send(&client, &req[10..], None);
            let reply = read_reply(&mut reader);
            assert_eq!(reply.version, ATTACH_VERSION);
            assert!(
                matches!(&reply.result, AttachResult::Ok { installed: Installed::Keys, mechanism: Some(m), .. } if m == "tcp-md5"),
                "{reply:?}"
            );

            // Errors keep the connection usable: no descriptor, bad JSON.
            send(&client, &req, None);
            let reply = read_reply(&mut reader);
            assert!(
                matches!(&reply.result, AttachResult::Error { message } if message.contains("no descriptor")),
                "{reply:?}"
            );
            send(&client, b"\n  \n", None);
            send(&client, b"garbage\n", Some(sock.as_fd()));
            let reply = read_reply(&mut reader);
            assert!(
                matches!(&reply.result, AttachResult::Error { message } if message.contains("malformed")),
                "{reply:?}"
            );

            // Still works.
            send(&client, &req, Some(sock.as_fd()));
            let reply = read_reply(&mut reader);
            assert!(matches!(reply.result, AttachResult::Ok { .. }), "{reply:?}");

            // An overlong line: error, then the server closes.
            let long = vec![b'x'; MAX_LINE_LEN + 10];
            send(&client, &long, None);
            let reply = read_reply(&mut reader);
            assert!(
                matches!(&reply.result, AttachResult::Error { message } if message.contains("longer than")),
                "{reply:?}"
            );
            // Closed (reset: the server left the rest of the line unread).
            let mut rest = String::new();
            match std::io::BufRead::read_line(&mut reader, &mut rest) {
                Ok(0) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                other => panic!("expected the connection closed, got {other:?} {rest:?}"),
            }
            cookie
        });
        let cookie = client_thread.await.expect("client");
        server.await.expect("server task").expect("server result");
        let seen = event_loop.await.expect("event loop");
        assert_eq!(seen.len(), 2);
        for (role, c, p) in seen {
            assert_eq!(role, SocketRole::Connect);
            assert_eq!(c, cookie);
            assert_eq!(Some(p), pid());
        }
    }

    #[tokio::test]
    async fn two_descriptors_in_one_message_close_the_connection() {
        let (server_end, client) = std::os::unix::net::UnixStream::pair().expect("pair");
        server_end.set_nonblocking(true).expect("nonblocking");
        let server_end = UnixStream::from_std(server_end).expect("tokio stream");
        let (tx, mut rx) = mpsc::channel::<AttachCall>(4);
        let server = tokio::spawn(serve_connection(server_end, tx, Duration::from_secs(5)));
        let client = tokio::task::spawn_blocking(move || {
            let a = sys::tcp_socket(false).expect("socket");
            let mut req = line(&connect_request(&a));
            req.push(b'\n');
            // The first half with one descriptor, the second with another:
            // two descriptors for one line.
            send(&client, &req[..5], Some(a.as_fd()));
            std::thread::sleep(Duration::from_millis(50));
            send(&client, &req[5..], Some(a.as_fd()));
            let mut reader = std::io::BufReader::new(client);
            let reply = read_reply(&mut reader);
            assert!(
                matches!(&reply.result, AttachResult::Error { message } if message.contains("more than one descriptor")),
                "{reply:?}"
            );
        });
        client.await.expect("client");
        server.abort();
        assert!(rx.try_recv().is_err(), "nothing forwarded");
    }

    #[tokio::test]
    async fn unanswered_calls_time_out_or_report_the_drop() {
        let (server_end, client) = std::os::unix::net::UnixStream::pair().expect("pair");
        server_end.set_nonblocking(true).expect("nonblocking");
        let server_end = UnixStream::from_std(server_end).expect("tokio stream");
        let (tx, mut rx) = mpsc::channel::<AttachCall>(4);
        let server = tokio::spawn(serve_connection(server_end, tx, Duration::from_secs(5)));
        // Drops every call unanswered.
        let event_loop = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let client = tokio::task::spawn_blocking(move || {
            let a = sys::tcp_socket(false).expect("socket");
            let mut req = line(&connect_request(&a));
            req.push(b'\n');
            send(&client, &req, Some(a.as_fd()));
            let mut reader = std::io::BufReader::new(client);
            let reply = read_reply(&mut reader);
            assert!(
                matches!(&reply.result, AttachResult::Error { message } if message.contains("dropped")),
                "{reply:?}"
            );
        });
        client.await.expect("client");
        server.await.expect("server").expect("server result");
        event_loop.abort();
    }

    #[tokio::test]
    async fn bind_sets_the_mode_and_replaces_stale_sockets() {
        let dir = std::env::temp_dir().join(format!("aokd-attach-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/attach.sock");
        let server = AttachServer::bind(&path, 0o660).await.expect("bind");
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.mode() & 0o777, 0o660);
        let dmeta = std::fs::metadata(dir.join("sub")).expect("stat dir");
        assert_eq!(dmeta.mode() & 0o777, 0o711, "reachable by the group");
        // In use: refused.
        let e = AttachServer::bind(&path, DEFAULT_MODE)
            .await
            .expect_err("in use");
        assert!(matches!(e, AttachSocketError::InUse { .. }), "{e}");
        drop(server);
        assert!(!path.exists(), "removed on drop");
        // A stale socket (bound, nobody listening) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).expect("stale");
        drop(stale);
        let server = AttachServer::bind(&path, DEFAULT_MODE)
            .await
            .expect("rebind");
        assert_eq!(
            std::fs::metadata(&path).expect("stat").mode() & 0o777,
            0o600
        );
        drop(server);
        // Not a socket: refused; bad mode: refused.
        std::fs::write(&path, b"x").expect("file");
        let e = AttachServer::bind(&path, DEFAULT_MODE)
            .await
            .expect_err("file");
        assert!(matches!(e, AttachSocketError::NotASocket { .. }), "{e}");
        let e = AttachServer::bind(&dir.join("x.sock"), 0o4600)
            .await
            .expect_err("mode");
        assert!(matches!(e, AttachSocketError::InvalidMode { .. }), "{e}");
        let private = dir.join("private/attach.sock");
        let server = AttachServer::bind(&private, DEFAULT_MODE)
            .await
            .expect("bind");
        let dmeta = std::fs::metadata(dir.join("private")).expect("stat dir");
        assert_eq!(dmeta.mode() & 0o777, 0o700);
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
