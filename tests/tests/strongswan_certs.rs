//! Certificate interoperability with strongSwan 5.9.8 (issue 12): aokd in
//! namespace A (10.206.0.1), Debian's charon in namespace B (10.206.0.2)
//! (harness in tests/src/strongswan.rs, `CharonConfig::pubkey`), both with
//! `auth = pubkey` and certificates from a private CA the test makes
//! (`aokd_tests::pki`: SAN IP = CN = the address, which is the IKE
//! identity). charon does not announce TCP-AO keying, so the IKE SA is
//! childless (RFC 6023) in both directions.
//!
//! Every case ([`ED25519`], [`ECDSA_P256`], [`ED25519_DEPTH3`]) runs with
//! aokd initiating and with charon initiating (`swanctl --initiate --ike`):
//! both list the same IKE SA as established, charon's log shows one CERT
//! per certificate of the chain in each IKE_AUTH message, aokd's without a
//! child, and that charon verified aokd's signature and signed its own with
//! the case's key type (charon: "authentication of '10.206.0.1' with
//! ED25519 successful").
//!
//! - `ed25519_aokd_initiates`, `ed25519_charon_initiates`: Ed25519 leaves
//!   under an Ed25519 root.
//! - `ecdsa_p256_aokd_initiates`, `ecdsa_p256_charon_initiates`: P-256.
//! - `ed25519_depth_three_aokd_initiates`,
//!   `ed25519_depth_three_charon_initiates`: root → 2 intermediates →
//!   leaf, a branch of intermediates per side (charon holds only its own),
//!   three CERT payloads each way.
//! - `aokd_certificate_from_another_ca_is_refused_by_charon`: charon
//!   answers aokd's IKE_AUTH with AUTHENTICATION_FAILED; aokd's status shows
//!   it; no SA anywhere.
//! - `charon_certificate_from_another_ca_is_refused_by_aokd`: aokd refuses
//!   charon's certificate (its log names the reason: not issued by a
//!   configured CA) and answers AUTHENTICATION_FAILED, which charon logs.
//!
//! - `fragmented_ike_auth_at_mtu_1280_aokd_initiates`,
//!   `fragmented_ike_auth_at_mtu_1280_charon_initiates`: a chain of four
//!   ([`FRAGMENTED`]) makes each IKE_AUTH about 1,700 octets on a link of
//!   MTU 1,280 whose namespaces drop IPv4 packets over 1,280 octets on the
//!   way out (so IP fragmentation cannot stand in): both sides fragment
//!   (RFC 7383; charon logs aokd's fragments and splits its own), every
//!   datagram is at most 1,252 octets of UDP payload, nothing is dropped.
//!
//! Each test prints its wall time. Needs root, `ip`, `tcpdump`, `unshare`,
//! `nft`, Debian's strongswan-charon, strongswan-swanctl and
//! libstrongswan-standard-plugins: when something is missing the test fails
//! if `CI` is set, and is otherwise skipped with the reason printed.

use std::time::{Duration, Instant};

use aokd_tests::netns::{ip, Netns, Pair};
use aokd_tests::pki::{Ca, KeyType, Leaf};
use aokd_tests::strongswan::{self, Charon, CharonConfig, SwanPubkey};
use aokd_tests::{established_sas, Daemon};
use serde_json::Value;

const ADDR_A: &str = "10.206.0.1";
const ADDR_B: &str = "10.206.0.2";
/// Negotiation and daemon start-up.
const WAIT: Duration = Duration::from_secs(30);

/// One interop case.
#[derive(Clone, Copy, Debug)]
struct Case {
    name: &'static str,
    /// The key type of the leaves and the root.
    alg: KeyType,
    /// CAs above each leaf: 1, the root signs them; n, the root and n - 1
    /// intermediates (ECDSA P-256), all sent in CERT payloads.
    depth: usize,
    /// The MTU of both ends of the veth, when not 1500.
    mtu: Option<u32>,
}

const ED25519: Case = Case {
    name: "Ed25519",
    alg: KeyType::Ed25519,
    depth: 1,
    mtu: None,
};

const ECDSA_P256: Case = Case {
    name: "ECDSA P-256",
    alg: KeyType::EcdsaP256,
    depth: 1,
    mtu: None,
};

const ED25519_DEPTH3: Case = Case {
    name: "Ed25519 under two intermediates",
    alg: KeyType::Ed25519,
    depth: 3,
    mtu: None,
};

