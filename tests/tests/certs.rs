//! Certificate authentication between two real aokd (issue 12): two network
//! namespaces joined by a veth pair, A (10.205.0.1) and B (10.205.0.2), each
//! aokd with `auth = "pubkey"` and certificates from a private CA the test
//! makes (`aokd_tests::pki`: SAN IP = CN = the router's address, which is its
//! IKE identity), TCP-MD5 as the key backend on port 179.
//!
//! - `ed25519_certificates_key_tcp_md5` and
//!   `ecdsa_p256_certificates_key_tcp_md5`: one IKE SA and one MKT on each
//!   side, mirrored; `aokd check-config` names the certificate and CA
//!   subjects; a TCP connection between the attached `tcp-peer` programs
//!   carries the key (installed by TCP-MD5) and every captured segment
//!   verifies with `aoctl verify --from-daemon`.
//! - `depth_three_chain_keys_tcp_md5`: root → intermediate 1 →
//!   intermediate 2 → leaf on both sides (the certificate files hold the
//!   leaf and both intermediates, the CA file the root alone): the same.
//! - `certificate_from_another_ca_is_refused_on_both_sides`: A's
//!   certificate comes from a CA B does not trust: no SA, no MKT; both
//!   `aoctl status` show AUTHENTICATION_FAILED, B's log says why (the
//!   certificate is not issued by a configured CA) and both daemons run on.
//!
//! Each test prints its wall time. Needs root, `ip` and `tcpdump`: when
//! something is missing the test fails if `CI` is set, and is otherwise
//! skipped with the reason printed.

use std::process::Command;
use std::time::{Duration, Instant};

use aokd_tests::netns::{self, Pair};
use aokd_tests::pki::{Ca, KeyType};
use aokd_tests::{aoctl_verify, established_sas, mkts, CertFiles, Daemon};
use serde_json::Value;

const ADDR_A: &str = "10.205.0.1";
const ADDR_B: &str = "10.205.0.2";
const BGP: &str = "10.205.0.2:179";
/// Negotiation and daemon start-up.
const WAIT: Duration = Duration::from_secs(30);

/// Writes both configurations (A initiates, B waits), checks them with
/// `aokd check-config` and returns its output for A and B.
fn configure(t: &Pair, fa: &CertFiles, fb: &CertFiles) -> [String; 2] {
    let peer = "backend = \"tcp-md5\"\ntcp_ports = [179]\n";
    t.side_a.write_pubkey_config(&t.side_b, fa, "", peer);
    let peer_b = format!("{peer}initiate = false\n");
    t.side_b.write_pubkey_config(&t.side_a, fb, "", &peer_b);
    [&t.side_a, &t.side_b].map(|s| {
        let out = Command::new(aokd_tests::binary("aokd"))
            .arg("check-config")
            .arg(s.config_path())
            .output()
            .expect("aokd check-config");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{}: check-config refuses: {text}",
            s.name
        );
        text
    })
}

/// One established SA and one MKT on each side, the MKTs mirrored.
fn assert_keyed(da: &Daemon, db: &Daemon) {
    let mut got = Vec::new();
    for d in [da, db] {
        got.push(d.wait_keyed(WAIT));
        let st = d.aoctl(&["status"]).expect("status");
        assert_eq!(st["peers"][0]["ike_state"], "established", "{st}");
        assert_eq!(st["peers"][0]["last_error"], Value::Null, "{st}");
    }
    let (a, b) = (&mkts(&got[0])[0], &mkts(&got[1])[0]);
    assert_eq!(a["send_id"], b["recv_id"], "A.send_id == B.recv_id");
    assert_eq!(a["recv_id"], b["send_id"], "A.recv_id == B.send_id");
    assert_eq!(a["key_fingerprint"], b["key_fingerprint"]);
}

/// A TCP connection from A's `tcp-peer` to B's, both attached: each gets
/// the negotiated key installed by TCP-MD5, 4096 octets go through, and
/// every segment of the capture verifies with A's MKT.
fn assert_connection_signed(t: &Pair, da: &Daemon, pcap: &mut netns::Capture) {
    let tcp_peer = env!("CARGO_BIN_EXE_tcp-peer");
    let (mut server, listening) = t.attached_server(tcp_peer, BGP, WAIT);
    assert_eq!(listening["attach"]["installed"], "keys", "{listening}");
    assert_eq!(listening["attach"]["mechanism"], "tcp-md5", "{listening}");
    let report = t.attached_client(tcp_peer, BGP, WAIT, &server, &[("A", da)]);
    assert_eq!(report["bytes"], 4096, "{report}");
    assert_eq!(report["attach"]["installed"], "keys", "{report}");
    server.assert_success(WAIT);
    let summary = pcap.stop().expect("stop tcpdump");
    let (code, v) = aoctl_verify(
        pcap.file(),
        [
            "--from-daemon".as_ref(),
            "--socket".as_ref(),
            t.side_a.socket().as_os_str(),
        ],
    );
    let detail = netns::capture_text(pcap.file(), "-v", 200);
    assert_eq!(code, Some(0), "{v:#}\ntcpdump: {summary}\n{detail}");
    assert_eq!(v["result"], "pass", "{v:#}");
    let conns = v["connections"].as_array().cloned().unwrap_or_default();
    assert_eq!(conns.len(), 1, "{v:#}");
    assert_eq!(conns[0]["signing"], "tcp-md5", "{v:#}");
}

