//! IKE fragmentation (RFC 7383) between two endpoints on the virtual clock:
//! IKE_AUTH with depth-3 certificate chains fragmented at 1,280 octets in
//! both directions, over IPv4 and IPv6, with every datagram within the
//! limit; a lost fragment recovered by retransmission (of the request, and
//! of the response through the replay of the stored fragments); forged,
//! corrupted and duplicate fragments dropped without breaking the exchange;
//! too many fragments and too large messages refused; and a peer that does
//! not announce IKEV2_FRAGMENTATION_SUPPORTED gets unfragmented messages.

mod harness;

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use aokd_proto::ike::{DropReason, EndpointConfig, Event, SignatureAuth};
use aokd_proto::numbers::{ExchangeType, NotifyType, PayloadType};
use aokd_proto::wire::{self, FragmentNumbers};
use harness::pki::{self, wall};
use harness::{peer, NetParams, Sim, A_ADDR, B_ADDR};

/// A root, two intermediates under it, and depth-3 chains under them.
struct Pki {
    root: pki::Ca,
    i1: pki::Ca,
    i2: pki::Ca,
}

impl Pki {
    fn new() -> Pki {
        let root = pki::root("aokd fragmentation root");
        let i1 = pki::intermediate("intermediate 1", &root);
        let i2 = pki::intermediate("intermediate 2", &i1);
        Pki { root, i1, i2 }
    }

    /// Signature authentication with the end-entity certificate for `ip`
    /// and both intermediates, trusting the root.
    fn chain(&self, ip: IpAddr, alg: &'static rcgen::SignatureAlgorithm) -> Arc<SignatureAuth> {
        let (der, key) = pki::leaf(ip, alg, &self.i2, |_| {});
        let chain = vec![
            der,
            self.i2.cert.der().to_vec(),
            self.i1.cert.der().to_vec(),
        ];
        pki::chain_auth(chain, key, &self.root, &[])
    }
}

/// A and B at `a` / `b` with depth-3 chains (Ed25519 and ECDSA P-256), each
/// trusting the root; `a_initiates` says which side initiates; both
/// endpoint configurations adjusted by `f` (node index, configuration).
fn sim_at(
    seed: u64,
    (a, b): (SocketAddr, SocketAddr),
    pki: &Pki,
    a_initiates: bool,
    f: impl Fn(usize, &mut EndpointConfig),
) -> Sim {
    let mut pa = peer("b", a, b, b"unused");
    let mut pb = peer("a", b, a, b"unused");
    pa.signature = Some(pki.chain(a.ip(), &rcgen::PKCS_ED25519));
    pb.signature = Some(pki.chain(b.ip(), &rcgen::PKCS_ECDSA_P256_SHA256));
    pa.initiate = a_initiates;
    pb.initiate = !a_initiates;
    let mut ca = EndpointConfig::new(vec![pa]);
    let mut cb = EndpointConfig::new(vec![pb]);
    ca.wall_clock = wall();
    cb.wall_clock = wall();
    f(0, &mut ca);
    f(1, &mut cb);
    let mut sim = Sim::pair_with(seed, NetParams::default(), ca, cb);
    sim.nodes[0].addr = a;
    sim.nodes[1].addr = b;
    sim
}

fn sim(seed: u64, pki: &Pki, a_initiates: bool) -> Sim {
    sim_at(seed, (A_ADDR, B_ADDR), pki, a_initiates, |_, _| {})
}

/// The Fragment Number and Total Fragments of an SKF datagram, with its
/// exchange and message ID and whether it is a response.
fn fragment(d: &[u8]) -> Option<(FragmentNumbers, ExchangeType, u32, bool)> {
    let m = wire::parse_message(d).ok()?;
    let f = m.sk?.fragment?;
    Some((
        f,
        m.header.exchange,
        m.header.message_id,
        m.header.is_response(),
    ))
}

/// Fragments sent by node `i`, as in [`fragment`].
fn fragments_of(sim: &Sim, i: usize) -> Vec<(FragmentNumbers, ExchangeType, u32, bool)> {
    sim.sent
        .iter()
        .filter(|(n, _, _)| *n == i)
        .filter_map(|(_, _, d)| fragment(d))
        .collect()
}

/// Node `i`'s drops of `reason` whose detail contains `text`.
fn drops(sim: &Sim, i: usize, reason: DropReason, text: &str) -> usize {
    sim.nodes[i]
        .events
        .iter()
        .filter(|e| matches!(e, Event::Dropped { reason: r, detail, .. } if *r == reason && detail.contains(text)))
        .count()
}

