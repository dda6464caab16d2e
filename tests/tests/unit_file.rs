//! The systemd unit shipped in `dist/aokd.service` (issue: operations):
//! `systemd-analyze verify` finds nothing wrong with it, with its binary
//! paths pointed at the ones just built. Run when systemd-analyze is
//! available (the issue asks for no more); skipped with the reason printed
//! otherwise.

use std::process::Command;

use aokd_tests::{binary, temp_dir};

#[test]
fn the_unit_file_verifies() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    assert!(out.status.success());
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/aokd.service"))
            .expect("dist/aokd.service");
    // The directives aokd relies on are there.
    for needle in [
        "Type=notify",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_SYS_PTRACE\n",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=aokd",
        "RuntimeDirectory=aokd",
        "ExecReload=",
    ] {
        assert!(
            unit.contains(needle),
            "{needle:?} missing from dist/aokd.service"
        );
    }
    let dir = temp_dir("unit");
    let file = dir.join("aokd.service");
    let aokd = binary("aokd");
    std::fs::write(
        &file,
        unit.replace("/usr/sbin/aokd", &aokd.display().to_string()),
    )
    .expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .expect("systemd-analyze verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("aokd.service"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}
