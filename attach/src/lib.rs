//! The client of aokd's attach socket (docs/attach.md).
//!
//! A program that opens TCP sessions covered by aokd (a routing daemon, or
//! the preload library acting inside one) passes each socket to aokd
//! before `connect()` or `listen()`, and each socket `accept()` returns;
//! aokd puts the peer's TCP-AO MKTs (or TCP-MD5 key), or the dummy-key
//! guard, on it and answers:
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::path::Path;
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let sock = std::net::UdpSocket::bind("127.0.0.1:0")?; // any AsFd
//! let peer: SocketAddr = "192.0.2.2:179".parse()?;
//! let attached = aokd_attach::attach_connect(
//!     Path::new(aokd_attach::DEFAULT_SOCKET),
//!     &sock,
//!     peer,
//!     Some(Duration::from_secs(5)),
//! )?;
//! println!("{:?} for {:?}", attached.installed, attached.peers);
//! // ... now connect(sock, peer)
//! # Ok(()) }
//! ```
//!
//! Everything here is blocking, bounded by a timeout (the request's
//! `wait_ms`, or [`DEFAULT_WAIT`], plus [`REPLY_MARGIN`]), and safe to call
//! from inside an intercepted `connect()`, `listen()` or `accept()`: no
//! global state, no output, no signals (`MSG_NOSIGNAL`), descriptors
//! close-on-exec and closed on return, and the connection to aokd is made
//! with the raw `connect` system call, so an `LD_PRELOAD` wrapper of
//! `connect()` is not re-entered. The `unsafe` code is in one module
//! (`sys`) and in `aokd-sys`, whose `SCM_RIGHTS` code the daemon shares.

use std::fmt;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use aokd_api::attach::{
    AttachReply, AttachRequest, AttachResult, Installed, SocketRole, ATTACH_VERSION,
};

mod sys;

/// aokd's attach socket unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/aokd/attach.sock";

/// The wait assumed for a request without `wait_ms` (aokd then uses its
/// own acquire timeout, which should not be longer).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// Time allowed on top of the wait for aokd's own work and the transport.
pub const REPLY_MARGIN: Duration = Duration::from_secs(10);

/// Longest overall timeout: aokd accepts waits of at most one hour.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600 + 10);

/// Longest reply accepted.
pub const MAX_REPLY_LEN: usize = 64 * 1024;

/// Why an attach request got no usable answer.
#[derive(Debug)]
pub enum AttachError {
    /// The request cannot be sent as given.
    InvalidRequest(String),
    /// aokd's socket cannot be reached (not running, wrong path,
    /// permissions).
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Sending the request failed.
    Send(io::Error),
    /// Reading the answer failed.
    Receive(io::Error),
    /// No answer within this time.
    Timeout(Duration),
    /// aokd closed the connection without answering.
    Closed,
    /// The answer is not a valid reply.
    BadReply(String),
    /// aokd answered with an error (the convenience functions only;
    /// [`attach`] returns such replies as they are).
    Refused(String),
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachError::InvalidRequest(m) => write!(f, "invalid attach request: {m}"),
            AttachError::Connect { path, source } => {
                write!(f, "cannot connect to aokd at {}: {source}", path.display())
            }
            AttachError::Send(e) => write!(f, "cannot send the attach request to aokd: {e}"),
            AttachError::Receive(e) => write!(f, "cannot read aokd's answer: {e}"),
            AttachError::Timeout(d) => {
                write!(f, "aokd did not answer within {} ms", d.as_millis())
            }
            AttachError::Closed => f.write_str("aokd closed the connection without answering"),
            AttachError::BadReply(m) => write!(f, "invalid answer from aokd: {m}"),
            AttachError::Refused(m) => write!(f, "aokd refused the socket: {m}"),
        }
    }
}

impl std::error::Error for AttachError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AttachError::Connect { source, .. } => Some(source),
            AttachError::Send(e) | AttachError::Receive(e) => Some(e),
            _ => None,
        }
    }
}

/// What aokd put on the socket (a successful reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Keys, the guard, or nothing (no configured peer covers the socket).
    pub installed: Installed,
    /// The peers whose keys or guards are on the socket.
    pub peers: Vec<String>,
    /// `"tcp-ao"` or `"tcp-md5"`, when something was installed.
    pub mechanism: Option<String>,
    /// Why the guard is on, when it is.
    pub reason: Option<String>,
}

