//! A two-endpoint simulation on a virtual clock: datagrams cross a network
//! that loses, duplicates, delays and reorders them, all from one seed, so
//! every run is reproducible.

#![allow(dead_code)]

pub mod pki;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use aokd_proto::crypto::Secret;
use aokd_proto::ike::{Endpoint, EndpointConfig, Event, PeerConfig};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

pub const A_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 500);
pub const B_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 500);

/// Network behaviour, probabilities in percent.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetParams {
    pub loss_pct: u32,
    pub dup_pct: u32,
    /// Extra random delay up to this many milliseconds (reorders datagrams).
    pub jitter_ms: u64,
}

impl NetParams {
    /// 30% loss, 10% duplicates, up to 30 ms of jitter: the lossy network of
    /// the robustness runs.
    pub const LOSSY: NetParams = NetParams {
        loss_pct: 30,
        dup_pct: 10,
        jitter_ms: 30,
    };

    /// No loss, up to `ms` milliseconds of jitter (reordering).
    pub fn jitter(ms: u64) -> NetParams {
        NetParams {
            jitter_ms: ms,
            ..Default::default()
        }
    }
}

pub struct Node {
    pub ep: Endpoint,
    pub addr: SocketAddr,
    pub events: Vec<Event>,
}

struct InFlight {
    at: Instant,
    seq: u64,
    to: usize,
    from: SocketAddr,
    data: Vec<u8>,
}

/// Decides, per (sending node, contents), whether the network loses a
/// datagram ([`Sim::drop_if`]).
pub type DropFilter = Box<dyn FnMut(usize, &[u8]) -> bool>;

pub struct Sim {
    pub now: Instant,
    pub start: Instant,
    pub nodes: Vec<Node>,
    pub net: NetParams,
    rng: ChaCha20Rng,
    flight: Vec<InFlight>,
    seq: u64,
    /// Every datagram handed to the network, for fuzzing from real messages.
    pub sent: Vec<(usize, SocketAddr, Vec<u8>)>,
    /// The destination of each datagram in `sent`, index for index.
    pub sent_to: Vec<SocketAddr>,
    /// While true the network drops everything (a partition).
    pub partitioned: bool,
    /// Drops the datagrams (sending node, contents) for which it returns
    /// true: one chosen datagram lost.
    pub drop_if: Option<DropFilter>,
    /// Per node: extra delays for its next datagrams, one each, in order
    /// (to force an interleaving).
    pub extra_delay: Vec<std::collections::VecDeque<Duration>>,
}

/// A peer configuration for the simulation.
pub fn peer(name: &str, local: SocketAddr, remote: SocketAddr, psk: &[u8]) -> PeerConfig {
    PeerConfig::with_psk(name, local.ip(), remote, Secret::new(psk.to_vec()))
}

impl Sim {
    /// Two nodes, A and B, each configured with the other.
    pub fn pair(seed: u64, net: NetParams, a: PeerConfig, b: PeerConfig) -> Sim {
        Sim::pair_with(
            seed,
            net,
            EndpointConfig::new(vec![a]),
            EndpointConfig::new(vec![b]),
        )
    }

    /// Two nodes with [`peer`] configurations sharing `psk` (A names its
    /// peer "b", B "a"), each adjusted by `fa` / `fb` first.
    pub fn pair_of(
        seed: u64,
        net: NetParams,
        psk: &[u8],
        fa: impl FnOnce(&mut PeerConfig),
        fb: impl FnOnce(&mut PeerConfig),
    ) -> Sim {
        let mut a = peer("b", A_ADDR, B_ADDR, psk);
        let mut b = peer("a", B_ADDR, A_ADDR, psk);
        fa(&mut a);
        fb(&mut b);
        Sim::pair(seed, net, a, b)
    }

