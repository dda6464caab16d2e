//! The IKE SA's own maintenance (docs/protocol.md, "IKE SA rekey" and
//! "Liveness"): rekeying it with CREATE_CHILD_SA (RFC 7296 1.3.2, 2.18),
//! the simultaneous-rekey rule of 2.8.2 and the collision answers of 2.25,
//! and liveness checks (1.4, 2.4).
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

use super::endpoint::{notify, Endpoint};
use super::error::{IkeError, Misbehaviour, NegotiationError};
use super::event::{Event, Role};
use super::proposal;
use super::sa::{IkeSa, SaState};
use super::window::PendingKind;
use super::PayloadsExt;
use crate::crypto::{self, IkeKeys, KeyExchange, Secret};
use crate::numbers::{DhGroup, ExchangeType, NotifyType, PayloadType, ProtocolId};
use crate::wire::{DeletePayload, KePayload, Payload};

/// Nonce length sent in a rekey (RFC 7296 2.10).
const NONCE_LEN: usize = 32;

/// How long the redundant IKE SA that the peer created in a collision is
/// kept for the peer's Delete. The peer sends it one round trip after our
/// answer; a Delete that comes later finds no SA and is dropped, and the
/// peer then gives up on it without harm.
const REDUNDANT_SA_WAIT: Duration = Duration::from_secs(30);

/// Our outstanding CREATE_CHILD_SA that rekeys an IKE SA.
pub(crate) struct IkeRekeyOffer {
    /// Our SPI of the new IKE SA.
    spi: u64,
    ni: Vec<u8>,
    ke: KeyExchange,
}

/// How a rekey created an IKE SA.
pub(crate) struct RekeyOrigin {
    /// Local SPI of the SA that was rekeyed.
    pub(super) old: u64,
    /// The exchange's Ni and Nr (RFC 7296 2.8.2).
    nonces: [Vec<u8>; 2],
}

impl RekeyOrigin {
    fn lowest_nonce(&self) -> &[u8] {
        self.nonces.iter().min().map_or(&[], Vec::as_slice)
    }
}

impl Endpoint {
    /// The rekey time of an IKE SA established now: `ike_rekey` minus up to
    /// `IKE_REKEY_JITTER_PERCENT` of it, drawn anew for every SA.
    pub(super) fn ike_rekey_time(&mut self, peer: usize, now: Instant) -> Option<Instant> {
        let base = self.cfg.peers[peer].lifetimes.ike_rekey?;
        let jitter = base * super::config::IKE_REKEY_JITTER_PERCENT / 100;
        Some(now + base.saturating_sub(self.random_below(jitter)))
    }

    /// A random duration in [0, max) (0 when `max` is 0), to the millisecond.
    pub(super) fn random_below(&mut self, max: Duration) -> Duration {
        let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(self.rng.next_u64() % ms)
    }

    /// The wait before trying again after TEMPORARY_FAILURE (RFC 7296 2.25:
    /// not at once): between half and all of `retry_interval`, at random,
    /// so that two sides that refused each other do not meet again.
    pub(super) fn temporary_failure_wait(&mut self) -> Duration {
        let half = self.cfg.retry_interval / 2;
        half + self.random_below(half)
    }

    /// How long a superseded IKE SA waits for its Delete: the peer's whole
    /// retransmission schedule for the rekey request (so that its
    /// retransmissions still get our stored answer) and then for the Delete.
    fn rekeyed_sa_lifetime(&self) -> Duration {
        self.cfg.retransmit.total() * 2
    }

    /// Established, with nothing outstanding or waiting: it may start an
    /// exchange of its own.
    fn sa_is_idle(sa: &IkeSa) -> bool {
        sa.state == SaState::Established
            && sa.window.idle()
            && sa.rekey_offer.is_none()
            && sa.ike_rekey.is_none()
    }

