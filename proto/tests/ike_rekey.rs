//! Rekeying the IKE SA on a virtual clock (RFC 7296 1.3.2, 2.18): the MKTs
//! are inherited untouched, later exchanges run on the new SA, the old one
//! is deleted, simultaneous rekeys leave one IKE SA (2.8.2), and exchange
//! collisions are answered with TEMPORARY_FAILURE (2.25).

mod harness;

use std::time::Duration;

use aokd_proto::ike::{Event, IkeError, Lifetimes, NegotiationError, PeerConfig, Role};
use aokd_proto::numbers::NotifyType;
use aokd_proto::wire;
use harness::{peer, NetParams, Sim, A_ADDR, B_ADDR};

const PSK: &[u8] = b"ike rekey test key";

fn lifetimes(ike_rekey: Option<u64>) -> Lifetimes {
    Lifetimes {
        ike_rekey: ike_rekey.map(Duration::from_secs),
        rekey: Duration::from_secs(300),
        hard: Duration::from_secs(400),
        jitter: Duration::from_secs(10),
        overlap: Duration::from_secs(5),
        pfs: false,
    }
}

fn pair(
    seed: u64,
    net: NetParams,
    fa: impl Fn(&mut PeerConfig),
    fb: impl Fn(&mut PeerConfig),
) -> Sim {
    Sim::pair_of(seed, net, PSK, fa, fb)
}

/// A pair on a perfect network whose IKE SAs do not rekey by themselves
/// (the test rekeys them), once settled.
fn settled_pair(seed: u64) -> Sim {
    let mut sim = pair(
        seed,
        NetParams::default(),
        |p| *std::sync::Arc::make_mut(&mut p.lifetimes) = lifetimes(None),
        |p| *std::sync::Arc::make_mut(&mut p.lifetimes) = lifetimes(None),
    );
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    sim
}

/// SPIs of node `i`'s established IKE SAs.
fn established_spis(sim: &Sim, i: usize) -> Vec<(u64, u64)> {
    sim.nodes[i].ep.peers()[0]
        .sas
        .iter()
        .filter(|s| s.state == "established")
        .map(|s| (s.spi_i, s.spi_r))
        .collect()
}

/// Both sides hold exactly one established IKE SA, the same one.
fn one_common_sa(sim: &Sim) -> bool {
    let (a, b) = (established_spis(sim, 0), established_spis(sim, 1));
    a.len() == 1 && a == b
}

/// (SPIi, SPIr) of an IKE SA.
type Spis = (u64, u64);

/// (old, new, role) of every IkeSaRekeyed event of node `i`.
fn rekeys(sim: &Sim, i: usize) -> Vec<(Spis, Spis, Role)> {
    sim.nodes[i]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::IkeSaRekeyed {
                old_spi_i,
                old_spi_r,
                spi_i,
                spi_r,
                role,
                ..
            } => Some(((*old_spi_i, *old_spi_r), (*spi_i, *spi_r), *role)),
            _ => None,
        })
        .collect()
}

fn count(sim: &Sim, i: usize, f: impl Fn(&Event) -> bool) -> usize {
    sim.nodes[i].events.iter().filter(|e| f(e)).count()
}

/// No IKE SA was lost or failed: every deletion was a rekey's.
fn assert_no_failure(sim: &Sim, what: &str) {
    for i in 0..2 {
        for e in &sim.nodes[i].events {
            match e {
                Event::IkeSaDeleted { reason, .. } => {
                    assert_eq!(reason, "rekeyed", "{what}: node {i}: {e:?}")
                }
                Event::NegotiationFailed { .. } => panic!("{what}: node {i}: {e:?}"),
                _ => {}
            }
        }
    }
}

