//! One IKE SA: its SPIs, role and state, its keys, and its request
//! window (the outstanding request, queued requests, the stored response),
//! with the header, protect and unprotect operations every exchange uses
//! (fragmenting and reassembling when the message needs it, RFC 7383).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::config::{IkeSuite, SignatureAuth};
use super::error::{IkeError, Misbehaviour};
use super::event::{DropReason, Role};
use super::fragments::{self, Added, Reassembler, Refused};
use super::sk;
use super::stored_response::StoredResponse;
use super::window::{Datagrams, Window};
use crate::crypto::{IkeKeys, KeyExchange};
use crate::numbers::{ExchangeType, PayloadType};
use crate::wire::{self, Header, ParsedMessage, Payload, FLAG_INITIATOR, FLAG_RESPONSE};

/// Which phase an SA is in, without the phase's data: for comparisons
/// and dispatch ([`IkeSa::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SaState {
    /// Initiator: IKE_SA_INIT sent.
    InitSent,
    /// Initiator: IKE_AUTH sent.
    AuthSent,
    /// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH.
    HalfOpen,
    Established,
    /// Superseded by a rekey of the IKE SA (RFC 7296 2.18): the old SA, or
    /// the redundant new one of a collision (2.8.2). It answers requests
    /// (CREATE_CHILD_SA with TEMPORARY_FAILURE, 2.25.2) and sends nothing
    /// but its pending request and its Delete; it goes when either side
    /// deletes it, or at `expires`.
    Rekeyed,
    /// Created by the peer's rekey of an IKE SA while this side's own rekey
    /// of it was outstanding (2.8.2): not used until ours concludes, then
    /// Established (it survives) or Rekeyed (it is redundant).
    Successor,
    /// Failed; kept until `expires` so a retransmitted request still gets
    /// the stored error response. Not shown in views, not live, and at
    /// most one per peer.
    Failed,
    /// Being deleted by this side (RFC 7296 1.4.1, 2.1): its INFORMATIONAL
    /// {Delete(IKE)} is a request like any other, retransmitted until the
    /// peer answers it or the schedule runs out, and the SA goes then. It
    /// answers the peer's requests (a Delete of its own ends it at once,
    /// CREATE_CHILD_SA gets TEMPORARY_FAILURE) and starts nothing else.
    Deleting,
}

/// The phase of an IKE SA, with what that phase alone needs: a transition
/// replaces the whole value, so no field of an earlier phase lingers.
pub(super) enum Phase {
    /// Initiator: IKE_SA_INIT sent, with our key exchange and the cookie
    /// the responder asked for (sent again with it, RFC 7296 2.6).
    InitSent {
        ke: Box<KeyExchange>,
        cookie: Option<Vec<u8>>,
        /// COOKIE responses followed so far (bounded, so that a responder
        /// that never accepts its own cookies cannot keep us looping).
        cookie_retries: u8,
    },
    /// Initiator: IKE_AUTH sent, with the TCP-AO child SA it offers.
    AuthSent {
        child_offer: Option<ChildOffer>,
    },
    /// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH.
    HalfOpen,
    Established,
    /// Superseded by a rekey (see [`SaState::Rekeyed`]), with the SA that
    /// replaced it, if any, and when it goes at the latest.
    Rekeyed {
        successor: Option<u64>,
        expires: Instant,
    },
    /// Created by the peer's colliding rekey (see [`SaState::Successor`]).
    Successor {
        expires: Instant,
    },
    /// Failed; kept until `expires` for replaying the stored response.
    Failed {
        expires: Instant,
    },
    /// Deleted by this side, waiting for the answer to its Delete (see
    /// [`SaState::Deleting`]); `reason` is reported when it goes.
    Deleting {
        reason: &'static str,
    },
}

