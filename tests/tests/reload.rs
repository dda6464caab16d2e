//! Reload with real processes (issue 14, "Reload"): four real aokd
//! daemons on loopback over real UDP, read through the real aoctl. A
//! starts with peers b and c; then, one step at a time, A's file is
//! rewritten and reloaded:
//! 1. SIGHUP: peer d added, negotiated at once;
//! 2. `aoctl reload`: peer c removed: its IKE SA goes with a Delete that c
//!    sees, its MKT stays on A (same KeyIDs) until its hard lifetime;
//! 3. `aoctl reload`: d's PSK changed (on both sides): a new IKE SA with
//!    d; a changed `[daemon] liveness` is reported as needing a restart;
//! 4. `aoctl reload` of a broken file: refused with the file and the key
//!    named, by aoctl (exit 1) and in the log; nothing changes.
//!
//! Peer b is never touched: its IKE SA SPIs and MKT KeyIDs (and key
//! fingerprint) on A and on b are the same after every step.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aokd_tests::{binary, established_sas, mkts, temp_dir, write_psk, Daemon, Side};
use serde_json::Value;

const PSK: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";
const NEW_PSK: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210\n";
const WAIT: Duration = Duration::from_secs(20);
/// The A-c MKT's lifetimes: long enough for the steps before c is
/// removed, short enough to watch its hard lifetime.
const C_LIFETIMES: &str = "[peer.lifetimes]\nmkt_rekey = \"40s\"\nmkt_lifetime = \"45s\"\n";

/// A configuration for `me` with `peers` (side, PSK file, extra lines of
/// its `[[peer]]` table).
fn write_config(me: &Side, daemon_extra: &str, peers: &[(&Side, &Path, &str)]) {
    let mut text = format!(
        "[daemon]\nlisten = [\"{ip}\"]\nport = {port}\ncontrol_socket = \"{sock}\"\n\
         attach_socket = \"{attach}\"\nstate_dir = \"{state}\"\n{daemon_extra}\n",
        ip = me.ip,
        port = me.port,
        sock = me.socket().display(),
        attach = me.attach_socket().display(),
        state = me.dir.join("state").display(),
    );
    for (other, psk, extra) in peers {
        text.push_str(&format!(
            "\n[[peer]]\nname = \"{}\"\nremote = \"{}\"\nremote_port = {}\nlocal = \"{}\"\n\
             psk_file = \"{}\"\n{extra}\n",
            other.name,
            other.ip,
            other.port,
            me.ip,
            psk.display()
        ));
    }
    std::fs::write(me.config_path(), text).expect("write config");
}

fn psk_file(me: &Side, other: &Side, psk: &str) -> std::path::PathBuf {
    let path = me.dir.join(format!("{}.psk", other.name));
    write_psk(&path, psk);
    path
}

/// The established IKE SAs with `peer`, as (SPIi, SPIr).
fn sas_with(d: &Daemon, peer: &str) -> Vec<(String, String)> {
    let v = d.aoctl(&["sas"]).expect("sas");
    established_sas(&v)
        .iter()
        .filter(|s| s["peer"] == peer)
        .map(|s| (s["spi_i"].to_string(), s["spi_r"].to_string()))
        .collect()
}

/// The MKTs with `peer`, as (SendID, RecvID, key fingerprint).
fn mkts_with(d: &Daemon, peer: &str) -> Vec<(u64, u64, String)> {
    let v = d.aoctl(&["mkts"]).expect("mkts");
    mkt_ids(&v, peer)
}

fn mkt_ids(v: &Value, peer: &str) -> Vec<(u64, u64, String)> {
    mkts(v)
        .iter()
        .filter(|m| m["peer"] == peer)
        .map(|m| {
            (
                m["send_id"].as_u64().unwrap_or(999),
                m["recv_id"].as_u64().unwrap_or(999),
                m["key_fingerprint"].to_string(),
            )
        })
        .collect()
}

