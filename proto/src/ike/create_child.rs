//! CREATE_CHILD_SA for MKTs (RFC 7296 1.3.1, 1.3.3, 2.17): a new MKT or the
//! rekey of one (REKEY_SA), with PFS when configured; both sides' steps.
//! What happens to the MKTs afterwards is [`super::mkts`].

use std::time::Instant;

use super::context::{Ctx, Fate};
use super::error::{IkeError, Misbehaviour, NegotiationError};
use super::event::Event;
use super::sa::{IkeSa, RekeyOffer};
use super::traffic::{notify, reply_within, selectors};
use super::window::PendingKind;
use super::PayloadsExt;
use super::{informational, mkts};
use crate::crypto::KeyExchange;
use crate::mkt::MasterKeyTuple;
use crate::numbers::{ExchangeType, NotifyType, PayloadType, ProtocolId, TransformType};
use crate::wire::{KePayload, NotifyPayload, Payload, Transform};

/// Starts a CREATE_CHILD_SA on `sa` rekeying `old` (or creating a new MKT).
pub(super) fn start(
    ctx: &mut Ctx<'_>,
    sa: &mut IkeSa,
    old: Option<(u8, u8)>,
    now: Instant,
) -> Result<(), IkeError> {
    let recv_id = mkts::allocate_recv_id(ctx, now).ok_or(NegotiationError::NoProposalChosen(
        "no free KeyID for this peer",
    ))?;
    let mut ni = vec![0u8; 32];
    ctx.rng.fill_bytes(&mut ni);
    let pc = ctx.pc;
    let pfs_group = pc
        .lifetimes
        .pfs
        .then(|| sa.suite.map(|s| s.group))
        .flatten();
    let ke = match pfs_group {
        Some(g) => {
            Some(KeyExchange::generate(g, &mut *ctx.rng).map_err(Misbehaviour::KeyExchange)?)
        }
        None => None,
    };
    let pc = ctx.pc;
    let mut sa_payload = super::proposal::tcp_ao_sa_payload(recv_id, &pc.mac_algorithms);
    if let (Some(k), Some(p)) = (&ke, sa_payload.proposals.first_mut()) {
        p.transforms
            .push(Transform::new(TransformType::KE, k.group().0));
    }
    let mut payloads = Vec::new();
    if let Some((_, old_recv)) = old {
        payloads.push(Payload::Notify(NotifyPayload {
            protocol: ProtocolId::TCP_AO,
            spi: vec![old_recv],
            ty: NotifyType::REKEY_SA,
            data: Vec::new(),
        }));
    }
    payloads.push(Payload::Sa(sa_payload));
    payloads.push(Payload::Nonce(ni.clone()));
    if let Some(k) = &ke {
        payloads.push(Payload::Ke(KePayload {
            group: k.group(),
            data: k.public(),
        }));
    }
    payloads.push(Payload::TsI(selectors(pc.local, &pc.tcp_ports)));
    payloads.push(Payload::TsR(selectors(pc.remote.ip(), &pc.tcp_ports)));
    let exclude_options = !pc.include_options;
    if exclude_options {
        payloads.push(notify(NotifyType::TCP_AO_EXCLUDE_OPTIONS, Vec::new()));
    }
    sa.rekey_offer = Some(Box::new(RekeyOffer {
        old,
        recv_id,
        ni,
        ke,
        exclude_options,
    }));
    ctx.enqueue(
        sa,
        ExchangeType::CREATE_CHILD_SA,
        payloads,
        PendingKind::CreateChild,
        now,
    );
    Ok(())
}

/// The responder's side of CREATE_CHILD_SA for TCP-AO.
pub(super) fn on_request(
    ctx: &mut Ctx<'_>,
    now: Instant,
    payloads: Vec<Payload>,
    mut sa: IkeSa,
) -> Fate {
    let reply = match accept_create_child(ctx, &mut sa, &payloads, now) {
        Ok(r) => r,
        Err(e) => {
            let n = e.notify().unwrap_or(NotifyType::NO_PROPOSAL_CHOSEN);
            let peer = ctx.name();
            ctx.out.event(Event::ChildFailed {
                peer,
                error: e,
                by_peer: false,
            });
            vec![notify(n, Vec::new())]
        }
    };
    ctx.respond(&mut sa, ExchangeType::CREATE_CHILD_SA, &reply);
    Fate::Keep(sa)
}