    pub fn pair_with(seed: u64, net: NetParams, a: EndpointConfig, b: EndpointConfig) -> Sim {
        let now = Instant::now();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let ra = Box::new(ChaCha20Rng::seed_from_u64(rng.next_u64()));
        let rb = Box::new(ChaCha20Rng::seed_from_u64(rng.next_u64()));
        let nodes = vec![
            Node {
                ep: Endpoint::new(a, now, ra).expect("config A"),
                addr: A_ADDR,
                events: Vec::new(),
            },
            Node {
                ep: Endpoint::new(b, now, rb).expect("config B"),
                addr: B_ADDR,
                events: Vec::new(),
            },
        ];
        Sim {
            now,
            start: now,
            nodes,
            net,
            rng,
            flight: Vec::new(),
            seq: 0,
            sent: Vec::new(),
            sent_to: Vec::new(),
            partitioned: false,
            drop_if: None,
            extra_delay: vec![Default::default(), Default::default()],
        }
    }

    /// Adds a node at `addr` with `cfg` (its RNG from `seed`); returns its
    /// index.
    pub fn add_node(&mut self, addr: SocketAddr, cfg: EndpointConfig, seed: u64) -> usize {
        let rng = Box::new(ChaCha20Rng::seed_from_u64(seed));
        self.nodes.push(Node {
            ep: Endpoint::new(cfg, self.now, rng).expect("config"),
            addr,
            events: Vec::new(),
        });
        self.extra_delay.push(Default::default());
        self.nodes.len() - 1
    }

    /// Restarts node `i`: a new endpoint with `cfg` and no state at all
    /// (datagrams in flight to it still arrive).
    pub fn restart(&mut self, i: usize, cfg: EndpointConfig, seed: u64) {
        let rng = Box::new(ChaCha20Rng::seed_from_u64(seed));
        self.nodes[i].ep = Endpoint::new(cfg, self.now, rng).expect("config");
    }

    /// INFORMATIONAL and CREATE_CHILD_SA requests node `i` sent from index
    /// `from` of `sent` on, as (SPIi, SPIr, exchange).
    pub fn requests_since(
        &self,
        from: usize,
        i: usize,
    ) -> Vec<(u64, u64, aokd_proto::numbers::ExchangeType)> {
        self.sent[from..]
            .iter()
            .filter(|(n, _, _)| *n == i)
            .filter_map(|(_, _, d)| aokd_proto::wire::parse_message(d).ok())
            .filter(|m| !m.header.is_response())
            .map(|m| (m.header.spi_i, m.header.spi_r, m.header.exchange))
            .collect()
    }

    /// Takes every datagram handed to the network so far, in order, as
    /// (sending node, source, destination, contents), emptying `sent` and
    /// `sent_to` (so a long run need not keep them all).
    pub fn take_sent(&mut self) -> Vec<(usize, SocketAddr, SocketAddr, Vec<u8>)> {
        let to = std::mem::take(&mut self.sent_to);
        std::mem::take(&mut self.sent)
            .into_iter()
            .zip(to)
            .map(|((i, from, data), to)| (i, from, to, data))
            .collect()
    }