impl Phase {
    fn state(&self) -> SaState {
        match self {
            Phase::InitSent { .. } => SaState::InitSent,
            Phase::AuthSent { .. } => SaState::AuthSent,
            Phase::HalfOpen => SaState::HalfOpen,
            Phase::Established => SaState::Established,
            Phase::Rekeyed { .. } => SaState::Rekeyed,
            Phase::Successor { .. } => SaState::Successor,
            Phase::Failed { .. } => SaState::Failed,
            Phase::Deleting { .. } => SaState::Deleting,
        }
    }
}

/// The TCP-AO child SA offered in our IKE_AUTH request.
pub(super) struct ChildOffer {
    pub(super) recv_id: u8,
    pub(super) exclude_options: bool,
}

/// Our outstanding CREATE_CHILD_SA request.
pub(super) struct RekeyOffer {
    /// (send_id, recv_id) of the MKT being rekeyed; `None` for a new MKT.
    pub(super) old: Option<(u8, u8)>,
    pub(super) recv_id: u8,
    pub(super) ni: Vec<u8>,
    pub(super) ke: Option<KeyExchange>,
    pub(super) exclude_options: bool,
}

/// Our outstanding CREATE_CHILD_SA that rekeys an IKE SA.
pub(super) struct IkeRekeyOffer {
    /// Our SPI of the new IKE SA.
    pub(super) spi: u64,
    pub(super) ni: Vec<u8>,
    pub(super) ke: KeyExchange,
}

/// How a rekey created an IKE SA.
pub(super) struct RekeyOrigin {
    /// Local SPI of the SA that was rekeyed.
    pub(super) old: u64,
    /// The exchange's Ni and Nr (RFC 7296 2.8.2).
    pub(super) nonces: [Vec<u8>; 2],
}

impl RekeyOrigin {
    pub(super) fn lowest_nonce(&self) -> &[u8] {
        self.nonces.iter().min().map_or(&[], Vec::as_slice)
    }
}

/// What only the IKE_SA_INIT and IKE_AUTH exchanges of an IKE SA need, in
/// one box that is dropped once the SA is established: an established SA
/// (the many, at a route server) carries none of it (issue: scale, memory
/// per SA).
#[derive(Default)]
pub(super) struct Handshake {
    pub(super) ni: Vec<u8>,
    pub(super) nr: Vec<u8>,
    pub(super) init_request: Vec<u8>,
    pub(super) init_response: Vec<u8>,
    /// The hash IDs of the peer's SIGNATURE_HASH_ALGORITHMS (RFC 7427 4),
    /// `None` when it sent none.
    pub(super) peer_sig_hashes: Option<Vec<u16>>,
    /// The CA hashes of the peer's CERTREQ payloads in IKE_SA_INIT (RFC
    /// 7296 3.7), concatenated; empty when it sent none.
    pub(super) peer_certreq: Vec<u8>,
}

/// What [`IkeSa::hs`] reads once the handshake's box is gone: all empty.
static NO_HANDSHAKE: Handshake = Handshake {
    ni: Vec::new(),
    nr: Vec::new(),
    init_request: Vec::new(),
    init_response: Vec::new(),
    peer_sig_hashes: None,
    peer_certreq: Vec::new(),
};

