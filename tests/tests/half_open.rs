//! Forged IKE_SA_INIT requests from a peer's address, sent over real UDP to
//! a real aokd, do not keep the peer out after it restarts (cookies and the
//! half-open policy, docs/protocol.md "Denial of service"); aoctl shows the
//! counters.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use aokd_tests::ike::init_request;
use aokd_tests::{established_sas, loopback_pair, mkts, Daemon};
use serde_json::Value;

const PSK: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";
const WAIT: Duration = Duration::from_secs(20);
/// How soon after its restart A must be keyed with B again.
const REKEYED_WITHIN: Duration = Duration::from_secs(2);

/// An IKE_SA_INIT request as a fresh initiator at `from` would send it to
/// `to` (random SPIi, nonce and key share).
fn forged_init(from: SocketAddr, to: SocketAddr) -> Vec<u8> {
    init_request("victim", from.ip(), to, b"the forger does not know the key").expect("IKE_SA_INIT")
}

fn dos(v: &Value) -> &Value {
    &v["dos"]
}

fn dropped(v: &Value, reason: &str) -> u64 {
    dos(v)["dropped"][reason].as_u64().unwrap_or(0)
}

#[test]
fn five_forged_inits_then_a_restart_rekey_within_two_seconds() {
    let (a, b) = loopback_pair("halfopen", PSK);
    let da = Daemon::start(&a);
    let db = Daemon::start(&b);
    for d in [&da, &db] {
        d.wait_keyed(WAIT);
    }
    let before = db.aoctl(&["status"]).expect("status");
    assert_eq!(dos(&before)["half_open"], 0, "{before}");

    // Five forged requests from A's address, each from a port of its own.
    let b_addr: SocketAddr = format!("{}:{}", b.ip, b.port).parse().unwrap();
    let forgers: Vec<UdpSocket> = (0..5)
        .map(|_| UdpSocket::bind((a.ip.as_str(), 0)).expect("bind forger"))
        .collect();
    for s in &forgers {
        let from = s.local_addr().unwrap();
        s.send_to(&forged_init(from, b_addr), b_addr).expect("send");
    }
    // B admitted three (cookie_threshold_per_source), asked the rest for a cookie.
    let st = db.wait_for(&["status"], WAIT, |v| {
        dos(v)["half_open"] == 3 && dropped(v, "cookie_required") >= 2
    });
    assert_eq!(dos(&st)["cookies_sent"], 2, "{st}");

    // A restarts.
    drop(da);
    let restarted = Instant::now();
    let da = Daemon::start(&a);
    let left = |t: Instant| REKEYED_WITHIN.saturating_sub(t.elapsed());
    let sas_a = da.wait_for(&["sas"], left(restarted), |v| {
        established_sas(v).len() == 1 && v["sas"].as_array().map_or(0, Vec::len) == 1
    });
    let mkt_a = da.wait_for(&["mkts"], left(restarted), |v| !mkts(v).is_empty());
    let mkt_a = mkts(&mkt_a)[0].clone();
    let sas_b = db.wait_for(&["mkts"], left(restarted), |v| {
        mkts(v)
            .iter()
            .any(|m| m["key_fingerprint"] == mkt_a["key_fingerprint"])
    });
    let keyed_after = restarted.elapsed();
    assert!(keyed_after <= REKEYED_WITHIN, "keyed after {keyed_after:?}");
    let mirror = mkts(&sas_b)
        .into_iter()
        .find(|m| m["key_fingerprint"] == mkt_a["key_fingerprint"])
        .unwrap();
    assert_eq!(mirror["send_id"], mkt_a["recv_id"]);
    assert_eq!(mirror["recv_id"], mkt_a["send_id"]);
    let sa_b = db.wait_for(&["sas"], WAIT, |v| {
        established_sas(v)
            .iter()
            .any(|s| s["spi_i"] == established_sas(&sas_a)[0]["spi_i"])
    });
    // No half-open or failed SA is listed at B.
    assert!(
        sa_b["sas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "established"),
        "{sa_b}"
    );

    // The counters: A's request was asked for a cookie too, answered it,
    // and the forgeries went when A authenticated.
    let st = db.wait_for(&["status"], WAIT, |v| dos(v)["half_open"] == 0);
    let d = dos(&st);
    assert!(d["cookies_sent"].as_u64() >= Some(3), "{st}");
    assert!(d["cookies_accepted"].as_u64() >= Some(1), "{st}");
    assert_eq!(d["half_open_superseded"], 3, "{st}");
    assert!(dropped(&st, "cookie_required") >= 3, "{st}");
    for reason in [
        "malformed",
        "unknown_spi",
        "not_configured_peer",
        "half_open_limit",
    ] {
        assert!(d["dropped"][reason].is_u64(), "{reason} missing: {st}");
    }
    // The table shows them as well.
    let out = std::process::Command::new(aokd_tests::binary("aoctl"))
        .arg("--socket")
        .arg(b.socket())
        .arg("status")
        .output()
        .expect("aoctl status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("half-open IKE SAs: 0; cookies sent"),
        "{text}"
    );
    assert!(text.contains("cookie_required"), "{text}");
}