#[test]
fn rfc7296_2_18_ike_sa_rekey_keeps_mkts_and_moves_exchanges_to_the_new_sa() {
    let mut sim = pair(
        51,
        NetParams::default(),
        |p| *std::sync::Arc::make_mut(&mut p.lifetimes) = lifetimes(Some(200)),
        |p| *std::sync::Arc::make_mut(&mut p.lifetimes) = lifetimes(None),
    );
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    let established = sim.now;
    let old = established_spis(&sim, 0)[0];
    // A shows when it will rekey; B (no ike_rekey) never does.
    let a_rekey_at = sim.nodes[0].ep.peers()[0].sas[0].rekey_at.unwrap();
    assert!(a_rekey_at > established && a_rekey_at <= established + Duration::from_secs(200));
    assert_eq!(sim.nodes[1].ep.peers()[0].sas[0].rekey_at, None);
    assert_eq!(established_spis(&sim, 1), vec![old]);
    let mkts_before = [sim.mkts(0), sim.mkts(1)];

    // A (and only A: B has no ike_rekey) rekeys at 200 s minus up to 10%.
    for t in 0..200 {
        sim.run_for(Duration::from_secs(1));
        assert!(sim.common_mkt(), "no MKT in common at t+{t}s");
        if !rekeys(&sim, 0).is_empty() {
            break;
        }
    }
    let at = sim.now - established;
    assert!(
        (Duration::from_secs(179)..=Duration::from_secs(201)).contains(&at),
        "rekeyed after {at:?}"
    );
    sim.run_checking_continuity(5, "after the rekey");
    let (a, b) = (rekeys(&sim, 0), rekeys(&sim, 1));
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(b.len(), 1, "{b:?}");
    let new = a[0].1;
    assert_eq!(a[0], (old, new, Role::Initiator));
    assert_eq!(b[0], (old, new, Role::Responder));
    assert_ne!(new.0, old.0);
    assert_ne!(new.1, old.1);
    // One IKE SA each, the new one; the old one is gone on both sides.
    for i in 0..2 {
        assert_eq!(established_spis(&sim, i), vec![new], "node {i}");
        assert_eq!(sim.nodes[i].ep.peers()[0].sas.len(), 1, "node {i}");
        assert_eq!(
            count(
                &sim,
                i,
                |e| matches!(e, Event::IkeSaDeleted { spi_i, spi_r, reason, .. }
                if (*spi_i, *spi_r) == old && reason == "rekeyed")
            ),
            1,
            "node {i}"
        );
    }
    // The MKTs were not touched: same KeyIDs, keys and timers, nothing deleted.
    for (i, before) in mkts_before.iter().enumerate() {
        let after = sim.mkts(i);
        assert_eq!(after.len(), before.len());
        for (x, y) in before.iter().zip(&after) {
            assert_eq!(
                (x.mkt.send_id, x.mkt.recv_id, x.mkt.fingerprint()),
                (y.mkt.send_id, y.mkt.recv_id, y.mkt.fingerprint())
            );
            assert_eq!(
                (x.created_at, x.rekey_at, x.expires_at, x.retire_at),
                (y.created_at, y.rekey_at, y.expires_at, y.retire_at)
            );
        }
        assert_eq!(count(&sim, i, |e| matches!(e, Event::MktDeleted { .. })), 0);
    }
    // Nothing is sent on the old SA any more.
    let mark = sim.sent.len();
    // The next MKT rekey (300 s minus jitter after creation) runs on the new SA.
    sim.run_checking_continuity(150, "MKT rekey");
    let on_old = sim.sent[mark..]
        .iter()
        .filter_map(|(_, _, d)| wire::parse_message(d).ok())
        .filter(|m| (m.header.spi_i, m.header.spi_r) == old)
        .count();
    assert_eq!(on_old, 0);
    let newest = sim
        .mkts(0)
        .into_iter()
        .max_by_key(|m| m.created_at)
        .unwrap();
    assert!(newest.created_at > mkts_before[0][0].created_at);
    assert_eq!((newest.spi_i, newest.spi_r), new);
    assert!(one_common_sa(&sim));
    assert_no_failure(&sim, "seed 51");
}