fn one_sa_one_mkt_with(d: &Daemon, peer: &str) {
    d.wait_for(&["sas"], WAIT, |v| {
        established_sas(v)
            .iter()
            .filter(|s| s["peer"] == peer)
            .count()
            == 1
    });
    d.wait_for(&["mkts"], WAIT, |v| mkt_ids(v, peer).len() == 1);
}

/// `aoctl --socket S reload` (text), as (exit code, stdout, stderr).
fn aoctl_reload(d: &Daemon) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(binary("aoctl"))
        .arg("--socket")
        .arg(d.side.socket())
        .arg("reload")
        .output()
        .expect("run aoctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `d`'s log until it holds `n` lines with `needle`.
fn wait_log(d: &Daemon, needle: &str, n: usize) {
    let deadline = Instant::now() + WAIT;
    while d.log().matches(needle).count() < n {
        assert!(
            Instant::now() < deadline,
            "{}: {n} x {needle:?} not logged:\n{}",
            d.side.name,
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[test]
fn reload_adds_removes_and_changes_peers_and_leaves_the_others_alone() {
    let root = temp_dir("reload");
    let a = Side::new(&root, "a", "127.0.0.1");
    let b = Side::new(&root, "b", "127.0.0.2");
    let c = Side::new(&root, "c", "127.0.0.3");
    let d = Side::new(&root, "d", "127.0.0.4");
    let (a_b, a_c, a_d) = (
        psk_file(&a, &b, PSK),
        psk_file(&a, &c, PSK),
        psk_file(&a, &d, PSK),
    );
    for (side, lifetimes) in [(&b, ""), (&c, C_LIFETIMES), (&d, "")] {
        let psk = psk_file(side, &a, PSK);
        let extra = format!("initiate = false\n{lifetimes}");
        write_config(side, "", &[(&a, &psk, &extra)]);
    }
    let peers_bc = [(&b, a_b.as_path(), ""), (&c, a_c.as_path(), C_LIFETIMES)];
    write_config(&a, "", &peers_bc);
    let da = Daemon::start(&a);
    let db = Daemon::start(&b);
    let dc = Daemon::start(&c);
    let dd = Daemon::start(&d);
    one_sa_one_mkt_with(&da, "b");
    one_sa_one_mkt_with(&da, "c");
    one_sa_one_mkt_with(&db, "a");
    one_sa_one_mkt_with(&dc, "a");
    let b_state = |x: &Daemon, name: &str| (sas_with(x, name), mkts_with(x, name));
    let untouched = (b_state(&da, "b"), b_state(&db, "a"));
    let check_b = |step: &str| {
        assert_eq!(
            (b_state(&da, "b"), b_state(&db, "a")),
            untouched,
            "peer b changed by {step}"
        );
    };

    // 1. SIGHUP: d added.
    let peers_bcd = [peers_bc[0], peers_bc[1], (&d, a_d.as_path(), "")];
    write_config(&a, "", &peers_bcd);
    // SAFETY: kill(2) on the child's pid, a plain system call.
    assert_eq!(unsafe { libc::kill(da.child.id() as i32, libc::SIGHUP) }, 0);
    wait_log(&da, "configuration reloaded", 1);
    one_sa_one_mkt_with(&da, "d");
    one_sa_one_mkt_with(&dd, "a");
    assert!(da.log().contains("SIGHUP: reloading the configuration"));
    check_b("adding d (SIGHUP)");

    // 2. aoctl reload: c removed.
    let c_mkt = mkts_with(&da, "c");
    let c_expires = da.aoctl(&["mkts"]).expect("mkts")["mkts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["peer"] == "c").cloned())
        .and_then(|m| m["expires_at"].as_u64())
        .expect("c's MKT has a hard lifetime");
    write_config(&a, "", &[peers_bcd[0], peers_bcd[2]]);
    let removed_at = unix_now();
    let report = da.aoctl(&["reload"]).expect("reload");
    assert_eq!(report["removed"], serde_json::json!(["c"]), "{report}");
    assert_eq!(report["added"], serde_json::json!([]), "{report}");
    assert_eq!(
        report["unchanged"],
        serde_json::json!(["b", "d"]),
        "{report}"
    );
    // c sees the Delete: its IKE SA is gone at once (not after a liveness
    // check), and it keeps its MKT too.
    dc.wait_for(&["sas"], Duration::from_secs(5), |v| {
        established_sas(v).is_empty()
    });
    assert!(dc.log().contains("deleted by the peer"), "{}", dc.log());
    assert_eq!(mkts_with(&dc, "a").len(), 1);
    // A: no IKE SA with c, its MKT kept with the same KeyIDs.
    da.wait_for(&["sas"], Duration::from_secs(5), |v| {
        v["sas"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["peer"] != "c"))
    });
    assert_eq!(
        mkts_with(&da, "c"),
        c_mkt,
        "c's MKT stays until its hard lifetime"
    );
    let status = da.aoctl(&["status"]).expect("status");
    let c_status = status["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "c").cloned())
        .expect("c listed while its MKT lasts");
    assert_eq!(c_status["ike_state"], "removed");
    check_b("removing c (aoctl reload)");

    // 3. aoctl reload: d's PSK changed (on d as well), and a [daemon] key.
    let old_d = sas_with(&da, "d");
    write_psk(&a_d, NEW_PSK);
    write_psk(&d.dir.join("a.psk"), NEW_PSK);
    let (code, _, err) = aoctl_reload(&dd);
    assert_eq!(code, Some(0), "{err}");
    write_config(&a, "liveness = \"off\"\n", &[peers_bcd[0], peers_bcd[2]]);
    let report = da.aoctl(&["reload"]).expect("reload");
    assert_eq!(
        report["changed"],
        serde_json::json!([{"peer": "d", "action": "new IKE SA"}]),
        "{report}"
    );
    assert_eq!(report["unchanged"], serde_json::json!(["b"]), "{report}");
    assert_eq!(
        report["needs_restart"],
        serde_json::json!(["daemon.liveness"]),
        "{report}"
    );
    da.wait_for(&["sas"], WAIT, |v| {
        let with_d: Vec<_> = established_sas(v)
            .into_iter()
            .filter(|s| s["peer"] == "d")
            .collect();
        with_d.len() == 1
            && !old_d.contains(&(
                with_d[0]["spi_i"].to_string(),
                with_d[0]["spi_r"].to_string(),
            ))
    });
    assert!(da.log().contains("applies only after a restart"));
    check_b("changing d's PSK (aoctl reload)");

    // 4. A broken file: refused, named, nothing changes.
    let before = (sas_with(&da, "d"), mkts_with(&da, "d"));
    let good = std::fs::read_to_string(a.config_path()).expect("config");
    std::fs::write(
        a.config_path(),
        good.replacen("local = ", "mac_algorithms = [\"hmac-md5\"]\nlocal = ", 1),
    )
    .expect("write broken config");
    let (code, out, err) = aoctl_reload(&da);
    assert_eq!(code, Some(1), "stdout {out} stderr {err}");
    let file = a.config_path().display().to_string();
    assert!(
        err.contains(&file) && err.contains("mac_algorithms"),
        "{err}"
    );
    wait_log(&da, "reload refused", 1);
    assert!(da.log().contains("mac_algorithms"));
    assert_eq!((sas_with(&da, "d"), mkts_with(&da, "d")), before);
    check_b("a broken file");

    // c's MKT on A lasts until its hard lifetime, then goes.
    let gone = da.wait_for(&["mkts"], Duration::from_secs(60), |v| {
        mkt_ids(v, "c").is_empty()
    });
    let now = unix_now();
    println!("c removed at {removed_at}; its MKT on A (hard lifetime {c_expires}) went at {now}");
    assert!(
        now + 1 >= c_expires,
        "c's MKT went at {now}, before its hard lifetime {c_expires}"
    );
    assert!(mkt_ids(&gone, "b").len() == 1);
    let status = da.aoctl(&["status"]).expect("status");
    assert!(
        status["peers"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["name"] != "c")),
        "{status}"
    );
    check_b("c's hard lifetime");
    // Nobody exited.
    drop((db, dc, dd));
    let mut da = da;
    assert!(da.running());
}
