//! Malformed input never panics and never changes an established SA: random
//! datagrams, truncations, lying length fields and mutations of the real
//! messages of an exchange are thrown at both endpoints.

mod harness;

use aokd_proto::ike::DropReason;
use std::time::Duration;

use harness::{NetParams, Sim, A_ADDR, B_ADDR};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

const PSK: &[u8] = b"robustness test key";

/// What identifies the established state of a node.
fn fingerprint(sim: &Sim, i: usize) -> Vec<String> {
    let peers = sim.nodes[i].ep.peers();
    let mut v: Vec<String> = peers[0]
        .sas
        .iter()
        .filter(|s| s.state == "established")
        .map(|s| format!("sa {:016x} {:016x}", s.spi_i, s.spi_r))
        .collect();
    v.extend(peers[0].mkts.iter().map(|m| {
        format!(
            "mkt {} {} {}",
            m.mkt.send_id,
            m.mkt.recv_id,
            m.mkt.fingerprint()
        )
    }));
    v
}

fn mutate(rng: &mut ChaCha20Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let pick = |rng: &mut ChaCha20Rng| corpus[(rng.next_u32() as usize) % corpus.len()].clone();
    match rng.next_u32() % 6 {
        // Random garbage of random length.
        0 => {
            let mut v = vec![0u8; (rng.next_u32() % 600) as usize];
            rng.fill_bytes(&mut v);
            v
        }
        // A valid message truncated.
        1 => {
            let mut v = pick(rng);
            let n = (rng.next_u32() as usize) % v.len().max(1);
            v.truncate(n);
            v
        }
        // A length field somewhere overwritten (header length at 24, payload lengths at 30.. etc.).
        2 => {
            let mut v = pick(rng);
            if v.len() > 4 {
                let at = (rng.next_u32() as usize) % (v.len() - 2);
                let val = match rng.next_u32() % 4 {
                    0 => 0u16,
                    1 => 0xffff,
                    2 => 4,
                    _ => rng.next_u32() as u16,
                };
                v[at..at + 2].copy_from_slice(&val.to_be_bytes());
            }
            v
        }
        // Bit flips in a valid message.
        3 => {
            let mut v = pick(rng);
            for _ in 0..=(rng.next_u32() % 4) {
                if !v.is_empty() {
                    let at = (rng.next_u32() as usize) % v.len();
                    v[at] ^= 1 << (rng.next_u32() % 8);
                }
            }
            v
        }
        // A valid header with a random body.
        4 => {
            let mut v = pick(rng);
            for b in v.iter_mut().skip(28) {
                *b = rng.next_u32() as u8;
            }
            v
        }
        // A valid message with bytes appended.
        _ => {
            let mut v = pick(rng);
            let extra = (rng.next_u32() % 64) as usize;
            for _ in 0..extra {
                v.push(rng.next_u32() as u8);
            }
            v
        }
    }
}

#[test]
fn hundred_thousand_malformed_datagrams_change_nothing() {
    let mut sim = Sim::pair_of(11, NetParams::default(), PSK, |_| {}, |_| {});
    assert!(sim.run_until(Duration::from_secs(10), Sim::settled));
    let before = [fingerprint(&sim, 0), fingerprint(&sim, 1)];
    let corpus: Vec<Vec<u8>> = sim.sent.iter().map(|(_, _, d)| d.clone()).collect();
    assert!(corpus.len() >= 4);
    let mut rng = ChaCha20Rng::seed_from_u64(0xa0c0);
    for n in 0..100_000u32 {
        let d = mutate(&mut rng, &corpus);
        let (to, from) = if n % 2 == 0 { (0, B_ADDR) } else { (1, A_ADDR) };
        sim.inject(to, from, &d);
        if n % 10_000 == 0 {
            // Let timers run (half-open SAs expire) without disturbing the settled state.
            sim.run_for(Duration::from_secs(40));
        }
    }
    sim.run_for(Duration::from_secs(60));
    // The mutations reach past the parser: many parse and are rejected later
    // (unknown SPI, failed integrity check, wrong message ID...).
    let reasons: Vec<DropReason> = sim
        .nodes
        .iter()
        .flat_map(|n| n.events.iter())
        .filter_map(|e| match e {
            aokd_proto::ike::Event::Dropped { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    let malformed = reasons
        .iter()
        .filter(|r| **r == DropReason::Malformed)
        .count();
    // The counters agree with the events.
    let counted: u64 = sim
        .nodes
        .iter()
        .map(|n| n.ep.counters().dropped.total())
        .sum();
    assert_eq!(counted, reasons.len() as u64);
    let deeper = reasons.len() - malformed;
    eprintln!("dropped: {malformed} malformed, {deeper} rejected after parsing");
    assert!(malformed > 10_000, "{malformed}");
    assert!(deeper > 1_000, "{deeper}");
    assert_eq!(fingerprint(&sim, 0), before[0]);
    assert_eq!(fingerprint(&sim, 1), before[1]);
    assert!(sim.settled());
}