#[test]
fn both_sides_rekey_the_ike_sa_over_and_over() {
    for seed in 0..20 {
        let mut sim = pair(
            seed,
            NetParams::jitter(20),
            |p| *std::sync::Arc::make_mut(&mut p.lifetimes) = lifetimes(Some(100)),
            |p| *std::sync::Arc::make_mut(&mut p.lifetimes) = lifetimes(Some(100)),
        );
        assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
        sim.run_checking_continuity(1000, &format!("seed {seed}"));
        // About one rekey every 90-100 s, whoever comes first.
        let a = rekeys(&sim, 0);
        assert!(
            (9..=12).contains(&a.len()),
            "seed {seed}: {} rekeys",
            a.len()
        );
        // Chained: each rekey replaces the SA the previous one created.
        for w in a.windows(2) {
            assert_eq!(w[0].1, w[1].0, "seed {seed}");
        }
        assert!(sim.run_until(Duration::from_secs(10), one_common_sa));
        assert_no_failure(&sim, &format!("seed {seed}"));
        // MKT rekeys went on meanwhile, on whatever IKE SA was current.
        assert!(count(&sim, 0, |e| matches!(e, Event::MktCreated { .. })) >= 4);
    }
}

#[test]
fn rfc7296_2_8_2_simultaneous_ike_rekey_leaves_one_ike_sa() {
    let (mut detected, mut undetected) = (0, 0);
    for seed in 0..100 {
        let mut sim = pair(
            seed,
            NetParams::jitter(20),
            |p| *std::sync::Arc::make_mut(&mut p.lifetimes) = lifetimes(None),
            |p| *std::sync::Arc::make_mut(&mut p.lifetimes) = lifetimes(None),
        );
        assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
        let old = established_spis(&sim, 0)[0];
        // Both sides start a rekey of the IKE SA, B up to 4 ms before A
        // (the network takes 5-25 ms): at once, or while B's request is
        // in flight.
        let now = sim.now;
        assert!(sim.nodes[1].ep.rekey_ike("a", now).unwrap());
        sim.run_for(Duration::from_millis(seed % 5));
        let now = sim.now;
        assert!(sim.nodes[0].ep.rekey_ike("b", now).unwrap());
        sim.run_checking_continuity(60, &format!("seed {seed}"));
        assert!(
            one_common_sa(&sim),
            "seed {seed}: {:?} {:?}",
            established_spis(&sim, 0),
            established_spis(&sim, 1)
        );
        let new = established_spis(&sim, 0)[0];
        assert_ne!(new, old, "seed {seed}");
        // Nothing else is left: no old, redundant or waiting SA.
        for i in 0..2 {
            let sas = &sim.nodes[i].ep.peers()[0].sas;
            assert_eq!(sas.len(), 1, "seed {seed}: node {i}: {sas:?}");
            // Each side announced exactly the survivor, once.
            let r = rekeys(&sim, i);
            assert_eq!(r.len(), 1, "seed {seed}: node {i}: {r:?}");
            assert_eq!((r[0].0, r[0].1), (old, new), "seed {seed}: node {i}");
        }
        // The survivor's initiator is the same from both points of view.
        assert_ne!(rekeys(&sim, 0)[0].2, rekeys(&sim, 1)[0].2, "seed {seed}");
        let collisions = |i: usize| {
            sim.nodes[i]
                .events
                .iter()
                .filter_map(|e| match e {
                    Event::IkeRekeyCollision { kept_ours, .. } => Some(*kept_ours),
                    _ => None,
                })
                .collect::<Vec<bool>>()
        };
        let (ca, cb) = (collisions(0), collisions(1));
        if !ca.is_empty() && !cb.is_empty() {
            // Both noticed: they kept the same SA, one its own, one the peer's.
            assert_eq!((ca.len(), cb.len()), (1, 1), "seed {seed}");
            assert_ne!(ca, cb, "seed {seed}");
            detected += 1;
        } else {
            // One side finished first and the other learned it from the
            // Delete of the old SA (forgetting its own rekey, 2.25.2) or
            // from TEMPORARY_FAILURE for its late request (2.8.2): the
            // first side's SA survived.
            let late = if ca.is_empty() { &cb } else { &ca };
            assert_eq!(late, &vec![false], "seed {seed}");
            undetected += 1;
        }
        assert_no_failure(&sim, &format!("seed {seed}"));
        // The survivor works: an MKT rekey on it completes.
        let now = sim.now;
        let before = count(&sim, 0, |e| matches!(e, Event::MktCreated { .. }));
        assert!(sim.nodes[0].ep.rekey("b", now).unwrap());
        sim.run_for(Duration::from_secs(2));
        assert_eq!(
            count(&sim, 0, |e| matches!(e, Event::MktCreated { .. })),
            before + 1,
            "seed {seed}"
        );
        let newest = sim
            .mkts(0)
            .into_iter()
            .max_by_key(|m| m.created_at)
            .unwrap();
        assert_eq!((newest.spi_i, newest.spi_r), new, "seed {seed}");
    }
    eprintln!("{detected} collisions noticed by both sides, {undetected} by one");
    assert!(detected >= 10, "{detected} collisions noticed by both");
    assert!(
        undetected >= 5,
        "{undetected} collisions noticed by one side"
    );
}

