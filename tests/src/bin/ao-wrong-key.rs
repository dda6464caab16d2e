//! `ao-wrong-key`: a TCP client whose socket carries a TCP-AO MKT with the
//! right KeyIDs and algorithm but a random master key, for the wrong-key case
//! of the VM end-to-end test (tests/vm/e2e-tcp-ao.sh). It does not talk to
//! aokd: the key is put on the socket directly with
//! `aokd::kernel::ao::add_key` (Current_key and RNext_key), then the socket
//! connects. The server, keyed by aokd, must drop every segment (its
//! `pkt_bad` rises) so the connection never completes.
//!
//! ```text
//! ao-wrong-key client --connect IP:PORT --send-id N --recv-id N
//!              [--alg hmac-sha256-128|aes128-cmac-96|hmac-sha1-96]
//!              [--include-options true|false] [--timeout S]
//! ```
//!
//! `--send-id`/`--recv-id` are the KeyIDs the real client would use (the
//! `send_id`/`recv_id` of its side's MKT in `aoctl --json mkts`). Prints one
//! JSON line: `{"connected":...,"error":...,"elapsed_ms":...,"pkt_good":...,
//! "pkt_bad":...,"pkt_key_not_found":...}` (the client socket's own
//! `TCP_AO_INFO`). Exit status: 0 when the connection failed (as it must),
//! 1 when it was established, 2 for a usage or setup error.

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aokd::kernel::ao;
use aokd_proto::crypto::Secret;
use aokd_proto::mkt::{MacAlgorithm, MasterKeyTuple};
use aokd_tests::echo::{self, Args};
use aokd_tests::sock::{connect, tcp_socket};
use serde_json::json;

const USAGE: &str = "usage: ao-wrong-key client --connect IP:PORT --send-id N --recv-id N [--alg ALG] [--include-options true|false] [--timeout S]";

fn main() -> ExitCode {
    echo::main("ao-wrong-key", run)
}

fn run() -> Result<ExitCode, String> {
    let args = Args::parse(USAGE)?;
    if args.command != "client" {
        return Err(USAGE.into());
    }
    args.check_known(
        &[
            "connect",
            "send-id",
            "recv-id",
            "alg",
            "include-options",
            "timeout",
        ],
        USAGE,
    )?;
    let addr: SocketAddr = args
        .get("connect")
        .ok_or(format!("--connect is required\n{USAGE}"))?
        .parse()
        .map_err(|e| format!("--connect: {e}"))?;
    let id = |name: &str| -> Result<u8, String> {
        args.get(name)
            .ok_or(format!("--{name} is required\n{USAGE}"))?
            .parse()
            .map_err(|e| format!("--{name}: {e}"))
    };
    let algorithm: MacAlgorithm = args.parsed("alg", MacAlgorithm::HmacSha256_128)?;
    let mkt = MasterKeyTuple {
        send_id: id("send-id")?,
        recv_id: id("recv-id")?,
        algorithm,
        include_options: args.parsed("include-options", true)?,
        master_key: Secret::new(random_key()?),
    };
    let timeout = Duration::from_secs_f64(args.parsed("timeout", 3.0)?);

    let fd = tcp_socket(addr).map_err(|e| format!("socket: {e}"))?;
    let prefix = if addr.is_ipv4() { 32 } else { 128 };
    ao::add_key(&fd, addr.ip(), prefix, &mkt, true, true)
        .map_err(|e| format!("TCP_AO_ADD_KEY: {e}"))?;
    let start = Instant::now();
    let result = connect(&fd, addr, timeout);
    let info = ao::info(&fd).map_err(|e| format!("TCP_AO_INFO: {e}"))?;
    echo::emit(&json!({
        "connected": result.is_ok(),
        "error": result.as_ref().err().map(|e| e.to_string()),
        "elapsed_ms": start.elapsed().as_millis() as u64,
        "pkt_good": info.pkt_good,
        "pkt_bad": info.pkt_bad,
        "pkt_key_not_found": info.pkt_key_not_found,
    }));
    Ok(if result.is_ok() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// 32 random octets from getrandom(2).
fn random_key() -> Result<Vec<u8>, String> {
    let mut key = vec![0u8; 32];
    let mut filled = 0;
    while filled < key.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `key`.
        let n =
            unsafe { libc::getrandom(key[filled..].as_mut_ptr().cast(), key.len() - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(format!("getrandom: {e}"));
            }
            continue;
        }
        filled += n as usize;
    }
    Ok(key)
}
