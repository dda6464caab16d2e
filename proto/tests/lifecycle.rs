//! The MKT lifecycle on a virtual clock: rekeying with jitter, the
//! simultaneous-rekey rule of RFC 7296 2.8.1, rekeying under loss, and the
//! hard lifetime when the peer disappears.

mod harness;

use std::time::Duration;

use aokd_proto::ike::{Event, Lifetimes, PeerConfig};
use harness::{NetParams, Sim};

const PSK: &[u8] = b"lifecycle test key";

fn short(jitter_s: u64) -> Lifetimes {
    Lifetimes {
        ike_rekey: Lifetimes::default().ike_rekey,
        rekey: Duration::from_secs(100),
        hard: Duration::from_secs(130),
        jitter: Duration::from_secs(jitter_s),
        overlap: Duration::from_secs(5),
        pfs: false,
    }
}

fn pair_with(seed: u64, net: NetParams, f: impl Fn(&mut PeerConfig)) -> Sim {
    Sim::pair_of(seed, net, PSK, &f, &f)
}

fn created(sim: &Sim, i: usize) -> usize {
    sim.nodes[i]
        .events
        .iter()
        .filter(|e| matches!(e, Event::MktCreated { .. }))
        .count()
}

fn expired(sim: &Sim, i: usize) -> usize {
    sim.nodes[i]
        .events
        .iter()
        .filter(
            |e| matches!(e, Event::MktDeleted { reason, .. } if *reason == "hard lifetime expired"),
        )
        .count()
}

#[test]
fn rfc7296_2_8_rekeys_on_schedule_with_jitter_and_no_gap() {
    let mut sim = pair_with(21, NetParams::default(), |p| {
        *std::sync::Arc::make_mut(&mut p.lifetimes) = short(10)
    });
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    let mut births = Vec::new();
    let mut seen = created(&sim, 0);
    for t in 0..1000u64 {
        sim.run_for(Duration::from_secs(1));
        assert!(sim.common_mkt(), "no MKT in common at t+{t}s");
        let now = created(&sim, 0);
        if now > seen {
            births.push(t);
            seen = now;
        }
    }
    // rekey = 100 s minus up to 10 s of jitter, drawn anew for every MKT.
    let gaps: Vec<u64> = births.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| (89..=101).contains(g)),
        "gaps between rekeys: {gaps:?}"
    );
    assert!(gaps.iter().any(|g| *g < 99), "no jitter visible: {gaps:?}");
    // 1000 s at one rekey every 90-100 s: 10 or 11 successors, never a hard expiry.
    let total = created(&sim, 0);
    assert!((10..=12).contains(&total), "A saw {total} MKTs created");
    assert_eq!(expired(&sim, 0) + expired(&sim, 1), 0);
    // The superseded MKTs were deleted: at most the current one and one in overlap.
    assert!(sim.mkts(0).len() <= 2 && sim.mkts(1).len() <= 2);
}