#[test]
fn rfc7296_2_8_2_late_rekey_request_gets_temporary_failure_and_the_peers_sa_survives() {
    let mut sim = settled_pair(62);
    let old = established_spis(&sim, 0)[0];
    // Both rekey at once, but A's request takes 13 ms instead of 5: B has
    // finished its own rekey when it arrives (and, its Delete of the old
    // SA being slow too, still holds the old SA).
    sim.extra_delay[0].push_back(Duration::from_millis(8));
    sim.extra_delay[1].extend([Duration::ZERO, Duration::from_millis(20)]);
    let now = sim.now;
    assert!(sim.nodes[0].ep.rekey_ike("b", now).unwrap());
    assert!(sim.nodes[1].ep.rekey_ike("a", now).unwrap());
    // A adopted B's SA on the TEMPORARY_FAILURE answer (18 ms), before
    // B's Delete of the old SA (35 ms) arrived.
    sim.run_for(Duration::from_millis(25));
    assert_eq!(rekeys(&sim, 0).len(), 1);
    let states: Vec<((u64, u64), &str)> = sim.nodes[0].ep.peers()[0]
        .sas
        .iter()
        .map(|s| ((s.spi_i, s.spi_r), s.state))
        .collect();
    assert!(states.contains(&(old, "rekeyed")), "{states:?}");
    sim.run_checking_continuity(60, "late request");
    // B refused A's late request; A's rekey failed with TEMPORARY_FAILURE
    // and it adopted the SA that B's rekey created.
    assert_eq!(
        count(&sim, 0, |e| matches!(
            e,
            Event::IkeRekeyCollision {
                kept_ours: false,
                ..
            }
        )),
        1
    );
    assert_eq!(
        count(&sim, 1, |e| matches!(e, Event::IkeRekeyCollision { .. })),
        0
    );
    assert!(one_common_sa(&sim));
    let (a, b) = (rekeys(&sim, 0), rekeys(&sim, 1));
    assert_eq!(a.len(), 1);
    assert_eq!(b.len(), 1);
    assert_eq!((a[0].0, a[0].1, a[0].2), (old, b[0].1, Role::Responder));
    assert_eq!(b[0].2, Role::Initiator);
    for i in 0..2 {
        assert_eq!(sim.nodes[i].ep.peers()[0].sas.len(), 1);
    }
    assert_no_failure(&sim, "late request");
}

