//! Tests of configuration parsing and validation (docs/configuration.md):
//! the examples, every default, and the errors, each of which must name the
//! file, the key and the peer.

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aokd::config::{Config, ConfigError, Identity, IkeSuite, Lifetimes};
use aokd_proto::crypto::{Encr, Prf};
use aokd_proto::mkt::MacAlgorithm;
use aokd_proto::numbers::{DhGroup, IdType};
use common::{examples, localize_example, TempDir};

/// A one-peer config with `extra` lines appended to the peer table.
fn peer_config(dir: &TempDir, extra: &str) -> String {
    dir.psk("r2.psk");
    format!("[[peer]]\nname = \"r2\"\nremote = \"192.0.2.2\"\npsk_file = \"r2.psk\"\n{extra}\n")
}

/// An ID_FQDN identity.
fn fqdn(name: &str) -> Identity {
    Identity {
        id_type: IdType::ID_FQDN,
        data: name.as_bytes().into(),
    }
}

/// An ID_RFC822_ADDR identity.
fn rfc822(name: &str) -> Identity {
    Identity {
        id_type: IdType::ID_RFC822_ADDR,
        data: name.as_bytes().into(),
    }
}

fn load(dir: &TempDir, text: &str) -> Result<Config, ConfigError> {
    let file = dir.join("aokd.toml");
    std::fs::write(&file, text).unwrap();
    Config::load(&file)
}

/// Expects an `Invalid` error for `key` and `peer`, with `needle` in the
/// message; returns the full text.
fn expect_invalid(
    r: Result<Config, ConfigError>,
    key: &str,
    peer: Option<&str>,
    needle: &str,
) -> String {
    let e = match r {
        Ok(_) => panic!("accepted; expected an error for {key}"),
        Err(e) => e,
    };
    let text = e.to_string();
    assert_eq!(e.key(), Some(key), "{text}");
    assert_eq!(e.peer(), peer, "{text}");
    assert!(text.contains(needle), "{text:?} lacks {needle:?}");
    assert!(
        text.contains("aokd.toml"),
        "{text:?} does not name the file"
    );
    assert!(text.contains(key), "{text:?} does not name the key");
    if let Some(p) = peer {
        assert!(
            text.contains(&format!("\"{p}\"")),
            "{text:?} does not name the peer"
        );
    }
    text
}

#[test]
fn examples_are_valid() {
    for (name, text) in examples() {
        let dir = TempDir::new("example");
        let text = localize_example(&text, &dir);
        let file = dir.join(&name);
        std::fs::write(&file, &text).unwrap();
        let config = Config::load(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!config.peers.is_empty(), "{name}");
    }
}

/// Every key of every example, misspelled, is refused by name.
#[test]
fn examples_with_a_misspelled_key_are_refused() {
    for (name, text) in examples() {
        let dir = TempDir::new("misspelled");
        let text = localize_example(&text, &dir);
        let lines: Vec<&str> = text.lines().collect();
        let mut tried = 0;
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let (bad_line, bad_key) = if trimmed.starts_with('#') || trimmed.is_empty() {
                continue;
            } else if let Some(table) = trimmed
                .strip_prefix("[[")
                .and_then(|t| t.strip_suffix("]]"))
            {
                // Renaming an array of tables that has sub-tables turns the
                // file into a different structure, not a misspelled key.
                let next_header = lines[i + 1..]
                    .iter()
                    .find(|l| l.trim_start().starts_with('['));
                if next_header.is_some_and(|h| h.trim_start().starts_with(&format!("[{table}."))) {
                    continue;
                }
                (format!("[[{table}s]]"), format!("{table}s"))
            } else if let Some(table) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']'))
            {
                let last = table.rsplit('.').next().unwrap();
                let prefix = &table[..table.len() - last.len()];
                // Swap two letters: "daemon" -> "deamon".
                let mut chars: Vec<char> = last.chars().collect();
                chars.swap(1, 2);
                let bad: String = chars.into_iter().collect();
                (format!("[{prefix}{bad}]"), bad)
            } else {
                let (key, rest) = trimmed.split_once('=').expect("key = value");
                let key = key.trim();
                let bad = format!("{key}e");
                (format!("{bad} ={rest}"), bad)
            };
            let mut variant: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            variant[i] = bad_line;
            let variant = variant.join("\n");
            let file = dir.join(&name);
            std::fs::write(&file, &variant).unwrap();
            let err = match Config::load(&file) {
                Ok(_) => panic!("{name}: misspelled {bad_key:?} on line {} accepted", i + 1),
                Err(e) => e,
            };
            let msg = err.to_string();
            assert!(matches!(err, ConfigError::Syntax { .. }), "{name}: {msg}");
            assert!(
                msg.contains(&format!("`{bad_key}`")),
                "{name}: {msg:?} does not name {bad_key:?}"
            );
            assert!(
                msg.contains(&format!("line {}", i + 1)),
                "{name}: {msg:?} lacks the line"
            );
            assert!(
                msg.contains(name.as_str()),
                "{name}: {msg:?} lacks the file"
            );
            tried += 1;
        }
        assert!(tried >= 3, "{name}: only {tried} keys");
    }
}

