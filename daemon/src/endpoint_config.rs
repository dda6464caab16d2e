//! The daemon's configuration ([`crate::config::Config`]) translated into
//! the IKE endpoint's ([`EndpointConfig`]): local addresses found from the
//! routing table where none is configured, identities, PSKs, proposals,
//! ports and MKT lifetimes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};

use anyhow::Context as _;
use aokd_proto::crypto::Secret;
use aokd_proto::ike::{self, EndpointConfig, PortRange};

use crate::config::Config;

/// Converts the daemon configuration into the endpoint's.
pub fn endpoint_config(cfg: &Config) -> anyhow::Result<EndpointConfig> {
    let mut peers = Vec::new();
    for p in &cfg.peers {
        let local = match p.local {
            Some(ip) => ip,
            None => route_source(p.remote_addr()).with_context(|| {
                format!(
                    "peer {:?}: cannot find the local address toward {}",
                    p.name, p.remote
                )
            })?,
        };
        peers.push(ike::PeerConfig {
            name: p.name.clone(),
            remote: p.remote_addr(),
            local,
            local_id: p.local_identity(local),
            remote_id: p.remote_id.clone(),
            psk: Secret::new(p.psk.as_bytes().to_vec()),
            ike_suites: p.ike_proposals.clone(),
            mac_algorithms: p.mac_algorithms.clone(),
            include_options: p.include_tcp_options,
            tcp_ports: p
                .tcp_ports
                .iter()
                .map(|port| PortRange::single(*port))
                .collect(),
            initiate: p.initiate,
            lifetimes: mkt_lifetimes(&p.lifetimes),
        });
    }
    let mut ec = EndpointConfig::new(peers);
    ec.liveness = cfg.daemon.liveness;
    ec.cookie_threshold = cfg.daemon.cookie_threshold;
    ec.cookie_threshold_per_source = cfg.daemon.cookie_threshold_per_source;
    Ok(ec)
}

/// The endpoint's MKT lifetimes from the configured ones (jitter and
/// overlap are derived in proto, [`ike::Lifetimes::new`]).
fn mkt_lifetimes(l: &crate::config::Lifetimes) -> ike::Lifetimes {
    ike::Lifetimes::new(Some(l.ike_rekey), l.mkt_rekey, l.mkt_lifetime, l.pfs)
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
