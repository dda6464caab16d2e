//! One log line per endpoint event ([`Event`]), tagged with the daemon's
//! instance name (several share a process in `aokd demo`).

use aokd_proto::ike::Event;
use tracing::{debug, info, warn};

/// Logs `ev` for the daemon `instance`.
pub fn log_event(instance: &str, ev: &Event) {
    let inst = instance;
    match ev {
        Event::IkeSaEstablished {
            peer,
            spi_i,
            spi_r,
            role,
            suite,
            tcp_ao_capable,
            ..
        } => info!(
            instance = %inst, %peer, spi_i = %format!("{spi_i:016x}"), spi_r = %format!("{spi_r:016x}"),
            role = role.as_str(), %suite, tcp_ao_capable = *tcp_ao_capable, "IKE SA established"
        ),
        Event::MktCreated {
            peer, mkt, ports, ..
        } => info!(
            instance = %inst, %peer, send_id = mkt.send_id, recv_id = mkt.recv_id, algorithm = %mkt.algorithm,
            include_options = mkt.include_options, key_fingerprint = %mkt.fingerprint(), ports = ?ports,
            "MKT negotiated"
        ),
        Event::MktDeleted {
            peer,
            send_id,
            recv_id,
            reason,
        } => {
            info!(instance = %inst, %peer, send_id = *send_id, recv_id = *recv_id, reason = *reason, "MKT deleted")
        }
        Event::IkeSaDeleted {
            peer,
            spi_i,
            spi_r,
            reason,
        } => info!(
            instance = %inst, %peer, spi_i = %format!("{spi_i:016x}"), spi_r = %format!("{spi_r:016x}"),
            %reason, "IKE SA deleted"
        ),
        Event::NegotiationFailed {
            peer,
            error,
            by_peer,
        } => warn!(
            instance = %inst, %peer, notify = %error.notify().map(|n| n.to_string()).unwrap_or_default(),
            by_peer = *by_peer, "IKE negotiation failed: {error}"
        ),
        Event::ChildFailed {
            peer,
            error,
            by_peer,
        } => warn!(
            instance = %inst, %peer, notify = %error.notify().map(|n| n.to_string()).unwrap_or_default(),
            by_peer = *by_peer, "TCP-AO child SA failed, IKE SA kept: {error}"
        ),
        Event::PeerNotCapable { peer } => warn!(
            instance = %inst, %peer,
            "peer did not advertise TCP-AO keying: IKE SA without MKT, TCP-AO not negotiated"
        ),
        Event::RekeyCollision { peer, kept_ours } => {
            info!(instance = %inst, %peer, kept_ours = *kept_ours, "simultaneous MKT rekey resolved (RFC 7296 2.8.1)")
        }
        Event::SimultaneousInitiation { peer, kept_ours } => {
            info!(instance = %inst, %peer, kept_ours = *kept_ours, "simultaneous initiation resolved")
        }
        Event::Dropped { from, reason } => {
            debug!(instance = %inst, %from, %reason, "datagram dropped")
        }
        Event::IkeSaRekeyed {
            peer,
            old_spi_i,
            old_spi_r,
            spi_i,
            spi_r,
            role,
            suite,
            ..
        } => info!(
            instance = %inst, %peer, old_spi_i = %format!("{old_spi_i:016x}"),
            old_spi_r = %format!("{old_spi_r:016x}"), spi_i = %format!("{spi_i:016x}"),
            spi_r = %format!("{spi_r:016x}"), role = role.as_str(), %suite, "IKE SA rekeyed"
        ),
        Event::IkeRekeyCollision { peer, kept_ours } => {
            info!(instance = %inst, %peer, kept_ours = *kept_ours, "simultaneous IKE SA rekey resolved (RFC 7296 2.8.2)")
        }
        Event::IkeRekeyFailed {
            peer,
            error,
            by_peer,
        } => warn!(
            instance = %inst, %peer, notify = %error.notify().map(|n| n.to_string()).unwrap_or_default(),
            by_peer = *by_peer, "IKE SA rekey failed, IKE SA kept, retried later: {error}"
        ),
        Event::MktsChanged { peer, mkts } => {
            debug!(instance = %inst, %peer, mkts = mkts.len(), "the peer's MKT set changed")
        }
        Event::MktSuperseded {
            peer,
            send_id,
            recv_id,
            reason,
            ..
        } => info!(
            instance = %inst, %peer, send_id = *send_id, recv_id = *recv_id, reason = *reason,
            "MKT superseded, retired after the overlap without a Delete"
        ),
    }
}
