//! Two endpoints against each other on a virtual clock (RFC 7296 exchanges
//! and the TCP-AO child SA profile of docs/protocol.md).

mod harness;

use std::time::Duration;

use aokd_proto::ike::{EndpointConfig, Event, IkeError, IkeSuite, NegotiationError};
use aokd_proto::mkt::MacAlgorithm;
use aokd_proto::numbers::NotifyType;
use harness::{peer, NetParams, Sim, A_ADDR, B_ADDR};

const PSK: &[u8] = b"a shared secret of reasonable length";

fn pair(seed: u64, net: NetParams) -> Sim {
    Sim::pair_of(seed, net, PSK, |_| {}, |_| {})
}

fn assert_matching_mkts(sim: &Sim) {
    let a = sim.mkts(0);
    let b = sim.mkts(1);
    assert_eq!(a.len(), 1, "A's MKTs");
    assert_eq!(b.len(), 1, "B's MKTs");
    let (a, b) = (&a[0].mkt, &b[0].mkt);
    assert_eq!(a.send_id, b.recv_id);
    assert_eq!(a.recv_id, b.send_id);
    assert_eq!(a.algorithm, b.algorithm);
    assert_eq!(a.include_options, b.include_options);
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_eq!(a.master_key.as_bytes(), b.master_key.as_bytes());
    assert_eq!(a.master_key.len(), 32);
}

#[test]
fn rfc7296_1_2_initial_exchanges_create_one_mkt() {
    let mut sim = pair(1, NetParams::default());
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    assert_matching_mkts(&sim);
    // Preference order: the initiator's first algorithm.
    assert_eq!(sim.mkts(0)[0].mkt.algorithm, MacAlgorithm::HmacSha256_128);
    // Nothing more happens once settled.
    sim.run_for(Duration::from_secs(600));
    assert!(sim.settled());
}

#[test]
fn simultaneous_initiation_ends_with_one_sa_each() {
    for seed in 0..200 {
        let mut sim = pair(seed, NetParams::jitter(20));
        assert!(
            sim.run_until(Duration::from_secs(60), Sim::settled),
            "seed {seed}"
        );
        sim.run_for(Duration::from_secs(120));
        assert!(
            sim.settled(),
            "seed {seed}: {} / {} SAs",
            sim.established(0),
            sim.established(1)
        );
        assert_matching_mkts(&sim);
    }
}

#[test]
fn wrong_psk_fails_on_both_sides_without_mkt() {
    let mut sim = Sim::pair(
        3,
        NetParams::default(),
        peer("b", A_ADDR, B_ADDR, PSK),
        peer("a", B_ADDR, A_ADDR, b"another key"),
    );
    sim.run_for(Duration::from_secs(20));
    for i in 0..2 {
        assert!(sim.mkts(i).is_empty());
        assert_eq!(sim.established(i), 0);
        let p = &sim.nodes[i].ep.peers()[0];
        assert_eq!(
            p.last_error.as_deref(),
            Some("AUTHENTICATION_FAILED"),
            "node {i}"
        );
        assert!(sim.nodes[i]
            .events
            .iter()
            .any(|e| matches!(e, Event::NegotiationFailed { error, .. }
            if error.notify() == Some(NotifyType::AUTHENTICATION_FAILED))));
    }
}

/// An identity mismatch names what was received and what was expected, on
/// the side that checks it (here B, the responder, expects A as
/// `r1.example.net`; A sends its address).
#[test]
fn identity_mismatch_names_both_identities() {
    let mut b = peer("a", B_ADDR, A_ADDR, PSK);
    b.remote_id = aokd_proto::ike::Identity::parse("r1.example.net");
    b.initiate = false;
    let mut sim = Sim::pair(4, NetParams::default(), peer("b", A_ADDR, B_ADDR, PSK), b);
    sim.run_for(Duration::from_secs(10));
    let text = sim.nodes[1]
        .events
        .iter()
        .find_map(|e| match e {
            Event::NegotiationFailed { error, .. } => Some(error.to_string()),
            _ => None,
        })
        .expect("B failed the negotiation");
    assert!(
        text.contains(&format!(
            "the initiator's identity {} (ID_IPV4_ADDR)",
            A_ADDR.ip()
        )) && text.contains("is not the configured remote_id r1.example.net (ID_FQDN)"),
        "{text}"
    );
}

