//! Socket setup shared by the test programs `tcp-peer`, `stream-peer` and
//! `ao-wrong-key`. They create each TCP socket with `socket(2)` themselves,
//! as a routing daemon does, so that they hold the descriptor before
//! `listen()`/`connect()` and can hand it to aokd (attach API) or put a key
//! on it first; the standard library's `TcpStream::connect` and
//! `TcpListener::bind` would not give them that moment.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use aokd_attach::Attached;
use serde_json::{json, Value};

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A new blocking TCP socket for `addr`'s family, close-on-exec.
pub fn tcp_socket(addr: SocketAddr) -> io::Result<OwnedFd> {
    aokd_sys::tcp_socket(addr.is_ipv6())
}

/// `addr` as a `sockaddr_storage` and its length.
pub use aokd_sys::to_sockaddr as sockaddr;

/// `SO_REUSEADDR`, then `bind(2)` to `addr`.
pub fn bind(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `one` is a c_int living across the call; its size is passed.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    let (ss, len) = sockaddr(addr);
    // SAFETY: `ss` holds a valid sockaddr of length `len`.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    })
}

/// `listen(2)` on a bound socket.
pub fn listen(fd: &OwnedFd, backlog: libc::c_int) -> io::Result<()> {
    // SAFETY: listen(2) on a descriptor we own.
    check(unsafe { libc::listen(fd.as_raw_fd(), backlog) })
}

/// Connects the blocking socket `fd` to `addr` within `timeout` (a
/// non-blocking `connect(2)` and `poll(2)`; the socket is blocking again
/// afterwards). A timeout is an error of kind `TimedOut`.
pub fn connect(fd: &OwnedFd, addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    check(flags)?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    if let Err(e) = aokd_sys::connect(fd.as_fd(), addr) {
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect to {addr} timed out after {timeout:?}"),
                ));
            }
            let mut pfd = libc::pollfd {
                fd: raw,
                events: libc::POLLOUT,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n > 0 {
                break;
            }
        }
        let mut err: libc::c_int = 0;
        let mut elen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err`/`elen` are valid for getsockopt(SO_ERROR).
        check(unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut elen,
            )
        })?;
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
    }
    // SAFETY: as above.
    check(unsafe { libc::fcntl(raw, libc::F_SETFL, flags) })
}

/// aokd's answer to an attach request as the JSON the programs print:
/// `status` "ok" with what was installed, or "error" with the message.
pub fn attach_reply_json(r: &Result<Attached, String>) -> Value {
    match r {
        Ok(a) => json!({
            "status": "ok",
            "installed": serde_json::to_value(a.installed).unwrap_or(Value::Null),
            "peers": a.peers,
            "mechanism": a.mechanism,
            "reason": a.reason,
        }),
        Err(e) => json!({"status": "error", "message": e}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn bind_listen_connect_on_loopback() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let l = tcp_socket(any).unwrap();
        bind(&l, any).unwrap();
        listen(&l, 4).unwrap();
        let listener = TcpListener::from(l);
        let addr = listener.local_addr().unwrap();
        let c = tcp_socket(addr).unwrap();
        connect(&c, addr, Duration::from_secs(5)).unwrap();
        let stream = TcpStream::from(c);
        let (accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer, stream.local_addr().unwrap());
        assert_eq!(accepted.peer_addr().unwrap(), stream.local_addr().unwrap());
        // Blocking again after the connect.
        assert!(stream
            .set_read_timeout(Some(Duration::from_millis(10)))
            .is_ok());
    }

    #[test]
    fn sockaddr_lengths() {
        assert_eq!(
            sockaddr("10.0.0.1:179".parse().unwrap()).1 as usize,
            std::mem::size_of::<libc::sockaddr_in>()
        );
        assert_eq!(
            sockaddr("[2001:db8::1]:179".parse().unwrap()).1 as usize,
            std::mem::size_of::<libc::sockaddr_in6>()
        );
    }
}
