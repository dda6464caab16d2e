//! Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/
//! (or the directory given as the first argument): datagrams of real
//! exchanges between two in-process endpoints (the same A and B, seeds and
//! handshake as the targets, so the recorded messages are valid inputs for
//! the targets' replayed states), the RFC 9235 and constructed TCP-AO
//! vectors of tcpao/testdata as packets and pcap/pcapng files, the example
//! configurations and the control protocol's documented requests.
//!
//! Run by `fuzz/run.sh gen` (built without instrumentation). The output is
//! deterministic; files are named by a hash of their contents.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use aokd_fuzz::ike::{self, drain, exchange, start, From, Handshake, A_ADDR, B_ADDR, STRANGER};
use aokd_fuzz::records::{join, FIXED, FRAGMENT, FROM_STRANGER, MINUTES, PAD, RAW, SEALED, TIME};
use aokd_proto::crypto::Secret;
use aokd_proto::ike::{Endpoint, IkeSuite};
use aokd_proto::mkt::MacAlgorithm;
use aokd_proto::numbers::{DhGroup, ExchangeType, NotifyType, PayloadType, ProtocolId};
use aokd_proto::wire::{
    emit_payload_chain, DeletePayload, FragmentNumbers, Header, NotifyPayload, Payload,
    FLAG_INITIATOR, FLAG_RESPONSE,
};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

struct Out {
    root: PathBuf,
    count: usize,
}

impl Out {
    fn put(&mut self, target: &str, data: &[u8]) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        let mut h = DefaultHasher::new();
        data.hash(&mut h);
        std::fs::write(dir.join(format!("seed-{:016x}", h.finish())), data).expect("write seed");
        self.count += 1;
    }
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(REPO).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ------------------------------------------------------------------- IKE

/// The handshake, then what `act` starts on A (or B), logged.
fn recording(
    act: impl Fn(&mut Endpoint, &mut Endpoint, &mut Vec<(From, Vec<u8>)>),
) -> Vec<(From, Vec<u8>)> {
    let (mut a, mut b) = (ike::new_a(), ike::new_b());
    a.handle_timeout(start());
    let mut log = Vec::new();
    exchange(&mut a, &mut b, &mut log);
    act(&mut a, &mut b, &mut log);
    log
}

/// B's answers, with its peer configuration changed by `f`, to A's
/// handshake datagrams: (IKE_SA_INIT response, IKE_AUTH response if any).
fn answers_of(f: impl FnOnce(&mut aokd_proto::ike::PeerConfig)) -> Vec<Vec<u8>> {
    let mut b = ike::new_b_with(f);
    let mut out = Vec::new();
    for d in Handshake::get().sent_by(From::A) {
        b.handle_datagram(start(), A_ADDR, d);
        out.extend(drain(&mut b));
    }
    out
}

fn sealed(exchange: ExchangeType, flags: u8, message_id: u32, payloads: &[Payload]) -> Vec<u8> {
    let mut plaintext = Vec::new();
    let first = emit_payload_chain(payloads, PayloadType::NONE, &mut plaintext);
    let mut body = vec![exchange.0, flags];
    body.extend_from_slice(&message_id.to_be_bytes());
    body.push(first.0);
    body.extend_from_slice(&plaintext);
    body
}

