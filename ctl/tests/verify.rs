//! Integration tests of `aoctl verify`: pcap and pcapng files written from
//! the RFC 9235 vector packets (tcpao/testdata), run through the built
//! binary.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const IPV4: &str = include_str!("../../tcpao/testdata/rfc9235-ipv4.txt");
const IPV6: &str = include_str!("../../tcpao/testdata/rfc9235-ipv6.txt");
const CONSTRUCTED: &str = include_str!("../../tcpao/testdata/tcpao-constructed.txt");

/// "testvector" in hex: the RFC 9235 master key.
const KEY: &str = "74657374766563746f72";

// ---------------------------------------------------------------- vectors

/// The packets of each RFC 9235 IPv4 section, by section name ("4.1", ...).
fn ipv4_sections() -> Vec<(String, Vec<Vec<u8>>)> {
    let mut out: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    let mut collecting: Option<Vec<u8>> = None;
    for line in IPV4.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Section ") {
            let name = rest.split_whitespace().next().unwrap().to_string();
            out.push((name, Vec::new()));
            continue;
        }
        if line.starts_with("IPv4/TCP segment") {
            collecting = Some(Vec::new());
            continue;
        }
        if let Some(buf) = collecting.as_mut() {
            let toks: Vec<&str> = line.split_whitespace().collect();
            if !toks.is_empty() && toks.iter().all(|t| t.len() == 2) {
                buf.extend(toks.iter().map(|t| u8::from_str_radix(t, 16).unwrap()));
            } else {
                let pkt = collecting.take().unwrap();
                out.last_mut().unwrap().1.push(pkt);
            }
        }
    }
    out
}

fn section(name: &str) -> Vec<Vec<u8>> {
    ipv4_sections()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1
}

/// Records of rfc9235-ipv6.txt / tcpao-constructed.txt: (name, fields).
fn records(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(n) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            out.push((n.to_string(), Vec::new()));
        } else if let Some((k, v)) = line.split_once('=') {
            out.last_mut()
                .unwrap()
                .1
                .push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// Packets of the records whose name starts with `prefix`, in file order.
fn record_packets(text: &str, prefix: &str) -> Vec<Vec<u8>> {
    records(text)
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(_, f)| {
            let hex = &f.iter().find(|(k, _)| k == "packet").unwrap().1;
            hex::decode(hex).unwrap()
        })
        .collect()
}

/// Replaces the TCP-AO option of an IPv4 vector packet with NOPs.
fn strip_ao(packet: &[u8]) -> Vec<u8> {
    let mut p = packet.to_vec();
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let doff = usize::from(p[ihl + 12] >> 4) * 4;
    let mut at = ihl + 20;
    while at < ihl + doff {
        match p[at] {
            0 => break,
            1 => at += 1,
            29 => {
                let len = usize::from(p[at + 1]);
                p[at..at + len].fill(1);
                break;
            }
            _ => at += usize::from(p[at + 1]),
        }
    }
    p
}

// ------------------------------------------------------- capture writers

#[derive(Clone, Copy)]
enum Link {
    Ethernet,
    Sll,
    Sll2,
    Raw,
}

impl Link {
    fn linktype(self) -> u32 {
        match self {
            Link::Ethernet => 1,
            Link::Sll => 113,
            Link::Sll2 => 276,
            Link::Raw => 101,
        }
    }

