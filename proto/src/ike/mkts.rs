//! One MKT lifecycle (docs/protocol.md, "MKT lifecycle") and one KeyID
//! space per peer: recording a new MKT with its rekey time (jitter) and
//! hard lifetime, superseding the MKTs of older IKE SAs, the simultaneous
//! rekey rule of RFC 7296 2.8.1, CHILD_SA_NOT_FOUND (2.25), KeyID
//! allocation in [`crate::mkt::NEGOTIATED_KEY_IDS`] with reservations, the
//! terms of a TCP-AO child SA, its KEYMAT, and the peer's key set in socket
//! order.
//!
//! Each side schedules the rekey of every MKT at `rekey - random(0, jitter)`
//! after its creation, so that two peers (and thousands of peers) seldom
//! rekey together. When they do, both exchanges complete and each side then
//! holds two successors of the same MKT; the one created by the exchange
//! that used the lowest of the four nonces is deleted by the side that
//! initiated that exchange (2.8.1), so both keep the same survivor.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::config::PortRange;
use super::context::Ctx;
use super::error::{IkeError, Misbehaviour, NegotiationError};
use super::event::{Event, MktView, Role};
use super::lifecycle;
use super::peer::{MktRecord, PeerRuntime};
use super::sa::{IkeSa, SaState};
use super::traffic::{narrow, notify, selectors};
use super::PayloadsExt;
use crate::crypto::{self, KeyExchange, Secret};
use crate::mkt::{MacAlgorithm, MasterKeyTuple, MASTER_KEY_LEN};
use crate::numbers::{NotifyType, PayloadType, ProtocolId, TransformType};
use crate::wire::{Payload, Proposal, SaPayload, Transform};

/// [`Event::MktDeleted`]'s reason for an MKT retired after its rekey.
pub(super) const RETIRED_REKEYED: &str = "rekeyed";
/// ... for the successor this side deletes after a rekey collision
/// (RFC 7296 2.8.1).
pub(super) const RETIRED_REDUNDANT: &str = "redundant after a rekey collision";
/// ... for an MKT of a replaced IKE SA, or one the peer no longer holds.
pub(super) const RETIRED_SUPERSEDED: &str = "superseded";
/// ... for an MKT retired through [`super::Endpoint::retire_mkt`].
pub(super) const RETIRED_ON_REQUEST: &str = "retired on request";

/// The rekey time of a new MKT.
fn rekey_time(ctx: &mut Ctx<'_>, now: Instant) -> Instant {
    let l = *ctx.pc.lifetimes;
    let jitter_ms = u64::try_from(l.jitter.as_millis()).unwrap_or(u64::MAX);
    let minus = if jitter_ms == 0 {
        0
    } else {
        ctx.rng.next_u64() % jitter_ms
    };
    now + l.rekey.saturating_sub(Duration::from_millis(minus))
}