fn accept_create_child(
    ctx: &mut Ctx<'_>,
    sa: &mut IkeSa,
    payloads: &[Payload],
    now: Instant,
) -> Result<Vec<Payload>, IkeError> {
    let offer = payloads
        .find_payload(Payload::as_sa)
        .ok_or(Misbehaviour::MissingPayload(PayloadType::SA))?;
    if super::proposal::first_protocol(offer) != Some(ProtocolId::TCP_AO) {
        return Err(
            NegotiationError::NoProposalChosen("only TCP-AO child SAs are supported").into(),
        );
    }
    let ni = payloads
        .find_payload(Payload::as_nonce)
        .map(<[u8]>::to_vec)
        .ok_or(Misbehaviour::MissingPayload(PayloadType::NONCE))?;
    // REKEY_SA names the MKT by the initiator's RecvID, our SendID.
    let old = match payloads.notify(NotifyType::REKEY_SA) {
        Some(n) => {
            let [spi] = n.spi.as_slice() else {
                return Err(
                    Misbehaviour::Unexpected("REKEY_SA with an SPI that is not 1 octet").into(),
                );
            };
            let found = ctx
                .peer
                .mkts
                .iter()
                .find(|m| m.mkt.send_id == *spi && m.retire_at.is_none())
                .map(|m| (m.mkt.send_id, m.mkt.recv_id));
            match found {
                Some(o) => Some(o),
                None => {
                    return Err(
                        NegotiationError::PeerReported(NotifyType::CHILD_SA_NOT_FOUND).into(),
                    )
                }
            }
        }
        None => None,
    };
    let t = mkts::child_terms(ctx, offer, payloads)?;
    let pc = ctx.pc;
    // PFS: answer a KE of an acceptable group with ours.
    let ke_in = payloads.find_payload(Payload::as_ke);
    let (gir, ke_out) = match ke_in {
        Some(k) if pc.ike_suites.iter().any(|s| s.group == k.group) => {
            let mine =
                KeyExchange::generate(k.group, &mut *ctx.rng).map_err(Misbehaviour::KeyExchange)?;
            let gir = mine.agree(&k.data).map_err(Misbehaviour::KeyExchange)?;
            (Some(gir), Some(mine))
        }
        Some(_) => {
            return Err(NegotiationError::NoProposalChosen("PFS group not acceptable").into())
        }
        None => (None, None),
    };
    let recv_id = mkts::take_recv_id(ctx, t.send_id, now)?;
    let mut nr = vec![0u8; 32];
    ctx.rng.fill_bytes(&mut nr);
    let master_key = mkts::child_master_key(sa, gir.as_ref(), &ni, &nr)?;
    let mkt = t.mkt(recv_id, master_key);
    mkts::add_mkt_record(ctx, sa, mkt, t.ports(), old, false, [ni, nr.clone()], now);
    let mut reply = vec![t.sa_reply(recv_id, ke_out.as_ref()), Payload::Nonce(nr)];
    if let Some(k) = &ke_out {
        reply.push(Payload::Ke(KePayload {
            group: k.group(),
            data: k.public(),
        }));
    }
    reply.extend(t.selector_reply());
    Ok(reply)
}