#[test]
fn defaults() {
    let dir = TempDir::new("defaults");
    let config = load(&dir, &peer_config(&dir, "")).unwrap();
    let d = &config.daemon;
    assert_eq!(d.listen, vec!["0.0.0.0".parse::<IpAddr>().unwrap()]);
    assert_eq!(d.port, 500);
    assert_eq!(d.control_socket, PathBuf::from("/run/aokd/control.sock"));
    assert_eq!(d.state_dir, PathBuf::from("/var/lib/aokd"));
    assert_eq!(d.listen_addrs(), vec!["0.0.0.0:500".parse().unwrap()]);

    let p = &config.peers[0];
    assert_eq!(p.name, "r2");
    assert_eq!(p.remote, "192.0.2.2".parse::<IpAddr>().unwrap());
    assert_eq!(p.remote_port, 500);
    assert_eq!(p.local, None);
    assert_eq!(p.local_id, None);
    assert_eq!(
        p.local_identity("192.0.2.1".parse().unwrap()),
        Identity::from_ip("192.0.2.1".parse().unwrap())
    );
    assert_eq!(p.remote_id, Identity::from_ip("192.0.2.2".parse().unwrap()));
    assert_eq!(p.psk_file, dir.join("r2.psk"));
    assert_eq!(p.psk.len(), 32);
    assert_eq!(
        p.mac_algorithms,
        vec![
            MacAlgorithm::HmacSha256_128,
            MacAlgorithm::AesCmac96,
            MacAlgorithm::HmacSha1_96
        ]
    );
    assert!(p.include_tcp_options);
    assert_eq!(*p.tcp_ports, [179]);
    assert_eq!(
        p.ike_proposals,
        vec![IkeSuite {
            encr: Encr::AesGcm16 { key_bits: 256 },
            prf: Prf::HmacSha256,
            group: DhGroup::CURVE25519
        }]
    );
    assert!(p.initiate);
    assert_eq!(
        p.lifetimes,
        Lifetimes {
            ike_rekey: Duration::from_secs(4 * 3600),
            mkt_rekey: Duration::from_secs(3600),
            mkt_lifetime: Duration::from_secs(66 * 60),
            pfs: true,
        }
    );
    // A partial [peer.lifetimes] keeps the other defaults.
    let config = load(
        &dir,
        &peer_config(&dir, "[peer.lifetimes]\nike_rekey = \"2h\""),
    )
    .unwrap();
    assert_eq!(
        config.peers[0].lifetimes.ike_rekey,
        Duration::from_secs(7200)
    );
    assert_eq!(
        config.peers[0].lifetimes.mkt_rekey,
        Duration::from_secs(3600)
    );
    assert_eq!(
        config.peers[0].lifetimes.mkt_lifetime,
        Duration::from_secs(66 * 60)
    );
}

#[test]
fn full_example_values() {
    let dir = TempDir::new("full");
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/full.toml"))
            .unwrap();
    let config = load(&dir, &localize_example(&text, &dir)).unwrap();
    assert_eq!(config.daemon.listen.len(), 2);
    assert_eq!(config.daemon.control_socket, dir.join("control.sock"));
    let r2 = config.peer("r2").unwrap();
    assert_eq!(r2.local, Some("192.0.2.1".parse().unwrap()));
    assert_eq!(r2.local_id, Some(fqdn("r1.example.net")));
    assert_eq!(r2.remote_id, fqdn("r2.example.net"));
    assert_eq!(r2.ike_proposals.len(), 2);
    assert_eq!(r2.ike_proposals[1].encr, Encr::ChaCha20Poly1305);
    let r3 = config.peer("r3-v6").unwrap();
    assert_eq!(r3.remote_id, rfc822("bgp@r3.example.net"));
    assert_eq!(
        r3.local_id,
        Some(Identity::from_ip("2001:db8::1".parse().unwrap()))
    );
    assert!(!r3.include_tcp_options && !r3.initiate);
    assert_eq!(*r3.tcp_ports, [179, 1790]);
    assert_eq!(r3.mac_algorithms, vec![MacAlgorithm::AesCmac96]);
    assert_eq!(r3.ike_proposals[0].group, DhGroup::ECP_256);
    assert_eq!(r3.lifetimes.mkt_lifetime, Duration::from_secs(40 * 60));
    assert_eq!(
        config
            .peer_by_remote("[2001:db8::3]:500".parse().unwrap())
            .map(|p| p.name.as_str()),
        Some("r3-v6")
    );
    assert!(config
        .peer_by_remote("[2001:db8::3]:4500".parse().unwrap())
        .is_none());
}

