//! `ike-load`: a load generator for IKEv2 responders (issue: scale). Many
//! initiators, each a real proto [`Endpoint`] with its own source address
//! in 127.0.0.0/8 and its own UDP socket, driven from one thread with
//! poll(2), at a fixed concurrency.
//!
//! ```text
//! ike-load --target 127.0.0.1:500 --peers 10000 --concurrency 64 \
//!          --psk-file psk --first-source 127.16.0.1 [--source-port 500] \
//!          [--mode storm|churn] [--seconds 30]
//! ```
//!
//! - Each initiator `k` (0 <= k < peers) sends from `first-source + k` (one
//!   address each, like distinct routers), with identity ID_IPV4_ADDR of
//!   that address, toward the target's address as identity, with the PSK.
//!   Against aokd the IKE_AUTH carries the TCP-AO child and a handshake is
//!   complete when the MKT is negotiated; against a standard responder
//!   (strongSwan) it completes childless (RFC 6023) at IKE_AUTH. Either way
//!   the measured latency runs from the first IKE_SA_INIT to that point.
//! - `storm`: every peer once, from an empty table (a restart of a route
//!   server). `churn`: for `--seconds`, each completed peer deletes its
//!   IKE SA (INFORMATIONAL Delete, answered) and starts again.
//! - `--source-port 500`: strongSwan drops IKE datagrams when neither port
//!   is 500 (docs/interop.md); the default is a random port.
//!
//! Prints one JSON line per second (completed, rate, in flight,
//! retransmissions, failures) and a summary: handshakes, seconds, rate,
//! latency median and p99.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aokd_proto::crypto::Secret;
use aokd_proto::ike::{Endpoint, EndpointConfig, Event, Identity, IkeSuite, PeerConfig, PortRange};
use aokd_proto::mkt::MacAlgorithm;

struct Args {
    target: SocketAddrV4,
    peers: u32,
    concurrency: usize,
    psk: Vec<u8>,
    first: Ipv4Addr,
    source_port: u16,
    churn: bool,
    seconds: f64,
    timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        target: "127.0.0.1:500".parse().map_err(|_| "default target")?,
        peers: 1000,
        concurrency: 8,
        psk: Vec::new(),
        first: Ipv4Addr::new(127, 16, 0, 1),
        source_port: 0,
        churn: false,
        seconds: 30.0,
        timeout: Duration::from_secs(30),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{k} {v}: {e}");
        match k.as_str() {
            "--target" => a.target = v.parse().map_err(|e| bad(&e))?,
            "--peers" => a.peers = v.parse().map_err(|e| bad(&e))?,
            "--concurrency" => a.concurrency = v.parse().map_err(|e| bad(&e))?,
            "--psk-file" => {
                let text = std::fs::read(&v).map_err(|e| bad(&e))?;
                let text = String::from_utf8_lossy(&text).trim_end().to_string();
                a.psk = if text.len() >= 32
                    && text.len() % 2 == 0
                    && text.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    (0..text.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap_or(0))
                        .collect()
                } else {
                    text.into_bytes()
                };
            }
            "--psk" => a.psk = v.into_bytes(),
            "--first-source" => a.first = v.parse().map_err(|e| bad(&e))?,
            "--source-port" => a.source_port = v.parse().map_err(|e| bad(&e))?,
            "--mode" => {
                a.churn = match v.as_str() {
                    "storm" => false,
                    "churn" => true,
                    other => return Err(format!("--mode {other}: storm or churn")),
                }
            }
            "--seconds" => a.seconds = v.parse().map_err(|e| bad(&e))?,
            "--timeout" => a.timeout = Duration::from_secs(v.parse().map_err(|e| bad(&e))?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.psk.is_empty() {
        return Err("--psk-file FILE or --psk TEXT is required".into());
    }
    if a.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    Ok(a)
}

/// One initiator under way.
struct Active {
    k: u32,
    socket: UdpSocket,
    ep: Endpoint,
    started: Instant,
    sent: u32,
    /// Established, waiting for the answer to its Delete (churn).
    deleting: bool,
}

fn source(args: &Args, k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(args.first).wrapping_add(k))
}

fn start(args: &Args, k: u32, now: Instant) -> Result<Active, String> {
    let src = source(args, k);
    let socket = bind_reuse(SocketAddrV4::new(src, args.source_port))
        .map_err(|e| format!("bind {src}:{}: {e}", args.source_port))?;
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    let local = IpAddr::V4(src);
    let remote = SocketAddr::V4(args.target);
    let peer = PeerConfig {
        name: "target".into(),
        remote,
        local,
        local_id: Identity::from_ip(local),
        remote_id: Identity::from_ip(remote.ip()),
        psk: Secret::new(args.psk.clone()),
        signature: None,
        ike_suites: vec![IkeSuite::DEFAULT],
        mac_algorithms: MacAlgorithm::ALL.to_vec(),
        include_options: true,
        tcp_ports: vec![PortRange::single(179)],
        initiate: false,
        lifetimes: Default::default(),
    };
    // Each handshake is real: the system's randomness.
    let mut ep = Endpoint::new(
        EndpointConfig::new(vec![peer]),
        now,
        Box::new(rand_core::OsRng),
    )
    .map_err(|e| e.to_string())?;
    ep.initiate("target", now).map_err(|e| e.to_string())?;
    Ok(Active {
        k,
        socket,
        ep,
        started: now,
        sent: 0,
        deleting: false,
    })
}

