//! The IKE_AUTH exchange (RFC 7296 1.2, 2.15): PSK or signature (RFC 7427)
//! authentication of both sides, INITIAL_CONTACT (2.4), and the first TCP-AO child SA or none
//! (RFC 6023).

use std::net::SocketAddr;
use std::time::Instant;

use subtle::ConstantTimeEq;

use super::config::{Identity, PeerKey};
use super::context::{Ctx, Fate};
use super::error::{IkeError, Misbehaviour, NegotiationError};
use super::event::Event;
use super::group::MemberIdentity;
use super::proposal;
use super::sa::{ChildOffer, IkeSa, Phase};
use super::traffic::{notify, reply_within, selectors};
use super::window::PendingKind;
use super::PayloadsExt;
use super::{cert, informational, lifecycle, mkts};
use crate::crypto::{self, Secret};
use crate::mkt::MasterKeyTuple;
use crate::numbers::{AuthMethod, CertEncoding, ExchangeType, NotifyType, PayloadType, ProtocolId};
use crate::wire::{AuthPayload, CertPayload, IdPayload, ParsedMessage, Payload, SaPayload};

pub(super) fn start(ctx: &mut Ctx<'_>, sa: &mut IkeSa, now: Instant) -> Result<(), IkeError> {
    let pc = ctx.pc;
    let idi = IdPayload {
        id_type: pc.local_id.id_type,
        data: pc.local_id.data.to_vec(),
    };
    let auth = local_auth(ctx, sa, true, &idi)?;
    let mut payloads = vec![Payload::IdI(idi)];
    payloads.extend(cert_payloads(ctx, &sa.hs().peer_certreq));
    payloads.extend(certreq_payload(ctx));
    let other_established = ctx.sas.iter().any(IkeSa::is_authenticated);
    if !other_established {
        payloads.push(notify(NotifyType::INITIAL_CONTACT, Vec::new()));
    }
    // A group member known by a name pattern: IDr is optional (RFC 7296
    // 3.5) and a pattern is no identity, so none is sent.
    let pattern = matches!(ctx.member_rule, Some(MemberIdentity::Fqdn(p)) if p.starts_with("*."));
    if !pattern {
        payloads.push(Payload::IdR(IdPayload {
            id_type: pc.remote_id.id_type,
            data: pc.remote_id.data.to_vec(),
        }));
    }
    payloads.push(Payload::Auth(auth));
    let wants_child = ctx.cfg.advertise_tcp_ao && !pc.mac_algorithms.is_empty();
    ctx.peer.tcp_ao_capable = Some(sa.peer_tcp_ao);
    let mut child_offer = None;
    if wants_child && sa.peer_tcp_ao {
        let recv_id = mkts::allocate_recv_id(ctx, now).ok_or(
            NegotiationError::NoProposalChosen("no free KeyID for this peer"),
        )?;
        let pc = ctx.pc;
        payloads.push(Payload::Sa(proposal::tcp_ao_sa_payload(
            recv_id,
            &pc.mac_algorithms,
        )));
        payloads.push(Payload::TsI(selectors(pc.local, &pc.tcp_ports)));
        payloads.push(Payload::TsR(selectors(pc.remote.ip(), &pc.tcp_ports)));
        let exclude_options = !pc.include_options;
        if exclude_options {
            payloads.push(notify(NotifyType::TCP_AO_EXCLUDE_OPTIONS, Vec::new()));
        }
        child_offer = Some(ChildOffer {
            recv_id,
            exclude_options,
        });
    } else if sa.peer_childless {
        if !sa.peer_tcp_ao {
            ctx.out
                .events
                .push_back(Event::PeerNotCapable { peer: ctx.name() });
        }
    } else {
        return Err(NegotiationError::NotCapable.into());
    }
    let (id, bytes) = sa.request(ExchangeType::IKE_AUTH, &payloads)?;
    sa.phase = Phase::AuthSent { child_offer };
    ctx.send_request(sa, id, bytes, PendingKind::Auth, now);
    Ok(())
}