#[test]
fn no_common_mac_gives_no_proposal_chosen() {
    let mut a = peer("b", A_ADDR, B_ADDR, PSK);
    a.mac_algorithms = vec![MacAlgorithm::HmacSha1_96].into();
    let mut b = peer("a", B_ADDR, A_ADDR, PSK);
    b.mac_algorithms = vec![MacAlgorithm::AesCmac96].into();
    let mut sim = Sim::pair(4, NetParams::default(), a, b);
    sim.run_for(Duration::from_secs(20));
    for i in 0..2 {
        assert!(sim.mkts(i).is_empty());
        assert_eq!(
            sim.established(i),
            1,
            "the IKE SA survives a failed child (RFC 7296 2.21.3)"
        );
        assert_eq!(
            sim.nodes[i].ep.peers()[0].last_error.as_deref(),
            Some("NO_PROPOSAL_CHOSEN"),
            "node {i}"
        );
    }
}

#[test]
fn invalid_ke_payload_retry_uses_the_requested_group() {
    let mut a = peer("b", A_ADDR, B_ADDR, PSK);
    a.ike_suites = vec![
        IkeSuite::DEFAULT,
        "aes256gcm16-prfsha256-ecp256".parse().unwrap(),
    ]
    .into();
    let mut b = peer("a", B_ADDR, A_ADDR, PSK);
    b.ike_suites = vec!["aes256gcm16-prfsha256-ecp256".parse().unwrap()].into();
    b.initiate = false;
    let mut sim = Sim::pair(5, NetParams::default(), a, b);
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    assert_matching_mkts(&sim);
    let sa = &sim.nodes[0].ep.peers()[0].sas[0];
    assert_eq!(
        sa.suite.unwrap().to_string(),
        "aes256gcm16-prfsha256-ecp256"
    );
}

#[test]
fn no_common_ike_suite_fails() {
    let a = peer("b", A_ADDR, B_ADDR, PSK);
    let mut b = peer("a", B_ADDR, A_ADDR, PSK);
    b.ike_suites = vec!["chacha20poly1305-prfsha512-ecp256".parse().unwrap()].into();
    b.initiate = false;
    let mut sim = Sim::pair(6, NetParams::default(), a, b);
    sim.run_for(Duration::from_secs(10));
    assert_eq!(sim.established(0), 0);
    assert_eq!(
        sim.nodes[0].ep.peers()[0].last_error.as_deref(),
        Some("NO_PROPOSAL_CHOSEN")
    );
}

#[test]
fn excluded_options_need_both_sides() {
    let mut a = peer("b", A_ADDR, B_ADDR, PSK);
    a.include_options = false;
    let mut b = peer("a", B_ADDR, A_ADDR, PSK);
    b.include_options = false;
    let mut sim = Sim::pair(7, NetParams::default(), a, b);
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    assert!(!sim.mkts(0)[0].mkt.include_options);
    assert_matching_mkts(&sim);

    let mut a = peer("b", A_ADDR, B_ADDR, PSK);
    a.include_options = false;
    let mut sim = Sim::pair(7, NetParams::default(), a, peer("a", B_ADDR, A_ADDR, PSK));
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    assert!(sim.mkts(0)[0].mkt.include_options);
    assert_matching_mkts(&sim);
}

