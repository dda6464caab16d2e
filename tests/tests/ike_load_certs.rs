//! The load generator with certificate authentication (issue 12) against a
//! real aokd over real UDP on loopback: `ike-load gen-certs` makes a CA and
//! the responder's certificate, aokd has 20 `auth = "pubkey"` peers
//! (127.22.x.1 on), and `ike-load --auth pubkey` issues each initiator its
//! own certificate from that CA and negotiates: every handshake completes
//! with an MKT, none fails, and aokd lists the 20 established IKE SAs and
//! MKTs (Ed25519 and ECDSA P-256). Initiators with certificates from
//! another CA are refused: every handshake fails and aokd reports
//! AUTHENTICATION_FAILED. A route server with one `[[peer_group]]` over
//! 127.23.0.0/16 and no `[[peer]]` keys 50 neighbours, each with its own
//! certificate, lists them as members, and refuses one from another CA.
//! Needs no privilege (127.0.0.0/8 is all local,
//! aokd listens on a free port and keys no socket).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aokd_tests::{binary, established_sas, free_udp_port, mkts, temp_dir, Daemon, Side};
use serde_json::Value;

const PEERS: u32 = 20;
const WAIT: Duration = Duration::from_secs(20);

/// The files of `ike-load gen-certs DIR --responder-ip 127.0.0.1`.
struct Certs {
    ca_cert: PathBuf,
    ca_key: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn gen_certs(dir: &Path, key_type: &str) -> Certs {
    let out = Command::new(binary("ike-load"))
        .arg("gen-certs")
        .arg(dir)
        .args(["--responder-ip", "127.0.0.1", "--key-type", key_type])
        .output()
        .expect("run ike-load gen-certs");
    assert!(
        out.status.success(),
        "ike-load gen-certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("gen-certs prints JSON");
    let path = |k: &str| PathBuf::from(v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}")));
    let c = Certs {
        ca_cert: path("ca_cert"),
        ca_key: path("ca_key"),
        cert: path("responder_cert"),
        key: path("responder_key"),
    };
    for key in [&c.ca_key, &c.key] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(key).expect("key file").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    }
    c
}

/// aokd on 127.0.0.1 with `PEERS` pubkey peers from `first` on.
fn start_aokd(root: &Path, certs: &Certs, first: [u8; 4]) -> Daemon {
    let side = Side::new(root, "aokd", "127.0.0.1");
    let mut text = format!(
        "[daemon]\nlisten = [\"127.0.0.1\"]\nport = {}\ncontrol_socket = \"{}\"\n\
         attach_socket = \"{}\"\nstate_dir = \"{}\"\n",
        side.port,
        side.socket().display(),
        side.attach_socket().display(),
        side.dir.join("state").display(),
    );
    for k in 0..PEERS {
        text.push_str(&format!(
            "\n[[peer]]\nname = \"p{k}\"\nremote = \"{}\"\nauth = \"pubkey\"\n\
             certificate = \"{}\"\nprivate_key = \"{}\"\nca = \"{}\"\ninitiate = false\n",
            source(first, k),
            certs.cert.display(),
            certs.key.display(),
            certs.ca_cert.display(),
        ));
    }
    std::fs::write(side.config_path(), text).expect("config");
    let d = Daemon::start(&side);
    d.wait_for(&["status"], WAIT, |v| {
        v["peers"].as_array().map(Vec::len) == Some(PEERS as usize)
    });
    d
}

fn source(first: [u8; 4], k: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from_be_bytes(first) + k)
}

/// `ike-load --auth pubkey` toward `d` with `ca`'s certificates; its
/// summary, after checking it printed how many certificates it issued.
fn load(d: &Daemon, first: [u8; 4], ca: &Certs, key_type: &str) -> Value {
    load_n(d, first, ca, key_type, PEERS)
}

/// [`load`] with `n` initiators.
fn load_n(d: &Daemon, first: [u8; 4], ca: &Certs, key_type: &str, n: u32) -> Value {
    let out = Command::new(binary("ike-load"))
        .args(["--target", &format!("127.0.0.1:{}", d.side.port)])
        .args(["--peers", &n.to_string(), "--concurrency", "8"])
        .args(["--first-source", &source(first, 0).to_string()])
        .args([
            "--timeout",
            "15",
            "--auth",
            "pubkey",
            "--key-type",
            key_type,
        ])
        .arg("--ca-cert")
        .arg(&ca.ca_cert)
        .arg("--ca-key")
        .arg(&ca.ca_key)
        .output()
        .expect("run ike-load");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ike-load failed ({}): {}{text}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |what: &str| -> Value {
        text.lines()
            .find(|l| l.contains(what))
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("ike-load printed no {what} line: {text}"))
    };
    let issued = line("\"certificates\"");
    assert_eq!(issued["issued"], n, "{issued}");
    assert_eq!(issued["key_type"], key_type, "{issued}");
    line("\"summary\"")
}

