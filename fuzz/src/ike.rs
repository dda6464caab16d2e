//! Two endpoints, A (initiator, peer "b") and B (responder, peer "a"), on a
//! fixed instant with seeded RNGs: the same inputs give the same datagrams
//! in every run, so a handshake recorded once can be replayed to a fresh
//! endpoint before each fuzz input and leaves it in the recorded state.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Instant;

use aokd_proto::crypto::Secret;
use aokd_proto::ike::{Endpoint, EndpointConfig, PeerConfig, PeerState};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

pub const A_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 500);
pub const B_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 500);
/// An address that is no configured peer.
pub const STRANGER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), 4500);

const PSK: &[u8] = b"aokd fuzzing pre-shared key";
const SEED_A: u64 = 0xa0c0_0001;
const SEED_B: u64 = 0xa0c0_0002;

fn peer(name: &str, local: SocketAddr, remote: SocketAddr, initiate: bool) -> PeerConfig {
    PeerConfig {
        initiate,
        ..PeerConfig::with_psk(name, local.ip(), remote, Secret::new(PSK.to_vec()))
    }
}

/// The one instant every endpoint of this process starts at.
pub fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// A fresh A: it initiates to B at the first `handle_timeout`.
pub fn new_a() -> Endpoint {
    let cfg = EndpointConfig::new(vec![peer("b", A_ADDR, B_ADDR, true)]);
    Endpoint::new(cfg, start(), Box::new(ChaCha20Rng::seed_from_u64(SEED_A))).expect("config A")
}

/// A fresh B: it only responds.
pub fn new_b() -> Endpoint {
    new_b_with(|_| {})
}

/// A fresh B with its peer configuration changed by `f` (for the corpus:
/// the answers of a B with another PSK or other proposals).
pub fn new_b_with(f: impl FnOnce(&mut PeerConfig)) -> Endpoint {
    let mut p = peer("a", B_ADDR, A_ADDR, false);
    f(&mut p);
    let cfg = EndpointConfig::new(vec![p]);
    Endpoint::new(cfg, start(), Box::new(ChaCha20Rng::seed_from_u64(SEED_B))).expect("config B")
}

/// Drops what an endpoint has queued; returns the datagrams.
pub fn drain(ep: &mut Endpoint) -> Vec<Vec<u8>> {
    while ep.poll_event().is_some() {}
    let mut out = Vec::new();
    while let Some(t) = ep.poll_transmit() {
        out.push(t.contents);
    }
    out
}

/// Who sent a recorded datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    A,
    B,
}

/// Delivers everything queued on both sides until both are quiet, at the
/// start instant, appending each datagram to `log`.
pub fn exchange(a: &mut Endpoint, b: &mut Endpoint, log: &mut Vec<(From, Vec<u8>)>) {
    for _ in 0..64 {
        let from_a = drain(a);
        let from_b = drain(b);
        if from_a.is_empty() && from_b.is_empty() {
            return;
        }
        for d in from_a {
            b.handle_datagram(start(), A_ADDR, &d);
            log.push((From::A, d));
        }
        for d in from_b {
            a.handle_datagram(start(), B_ADDR, &d);
            log.push((From::B, d));
        }
    }
}

/// The handshake between a fresh A and a fresh B: IKE_SA_INIT and IKE_AUTH
/// with the first MKT, in order. Both ends are established after it.
pub struct Handshake {
    pub log: Vec<(From, Vec<u8>)>,
}

impl Handshake {
    /// Runs it (once per process).
    pub fn get() -> &'static Handshake {
        static H: OnceLock<Handshake> = OnceLock::new();
        H.get_or_init(|| {
            let (mut a, mut b) = (new_a(), new_b());
            a.handle_timeout(start());
            let mut log = Vec::new();
            exchange(&mut a, &mut b, &mut log);
            for ep in [&a, &b] {
                assert_eq!(ep.peers()[0].state, PeerState::Established, "handshake");
            }
            Handshake { log }
        })
    }

    /// The datagrams one side sent, in order.
    pub fn sent_by(&self, who: From) -> Vec<&[u8]> {
        self.log
            .iter()
            .filter(|(f, _)| *f == who)
            .map(|(_, d)| d.as_slice())
            .collect()
    }

    /// A fresh B that has answered A's handshake: a responder with an
    /// established IKE SA and one MKT.
    pub fn established_b(&self) -> Endpoint {
        let mut b = new_b();
        for d in self.sent_by(From::A) {
            b.handle_datagram(start(), A_ADDR, d);
            drain(&mut b);
        }
        b
    }

    /// A fresh A after `responses` of B's handshake datagrams: 0 = its
    /// IKE_SA_INIT request is outstanding, 1 = its IKE_AUTH request is, 2 =
    /// established.
    pub fn a_after(&self, responses: usize) -> Endpoint {
        let mut a = new_a();
        a.handle_timeout(start());
        drain(&mut a);
        for d in self.sent_by(From::B).into_iter().take(responses) {
            a.handle_datagram(start(), B_ADDR, d);
            drain(&mut a);
        }
        a
    }
}