    /// Deadlines of the peer's IKE SA rekeys and liveness checks.
    pub(super) fn sa_deadlines(&self, peer: usize) -> impl Iterator<Item = Instant> + '_ {
        self.sas
            .of_peer(peer)
            .filter(|sa| Self::sa_is_idle(sa))
            .flat_map(move |sa| {
                let liveness = self.cfg.liveness.map(|l| sa.last_received + l);
                [sa.rekey_at, liveness]
            })
            .flatten()
    }

    /// Rekeys the peer's IKE SA now (as when its `ike_rekey` time comes),
    /// or as soon as the outstanding request is answered. Returns false
    /// when there is no established IKE SA with the peer.
    pub fn rekey_ike(&mut self, peer_name: &str, now: Instant) -> Result<bool, IkeError> {
        let peer = self.peer_index(peer_name)?;
        let Some(spi) = self
            .sas
            .of_peer(peer)
            .find(|s| s.state == SaState::Established)
            .map(IkeSa::local_spi)
        else {
            return Ok(false);
        };
        let mark = self.events.len();
        if let Some(sa) = self.sas.get_mut(&spi) {
            if sa.ike_rekey.is_none() {
                sa.rekey_at = Some(now);
            }
        }
        self.handle_sa_timers(peer, now);
        self.finish_input(mark);
        Ok(true)
    }

    /// Starts the peer's due IKE SA rekeys and liveness checks.
    pub(super) fn handle_sa_timers(&mut self, peer: usize, now: Instant) {
        let liveness = self.cfg.liveness;
        let due: Vec<u64> = self
            .sas
            .of_peer(peer)
            .filter(|sa| {
                Self::sa_is_idle(sa)
                    && (sa.rekey_at.is_some_and(|t| t <= now)
                        || liveness.is_some_and(|l| sa.last_received + l <= now))
            })
            .map(IkeSa::local_spi)
            .collect();
        for spi in due {
            let Some(mut sa) = self.sas.remove(&spi) else {
                continue;
            };
            if sa.rekey_at.is_some_and(|t| t <= now) {
                sa.rekey_at = None;
                if let Err(e) = self.start_ike_rekey(&mut sa, None, now) {
                    sa.rekey_at = Some(now + self.cfg.retry_interval);
                    self.events.push_back(Event::IkeRekeyFailed {
                        peer: self.cfg.peers[sa.peer].name.clone(),
                        error: e,
                        by_peer: false,
                    });
                }
            } else {
                // RFC 7296 1.4: an empty INFORMATIONAL request.
                self.enqueue(
                    &mut sa,
                    ExchangeType::INFORMATIONAL,
                    Vec::new(),
                    PendingKind::Liveness,
                    now,
                );
            }
            self.sas.insert(sa);
        }
    }

    /// Sends CREATE_CHILD_SA {SA, Ni, KEi} rekeying `sa` (RFC 7296 1.3.2):
    /// every configured suite, each proposal with our SPI of the new SA,
    /// and a KE payload of `group` (by default the current SA's).
    fn start_ike_rekey(
        &mut self,
        sa: &mut IkeSa,
        group: Option<DhGroup>,
        now: Instant,
    ) -> Result<(), IkeError> {
        let group = group
            .or(sa.suite.map(|s| s.group))
            .ok_or(Misbehaviour::Unexpected("IKE SA rekey before keys"))?;
        let ke = KeyExchange::generate(group, &mut *self.rng).map_err(Misbehaviour::KeyExchange)?;
        let spi = self.new_local_spi(sa.peer);
        let mut ni = vec![0u8; NONCE_LEN];
        self.rng.fill_bytes(&mut ni);
        let pc = &self.cfg.peers[sa.peer];
        let payloads = vec![
            Payload::Sa(proposal::ike_rekey_sa_payload(&pc.ike_suites, spi)),
            Payload::Nonce(ni.clone()),
            Payload::Ke(KePayload {
                group,
                data: ke.public(),
            }),
        ];
        sa.ike_rekey = Some(IkeRekeyOffer { spi, ni, ke });
        self.enqueue(
            sa,
            ExchangeType::CREATE_CHILD_SA,
            payloads,
            PendingKind::RekeyIke,
            now,
        );
        Ok(())
    }

    /// A fresh nonzero local SPI, unused by any IKE SA and by the peer's
    /// outstanding rekey offers. (Another peer's outstanding offer is not
    /// looked at, to keep this O(log n): 64 random bits would have to hit
    /// it in the round trip the offer is out.)
    fn new_local_spi(&mut self, peer: usize) -> u64 {
        loop {
            let spi = self.rng.next_u64();
            let offered = self
                .sas
                .of_peer(peer)
                .any(|s| s.ike_rekey.as_ref().is_some_and(|o| o.spi == spi));
            if spi != 0 && !self.sas.contains_key(&spi) && !offered {
                return spi;
            }
        }
    }

    /// The responder's side of an IKE SA rekey.
    pub(super) fn on_ike_rekey_request(
        &mut self,
        now: Instant,
        payloads: Vec<Payload>,
        mut sa: IkeSa,
    ) {
        let closing = sa.window.pending_kind() == Some(PendingKind::DeleteIke);
        // RFC 7296 2.25.1, 2.25.2, 2.8.2: not while this side creates or
        // rekeys an MKT, nor on an SA already rekeyed or being closed.
        if sa.state != SaState::Established || sa.rekey_offer.is_some() || closing {
            self.respond(
                &mut sa,
                ExchangeType::CREATE_CHILD_SA,
                &[notify(NotifyType::TEMPORARY_FAILURE, Vec::new())],
            );
            self.sas.insert(sa);
            return;
        }
        match self.accept_ike_rekey(&sa, &payloads, now) {
            Ok((reply, mut new)) => {
                self.respond(&mut sa, ExchangeType::CREATE_CHILD_SA, &reply);
                let new_spi = new.local_spi();
                if sa.ike_rekey.is_some() {
                    // Our own rekey of it is outstanding: wait for it.
                    new.state = SaState::Successor;
                    new.expires = Some(now + self.rekeyed_sa_lifetime());
                    self.sas.insert(new);
                } else {
                    self.sas.insert(new);
                    // The peer deletes the old SA.
                    self.adopt_successor(&mut sa, new_spi, now);
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
                self.respond(&mut sa, ExchangeType::CREATE_CHILD_SA, &[reply]);
                self.events.push_back(Event::IkeRekeyFailed {
                    peer: self.cfg.peers[sa.peer].name.clone(),
                    error: e,
                    by_peer: false,
                });
            }
        }
        self.sas.insert(sa);
    }

    /// Chooses a proposal, runs the key exchange and builds the new SA
    /// (responder) and the reply {SA, Nr, KEr}.
    fn accept_ike_rekey(
        &mut self,
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
        let ke_in =
            payloads
                .find_payload(Payload::as_ke)
                .ok_or(NegotiationError::NoProposalChosen(
                    "IKE SA rekey without a KE payload",
                ))?;
        let pc = &self.cfg.peers[sa.peer];
        let (choice, spi_i) = proposal::choose_ike_rekey(offer, &pc.ike_suites, ke_in.group)?;
        let ke = KeyExchange::generate(choice.suite.group, &mut *self.rng)
            .map_err(Misbehaviour::KeyExchange)?;
        let gir = ke.agree(&ke_in.data).map_err(Misbehaviour::KeyExchange)?;
        let mut nr = vec![0u8; NONCE_LEN];
        self.rng.fill_bytes(&mut nr);
        let spi_r = self.new_local_spi(sa.peer);
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
        let new = self.rekeyed_sa(
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
        &mut self,
        old: &IkeSa,
        role: Role,
        (spi_i, spi_r): (u64, u64),
        suite: super::config::IkeSuite,
        keys: IkeKeys,
        nonces: [Vec<u8>; 2],
        now: Instant,
    ) -> IkeSa {
        let rekey_at = self.ike_rekey_time(old.peer, now);
        let [ni, nr] = nonces.clone();
        IkeSa::rekeyed(
            old,
            role,
            (spi_i, spi_r),
            suite,
            keys,
            (ni, nr),
            rekey_at,
            RekeyOrigin {
                old: old.local_spi(),
                nonces,
            },
            now,
        )
    }

    /// The initiator's side: the answer to our rekey of `sa`.
    pub(super) fn on_ike_rekey_response(
        &mut self,
        now: Instant,
        payloads: Vec<Payload>,
        mut sa: IkeSa,
    ) {
        let spi = sa.local_spi();
        let Some(offer) = sa.ike_rekey.take() else {
            self.sas.insert(sa);
            return;
        };
        let new = match self.finish_ike_rekey(&sa, &offer, &payloads, now) {
            Ok(new) => new,
            Err(IkeError::Negotiation(NegotiationError::InvalidKe(g))) if g == offer.ke.group() => {
                let e = NegotiationError::NoProposalChosen("INVALID_KE_PAYLOAD for the group sent");
                return self.ike_rekey_failed(sa, e.into(), now);
            }
            Err(e) => return self.ike_rekey_failed(sa, e, now),
        };
        let new_spi = new.local_spi();
        let ours_lowest = new.rekeyed_from.as_ref().map(|o| o.lowest_nonce().to_vec());
        self.sas.insert(new);
        let Some(passive) = self.passive_successor(sa.peer, spi) else {
            self.adopt_successor(&mut sa, new_spi, now);
            self.send_ike_delete(&mut sa, now);
            self.sas.insert(sa);
            return;
        };
        // RFC 7296 2.8.2: both sides rekeyed; the new SA with the lowest of
        // the four nonces is redundant and deleted by its creator.
        let theirs_lowest = self
            .sas
            .get(&passive)
            .and_then(|p| p.rekeyed_from.as_ref())
            .map(|o| o.lowest_nonce().to_vec());
        let ours_redundant = ours_lowest < theirs_lowest;
        self.events.push_back(Event::IkeRekeyCollision {
            peer: self.cfg.peers[sa.peer].name.clone(),
            kept_ours: !ours_redundant,
        });
        if ours_redundant {
            // The peer's SA survives and the peer deletes the old one.
            self.adopt_successor(&mut sa, passive, now);
            if let Some(mut ours) = self.sas.remove(&new_spi) {
                ours.state = SaState::Rekeyed;
                ours.expires = Some(now + self.rekeyed_sa_lifetime());
                self.send_ike_delete(&mut ours, now);
                self.sas.insert(ours);
            }
        } else {
            // Ours survives; the peer deletes its redundant one. Not for
            // long: if our Delete of the old SA reached the peer before our
            // answer to its rekey, the peer forgot its rekey (2.25.2) and
            // never learns that it created this one.
            self.adopt_successor(&mut sa, new_spi, now);
            self.send_ike_delete(&mut sa, now);
            if let Some(p) = self.sas.get_mut(&passive) {
                p.state = SaState::Rekeyed;
                p.expires = Some(now + REDUNDANT_SA_WAIT);
            }
        }
        self.sas.insert(sa);
    }

    /// Checks the answer {SA, Nr, KEr} and builds the new SA (initiator).
    fn finish_ike_rekey(
        &mut self,
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
        let pc = &self.cfg.peers[sa.peer];
        let reply = payloads
            .find_payload(Payload::as_sa)
            .ok_or(Misbehaviour::MissingPayload(PayloadType::SA))?;
        let (suite, spi_r) =
            proposal::check_ike_rekey_reply(reply, &pc.ike_suites, offer.ke.group())
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
        Ok(self.rekeyed_sa(
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
    pub(super) fn ike_rekey_failed(&mut self, mut sa: IkeSa, error: IkeError, now: Instant) {
        let spi = sa.local_spi();
        sa.ike_rekey = None;
        let peer_name = self.cfg.peers[sa.peer].name.clone();
        if let Some(passive) = self.passive_successor(sa.peer, spi) {
            self.events.push_back(Event::IkeRekeyCollision {
                peer: peer_name,
                kept_ours: false,
            });
            self.adopt_successor(&mut sa, passive, now);
            self.sas.insert(sa);
            return;
        }
        let by_peer = matches!(
            error,
            IkeError::Negotiation(NegotiationError::PeerReported(_))
        );
        match &error {
            IkeError::Negotiation(NegotiationError::InvalidKe(g))
                if self.cfg.peers[sa.peer]
                    .ike_suites
                    .iter()
                    .any(|s| s.group == *g) =>
            {
                // RFC 7296 1.2: again with the group the peer wants.
                let g = *g;
                if let Err(e) = self.start_ike_rekey(&mut sa, Some(g), now) {
                    sa.rekey_at = Some(now + self.cfg.retry_interval);
                    self.events.push_back(Event::IkeRekeyFailed {
                        peer: peer_name,
                        error: e,
                        by_peer: false,
                    });
                }
            }
            IkeError::Negotiation(NegotiationError::PeerReported(
                NotifyType::TEMPORARY_FAILURE,
            )) => {
                // RFC 7296 2.25: wait, then try again.
                sa.rekey_at = Some(now + self.temporary_failure_wait());
                self.events.push_back(Event::IkeRekeyFailed {
                    peer: peer_name,
                    error,
                    by_peer,
                });
            }
            _ => {
                sa.rekey_at = Some(now + self.cfg.retry_interval);
                self.events.push_back(Event::IkeRekeyFailed {
                    peer: peer_name,
                    error,
                    by_peer,
                });
            }
        }
        self.send_queued(&mut sa, now);
        self.sas.insert(sa);
    }

    /// The SA that the peer's rekey of the SA with local SPI `old` created
    /// while ours was outstanding.
    pub(super) fn passive_successor(&self, peer: usize, old: u64) -> Option<u64> {
        self.sas
            .of_peer(peer)
            .find(|s| {
                s.state == SaState::Successor
                    && s.rekeyed_from.as_ref().is_some_and(|o| o.old == old)
            })
            .map(IkeSa::local_spi)
    }

    /// `new` (in the table) replaces `old` (taken out of it): it becomes the
    /// peer's established SA and inherits the MKTs and the waiting requests
    /// (RFC 7296 2.8); `old` waits for its Delete.
    pub(super) fn adopt_successor(&mut self, old: &mut IkeSa, new_spi: u64, now: Instant) {
        let old_spi = old.local_spi();
        old.state = SaState::Rekeyed;
        old.successor = Some(new_spi);
        old.rekey_at = None;
        old.expires = Some(now + self.rekeyed_sa_lifetime());
        let Some(mut new) = self.sas.remove(&new_spi) else {
            return;
        };
        new.state = SaState::Established;
        new.expires = None;
        new.announced = true;
        // Never an MKT exchange under way here: a rekey of the IKE SA is
        // neither started nor accepted while one is (RFC 7296 2.25.1).
        new.window.extend_queue(old.window.take_queue());
        for m in &mut self.peers[old.peer].mkts {
            if m.ike_spi == old_spi {
                m.ike_spi = new_spi;
            }
        }
        self.events.push_back(Event::IkeSaRekeyed {
            peer: self.cfg.peers[old.peer].name.clone(),
            old_spi_i: old.spi_i,
            old_spi_r: old.spi_r,
            spi_i: new.spi_i,
            spi_r: new.spi_r,
            role: new.role,
            suite: new.suite.unwrap_or(super::config::IkeSuite::DEFAULT),
        });
        self.send_queued(&mut new, now);
        self.sas.insert(new);
    }

    /// INFORMATIONAL {Delete(IKE)}, retransmitted like any request; the
    /// last request on `sa` (RFC 7296 2.8).
    fn send_ike_delete(&mut self, sa: &mut IkeSa, now: Instant) {
        let del = Payload::Delete(DeletePayload {
            protocol: ProtocolId::IKE,
            spi_size: 0,
            spis: Vec::new(),
        });
        self.enqueue(
            sa,
            ExchangeType::INFORMATIONAL,
            vec![del],
            PendingKind::DeleteIke,
            now,
        );
    }

    /// Removes a Rekeyed SA (deleted by either side, or never deleted).
    /// An unanswered INFORMATIONAL of ours on it (Delete payloads of MKTs)
    /// is sent again on its successor.
    pub(super) fn retire_rekeyed_sa(&mut self, mut sa: IkeSa, now: Instant) {
        let requeue = sa
            .window
            .complete()
            .filter(|p| p.kind == PendingKind::Informational)
            .and_then(|p| p.requeue);
        if let Some(mut succ) = sa.successor.and_then(|s| self.sas.remove(&s)) {
            if let Some((exchange, payloads)) = requeue {
                succ.window
                    .queue((exchange, payloads, PendingKind::Informational));
            }
            succ.window.extend_queue(sa.window.take_queue());
            self.send_queued(&mut succ, now);
            self.sas.insert(succ);
        }
        self.remove_sa(sa, "rekeyed");
    }
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
    let seed = crypto::rekey_skeyseed(old_suite.prf, &old_keys.sk_d, gir.as_bytes(), ni, nr);
    crypto::derive_ike_keys(suite.prf, suite.encr, &seed, ni, nr, spi_i, spi_r)
        .map_err(|e| Misbehaviour::KeyExchange(e).into())
}
