//! State-file records from endpoint events (docs/state.md): an MKT's record
//! when it is negotiated (durable before its key goes on any socket), the
//! IKE SAs as they are established, rekeyed and deleted, and the pruning of
//! MKT records past their hard lifetime.

use std::time::Instant;

use aokd_proto::ike::{Event, Role};

use crate::clock::WallClock;
use crate::persist::{Op, Persist};
use crate::state::{IkeSaRecord, MktRecord};

/// Writes what `events` changed to the state file through `persist`;
/// `now` is the wake-up's time. Everything comes from the events alone
/// (an MKT's times from `MktCreated`, an IKE SA's rekey time from
/// `IkeSaEstablished`/`IkeSaRekeyed`): the endpoint is never asked again.
///
/// Returns `true` when one of them is a new MKT: its record must be durable
/// before its key goes on any socket, and before the datagrams of the same
/// turn go out (the IKE_AUTH or CREATE_CHILD_SA that gives the peer the
/// same MKT), so the caller waits for [`Persist::durable`] first. One
/// commit covers all of them.
pub fn record_events(persist: &Persist, clock: &WallClock, now: Instant, events: &[Event]) -> bool {
    if !persist.enabled() {
        return false;
    }
    let mut new_mkt = false;
    for ev in events {
        new_mkt |= record(persist, clock, now, ev);
    }
    new_mkt
}

/// Queues what `ev` changed for the state file; `true` for a new MKT,
/// whose record must be durable before its key goes on any socket.
fn record(persist: &Persist, clock: &WallClock, now: Instant, ev: &Event) -> bool {
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
            persist.send(Op::PutMkt(rec));
            return true;
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
            rekey_at,
            ..
        } => persist.send(Op::PutIkeSa(ike_sa_record(
            clock, now, peer, *spi_i, *spi_r, *role, *rekey_at,
        ))),
        Event::IkeSaRekeyed {
            peer,
            old_spi_i,
            old_spi_r,
            spi_i,
            spi_r,
            role,
            rekey_at,
            ..
        } => {
            persist.send(Op::PutIkeSa(ike_sa_record(
                clock, now, peer, *spi_i, *spi_r, *role, *rekey_at,
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
    false
}

/// The state file's record of an IKE SA, with its rekey deadline.
fn ike_sa_record(
    clock: &WallClock,
    now: Instant,
    peer: &str,
    spi_i: u64,
    spi_r: u64,
    role: Role,
    rekey_at: Option<Instant>,
) -> IkeSaRecord {
    IkeSaRecord {
        peer: peer.to_string(),
        spi_i: format!("{spi_i:016x}"),
        spi_r: format!("{spi_r:016x}"),
        role: role.as_str().to_string(),
        established_at_unix: clock.unix(now),
        rekey_at_unix: rekey_at.map(|t| clock.unix(t)),
    }
}
