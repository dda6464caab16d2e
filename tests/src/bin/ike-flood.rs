//! `ike-flood`: sends forged IKE_SA_INIT requests at a fixed rate, the way
//! an attacker on the path (or anywhere, with spoofed sources) would, to
//! measure what a flood costs an IKE responder (issue: hardening).
//!
//! ```text
//! ike-flood --target 127.0.0.2:500 --rate 100000 --seconds 20 \
//!           --from random --from 127.0.0.1
//! ```
//!
//! - `--from random`: a random source address in 127.0.0.0/8 (outside
//!   127.0.0.0/16, where the tests' daemons live) and a random port;
//!   `--from IP`: that source address (a configured peer's) with a random
//!   port. Several `--from` alternate packet by packet.
//! - Each packet is a complete IKE_SA_INIT (SA, KE X25519, Nonce,
//!   notifies) made by a real proto endpoint, with a fresh random SPIi, so
//!   a responder without cookies would start a Diffie-Hellman for each.
//! - Packets go out through a raw socket (IPPROTO_RAW: the source address
//!   is ours to choose), 64 per `sendmmsg`; needs root.
//!
//! Prints one JSON line per second (`{"t":1,"sent":100000}`) and a
//! summary line (`"summary"`: packets sent, seconds, rate achieved).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aokd_tests::ike::init_request;

const BATCH: usize = 64;

#[derive(Clone, Copy)]
enum From {
    Random,
    Ip(Ipv4Addr),
}

struct Args {
    target: SocketAddrV4,
    rate: u64,
    seconds: f64,
    from: Vec<From>,
}

fn parse_args() -> Result<Args, String> {
    let mut target = None;
    let mut rate = 100_000;
    let mut seconds = 10.0;
    let mut from = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--target" => {
                let v = val()?;
                target = Some(v.parse().map_err(|e| format!("--target {v}: {e}"))?);
            }
            "--rate" => {
                let v = val()?;
                rate = v.parse().map_err(|e| format!("--rate {v}: {e}"))?;
            }
            "--seconds" => {
                let v = val()?;
                seconds = v.parse().map_err(|e| format!("--seconds {v}: {e}"))?;
            }
            "--from" => {
                let v = val()?;
                from.push(if v == "random" {
                    From::Random
                } else {
                    From::Ip(v.parse().map_err(|e| format!("--from {v}: {e}"))?)
                });
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if from.is_empty() {
        from.push(From::Random);
    }
    Ok(Args {
        target: target.ok_or("--target IP:PORT is required")?,
        rate,
        seconds,
        from,
    })
}

/// A complete IKE_SA_INIT request toward `target`, made by a real endpoint.
fn template(target: SocketAddrV4) -> Result<Vec<u8>, String> {
    let local = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    init_request(
        "target",
        local,
        SocketAddr::V4(target),
        b"ike-flood has no key",
    )
}

/// xorshift64*: load generation only (SPIs and ports), never keys.
struct Xs(u64);
impl Xs {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Fills `pkt` (IPv4 + UDP + IKE) for one forged request.
fn forge(pkt: &mut [u8], ike: &[u8], src: Ipv4Addr, sport: u16, target: SocketAddrV4, spi: u64) {
    let total = pkt.len() as u16;
    pkt[0] = 0x45;
    pkt[1] = 0;
    pkt[2..4].copy_from_slice(&total.to_be_bytes());
    pkt[4..6].copy_from_slice(&0u16.to_be_bytes()); // id: the kernel fills it
    pkt[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    pkt[8] = 64;
    pkt[9] = libc::IPPROTO_UDP as u8;
    pkt[10..12].copy_from_slice(&[0, 0]); // checksum: the kernel fills it
    pkt[12..16].copy_from_slice(&src.octets());
    pkt[16..20].copy_from_slice(&target.ip().octets());
    let udp_len = (pkt.len() - 20) as u16;
    pkt[20..22].copy_from_slice(&sport.to_be_bytes());
    pkt[22..24].copy_from_slice(&target.port().to_be_bytes());
    pkt[24..26].copy_from_slice(&udp_len.to_be_bytes());
    pkt[26..28].copy_from_slice(&[0, 0]); // no UDP checksum (IPv4)
    pkt[28..].copy_from_slice(ike);
    pkt[28..36].copy_from_slice(&spi.max(1).to_be_bytes());
}

fn run(args: &Args) -> Result<(), String> {
    let ike = template(args.target)?;
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(format!(
            "cannot open a raw socket (needs root): {}",
            std::io::Error::last_os_error()
        ));
    }
    // A raw socket's destination: the address, port 0.
    let (dst, dst_len) =
        aokd_sys::to_sockaddr(std::net::SocketAddr::new((*args.target.ip()).into(), 0));
    let len = 28 + ike.len();
    let mut bufs = vec![vec![0u8; len]; BATCH];
    let mut rng = Xs(0x9e37_79b9_7f4a_7c15
        ^ u64::from(std::process::id())
        ^ Instant::now().elapsed().subsec_nanos() as u64);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);
    let mut sent: u64 = 0;
    let mut errors: u64 = 0;
    let mut k = 0usize;
    let mut second = 1u64;
    let mut at_second = 0u64;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let elapsed = now - start;
        if elapsed >= Duration::from_secs(second) {
            println!("{{\"t\":{second},\"sent\":{}}}", sent - at_second);
            at_second = sent;
            second += 1;
        }
        let due = (elapsed.as_secs_f64() * args.rate as f64) as u64;
        let n = due.saturating_sub(sent).min(BATCH as u64) as usize;
        if n == 0 {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        for buf in bufs.iter_mut().take(n) {
            let (src, sport) = match args.from[k % args.from.len()] {
                From::Random => {
                    let r = rng.next();
                    // 127.1.0.0 - 127.254.255.255: never a test daemon's.
                    let ip =
                        Ipv4Addr::new(127, 1 + (r % 254) as u8, (r >> 8) as u8, (r >> 16) as u8);
                    (ip, 1024 + ((r >> 24) % 64_000) as u16)
                }
                From::Ip(ip) => (ip, 1024 + (rng.next() % 64_000) as u16),
            };
            k += 1;
            forge(buf, &ike, src, sport, args.target, rng.next());
        }
        let mut iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .take(n)
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: an all-zero msghdr is valid; the pointers set
                // below outlive the sendmmsg call.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = std::ptr::addr_of!(dst) as *mut libc::c_void;
                m.msg_hdr.msg_namelen = dst_len;
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: `msgs` holds `n` initialized headers whose buffers live
        // until the call returns.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as u32, 0) };
        if r < 0 {
            errors += 1;
            // ENOBUFS and the like: the kernel is saturated; try again.
        } else {
            sent += r as u64;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"event\":\"summary\",\"sent\":{sent},\"seconds\":{secs:.3},\"rate\":{:.0},\"send_errors\":{errors},\"packet_octets\":{len}}}",
        sent as f64 / secs
    );
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    Ok(())
}

fn main() -> ExitCode {
    match parse_args().and_then(|a| run(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ike-flood: {e}");
            ExitCode::from(2)
        }
    }
}