/// The reasons of the MKTs node `i` deleted.
fn deleted(sim: &Sim, i: usize) -> Vec<&'static str> {
    sim.nodes[i]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::MktDeleted { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

/// Rekeys with jitter and no collision: the side that rekeyed deletes the
/// old MKT as "rekeyed", never as "redundant after a rekey collision"
/// (which an MKT that was itself a rekey by this side used to be called);
/// while both MKTs exist the old one reads as replaced on both sides, on
/// the side that answered the rekey too (before the Delete, with no
/// retirement time of its own); and the negotiation counters agree with
/// the events.
#[test]
fn plain_rekeys_are_rekeyed_not_collisions_and_the_old_mkt_reads_replaced_on_both_sides() {
    let mut sim = pair_with(21, NetParams::default(), |p| {
        *std::sync::Arc::make_mut(&mut p.lifetimes) = short(10)
    });
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    let mut replaced_before_delete = [0u32; 2];
    for t in 0..1000u64 {
        sim.run_for(Duration::from_millis(500));
        for (i, seen) in replaced_before_delete.iter_mut().enumerate() {
            let v = sim.mkts(i);
            if v.len() < 2 {
                continue;
            }
            assert_eq!(v.len(), 2, "t+{t}: node {i}: {:?}", sim.ids(i));
            let (old, new) = if v[0].created_at < v[1].created_at {
                (&v[0], &v[1])
            } else {
                (&v[1], &v[0])
            };
            assert!(old.replaced, "t+{t}: node {i}: old MKT not replaced");
            assert!(!new.replaced, "t+{t}: node {i}: new MKT replaced");
            if old.retire_at.is_none() {
                *seen += 1;
            }
        }
    }
    assert!(
        replaced_before_delete.iter().sum::<u32>() > 0,
        "never saw the answering side between the rekey and the Delete"
    );
    for i in 0..2 {
        let collisions = sim.nodes[i]
            .events
            .iter()
            .filter(|e| matches!(e, Event::RekeyCollision { .. }))
            .count();
        assert_eq!(collisions, 0, "node {i}");
        let reasons = deleted(&sim, i);
        assert!(
            !reasons.contains(&"redundant after a rekey collision"),
            "node {i}: {reasons:?}"
        );
        let c = sim.nodes[i].ep.negotiation_counters();
        let made = created(&sim, i) as u64;
        assert!(made >= 3, "node {i}: only {made} MKTs");
        assert_eq!(c.mkts_created, made, "node {i}");
        assert_eq!(c.mkt_rekeys, made - 1, "node {i}");
        assert_eq!(c.ike_sas_established, 1, "node {i}");
        assert_eq!(c.mkt_failures.total() + c.ike_sa_failures.total(), 0);
        assert_eq!(c.mkt_rekey_collisions, 0);
    }
    // Each rekey's initiator deleted the old MKT as rekeyed after the
    // overlap, the other side as deleted by the peer: one "rekeyed" for
    // every rekey (the last one's overlap may not be over yet).
    let rekeyed = deleted(&sim, 0)
        .iter()
        .chain(deleted(&sim, 1).iter())
        .filter(|r| **r == "rekeyed")
        .count() as u64;
    let rekeys = sim.nodes[0].ep.negotiation_counters().mkt_rekeys;
    assert!(
        rekeyed == rekeys || rekeyed + 1 == rekeys,
        "{rekeyed} rekeyed of {rekeys}: A {:?} B {:?}",
        deleted(&sim, 0),
        deleted(&sim, 1)
    );
}

#[test]
fn rfc7296_2_8_1_simultaneous_rekey_leaves_one_mkt() {
    // No jitter and identical lifetimes: both sides rekey at the same instant.
    let mut collisions = 0;
    for seed in 0..50 {
        let mut sim = pair_with(seed, NetParams::jitter(20), |p| {
            *std::sync::Arc::make_mut(&mut p.lifetimes) = short(0)
        });
        assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
        sim.run_checking_continuity(120, &format!("seed {seed}"));
        // After the overlap, exactly one MKT each, the same one.
        assert_eq!(sim.mkts(0).len(), 1, "seed {seed}: A {:?}", sim.ids(0));
        assert_eq!(sim.mkts(1).len(), 1, "seed {seed}: B {:?}", sim.ids(1));
        assert!(sim.common_mkt(), "seed {seed}");
        let seen = |i: usize| {
            sim.nodes[i]
                .events
                .iter()
                .filter_map(|e| match e {
                    Event::RekeyCollision { kept_ours, .. } => Some(*kept_ours),
                    _ => None,
                })
                .collect::<Vec<bool>>()
        };
        let (a, b) = (seen(0), seen(1));
        for i in 0..2 {
            let c = sim.nodes[i].ep.negotiation_counters();
            assert_eq!(c.mkt_rekey_collisions, seen(i).len() as u64, "seed {seed}");
            // The redundant successor is deleted as such only after a collision.
            let redundant = deleted(&sim, i)
                .iter()
                .filter(|r| **r == "redundant after a rekey collision")
                .count();
            assert!(redundant <= seen(i).len(), "seed {seed}: node {i}");
        }
        if !a.is_empty() {
            collisions += 1;
            // Both sides saw it and kept the same MKT: one kept its own, the other the peer's.
            assert_eq!(a.len(), b.len(), "seed {seed}");
            assert_ne!(a[0], b[0], "seed {seed}");
        }
    }
    assert!(collisions >= 10, "only {collisions} of 50 runs collided");
}

#[test]
fn rekey_under_30_percent_loss_keeps_a_common_mkt() {
    for seed in 0..100 {
        let mut sim = pair_with(seed, NetParams::LOSSY, |p| {
            *std::sync::Arc::make_mut(&mut p.lifetimes) = Lifetimes {
                ike_rekey: Lifetimes::default().ike_rekey,
                rekey: Duration::from_secs(300),
                hard: Duration::from_secs(600),
                jitter: Duration::from_secs(30),
                overlap: Duration::from_secs(200),
                pfs: true,
            };
        });
        assert!(
            sim.run_until(Duration::from_secs(400), Sim::settled),
            "seed {seed}"
        );
        sim.run_checking_continuity(1500, &format!("seed {seed}"));
        assert_eq!(expired(&sim, 0) + expired(&sim, 1), 0, "seed {seed}");
        assert!(
            created(&sim, 0) >= 5,
            "seed {seed}: {} MKTs",
            created(&sim, 0)
        );
    }
}

#[test]
fn hard_lifetime_ends_an_mkt_when_the_peer_is_gone_and_recovery_needs_no_operator() {
    let mut sim = pair_with(31, NetParams::default(), |p| {
        *std::sync::Arc::make_mut(&mut p.lifetimes) = short(10);
    });
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    sim.partitioned = true;
    sim.run_for(Duration::from_secs(200));
    assert!(sim.mkts(0).is_empty(), "A still holds {:?}", sim.ids(0));
    assert!(expired(&sim, 0) >= 1);
    sim.partitioned = false;
    assert!(
        sim.run_until(Duration::from_secs(400), Sim::common_mkt),
        "no new MKT after the partition"
    );
}
