//! The daemon's configuration parser (`Config::parse`, TOML text) and the
//! PSK file decoder. The configuration is parsed as if it were
//! `aokd.toml` in a private directory made at start-up that holds one PSK
//! file, `peer.psk` (mode 0600), so that peers naming it get validated past
//! their `psk_file`; any other file a configuration names does not exist.
#![no_main]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use aokd::config::{decode_psk, parse_duration, parse_identity, Config};
use libfuzzer_sys::fuzz_target;

fn config_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("aokd-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("config directory");
        let psk = dir.join("peer.psk");
        std::fs::write(&psk, b"0x000102030405060708090a0b0c0d0e0f\n").expect("PSK file");
        std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        dir.join("aokd.toml")
    })
}

fuzz_target!(init: {
    config_path();
}, |data: &[u8]| {
    let _ = decode_psk(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_duration(text);
    let _ = parse_identity(text);
    if let Ok(cfg) = Config::parse(text, config_path()) {
        let _ = cfg.daemon.listen_addrs();
        for p in &cfg.peers {
            let _ = cfg.peer(&p.name);
        }
    }
});
