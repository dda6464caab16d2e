//! IKE messages made by a real [`Endpoint`] for the tests and load
//! generators that send them on their own: forged IKE_SA_INIT requests
//! (`tests/half_open.rs`) and the template `ike-flood` varies.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use aokd_proto::crypto::Secret;
use aokd_proto::ike::{Endpoint, EndpointConfig, PeerConfig};

/// The IKE_SA_INIT request a fresh initiator at `local` sends to `remote`
/// (random SPIi, nonce and key share; default suite, every MAC algorithm,
/// TCP port 179), from a peer named `name` with the PSK `psk`.
pub fn init_request(
    name: &str,
    local: IpAddr,
    remote: SocketAddr,
    psk: &[u8],
) -> Result<Vec<u8>, String> {
    let peer = PeerConfig::with_psk(name, local, remote, Secret::new(psk.to_vec()));
    let now = Instant::now();
    let mut ep = Endpoint::new(
        EndpointConfig::new(vec![peer]),
        now,
        Box::new(rand_core::OsRng),
    )
    .map_err(|e| e.to_string())?;
    ep.initiate(name, now).map_err(|e| e.to_string())?;
    ep.poll_transmit()
        .map(|t| t.contents)
        .ok_or_else(|| "the endpoint sent no IKE_SA_INIT".to_string())
}
