//! Reliable Deletes (RFC 7296 1.4.1, 2.1): an INFORMATIONAL {Delete} is a
//! request like any other, retransmitted until the peer answers it, so one
//! lost datagram does not leave the peer with a half-closed IKE SA. The
//! first Delete datagram is dropped; the peer still removes the SA on the
//! retransmission, long before any timer of its own would (liveness or a
//! rekeyed SA's expiry).

mod harness;

use std::time::Duration;

use aokd_proto::ike::{Event, Lifetimes};
use aokd_proto::numbers::ExchangeType;
use aokd_proto::wire;
use harness::{NetParams, Sim};

const PSK: &[u8] = b"reliable delete test key";

/// Well inside the first retransmissions (0.5 s, 1 s, 2 s after the first
/// send), far below a liveness check (30 s) or a rekeyed SA's expiry.
const SOON: Duration = Duration::from_secs(5);

fn settled_pair(seed: u64) -> Sim {
    let no_ike_rekey = |p: &mut aokd_proto::ike::PeerConfig| {
        *std::sync::Arc::make_mut(&mut p.lifetimes) = Lifetimes {
            ike_rekey: None,
            ..Lifetimes::default()
        }
    };
    let mut sim = Sim::pair_of(seed, NetParams::default(), PSK, no_ike_rekey, no_ike_rekey);
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    sim
}

/// Drops the first INFORMATIONAL request that node `from` sends from now on.
fn drop_first_informational_request(
    sim: &mut Sim,
    from: usize,
) -> std::rc::Rc<std::cell::Cell<u32>> {
    let dropped = std::rc::Rc::new(std::cell::Cell::new(0u32));
    let seen = dropped.clone();
    sim.drop_if = Some(Box::new(move |node, data| {
        let Ok(m) = wire::parse_message(data) else {
            return false;
        };
        let hit = node == from
            && seen.get() == 0
            && m.header.exchange == ExchangeType::INFORMATIONAL
            && !m.header.is_response();
        if hit {
            seen.set(1);
        }
        hit
    }));
    dropped
}

/// States of node `i`'s IKE SAs.
fn states(sim: &Sim, i: usize) -> Vec<&'static str> {
    sim.nodes[i].ep.peers()[0]
        .sas
        .iter()
        .map(|s| s.state)
        .collect()
}

fn deleted_reasons(sim: &Sim, i: usize) -> Vec<String> {
    sim.nodes[i]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::IkeSaDeleted { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn rfc7296_2_1_terminate_delete_is_retransmitted_until_answered() {
    let mut sim = settled_pair(71);
    let dropped = drop_first_informational_request(&mut sim, 0);
    let now = sim.now;
    assert_eq!(sim.nodes[0].ep.terminate("b", now).unwrap(), 1);
    // The MKTs go at once; the IKE SA waits for the answer to its Delete.
    assert!(sim.mkts(0).is_empty());
    assert_eq!(states(&sim, 0), vec!["deleting"]);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(dropped.get(), 1, "the first Delete was lost");
    assert_eq!(states(&sim, 0), vec!["deleting"], "A waits for the answer");
    assert_eq!(sim.established(1), 1, "B has not heard of it yet");
    let gone = sim.run_until(SOON, |s| {
        s.established(1) == 0 && s.nodes[0].ep.peers()[0].sas.is_empty()
    });
    assert!(
        gone,
        "after {SOON:?}: A {:?}, B {:?}",
        states(&sim, 0),
        states(&sim, 1)
    );
    assert!(
        sim.mkts(1).is_empty(),
        "B deleted the MKTs of the same Delete"
    );
    assert_eq!(deleted_reasons(&sim, 1), vec!["deleted by the peer"]);
    assert_eq!(deleted_reasons(&sim, 0), vec!["terminated by operator"]);
}

#[test]
fn rfc7296_2_1_terminate_delete_gives_up_after_the_schedule() {
    let mut sim = settled_pair(72);
    sim.partitioned = true;
    let now = sim.now;
    sim.nodes[0].ep.terminate("b", now).unwrap();
    sim.run_for(Duration::from_secs(60));
    assert_eq!(states(&sim, 0), vec!["deleting"], "still retransmitting");
    // The whole schedule (20 transmissions, 0.5 s doubling to 10 s: 165.5 s).
    sim.run_for(Duration::from_secs(120));
    assert!(
        sim.nodes[0].ep.peers()[0].sas.is_empty(),
        "{:?}",
        states(&sim, 0)
    );
    assert_eq!(deleted_reasons(&sim, 0), vec!["terminated by operator"]);
    let sent = sim
        .requests_since(0, 0)
        .into_iter()
        .filter(|r| r.2 == ExchangeType::INFORMATIONAL)
        .count();
    assert_eq!(sent, 20, "the Delete was sent on the whole schedule");
}

#[test]
fn rfc7296_1_4_1_deletes_crossing_end_both_sas() {
    let mut sim = settled_pair(73);
    let now = sim.now;
    sim.nodes[0].ep.terminate("b", now).unwrap();
    sim.nodes[1].ep.terminate("a", now).unwrap();
    assert!(sim.run_until(SOON, |s| {
        s.nodes[0].ep.peers()[0].sas.is_empty() && s.nodes[1].ep.peers()[0].sas.is_empty()
    }));
}

#[test]
fn rfc7296_2_18_ike_rekey_delete_of_the_old_sa_is_retransmitted() {
    let mut sim = settled_pair(74);
    let old = {
        let s = &sim.nodes[0].ep.peers()[0].sas[0];
        (s.spi_i, s.spi_r)
    };
    let now = sim.now;
    assert!(sim.nodes[0].ep.rekey_ike("b", now).unwrap());
    // The rekey's CREATE_CHILD_SA goes through; the Delete of the old SA,
    // A's first INFORMATIONAL request after it, is lost.
    let dropped = drop_first_informational_request(&mut sim, 0);
    let only_new = |s: &Sim, i: usize| {
        let sas = s.nodes[i].ep.peers()[0].sas.clone();
        sas.len() == 1 && sas[0].state == "established" && (sas[0].spi_i, sas[0].spi_r) != old
    };
    assert!(
        sim.run_until(SOON, |s| only_new(s, 0) && only_new(s, 1)),
        "after {SOON:?}: A {:?}, B {:?}",
        states(&sim, 0),
        states(&sim, 1)
    );
    assert_eq!(dropped.get(), 1, "the first Delete was lost");
    assert_eq!(deleted_reasons(&sim, 1), vec!["rekeyed"]);
    assert!(sim.common_mkt(), "the MKT survived the rekey");
}