/// The octets an AUTH covers (RFC 7296 2.15): the side's IKE_SA_INIT
/// message, the other side's nonce, and prf(SK_px, RestOfIDPayload).
fn signed_octets(sa: &IkeSa, for_initiator: bool, id: &IdPayload) -> Option<Vec<u8>> {
    let suite = sa.suite?;
    let keys = sa.keys.as_ref()?;
    let (message, nonce, sk_p) = if for_initiator {
        (&sa.hs().init_request, &sa.hs().nr, keys.sk_pi())
    } else {
        (&sa.hs().init_response, &sa.hs().ni, keys.sk_pr())
    };
    let maced_id = suite.prf.prf(sk_p, &id.body());
    let mut signed = Vec::with_capacity(message.len() + nonce.len() + maced_id.len());
    signed.extend_from_slice(message);
    signed.extend_from_slice(nonce);
    signed.extend_from_slice(maced_id.as_bytes());
    Some(signed)
}

/// The PSK AUTH value over the signed octets (RFC 7296 2.15).
fn psk_value(ctx: &Ctx<'_>, sa: &IkeSa, signed: &[u8]) -> Option<Secret> {
    let suite = sa.suite?;
    Some(crypto::psk_auth(suite.prf, ctx.pc.psk.as_bytes(), signed))
}

/// This side's AUTH payload: the PSK MIC, or a signature with the
/// configured key (RFC 7427, or RFC 4754 toward a peer that announced no
/// SIGNATURE_HASH_ALGORITHMS).
fn local_auth(
    ctx: &mut Ctx<'_>,
    sa: &IkeSa,
    for_initiator: bool,
    id: &IdPayload,
) -> Result<AuthPayload, IkeError> {
    let signed =
        signed_octets(sa, for_initiator, id).ok_or(Misbehaviour::Unexpected("AUTH before keys"))?;
    let pc = ctx.pc;
    let Some(sig) = &pc.signature else {
        let v = psk_value(ctx, sa, &signed).ok_or(Misbehaviour::Unexpected("AUTH before keys"))?;
        return Ok(AuthPayload {
            method: AuthMethod::SHARED_KEY_MIC,
            data: v.as_bytes().to_vec(),
        });
    };
    let key = &sig.private_key;
    match key.sign_auth(&signed, sa.hs().peer_sig_hashes.as_deref(), &mut *ctx.rng) {
        Some((method, data)) => Ok(AuthPayload { method, data }),
        None => Err(NegotiationError::AuthenticationFailed(format!(
            "this side's {} key needs the peer to announce hash {} in \
             SIGNATURE_HASH_ALGORITHMS (RFC 7427 4), and it announced {}",
            key.scheme(),
            key.scheme().hash_id(),
            match &sa.hs().peer_sig_hashes {
                None => "none".to_string(),
                Some(h) => format!("{h:?}"),
            }
        ))
        .into()),
    }
}

/// The CA hashes of the X.509 CERTREQ payloads among `payloads`.
pub(super) fn certreq_hashes(payloads: &[Payload]) -> Vec<u8> {
    payloads
        .iter()
        .filter_map(Payload::as_certreq)
        .filter(|c| c.encoding == CertEncoding::X509_SIGNATURE)
        .flat_map(|c| c.data.iter().copied())
        .collect()
}

/// This side's CERT payloads (RFC 7296 3.6): its certificate, then the
/// intermediates, honouring the peer's CERTREQ (`certreq`, 3.7): the chain
/// stops before the first intermediate the peer names as a CA it trusts.
fn cert_payloads(ctx: &Ctx<'_>, certreq: &[u8]) -> Vec<Payload> {
    let Some(sig) = &ctx.pc.signature else {
        return Vec::new();
    };
    let chain = &sig.certificates;
    let end = (1..chain.len())
        .find(|&k| {
            cert::spki_sha1(&chain[k]).is_some_and(|h| certreq.chunks_exact(20).any(|c| c == h))
        })
        .unwrap_or(chain.len());
    chain[..end]
        .iter()
        .map(|c| {
            Payload::Cert(CertPayload {
                encoding: CertEncoding::X509_SIGNATURE,
                data: c.clone(),
            })
        })
        .collect()
}

/// CERTREQ naming the CAs this side trusts for the peer (RFC 7296 3.7).
pub(super) fn certreq_payload(ctx: &Ctx<'_>) -> Option<Payload> {
    match &ctx.pc.signature.as_ref()?.peer {
        PeerKey::Certificate(anchors) => Some(Payload::CertReq(CertPayload {
            encoding: CertEncoding::X509_SIGNATURE,
            data: anchors.certreq_hashes(),
        })),
        PeerKey::PublicKey(_) => None,
    }
}