#[test]
fn rfc7296_2_25_ike_rekey_and_mkt_rekey_crossing_are_refused_then_retried() {
    let mut sim = settled_pair(61);
    let old = established_spis(&sim, 0)[0];
    // A rekeys the MKT while B rekeys the IKE SA: the requests cross.
    let now = sim.now;
    assert!(sim.nodes[0].ep.rekey("b", now).unwrap());
    assert!(sim.nodes[1].ep.rekey_ike("a", now).unwrap());
    sim.run_for(Duration::from_secs(1));
    // Each refused the other's request (2.25.1, 2.25.2).
    assert!(sim.nodes[1].events.iter().any(|e| matches!(
        e,
        Event::IkeRekeyFailed {
            error: IkeError::Negotiation(NegotiationError::PeerReported(
                NotifyType::TEMPORARY_FAILURE
            )),
            by_peer: true,
            ..
        }
    )));
    assert!(sim.nodes[0].events.iter().any(|e| matches!(
        e,
        Event::ChildFailed {
            error: IkeError::Negotiation(NegotiationError::PeerReported(
                NotifyType::TEMPORARY_FAILURE
            )),
            by_peer: true,
            ..
        }
    )));
    assert_eq!(established_spis(&sim, 0), vec![old]);
    // Not again at once (2.25), but both succeed within retry_interval.
    let created = count(&sim, 0, |e| matches!(e, Event::MktCreated { .. }));
    sim.run_for(Duration::from_secs(10));
    assert!(rekeys(&sim, 1).is_empty());
    sim.run_checking_continuity(30, "retry");
    assert_eq!(rekeys(&sim, 0).len(), 1);
    assert_eq!(rekeys(&sim, 1).len(), 1);
    assert!(count(&sim, 0, |e| matches!(e, Event::MktCreated { .. })) > created);
    assert!(one_common_sa(&sim));
    assert_ne!(established_spis(&sim, 0)[0], old);
    assert_no_failure(&sim, "crossing");
}

#[test]
fn an_unanswered_ike_rekey_is_given_up_like_any_request() {
    let mut sim = settled_pair(63);
    let mkts = sim.mkts(0);
    sim.partitioned = true;
    let start = sim.now;
    let mark = sim.sent.len();
    assert!(sim.nodes[0].ep.rekey_ike("b", start).unwrap());
    assert_eq!(sim.nodes[0].ep.peers()[0].sas[0].rekey_at, None);
    let gone = |s: &Sim| {
        s.nodes[0].events.iter().any(|e| {
            matches!(e, Event::IkeSaDeleted { reason, .. }
                if reason == "peer unreachable (no answer to a request)")
        })
    };
    assert!(sim.run_until(Duration::from_secs(200), gone));
    // Retransmitted on the usual schedule, then given up (165.5 s).
    assert_eq!(sim.now - start, Duration::from_millis(165_500));
    let sent = sim.requests_since(mark, 0);
    assert_eq!(sent.len(), 20, "{sent:?}");
    assert!(sent.iter().all(|r| *r == sent[0]));
    assert!(rekeys(&sim, 0).is_empty());
    assert_eq!(sim.established(0), 0);
    // The MKTs stay.
    assert_eq!(
        sim.mkts(0)
            .iter()
            .map(|m| m.mkt.fingerprint())
            .collect::<Vec<_>>(),
        mkts.iter().map(|m| m.mkt.fingerprint()).collect::<Vec<_>>()
    );
}

#[test]
fn ike_rekey_under_30_percent_loss_keeps_one_ike_sa_and_the_mkts() {
    for seed in 0..30 {
        let mut sim = pair(
            seed,
            NetParams::LOSSY,
            |p| {
                *std::sync::Arc::make_mut(&mut p.lifetimes) = Lifetimes {
                    overlap: Duration::from_secs(200),
                    hard: Duration::from_secs(600),
                    ..lifetimes(Some(120))
                }
            },
            |p| {
                *std::sync::Arc::make_mut(&mut p.lifetimes) = Lifetimes {
                    overlap: Duration::from_secs(200),
                    hard: Duration::from_secs(600),
                    ..lifetimes(Some(120))
                }
            },
        );
        assert!(
            sim.run_until(Duration::from_secs(400), Sim::settled),
            "seed {seed}"
        );
        sim.run_checking_continuity(1500, &format!("seed {seed}"));
        assert!(rekeys(&sim, 0).len() >= 10, "seed {seed}");
        assert!(
            sim.run_until(Duration::from_secs(100), one_common_sa),
            "seed {seed}: {:?} {:?}",
            established_spis(&sim, 0),
            established_spis(&sim, 1)
        );
        assert_no_failure(&sim, &format!("seed {seed}"));
    }
}

