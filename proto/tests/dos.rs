//! Denial of service (docs/protocol.md, "Denial of service: cookies and
//! half-open SAs"): forged IKE_SA_INIT requests from a peer's address must
//! never keep the real peer from keying; responder cookies (RFC 7296 2.6)
//! round trip, rotate and are checked; drops are counted by reason.

mod harness;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use aokd_proto::ike::{Counters, DropReason, Endpoint, EndpointConfig, PeerConfig};
use aokd_proto::numbers::NotifyType;
use aokd_proto::wire;
use harness::{peer, NetParams, Sim, A_ADDR, B_ADDR};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

const PSK: &[u8] = b"denial of service test key";

fn a_peer() -> PeerConfig {
    peer("b", A_ADDR, B_ADDR, PSK)
}

fn b_peer() -> PeerConfig {
    peer("a", B_ADDR, A_ADDR, PSK)
}

/// An IKE_SA_INIT request as A would send it to B: the first datagram of a
/// fresh endpoint with `seed`.
fn init_request(seed: u64) -> Vec<u8> {
    let now = Instant::now();
    let mut ep = Endpoint::new(
        EndpointConfig::new(vec![a_peer()]),
        now,
        Box::new(ChaCha20Rng::seed_from_u64(seed)),
    )
    .expect("config");
    ep.handle_timeout(now);
    ep.poll_transmit().expect("IKE_SA_INIT").contents
}

/// Forged requests: `template` with a random SPIi (and random trailing
/// octets, in its last payload, the Vendor ID).
struct Forger {
    template: Vec<u8>,
    rng: ChaCha20Rng,
}