/// One IKE SA (RFC 7296 2), in any state.
pub(super) struct IkeSa {
    pub(super) peer: usize,
    pub(super) role: Role,
    /// The phase, with its data.
    pub(super) phase: Phase,
    pub(super) spi_i: u64,
    pub(super) spi_r: u64,
    pub(super) remote: SocketAddr,
    pub(super) created: Instant,
    /// What only IKE_SA_INIT and IKE_AUTH need; dropped once the SA is
    /// established ([`IkeSa::hs`], [`IkeSa::hs_mut`]).
    pub(super) handshake: Option<Box<Handshake>>,
    pub(super) suite: Option<IkeSuite>,
    pub(super) keys: Option<IkeKeys>,
    pub(super) peer_tcp_ao: bool,
    pub(super) peer_childless: bool,
    /// The largest IKE message sent as one datagram, larger ones are sent
    /// as SKF fragments (RFC 7383): `None` when the peer did not announce
    /// IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT
    /// ([`super::EndpointConfig::max_message_len`]).
    pub(super) fragment_len: Option<usize>,
    /// The peer's fragmented messages being reassembled; made on the first
    /// fragment (most SAs never see one).
    pub(super) fragments: Option<Box<Reassembler>>,
    /// Message IDs, our outstanding and queued requests, the stored response.
    pub(super) window: Window,
    pub(super) iv_counter: u64,
    pub(super) established_at: Option<Instant>,
    /// An outstanding CREATE_CHILD_SA request of ours.
    pub(super) rekey_offer: Option<Box<RekeyOffer>>,
    /// When this side rekeys the IKE SA (`None`: never, or under way).
    pub(super) rekey_at: Option<Instant>,
    /// When a protected message from the peer last verified on this SA
    /// (liveness, RFC 7296 1.4).
    pub(super) last_received: Instant,
    /// Our outstanding CREATE_CHILD_SA rekeying this IKE SA.
    pub(super) ike_rekey: Option<Box<IkeRekeyOffer>>,
    /// How a rekey created this SA (RFC 7296 2.18, 2.8.2).
    pub(super) rekeyed_from: Option<Box<RekeyOrigin>>,
    /// The peer's IKE_AUTH message carried INITIAL_CONTACT (RFC 7296 2.4).
    pub(super) peer_initial_contact: bool,
    /// Reported to the driver (IkeSaEstablished or IkeSaRekeyed), so that
    /// its deletion is reported too.
    pub(super) announced: bool,
}

impl IkeSa {
    /// The handshake's data (all empty once the SA is established).
    pub(super) fn hs(&self) -> &Handshake {
        self.handshake.as_deref().unwrap_or(&NO_HANDSHAKE)
    }

    /// The handshake's data, to change (made again, empty, if it was
    /// dropped).
    pub(super) fn hs_mut(&mut self) -> &mut Handshake {
        self.handshake.get_or_insert_with(Box::default)
    }

    pub(super) fn local_spi(&self) -> u64 {
        match self.role {
            Role::Initiator => self.spi_i,
            Role::Responder => self.spi_r,
        }
    }

    /// Up or being set up: neither failed nor being deleted.
    pub(super) fn is_live(&self) -> bool {
        !matches!(self.state(), SaState::Failed | SaState::Deleting)
    }