#[test]
fn psk_file_readable_by_others_is_refused() {
    let dir = TempDir::new("pskmode");
    let text = peer_config(&dir, "");
    for mode in [0o644, 0o640, 0o604, 0o660] {
        let psk = dir.write("r2.psk", b"0123456789abcdef0123456789abcdef\n", mode);
        let msg = expect_invalid(
            load(&dir, &text),
            "peer[0].psk_file",
            Some("r2"),
            "chmod 600",
        );
        assert!(msg.contains(&format!("has mode {mode:04o}")), "{msg}");
        assert!(msg.contains(&psk.display().to_string()), "{msg}");
    }
    dir.write("r2.psk", b"0123456789abcdef0123456789abcdef\n", 0o400);
    assert!(load(&dir, &text).is_ok());
}

#[test]
fn psk_file_contents() {
    let dir = TempDir::new("pskfmt");
    let text = peer_config(&dir, "");
    let psk = |contents: &[u8]| {
        dir.write("r2.psk", contents, 0o600);
        load(&dir, &text).map(|c| c.peers[0].psk.as_bytes().to_vec())
    };
    let hex = format!("0x{}\n", "0102ff".repeat(6));
    assert_eq!(psk(hex.as_bytes()).unwrap(), [1, 2, 0xff].repeat(6));
    assert_eq!(psk(&[b'a'; 64]).unwrap(), vec![0xaa; 32]);
    let ascii = "correct horse battery staple and then some more words to reach 64\n";
    assert_eq!(psk(ascii.as_bytes()).unwrap(), ascii.trim_end().as_bytes());
    assert_eq!(
        psk(b"a passphrase\tof 24\n").unwrap(),
        b"a passphrase\tof 24"
    );
    // A PSK of 1 or 3 octets is refused, naming the file, key and peer.
    for (short, octets) in [(&b"x"[..], 1), (b"0x0102ff\n", 3), (b"short\n", 5)] {
        dir.write("r2.psk", short, 0o600);
        expect_invalid(
            load(&dir, &text),
            "peer[0].psk_file",
            Some("r2"),
            &format!("a key of {octets} octets; at least 16"),
        );
    }

    dir.write("r2.psk", b"\n", 0o600);
    expect_invalid(
        load(&dir, &text),
        "peer[0].psk_file",
        Some("r2"),
        "is empty",
    );
    dir.write("r2.psk", b"0xnothex\n", 0o600);
    expect_invalid(load(&dir, &text), "peer[0].psk_file", Some("r2"), "hex");
    std::fs::remove_file(dir.join("r2.psk")).unwrap();
    expect_invalid(
        load(&dir, &text),
        "peer[0].psk_file",
        Some("r2"),
        "cannot open",
    );
    std::fs::create_dir(dir.join("r2.psk")).unwrap();
    expect_invalid(
        load(&dir, &text),
        "peer[0].psk_file",
        Some("r2"),
        "not a regular file",
    );
}

#[test]
fn psk_is_never_printed() {
    let dir = TempDir::new("pskprint");
    let config = load(&dir, &peer_config(&dir, "")).unwrap();
    let debug = format!("{config:?}");
    // The PSK's octets (0x00 0x11 ... 0xcc 0xdd 0xee 0xff) printed as a
    // decimal list or in hex; not a bare "221", which the temporary
    // directory's name (the test's PID) may hold.
    assert!(!debug.contains("221, 238"), "{debug}");
    assert!(!debug.contains("ccddeeff"), "{debug}");
    assert!(!debug.contains("0x11"), "{debug}");
    assert!(debug.contains("redacted"), "{debug}");
}

#[test]
fn duplicate_peer_name() {
    let dir = TempDir::new("dupname");
    dir.psk("r3.psk");
    let text = peer_config(&dir, "")
        + "[[peer]]\nname = \"r2\"\nremote = \"192.0.2.3\"\npsk_file = \"r3.psk\"\n";
    expect_invalid(
        load(&dir, &text),
        "peer[1].name",
        Some("r2"),
        "duplicate peer name",
    );
}

#[test]
fn duplicate_remote() {
    let dir = TempDir::new("dupremote");
    dir.psk("r3.psk");
    let text = peer_config(&dir, "")
        + "[[peer]]\nname = \"r3\"\nremote = \"192.0.2.2\"\npsk_file = \"r3.psk\"\n";
    expect_invalid(
        load(&dir, &text),
        "peer[1].remote",
        Some("r3"),
        "already uses remote",
    );
    // The same address on another port is a different peer.
    let text = text + "remote_port = 4500\n";
    assert_eq!(load(&dir, &text).unwrap().peers.len(), 2);
}

