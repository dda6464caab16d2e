//! The IKE_SA_INIT exchange (RFC 7296 1.2): the initiator's request (with
//! INVALID_KE_PAYLOAD and COOKIE retries), the responder's answer, its
//! unauthenticated errors (2.21.1), the half-open limit per peer, and
//! simultaneous initiation.
//!
//! Simultaneous initiation (not covered by RFC 7296): when an IKE_SA_INIT
//! request arrives from a peer to which this side has an IKE SA of its own
//! that is not yet established, the two initiator nonces are compared as
//! octet strings (a shorter prefix is lower, as in 2.8.1). The exchange
//! whose initiator sent the higher nonce continues; the other initiator
//! abandons its attempt, and the winner drops the loser's request. Both
//! sides compare the same two nonces, so they agree without a message.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::config::IkeSuite;
use super::context::{Ctx, Fate};
use super::error::{IkeError, Misbehaviour, NegotiationError};
use super::event::{DropReason, Event, Role};
use super::proposal;
use super::sa::{Handshake, IkeSa, Phase, SaState};
use super::traffic::notify;
use super::window::{PendingKind, Window};
use super::PayloadsExt;
use super::{auth, lifecycle};
use crate::crypto::{self, sig, IkeKeys, KeyExchange, Secret};
use crate::numbers::{DhGroup, ExchangeType, NotifyType, PayloadType};
use crate::wire::{self, Header, KePayload, ParsedMessage, Payload, FLAG_RESPONSE};

/// The Vendor ID aokd sends in IKE_SA_INIT (docs/protocol.md).
pub const VENDOR_ID: &[u8] = b"aokd TCP-AO keying 1";

/// How often an IKE_SA_INIT request from a peer's address that this side
/// refuses (NO_PROPOSAL_CHOSEN) is reported: the request is unauthenticated.
pub(super) const INIT_REFUSAL_REPORT_EVERY: Duration = Duration::from_secs(10);

/// Nonce length sent (RFC 7296 2.10: at least 16 octets and half the PRF key).
const NONCE_LEN: usize = 32;

/// COOKIE responses an initiator follows in one IKE_SA_INIT exchange
/// (strongSwan's `MAX_RETRIES` for COOKIE and INVALID_KE_PAYLOAD is 5).
const MAX_COOKIE_RETRIES: u8 = 5;

pub(super) fn start(ctx: &mut Ctx<'_>, now: Instant) -> Result<(), IkeError> {
    let group = ctx.pc.ike_suites[0].group;
    let ke = KeyExchange::generate(group, &mut *ctx.rng).map_err(Misbehaviour::KeyExchange)?;
    let spi_i = ctx.fresh_spi();
    let ni = ctx.random_bytes(NONCE_LEN);
    let mut sa = IkeSa {
        peer: ctx.index,
        role: Role::Initiator,
        phase: Phase::InitSent {
            ke: Box::new(ke),
            cookie: None,
            cookie_retries: 0,
        },
        spi_i,
        spi_r: 0,
        remote: ctx.pc.remote,
        created: now,
        handshake: Some(Box::new(Handshake {
            ni,
            ..Handshake::default()
        })),
        suite: None,
        keys: None,
        peer_tcp_ao: false,
        peer_childless: false,
        fragment_len: None,
        fragments: None,
        window: Window::new(0),
        iv_counter: 0,
        established_at: None,
        rekey_offer: None,
        rekey_at: None,
        last_received: now,
        ike_rekey: None,
        rekeyed_from: None,
        peer_initial_contact: false,
        announced: false,
    };
    ctx.peer.next_attempt = None;
    send_init_request(ctx, &mut sa, now);
    ctx.sas.insert(sa);
    Ok(())
}

