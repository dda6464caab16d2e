//! The MKT lifecycle (docs/protocol.md, "MKT lifecycle"): rekeying with
//! CREATE_CHILD_SA (RFC 7296 1.3.3, 2.17), the simultaneous-rekey rule of
//! RFC 7296 2.8.1, retirement of superseded MKTs with Delete payloads, and
//! the hard lifetime. MKTs the peer no longer holds (a fresh MKT on a newer
//! IKE SA, for example after INITIAL_CONTACT, or CHILD_SA_NOT_FOUND for a
//! rekey, 2.25) are retired after the overlap without a Delete.
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
use super::endpoint::{narrow, notify, reply_within, selectors, Endpoint, MktRecord};
use super::error::{IkeError, Misbehaviour, NegotiationError};
use super::event::{Event, Role};
use super::sa::{IkeSa, SaState};
use super::window::PendingKind;
use super::PayloadsExt;
use crate::crypto::{self, KeyExchange, Secret};
use crate::mkt::{MacAlgorithm, MasterKeyTuple, MASTER_KEY_LEN};
use crate::numbers::{ExchangeType, NotifyType, PayloadType, ProtocolId, TransformType};
use crate::wire::{
    DeletePayload, KePayload, NotifyPayload, Payload, Proposal, SaPayload, Transform,
};

/// Our outstanding CREATE_CHILD_SA request.
pub(crate) struct RekeyOffer {
    /// (send_id, recv_id) of the MKT being rekeyed; `None` for a new MKT.
    old: Option<(u8, u8)>,
    recv_id: u8,
    ni: Vec<u8>,
    ke: Option<KeyExchange>,
    exclude_options: bool,
}

impl Endpoint {
    /// The rekey time of a new MKT.
    fn rekey_time(&mut self, peer: usize, now: Instant) -> Instant {
        let l = self.cfg.peers[peer].lifetimes;
        let jitter_ms = u64::try_from(l.jitter.as_millis()).unwrap_or(u64::MAX);
        let minus = if jitter_ms == 0 {
            0
        } else {
            self.rng.next_u64() % jitter_ms
        };
        now + l.rekey.saturating_sub(Duration::from_millis(minus))
    }