fn ike_seeds(out: &mut Out) {
    let h = Handshake::get();
    // A acts: MKT rekeys, an IKE SA rekey, termination (for B, the responder).
    let by_a = recording(|a, b, log| {
        for step in 0..4 {
            let now = start();
            let _ = match step {
                0 | 2 => a.rekey("b", now),
                1 => a.rekey_ike("b", now),
                _ => a.terminate("b", now).map(|_| true),
            };
            exchange(a, b, log);
        }
    });
    // B acts (for A, established).
    let by_b = recording(|a, b, log| {
        for step in 0..4 {
            let now = start();
            let _ = match step {
                0 | 2 => b.rekey("a", now),
                1 => b.rekey_ike("a", now),
                _ => b.terminate("a", now).map(|_| true),
            };
            exchange(a, b, log);
        }
    });
    let wrong_psk = answers_of(|p| p.psk = Secret::new(b"another key".to_vec()).into());
    let other_group = answers_of(|p| {
        p.ike_suites = vec![IkeSuite {
            group: DhGroup::ECP_256,
            ..IkeSuite::DEFAULT
        }]
        .into()
    });
    let other_mac = answers_of(|p| p.mac_algorithms = vec![MacAlgorithm::ALL[0]].into());

    // ike_wire: every datagram.
    for (_, d) in by_a.iter().chain(&by_b) {
        out.put("ike_wire", d);
    }
    for d in wrong_psk.iter().chain(&other_group).chain(&other_mac) {
        out.put("ike_wire", d);
    }

    let hs = h.log.len();
    let after = |log: &[(From, Vec<u8>)], who: From| -> Vec<Vec<u8>> {
        log[hs..]
            .iter()
            .filter(|(f, _)| *f == who)
            .map(|(_, d)| d.clone())
            .collect()
    };

    // endpoint_responder: B established.
    let a_msgs = after(&by_a, From::A);
    let all: Vec<(u8, Vec<u8>)> = a_msgs.iter().map(|d| (RAW, d.clone())).collect();
    out.put("endpoint_responder", &join(&all));
    for d in &a_msgs {
        out.put("endpoint_responder", &join(&[(RAW, d.clone())]));
        out.put("endpoint_responder", &join(&[(FIXED, d.clone())]));
    }
    for d in h.sent_by(From::A) {
        // Retransmitted handshake requests, and one from a stranger.
        out.put("endpoint_responder", &join(&[(RAW, d.to_vec())]));
        out.put(
            "endpoint_responder",
            &join(&[(RAW | FROM_STRANGER, d.to_vec())]),
        );
    }
    let responder_sealed = [
        sealed(ExchangeType::INFORMATIONAL, 0, 2, &[]),
        sealed(
            ExchangeType::INFORMATIONAL,
            0,
            2,
            &[Payload::Delete(DeletePayload {
                protocol: ProtocolId::IKE,
                spi_size: 0,
                spis: Vec::new(),
            })],
        ),
        sealed(
            ExchangeType::INFORMATIONAL,
            0,
            2,
            &[Payload::Delete(DeletePayload {
                protocol: ProtocolId::TCP_AO,
                spi_size: 1,
                spis: vec![vec![1]],
            })],
        ),
        sealed(
            ExchangeType::CREATE_CHILD_SA,
            0,
            2,
            &[Payload::Notify(NotifyPayload {
                protocol: ProtocolId::TCP_AO,
                spi: vec![1],
                ty: NotifyType::REKEY_SA,
                data: Vec::new(),
            })],
        ),
        // A response to B's first request (a liveness check after time).
        sealed(ExchangeType::INFORMATIONAL, FLAG_RESPONSE, 0, &[]),
    ];
    for s in &responder_sealed {
        out.put("endpoint_responder", &join(&[(SEALED | PAD, s.clone())]));
    }
    out.put(
        "endpoint_responder",
        &join(&[
            (TIME | MINUTES, vec![1]),
            (SEALED | PAD, responder_sealed[4].clone()),
        ]),
    );
    out.put("endpoint_responder", &join(&[(TIME | MINUTES, vec![200])]));
    // SKF fragments (RFC 7383) of a CREATE_CHILD_SA request: whole, out of
    // order with a duplicate, and with a change of Total Fragments.
    let chain = &responder_sealed[3];
    let (head, body) = chain.split_at(7);
    let fragment = |n: u16, total: u16, piece: &[u8]| {
        let mut v = n.to_be_bytes().to_vec();
        v.extend_from_slice(&total.to_be_bytes());
        v.extend_from_slice(&head[..6]);
        v.push(if n == 1 { head[6] } else { 0 });
        v.extend_from_slice(piece);
        (SEALED | PAD | FRAGMENT, v)
    };
    let half = body.len() / 2;
    let (p1, p2) = body.split_at(half);
    let (q1, rest) = body.split_at(half / 2);
    let (q2, q3) = rest.split_at(rest.len() / 2);
    out.put(
        "endpoint_responder",
        &join(&[fragment(1, 2, p1), fragment(2, 2, p2)]),
    );
    // The same two fragments sealed by B's keys, as datagrams: for
    // ike_wire, and raw for the responder (valid ICVs, the seeds and
    // instant being fixed).
    let b = h.established_b();
    let sa = &b.peers()[0].sas[0];
    let header = Header {
        spi_i: sa.spi_i,
        spi_r: sa.spi_r,
        next_payload: PayloadType::NONE,
        version: 0x20,
        exchange: ExchangeType::CREATE_CHILD_SA,
        flags: FLAG_INITIATOR,
        message_id: 2,
        length: 0,
    };
    let mut raw = Vec::new();
    for (n, piece) in [(1u16, p1), (2, p2)] {
        let mut plaintext = piece.to_vec();
        plaintext.push(0);
        let first = PayloadType(if n == 1 { head[6] } else { 0 });
        let numbers = FragmentNumbers {
            number: n,
            total: 2,
        };
        let d = b
            .fuzz_seal_as_peer(
                sa.spi_r,
                &header,
                first,
                Some(numbers),
                &plaintext,
                100 + u64::from(n),
            )
            .expect("sealed fragment");
        out.put("ike_wire", &d);
        raw.push((RAW, d));
    }
    let answered = aokd_fuzz::records::run(&mut h.established_b(), A_ADDR, &join(&raw));
    assert_eq!(
        answered, 1,
        "the sealed fragments are reassembled and answered"
    );
    out.put("endpoint_responder", &join(&raw));
    out.put(
        "endpoint_responder",
        &join(&[fragment(2, 2, p2), fragment(2, 2, p2), fragment(1, 2, p1)]),
    );
    out.put(
        "endpoint_responder",
        &join(&[
            fragment(1, 2, p1),
            fragment(1, 3, q1),
            fragment(2, 2, p2),
            fragment(3, 3, q3),
            fragment(2, 3, q2),
            (TIME | MINUTES, vec![1]),
            fragment(1, 2, p1),
        ]),
    );

    // endpoint_initiator: state octet, then records.
    let b_hs = h.sent_by(From::B);
    let with_state = |state: u8, records: &[(u8, Vec<u8>)]| {
        let mut v = vec![state];
        v.extend(join(records));
        v
    };
    out.put(
        "endpoint_initiator",
        &with_state(0, &[(RAW, b_hs[0].to_vec())]),
    );
    out.put(
        "endpoint_initiator",
        &with_state(0, &[(FIXED, b_hs[0].to_vec())]),
    );
    out.put("endpoint_initiator", &with_state(0, &[(TIME, vec![2])]));
    out.put(
        "endpoint_initiator",
        &with_state(0, &[(RAW, other_group[0].clone())]),
    );
    out.put(
        "endpoint_initiator",
        &with_state(1, &[(RAW, b_hs[1].to_vec())]),
    );
    out.put(
        "endpoint_initiator",
        &with_state(1, &[(FIXED, b_hs[1].to_vec())]),
    );
    out.put("endpoint_initiator", &with_state(1, &[(TIME, vec![2])]));
    for answers in [&wrong_psk, &other_mac] {
        if let Some(auth) = answers.get(1) {
            out.put("endpoint_initiator", &with_state(1, &[(RAW, auth.clone())]));
        }
    }
    out.put(
        "endpoint_initiator",
        &with_state(
            1,
            &[(
                SEALED | PAD,
                sealed(
                    ExchangeType::IKE_AUTH,
                    FLAG_RESPONSE,
                    1,
                    &[Payload::Notify(NotifyPayload {
                        protocol: ProtocolId::NONE,
                        spi: Vec::new(),
                        ty: NotifyType::AUTHENTICATION_FAILED,
                        data: Vec::new(),
                    })],
                ),
            )],
        ),
    );
    let b_msgs = after(&by_b, From::B);
    let all: Vec<(u8, Vec<u8>)> = b_msgs.iter().map(|d| (RAW, d.clone())).collect();
    out.put("endpoint_initiator", &with_state(2, &all));
    for d in &b_msgs {
        out.put("endpoint_initiator", &with_state(2, &[(RAW, d.clone())]));
    }
    out.put(
        "endpoint_initiator",
        &with_state(
            2,
            &[(SEALED | PAD, sealed(ExchangeType::INFORMATIONAL, 0, 0, &[]))],
        ),
    );
    out.put(
        "endpoint_initiator",
        &with_state(2, &[(TIME | MINUTES, vec![100])]),
    );
    let _ = (B_ADDR, STRANGER);
}

