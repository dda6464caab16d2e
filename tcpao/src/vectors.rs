//! Conformance tests: RFC 9235 (TCP-AO test vectors) sections 4 and 5
//! (IPv4, testdata/rfc9235-ipv4.txt) and 6 and 7 (IPv6,
//! testdata/rfc9235-ipv6.txt), plus independently computed segments
//! (testdata/tcpao-constructed.txt, see testdata/make_tcpao_vectors.py):
//! IPv6 versions of every IPv4 section, HMAC-SHA-256-128, SNE 1 and
//! TCP-MD5 (RFC 2385).

use super::*;
use crate::{MacAlgorithm, Secret};

const IPV4: &str = include_str!("../testdata/rfc9235-ipv4.txt");
const IPV6: &str = include_str!("../testdata/rfc9235-ipv6.txt");
const CONSTRUCTED: &str = include_str!("../testdata/tcpao-constructed.txt");

const MASTER_KEY: &[u8] = b"testvector";
const CLIENT_KEY_ID: u8 = 61;
const SERVER_KEY_ID: u8 = 84;
const BGP_PORT: u16 = 179;

fn is_hex_line(line: &str) -> bool {
    let mut toks = line.split_whitespace().peekable();
    toks.peek().is_some() && toks.all(|t| t.len() == 2 && u8::from_str_radix(t, 16).is_ok())
}

fn hex_tokens(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|t| u8::from_str_radix(t, 16).unwrap())
        .collect()
}

#[derive(Debug, Default)]
struct VectorSegment {
    id: String,
    packet: Vec<u8>,
    traffic_key: Vec<u8>,
    mac: Vec<u8>,
    mac_input: Vec<u8>,
}

#[derive(Debug, Default)]
struct Section {
    name: String,
    algorithm: Option<MacAlgorithm>,
    include_options: bool,
    client_isn: u32,
    server_isn: u32,
    /// (name, context, key) of the four traffic keys, client's view.
    keys: Vec<(String, Vec<u8>, Vec<u8>)>,
    segments: Vec<VectorSegment>,
}

/// Parses rfc9235-ipv4.txt.
fn ipv4_sections() -> Vec<Section> {
    let mut sections: Vec<Section> = Vec::new();
    let lines: Vec<&str> = IPV4.lines().collect();
    let mut i = 0;
    // Collects the hex lines that follow line `i`.
    let block = |i: &mut usize| -> Vec<u8> {
        let mut out = Vec::new();
        while *i + 1 < lines.len() && is_hex_line(lines[*i + 1]) {
            *i += 1;
            out.extend(hex_tokens(lines[*i]));
        }
        out
    };
    while i < lines.len() {
        let line = lines[i].trim();
        if let Some(rest) = line.strip_prefix("Section ") {
            sections.push(Section {
                name: rest.split_whitespace().next().unwrap().to_string(),
                algorithm: Some(if line.contains("CMAC") {
                    MacAlgorithm::AesCmac96
                } else {
                    MacAlgorithm::HmacSha1_96
                }),
                include_options: !line.contains("excluded"),
                ..Default::default()
            });
        } else if line.starts_with("Client ISN") {
            let isns: Vec<u32> = line
                .split_whitespace()
                .filter_map(|t| t.strip_prefix("0x"))
                .map(|t| u32::from_str_radix(t, 16).unwrap())
                .collect();
            let s = sections.last_mut().unwrap();
            s.client_isn = isns[0];
            s.server_isn = isns[1];
        } else if (line.starts_with("Send_") || line.starts_with("Receive_"))
            && line.contains("_traffic_key")
        {
            let name = line.split_whitespace().next().unwrap().to_string();
            let ctx_line = lines[i + 1].trim();
            let ctx = hex_tokens(ctx_line.strip_prefix("context:").unwrap());
            i += 2; // "key    :"
            let key = block(&mut i);
            sections.last_mut().unwrap().keys.push((name, ctx, key));
        } else if let Some(rest) = line.strip_prefix("--- ") {
            sections.last_mut().unwrap().segments.push(VectorSegment {
                id: rest.split_whitespace().next().unwrap().to_string(),
                ..Default::default()
            });
        } else if line.starts_with("IPv4/TCP segment") {
            let b = block(&mut i);
            let seg = sections.last_mut().unwrap().segments.last_mut().unwrap();
            seg.packet = b;
        } else if line == "traffic key:" {
            let b = block(&mut i);
            let seg = sections.last_mut().unwrap().segments.last_mut().unwrap();
            seg.traffic_key = b;
        } else if line.starts_with("expected MAC") {
            let b = block(&mut i);
            let seg = sections.last_mut().unwrap().segments.last_mut().unwrap();
            seg.mac = b;
        } else if line.starts_with("[computed] MAC input") {
            let b = block(&mut i);
            let seg = sections.last_mut().unwrap().segments.last_mut().unwrap();
            seg.mac_input = b;
        }
        i += 1;
    }
    sections
}