fn send_init_request(ctx: &mut Ctx<'_>, sa: &mut IkeSa, now: Instant) {
    let Phase::InitSent { ke, cookie, .. } = &sa.phase else {
        return;
    };
    let mut payloads = Vec::new();
    if let Some(c) = cookie {
        payloads.push(notify(NotifyType::COOKIE, c.clone()));
    }
    payloads.push(Payload::Sa(proposal::ike_sa_payload(&ctx.pc.ike_suites)));
    payloads.push(Payload::Ke(KePayload {
        group: ke.group(),
        data: ke.public(),
    }));
    payloads.push(Payload::Nonce(sa.hs().ni.clone()));
    payloads.extend(capability_payloads(ctx));
    let id = sa.window.init_id();
    let h = sa.header(ExchangeType::IKE_SA_INIT, id, false);
    let bytes = wire::emit_message(&h, &payloads);
    sa.hs_mut().init_request = bytes.clone();
    ctx.send_request(sa, id, vec![bytes], PendingKind::Init, now);
}

fn capability_payloads(ctx: &Ctx<'_>) -> Vec<Payload> {
    let mut v = vec![notify(NotifyType::CHILDLESS_IKEV2_SUPPORTED, Vec::new())];
    // RFC 7383 2.3: always, like strongSwan's `fragmentation = yes`; aokd
    // fragments only toward a peer that sent it too.
    if ctx.cfg.advertise_fragmentation {
        v.push(notify(
            NotifyType::IKEV2_FRAGMENTATION_SUPPORTED,
            Vec::new(),
        ));
    }
    if ctx.cfg.advertise_tcp_ao {
        v.push(notify(NotifyType::TCP_AO_SUPPORTED, Vec::new()));
        v.push(Payload::VendorId(VENDOR_ID.to_vec()));
    }
    // RFC 7427 4, only toward a peer authenticated by signature, so that
    // PSK exchanges stay as they were.
    if ctx.pc.signature.is_some() {
        v.push(notify(
            NotifyType::SIGNATURE_HASH_ALGORITHMS,
            sig::hash_algorithms_notify(),
        ));
    }
    v
}

/// The largest message sent unfragmented to `remote` when both sides
/// announce IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383 2.3: the peer in its
/// IKE_SA_INIT `payloads`), else `None` (never fragment).
fn fragment_len(ctx: &Ctx<'_>, payloads: &[Payload], remote: SocketAddr) -> Option<usize> {
    payloads
        .notify(NotifyType::IKEV2_FRAGMENTATION_SUPPORTED)
        .filter(|_| ctx.cfg.advertise_fragmentation)
        .map(|_| ctx.cfg.max_message_len(remote.ip()))
}

/// The peer's SIGNATURE_HASH_ALGORITHMS (RFC 7427 4), if it sent one.
fn sig_hashes(payloads: &[Payload]) -> Option<Vec<u16>> {
    payloads
        .notify(NotifyType::SIGNATURE_HASH_ALGORITHMS)
        .map(|n| sig::parse_hash_algorithms(&n.data))
}