/// A chain of four (three intermediates): each IKE_AUTH is about 1,700
/// octets, over the link's MTU of 1,280, so both sides must fragment
/// (RFC 7383); IPv4 packets over 1,280 octets are dropped on the way out,
/// so that IP fragmentation cannot stand in for it.
const FRAGMENTED: Case = Case {
    name: "Ed25519 under three intermediates, MTU 1280",
    alg: KeyType::Ed25519,
    depth: 4,
    mtu: Some(1280),
};

/// The largest UDP payload in an IPv4 packet of 1,280 octets.
const MAX_UDP_PAYLOAD_1280: usize = 1280 - 20 - 8;

/// The intermediates of one side's branch under `root` (`depth - 1` of
/// them, ECDSA P-256), nearest the root first. aokd and charon have
/// branches of their own, so each can only build the other's chain from
/// the CERT payloads it receives.
fn intermediates(case: &Case, root: &Ca, side: &str) -> Vec<Ca> {
    let mut v: Vec<Ca> = Vec::new();
    for n in 1..case.depth {
        let ca = v
            .last()
            .unwrap_or(root)
            .intermediate(&format!("{side} intermediate {n}"), KeyType::EcdsaP256)
            .expect("intermediate CA");
        v.push(ca);
    }
    v
}

/// A leaf for `ip` issued at the bottom of `root` and `inter`, carrying
/// the intermediates.
fn leaf(case: &Case, root: &Ca, inter: &[Ca], ip: &str) -> Leaf {
    let above: Vec<&Ca> = inter.iter().rev().collect();
    let issuer = inter.last().unwrap_or(root);
    issuer
        .leaf(ip.parse().expect("address"), case.alg, &above)
        .expect("leaf certificate")
}

/// Who starts the IKE SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Initiator {
    Aokd,
    Charon,
}

/// Which side holds a certificate from a CA the other does not trust.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Untrusted {
    Nobody,
    Aokd,
    Charon,
}

/// The namespaces, aokd and charon of one run (dropped in reverse order:
/// processes before the namespaces).
struct Run {
    aokd: Daemon,
    charon: Charon,
    _t: Pair,
    started: Instant,
    /// `swanctl --initiate`'s result when charon initiated.
    initiated: Option<Result<String, String>>,
}

/// Makes the certificates, sets the MTU, starts charon and aokd, and has
/// `initiator` start the IKE SA (charon's `--initiate` result is kept in
/// [`Run::initiated`]: it fails when a certificate is refused).
fn start(case: &Case, tag: &str, initiator: Initiator, untrusted: Untrusted) -> Run {
    let started = Instant::now();
    let t = Pair::new(tag, ADDR_A, ADDR_B);
    if let Some(mtu) = case.mtu {
        for ns in [&t.a, &t.b] {
            ip(&[
                "-n",
                ns.name(),
                "link",
                "set",
                "veth0",
                "mtu",
                &mtu.to_string(),
            ])
            .expect("set MTU");
            drop_too_big(ns, mtu);
        }
    }
    let trusted = Ca::root("aokd test root", case.alg).expect("root CA");
    let other = Ca::root("another root", case.alg).expect("other root CA");
    let root_of = |who: Untrusted| {
        if untrusted == who {
            &other
        } else {
            &trusted
        }
    };
    let (root_a, root_c) = (root_of(Untrusted::Aokd), root_of(Untrusted::Charon));
    let (inter_a, inter_c) = (
        intermediates(case, root_a, "aokd"),
        intermediates(case, root_c, "charon"),
    );
    let leaf_a = leaf(case, root_a, &inter_a, ADDR_A);
    let leaf_b = leaf(case, root_c, &inter_c, ADDR_B);
    // charon holds the trusted root and the intermediates of its own
    // chain (which it sends); aokd's come in its CERT payloads.
    let mut cacerts = vec![trusted.pem()];
    cacerts.extend(inter_c.iter().map(Ca::pem));
    let mut cfg = CharonConfig::new(ADDR_B, ADDR_A, "");
    cfg.pubkey = Some(SwanPubkey {
        cert: leaf_b.cert_pem(),
        key: leaf_b.key_pem().to_string(),
        cacerts,
    });
    let charon = Charon::start(&t.b, &t.root.join("charon"), cfg).expect("charon");
    let files = leaf_a
        .write(&t.side_a.dir, "a", &[&trusted])
        .expect("aokd's files");
    let mut swan = t.side_b.clone();
    swan.name = "swan".into();
    let peer = format!(
        "backend = \"tcp-md5\"\ninitiate = {}\nike_proposals = [\"aes256gcm16-prfsha256-x25519\"]\n",
        initiator == Initiator::Aokd
    );
    t.side_a.write_pubkey_config(&swan, &files, "", &peer);
    let check = std::process::Command::new(aokd_tests::binary("aokd"))
        .arg("check-config")
        .arg(t.side_a.config_path())
        .output()
        .expect("aokd check-config");
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && text.contains("auth: pubkey"),
        "aokd check-config: {text}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let aokd = t.start_a();
    let initiated = (initiator == Initiator::Charon).then(|| charon.initiate());
    Run {
        aokd,
        charon,
        _t: t,
        started,
        initiated,
    }
}

