//! What a reload changes: the configuration read again compared with the
//! running one ([`plan`]), peer by peer by name (added, removed, common),
//! and the settings that only a restart applies. The event loop carries
//! the plan out ([`crate::runtime::Daemon::reload`]); what each kind of
//! peer change does to IKE SAs and MKTs is the engine's rule
//! ([`aokd_proto::ike::PeerChange`]). docs/configuration.md, "Reload".

use std::collections::BTreeSet;

use crate::config::{Config, DaemonSection, PeerConfig};

/// What to do with the new configuration.
#[derive(Debug)]
pub struct Plan {
    /// The configuration to run with from now on: the new peers, with the
    /// running `[daemon]` section and, for a peer whose backend changed,
    /// the running backend (both need a restart).
    pub config: Config,
    /// Peers only in the new file, in its order.
    pub added: Vec<String>,
    /// Peers only in the running configuration, in its order.
    pub removed: Vec<String>,
    /// Peers in both, in the new file's order.
    pub common: Vec<String>,
    /// Settings that differ but need a restart, as `daemon.listen` or
    /// `peer "r2": backend`.
    pub needs_restart: Vec<String>,
}

/// Compares `running` with `new` (the same file read again).
pub fn plan(running: &Config, new: Config) -> Plan {
    let old_names: BTreeSet<&str> = running.peers.iter().map(|p| p.name.as_str()).collect();
    let new_names: BTreeSet<&str> = new.peers.iter().map(|p| p.name.as_str()).collect();
    let removed = running
        .peers
        .iter()
        .filter(|p| !new_names.contains(p.name.as_str()))
        .map(|p| p.name.clone())
        .collect();
    let mut added = Vec::new();
    let mut common = Vec::new();
    let mut needs_restart = daemon_changes(&running.daemon, &new.daemon);
    let mut peers: Vec<PeerConfig> = Vec::with_capacity(new.peers.len());
    for mut p in new.peers {
        if !old_names.contains(p.name.as_str()) {
            added.push(p.name.clone());
        } else {
            common.push(p.name.clone());
            if let Some(old) = running.peers.iter().find(|o| o.name == p.name) {
                if old.backend != p.backend {
                    needs_restart.push(format!("peer {:?}: backend", p.name));
                    p.backend = old.backend;
                }
            }
        }
        peers.push(p);
    }
    // Peer groups are read at start only: their members are running peers
    // made from them, and a changed template would need each re-made.
    if format!("{:?}", running.groups) != format!("{:?}", new.groups) {
        needs_restart.push("peer groups ([[peer_group]])".to_string());
    }
    Plan {
        config: Config {
            file: running.file.clone(),
            daemon: running.daemon.clone(),
            peers,
            groups: running.groups.clone(),
        },
        added,
        removed,
        common,
        needs_restart,
    }
}

