//! Parsing a raw IP packet (IPv4, RFC 791; IPv6, RFC 8200) that carries a
//! TCP segment (RFC 9293 3.1), and locating its TCP-AO (RFC 5925 2.2) or
//! TCP-MD5 (RFC 2385 3.0) option.
//!
//! Parsing never panics and never allocates: every length is checked against
//! the buffer before it is used, and a malformed packet gives a
//! [`SegmentError`]. A packet cut short by the capture (snap length) still
//! parses as long as the IP and TCP headers are complete; it is then marked
//! [`Segment::truncated`] and cannot be verified.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// TCP option kind of TCP-AO (RFC 5925 2.2).
pub const OPTION_KIND_AO: u8 = 29;
/// TCP option kind of TCP-MD5 (RFC 2385 3.0).
pub const OPTION_KIND_MD5: u8 = 19;
/// Length of the TCP-MD5 option: kind, length and a 16-octet digest.
pub const MD5_OPTION_LEN: usize = 18;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;

/// The TCP header flags that matter for keying (RFC 9293 3.1).
pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;

const TCP_BASE_HEADER_LEN: usize = 20;

/// Why a packet is not a TCP segment this module can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// Empty packet, or an IP version other than 4 or 6.
    #[error("not an IPv4 or IPv6 packet")]
    NotIp,
    /// A well-formed IP packet whose payload is not TCP.
    #[error("IP protocol {0} is not TCP")]
    NotTcp(u8),
    /// The IP header is shorter than its own length fields say, or they are
    /// inconsistent.
    #[error("malformed IP header")]
    MalformedIp,
    /// A fragment: the TCP segment cannot be reassembled from one packet.
    #[error("IP fragment")]
    Fragment,
    /// An IPv6 extension header this module does not walk (routing with
    /// segments left, ESP, AH) or a jumbogram.
    #[error("unsupported IPv6 extension header {0}")]
    UnsupportedExtension(u8),
    /// The TCP header is not complete in the captured bytes, or its data
    /// offset is out of range.
    #[error("malformed or incomplete TCP header")]
    MalformedTcp,
    /// A TCP option runs past the header, has a length below 2, or TCP-AO or
    /// TCP-MD5 has an impossible length.
    #[error("malformed TCP option")]
    MalformedOption,
    /// The segment carries both TCP-AO and TCP-MD5 (RFC 5925 2.2 forbids it).
    #[error("segment carries both TCP-AO and TCP-MD5")]
    BothAoAndMd5,
}

/// The two endpoint addresses of a segment, in one IP version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Addresses {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

impl Addresses {
    pub fn src(&self) -> IpAddr {
        match self {
            Addresses::V4 { src, .. } => IpAddr::V4(Ipv4Addr::from(*src)),
            Addresses::V6 { src, .. } => IpAddr::V6(Ipv6Addr::from(*src)),
        }
    }
    pub fn dst(&self) -> IpAddr {
        match self {
            Addresses::V4 { dst, .. } => IpAddr::V4(Ipv4Addr::from(*dst)),
            Addresses::V6 { dst, .. } => IpAddr::V6(Ipv6Addr::from(*dst)),
        }
    }
    /// The same pair seen from the other end.
    pub fn reversed(&self) -> Addresses {
        match *self {
            Addresses::V4 { src, dst } => Addresses::V4 { src: dst, dst: src },
            Addresses::V6 { src, dst } => Addresses::V6 { src: dst, dst: src },
        }
    }
}

/// The TCP-AO option of a segment (RFC 5925 2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AoOption<'a> {
    /// Offset of the option's kind octet within the TCP header.
    pub offset: usize,
    /// KeyID: the sender's SendID.
    pub key_id: u8,
    /// RNextKeyID: the RecvID the sender wants to receive next.
    pub rnext_key_id: u8,
    /// The MAC as carried in the segment.
    pub mac: &'a [u8],
}

impl AoOption<'_> {
    /// The option's total length (kind, length, IDs, MAC).
    pub fn len(&self) -> usize {
        4 + self.mac.len()
    }
    /// Never true: the option always has its 4-octet head.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The TCP-MD5 option of a segment (RFC 2385 3.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Md5Option<'a> {
    /// Offset of the option's kind octet within the TCP header.
    pub offset: usize,
    /// The 16-octet digest.
    pub digest: &'a [u8],
}