/// A request for `sock` in `role`, without remote or wait.
pub fn request(role: SocketRole, sock: &impl AsFd) -> AttachRequest {
    AttachRequest {
        version: ATTACH_VERSION,
        role,
        fd: sock.as_fd().as_raw_fd(),
        remote: None,
        remote_port: None,
        wait_ms: None,
    }
}

/// The time [`attach`] allows for `request`: its wait plus the margin, at
/// most [`MAX_TIMEOUT`].
pub fn timeout_for(request: &AttachRequest) -> Duration {
    request
        .wait_ms
        .map_or(DEFAULT_WAIT, Duration::from_millis)
        .saturating_add(REPLY_MARGIN)
        .min(MAX_TIMEOUT)
}

/// Sends `request` with the socket `sock` to aokd at `socket_path` and
/// returns aokd's reply, which may be an [`AttachResult::Error`].
/// `request.fd` must be `sock`'s descriptor number in this process (aokd
/// checks it). Bounded by [`timeout_for`].
pub fn attach(
    socket_path: &Path,
    sock: &impl AsFd,
    request: &AttachRequest,
) -> Result<AttachReply, AttachError> {
    attach_with_timeout(socket_path, sock, request, timeout_for(request))
}

/// [`attach`] with an explicit overall timeout (at most [`MAX_TIMEOUT`]).
pub fn attach_with_timeout(
    socket_path: &Path,
    sock: &impl AsFd,
    request: &AttachRequest,
    timeout: Duration,
) -> Result<AttachReply, AttachError> {
    let timeout = timeout.clamp(Duration::from_millis(1), MAX_TIMEOUT);
    let deadline = Instant::now() + timeout;
    let mut line = serde_json::to_vec(request)
        .map_err(|e| AttachError::InvalidRequest(format!("cannot encode: {e}")))?;
    line.push(b'\n');

    let stream = sys::connect_unix(socket_path, timeout).map_err(|source| {
        let source = if source.kind() == io::ErrorKind::WouldBlock {
            io::Error::from(io::ErrorKind::TimedOut)
        } else {
            source
        };
        AttachError::Connect {
            path: socket_path.to_owned(),
            source,
        }
    })?;

    // The descriptor travels with the first byte; the rest follows if the
    // kernel took only part of the line.
    let mut sent = loop {
        match aokd_sys::send_with_fd(stream.as_fd(), &line, sock.as_fd()) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted && Instant::now() < deadline => {}
            Err(e) => return Err(send_error(e, timeout)),
        }
    };
    while sent < line.len() {
        match sys::send(stream.as_fd(), &line[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted && Instant::now() < deadline => {}
            Err(e) => return Err(send_error(e, timeout)),
        }
    }

    let mut reply = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    let mut reader = &stream;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(AttachError::Timeout(timeout));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(AttachError::Receive)?;
        let n = match reader.read(&mut buf) {
            Ok(0) => return Err(AttachError::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(AttachError::Timeout(timeout))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(AttachError::Closed)
            }
            Err(e) => return Err(AttachError::Receive(e)),
        };
        let chunk = &buf[..n];
        if let Some(pos) = chunk.iter().position(|&b| b == b'\n') {
            reply.extend_from_slice(&chunk[..pos]);
            break;
        }
        reply.extend_from_slice(chunk);
        if reply.len() > MAX_REPLY_LEN {
            return Err(AttachError::BadReply(format!(
                "longer than {MAX_REPLY_LEN} octets"
            )));
        }
    }
    serde_json::from_slice(&reply).map_err(|e| AttachError::BadReply(e.to_string()))
}

fn send_error(e: io::Error, timeout: Duration) -> AttachError {
    if e.kind() == io::ErrorKind::WouldBlock {
        AttachError::Timeout(timeout)
    } else {
        AttachError::Send(e)
    }
}

/// [`attach`], with aokd's error answers turned into
/// [`AttachError::Refused`].
fn attach_ok(
    socket_path: &Path,
    sock: &impl AsFd,
    request: &AttachRequest,
) -> Result<Attached, AttachError> {
    match attach(socket_path, sock, request)?.result {
        AttachResult::Ok {
            installed,
            peers,
            mechanism,
            reason,
        } => Ok(Attached {
            installed,
            peers,
            mechanism,
            reason,
        }),
        AttachResult::Error { message } => Err(AttachError::Refused(message)),
    }
}

