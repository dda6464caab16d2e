//! Two real aokd processes on loopback negotiate over real UDP, inspected
//! through the real aoctl (issue: foundation).

use std::time::Duration;

use aokd_tests::{established_sas, mkts, temp_dir, Daemon, Side};
use serde_json::Value;

const PSK: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";
const WAIT: Duration = Duration::from_secs(20);

fn one_sa_one_mkt(d: &Daemon) -> (Value, Value) {
    let sas = d.wait_for(&["sas"], WAIT, |v| established_sas(v).len() == 1);
    let m = d.wait_for(&["mkts"], WAIT, |v| mkts(v).len() == 1);
    (sas, m)
}

fn assert_mirror(a: &Value, b: &Value) {
    let (a, b) = (&mkts(a)[0], &mkts(b)[0]);
    assert_eq!(a["send_id"], b["recv_id"], "A.send_id == B.recv_id");
    assert_eq!(a["recv_id"], b["send_id"], "A.recv_id == B.send_id");
    assert_eq!(a["algorithm"], b["algorithm"]);
    assert_eq!(a["include_options"], b["include_options"]);
    assert_eq!(a["key_fingerprint"], b["key_fingerprint"]);
    assert_eq!(a["key_fingerprint"].as_str().map(str::len), Some(16));
}

fn pair(tag: &str, extra_a: &str, extra_b: &str, psk_b: &str) -> (Side, Side) {
    let root = temp_dir(tag);
    let a = Side::new(&root, "a", "127.0.0.1");
    let b = Side::new(&root, "b", "127.0.0.2");
    a.write_config(&b, PSK, extra_a);
    b.write_config(&a, psk_b, extra_b);
    (a, b)
}

#[test]
fn two_daemons_hold_the_same_mkt() {
    let (a, b) = pair("basic", "", "initiate = false", PSK);
    let da = Daemon::start(&a);
    let db = Daemon::start(&b);
    let (sas_a, mkts_a) = one_sa_one_mkt(&da);
    let (sas_b, mkts_b) = one_sa_one_mkt(&db);
    assert_mirror(&mkts_a, &mkts_b);
    let (sa, sb) = (&established_sas(&sas_a)[0], &established_sas(&sas_b)[0]);
    assert_eq!(sa["spi_i"], sb["spi_i"]);
    assert_eq!(sa["spi_r"], sb["spi_r"]);
    assert_eq!(sa["suite"], "aes256gcm16-prfsha256-x25519");
    assert_eq!(sa["role"], "initiator");
    assert_eq!(sb["role"], "responder");
    assert!(sa["established_at"].as_u64().is_some());
    let status = da.aoctl(&["status"]).expect("status");
    assert_eq!(status["peers"][0]["name"], "b");
    assert_eq!(status["peers"][0]["ike_state"], "established");
    assert_eq!(status["peers"][0]["tcp_ao_capable"], true);
    // The key itself never appears in a log.
    assert!(!da.log().contains(PSK.trim()) && !db.log().contains(PSK.trim()));
}

#[test]
fn simultaneous_start_fifty_times_gives_one_sa_and_one_mkt() {
    for run in 0..50 {
        let (a, b) = pair(&format!("simul{run}"), "", "", PSK);
        let da = Daemon::start(&a);
        let db = Daemon::start(&b);
        let (_, mkts_a) = one_sa_one_mkt(&da);
        let (_, mkts_b) = one_sa_one_mkt(&db);
        assert_mirror(&mkts_a, &mkts_b);
        // Still exactly one each after the exchange has had time to misbehave:
        // any duplicate would have completed within a round trip of the first.
        for d in [&da, &db] {
            let sas = d.aoctl(&["sas"]).expect("sas");
            assert_eq!(established_sas(&sas).len(), 1, "run {run}: {sas}");
            let m = d.aoctl(&["mkts"]).expect("mkts");
            assert_eq!(mkts(&m).len(), 1, "run {run}: {m}");
        }
    }
}

