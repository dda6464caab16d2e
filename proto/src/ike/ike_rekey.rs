//! Rekeying the IKE SA itself (docs/protocol.md, "IKE SA rekey"):
//! CREATE_CHILD_SA carrying the IKE SA payloads (RFC 7296 1.3.2, 2.18), the
//! simultaneous-rekey rule of 2.8.2 and the collision answers of 2.25.
//!
//! A rekey creates a new IKE SA from the old one's SK_d and a fresh
//! Diffie-Hellman exchange; whoever initiated the exchange is the new SA's
//! initiator, and message IDs start again at 0. MKTs belong to the peer,
//! not to an IKE SA, so they are not touched: their timers run on, and
//! later MKT exchanges use the new SA. The initiator of the rekey then
//! deletes the old SA with INFORMATIONAL {Delete(IKE)}, the last request on
//! it; requests still waiting for the old SA move to the new one.
//!
//! Collisions: if a rekey request for an IKE SA arrives while this side's
//! own rekey of it is outstanding, it is answered as usual and the SA it
//! creates waits (`SaState::Successor`) until our exchange ends. If both
//! complete, the new SA whose exchange used the lowest of the four nonces
//! is redundant and deleted by the side that initiated it; the other
//! survives on both sides and its initiator deletes the old SA. If ours
//! fails, or the peer deletes the old SA first (it did not notice the
//! collision and answered ours with TEMPORARY_FAILURE), the peer's survives.

use std::time::{Duration, Instant};

use super::context::{Ctx, Fate};
use super::error::{IkeError, Misbehaviour, NegotiationError};
use super::event::{Event, Role};
use super::proposal;
use super::sa::{IkeRekeyOffer, IkeSa, Phase, RekeyOrigin, SaState};
use super::traffic::notify;
use super::window::PendingKind;
use super::PayloadsExt;
use super::{informational, lifecycle};
use crate::crypto::{self, IkeKeys, KeyExchange, Secret};
use crate::numbers::{DhGroup, ExchangeType, NotifyType, PayloadType};
use crate::wire::{KePayload, Payload};

/// Sends CREATE_CHILD_SA {SA, Ni, KEi} rekeying `sa` (RFC 7296 1.3.2):
/// every configured suite, each proposal with our SPI of the new SA,
/// and a KE payload of `group` (by default the current SA's).
/// Nonce length sent in a rekey (RFC 7296 2.10).
const NONCE_LEN: usize = 32;

/// How long the redundant IKE SA that the peer created in a collision is
/// kept for the peer's Delete. The peer sends it one round trip after our
/// answer; a Delete that comes later finds no SA and is dropped, and the
/// peer then gives up on it without harm.
const REDUNDANT_SA_WAIT: Duration = Duration::from_secs(30);

pub(super) fn start(
    ctx: &mut Ctx<'_>,
    sa: &mut IkeSa,
    group: Option<DhGroup>,
    now: Instant,
) -> Result<(), IkeError> {
    let group = group
        .or(sa.suite.map(|s| s.group))
        .ok_or(Misbehaviour::Unexpected("IKE SA rekey before keys"))?;
    let ke = KeyExchange::generate(group, &mut *ctx.rng).map_err(Misbehaviour::KeyExchange)?;
    let spi = ctx.fresh_spi();
    let mut ni = vec![0u8; NONCE_LEN];
    ctx.rng.fill_bytes(&mut ni);
    let pc = ctx.pc;
    let payloads = vec![
        Payload::Sa(proposal::ike_rekey_sa_payload(&pc.ike_suites, spi)),
        Payload::Nonce(ni.clone()),
        Payload::Ke(KePayload {
            group,
            data: ke.public(),
        }),
    ];
    sa.ike_rekey = Some(Box::new(IkeRekeyOffer { spi, ni, ke }));
    ctx.enqueue(
        sa,
        ExchangeType::CREATE_CHILD_SA,
        payloads,
        PendingKind::RekeyIke,
        now,
    );
    Ok(())
}