/// Any MKT pair with mirrored KeyIDs has the same key on both sides.
fn no_key_mismatch(sim: &Sim) -> bool {
    let (a, b) = (sim.mkts(0), sim.mkts(1));
    a.iter().all(|x| {
        b.iter()
            .filter(|y| x.mkt.send_id == y.mkt.recv_id && x.mkt.recv_id == y.mkt.send_id)
            .all(|y| x.mkt.master_key.as_bytes() == y.mkt.master_key.as_bytes())
    })
}

/// Chaos: IKE SA and MKT rekeys on timers and by hand (often both sides at
/// once), PFS or not, 20% loss with duplicates and reordering, partitions
/// of up to 250 s (beyond liveness detection), and restarts of B (with its
/// KeyIDs reserved, as the daemon does). Whatever happened, mirrored
/// KeyIDs never carry different keys, and once the network is quiet the
/// two sides end with one common IKE SA and a common MKT.
#[test]
fn rekeys_liveness_and_partitions_converge_to_one_ike_sa_and_a_common_mkt() {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    for seed in 0..100u64 {
        let short = |p: &mut PeerConfig| {
            *std::sync::Arc::make_mut(&mut p.lifetimes) = Lifetimes {
                ike_rekey: Some(Duration::from_secs(60)),
                rekey: Duration::from_secs(45),
                hard: Duration::from_secs(120),
                jitter: Duration::from_secs(5),
                overlap: Duration::from_secs(10),
                pfs: seed % 2 == 0,
            }
        };
        let mut sim = pair(
            seed,
            NetParams {
                loss_pct: 20,
                dup_pct: 10,
                jitter_ms: 30,
            },
            short,
            short,
        );
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
        for _ in 0..10 {
            // Operator rekeys at random moments on either side, often at
            // once: collisions of every kind.
            for _ in 0..(rng.next_u64() % 4) {
                sim.run_for(Duration::from_millis(rng.next_u64() % 30_000));
                let now = sim.now;
                let ike = rng.next_u64() % 2 == 0;
                let who = match rng.next_u64() % 3 {
                    0 => vec![0],
                    1 => vec![1],
                    _ => vec![0, 1],
                };
                for i in who {
                    let name = if i == 0 { "b" } else { "a" };
                    if ike {
                        sim.nodes[i].ep.rekey_ike(name, now).unwrap();
                    } else {
                        sim.nodes[i].ep.rekey(name, now).unwrap();
                    }
                }
            }
            if rng.next_u64() % 5 == 0 {
                // B restarts, keeping only its KeyIDs (as the daemon does).
                let old = sim.mkts(1);
                let mut cfg = peer("a", B_ADDR, A_ADDR, PSK);
                short(&mut cfg);
                sim.restart(
                    1,
                    aokd_proto::ike::EndpointConfig::new(vec![cfg]),
                    rng.next_u64(),
                );
                for m in old {
                    sim.nodes[1]
                        .ep
                        .reserve_key_ids("a", m.mkt.send_id, m.mkt.recv_id, m.expires_at)
                        .unwrap();
                }
            }
            sim.run_for(Duration::from_secs(100 + rng.next_u64() % 300));
            assert!(no_key_mismatch(&sim), "seed {seed}");
            sim.partitioned = true;
            sim.run_for(Duration::from_secs(rng.next_u64() % 250));
            sim.partitioned = false;
        }
        let ok = sim.run_until(Duration::from_secs(600), |s| {
            one_common_sa(s) && s.common_mkt()
        });
        assert!(
            ok,
            "seed {seed}: {:?} {:?}",
            established_spis(&sim, 0),
            established_spis(&sim, 1)
        );
        assert!(no_key_mismatch(&sim), "seed {seed}");
    }
}