#[test]
fn bad_algorithm_names() {
    let dir = TempDir::new("badalg");
    let t = |extra: &str| load(&dir, &peer_config(&dir, extra));
    expect_invalid(
        t("mac_algorithms = [\"hmac-sha256-128\", \"hmac-md5\"]"),
        "peer[0].mac_algorithms[1]",
        Some("r2"),
        "hmac-md5",
    );
    expect_invalid(
        t("mac_algorithms = []"),
        "peer[0].mac_algorithms",
        Some("r2"),
        "must not be empty",
    );
    expect_invalid(
        t("mac_algorithms = [\"hmac-sha1-96\", \"hmac-sha1-96\"]"),
        "peer[0].mac_algorithms[1]",
        Some("r2"),
        "twice",
    );
    expect_invalid(
        t("ike_proposals = [\"aes256gcm16-prfsha1-x25519\"]"),
        "peer[0].ike_proposals[0]",
        Some("r2"),
        "prfsha1",
    );
    expect_invalid(
        t("ike_proposals = [\"aes256gcm16-prfsha256-modp2048\"]"),
        "peer[0].ike_proposals[0]",
        Some("r2"),
        "modp2048",
    );
    expect_invalid(
        t("ike_proposals = [\"3des-prfsha256-x25519\"]"),
        "peer[0].ike_proposals[0]",
        Some("r2"),
        "3des",
    );
    expect_invalid(
        t("ike_proposals = [\"aes256gcm16\"]"),
        "peer[0].ike_proposals[0]",
        Some("r2"),
        "ENCR-PRF-GROUP",
    );
    expect_invalid(
        t("ike_proposals = []"),
        "peer[0].ike_proposals",
        Some("r2"),
        "must not be empty",
    );
}

#[test]
fn ports() {
    let dir = TempDir::new("ports");
    let t = |extra: &str| load(&dir, &peer_config(&dir, extra));
    expect_invalid(
        t("remote_port = 0"),
        "peer[0].remote_port",
        Some("r2"),
        "out of range",
    );
    expect_invalid(
        t("remote_port = 65536"),
        "peer[0].remote_port",
        Some("r2"),
        "out of range",
    );
    expect_invalid(
        t("tcp_ports = []"),
        "peer[0].tcp_ports",
        Some("r2"),
        "must not be empty",
    );
    expect_invalid(
        t("tcp_ports = [179, -1]"),
        "peer[0].tcp_ports[1]",
        Some("r2"),
        "out of range",
    );
    expect_invalid(
        t("tcp_ports = [179, 179]"),
        "peer[0].tcp_ports[1]",
        Some("r2"),
        "twice",
    );
    assert_eq!(
        *t("tcp_ports = [1, 65535]").unwrap().peers[0].tcp_ports,
        [1, 65535]
    );
    let r = load(
        &dir,
        &("[daemon]\nport = 70000\n".to_owned() + &peer_config(&dir, "")),
    );
    expect_invalid(r, "daemon.port", None, "70000");
}

#[test]
fn lifetimes() {
    let dir = TempDir::new("lifetimes");
    let t = |lt: &str| load(&dir, &peer_config(&dir, &format!("[peer.lifetimes]\n{lt}")));
    expect_invalid(
        t("ike_rekey = \"4 hours\""),
        "peer[0].lifetimes.ike_rekey",
        Some("r2"),
        "invalid duration",
    );
    expect_invalid(
        t("ike_rekey = \"0s\""),
        "peer[0].lifetimes.ike_rekey",
        Some("r2"),
        "longer than 0s",
    );
    expect_invalid(
        t("mkt_rekey = \"2h\""),
        "peer[0].lifetimes.mkt_rekey",
        Some("r2"),
        "shorter than mkt_lifetime",
    );
    expect_invalid(
        t("mkt_rekey = \"30m\"\nmkt_lifetime = \"30m\""),
        "peer[0].lifetimes.mkt_rekey",
        Some("r2"),
        "shorter",
    );
    let c = t("ike_rekey = \"1d\"\nmkt_rekey = \"90s\"\nmkt_lifetime = \"1h30m\"").unwrap();
    assert_eq!(c.peers[0].lifetimes.ike_rekey, Duration::from_secs(86400));
    assert_eq!(c.peers[0].lifetimes.mkt_rekey, Duration::from_secs(90));
    assert_eq!(c.peers[0].lifetimes.mkt_lifetime, Duration::from_secs(5400));
    assert!(c.peers[0].lifetimes.pfs);
    assert!(!t("pfs = false").unwrap().peers[0].lifetimes.pfs);
}

