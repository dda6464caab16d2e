//! The client side of the control protocol (docs/control.md): one request
//! per call over aokd's Unix socket, answered by one JSON line.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aokd_api::control::{
    Command, Request, Response, ResponseData, ResponseResult, PROTOCOL_VERSION,
};

/// The control socket aokd uses unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/aokd/control.sock";

/// The environment variable that overrides [`DEFAULT_SOCKET`].
pub const SOCKET_ENV: &str = "AOKD_SOCKET";

/// The environment variable that sets `--timeout`.
pub const TIMEOUT_ENV: &str = "AOKD_TIMEOUT";

/// How long aoctl waits for aokd unless told otherwise, in seconds.
pub const DEFAULT_TIMEOUT_SECS: &str = "10";

/// Longest accepted response line (many MKTs make long lines).
const MAX_RESPONSE_LEN: u64 = 16 * 1024 * 1024;

/// Why a call did not return data.
#[derive(Debug)]
pub enum CallError {
    /// The socket could not be connected to.
    Connect { path: PathBuf, source: io::Error },
    /// Sending or receiving failed.
    Io { path: PathBuf, source: io::Error },
    /// aokd did not accept, take the request or answer within the timeout.
    Timeout {
        path: PathBuf,
        timeout: Duration,
        what: &'static str,
    },
    /// aokd answered something that is not a valid response.
    Protocol { path: PathBuf, message: String },
    /// aokd answered with an error.
    Daemon(String),
}

impl CallError {
    /// The exit status for this error: 1 when aokd refused the request, 2
    /// when aokd could not be reached or understood.
    pub fn exit_code(&self) -> i32 {
        match self {
            CallError::Daemon(_) => 1,
            _ => 2,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Connect { path, source } => {
                write!(f, "cannot connect to aokd at {}: {source}", path.display())?;
                if source.kind() == io::ErrorKind::PermissionDenied {
                    write!(f, "\nhint: the control socket is only accessible to root")
                } else {
                    write!(
                        f,
                        "\nhint: is aokd running? use --socket PATH or {SOCKET_ENV} to name its control socket"
                    )
                }
            }
            CallError::Io { path, source } => {
                write!(f, "control socket {}: {source}", path.display())
            }
            CallError::Timeout {
                path,
                timeout,
                what,
            } => write!(
                f,
                "control socket {}: {what} within {} s\n\
                 hint: aokd may be busy or hung; --timeout SECS or {TIMEOUT_ENV} sets the wait",
                path.display(),
                timeout.as_secs_f64()
            ),
            CallError::Protocol { path, message } => {
                write!(f, "control socket {}: {message}", path.display())
            }
            CallError::Daemon(message) => write!(f, "aokd: {message}"),
        }
    }
}

impl std::error::Error for CallError {}

/// Connects to `socket`, giving up after `timeout`: connect(2) on a Unix
/// socket blocks while the listener's backlog is full (a hung aokd), and
/// std has no connect timeout for Unix sockets, so the connect runs on a
/// thread that is abandoned if it does not finish in time.
fn connect(socket: &Path, timeout: Duration) -> Result<UnixStream, CallError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = socket.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(UnixStream::connect(path));
    });
    match rx.recv_timeout(timeout) {
        Ok(r) => r.map_err(|source| CallError::Connect {
            path: socket.to_owned(),
            source,
        }),
        Err(_) => Err(CallError::Timeout {
            path: socket.to_owned(),
            timeout,
            what: "aokd did not accept the connection",
        }),
    }
}

/// Sends `command` to aokd at `socket` and returns the data of its answer;
/// waits at most `timeout` for the connection, then as long again for the
/// request to be taken and for the answer.
pub fn call(socket: &Path, command: Command, timeout: Duration) -> Result<ResponseData, CallError> {
    // A read or write timeout shows as WouldBlock (or TimedOut).
    let io_err = |what: &'static str| {
        move |source: io::Error| match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CallError::Timeout {
                path: socket.to_owned(),
                timeout,
                what,
            },
            _ => CallError::Io {
                path: socket.to_owned(),
                source,
            },
        }
    };
    let stream = connect(socket, timeout)?;
    let deadline = std::time::Instant::now() + timeout;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(io_err("cannot set the write timeout"))?;

    let request = Request {
        version: PROTOCOL_VERSION,
        command,
    };
    let mut line = serde_json::to_vec(&request).map_err(|e| CallError::Protocol {
        path: socket.to_owned(),
        message: format!("cannot encode the request: {e}"),
    })?;
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .map_err(io_err("aokd did not take the request"))?;

    let mut answer = Vec::new();
    BufReader::new(
        Deadline {
            stream: &stream,
            deadline,
        }
        .take(MAX_RESPONSE_LEN),
    )
    .read_until(b'\n', &mut answer)
    .map_err(io_err("aokd did not answer"))?;
    let protocol = |message: String| CallError::Protocol {
        path: socket.to_owned(),
        message,
    };
    if answer.is_empty() {
        return Err(protocol(
            "aokd closed the connection without answering".into(),
        ));
    }
    if answer.last() != Some(&b'\n') {
        return Err(protocol("truncated response".into()));
    }
    let response: Response = serde_json::from_slice(&answer)
        .map_err(|e| {
            // Name the version if that is what differs.
            match serde_json::from_slice::<serde_json::Value>(&answer)
                .ok()
                .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64))
            {
                Some(v) if v != u64::from(PROTOCOL_VERSION) => format!(
                    "aokd speaks control protocol version {v}, aoctl version {PROTOCOL_VERSION}"
                ),
                _ => format!("invalid response from aokd: {e}"),
            }
        })
        .map_err(protocol)?;
    match response.result {
        ResponseResult::Error { message } => Err(CallError::Daemon(message)),
        ResponseResult::Ok { .. } if response.version != PROTOCOL_VERSION => {
            Err(protocol(format!(
                "aokd speaks control protocol version {}, aoctl version {PROTOCOL_VERSION}",
                response.version
            )))
        }
        ResponseResult::Ok { data } => Ok(data),
    }
}

/// Reads the socket until `deadline`: each read waits only for what is
/// left of the time, so that an answer trickling in a byte at a time cannot
/// stretch the wait beyond the timeout.
struct Deadline<'a> {
    stream: &'a UnixStream,
    deadline: std::time::Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self
            .deadline
            .saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}