/// One record of rfc9235-ipv6.txt or tcpao-constructed.txt.
#[derive(Debug, Default, Clone)]
struct Record {
    name: String,
    fields: Vec<(String, String)>,
}

impl Record {
    fn get(&self, k: &str) -> &str {
        self.fields
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{}: no {k}", self.name))
    }
    fn hex(&self, k: &str) -> Vec<u8> {
        hex::decode(self.get(k)).unwrap()
    }
    fn u32(&self, k: &str) -> u32 {
        u32::from_str_radix(self.get(k), 16).unwrap()
    }
    fn connection(&self) -> &str {
        self.name.rsplit_once('.').map_or(&self.name, |(c, _)| c)
    }
}

fn records(text: &str) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            out.push(Record {
                name: name.to_string(),
                fields: Vec::new(),
            });
        } else if let Some((k, v)) = line.split_once('=') {
            out.last_mut()
                .unwrap()
                .fields
                .push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// The ISNs of the KDF context for a segment (RFC 5925 5.2): SYN (ISN, 0),
/// SYN-ACK (ISN, ACK - 1), other segments both connection ISNs.
fn context_isns(s: &Segment<'_>, client_isn: u32, server_isn: u32) -> (u32, u32) {
    if s.syn() && !s.ack_flag() {
        (s.seq, 0)
    } else if s.syn() {
        (s.seq, s.ack.wrapping_sub(1))
    } else if s.dst_port == BGP_PORT {
        (client_isn, server_isn)
    } else {
        (server_isn, client_isn)
    }
}

/// Full verification of one packet as a receiver would do it.
fn verifies(
    packet: &[u8],
    alg: MacAlgorithm,
    include_options: bool,
    client_isn: u32,
    server_isn: u32,
) -> bool {
    let Ok(s) = parse_ip_packet(packet) else {
        return false;
    };
    let (si, di) = context_isns(&s, client_isn, server_isn);
    let ctx = KeyContext::new(&s.addresses, s.src_port, s.dst_port, si, di);
    let key = derive_traffic_key(alg, MASTER_KEY, &ctx);
    verify_mac(&key, &s, 0, include_options).is_ok()
}

/// Octets of a packet covered by the TCP-AO MAC (RFC 5925 5.1): the
/// pseudo-header's fields, the TCP header except its checksum (only the
/// base header and TCP-AO when options are excluded), the data.
fn covered_octets(packet: &[u8], include_options: bool) -> Vec<usize> {
    let s = parse_ip_packet(packet).unwrap();
    let mut covered: Vec<usize> = match s.addresses {
        Addresses::V4 { .. } => [2, 3, 9].into_iter().chain(12..20).collect(),
        Addresses::V6 { .. } => [4, 5, 6].into_iter().chain(8..40).collect(),
    };
    let tcp_at = packet.len() - s.tcp_len as usize;
    let AuthOption::Ao(ao) = s.auth else {
        panic!("unsigned vector")
    };
    for i in 0..s.tcp_len as usize {
        let in_base = i < 20;
        let in_ao = (ao.offset..ao.offset + ao.len()).contains(&i);
        let in_data = i >= s.header.len();
        if i == 16 || i == 17 {
            continue;
        }
        if include_options || in_base || in_ao || in_data {
            covered.push(tcp_at + i);
        }
    }
    covered
}

fn assert_every_flip_fails(
    packet: &[u8],
    alg: MacAlgorithm,
    include_options: bool,
    client_isn: u32,
    server_isn: u32,
    what: &str,
) {
    assert!(
        verifies(packet, alg, include_options, client_isn, server_isn),
        "{what}"
    );
    for at in covered_octets(packet, include_options) {
        for bit in 0..8 {
            let mut p = packet.to_vec();
            p[at] ^= 1 << bit;
            assert!(
                !verifies(&p, alg, include_options, client_isn, server_isn),
                "{what}: flipping bit {bit} of octet {at} still verifies"
            );
        }
    }
}

#[test]
fn rfc9235_ipv4_traffic_keys() {
    let sections = ipv4_sections();
    assert_eq!(sections.len(), 4);
    for sec in &sections {
        let alg = sec.algorithm.unwrap();
        assert_eq!(sec.keys.len(), 4, "{}", sec.name);
        // Every listed context and key, recomputed.
        for (name, ctx_bytes, key) in &sec.keys {
            let s = parse_ip_packet(&sec.segments[0].packet).unwrap();
            let (c, srv) = (s.addresses, s.addresses.reversed());
            let (cp, sp) = (s.src_port, s.dst_port);
            let ctx = match name.as_str() {
                "Send_SYN_traffic_key" => KeyContext::new(&c, cp, sp, sec.client_isn, 0),
                "Receive_SYN_traffic_key" => KeyContext::new(&srv, sp, cp, sec.server_isn, 0),
                "Send_other_traffic_key" => {
                    KeyContext::new(&c, cp, sp, sec.client_isn, sec.server_isn)
                }
                "Receive_other_traffic_key" => {
                    KeyContext::new(&srv, sp, cp, sec.server_isn, sec.client_isn)
                }
                other => panic!("{other}"),
            };
            assert_eq!(
                ctx.as_bytes(),
                &ctx_bytes[..],
                "{} {name} context",
                sec.name
            );
            let k = derive_traffic_key(alg, MASTER_KEY, &ctx);
            assert_eq!(k.as_bytes(), &key[..], "{} {name}", sec.name);
        }
        // The same four through ConnectionKeys.
        let s = parse_ip_packet(&sec.segments[0].packet).unwrap();
        let ck = ConnectionKeys::derive(
            alg,
            MASTER_KEY,
            &s.addresses,
            s.src_port,
            s.dst_port,
            sec.client_isn,
            sec.server_isn,
        );
        assert_eq!(ck.send_syn.as_bytes(), &sec.keys[0].2[..]);
        assert_eq!(ck.receive_syn.as_bytes(), &sec.keys[1].2[..]);
        assert_eq!(ck.send_other.as_bytes(), &sec.keys[2].2[..]);
        assert_eq!(ck.receive_other.as_bytes(), &sec.keys[3].2[..]);
    }
}

#[test]
fn rfc9235_ipv4_segments() {
    let sections = ipv4_sections();
    let mut n = 0;
    for sec in &sections {
        let alg = sec.algorithm.unwrap();
        assert_eq!(sec.segments.len(), 4, "{}", sec.name);
        for seg in &sec.segments {
            let what = format!("RFC 9235 {}", seg.id);
            let s = parse_ip_packet(&seg.packet).unwrap();
            let AuthOption::Ao(ao) = s.auth else {
                panic!("{what}: no TCP-AO")
            };
            let from_client = s.dst_port == BGP_PORT;
            assert_eq!(
                (ao.key_id, ao.rnext_key_id),
                if from_client {
                    (CLIENT_KEY_ID, SERVER_KEY_ID)
                } else {
                    (SERVER_KEY_ID, CLIENT_KEY_ID)
                }
            );
            assert_eq!(ao.mac, &seg.mac[..], "{what}: MAC in the option");
            let (si, di) = context_isns(&s, sec.client_isn, sec.server_isn);
            let ctx = KeyContext::new(&s.addresses, s.src_port, s.dst_port, si, di);
            let key = derive_traffic_key(alg, MASTER_KEY, &ctx);
            assert_eq!(key.as_bytes(), &seg.traffic_key[..], "{what}: traffic key");
            let input = mac_input(&s, 0, sec.include_options).unwrap();
            assert_eq!(input, seg.mac_input, "{what}: MAC input");
            let mac = compute_mac(&key, &s, 0, sec.include_options).unwrap();
            assert_eq!(mac.as_bytes(), &seg.mac[..], "{what}: MAC");
            assert_eq!(verify_mac(&key, &s, 0, sec.include_options), Ok(()));
            // Wrong option flag, wrong SNE: no match.
            assert_eq!(
                verify_mac(&key, &s, 0, !sec.include_options),
                Err(VerifyError::BadMac),
                "{what}"
            );
            assert_eq!(
                verify_mac(&key, &s, 1, sec.include_options),
                Err(VerifyError::BadMac),
                "{what}"
            );
            assert_every_flip_fails(
                &seg.packet,
                alg,
                sec.include_options,
                sec.client_isn,
                sec.server_isn,
                &what,
            );
            n += 1;
        }
    }
    assert_eq!(n, 16);
}

fn ao_key(alg: MacAlgorithm, include_options: bool, key_id: u8, master: &[u8]) -> AoKey {
    AoKey {
        key_id,
        algorithm: alg,
        include_options,
        master_key: Secret::new(master.to_vec()),
        retired: false,
    }
}

#[test]
fn rfc9235_ipv4_connections_through_the_capture_verifier() {
    for sec in ipv4_sections() {
        let alg = sec.algorithm.unwrap();
        let keys = KeySet {
            ao: vec![
                ao_key(alg, sec.include_options, CLIENT_KEY_ID, MASTER_KEY),
                ao_key(alg, sec.include_options, SERVER_KEY_ID, MASTER_KEY),
            ],
            md5: vec![],
            md5_retired: vec![],
        };
        let mut v = CaptureVerifier::new(keys);
        for seg in &sec.segments {
            assert_eq!(v.process(&seg.packet), Outcome::Verified, "{}", seg.id);
        }
        let reports = v.reports();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].counters.verified, 4);
        assert!(reports[0].isns_seen);
        assert_eq!(reports[0].signing(), Signing::TcpAo);
        assert!(v.passed());
        let syn = parse_ip_packet(&sec.segments[0].packet).unwrap();
        assert_eq!(reports[0].client.port, syn.src_port);
    }
}

