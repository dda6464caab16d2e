//! The daemon's configuration ([`crate::config::Config`]) translated into
//! the IKE endpoint's ([`EndpointConfig`]): local addresses (the listen
//! address of the peer's family when it is a specific one, else the
//! routing table's source toward the peer, where none is configured),
//! identities, PSKs or signature authentication (with CRLs), proposals, ports and MKT
//! lifetimes, and the wall-clock time certificates are checked against.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};

use anyhow::Context as _;
use aokd_proto::crypto::Secret;
use aokd_proto::ike::{self, EndpointConfig, PortRange};

use crate::config::Config;

/// Converts the daemon configuration into the endpoint's.
pub fn endpoint_config(cfg: &Config) -> anyhow::Result<EndpointConfig> {
    let mut peers = Vec::with_capacity(cfg.peers.len());
    for p in &cfg.peers {
        peers.push(peer_config(cfg, p)?);
    }
    let mut groups = Vec::with_capacity(cfg.groups.len());
    for g in &cfg.groups {
        groups.push(group_config(cfg, g)?);
    }
    let mut ec = EndpointConfig::new(peers);
    ec.groups = groups;
    ec.liveness = cfg.daemon.liveness;
    ec.cookie_threshold = cfg.daemon.cookie_threshold;
    ec.cookie_threshold_per_source = cfg.daemon.cookie_threshold_per_source;
    ec.fragment_size = cfg.daemon.fragment_size;
    // The endpoint advances this by its monotonic clock; left at the
    // default epoch every certificate would be "not yet valid".
    ec.wall_clock = std::time::SystemTime::now();
    Ok(ec)
}

/// One configured peer (or a group's template) for the endpoint.
fn peer_config(cfg: &Config, p: &crate::config::PeerConfig) -> anyhow::Result<ike::PeerConfig> {
    let local = local_toward(cfg, p.local, p.remote).with_context(|| {
        format!(
            "peer {:?}: cannot find the local address toward {}",
            p.name, p.remote
        )
    })?;
    // A distinguished name that is this side's certificate's subject goes
    // out as the certificate's own octets, whatever string types the text
    // was encoded with (peers compare the IDi with the subject).
    let mut local_id = p.local_identity(local);
    if let Some(own) = p
        .signature
        .as_ref()
        .and_then(|s| s.certificates.first())
        .and_then(|c| ike::cert::subject_identity(c))
    {
        if own.matches(&local_id) {
            local_id = own;
        }
    }
    Ok(ike::PeerConfig {
        name: p.name.clone(),
        remote: p.remote_addr(),
        local,
        local_id,
        remote_id: p.remote_id.clone(),
        initiate: p.initiate,
        terms: std::sync::Arc::new(ike::PeerTerms {
            psk: Secret::new(p.psk.as_bytes().to_vec()).into(),
            signature: p
                .signature
                .as_ref()
                .map(|s| signature_auth(s).map(std::sync::Arc::new))
                .transpose()
                .with_context(|| format!("peer {:?}", p.name))?,
            ike_suites: p.ike_proposals.clone().into(),
            mac_algorithms: p.mac_algorithms.clone().into(),
            include_options: p.include_tcp_options,
            tcp_ports: p
                .tcp_ports
                .iter()
                .map(|port| PortRange::single(*port))
                .collect(),
            lifetimes: std::sync::Arc::new(mkt_lifetimes(&p.lifetimes)),
        }),
    })
}

/// The local address toward `remote`: the configured one, the listen
/// address of its family when specific, else the routing table's source.
fn local_toward(cfg: &Config, local: Option<IpAddr>, remote: IpAddr) -> std::io::Result<IpAddr> {
    match local.or_else(|| listen_source(cfg, remote)) {
        Some(ip) => Ok(ip),
        None => route_source(SocketAddr::new(remote, 500)),
    }
}

/// A peer group for the endpoint: the template as a peer, and the local
/// address toward members of the other address family if the group has
/// prefixes of both.
fn group_config(
    cfg: &Config,
    g: &crate::config::PeerGroup,
) -> anyhow::Result<ike::PeerGroupConfig> {
    let template =
        peer_config(cfg, &g.template).with_context(|| format!("peer group {:?}", g.name))?;
    let other = g
        .prefixes
        .iter()
        .find(|p| p.addr().is_ipv4() != g.template.remote.is_ipv4());
    let local_other_family = match other {
        None => None,
        Some(p) => Some(
            local_toward(
                cfg,
                g.template
                    .local
                    .filter(|l| l.is_ipv4() == p.addr().is_ipv4()),
                p.addr(),
            )
            .with_context(|| {
                format!(
                    "peer group {:?}: cannot find the local address toward {p}",
                    g.name
                )
            })?,
        ),
    };
    Ok(ike::PeerGroupConfig {
        name: g.name.clone(),
        prefixes: g.prefixes.clone(),
        ike_port: g.template.remote_port,
        identity: g.identity.clone(),
        template,
        local_other_family,
    })
}
/// The endpoint's signature authentication from the files read at load
/// (checked there, so these conversions fail only on a changed build).
fn signature_auth(s: &crate::config::SignatureFiles) -> anyhow::Result<ike::SignatureAuth> {
    let private_key = aokd_proto::crypto::sig::PrivateKey::from_pkcs8_der(&s.private_key)
        .map_err(|m| anyhow::anyhow!("private_key {}: {m}", s.private_key_file.display()))?;
    let anchors = ike::cert::TrustAnchors::from_der(&s.ca)
        .map_err(|m| anyhow::anyhow!("ca {}: {m}", s.ca_file.display()))?
        .with_crls(&s.crl_ders())
        .map_err(|m| anyhow::anyhow!("crl: {m}"))?;
    Ok(ike::SignatureAuth {
        private_key,
        certificates: s.certificates.clone(),
        peer: ike::PeerKey::Certificate(anchors),
    })
}