    fn node_index(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == addr)
    }

    /// Moves transmits and events out of every node.
    fn drain(&mut self) {
        for i in 0..self.nodes.len() {
            while let Some(ev) = self.nodes[i].ep.poll_event() {
                self.nodes[i].events.push(ev);
            }
            while let Some(t) = self.nodes[i].ep.poll_transmit() {
                let from = self.nodes[i].addr;
                self.sent.push((i, from, t.contents.clone()));
                self.sent_to.push(t.destination);
                let Some(to) = self.node_index(t.destination) else {
                    continue;
                };
                if self.partitioned {
                    continue;
                }
                if let Some(f) = self.drop_if.as_mut() {
                    if f(i, &t.contents) {
                        continue;
                    }
                }
                let extra = self.extra_delay[i].pop_front().unwrap_or_default();
                let copies = if self.rng.next_u32() % 100 < self.net.dup_pct {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    if self.rng.next_u32() % 100 < self.net.loss_pct {
                        continue;
                    }
                    let jitter = if self.net.jitter_ms > 0 {
                        self.rng.next_u64() % self.net.jitter_ms
                    } else {
                        0
                    };
                    let at = self.now + Duration::from_millis(5 + jitter) + extra;
                    self.seq += 1;
                    self.flight.push(InFlight {
                        at,
                        seq: self.seq,
                        to,
                        from,
                        data: t.contents.clone(),
                    });
                }
            }
        }
    }

    /// Runs one step: the earliest delivery or timer. Returns false when
    /// nothing is left to do before `until`.
    pub fn step(&mut self, until: Instant) -> bool {
        self.drain();
        let next_flight = self.flight.iter().map(|f| (f.at, f.seq)).min();
        let next_timer = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.ep.poll_timeout().map(|t| (t, i)))
            .min();
        match (next_flight, next_timer) {
            (Some((at, seq)), timer) if timer.is_none_or(|(t, _)| at <= t) => {
                if at > until {
                    return false;
                }
                self.now = self.now.max(at);
                let pos = self
                    .flight
                    .iter()
                    .position(|f| f.seq == seq)
                    .expect("in flight");
                let f = self.flight.swap_remove(pos);
                let now = self.now;
                self.nodes[f.to].ep.handle_datagram(now, f.from, &f.data);
            }
            (_, Some((t, i))) => {
                if t > until {
                    return false;
                }
                self.now = self.now.max(t);
                let now = self.now;
                self.nodes[i].ep.handle_timeout(now);
            }
            _ => return false,
        }
        self.drain();
        true
    }

    /// Runs until `cond` holds or `limit` of virtual time passes; returns
    /// whether `cond` held.
    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&Sim) -> bool) -> bool {
        let until = self.now + limit;
        loop {
            if cond(self) {
                return true;
            }
            if !self.step(until) {
                return cond(self);
            }
        }
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        while self.step(until) {}
        self.now = self.now.max(until);
    }

    /// Delivers a datagram directly to node `to` now.
    pub fn inject(&mut self, to: usize, from: SocketAddr, data: &[u8]) {
        let now = self.now;
        self.nodes[to].ep.handle_datagram(now, from, data);
        self.drain();
    }

    pub fn established(&self, i: usize) -> usize {
        self.nodes[i]
            .ep
            .peers()
            .iter()
            .flat_map(|p| p.sas.iter())
            .filter(|s| s.state == "established")
            .count()
    }

    /// Whether A holds an MKT whose mirror B also holds (A's SendID is B's
    /// RecvID and the other way round, same master key).
    pub fn common_mkt(&self) -> bool {
        let (a, b) = (self.mkts(0), self.mkts(1));
        a.iter().any(|x| {
            b.iter().any(|y| {
                x.mkt.send_id == y.mkt.recv_id
                    && x.mkt.recv_id == y.mkt.send_id
                    && x.mkt.master_key.as_bytes() == y.mkt.master_key.as_bytes()
            })
        })
    }

    /// (SendID, RecvID) of node `i`'s MKTs.
    pub fn ids(&self, i: usize) -> Vec<(u8, u8)> {
        self.mkts(i)
            .iter()
            .map(|m| (m.mkt.send_id, m.mkt.recv_id))
            .collect()
    }

    /// Runs for `secs` virtual seconds, checking after each that both sides
    /// still share an MKT ([`Sim::common_mkt`]); `what` names the run in the
    /// failure message.
    pub fn run_checking_continuity(&mut self, secs: u64, what: &str) {
        for t in 0..secs {
            self.run_for(Duration::from_secs(1));
            assert!(
                self.common_mkt(),
                "{what}: no MKT in common at t+{t}s: A {:?} B {:?}",
                self.ids(0),
                self.ids(1)
            );
        }
    }

    pub fn mkts(&self, i: usize) -> Vec<aokd_proto::ike::MktView> {
        self.nodes[i]
            .ep
            .peers()
            .into_iter()
            .flat_map(|p| p.mkts)
            .collect()
    }

    /// Both sides hold exactly one established IKE SA and one MKT each.
    pub fn settled(&self) -> bool {
        self.established(0) == 1
            && self.established(1) == 1
            && self.mkts(0).len() == 1
            && self.mkts(1).len() == 1
    }
}
