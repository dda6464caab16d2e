//! A peer that restarts: KeyID reservations for keys that outlive the
//! daemon on live sockets, INITIAL_CONTACT (RFC 7296 2.4), and
//! CHILD_SA_NOT_FOUND for an MKT the peer no longer holds (RFC 7296 2.25).

mod harness;

use std::time::Duration;

use aokd_proto::ike::{EndpointConfig, Event, IkeError, Lifetimes, NegotiationError, PeerConfig};
use aokd_proto::numbers::{ExchangeType, NotifyType};
use harness::{peer, NetParams, Sim, A_ADDR, B_ADDR};

const PSK: &[u8] = b"restart test key";

fn child_refusals(sim: &Sim, i: usize) -> usize {
    sim.nodes[i]
        .events
        .iter()
        .filter(|e| {
            matches!(e, Event::ChildFailed { error, .. }
                if error.notify() == Some(NotifyType::NO_PROPOSAL_CHOSEN))
        })
        .count()
}

#[test]
fn reserved_recv_ids_are_not_allocated_until_the_reservation_ends() {
    let mut sim = Sim::pair_of(41, NetParams::default(), PSK, |_| {}, |_| {});
    let until = sim.now + Duration::from_secs(300);
    // Every RecvID but 239 (SendID 250 is in the guard range: no peer uses it).
    for r in 0..=238u8 {
        sim.nodes[0].ep.reserve_key_ids("b", 250, r, until).unwrap();
    }
    assert_eq!(sim.nodes[0].ep.peers()[0].reservations.len(), 239);
    assert!(matches!(
        sim.nodes[0].ep.reserve_key_ids("nobody", 1, 1, until),
        Err(IkeError::Misuse(_))
    ));
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    assert_eq!(sim.mkts(0)[0].mkt.recv_id, 239);
    // A rekey before the end still has nothing else to choose from: no MKT.
    let now = sim.now;
    assert!(sim.nodes[0].ep.rekey("b", now).unwrap());
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.mkts(0).len(), 1, "{:?}", sim.mkts(0));
    assert!(sim.nodes[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::ChildFailed { error, .. }
            if error.to_string().contains("no free KeyID"))));
    // After the reservations end they are gone, and the IDs are free again.
    sim.run_until(Duration::from_secs(400), |s| s.now >= until);
    sim.run_for(Duration::from_secs(1));
    assert!(sim.nodes[0].ep.peers()[0].reservations.is_empty());
    let now = sim.now;
    assert!(sim.nodes[0].ep.rekey("b", now).unwrap());
    assert!(sim.run_until(Duration::from_secs(5), |s| s.mkts(0).len() == 2));
    let newest = sim
        .mkts(0)
        .into_iter()
        .max_by_key(|m| m.created_at)
        .unwrap();
    assert!(newest.mkt.recv_id < 239, "{}", newest.mkt.recv_id);
}