    fn frame(self, ip: &[u8]) -> Vec<u8> {
        let ethertype: [u8; 2] = if ip.first().is_some_and(|b| b >> 4 == 6) {
            [0x86, 0xdd]
        } else {
            [0x08, 0x00]
        };
        let mut f = Vec::new();
        match self {
            Link::Ethernet => {
                f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1]);
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
    while padded.len() % 4 != 0 {
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

/// A pcapng file with one interface per link given; packet `i` goes on
/// interface `i % links.len()`.
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

// ---------------------------------------------------------------- running

fn temp_path(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("aoctl-verify-{}-{n}-{name}", std::process::id()))
}

fn write_temp(name: &str, bytes: &[u8]) -> PathBuf {
    let p = temp_path(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn aoctl(file: &Path, extra: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_aoctl"))
        .arg("verify")
        .arg("--pcap")
        .arg(file)
        .args(extra)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(file);
    out
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn mkt(id: u8, alg: &str, exclude: bool) -> String {
    let mut s = format!("--mkt={id}:{alg}:{KEY}");
    if exclude {
        s.push_str(":exclude-options");
    }
    s
}

/// The keys of an RFC 9235 section: both KeyIDs with its algorithm and flag.
fn section_keys(name: &str) -> Vec<String> {
    let alg = if name.starts_with('4') {
        "hmac-sha1-96"
    } else {
        "aes128-cmac-96"
    };
    let exclude = name.ends_with(".2");
    vec![mkt(61, alg, exclude), mkt(84, alg, exclude)]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

// ------------------------------------------------------------------ tests

#[test]
fn every_rfc9235_ipv4_section_verifies_in_pcap_and_pcapng() {
    for (name, packets) in ipv4_sections() {
        let keys = section_keys(&name);
        let mut a = args(&keys);
        a.push("--json");
        for (kind, bytes) in [
            ("pcap", pcap(Link::Ethernet, &packets)),
            ("pcapng", pcapng(&[Link::Ethernet], &packets)),
        ] {
            let out = aoctl(&write_temp(&format!("{name}.{kind}"), &bytes), &a);
            assert_eq!(out.status.code(), Some(0), "{name} {kind}: {out:?}");
            let j = json(&out);
            assert_eq!(j["result"], "pass");
            assert_eq!(j["connections"].as_array().unwrap().len(), 1);
            let c = &j["connections"][0];
            assert_eq!(c["segments"], 4);
            assert_eq!(c["verified"], 4);
            assert_eq!(c["signing"], "tcp-ao");
            assert_eq!(c["src"], "10.11.12.13");
            assert_eq!(c["dport"], 179);
            assert_eq!(c["isns_seen"], true);
        }
    }
}

#[test]
fn all_sections_in_one_capture_with_all_keys() {
    let packets: Vec<Vec<u8>> = ipv4_sections().into_iter().flat_map(|(_, p)| p).collect();
    let keys: Vec<String> = ["4.1", "4.2", "5.1", "5.2"]
        .iter()
        .flat_map(|s| section_keys(s))
        .collect();
    let out = aoctl(
        &write_temp("all.pcap", &pcap(Link::Raw, &packets)),
        &args(&keys),
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("10.11.12.13:59863 -> 172.27.28.29:179"),
        "{text}"
    );
    assert!(text.contains("result: pass"), "{text}");
}

#[test]
fn ipv6_and_other_link_types() {
    // RFC 9235 IPv6 vectors (6.1.x, 6.2.x and 7.1.x connections, from the
    // SYN-ACK on) and the constructed IPv6 versions of every section.
    let mut packets = record_packets(IPV6, "rfc9235-");
    packets.extend(record_packets(CONSTRUCTED, "v6-from-"));
    let mut keys: Vec<String> = ["4.1", "4.2", "5.1", "5.2"]
        .iter()
        .flat_map(|s| section_keys(s))
        .collect();
    keys.push("--json".into());
    for links in [
        vec![Link::Sll2],
        vec![Link::Sll],
        vec![Link::Ethernet, Link::Sll, Link::Sll2, Link::Raw],
    ] {
        let out = aoctl(
            &write_temp("v6.pcapng", &pcapng(&links, &packets)),
            &args(&keys),
        );
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let j = json(&out);
        assert_eq!(j["totals"]["verified"], 22);
        assert_eq!(j["totals"]["segments"], 22);
        assert_eq!(j["connections"][0]["src"], "fd00::1");
    }
}

#[test]
fn hmac_sha256_sne_and_md5() {
    let mut packets = record_packets(CONSTRUCTED, "sha256-");
    packets.extend(record_packets(CONSTRUCTED, "sne-wrap-"));
    packets.extend(record_packets(CONSTRUCTED, "md5-"));
    let sne_key = "000102030405060708090a0b0c0d0e0f";
    let mut a = vec![
        mkt(61, "hmac-sha256-128", false),
        mkt(84, "hmac-sha256-128", false),
        mkt(61, "hmac-sha256-128", true),
        mkt(84, "hmac-sha256-128", true),
        "--md5".to_string(),
        hex::encode("md5-secret"),
        "--json".to_string(),
    ];
    for id in [7, 8] {
        for alg in ["hmac-sha1-96", "aes128-cmac-96"] {
            a.push(format!("--mkt={id}:{alg}:{sne_key}"));
        }
    }
    let out = aoctl(
        &write_temp("sha256.pcap", &pcap(Link::Ethernet, &packets)),
        &args(&a),
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let j = json(&out);
    assert_eq!(j["totals"]["verified"], 16 + 10 + 6);
    let signings: Vec<&str> = j["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["signing"].as_str().unwrap())
        .collect();
    assert!(signings.contains(&"tcp-md5"));

    // Without the MD5 key: the MD5 segments have no key.
    a.retain(|s| s != "--md5" && s != &hex::encode("md5-secret"));
    let out = aoctl(
        &write_temp("nomd5.pcap", &pcap(Link::Ethernet, &packets)),
        &args(&a),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(json(&out)["totals"]["unknown_key_id"], 6);
}

#[test]
fn wrong_key_is_bad_mac() {
    let packets = section("4.1");
    let bad = "--mkt=61:hmac-sha1-96:0011223344".to_string();
    let bad2 = "--mkt=84:hmac-sha1-96:0011223344".to_string();
    let out = aoctl(
        &write_temp("wrong.pcap", &pcap(Link::Ethernet, &packets)),
        &[&bad, &bad2, "--json"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let j = json(&out);
    assert_eq!(j["result"], "fail");
    assert_eq!(j["connections"][0]["bad_mac"], 4);
    assert_eq!(j["connections"][0]["verified"], 0);
    assert_eq!(j["connections"][0]["result"], "fail");
}

#[test]
fn flipped_bit_is_bad_mac() {
    let mut packets = section("5.1");
    // A bit of the BGP OPEN payload of the client's data segment.
    let last = packets[2].len() - 5;
    packets[2][last] ^= 0x04;
    let keys = section_keys("5.1");
    let mut a = args(&keys);
    a.push("--json");
    let out = aoctl(
        &write_temp("flip.pcapng", &pcapng(&[Link::Ethernet], &packets)),
        &a,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let c = &json(&out)["connections"][0];
    assert_eq!(c["bad_mac"], 1);
    assert_eq!(c["verified"], 3);
}

#[test]
fn unsigned_segment_in_signed_connection() {
    let mut packets = section("4.2");
    packets.push(strip_ao(&packets[2]));
    let keys = section_keys("4.2");
    let mut a = args(&keys);
    a.push("--json");
    let out = aoctl(&write_temp("unsigned.pcap", &pcap(Link::Sll, &packets)), &a);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let c = &json(&out)["connections"][0];
    assert_eq!(c["unsigned"], 1);
    assert_eq!(c["verified"], 4);
    assert_eq!(c["result"], "fail");

    // A connection with no signature at all passes.
    let plain: Vec<Vec<u8>> = section("4.1").iter().map(|p| strip_ao(p)).collect();
    let out = aoctl(
        &write_temp("plain.pcap", &pcap(Link::Sll, &plain)),
        &["--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(json(&out)["connections"][0]["signing"], "none");
}

#[test]
fn unknown_key_id() {
    let packets = section("4.1");
    let only_client = mkt(61, "hmac-sha1-96", false);
    let out = aoctl(
        &write_temp("unknown.pcap", &pcap(Link::Ethernet, &packets)),
        &[&only_client, "--json"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let c = &json(&out)["connections"][0];
    assert_eq!(c["unknown_key_id"], 2);
    assert_eq!(c["verified"], 2);
}

#[test]
fn segments_without_isns() {
    let packets = section("4.1")[2..].to_vec();
    let keys = section_keys("4.1");
    let mut a = args(&keys);
    a.push("--json");
    let out = aoctl(
        &write_temp("noisn.pcap", &pcap(Link::Ethernet, &packets)),
        &a,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let c = &json(&out)["connections"][0];
    assert_eq!(c["no_isn"], 2);
    assert_eq!(c["isns_seen"], false);
}

#[test]
fn unreadable_files_exit_2_naming_file_and_offset() {
    let packets = section("4.1");
    let good = pcap(Link::Ethernet, &packets);
    let good_ng = pcapng(&[Link::Ethernet], &packets);
    let keys = section_keys("4.1");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated.pcap", good[..good.len() - 7].to_vec()),
        ("truncated-header.pcap", good[..10].to_vec()),
        ("truncated.pcapng", good_ng[..good_ng.len() - 3].to_vec()),
        (
            "garbage.pcap",
            b"this is not a capture file at all, not even close".repeat(20),
        ),
        ("empty.pcap", Vec::new()),
        ("zeros.pcapng", vec![0u8; 4096]),
    ];
    for (name, bytes) in cases {
        let path = write_temp(name, &bytes);
        let shown = path.display().to_string();
        let out = aoctl(&path, &args(&keys));
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&shown), "{name}: {err}");
        assert!(err.contains("offset"), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    // A missing file.
    let out = aoctl(Path::new("/nonexistent/capture.pcap"), &[]);
    assert_eq!(out.status.code(), Some(2));
    // A corrupt pcapng block length in the middle.
    let mut bad = good_ng.clone();
    // SHB (28 octets) and IDB (20), then the first EPB's length field.
    let epb_at = 28 + 20;
    bad[epb_at + 4] = 0xff;
    bad[epb_at + 5] = 0xff;
    let out = aoctl(&write_temp("corrupt.pcapng", &bad), &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn garbage_inside_a_valid_capture_never_panics() {
    // Frames of every length from a vector packet, and random-ish bytes.
    let v4 = section("4.1")[2].clone();
    let v6 = record_packets(IPV6, "rfc9235-6.2.4").remove(0);
    let mut packets: Vec<Vec<u8>> = Vec::new();
    let mut x: u32 = 0x1234_5678;
    for base in [&v4, &v6] {
        packets.extend((0..base.len()).map(|n| base[..n].to_vec()));
    }
    for n in 0..400 {
        let base = if n % 2 == 0 { &v4 } else { &v6 };
        let mut p = base.clone();
        for _ in 0..(n % 7 + 1) {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let i = (x as usize >> 8) % p.len();
            p[i] = (x >> 24) as u8;
        }
        packets.push(p);
    }
    for link in [Link::Ethernet, Link::Raw, Link::Sll, Link::Sll2] {
        let out = aoctl(
            &write_temp("fuzz.pcap", &pcap(link, &packets)),
            &args(&section_keys("4.1")),
        );
        assert!(matches!(out.status.code(), Some(0) | Some(1)), "{out:?}");
    }
}

#[test]
fn bad_key_argument_exits_2() {
    let packets = section("4.1");
    let out = aoctl(
        &write_temp("badarg.pcap", &pcap(Link::Ethernet, &packets)),
        &["--mkt=61:hmac-md5:00"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// A one-shot fake aokd on a Unix socket answering `mkt-keys`.
fn fake_daemon(answer: String) -> (PathBuf, std::thread::JoinHandle<String>) {
    let path = temp_path("control.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut request = String::new();
        BufReader::new(&stream).read_line(&mut request).unwrap();
        (&stream).write_all(answer.as_bytes()).unwrap();
        (&stream).write_all(b"\n").unwrap();
        request
    });
    (path, handle)
}

#[test]
fn keys_from_the_daemon() {
    let answer = serde_json::json!({
        "version": 1,
        "status": "ok",
        "data": {
            "kind": "mkt-keys",
            "keys": [{
                "peer": "bgp-peer",
                "send_id": 61,
                "recv_id": 84,
                "algorithm": "aes128-cmac-96",
                "include_options": false,
                "master_key": KEY,
            }]
        }
    })
    .to_string();
    let answer_again = answer.clone();
    let (sock, daemon) = fake_daemon(answer);
    let packets = section("5.2");
    let out = aoctl(
        &write_temp("daemon.pcap", &pcap(Link::Ethernet, &packets)),
        &[
            "--from-daemon",
            "--socket",
            sock.to_str().unwrap(),
            "--json",
        ],
    );
    let request = daemon.join().unwrap();
    let _ = std::fs::remove_file(&sock);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(json(&out)["totals"]["verified"], 4);
    let req: serde_json::Value = serde_json::from_str(&request).unwrap();
    assert_eq!(req["command"], "mkt-keys");
    assert_eq!(req["version"], 1);

    // The daemon refuses (not root): exit 2 with its message.
    let refusal = serde_json::json!({
        "version": 1, "status": "error", "message": "mkt-keys is only answered for root"
    })
    .to_string();
    let (sock, daemon) = fake_daemon(refusal);
    let out = aoctl(
        &write_temp("daemon2.pcap", &pcap(Link::Ethernet, &packets)),
        &["--from-daemon", "--socket", sock.to_str().unwrap()],
    );
    daemon.join().unwrap();
    let _ = std::fs::remove_file(&sock);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("only answered for root"));

    // The socket named by AOKD_SOCKET.
    let (sock, daemon) = fake_daemon(answer_again);
    let file = write_temp("daemon4.pcap", &pcap(Link::Ethernet, &packets));
    let out = Command::new(env!("CARGO_BIN_EXE_aoctl"))
        .env("AOKD_SOCKET", &sock)
        .arg("verify")
        .arg("--pcap")
        .arg(&file)
        .arg("--from-daemon")
        .output()
        .unwrap();
    daemon.join().unwrap();
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(&file);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // No daemon at all.
    let out = aoctl(
        &write_temp("daemon3.pcap", &pcap(Link::Ethernet, &packets)),
        &["--from-daemon", "--socket", "/nonexistent/aokd.sock"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// A capture with no TCP segment (here: one UDP datagram, and an empty
/// file) proves nothing: "nothing to verify", exit status 1, in the table
/// and in JSON.
#[test]
fn a_capture_without_tcp_is_nothing_to_verify() {
    // IPv4 + UDP, 28 octets.
    let mut udp = vec![
        0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2,
    ];
    udp.extend_from_slice(&[0x01, 0xf4, 0x01, 0xf4, 0, 8, 0, 0]);
    for packets in [vec![udp], Vec::new()] {
        let file = write_temp("no-tcp.pcap", &pcap(Link::Raw, &packets));
        let out = aoctl(&file, &[&mkt(1, "hmac-sha1-96", false)]);
        assert_eq!(out.status.code(), Some(1));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("result: nothing to verify: the capture holds no TCP segment"),
            "{text}"
        );
        let file = write_temp("no-tcp.pcap", &pcap(Link::Raw, &packets));
        let out = aoctl(&file, &[&mkt(1, "hmac-sha1-96", false), "--json"]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(json(&out)["result"], "nothing to verify");
    }
}

/// `aoctl verify ... | head` closes the pipe before aoctl has written its
/// table: aoctl stops quietly instead of panicking ("failed printing to
/// stdout"), in the table and in JSON. Standard output here is a socket
/// whose other end is closed before aoctl starts, so every write fails
/// with EPIPE.
#[test]
fn a_closed_stdout_is_no_panic() {
    let udp = vec![
        0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2, 0x01, 0xf4, 0x01,
        0xf4, 0, 8, 0, 0,
    ];
    for extra in [&[][..], &["--json"][..]] {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(ours);
        let file = write_temp("epipe.pcap", &pcap(Link::Raw, std::slice::from_ref(&udp)));
        let out = Command::new(env!("CARGO_BIN_EXE_aoctl"))
            .arg("verify")
            .arg("--pcap")
            .arg(&file)
            .arg(mkt(1, "hmac-sha1-96", false))
            .args(extra)
            .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                theirs,
            )))
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{extra:?}: {stderr}");
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
    }
}
