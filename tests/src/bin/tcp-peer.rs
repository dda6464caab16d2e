//! `tcp-peer`: an attach-aware TCP echo server and client, the way a routing
//! daemon patched for aokd would use the attach API (docs/attach.md): it
//! creates each socket itself (`socket(2)`, so it holds the descriptor
//! before `listen()`/`connect()`), hands it to aokd with `aokd-attach`, and
//! only then listens or connects.
//!
//! ```text
//! tcp-peer server --listen IP:PORT --attach SOCK [--bytes N] [--count K] [--io-timeout S]
//! tcp-peer client --connect IP:PORT [--attach SOCK] [--wait-ms MS] [--md5 HEXKEY]
//!                 [--bytes N] [--timeout S]
//! ```
//!
//! Server: bind, attach (role `listen`), listen, print
//! `{"event":"listening","addr":...,"attach":REPLY}`; then for each
//! connection attach the accepted socket (role `accepted`), read N octets,
//! echo them, print `{"event":"accepted","peer":...,"ok":...,"attach":...}`;
//! exit after K connections (K = 0: never).
//!
//! Client: attach (role `connect`, `--wait-ms` as the request's `wait_ms`),
//! connect within `--timeout` seconds, send N octets, read and check the
//! echo, print `{"ok":...,"bytes":...,"error":...,"attach":...}`. Instead
//! of attaching, `--md5 HEXKEY` puts that TCP-MD5 key for the server's
//! address on the socket directly (a wrong key on purpose, for tests).
//!
//! Exit status 0 only on success.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aokd_attach::Attached;
use aokd_tests::echo::{self, Args};
use aokd_tests::sock::{self, bind, connect, tcp_socket};
use serde_json::{json, Value};

const USAGE: &str = "usage: tcp-peer server --listen IP:PORT --attach SOCK [--bytes N] [--count K] [--io-timeout S]\n       tcp-peer client --connect IP:PORT [--attach SOCK] [--wait-ms MS] [--md5 HEXKEY] [--bytes N] [--timeout S]";

fn main() -> ExitCode {
    echo::main("tcp-peer", run)
}

fn run() -> Result<ExitCode, String> {
    let args = Args::parse(USAGE)?;
    let bytes: usize = args.parsed("bytes", 4096)?;
    let addr = |name: &str| -> Result<SocketAddr, String> {
        args.get(name)
            .ok_or(format!("--{name} is required\n{USAGE}"))?
            .parse()
            .map_err(|e| format!("--{name}: {e}"))
    };
    match args.command.as_str() {
        "server" => {
            args.check_known(&["listen", "attach", "bytes", "count", "io-timeout"], USAGE)?;
            let attach = PathBuf::from(args.get("attach").ok_or("--attach is required")?);
            let io = Duration::from_secs_f64(args.parsed("io-timeout", 10.0)?);
            server(
                addr("listen")?,
                &attach,
                bytes,
                args.parsed("count", 0)?,
                io,
            )
        }
        "client" => {
            args.check_known(
                &["connect", "attach", "wait-ms", "md5", "bytes", "timeout"],
                USAGE,
            )?;
            let wait = match args.get("wait-ms") {
                None => None,
                Some(_) => Some(Duration::from_millis(args.parsed("wait-ms", 0)?)),
            };
            let md5 = match args.get("md5") {
                None => None,
                Some(h) => Some(hex(h)?),
            };
            let timeout = Duration::from_secs_f64(args.parsed("timeout", 5.0)?);
            Ok(client(
                addr("connect")?,
                args.get("attach").map(Path::new),
                wait,
                md5,
                bytes,
                timeout,
            ))
        }
        _ => Err(USAGE.into()),
    }
}

fn hex(s: &str) -> Result<Vec<u8>, String> {
    if s.len() % 2 != 0 || s.is_empty() {
        return Err(format!("--md5: {s:?} is not an even number of hex digits"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("--md5: {e}")))
        .collect()
}

/// aokd's answer as JSON, and whether it lets the socket proceed.
fn reply_json(r: &Result<Attached, String>) -> (Value, bool) {
    (sock::attach_reply_json(r), r.is_ok())
}

fn server(
    addr: SocketAddr,
    attach: &Path,
    bytes: usize,
    count: u64,
    io_timeout: Duration,
) -> Result<ExitCode, String> {
    let fd = tcp_socket(addr).map_err(|e| format!("socket: {e}"))?;
    bind(&fd, addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let reply = aokd_attach::attach_listen(attach, &fd.as_fd()).map_err(|e| e.to_string());
    let (attach_json, attached) = reply_json(&reply);
    if !attached {
        echo::emit(&json!({"event": "attach-error", "attach": attach_json}));
        return Ok(ExitCode::FAILURE);
    }
    sock::listen(&fd, 16).map_err(|e| format!("listen: {e}"))?;
    let listener = TcpListener::from(fd);
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    echo::emit(&json!({"event": "listening", "addr": local.to_string(), "attach": attach_json}));
    let mut served = 0u64;
    let mut all_ok = true;
    while count == 0 || served < count {
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) => {
                echo::emit(&json!({"event": "accept-error", "error": e.to_string()}));
                continue;
            }
        };
        served += 1;
        let reply =
            aokd_attach::attach_accepted(attach, &stream.as_fd()).map_err(|e| e.to_string());
        let (attach_json, attached) = reply_json(&reply);
        let mut report = if attached {
            echo::serve(stream, bytes, io_timeout)
        } else {
            // Not keyed as aokd wants: close without exchanging data.
            drop(stream);
            json!({"event": "accepted", "peer": peer.to_string(), "ok": false, "bytes": 0,
                "error": "attach failed"})
        };
        report["attach"] = attach_json;
        all_ok &= report["ok"] == true;
        echo::emit(&report);
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn client(
    addr: SocketAddr,
    attach: Option<&Path>,
    wait: Option<Duration>,
    md5: Option<Vec<u8>>,
    bytes: usize,
    timeout: Duration,
) -> ExitCode {
    let start = Instant::now();
    let mut attach_json = Value::Null;
    let result = (|| -> Result<usize, String> {
        let fd = tcp_socket(addr).map_err(|e| format!("socket: {e}"))?;
        if let Some(key) = &md5 {
            let peer: IpAddr = addr.ip();
            aokd::kernel::md5::set_key(&fd, peer, None, key).map_err(|e| format!("md5: {e}"))?;
        }
        if let Some(path) = attach {
            let reply = aokd_attach::attach_connect(path, &fd.as_fd(), addr, wait)
                .map_err(|e| e.to_string());
            let (j, ok) = reply_json(&reply);
            attach_json = j;
            if !ok {
                return Err("attach failed".into());
            }
        }
        connect(&fd, addr, timeout).map_err(|e| format!("connect: {e}"))?;
        echo::exchange(TcpStream::from(fd), bytes, timeout)
    })();
    let ok = result.is_ok();
    echo::emit(&json!({
        "ok": ok,
        "bytes": result.as_ref().copied().unwrap_or(0),
        "error": result.err(),
        "attach": attach_json,
        "elapsed_ms": start.elapsed().as_millis() as u64,
    }));
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