#[test]
fn peer_without_tcp_ao_gets_a_childless_sa() {
    let mut cfg_b = EndpointConfig::new(vec![peer("a", B_ADDR, A_ADDR, PSK)]);
    cfg_b.advertise_tcp_ao = false;
    let cfg_a = EndpointConfig::new(vec![peer("b", A_ADDR, B_ADDR, PSK)]);
    let mut sim = Sim::pair_with(8, NetParams::default(), cfg_a, cfg_b);
    assert!(
        sim.run_until(Duration::from_secs(20), |s| s.established(0) == 1
            && s.established(1) == 1)
    );
    sim.run_for(Duration::from_secs(30));
    assert!(sim.mkts(0).is_empty() && sim.mkts(1).is_empty());
    assert_eq!(sim.nodes[0].ep.peers()[0].tcp_ao_capable, Some(false));
    assert!(sim.nodes[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::PeerNotCapable { .. })));
    // No TCP-AO proposal ever went to the peer: no datagram carries protocol 201 in clear
    // text, and B never saw a child offer (it would have answered NO_PROPOSAL_CHOSEN).
    assert!(!sim.nodes[1]
        .events
        .iter()
        .any(|e| matches!(e, Event::ChildFailed { .. })));
}

#[test]
fn loss_30_percent_completes_within_the_retransmission_schedule() {
    let limit = aokd_proto::ike::RetransmitConfig::default().total() * 2;
    let mut failures = Vec::new();
    for seed in 0..1000 {
        let mut a = peer("b", A_ADDR, B_ADDR, PSK);
        a.initiate = true;
        let mut b = peer("a", B_ADDR, A_ADDR, PSK);
        b.initiate = false;
        let mut sim = Sim::pair(seed, NetParams::LOSSY, a, b);
        if !sim.run_until(limit, Sim::settled) {
            failures.push(seed);
            continue;
        }
        // No negotiation was given up on the way.
        let gave_up = sim.nodes[0].events.iter().any(|e| {
            matches!(
                e,
                Event::NegotiationFailed {
                    error: IkeError::Negotiation(NegotiationError::Timeout),
                    ..
                }
            )
        });
        if gave_up {
            failures.push(seed);
        }
        assert_matching_mkts(&sim);
    }
    assert!(
        failures.is_empty(),
        "seeds that did not complete: {failures:?}"
    );
}

#[test]
fn terminate_deletes_on_both_sides() {
    let mut sim = pair(9, NetParams::default());
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    let now = sim.now;
    sim.nodes[0].ep.terminate("b", now).unwrap();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.established(0), 0);
    assert_eq!(sim.established(1), 0);
    assert!(sim.mkts(1).is_empty());
    assert!(sim.nodes[1]
        .events
        .iter()
        .any(|e| matches!(e, Event::MktDeleted { .. })));
}

#[test]
fn two_peers_on_one_address_are_told_apart_by_port() {
    // B has two peers on A's IP address, at ports 500 and 4500, each with
    // its own PSK: each initiator must be matched to the peer of its port
    // (a wrong match fails AUTH), the first by slot among those of its
    // address.
    const OTHER_PSK: &[u8] = b"the other initiator's secret, also long";
    let a2_addr = std::net::SocketAddr::new(A_ADDR.ip(), 4500);
    let mut at_500 = peer("a500", B_ADDR, A_ADDR, PSK);
    let mut at_4500 = peer("a4500", B_ADDR, a2_addr, OTHER_PSK);
    at_500.initiate = false;
    at_4500.initiate = false;
    let mut sim = Sim::pair_with(
        95,
        NetParams::default(),
        EndpointConfig::new(vec![peer("b", A_ADDR, B_ADDR, PSK)]),
        EndpointConfig::new(vec![at_500, at_4500]),
    );
    let a2 = sim.add_node(
        a2_addr,
        EndpointConfig::new(vec![peer("b", a2_addr, B_ADDR, OTHER_PSK)]),
        96,
    );
    assert!(
        sim.run_until(Duration::from_secs(10), |s| s.established(1) == 2
            && s.established(0) == 1
            && s.established(a2) == 1)
    );
    for p in sim.nodes[1].ep.peers() {
        let up = p.sas.iter().filter(|s| s.state == "established").count();
        assert_eq!(up, 1, "B's peer {} ({})", p.name, p.remote);
        assert_eq!(p.mkts.len(), 1, "B's peer {}", p.name);
    }
    let failed = sim.nodes[1]
        .events
        .iter()
        .filter(|e| matches!(e, Event::NegotiationFailed { .. }))
        .count();
    assert_eq!(failed, 0);
}