pub(super) fn on_request(
    ctx: &mut Ctx<'_>,
    now: Instant,
    from: SocketAddr,
    datagram: &[u8],
    msg: &ParsedMessage,
) {
    let h = &msg.header;
    // A retransmission of a request already answered (RFC 7296 2.1).
    let answered = ctx
        .sas
        .iter()
        .find(|s| s.role == Role::Responder && s.spi_i == h.spi_i && s.remote == from)
        .map(|sa| {
            (sa.hs().init_request == datagram && !sa.hs().init_response.is_empty())
                .then(|| sa.hs().init_response.clone())
        });
    if let Some(replay) = answered {
        if let Some(r) = replay {
            ctx.send(from, r);
        }
        return;
    }
    let sa_offer = msg.payloads.find_payload(Payload::as_sa);
    let ke_in = msg.payloads.find_payload(Payload::as_ke);
    let ni = msg.payloads.find_payload(Payload::as_nonce);
    let (Some(sa_offer), Some(ke_in), Some(ni)) = (sa_offer, ke_in, ni) else {
        return ctx.dropped(
            from,
            DropReason::MissingPayload,
            "IKE_SA_INIT request without SA, KE or Nonce",
        );
    };
    // This side's own exchange with the peer, under way (simultaneous
    // initiation, below).
    let own = ctx
        .sas
        .iter()
        .find(|s| {
            s.role == Role::Initiator && matches!(s.state(), SaState::InitSent | SaState::AuthSent)
        })
        .map(|s| (s.local_spi(), s.hs().ni.clone()));
    if !admit(ctx, now, from, h, msg, ni, own.is_some()) {
        return;
    }
    if let Some(ty) = msg.unsupported_critical() {
        send_init_error(
            ctx,
            from,
            h,
            NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD,
            vec![ty.0],
        );
        return;
    }
    // Simultaneous initiation (module documentation). The request carries
    // a valid cookie here ([`admit`]), so a forged one cannot end ours.
    if let Some((own_spi, own_ni)) = own {
        let ours_wins = own_ni.as_slice() > ni;
        ctx.out.event(Event::SimultaneousInitiation {
            peer: ctx.name(),
            kept_ours: ours_wins,
        });
        if ours_wins {
            return;
        }
        ctx.sas.remove(&own_spi);
    }
    let pc = ctx.pc;
    let choice = match proposal::choose_ike(sa_offer, &pc.ike_suites, ke_in.group) {
        Ok(c) => c,
        Err(NegotiationError::InvalidKe(g)) => {
            send_init_error(
                ctx,
                from,
                h,
                NotifyType::INVALID_KE_PAYLOAD,
                g.0.to_be_bytes().to_vec(),
            );
            return;
        }
        Err(e) => {
            send_init_error(ctx, from, h, NotifyType::NO_PROPOSAL_CHOSEN, Vec::new());
            // Anyone can forge this request from the peer's address: report
            // it (last error, event, log line) at most once a period, so a
            // flood of them is a flood of answers, not of log lines.
            let due = ctx
                .peer
                .rare()
                .init_refusal_reported
                .is_none_or(|t| now >= t + INIT_REFUSAL_REPORT_EVERY);
            if due {
                ctx.peer.rare_mut().init_refusal_reported = Some(now);
                let name = ctx.name();
                ctx.peer
                    .set_last_error(Some(NotifyType::NO_PROPOSAL_CHOSEN.to_string()));
                ctx.out.event(Event::NegotiationFailed {
                    peer: name,
                    error: e.into(),
                    by_peer: false,
                });
            }
            return;
        }
    };
    let ke = match KeyExchange::generate(choice.suite.group, &mut *ctx.rng) {
        Ok(k) => k,
        Err(e) => return ctx.dropped(from, DropReason::KeyExchange, format!("key exchange: {e}")),
    };
    let gir = match ke.agree(&ke_in.data) {
        Ok(g) => g,
        Err(e) => {
            send_init_error(ctx, from, h, NotifyType::INVALID_SYNTAX, Vec::new());
            return ctx.dropped(
                from,
                DropReason::KeyExchange,
                format!("peer's KE payload: {e}"),
            );
        }
    };
    let spi_r = ctx.fresh_spi();
    let nr = ctx.random_bytes(NONCE_LEN);
    let keys = match derive_keys(choice.suite, &gir, ni, &nr, h.spi_i, spi_r) {
        Ok(k) => k,
        Err(e) => {
            return ctx.dropped(
                from,
                DropReason::KeyExchange,
                format!("key derivation: {e}"),
            )
        }
    };
    let mut sa = IkeSa {
        peer: ctx.index,
        role: Role::Responder,
        phase: Phase::HalfOpen,
        spi_i: h.spi_i,
        spi_r,
        remote: from,
        created: now,
        handshake: Some(Box::new(Handshake {
            ni: ni.to_vec(),
            nr: nr.clone(),
            init_request: datagram.to_vec(),
            peer_sig_hashes: sig_hashes(&msg.payloads),
            ..Handshake::default()
        })),
        suite: Some(choice.suite),
        keys: Some(keys),
        peer_tcp_ao: msg.payloads.notify(NotifyType::TCP_AO_SUPPORTED).is_some(),
        peer_childless: msg
            .payloads
            .notify(NotifyType::CHILDLESS_IKEV2_SUPPORTED)
            .is_some(),
        fragment_len: fragment_len(ctx, &msg.payloads, from),
        fragments: None,
        window: Window::new(1),
        iv_counter: 0,
        established_at: None,
        rekey_offer: None,
        rekey_at: None,
        last_received: now,
        ike_rekey: None,
        rekeyed_from: None,
        peer_initial_contact: false,
        announced: false,
    };
    let mut payloads = vec![
        Payload::Sa(proposal::ike_sa_reply(choice.proposal_num, choice.suite)),
        Payload::Ke(KePayload {
            group: ke.group(),
            data: ke.public(),
        }),
        Payload::Nonce(nr),
    ];
    payloads.extend(capability_payloads(ctx));
    payloads.extend(auth::certreq_payload(ctx));
    let rh = sa.header(ExchangeType::IKE_SA_INIT, 0, true);
    let bytes = wire::emit_message(&rh, &payloads);
    sa.hs_mut().init_response = bytes.clone();
    ctx.send(from, bytes);
    ctx.sas.insert(sa);
}