/// The authentication option a segment carries, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOption<'a> {
    None,
    Ao(AoOption<'a>),
    Md5(Md5Option<'a>),
}

/// A parsed TCP segment, borrowing the packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Segment<'a> {
    pub addresses: Addresses,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    /// The flag octet (CWR ECE URG ACK PSH RST SYN FIN).
    pub flags: u8,
    /// The TCP header with its options, as captured.
    pub header: &'a [u8],
    /// The TCP data that was captured (all of it unless `truncated`).
    pub payload: &'a [u8],
    /// TCP length (header and data) as the IP header gives it: the value of
    /// the pseudo-header's length field (RFC 5925 5.1, RFC 9293 3.1).
    pub tcp_len: u32,
    /// The capture holds fewer octets than the IP header announces.
    pub truncated: bool,
    pub auth: AuthOption<'a>,
}

impl fmt::Debug for Segment<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("src", &self.addresses.src())
            .field("dst", &self.addresses.dst())
            .field("src_port", &self.src_port)
            .field("dst_port", &self.dst_port)
            .field("seq", &self.seq)
            .field("ack", &self.ack)
            .field("flags", &self.flags)
            .field("header_len", &self.header.len())
            .field("payload_len", &self.payload.len())
            .field("tcp_len", &self.tcp_len)
            .field("truncated", &self.truncated)
            .field("auth", &self.auth)
            .finish()
    }
}

impl Segment<'_> {
    pub fn syn(&self) -> bool {
        self.flags & TCP_FLAG_SYN != 0
    }
    pub fn ack_flag(&self) -> bool {
        self.flags & TCP_FLAG_ACK != 0
    }
    pub fn rst(&self) -> bool {
        self.flags & TCP_FLAG_RST != 0
    }
    pub fn fin(&self) -> bool {
        self.flags & TCP_FLAG_FIN != 0
    }
    /// Whether the segment carries TCP-AO or TCP-MD5.
    pub fn is_signed(&self) -> bool {
        !matches!(self.auth, AuthOption::None)
    }
    /// The segment's sequence space length: data plus one each for SYN and
    /// FIN (RFC 9293 3.4), from the IP lengths (not only captured octets).
    pub fn seq_len(&self) -> u32 {
        let data = self.tcp_len.saturating_sub(self.header.len() as u32);
        data + u32::from(self.syn()) + u32::from(self.fin())
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Parses a raw IP packet (starting at the IP version nibble) that carries
/// TCP. Octets after the IP packet's own length (link-layer padding) are
/// ignored.
pub fn parse_ip_packet(packet: &[u8]) -> Result<Segment<'_>, SegmentError> {
    let first = *packet.first().ok_or(SegmentError::NotIp)?;
    match first >> 4 {
        4 => parse_ipv4(packet),
        6 => parse_ipv6(packet),
        _ => Err(SegmentError::NotIp),
    }
}

/// IPv4 (RFC 791 3.1).
fn parse_ipv4(p: &[u8]) -> Result<Segment<'_>, SegmentError> {
    if p.len() < 20 {
        return Err(SegmentError::MalformedIp);
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(be16(p, 2).ok_or(SegmentError::MalformedIp)?);
    if ihl < 20 || p.len() < ihl || total < ihl {
        return Err(SegmentError::MalformedIp);
    }
    let frag = be16(p, 6).ok_or(SegmentError::MalformedIp)?;
    let proto = p[9];
    if proto != IPPROTO_TCP {
        return Err(SegmentError::NotTcp(proto));
    }
    // More Fragments set, or a non-zero fragment offset.
    if frag & 0x3fff != 0 {
        return Err(SegmentError::Fragment);
    }
    let mut src = [0u8; 4];
    let mut dst = [0u8; 4];
    src.copy_from_slice(&p[12..16]);
    dst.copy_from_slice(&p[16..20]);
    let truncated = p.len() < total;
    let end = total.min(p.len());
    parse_tcp(
        Addresses::V4 { src, dst },
        &p[ihl..end],
        (total - ihl) as u32,
        truncated,
    )
}