/// The `[daemon]` keys that differ. Every one needs a restart: the
/// sockets are bound and the state file open, and the endpoint-wide
/// settings (liveness, cookies, fragment size) are read by every peer's timers.
fn daemon_changes(old: &DaemonSection, new: &DaemonSection) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &str, differs: bool| {
        if differs {
            out.push(format!("daemon.{name}"));
        }
    };
    check("listen", old.listen != new.listen);
    check("port", old.port != new.port);
    check("control_socket", old.control_socket != new.control_socket);
    check("state_dir", old.state_dir != new.state_dir);
    check("attach_socket", old.attach_socket != new.attach_socket);
    check(
        "attach_socket_mode",
        old.attach_socket_mode != new.attach_socket_mode,
    );
    check(
        "attach_socket_group",
        old.attach_socket_group != new.attach_socket_group,
    );
    check(
        "control_socket_group",
        old.control_socket_group != new.control_socket_group,
    );
    check(
        "acquire_timeout",
        old.acquire_timeout != new.acquire_timeout,
    );
    check("liveness", old.liveness != new.liveness);
    check("retired_keys", old.retired_keys != new.retired_keys);
    check("metrics_file", old.metrics_file != new.metrics_file);
    check(
        "metrics_interval",
        old.metrics_interval != new.metrics_interval,
    );
    check(
        "cookie_threshold",
        old.cookie_threshold != new.cookie_threshold,
    );
    check(
        "cookie_threshold_per_source",
        old.cookie_threshold_per_source != new.cookie_threshold_per_source,
    );
    check("fragment_size", old.fragment_size != new.fragment_size);
    if out.is_empty() && old != new {
        // A key added to the section since this list was written.
        out.push("daemon (a setting)".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(dir: &Path, text: &str) -> Config {
        Config::parse(text, &dir.join("aokd.toml")).expect("config")
    }

    fn peer(name: &str, remote: &str, psk: &Path, extra: &str) -> String {
        format!(
            "\n[[peer]]\nname = \"{name}\"\nremote = \"{remote}\"\npsk_file = \"{}\"\n{extra}",
            psk.display()
        )
    }

    #[test]
    fn peers_by_name_and_restart_settings() {
        let dir = std::env::temp_dir().join(format!("aokd-reload-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let psk = dir.join("p.psk");
        std::fs::write(&psk, "0123456789abcdef0123456789abcdef\n").expect("psk");
        std::fs::set_permissions(&psk, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let running = config(
            &dir,
            &format!(
                "[daemon]\nlisten = [\"127.0.0.1\"]\n{}{}{}",
                peer("a", "192.0.2.1", &psk, ""),
                peer("b", "192.0.2.2", &psk, ""),
                peer("c", "192.0.2.3", &psk, "backend = \"tcp-md5\"\n"),
            ),
        );
        let new = config(
            &dir,
            &format!(
                "[daemon]\nlisten = [\"127.0.0.2\"]\nliveness = \"off\"\n{}{}{}",
                peer("d", "192.0.2.4", &psk, ""),
                peer("c", "192.0.2.3", &psk, "backend = \"tcp-ao\"\n"),
                peer("a", "192.0.2.1", &psk, "tcp_ports = [646]\n"),
            ),
        );
        let _ = std::fs::remove_dir_all(&dir);
        let plan = plan(&running, new);
        assert_eq!(plan.added, ["d"]);
        assert_eq!(plan.removed, ["b"]);
        assert_eq!(plan.common, ["c", "a"]);
        assert_eq!(
            plan.needs_restart,
            ["daemon.listen", "daemon.liveness", "peer \"c\": backend"]
        );
        // The running daemon section and backend stay; the rest is new.
        assert_eq!(plan.config.daemon, running.daemon);
        let c = plan.config.peers.iter().find(|p| p.name == "c").unwrap();
        assert_eq!(c.backend, crate::config::BackendChoice::TcpMd5);
        let a = plan.config.peers.iter().find(|p| p.name == "a").unwrap();
        assert_eq!(*a.tcp_ports, [646]);
    }

    /// A reload reads the `crl` files again: a CRL replaced on disk is in
    /// the new configuration, and the peer (signature authentication)
    /// gets a new IKE SA authenticated against it.
    #[test]
    fn crl_files_are_read_again() {
        let dir = std::env::temp_dir().join(format!("aokd-reload-crl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pubkey");
        for f in ["ca.pem", "ee.pem", "ee.key", "crl.pem", "crl-expired.der"] {
            std::fs::copy(data.join(f), dir.join(f)).expect("copy");
        }
        std::fs::set_permissions(
            dir.join("ee.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        std::fs::copy(dir.join("crl.pem"), dir.join("current.crl")).expect("crl");
        let text = "[[peer]]\nname = \"r1\"\nremote = \"127.0.0.1\"\nauth = \"pubkey\"\n\
                    certificate = \"ee.pem\"\nprivate_key = \"ee.key\"\nca = \"ca.pem\"\n\
                    crl = \"current.crl\"\n";
        let file = dir.join("aokd.toml");
        std::fs::write(&file, text).expect("config");
        let running = Config::load(&file).expect("running");
        std::fs::copy(dir.join("crl-expired.der"), dir.join("current.crl")).expect("crl");
        let new = Config::load(&file).expect("new");
        let der = std::fs::read(dir.join("crl-expired.der")).expect("der");
        let _ = std::fs::remove_dir_all(&dir);
        let crls = |c: &Config| c.peers[0].signature.as_ref().unwrap().crl_ders();
        assert_ne!(crls(&running), crls(&new));
        let plan = plan(&running, new);
        assert_eq!(plan.common, ["r1"]);
        assert_eq!(crls(&plan.config), vec![der]);
        let old_ep = crate::endpoint_config::endpoint_config(&running).expect("old");
        let new_ep = crate::endpoint_config::endpoint_config(&plan.config).expect("new");
        assert_eq!(
            aokd_proto::ike::reconfig::classify(&old_ep.peers[0], &new_ep.peers[0]),
            aokd_proto::ike::PeerChange::Renegotiate
        );
    }
}