    /// Deleting: the reason reported when it goes.
    pub(super) fn deleting_reason(&self) -> Option<&'static str> {
        match self.phase {
            Phase::Deleting { reason } => Some(reason),
            _ => None,
        }
    }

    /// The SA's phase, without its data.
    pub(super) fn state(&self) -> SaState {
        self.phase.state()
    }

    /// When a Rekeyed, Successor or Failed SA goes.
    pub(super) fn expires(&self) -> Option<Instant> {
        match self.phase {
            Phase::Rekeyed { expires, .. }
            | Phase::Successor { expires }
            | Phase::Failed { expires } => Some(expires),
            _ => None,
        }
    }

    /// Rekeyed: the local SPI of the SA that replaced this one.
    pub(super) fn successor(&self) -> Option<u64> {
        match self.phase {
            Phase::Rekeyed { successor, .. } => successor,
            _ => None,
        }
    }

    /// The IKE SA created by a rekey of `old` (RFC 7296 2.18): keys from the
    /// rekey exchange, message IDs from 0, the same peer and capabilities.
    /// `role` is this side's role in the rekey exchange. Established;
    /// reported once it replaces `old`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rekeyed(
        old: &IkeSa,
        role: Role,
        (spi_i, spi_r): (u64, u64),
        suite: IkeSuite,
        keys: IkeKeys,
        rekey_at: Option<Instant>,
        origin: RekeyOrigin,
        now: Instant,
    ) -> IkeSa {
        IkeSa {
            peer: old.peer,
            role,
            phase: Phase::Established,
            spi_i,
            spi_r,
            remote: old.remote,
            created: now,
            // Its nonces are in `origin` (they decide between colliding
            // rekeys); it had no IKE_SA_INIT or IKE_AUTH.
            handshake: None,
            suite: Some(suite),
            keys: Some(keys),
            peer_tcp_ao: old.peer_tcp_ao,
            peer_childless: old.peer_childless,
            fragment_len: old.fragment_len,
            fragments: None,
            window: Window::new(0),
            iv_counter: 0,
            established_at: Some(now),
            rekey_offer: None,
            rekey_at,
            last_received: now,
            ike_rekey: None,
            rekeyed_from: Some(Box::new(origin)),
            peer_initial_contact: old.peer_initial_contact,
            announced: false,
        }
    }

    /// Authenticated and not failed: Established, Rekeyed or Successor.
    pub(super) fn is_authenticated(&self) -> bool {
        matches!(
            self.state(),
            SaState::Established | SaState::Rekeyed | SaState::Successor
        )
    }

    pub(super) fn header(&self, exchange: ExchangeType, message_id: u32, response: bool) -> Header {
        let mut flags = 0;
        if self.role == Role::Initiator {
            flags |= FLAG_INITIATOR;
        }
        if response {
            flags |= FLAG_RESPONSE;
        }
        Header {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            next_payload: PayloadType::NONE,
            version: 0x20,
            exchange,
            flags,
            message_id,
            length: 0,
        }
    }

    /// Builds a protected message with this SA's keys: one datagram, or
    /// its SKF fragments when it is larger than [`IkeSa::fragment_len`].
    pub(super) fn protect(
        &mut self,
        header: &Header,
        payloads: &[Payload],
    ) -> Result<Datagrams, IkeError> {
        let mut chain = Vec::new();
        let first_inner = wire::emit_payload_chain(payloads, PayloadType::NONE, &mut chain);
        self.protect_chain(header, first_inner, chain)
    }

    /// Our next request on this SA, protected, with the message ID the
    /// window gives it.
    pub(super) fn request(
        &mut self,
        exchange: ExchangeType,
        payloads: &[Payload],
    ) -> Result<(u32, Datagrams), IkeError> {
        let id = self.window.next_id();
        let h = self.header(exchange, id, false);
        Ok((id, self.protect(&h, payloads)?))
    }

    /// Our response to the peer's expected request, protected and stored
    /// for replay (RFC 7296 2.1).
    /// `signature`: the peer's signature configuration, whose
    /// certificates a stored IKE_AUTH answer need not keep a copy of
    /// ([`StoredResponse`]).
    pub(super) fn response(
        &mut self,
        exchange: ExchangeType,
        payloads: &[Payload],
        signature: Option<&Arc<SignatureAuth>>,
    ) -> Result<Datagrams, IkeError> {
        let id = self.window.response_id();
        let h = self.header(exchange, id, true);
        let mut chain = Vec::new();
        let first_inner = wire::emit_payload_chain(payloads, PayloadType::NONE, &mut chain);
        let bytes = self.protect_chain(&h, first_inner, chain.clone())?;
        let stored = StoredResponse::new(exchange, first_inner, &chain, signature, bytes.clone());
        self.window.store_response(id, stored);
        Ok(bytes)
    }

    /// The stored response to the peer's request `message_id` when that
    /// request is a retransmission of the last one answered (RFC 7296
    /// 2.1): as sent, or sealed again with this SA's next IV.
    pub(super) fn replay(&mut self, message_id: u32) -> Option<Result<Datagrams, IkeError>> {
        let plain = match self.window.replay(message_id)? {
            StoredResponse::Sealed(bytes) => return Some(Ok(bytes.clone())),
            StoredResponse::Plain(p) => (p.exchange, p.first_inner, p.chain()),
        };
        let (exchange, first_inner, chain) = plain;
        let h = self.header(exchange, message_id, true);
        Some(self.protect_chain(&h, first_inner, chain))
    }

    /// [`IkeSa::protect`] of an inner payload chain already emitted.
    fn protect_chain(
        &mut self,
        header: &Header,
        first_inner: PayloadType,
        chain: Vec<u8>,
    ) -> Result<Datagrams, IkeError> {
        let (suite, keys) = match (&self.suite, &self.keys) {
            (Some(s), Some(k)) => (s, k),
            _ => return Err(Misbehaviour::Unexpected("protected message before keys").into()),
        };
        let key = match self.role {
            Role::Initiator => keys.sk_ei(),
            Role::Responder => keys.sk_er(),
        };
        let counter = &mut self.iv_counter;
        sk::protect_chain(
            header,
            first_inner,
            chain,
            suite.encr,
            key,
            self.fragment_len,
            || {
                *counter = counter.wrapping_add(1);
                *counter
            },
        )
    }

    /// The key and cipher the peer protects its messages with.
    fn peer_key(&self) -> Option<(crate::crypto::Encr, &[u8])> {
        let (suite, keys) = (self.suite.as_ref()?, self.keys.as_ref()?);
        let key = match self.role {
            Role::Initiator => keys.sk_er(),
            Role::Responder => keys.sk_ei(),
        };
        Some((suite.encr, key))
    }

    /// Opens a protected message from the peer; one that verifies counts
    /// as a sign of life (RFC 7296 1.4). An SKF fragment (RFC 7383) is
    /// authenticated and stored: `Ok(None)` until the message is whole,
    /// then its payloads. `timeout`: how long an incomplete fragmented
    /// message is kept.
    pub(super) fn unprotect(
        &mut self,
        datagram: &[u8],
        msg: &ParsedMessage,
        now: Instant,
        timeout: std::time::Duration,
    ) -> Result<Option<Vec<Payload>>, Refused> {
        let integrity = |e: IkeError| Refused {
            reason: DropReason::Integrity,
            detail: e.to_string(),
        };
        let Some((encr, key)) = self.peer_key() else {
            return Err(integrity(Misbehaviour::Integrity.into()));
        };
        let fragment = msg.sk.as_ref().and_then(|sk| Some((sk, sk.fragment?)));
        let Some((skf, numbers)) = fragment else {
            let payloads = sk::unprotect(datagram, msg, encr, key).map_err(integrity)?;
            self.last_received = now;
            return Ok(Some(payloads));
        };
        let h = &msg.header;
        fragments::precheck(numbers, h.message_id)?;
        let piece = sk::open(datagram, skf, encr, key).map_err(|e| Refused {
            reason: DropReason::Integrity,
            detail: format!(
                "fragment {}/{} of message {}: {e}",
                numbers.number, numbers.total, h.message_id
            ),
        })?;
        self.last_received = now;
        let added = self.fragments.get_or_insert_with(Box::default).add(
            h.is_response(),
            h.message_id,
            numbers,
            skf.first_inner,
            piece,
            now,
            timeout,
        )?;
        match added {
            Added::Incomplete => Ok(None),
            Added::Complete(first, chain) => crate::wire::parse_payload_chain(first, &chain)
                .map(Some)
                .map_err(|e| integrity(e.into())),
        }
    }

    /// Whether `msg`, an SKF fragment, authenticates with the peer's keys
    /// (nothing is stored): a retransmitted request's first fragment is
    /// answered with the stored response only then.
    pub(super) fn fragment_verifies(&self, datagram: &[u8], msg: &ParsedMessage) -> bool {
        match (self.peer_key(), msg.sk.as_ref()) {
            (Some((encr, key)), Some(skf)) => sk::open(datagram, skf, encr, key).is_ok(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    /// A route server holds one `IkeSa` per neighbour (issue: scale, memory
    /// per peer): what few SAs use is boxed, what only the handshake needs
    /// is freed. A field that makes it grow past this should be boxed too.
    #[test]
    fn an_ike_sa_stays_small() {
        let size = std::mem::size_of::<super::IkeSa>();
        // 360 with the handshake's data boxed (496 before, 1,064 at first).
        assert!(size <= 384, "IkeSa is {size} octets");
        assert!(std::mem::size_of::<super::super::window::Window>() <= 80);
    }
}