// ----------------------------------------------------------------- TCP-AO

/// The packets of each RFC 9235 IPv4 section.
fn ipv4_sections() -> Vec<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut collecting: Option<Vec<u8>> = None;
    for line in read("tcpao/testdata/rfc9235-ipv4.txt")
        .lines()
        .map(str::trim)
    {
        if line.starts_with("Section ") {
            out.push(Vec::new());
            continue;
        }
        if line.starts_with("IPv4/TCP segment") {
            collecting = Some(Vec::new());
            continue;
        }
        if let Some(buf) = collecting.as_mut() {
            let toks: Vec<&str> = line.split_whitespace().collect();
            if !toks.is_empty() && toks.iter().all(|t| t.len() == 2) {
                buf.extend(toks.iter().map(|t| u8::from_str_radix(t, 16).expect("hex")));
            } else if let (Some(pkt), Some(last)) = (collecting.take(), out.last_mut()) {
                last.push(pkt);
            }
        }
    }
    out
}

/// Packets of rfc9235-ipv6.txt / tcpao-constructed.txt, grouped by
/// connection (the name before its last '.').
fn record_packets(rel: &str) -> Vec<Vec<Vec<u8>>> {
    let mut out: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    let mut name = String::new();
    for line in read(rel).lines().map(str::trim) {
        if let Some(n) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            name = n.rsplit_once('.').map_or(n, |(c, _)| c).to_string();
        } else if let Some(hex) = line.strip_prefix("packet = ") {
            let p = hex::decode(hex).expect("packet hex");
            match out.last_mut() {
                Some((n, v)) if *n == name => v.push(p),
                _ => out.push((name.clone(), vec![p])),
            }
        }
    }
    out.into_iter().map(|(_, v)| v).collect()
}