/// A UDP socket bound to `addr` with SO_REUSEADDR, so that it can share
/// port 500 with a responder bound to the wildcard address (charon binds
/// 0.0.0.0:500 with SO_REUSEADDR; the more specific binding gets the
/// datagrams addressed to it).
fn bind_reuse(addr: SocketAddrV4) -> std::io::Result<UdpSocket> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) with constant arguments; the result is checked and
    // owned by the UdpSocket below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we own.
    let socket = unsafe { UdpSocket::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let (sin, sin_len) = aokd_sys::to_sockaddr(std::net::SocketAddr::V4(addr));
    // SAFETY: setsockopt with an int and bind with a sockaddr of `sin_len`
    // octets, both valid for the calls.
    let ok = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            std::ptr::addr_of!(one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
            && libc::bind(fd, std::ptr::addr_of!(sin).cast(), sin_len) == 0
    };
    if ok {
        Ok(socket)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sends what `a`'s endpoint has queued; the number sent.
fn flush(a: &mut Active) -> u32 {
    let mut n = 0;
    while let Some(t) = a.ep.poll_transmit() {
        if a.socket.send_to(&t.contents, t.destination).is_ok() {
            n += 1;
        }
    }
    a.sent += n;
    n
}

#[derive(PartialEq)]
enum Progress {
    Working,
    Done,
    Failed,
}

fn progress(a: &mut Active) -> Progress {
    let mut p = Progress::Working;
    while let Some(ev) = a.ep.poll_event() {
        match ev {
            Event::MktCreated { .. } => p = Progress::Done,
            Event::IkeSaEstablished { tcp_ao_capable, .. } if !tcp_ao_capable => p = Progress::Done,
            Event::NegotiationFailed { .. } => p = Progress::Failed,
            Event::IkeSaDeleted { .. } if a.deleting => p = Progress::Done,
            _ => {}
        }
    }
    p
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn run(args: &Args) -> Result<(), String> {
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(args.seconds);
    let mut next_k: u32 = 0;
    let mut active: Vec<Active> = Vec::with_capacity(args.concurrency);
    let mut latencies: Vec<Duration> = Vec::new();
    let mut waiting: VecDeque<u32> = VecDeque::new();
    let (mut failures, mut retransmits, mut completed) = (0u64, 0u64, 0u64);
    let (mut second, mut at_second) = (1u64, 0u64);
    let mut buf = vec![0u8; 65_536];
    loop {
        let now = Instant::now();
        let more = if args.churn {
            now < end
        } else {
            next_k < args.peers || !waiting.is_empty()
        };
        while more && active.len() < args.concurrency {
            let k = if args.churn && next_k >= args.peers {
                match waiting.pop_front() {
                    Some(k) => k,
                    None => break,
                }
            } else if next_k < args.peers {
                next_k += 1;
                next_k - 1
            } else {
                break;
            };
            let mut a = start(args, k, now)?;
            flush(&mut a);
            active.push(a);
        }
        if active.is_empty() && !more {
            break;
        }
        if args.churn && now >= end && active.iter().all(|a| !a.deleting) {
            break;
        }
        // Wait for a datagram or the earliest timer.
        let deadline = active.iter().filter_map(|a| a.ep.poll_timeout()).min();
        let wait_ms = deadline.map_or(100, |d| {
            d.saturating_duration_since(now).as_millis().min(100) as i32
        });
        let mut fds: Vec<libc::pollfd> = active
            .iter()
            .map(|a| libc::pollfd {
                fd: a.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for the call's duration.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        let now = Instant::now();
        let mut i = 0;
        while i < active.len() {
            let readable = fds.get(i).is_some_and(|f| f.revents & libc::POLLIN != 0);
            let a = &mut active[i];
            if readable {
                while let Ok((n, from)) = a.socket.recv_from(&mut buf) {
                    a.ep.handle_datagram(now, from, &buf[..n]);
                }
            }
            if a.ep.poll_timeout().is_some_and(|t| t <= now) {
                a.ep.handle_timeout(now);
                let before = a.sent;
                if flush(a) > 0 && before > 0 {
                    retransmits += u64::from(a.sent - before);
                }
            }
            flush(a);
            let p = progress(a);
            let timed_out = now - a.started > args.timeout;
            if p == Progress::Done && !a.deleting {
                latencies.push(now - a.started);
                completed += 1;
                if args.churn {
                    a.deleting = true;
                    let _ = a.ep.terminate("target", now);
                    flush(a);
                    i += 1;
                    continue;
                }
                let a = active.swap_remove(i);
                fds.swap_remove(i);
                drop(a);
                continue;
            }
            if (p == Progress::Done && a.deleting) || p == Progress::Failed || timed_out {
                if p == Progress::Failed || (timed_out && !a.deleting) {
                    failures += 1;
                }
                let a = active.swap_remove(i);
                fds.swap_remove(i);
                if args.churn {
                    waiting.push_back(a.k);
                }
                continue;
            }
            i += 1;
        }
        if t0.elapsed() >= Duration::from_secs(second) {
            println!(
                "{{\"t\":{second},\"completed\":{},\"total\":{completed},\"in_flight\":{},\"retransmits\":{retransmits},\"failures\":{failures}}}",
                completed - at_second,
                active.len()
            );
            at_second = completed;
            second += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    latencies.sort();
    println!(
        "{{\"event\":\"summary\",\"mode\":\"{}\",\"peers\":{},\"concurrency\":{},\"completed\":{completed},\"failures\":{failures},\"retransmits\":{retransmits},\"seconds\":{secs:.3},\"rate\":{:.0},\"latency_ms_median\":{:.2},\"latency_ms_p99\":{:.2}}}",
        if args.churn { "churn" } else { "storm" },
        args.peers,
        args.concurrency,
        completed as f64 / secs,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    Ok(())
}

fn main() -> ExitCode {
    match parse_args().and_then(|a| run(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ike-load: {e}");
            ExitCode::from(2)
        }
    }
}