/// aokd's IKE SAs (`aoctl sas`), as (state, spi_i, spi_r).
fn aokd_sas(v: &Value) -> Vec<(String, u64, u64)> {
    let hex = |s: &Value, k: &str| u64::from_str_radix(s[k].as_str()?, 16).ok();
    v["sas"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    Some((
                        s["state"].as_str()?.to_string(),
                        hex(s, "spi_i")?,
                        hex(s, "spi_r")?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `case` with `initiator` and asserts the childless IKE SA on both
/// sides, authenticated by certificates with the case's key type.
fn run(test: &str, case: &Case, initiator: Initiator) {
    if !strongswan::prerequisites(test) {
        return;
    }
    let r = start(case, test, initiator, Untrusted::Nobody);
    let (d, c) = (&r.aokd, &r.charon);
    if let Some(Err(e)) = &r.initiated {
        panic!("swanctl --initiate: {e}\naokd:\n{}", d.log());
    }
    let v = d.wait_for(&["sas"], WAIT, |v| established_sas(v).len() == 1);
    let sa = &established_sas(&v)[0];
    assert_eq!(sa["tcp_ao_capable"], false, "childless toward charon: {sa}");
    let role = match initiator {
        Initiator::Aokd => "initiator",
        Initiator::Charon => "responder",
    };
    assert_eq!(sa["role"], role, "{sa}");
    let (_, spi_i, spi_r) = aokd_sas(&v)
        .into_iter()
        .find(|s| s.0 == "established")
        .expect("aokd's SA");
    let (sas, _) = c.wait_for(WAIT, "the IKE SA established", |s| {
        s.iter()
            .any(|s| s.state == "ESTABLISHED" && (s.spi_i, s.spi_r) == (spi_i, spi_r))
    });
    assert_eq!(sas.len(), 1, "charon holds other SAs: {sas:?}");
    assert_eq!(
        sas[0].local_is_initiator,
        initiator == Initiator::Charon,
        "{sas:?}"
    );
    let st = d.aoctl(&["status"]).expect("status");
    assert_eq!(st["peers"][0]["ike_state"], "established", "{st}");
    assert_eq!(st["peers"][0]["last_error"], Value::Null, "{st}");
    let log = c.log();
    // aokd's IKE_AUTH message carries its certificate and no child.
    let aokd_auth = match initiator {
        Initiator::Aokd => "parsed IKE_AUTH request 1 [",
        Initiator::Charon => "parsed IKE_AUTH response 1 [",
    };
    // With fragmentation each fragment is logged as `[ EF(n/m) ]` first;
    // the reassembled message is the line with the payloads.
    let line = log
        .lines()
        .find(|l| l.contains(aokd_auth) && !l.contains("EF("))
        .unwrap_or_else(|| panic!("no `{aokd_auth}` in charon's log:\n{log}"));
    assert!(
        line.contains(" AUTH") && !line.contains(" SA "),
        "aokd's IKE_AUTH: {line}"
    );
    // One CERT payload per certificate, the leaf and the intermediates, in
    // aokd's IKE_AUTH and in charon's.
    let charon_auth = match initiator {
        Initiator::Aokd => "generating IKE_AUTH response 1 [",
        Initiator::Charon => "generating IKE_AUTH request 1 [",
    };
    let charon_line = log
        .lines()
        .find(|l| l.contains(charon_auth) && !l.contains("EF("))
        .unwrap_or_else(|| panic!("no `{charon_auth}` in charon's log:\n{log}"));
    for (who, l) in [("aokd", line), ("charon", charon_line)] {
        let certs = l.split_whitespace().filter(|w| *w == "CERT").count();
        assert_eq!(certs, case.depth, "{who}'s IKE_AUTH: {l}");
    }
    // charon verified aokd's signature and signed with the same key type.
    let scheme = case.alg.strongswan_name();
    for what in [
        format!("authentication of '{ADDR_A}' with {scheme} successful"),
        format!("authentication of '{ADDR_B}' (myself) with {scheme} successful"),
    ] {
        assert!(log.contains(&what), "`{what}` not in charon's log:\n{log}");
    }
    let (from_aokd, from_charon) = ike_auth_sizes(&log);
    if case.mtu.is_some() {
        // Both IKE_AUTH messages went in fragments, none over the MTU, and
        // no IKE packet had to be dropped for its size.
        assert!(
            log.contains("received fragment #1 of"),
            "charon received no fragment from aokd:\n{log}"
        );
        assert!(
            log.contains("splitting IKE message"),
            "charon did not fragment:\n{log}"
        );
        assert!(
            log.contains("reassembled fragmented IKE message"),
            "charon did not reassemble aokd's fragments:\n{log}"
        );
        // Every datagram either side sent (charon's threads interleave its
        // log lines, so they are not matched to the message they carry):
        // IKE_SA_INIT and at least two fragments from aokd.
        let (sent_by_aokd, sent_by_charon) = (
            packet_sizes(&log, "received packet"),
            packet_sizes(&log, "sending packet"),
        );
        assert!(
            sent_by_aokd.len() >= 3,
            "aokd's datagrams: {sent_by_aokd:?}"
        );
        for (who, sizes) in [("aokd", &sent_by_aokd), ("charon", &sent_by_charon)] {
            assert!(
                sizes.iter().all(|&n| n <= MAX_UDP_PAYLOAD_1280),
                "{who} sent a datagram over the MTU: {sizes:?}"
            );
        }
        for (who, ns) in [("aokd", &r._t.a), ("charon", &r._t.b)] {
            let (dropped, listing) = too_big_dropped(ns);
            assert_eq!(dropped, 0, "{who}: {listing}");
        }
    }
    eprintln!(
        "{test}: {}, depth {}, {initiator:?} initiates: established on both sides, {:.2} s; \
         aokd's IKE_AUTH: {} ({from_aokd:?} octets), charon's: {from_charon:?} octets",
        case.name,
        case.depth,
        r.started.elapsed().as_secs_f64(),
        line.split("IKE_AUTH").nth(1).unwrap_or_default().trim()
    );
}

/// Drops IPv4 packets longer than `mtu` on their way out of `ns` (the
/// output hook sees them before IP fragmentation): a path on which only
/// IKE fragmentation gets a large message through. The table goes with
/// the namespace.
fn drop_too_big(ns: &Netns, mtu: u32) {
    let script = format!(
        "table inet aokd_mtu {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  ip length > {mtu} counter drop\n }}\n}}\n"
    );
    let path = aokd_tests::temp_dir("nft-mtu").join("rules.nft");
    std::fs::write(&path, script).expect("nft rules");
    ns.run("nft", &["-f", &path.to_string_lossy()])
        .expect("nft -f");
}

/// How many packets [`drop_too_big`] dropped in `ns`, and its listing.
fn too_big_dropped(ns: &Netns) -> (u64, String) {
    let out = ns
        .run("nft", &["list", "table", "inet", "aokd_mtu"])
        .expect("nft list");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let n = text
        .split_whitespace()
        .skip_while(|w| *w != "counter")
        .nth(2)
        .and_then(|n| n.parse().ok())
        .expect("a counter in the listing");
    (n, text)
}

/// The UDP payload sizes of every datagram on the log lines with `what`
/// ("sending packet", "received packet").
fn packet_sizes(log: &str, what: &str) -> Vec<usize> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| l.rsplit_once('(')?.1.strip_suffix(" bytes)")?.parse().ok())
        .collect()
}

/// The UDP payload sizes of the IKE_AUTH datagrams charon received (from
/// aokd) and sent, from its log ("received packet: ... (N bytes)" before
/// "parsed IKE_AUTH", "sending packet: ... (N bytes)" after "generating
/// IKE_AUTH"). A fragmented case would see one line per fragment.
fn ike_auth_sizes(log: &str) -> (Vec<usize>, Vec<usize>) {
    let lines: Vec<&str> = log.lines().collect();
    let bytes =
        |l: &str| -> Option<usize> { l.rsplit_once('(')?.1.strip_suffix(" bytes)")?.parse().ok() };
    let (mut received, mut sent) = (Vec::new(), Vec::new());
    for (i, l) in lines.iter().enumerate() {
        if l.contains("parsed IKE_AUTH") && i > 0 && lines[i - 1].contains("received packet") {
            received.extend(bytes(lines[i - 1]));
        }
        if l.contains("generating IKE_AUTH") {
            if let Some(next) = lines.get(i + 1).filter(|n| n.contains("sending packet")) {
                sent.extend(bytes(next));
            }
        }
    }
    (received, sent)
}

#[test]
fn ed25519_aokd_initiates() {
    run("ed25519_aokd_initiates", &ED25519, Initiator::Aokd);
}

#[test]
fn ed25519_charon_initiates() {
    run("ed25519_charon_initiates", &ED25519, Initiator::Charon);
}

#[test]
fn ecdsa_p256_aokd_initiates() {
    run("ecdsa_p256_aokd_initiates", &ECDSA_P256, Initiator::Aokd);
}

#[test]
fn ecdsa_p256_charon_initiates() {
    run(
        "ecdsa_p256_charon_initiates",
        &ECDSA_P256,
        Initiator::Charon,
    );
}

#[test]
fn ed25519_depth_three_aokd_initiates() {
    run(
        "ed25519_depth_three_aokd_initiates",
        &ED25519_DEPTH3,
        Initiator::Aokd,
    );
}

#[test]
fn ed25519_depth_three_charon_initiates() {
    run(
        "ed25519_depth_three_charon_initiates",
        &ED25519_DEPTH3,
        Initiator::Charon,
    );
}

#[test]
fn aokd_certificate_from_another_ca_is_refused_by_charon() {
    let test = "aokd_certificate_from_another_ca_is_refused_by_charon";
    if !strongswan::prerequisites(test) {
        return;
    }
    let mut r = start(
        &ED25519,
        "swancert-wrong-a",
        Initiator::Aokd,
        Untrusted::Aokd,
    );
    let st = r.aokd.wait_for(&["status"], WAIT, |v| {
        v["peers"][0]["last_error"] == "AUTHENTICATION_FAILED"
    });
    assert_ne!(st["peers"][0]["ike_state"], "established", "{st}");
    let log = r.charon.log();
    assert!(
        log.contains(&format!(
            "no trusted ED25519 public key found for '{ADDR_A}'"
        )),
        "charon's log:\n{log}"
    );
    assert!(
        log.contains("generating IKE_AUTH response 1 [ N(AUTH_FAILED) ]"),
        "charon's log:\n{log}"
    );
    assert!(r.charon.established().is_empty());
    assert!(established_sas(&r.aokd.aoctl(&["sas"]).expect("sas")).is_empty());
    assert!(r.aokd.running() && r.charon.running());
    eprintln!(
        "{test}: aokd {}; {:.2} s",
        st["peers"][0],
        r.started.elapsed().as_secs_f64()
    );
}

#[test]
fn charon_certificate_from_another_ca_is_refused_by_aokd() {
    let test = "charon_certificate_from_another_ca_is_refused_by_aokd";
    if !strongswan::prerequisites(test) {
        return;
    }
    let mut r = start(
        &ED25519,
        "swancert-wrong-c",
        Initiator::Charon,
        Untrusted::Charon,
    );
    let st = r.aokd.wait_for(&["status"], WAIT, |v| {
        v["peers"][0]["last_error"] == "AUTHENTICATION_FAILED"
    });
    assert_ne!(st["peers"][0]["ike_state"], "established", "{st}");
    let reason =
        "the initiator's certificate is refused: the certificate is not issued by a configured CA";
    assert!(
        r.aokd.log().contains(reason),
        "aokd's log:\n{}",
        r.aokd.log()
    );
    match &r.initiated {
        Some(Err(e)) => assert!(
            e.contains("received AUTHENTICATION_FAILED notify error"),
            "{e}"
        ),
        other => panic!("swanctl --initiate succeeded: {other:?}"),
    }
    let (_, took) = r.charon.wait_for(WAIT, "no SA", <[_]>::is_empty);
    let log = r.charon.log();
    assert!(
        log.contains("parsed IKE_AUTH response 1 [ N(AUTH_FAILED) ]"),
        "charon's log:\n{log}"
    );
    assert!(established_sas(&r.aokd.aoctl(&["sas"]).expect("sas")).is_empty());
    assert!(r.aokd.running() && r.charon.running());
    eprintln!(
        "{test}: aokd {}; charon without SA after {took:?}; {:.2} s",
        st["peers"][0],
        r.started.elapsed().as_secs_f64()
    );
}

#[test]
fn fragmented_ike_auth_at_mtu_1280_aokd_initiates() {
    run(
        "fragmented_ike_auth_at_mtu_1280_aokd_initiates",
        &FRAGMENTED,
        Initiator::Aokd,
    );
}

#[test]
fn fragmented_ike_auth_at_mtu_1280_charon_initiates() {
    run(
        "fragmented_ike_auth_at_mtu_1280_charon_initiates",
        &FRAGMENTED,
        Initiator::Charon,
    );
}