/// Records a new MKT and reports it. A rekey (`rekey_of`) stops the old
/// MKT's own rekey; a fresh MKT retires every MKT of older IKE SAs.
#[allow(clippy::too_many_arguments)]
pub(super) fn add_mkt_record(
    ctx: &mut Ctx<'_>,
    sa: &IkeSa,
    mkt: MasterKeyTuple,
    ports: Vec<super::config::PortRange>,
    rekey_of: Option<(u8, u8)>,
    by_us: bool,
    nonces: [Vec<u8>; 2],
    now: Instant,
) {
    let overlap = ctx.pc.lifetimes.overlap;
    let hard = ctx.pc.lifetimes.hard;
    let rekey_at = Some(rekey_time(ctx, now));
    let ports: std::sync::Arc<[super::config::PortRange]> = if *ports == *ctx.pc.tcp_ports {
        ctx.pc.tcp_ports.clone()
    } else {
        ports.into()
    };
    let nonces = (!nonces.iter().all(Vec::is_empty)).then(|| Box::new(nonces));
    let ike_spi = match sa.role {
        Role::Initiator => sa.spi_i,
        Role::Responder => sa.spi_r,
    };
    let mut superseded = Vec::new();
    for m in &mut ctx.peer.mkts {
        if Some((m.mkt.send_id, m.mkt.recv_id)) == rekey_of {
            m.rekey_at = None;
        } else if rekey_of.is_none() && m.ike_spi != ike_spi && m.retire_at.is_none() {
            // Keys of a replaced IKE SA, or of the peer before it
            // restarted: it replaces them too, or lost them. No Delete
            // (the peer may not know them), no rekey.
            m.rekey_at = None;
            m.retire_at = Some(now + overlap);
            m.retire_with_delete = false;
            m.retire_reason = RETIRED_SUPERSEDED;
            superseded.push((m.mkt.send_id, m.mkt.recv_id));
        }
    }
    ctx.peer.set_next_child_attempt(None);
    let name = ctx.name();
    ctx.out.event(Event::MktCreated {
        peer: name.clone(),
        spi_i: sa.spi_i,
        spi_r: sa.spi_r,
        mkt: mkt.clone(),
        ports: ports.to_vec(),
        created_at: now,
        rekey_at,
        expires_at: now + hard,
    });
    let reason = if sa.peer_initial_contact {
        "the peer restarted (INITIAL_CONTACT)"
    } else {
        "replaced by an MKT of a newer IKE SA"
    };
    for (send_id, recv_id) in superseded {
        ctx.out.event(Event::MktSuperseded {
            peer: name.clone(),
            send_id,
            recv_id,
            retire_at: now + overlap,
            reason,
        });
    }
    // Room for exactly one more: a peer has one MKT, two during a rollover.
    ctx.peer.mkts.reserve_exact(1);
    ctx.peer.mkts.push(MktRecord {
        mkt,
        ports,
        created_at: now,
        ike_spi,
        spi_i: sa.spi_i,
        spi_r: sa.spi_r,
        rekey_at,
        expires_at: now + hard,
        retire_at: None,
        retire_with_delete: false,
        retire_reason: RETIRED_SUPERSEDED,
        rekey_of,
        by_us,
        nonces,
    });
    if let Some(old) = rekey_of {
        ctx.out.negotiations.note_mkt_rekey();
        resolve_collision(ctx, old, now);
    }
}

pub(super) fn add_mkt(
    ctx: &mut Ctx<'_>,
    sa: &mut IkeSa,
    mkt: MasterKeyTuple,
    ports: Vec<PortRange>,
    now: Instant,
) {
    // The nonces decide between two successors of one MKT
    // (`resolve_collision`); the first MKT of an IKE SA succeeds none.
    let nonces = [Vec::new(), Vec::new()];
    let by_us = sa.role == Role::Initiator;
    add_mkt_record(ctx, sa, mkt, ports, None, by_us, nonces, now);
}

/// RFC 7296 2.8.1: of two successors of the same MKT, the one created
/// with the lowest of the four nonces is closed by its creator.
fn resolve_collision(ctx: &mut Ctx<'_>, old: (u8, u8), now: Instant) {
    let succ: Vec<usize> = ctx
        .peer
        .mkts
        .iter()
        .enumerate()
        .filter(|(_, m)| m.rekey_of == Some(old) && m.retire_at.is_none())
        .map(|(i, _)| i)
        .collect();
    let ours = succ.iter().copied().find(|&i| ctx.peer.mkts[i].by_us);
    let theirs = succ.iter().copied().find(|&i| !ctx.peer.mkts[i].by_us);
    let (Some(ours), Some(theirs)) = (ours, theirs) else {
        // No collision: the initiator of the rekey retires the old MKT.
        if let Some(i) = succ.first().copied() {
            if ctx.peer.mkts[i].by_us {
                let overlap = ctx.pc.lifetimes.overlap;
                if let Some(m) = ctx
                    .peer
                    .mkts
                    .iter_mut()
                    .find(|m| (m.mkt.send_id, m.mkt.recv_id) == old)
                {
                    m.retire_at = Some(now + overlap);
                    m.retire_with_delete = true;
                    m.retire_reason = RETIRED_REKEYED;
                }
            }
        }
        return;
    };
    let mkts = &ctx.peer.mkts;
    let lowest = |m: &MktRecord| {
        m.nonces
            .as_ref()
            .and_then(|n| n.iter().min().cloned())
            .unwrap_or_default()
    };
    let ours_lowest = lowest(&mkts[ours]);
    let ours_loses = ours_lowest < lowest(&mkts[theirs]);
    let name = ctx.name();
    ctx.out.event(Event::RekeyCollision {
        peer: name,
        kept_ours: !ours_loses,
    });
    let overlap = ctx.pc.lifetimes.overlap;
    if ours_loses {
        // We created the redundant MKT: delete it with a Delete payload
        // after the overlap, not at once, because the peer may already
        // have moved a connection to it (its RNext).
        let m = &mut ctx.peer.mkts[ours];
        m.retire_at = Some(now + overlap);
        m.retire_with_delete = true;
        m.retire_reason = RETIRED_REDUNDANT;
        m.rekey_at = None;
        // The survivor's creator (the peer) retires the old MKT.
        if let Some(o) = ctx
            .peer
            .mkts
            .iter_mut()
            .find(|m| (m.mkt.send_id, m.mkt.recv_id) == old)
        {
            o.retire_at = None;
            o.retire_with_delete = false;
        }
    } else if let Some(o) = ctx
        .peer
        .mkts
        .iter_mut()
        .find(|m| (m.mkt.send_id, m.mkt.recv_id) == old)
    {
        o.retire_at = Some(now + overlap);
        o.retire_with_delete = true;
        o.retire_reason = RETIRED_REKEYED;
    }
}

