//! What an [`Endpoint`](super::Endpoint) tells its driver: datagrams to
//! send, events to act on and log, and read-only views for status displays.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Instant;

use super::config::{IkeSuite, PortRange};
use super::error::IkeError;
use crate::mkt::MasterKeyTuple;

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// Which side started an IKE SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Initiator => "initiator",
            Role::Responder => "responder",
        }
    }
}

/// Something that happened, in the order it happened.
#[derive(Debug)]
pub enum Event {
    /// IKE_AUTH completed.
    IkeSaEstablished {
        peer: String,
        spi_i: u64,
        spi_r: u64,
        role: Role,
        suite: IkeSuite,
        tcp_ao_capable: bool,
        /// When this side will rekey it (`None`: never).
        rekey_at: Option<Instant>,
    },
    /// A TCP-AO MKT was negotiated, with its times (what the state file
    /// records). [`Event::MktsChanged`] follows with the peer's key set.
    MktCreated {
        peer: String,
        spi_i: u64,
        spi_r: u64,
        mkt: MasterKeyTuple,
        ports: Vec<PortRange>,
        created_at: Instant,
        /// When this side starts its rekey.
        rekey_at: Option<Instant>,
        /// The hard lifetime.
        expires_at: Instant,
    },
    /// The MKTs of a peer changed (created, deleted, superseded, retired):
    /// here is the whole set, in the order in which the keys go on a
    /// socket. Retiring keys come first, then live ones from oldest to
    /// newest: the last is the one to send with. Emitted once per peer per
    /// input, after the events that changed it, so that a driver keeps its
    /// own copy and never asks the endpoint again.
    MktsChanged { peer: String, mkts: Vec<MktView> },
    /// An MKT is gone (its IKE SA was deleted, or the peer deleted it).
    MktDeleted {
        peer: String,
        send_id: u8,
        recv_id: u8,
        reason: &'static str,
    },
    /// An IKE SA is gone. `reason` is one of "deleted", "deleted by the
    /// peer", "rekeyed", "replaced by a newer IKE SA", "the peer restarted
    /// (INITIAL_CONTACT)", "peer unreachable (liveness check)", "peer
    /// unreachable (no answer to a request)", "IKE SA failed", "terminated
    /// by operator". MKTs are deleted only by their own events.
    IkeSaDeleted {
        peer: String,
        spi_i: u64,
        spi_r: u64,
        reason: String,
    },
    /// Establishing an IKE SA with the peer failed; `by_peer` when the
    /// peer reported the failure rather than this side detecting it.
    NegotiationFailed {
        peer: String,
        error: IkeError,
        by_peer: bool,
    },
    /// The IKE SA is up but the TCP-AO child SA failed.
    ChildFailed {
        peer: String,
        error: IkeError,
        by_peer: bool,
    },
    /// The peer did not advertise TCP-AO keying; no MKT will be negotiated.
    PeerNotCapable { peer: String },
    /// A neighbour inside a peer group's prefixes authenticated: it is a
    /// peer named `GROUP/ADDRESS` from now on, until
    /// [`Event::MemberForgotten`]. Reported before its first
    /// [`Event::MktsChanged`].
    MemberAdded {
        peer: String,
        group: String,
        remote: SocketAddr,
    },
    /// A group member has no IKE SA, no MKT and nothing due any more: it
    /// is no peer now (a later negotiation makes it a member again).
    MemberForgotten { peer: String, group: String },
    /// Both sides initiated at once; the IKE SA started by the side with
    /// the higher nonce survives (docs/protocol.md).
    SimultaneousInitiation { peer: String, kept_ours: bool },
    /// Both sides rekeyed the same MKT at once; RFC 7296 2.8.1 decided
    /// which successor survives.
    RekeyCollision { peer: String, kept_ours: bool },
    /// The IKE SA was rekeyed (RFC 7296 2.18): the new SA (`spi_i`,
    /// `spi_r`) replaces the old one, which is deleted next
    /// ([`Event::IkeSaDeleted`] with reason "rekeyed"). MKTs are untouched
    /// and later exchanges run on the new SA. `role` is this side's role in
    /// the new SA: whoever initiated the rekey is its initiator.
    IkeSaRekeyed {
        peer: String,
        old_spi_i: u64,
        old_spi_r: u64,
        spi_i: u64,
        spi_r: u64,
        role: Role,
        suite: IkeSuite,
        /// When this side will rekey the new SA (`None`: never).
        rekey_at: Option<Instant>,
    },
    /// Both sides rekeyed the IKE SA at once; RFC 7296 2.8.2 decided which
    /// new IKE SA survives (`kept_ours`: the one this side initiated).
    IkeRekeyCollision { peer: String, kept_ours: bool },
    /// A rekey of the IKE SA failed; the IKE SA stays. This side's own
    /// rekey (refused by the peer when `by_peer`) is tried again after
    /// `retry_interval` (at once with the group the peer asked for after
    /// INVALID_KE_PAYLOAD, after a random part of it after
    /// TEMPORARY_FAILURE); with `by_peer` false it may also be the peer's
    /// rekey that this side refused.
    IkeRekeyFailed {
        peer: String,
        error: IkeError,
        by_peer: bool,
    },
    /// An MKT the peer no longer holds is retired at `retire_at` without a
    /// Delete payload and no longer rekeyed: the peer restarted
    /// (INITIAL_CONTACT) and created a fresh MKT, or answered its rekey with
    /// CHILD_SA_NOT_FOUND (RFC 7296 2.25). Its key stays on the sockets
    /// until then, for connections that still use it.
    MktSuperseded {
        peer: String,
        send_id: u8,
        recv_id: u8,
        retire_at: Instant,
        reason: &'static str,
    },
    /// A datagram was dropped (or, for [`DropReason::HalfOpenExpired`], a
    /// half-open SA forgotten). `reason` is what the endpoint counts
    /// ([`super::Endpoint::counters`]); `detail` says more, for a debug log.
    Dropped {
        from: SocketAddr,
        reason: DropReason,
        detail: Cow<'static, str>,
    },
}