/// The responder's side of an IKE SA rekey.
pub(super) fn on_request(
    ctx: &mut Ctx<'_>,
    now: Instant,
    payloads: Vec<Payload>,
    mut sa: IkeSa,
) -> Fate {
    let closing = sa.window.pending_kind() == Some(PendingKind::DeleteIke);
    // RFC 7296 2.25.1, 2.25.2, 2.8.2: not while this side creates or
    // rekeys an MKT, nor on an SA already rekeyed or being closed.
    if sa.state() != SaState::Established || sa.rekey_offer.is_some() || closing {
        ctx.respond(
            &mut sa,
            ExchangeType::CREATE_CHILD_SA,
            &[notify(NotifyType::TEMPORARY_FAILURE, Vec::new())],
        );
        return Fate::Keep(sa);
    }
    match accept_ike_rekey(ctx, &sa, &payloads, now) {
        Ok((reply, mut new)) => {
            ctx.respond(&mut sa, ExchangeType::CREATE_CHILD_SA, &reply);
            let new_spi = new.local_spi();
            if sa.ike_rekey.is_some() {
                // Our own rekey of it is outstanding: wait for it.
                new.phase = Phase::Successor {
                    expires: now + ctx.rekeyed_sa_lifetime(),
                };
                ctx.sas.insert(new);
            } else {
                ctx.sas.insert(new);
                // The peer deletes the old SA.
                lifecycle::adopt_successor(ctx, &mut sa, new_spi, now);
            }
        }
        Err(e) => {
            let reply = match &e {
                IkeError::Negotiation(NegotiationError::InvalidKe(g)) => {
                    notify(NotifyType::INVALID_KE_PAYLOAD, g.0.to_be_bytes().to_vec())
                }
                // Never a fatal INVALID_SYNTAX: the IKE SA is fine.
                _ => notify(NotifyType::NO_PROPOSAL_CHOSEN, Vec::new()),
            };
            ctx.respond(&mut sa, ExchangeType::CREATE_CHILD_SA, &[reply]);
            ctx.out.event(Event::IkeRekeyFailed {
                peer: ctx.name(),
                error: e,
                by_peer: false,
            });
        }
    }
    Fate::Keep(sa)
}

/// Chooses a proposal, runs the key exchange and builds the new SA
/// (responder) and the reply {SA, Nr, KEr}.
fn accept_ike_rekey(
    ctx: &mut Ctx<'_>,
    sa: &IkeSa,
    payloads: &[Payload],
    now: Instant,
) -> Result<(Vec<Payload>, IkeSa), IkeError> {
    let offer = payloads
        .find_payload(Payload::as_sa)
        .ok_or(Misbehaviour::MissingPayload(PayloadType::SA))?;
    let ni = payloads
        .find_payload(Payload::as_nonce)
        .ok_or(Misbehaviour::MissingPayload(PayloadType::NONCE))?
        .to_vec();
    // RFC 7296 2.18: a rekey of the IKE SA MUST carry a KE payload.
    let ke_in = payloads
        .find_payload(Payload::as_ke)
        .ok_or(NegotiationError::NoProposalChosen(
            "IKE SA rekey without a KE payload",
        ))?;
    let pc = ctx.pc;
    let (choice, spi_i) = proposal::choose_ike_rekey(offer, &pc.ike_suites, ke_in.group)?;
    let ke = KeyExchange::generate(choice.suite.group, &mut *ctx.rng)
        .map_err(Misbehaviour::KeyExchange)?;
    let gir = ke.agree(&ke_in.data).map_err(Misbehaviour::KeyExchange)?;
    let mut nr = vec![0u8; NONCE_LEN];
    ctx.rng.fill_bytes(&mut nr);
    let spi_r = ctx.fresh_spi();
    let keys = rekeyed_keys(sa, choice.suite, &gir, &ni, &nr, spi_i, spi_r)?;
    let reply = vec![
        Payload::Sa(proposal::ike_rekey_sa_reply(
            choice.proposal_num,
            choice.suite,
            spi_r,
        )),
        Payload::Nonce(nr.clone()),
        Payload::Ke(KePayload {
            group: ke.group(),
            data: ke.public(),
        }),
    ];
    let new = rekeyed_sa(
        ctx,
        sa,
        Role::Responder,
        (spi_i, spi_r),
        choice.suite,
        keys,
        [ni, nr],
        now,
    );
    Ok((reply, new))
}