#[test]
fn addresses() {
    let dir = TempDir::new("addr");
    let t = |extra: &str| load(&dir, &peer_config(&dir, extra));
    expect_invalid(
        t("local = \"2001:db8::1\""),
        "peer[0].local",
        Some("r2"),
        "IPv6",
    );
    expect_invalid(
        t("local = \"r1.example.net\""),
        "peer[0].local",
        Some("r2"),
        "not an IP address",
    );
    let r = load(
        &dir,
        &("[daemon]\nlisten = [\"192.0.2.9\"]\n".to_owned()
            + &peer_config(&dir, "local = \"192.0.2.1\"")),
    );
    expect_invalid(r, "peer[0].local", Some("r2"), "not in daemon.listen");
    let r = load(
        &dir,
        &peer_config(&dir, "").replace("192.0.2.2", "2001:db8::2"),
    );
    expect_invalid(r, "peer[0].remote", Some("r2"), "no IPv6 address");
    let r = load(
        &dir,
        &("[daemon]\nlisten = [\"::\"]\n".to_owned()
            + &peer_config(&dir, "").replace("192.0.2.2", "2001:db8::2")),
    );
    assert!(r.is_ok());
    expect_invalid(
        load(
            &dir,
            &("[daemon]\nlisten = []\n".to_owned() + &peer_config(&dir, "")),
        ),
        "daemon.listen",
        None,
        "empty",
    );
    expect_invalid(
        load(
            &dir,
            &("[daemon]\nlisten = [\"::\", \"::\"]\n".to_owned() + &peer_config(&dir, "")),
        ),
        "daemon.listen[1]",
        None,
        "twice",
    );
    expect_invalid(
        load(
            &dir,
            &("[daemon]\nlisten = [\"localhost\"]\n".to_owned() + &peer_config(&dir, "")),
        ),
        "daemon.listen[0]",
        None,
        "not an IP address",
    );
    let r = load(&dir, &peer_config(&dir, "").replace("192.0.2.2", "0.0.0.0"));
    expect_invalid(r, "peer[0].remote", Some("r2"), "not a unicast address");
}

#[test]
fn names_and_identities() {
    let dir = TempDir::new("names");
    let r = load(&dir, &peer_config(&dir, "").replace("\"r2\"", "\"r 2\""));
    expect_invalid(r, "peer[0].name", None, "may only contain");
    let r = load(&dir, &peer_config(&dir, "").replace("name = \"r2\"\n", ""));
    expect_invalid(r, "peer[0].name", None, "required");
    let r = load(
        &dir,
        &peer_config(&dir, "").replace("remote = \"192.0.2.2\"\n", ""),
    );
    expect_invalid(r, "peer[0].remote", Some("r2"), "required");
    let r = load(
        &dir,
        &peer_config(&dir, "").replace("psk_file = \"r2.psk\"\n", ""),
    );
    expect_invalid(r, "peer[0].psk_file", Some("r2"), "required");
    expect_invalid(
        load(&dir, &peer_config(&dir, "local_id = \"\"")),
        "peer[0].local_id",
        Some("r2"),
        "empty",
    );
    expect_invalid(
        load(&dir, &peer_config(&dir, "remote_id = \"a b\"")),
        "peer[0].remote_id",
        Some("r2"),
        "printable",
    );
    let c = load(
        &dir,
        &peer_config(
            &dir,
            "local_id = \"me@example.net\"\nremote_id = \"2001:db8::2\"",
        ),
    )
    .unwrap();
    assert_eq!(c.peers[0].local_id, Some(rfc822("me@example.net")));
    assert_eq!(
        c.peers[0].remote_id,
        Identity::from_ip("2001:db8::2".parse().unwrap())
    );
}