#[derive(Clone, Copy)]
enum Link {
    Ethernet,
    Sll,
    Sll2,
    Raw,
    Null,
}

impl Link {
    fn linktype(self) -> u32 {
        match self {
            Link::Ethernet => 1,
            Link::Sll => 113,
            Link::Sll2 => 276,
            Link::Raw => 101,
            Link::Null => 0,
        }
    }

    fn frame(self, ip: &[u8]) -> Vec<u8> {
        let v6 = ip.first().is_some_and(|b| b >> 4 == 6);
        let ethertype: [u8; 2] = if v6 { [0x86, 0xdd] } else { [0x08, 0x00] };
        let mut f = Vec::new();
        match self {
            Link::Ethernet => {
                f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
                f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]); // one 802.1Q tag
                f.extend_from_slice(&ethertype);
            }
            Link::Sll => {
                f.extend_from_slice(&[0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
                f.extend_from_slice(&ethertype);
            }
            Link::Sll2 => {
                f.extend_from_slice(&ethertype);
                f.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
            }
            Link::Raw => {}
            Link::Null => f.extend_from_slice(&(if v6 { 30u32 } else { 2u32 }).to_le_bytes()),
        }
        f.extend_from_slice(ip);
        f
    }
}

/// A legacy pcap file (microsecond, little-endian).
fn pcap(link: Link, packets: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&link.linktype().to_le_bytes());
    for (i, p) in packets.iter().enumerate() {
        let f = link.frame(p);
        out.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        out.extend_from_slice(&(i as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&f);
    }
    out
}

fn pcapng_block(block_type: u32, body: &[u8]) -> Vec<u8> {
    let mut padded = body.to_vec();
    while padded.len() & 3 != 0 {
        padded.push(0);
    }
    let len = (12 + padded.len()) as u32;
    let mut b = Vec::new();
    b.extend_from_slice(&block_type.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&padded);
    b.extend_from_slice(&len.to_le_bytes());
    b
}