#[test]
fn capture_verifier_reports_failures() {
    let sections = ipv4_sections();
    let sec = &sections[0];
    let good = || KeySet {
        ao: vec![
            ao_key(MacAlgorithm::HmacSha1_96, true, CLIENT_KEY_ID, MASTER_KEY),
            ao_key(MacAlgorithm::HmacSha1_96, true, SERVER_KEY_ID, MASTER_KEY),
        ],
        md5: vec![],
        md5_retired: vec![],
    };
    // Wrong master key: every segment is a bad MAC.
    let mut wrong = good();
    for k in &mut wrong.ao {
        k.master_key = Secret::new(b"wrongvector".to_vec());
    }
    let mut v = CaptureVerifier::new(wrong);
    for seg in &sec.segments {
        assert_eq!(v.process(&seg.packet), Outcome::BadMac);
    }
    assert!(!v.passed());
    // Only the client's KeyID configured: the server's is unknown.
    let mut only_client = good();
    only_client.ao.truncate(1);
    let mut v = CaptureVerifier::new(only_client);
    let outcomes: Vec<Outcome> = sec.segments.iter().map(|s| v.process(&s.packet)).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Verified,
            Outcome::UnknownKeyId,
            Outcome::Verified,
            Outcome::UnknownKeyId
        ]
    );
    assert_eq!(v.reports()[0].counters.unknown_key_id, 2);
    assert!(!v.passed());
    // Without the SYN and SYN-ACK the ISNs are unknown.
    let mut v = CaptureVerifier::new(good());
    assert_eq!(v.process(&sec.segments[2].packet), Outcome::NoIsn);
    assert_eq!(v.process(&sec.segments[3].packet), Outcome::NoIsn);
    assert!(!v.reports()[0].isns_seen);
    assert!(!v.passed());
    // The SYN-ACK alone gives both ISNs.
    let mut v = CaptureVerifier::new(good());
    for seg in &sec.segments[1..] {
        assert_eq!(v.process(&seg.packet), Outcome::Verified, "{}", seg.id);
    }
    assert!(v.passed());
    // An unsigned segment in a signed connection.
    let mut v = CaptureVerifier::new(good());
    for seg in &sec.segments {
        v.process(&seg.packet);
    }
    let mut plain = sec.segments[2].packet.clone();
    // Turn TCP-AO (at IP offset 20 + 32) into NOPs.
    for b in &mut plain[52..68] {
        *b = 1;
    }
    assert_eq!(v.process(&plain), Outcome::Unsigned);
    assert_eq!(v.reports()[0].counters.unsigned, 1);
    assert!(!v.passed());
    // Truncated capture of a signed segment.
    let mut v = CaptureVerifier::new(good());
    assert_eq!(v.process(&sec.segments[0].packet), Outcome::Verified);
    let p = &sec.segments[2].packet;
    v.process(&sec.segments[1].packet);
    assert_eq!(v.process(&p[..p.len() - 10]), Outcome::Truncated);
    assert!(!v.passed());
    // Not IP: ignored, and the capture still passes.
    let mut v = CaptureVerifier::new(good());
    assert_eq!(v.process(&[0x00, 0x01]), Outcome::Ignored);
    assert!(v.passed());
}