/// The peer's public key: configured, or from its validated certificate.
fn peer_key(
    ctx: &Ctx<'_>,
    who: &str,
    key: &PeerKey,
    id: &IdPayload,
    payloads: &[Payload],
    now: Instant,
) -> Result<crate::crypto::sig::PublicKey, String> {
    let anchors = match key {
        PeerKey::PublicKey(k) => return Ok(k.clone()),
        PeerKey::Certificate(a) => a,
    };
    let mut certs = payloads
        .iter()
        .filter_map(Payload::as_cert)
        .filter(|c| c.encoding == CertEncoding::X509_SIGNATURE)
        .map(|c| c.data.clone());
    let Some(end_entity) = certs.next() else {
        return Err(format!(
            "the {who} sent no X.509 certificate (CERT payload)"
        ));
    };
    let intermediates: Vec<Vec<u8>> = certs.collect();
    let identity = Identity {
        id_type: id.id_type,
        data: id.data.as_slice().into(),
    };
    anchors
        .verify_peer(&end_entity, &intermediates, ctx.wall_clock(now), &identity)
        .map_err(|e| format!("the {who}'s certificate is refused: {e}"))
}

/// Checks the peer's AUTH payload; the error says why it failed.
fn check_auth(
    ctx: &Ctx<'_>,
    sa: &IkeSa,
    for_initiator: bool,
    id: &IdPayload,
    auth: &AuthPayload,
    payloads: &[Payload],
    now: Instant,
) -> Result<(), String> {
    let who = if for_initiator {
        "initiator"
    } else {
        "responder"
    };
    let signed =
        signed_octets(sa, for_initiator, id).ok_or_else(|| "AUTH before keys".to_string())?;
    match (&ctx.pc.signature, auth.method) {
        (None, AuthMethod::SHARED_KEY_MIC) => {
            let ok = psk_value(ctx, sa, &signed)
                .is_some_and(|v| bool::from(v.as_bytes().ct_eq(&auth.data)));
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "the {who}'s AUTH does not verify (a different PSK?)"
                ))
            }
        }
        (None, m) => Err(format!(
            "the {who} authenticated by AUTH method {m}, but this peer is configured for a PSK"
        )),
        (Some(_), AuthMethod::SHARED_KEY_MIC) => Err(format!(
            "the {who} authenticated with a PSK, but this peer is configured for signatures"
        )),
        (Some(s), m) => peer_key(ctx, who, &s.peer, id, payloads, now)?
            .verify_auth(m, &auth.data, &signed)
            .map_err(|e| format!("the {who}'s AUTH is refused: {e}")),
    }
}

pub(super) fn on_request(
    ctx: &mut Ctx<'_>,
    now: Instant,
    payloads: Vec<Payload>,
    mut sa: IkeSa,
) -> Fate {
    for p in &payloads {
        if let Payload::Unknown {
            ty, critical: true, ..
        } = p
        {
            ctx.respond(
                &mut sa,
                ExchangeType::IKE_AUTH,
                &[notify(NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD, vec![ty.0])],
            );
            return lifecycle::fail(
                ctx,
                sa,
                Misbehaviour::UnsupportedCritical(*ty).into(),
                false,
                now,
            );
        }
    }
    let idi = payloads.find_payload(Payload::as_idi).cloned();
    let auth = payloads.find_payload(Payload::as_auth).cloned();
    let (Some(idi), Some(auth)) = (idi, auth) else {
        ctx.respond(
            &mut sa,
            ExchangeType::IKE_AUTH,
            &[notify(NotifyType::INVALID_SYNTAX, Vec::new())],
        );
        return lifecycle::fail(
            ctx,
            sa,
            Misbehaviour::MissingPayload(PayloadType::AUTH).into(),
            false,
            now,
        );
    };
    let checked = match identity_check(ctx, "initiator", &idi) {
        Ok(()) => check_auth(ctx, &sa, true, &idi, &auth, &payloads, now),
        Err(why) => Err(why),
    };
    if let Err(why) = checked {
        ctx.respond(
            &mut sa,
            ExchangeType::IKE_AUTH,
            &[notify(NotifyType::AUTHENTICATION_FAILED, Vec::new())],
        );
        return lifecycle::fail(
            ctx,
            sa,
            NegotiationError::AuthenticationFailed(why).into(),
            false,
            now,
        );
    }
    let pc = ctx.pc;
    let idr = IdPayload {
        id_type: pc.local_id.id_type,
        data: pc.local_id.data.to_vec(),
    };
    let my_auth = match local_auth(ctx, &sa, false, &idr) {
        Ok(a) => a,
        Err(e) => {
            ctx.respond(
                &mut sa,
                ExchangeType::IKE_AUTH,
                &[notify(NotifyType::AUTHENTICATION_FAILED, Vec::new())],
            );
            return lifecycle::fail(ctx, sa, e, false, now);
        }
    };
    // RFC 7296 2.4: the peer holds no other IKE SA with us (it
    // restarted); `establish` deletes ours locally.
    sa.peer_initial_contact = payloads.notify(NotifyType::INITIAL_CONTACT).is_some();
    ctx.peer.tcp_ao_capable = Some(sa.peer_tcp_ao);
    lifecycle::establish(ctx, &mut sa, now);
    let mut reply = vec![Payload::IdR(idr)];
    reply.extend(cert_payloads(ctx, &certreq_hashes(&payloads)));
    reply.push(Payload::Auth(my_auth));
    let child_sa = payloads.find_payload(Payload::as_sa);
    match child_sa {
        None => {
            if !sa.peer_tcp_ao {
                ctx.out
                    .events
                    .push_back(Event::PeerNotCapable { peer: ctx.name() });
            }
        }
        Some(offer) => match accept_child(ctx, &mut sa, offer, &payloads, now) {
            Ok(child_payloads) => reply.extend(child_payloads),
            Err(e) => {
                if let Some(n) = e.notify() {
                    reply.push(notify(n, Vec::new()));
                }
                lifecycle::child_failed(ctx, e, false, now);
            }
        },
    }
    ctx.respond(&mut sa, ExchangeType::IKE_AUTH, &reply);
    lifecycle::authenticated(&mut sa);
    Fate::Keep(sa)
}