/// The IKE SA created by a rekey of `old`, established now.
#[allow(clippy::too_many_arguments)]
fn rekeyed_sa(
    ctx: &mut Ctx<'_>,
    old: &IkeSa,
    role: Role,
    (spi_i, spi_r): (u64, u64),
    suite: super::config::IkeSuite,
    mut keys: IkeKeys,
    nonces: [Vec<u8>; 2],
    now: Instant,
) -> IkeSa {
    // A rekeyed IKE SA has no IKE_AUTH: SK_pi and SK_pr are never used.
    keys.forget_auth_keys();
    let rekey_at = lifecycle::ike_rekey_time(ctx, now);
    IkeSa::rekeyed(
        old,
        role,
        (spi_i, spi_r),
        suite,
        keys,
        rekey_at,
        RekeyOrigin {
            old: old.local_spi(),
            nonces,
        },
        now,
    )
}

/// The initiator's side: the answer to our rekey of `sa`.
pub(super) fn on_response(
    ctx: &mut Ctx<'_>,
    now: Instant,
    payloads: Vec<Payload>,
    mut sa: IkeSa,
) -> Fate {
    let spi = sa.local_spi();
    let Some(offer) = sa.ike_rekey.take() else {
        return Fate::Keep(sa);
    };
    let new = match finish_ike_rekey(ctx, &sa, &offer, &payloads, now) {
        Ok(new) => new,
        Err(IkeError::Negotiation(NegotiationError::InvalidKe(g))) if g == offer.ke.group() => {
            let e = NegotiationError::NoProposalChosen("INVALID_KE_PAYLOAD for the group sent");
            return failed(ctx, sa, e.into(), now);
        }
        Err(e) => return failed(ctx, sa, e, now),
    };
    let new_spi = new.local_spi();
    let ours_lowest = new.rekeyed_from.as_ref().map(|o| o.lowest_nonce().to_vec());
    ctx.sas.insert(new);
    let Some(passive) = lifecycle::passive_successor(ctx, spi) else {
        lifecycle::adopt_successor(ctx, &mut sa, new_spi, now);
        informational::start_delete_ike(ctx, &mut sa, now);
        return Fate::Keep(sa);
    };
    // RFC 7296 2.8.2: both sides rekeyed; the new SA with the lowest of
    // the four nonces is redundant and deleted by its creator.
    let theirs_lowest = ctx
        .sas
        .get(&passive)
        .and_then(|p| p.rekeyed_from.as_ref())
        .map(|o| o.lowest_nonce().to_vec());
    let ours_redundant = ours_lowest < theirs_lowest;
    ctx.out.event(Event::IkeRekeyCollision {
        peer: ctx.name(),
        kept_ours: !ours_redundant,
    });
    if ours_redundant {
        // The peer's SA survives and the peer deletes the old one.
        lifecycle::adopt_successor(ctx, &mut sa, passive, now);
        if let Some(mut ours) = ctx.sas.remove(&new_spi) {
            ours.phase = Phase::Rekeyed {
                successor: None,
                expires: now + ctx.rekeyed_sa_lifetime(),
            };
            informational::start_delete_ike(ctx, &mut ours, now);
            ctx.sas.insert(ours);
        }
    } else {
        // Ours survives; the peer deletes its redundant one. Not for
        // long: if our Delete of the old SA reached the peer before our
        // answer to its rekey, the peer forgot its rekey (2.25.2) and
        // never learns that it created this one.
        lifecycle::adopt_successor(ctx, &mut sa, new_spi, now);
        informational::start_delete_ike(ctx, &mut sa, now);
        if let Some(p) = ctx.sas.get_mut(&passive) {
            p.phase = Phase::Rekeyed {
                successor: None,
                expires: now + REDUNDANT_SA_WAIT,
            };
        }
    }
    Fate::Keep(sa)
}

