//! Reload in the engine: peers added, removed and changed on a running
//! endpoint ([`Endpoint::add_peer`], [`Endpoint::remove_peer`],
//! [`Endpoint::update_peer`]) between two simulated endpoints. A removed
//! peer's IKE SA goes with a Delete the other side sees, its MKTs stay
//! until their hard lifetime on both sides, and its slot is reused; a
//! changed peer renegotiates only what the change needs; an unchanged one
//! keeps its SPIs and KeyIDs.

mod harness;

use std::time::Duration;

use aokd_proto::crypto::Secret;
use aokd_proto::ike::{
    DropReason, Endpoint, EndpointConfig, Event, Lifetimes, PeerChange, PeerConfig, PeerState,
};
use aokd_proto::mkt::MacAlgorithm;
use harness::{peer, NetParams, Sim, A_ADDR, B_ADDR};

const PSK: &[u8] = b"reload test pre-shared key";
/// MKT hard lifetime in these tests (rekey at 150 s, far after the checks
/// that need the first MKT).
const HARD: Duration = Duration::from_secs(200);

fn lifetimes() -> Lifetimes {
    Lifetimes::new(None, Duration::from_secs(150), HARD, true)
}

fn a_peer() -> PeerConfig {
    let mut p = peer("b", A_ADDR, B_ADDR, PSK);
    *std::sync::Arc::make_mut(&mut p.lifetimes) = lifetimes();
    p
}

fn b_peer() -> PeerConfig {
    let mut p = peer("a", B_ADDR, A_ADDR, PSK);
    *std::sync::Arc::make_mut(&mut p.lifetimes) = lifetimes();
    p
}

fn settled_pair(seed: u64) -> Sim {
    let mut sim = Sim::pair(seed, NetParams::default(), a_peer(), b_peer());
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    sim
}

/// (SPIi, SPIr) of node `i`'s SAs.
fn spis(sim: &Sim, i: usize) -> Vec<(u64, u64)> {
    sim.nodes[i]
        .ep
        .peers()
        .iter()
        .flat_map(|p| p.sas.iter().map(|s| (s.spi_i, s.spi_r)))
        .collect()
}

fn ep(sim: &mut Sim, i: usize) -> &mut Endpoint {
    &mut sim.nodes[i].ep
}

#[test]
fn a_removed_peer_is_deleted_with_a_delete_and_its_mkts_last_until_their_hard_lifetime() {
    let mut sim = settled_pair(1);
    let (a_ids, b_ids) = (sim.ids(0), sim.ids(1));
    let now = sim.now;
    let removed_at = now;
    assert_eq!(ep(&mut sim, 0).remove_peer("b", now).expect("remove"), 1);
    // The name is gone for every other input.
    assert!(ep(&mut sim, 0).initiate("b", now).is_err());
    assert!(ep(&mut sim, 0).peer("b").is_none());
    // The Delete reaches B (reliably: B would otherwise notice only after
    // its liveness check, 30 s plus the retransmissions).
    assert!(sim.run_until(Duration::from_secs(5), |s| spis(s, 1).is_empty()));
    assert!(sim.nodes[1].events.iter().any(|e| matches!(e,
        Event::IkeSaDeleted { reason, .. } if reason == "deleted by the peer")));
    assert!(sim.run_until(Duration::from_secs(5), |s| spis(s, 0).is_empty()));
    // Both keep their MKTs: the sockets keep their keys.
    assert_eq!(sim.ids(0), a_ids);
    assert_eq!(sim.ids(1), b_ids);
    let view = &sim.nodes[0].ep.peers()[0];
    assert_eq!(view.state, PeerState::Removed);
    assert!(!sim.nodes[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::MktDeleted { .. })));
    // B, which initiates, tries again and is refused: A no longer has the peer.
    sim.run_for(Duration::from_secs(60));
    assert!(
        sim.nodes[0]
            .ep
            .counters()
            .dropped
            .get(DropReason::NotConfiguredPeer)
            > 0
    );
    assert_eq!(sim.ids(0), a_ids, "no rekey of a removed peer's MKT");
    // Until the hard lifetime: then the MKT goes, the key set is reported
    // empty (the driver puts the guard in), and A's slot is free.
    let until_hard = (removed_at + HARD).saturating_duration_since(sim.now);
    sim.run_for(until_hard.saturating_sub(Duration::from_secs(2)));
    assert_eq!(sim.ids(0), a_ids);
    sim.run_for(Duration::from_secs(5));
    assert!(sim.ids(0).is_empty());
    assert!(sim.ids(1).is_empty());
    assert!(sim.nodes[0].events.iter().any(|e| matches!(e,
        Event::MktDeleted { reason, .. } if *reason == "hard lifetime expired")));
    assert!(sim.nodes[0].events.iter().any(|e| matches!(e,
        Event::MktsChanged { peer, mkts } if peer == "b" && mkts.is_empty())));
    assert!(sim.nodes[0].ep.peers().is_empty(), "the slot is vacant");
    // The next peer added takes the slot, and the indexes find it by name
    // and by address.
    let mut b2 = a_peer();
    b2.name = "b2".into();
    let now = sim.now;
    ep(&mut sim, 0).add_peer(b2, now).expect("add");
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    let names: Vec<String> = sim.nodes[0]
        .ep
        .peers()
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(names, ["b2"]);
    assert_eq!(
        sim.nodes[0].ep.peer("b2").expect("by name").state,
        PeerState::Established
    );
}