#[test]
fn syntax_errors_name_line_and_file() {
    let dir = TempDir::new("syntax");
    let err = load(&dir, "[daemon]\nport = \"five hundred\"\n").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{msg}");
    assert!(msg.contains("line 2") && msg.contains("aokd.toml"), "{msg}");
    let msg = load(&dir, "[daemon\n").unwrap_err().to_string();
    assert!(msg.contains("line 1"), "{msg}");
    let msg = Config::load(&dir.join("missing.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("missing.toml") && msg.contains("No such file"),
        "{msg}"
    );
}

#[test]
fn relative_paths_follow_the_config_file() {
    let dir = TempDir::new("relative");
    std::fs::create_dir(dir.join("keys")).unwrap();
    dir.psk("keys/r2.psk");
    let text = "[daemon]\ncontrol_socket = \"run/ctl.sock\"\nstate_dir = \"state\"\n[[peer]]\nname = \"r2\"\nremote = \"192.0.2.2\"\npsk_file = \"keys/r2.psk\"\n";
    let c = load(&dir, text).unwrap();
    assert_eq!(c.daemon.control_socket, dir.join("run/ctl.sock"));
    assert_eq!(c.daemon.state_dir, dir.join("state"));
    assert_eq!(c.peers[0].psk_file, dir.join("keys/r2.psk"));
    let long = format!("[daemon]\ncontrol_socket = \"/{}\"\n", "x".repeat(120));
    expect_invalid(
        load(&dir, &long),
        "daemon.control_socket",
        None,
        "at most 107",
    );
}

#[test]
fn liveness() {
    let dir = TempDir::new("liveness");
    let t = |v: &str| {
        load(
            &dir,
            &format!("[daemon]\nliveness = {v}\n{}", peer_config(&dir, "")),
        )
    };
    assert_eq!(
        load(&dir, &peer_config(&dir, "")).unwrap().daemon.liveness,
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        t("\"10s\"").unwrap().daemon.liveness,
        Some(Duration::from_secs(10))
    );
    assert_eq!(t("\"off\"").unwrap().daemon.liveness, None);
    expect_invalid(t("\"soon\""), "daemon.liveness", None, "\"off\"");
}

#[test]
fn cookie_thresholds() {
    let dir = TempDir::new("cookies");
    let t = |k: &str, v: &str| {
        load(
            &dir,
            &format!("[daemon]\n{k} = {v}\n{}", peer_config(&dir, "")),
        )
    };
    let d = load(&dir, &peer_config(&dir, "")).unwrap().daemon;
    assert_eq!((d.cookie_threshold, d.cookie_threshold_per_source), (30, 3));
    assert_eq!(
        t("cookie_threshold", "0").unwrap().daemon.cookie_threshold,
        0
    );
    assert_eq!(
        t("cookie_threshold_per_source", "7")
            .unwrap()
            .daemon
            .cookie_threshold_per_source,
        7
    );
    expect_invalid(
        t("cookie_threshold", "-1"),
        "daemon.cookie_threshold",
        None,
        "0..=",
    );
    expect_invalid(
        t("cookie_threshold_per_source", "10000000"),
        "daemon.cookie_threshold_per_source",
        None,
        "out of range",
    );
}

#[test]
fn fragment_size() {
    let dir = TempDir::new("fragment-size");
    let t = |v: &str| {
        load(
            &dir,
            &format!("[daemon]\nfragment_size = {v}\n{}", peer_config(&dir, "")),
        )
    };
    let d = load(&dir, &peer_config(&dir, "")).unwrap().daemon;
    assert_eq!(d.fragment_size, 1280);
    assert_eq!(t("1500").unwrap().daemon.fragment_size, 1500);
    assert_eq!(t("576").unwrap().daemon.fragment_size, 576);
    for bad in ["575", "65536", "-1"] {
        expect_invalid(t(bad), "daemon.fragment_size", None, "576..=65535");
    }
}

/// Makes a FIFO at `path` with mkfifo(1).
fn mkfifo(path: &Path) {
    let st = std::process::Command::new("mkfifo")
        .arg("-m")
        .arg("600")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(st.success(), "mkfifo {}", path.display());
}

/// Runs `f` in a thread and waits at most 10 s for its result; `unblock`
/// is called if it has not answered by then (so that a thread stuck in
/// `open()` of a FIFO ends), and the test fails.
fn within_deadline<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
    unblock: impl FnOnce(),
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(v) => v,
        Err(_) => {
            unblock();
            panic!("{what} did not return within 10 s");
        }
    }
}

/// Opening a FIFO for writing releases a reader blocked in `open()`.
fn release_fifo(path: &Path) {
    let _ = std::fs::OpenOptions::new().write(true).open(path);
}

#[test]
fn psk_file_that_is_a_fifo_is_refused_without_blocking() {
    let dir = TempDir::new("pskfifo");
    let text = peer_config(&dir, "");
    let fifo = dir.join("r2.psk");
    std::fs::remove_file(&fifo).unwrap();
    mkfifo(&fifo);
    let file = dir.join("aokd.toml");
    std::fs::write(&file, &text).unwrap();

    let f = file.clone();
    let r = within_deadline(
        "Config::load",
        move || Config::load(&f),
        || release_fifo(&fifo),
    );
    let msg = expect_invalid(r, "peer[0].psk_file", Some("r2"), "not a regular file");
    assert!(msg.contains("FIFO"), "{msg}");
    assert!(msg.contains(&fifo.display().to_string()), "{msg}");

    // `aokd check-config` too: it must exit (with status 1) rather than wait.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_aokd"))
        .arg("check-config")
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("aokd check-config with a FIFO as psk_file did not exit within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    for needle in [
        file.display().to_string().as_str(),
        "peer[0].psk_file",
        "\"r2\"",
        "FIFO",
    ] {
        assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
    }
}

#[test]
fn psk_file_that_is_a_device_or_directory_is_refused() {
    let dir = TempDir::new("pskdev");
    let text = peer_config(&dir, "");
    for (path, kind) in [("/dev/null", "character device"), ("/", "directory")] {
        let t = text.replace("psk_file = \"r2.psk\"", &format!("psk_file = \"{path}\""));
        let msg = expect_invalid(load(&dir, &t), "peer[0].psk_file", Some("r2"), kind);
        assert!(msg.contains("not a regular file"), "{msg}");
    }
}

