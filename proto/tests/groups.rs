//! Peer groups in the simulator: neighbours inside a group's prefixes
//! become members when they negotiate with a certificate from the group's
//! CA, get MKTs like configured peers, and are forgotten when nothing is
//! left; another CA, another identity or a forged request leaves nothing;
//! configured peers win; a member can be made on demand and initiated to.

mod harness;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use aokd_proto::ike::{
    EndpointConfig, Event, Identity, MemberIdentity, PeerConfig, PeerGroupConfig, PeerState,
};
use harness::pki::{self, Ca};
use harness::{peer, NetParams, Sim, A_ADDR, B_ADDR};
use rcgen::SanType;

/// The route server is node 1 at B_ADDR (192.0.2.2).
const RS: usize = 1;

fn neighbour_addr(k: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 + k)), 500)
}

fn group(ca: &Ca, identity: MemberIdentity) -> PeerGroupConfig {
    let (cert, key) = pki::leaf_for_ip(ca, B_ADDR.ip());
    let mut template = peer("rs", B_ADDR, "192.0.2.0:500".parse().unwrap(), b"");
    template.signature = Some(pki::auth(cert, key, ca));
    template.initiate = false;
    PeerGroupConfig {
        name: "rs".into(),
        prefixes: vec![
            "192.0.2.0/24".parse().unwrap(),
            "2001:db8::/64".parse().unwrap(),
        ],
        ike_port: 500,
        identity,
        template,
        local_other_family: Some("2001:db8::2".parse().unwrap()),
    }
}

fn rs_config(ca: &Ca, identity: MemberIdentity, peers: Vec<PeerConfig>) -> EndpointConfig {
    let mut c = EndpointConfig::new(peers);
    c.groups = vec![group(ca, identity)];
    c.wall_clock = pki::wall();
    c
}

/// A neighbour at `addr` configured with the route server as peer "rs",
/// its certificate from `issuer` (for its address), trusting `trust`.
fn neighbour(addr: SocketAddr, issuer: &Ca, trust: &Ca) -> EndpointConfig {
    let (cert, key) = pki::leaf_for_ip(issuer, addr.ip());
    let mut p = peer("rs", addr, B_ADDR, b"");
    p.signature = Some(pki::auth(cert, key, trust));
    let mut c = EndpointConfig::new(vec![p]);
    c.wall_clock = pki::wall();
    c
}

fn members(sim: &Sim) -> Vec<(String, PeerState, usize)> {
    sim.nodes[RS]
        .ep
        .peers()
        .into_iter()
        .filter(|p| p.group.as_deref() == Some("rs"))
        .map(|p| (p.name, p.state, p.mkts.len()))
        .collect()
}

fn count(sim: &Sim, i: usize, f: impl Fn(&Event) -> bool) -> usize {
    sim.nodes[i].events.iter().filter(|e| f(e)).count()
}

/// Whether neighbour `i` holds an MKT mirrored by the route server.
fn keyed(sim: &Sim, i: usize) -> bool {
    let rs = sim.mkts(RS);
    sim.mkts(i).iter().any(|x| {
        rs.iter().any(|y| {
            x.mkt.send_id == y.mkt.recv_id
                && x.mkt.recv_id == y.mkt.send_id
                && x.mkt.master_key.as_bytes() == y.mkt.master_key.as_bytes()
        })
    })
}