/// RFC 7296 2.25: the peer answered our rekey of `old` with
/// CHILD_SA_NOT_FOUND, so it no longer holds the MKT (it restarted, or
/// deleted it). The MKT is retired after the overlap without a Delete
/// and not rekeyed again; with no other live MKT, the IKE SA's
/// initiator creates a fresh one at once (`needs_fresh_mkt`).
pub(super) fn mkt_not_found(ctx: &mut Ctx<'_>, old: (u8, u8), now: Instant) {
    let overlap = ctx.pc.lifetimes.overlap;
    let Some(m) = ctx
        .peer
        .mkts
        .iter_mut()
        .find(|m| (m.mkt.send_id, m.mkt.recv_id) == old && m.retire_at.is_none())
    else {
        // Already superseded (a colliding rekey, 2.8.1): nothing to do.
        return;
    };
    m.rekey_at = None;
    m.retire_at = Some(now + overlap);
    m.retire_with_delete = false;
    m.retire_reason = RETIRED_SUPERSEDED;
    ctx.out.event(Event::MktSuperseded {
        peer: ctx.name(),
        send_id: old.0,
        recv_id: old.1,
        retire_at: now + overlap,
        reason: "the peer no longer holds it (CHILD_SA_NOT_FOUND)",
    });
    if !ctx.peer.mkts.iter().any(|m| m.retire_at.is_none()) {
        ctx.peer.set_next_child_attempt(Some(now));
    }
}

/// How long the KeyIDs of an MKT that ended are avoided for new RecvIDs:
/// segments signed with the old key may still be in flight or queued, and
/// a capture or a peer's counters tell the keys apart only by KeyID.
pub(super) const RECENT_KEY_IDS_AVOIDED: Duration = Duration::from_secs(120);
/// At most this many ended KeyID pairs are remembered per peer.
const RECENT_KEY_IDS_KEPT: usize = 16;

/// Remembers the KeyIDs of an MKT that ended now (deleted, expired, or
/// found expired after a restart), so that new RecvIDs avoid them for
/// [`RECENT_KEY_IDS_AVOIDED`]. O(1).
pub(super) fn note_ended(peer: &mut PeerRuntime, send_id: u8, recv_id: u8, now: Instant) {
    let recent = &mut peer.rare_mut().recent_key_ids;
    if recent.len() >= RECENT_KEY_IDS_KEPT {
        recent.pop_front();
    }
    recent.push_back((send_id, recv_id, now));
}

/// A RecvID for a new MKT with the peer: in [`crate::mkt::NEGOTIATED_KEY_IDS`], at random,
/// not the RecvID of a live MKT with the peer nor of a reservation
/// ([`Endpoint::reserve_key_ids`]), and, while any other is free, neither
/// KeyID of an MKT that ended in the last [`RECENT_KEY_IDS_AVOIDED`].
pub(super) fn allocate_recv_id(ctx: &mut Ctx<'_>, now: Instant) -> Option<u8> {
    let p = &*ctx.peer;
    let used: Vec<u8> = p
        .mkts
        .iter()
        .map(|m| m.mkt.recv_id)
        .chain(
            p.rare()
                .reservations
                .iter()
                .filter(|r| r.until > now)
                .map(|r| r.recv_id),
        )
        .collect();
    let recent: Vec<u8> = p
        .rare()
        .recent_key_ids
        .iter()
        .filter(|(_, _, ended)| now.saturating_duration_since(*ended) < RECENT_KEY_IDS_AVOIDED)
        .flat_map(|(send_id, recv_id, _)| [*send_id, *recv_id])
        .collect();
    let free: Vec<u8> = crate::mkt::NEGOTIATED_KEY_IDS
        .filter(|id| !used.contains(id))
        .collect();
    let fresh: Vec<u8> = free
        .iter()
        .copied()
        .filter(|id| !recent.contains(id))
        .collect();
    let pool = if fresh.is_empty() { free } else { fresh };
    if pool.is_empty() {
        return None;
    }
    let i = (ctx.rng.next_u32() as usize) % pool.len();
    pool.get(i).copied()
}

