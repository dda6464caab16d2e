//! The IKE header (RFC 7296 3.1) and the generic payload header (RFC 7296
//! 3.2).

use super::reader::{put_u16, put_u32, put_u64, Reader};
use super::{ExchangeType, Header, PayloadType, WireError};

/// Length of the generic payload header (RFC 7296 3.2).
pub const GENERIC_HEADER_LEN: usize = 4;

/// The Critical bit of the generic payload header (RFC 7296 3.2).
const CRITICAL: u8 = 0x80;

impl Header {
    /// Parses the 28 header octets (RFC 7296 3.1) without checking the major
    /// version, so that a responder can still read the SPIs and message ID to
    /// answer INVALID_MAJOR_VERSION (RFC 7296 2.5). [`Header::parse`] is this
    /// plus the version check.
    pub fn parse_any_version(bytes: &[u8]) -> Result<Header, WireError> {
        let mut r = Reader::new(bytes);
        let what = "IKE header";
        if r.remaining() < Header::LEN {
            return Err(WireError::Truncated {
                what,
                need: Header::LEN,
                have: r.remaining(),
            });
        }
        Ok(Header {
            spi_i: r.u64(what)?,
            spi_r: r.u64(what)?,
            next_payload: PayloadType(r.u8(what)?),
            version: r.u8(what)?,
            exchange: ExchangeType(r.u8(what)?),
            flags: r.u8(what)?,
            message_id: r.u32(what)?,
            length: r.u32(what)?,
        })
    }

    /// The major version: the high nibble of the version octet.
    pub fn major_version(&self) -> u8 {
        self.version >> 4
    }
}

/// Header parse with the RFC 7296 3.1 major version check.
pub(super) fn parse(bytes: &[u8]) -> Result<Header, WireError> {
    let h = Header::parse_any_version(bytes)?;
    match h.major_version() {
        2 => Ok(h),
        major => Err(WireError::Version(major)),
    }
}

/// Appends the 28 header octets, every field as given.
pub(super) fn emit(h: &Header, out: &mut Vec<u8>) {
    put_u64(out, h.spi_i);
    put_u64(out, h.spi_r);
    out.extend_from_slice(&[h.next_payload.0, h.version, h.exchange.0, h.flags]);
    put_u32(out, h.message_id);
    put_u32(out, h.length);
}

/// A parsed generic payload header (RFC 7296 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GenericHeader {
    pub next: PayloadType,
    pub critical: bool,
    /// Payload Length: the whole payload including these four octets.
    pub length: u16,
}

impl GenericHeader {
    /// Reads four octets; the seven reserved bits are ignored.
    pub(super) fn parse(r: &mut Reader<'_>) -> Result<GenericHeader, WireError> {
        let what = "generic payload header";
        let next = PayloadType(r.u8(what)?);
        let critical = r.u8(what)? & CRITICAL != 0;
        let length = r.u16(what)?;
        if usize::from(length) < GENERIC_HEADER_LEN {
            return Err(WireError::BadLength {
                what: "payload",
                len: usize::from(length),
            });
        }
        Ok(GenericHeader {
            next,
            critical,
            length,
        })
    }

    /// Appends four octets with the reserved bits zero.
    pub(super) fn emit(&self, out: &mut Vec<u8>) {
        out.push(self.next.0);
        out.push(if self.critical { CRITICAL } else { 0 });
        put_u16(out, self.length);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{FLAG_INITIATOR, FLAG_RESPONSE};

    fn sample() -> Header {
        Header {
            spi_i: 0x0102_0304_0506_0708,
            spi_r: 0x1112_1314_1516_1718,
            next_payload: PayloadType::SA,
            version: 0x20,
            exchange: ExchangeType::IKE_SA_INIT,
            flags: FLAG_INITIATOR,
            message_id: 0x0a0b_0c0d,
            length: 0x1c,
        }
    }

    const SAMPLE: [u8; 28] = [
        1, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 33, 0x20, 34, 0x08,
        0x0a, 0x0b, 0x0c, 0x0d, 0, 0, 0, 0x1c,
    ];

    #[test]
    fn header_encoding_is_exact() {
        let mut out = Vec::new();
        sample().emit(&mut out);
        assert_eq!(out, SAMPLE);
        assert_eq!(Header::parse(&SAMPLE), Ok(sample()));
        let h = Header::parse(&SAMPLE).unwrap();
        assert!(h.is_initiator());
        assert!(!h.is_response());
        assert_eq!(h.major_version(), 2);
    }

    #[test]
    fn header_minor_version_and_flags_survive() {
        let mut h = sample();
        h.version = 0x2f;
        h.flags = FLAG_RESPONSE | 0x07;
        let mut out = Vec::new();
        h.emit(&mut out);
        assert_eq!(Header::parse(&out), Ok(h));
    }

    #[test]
    fn header_rejects_other_major_versions_and_truncation() {
        for v in [0x00, 0x10, 0x30, 0xf0] {
            let mut b = SAMPLE;
            b[17] = v;
            assert_eq!(Header::parse(&b), Err(WireError::Version(v >> 4)));
            assert_eq!(
                Header::parse_any_version(&b).map(|h| h.spi_i),
                Ok(sample().spi_i)
            );
        }
        for n in 0..Header::LEN {
            assert_eq!(
                Header::parse(&SAMPLE[..n]),
                Err(WireError::Truncated {
                    what: "IKE header",
                    need: 28,
                    have: n
                })
            );
        }
        // Octets after the header are not looked at.
        let mut longer = SAMPLE.to_vec();
        longer.extend_from_slice(&[0xff; 5]);
        assert_eq!(Header::parse(&longer), Ok(sample()));
    }

    #[test]
    fn generic_header() {
        let mut r = Reader::new(&[0x28, 0xff, 0x00, 0x08]);
        let g = GenericHeader::parse(&mut r).unwrap();
        assert_eq!(
            g,
            GenericHeader {
                next: PayloadType::NONCE,
                critical: true,
                length: 8
            }
        );
        let mut out = Vec::new();
        g.emit(&mut out);
        assert_eq!(out, [0x28, 0x80, 0x00, 0x08]);
        for len in 0..4u8 {
            let b = [0, 0, 0, len];
            assert_eq!(
                GenericHeader::parse(&mut Reader::new(&b)),
                Err(WireError::BadLength {
                    what: "payload",
                    len: usize::from(len)
                })
            );
        }
        assert!(GenericHeader::parse(&mut Reader::new(&[0, 0, 0])).is_err());
    }
}
