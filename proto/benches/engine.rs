//! IKE engine figures (docs/performance.md, issue 9).
//!
//! 1. Handshakes: one responder [`Endpoint`] with N configured peers
//!    (distinct remote addresses 10.x.y.z:500, used only as data) completes
//!    IKE_SA_INIT + IKE_AUTH with a TCP-AO child against N initiators in this
//!    process, one after the other (each initiator is a fresh endpoint with
//!    one peer). Only the responder's work is timed, as the daemon drives it
//!    for every datagram: `handle_datagram`, draining `poll_transmit` and
//!    `poll_event`, and `poll_timeout`. Printed as handshakes per second
//!    over all of them and over the last tenth (when the responder already
//!    holds 90% of the SAs), once with `poll_timeout` after each datagram
//!    (as the daemon does; stopped once the responder's time passes
//!    `AOKD_BENCH_CAP_SECS`, default 30, since today that cost grows with
//!    peers times SAs) and once without it.
//! 2. Timers: with 100, 1,000 and 10,000 established SAs on the responder
//!    (set up without `poll_timeout`), the cost of one `poll_timeout` +
//!    `handle_timeout(now)`:
//!    * idle: nothing is due (the clock did not move), the call a driver
//!      makes on a spurious wake-up, pure overhead;
//!    * due: the clock is moved to the deadline `poll_timeout` returned, so
//!      that every call fires a timer (each SA's first liveness check, the
//!      initiators being gone), transmits drained; at most one call per SA.
//!
//!    Medians in microseconds. An engine with a timer queue keeps both flat
//!    in the number of SAs.
//! 3. `peers()` once with N SAs, the copy the daemon re-reads after events.
//!
//! Run: `cargo bench -p aokd-proto --bench engine`. Sizes:
//! `AOKD_BENCH_HANDSHAKE_PEERS` (default `1000,10000`) and
//! `AOKD_BENCH_TIMER_SAS` (default `100,1000,10000`), comma-separated.
//! Without `--bench` (as `cargo test --benches` runs it) it is a smoke run
//! with tiny sizes that checks the handshakes complete.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use aokd_proto::crypto::Secret;
use aokd_proto::ike::{Endpoint, EndpointConfig, Event, PeerConfig};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const RESPONDER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 500);

/// The address of initiator `k`: 10.x.y.z, port 500.
fn initiator_addr(k: usize) -> SocketAddr {
    let k = k as u32 + 1;
    let ip = Ipv4Addr::new(10, (k >> 16) as u8, (k >> 8) as u8, k as u8);
    SocketAddr::new(IpAddr::V4(ip), 500)
}

fn psk(k: usize) -> Vec<u8> {
    format!("engine bench key {k}").into_bytes()
}

fn peer(name: String, local: SocketAddr, remote: SocketAddr, psk: Vec<u8>) -> PeerConfig {
    PeerConfig::with_psk(&name, local.ip(), remote, Secret::new(psk))
}

/// The responder's configuration: `n` peers that do not initiate.
fn responder_config(n: usize) -> EndpointConfig {
    EndpointConfig::new(
        (0..n)
            .map(|k| {
                let mut p = peer(format!("p{k}"), RESPONDER, initiator_addr(k), psk(k));
                p.initiate = false;
                p
            })
            .collect(),
    )
}

struct Established {
    responder: Endpoint,
    /// The responder's virtual clock.
    now: Instant,
    /// Wall time spent in the responder's calls, per handshake.
    spent: Vec<Duration>,
}