#[test]
fn neighbours_inside_the_prefix_become_members_with_mkts() {
    let ca = pki::root("route server CA");
    let mut sim = Sim::pair_with(
        1,
        NetParams::default(),
        neighbour(A_ADDR, &ca, &ca),
        rs_config(&ca, MemberIdentity::Address, Vec::new()),
    );
    let n = 8u8;
    let mut nodes = vec![0];
    for k in 0..n {
        let a = neighbour_addr(k);
        nodes.push(sim.add_node(a, neighbour(a, &ca, &ca), 100 + u64::from(k)));
    }
    let all = |s: &Sim| nodes.iter().all(|&i| keyed(s, i));
    assert!(
        sim.run_until(Duration::from_secs(20), all),
        "{:?}",
        members(&sim)
    );
    let m = members(&sim);
    assert_eq!(m.len(), usize::from(n) + 1, "{m:?}");
    for (name, state, mkts) in &m {
        assert!(name.starts_with("rs/192.0.2."), "{name}");
        assert_eq!(*state, PeerState::Established, "{name}");
        assert_eq!(*mkts, 1, "{name}");
    }
    assert!(m.iter().any(|(name, ..)| name == "rs/192.0.2.1"));
    assert_eq!(
        count(
            &sim,
            RS,
            |e| matches!(e, Event::MemberAdded { group, .. } if group == "rs")
        ),
        usize::from(n) + 1
    );
    // A member's MemberAdded comes before its first MktsChanged.
    let order: Vec<&str> = sim.nodes[RS]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::MemberAdded { peer, .. } if peer == "rs/192.0.2.1" => Some("added"),
            Event::MktsChanged { peer, .. } if peer == "rs/192.0.2.1" => Some("mkts"),
            _ => None,
        })
        .collect();
    assert_eq!(order.first(), Some(&"added"), "{order:?}");
    let view = sim.nodes[RS].ep.peer("rs/192.0.2.1").unwrap();
    assert_eq!(view.remote, A_ADDR);
    assert_eq!(
        sim.nodes[RS]
            .ep
            .member_group("rs/192.0.2.1")
            .map(|g| g.name.as_str()),
        Some("rs")
    );
    println!("{} members keyed: {m:?}", m.len());
}

#[test]
fn a_certificate_from_another_ca_is_refused_and_leaves_no_member() {
    let ca = pki::root("route server CA");
    let other = pki::root("someone else's CA");
    let mut sim = Sim::pair_with(
        2,
        NetParams::default(),
        neighbour(A_ADDR, &other, &ca),
        rs_config(&ca, MemberIdentity::Address, Vec::new()),
    );
    let failed = |s: &Sim| {
        count(s, 0, |e| matches!(e, Event::NegotiationFailed { .. })) > 0
            && count(s, RS, |e| matches!(e, Event::NegotiationFailed { .. })) > 0
    };
    assert!(sim.run_until(Duration::from_secs(10), failed));
    sim.run_for(Duration::from_secs(1));
    let rs_error = sim.nodes[RS]
        .events
        .iter()
        .find_map(|e| match e {
            Event::NegotiationFailed { peer, error, .. } => Some(format!("{peer}: {error}")),
            _ => None,
        })
        .unwrap();
    assert!(rs_error.starts_with("rs/192.0.2.1: "), "{rs_error}");
    assert!(rs_error.contains("AUTHENTICATION_FAILED"), "{rs_error}");
    assert!(
        rs_error.contains("not issued by a configured CA"),
        "{rs_error}"
    );
    let a_error = sim.nodes[0].ep.peer("rs").unwrap().last_error.unwrap();
    assert!(a_error.contains("AUTHENTICATION_FAILED"), "{a_error}");
    assert_eq!(
        count(&sim, RS, |e| matches!(e, Event::MemberAdded { .. })),
        0
    );
    // The refused neighbour stays listed as failed, with the reason, while
    // the failed SA replays its answer to retransmissions (165.5 s), then
    // is forgotten.
    assert_eq!(
        members(&sim),
        [("rs/192.0.2.1".to_string(), PeerState::Failed, 0)]
    );
    let shown = sim.nodes[RS].ep.peer("rs/192.0.2.1").unwrap().last_error;
    assert_eq!(shown.as_deref(), Some("AUTHENTICATION_FAILED"));
    sim.nodes[0].ep.terminate("rs", sim.now).unwrap();
    sim.run_for(Duration::from_secs(170));
    assert!(members(&sim).is_empty(), "{:?}", members(&sim));
    assert_eq!(
        count(&sim, RS, |e| matches!(e, Event::MemberForgotten { .. })),
        0
    );
    println!("refused: {rs_error}; the neighbour says: {a_error}");
}