fn largest(sim: &Sim, i: usize) -> usize {
    sim.sent
        .iter()
        .filter(|(n, _, _)| *n == i)
        .map(|(_, _, d)| d.len())
        .max()
        .unwrap_or(0)
}

/// N(IKEV2_FRAGMENTATION_SUPPORTED): Notify header tail, protocol 0, SPI
/// size 0, type 16430.
const FRAG_NOTIFY: [u8; 6] = [0, 8, 0, 0, 0x40, 0x2e];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn depth_three_chains_are_fragmented_at_1280_both_ways() {
    let pki = Pki::new();
    for (n, a_initiates) in [true, false].into_iter().enumerate() {
        let mut sim = sim(60 + n as u64, &pki, a_initiates);
        assert!(
            sim.run_until(Duration::from_secs(10), Sim::settled),
            "a_initiates {a_initiates}: not settled"
        );
        assert!(sim.common_mkt());
        // Both IKE_SA_INIT messages announce fragmentation (RFC 7383 2.3).
        assert!(sim.sent[..2]
            .iter()
            .all(|(_, _, d)| contains(d, &FRAG_NOTIFY)));
        // 1,280 octets less 20 (IPv4) and 8 (UDP).
        for (i, _, d) in &sim.sent {
            assert!(d.len() <= 1252, "node {i} sent {} octets", d.len());
        }
        let (init, resp) = if a_initiates { (0, 1) } else { (1, 0) };
        let req = fragments_of(&sim, init);
        let rsp = fragments_of(&sim, resp);
        assert!(
            req.iter()
                .all(|(_, x, id, r)| *x == ExchangeType::IKE_AUTH && *id == 1 && !r),
            "{req:?}"
        );
        assert!(rsp
            .iter()
            .all(|(_, x, id, r)| *x == ExchangeType::IKE_AUTH && *id == 1 && *r));
        let total = |v: &[(FragmentNumbers, ExchangeType, u32, bool)]| v[0].0.total;
        assert!(total(&req) >= 2 && req.len() == usize::from(total(&req)));
        assert!(total(&rsp) >= 2 && rsp.len() == usize::from(total(&rsp)));
        let sizes: Vec<_> = sim.sent.iter().map(|(i, _, d)| (*i, d.len())).collect();
        println!(
            "a_initiates {a_initiates}: IKE_AUTH request in {} fragments, response in {}; datagrams (node, octets): {sizes:?}",
            total(&req),
            total(&rsp)
        );
        // Nothing was dropped on the way.
        for i in 0..2 {
            assert_eq!(sim.nodes[i].ep.counters().dropped.total(), 0, "node {i}");
        }
    }
}

#[test]
fn ipv6_fragments_fit_1280_octets() {
    let pki = Pki::new();
    let a: SocketAddr = "[2001:db8::1]:500".parse().unwrap();
    let b: SocketAddr = "[2001:db8::2]:500".parse().unwrap();
    let mut sim = sim_at(70, (a, b), &pki, true, |_, _| {});
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    assert!(sim.common_mkt());
    // 1,280 octets less 40 (IPv6) and 8 (UDP).
    for (i, _, d) in &sim.sent {
        assert!(d.len() <= 1232, "node {i} sent {} octets", d.len());
    }
    assert!(!fragments_of(&sim, 0).is_empty() && !fragments_of(&sim, 1).is_empty());
    println!(
        "IPv6: largest datagrams {} and {} octets, {} and {} fragments",
        largest(&sim, 0),
        largest(&sim, 1),
        fragments_of(&sim, 0).len(),
        fragments_of(&sim, 1).len()
    );
}

#[test]
fn a_smaller_fragment_size_gives_more_smaller_fragments() {
    let pki = Pki::new();
    let mut sim = sim_at(71, (A_ADDR, B_ADDR), &pki, true, |_, c| {
        c.fragment_size = 576
    });
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    for (i, _, d) in &sim.sent {
        assert!(d.len() <= 548, "node {i} sent {} octets", d.len());
    }
    let n = fragments_of(&sim, 0).len();
    assert!(n >= 3, "{n} fragments");
    println!("fragment_size 576: IKE_AUTH request in {n} fragments");
}