/// Why a datagram was dropped: the classes the endpoint counts
/// ([`DropCounters`]), so that a driver can rate-limit its log by class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Does not parse as an IKEv2 message (RFC 7296 3).
    Malformed,
    /// Parses, but its header is wrong for what it is (an IKE_SA_INIT
    /// request with a message ID or responder SPI, a response without a
    /// responder SPI).
    BadHeader,
    /// An IKE_SA_INIT request from an address that is no configured peer.
    NotConfiguredPeer,
    /// Names no IKE SA of this endpoint.
    UnknownSpi,
    /// SPIs, flags or source address do not match the IKE SA it names.
    SaMismatch,
    /// An IKE_SA_INIT without the SA, KE or Nonce payload.
    MissingPayload,
    /// Cookies are demanded (the half-open thresholds, or an initiation of
    /// this side under way) and the request had none: answered with
    /// N(COOKIE), no state kept (RFC 7296 2.6).
    CookieRequired,
    /// The request's cookie is not one this endpoint made, or its secret is
    /// gone: answered with a fresh N(COOKIE), no state kept.
    CookieInvalid,
    /// The peer's half-open limit is reached and the request had no valid
    /// cookie: answered with N(COOKIE), no state kept (with one, the oldest
    /// half-open SA of the peer makes room).
    HalfOpenLimit,
    /// The peer's key exchange value is unusable, or deriving keys failed.
    KeyExchange,
    /// Its protected payload does not decrypt and verify with the SA's keys.
    Integrity,
    /// A request or response this SA does not expect now (message ID,
    /// exchange type, no outstanding request).
    Unexpected,
    /// Not a datagram: a half-open responder SA expired without IKE_AUTH.
    HalfOpenExpired,
}

impl DropReason {
    /// Every reason, in the order of [`DropCounters`].
    pub const ALL: [DropReason; 13] = [
        DropReason::Malformed,
        DropReason::BadHeader,
        DropReason::NotConfiguredPeer,
        DropReason::UnknownSpi,
        DropReason::SaMismatch,
        DropReason::MissingPayload,
        DropReason::CookieRequired,
        DropReason::CookieInvalid,
        DropReason::HalfOpenLimit,
        DropReason::KeyExchange,
        DropReason::Integrity,
        DropReason::Unexpected,
        DropReason::HalfOpenExpired,
    ];