/// Whether a SendID the peer chose (the SPI of its TCP-AO proposal or
/// reply) cannot be used: a live MKT with the peer or a reservation has
/// it. Linux refuses a second key with the same SendID for one peer.
pub(super) fn send_id_in_use(ctx: &Ctx<'_>, send_id: u8, now: Instant) -> bool {
    let p = &*ctx.peer;
    p.mkts.iter().any(|m| m.mkt.send_id == send_id)
        || p.rare()
            .reservations
            .iter()
            .any(|r| r.until > now && r.send_id == send_id)
}

/// Our RecvID for a new MKT whose SendID the peer chose: refused when
/// that SendID is in use (or reserved), or no KeyID is free.
pub(super) fn take_recv_id(ctx: &mut Ctx<'_>, send_id: u8, now: Instant) -> Result<u8, IkeError> {
    if send_id_in_use(ctx, send_id, now) {
        return Err(NegotiationError::NoProposalChosen(
            "the initiator's KeyID is in use with this peer",
        )
        .into());
    }
    Ok(
        allocate_recv_id(ctx, now).ok_or(NegotiationError::NoProposalChosen(
            "no free KeyID for this peer",
        ))?,
    )
}

/// KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr), first 32 octets (RFC 7296 2.17).
/// What the responder accepts of a TCP-AO child SA offer, in IKE_AUTH or
/// CREATE_CHILD_SA alike.
pub(super) struct ChildTerms {
    /// The accepted proposal's number.
    num: u8,
    /// The initiator's RecvID: our SendID.
    pub(super) send_id: u8,
    algorithm: MacAlgorithm,
    /// The initiator's and our side of the narrowed traffic selectors.
    ports_i: Vec<PortRange>,
    ports_r: Vec<PortRange>,
    /// TCP options excluded from the MAC (both sides asked for it).
    exclude: bool,
    remote_ip: IpAddr,
    local_ip: IpAddr,
}

impl ChildTerms {
    /// The MKT these terms give with our RecvID and the derived key.
    pub(super) fn mkt(&self, recv_id: u8, master_key: Secret) -> MasterKeyTuple {
        MasterKeyTuple {
            send_id: self.send_id,
            recv_id,
            algorithm: self.algorithm,
            include_options: !self.exclude,
            master_key,
        }
    }

    /// The ports the MKT is for: both selectors' ports, each once.
    pub(super) fn ports(&self) -> Vec<PortRange> {
        let mut ports = self.ports_i.clone();
        for p in &self.ports_r {
            if !ports.contains(p) {
                ports.push(*p);
            }
        }
        ports
    }

    /// The SA payload of the answer (with a KE transform when `ke` is PFS).
    pub(super) fn sa_reply(&self, recv_id: u8, ke: Option<&KeyExchange>) -> Payload {
        let mut transforms = vec![Transform::new(
            TransformType::INTEG,
            crate::mkt::integ_id(self.algorithm).0,
        )];
        if let Some(k) = ke {
            transforms.push(Transform::new(TransformType::KE, k.group().0));
        }
        Payload::Sa(SaPayload {
            proposals: vec![Proposal {
                num: self.num,
                protocol: ProtocolId::TCP_AO,
                spi: vec![recv_id],
                transforms,
            }],
        })
    }

    /// The narrowed selectors of the answer, and the exclude-options notify.
    pub(super) fn selector_reply(&self) -> Vec<Payload> {
        let mut out = vec![
            Payload::TsI(selectors(self.remote_ip, &self.ports_i)),
            Payload::TsR(selectors(self.local_ip, &self.ports_r)),
        ];
        if self.exclude {
            out.push(notify(NotifyType::TCP_AO_EXCLUDE_OPTIONS, Vec::new()));
        }
        out
    }
}