/// A pcapng file with one interface per link; packet `i` goes on interface
/// `i % links.len()`, as an enhanced packet block (a simple packet block
/// for every third packet on interface 0).
fn pcapng(links: &[Link], packets: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1a2b_3c4du32.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    out.extend(pcapng_block(0x0a0d_0d0a, &shb));
    for link in links {
        let mut idb = Vec::new();
        idb.extend_from_slice(&(link.linktype() as u16).to_le_bytes());
        idb.extend_from_slice(&0u16.to_le_bytes());
        idb.extend_from_slice(&0u32.to_le_bytes());
        out.extend(pcapng_block(1, &idb));
    }
    for (i, p) in packets.iter().enumerate() {
        let if_id = i % links.len();
        let f = links[if_id].frame(p);
        if if_id == 0 && i % 3 == 2 {
            let mut spb = (f.len() as u32).to_le_bytes().to_vec();
            spb.extend_from_slice(&f);
            out.extend(pcapng_block(3, &spb));
            continue;
        }
        let mut epb = Vec::new();
        epb.extend_from_slice(&(if_id as u32).to_le_bytes());
        epb.extend_from_slice(&0u32.to_le_bytes());
        epb.extend_from_slice(&(i as u32).to_le_bytes());
        epb.extend_from_slice(&(f.len() as u32).to_le_bytes());
        epb.extend_from_slice(&(f.len() as u32).to_le_bytes());
        epb.extend_from_slice(&f);
        out.extend(pcapng_block(6, &epb));
    }
    out
}

fn tcpao_seeds(out: &mut Out) {
    let mut connections = ipv4_sections();
    connections.extend(record_packets("tcpao/testdata/rfc9235-ipv6.txt"));
    connections.extend(record_packets("tcpao/testdata/tcpao-constructed.txt"));
    let links = [Link::Ethernet, Link::Sll, Link::Sll2, Link::Raw, Link::Null];
    for (i, packets) in connections.iter().filter(|p| !p.is_empty()).enumerate() {
        for p in packets {
            out.put("tcp_segment", p);
        }
        let link = links[i % links.len()];
        out.put("pcap", &pcap(link, packets));
        if i % 2 == 0 {
            out.put(
                "pcap",
                &pcapng(&[link, links[(i + 1) % links.len()]], packets),
            );
        }
    }
}

// ------------------------------------------------------- config, control

fn config_seeds(out: &mut Out) {
    let mut texts: Vec<String> = ["minimal", "full", "route-server"]
        .iter()
        .map(|n| read(&format!("daemon/examples/{n}.toml")))
        .collect();
    // The ```toml blocks of docs/configuration.md.
    let doc = read("docs/configuration.md");
    let mut block: Option<String> = None;
    for line in doc.lines() {
        match (&mut block, line.trim()) {
            (None, "```toml") => block = Some(String::new()),
            (Some(b), "```") => {
                texts.push(std::mem::take(b));
                block = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    for t in texts {
        // The one PSK file the config target provides.
        let t: String = t
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("psk_file") {
                    "psk_file = \"peer.psk\"".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        out.put("config", t.as_bytes());
    }
    for psk in [
        "0x000102030405060708090a0b0c0d0e0f\n",
        "secret\r\n",
        "00112233445566778899aabbccddeeff",
    ] {
        out.put("config", psk.as_bytes());
    }
}

fn control_seeds(out: &mut Out) {
    for doc in ["docs/control.md", "docs/attach.md"] {
        for line in read(doc).lines().map(str::trim) {
            if line.starts_with("{\"version\"") && !line.contains("...") {
                out.put("control", line.as_bytes());
            }
        }
    }
    for line in [
        r#"{"version":1,"command":"status"}"#,
        r#"{"version":1,"command":"sockets"}"#,
        r#"{"version":1,"command":"rekey","peer":"r2","ike":true}"#,
        r#"{"version":1,"command":"rekey","peer":"r2"}"#,
        r#"{"version":2,"command":"status"}"#,
    ] {
        out.put("control", line.as_bytes());
    }
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let mut out = Out { root, count: 0 };
    ike_seeds(&mut out);
    tcpao_seeds(&mut out);
    config_seeds(&mut out);
    control_seeds(&mut out);
    eprintln!("gen-corpus: {} seeds in {}", out.count, out.root.display());
}