fn keys_every_peer(key_type: &str, first: [u8; 4]) {
    let root = temp_dir(&format!("load-certs-{key_type}"));
    let certs = gen_certs(&root.join("pki"), key_type);
    let d = start_aokd(&root, &certs, first);
    let s = load(&d, first, &certs, key_type);
    println!("{key_type}: {s}");
    assert_eq!(s["completed"], PEERS, "{s}\n{}", d.log());
    assert_eq!(s["failures"], 0, "{s}\n{}", d.log());
    // aokd's side: every peer has its IKE SA and MKT.
    let sas = d.wait_for(&["sas"], WAIT, |v| {
        established_sas(v).len() == PEERS as usize
    });
    let mut peers: Vec<String> = established_sas(&sas)
        .iter()
        .map(|s| s["peer"].as_str().unwrap_or("").to_string())
        .collect();
    peers.sort();
    peers.dedup();
    assert_eq!(peers.len(), PEERS as usize, "one IKE SA per peer: {sas}");
    let m = d.wait_for(&["mkts"], WAIT, |v| mkts(v).len() == PEERS as usize);
    let mut with: Vec<String> = mkts(&m)
        .iter()
        .map(|m| m["peer"].as_str().unwrap_or("").to_string())
        .collect();
    with.sort();
    with.dedup();
    assert_eq!(with.len(), PEERS as usize, "one MKT per peer: {m}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn ike_load_pubkey_ed25519_keys_every_peer() {
    keys_every_peer("ed25519", [127, 22, 0, 1]);
}

#[test]
fn ike_load_pubkey_p256_keys_every_peer() {
    keys_every_peer("p256", [127, 22, 1, 1]);
}

#[test]
fn ike_load_with_another_ca_is_refused() {
    let first = [127, 22, 2, 1];
    let root = temp_dir("load-certs-other-ca");
    let certs = gen_certs(&root.join("pki"), "ed25519");
    let other = gen_certs(&root.join("other"), "ed25519");
    let d = start_aokd(&root, &certs, first);
    let s = load(&d, first, &other, "ed25519");
    println!("another CA: {s}");
    assert_eq!(s["completed"], 0, "{s}");
    assert_eq!(s["failures"], PEERS, "{s}");
    assert_eq!(established_sas(&d.aoctl(&["sas"]).expect("sas")).len(), 0);
    assert!(mkts(&d.aoctl(&["mkts"]).expect("mkts")).is_empty());
    let status = d.wait_for(&["status"], WAIT, |v| {
        v["peers"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["last_error"] == "AUTHENTICATION_FAILED"))
    });
    println!("{}", status["peers"][0]);
    // Both CAs are named CN=aokd ike-load CA (tests/src/pki.rs), so the
    // chain is built to the configured one and its signature fails.
    assert!(
        d.log()
            .contains("the initiator's certificate is refused: a certificate in the chain has a bad signature"),
        "aokd's log names the reason:\n{}",
        d.log()
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn ike_load_refuses_a_ca_it_cannot_issue_with() {
    // The key of one CA with the certificate of another: refused before
    // anything is sent, naming both files.
    let root = temp_dir("load-certs-mismatch");
    let a = gen_certs(&root.join("a"), "p256");
    let b = gen_certs(&root.join("b"), "p256");
    let port = free_udp_port("127.0.0.1");
    let out = Command::new(binary("ike-load"))
        .args(["--target", &format!("127.0.0.1:{port}"), "--peers", "2"])
        .args(["--first-source", "127.22.3.1", "--auth", "pubkey"])
        .arg("--ca-cert")
        .arg(&a.ca_cert)
        .arg("--ca-key")
        .arg(&b.ca_key)
        .output()
        .expect("run ike-load");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&a.ca_cert.display().to_string()), "{err}");
    assert!(err.contains(&b.ca_key.display().to_string()), "{err}");
    assert!(
        out.stdout.is_empty(),
        "nothing run: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// The issue's route-server test: one aokd with a `[[peer_group]]` over a
/// prefix and one CA, no `[[peer]]`; 50 neighbours (distinct loopback
/// addresses, each with its own certificate issued by that CA, SAN IP =
/// its address) all get an IKE SA and an MKT; `aoctl status` lists each
/// as a member `rs/ADDRESS` of group `rs`; a neighbour whose certificate
/// comes from another CA is refused and listed with the error, no MKT.
#[test]
fn a_route_server_with_one_peer_group_keys_fifty_neighbours() {
    const NEIGHBOURS: u32 = 50;
    let root = temp_dir("route-server");
    let certs = gen_certs(&root.join("pki"), "ed25519");
    let side = Side::new(&root, "rs", "127.0.0.1");
    let text = format!(
        "[daemon]\nlisten = [\"127.0.0.1\"]\nport = {}\ncontrol_socket = \"{}\"\n\
         attach_socket = \"{}\"\nstate_dir = \"{}\"\n\n[[peer_group]]\nname = \"rs\"\n\
         remote = [\"127.23.0.0/16\"]\ncertificate = \"{}\"\nprivate_key = \"{}\"\nca = \"{}\"\n",
        side.port,
        side.socket().display(),
        side.attach_socket().display(),
        side.dir.join("state").display(),
        certs.cert.display(),
        certs.key.display(),
        certs.ca_cert.display(),
    );
    std::fs::write(side.config_path(), text).expect("config");
    let d = Daemon::start(&side);
    d.wait_for(&["status"], WAIT, |v| v["peers"].as_array().is_some());
    let started = std::time::Instant::now();
    let s = load_n(&d, [127, 23, 0, 1], &certs, "ed25519", NEIGHBOURS);
    println!("route server: {s}");
    assert_eq!(s["completed"], NEIGHBOURS, "{s}\n{}", d.log());
    assert_eq!(s["failures"], 0, "{s}\n{}", d.log());
    let members = |v: &Value| -> Vec<Value> {
        v["peers"]
            .as_array()
            .map(|ps| ps.iter().filter(|p| p["group"] == "rs").cloned().collect())
            .unwrap_or_default()
    };
    let st = d.wait_for(&["status"], WAIT, |v| {
        let m = members(v);
        m.len() == NEIGHBOURS as usize
            && m.iter()
                .all(|p| p["ike_state"] == "established" && p["mkts"] == 1)
    });
    let mut names: Vec<String> = members(&st)
        .iter()
        .map(|p| p["name"].as_str().unwrap_or("").to_string())
        .collect();
    names.sort();
    let want: Vec<String> = {
        let mut w: Vec<String> = (0..NEIGHBOURS)
            .map(|k| format!("rs/{}", source([127, 23, 0, 1], k)))
            .collect();
        w.sort();
        w
    };
    assert_eq!(names, want);
    let m = d.wait_for(&["mkts"], WAIT, |v| mkts(v).len() == NEIGHBOURS as usize);
    assert!(mkts(&m)
        .iter()
        .all(|m| m["peer"].as_str().is_some_and(|p| p.starts_with("rs/"))));
    let keyed = started.elapsed();

    // One neighbour with a certificate from another CA.
    let other = gen_certs(&root.join("other"), "ed25519");
    let s = load_n(&d, [127, 23, 1, 1], &other, "ed25519", 1);
    assert_eq!(
        (s["completed"].clone(), s["failures"].clone()),
        (0.into(), 1.into()),
        "{s}"
    );
    let st = d.wait_for(&["status"], WAIT, |v| {
        members(v)
            .iter()
            .any(|p| p["name"] == "rs/127.23.1.1" && p["last_error"] == "AUTHENTICATION_FAILED")
    });
    let refused: Vec<Value> = members(&st)
        .into_iter()
        .filter(|p| p["name"] == "rs/127.23.1.1")
        .collect();
    assert_eq!(refused[0]["mkts"], 0, "{}", refused[0]);
    assert_ne!(refused[0]["ike_state"], "established", "{}", refused[0]);
    assert_eq!(
        members(&st).iter().filter(|p| p["mkts"] == 1).count(),
        NEIGHBOURS as usize
    );
    assert!(
        d.log().contains("peer group member authenticated"),
        "{}",
        d.log()
    );
    eprintln!(
        "route server: {NEIGHBOURS} neighbours keyed as members in {:.2} s; another CA refused",
        keyed.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&root);
}