/// Attaches `sock`, which is about to `connect()` to `remote`. `wait`:
/// how long aokd may wait for a negotiation before answering with the
/// guard (`None`: aokd's own acquire timeout); it is sent in
/// milliseconds, at least 1 when not zero.
pub fn attach_connect(
    socket_path: &Path,
    sock: &impl AsFd,
    remote: SocketAddr,
    wait: Option<Duration>,
) -> Result<Attached, AttachError> {
    let mut req = request(SocketRole::Connect, sock);
    req.remote = Some(remote.ip().to_string());
    req.remote_port = Some(remote.port());
    req.wait_ms = wait.map(|w| {
        let ms = u64::try_from(w.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 && !w.is_zero() {
            1
        } else {
            ms
        }
    });
    attach_ok(socket_path, sock, &req)
}

/// Attaches `sock`, which is about to `listen()` (or already listens):
/// aokd installs the keys of every peer it covers.
pub fn attach_listen(socket_path: &Path, sock: &impl AsFd) -> Result<Attached, AttachError> {
    attach_ok(socket_path, sock, &request(SocketRole::Listen, sock))
}

/// Attaches `sock`, just returned by `accept()` on an attached listener,
/// before the program uses it: aokd brings its keys up to date (keys
/// changed on the listener do not reach connections waiting in its accept
/// queue).
pub fn attach_accepted(socket_path: &Path, sock: &impl AsFd) -> Result<Attached, AttachError> {
    attach_ok(socket_path, sock, &request(SocketRole::Accepted, sock))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    /// A throw-away socket path.
    fn socket_path(tag: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "aokd-attach-client-{}-{tag}-{n}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        p
    }

    /// A fake aokd serving one connection with `serve`.
    fn fake_server(
        path: &Path,
        serve: impl FnOnce(UnixStream) + Send + 'static,
    ) -> thread::JoinHandle<()> {
        let listener = UnixListener::bind(path).expect("bind");
        thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            serve(s);
        })
    }

    /// Reads one request line and its descriptor.
    fn read_request(s: &UnixStream) -> (AttachRequest, Option<std::os::fd::OwnedFd>) {
        let mut buf = vec![0u8; 4096];
        let mut line = Vec::new();
        let mut fd = None;
        loop {
            let (n, f) = aokd_sys::recv_with_fd_wait(s.as_fd(), &mut buf).expect("recvmsg");
            assert!(n > 0, "eof before a request");
            if f.is_some() {
                fd = f;
            }
            line.extend_from_slice(&buf[..n]);
            if line.last() == Some(&b'\n') {
                break;
            }
        }
        (serde_json::from_slice(&line).expect("request JSON"), fd)
    }

    fn answer(mut s: &UnixStream, reply: &str) {
        s.write_all(reply.as_bytes()).expect("write");
    }

    fn udp() -> std::net::UdpSocket {
        // Any socket will do for the client; the fake server checks the
        // cookie only.
        std::net::UdpSocket::bind("127.0.0.1:0").expect("udp")
    }

    #[test]
    fn connect_requests_carry_the_socket_and_parse_the_answer() {
        let path = socket_path("ok");
        let sock = udp();
        let cookie = aokd_sys::socket_cookie(sock.as_fd()).expect("cookie");
        let server = fake_server(&path, move |s| {
            let (req, fd) = read_request(&s);
            let fd = fd.expect("a descriptor");
            assert_eq!(aokd_sys::socket_cookie(fd.as_fd()).expect("cookie"), cookie);
            assert_eq!(req.role, SocketRole::Connect);
            assert_eq!(req.remote.as_deref(), Some("192.0.2.2"));
            assert_eq!(req.remote_port, Some(179));
            assert_eq!(req.wait_ms, Some(1));
            // The answer may arrive in pieces.
            answer(&s, r#"{"version":1,"status":"ok","installed":"guard","#);
            thread::sleep(Duration::from_millis(20));
            answer(
                &s,
                "\"peers\":[\"r2\"],\"mechanism\":\"tcp-ao\",\"reason\":\"negotiating\"}\n",
            );
        });
        let got = attach_connect(
            &path,
            &sock,
            "192.0.2.2:179".parse().expect("literal"),
            Some(Duration::from_micros(10)),
        )
        .expect("attach");
        server.join().expect("server");
        assert_eq!(
            got,
            Attached {
                installed: Installed::Guard,
                peers: vec!["r2".into()],
                mechanism: Some("tcp-ao".into()),
                reason: Some("negotiating".into()),
            }
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn errors_are_refusals_for_the_helpers_and_replies_for_attach() {
        let path = socket_path("err");
        let sock = udp();
        let reply = r#"{"version":1,"status":"error","message":"not a TCP socket"}"#;
        let server = fake_server(&path, move |s| {
            for _ in 0..2 {
                let (req, fd) = read_request(&s);
                assert!(fd.is_some());
                assert_eq!(req.role, SocketRole::Listen);
                answer(&s, &format!("{reply}\n"));
            }
        });
        // One connection per call: the server above takes one connection,
        // so make both requests over it by hand.
        let stream = sys::connect_unix(&path, Duration::from_secs(5)).expect("connect");
        for _ in 0..2 {
            let mut line = serde_json::to_vec(&request(SocketRole::Listen, &sock)).expect("json");
            line.push(b'\n');
            aokd_sys::send_with_fd(stream.as_fd(), &line, sock.as_fd()).expect("send");
            let mut buf = [0u8; 512];
            let n = (&stream).read(&mut buf).expect("read");
            let got: AttachReply = serde_json::from_slice(&buf[..n]).expect("reply");
            assert!(matches!(got.result, AttachResult::Error { .. }));
        }
        server.join().expect("server");

        let path = socket_path("err2");
        let server = fake_server(&path, move |s| {
            let _ = read_request(&s);
            answer(&s, &format!("{reply}\n"));
        });
        let e = attach_listen(&path, &sock).expect_err("refused");
        assert!(
            matches!(&e, AttachError::Refused(m) if m == "not a TCP socket"),
            "{e}"
        );
        assert_eq!(e.to_string(), "aokd refused the socket: not a TCP socket");
        server.join().expect("server");

        let path = socket_path("err3");
        let server = fake_server(&path, move |s| {
            let _ = read_request(&s);
            answer(&s, &format!("{reply}\n"));
        });
        let got = attach(&path, &sock, &request(SocketRole::Accepted, &sock)).expect("reply");
        assert_eq!(
            got.result,
            AttachResult::Error {
                message: "not a TCP socket".into()
            }
        );
        server.join().expect("server");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn silence_times_out_and_hangups_are_reported() {
        let sock = udp();
        let path = socket_path("slow");
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let server = fake_server(&path, move |s| {
            let _ = read_request(&s);
            // Hold the connection open without answering.
            let _ = done_rx.recv_timeout(Duration::from_secs(10));
        });
        let started = Instant::now();
        let e = attach_with_timeout(
            &path,
            &sock,
            &request(SocketRole::Listen, &sock),
            Duration::from_millis(200),
        )
        .expect_err("timeout");
        assert!(matches!(e, AttachError::Timeout(_)), "{e}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(5));
        let _ = done_tx.send(());
        server.join().expect("server");

        let path = socket_path("hangup");
        let server = fake_server(&path, move |s| {
            let _ = read_request(&s);
        });
        let e = attach_accepted(&path, &sock).expect_err("closed");
        assert!(matches!(e, AttachError::Closed), "{e}");
        server.join().expect("server");

        let path = socket_path("garbage");
        let server = fake_server(&path, move |s| {
            let _ = read_request(&s);
            answer(&s, "hello\n");
        });
        let e = attach_listen(&path, &sock).expect_err("bad reply");
        assert!(matches!(e, AttachError::BadReply(_)), "{e}");
        server.join().expect("server");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn unreachable_sockets_are_connect_errors() {
        let sock = udp();
        let path = socket_path("missing");
        let e = attach_listen(&path, &sock).expect_err("no server");
        match &e {
            AttachError::Connect { source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::NotFound, "{e}")
            }
            other => panic!("{other}"),
        }
        assert!(
            e.to_string().starts_with("cannot connect to aokd at "),
            "{e}"
        );
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(200)));
        let e = attach_listen(&long, &sock).expect_err("too long");
        assert!(matches!(e, AttachError::Connect { .. }), "{e}");
        assert_eq!(
            timeout_for(&request(SocketRole::Listen, &sock)),
            DEFAULT_WAIT + REPLY_MARGIN
        );
        let mut req = request(SocketRole::Connect, &sock);
        req.wait_ms = Some(u64::MAX);
        assert_eq!(timeout_for(&req), MAX_TIMEOUT);
    }
}