#[test]
fn a_configured_peer_wins_over_the_group() {
    let ca = pki::root("route server CA");
    let psk = b"a pre-shared key for the one configured neighbour";
    let mut configured = peer("a", B_ADDR, A_ADDR, psk);
    configured.initiate = false;
    let mut a = EndpointConfig::new(vec![peer("rs", A_ADDR, B_ADDR, psk)]);
    a.wall_clock = pki::wall();
    let mut sim = Sim::pair_with(
        3,
        NetParams::default(),
        a,
        rs_config(&ca, MemberIdentity::Address, vec![configured]),
    );
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    assert!(sim.common_mkt());
    assert!(members(&sim).is_empty(), "{:?}", members(&sim));
    assert_eq!(
        sim.nodes[RS].ep.peer("a").unwrap().state,
        PeerState::Established
    );
}

#[test]
fn a_member_is_forgotten_when_its_sas_and_mkts_are_gone() {
    let ca = pki::root("route server CA");
    let mut sim = Sim::pair_with(
        4,
        NetParams::default(),
        neighbour(A_ADDR, &ca, &ca),
        rs_config(&ca, MemberIdentity::Address, Vec::new()),
    );
    assert!(sim.run_until(Duration::from_secs(10), |s| keyed(s, 0)));
    assert_eq!(members(&sim).len(), 1);
    // The neighbour ends everything: Delete(TCP-AO) and Delete(IKE).
    sim.nodes[0].ep.terminate("rs", sim.now).unwrap();
    let forgotten = |s: &Sim| {
        count(
            s,
            RS,
            |e| matches!(e, Event::MemberForgotten { peer, group } if peer == "rs/192.0.2.1" && group == "rs"),
        ) == 1
    };
    assert!(sim.run_until(Duration::from_secs(10), forgotten));
    assert!(members(&sim).is_empty(), "{:?}", members(&sim));
    assert!(sim.nodes[RS].ep.peer("rs/192.0.2.1").is_none());
    // It negotiates again: a member again.
    sim.nodes[0].ep.initiate("rs", sim.now).unwrap();
    assert!(sim.run_until(Duration::from_secs(10), |s| keyed(s, 0)));
    assert_eq!(members(&sim).len(), 1);
    assert_eq!(
        count(&sim, RS, |e| matches!(e, Event::MemberAdded { .. })),
        2
    );
}

#[test]
fn forged_requests_from_the_prefix_leave_nothing_behind() {
    let ca = pki::root("route server CA");
    // A neighbour that never initiates, to take a real IKE_SA_INIT from.
    let mut a = neighbour(A_ADDR, &ca, &ca);
    a.peers[0].initiate = false;
    let mut rs = rs_config(&ca, MemberIdentity::Address, Vec::new());
    rs.half_open_timeout = Duration::from_secs(30);
    let mut sim = Sim::pair_with(5, NetParams::default(), a, rs);
    sim.nodes[0].ep.initiate("rs", sim.now).unwrap();
    let init = sim.nodes[0].ep.poll_transmit().unwrap().contents;
    // Replayed from 50 addresses inside the prefix: each one gets a
    // half-open SA until the cookie threshold (30 in all) is reached,
    // then cookies are demanded and no state is kept.
    for k in 0..50u8 {
        let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100 + k)), 500);
        sim.inject(RS, from, &init);
    }
    let held = members(&sim).len();
    assert!(held <= 31, "{held} members after 50 forged requests");
    assert_eq!(sim.nodes[RS].ep.half_open(), held);
    assert!(
        sim.nodes[RS].ep.counters().cookies_sent > 0,
        "{:?}",
        sim.nodes[RS].ep.counters()
    );
    assert_eq!(
        count(&sim, RS, |e| matches!(e, Event::MemberAdded { .. })),
        0
    );
    // The half-open SAs time out and their members are forgotten, without
    // a MemberForgotten (the driver never knew them).
    sim.run_for(Duration::from_secs(31));
    let left: Vec<_> = members(&sim)
        .into_iter()
        .filter(|(n, ..)| n != "rs/192.0.2.1")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        count(&sim, RS, |e| matches!(e, Event::MemberForgotten { .. })),
        0
    );
    println!("{held} half-open members at most, none left after the timeout");
}