/// Issues A's and B's certificates (`alg`) under `depth` CAs (1: the root
/// signs the leaves; 3: root → i1 → i2 → leaf), writes the files and runs
/// both daemons to an MKT and a signed connection.
fn keyed_by_certificates(test: &str, tag: &str, alg: KeyType, depth: usize) {
    if !netns::prerequisites(test, false) {
        return;
    }
    let started = Instant::now();
    let t = Pair::new(tag, ADDR_A, ADDR_B);
    let root = Ca::root("aokd test root", alg).expect("root CA");
    let mut cas = vec![root];
    for n in 1..depth {
        let ca = cas[n - 1]
            .intermediate(&format!("aokd test intermediate {n}"), KeyType::EcdsaP256)
            .expect("intermediate CA");
        cas.push(ca);
    }
    let issuer = cas.last().expect("a CA");
    // The intermediates, nearest the leaf first.
    let above: Vec<&Ca> = cas[1..].iter().rev().collect();
    let leaf_a = issuer
        .leaf(ADDR_A.parse().unwrap(), alg, &above)
        .expect("A's certificate");
    let leaf_b = issuer
        .leaf(ADDR_B.parse().unwrap(), alg, &above)
        .expect("B's certificate");
    let fa = leaf_a
        .write(&t.side_a.dir, "a", &[&cas[0]])
        .expect("A's files");
    let fb = leaf_b
        .write(&t.side_b.dir, "b", &[&cas[0]])
        .expect("B's files");
    let [check_a, check_b] = configure(&t, &fa, &fb);
    for (check, ip) in [(&check_a, ADDR_A), (&check_b, ADDR_B)] {
        assert!(
            check.contains(&format!("{depth} certificate(s)")),
            "{check}"
        );
        assert!(
            check.contains(&format!("certificate: CN={ip}, expires ")),
            "{check}"
        );
        assert!(check.contains("ca: CN=aokd test root, expires "), "{check}");
    }
    let mut cap = t.capture();
    let da = t.start_a();
    let db = t.start_b();
    assert_keyed(&da, &db);
    let keyed = started.elapsed();
    assert_connection_signed(&t, &da, &mut cap);
    eprintln!(
        "{test}: {alg:?}, chain depth {depth}: MKT on both sides {:.2} s after the start, \
         whole test {:.2} s",
        keyed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn ed25519_certificates_key_tcp_md5() {
    keyed_by_certificates(
        "ed25519_certificates_key_tcp_md5",
        "certs-ed25519",
        KeyType::Ed25519,
        1,
    );
}

#[test]
fn ecdsa_p256_certificates_key_tcp_md5() {
    keyed_by_certificates(
        "ecdsa_p256_certificates_key_tcp_md5",
        "certs-p256",
        KeyType::EcdsaP256,
        1,
    );
}

#[test]
fn depth_three_chain_keys_tcp_md5() {
    keyed_by_certificates(
        "depth_three_chain_keys_tcp_md5",
        "certs-depth3",
        KeyType::Ed25519,
        3,
    );
}

#[test]
fn certificate_from_another_ca_is_refused_on_both_sides() {
    let test = "certificate_from_another_ca_is_refused_on_both_sides";
    if !netns::prerequisites(test, false) {
        return;
    }
    let started = Instant::now();
    let t = Pair::new("certs-wrongca", ADDR_A, ADDR_B);
    let root = Ca::root("aokd test root", KeyType::Ed25519).expect("root CA");
    let other = Ca::root("another root", KeyType::Ed25519).expect("other root CA");
    // A's certificate is from `other`; both trust `root` only.
    let fa = other.ed25519_leaf_files(ADDR_A, &t.side_a.dir, "a", &[&root]);
    let fb = root.ed25519_leaf_files(ADDR_B, &t.side_b.dir, "b", &[&root]);
    configure(&t, &fa, &fb);
    let mut da = t.start_a();
    let mut db = t.start_b();
    let mut seen = Vec::new();
    for d in [&da, &db] {
        let st = d.wait_for(&["status"], WAIT, |v| {
            v["peers"][0]["last_error"] == "AUTHENTICATION_FAILED"
        });
        assert_ne!(st["peers"][0]["ike_state"], "established", "{st}");
        assert!(mkts(&d.aoctl(&["mkts"]).expect("mkts")).is_empty());
        seen.push(st["peers"][0].clone());
    }
    // B checked A's certificate and says why it refused it; A heard
    // AUTHENTICATION_FAILED from B.
    let reason =
        "the initiator's certificate is refused: the certificate is not issued by a configured CA";
    assert!(db.log().contains(reason), "B's log:\n{}", db.log());
    assert!(
        da.log().contains("AUTHENTICATION_FAILED"),
        "A's log:\n{}",
        da.log()
    );
    for d in [&da, &db] {
        assert!(
            established_sas(&d.aoctl(&["sas"]).expect("sas")).is_empty(),
            "{}",
            d.side.name
        );
    }
    assert!(da.running() && db.running());
    eprintln!(
        "{test}: A {}, B {}; B's log: {}; {:.2} s",
        seen[0],
        seen[1],
        failure_line(&db.log()),
        started.elapsed().as_secs_f64()
    );
}

/// The first "IKE negotiation failed" line of a log (for the report).
fn failure_line(log: &str) -> String {
    log.lines()
        .find(|l| l.contains("IKE negotiation failed"))
        .unwrap_or_default()
        .to_string()
}