/// The endpoint's MKT lifetimes from the configured ones (jitter and
/// overlap are derived in proto, [`ike::Lifetimes::new`]).
fn mkt_lifetimes(l: &crate::config::Lifetimes) -> ike::Lifetimes {
    ike::Lifetimes::new(Some(l.ike_rekey), l.mkt_rekey, l.mkt_lifetime, l.pfs)
}

/// The address aokd's datagrams to `remote` leave from when `listen` names
/// one: the runtime sends through the first IKE socket of `remote`'s
/// family, so with a specific listen address that is the source (and the
/// default identity), whatever the routing table would pick. `None` when
/// that socket is bound to the unspecified address.
fn listen_source(cfg: &Config, remote: IpAddr) -> Option<IpAddr> {
    cfg.daemon
        .listen
        .iter()
        .find(|ip| ip.is_ipv4() == remote.is_ipv4())
        .filter(|ip| !ip.is_unspecified())
        .copied()
}

/// The source address the kernel would use toward `remote` (a connected
/// UDP socket sends nothing).
fn route_source(remote: SocketAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = match remote {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = StdUdpSocket::bind(any)?;
    s.connect(remote)?;
    Ok(s.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str, local: &str) -> Config {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("aokd-epcfg-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let psk = dir.join("p.psk");
        std::fs::write(&psk, "0123456789abcdef0123456789abcdef\n").expect("psk");
        std::fs::set_permissions(&psk, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let text = format!(
            "[daemon]\nlisten = [{listen}]\n[[peer]]\nname = \"p\"\nremote = \"127.0.0.9\"\npsk_file = \"{}\"\n{local}",
            psk.display()
        );
        let file = dir.join("aokd.toml");
        std::fs::write(&file, text).expect("config");
        let cfg = Config::load(&file).expect("valid");
        let _ = std::fs::remove_dir_all(&dir);
        cfg
    }

    /// With a specific listen address and no `local`, the local address
    /// and identity are the listen address (the source of aokd's
    /// datagrams), not the routing table's 127.0.0.1 toward 127.0.0.9.
    #[test]
    fn a_specific_listen_address_is_the_local_address() {
        let ec = endpoint_config(&config("\"127.0.0.5\"", "")).expect("endpoint config");
        let p = &ec.peers[0];
        assert_eq!(p.local, "127.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(p.local_id, ike::Identity::from_ip(p.local));
        // `local` wins.
        let ec = endpoint_config(&config(
            "\"127.0.0.5\", \"127.0.0.6\"",
            "local = \"127.0.0.6\"",
        ))
        .expect("endpoint config");
        assert_eq!(ec.peers[0].local, "127.0.0.6".parse::<IpAddr>().unwrap());
        // The unspecified address: the routing table's source.
        let ec = endpoint_config(&config("\"0.0.0.0\"", "")).expect("endpoint config");
        assert_eq!(ec.peers[0].local, "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    /// A peer with `auth = "pubkey"` gets signature authentication with
    /// its certificate and CA, and the endpoint's wall clock is now, not
    /// the epoch (at which every certificate is "not yet valid").
    #[test]
    fn a_pubkey_peer_has_signature_auth_and_the_wall_clock_is_now() {
        let dir = std::env::temp_dir().join(format!("aokd-epcfg-pubkey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pubkey");
        for f in ["ca.pem", "ee.pem", "ee.key", "crl.pem", "crl-expired.der"] {
            std::fs::copy(data.join(f), dir.join(f)).expect("copy");
        }
        std::fs::set_permissions(
            dir.join("ee.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        let file = dir.join("aokd.toml");
        std::fs::write(
            &file,
            "[[peer]]\nname = \"p\"\nremote = \"127.0.0.9\"\n\
             auth = \"pubkey\"\ncertificate = \"ee.pem\"\nprivate_key = \"ee.key\"\nca = \"ca.pem\"\n\
             crl = [\"crl.pem\", \"crl-expired.der\"]\n",
        )
        .expect("config");
        let cfg = Config::load(&file).expect("valid");
        let _ = std::fs::remove_dir_all(&dir);
        let before = std::time::SystemTime::now();
        let ec = endpoint_config(&cfg).expect("endpoint config");
        let after = std::time::SystemTime::now();
        assert!(before <= ec.wall_clock && ec.wall_clock <= after);
        let sig = ec.peers[0].signature.as_ref().expect("signature auth");
        assert_eq!(
            sig.certificates,
            cfg.peers[0].signature.as_ref().unwrap().certificates
        );
        // Both CRLs reach the trust anchors.
        assert!(matches!(
            &sig.peer,
            ike::PeerKey::Certificate(a) if a.crl_count() == 2
        ));
    }
}
