//! What time does to one peer: retransmissions and give-ups of its IKE SAs'
//! requests (RFC 7296 2.1, 2.4), half-open and replay-window expiry, IKE SA
//! rekeys and liveness checks, MKT expiry, retirement and rekeys, its
//! initiation; and the peer's earliest deadline for the timer queue.

use std::time::Instant;

use super::context::{Ctx, Fate};
use super::error::NegotiationError;
use super::event::{DropReason, Event};
use super::peer::MktRecord;
use super::sa::{IkeSa, SaState};
use super::window::{PendingKind, Retransmit};
use super::{create_child, ike_rekey, informational, init, lifecycle, mkts};

/// The earliest deadline of a peer: retransmissions, half-open expiry
/// and replay windows of its IKE SAs, their rekeys and liveness checks,
/// its MKTs' rekeys, retirements and hard lifetimes, its next
/// initiation and its KeyID reservations. O(its SAs and MKTs).
pub(super) fn deadline(ctx: &Ctx<'_>) -> Option<Instant> {
    let window_deadlines = ctx.sas.iter().flat_map(|sa| {
        let retransmit = sa.window.deadline();
        let half_open = match sa.state() {
            SaState::HalfOpen => Some(sa.created + ctx.cfg.half_open_timeout),
            _ => None,
        };
        [retransmit, half_open, sa.expires()]
    });
    let p = &*ctx.peer;
    let reservation = p.rare().reservations.iter().map(|r| r.until).min();
    window_deadlines
        .chain([p.next_attempt, reservation])
        .chain(mkts::mkt_deadlines(ctx).map(Some))
        .chain(sa_deadlines(ctx).map(Some))
        .flatten()
        .min()
}

/// Everything due for one peer: retransmissions, give-ups, half-open
/// expiry, KeyID reservations, IKE SA rekeys and liveness checks, MKT
/// timers, and its initiation.
pub(super) fn on_timeout(ctx: &mut Ctx<'_>, now: Instant) {
    let due: Vec<u64> = ctx
        .sas
        .iter()
        .filter(|sa| {
            sa.window.deadline().is_some_and(|d| d <= now)
                || sa.expires().is_some_and(|e| e <= now)
                || (sa.state() == SaState::HalfOpen
                    && sa.created + ctx.cfg.half_open_timeout <= now)
        })
        .map(IkeSa::local_spi)
        .collect();
    for spi in due {
        let Some(sa) = ctx.sas.remove(&spi) else {
            continue;
        };
        if let Fate::Keep(sa) = sa_timeout(ctx, sa, now) {
            ctx.sas.insert(sa);
        }
    }
    if !ctx.peer.rare().reservations.is_empty() {
        ctx.peer.rare_mut().reservations.retain(|r| r.until > now);
    }
    handle_sa_timers(ctx, now);
    handle_mkt_timers(ctx, now);
    if ctx.peer.next_attempt.is_some_and(|t| t <= now) {
        // Only young half-open SAs in the way: again when they are stale.
        ctx.peer.next_attempt = lifecycle::half_open_wait(ctx, now);
        if !lifecycle::has_live_sa(ctx, now) {
            if let Err(e) = init::start(ctx, now) {
                ctx.out.event(Event::NegotiationFailed {
                    peer: ctx.name(),
                    error: e,
                    by_peer: false,
                });
            }
        }
    }
}

