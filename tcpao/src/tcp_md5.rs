//! TCP-MD5 signatures (RFC 2385 2.0).
//!
//! ```text
//! digest = MD5(pseudo-header || TCP header without options, checksum 0
//!              || TCP data || key)
//! ```
//!
//! The IPv4 pseudo-header is source, destination, a zero octet, protocol 6
//! and the TCP length (RFC 2385 2.0, RFC 793 3.1); for IPv6 it is the
//! RFC 2460 8.1 (RFC 8200 8.1) pseudo-header, as Linux computes it. The TCP
//! length counts the options, although the options themselves are not
//! covered. The data offset field keeps its value.

use ::md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use super::mac::{pseudo_header, VerifyError};
use super::segment::{AuthOption, Segment};

/// Computes the RFC 2385 digest of a segment under `key`.
pub fn compute_digest(key: &[u8], segment: &Segment<'_>) -> [u8; 16] {
    let mut h = Md5::new();
    let mut ph = [0u8; 40];
    let n = pseudo_header(&segment.addresses, segment.tcp_len, &mut ph);
    h.update(&ph[..n]);
    let mut base = [0u8; 20];
    base.copy_from_slice(&segment.header[..20]);
    base[16] = 0;
    base[17] = 0;
    h.update(base);
    h.update(segment.payload);
    h.update(key);
    h.finalize().into()
}

/// Verifies the TCP-MD5 option of a segment under `key`.
pub fn verify_digest(key: &[u8], segment: &Segment<'_>) -> Result<(), VerifyError> {
    let AuthOption::Md5(opt) = segment.auth else {
        return Err(VerifyError::NoOption);
    };
    if segment.truncated {
        return Err(VerifyError::Truncated);
    }
    let digest = compute_digest(key, segment);
    if bool::from(digest.as_slice().ct_eq(opt.digest)) {
        Ok(())
    } else {
        Err(VerifyError::BadMac)
    }
}