/// IPv6 (RFC 8200 3, 4). Hop-by-Hop, Destination Options and a Routing
/// header with no segments left are skipped; any other extension header is
/// refused.
fn parse_ipv6(p: &[u8]) -> Result<Segment<'_>, SegmentError> {
    if p.len() < 40 {
        return Err(SegmentError::MalformedIp);
    }
    let payload_len = usize::from(be16(p, 4).ok_or(SegmentError::MalformedIp)?);
    if payload_len == 0 {
        // A jumbogram (RFC 2675) or an empty payload: neither carries TCP here.
        return Err(SegmentError::UnsupportedExtension(0));
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&p[8..24]);
    dst.copy_from_slice(&p[24..40]);
    let total = 40 + payload_len;
    let truncated = p.len() < total;
    let end = total.min(p.len());
    let mut next = p[6];
    let mut at = 40usize;
    loop {
        match next {
            IPPROTO_TCP => break,
            // Hop-by-Hop Options, Destination Options.
            0 | 60 => {}
            // Routing: fine only when no segments are left, so that the
            // destination address is final (RFC 8200 8.1).
            43 => {
                let segments_left = *p.get(at + 3).ok_or(SegmentError::MalformedIp)?;
                if segments_left != 0 {
                    return Err(SegmentError::UnsupportedExtension(43));
                }
            }
            // Fragment header: refuse TCP fragments, ignore the others.
            44 => {
                let inner = *p.get(at).ok_or(SegmentError::MalformedIp)?;
                if inner == IPPROTO_TCP {
                    return Err(SegmentError::Fragment);
                }
                return Err(SegmentError::NotTcp(inner));
            }
            // No Next Header, and every upper-layer protocol.
            59 | 1 | 17 | 58 => return Err(SegmentError::NotTcp(next)),
            50 | 51 | 135 | 139 | 140 | 253 | 254 => {
                return Err(SegmentError::UnsupportedExtension(next))
            }
            other => return Err(SegmentError::NotTcp(other)),
        }
        let hdr_next = *p.get(at).ok_or(SegmentError::MalformedIp)?;
        let hdr_len = (usize::from(*p.get(at + 1).ok_or(SegmentError::MalformedIp)?) + 1) * 8;
        if at + hdr_len > end {
            return Err(SegmentError::MalformedIp);
        }
        next = hdr_next;
        at += hdr_len;
    }
    if at > total {
        return Err(SegmentError::MalformedIp);
    }
    parse_tcp(
        Addresses::V6 { src, dst },
        &p[at..end],
        (total - at) as u32,
        truncated,
    )
}

/// TCP header (RFC 9293 3.1) and options (RFC 9293 3.2).
fn parse_tcp(
    addresses: Addresses,
    tcp: &[u8],
    tcp_len: u32,
    truncated: bool,
) -> Result<Segment<'_>, SegmentError> {
    if tcp.len() < TCP_BASE_HEADER_LEN {
        return Err(SegmentError::MalformedTcp);
    }
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    if data_offset < TCP_BASE_HEADER_LEN || data_offset > tcp.len() || data_offset as u32 > tcp_len
    {
        return Err(SegmentError::MalformedTcp);
    }
    let header = &tcp[..data_offset];
    let payload = &tcp[data_offset..];
    let auth = find_auth_option(header)?;
    Ok(Segment {
        addresses,
        src_port: be16(tcp, 0).ok_or(SegmentError::MalformedTcp)?,
        dst_port: be16(tcp, 2).ok_or(SegmentError::MalformedTcp)?,
        seq: be32(tcp, 4).ok_or(SegmentError::MalformedTcp)?,
        ack: be32(tcp, 8).ok_or(SegmentError::MalformedTcp)?,
        flags: tcp[13],
        header,
        payload,
        tcp_len,
        truncated,
        auth,
    })
}

