//! The life of a peer's IKE SAs outside any one exchange: establishing one
//! (and replacing older ones, RFC 7296 2.4), failing, removal and its
//! report, the peer becoming unreachable, and the hand-over from a rekeyed
//! IKE SA to its successor (2.8, 2.18).

use std::time::{Duration, Instant};

use super::config::IkeSuite;
use super::context::{Ctx, Fate};
use super::error::{IkeError, NegotiationError};
use super::event::{Event, Role};
use super::sa::{IkeSa, Phase, SaState};
use super::window::PendingKind;
use crate::numbers::ProtocolId;
use crate::wire::{DeletePayload, Payload};

/// How long a half-open responder SA keeps this side from initiating to
/// the peer itself. The peer sends IKE_AUTH as soon as it has our
/// IKE_SA_INIT answer, so an SA still half-open after this is a lost
/// attempt or a forgery (anyone can send IKE_SA_INIT with the peer's
/// address), and must not keep this side from keying (docs/protocol.md,
/// "Denial of service").
pub(super) const HALF_OPEN_GRACE: Duration = Duration::from_secs(5);

/// An IKE SA with the peer that is up or being set up. Failed ones, those
/// superseded by a rekey, which only wait for their Delete, and
/// half-open responder SAs older than [`HALF_OPEN_GRACE`] do not count.
pub(super) fn has_live_sa(ctx: &Ctx<'_>, now: Instant) -> bool {
    ctx.sas.iter().any(|s| {
        s.is_live()
            && !matches!(s.state(), SaState::Rekeyed | SaState::Successor)
            && !stale_half_open(s, now)
    })
}

fn stale_half_open(s: &IkeSa, now: Instant) -> bool {
    s.state() == SaState::HalfOpen && s.created + HALF_OPEN_GRACE <= now
}

/// When only young half-open responder SAs keep this side from
/// initiating: when the first of them goes stale.
pub(super) fn half_open_wait(ctx: &Ctx<'_>, now: Instant) -> Option<Instant> {
    let mut until = None;
    for s in ctx.sas.iter() {
        if !s.is_live() || matches!(s.state(), SaState::Rekeyed | SaState::Successor) {
            continue;
        }
        if s.state() != SaState::HalfOpen {
            return None;
        }
        if !stale_half_open(s, now) {
            let t = s.created + HALF_OPEN_GRACE;
            until = Some(until.map_or(t, |u: Instant| u.min(t)));
        }
    }
    until
}

pub(super) fn established_sa<'a>(ctx: &'a Ctx<'_>) -> Option<&'a IkeSa> {
    ctx.sas
        .iter()
        .filter(|s| s.state() == SaState::Established)
        .max_by_key(|s| s.created)
}

/// Drops the peer's IKE SAs that a rekey superseded or left waiting:
/// with the current IKE SA gone they have nothing left to do.
pub(super) fn drop_rekey_leftovers(ctx: &mut Ctx<'_>, reason: &'static str) {
    let spis: Vec<u64> = ctx
        .sas
        .iter()
        .filter(|s| matches!(s.state(), SaState::Rekeyed | SaState::Successor))
        .map(IkeSa::local_spi)
        .collect();
    for spi in spis {
        if let Some(sa) = ctx.sas.remove(&spi) {
            report_deleted(ctx, &sa, reason);
        }
    }
}

/// Reports an SA that is going as deleted, if it was reported as
/// established. Its MKTs stay until their lifetime ends or newer ones
/// replace them.
pub(super) fn report_deleted(ctx: &mut Ctx<'_>, sa: &IkeSa, reason: &'static str) {
    if sa.announced {
        let peer = ctx.name();
        ctx.event(Event::IkeSaDeleted {
            peer,
            spi_i: sa.spi_i,
            spi_r: sa.spi_r,
            reason: reason.to_string(),
        });
    }
}

/// Drops an SA and reports it as deleted ([`report_deleted`]).
pub(super) fn remove_sa(ctx: &mut Ctx<'_>, sa: IkeSa, reason: &'static str) -> Fate {
    report_deleted(ctx, &sa, reason);
    Fate::Gone
}