    /// Records a new MKT and reports it. A rekey (`rekey_of`) stops the old
    /// MKT's own rekey; a fresh MKT retires every MKT of older IKE SAs.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_mkt_record(
        &mut self,
        sa: &IkeSa,
        mkt: MasterKeyTuple,
        ports: Vec<super::config::PortRange>,
        rekey_of: Option<(u8, u8)>,
        by_us: bool,
        nonces: [Vec<u8>; 2],
        now: Instant,
    ) {
        let peer = sa.peer;
        let overlap = self.cfg.peers[peer].lifetimes.overlap;
        let hard = self.cfg.peers[peer].lifetimes.hard;
        let rekey_at = Some(self.rekey_time(peer, now));
        let ike_spi = match sa.role {
            Role::Initiator => sa.spi_i,
            Role::Responder => sa.spi_r,
        };
        let mut superseded = Vec::new();
        for m in &mut self.peers[peer].mkts {
            if Some((m.mkt.send_id, m.mkt.recv_id)) == rekey_of {
                m.rekey_at = None;
            } else if rekey_of.is_none() && m.ike_spi != ike_spi && m.retire_at.is_none() {
                // Keys of a replaced IKE SA, or of the peer before it
                // restarted: it replaces them too, or lost them. No Delete
                // (the peer may not know them), no rekey.
                m.rekey_at = None;
                m.retire_at = Some(now + overlap);
                m.retire_with_delete = false;
                superseded.push((m.mkt.send_id, m.mkt.recv_id));
            }
        }
        self.peers[peer].next_child_attempt = None;
        let name = self.cfg.peers[peer].name.clone();
        self.events.push_back(Event::MktCreated {
            peer: name.clone(),
            spi_i: sa.spi_i,
            spi_r: sa.spi_r,
            mkt: mkt.clone(),
            ports: ports.clone(),
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
            self.events.push_back(Event::MktSuperseded {
                peer: name.clone(),
                send_id,
                recv_id,
                retire_at: now + overlap,
                reason,
            });
        }
        self.peers[peer].mkts.push(MktRecord {
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
            rekey_of,
            by_us,
            nonces,
        });
        if let Some(old) = rekey_of {
            self.resolve_collision(peer, old, now);
        }
    }

    /// RFC 7296 2.8.1: of two successors of the same MKT, the one created
    /// with the lowest of the four nonces is closed by its creator.
    fn resolve_collision(&mut self, peer: usize, old: (u8, u8), now: Instant) {
        let succ: Vec<usize> = self.peers[peer]
            .mkts
            .iter()
            .enumerate()
            .filter(|(_, m)| m.rekey_of == Some(old) && m.retire_at.is_none())
            .map(|(i, _)| i)
            .collect();
        let ours = succ
            .iter()
            .copied()
            .find(|&i| self.peers[peer].mkts[i].by_us);
        let theirs = succ
            .iter()
            .copied()
            .find(|&i| !self.peers[peer].mkts[i].by_us);
        let (Some(ours), Some(theirs)) = (ours, theirs) else {
            // No collision: the initiator of the rekey retires the old MKT.
            if let Some(i) = succ.first().copied() {
                if self.peers[peer].mkts[i].by_us {
                    let overlap = self.cfg.peers[peer].lifetimes.overlap;
                    if let Some(m) = self.peers[peer]
                        .mkts
                        .iter_mut()
                        .find(|m| (m.mkt.send_id, m.mkt.recv_id) == old)
                    {
                        m.retire_at = Some(now + overlap);
                        m.retire_with_delete = true;
                    }
                }
            }
            return;
        };
        let mkts = &self.peers[peer].mkts;
        let lowest = |m: &MktRecord| m.nonces.iter().min().cloned().unwrap_or_default();
        let ours_lowest = lowest(&mkts[ours]);
        let ours_loses = ours_lowest < lowest(&mkts[theirs]);
        let name = self.cfg.peers[peer].name.clone();
        self.events.push_back(Event::RekeyCollision {
            peer: name,
            kept_ours: !ours_loses,
        });
        let overlap = self.cfg.peers[peer].lifetimes.overlap;
        if ours_loses {
            // We created the redundant MKT: delete it with a Delete payload
            // after the overlap, not at once, because the peer may already
            // have moved a connection to it (its RNext).
            let m = &mut self.peers[peer].mkts[ours];
            m.retire_at = Some(now + overlap);
            m.retire_with_delete = true;
            m.rekey_at = None;
            // The survivor's creator (the peer) retires the old MKT.
            if let Some(o) = self.peers[peer]
                .mkts
                .iter_mut()
                .find(|m| (m.mkt.send_id, m.mkt.recv_id) == old)
            {
                o.retire_at = None;
                o.retire_with_delete = false;
            }
        } else if let Some(o) = self.peers[peer]
            .mkts
            .iter_mut()
            .find(|m| (m.mkt.send_id, m.mkt.recv_id) == old)
        {
            o.retire_at = Some(now + overlap);
            o.retire_with_delete = true;
        }
    }

    /// Starts a CREATE_CHILD_SA on `sa` rekeying `old` (or creating a new MKT).
    pub(super) fn start_rekey(
        &mut self,
        sa: &mut IkeSa,
        old: Option<(u8, u8)>,
        now: Instant,
    ) -> Result<(), IkeError> {
        let peer = sa.peer;
        let recv_id =
            self.allocate_recv_id(peer, now)
                .ok_or(NegotiationError::NoProposalChosen(
                    "no free KeyID for this peer",
                ))?;
        let mut ni = vec![0u8; 32];
        self.rng.fill_bytes(&mut ni);
        let pc = &self.cfg.peers[peer];
        let pfs_group = pc
            .lifetimes
            .pfs
            .then(|| sa.suite.map(|s| s.group))
            .flatten();
        let ke = match pfs_group {
            Some(g) => {
                Some(KeyExchange::generate(g, &mut *self.rng).map_err(Misbehaviour::KeyExchange)?)
            }
            None => None,
        };
        let pc = &self.cfg.peers[peer];
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
        sa.rekey_offer = Some(RekeyOffer {
            old,
            recv_id,
            ni,
            ke,
            exclude_options,
        });
        self.enqueue(
            sa,
            ExchangeType::CREATE_CHILD_SA,
            payloads,
            PendingKind::CreateChild,
            now,
        );
        Ok(())
    }

    /// The responder's side of CREATE_CHILD_SA for TCP-AO.
    pub(super) fn on_create_child_request(
        &mut self,
        now: Instant,
        payloads: Vec<Payload>,
        mut sa: IkeSa,
    ) {
        let reply = match self.accept_create_child(&mut sa, &payloads, now) {
            Ok(r) => r,
            Err(e) => {
                let n = e.notify().unwrap_or(NotifyType::NO_PROPOSAL_CHOSEN);
                let peer = self.cfg.peers[sa.peer].name.clone();
                self.events.push_back(Event::ChildFailed {
                    peer,
                    error: e,
                    by_peer: false,
                });
                vec![notify(n, Vec::new())]
            }
        };
        self.respond(&mut sa, ExchangeType::CREATE_CHILD_SA, &reply);
        self.sas.insert(sa);
    }

    fn accept_create_child(
        &mut self,
        sa: &mut IkeSa,
        payloads: &[Payload],
        now: Instant,
    ) -> Result<Vec<Payload>, IkeError> {
        let peer = sa.peer;
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
                    return Err(Misbehaviour::Unexpected(
                        "REKEY_SA with an SPI that is not 1 octet",
                    )
                    .into());
                };
                let found = self.peers[peer]
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
        let t = self.child_terms(peer, offer, payloads)?;
        let pc = &self.cfg.peers[peer];
        // PFS: answer a KE of an acceptable group with ours.
        let ke_in = payloads.find_payload(Payload::as_ke);
        let (gir, ke_out) = match ke_in {
            Some(k) if pc.ike_suites.iter().any(|s| s.group == k.group) => {
                let mine = KeyExchange::generate(k.group, &mut *self.rng)
                    .map_err(Misbehaviour::KeyExchange)?;
                let gir = mine.agree(&k.data).map_err(Misbehaviour::KeyExchange)?;
                (Some(gir), Some(mine))
            }
            Some(_) => {
                return Err(NegotiationError::NoProposalChosen("PFS group not acceptable").into())
            }
            None => (None, None),
        };
        let recv_id = self.take_recv_id(peer, t.send_id, now)?;
        let mut nr = vec![0u8; 32];
        self.rng.fill_bytes(&mut nr);
        let master_key = child_master_key(sa, gir.as_ref(), &ni, &nr)?;
        let mkt = t.mkt(recv_id, master_key);
        self.add_mkt_record(sa, mkt, t.ports(), old, false, [ni, nr.clone()], now);
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
    pub(super) fn on_create_child_response(
        &mut self,
        now: Instant,
        payloads: Vec<Payload>,
        sa: &mut IkeSa,
    ) {
        let Some(offer) = sa.rekey_offer.take() else {
            return;
        };
        let peer = sa.peer;
        let result = self.finish_create_child(sa, &offer, &payloads, now);
        if let Err(e) = result {
            let reported = match &e {
                IkeError::Negotiation(NegotiationError::PeerReported(n)) => Some(*n),
                _ => None,
            };
            if let (Some(old), Some(NotifyType::CHILD_SA_NOT_FOUND)) = (offer.old, reported) {
                return self.mkt_not_found(peer, old, now);
            }
            let name = self.cfg.peers[peer].name.clone();
            self.events.push_back(Event::ChildFailed {
                peer: name,
                error: e,
                by_peer: reported.is_some(),
            });
            // Try again later, before the old MKT expires; after
            // TEMPORARY_FAILURE not at a fixed time (RFC 7296 2.25).
            let retry = if reported == Some(NotifyType::TEMPORARY_FAILURE) {
                now + self.temporary_failure_wait()
            } else {
                now + self.cfg.retry_interval
            };
            if let Some((s, r)) = offer.old {
                if let Some(m) = self.peers[peer]
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

    /// RFC 7296 2.25: the peer answered our rekey of `old` with
    /// CHILD_SA_NOT_FOUND, so it no longer holds the MKT (it restarted, or
    /// deleted it). The MKT is retired after the overlap without a Delete
    /// and not rekeyed again; with no other live MKT, the IKE SA's
    /// initiator creates a fresh one at once (`needs_fresh_mkt`).
    fn mkt_not_found(&mut self, peer: usize, old: (u8, u8), now: Instant) {
        let overlap = self.cfg.peers[peer].lifetimes.overlap;
        let Some(m) = self.peers[peer]
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
        self.events.push_back(Event::MktSuperseded {
            peer: self.cfg.peers[peer].name.clone(),
            send_id: old.0,
            recv_id: old.1,
            retire_at: now + overlap,
            reason: "the peer no longer holds it (CHILD_SA_NOT_FOUND)",
        });
        if !self.peers[peer].mkts.iter().any(|m| m.retire_at.is_none()) {
            self.peers[peer].next_child_attempt = Some(now);
        }
    }

    fn finish_create_child(
        &mut self,
        sa: &mut IkeSa,
        offer: &RekeyOffer,
        payloads: &[Payload],
        now: Instant,
    ) -> Result<(), IkeError> {
        let peer = sa.peer;
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
        let pc = &self.cfg.peers[peer];
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
        if self.send_id_in_use(peer, send_id, now) {
            // The responder holds an MKT we refuse: delete it.
            self.send_child_deletes(sa, vec![offer.recv_id], now);
            return Err(NegotiationError::NoProposalChosen("the peer's KeyID is in use").into());
        }
        let exclude = offer.exclude_options
            && payloads
                .notify(NotifyType::TCP_AO_EXCLUDE_OPTIONS)
                .is_some();
        let master_key = child_master_key(sa, gir.as_ref(), &offer.ni, &nr)?;
        let mkt = MasterKeyTuple {
            send_id,
            recv_id: offer.recv_id,
            algorithm,
            include_options: !exclude,
            master_key,
        };
        self.add_mkt_record(sa, mkt, ports, offer.old, true, [offer.ni.clone(), nr], now);
        Ok(())
    }

    /// Queues an INFORMATIONAL with a Delete payload for our RecvIDs.
    pub(super) fn send_child_deletes(&mut self, sa: &mut IkeSa, recv_ids: Vec<u8>, now: Instant) {
        let del = Payload::Delete(DeletePayload {
            protocol: ProtocolId::TCP_AO,
            spi_size: 1,
            spis: recv_ids.into_iter().map(|r| vec![r]).collect(),
        });
        self.enqueue(
            sa,
            ExchangeType::INFORMATIONAL,
            vec![del],
            PendingKind::Informational,
            now,
        );
    }

    /// The peer's MKT timers: deadlines this side must act on.
    pub(super) fn mkt_deadlines(&self, peer: usize) -> impl Iterator<Item = Instant> + '_ {
        let p = &self.peers[peer];
        let sa = self.established_sa(peer);
        let sa_free = sa.is_some_and(|s| !s.window.busy());
        let fresh = sa.filter(|s| self.needs_fresh_mkt(s)).map(|s| {
            p.next_child_attempt
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
    fn needs_fresh_mkt(&self, sa: &IkeSa) -> bool {
        let pc = &self.cfg.peers[sa.peer];
        sa.role == Role::Initiator
            && sa.state == SaState::Established
            && !sa.window.busy()
            && sa.rekey_offer.is_none()
            && sa.peer_tcp_ao
            && self.cfg.advertise_tcp_ao
            && !pc.mac_algorithms.is_empty()
            && !self.peers[sa.peer]
                .mkts
                .iter()
                .any(|m| m.retire_at.is_none())
    }

    pub(super) fn established_sa(&self, peer: usize) -> Option<&IkeSa> {
        self.sas
            .of_peer(peer)
            .filter(|s| s.state == SaState::Established)
            .max_by_key(|s| s.created)
    }

    /// Acts on the peer's MKT timers: hard expiry, retirement, and rekeys.
    pub(super) fn handle_mkt_timers(&mut self, peer: usize, now: Instant) {
        {
            let name = self.cfg.peers[peer].name.clone();
            // Hard lifetime.
            let expired: Vec<MktRecord> = {
                let mkts = &mut self.peers[peer].mkts;
                let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(mkts)
                    .into_iter()
                    .partition(|m| m.expires_at <= now);
                *mkts = keep;
                gone
            };
            for m in expired {
                self.events.push_back(Event::MktDeleted {
                    peer: name.clone(),
                    send_id: m.mkt.send_id,
                    recv_id: m.mkt.recv_id,
                    reason: "hard lifetime expired",
                });
            }
            let sa_spi = self.established_sa(peer).map(|s| s.local_spi());
            let mut sa = sa_spi.and_then(|spi| self.sas.remove(&spi));
            // Retirement.
            let due: Vec<usize> = self.peers[peer]
                .mkts
                .iter()
                .enumerate()
                .filter(|(_, m)| m.retire_at.is_some_and(|t| t <= now))
                .map(|(i, _)| i)
                .collect();
            let mut deletes = Vec::new();
            for i in due.into_iter().rev() {
                let with_delete = self.peers[peer].mkts[i].retire_with_delete;
                if with_delete && sa.as_ref().is_none_or(|s| s.window.busy()) {
                    // Wait for the window; without an IKE SA retire locally.
                    if sa.is_some() {
                        continue;
                    }
                }
                let m = self.peers[peer].mkts.remove(i);
                if with_delete && sa.is_some() {
                    deletes.push(m.mkt.recv_id);
                }
                self.events.push_back(Event::MktDeleted {
                    peer: name.clone(),
                    send_id: m.mkt.send_id,
                    recv_id: m.mkt.recv_id,
                    reason: if m.rekey_of.is_some() && m.by_us {
                        "redundant after a rekey collision"
                    } else {
                        "superseded"
                    },
                });
            }
            if let Some(s) = sa.as_mut() {
                if !deletes.is_empty() {
                    self.send_child_deletes(s, deletes, now);
                }
                // A fresh MKT when there is none.
                let due = self.peers[peer].next_child_attempt.is_none_or(|t| t <= now);
                if due && self.needs_fresh_mkt(s) {
                    self.peers[peer].next_child_attempt = Some(now + self.cfg.retry_interval);
                    if let Err(e) = self.start_rekey(s, None, now) {
                        self.events.push_back(Event::ChildFailed {
                            peer: name.clone(),
                            error: e,
                            by_peer: false,
                        });
                    }
                }
                // Rekeys, one at a time per IKE SA.
                if !s.window.busy() && s.rekey_offer.is_none() {
                    let due = self.peers[peer]
                        .mkts
                        .iter()
                        .find(|m| m.rekey_at.is_some_and(|t| t <= now) && m.retire_at.is_none())
                        .map(|m| (m.mkt.send_id, m.mkt.recv_id));
                    if let Some(old) = due {
                        if let Some(m) = self.peers[peer]
                            .mkts
                            .iter_mut()
                            .find(|m| (m.mkt.send_id, m.mkt.recv_id) == old)
                        {
                            m.rekey_at = None;
                        }
                        if let Err(e) = self.start_rekey(s, Some(old), now) {
                            self.events.push_back(Event::ChildFailed {
                                peer: name.clone(),
                                error: e,
                                by_peer: false,
                            });
                            // Again later, not never.
                            let retry = now + self.cfg.retry_interval;
                            if let Some(m) = self.peers[peer]
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
            }
            if let Some(s) = sa {
                self.sas.insert(s);
            }
        }
    }

    /// Deletes an MKT now (after the driver confirmed that every socket
    /// moved to its successor), telling the peer with a Delete payload.
    pub fn retire_mkt(
        &mut self,
        peer_name: &str,
        send_id: u8,
        recv_id: u8,
        now: Instant,
    ) -> Result<(), IkeError> {
        let peer = self.peer_index(peer_name)?;
        self.sas.touch(peer);
        if let Some(m) = self.peers[peer]
            .mkts
            .iter_mut()
            .find(|m| (m.mkt.send_id, m.mkt.recv_id) == (send_id, recv_id))
        {
            m.retire_at = Some(now);
            m.retire_with_delete = true;
        }
        let mark = self.events.len();
        self.handle_mkt_timers(peer, now);
        self.finish_input(mark);
        Ok(())
    }

    /// Starts a rekey of the peer's newest MKT now (`aoctl rekey`).
    pub fn rekey(&mut self, peer_name: &str, now: Instant) -> Result<bool, IkeError> {
        let peer = self.peer_index(peer_name)?;
        self.sas.touch(peer);
        let newest = self.peers[peer]
            .mkts
            .iter_mut()
            .filter(|m| m.retire_at.is_none())
            .max_by_key(|m| m.created_at);
        match newest {
            Some(m) => {
                m.rekey_at = Some(now);
                let mark = self.events.len();
                self.handle_mkt_timers(peer, now);
                self.finish_input(mark);
                Ok(true)
            }
            None => Ok(false),
        }
    }
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

impl Endpoint {
    /// The responder's choice of algorithm, SendID and ports in a TCP-AO
    /// child SA `offer` (which must be a TCP-AO proposal).
    pub(super) fn child_terms(
        &self,
        peer: usize,
        offer: &SaPayload,
        payloads: &[Payload],
    ) -> Result<ChildTerms, IkeError> {
        let pc = &self.cfg.peers[peer];
        let (num, send_id, algorithm) = super::proposal::choose_tcp_ao(offer, &pc.mac_algorithms)?;
        let tsi = payloads.find_payload(Payload::as_tsi);
        let tsr = payloads.find_payload(Payload::as_tsr);
        let (Some(tsi), Some(tsr)) = (tsi, tsr) else {
            return Err(Misbehaviour::MissingPayload(PayloadType::TSI).into());
        };
        let ports_i = narrow(tsi, pc.remote.ip(), &pc.tcp_ports);
        let ports_r = narrow(tsr, pc.local, &pc.tcp_ports);
        if ports_i.is_empty() || ports_r.is_empty() {
            return Err(
                NegotiationError::TsUnacceptable("no address or TCP port in common").into(),
            );
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

    /// Our RecvID for a new MKT whose SendID the peer chose: refused when
    /// that SendID is in use (or reserved), or no KeyID is free.
    pub(super) fn take_recv_id(
        &mut self,
        peer: usize,
        send_id: u8,
        now: Instant,
    ) -> Result<u8, IkeError> {
        if self.send_id_in_use(peer, send_id, now) {
            return Err(NegotiationError::NoProposalChosen(
                "the initiator's KeyID is in use with this peer",
            )
            .into());
        }
        Ok(self
            .allocate_recv_id(peer, now)
            .ok_or(NegotiationError::NoProposalChosen(
                "no free KeyID for this peer",
            ))?)
    }
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
        &keys.sk_d,
        gir.map(Secret::as_bytes),
        ni,
        nr,
        MASTER_KEY_LEN,
    )
    .map_err(|e| Misbehaviour::KeyExchange(e).into())
}
