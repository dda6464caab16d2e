//! `ike-load`: a load generator for IKEv2 responders (issue: scale). Many
//! initiators, each a real proto [`Endpoint`] with its own source address
//! in 127.0.0.0/8 and its own UDP socket, driven from one thread with
//! poll(2), at a fixed concurrency.
//!
//! ```text
//! ike-load --target 127.0.0.1:500 --peers 10000 --concurrency 64 \
//!          --psk-file psk --first-source 127.16.0.1 [--source-port 500] \
//!          [--mode storm|churn] [--seconds 30]
//! ike-load ... --auth pubkey --ca-cert ca.pem --ca-key ca.key \
//!          [--key-type ed25519|p256|p384] [--remote-id ID]
//! ike-load gen-certs DIR --responder-ip IP [--key-type ed25519|p256|p384]
//! ```
//!
//! - Each initiator `k` (0 <= k < peers) sends from `first-source + k` (one
//!   address each, like distinct routers), with identity ID_IPV4_ADDR of
//!   that address, toward the target's address as identity (or
//!   `--remote-id`), with the PSK. Against aokd the IKE_AUTH carries the
//!   TCP-AO child and a handshake is complete when the MKT is negotiated;
//!   against a standard responder (strongSwan) it completes childless (RFC
//!   6023) at IKE_AUTH. Either way the measured latency runs from the first
//!   IKE_SA_INIT to that point.
//! - `--auth pubkey`: signature authentication (RFC 7427) instead of the
//!   PSK. Before the clock starts, each initiator gets its own certificate
//!   (SAN IP and common name its source address, a fresh key of
//!   `--key-type`, default ed25519) issued by the CA of `--ca-cert` and
//!   `--ca-key`, and its signing key and trust anchor are made ready, so
//!   that neither issuing nor parsing is in the measured time; the
//!   responder's certificate must chain to that CA and name the responder's
//!   identity. The CA must be one `gen-certs` made (tests/src/pki.rs says
//!   why); it is checked before anything is sent.
//! - `gen-certs DIR --responder-ip IP`: writes a new CA (`ca.pem`,
//!   `ca.key`) and a certificate for the responder (`responder.pem`,
//!   `responder.key`, SAN IP = IP) into DIR, keys mode 0600, and prints
//!   their paths as one JSON line.
//! - `storm`: every peer once, from an empty table (a restart of a route
//!   server). `churn`: for `--seconds`, each completed peer deletes its
//!   IKE SA (INFORMATIONAL Delete, answered) and starts again.
//! - `--source-port 500`: strongSwan drops IKE datagrams when neither port
//!   is 500 (docs/interop.md); the default is a random port.
//!
//! Prints one JSON line per second (completed, rate, in flight,
//! retransmissions, failures) and a summary: handshakes, seconds, rate,
//! latency median and p99 (with `--auth pubkey`, first a line saying how
//! many certificates were issued and how long that took).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use aokd_proto::crypto::sig::PrivateKey;
use aokd_proto::crypto::Secret;
use aokd_proto::ike::cert::TrustAnchors;
use aokd_proto::ike::{
    Endpoint, EndpointConfig, Event, Identity, PeerConfig, PeerKey, SignatureAuth,
};
use aokd_tests::pki::{self, Ca, KeyType, Leaf};

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
    /// `--auth pubkey`: the CA's certificate and key files.
    pubkey: Option<(PathBuf, PathBuf)>,
    key_type: KeyType,
    /// The responder's identity, when not its address.
    remote_id: Option<Identity>,
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
        pubkey: None,
        key_type: KeyType::Ed25519,
        remote_id: None,
    };
    let (mut pubkey, mut ca_cert, mut ca_key) = (false, None, None);
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
            "--auth" => {
                pubkey = match v.as_str() {
                    "psk" => false,
                    "pubkey" => true,
                    other => return Err(format!("--auth {other}: psk or pubkey")),
                }
            }
            "--ca-cert" => ca_cert = Some(PathBuf::from(v)),
            "--ca-key" => ca_key = Some(PathBuf::from(v)),
            "--key-type" => {
                a.key_type = KeyType::parse(&v).map_err(|e| format!("--key-type: {e}"))?
            }
            "--remote-id" => a.remote_id = Some(Identity::parse(&v)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if pubkey {
        if !a.psk.is_empty() {
            return Err("--auth pubkey takes no --psk or --psk-file".into());
        }
        match (ca_cert, ca_key) {
            (Some(c), Some(k)) => a.pubkey = Some((c, k)),
            _ => return Err("--auth pubkey needs --ca-cert FILE and --ca-key FILE".into()),
        }
    } else if ca_cert.is_some() || ca_key.is_some() {
        return Err("--ca-cert and --ca-key are for --auth pubkey".into());
    } else if a.psk.is_empty() {
        return Err("--psk-file FILE or --psk TEXT is required (or --auth pubkey)".into());
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

/// Signature authentication for every initiator: its certificate and key
/// (issued before the clock starts) and the CA as trust anchor, made ready
/// ahead ([`Creds::take`]).
struct Creds {
    ca: Vec<u8>,
    leaves: Vec<Leaf>,
    ready: Vec<Option<SignatureAuth>>,
}

impl Creds {
    /// Issues a certificate for each of the `args.peers` initiators.
    fn issue(args: &Args, files: &(PathBuf, PathBuf)) -> Result<Creds, String> {
        let ca = Ca::from_pem_files(&files.0, &files.1)?;
        let ca_der =
            pki::read_pem_certificate(&files.0).map_err(|e| format!("CA certificate {e}"))?;
        let mut c = Creds {
            ca: ca_der,
            leaves: Vec::with_capacity(args.peers as usize),
            ready: Vec::with_capacity(args.peers as usize),
        };
        for k in 0..args.peers {
            let leaf = ca.leaf(IpAddr::V4(source(args, k)), args.key_type, &[])?;
            c.leaves.push(leaf);
            let auth = c.build(k)?;
            c.ready.push(Some(auth));
        }
        Ok(c)
    }

    fn build(&self, k: u32) -> Result<SignatureAuth, String> {
        let leaf = self
            .leaves
            .get(k as usize)
            .ok_or_else(|| format!("no certificate for initiator {k}"))?;
        Ok(SignatureAuth {
            private_key: PrivateKey::from_pkcs8_der(&leaf.private_key)
                .map_err(|e| format!("the key of initiator {k}: {e}"))?,
            certificates: vec![leaf.certificate.clone()],
            peer: PeerKey::Certificate(
                TrustAnchors::from_der(std::slice::from_ref(&self.ca))
                    .map_err(|e| format!("the CA: {e}"))?,
            ),
        })
    }

    /// Initiator `k`'s authentication: the one made ready, or (when `k`
    /// starts again in churn) a new one from its certificate and key.
    fn take(&mut self, k: u32) -> Result<SignatureAuth, String> {
        match self.ready.get_mut(k as usize).and_then(Option::take) {
            Some(a) => Ok(a),
            None => self.build(k),
        }
    }
}

fn start(
    args: &Args,
    k: u32,
    now: Instant,
    signature: Option<SignatureAuth>,
) -> Result<Active, String> {
    let src = source(args, k);
    let socket = bind_reuse(SocketAddrV4::new(src, args.source_port))
        .map_err(|e| format!("bind {src}:{}: {e}", args.source_port))?;
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    let local = IpAddr::V4(src);
    let remote = SocketAddr::V4(args.target);
    let psk = if signature.is_some() {
        // Not used: the peer authenticates by signature.
        b"unused with signature authentication".to_vec()
    } else {
        args.psk.clone()
    };
    let mut peer = PeerConfig {
        remote_id: args
            .remote_id
            .clone()
            .unwrap_or_else(|| Identity::from_ip(remote.ip())),
        initiate: false,
        ..PeerConfig::with_psk("target", local, remote, Secret::new(psk))
    };
    peer.signature = signature.map(std::sync::Arc::new);
    let mut config = EndpointConfig::new(vec![peer]);
    // Certificates are judged at the system's time.
    config.wall_clock = SystemTime::now();
    // Each handshake is real: the system's randomness.
    let mut ep =
        Endpoint::new(config, now, Box::new(rand_core::OsRng)).map_err(|e| e.to_string())?;
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
    /// With the engine's reason.
    Failed(String),
}

fn progress(a: &mut Active) -> Progress {
    let mut p = Progress::Working;
    while let Some(ev) = a.ep.poll_event() {
        match ev {
            Event::MktCreated { .. } => p = Progress::Done,
            Event::IkeSaEstablished { tcp_ao_capable, .. } if !tcp_ao_capable => p = Progress::Done,
            // The error says itself when the responder reported it.
            Event::NegotiationFailed { error, .. } => p = Progress::Failed(error.to_string()),
            Event::IkeSaDeleted { .. } if a.deleting => p = Progress::Done,
            _ => {}
        }
    }
    p
}

/// The `q` quantile in milliseconds (two decimals); `None` without samples.
fn percentile(sorted: &[Duration], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    Some((sorted[i].as_secs_f64() * 1e5).round() / 100.0)
}

fn run(args: &Args) -> Result<(), String> {
    let mut creds = match &args.pubkey {
        Some(files) => {
            let t = Instant::now();
            let c = Creds::issue(args, files)?;
            println!(
                "{{\"event\":\"certificates\",\"issued\":{},\"key_type\":\"{}\",\"seconds\":{:.3}}}",
                c.leaves.len(),
                args.key_type.name(),
                t.elapsed().as_secs_f64()
            );
            Some(c)
        }
        None => None,
    };
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(args.seconds);
    let mut next_k: u32 = 0;
    let mut active: Vec<Active> = Vec::with_capacity(args.concurrency);
    let mut latencies: Vec<Duration> = Vec::new();
    let mut waiting: VecDeque<u32> = VecDeque::new();
    let (mut failures, mut retransmits, mut completed) = (0u64, 0u64, 0u64);
    let mut first_failure: Option<String> = None;
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
            let signature = creds.as_mut().map(|c| c.take(k)).transpose()?;
            let mut a = start(args, k, now, signature)?;
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
            let failed = matches!(p, Progress::Failed(_));
            if (p == Progress::Done && a.deleting) || failed || timed_out {
                if failed || (timed_out && !a.deleting) {
                    failures += 1;
                    if first_failure.is_none() {
                        let why = match p {
                            Progress::Failed(why) => why,
                            _ => format!("no handshake within {:?}", args.timeout),
                        };
                        first_failure = Some(format!("initiator {}: {why}", source(args, a.k)));
                    }
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
    let summary = serde_json::json!({
        "event": "summary",
        "mode": if args.churn { "churn" } else { "storm" },
        "auth": if args.pubkey.is_some() { format!("pubkey {}", args.key_type.name()) } else { "psk".into() },
        "peers": args.peers,
        "concurrency": args.concurrency,
        "completed": completed,
        "failures": failures,
        "first_failure": first_failure,
        "retransmits": retransmits,
        "seconds": (secs * 1e3).round() / 1e3,
        "rate": (completed as f64 / secs).round(),
        "latency_ms_median": percentile(&latencies, 0.5),
        "latency_ms_p99": percentile(&latencies, 0.99),
    });
    println!("{summary}");
    Ok(())
}

/// `gen-certs DIR --responder-ip IP [--key-type ed25519|p256|p384]`.
fn gen_certs(mut it: impl Iterator<Item = String>) -> Result<(), String> {
    let dir = it
        .next()
        .ok_or("gen-certs DIR --responder-ip IP [--key-type ed25519|p256|p384]")?;
    let (mut ip, mut key_type) = (None, KeyType::Ed25519);
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--responder-ip" => {
                ip = Some(
                    v.parse::<IpAddr>()
                        .map_err(|e| format!("--responder-ip {v}: {e}"))?,
                )
            }
            "--key-type" => {
                key_type = KeyType::parse(&v).map_err(|e| format!("--key-type: {e}"))?
            }
            other => return Err(format!("gen-certs: unknown argument {other:?}")),
        }
    }
    let ip = ip.ok_or("gen-certs needs --responder-ip IP")?;
    let f = pki::gen_certs(std::path::Path::new(&dir), ip, key_type)?;
    let json = serde_json::json!({
        "ca_cert": f.ca_cert,
        "ca_key": f.ca_key,
        "responder_cert": f.responder_cert,
        "responder_key": f.responder_key,
        "key_type": key_type.name(),
    });
    println!("{json}");
    Ok(())
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().is_some_and(|a| a == "gen-certs") {
        argv.next();
        return match gen_certs(argv) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ike-load gen-certs: {e}");
                ExitCode::from(2)
            }
        };
    }
    match parse_args().and_then(|a| run(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ike-load: {e}");
            ExitCode::from(2)
        }
    }
}