impl Forger {
    fn new(seed: u64) -> Forger {
        Forger {
            template: init_request(seed ^ 0xf0f0),
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    fn datagram(&mut self) -> Vec<u8> {
        let mut d = self.template.clone();
        self.rng.fill_bytes(&mut d[..8]);
        let n = d.len();
        self.rng.fill_bytes(&mut d[n - 16..]);
        d
    }

    /// A's address with a random port.
    fn peer_source(&mut self) -> SocketAddr {
        SocketAddr::new(A_ADDR.ip(), 1024 + (self.rng.next_u32() % 60000) as u16)
    }

    /// A random IPv4 address and port (never A's or B's).
    fn any_source(&mut self) -> SocketAddr {
        let o = self.rng.next_u32().to_be_bytes();
        let ip = Ipv4Addr::new(10, o[1], o[2], o[3]);
        SocketAddr::new(IpAddr::V4(ip), 1024 + (self.rng.next_u32() % 60000) as u16)
    }
}

/// Both sides hold the same fresh MKT and A an established IKE SA.
fn keyed(sim: &Sim) -> bool {
    sim.established(0) == 1 && sim.common_mkt()
}

/// Settles A and B, forges five requests to B from A's address, restarts
/// A and checks that they key within 2 s. Returns the simulation and B's
/// counters from before the forgeries.
fn five_forged_then_restart(cfg_b: EndpointConfig, seed: u64) -> (Sim, Counters) {
    let cfg_a = EndpointConfig::new(vec![a_peer()]);
    let mut sim = Sim::pair_with(seed, NetParams::default(), cfg_a, cfg_b);
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    let before = sim.nodes[1].ep.counters();
    let mut forger = Forger::new(seed);
    for _ in 0..5 {
        let (from, d) = (forger.peer_source(), forger.datagram());
        sim.inject(1, from, &d);
    }
    assert!(
        sim.nodes[1].ep.half_open() > 0,
        "the forgeries were admitted"
    );
    // A restarts: a fresh endpoint, which initiates at once.
    sim.restart(0, EndpointConfig::new(vec![a_peer()]), seed + 1000);
    let start = sim.now;
    assert!(
        sim.run_until(Duration::from_secs(2), keyed),
        "not keyed within 2 s of A's restart: A {:?} B {:?}, B's counters {:?}",
        sim.ids(0),
        sim.ids(1),
        sim.nodes[1].ep.counters()
    );
    assert!(sim.now - start <= Duration::from_secs(2));
    // The forged half-open SAs went when A authenticated.
    assert_eq!(sim.nodes[1].ep.half_open(), 0);
    (sim, before)
}

/// B's counters since `before`.
fn since(sim: &Sim, before: &Counters) -> Counters {
    let now = sim.nodes[1].ep.counters();
    Counters {
        cookies_sent: now.cookies_sent - before.cookies_sent,
        cookies_accepted: now.cookies_accepted - before.cookies_accepted,
        cookies_rejected: now.cookies_rejected - before.cookies_rejected,
        half_open_evicted: now.half_open_evicted - before.half_open_evicted,
        half_open_superseded: now.half_open_superseded - before.half_open_superseded,
        dropped: now.dropped,
    }
}

#[test]
fn five_forged_inits_from_the_peer_address_do_not_keep_a_restarted_peer_out() {
    // Defaults: three forgeries are admitted, then cookies are demanded
    // from that address, the real peer's too; it answers them.
    let (sim, before) = five_forged_then_restart(EndpointConfig::new(vec![b_peer()]), 1);
    let c = since(&sim, &before);
    let required =
        c.dropped.get(DropReason::CookieRequired) - before.dropped.get(DropReason::CookieRequired);
    assert_eq!(required, 3, "{c:?}");
    assert_eq!(c.cookies_accepted, 1, "{c:?}");
    assert_eq!(c.half_open_superseded, 3, "{c:?}");
}

#[test]
fn at_the_half_open_limit_a_valid_cookie_evicts_the_oldest_forgery() {
    // Cookies only at the peer's limit: the five forgeries fill it.
    let mut cfg_b = EndpointConfig::new(vec![b_peer()]);
    cfg_b.cookie_threshold = 1000;
    cfg_b.cookie_threshold_per_source = 1000;
    let (sim, before) = five_forged_then_restart(cfg_b, 2);
    let c = since(&sim, &before);
    assert_eq!(c.dropped.get(DropReason::HalfOpenLimit), 1, "{c:?}");
    assert_eq!(c.half_open_evicted, 1, "{c:?}");
    assert_eq!(c.half_open_superseded, 4, "{c:?}");
}

#[test]
fn ten_thousand_forged_inits_interleaved_with_the_real_peer() {
    let cfg_a = EndpointConfig::new(vec![a_peer()]);
    let cfg_b = EndpointConfig::new(vec![b_peer()]);
    let mut sim = Sim::pair_with(3, NetParams::jitter(5), cfg_a, cfg_b);
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    sim.restart(0, EndpointConfig::new(vec![a_peer()]), 3000);
    let start = sim.now;
    let mut forger = Forger::new(3);
    let (mut max_half_open, mut max_sas) = (0, 0);
    let mut keyed_at = None;
    for i in 0..10_000u32 {
        let from = if i % 2 == 0 {
            forger.peer_source()
        } else {
            forger.any_source()
        };
        let d = forger.datagram();
        sim.inject(1, from, &d);
        max_half_open = max_half_open.max(sim.nodes[1].ep.half_open());
        max_sas = max_sas.max(sim.nodes[1].ep.peers()[0].sas.len());
        if i % 20 == 19 {
            // 500 forgeries per virtual second, the real exchange between.
            sim.run_for(Duration::from_millis(40));
            if keyed_at.is_none() && keyed(&sim) {
                keyed_at = Some(sim.now - start);
            }
        }
    }
    let keyed_at = keyed_at.expect("the real peer never keyed");
    assert!(
        keyed_at <= Duration::from_secs(2),
        "keyed after {keyed_at:?}"
    );
    // Memory stays bounded: at most the per-source threshold of forgeries
    // is ever held, whatever their number.
    // (The per-source threshold of 3, plus the real peer's own, within
    // the per-peer limit of 5.)
    assert!(max_half_open <= 4, "{max_half_open} half-open SAs");
    assert!(max_sas <= 6, "{max_sas} SAs with the peer");
    let c = sim.nodes[1].ep.counters();
    assert_eq!(c.dropped.get(DropReason::NotConfiguredPeer), 5_000, "{c:?}");
    assert!(c.dropped.get(DropReason::CookieRequired) > 4_900, "{c:?}");
    assert!(keyed(&sim));
}

#[test]
fn forged_half_open_sas_do_not_keep_the_initiating_side_from_initiating() {
    // A initiates, B never does; forged requests from B's address reach A
    // before A's first attempt.
    let mut b = b_peer();
    b.initiate = false;
    let cfg_a = EndpointConfig::new(vec![a_peer()]);
    let mut sim = Sim::pair_with(
        13,
        NetParams::default(),
        cfg_a,
        EndpointConfig::new(vec![b]),
    );
    let mut forger = Forger::new(13);
    for _ in 0..5 {
        let from = SocketAddr::new(B_ADDR.ip(), 1024 + (forger.rng.next_u32() % 60000) as u16);
        let d = forger.datagram();
        sim.inject(0, from, &d);
    }
    assert_eq!(sim.nodes[0].ep.half_open(), 3);
    // A waits a few seconds for them to complete (they might be B's), then
    // initiates anyway.
    assert!(
        sim.run_until(Duration::from_secs(8), keyed),
        "A never initiated: {:?}",
        sim.nodes[0].ep.peers()[0].sas
    );
    assert_eq!(sim.nodes[0].ep.half_open(), 0, "the forgeries went");
}

/// B, passive, with `cookie_threshold` 0 (cookies always), and its time.
fn cookie_responder() -> (Endpoint, Instant) {
    let now = Instant::now();
    let mut b = b_peer();
    b.initiate = false;
    let mut cfg = EndpointConfig::new(vec![b]);
    cfg.cookie_threshold = 0;
    let ep = Endpoint::new(cfg, now, Box::new(ChaCha20Rng::seed_from_u64(77))).expect("config");
    (ep, now)
}

/// An initiator toward B (a fresh endpoint from `seed`) and its first request.
fn initiator(seed: u64, now: Instant) -> (Endpoint, Vec<u8>) {
    let mut ep = Endpoint::new(
        EndpointConfig::new(vec![a_peer()]),
        now,
        Box::new(ChaCha20Rng::seed_from_u64(seed)),
    )
    .expect("config");
    ep.handle_timeout(now);
    let d = ep.poll_transmit().expect("IKE_SA_INIT").contents;
    (ep, d)
}

fn notify_of(datagram: &[u8], ty: NotifyType) -> Option<Vec<u8>> {
    let m = wire::parse_message(datagram).ok()?;
    m.payloads
        .iter()
        .find_map(|p| p.as_notify().filter(|n| n.ty == ty).map(|n| n.data.clone()))
}

/// B's one answer to `request` at `now`.
fn ask(b: &mut Endpoint, now: Instant, request: &[u8]) -> Vec<u8> {
    b.handle_datagram(now, A_ADDR, request);
    let t = b.poll_transmit().expect("an answer");
    assert!(b.poll_transmit().is_none());
    assert_eq!(t.destination, A_ADDR);
    t.contents
}

/// The initiator's retry after B's COOKIE answer to its first request.
fn retry_with_cookie(b: &mut Endpoint, now: Instant, seed: u64) -> Vec<u8> {
    let (mut a, first) = initiator(seed, now);
    let answer = ask(b, now, &first);
    assert!(notify_of(&answer, NotifyType::COOKIE).is_some());
    a.handle_datagram(now, B_ADDR, &answer);
    let retry = a.poll_transmit().expect("the retry").contents;
    // RFC 7296 2.6: N(COOKIE) first, everything else as before.
    let m = wire::parse_message(&retry).expect("parses");
    assert_eq!(
        m.payloads[0].as_notify().map(|n| n.ty),
        Some(NotifyType::COOKIE)
    );
    retry
}

#[test]
fn rfc7296_2_6_threshold_zero_demands_a_cookie_and_the_initiator_completes() {
    let mut a = a_peer();
    a.initiate = true;
    let mut b = b_peer();
    b.initiate = false;
    let mut cfg_b = EndpointConfig::new(vec![b]);
    cfg_b.cookie_threshold = 0;
    let mut sim = Sim::pair_with(
        11,
        NetParams::default(),
        EndpointConfig::new(vec![a]),
        cfg_b,
    );
    assert!(sim.run_until(Duration::from_secs(5), Sim::settled));
    let c = sim.nodes[1].ep.counters();
    assert_eq!(c.cookies_sent, 1, "{c:?}");
    assert_eq!(c.cookies_accepted, 1, "{c:?}");
    assert_eq!(c.dropped.get(DropReason::CookieRequired), 1, "{c:?}");
    // A's second IKE_SA_INIT carried B's cookie.
    let inits: Vec<Option<Vec<u8>>> = sim
        .sent
        .iter()
        .filter(|(n, _, _)| *n == 0)
        .filter_map(|(_, _, d)| wire::parse_message(d).ok().map(|m| (m, d)))
        .filter(|(m, _)| m.header.exchange == aokd_proto::numbers::ExchangeType::IKE_SA_INIT)
        .map(|(_, d)| notify_of(d, NotifyType::COOKIE))
        .collect();
    assert_eq!(inits.len(), 2, "{inits:?}");
    assert!(inits[0].is_none() && inits[1].is_some());
}

#[test]
fn rfc7296_2_6_a_cookie_survives_one_secret_rotation_not_two() {
    let (mut b, t0) = cookie_responder();
    let life = b.config().cookie_secret_lifetime;
    let r1 = retry_with_cookie(&mut b, t0, 1);
    let r2 = retry_with_cookie(&mut b, t0, 2);
    // A new secret (another initiator's request makes B rotate).
    let t1 = t0 + life + Duration::from_secs(1);
    let _ = retry_with_cookie(&mut b, t1, 3);
    let answer = ask(&mut b, t1, &r1);
    assert!(notify_of(&answer, NotifyType::COOKIE).is_none());
    assert!(wire::parse_message(&answer).unwrap().header.spi_r != 0);
    assert_eq!(b.counters().cookies_accepted, 1);
    assert_eq!(b.half_open(), 1);
    // Another rotation: r2's secret is gone.
    let t2 = t1 + life;
    let _ = retry_with_cookie(&mut b, t2, 4);
    let answer = ask(&mut b, t2, &r2);
    assert!(
        notify_of(&answer, NotifyType::COOKIE).is_some(),
        "a fresh cookie"
    );
    let c = b.counters();
    assert_eq!(c.cookies_accepted, 1, "{c:?}");
    assert_eq!(c.cookies_rejected, 1, "{c:?}");
    assert_eq!(c.dropped.get(DropReason::CookieInvalid), 1, "{c:?}");
    assert_eq!(b.half_open(), 1);
}

#[test]
fn rfc7296_2_6_a_wrong_cookie_is_dropped_and_counted() {
    let (mut b, t0) = cookie_responder();
    let mut r = retry_with_cookie(&mut b, t0, 5);
    // Header (28), generic payload header (4), Notify's protocol, SPI size
    // and type (4): then the cookie, a version octet and the MAC.
    r[36 + 3] ^= 0x40;
    let answer = ask(&mut b, t0, &r);
    assert!(notify_of(&answer, NotifyType::COOKIE).is_some());
    let c = b.counters();
    assert_eq!(c.dropped.get(DropReason::CookieInvalid), 1, "{c:?}");
    assert_eq!(c.cookies_rejected, 1, "{c:?}");
    assert_eq!(c.cookies_accepted, 0, "{c:?}");
    assert_eq!(b.half_open(), 0);
    assert!(b.peers()[0].sas.is_empty());
    // The cookie is bound to the address, not the port (RFC 7296 2.6: IPi);
    // another address is no peer at all.
    let r = retry_with_cookie(&mut b, t0, 6);
    let other = SocketAddr::new(A_ADDR.ip(), 4500);
    b.handle_datagram(t0, other, &r);
    assert_eq!(
        b.half_open(),
        1,
        "same address, other port: still A's cookie"
    );
    let elsewhere: SocketAddr = "192.0.2.9:500".parse().unwrap();
    b.handle_datagram(t0, elsewhere, &r);
    let c = b.counters();
    assert_eq!(c.dropped.get(DropReason::NotConfiguredPeer), 1, "{c:?}");
}

#[test]
fn a_failed_responder_sa_is_not_listed() {
    let mut sim = Sim::pair(12, NetParams::default(), peer("b", A_ADDR, B_ADDR, PSK), {
        let mut b = peer("a", B_ADDR, A_ADDR, b"another key");
        b.initiate = false;
        b
    });
    sim.run_for(Duration::from_secs(5));
    let p = &sim.nodes[1].ep.peers()[0];
    assert_eq!(p.last_error.as_deref(), Some("AUTHENTICATION_FAILED"));
    assert!(p.sas.is_empty(), "{:?}", p.sas);
    assert_eq!(sim.nodes[1].ep.half_open(), 0);
}

#[test]
fn drop_reasons_are_indexed_in_order() {
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
    }
}

/// Forged IKE_SA_INIT requests from the peer's address that B refuses
/// (no common IKE suite) are each answered with NO_PROPOSAL_CHOSEN, but
/// reported (last error, `NegotiationFailed`, hence a log line) at most once
/// every 10 s: a flood of them is not a flood of log lines.
#[test]
fn refused_forged_inits_are_reported_once_a_period() {
    let mut b_cfg = b_peer();
    b_cfg.ike_suites = vec!["chacha20poly1305-prfsha512-ecp256".parse().unwrap()].into();
    b_cfg.initiate = false;
    let t0 = Instant::now();
    let mut b = Endpoint::new(
        EndpointConfig::new(vec![b_cfg]),
        t0,
        Box::new(ChaCha20Rng::seed_from_u64(11)),
    )
    .expect("config");
    let mut forger = Forger::new(12);
    let mut reports = Vec::new();
    let mut answers = 0;
    for i in 0..200u64 {
        // 200 requests over 20 s.
        let now = t0 + Duration::from_millis(i * 100);
        let from = forger.peer_source();
        b.handle_datagram(now, from, &forger.datagram());
        while let Some(t) = b.poll_transmit() {
            assert!(notify_of(&t.contents, NotifyType::NO_PROPOSAL_CHOSEN).is_some());
            answers += 1;
        }
        while let Some(ev) = b.poll_event() {
            if matches!(ev, aokd_proto::ike::Event::NegotiationFailed { .. }) {
                reports.push(i);
            }
        }
    }
    assert_eq!(answers, 200, "every request is answered");
    assert_eq!(reports, vec![0, 100], "reported once per 10 s");
    assert_eq!(
        b.peers()[0].last_error.as_deref(),
        Some("NO_PROPOSAL_CHOSEN")
    );
}
