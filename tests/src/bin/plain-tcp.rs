//! `plain-tcp`: a TCP echo server and client that know nothing about aokd,
//! written with `std::net` only, so that the tests can run them under
//! `LD_PRELOAD=libaokd_preload.so` as a stand-in for an unmodified routing
//! daemon (or without it, as an unsigned peer).
//!
//! ```text
//! plain-tcp server --listen IP:PORT [--bytes N] [--count K] [--io-timeout S]
//! plain-tcp client --connect IP:PORT [--bytes N] [--timeout S]
//! ```
//!
//! The server prints `{"event":"listening",...}` once it listens, then one
//! `{"event":"accepted",...}` line per connection (read N octets, echo
//! them) or `{"event":"accept-error",...}`, and exits after K connections
//! (K = 0: never). The client connects (within `--timeout` seconds), sends
//! N octets, reads the echo, and prints `{"ok":...,"bytes":...,"error":...}`.
//! Exit status 0 only on success.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aokd_tests::echo::{self, Args};
use serde_json::json;

const USAGE: &str = "usage: plain-tcp server --listen IP:PORT [--bytes N] [--count K] [--io-timeout S]\n       plain-tcp client --connect IP:PORT [--bytes N] [--timeout S]";

fn main() -> ExitCode {
    echo::main("plain-tcp", run)
}

fn run() -> Result<ExitCode, String> {
    let args = Args::parse(USAGE)?;
    let bytes: usize = args.parsed("bytes", 4096)?;
    match args.command.as_str() {
        "server" => {
            args.check_known(&["listen", "bytes", "count", "io-timeout"], USAGE)?;
            let addr: SocketAddr = args.parsed("listen", "0.0.0.0:0".parse().expect("lit"))?;
            let count: u64 = args.parsed("count", 0)?;
            let io = Duration::from_secs_f64(args.parsed("io-timeout", 10.0)?);
            server(addr, bytes, count, io)
        }
        "client" => {
            args.check_known(&["connect", "bytes", "timeout"], USAGE)?;
            let addr: SocketAddr = args
                .get("connect")
                .ok_or("--connect is required")?
                .parse()
                .map_err(|e| format!("--connect: {e}"))?;
            let timeout = Duration::from_secs_f64(args.parsed("timeout", 5.0)?);
            Ok(client(addr, bytes, timeout))
        }
        _ => Err(USAGE.into()),
    }
}

fn server(addr: SocketAddr, bytes: usize, count: u64, io: Duration) -> Result<ExitCode, String> {
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            echo::emit(&json!({"event": "listen-error", "error": e.to_string(),
                "errno": e.raw_os_error()}));
            return Ok(ExitCode::FAILURE);
        }
    };
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    echo::emit(&json!({"event": "listening", "addr": local.to_string()}));
    let mut served = 0u64;
    let mut all_ok = true;
    while count == 0 || served < count {
        match listener.accept() {
            Ok((stream, _)) => {
                let report = echo::serve(stream, bytes, io);
                all_ok &= report["ok"] == true;
                echo::emit(&report);
                served += 1;
            }
            Err(e) => echo::emit(&json!({"event": "accept-error", "error": e.to_string(),
                "errno": e.raw_os_error()})),
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn client(addr: SocketAddr, bytes: usize, timeout: Duration) -> ExitCode {
    let start = Instant::now();
    let result = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connect: {e}"))
        .and_then(|s| echo::exchange(s, bytes, timeout));
    let ok = result.is_ok();
    echo::emit(&json!({
        "ok": ok,
        "bytes": result.as_ref().copied().unwrap_or(0),
        "error": result.err(),
        "elapsed_ms": start.elapsed().as_millis() as u64,
    }));
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
