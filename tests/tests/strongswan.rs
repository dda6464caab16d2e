//! Interoperability with strongSwan 5.9.8 (Debian's charon and swanctl,
//! harness in tests/src/strongswan.rs): aokd in namespace A
//! (10.202.0.1), charon in namespace B (10.202.0.2), both on UDP 500, PSK
//! authentication with IP identities and aes256gcm16-prfsha256-x25519.
//! charon does not announce TCP-AO keying, so aokd completes the IKE SA
//! without a child (RFC 6023).
//!
//! - `aokd_initiates_childless_ike_sa`: aokd initiates; both list the IKE SA
//!   with the same SPIs; `aoctl terminate` deletes it on both.
//! - `charon_initiates_childless_ike_sa`: `swanctl --initiate --ike`; both
//!   list it; `swanctl --terminate` deletes it on both.
//! - `terminate_reaches_charon_after_a_link_outage`: `aoctl terminate` while
//!   A's veth is down for 3 s: aokd lists the SA as deleting and retransmits
//!   its Delete (RFC 7296 2.1) until charon answers; charon has forgotten
//!   the SA within 15 s of the link coming back.
//! - `ike_rekey_with_a_lost_delete`: aokd rekeys the IKE SA (charon
//!   responds); the first INFORMATIONAL request from A, the Delete of the
//!   old SA, is dropped by nftables; charon still ends with only the new SA.
//! - `charon_initiates_with_cookies_demanded`: charon initiates against aokd
//!   demanding cookies (`cookie_threshold = 0`); charon's log shows
//!   N(COOKIE) answered and sent back. **Needs helper/cookie merged**: until
//!   then aokd refuses the key and the test fails (see its comment).
//!
//! The two basic tests also write every datagram of their exchanges
//! (IKE_SA_INIT, IKE_AUTH, INFORMATIONAL) to `$AOKD_FUZZ_SEEDS_DIR` when
//! that is set (the files in fuzz-seeds/strongswan/ came from there).
//!
//! Needs root, `ip`, `tcpdump`, `unshare`, `nft`, Debian's
//! strongswan-charon, strongswan-swanctl and libstrongswan-standard-plugins:
//! when something is missing the test fails if `CI` is set, and is otherwise
//! skipped with the reason printed.

use std::path::Path;
use std::time::{Duration, Instant};

use aokd_proto::numbers::NotifyType;
use aokd_proto::wire::{self, Payload};
use aokd_tests::netns::{ip, Capture, NftDrop, Pair};
use aokd_tests::strongswan::{self, udp_payloads, Charon, CharonConfig, SwanSa};
use aokd_tests::{established_sas, Daemon};
use serde_json::Value;

const PSK: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";
const ADDR_A: &str = "10.202.0.1";
const ADDR_B: &str = "10.202.0.2";
/// Negotiation and daemon start-up.
const WAIT: Duration = Duration::from_secs(30);
/// How long the link is down while aokd's Delete is lost.
const OUTAGE: Duration = Duration::from_secs(3);
/// How soon after the link is back charon must have forgotten the SA.
const AFTER_OUTAGE: Duration = Duration::from_secs(15);

struct Topo {
    t: Pair,
}

impl Topo {
    fn new(tag: &str) -> Topo {
        Topo {
            t: Pair::new(tag, ADDR_A, ADDR_B),
        }
    }