#[test]
fn an_added_peer_is_initiated_and_answered() {
    let mut sim = Sim::pair_with(
        2,
        NetParams::default(),
        EndpointConfig::new(Vec::new()),
        EndpointConfig::new(vec![b_peer()]),
    );
    sim.run_for(Duration::from_secs(3));
    assert!(sim.nodes[0].ep.peers().is_empty());
    assert!(
        sim.nodes[0]
            .ep
            .counters()
            .dropped
            .get(DropReason::NotConfiguredPeer)
            > 0
    );
    let now = sim.now;
    ep(&mut sim, 0).add_peer(a_peer(), now).expect("add");
    // A initiates at once (its `initiate` is set): not B's retry, 30 s later.
    assert_eq!(sim.nodes[0].ep.poll_timeout(), Some(now));
    assert!(sim.run_until(Duration::from_secs(5), Sim::settled));
    assert!(sim.common_mkt());
    // A second peer of the same name is refused, and changes nothing.
    let now = sim.now;
    assert!(ep(&mut sim, 0).add_peer(a_peer(), now).is_err());
    assert_eq!(sim.nodes[0].ep.peers().len(), 1);
    // So is a configuration the endpoint cannot run with.
    let mut bad = a_peer();
    bad.name = "c".into();
    bad.tcp_ports = Vec::new().into();
    assert!(ep(&mut sim, 0).add_peer(bad, now).is_err());
    assert_eq!(sim.nodes[0].ep.peers().len(), 1);
}

#[test]
fn a_peer_removed_and_added_again_takes_its_slot_and_mkts_back() {
    let mut sim = settled_pair(3);
    let a_ids = sim.ids(0);
    let now = sim.now;
    ep(&mut sim, 0).remove_peer("b", now).expect("remove");
    assert!(sim.run_until(Duration::from_secs(5), |s| spis(s, 1).is_empty()));
    let now = sim.now;
    ep(&mut sim, 0).add_peer(a_peer(), now).expect("add again");
    assert_eq!(sim.nodes[0].ep.peers().len(), 1, "one slot for one name");
    assert_eq!(sim.ids(0), a_ids, "its MKTs came back with it");
    // A new IKE SA, whose MKT supersedes the kept one (which goes after
    // its overlap).
    let ok = sim.run_until(Duration::from_secs(60), |s| {
        s.established(0) == 1 && s.established(1) == 1 && s.ids(0).len() == 1 && s.ids(0) != a_ids
    });
    assert!(ok, "A {:?} B {:?}", sim.ids(0), sim.ids(1));
    assert!(sim.common_mkt());
}