/// Checks the answer {SA, Nr, KEr} and builds the new SA (initiator).
fn finish_ike_rekey(
    ctx: &mut Ctx<'_>,
    sa: &IkeSa,
    offer: &IkeRekeyOffer,
    payloads: &[Payload],
    now: Instant,
) -> Result<IkeSa, IkeError> {
    if let Some(n) = payloads.notify(NotifyType::INVALID_KE_PAYLOAD) {
        let wanted = <[u8; 2]>::try_from(n.data.as_slice())
            .map(|b| DhGroup(u16::from_be_bytes(b)))
            .map_err(|_| NegotiationError::PeerReported(NotifyType::INVALID_KE_PAYLOAD))?;
        return Err(NegotiationError::InvalidKe(wanted).into());
    }
    if let Some(n) = payloads.error_notify() {
        return Err(NegotiationError::PeerReported(n.ty).into());
    }
    let pc = ctx.pc;
    let reply = payloads
        .find_payload(Payload::as_sa)
        .ok_or(Misbehaviour::MissingPayload(PayloadType::SA))?;
    let (suite, spi_r) = proposal::check_ike_rekey_reply(reply, &pc.ike_suites, offer.ke.group())
        .ok_or(Misbehaviour::BadSelection("IKE SA proposal"))?;
    let nr = payloads
        .find_payload(Payload::as_nonce)
        .ok_or(Misbehaviour::MissingPayload(PayloadType::NONCE))?
        .to_vec();
    let ke_in = payloads
        .find_payload(Payload::as_ke)
        .ok_or(Misbehaviour::MissingPayload(PayloadType::KE))?;
    if ke_in.group != offer.ke.group() {
        return Err(Misbehaviour::BadSelection("KE group").into());
    }
    let gir = offer
        .ke
        .agree(&ke_in.data)
        .map_err(Misbehaviour::KeyExchange)?;
    let keys = rekeyed_keys(sa, suite, &gir, &offer.ni, &nr, offer.spi, spi_r)?;
    Ok(rekeyed_sa(
        ctx,
        sa,
        Role::Initiator,
        (offer.spi, spi_r),
        suite,
        keys,
        [offer.ni.clone(), nr],
        now,
    ))
}

/// Our rekey of `sa` failed (error answer, bad answer, or no answer).
/// If the peer's rekey of it created a successor meanwhile, that one
/// survives (RFC 7296 2.8.2) and the peer deletes `sa`; otherwise `sa`
/// stays and the rekey is tried again later.
fn failed(ctx: &mut Ctx<'_>, mut sa: IkeSa, error: IkeError, now: Instant) -> Fate {
    let spi = sa.local_spi();
    sa.ike_rekey = None;
    let peer_name = ctx.name();
    if let Some(passive) = lifecycle::passive_successor(ctx, spi) {
        ctx.out.event(Event::IkeRekeyCollision {
            peer: peer_name,
            kept_ours: false,
        });
        lifecycle::adopt_successor(ctx, &mut sa, passive, now);
        return Fate::Keep(sa);
    }
    let by_peer = matches!(
        error,
        IkeError::Negotiation(NegotiationError::PeerReported(_))
    );
    match &error {
        IkeError::Negotiation(NegotiationError::InvalidKe(g))
            if ctx.pc.ike_suites.iter().any(|s| s.group == *g) =>
        {
            // RFC 7296 1.2: again with the group the peer wants.
            let g = *g;
            if let Err(e) = start(ctx, &mut sa, Some(g), now) {
                sa.rekey_at = Some(now + ctx.cfg.retry_interval);
                ctx.out.event(Event::IkeRekeyFailed {
                    peer: peer_name,
                    error: e,
                    by_peer: false,
                });
            }
        }
        IkeError::Negotiation(NegotiationError::PeerReported(NotifyType::TEMPORARY_FAILURE)) => {
            // RFC 7296 2.25: wait, then try again.
            sa.rekey_at = Some(now + ctx.temporary_failure_wait());
            ctx.out.event(Event::IkeRekeyFailed {
                peer: peer_name,
                error,
                by_peer,
            });
        }
        _ => {
            sa.rekey_at = Some(now + ctx.cfg.retry_interval);
            ctx.out.event(Event::IkeRekeyFailed {
                peer: peer_name,
                error,
                by_peer,
            });
        }
    }
    ctx.send_queued(&mut sa, now);
    Fate::Keep(sa)
}

/// The keys of the IKE SA created by rekeying `old` (RFC 7296 2.18):
/// SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) with the old SA's PRF,
/// then the 2.14 derivation with the new suite, nonces and SPIs.
fn rekeyed_keys(
    old: &IkeSa,
    suite: super::config::IkeSuite,
    gir: &Secret,
    ni: &[u8],
    nr: &[u8],
    spi_i: u64,
    spi_r: u64,
) -> Result<IkeKeys, IkeError> {
    let (Some(old_suite), Some(old_keys)) = (old.suite, old.keys.as_ref()) else {
        return Err(Misbehaviour::Unexpected("IKE SA rekey before keys").into());
    };
    let seed = crypto::rekey_skeyseed(old_suite.prf, old_keys.sk_d(), gir.as_bytes(), ni, nr);
    crypto::derive_ike_keys(suite.prf, suite.encr, &seed, ni, nr, spi_i, spi_r)
        .map_err(|e| Misbehaviour::KeyExchange(e).into())
}