#[test]
fn unsigned_connections_pass() {
    let sections = ipv4_sections();
    let mut v = CaptureVerifier::new(KeySet::default());
    let mut p = sections[0].segments[2].packet.clone();
    for b in &mut p[52..68] {
        *b = 1;
    }
    assert_eq!(v.process(&p), Outcome::Unsigned);
    assert_eq!(v.reports()[0].signing(), Signing::None);
    assert!(v.passed());
}

fn check_ao_record(r: &Record) {
    let alg: MacAlgorithm = r.get("algorithm").parse().unwrap();
    let include = r.get("include_options") == "true";
    let packet = r.hex("packet");
    let master = r.hex("master_key");
    let sne = r.u32("sne");
    let s = parse_ip_packet(&packet).unwrap();
    let AuthOption::Ao(ao) = s.auth else {
        panic!("{}: no TCP-AO", r.name)
    };
    assert_eq!(ao.mac, &r.hex("mac")[..], "{}", r.name);
    let ctx = KeyContext::new(
        &s.addresses,
        s.src_port,
        s.dst_port,
        r.u32("src_isn"),
        r.u32("dst_isn"),
    );
    let key = derive_traffic_key(alg, &master, &ctx);
    assert_eq!(
        key.as_bytes(),
        &r.hex("traffic_key")[..],
        "{}: traffic key",
        r.name
    );
    let mac = compute_mac(&key, &s, sne, include).unwrap();
    assert_eq!(mac.as_bytes(), &r.hex("mac")[..], "{}: MAC", r.name);
    assert_eq!(verify_mac(&key, &s, sne, include), Ok(()), "{}", r.name);
    assert_eq!(
        verify_mac(&key, &s, sne.wrapping_add(1), include),
        Err(VerifyError::BadMac)
    );
    // A flipped bit in every covered octet (with the key derived anew for
    // the changed packet, as a receiver would).
    for at in covered_octets(&packet, include) {
        let mut p = packet.clone();
        p[at] ^= 0x10;
        let ok = parse_ip_packet(&p).is_ok_and(|s| {
            let ctx = KeyContext::new(
                &s.addresses,
                s.src_port,
                s.dst_port,
                r.u32("src_isn"),
                r.u32("dst_isn"),
            );
            let key = derive_traffic_key(alg, &master, &ctx);
            verify_mac(&key, &s, sne, include).is_ok()
        });
        assert!(!ok, "{}: flipped octet {at} still verifies", r.name);
    }
}

