//! Bounds-checked reading and length-patching writing helpers shared by the
//! IKEv2 codec (RFC 7296 section 3).
//!
//! [`Reader`] is a cursor over a borrowed slice whose every read returns
//! [`WireError::Truncated`] instead of indexing out of bounds, so the parsers
//! built on it cannot panic. The writer helpers append big-endian integers
//! (all IKEv2 integers are in network order, RFC 7296 3) and fill in length
//! fields once the structure they measure has been written.

use super::WireError;

/// A cursor over octets that never reads past its end.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader positioned at the start of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Octets consumed so far.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// Octets not yet consumed.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// True when every octet has been consumed.
    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Consumes exactly `n` octets.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let have = self.remaining();
        let out = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or(WireError::Truncated {
                what,
                need: n,
                have,
            })?;
        self.pos = self.pos.saturating_add(n);
        Ok(out)
    }

    /// Consumes exactly `N` octets as an array.
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// Consumes everything that is left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        out
    }

    /// Skips `n` octets (reserved fields).
    pub(crate) fn skip(&mut self, n: usize, what: &'static str) -> Result<(), WireError> {
        self.take(n, what).map(|_| ())
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn array4(&mut self, what: &'static str) -> Result<[u8; 4], WireError> {
        self.array(what)
    }

    pub(crate) fn array16(&mut self, what: &'static str) -> Result<[u8; 16], WireError> {
        self.array(what)
    }

    /// Reads a substructure header's 16-bit length field, which counts the
    /// `header` octets already read plus the body, and returns a reader over
    /// the body. A length below `min` is [`WireError::BadLength`]; one past
    /// the end of this reader is [`WireError::Truncated`].
    pub(crate) fn sub(
        &mut self,
        len: u16,
        header: usize,
        min: usize,
        what: &'static str,
    ) -> Result<Reader<'a>, WireError> {
        let len = usize::from(len);
        if len < min || len < header {
            return Err(WireError::BadLength { what, len });
        }
        let body = self.take(len.saturating_sub(header), what)?;
        Ok(Reader::new(body))
    }

    /// Fails with [`WireError::Trailing`] unless everything was consumed.
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(WireError::Trailing(n, what)),
        }
    }
}

/// Appends a big-endian u16.
pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a big-endian u32.
pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a big-endian u64.
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Converts a count or length to a u8 field, saturating at 255 (the encoding
/// of an oversized value is then invalid and any parser rejects it).
pub(crate) fn sat_u8(n: usize) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}

/// Converts a count or length to a u16 field, saturating at 65535.
pub(crate) fn sat_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Writes the 16-bit length of the structure that starts at `start` in `out`
/// and extends to the end of `out`, into the field at `start + at`.
pub(crate) fn patch_len16(out: &mut [u8], start: usize, at: usize) {
    let len = sat_u16(out.len().saturating_sub(start));
    if let Some(field) = start
        .checked_add(at)
        .and_then(|a| out.get_mut(a..a.saturating_add(2)))
    {
        field.copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_order_and_reports_truncation() {
        let mut r = Reader::new(&[1, 0, 2, 0, 0, 0, 3, 9]);
        assert_eq!(r.u8("a"), Ok(1));
        assert_eq!(r.u16("b"), Ok(2));
        assert_eq!(r.u32("c"), Ok(3));
        assert_eq!(r.position(), 7);
        assert_eq!(
            r.u16("d"),
            Err(WireError::Truncated {
                what: "d",
                need: 2,
                have: 1
            })
        );
        assert_eq!(r.finish("x"), Err(WireError::Trailing(1, "x")));
        assert_eq!(r.rest(), &[9]);
        assert!(r.is_empty());
        assert_eq!(
            r.take(usize::MAX, "e").unwrap_err(),
            WireError::Truncated {
                what: "e",
                need: usize::MAX,
                have: 0
            }
        );
        assert_eq!(r.finish("x"), Ok(()));
    }

    #[test]
    fn sub_checks_lengths() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(
            r.clone().sub(3, 4, 4, "s").unwrap_err(),
            WireError::BadLength { what: "s", len: 3 }
        );
        assert!(matches!(
            r.clone().sub(8, 4, 4, "s"),
            Err(WireError::Truncated { .. })
        ));
        let mut s = r.sub(7, 4, 4, "s").unwrap();
        assert_eq!(s.rest(), &[1, 2, 3]);
    }

    #[test]
    fn writers() {
        let mut v = vec![0xff, 0, 0, 0];
        put_u16(&mut v, 0x0102);
        put_u32(&mut v, 0x03040506);
        put_u64(&mut v, 7);
        patch_len16(&mut v, 0, 2);
        assert_eq!(
            v,
            [0xff, 0, 0, 18, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0, 0, 7]
        );
        patch_len16(&mut v, 17, 2); // out of range: ignored
        assert_eq!(sat_u8(300), 255);
        assert_eq!(sat_u16(70000), 65535);
    }
}