#[test]
fn wrong_psk_is_reported_on_both_sides_and_nobody_exits() {
    let other = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210\n";
    let (a, b) = pair("wrongpsk", "", "", other);
    let mut da = Daemon::start(&a);
    let mut db = Daemon::start(&b);
    for d in [&da, &db] {
        let st = d.wait_for(&["status"], WAIT, |v| {
            v["peers"][0]["last_error"] == "AUTHENTICATION_FAILED"
        });
        assert_ne!(st["peers"][0]["ike_state"], "established");
        let m = d.aoctl(&["mkts"]).expect("mkts");
        assert!(mkts(&m).is_empty());
        assert!(
            d.log().contains("AUTHENTICATION_FAILED"),
            "log of {}:\n{}",
            d.side.name,
            d.log()
        );
    }
    assert!(da.running() && db.running());
}

#[test]
fn no_common_mac_gives_no_proposal_chosen_and_no_mkt() {
    let (a, b) = pair(
        "nomac",
        "mac_algorithms = [\"hmac-sha1-96\"]",
        "mac_algorithms = [\"aes128-cmac-96\"]\ninitiate = false",
        PSK,
    );
    let da = Daemon::start(&a);
    let db = Daemon::start(&b);
    for d in [&da, &db] {
        d.wait_for(&["status"], WAIT, |v| {
            v["peers"][0]["last_error"] == "NO_PROPOSAL_CHOSEN"
        });
        assert!(mkts(&d.aoctl(&["mkts"]).expect("mkts")).is_empty());
        assert!(d.log().contains("NO_PROPOSAL_CHOSEN"));
    }
}

/// `aoctl rekey --ike` replaces the IKE SA on both sides (new SPIs, still
/// exactly one established SA each) and leaves the MKT exactly as it was;
/// `aoctl rekey` then negotiates a new MKT over the new IKE SA.
#[test]
fn ike_sa_rekey_keeps_the_mkt() {
    let (a, b) = pair("ikerekey", "", "initiate = false", PSK);
    let da = Daemon::start(&a);
    let db = Daemon::start(&b);
    let (sas_a, mkts_a) = one_sa_one_mkt(&da);
    let (_, mkts_b) = one_sa_one_mkt(&db);
    let old = established_sas(&sas_a)[0].clone();
    let mkt_before = mkts(&mkts_a)[0].clone();
    // ike_rekey defaults to 4 h minus up to 10% jitter.
    let (est, rekey) = (old["established_at"].as_u64(), old["rekey_at"].as_u64());
    let (est, rekey) = (est.expect("established_at"), rekey.expect("rekey_at"));
    assert!(
        (est + 4 * 3600 * 9 / 10 - 1..=est + 4 * 3600 + 1).contains(&rekey),
        "{old}"
    );
    let out = da.aoctl(&["rekey", "--ike", "b"]).expect("rekey --ike");
    assert!(
        out["message"]
            .as_str()
            .unwrap_or_default()
            .contains("IKE SA"),
        "{out}"
    );
    let moved = |v: &Value| {
        let sas = established_sas(v);
        sas.len() == 1
            && sas[0]["spi_i"] != old["spi_i"]
            && v["sas"].as_array().map_or(0, Vec::len) == 1
    };
    let new_a = da.wait_for(&["sas"], WAIT, moved);
    let new_b = db.wait_for(&["sas"], WAIT, moved);
    let (na, nb) = (&established_sas(&new_a)[0], &established_sas(&new_b)[0]);
    assert_eq!(na["spi_i"], nb["spi_i"]);
    assert_eq!(na["spi_r"], nb["spi_r"]);
    // The MKT is untouched on both sides.
    for (d, before) in [(&da, &mkts_a), (&db, &mkts_b)] {
        let m = d.aoctl(&["mkts"]).expect("mkts");
        assert_eq!(mkts(&m), mkts(before), "MKT changed by the IKE SA rekey");
    }
    for d in [&da, &db] {
        assert!(d.log().contains("IKE SA rekeyed"), "{}", d.log());
    }
    // An MKT rekey runs on the new IKE SA.
    da.aoctl(&["rekey", "b"]).expect("rekey");
    for d in [&da, &db] {
        d.wait_for(&["mkts"], WAIT, |v| {
            mkts(v)
                .iter()
                .any(|m| m["key_fingerprint"] != mkt_before["key_fingerprint"])
        });
    }
}