#[test]
fn rfc9235_ipv6_segments() {
    let recs = records(IPV6);
    assert_eq!(recs.len(), 6);
    for r in &recs {
        assert!(matches!(
            parse_ip_packet(&r.hex("packet")).unwrap().addresses,
            Addresses::V6 { .. }
        ));
        check_ao_record(r);
    }
}

#[test]
fn constructed_tcp_ao_segments() {
    let recs = records(CONSTRUCTED);
    let ao: Vec<&Record> = recs
        .iter()
        .filter(|r| r.get("algorithm") != "md5")
        .collect();
    assert_eq!(ao.len(), 42);
    for r in ao {
        check_ao_record(r);
    }
}

#[test]
fn hmac_sha256_mac_is_16_octets() {
    let recs = records(CONSTRUCTED);
    let r = recs.iter().find(|r| r.name == "sha256-v6-incl.3").unwrap();
    assert_eq!(r.hex("mac").len(), 16);
    assert_eq!(r.hex("traffic_key").len(), 32);
}

/// Groups records into connections and runs each through the verifier with
/// both KeyIDs.
fn run_connections(text: &str, with_md5: Option<&[u8]>) {
    let recs = records(text);
    let mut conns: Vec<(String, Vec<&Record>)> = Vec::new();
    for r in &recs {
        match conns.iter_mut().find(|(c, _)| c == r.connection()) {
            Some((_, v)) => v.push(r),
            None => conns.push((r.connection().to_string(), vec![r])),
        }
    }
    for (name, rs) in conns {
        let alg = rs[0].get("algorithm");
        if alg == "md5" {
            let Some(k) = with_md5 else { continue };
            let mut v = CaptureVerifier::new(KeySet {
                ao: vec![],
                md5: vec![Secret::new(k.to_vec())],
                md5_retired: vec![],
            });
            for r in &rs {
                assert_eq!(v.process(&r.hex("packet")), Outcome::Verified, "{}", r.name);
            }
            assert_eq!(v.reports()[0].signing(), Signing::TcpMd5);
            assert!(v.passed(), "{name}");
            assert_eq!(v.totals().counters.verified_retired, 0);
            // The same key as a retired one, after a wrong current key:
            // every segment verifies, each counted as retired.
            let mut v = CaptureVerifier::new(KeySet {
                ao: vec![],
                md5: vec![Secret::new(b"another key".to_vec())],
                md5_retired: vec![Secret::new(k.to_vec())],
            });
            for r in &rs {
                assert_eq!(v.process(&r.hex("packet")), Outcome::Verified, "{}", r.name);
            }
            let c = v.totals().counters;
            assert_eq!(
                (c.verified, c.verified_retired),
                (rs.len() as u64, rs.len() as u64)
            );
            continue;
        }
        // Only full connections (starting with a SYN) verify end to end.
        let first = rs[0].hex("packet");
        if !parse_ip_packet(&first).unwrap().syn() || rs.len() < 2 {
            continue;
        }
        let alg: MacAlgorithm = alg.parse().unwrap();
        let include = rs[0].get("include_options") == "true";
        let master = rs[0].hex("master_key");
        let mut key_ids: Vec<u8> = rs
            .iter()
            .filter_map(|r| match parse_ip_packet(&r.hex("packet")).unwrap().auth {
                AuthOption::Ao(ao) => Some(ao.key_id),
                _ => None,
            })
            .collect();
        key_ids.sort_unstable();
        key_ids.dedup();
        for retired in [false, true] {
            let mut v = CaptureVerifier::new(KeySet {
                ao: key_ids
                    .iter()
                    .map(|&id| AoKey {
                        retired,
                        ..ao_key(alg, include, id, &master)
                    })
                    .collect(),
                md5: vec![],
                md5_retired: vec![],
            });
            for r in &rs {
                assert_eq!(v.process(&r.hex("packet")), Outcome::Verified, "{}", r.name);
            }
            assert!(v.passed(), "{name}");
            let c = v.totals().counters;
            assert_eq!(
                c.verified_retired,
                if retired { c.verified } else { 0 },
                "{name}"
            );
        }
    }
}