    /// The stable name (aoctl's `--json` keys, log fields).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::BadHeader => "bad_header",
            DropReason::NotConfiguredPeer => "not_configured_peer",
            DropReason::UnknownSpi => "unknown_spi",
            DropReason::SaMismatch => "sa_mismatch",
            DropReason::MissingPayload => "missing_payload",
            DropReason::CookieRequired => "cookie_required",
            DropReason::CookieInvalid => "cookie_invalid",
            DropReason::HalfOpenLimit => "half_open_limit",
            DropReason::KeyExchange => "key_exchange",
            DropReason::Integrity => "integrity",
            DropReason::Unexpected => "unexpected",
            DropReason::HalfOpenExpired => "half_open_expired",
        }
    }

    /// The index of the reason in [`DropReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl core::fmt::Display for DropReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Dropped datagrams by reason since the endpoint started: a fixed array,
/// one increment per drop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::ALL.len()]);

impl DropCounters {
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    /// Every reason with its count, in the order of [`DropReason::ALL`].
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.0[r.index()]))
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    pub(super) fn add(&mut self, reason: DropReason) {
        let c = &mut self.0[reason.index()];
        *c = c.saturating_add(1);
    }
}

/// What the endpoint counts about unwanted traffic and its half-open
/// policy (docs/protocol.md, "Denial of service"), read with
/// [`super::Endpoint::counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Dropped datagrams by reason.
    pub dropped: DropCounters,
    /// N(COOKIE) responses sent (RFC 7296 2.6).
    pub cookies_sent: u64,
    /// IKE_SA_INIT requests with a cookie this endpoint made and still
    /// accepts.
    pub cookies_accepted: u64,
    /// IKE_SA_INIT requests with a cookie that did not verify.
    pub cookies_rejected: u64,
    /// Half-open responder SAs removed to make room for a request with a
    /// valid cookie at the peer's limit.
    pub half_open_evicted: u64,
    /// Half-open responder SAs removed because another SA with the peer
    /// completed IKE_AUTH.
    pub half_open_superseded: u64,
}

/// The state of a peer as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    None,
    Connecting,
    Established,
    Failed,
    /// No longer configured ([`Endpoint::remove_peer`](super::Endpoint::remove_peer)):
    /// shown while its IKE SA's Delete is out and its MKTs last.
    Removed,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::None => "none",
            PeerState::Connecting => "connecting",
            PeerState::Established => "established",
            PeerState::Failed => "failed",
            PeerState::Removed => "removed",
        }
    }
}

/// A read-only view of an IKE SA.
#[derive(Debug, Clone)]
pub struct SaView {
    pub spi_i: u64,
    pub spi_r: u64,
    pub role: Role,
    /// "connecting", "established", "failed"; during an IKE SA rekey also
    /// "rekeyed" (replaced, waiting for its Delete) and "rekeying" (created
    /// by a colliding rekey, not used until RFC 7296 2.8.2 decides).
    pub state: &'static str,
    pub suite: Option<IkeSuite>,
    pub established_at: Option<Instant>,
    /// When this side will rekey it (`None`: never, or under way).
    pub rekey_at: Option<Instant>,
}

/// A read-only view of an MKT (the key only through [`MasterKeyTuple`]).
#[derive(Debug, Clone)]
pub struct MktView {
    pub mkt: MasterKeyTuple,
    pub ports: Vec<PortRange>,
    pub created_at: Instant,
    pub spi_i: u64,
    pub spi_r: u64,
    /// When this side will start a rekey (`None`: rekeyed or being rekeyed).
    pub rekey_at: Option<Instant>,
    /// The hard lifetime.
    pub expires_at: Instant,
    /// When a superseded MKT goes away.
    pub retire_at: Option<Instant>,
    /// No longer the key to move to: retiring, or a successor exists (a
    /// rekey of it, which on the side that answered the rekey comes before
    /// the initiator's Delete of this one).
    pub replaced: bool,
}

/// A KeyID pair kept out of use with a peer until `until`
/// ([`Endpoint::reserve_key_ids`](super::Endpoint::reserve_key_ids)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyIdReservation {
    pub send_id: u8,
    pub recv_id: u8,
    pub until: Instant,
}

/// A read-only view of a peer.
#[derive(Debug, Clone)]
pub struct PeerView {
    pub name: String,
    /// The peer group it is a member of; `None`: a configured peer.
    pub group: Option<String>,
    pub remote: SocketAddr,
    pub state: PeerState,
    pub tcp_ao_capable: Option<bool>,
    pub last_error: Option<String>,
    pub sas: Vec<SaView>,
    pub mkts: Vec<MktView>,
    /// KeyIDs reserved and not yet expired.
    pub reservations: Vec<KeyIdReservation>,
}