    /// aokd in A with charon (side B) as its peer "swan".
    fn start_aokd(&self, initiate: bool, daemon_extra: &str) -> Daemon {
        let mut b = self.t.side_b.clone();
        b.name = "swan".into();
        let extra = format!(
            "backend = \"tcp-md5\"\ninitiate = {initiate}\nike_proposals = [\"aes256gcm16-prfsha256-x25519\"]\n"
        );
        self.t
            .side_a
            .write_config_with(&b, PSK, daemon_extra, &extra);
        let check = std::process::Command::new(aokd_tests::binary("aokd"))
            .arg("check-config")
            .arg(self.t.side_a.config_path())
            .output()
            .expect("aokd check-config");
        assert!(
            check.status.success(),
            "aokd refuses the configuration: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        self.t.start_a()
    }

    fn start_charon(&self, f: impl FnOnce(&mut CharonConfig)) -> Charon {
        let mut cfg = CharonConfig::new(ADDR_B, ADDR_A, PSK);
        f(&mut cfg);
        Charon::start(&self.t.b, &self.t.root.join("charon"), cfg).expect("charon")
    }
}

/// aokd's IKE SAs (`aoctl sas`), as (state, spi_i, spi_r).
fn aokd_sas(v: &Value) -> Vec<(String, u64, u64)> {
    v["sas"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    let hex = |k: &str| u64::from_str_radix(s[k].as_str()?, 16).ok();
                    Some((
                        s["state"].as_str()?.to_string(),
                        hex("spi_i")?,
                        hex("spi_r")?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until aokd and charon each hold exactly one established IKE SA,
/// the same one; returns its SPIs.
fn wait_both_established(d: &Daemon, c: &Charon) -> (u64, u64) {
    let v = d.wait_for(&["sas"], WAIT, |v| established_sas(v).len() == 1);
    let sa = &established_sas(&v)[0];
    assert_eq!(
        sa["tcp_ao_capable"], false,
        "charon cannot key TCP-AO: {sa}"
    );
    let (_, spi_i, spi_r) = aokd_sas(&v)
        .into_iter()
        .find(|s| s.0 == "established")
        .expect("aokd SA");
    let (sas, _) = c.wait_for(WAIT, "the IKE SA established", |s| {
        s.iter()
            .any(|s| s.state == "ESTABLISHED" && (s.spi_i, s.spi_r) == (spi_i, spi_r))
    });
    assert_eq!(
        sas.iter().filter(|s| s.state == "ESTABLISHED").count(),
        1,
        "charon holds other SAs: {sas:?}"
    );
    (spi_i, spi_r)
}

fn no_sa(s: &[SwanSa]) -> bool {
    s.is_empty()
}

/// IKE exchange type names for seed file names.
fn exchange_name(t: u8) -> String {
    match t {
        34 => "ike_sa_init".into(),
        35 => "ike_auth".into(),
        36 => "create_child_sa".into(),
        37 => "informational".into(),
        t => format!("exchange{t}"),
    }
}

/// Every IKE datagram of `pcap`, checked to be IKEv2 on port 500; written to
/// `$AOKD_FUZZ_SEEDS_DIR/<tag>-NN-<sender>-<exchange>-<req|resp>.bin` when
/// that is set. Returns (sender is aokd, exchange, is response) per datagram.
fn ike_datagrams(pcap: &Path, tag: &str) -> Vec<(bool, u8, bool, Vec<u8>)> {
    let bytes = std::fs::read(pcap).expect("read capture");
    let mut out = Vec::new();
    for d in udp_payloads(&bytes) {
        if d.src.port() != 500 || d.dst.port() != 500 || d.payload.len() < 28 {
            continue;
        }
        let from_aokd = d.src.ip().to_string() == ADDR_A;
        let (exchange, flags) = (d.payload[18], d.payload[19]);
        assert_eq!(
            d.payload[17], 0x20,
            "IKEv2 version octet: {:02x?}",
            d.payload
        );
        // aokd's codec reads every datagram of either side.
        if let Err(e) = wire::parse_message(&d.payload) {
            panic!("aokd cannot parse {:02x?}: {e}", d.payload);
        }
        out.push((from_aokd, exchange, flags & 0x20 != 0, d.payload));
    }
    if let Some(dir) = std::env::var_os("AOKD_FUZZ_SEEDS_DIR") {
        let dir = Path::new(&dir);
        std::fs::create_dir_all(dir).expect("seed dir");
        for (i, (from_aokd, ex, resp, payload)) in out.iter().enumerate() {
            let name = format!(
                "{tag}-{i:02}-{}-{}-{}.bin",
                if *from_aokd { "aokd" } else { "charon" },
                exchange_name(*ex),
                if *resp { "resp" } else { "req" }
            );
            std::fs::write(dir.join(name), payload).expect("write seed");
        }
    }
    out
}

/// The exchanges of a capture in order, as (sender is aokd, exchange,
/// response), without retransmissions of the same datagram.
fn exchanges(dgrams: &[(bool, u8, bool, Vec<u8>)]) -> Vec<(bool, u8, bool)> {
    let mut v: Vec<(bool, u8, bool)> = Vec::new();
    let mut seen: Vec<&[u8]> = Vec::new();
    for (a, e, r, p) in dgrams {
        if !seen.contains(&p.as_slice()) {
            seen.push(p);
            v.push((*a, *e, *r));
        }
    }
    v
}

#[test]
fn aokd_initiates_childless_ike_sa() {
    if !strongswan::prerequisites("aokd_initiates_childless_ike_sa") {
        return;
    }
    let topo = Topo::new("swan-init");
    let mut cap: Capture = topo.t.capture();
    let c = topo.start_charon(|_| {});
    let d = topo.start_aokd(true, "");
    let (spi_i, spi_r) = wait_both_established(&d, &c);
    let (sas, _) = c.wait_for(WAIT, "the SA", |s| !s.is_empty());
    assert!(!sas[0].local_is_initiator, "charon is the responder");
    assert!(
        c.log()
            .contains("parsed IKE_AUTH request 1 [ IDi N(INIT_CONTACT) IDr AUTH ]"),
        "aokd's IKE_AUTH carries no SA/TSi/TSr (childless):\n{}",
        c.log()
    );
    d.aoctl(&["terminate", "swan"]).expect("terminate");
    let (_, took) = c.wait_for(WAIT, "the SA deleted", no_sa);
    eprintln!("charon deleted the SA {took:?} after aoctl terminate");
    d.wait_for(&["sas"], WAIT, |v| aokd_sas(v).is_empty());
    cap.stop().expect("tcpdump");
    let dgrams = ike_datagrams(cap.file(), "aokd-initiates");
    assert_eq!(
        exchanges(&dgrams),
        vec![
            (true, 34, false),
            (false, 34, true),
            (true, 35, false),
            (false, 35, true),
            (true, 37, false),
            (false, 37, true),
        ],
        "exchanges on the wire"
    );
    // The header SPIs on the wire are those both sides list.
    let p = &dgrams[3].3;
    assert_eq!(u64::from_be_bytes(p[0..8].try_into().unwrap()), spi_i);
    assert_eq!(u64::from_be_bytes(p[8..16].try_into().unwrap()), spi_r);
}

#[test]
fn charon_initiates_childless_ike_sa() {
    if !strongswan::prerequisites("charon_initiates_childless_ike_sa") {
        return;
    }
    let topo = Topo::new("swan-resp");
    let mut cap = topo.t.capture();
    let c = topo.start_charon(|_| {});
    let d = topo.start_aokd(false, "");
    c.initiate().expect("swanctl --initiate");
    wait_both_established(&d, &c);
    let sas = c.established();
    assert!(
        sas[0].local_is_initiator,
        "charon is the initiator: {sas:?}"
    );
    let v = d.aoctl(&["sas"]).expect("sas");
    assert_eq!(established_sas(&v)[0]["role"], "responder");
    c.swanctl(&["--terminate", "--ike", "aokd", "--timeout", "30"])
        .expect("swanctl --terminate");
    c.wait_for(WAIT, "the SA deleted", no_sa);
    d.wait_for(&["sas"], WAIT, |v| aokd_sas(v).is_empty());
    cap.stop().expect("tcpdump");
    let dgrams = ike_datagrams(cap.file(), "charon-initiates");
    assert_eq!(
        exchanges(&dgrams),
        vec![
            (false, 34, false),
            (true, 34, true),
            (false, 35, false),
            (true, 35, true),
            (false, 37, false),
            (true, 37, true),
        ],
        "exchanges on the wire"
    );
}

#[test]
fn terminate_reaches_charon_after_a_link_outage() {
    if !strongswan::prerequisites("terminate_reaches_charon_after_a_link_outage") {
        return;
    }
    let topo = Topo::new("swan-outage");
    let c = topo.start_charon(|_| {});
    let d = topo.start_aokd(true, "");
    let (spi_i, spi_r) = wait_both_established(&d, &c);
    let ns_a = topo.t.a.name().to_string();
    ip(&["-n", &ns_a, "link", "set", "veth0", "down"]).expect("link down");
    let down_at = Instant::now();
    d.aoctl(&["terminate", "swan"]).expect("terminate");
    // The Delete could not be sent: aokd keeps the SA as deleting and
    // retransmits; charon still holds it.
    let v = d.aoctl(&["sas"]).expect("sas");
    assert_eq!(
        aokd_sas(&v),
        vec![("deleting".to_string(), spi_i, spi_r)],
        "aokd while its Delete is unanswered"
    );
    assert_eq!(c.established().len(), 1, "charon saw nothing yet");
    // The outage itself: a fixed 3 s, nothing to wait for.
    std::thread::sleep(OUTAGE.saturating_sub(down_at.elapsed()));
    assert_eq!(
        c.established().len(),
        1,
        "charon saw nothing during the outage"
    );
    ip(&["-n", &ns_a, "link", "set", "veth0", "up"]).expect("link up");
    let (_, took) = c.wait_for(AFTER_OUTAGE, "the SA deleted after the outage", no_sa);
    eprintln!(
        "charon deleted the IKE SA {took:?} after the link came back ({:?} after aoctl terminate)",
        down_at.elapsed()
    );
    assert!(
        c.log().contains("received DELETE for IKE_SA"),
        "charon deleted it on aokd's Delete:\n{}",
        c.log()
    );
    d.wait_for(&["sas"], WAIT, |v| aokd_sas(v).is_empty());
}

#[test]
fn ike_rekey_with_a_lost_delete() {
    if !strongswan::prerequisites("ike_rekey_with_a_lost_delete") {
        return;
    }
    let topo = Topo::new("swan-rekey");
    let c = topo.start_charon(|_| {});
    let d = topo.start_aokd(true, "");
    let (old_i, old_r) = wait_both_established(&d, &c);
    // The first INFORMATIONAL request aokd sends from now on (byte 18 of the
    // IKE header: exchange 37; byte 19: flags without R): the Delete of the
    // old IKE SA after the rekey.
    let drop = NftDrop::output(
        &topo.t.a,
        "udp dport 500 @th,208,8 37 @th,216,8 & 0x20 == 0 limit rate 1/day burst 1 packets",
    )
    .expect("nft");
    let start = Instant::now();
    d.aoctl(&["rekey", "--ike", "swan"]).expect("rekey --ike");
    let v = d.wait_for(&["sas"], WAIT, |v| {
        aokd_sas(v)
            .iter()
            .any(|s| s.0 == "established" && (s.1, s.2) != (old_i, old_r))
    });
    let (_, new_i, new_r) = aokd_sas(&v)
        .into_iter()
        .find(|s| s.0 == "established" && (s.1, s.2) != (old_i, old_r))
        .expect("new SA");
    let (sas, took) = c.wait_for(AFTER_OUTAGE, "only the new SA", |s| {
        s.len() == 1 && (s[0].spi_i, s[0].spi_r) == (new_i, new_r) && s[0].state == "ESTABLISHED"
    });
    eprintln!(
        "charon holds only the new IKE SA {took:?} after it came up ({:?} after aoctl rekey --ike)",
        start.elapsed()
    );
    assert_eq!(
        drop.dropped(),
        1,
        "the first Delete was dropped: {}\ncharon:\n{}",
        drop.listing(),
        c.log()
    );
    assert!(
        c.log().contains("received DELETE for IKE_SA"),
        "{}",
        c.log()
    );
    d.wait_for(&["sas"], WAIT, |v| aokd_sas(v).len() == 1);
    assert!(!sas[0].local_is_initiator);
}

// Cookie interop (RFC 7296 2.6, charon as initiator): needs the
// `[daemon] cookie_threshold` key of the responder-cookie work
// (helper/cookie; 0 = always demand a cookie). Until that is merged,
// `aokd check-config` refuses the key as unknown and this test fails at
// once with that message: it is left failing on purpose, not ignored.
#[test]
fn charon_initiates_with_cookies_demanded() {
    if !strongswan::prerequisites("charon_initiates_with_cookies_demanded") {
        return;
    }
    let topo = Topo::new("swan-cookie");
    let mut cap = topo.t.capture();
    let c = topo.start_charon(|_| {});
    let d = topo.start_aokd(false, "cookie_threshold = 0\n");
    c.initiate().expect("swanctl --initiate");
    wait_both_established(&d, &c);
    cap.stop().expect("tcpdump");
    // On the wire: aokd's first IKE_SA_INIT response is N(COOKIE) alone
    // (RFC 7296 2.6), and charon's second request starts with it.
    let dgrams = ike_datagrams(cap.file(), "charon-cookie");
    let notifies = |p: &[u8]| -> Vec<NotifyType> {
        wire::parse_message(p)
            .map(|m| {
                m.payloads
                    .iter()
                    .filter_map(|p| match p {
                        Payload::Notify(n) => Some(n.ty),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let inits: Vec<_> = dgrams.iter().filter(|d| d.1 == 34).collect();
    assert!(
        inits.len() >= 4,
        "IKE_SA_INIT twice: {:?}",
        exchanges(&dgrams)
    );
    assert!(!inits[0].0 && !inits[0].2, "charon's first request");
    assert!(inits[1].0 && inits[1].2, "aokd's answer");
    assert_eq!(notifies(&inits[1].3), vec![NotifyType::COOKIE]);
    assert_eq!(notifies(&inits[2].3).first(), Some(&NotifyType::COOKIE));
    // charon logs every IKE_SA_INIT response it parses; the first one is
    // aokd's demand for a cookie, and charon's second request carries it.
    let log = c.log();
    let has = |what: &str| {
        log.lines()
            .any(|l| l.contains(what) && l.contains("N(COOKIE)"))
    };
    assert!(
        has("parsed IKE_SA_INIT response 0 ["),
        "aokd answered without N(COOKIE):\n{log}"
    );
    assert!(
        has("generating IKE_SA_INIT request 0 ["),
        "no request with the cookie:\n{log}"
    );
}