/// Durations so long that adding them to the clock overflows (the daemon
/// panicked when an SA was established) are refused; the limits are kept.
#[test]
fn lifetimes_have_a_maximum() {
    let dir = TempDir::new("ltmax");
    let t = |lt: &str| load(&dir, &peer_config(&dir, &format!("[peer.lifetimes]\n{lt}")));
    let msg = expect_invalid(
        t("ike_rekey = \"2000000000000000000s\""),
        "peer[0].lifetimes.ike_rekey",
        Some("r2"),
        "maximum of 30d",
    );
    assert!(msg.contains("\"2000000000000000000s\""), "{msg}");
    expect_invalid(
        t("ike_rekey = \"31d\""),
        "peer[0].lifetimes.ike_rekey",
        Some("r2"),
        "maximum of 30d",
    );
    let msg = expect_invalid(
        t("mkt_rekey = \"18446744073709551614s\"\nmkt_lifetime = \"18446744073709551615s\""),
        "peer[0].lifetimes.mkt_rekey",
        Some("r2"),
        "maximum of 30d",
    );
    assert!(msg.contains("\"18446744073709551614s\""), "{msg}");
    let msg = expect_invalid(
        t("mkt_rekey = \"1h\"\nmkt_lifetime = \"18446744073709551615s\""),
        "peer[0].lifetimes.mkt_lifetime",
        Some("r2"),
        "maximum of 30d",
    );
    assert!(msg.contains("\"18446744073709551615s\""), "{msg}");
    expect_invalid(
        t("mkt_rekey = \"1h\"\nmkt_lifetime = \"30d1s\""),
        "peer[0].lifetimes.mkt_lifetime",
        Some("r2"),
        "maximum of 30d",
    );
    let c = t("ike_rekey = \"30d\"\nmkt_rekey = \"29d\"\nmkt_lifetime = \"30d\"").unwrap();
    let month = Duration::from_secs(30 * 86400);
    assert_eq!(c.peers[0].lifetimes.ike_rekey, month);
    assert_eq!(c.peers[0].lifetimes.mkt_lifetime, month);
}

#[test]
fn liveness_has_a_minimum_and_a_maximum() {
    let dir = TempDir::new("livelimits");
    let t = |v: &str| {
        load(
            &dir,
            &format!("[daemon]\nliveness = \"{v}\"\n{}", peer_config(&dir, "")),
        )
    };
    let msg = expect_invalid(
        t("9300000000000000000s"),
        "daemon.liveness",
        None,
        "maximum of 1h",
    );
    assert!(msg.contains("\"9300000000000000000s\""), "{msg}");
    expect_invalid(t("1h1s"), "daemon.liveness", None, "maximum of 1h");
    let msg = expect_invalid(t("0s"), "daemon.liveness", None, "minimum of 5s");
    assert!(msg.contains("\"off\""), "{msg}");
    assert!(msg.contains("\"0s\""), "{msg}");
    expect_invalid(t("4s"), "daemon.liveness", None, "minimum of 5s");
    assert_eq!(
        t("5s").unwrap().daemon.liveness,
        Some(Duration::from_secs(5))
    );
    assert_eq!(
        t("1h").unwrap().daemon.liveness,
        Some(Duration::from_secs(3600))
    );
}

#[test]
fn acquire_timeout_has_a_maximum() {
    let dir = TempDir::new("acqmax");
    let t = |v: &str| {
        load(
            &dir,
            &format!(
                "[daemon]\nacquire_timeout = \"{v}\"\n{}",
                peer_config(&dir, "")
            ),
        )
    };
    let msg = expect_invalid(
        t("18446744073709551615s"),
        "daemon.acquire_timeout",
        None,
        "maximum of 3m",
    );
    assert!(msg.contains("\"18446744073709551615s\""), "{msg}");
    expect_invalid(t("181s"), "daemon.acquire_timeout", None, "maximum of 3m");
    assert_eq!(
        t("3m").unwrap().daemon.acquire_timeout,
        Duration::from_secs(180)
    );
    assert_eq!(t("0s").unwrap().daemon.acquire_timeout, Duration::ZERO);
}

