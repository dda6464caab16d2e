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

/// How long to wait for aokd to answer.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Longest accepted response line (many MKTs make long lines).
const MAX_RESPONSE_LEN: u64 = 16 * 1024 * 1024;

/// Why a call did not return data.
#[derive(Debug)]
pub enum CallError {
    /// The socket could not be connected to.
    Connect { path: PathBuf, source: io::Error },
    /// Sending or receiving failed.
    Io { path: PathBuf, source: io::Error },
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
            CallError::Protocol { path, message } => {
                write!(f, "control socket {}: {message}", path.display())
            }
            CallError::Daemon(message) => write!(f, "aokd: {message}"),
        }
    }
}

impl std::error::Error for CallError {}

/// Sends `command` to aokd at `socket` and returns the data of its answer.
pub fn call(socket: &Path, command: Command) -> Result<ResponseData, CallError> {
    let io_err = |source| CallError::Io {
        path: socket.to_owned(),
        source,
    };
    let stream = UnixStream::connect(socket).map_err(|source| CallError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io_err)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io_err)?;

    let request = Request {
        version: PROTOCOL_VERSION,
        command,
    };
    let mut line = serde_json::to_vec(&request).map_err(|e| CallError::Protocol {
        path: socket.to_owned(),
        message: format!("cannot encode the request: {e}"),
    })?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io_err)?;

    let mut answer = Vec::new();
    BufReader::new((&stream).take(MAX_RESPONSE_LEN))
        .read_until(b'\n', &mut answer)
        .map_err(io_err)?;
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
