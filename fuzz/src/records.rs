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
//!   zero pad-length octet is appended to the plaintext. With bit 0x80 of
//!   `op` (which means "from a stranger" for the others) it is an SKF
//!   fragment (RFC 7383) from the peer instead: the body starts with
//!   `Fragment Number (2) ‖ Total Fragments (2)`, taken as they are.
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
use aokd_proto::wire::{FragmentNumbers, Header, FLAG_INITIATOR};

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
/// `op` bit of a sealed record: an SKF fragment.
pub const FRAGMENT: u8 = 0x80;

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

/// Runs the records of `data` on `ep`, whose peer is at `peer`; returns
/// how many datagrams the endpoint sent in answer.
pub fn run(ep: &mut Endpoint, peer: SocketAddr, data: &[u8]) -> usize {
    let mut now = start();
    let mut sent = 0;
    for (n, (op, body)) in split(data).into_iter().enumerate() {
        let from = if op & FROM_STRANGER != 0 && op & 3 != SEALED {
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
                let (fragment, body) = match body {
                    [n0, n1, t0, t1, rest @ ..] if op & FRAGMENT != 0 => (
                        Some(FragmentNumbers {
                            number: u16::from_be_bytes([*n0, *n1]),
                            total: u16::from_be_bytes([*t0, *t1]),
                        }),
                        rest,
                    ),
                    _ if op & FRAGMENT != 0 => (None, &[][..]),
                    _ => (None, body),
                };
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
                        fragment,
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
        sent += drain(ep).len();
    }
    sent
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::{Handshake, A_ADDR, B_ADDR};

    fn sealed(exchange: ExchangeType, flags: u8, message_id: u32) -> Vec<u8> {
        let mut body = vec![exchange.0, flags];
        body.extend_from_slice(&message_id.to_be_bytes());
        body.push(PayloadType::NONE.0);
        join(&[(SEALED | PAD, body)])
    }

    #[test]
    fn a_sealed_request_reaches_the_responders_exchange() {
        // An empty INFORMATIONAL (a liveness check) with the next message
        // ID opens and is answered; with another ID it is not.
        let h = Handshake::get();
        let ok = sealed(ExchangeType::INFORMATIONAL, 0, 2);
        assert_eq!(run(&mut h.established_b(), A_ADDR, &ok), 1);
        let wrong_id = sealed(ExchangeType::INFORMATIONAL, 0, 7);
        assert_eq!(run(&mut h.established_b(), A_ADDR, &wrong_id), 0);
    }

    #[test]
    fn sealed_fragments_are_reassembled_by_the_responder() {
        // An empty INFORMATIONAL's chain (none) cannot be split; a Delete
        // payload's 8 octets can: 5 in fragment 1, 3 in fragment 2.
        let delete = [0u8, 0, 0, 8, 1, 0, 0, 0];
        let frag = |n: u16, first: PayloadType, piece: &[u8]| {
            let mut body = n.to_be_bytes().to_vec();
            body.extend_from_slice(&2u16.to_be_bytes());
            body.extend_from_slice(&[ExchangeType::INFORMATIONAL.0, 0]);
            body.extend_from_slice(&2u32.to_be_bytes());
            body.push(first.0);
            body.extend_from_slice(piece);
            (SEALED | PAD | FRAGMENT, body)
        };
        let h = Handshake::get();
        let first = frag(1, PayloadType::DELETE, &delete[..5]);
        let second = frag(2, PayloadType::NONE, &delete[5..]);
        // Fragment 1 alone is stored, not answered; both are answered.
        assert_eq!(
            run(&mut h.established_b(), A_ADDR, &join(&[first.clone()])),
            0
        );
        let both = join(&[first, second]);
        assert_eq!(run(&mut h.established_b(), A_ADDR, &both), 1);
    }

    #[test]
    fn the_initiators_states_take_the_recorded_responses() {
        let h = Handshake::get();
        let b = h.sent_by(crate::ike::From::B);
        // After IKE_SA_INIT's response, A sends IKE_AUTH; after IKE_AUTH's,
        // nothing; an empty INFORMATIONAL from B is answered once established.
        assert_eq!(
            run(&mut h.a_after(0), B_ADDR, &join(&[(RAW, b[0].to_vec())])),
            1
        );
        assert_eq!(
            run(&mut h.a_after(1), B_ADDR, &join(&[(RAW, b[1].to_vec())])),
            0
        );
        let info = sealed(ExchangeType::INFORMATIONAL, 0, 0);
        assert_eq!(run(&mut h.a_after(2), B_ADDR, &info), 1);
    }

    #[test]
    fn records_split_and_join() {
        let recs = vec![(RAW, vec![1, 2, 3]), (TIME, vec![]), (FIXED, vec![9; 300])];
        let joined = join(&recs);
        let split: Vec<(u8, Vec<u8>)> = split(&joined)
            .into_iter()
            .map(|(o, b)| (o, b.to_vec()))
            .collect();
        assert_eq!(split, recs);
        // A short length field takes what is left.
        assert_eq!(split_first_body(&[SEALED, 0]), Some((SEALED, 0)));
    }

    fn split_first_body(d: &[u8]) -> Option<(u8, usize)> {
        split(d).first().map(|(o, b)| (*o, b.len()))
    }
}
