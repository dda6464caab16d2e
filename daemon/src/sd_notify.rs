//! Readiness for systemd (the `sd_notify(3)` protocol, `Type=notify`).
//!
//! When systemd starts aokd with `Type=notify` it sets `NOTIFY_SOCKET` to a
//! Unix datagram socket (a path, or an abstract name starting with `@`) and
//! considers the service started only once a `READY=1` datagram arrives
//! there. aokd sends it once its UDP sockets, control socket and attach
//! socket all exist and the state file is open, so that a routing daemon
//! ordered `After=aokd.service` finds the attach socket; and `STOPPING=1`
//! when it shuts down. Without `NOTIFY_SOCKET` nothing is sent. The
//! protocol is a few octets on a datagram socket: no library is needed.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// Sends `state` (for example `"READY=1\nSTATUS=..."`) to systemd's
/// `NOTIFY_SOCKET`; `Ok(false)` when there is none (not started by
/// systemd, or not as `Type=notify`).
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(state.as_bytes(), &path)?;
        }
    }
    Ok(true)
}