/// Whether an IKE_SA_INIT request from the peer may create state
/// (docs/protocol.md, "Denial of service: cookies and half-open SAs").
///
/// A cookie (RFC 7296 2.6) is demanded, and nothing kept, while the
/// endpoint holds `cookie_threshold` half-open responder SAs in all or
/// `cookie_threshold_per_source` from this address, while the peer is at
/// its `half_open_per_peer` limit, and while this side's own exchange with
/// the peer is under way (a request that ends it must come from the
/// peer's address). A request with a valid cookie is always admitted: at
/// the peer's limit the peer's oldest half-open SA makes room, so forged
/// requests, which cannot carry a valid cookie, never keep the peer out.
/// A cookie that does not verify is ignored (2.6), which here means a
/// fresh one is demanded when cookies are.
#[allow(clippy::too_many_arguments)]
fn admit(
    ctx: &mut Ctx<'_>,
    now: Instant,
    from: SocketAddr,
    h: &Header,
    msg: &ParsedMessage,
    ni: &[u8],
    own_under_way: bool,
) -> bool {
    let cfg = ctx.cfg;
    let limit = cfg.half_open_per_peer.max(1);
    let peer_half_open: Vec<(Instant, u64)> = ctx
        .sas
        .iter()
        .filter(|s| s.role == Role::Responder && s.state() == SaState::HalfOpen)
        .map(|s| (s.created, s.local_spi()))
        .collect();
    let at_limit = peer_half_open.len() >= limit;
    let demand = at_limit
        || own_under_way
        || ctx.dos.half_open >= cfg.cookie_threshold
        || ctx.dos.half_open_from(from.ip()) >= cfg.cookie_threshold_per_source;
    let cookie = msg.payloads.notify(NotifyType::COOKIE);
    let valid = match cookie {
        Some(c) => {
            let ok = ctx.dos.cookies.check(
                now,
                cfg.cookie_secret_lifetime,
                &mut *ctx.rng,
                &c.data,
                h.spi_i,
                from.ip(),
                ni,
            );
            if ok {
                ctx.out.counters.cookies_accepted += 1;
            } else {
                ctx.out.counters.cookies_rejected += 1;
            }
            ok
        }
        None => false,
    };
    if demand && !valid {
        let c = ctx.dos.cookies.make(
            now,
            cfg.cookie_secret_lifetime,
            &mut *ctx.rng,
            h.spi_i,
            from.ip(),
            ni,
        );
        send_init_error(ctx, from, h, NotifyType::COOKIE, c);
        ctx.out.counters.cookies_sent += 1;
        let (reason, detail) = if cookie.is_some() {
            (
                DropReason::CookieInvalid,
                "IKE_SA_INIT with a cookie that does not verify: a new one demanded",
            )
        } else if at_limit {
            (
                DropReason::HalfOpenLimit,
                "half-open IKE SA limit of the peer reached: cookie demanded",
            )
        } else {
            (
                DropReason::CookieRequired,
                "IKE_SA_INIT without a cookie: cookie demanded",
            )
        };
        ctx.dropped(from, reason, detail);
        return false;
    }
    if at_limit {
        // The address is reachable: make room, oldest first.
        let mut oldest = peer_half_open;
        oldest.sort_unstable();
        for (_, spi) in oldest.iter().take(oldest.len() + 1 - limit) {
            ctx.sas.remove(spi);
            ctx.out.counters.half_open_evicted += 1;
        }
    }
    true
}

