//! The library's only use of the attach client (`aokd-attach`): one call
//! per socket role, and the reduction of aokd's answer to what the
//! interposers need: attached (with what was installed) or failed (and
//! why).

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::Duration;

use aokd_attach::{AttachError, AttachReply, AttachResult, Installed, SocketRole};

/// How long a `listen` request may take: aokd installs the keys it has
/// and never negotiates for a listener.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an `accepted` request may take: aokd only reconciles the
/// socket with the MKTs it has; a peer is kept waiting meanwhile.
pub const ACCEPTED_TIMEOUT: Duration = Duration::from_secs(5);

/// aokd attached the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// What aokd put on the socket.
    pub installed: Installed,
    /// "tcp-ao" or "tcp-md5", when something was installed.
    pub mechanism: Option<String>,
    /// Why the guard is installed, when it is.
    pub reason: Option<String>,
}

impl fmt::Display for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.installed {
            Installed::Keys => "keys",
            Installed::Guard => "guard",
            Installed::NotCovered => "nothing (not covered)",
        };
        write!(f, "aokd installed {what}")?;
        if let Some(mechanism) = &self.mechanism {
            write!(f, " ({mechanism})")?;
        }
        if let Some(reason) = &self.reason {
            write!(f, ": {reason}")?;
        }
        Ok(())
    }
}

/// aokd did not attach the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// aokd could not be asked or did not answer (in time, or sensibly).
    Unreachable(String),
    /// aokd answered with an error.
    Refused(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unreachable(why) => f.write_str(why),
            Failure::Refused(why) => write!(f, "aokd refused the socket: {why}"),
        }
    }
}

impl From<AttachError> for Failure {
    fn from(error: AttachError) -> Self {
        match error {
            AttachError::Refused(message) => Failure::Refused(message),
            other => Failure::Unreachable(other.to_string()),
        }
    }
}

/// Role `connect`: keys for `remote` on a socket about to connect to it.
/// Bounded by `wait` (or the client's assumed acquire timeout) plus the
/// client's reply margin.
pub fn connect(
    socket: &Path,
    fd: BorrowedFd<'_>,
    remote: SocketAddr,
    wait: Option<Duration>,
) -> Result<Attached, Failure> {
    let attached = aokd_attach::attach_connect(socket, &fd, remote, wait)?;
    Ok(Attached {
        installed: attached.installed,
        mechanism: attached.mechanism,
        reason: attached.reason,
    })
}

/// Role `listen`: keys for every covered peer on a socket about to listen.
pub fn listen(socket: &Path, fd: BorrowedFd<'_>) -> Result<Attached, Failure> {
    short_request(socket, fd, SocketRole::Listen, LISTEN_TIMEOUT)
}

/// Role `accepted`: reconcile the keys of a socket just accepted on an
/// attached listener.
pub fn accepted(socket: &Path, fd: BorrowedFd<'_>) -> Result<Attached, Failure> {
    short_request(socket, fd, SocketRole::Accepted, ACCEPTED_TIMEOUT)
}

/// A request that never waits for a negotiation, with its own timeout.
fn short_request(
    socket: &Path,
    fd: BorrowedFd<'_>,
    role: SocketRole,
    timeout: Duration,
) -> Result<Attached, Failure> {
    let request = aokd_attach::request(role, &fd);
    let reply = aokd_attach::attach_with_timeout(socket, &fd, &request, timeout)?;
    outcome(reply)
}

fn outcome(reply: AttachReply) -> Result<Attached, Failure> {
    match reply.result {
        AttachResult::Ok {
            installed,
            mechanism,
            reason,
            ..
        } => Ok(Attached {
            installed,
            mechanism,
            reason,
        }),
        AttachResult::Error { message } => Err(Failure::Refused(message)),
    }
}

/// A request built by the caller (the background takeover sends the
/// program's descriptor number with a duplicate of the socket), with its
/// own timeout.
pub fn request_with_fd(
    socket: &Path,
    fd: BorrowedFd<'_>,
    request: &aokd_attach::AttachRequest,
    timeout: Duration,
) -> Result<Attached, Failure> {
    let reply = aokd_attach::attach_with_timeout(socket, &fd, request, timeout)?;
    outcome(reply)
}
