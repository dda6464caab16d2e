//! The INFORMATIONAL exchange (RFC 7296 1.4): Delete payloads for MKTs and
//! for the IKE SA, AUTHENTICATION_FAILED after IKE_AUTH (2.21.2), and the
//! empty request of a liveness check.

use std::net::SocketAddr;
use std::time::Instant;

use super::context::{Ctx, Fate};
use super::error::NegotiationError;
use super::event::Event;
use super::lifecycle;
use super::sa::{IkeSa, SaState};
use super::window::PendingKind;
use super::PayloadsExt;
use crate::numbers::{ExchangeType, NotifyType, ProtocolId};
use crate::wire::{DeletePayload, ParsedMessage, Payload};

pub(super) fn on_request(
    ctx: &mut Ctx<'_>,
    now: Instant,
    payloads: Vec<Payload>,
    mut sa: IkeSa,
) -> Fate {
    let spi = sa.local_spi();
    let peer_name = ctx.name();
    if payloads.notify(NotifyType::AUTHENTICATION_FAILED).is_some() {
        ctx.respond(&mut sa, ExchangeType::INFORMATIONAL, &[]);
        sa.window.forget_response();
        let e = NegotiationError::PeerReported(NotifyType::AUTHENTICATION_FAILED);
        return lifecycle::fail(ctx, sa, e.into(), true, now);
    }
    let mut reply = Vec::new();
    let mut delete_ike = false;
    for d in payloads.iter().filter_map(Payload::as_delete) {
        if d.protocol == ProtocolId::IKE {
            delete_ike = true;
        } else if d.protocol == ProtocolId::TCP_AO {
            let mut ours = Vec::new();
            for s in &d.spis {
                let [send_id] = s.as_slice() else { continue };
                let mkts = &mut ctx.peer.mkts;
                if let Some(pos) = mkts.iter().position(|m| m.mkt.send_id == *send_id) {
                    let m = mkts.remove(pos);
                    super::mkts::note_ended(ctx.peer, m.mkt.send_id, m.mkt.recv_id, now);
                    ours.push(vec![m.mkt.recv_id]);
                    ctx.out.event(Event::MktDeleted {
                        peer: peer_name.clone(),
                        send_id: m.mkt.send_id,
                        recv_id: m.mkt.recv_id,
                        reason: "deleted by the peer",
                    });
                }
            }
            if !ours.is_empty() {
                reply.push(Payload::Delete(DeletePayload {
                    protocol: ProtocolId::TCP_AO,
                    spi_size: 1,
                    spis: ours,
                }));
            }
        }
    }
    ctx.respond(&mut sa, ExchangeType::INFORMATIONAL, &reply);
    if !delete_ike {
        return Fate::Keep(sa);
    }
    match sa.state() {
        // Both sides deleted it at once (RFC 7296 1.4.1): ours is answered
        // by theirs.
        SaState::Deleting => lifecycle::finish_delete(ctx, sa),
        // The old SA after a rekey, or the redundant one of a collision.
        SaState::Rekeyed => lifecycle::retire_rekeyed_sa(ctx, sa, now),
        // The peer found the SA it created redundant (RFC 7296 2.8.2).
        SaState::Successor => lifecycle::remove_sa(ctx, sa, "deleted by the peer"),
        _ => match lifecycle::passive_successor(ctx, spi) {
            // RFC 7296 2.25.2: the peer rekeyed this SA without noticing
            // our own rekey of it: its new SA survives, ours is forgotten.
            Some(succ) if sa.ike_rekey.is_some() => {
                sa.ike_rekey = None;
                sa.window.complete();
                ctx.out.event(Event::IkeRekeyCollision {
                    peer: peer_name,
                    kept_ours: false,
                });
                lifecycle::adopt_successor(ctx, &mut sa, succ, now);
                lifecycle::retire_rekeyed_sa(ctx, sa, now)
            }
            _ => {
                if ctx.pc.initiate {
                    ctx.peer.next_attempt = Some(now + ctx.cfg.retry_interval);
                }
                lifecycle::report_deleted(ctx, &sa, "deleted by the peer");
                lifecycle::drop_rekey_leftovers(ctx, "deleted by the peer");
                Fate::Gone
            }
        },
    }
}

pub(super) fn on_response(
    ctx: &mut Ctx<'_>,
    now: Instant,
    from: SocketAddr,
    datagram: &[u8],
    msg: &ParsedMessage,
    sa: IkeSa,
) -> Fate {
    let (mut sa, _) =
        match ctx.unprotect_or_drop(sa, from, datagram, msg, now, "INFORMATIONAL response") {
            Ok(x) => x,
            Err(fate) => return fate,
        };
    let kind = sa.window.complete().map(|p| p.kind);
    if kind == Some(PendingKind::DeleteIke) {
        if sa.state() == SaState::Rekeyed {
            lifecycle::retire_rekeyed_sa(ctx, sa, now)
        } else {
            lifecycle::remove_sa(ctx, sa, "deleted")
        }
    } else {
        ctx.send_queued(&mut sa, now);
        Fate::Keep(sa)
    }
}

/// A response on an SA that this side is deleting: the answer to its
/// Delete ends it; the answer to a request that was outstanding when the
/// deletion began is only authenticated and lets the Delete go out (what
/// it answers no longer matters).
pub(super) fn on_response_deleting(
    ctx: &mut Ctx<'_>,
    now: Instant,
    from: SocketAddr,
    datagram: &[u8],
    msg: &ParsedMessage,
    sa: IkeSa,
) -> Fate {
    let (mut sa, _) = match ctx.unprotect_or_drop(sa, from, datagram, msg, now, "response") {
        Ok(x) => x,
        Err(fate) => return fate,
    };
    match sa.window.complete().map(|p| p.kind) {
        Some(PendingKind::DeleteIke) => lifecycle::finish_delete(ctx, sa),
        _ => {
            ctx.send_queued(&mut sa, now);
            Fate::Keep(sa)
        }
    }
}

/// Queues an INFORMATIONAL with a Delete payload for our RecvIDs.
pub(super) fn start_child_deletes(
    ctx: &mut Ctx<'_>,
    sa: &mut IkeSa,
    recv_ids: Vec<u8>,
    now: Instant,
) {
    let del = Payload::Delete(DeletePayload {
        protocol: ProtocolId::TCP_AO,
        spi_size: 1,
        spis: recv_ids.into_iter().map(|r| vec![r]).collect(),
    });
    ctx.enqueue(
        sa,
        ExchangeType::INFORMATIONAL,
        vec![del],
        PendingKind::Informational,
        now,
    );
}

/// INFORMATIONAL {Delete(IKE)}, retransmitted like any request; the
/// last request on `sa` (RFC 7296 2.8).
pub(super) fn start_delete_ike(ctx: &mut Ctx<'_>, sa: &mut IkeSa, now: Instant) {
    let del = Payload::Delete(DeletePayload {
        protocol: ProtocolId::IKE,
        spi_size: 0,
        spis: Vec::new(),
    });
    ctx.enqueue(
        sa,
        ExchangeType::INFORMATIONAL,
        vec![del],
        PendingKind::DeleteIke,
        now,
    );
}

/// A liveness check (RFC 7296 1.4): an empty INFORMATIONAL request; its
/// answer, or any other protected message, counts as a sign of life.
pub(super) fn start_liveness(ctx: &mut Ctx<'_>, sa: &mut IkeSa, now: Instant) {
    ctx.enqueue(
        sa,
        ExchangeType::INFORMATIONAL,
        Vec::new(),
        PendingKind::Liveness,
        now,
    );
}