#[test]
fn an_fqdn_pattern_admits_matching_names_only() {
    let ca = pki::root("route server CA");
    let pattern = MemberIdentity::Fqdn("*.rs.example.net".into());
    let named = |addr: SocketAddr, name: &str| {
        let (cert, key) =
            pki::leaf_with(&ca, name, vec![SanType::DnsName(name.try_into().unwrap())]);
        let mut p = peer("rs", addr, B_ADDR, b"");
        p.local_id = Identity::parse(name);
        p.signature = Some(pki::auth(cert, key, &ca));
        let mut c = EndpointConfig::new(vec![p]);
        c.wall_clock = pki::wall();
        c
    };
    let mut sim = Sim::pair_with(
        6,
        NetParams::default(),
        named(A_ADDR, "r1.rs.example.net"),
        rs_config(&ca, pattern, Vec::new()),
    );
    let bad = sim.add_node(
        neighbour_addr(0),
        named(neighbour_addr(0), "r2.elsewhere.net"),
        60,
    );
    assert!(sim.run_until(Duration::from_secs(10), |s| keyed(s, 0)));
    let failed = |s: &Sim| count(s, RS, |e| matches!(e, Event::NegotiationFailed { .. })) > 0;
    assert!(sim.run_until(Duration::from_secs(10), failed));
    let err = sim.nodes[RS]
        .events
        .iter()
        .find_map(|e| match e {
            Event::NegotiationFailed { error, .. } => Some(error.to_string()),
            _ => None,
        })
        .unwrap();
    assert!(
        err.contains("the initiator's identity r2.elsewhere.net (ID_FQDN) is not an FQDN matching *.rs.example.net"),
        "{err}"
    );
    assert!(!keyed(&sim, bad));
    assert_eq!(
        members(&sim),
        [
            ("rs/192.0.2.1".to_string(), PeerState::Established, 1),
            ("rs/192.0.2.10".to_string(), PeerState::Failed, 0)
        ]
    );
}

#[test]
fn a_member_made_on_demand_initiates_to_the_neighbour() {
    let ca = pki::root("route server CA");
    let mut a = neighbour(A_ADDR, &ca, &ca);
    a.peers[0].initiate = false;
    let mut sim = Sim::pair_with(
        7,
        NetParams::default(),
        a,
        rs_config(&ca, MemberIdentity::Address, Vec::new()),
    );
    sim.run_for(Duration::from_secs(1));
    assert!(members(&sim).is_empty());
    let now = sim.now;
    let rs = &mut sim.nodes[RS].ep;
    assert!(rs.add_member("198.51.100.1".parse().unwrap()).is_err());
    let (name, new) = rs.add_member(A_ADDR.ip()).unwrap();
    assert_eq!((name.as_str(), new), ("rs/192.0.2.1", true));
    assert_eq!(rs.add_member(A_ADDR.ip()).unwrap(), (name.clone(), false));
    assert!(rs.initiate(&name, now).unwrap());
    assert!(sim.run_until(Duration::from_secs(10), |s| keyed(s, 0)));
    // Made by the driver: no MemberAdded.
    assert_eq!(
        count(&sim, RS, |e| matches!(e, Event::MemberAdded { .. })),
        0
    );
    assert_eq!(
        sim.nodes[RS]
            .ep
            .group_of_member_name("rs/192.0.2.1")
            .map(|(g, ip)| (g.name.clone(), ip)),
        Some(("rs".to_string(), A_ADDR.ip()))
    );
    assert!(sim.nodes[RS]
        .ep
        .group_of_member_name("rs/198.51.100.1")
        .is_none());
    assert!(sim.nodes[RS]
        .ep
        .group_of_member_name("other/192.0.2.1")
        .is_none());
    // Members are found by name through their group and address (they
    // are not in the endpoint's name index): an address of the prefix
    // with no member names no peer, and a configured peer cannot take a
    // member's name.
    let rs = &mut sim.nodes[RS].ep;
    assert_eq!(rs.peer_remote(&name).map(|a| a.ip()), Some(A_ADDR.ip()));
    assert!(rs.peer("rs/192.0.2.99").is_none());
    assert!(rs.peer_remote("rs/192.0.2.99").is_none());
    let mut taken = rs.config().groups[0].member(A_ADDR.ip(), false);
    taken.name = name.clone();
    let err = rs.add_peer(taken, sim.now).unwrap_err();
    assert!(err.to_string().contains("exists already"), "{err}");
}