#[test]
fn constructed_connections_through_the_capture_verifier() {
    run_connections(CONSTRUCTED, Some(b"md5-secret"));
    run_connections(IPV6, None);
}

#[test]
fn tcp_md5_segments() {
    let recs = records(CONSTRUCTED);
    let md5: Vec<&Record> = recs
        .iter()
        .filter(|r| r.get("algorithm") == "md5")
        .collect();
    assert_eq!(md5.len(), 6);
    for r in md5 {
        let packet = r.hex("packet");
        let key = r.hex("md5_key");
        let s = parse_ip_packet(&packet).unwrap();
        assert_eq!(compute_digest(&key, &s), &r.hex("mac")[..], "{}", r.name);
        assert_eq!(verify_digest(&key, &s), Ok(()));
        assert_eq!(verify_digest(b"other", &s), Err(VerifyError::BadMac));
        // The digest covers the pseudo-header, base header and data (not the
        // options other than its own length contribution).
        let tcp_at = packet.len() - s.tcp_len as usize;
        let data_at = tcp_at + s.header.len();
        let covered = (tcp_at..tcp_at + 16)
            .chain(tcp_at + 18..tcp_at + 20)
            .chain(data_at..packet.len());
        for at in covered {
            let mut p = packet.clone();
            p[at] ^= 0x01;
            let ok = parse_ip_packet(&p).is_ok_and(|s| verify_digest(&key, &s).is_ok());
            assert!(!ok, "{}: flipped octet {at} still verifies", r.name);
        }
    }
}