#[test]
fn a_lost_request_fragment_is_recovered_by_retransmission() {
    let pki = Pki::new();
    let mut sim = sim(80, &pki, true);
    let lost = Rc::new(RefCell::new(0));
    let l = lost.clone();
    sim.drop_if = Some(Box::new(move |i, d| {
        let hit = i == 0 && *l.borrow() == 0 && fragment(d).is_some_and(|(f, ..)| f.number == 2);
        if hit {
            *l.borrow_mut() += 1;
        }
        hit
    }));
    assert!(sim.run_until(Duration::from_secs(30), Sim::settled));
    assert_eq!(*lost.borrow(), 1);
    // The retransmission sent every fragment again.
    let req = fragments_of(&sim, 0);
    let total = usize::from(req[0].0.total);
    assert_eq!(req.len(), 2 * total, "{req:?}");
    // B stored the first copy of the others and dropped their duplicates.
    assert_eq!(
        drops(&sim, 1, DropReason::Unexpected, "duplicate"),
        total - 1
    );
    assert_eq!(sim.established(1), 1);
}

#[test]
fn a_lost_response_fragment_gets_the_stored_response_again() {
    let pki = Pki::new();
    let mut sim = sim(81, &pki, true);
    let lost = Rc::new(RefCell::new(0));
    let l = lost.clone();
    sim.drop_if = Some(Box::new(move |i, d| {
        let hit = i == 1 && *l.borrow() == 0 && fragment(d).is_some_and(|(f, ..)| f.number == 2);
        if hit {
            *l.borrow_mut() += 1;
        }
        hit
    }));
    assert!(sim.run_until(Duration::from_secs(30), Sim::settled));
    assert!(sim.common_mkt());
    let rsp = fragments_of(&sim, 1);
    let total = usize::from(rsp[0].0.total);
    // B answered the retransmitted request once (for its fragment 1) with
    // all of the stored fragments, and did not process it again.
    assert_eq!(rsp.len(), 2 * total, "{rsp:?}");
    let req_total = usize::from(fragments_of(&sim, 0)[0].0.total);
    assert_eq!(
        drops(&sim, 1, DropReason::Unexpected, "answered already"),
        req_total - 1
    );
    assert_eq!(sim.established(1), 1);
    assert_eq!(
        sim.nodes[1]
            .events
            .iter()
            .filter(|e| matches!(e, Event::IkeSaEstablished { .. }))
            .count(),
        1
    );
}

#[test]
fn forged_corrupted_and_duplicate_fragments_are_dropped_without_harm() {
    let pki = Pki::new();
    let mut sim = sim(82, &pki, true);
    // Hold back A's first transmission of the IKE_AUTH request.
    let held: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
    let h = held.clone();
    sim.drop_if = Some(Box::new(move |i, d| {
        let Some((f, ..)) = fragment(d).filter(|_| i == 0) else {
            return false;
        };
        let hold = h.borrow().len() < usize::from(f.total);
        if hold {
            h.borrow_mut().push(d.to_vec());
        }
        hold
    }));
    let complete = |h: &[Vec<u8>]| {
        h.first()
            .and_then(|f| fragment(f))
            .is_some_and(|(f, ..)| h.len() == usize::from(f.total))
    };
    assert!(sim.run_until(Duration::from_secs(2), |_| complete(&held.borrow())));
    sim.drop_if = None;
    let frags = held.borrow().clone();
    assert!(frags.len() >= 2);
    let before = sim.nodes[1].ep.counters().dropped;
    sim.inject(1, A_ADDR, &frags[0]);
    // Fragment 2 with a larger Total Fragments: not authentic, and it does
    // not make B forget fragment 1.
    let mut forged = frags[1].clone();
    forged[35] = forged[35].wrapping_add(1);
    sim.inject(1, A_ADDR, &forged);
    // Fragment 2 with a flipped ciphertext octet.
    let mut corrupt = frags[1].clone();
    let last = corrupt.len() - 20;
    corrupt[last] ^= 0x40;
    sim.inject(1, A_ADDR, &corrupt);
    // Fragment 1 again.
    sim.inject(1, A_ADDR, &frags[0]);
    let after = sim.nodes[1].ep.counters().dropped;
    assert_eq!(
        after.get(DropReason::Integrity) - before.get(DropReason::Integrity),
        2
    );
    assert_eq!(
        after.get(DropReason::Unexpected) - before.get(DropReason::Unexpected),
        1
    );
    assert_eq!(drops(&sim, 1, DropReason::Integrity, "fragment 2/"), 2);
    // Nothing answered yet; the genuine rest completes the request.
    let sent_before = sim.sent.len();
    for f in &frags[1..] {
        sim.inject(1, A_ADDR, f);
    }
    let answered = sim.sent[sent_before..]
        .iter()
        .filter(|(i, _, d)| *i == 1 && fragment(d).is_some_and(|(.., r)| r))
        .count();
    assert!(answered >= 2, "B answered with {answered} fragments");
    assert!(sim.run_until(Duration::from_secs(30), Sim::settled));
    assert!(sim.common_mkt());
}

