//! Liveness checks (RFC 7296 1.4, 2.4) on a virtual clock: an idle IKE SA
//! is checked with an empty INFORMATIONAL request once per interval, and a
//! peer that never answers loses its IKE SA but not its MKTs.

mod harness;

use std::time::Duration;

use aokd_proto::ike::{EndpointConfig, Event, PeerConfig};
use aokd_proto::numbers::ExchangeType;
use harness::{peer, NetParams, Sim, A_ADDR, B_ADDR};

const PSK: &[u8] = b"liveness test key";

fn configs(liveness: Option<u64>, b_initiates: bool) -> (EndpointConfig, EndpointConfig) {
    let a: PeerConfig = peer("b", A_ADDR, B_ADDR, PSK);
    let mut b = peer("a", B_ADDR, A_ADDR, PSK);
    b.initiate = b_initiates;
    let (mut ca, mut cb) = (EndpointConfig::new(vec![a]), EndpointConfig::new(vec![b]));
    ca.liveness = liveness.map(Duration::from_secs);
    cb.liveness = liveness.map(Duration::from_secs);
    (ca, cb)
}

/// INFORMATIONAL requests sent by both nodes from `mark` on.
fn informational_requests(sim: &Sim, mark: usize) -> usize {
    (0..2)
        .map(|i| {
            sim.requests_since(mark, i)
                .iter()
                .filter(|(_, _, x)| *x == ExchangeType::INFORMATIONAL)
                .count()
        })
        .sum()
}

#[test]
fn rfc7296_1_4_an_idle_ike_sa_gets_one_liveness_check_per_interval() {
    assert_eq!(
        EndpointConfig::new(Vec::new()).liveness,
        Some(Duration::from_secs(30))
    );
    let (ca, cb) = configs(Some(30), true);
    let mut sim = Sim::pair_with(71, NetParams::default(), ca, cb);
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    let mark = sim.sent.len();
    sim.run_for(Duration::from_secs(600));
    // One exchange per 30 s of silence, whichever side comes first: a
    // check received counts as life for the side that receives it.
    let n = informational_requests(&sim, mark);
    assert!((19..=21).contains(&n), "{n} liveness checks in 600 s");
    assert!(sim.settled());

    // Off: nothing at all is sent on an idle IKE SA.
    let (ca, cb) = configs(None, true);
    let mut sim = Sim::pair_with(71, NetParams::default(), ca, cb);
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    let mark = sim.sent.len();
    sim.run_for(Duration::from_secs(600));
    assert_eq!(sim.sent.len(), mark);
}

#[test]
fn an_unanswered_liveness_check_deletes_the_ike_sa_keeps_the_mkts_and_reconnects() {
    let (ca, cb) = configs(Some(30), false);
    let mut sim = Sim::pair_with(72, NetParams::default(), ca, cb);
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    let mkts = [sim.mkts(0), sim.mkts(1)];
    let old = {
        let s = &sim.nodes[0].ep.peers()[0].sas[0];
        (s.spi_i, s.spi_r)
    };
    sim.partitioned = true;
    let start = sim.now;
    let lost = |s: &Sim, i: usize| {
        s.nodes[i].events.iter().any(|e| {
            matches!(e, Event::IkeSaDeleted { reason, .. }
                if reason == "peer unreachable (liveness check)")
        })
    };
    assert!(sim.run_until(Duration::from_secs(300), |s| lost(s, 0) && lost(s, 1)));
    // 30 s of silence, then the 165.5 s retransmission schedule.
    let took = sim.now - start;
    assert!(
        (Duration::from_secs(195)..Duration::from_secs(197)).contains(&took),
        "{took:?}"
    );
    for (i, before) in mkts.iter().enumerate() {
        assert_eq!(sim.established(i), 0, "node {i}");
        // The MKTs stay (until their hard lifetime): live connections keep
        // their keys.
        assert_eq!(
            sim.mkts(i)
                .iter()
                .map(|m| (m.mkt.send_id, m.mkt.recv_id))
                .collect::<Vec<_>>(),
            before
                .iter()
                .map(|m| (m.mkt.send_id, m.mkt.recv_id))
                .collect::<Vec<_>>(),
            "node {i}"
        );
        assert!(!sim.nodes[i]
            .events
            .iter()
            .any(|e| matches!(e, Event::MktDeleted { .. })));
        assert_eq!(
            sim.nodes[i].ep.peers()[0].last_error.as_deref(),
            Some("peer unreachable (liveness check)")
        );
    }
    // A (configured to initiate) tries again after retry_interval; B
    // (passive) does not.
    let mark = sim.sent.len();
    sim.run_for(Duration::from_secs(31));
    let inits = |i: usize| {
        sim.requests_since(mark, i)
            .iter()
            .filter(|(_, _, x)| *x == ExchangeType::IKE_SA_INIT)
            .count()
    };
    assert!(inits(0) >= 1);
    assert_eq!(inits(1), 0);
    // When the path is back, a new IKE SA and a fresh MKT replace the old
    // ones without an operator.
    sim.partitioned = false;
    assert!(sim.run_until(Duration::from_secs(400), Sim::settled));
    let new = {
        let s = &sim.nodes[0].ep.peers()[0].sas[0];
        (s.spi_i, s.spi_r)
    };
    assert_ne!(new, old);
    assert_ne!(
        (sim.mkts(0)[0].mkt.send_id, sim.mkts(0)[0].mkt.recv_id),
        (mkts[0][0].mkt.send_id, mkts[0][0].mkt.recv_id)
    );
    for (i, before) in mkts.iter().enumerate() {
        assert!(sim.nodes[i].events.iter().any(|e| matches!(e,
            Event::MktSuperseded { send_id, .. } if *send_id == before[0].mkt.send_id)));
    }
}

#[test]
fn traffic_on_the_ike_sa_postpones_the_liveness_check() {
    // MKT rekeys every 18-20 s keep the IKE SA busy: a 30 s liveness check
    // is never due, so the run sends exactly what it sends without checks.
    let run = |liveness: Option<u64>| {
        let (mut ca, mut cb) = configs(liveness, true);
        for c in [&mut ca, &mut cb] {
            std::sync::Arc::make_mut(&mut c.peers[0].lifetimes).rekey = Duration::from_secs(20);
            std::sync::Arc::make_mut(&mut c.peers[0].lifetimes).hard = Duration::from_secs(60);
            std::sync::Arc::make_mut(&mut c.peers[0].lifetimes).jitter = Duration::from_secs(2);
            std::sync::Arc::make_mut(&mut c.peers[0].lifetimes).overlap = Duration::from_secs(5);
        }
        let mut sim = Sim::pair_with(73, NetParams::default(), ca, cb);
        assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
        sim.run_for(Duration::from_secs(300));
        sim.sent
            .iter()
            .map(|(i, _, d)| (*i, d.len()))
            .collect::<Vec<_>>()
    };
    let with = run(Some(30));
    assert!(with.len() > 60, "{} datagrams", with.len());
    assert_eq!(with, run(None));
    // With a check interval shorter than the rekeys, checks are sent.
    assert!(run(Some(10)).len() > with.len());
}