/// One due IKE SA: the end of its wait (a superseded SA never deleted,
/// a failed SA's replay window), half-open expiry, or its retransmission.
fn sa_timeout(ctx: &mut Ctx<'_>, mut sa: IkeSa, now: Instant) -> Fate {
    if sa.expires().is_some_and(|e| e <= now) {
        return match sa.state() {
            // The peer never deleted it.
            SaState::Rekeyed => lifecycle::retire_rekeyed_sa(ctx, sa, now),
            SaState::Successor => lifecycle::remove_sa(ctx, sa, "rekeyed"),
            // A failed SA's replay window ended.
            _ => Fate::Gone,
        };
    }
    if sa.state() == SaState::HalfOpen && sa.created + ctx.cfg.half_open_timeout <= now {
        ctx.dropped(
            sa.remote,
            DropReason::HalfOpenExpired,
            format!(
                "half-open IKE SA {:016x} expired without IKE_AUTH",
                sa.spi_r
            ),
        );
        return Fate::Gone;
    }
    match sa.window.retransmit(now, &ctx.cfg.retransmit) {
        Retransmit::GiveUp => give_up(ctx, sa, now),
        Retransmit::Send(bytes) => {
            ctx.send_all(sa.remote, &bytes);
            Fate::Keep(sa)
        }
        Retransmit::NotDue => Fate::Keep(sa),
    }
}

/// The retransmissions of `sa`'s pending request are exhausted (RFC
/// 7296 2.4: the peer is considered dead).
fn give_up(ctx: &mut Ctx<'_>, mut sa: IkeSa, now: Instant) -> Fate {
    let kind = sa.window.pending_kind();
    if sa.state() == SaState::Deleting {
        // Its Delete (or the request before it) was never answered: the
        // peer is gone, or will notice on its own (RFC 7296 2.4).
        sa.window.complete();
        return lifecycle::finish_delete(ctx, sa);
    }
    if sa.state() == SaState::Rekeyed {
        // Its successor carries on; an unanswered Delete payload of an
        // MKT is sent again there.
        return lifecycle::retire_rekeyed_sa(ctx, sa, now);
    }
    sa.window.complete();
    match kind {
        Some(PendingKind::DeleteIke) => lifecycle::remove_sa(ctx, sa, "deleted"),
        // Also a rekey of the IKE SA that collided with the peer's: the
        // peer's SA is not adopted, since the peer, silent as well, may
        // never have received our answer to it.
        Some(k) if sa.state() == SaState::Established => {
            let reason = if k == PendingKind::Liveness {
                "peer unreachable (liveness check)"
            } else {
                "peer unreachable (no answer to a request)"
            };
            lifecycle::peer_unreachable(ctx, sa, reason, now)
        }
        _ => lifecycle::fail(ctx, sa, NegotiationError::Timeout.into(), false, now),
    }
}

/// Starts the peer's due IKE SA rekeys and liveness checks.
pub(super) fn handle_sa_timers(ctx: &mut Ctx<'_>, now: Instant) {
    let liveness = ctx.cfg.liveness;
    let due: Vec<u64> = ctx
        .sas
        .iter()
        .filter(|sa| {
            lifecycle::sa_is_idle(sa)
                && (sa.rekey_at.is_some_and(|t| t <= now)
                    || liveness.is_some_and(|l| sa.last_received + l <= now))
        })
        .map(IkeSa::local_spi)
        .collect();
    for spi in due {
        ctx.with_sa(spi, |ctx, sa| {
            if sa.rekey_at.is_some_and(|t| t <= now) {
                sa.rekey_at = None;
                if let Err(e) = ike_rekey::start(ctx, sa, None, now) {
                    sa.rekey_at = Some(now + ctx.cfg.retry_interval);
                    ctx.out.event(Event::IkeRekeyFailed {
                        peer: ctx.name(),
                        error: e,
                        by_peer: false,
                    });
                }
            } else {
                informational::start_liveness(ctx, sa, now);
            }
        });
    }
}

/// Deadlines of the peer's IKE SA rekeys and liveness checks.
fn sa_deadlines<'a>(ctx: &'a Ctx<'_>) -> impl Iterator<Item = Instant> + 'a {
    let liveness = ctx.cfg.liveness;
    ctx.sas
        .iter()
        .filter(|sa| lifecycle::sa_is_idle(sa))
        .flat_map(move |sa| {
            let liveness = liveness.map(|l| sa.last_received + l);
            [sa.rekey_at, liveness]
        })
        .flatten()
}

