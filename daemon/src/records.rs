//! State-file records from endpoint events (docs/state.md): an MKT's record
//! when it is negotiated (durable before its key goes on any socket), the
//! IKE SAs as they are established, rekeyed and deleted, and the pruning of
//! MKT records past their hard lifetime.

use std::time::Instant;

use aokd_proto::ike::{Endpoint, Event, PeerView, Role};

use crate::clock::WallClock;
use crate::persist::{Op, Persist};
use crate::state::{IkeSaRecord, MktRecord};

/// Writes what `events` changed to the state file through `persist`;
/// `now` is the wake-up's time.
///
/// The MKT records come from the events alone. An IKE SA's record also
/// holds its rekey deadline, which no event carries: for those (one per
/// IKE SA established or rekeyed) the endpoint is asked once per batch.
pub fn record_events(
    persist: &Persist,
    clock: &WallClock,
    now: Instant,
    events: &[Event],
    endpoint: &Endpoint,
) {
    if events.is_empty() || !persist.enabled() {
        return;
    }
    let needs_view = events.iter().any(|ev| {
        matches!(
            ev,
            Event::IkeSaEstablished { .. } | Event::IkeSaRekeyed { .. }
        )
    });
    let view = if needs_view {
        endpoint.peers()
    } else {
        Vec::new()
    };
    for ev in events {
        record(persist, clock, now, ev, &view);
    }
}

/// Writes what `ev` changed to the state file. A new MKT's record is
/// durable before its key goes on any socket.
fn record(persist: &Persist, clock: &WallClock, now: Instant, ev: &Event, view: &[PeerView]) {
    match ev {
        Event::MktCreated {
            peer,
            spi_i,
            spi_r,
            mkt,
            created_at,
            rekey_at,
            expires_at,
            ..
        } => {
            let rec = MktRecord::from_mkt(
                peer,
                mkt,
                &format!("{spi_i:016x}"),
                &format!("{spi_r:016x}"),
                clock.unix(*created_at),
                rekey_at.map(|t| clock.unix(t)),
                // Rounded up: the record must not let a restarted aokd
                // reuse the KeyIDs before the key is really gone.
                clock.unix(*expires_at) + 1,
            );
            persist.put_mkt_durable(rec);
        }
        // The record stays until the hard lifetime: a retired MKT's key
        // can linger on a connection that still uses it, and a restarted
        // aokd must not hand out its KeyIDs meanwhile.
        Event::MktDeleted { .. } => persist.send(Op::PruneMkts {
            now_unix: clock.unix(now),
        }),
        Event::IkeSaEstablished {
            peer,
            spi_i,
            spi_r,
            role,
            ..
        } => persist.send(Op::PutIkeSa(ike_sa_record(
            clock, now, peer, *spi_i, *spi_r, *role, view,
        ))),
        Event::IkeSaRekeyed {
            peer,
            old_spi_i,
            old_spi_r,
            spi_i,
            spi_r,
            role,
            ..
        } => {
            persist.send(Op::PutIkeSa(ike_sa_record(
                clock, now, peer, *spi_i, *spi_r, *role, view,
            )));
            persist.send(Op::DeleteIkeSa {
                peer: peer.clone(),
                spi_i: format!("{old_spi_i:016x}"),
                spi_r: format!("{old_spi_r:016x}"),
            });
        }
        Event::IkeSaDeleted {
            peer, spi_i, spi_r, ..
        } => persist.send(Op::DeleteIkeSa {
            peer: peer.clone(),
            spi_i: format!("{spi_i:016x}"),
            spi_r: format!("{spi_r:016x}"),
        }),
        _ => {}
    }
}

/// The state file's record of an IKE SA, with its rekey deadline.
fn ike_sa_record(
    clock: &WallClock,
    now: Instant,
    peer: &str,
    spi_i: u64,
    spi_r: u64,
    role: Role,
    view: &[PeerView],
) -> IkeSaRecord {
    let rekey_at = view
        .iter()
        .filter(|p| p.name == peer)
        .flat_map(|p| p.sas.iter())
        .find(|s| s.spi_i == spi_i && s.spi_r == spi_r)
        .and_then(|s| s.rekey_at);
    IkeSaRecord {
        peer: peer.to_string(),
        spi_i: format!("{spi_i:016x}"),
        spi_r: format!("{spi_r:016x}"),
        role: role.as_str().to_string(),
        established_at_unix: clock.unix(now),
        rekey_at_unix: rekey_at.map(|t| clock.unix(t)),
    }
}