#[test]
fn a_reserved_send_id_chosen_by_the_peer_is_refused_in_both_roles() {
    // A responds: B's proposal (its RecvID, A's SendID) hits a reservation.
    let mut a = peer("b", A_ADDR, B_ADDR, PSK);
    a.initiate = false;
    let mut sim = Sim::pair(42, NetParams::default(), a, peer("a", B_ADDR, A_ADDR, PSK));
    let until = sim.now + Duration::from_secs(100);
    for s in 0..=239u8 {
        // RecvID 240 is in the guard range: it takes nothing from allocation.
        sim.nodes[0].ep.reserve_key_ids("b", s, 240, until).unwrap();
    }
    sim.run_for(Duration::from_secs(99));
    assert_eq!(sim.established(0), 1);
    assert!(sim.mkts(0).is_empty() && sim.mkts(1).is_empty());
    // IKE_AUTH and the fresh-MKT attempts every 30 s were all refused.
    assert!(child_refusals(&sim, 0) >= 3, "{}", child_refusals(&sim, 0));
    assert!(sim.nodes[1].events.iter().any(|e| matches!(
        e,
        Event::ChildFailed {
            error: IkeError::Negotiation(NegotiationError::PeerReported(
                NotifyType::NO_PROPOSAL_CHOSEN
            )),
            by_peer: true,
            ..
        }
    )));
    // Once the reservations end, the next attempt succeeds.
    assert!(sim.run_until(Duration::from_secs(40), Sim::settled));

    // A initiates: B's reply (its RecvID, A's SendID) hits a reservation;
    // A refuses it and deletes the MKT B created.
    let mut sim = Sim::pair(43, NetParams::default(), peer("b", A_ADDR, B_ADDR, PSK), {
        let mut b = peer("a", B_ADDR, A_ADDR, PSK);
        b.initiate = false;
        b
    });
    let until = sim.now + Duration::from_secs(100);
    for s in 0..=239u8 {
        sim.nodes[0].ep.reserve_key_ids("b", s, 240, until).unwrap();
    }
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.established(0), 1);
    assert!(sim.mkts(0).is_empty());
    assert!(sim.mkts(1).is_empty(), "B kept {:?}", sim.mkts(1).len());
    assert!(sim.nodes[1].events.iter().any(|e| matches!(
        e,
        Event::MktDeleted {
            reason: "deleted by the peer",
            ..
        }
    )));
    assert!(sim.run_until(Duration::from_secs(130), Sim::settled));
    assert!(sim.now >= until);
}

fn lifetimes(rekey: u64, hard: u64) -> Lifetimes {
    Lifetimes {
        ike_rekey: None,
        rekey: Duration::from_secs(rekey),
        hard: Duration::from_secs(hard),
        jitter: Duration::ZERO,
        overlap: Duration::from_secs(5),
        pfs: false,
    }
}

fn b_config() -> PeerConfig {
    let mut b = peer("a", B_ADDR, A_ADDR, PSK);
    *std::sync::Arc::make_mut(&mut b.lifetimes) = lifetimes(3000, 3600);
    b
}

