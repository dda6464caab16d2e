//! TCP-AO MACs (RFC 5925 5.1, RFC 5926 2.2): the MAC input, and
//! HMAC-SHA-1-96, AES-128-CMAC-96 and HMAC-SHA-256-128 over it.
//!
//! The MAC input, in this order (RFC 5925 5.1):
//!
//! 1. the Sequence Number Extension, 4 octets (RFC 5925 6.2);
//! 2. the IP pseudo-header: for IPv4 source, destination, a zero octet,
//!    protocol 6 and the TCP length (2 octets) (RFC 793 3.1); for IPv6 source,
//!    destination, TCP length (4 octets), three zero octets and next header 6
//!    (RFC 8200 8.1);
//! 3. the TCP header with its checksum set to zero and the MAC field of the
//!    TCP-AO option set to zero; when the MKT's TCP option flag excludes
//!    options, only the 20-octet base header and the TCP-AO option (MAC
//!    zeroed) (RFC 5925 5.1 item 3);
//! 4. the TCP data.
//!
//! The MAC is the algorithm's output truncated to 12 octets (HMAC-SHA-1-96,
//! AES-128-CMAC-96) or 16 octets (HMAC-SHA-256-128). Tags are compared in
//! constant time. Nothing here allocates.

use subtle::ConstantTimeEq;

use super::kdf::{MacContext, TrafficKey};
use super::segment::{Addresses, AoOption, AuthOption, Segment, IPPROTO_TCP};

/// The longest TCP header: data offset 15.
const MAX_TCP_HEADER: usize = 60;

/// A truncated TCP-AO MAC (12 or 16 octets).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AoMac {
    buf: [u8; 16],
    len: usize,
}

impl AoMac {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl core::fmt::Debug for AoMac {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "AoMac({})", hex::encode(self.as_bytes()))
    }
}

/// Why a segment did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The segment has no TCP-AO option (TCP-MD5 option for the MD5 checks).
    #[error("segment carries no TCP-AO (or, for TCP-MD5, no TCP-MD5) option")]
    NoOption,
    /// The capture holds only part of the segment.
    #[error("segment is truncated in the capture")]
    Truncated,
    /// The MAC field's length is not that of the key's algorithm.
    #[error("MAC field is {found} octets, the algorithm's MAC is {expected}")]
    MacLength { found: usize, expected: usize },
    /// The MAC does not match.
    #[error("MAC mismatch")]
    BadMac,
}

/// The IP pseudo-header of RFC 5925 5.1 (also that of RFC 793 and RFC 8200
/// 8.1), with the given TCP length.
pub(crate) fn pseudo_header(addresses: &Addresses, tcp_len: u32, out: &mut [u8; 40]) -> usize {
    match addresses {
        Addresses::V4 { src, dst } => {
            out[0..4].copy_from_slice(src);
            out[4..8].copy_from_slice(dst);
            out[8] = 0;
            out[9] = IPPROTO_TCP;
            // An IPv4 TCP length always fits: it comes from a 16-bit field.
            out[10..12].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            12
        }
        Addresses::V6 { src, dst } => {
            out[0..16].copy_from_slice(src);
            out[16..32].copy_from_slice(dst);
            out[32..36].copy_from_slice(&tcp_len.to_be_bytes());
            out[36..39].copy_from_slice(&[0, 0, 0]);
            out[39] = IPPROTO_TCP;
            40
        }
    }
}

/// Feeds the MAC input of RFC 5925 5.1 to `sink`, piece by piece.
fn feed_mac_input(
    segment: &Segment<'_>,
    ao: &AoOption<'_>,
    sne: u32,
    include_options: bool,
    sink: &mut dyn FnMut(&[u8]),
) {
    sink(&sne.to_be_bytes());
    let mut ph = [0u8; 40];
    let n = pseudo_header(&segment.addresses, segment.tcp_len, &mut ph);
    sink(&ph[..n]);
    let mut hdr = [0u8; MAX_TCP_HEADER];
    let h = segment.header;
    if include_options {
        hdr[..h.len()].copy_from_slice(h);
        hdr[16] = 0;
        hdr[17] = 0;
        let mac_at = ao.offset + 4;
        hdr[mac_at..mac_at + ao.mac.len()].fill(0);
        sink(&hdr[..h.len()]);
    } else {
        hdr[..20].copy_from_slice(&h[..20]);
        hdr[16] = 0;
        hdr[17] = 0;
        // Kind, Length, KeyID, RNextKeyID; the MAC field as zeros.
        hdr[20..24].copy_from_slice(&h[ao.offset..ao.offset + 4]);
        let len = 24 + ao.mac.len();
        hdr[24..len].fill(0);
        sink(&hdr[..len]);
    }
    sink(segment.payload);
}

fn ao_option<'a>(segment: &Segment<'a>) -> Result<AoOption<'a>, VerifyError> {
    match segment.auth {
        AuthOption::Ao(ao) => Ok(ao),
        _ => Err(VerifyError::NoOption),
    }
}

/// The MAC input of RFC 5925 5.1 as one buffer (for tests and diagnostics;
/// [`compute_mac`] does not build it).
pub fn mac_input(
    segment: &Segment<'_>,
    sne: u32,
    include_options: bool,
) -> Result<Vec<u8>, VerifyError> {
    let ao = ao_option(segment)?;
    let mut out = Vec::with_capacity(104 + segment.payload.len());
    feed_mac_input(segment, &ao, sne, include_options, &mut |b| {
        out.extend_from_slice(b)
    });
    Ok(out)
}

/// Computes the TCP-AO MAC of a segment that carries the TCP-AO option.
pub fn compute_mac(
    key: &TrafficKey,
    segment: &Segment<'_>,
    sne: u32,
    include_options: bool,
) -> Result<AoMac, VerifyError> {
    let ao = ao_option(segment)?;
    let mut ctx: MacContext = key.mac_context();
    feed_mac_input(segment, &ao, sne, include_options, &mut |b| ctx.update(b));
    let full = ctx.finish();
    let len = key.algorithm().mac_len();
    let mut mac = AoMac {
        buf: [0u8; 16],
        len,
    };
    mac.buf[..len].copy_from_slice(&full.as_bytes()[..len]);
    Ok(mac)
}

/// Verifies the TCP-AO MAC of a segment under a traffic key.
pub fn verify_mac(
    key: &TrafficKey,
    segment: &Segment<'_>,
    sne: u32,
    include_options: bool,
) -> Result<(), VerifyError> {
    let ao = ao_option(segment)?;
    if segment.truncated {
        return Err(VerifyError::Truncated);
    }
    let expected = key.algorithm().mac_len();
    if ao.mac.len() != expected {
        return Err(VerifyError::MacLength {
            found: ao.mac.len(),
            expected,
        });
    }
    let mac = compute_mac(key, segment, sne, include_options)?;
    if bool::from(mac.as_bytes().ct_eq(ao.mac)) {
        Ok(())
    } else {
        Err(VerifyError::BadMac)
    }
}