/// A hex PSK file (`aoctl gen-psk` writes 64 hex digits and a newline)
/// loads as the decoded octets with "\n" or "\r\n"; more trailing white
/// space is refused instead of being taken as a 65-octet ASCII secret.
#[test]
fn hex_psk_file_with_trailing_newline() {
    let dir = TempDir::new("pskhexnl");
    let text = peer_config(&dir, "");
    let hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let key = hex::decode(hex64).unwrap();
    for ending in ["\n", "\r\n", ""] {
        dir.write("r2.psk", format!("{hex64}{ending}").as_bytes(), 0o600);
        let c = load(&dir, &text).unwrap();
        assert_eq!(c.peers[0].psk.len(), 32, "{ending:?}");
        assert_eq!(c.peers[0].psk.as_bytes(), &key[..], "{ending:?}");
    }
    for ending in ["\n\n", " \n", "\t\n", "\r\n\r\n", " "] {
        let psk = dir.write("r2.psk", format!("{hex64}{ending}").as_bytes(), 0o600);
        let msg = expect_invalid(
            load(&dir, &text),
            "peer[0].psk_file",
            Some("r2"),
            "64 hex digits",
        );
        assert!(msg.contains("white space"), "{ending:?}: {msg}");
        assert!(msg.contains(&psk.display().to_string()), "{msg}");
    }
}

/// daemon/examples/full.toml says it holds every key aokd understands: it
/// does, for `[daemon]`, `[[peer]]`, `[peer.lifetimes]` and
/// `[[peer_group]]` (commented out there). The keys come
/// from the parser itself (the names it lists when it refuses an unknown
/// one), so a key added to the parser and not to the example fails here.
#[test]
fn full_example_has_every_key() {
    let dir = TempDir::new("every-key");
    let full =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/full.toml"))
            .unwrap();
    let psk = dir.join("k.psk");
    std::fs::write(&psk, "00112233445566778899aabbccddeeff\n").unwrap();
    let peer = format!(
        "name = \"p\"\nremote = \"192.0.2.9\"\npsk_file = \"{}\"\n",
        psk.display()
    );
    for (table, text) in [
        (
            "[daemon]",
            format!("[daemon]\nzz_unknown = 1\n[[peer]]\n{peer}"),
        ),
        ("[[peer]]", format!("[[peer]]\n{peer}zz_unknown = 1\n")),
        (
            "[peer.lifetimes]",
            format!("[[peer]]\n{peer}[peer.lifetimes]\nzz_unknown = 1\n"),
        ),
        (
            "[[peer_group]]",
            "[[peer_group]]\nzz_unknown = 1\n".to_string(),
        ),
    ] {
        let err = load(&dir, &text).unwrap_err().to_string();
        let expected = err
            .split_once("expected one of ")
            .or_else(|| err.split_once("expected "))
            .unwrap_or_else(|| panic!("{table}: no list of keys in {err:?}"))
            .1;
        let keys: Vec<&str> = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|k| !k.is_empty())
            .collect();
        assert!(keys.len() >= 3, "{table}: {keys:?} from {err:?}");
        let missing: Vec<&&str> = keys
            .iter()
            .filter(|k| {
                !full.lines().any(|l| {
                    let l = l.trim_start().trim_start_matches('#').trim_start();
                    l == format!("[peer.{k}]")
                        || l == format!("[peer_group.{k}]")
                        || l.strip_prefix(**k)
                            .is_some_and(|rest| rest.trim_start().starts_with('='))
                })
            })
            .collect();
        assert!(missing.is_empty(), "{table}: full.toml lacks {missing:?}");
    }
}

/// `metrics_file` and `metrics_interval`: off by default, the path made
/// absolute against the file's directory, the interval bounded, and an
/// interval without a file refused.
#[test]
fn metrics_file_and_interval() {
    let dir = TempDir::new("metrics");
    let peer = peer_config(&dir, "");
    let config = load(&dir, &peer).unwrap();
    assert_eq!(config.daemon.metrics_file, None);
    assert_eq!(config.daemon.metrics_interval, Duration::from_secs(15));
    let config = load(
        &dir,
        &format!("[daemon]\nmetrics_file = \"m/aokd.prom\"\nmetrics_interval = \"2s\"\n{peer}"),
    )
    .unwrap();
    assert_eq!(config.daemon.metrics_file, Some(dir.join("m/aokd.prom")));
    assert_eq!(config.daemon.metrics_interval, Duration::from_secs(2));
    for (daemon, key, needle) in [
        (
            "metrics_interval = \"15s\"",
            "daemon.metrics_interval",
            "metrics_file is not",
        ),
        (
            "metrics_file = \"a.prom\"\nmetrics_interval = \"0s\"",
            "daemon.metrics_interval",
            "minimum of 1s",
        ),
        (
            "metrics_file = \"a.prom\"\nmetrics_interval = \"2h\"",
            "daemon.metrics_interval",
            "maximum of 1h",
        ),
        (
            "metrics_file = \"\"",
            "daemon.metrics_file",
            "not a file path",
        ),
        (
            "metrics_file = \"dir/\"",
            "daemon.metrics_file",
            "not a file path",
        ),
    ] {
        expect_invalid(
            load(&dir, &format!("[daemon]\n{daemon}\n{peer}")),
            key,
            None,
            needle,
        );
    }
}