/// Walks the options of a TCP header (RFC 9293 3.2) and returns the TCP-AO
/// or TCP-MD5 option.
fn find_auth_option(header: &[u8]) -> Result<AuthOption<'_>, SegmentError> {
    let mut found = AuthOption::None;
    let mut at = TCP_BASE_HEADER_LEN;
    while at < header.len() {
        let kind = header[at];
        match kind {
            // End of Option List.
            0 => break,
            // No-Operation.
            1 => {
                at += 1;
                continue;
            }
            _ => {}
        }
        let len = usize::from(*header.get(at + 1).ok_or(SegmentError::MalformedOption)?);
        if len < 2 || at + len > header.len() {
            return Err(SegmentError::MalformedOption);
        }
        let option = &header[at..at + len];
        match kind {
            OPTION_KIND_AO => {
                // Kind, Length, KeyID, RNextKeyID and at least one MAC octet.
                if len < 5 {
                    return Err(SegmentError::MalformedOption);
                }
                let ao = AuthOption::Ao(AoOption {
                    offset: at,
                    key_id: option[2],
                    rnext_key_id: option[3],
                    mac: &option[4..],
                });
                found = match found {
                    AuthOption::None => ao,
                    AuthOption::Md5(_) => return Err(SegmentError::BothAoAndMd5),
                    // Two TCP-AO options: RFC 5925 2.2 allows one.
                    AuthOption::Ao(_) => return Err(SegmentError::MalformedOption),
                };
            }
            OPTION_KIND_MD5 => {
                if len != MD5_OPTION_LEN {
                    return Err(SegmentError::MalformedOption);
                }
                let md5 = AuthOption::Md5(Md5Option {
                    offset: at,
                    digest: &option[2..],
                });
                found = match found {
                    AuthOption::None => md5,
                    AuthOption::Ao(_) => return Err(SegmentError::BothAoAndMd5),
                    AuthOption::Md5(_) => return Err(SegmentError::MalformedOption),
                };
            }
            _ => {}
        }
        at += len;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn_v4() -> Vec<u8> {
        // RFC 9235 4.1.1.
        hex::decode(
            "45e0004cdd0f4000ff06bf6b0a0b0c0dac1b1c1de9d700b3fbfbab5a00000000\
             e002ffffcac40000020405b4010303080402080a00155ab7000000001d103d54\
             2ee437c6f8ede6d7c4d602e7",
        )
        .unwrap()
    }

    #[test]
    fn parses_rfc9235_syn() {
        let p = syn_v4();
        let s = parse_ip_packet(&p).unwrap();
        assert_eq!(s.src_port, 59863);
        assert_eq!(s.dst_port, 179);
        assert_eq!(s.seq, 0xfbfbab5a);
        assert!(s.syn() && !s.ack_flag());
        assert_eq!(s.header.len(), 56);
        assert_eq!(s.tcp_len, 56);
        assert!(!s.truncated);
        match s.auth {
            AuthOption::Ao(ao) => {
                assert_eq!(ao.key_id, 61);
                assert_eq!(ao.rnext_key_id, 84);
                assert_eq!(ao.offset, 40);
                assert_eq!(ao.mac, &p[64..76]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn trailing_padding_is_ignored_and_short_capture_is_truncated() {
        let mut p = syn_v4();
        p.extend_from_slice(&[0; 6]);
        let s = parse_ip_packet(&p).unwrap();
        assert!(!s.truncated && s.payload.is_empty());
        // Cut inside the TCP header: not a segment.
        assert_eq!(parse_ip_packet(&p[..60]), Err(SegmentError::MalformedTcp));
    }

    #[test]
    fn never_panics_on_any_prefix_or_single_octet_change() {
        let p = syn_v4();
        for n in 0..=p.len() {
            let _ = parse_ip_packet(&p[..n]);
        }
        for i in 0..p.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut q = p.clone();
                q[i] = v;
                let _ = parse_ip_packet(&q);
            }
        }
    }

    #[test]
    fn rejects_fragments_and_bad_options() {
        let mut p = syn_v4();
        p[6] |= 0x20; // More Fragments
        assert_eq!(parse_ip_packet(&p), Err(SegmentError::Fragment));
        let mut p = syn_v4();
        p[61] = 0x40; // TCP-AO length past the header
        assert_eq!(parse_ip_packet(&p), Err(SegmentError::MalformedOption));
    }
}