#[test]
fn changes_renegotiate_only_what_they_need() {
    let mut sim = settled_pair(4);
    let (sa0, a_ids) = (spis(&sim, 0), sim.ids(0));
    let now = sim.now;
    let sent = sim.sent.len();
    // Unchanged: nothing happens.
    assert_eq!(
        ep(&mut sim, 0).update_peer(a_peer(), now).expect("same"),
        PeerChange::Unchanged
    );
    assert_eq!(sim.nodes[0].ep.poll_transmit().map(|t| t.destination), None);
    // Lifetimes: for what comes next; SPIs and KeyIDs stay.
    let mut p = a_peer();
    *std::sync::Arc::make_mut(&mut p.lifetimes) =
        Lifetimes::new(None, Duration::from_secs(140), HARD, false);
    assert_eq!(
        ep(&mut sim, 0).update_peer(p, now).expect("lifetimes"),
        PeerChange::Applied
    );
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.sent.len(), sent, "nothing sent for an applied change");
    assert_eq!((spis(&sim, 0), sim.ids(0)), (sa0.clone(), a_ids.clone()));
    // MAC algorithms: the MKT is rekeyed on the same IKE SA.
    let mut p = a_peer();
    p.mac_algorithms = vec![MacAlgorithm::HmacSha1_96].into();
    let now = sim.now;
    assert_eq!(
        ep(&mut sim, 0).update_peer(p, now).expect("mac"),
        PeerChange::RekeyMkts
    );
    assert!(sim.run_until(Duration::from_secs(120), |s| s.settled()
        && s.ids(0) != a_ids));
    assert_eq!(spis(&sim, 0), sa0, "same IKE SA");
    assert_eq!(sim.mkts(0)[0].mkt.algorithm, MacAlgorithm::HmacSha1_96);
    assert!(sim.common_mkt());
    // The PSK, changed on both sides: a new IKE SA (deleted with a Delete
    // and negotiated again), then a new MKT.
    let ids = sim.ids(0);
    let new_psk = b"the new pre-shared key";
    let mut pa = a_peer();
    pa.mac_algorithms = vec![MacAlgorithm::HmacSha1_96].into();
    pa.psk = Secret::new(new_psk.to_vec()).into();
    let mut pb = b_peer();
    pb.psk = Secret::new(new_psk.to_vec()).into();
    let now = sim.now;
    assert_eq!(
        ep(&mut sim, 0).update_peer(pa, now).expect("psk"),
        PeerChange::Renegotiate
    );
    assert_eq!(
        ep(&mut sim, 1).update_peer(pb, now).expect("psk"),
        PeerChange::Renegotiate
    );
    assert!(sim.run_until(Duration::from_secs(120), |s| s.settled()
        && spis(s, 0) != sa0
        && s.ids(0) != ids));
    assert!(sim.common_mkt());
    assert_eq!(spis(&sim, 0), spis(&sim, 1));
    assert!(sim.nodes[0].events.iter().any(|e| matches!(e,
        Event::IkeSaDeleted { reason, .. } if reason == "peer configuration changed")));
    // An unknown peer is an error.
    let mut c = a_peer();
    c.name = "c".into();
    let now = sim.now;
    assert!(ep(&mut sim, 0).update_peer(c, now).is_err());
}

#[test]
fn a_changed_psk_on_one_side_only_ends_the_old_ike_sa() {
    // The operator changed the PSK on A but not yet on B: the IKE SA
    // made with the old one goes (its credential is no longer trusted),
    // the new attempts fail, and the MKTs stay until the PSKs agree.
    let mut sim = settled_pair(5);
    let a_ids = sim.ids(0);
    let mut pa = a_peer();
    pa.psk = Secret::new(b"only on A".to_vec()).into();
    let now = sim.now;
    assert_eq!(
        ep(&mut sim, 0).update_peer(pa, now).expect("psk"),
        PeerChange::Renegotiate
    );
    sim.run_for(Duration::from_secs(10));
    assert_eq!(sim.established(0), 0);
    assert_eq!(sim.established(1), 0);
    assert_eq!(sim.ids(0), a_ids);
    assert!(sim.nodes[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::NegotiationFailed { .. })));
    let pb = {
        let mut p = b_peer();
        p.psk = Secret::new(b"only on A".to_vec()).into();
        p
    };
    let now = sim.now;
    ep(&mut sim, 1).update_peer(pb, now).expect("psk on B");
    assert!(sim.run_until(Duration::from_secs(120), |s| s.settled()
        && s.ids(0) != a_ids));
}