/// The initiator's side: the answer to our CREATE_CHILD_SA.
pub(super) fn on_response(ctx: &mut Ctx<'_>, now: Instant, payloads: Vec<Payload>, sa: &mut IkeSa) {
    let Some(offer) = sa.rekey_offer.take() else {
        return;
    };
    let result = finish_create_child(ctx, sa, &offer, &payloads, now);
    if let Err(e) = result {
        let reported = match &e {
            IkeError::Negotiation(NegotiationError::PeerReported(n)) => Some(*n),
            _ => None,
        };
        if let (Some(old), Some(NotifyType::CHILD_SA_NOT_FOUND)) = (offer.old, reported) {
            return mkts::mkt_not_found(ctx, old, now);
        }
        let name = ctx.name();
        ctx.out.event(Event::ChildFailed {
            peer: name,
            error: e,
            by_peer: reported.is_some(),
        });
        // Try again later, before the old MKT expires; after
        // TEMPORARY_FAILURE not at a fixed time (RFC 7296 2.25).
        let retry = if reported == Some(NotifyType::TEMPORARY_FAILURE) {
            now + ctx.temporary_failure_wait()
        } else {
            now + ctx.cfg.retry_interval
        };
        if let Some((s, r)) = offer.old {
            if let Some(m) = ctx
                .peer
                .mkts
                .iter_mut()
                .find(|m| (m.mkt.send_id, m.mkt.recv_id) == (s, r))
            {
                if retry < m.expires_at {
                    m.rekey_at = Some(retry);
                }
            }
        }
    }
}

fn finish_create_child(
    ctx: &mut Ctx<'_>,
    sa: &mut IkeSa,
    offer: &RekeyOffer,
    payloads: &[Payload],
    now: Instant,
) -> Result<(), IkeError> {
    if let Some(n) = payloads.error_notify() {
        return Err(NegotiationError::PeerReported(n.ty).into());
    }
    let reply = payloads
        .find_payload(Payload::as_sa)
        .ok_or(Misbehaviour::MissingPayload(PayloadType::SA))?;
    let nr = payloads
        .find_payload(Payload::as_nonce)
        .map(<[u8]>::to_vec)
        .ok_or(Misbehaviour::MissingPayload(PayloadType::NONCE))?;
    let pc = ctx.pc;
    let mut reply_plain = reply.clone();
    if let Some(p) = reply_plain.proposals.first_mut() {
        p.transforms.retain(|t| t.ty != TransformType::KE);
    }
    let (send_id, algorithm) =
        super::proposal::check_tcp_ao_reply(&reply_plain, &pc.mac_algorithms)
            .ok_or(Misbehaviour::BadSelection("TCP-AO proposal"))?;
    let tsi = payloads
        .find_payload(Payload::as_tsi)
        .ok_or(Misbehaviour::MissingPayload(PayloadType::TSI))?;
    let tsr = payloads
        .find_payload(Payload::as_tsr)
        .ok_or(Misbehaviour::MissingPayload(PayloadType::TSR))?;
    let ports = reply_within(tsi, pc.local, &pc.tcp_ports)
        .filter(|_| reply_within(tsr, pc.remote.ip(), &pc.tcp_ports).is_some())
        .ok_or(NegotiationError::TsUnacceptable(
            "narrowed selectors outside the offer",
        ))?;
    let gir = match (&offer.ke, payloads.find_payload(Payload::as_ke)) {
        (Some(mine), Some(theirs)) if theirs.group == mine.group() => Some(
            mine.agree(&theirs.data)
                .map_err(Misbehaviour::KeyExchange)?,
        ),
        (Some(_), _) => return Err(Misbehaviour::BadSelection("PFS key exchange").into()),
        (None, _) => None,
    };
    if mkts::send_id_in_use(ctx, send_id, now) {
        // The responder holds an MKT we refuse: delete it.
        informational::start_child_deletes(ctx, sa, vec![offer.recv_id], now);
        return Err(NegotiationError::NoProposalChosen("the peer's KeyID is in use").into());
    }
    let exclude = offer.exclude_options
        && payloads
            .notify(NotifyType::TCP_AO_EXCLUDE_OPTIONS)
            .is_some();
    let master_key = mkts::child_master_key(sa, gir.as_ref(), &offer.ni, &nr)?;
    let mkt = MasterKeyTuple {
        send_id,
        recv_id: offer.recv_id,
        algorithm,
        include_options: !exclude,
        master_key,
    };
    mkts::add_mkt_record(
        ctx,
        sa,
        mkt,
        ports,
        offer.old,
        true,
        [offer.ni.clone(), nr],
        now,
    );
    Ok(())
}