#[test]
fn rfc7296_2_4_initial_contact_after_a_restart_replaces_the_ike_sa_and_supersedes_old_mkts() {
    let mut a = peer("b", A_ADDR, B_ADDR, PSK);
    *std::sync::Arc::make_mut(&mut a.lifetimes) = lifetimes(3000, 3600);
    let mut sim = Sim::pair(44, NetParams::default(), a, b_config());
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    let a_sa = sim.nodes[0].ep.peers()[0].sas[0].clone();
    let old_sa = (a_sa.spi_i, a_sa.spi_r);
    let old_a = sim.mkts(0)[0].clone();
    let old_b = sim.mkts(1)[0].clone();

    // B restarts with nothing but the KeyIDs of its old MKT, which stays on
    // its sockets (the daemon's state file); it initiates at once.
    let mark = sim.sent.len();
    sim.restart(1, EndpointConfig::new(vec![b_config()]), 4401);
    sim.nodes[1]
        .ep
        .reserve_key_ids("a", old_b.mkt.send_id, old_b.mkt.recv_id, old_b.expires_at)
        .unwrap();
    assert!(
        sim.run_until(Duration::from_secs(10), |s| s.established(1) == 1
            && s.mkts(1).len() == 1)
    );
    let restarted = sim.now;

    // (a) A deleted its old IKE SA locally: no Delete went to the peer,
    // which could not read it; the new one is the only one.
    assert!(sim.nodes[0].events.iter().any(|e| matches!(e,
        Event::IkeSaDeleted { spi_i, spi_r, reason, .. }
            if (*spi_i, *spi_r) == old_sa && reason == "the peer restarted (INITIAL_CONTACT)")));
    let on_old = sim
        .requests_since(mark, 0)
        .into_iter()
        .filter(|(i, r, _)| (*i, *r) == old_sa)
        .count();
    assert_eq!(on_old, 0);
    assert_eq!(sim.established(0), 1);
    assert_eq!(sim.nodes[0].ep.peers()[0].sas.len(), 1);

    // (b) The fresh MKT supersedes A's old one: kept for the overlap (its
    // key is still on live sockets at both ends), not rekeyed, no Delete.
    let a_now = sim.mkts(0);
    assert_eq!(a_now.len(), 2);
    let old_view = a_now
        .iter()
        .find(|m| m.mkt.send_id == old_a.mkt.send_id && m.mkt.recv_id == old_a.mkt.recv_id)
        .expect("old MKT kept");
    assert_eq!(old_view.rekey_at, None);
    let retire_at = old_view.retire_at.expect("old MKT retiring");
    assert!(sim.nodes[0].events.iter().any(|e| matches!(e,
        Event::MktSuperseded { send_id, recv_id, retire_at: t, reason, .. }
            if (*send_id, *recv_id) == (old_a.mkt.send_id, old_a.mkt.recv_id)
                && *t == retire_at
                && *reason == "the peer restarted (INITIAL_CONTACT)")));
    assert!(sim.common_mkt());
    // The new MKT avoided the reserved KeyIDs on both sides.
    let new_b = &sim.mkts(1)[0].mkt;
    assert_ne!(new_b.recv_id, old_b.mkt.recv_id);
    assert_ne!(new_b.send_id, old_b.mkt.send_id);
    let mark = sim.sent.len();
    sim.run_until(Duration::from_secs(20), |s| s.now >= retire_at);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.mkts(0).len(), 1);
    assert!(sim.common_mkt());
    assert!(sim.nodes[0].events.iter().any(|e| matches!(e,
        Event::MktDeleted { send_id, reason: "superseded", .. } if *send_id == old_a.mkt.send_id)));
    // No INFORMATIONAL (a Delete) went out for it.
    assert!(
        !sim.requests_since(mark, 0)
            .iter()
            .any(|(_, _, x)| *x == ExchangeType::INFORMATIONAL),
        "{:?}",
        sim.requests_since(mark, 0)
    );
    assert!(sim.now - restarted < Duration::from_secs(10));
}

#[test]
fn rfc7296_2_25_child_sa_not_found_retires_the_mkt_without_delete_and_creates_a_fresh_one() {
    // B forgets its MKT at 90 s (its hard lifetime) while A rekeys it only
    // at 100 s: B answers CHILD_SA_NOT_FOUND.
    let mut a = peer("b", A_ADDR, B_ADDR, PSK);
    *std::sync::Arc::make_mut(&mut a.lifetimes) = lifetimes(100, 300);
    let mut b = peer("a", B_ADDR, A_ADDR, PSK);
    b.initiate = false;
    *std::sync::Arc::make_mut(&mut b.lifetimes) = lifetimes(1000, 90);
    // No liveness checks: every INFORMATIONAL request would be a Delete.
    let (mut ca, mut cb) = (EndpointConfig::new(vec![a]), EndpointConfig::new(vec![b]));
    ca.liveness = None;
    cb.liveness = None;
    let mut sim = Sim::pair_with(45, NetParams::default(), ca, cb);
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    let old = sim.mkts(0)[0].clone();
    assert!(sim.run_until(Duration::from_secs(95), |s| s.mkts(1).is_empty()));
    let mark = sim.sent.len();
    assert!(sim.run_until(Duration::from_secs(20), |s| s.nodes[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::MktSuperseded { .. }))));
    sim.run_for(Duration::from_secs(1));
    // A keeps the old MKT for the overlap, retiring, and no longer rekeys it;
    // the NOT_FOUND answer is not reported as a failure.
    let view = sim
        .mkts(0)
        .into_iter()
        .find(|m| m.mkt.send_id == old.mkt.send_id)
        .expect("old MKT kept for the overlap");
    assert_eq!(view.rekey_at, None);
    assert!(view.retire_at.is_some());
    assert!(sim.nodes[0].events.iter().any(|e| matches!(e,
        Event::MktSuperseded { send_id, reason, .. }
            if *send_id == old.mkt.send_id
                && *reason == "the peer no longer holds it (CHILD_SA_NOT_FOUND)")));
    assert!(!sim.nodes[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::ChildFailed { .. })));
    // A fresh MKT (no REKEY_SA) came at once: both hold it.
    assert!(sim.common_mkt());
    assert_eq!(sim.mkts(1).len(), 1);
    sim.run_for(Duration::from_secs(6));
    assert_eq!(sim.mkts(0).len(), 1);
    assert!(sim.common_mkt());
    // No Delete for the old MKT: the rekey and the fresh MKT's
    // CREATE_CHILD_SA, no INFORMATIONAL.
    let requests = sim.requests_since(mark, 0);
    assert_eq!(
        requests
            .iter()
            .filter(|(_, _, x)| *x == ExchangeType::CREATE_CHILD_SA)
            .count(),
        2,
        "{requests:?}"
    );
    let informational = sim
        .requests_since(mark, 0)
        .into_iter()
        .filter(|(_, _, x)| *x == ExchangeType::INFORMATIONAL)
        .count();
    assert_eq!(informational, 0);
}