/// Acts on the peer's MKT timers: hard expiry, retirement, and rekeys.
pub(super) fn handle_mkt_timers(ctx: &mut Ctx<'_>, now: Instant) {
    let name = ctx.name();
    // Hard lifetime.
    let expired: Vec<MktRecord> = {
        let mkts = &mut ctx.peer.mkts;
        let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(mkts)
            .into_iter()
            .partition(|m| m.expires_at <= now);
        *mkts = keep;
        gone
    };
    for m in expired {
        ctx.out.event(Event::MktDeleted {
            peer: name.clone(),
            send_id: m.mkt.send_id,
            recv_id: m.mkt.recv_id,
            reason: "hard lifetime expired",
        });
    }
    let sa_spi = lifecycle::established_sa(ctx).map(|s| s.local_spi());
    // With no IKE SA, retire locally; with one, Delete payloads wait for
    // its window.
    let window_busy = sa_spi.map(|spi| ctx.sas.get(&spi).is_some_and(|s| s.window.busy()));
    // Retirement.
    let due: Vec<usize> = ctx
        .peer
        .mkts
        .iter()
        .enumerate()
        .filter(|(_, m)| m.retire_at.is_some_and(|t| t <= now))
        .map(|(i, _)| i)
        .collect();
    let mut deletes = Vec::new();
    for i in due.into_iter().rev() {
        let with_delete = ctx.peer.mkts[i].retire_with_delete;
        if with_delete && window_busy == Some(true) {
            continue;
        }
        let m = ctx.peer.mkts.remove(i);
        mkts::note_ended(ctx.peer, m.mkt.send_id, m.mkt.recv_id, now);
        if with_delete && sa_spi.is_some() {
            deletes.push(m.mkt.recv_id);
        }
        ctx.out.event(Event::MktDeleted {
            peer: name.clone(),
            send_id: m.mkt.send_id,
            recv_id: m.mkt.recv_id,
            reason: m.retire_reason,
        });
    }
    let Some(spi) = sa_spi else {
        return;
    };
    ctx.with_sa(spi, |ctx, s| {
        if !deletes.is_empty() {
            informational::start_child_deletes(ctx, s, deletes, now);
        }
        // A fresh MKT when there is none.
        let due = ctx.peer.rare().next_child_attempt.is_none_or(|t| t <= now);
        if due && mkts::needs_fresh_mkt(ctx, s) {
            ctx.peer
                .set_next_child_attempt(Some(now + ctx.cfg.retry_interval));
            if let Err(e) = create_child::start(ctx, s, None, now) {
                ctx.out.event(Event::ChildFailed {
                    peer: name.clone(),
                    error: e,
                    by_peer: false,
                });
            }
        }
        // Rekeys, one at a time per IKE SA.
        if !s.window.busy() && s.rekey_offer.is_none() {
            let due = ctx
                .peer
                .mkts
                .iter()
                .find(|m| m.rekey_at.is_some_and(|t| t <= now) && m.retire_at.is_none())
                .map(|m| (m.mkt.send_id, m.mkt.recv_id));
            if let Some(old) = due {
                if let Some(m) = ctx
                    .peer
                    .mkts
                    .iter_mut()
                    .find(|m| (m.mkt.send_id, m.mkt.recv_id) == old)
                {
                    m.rekey_at = None;
                }
                if let Err(e) = create_child::start(ctx, s, Some(old), now) {
                    ctx.out.event(Event::ChildFailed {
                        peer: name.clone(),
                        error: e,
                        by_peer: false,
                    });
                    // Again later, not never.
                    let retry = now + ctx.cfg.retry_interval;
                    if let Some(m) = ctx
                        .peer
                        .mkts
                        .iter_mut()
                        .find(|m| (m.mkt.send_id, m.mkt.recv_id) == old)
                    {
                        if retry < m.expires_at {
                            m.rekey_at = Some(retry);
                        }
                    }
                }
            }
        }
    });
}