/// Completes `n` handshakes against one responder, timing its work only:
/// `handle_datagram`, the drains, and (with `poll`) `poll_timeout` after
/// each datagram. With `cap`, stops once the responder's time exceeds it.
fn establish(n: usize, poll: bool, cap: Option<Duration>) -> Established {
    let start = Instant::now();
    let mut now = start;
    let mut responder = Endpoint::new(
        responder_config(n),
        now,
        Box::new(ChaCha20Rng::seed_from_u64(1)),
    )
    .expect("responder config");
    let mut spent = Vec::with_capacity(n);
    let (mut established, mut mkts) = (0, 0);
    for k in 0..n {
        let addr = initiator_addr(k);
        let cfg = EndpointConfig::new(vec![peer("r".into(), addr, RESPONDER, psk(k))]);
        let mut ini = Endpoint::new(
            cfg,
            now,
            Box::new(ChaCha20Rng::seed_from_u64(1000 + k as u64)),
        )
        .expect("initiator config");
        ini.handle_timeout(now);
        let mut responder_time = Duration::ZERO;
        let mut ini_established = false;
        let mut rounds = 0;
        while let Some(t) = ini.poll_transmit() {
            rounds += 1;
            assert!(rounds <= 8, "handshake {k} does not end");
            assert_eq!(t.destination, RESPONDER);
            let mut replies = Vec::new();
            let t0 = Instant::now();
            responder.handle_datagram(now, addr, &t.contents);
            while let Some(r) = responder.poll_transmit() {
                replies.push(r);
            }
            while let Some(e) = responder.poll_event() {
                match e {
                    Event::IkeSaEstablished { .. } => established += 1,
                    Event::MktCreated { .. } => mkts += 1,
                    _ => {}
                }
            }
            if poll {
                black_box(responder.poll_timeout());
            }
            responder_time += t0.elapsed();
            for r in replies {
                assert_eq!(r.destination, addr);
                ini.handle_datagram(now, RESPONDER, &r.contents);
            }
            while let Some(e) = ini.poll_event() {
                ini_established |= matches!(e, Event::IkeSaEstablished { .. });
            }
        }
        assert!(ini_established, "handshake {k} did not complete");
        spent.push(responder_time);
        if cap.is_some_and(|c| spent.iter().sum::<Duration>() > c) {
            break;
        }
        // 100 µs of virtual time between handshakes: 10,000 take one
        // second, far from any timer.
        now += Duration::from_micros(100);
    }
    assert_eq!(
        (established, mkts),
        (spent.len(), spent.len()),
        "responder events"
    );
    Established {
        responder,
        now,
        spent,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Repeats `f` until `budget` of wall time or `max` calls (at least
/// `min`), returning the per-call times.
fn sample(budget: Duration, min: usize, max: usize, mut f: impl FnMut()) -> Vec<Duration> {
    let begin = Instant::now();
    let mut out = Vec::new();
    while out.len() < max && (out.len() < min || begin.elapsed() < budget) {
        let t0 = Instant::now();
        f();
        out.push(t0.elapsed());
    }
    out
}

struct TimerFigures {
    idle: Duration,
    idle_calls: usize,
    due: Duration,
    due_calls: usize,
    peers: Duration,
}

fn timers(mut e: Established, budget: Duration) -> TimerFigures {
    let n = e.spent.len();
    let r = &mut e.responder;
    let now = e.now;
    let first = r.poll_timeout().expect("a deadline");
    assert!(first > now, "a timer is due right after the handshakes");
    let idle = sample(budget, 5, 100_000, || {
        black_box(r.poll_timeout());
        r.handle_timeout(now);
        assert!(r.poll_transmit().is_none());
    });
    let peers = median(sample(budget / 4, 3, 50, || {
        black_box(r.peers());
    }));
    // One call per SA at most: each fires that SA's first liveness check
    // (later ones would find SAs given up and gone).
    let mut now = now;
    let due = sample(budget, 20.min(n), n, || {
        if let Some(t) = r.poll_timeout() {
            now = now.max(t);
        }
        r.handle_timeout(now);
        while let Some(t) = r.poll_transmit() {
            black_box(t);
        }
        while let Some(ev) = r.poll_event() {
            black_box(ev);
        }
    });
    TimerFigures {
        idle_calls: idle.len(),
        idle: median(idle),
        due_calls: due.len(),
        due: median(due),
        peers,
    }
}

fn sizes(var: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(var) {
        Ok(s) => s
            .split(',')
            .map(|x| x.trim().replace('_', "").parse().expect(var))
            .collect(),
        Err(_) => default.to_vec(),
    }
}

fn rate(spent: &[Duration]) -> f64 {
    spent.len() as f64 / spent.iter().sum::<Duration>().as_secs_f64()
}

fn print_handshakes(what: &str, n: usize, e: &Established, setup: Duration) {
    let done = e.spent.len();
    let tail = &e.spent[done - done.div_ceil(10)..];
    let completed = if done < n {
        format!(" (stopped at the cap after {done} handshakes)")
    } else {
        String::new()
    };
    println!(
        "handshakes, {n:>6} peers, {what}: {:>8.0} /s overall, {:>8.0} /s for the last tenth \
         (median {:.1} µs){completed}; wall time with the initiators {:.1} s",
        rate(&e.spent),
        rate(tail),
        us(median(tail.to_vec())),
        setup.as_secs_f64(),
    );
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (hs, ts, budget, cap) = if bench {
        let cap = std::env::var("AOKD_BENCH_CAP_SECS")
            .map(|s| s.parse().expect("AOKD_BENCH_CAP_SECS"))
            .unwrap_or(30);
        (
            sizes("AOKD_BENCH_HANDSHAKE_PEERS", &[1000, 10_000]),
            sizes("AOKD_BENCH_TIMER_SAS", &[100, 1000, 10_000]),
            Duration::from_secs(2),
            Duration::from_secs(cap),
        )
    } else {
        (
            vec![20],
            vec![5, 20],
            Duration::from_millis(20),
            Duration::from_secs(5),
        )
    };
    let mut all: Vec<usize> = hs.iter().chain(&ts).copied().collect();
    all.sort();
    all.dedup();
    let mut timer_rows = BTreeMap::new();
    println!("IKE engine (responder work only)");
    for n in all {
        if hs.contains(&n) {
            let wall = Instant::now();
            let e = establish(n, true, Some(cap));
            print_handshakes("with poll_timeout", n, &e, wall.elapsed());
        }
        let wall = Instant::now();
        let e = establish(n, false, None);
        if hs.contains(&n) {
            print_handshakes("without poll_timeout", n, &e, wall.elapsed());
        }
        if ts.contains(&n) {
            timer_rows.insert(n, timers(e, budget));
        }
    }
    for (n, t) in timer_rows {
        println!(
            "timers, {n:>6} SAs: poll_timeout + handle_timeout idle {:>10.2} µs (median of {}), \
             due {:>10.2} µs (median of {}); peers() {:>10.1} µs",
            us(t.idle),
            t.idle_calls,
            us(t.due),
            t.due_calls,
            us(t.peers),
        );
    }
}