/// The responder's choice of algorithm, SendID and ports in a TCP-AO
/// child SA `offer` (which must be a TCP-AO proposal).
pub(super) fn child_terms(
    ctx: &Ctx<'_>,
    offer: &SaPayload,
    payloads: &[Payload],
) -> Result<ChildTerms, IkeError> {
    let pc = ctx.pc;
    let (num, send_id, algorithm) = super::proposal::choose_tcp_ao(offer, &pc.mac_algorithms)?;
    let tsi = payloads.find_payload(Payload::as_tsi);
    let tsr = payloads.find_payload(Payload::as_tsr);
    let (Some(tsi), Some(tsr)) = (tsi, tsr) else {
        return Err(Misbehaviour::MissingPayload(PayloadType::TSI).into());
    };
    let ports_i = narrow(tsi, pc.remote.ip(), &pc.tcp_ports);
    let ports_r = narrow(tsr, pc.local, &pc.tcp_ports);
    if ports_i.is_empty() || ports_r.is_empty() {
        return Err(NegotiationError::TsUnacceptable("no address or TCP port in common").into());
    }
    let exclude = !pc.include_options
        && payloads
            .notify(NotifyType::TCP_AO_EXCLUDE_OPTIONS)
            .is_some();
    Ok(ChildTerms {
        num,
        send_id,
        algorithm,
        ports_i,
        ports_r,
        exclude,
        remote_ip: pc.remote.ip(),
        local_ip: pc.local,
    })
}

/// KEYMAT for an MKT: the first octets of prf+(SK_d, [g^ir new] | Ni | Nr).
pub(super) fn child_master_key(
    sa: &IkeSa,
    gir: Option<&Secret>,
    ni: &[u8],
    nr: &[u8],
) -> Result<Secret, IkeError> {
    let (Some(suite), Some(keys)) = (sa.suite, sa.keys.as_ref()) else {
        return Err(Misbehaviour::Unexpected("child SA before keys").into());
    };
    crypto::child_keymat(
        suite.prf,
        keys.sk_d(),
        gir.map(Secret::as_bytes),
        ni,
        nr,
        MASTER_KEY_LEN,
    )
    .map_err(|e| Misbehaviour::KeyExchange(e).into())
}

/// The peer's MKTs in socket order: retiring ones first, then live ones
/// from oldest to newest. O(n²) in the peer's few MKTs (a rekey has at
/// most two successors).
pub(super) fn views(peer: &PeerRuntime) -> Vec<MktView> {
    let ids = |m: &MktRecord| (m.mkt.send_id, m.mkt.recv_id);
    let mut mkts: Vec<MktView> = peer
        .mkts
        .iter()
        .map(|m| MktView {
            replaced: m.retire_at.is_some()
                || peer
                    .mkts
                    .iter()
                    .any(|s| s.rekey_of == Some(ids(m)) && s.retire_at.is_none()),
            mkt: m.mkt.clone(),
            ports: m.ports.to_vec(),
            created_at: m.created_at,
            spi_i: m.spi_i,
            spi_r: m.spi_r,
            rekey_at: m.rekey_at,
            expires_at: m.expires_at,
            retire_at: m.retire_at,
        })
        .collect();
    mkts.sort_by_key(|m| (m.retire_at.is_none(), m.created_at));
    mkts
}

/// The peer's MKT timers: deadlines this side must act on.
pub(super) fn mkt_deadlines<'a>(ctx: &'a Ctx<'_>) -> impl Iterator<Item = Instant> + 'a {
    let p = &*ctx.peer;
    let sa = lifecycle::established_sa(ctx);
    let sa_free = sa.is_some_and(|s| !s.window.busy());
    let fresh = sa.filter(|s| needs_fresh_mkt(ctx, s)).map(|s| {
        p.rare()
            .next_child_attempt
            .unwrap_or(s.established_at.unwrap_or(s.created))
    });
    p.mkts
        .iter()
        .flat_map(move |m| {
            let rekey = if sa_free { m.rekey_at } else { None };
            let retire = if sa_free || !m.retire_with_delete {
                m.retire_at
            } else {
                None
            };
            [rekey, retire, Some(m.expires_at)]
        })
        .chain(std::iter::once(fresh))
        .flatten()
}

/// An established IKE SA we initiated, idle, with a TCP-AO capable peer
/// but no live MKT (it expired, or the first child failed): this side
/// creates a fresh MKT with CREATE_CHILD_SA. Only the IKE SA's
/// initiator does, so that the two sides never create two at once.
pub(super) fn needs_fresh_mkt(ctx: &Ctx<'_>, sa: &IkeSa) -> bool {
    let pc = ctx.pc;
    sa.role == Role::Initiator
        && sa.state() == SaState::Established
        && !sa.window.busy()
        && sa.rekey_offer.is_none()
        && sa.peer_tcp_ao
        && ctx.cfg.advertise_tcp_ao
        && !pc.mac_algorithms.is_empty()
        && !ctx.peer.mkts.iter().any(|m| m.retire_at.is_none())
}