/// Records a failed negotiation, schedules a retry, and drops the SA. A
/// responder that answered the failing request keeps it as Failed only to
/// replay that answer to a retransmission (RFC 7296 2.1), for the
/// initiator's retransmission schedule: invisible in views, no longer
/// half-open, and replacing any earlier Failed SA of the peer, so that
/// failures cannot pile up.
pub(super) fn fail(
    ctx: &mut Ctx<'_>,
    mut sa: IkeSa,
    error: IkeError,
    by_peer: bool,
    now: Instant,
) -> Fate {
    ctx.peer.set_last_error(Some(match error.notify() {
        Some(n) if n.name().is_some() => n.to_string(),
        _ => error.to_string(),
    }));
    ctx.out.event(Event::NegotiationFailed {
        peer: ctx.name(),
        error,
        by_peer,
    });
    if ctx.pc.initiate {
        ctx.peer.next_attempt = Some(now + ctx.cfg.retry_interval);
    }
    if sa.is_authenticated() || sa.state() == SaState::Deleting {
        report_deleted(ctx, &sa, "IKE SA failed");
        drop_rekey_leftovers(ctx, "IKE SA failed");
        return Fate::Gone;
    }
    if sa.role == Role::Responder && sa.window.has_response() {
        let earlier: Vec<u64> = ctx
            .sas
            .iter()
            .filter(|s| s.state() == SaState::Failed)
            .map(IkeSa::local_spi)
            .collect();
        for spi in earlier {
            ctx.sas.remove(&spi);
        }
        sa.phase = Phase::Failed {
            expires: now + ctx.cfg.retransmit.total(),
        };
        sa.window.complete();
        return Fate::Keep(sa);
    }
    Fate::Gone
}

/// An established IKE SA whose peer stopped answering is deleted
/// locally; its MKTs stay until their hard lifetime (or until a new IKE
/// SA's MKT supersedes them), and an initiating peer is tried again
/// after `retry_interval`.
pub(super) fn peer_unreachable(
    ctx: &mut Ctx<'_>,
    sa: IkeSa,
    reason: &'static str,
    now: Instant,
) -> Fate {
    ctx.peer.set_last_error(Some(reason.to_string()));
    ctx.out.event(Event::NegotiationFailed {
        peer: ctx.name(),
        error: NegotiationError::Timeout.into(),
        by_peer: false,
    });
    if ctx.pc.initiate {
        ctx.peer.next_attempt = Some(now + ctx.cfg.retry_interval);
    }
    report_deleted(ctx, &sa, reason);
    drop_rekey_leftovers(ctx, reason);
    Fate::Gone
}

/// Marks the SA established and replaces any older IKE SA with the
/// peer: with a Delete payload, or locally when the peer sent
/// INITIAL_CONTACT (RFC 7296 2.4: it holds no other IKE SA, and could
/// not read the Delete). MKTs are not touched here.
/// Frees what only IKE_SA_INIT and IKE_AUTH needed, once IKE_AUTH is done
/// (its first MKT made or refused): the nonces (the AUTH payloads and the
/// first MKT's key; later exchanges bring their own) and the peer's
/// signature hash algorithms (this side's AUTH). A route server keeps
/// thousands of SAs (issue: scale, memory per peer).
pub(super) fn authenticated(sa: &mut IkeSa) {
    if let Some(hs) = sa.handshake.as_mut() {
        hs.ni = Vec::new();
        hs.nr = Vec::new();
        hs.peer_sig_hashes = None;
    }
}

pub(super) fn establish(ctx: &mut Ctx<'_>, sa: &mut IkeSa, now: Instant) {
    sa.phase = Phase::Established;
    sa.established_at = Some(now);
    sa.announced = true;
    // The IKE_SA_INIT messages were only needed for the AUTH payloads (RFC
    // 7296 2.15), and are no longer replayed: a retransmitted IKE_SA_INIT
    // of this SA is dropped. Freed with the rest of the handshake's data
    // (the CERTREQ hashes): an established SA keeps only what its later
    // exchanges need.
    sa.handshake = None;
    // SK_pi and SK_pr made the AUTH payloads; nothing later uses them.
    if let Some(keys) = sa.keys.as_mut() {
        keys.forget_auth_keys();
    }
    sa.last_received = now;
    sa.rekey_at = ike_rekey_time(ctx, now);
    ctx.peer.set_last_error(None);
    ctx.peer.next_attempt = None;
    let older: Vec<u64> = ctx
        .sas
        .iter()
        .filter(|s| s.is_authenticated())
        .map(IkeSa::local_spi)
        .collect();
    for spi in older {
        if let Some(mut old) = ctx.sas.remove(&spi) {
            if sa.peer_initial_contact {
                report_deleted(ctx, &old, "the peer restarted (INITIAL_CONTACT)");
            } else if old.state() == SaState::Established {
                // Deleted with a Delete that is retransmitted until the
                // peer answers it (RFC 7296 2.1); listed as deleting.
                start_delete(ctx, &mut old, Vec::new(), "replaced by a newer IKE SA", now);
                ctx.sas.insert(old);
            } else {
                report_deleted(ctx, &old, "replaced by a newer IKE SA");
            }
        }
    }
    // The peer authenticated: its half-open SAs are forged or abandoned
    // attempts (a request of the peer's that arrived while this SA was
    // being set up was settled by the simultaneous-initiation rule, so
    // none is the peer's live attempt; docs/protocol.md, "Denial of
    // service").
    let half_open: Vec<u64> = ctx
        .sas
        .iter()
        .filter(|s| s.role == Role::Responder && s.state() == SaState::HalfOpen)
        .map(IkeSa::local_spi)
        .collect();
    for spi in half_open {
        ctx.sas.remove(&spi);
        ctx.out.counters.half_open_superseded += 1;
    }
    let suite = sa.suite.unwrap_or(IkeSuite::DEFAULT);
    ctx.out.event(Event::IkeSaEstablished {
        peer: ctx.name(),
        spi_i: sa.spi_i,
        spi_r: sa.spi_r,
        role: sa.role,
        suite,
        tcp_ao_capable: sa.peer_tcp_ao,
        rekey_at: sa.rekey_at,
    });
}