#[test]
fn new_recv_ids_avoid_the_key_ids_of_mkts_that_ended_lately() {
    // Passed on by the driver after a restart: sixteen pairs, KeyIDs 0-31,
    // ended a moment ago (an endpoint remembers sixteen). With twenty
    // seeds, a RecvID drawn from all 240 would land in 0-31 in one of them
    // with a probability of 94%.
    for seed in 100..120 {
        let mut sim = Sim::pair_of(seed, NetParams::default(), PSK, |_| {}, |_| {});
        let now = sim.now;
        for id in 0..16u8 {
            sim.nodes[0]
                .ep
                .note_ended_key_ids("b", id, id + 16, now)
                .unwrap();
        }
        assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
        let recv_id = sim.mkts(0)[0].mkt.recv_id;
        assert!(recv_id >= 32, "seed {seed}: RecvID {recv_id}");
    }
    // Overlaps of 5 s: the ten rounds below take about a minute.
    let mut sim = Sim::pair_of(
        45,
        NetParams::default(),
        PSK,
        |a| *std::sync::Arc::make_mut(&mut a.lifetimes) = lifetimes(3000, 3600),
        |b| *std::sync::Arc::make_mut(&mut b.lifetimes) = lifetimes(3000, 3600),
    );
    let now = sim.now;
    assert!(matches!(
        sim.nodes[0].ep.note_ended_key_ids("nobody", 1, 1, now),
        Err(IkeError::Misuse(_))
    ));
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));

    // MKTs this endpoint deleted: ten rekeys in a row, each waiting for
    // the old MKT to go. No new KeyID on either side is one of an MKT that
    // ended in the last two minutes (a preference, not a reservation: the
    // last rekey after the avoidance ended may reuse one).
    let first = sim.mkts(0)[0].mkt.clone();
    let mut seen: Vec<(u8, u8)> = vec![(first.send_id, first.recv_id)];
    for round in 0..10 {
        let now = sim.now;
        assert!(sim.nodes[round % 2]
            .ep
            .rekey(if round % 2 == 0 { "b" } else { "a" }, now)
            .unwrap());
        assert!(
            sim.run_until(Duration::from_secs(30), |s| {
                s.mkts(0).len() == 1
                    && s.mkts(1).len() == 1
                    && s.mkts(0)[0].mkt.recv_id != seen.last().unwrap().1
            }),
            "round {round}: {:?}",
            sim.mkts(0)
        );
        let m = sim.mkts(0)[0].mkt.clone();
        for (s, r) in &seen {
            for id in [m.send_id, m.recv_id] {
                assert!(
                    id != *s && id != *r,
                    "round {round}: {id} reused from {seen:?}"
                );
            }
        }
        seen.push((m.send_id, m.recv_id));
    }
}