#[test]
fn sne_is_tracked_across_a_wrap_by_the_capture_verifier() {
    // sne-wrap-*: the client's ISN is 0xffffff00; its fourth segment (seq 0)
    // is MACed with SNE 1. run_connections verifies the whole connection;
    // here the SNE-1 segment is checked to need the wrap.
    let recs = records(CONSTRUCTED);
    for alg in ["hmac-sha1-96", "aes128-cmac-96"] {
        let conn: Vec<&Record> = recs
            .iter()
            .filter(|r| r.connection() == format!("sne-wrap-{alg}"))
            .collect();
        assert_eq!(conn.len(), 5);
        assert_eq!(conn[3].u32("sne"), 1);
        let alg: MacAlgorithm = alg.parse().unwrap();
        let master = conn[0].hex("master_key");
        let keys = || KeySet {
            ao: vec![ao_key(alg, true, 7, &master), ao_key(alg, true, 8, &master)],
            md5: vec![],
            md5_retired: vec![],
        };
        // In order: all verify.
        let mut v = CaptureVerifier::new(keys());
        for r in &conn {
            assert_eq!(v.process(&r.hex("packet")), Outcome::Verified, "{}", r.name);
        }
        // The post-wrap segment seen before the pre-wrap one still gets SNE 1,
        // and the late pre-wrap one SNE 0.
        let mut v = CaptureVerifier::new(keys());
        for i in [0, 1, 3, 2, 4] {
            assert_eq!(
                v.process(&conn[i].hex("packet")),
                Outcome::Verified,
                "{}",
                conn[i].name
            );
        }
        // Without the SYN and SYN-ACK: no ISNs, nothing verifies.
        let mut v = CaptureVerifier::new(keys());
        assert_eq!(v.process(&conn[3].hex("packet")), Outcome::NoIsn);
    }
}
