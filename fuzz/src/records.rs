//! The input format of the endpoint targets: a sequence of records, each
//! `op (1) ‖ length (2, big endian) ‖ body (length octets, or what is
//! left)`, handed to one endpoint in order. The low two bits of `op` say
//! what the body is:
//!
//! - 0, raw: a datagram, as it is.
//! - 1, fixed header: a datagram whose SPIs (octets 0..16) are replaced by
//!   those of one of the endpoint's IKE SAs and whose Length field (24..28)
//!   is set to its length (padded to 28 octets), so that the input gets
//!   past the SPI lookup and the length check.
//! - 2, sealed: `exchange (1) ‖ flags (1) ‖ message ID (4) ‖ first inner
//!   payload type (1) ‖ plaintext`, encrypted in an SK payload with the
//!   keys the peer of one of the endpoint's IKE SAs sends with (the proto
//!   feature `fuzzing`), so that the SA opens it and the decrypted payload
//!   chain and the exchanges see fuzzed contents. `flags` is XORed with the
//!   I flag a genuine message from the peer has; with bit 0x40 of `op` a
//!   zero pad-length octet is appended to the plaintext.
//! - 3, time: the clock moves on by `body[0]` seconds (minutes with bit
//!   0x40 of `op`) and the endpoint's timers run.
//!
//! Bits 2..5 of `op` pick the IKE SA for 1 and 2 (an index into the peer's
//! SAs, modulo their number); bit 0x80 makes the datagram come from an
//! address that is no configured peer. At most [`MAX_RECORDS`] records are
//! read. Everything the endpoint queues is drained after each record.

use std::net::SocketAddr;
use std::time::Duration;

use aokd_proto::ike::{Endpoint, Role};
use aokd_proto::numbers::{ExchangeType, PayloadType};
use aokd_proto::wire::{Header, FLAG_INITIATOR};

use crate::ike::{drain, start, STRANGER};

pub const MAX_RECORDS: usize = 16;

/// Operation codes.
pub const RAW: u8 = 0;
pub const FIXED: u8 = 1;
pub const SEALED: u8 = 2;
pub const TIME: u8 = 3;
/// `op` bits.
pub const PAD: u8 = 0x40;
pub const MINUTES: u8 = 0x40;
pub const FROM_STRANGER: u8 = 0x80;

/// Splits `data` into records: (op, body).
pub fn split(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let Some((&op, rest)) = data.split_first() {
        if out.len() == MAX_RECORDS {
            break;
        }
        let (len, rest) = match rest {
            [h, l, rest @ ..] => (usize::from(u16::from_be_bytes([*h, *l])), rest),
            _ => (0, &[][..]),
        };
        let (body, rest) = rest.split_at(len.min(rest.len()));
        out.push((op, body));
        data = rest;
    }
    out
}

/// Encodes records (for the corpus generator).
pub fn join(records: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (op, body) in records {
        out.push(*op);
        out.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(body);
    }
    out
}

/// Runs the records of `data` on `ep`, whose peer is at `peer`.
pub fn run(ep: &mut Endpoint, peer: SocketAddr, data: &[u8]) {
    let mut now = start();
    for (n, (op, body)) in split(data).into_iter().enumerate() {
        let from = if op & FROM_STRANGER != 0 {
            STRANGER
        } else {
            peer
        };
        match op & 3 {
            RAW => ep.handle_datagram(now, from, body),
            FIXED => {
                let mut d = body.to_vec();
                if d.len() < Header::LEN {
                    d.resize(Header::LEN, 0);
                }
                if let Some((spi_i, spi_r, _)) = pick_sa(ep, op) {
                    d[0..8].copy_from_slice(&spi_i.to_be_bytes());
                    // While the IKE_SA_INIT request is outstanding the
                    // responder's SPI is not known yet: the input's stays.
                    if spi_r != 0 {
                        d[8..16].copy_from_slice(&spi_r.to_be_bytes());
                    }
                }
                let len = u32::try_from(d.len()).unwrap_or(u32::MAX);
                d[24..28].copy_from_slice(&len.to_be_bytes());
                ep.handle_datagram(now, from, &d);
            }
            SEALED => {
                if let (Some((spi_i, spi_r, role)), [ex, flags, m0, m1, m2, m3, first, pt @ ..]) =
                    (pick_sa(ep, op), body)
                {
                    // A genuine message from the peer has the I flag iff
                    // we are the responder.
                    let i_flag = if role == Role::Responder {
                        FLAG_INITIATOR
                    } else {
                        0
                    };
                    let header = Header {
                        spi_i,
                        spi_r,
                        next_payload: PayloadType::NONE,
                        version: 0x20,
                        exchange: ExchangeType(*ex),
                        flags: flags ^ i_flag,
                        message_id: u32::from_be_bytes([*m0, *m1, *m2, *m3]),
                        length: 0,
                    };
                    let mut plaintext = pt.to_vec();
                    if op & PAD != 0 {
                        plaintext.push(0);
                    }
                    let local = if role == Role::Initiator {
                        spi_i
                    } else {
                        spi_r
                    };
                    if let Some(d) = ep.fuzz_seal_as_peer(
                        local,
                        &header,
                        PayloadType(*first),
                        &plaintext,
                        n as u64,
                    ) {
                        ep.handle_datagram(now, from, &d);
                    }
                }
            }
            _ => {
                let unit = if op & MINUTES != 0 { 60 } else { 1 };
                let secs = u64::from(body.first().copied().unwrap_or(1)) * unit;
                now += Duration::from_secs(secs);
                ep.handle_timeout(now);
            }
        }
        drain(ep);
    }
}

/// The SPIs and role of the IKE SA that bits 2..5 of `op` pick.
fn pick_sa(ep: &Endpoint, op: u8) -> Option<(u64, u64, Role)> {
    let peers = ep.peers();
    let sas = &peers.first()?.sas;
    if sas.is_empty() {
        return None;
    }
    let s = &sas[usize::from((op >> 2) & 0x0f) % sas.len()];
    Some((s.spi_i, s.spi_r, s.role))
}
