//! TCP-AO verification throughput (docs/performance.md): segments per
//! second for 1,500-octet IPv4 segments (IP total length 1500, TCP
//! timestamps and TCP-AO options, 1,436 to 1,440 data octets), for each MAC
//! algorithm.
//!
//! * `tcpao_verify_segment/<alg>`: parse the packet and check its MAC with a
//!   traffic key derived beforehand (the per-segment work of a receiver).
//! * `tcpao_capture_verifier/<alg>`: the same segment through
//!   `CaptureVerifier::process` (connection lookup, SNE, cached traffic key),
//!   the path `aoctl verify` takes.
//! * `tcp_md5_verify_segment`: RFC 2385 digest check of the same size.
//!
//! Run: `cargo bench -p aokd-tcpao --bench verify -- --quick`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

use aokd_tcpao::MacAlgorithm;
use aokd_tcpao::Secret;
use aokd_tcpao::{
    compute_digest, compute_mac, derive_traffic_key, parse_ip_packet, verify_digest, verify_mac,
    AoKey, AuthOption, CaptureVerifier, KeyContext, KeySet, Outcome,
};

const PACKET_LEN: usize = 1500;
const MASTER_KEY: &[u8] = b"benchmark master key, 32 octets!";
const CLIENT: [u8; 4] = [192, 0, 2, 1];
const SERVER: [u8; 4] = [192, 0, 2, 2];
const CLIENT_PORT: u16 = 40000;
const SERVER_PORT: u16 = 179;
const CLIENT_ISN: u32 = 0x1000_0000;
const SERVER_ISN: u32 = 0x2000_0000;

/// An IPv4 packet of `PACKET_LEN` octets (or just headers for a SYN) with
/// a TCP-AO option whose MAC is zero.
fn packet(from_client: bool, seq: u32, ack: u32, flags: u8, mac_len: usize, data: bool) -> Vec<u8> {
    let (src, dst, sp, dp, kid, rnext) = if from_client {
        (CLIENT, SERVER, CLIENT_PORT, SERVER_PORT, 1u8, 2u8)
    } else {
        (SERVER, CLIENT, SERVER_PORT, CLIENT_PORT, 2u8, 1u8)
    };
    let mut opts = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    opts.extend_from_slice(&[29, (4 + mac_len) as u8, kid, rnext]);
    opts.resize(opts.len() + mac_len, 0);
    while opts.len() % 4 != 0 {
        opts.insert(0, 1);
    }
    let tcp_hdr_len = 20 + opts.len();
    let total = if data { PACKET_LEN } else { 20 + tcp_hdr_len };
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&sp.to_be_bytes());
    p.extend_from_slice(&dp.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ack.to_be_bytes());
    p.push(((tcp_hdr_len / 4) as u8) << 4);
    p.push(flags);
    p.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    p.extend_from_slice(&opts);
    let mut x = 7u8;
    while p.len() < total {
        x = x.wrapping_mul(31).wrapping_add(17);
        p.push(x);
    }
    p
}

/// Signs a packet with the traffic key of its direction (RFC 5925 5.2).
fn sign(p: &mut [u8], alg: MacAlgorithm, src_isn: u32, dst_isn: u32) {
    let (mac, at) = {
        let s = parse_ip_packet(p).expect("bench packet parses");
        let ctx = KeyContext::new(&s.addresses, s.src_port, s.dst_port, src_isn, dst_isn);
        let key = derive_traffic_key(alg, MASTER_KEY, &ctx);
        let mac = compute_mac(&key, &s, 0, true).expect("signed");
        let AuthOption::Ao(ao) = s.auth else {
            unreachable!()
        };
        (mac, 20 + ao.offset + 4)
    };
    p[at..at + mac.as_bytes().len()].copy_from_slice(mac.as_bytes());
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("tcpao_verify_segment");
    g.throughput(Throughput::Elements(1));
    for alg in [
        MacAlgorithm::HmacSha1_96,
        MacAlgorithm::AesCmac96,
        MacAlgorithm::HmacSha256_128,
    ] {
        let mut data = packet(
            true,
            CLIENT_ISN + 1,
            SERVER_ISN + 1,
            0x18,
            alg.mac_len(),
            true,
        );
        sign(&mut data, alg, CLIENT_ISN, SERVER_ISN);
        assert_eq!(data.len(), PACKET_LEN);
        let s = parse_ip_packet(&data).expect("parses");
        let ctx = KeyContext::new(&s.addresses, s.src_port, s.dst_port, CLIENT_ISN, SERVER_ISN);
        let key = derive_traffic_key(alg, MASTER_KEY, &ctx);
        g.bench_function(alg.name(), |b| {
            b.iter(|| {
                let s = parse_ip_packet(black_box(&data)).expect("parses");
                verify_mac(&key, &s, 0, true).expect("verifies")
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("tcpao_capture_verifier");
    g.throughput(Throughput::Elements(1));
    for alg in [
        MacAlgorithm::HmacSha1_96,
        MacAlgorithm::AesCmac96,
        MacAlgorithm::HmacSha256_128,
    ] {
        let keys = KeySet {
            ao: [1u8, 2]
                .into_iter()
                .map(|key_id| AoKey {
                    key_id,
                    algorithm: alg,
                    include_options: true,
                    master_key: Secret::new(MASTER_KEY.to_vec()),
                    retired: false,
                })
                .collect(),
            md5: vec![],
            md5_retired: vec![],
        };
        let mut syn = packet(true, CLIENT_ISN, 0, 0x02, alg.mac_len(), false);
        sign(&mut syn, alg, CLIENT_ISN, 0);
        let mut syn_ack = packet(
            false,
            SERVER_ISN,
            CLIENT_ISN + 1,
            0x12,
            alg.mac_len(),
            false,
        );
        sign(&mut syn_ack, alg, SERVER_ISN, CLIENT_ISN);
        let mut data = packet(
            true,
            CLIENT_ISN + 1,
            SERVER_ISN + 1,
            0x18,
            alg.mac_len(),
            true,
        );
        sign(&mut data, alg, CLIENT_ISN, SERVER_ISN);
        let mut v = CaptureVerifier::new(keys);
        assert_eq!(v.process(&syn), Outcome::Verified);
        assert_eq!(v.process(&syn_ack), Outcome::Verified);
        g.bench_function(alg.name(), |b| {
            b.iter(|| {
                let o = v.process(black_box(&data));
                debug_assert_eq!(o, Outcome::Verified);
                o
            })
        });
        assert!(v.passed());
    }
    g.finish();

    let mut g = c.benchmark_group("tcp_md5_verify_segment");
    g.throughput(Throughput::Elements(1));
    // A TCP-AO option with a 14-octet MAC field is 18 octets long, the
    // length of the TCP-MD5 option: change its kind to 19.
    let mut data = packet(true, CLIENT_ISN + 1, SERVER_ISN + 1, 0x18, 14, true);
    let key = b"md5 key".to_vec();
    let opt_at = {
        let s = parse_ip_packet(&data).expect("parses");
        let AuthOption::Ao(ao) = s.auth else {
            unreachable!()
        };
        20 + ao.offset
    };
    data[opt_at] = 19;
    let digest = compute_digest(&key, &parse_ip_packet(&data).expect("parses"));
    data[opt_at + 2..opt_at + 18].copy_from_slice(&digest);
    g.bench_function("md5", |b| {
        b.iter(|| {
            let s = parse_ip_packet(black_box(&data)).expect("parses");
            verify_digest(&key, &s).expect("verifies")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