/// `new` (in the table) replaces `old` (taken out of it): it becomes the
/// peer's established SA and inherits the MKTs and the waiting requests
/// (RFC 7296 2.8); `old` waits for its Delete.
pub(super) fn adopt_successor(ctx: &mut Ctx<'_>, old: &mut IkeSa, new_spi: u64, now: Instant) {
    let old_spi = old.local_spi();
    old.phase = Phase::Rekeyed {
        successor: Some(new_spi),
        expires: now + ctx.rekeyed_sa_lifetime(),
    };
    old.rekey_at = None;
    let Some(mut new) = ctx.sas.remove(&new_spi) else {
        return;
    };
    new.phase = Phase::Established;
    new.announced = true;
    // Never an MKT exchange under way here: a rekey of the IKE SA is
    // neither started nor accepted while one is (RFC 7296 2.25.1).
    new.window.extend_queue(old.window.take_queue());
    for m in &mut ctx.peer.mkts {
        if m.ike_spi == old_spi {
            m.ike_spi = new_spi;
        }
    }
    ctx.out.event(Event::IkeSaRekeyed {
        peer: ctx.name(),
        old_spi_i: old.spi_i,
        old_spi_r: old.spi_r,
        spi_i: new.spi_i,
        spi_r: new.spi_r,
        role: new.role,
        suite: new.suite.unwrap_or(super::config::IkeSuite::DEFAULT),
        rekey_at: new.rekey_at,
    });
    ctx.send_queued(&mut new, now);
    ctx.sas.insert(new);
}

/// The SA that the peer's rekey of the SA with local SPI `old` created
/// while ours was outstanding.
pub(super) fn passive_successor(ctx: &Ctx<'_>, old: u64) -> Option<u64> {
    ctx.sas
        .iter()
        .find(|s| {
            s.state() == SaState::Successor && s.rekeyed_from.as_ref().is_some_and(|o| o.old == old)
        })
        .map(IkeSa::local_spi)
}

/// Removes a Rekeyed SA (deleted by either side, or never deleted).
/// An unanswered INFORMATIONAL of ours on it (Delete payloads of MKTs)
/// is sent again on its successor.
pub(super) fn retire_rekeyed_sa(ctx: &mut Ctx<'_>, mut sa: IkeSa, now: Instant) -> Fate {
    let requeue = sa
        .window
        .complete()
        .filter(|p| p.kind == PendingKind::Informational)
        .and_then(|p| p.requeue);
    if let Some(mut succ) = sa.successor().and_then(|s| ctx.sas.remove(&s)) {
        if let Some((exchange, payloads)) = requeue {
            succ.window
                .queue((exchange, payloads, PendingKind::Informational));
        }
        succ.window.extend_queue(sa.window.take_queue());
        ctx.send_queued(&mut succ, now);
        ctx.sas.insert(succ);
    }
    remove_sa(ctx, sa, "rekeyed")
}

/// Deletes every MKT of a peer locally.
pub(super) fn delete_all_mkts(ctx: &mut Ctx<'_>, reason: &'static str, now: Instant) {
    let name = ctx.name();
    for m in std::mem::take(&mut ctx.peer.mkts) {
        super::mkts::note_ended(ctx.peer, m.mkt.send_id, m.mkt.recv_id, now);
        ctx.out.event(Event::MktDeleted {
            peer: name.clone(),
            send_id: m.mkt.send_id,
            recv_id: m.mkt.recv_id,
            reason,
        });
    }
}