#[test]
fn too_many_fragments_are_refused_before_decryption() {
    let pki = Pki::new();
    let mut sim = sim(83, &pki, true);
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    // A forged fragment of the next request claiming 33 fragments.
    let spis = wire::parse_message(&sim.sent.last().unwrap().2)
        .unwrap()
        .header;
    let h = wire::Header {
        spi_i: spis.spi_i,
        spi_r: spis.spi_r,
        next_payload: PayloadType::NONE,
        version: 0x20,
        exchange: ExchangeType::INFORMATIONAL,
        flags: wire::FLAG_INITIATOR,
        message_id: 2,
        length: 0,
    };
    let numbers = FragmentNumbers {
        number: 1,
        total: 33,
    };
    let mut d = wire::emit_skf_prefix(&h, &[], PayloadType::NONE, numbers, 40);
    d.extend([0x55; 40]);
    sim.inject(1, A_ADDR, &d);
    assert_eq!(
        drops(&sim, 1, DropReason::Malformed, "more than 32 fragments"),
        1
    );
    assert_eq!(sim.established(1), 1);
}

/// A sends a chain padded with `junk` octets of extra CERT payloads, at
/// `fragment_size`: B refuses the reassembly with `expect` and never
/// answers, so A's IKE_AUTH times out.
fn oversized(seed: u64, fragment_size: usize, junk: usize, expect: &str) {
    let pki = Pki::new();
    let mut sim = sim_at(seed, (A_ADDR, B_ADDR), &pki, true, |i, c| {
        if i == 0 {
            c.fragment_size = fragment_size;
        }
        let p = &mut c.peers[0];
        if i == 0 {
            let sig = std::sync::Arc::get_mut(p.signature.as_mut().unwrap()).unwrap();
            for _ in 0..junk / 3000 {
                sig.certificates.push(vec![0x30; 3000]);
            }
        }
        c.retransmit.transmissions = 2;
    });
    sim.run_for(Duration::from_secs(20));
    assert_eq!(sim.established(0), 0);
    assert_eq!(sim.established(1), 0);
    assert!(
        drops(&sim, 1, DropReason::Malformed, expect) > 0,
        "{expect}"
    );
    let total = fragments_of(&sim, 0)[0].0.total;
    println!("{junk} octets of CERTs at fragment_size {fragment_size}: {total} fragments, refused: {expect}");
    // B never answered IKE_AUTH.
    assert!(fragments_of(&sim, 1).is_empty());
    assert!(!sim.sent.iter().any(|(i, _, d)| *i == 1
        && wire::parse_message(d).is_ok_and(|m| m.header.exchange == ExchangeType::IKE_AUTH)));
}

#[test]
fn a_message_in_more_than_32_fragments_is_refused() {
    oversized(84, 576, 18_000, "more than 32 fragments");
}

#[test]
fn a_message_larger_than_64k_is_refused() {
    oversized(85, 8000, 69_000, "would exceed 65536 octets");
}

#[test]
fn a_peer_without_fragmentation_gets_whole_messages() {
    let pki = Pki::new();
    for off in [0, 1] {
        let mut sim = sim_at(90 + off as u64, (A_ADDR, B_ADDR), &pki, true, |i, c| {
            c.advertise_fragmentation = i != off;
        });
        assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
        assert!(sim.common_mkt());
        // The side without it announced nothing, and nobody fragmented.
        assert!(!contains(&sim.sent[off].2, &FRAG_NOTIFY));
        assert!(contains(&sim.sent[1 - off].2, &FRAG_NOTIFY));
        assert!(fragments_of(&sim, 0).is_empty() && fragments_of(&sim, 1).is_empty());
        let big = largest(&sim, 0).max(largest(&sim, 1));
        assert!(big > 1252, "{big}");
        println!("node {off} without fragmentation: whole IKE_AUTH messages up to {big} octets");
    }
}

#[test]
fn fragment_size_out_of_range_is_refused() {
    for bad in [575, 65_536] {
        let mut c = EndpointConfig::new(Vec::new());
        c.fragment_size = bad;
        let e = aokd_proto::ike::Endpoint::new(
            c,
            std::time::Instant::now(),
            Box::new(
                <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::seed_from_u64(1),
            ),
        )
        .err()
        .expect("refused");
        assert!(e.to_string().contains("fragment_size"), "{e}");
    }
    let _ = NotifyType::IKEV2_FRAGMENTATION_SUPPORTED;
}