/// An unauthenticated error response to IKE_SA_INIT (RFC 7296 2.21.1).
fn send_init_error(ctx: &mut Ctx<'_>, to: SocketAddr, req: &Header, ty: NotifyType, data: Vec<u8>) {
    let h = Header {
        spi_i: req.spi_i,
        spi_r: 0,
        next_payload: PayloadType::NONE,
        version: 0x20,
        exchange: ExchangeType::IKE_SA_INIT,
        flags: FLAG_RESPONSE,
        message_id: 0,
        length: 0,
    };
    ctx.send(to, wire::emit_message(&h, &[notify(ty, data)]));
}

pub(super) fn on_response(
    ctx: &mut Ctx<'_>,
    now: Instant,
    from: SocketAddr,
    datagram: &[u8],
    msg: &ParsedMessage,
    mut sa: IkeSa,
) -> Fate {
    let pc = ctx.pc;
    if let Some(n) = msg.payloads.notify(NotifyType::COOKIE) {
        if let Phase::InitSent {
            cookie,
            cookie_retries,
            ..
        } = &mut sa.phase
        {
            // A new cookie (the first, or another after the responder's
            // secret changed), a few times at most (RFC 7296 2.6).
            let fresh = cookie.as_deref() != Some(n.data.as_slice());
            if (1..=64).contains(&n.data.len()) && fresh && *cookie_retries < MAX_COOKIE_RETRIES {
                *cookie = Some(n.data.clone());
                *cookie_retries += 1;
                send_init_request(ctx, &mut sa, now);
                return Fate::Keep(sa);
            }
        }
    }
    if let Some(n) = msg.payloads.notify(NotifyType::INVALID_KE_PAYLOAD) {
        let wanted = <[u8; 2]>::try_from(n.data.as_slice()).map(|b| DhGroup(u16::from_be_bytes(b)));
        let current = match &sa.phase {
            Phase::InitSent { ke, .. } => Some(ke.group()),
            _ => None,
        };
        return match wanted {
            Ok(g) if Some(g) != current && pc.ike_suites.iter().any(|s| s.group == g) => {
                match KeyExchange::generate(g, &mut *ctx.rng) {
                    Ok(new_ke) => {
                        if let Phase::InitSent { ke, .. } = &mut sa.phase {
                            **ke = new_ke;
                        }
                        send_init_request(ctx, &mut sa, now);
                        Fate::Keep(sa)
                    }
                    Err(e) => {
                        lifecycle::fail(ctx, sa, Misbehaviour::KeyExchange(e).into(), false, now)
                    }
                }
            }
            _ => lifecycle::fail(
                ctx,
                sa,
                NegotiationError::NoProposalChosen("INVALID_KE_PAYLOAD names a group not offered")
                    .into(),
                true,
                now,
            ),
        };
    }
    if let Some(n) = msg.payloads.error_notify() {
        let e = NegotiationError::PeerReported(n.ty);
        return lifecycle::fail(ctx, sa, e.into(), true, now);
    }
    if let Some(ty) = msg.unsupported_critical() {
        return lifecycle::fail(
            ctx,
            sa,
            Misbehaviour::UnsupportedCritical(ty).into(),
            false,
            now,
        );
    }
    let sa_reply = msg.payloads.find_payload(Payload::as_sa);
    let ke_in = msg.payloads.find_payload(Payload::as_ke);
    let nr = msg.payloads.find_payload(Payload::as_nonce);
    let (Some(sa_reply), Some(ke_in), Some(nr)) = (sa_reply, ke_in, nr) else {
        ctx.dropped(
            from,
            DropReason::MissingPayload,
            "IKE_SA_INIT response without SA, KE or Nonce",
        );
        return Fate::Keep(sa);
    };
    if msg.header.spi_r == 0 {
        ctx.dropped(
            from,
            DropReason::BadHeader,
            "IKE_SA_INIT response without a responder SPI",
        );
        return Fate::Keep(sa);
    }
    // The key exchange is used up here: from now on the SA is on its way to
    // IKE_AUTH (auth::start sends it) or fails.
    let ke = match std::mem::replace(&mut sa.phase, Phase::AuthSent { child_offer: None }) {
        Phase::InitSent { ke, .. } => ke,
        other => {
            sa.phase = other;
            return lifecycle::fail(
                ctx,
                sa,
                Misbehaviour::Unexpected("no key exchange state").into(),
                false,
                now,
            );
        }
    };
    let Some(suite) = proposal::check_ike_reply(sa_reply, &pc.ike_suites, ke.group()) else {
        return lifecycle::fail(
            ctx,
            sa,
            Misbehaviour::BadSelection("IKE SA proposal").into(),
            false,
            now,
        );
    };
    if ke_in.group != ke.group() {
        return lifecycle::fail(
            ctx,
            sa,
            Misbehaviour::BadSelection("KE group").into(),
            false,
            now,
        );
    }
    let gir = match ke.agree(&ke_in.data) {
        Ok(g) => g,
        Err(e) => return lifecycle::fail(ctx, sa, Misbehaviour::KeyExchange(e).into(), false, now),
    };
    sa.spi_r = msg.header.spi_r;
    sa.hs_mut().nr = nr.to_vec();
    sa.keys = match derive_keys(suite, &gir, &sa.hs().ni, nr, sa.spi_i, sa.spi_r) {
        Ok(k) => Some(k),
        Err(e) => return lifecycle::fail(ctx, sa, Misbehaviour::KeyExchange(e).into(), false, now),
    };
    sa.suite = Some(suite);
    sa.hs_mut().init_response = datagram.to_vec();
    sa.peer_tcp_ao = msg.payloads.notify(NotifyType::TCP_AO_SUPPORTED).is_some();
    sa.peer_childless = msg
        .payloads
        .notify(NotifyType::CHILDLESS_IKEV2_SUPPORTED)
        .is_some();
    sa.hs_mut().peer_sig_hashes = sig_hashes(&msg.payloads);
    sa.hs_mut().peer_certreq = auth::certreq_hashes(&msg.payloads);
    sa.fragment_len = fragment_len(ctx, &msg.payloads, sa.remote);
    sa.window.complete();
    match auth::start(ctx, &mut sa, now) {
        Ok(()) => Fate::Keep(sa),
        Err(e) => lifecycle::fail(ctx, sa, e, false, now),
    }
}

fn derive_keys(
    suite: IkeSuite,
    gir: &Secret,
    ni: &[u8],
    nr: &[u8],
    spi_i: u64,
    spi_r: u64,
) -> Result<IkeKeys, crypto::CryptoError> {
    let seed = crypto::skeyseed(suite.prf, ni, nr, gir.as_bytes());
    crypto::derive_ike_keys(suite.prf, suite.encr, &seed, ni, nr, spi_i, spi_r)
}