/// Established, with nothing outstanding or waiting: it may start an
/// exchange of its own.
pub(super) fn sa_is_idle(sa: &IkeSa) -> bool {
    sa.state() == SaState::Established
        && sa.window.idle()
        && sa.rekey_offer.is_none()
        && sa.ike_rekey.is_none()
}

/// The TCP-AO child SA in IKE_AUTH failed; the IKE SA stays, and a fresh
/// MKT is tried after `retry_interval`.
pub(super) fn child_failed(ctx: &mut Ctx<'_>, error: IkeError, by_peer: bool, now: Instant) {
    ctx.peer
        .set_next_child_attempt(Some(now + ctx.cfg.retry_interval));
    ctx.peer.set_last_error(Some(match error.notify() {
        Some(n) if n.name().is_some() => n.to_string(),
        _ => error.to_string(),
    }));
    ctx.out.event(Event::ChildFailed {
        peer: ctx.name(),
        error,
        by_peer,
    });
}

/// The rekey time of an IKE SA established now: `ike_rekey` minus up to
/// `IKE_REKEY_JITTER_PERCENT` of it, drawn anew for every SA.
pub(super) fn ike_rekey_time(ctx: &mut Ctx<'_>, now: Instant) -> Option<Instant> {
    let base = ctx.pc.lifetimes.ike_rekey?;
    let jitter = base * super::config::IKE_REKEY_JITTER_PERCENT / 100;
    Some(now + base.saturating_sub(ctx.random_below(jitter)))
}

/// Starts deleting `sa` (RFC 7296 1.4.1): INFORMATIONAL {`payloads`,
/// Delete(IKE)} becomes its last request, retransmitted like any other
/// until the peer answers it or the schedule runs out; the SA is then
/// removed and reported as deleted with `reason`. Meanwhile it is
/// [`SaState::Deleting`]: requests waiting for its window are dropped, a
/// request already outstanding is still waited for (the peer expects its
/// message IDs in order, 2.3), and nothing new starts on it.
pub(super) fn start_delete(
    ctx: &mut Ctx<'_>,
    sa: &mut IkeSa,
    mut payloads: Vec<Payload>,
    reason: &'static str,
    now: Instant,
) {
    let already = sa.window.pending_kind() == Some(PendingKind::DeleteIke);
    sa.phase = Phase::Deleting { reason };
    sa.rekey_at = None;
    sa.window.take_queue();
    if already {
        // A rekeyed SA's own Delete is out already.
        return;
    }
    payloads.push(Payload::Delete(DeletePayload {
        protocol: ProtocolId::IKE,
        spi_size: 0,
        spis: Vec::new(),
    }));
    ctx.enqueue(
        sa,
        crate::numbers::ExchangeType::INFORMATIONAL,
        payloads,
        PendingKind::DeleteIke,
        now,
    );
}

/// The end of a [`SaState::Deleting`] SA: its Delete was answered, the
/// peer deleted it too, or the peer never answered.
pub(super) fn finish_delete(ctx: &mut Ctx<'_>, sa: IkeSa) -> Fate {
    let reason = sa.deleting_reason().unwrap_or("deleted");
    remove_sa(ctx, sa, reason)
}

/// Ends every IKE SA of the peer and keeps its MKTs (a reload removed
/// the peer or changed what its IKE SA was made with): an authenticated
/// SA starts its Delete (INFORMATIONAL {Delete(IKE)}, retransmitted until
/// answered, [`start_delete`]) with no Delete payload for the MKTs, so
/// that both sides keep them on their sockets until their hard lifetime
/// or a new MKT; SAs still being set up go at once. Returns how many SAs
/// it ends.
pub(super) fn end_ike_sas_keeping_mkts(
    ctx: &mut Ctx<'_>,
    reason: &'static str,
    now: Instant,
) -> usize {
    let mut count = 0;
    for spi in ctx.sas.spis() {
        let Some(mut sa) = ctx.sas.remove(&spi) else {
            continue;
        };
        if sa.state() == SaState::Deleting {
            ctx.sas.insert(sa);
            continue;
        }
        count += 1;
        if sa.is_authenticated() {
            sa.ike_rekey = None;
            start_delete(ctx, &mut sa, Vec::new(), reason, now);
            ctx.sas.insert(sa);
        } else {
            report_deleted(ctx, &sa, reason);
        }
    }
    count
}
