//! A peer that restarts: KeyID reservations for keys that outlive the
//! daemon on live sockets, INITIAL_CONTACT (RFC 7296 2.4), and
//! CHILD_SA_NOT_FOUND for an MKT the peer no longer holds (RFC 7296 2.25).

mod harness;

use std::time::Duration;

use aokd_proto::ike::{Event, IkeError, NegotiationError};
use aokd_proto::numbers::NotifyType;
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
    let mut sim = Sim::pair(
        41,
        NetParams::default(),
        peer("b", A_ADDR, B_ADDR, PSK),
        peer("a", B_ADDR, A_ADDR, PSK),
    );
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