/// The responder's side of the TCP-AO child SA in IKE_AUTH.
fn accept_child(
    ctx: &mut Ctx<'_>,
    sa: &mut IkeSa,
    offer: &SaPayload,
    payloads: &[Payload],
    now: Instant,
) -> Result<Vec<Payload>, IkeError> {
    if !ctx.cfg.advertise_tcp_ao || proposal::first_protocol(offer) != Some(ProtocolId::TCP_AO) {
        return Err(
            NegotiationError::NoProposalChosen("only TCP-AO child SAs are supported").into(),
        );
    }
    let t = mkts::child_terms(ctx, offer, payloads)?;
    let recv_id = mkts::take_recv_id(ctx, t.send_id, now)?;
    let master_key = mkts::child_master_key(sa, None, &sa.hs().ni, &sa.hs().nr)?;
    mkts::add_mkt(ctx, sa, t.mkt(recv_id, master_key), t.ports(), now);
    let mut reply = vec![t.sa_reply(recv_id, None)];
    reply.extend(t.selector_reply());
    Ok(reply)
}

pub(super) fn on_response(
    ctx: &mut Ctx<'_>,
    now: Instant,
    from: SocketAddr,
    datagram: &[u8],
    msg: &ParsedMessage,
    sa: IkeSa,
) -> Fate {
    let (mut sa, payloads) =
        match ctx.unprotect_or_drop(sa, from, datagram, msg, now, "IKE_AUTH response") {
            Ok(x) => x,
            Err(fate) => return fate,
        };
    sa.window.complete();
    if let Some(n) = payloads.notify(NotifyType::AUTHENTICATION_FAILED) {
        let e = NegotiationError::PeerReported(n.ty);
        return lifecycle::fail(ctx, sa, e.into(), true, now);
    }
    let idr = payloads.find_payload(Payload::as_idr);
    let auth = payloads.find_payload(Payload::as_auth);
    let (Some(idr), Some(auth)) = (idr, auth) else {
        if let Some(n) = payloads.error_notify() {
            return lifecycle::fail(
                ctx,
                sa,
                NegotiationError::PeerReported(n.ty).into(),
                true,
                now,
            );
        }
        return lifecycle::fail(
            ctx,
            sa,
            Misbehaviour::MissingPayload(PayloadType::AUTH).into(),
            false,
            now,
        );
    };
    let checked = match identity_check(ctx, "responder", idr) {
        Ok(()) => check_auth(ctx, &sa, false, idr, auth, &payloads, now),
        Err(why) => Err(why),
    };
    if let Err(why) = checked {
        // RFC 7296 2.21.2: tell the responder in a separate INFORMATIONAL.
        if let Ok((_, bytes)) = sa.request(
            ExchangeType::INFORMATIONAL,
            &[notify(NotifyType::AUTHENTICATION_FAILED, Vec::new())],
        ) {
            ctx.send_all(sa.remote, &bytes);
        }
        return lifecycle::fail(
            ctx,
            sa,
            NegotiationError::AuthenticationFailed(why).into(),
            false,
            now,
        );
    }
    // INITIAL_CONTACT may come in the response too (RFC 7296 2.4).
    sa.peer_initial_contact = payloads.notify(NotifyType::INITIAL_CONTACT).is_some();
    let child_offer = match &mut sa.phase {
        Phase::AuthSent { child_offer } => child_offer.take(),
        _ => None,
    };
    lifecycle::establish(ctx, &mut sa, now);
    if let Some(offer) = child_offer {
        let pc = ctx.pc;
        let sa_reply = payloads.find_payload(Payload::as_sa);
        let tsi = payloads.find_payload(Payload::as_tsi);
        let tsr = payloads.find_payload(Payload::as_tsr);
        let child = match (sa_reply, tsi, tsr) {
            (Some(s), Some(tsi), Some(tsr)) => {
                match proposal::check_tcp_ao_reply(s, &pc.mac_algorithms) {
                    None => Err(IkeError::from(Misbehaviour::BadSelection(
                        "TCP-AO proposal",
                    ))),
                    Some((send_id, alg)) => {
                        let ports_i = reply_within(tsi, pc.local, &pc.tcp_ports);
                        let ports_r = reply_within(tsr, pc.remote.ip(), &pc.tcp_ports);
                        match (ports_i, ports_r) {
                            (Some(ports), Some(_)) if !mkts::send_id_in_use(ctx, send_id, now) => {
                                Ok((send_id, alg, ports))
                            }
                            (Some(_), Some(_)) => Err(NegotiationError::NoProposalChosen(
                                "the peer's KeyID is in use",
                            )
                            .into()),
                            _ => Err(NegotiationError::TsUnacceptable(
                                "narrowed selectors outside the offer",
                            )
                            .into()),
                        }
                    }
                }
            }
            _ => Err(match payloads.error_notify() {
                Some(n) => NegotiationError::PeerReported(n.ty).into(),
                None => Misbehaviour::MissingPayload(PayloadType::SA).into(),
            }),
        };
        match child {
            Ok((send_id, algorithm, ports)) => {
                let exclude = offer.exclude_options
                    && payloads
                        .notify(NotifyType::TCP_AO_EXCLUDE_OPTIONS)
                        .is_some();
                match mkts::child_master_key(&sa, None, &sa.hs().ni, &sa.hs().nr) {
                    Ok(master_key) => {
                        let mkt = MasterKeyTuple {
                            send_id,
                            recv_id: offer.recv_id,
                            algorithm,
                            include_options: !exclude,
                            master_key,
                        };
                        mkts::add_mkt(ctx, &mut sa, mkt, ports, now);
                    }
                    Err(e) => lifecycle::child_failed(ctx, e, false, now),
                }
            }
            Err(e) => {
                let by_peer = matches!(e, IkeError::Negotiation(NegotiationError::PeerReported(_)));
                if !by_peer {
                    // The responder may hold an MKT we refuse: delete it.
                    informational::start_child_deletes(ctx, &mut sa, vec![offer.recv_id], now);
                }
                lifecycle::child_failed(ctx, e, by_peer, now);
            }
        }
    }
    lifecycle::authenticated(&mut sa);
    Fate::Keep(sa)
}

/// Whether the peer's identity is the one configured (a peer) or one the
/// group's rule accepts (a group member). The error says what was received
/// and what was expected, so that the operator sees which side to fix: "the
/// initiator's identity 192.0.2.9 (ID_IPV4_ADDR) is not the configured
/// remote_id 192.0.2.2 (ID_IPV4_ADDR)".
fn identity_check(ctx: &Ctx<'_>, who: &str, got: &IdPayload) -> Result<(), String> {
    let got = Identity {
        id_type: got.id_type,
        data: got.data.as_slice().into(),
    };
    let expected = &ctx.pc.remote_id;
    match ctx.member_rule {
        Some(rule) if rule.accepts(&got, ctx.pc.remote.ip()) => Ok(()),
        Some(rule) => Err(format!(
            "the {who}'s identity {got} ({}) is not {rule}, as the peer group requires",
            got.id_type
        )),
        None if got.matches(expected) => Ok(()),
        None => Err(format!(
            "the {who}'s identity {got} ({}) is not the configured remote_id {expected} ({})",
            got.id_type, expected.id_type
        )),
    }
}
