//! Traffic Selector payloads, TSi and TSr (RFC 7296 3.13), and the traffic
//! selectors in them (RFC 7296 3.13.1).
//!
//! TS_IPV4_ADDR_RANGE (type 7, 16 octets) and TS_IPV6_ADDR_RANGE (type 8,
//! 40 octets) become [`TrafficSelector::Range`]. Any other selector type
//! becomes [`TrafficSelector::Other`] whose `body` is the selector without
//! its TS Type octet and Selector Length field: the second octet of the
//! selector (IP Protocol ID for the range types, reserved in others such as
//! RFC 4595's) followed by everything after the Selector Length. That is
//! enough to re-emit the selector octet for octet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::reader::{patch_len16, put_u16, sat_u8, Reader};
use super::{TrafficSelector, TsPayload, TsType, WireError};

/// TS Type, IP Protocol ID and Selector Length (RFC 7296 3.13.1).
const SELECTOR_HEADER_LEN: usize = 4;
/// Selector Length of TS_IPV4_ADDR_RANGE.
const IPV4_LEN: u16 = 16;
/// Selector Length of TS_IPV6_ADDR_RANGE.
const IPV6_LEN: u16 = 40;

/// Parses the body of a TSi or TSr payload (after the generic header,
/// RFC 7296 3.13): Number of TSs, three reserved octets, the selectors.
pub(super) fn parse_ts(body: &[u8]) -> Result<TsPayload, WireError> {
    let what = "traffic selector payload";
    let mut r = Reader::new(body);
    let count = r.u8(what)?;
    r.skip(3, what)?;
    let mut selectors = Vec::new();
    while !r.is_empty() {
        selectors.push(parse_selector(&mut r)?);
    }
    if selectors.len() != usize::from(count) {
        return Err(WireError::Invalid("number of traffic selectors"));
    }
    Ok(TsPayload { selectors })
}

/// Parses one traffic selector (RFC 7296 3.13.1).
fn parse_selector(r: &mut Reader<'_>) -> Result<TrafficSelector, WireError> {
    let what = "traffic selector";
    let ts_type = TsType(r.u8(what)?);
    let ip_protocol = r.u8(what)?;
    let len = r.u16(what)?;
    let expected = match ts_type {
        TsType::TS_IPV4_ADDR_RANGE => Some(IPV4_LEN),
        TsType::TS_IPV6_ADDR_RANGE => Some(IPV6_LEN),
        _ => None,
    };
    if expected.is_some_and(|e| e != len) {
        return Err(WireError::BadLength {
            what,
            len: usize::from(len),
        });
    }
    let mut s = r.sub(len, SELECTOR_HEADER_LEN, SELECTOR_HEADER_LEN, what)?;
    if expected.is_none() {
        let mut body = vec![ip_protocol];
        body.extend_from_slice(s.rest());
        return Ok(TrafficSelector::Other { ts_type, body });
    }
    let start_port = s.u16(what)?;
    let end_port = s.u16(what)?;
    let (start_addr, end_addr) = if ts_type == TsType::TS_IPV4_ADDR_RANGE {
        (
            IpAddr::V4(Ipv4Addr::from(s.array4(what)?)),
            IpAddr::V4(Ipv4Addr::from(s.array4(what)?)),
        )
    } else {
        (
            IpAddr::V6(Ipv6Addr::from(s.array16(what)?)),
            IpAddr::V6(Ipv6Addr::from(s.array16(what)?)),
        )
    };
    s.finish(what)?;
    Ok(TrafficSelector::Range {
        ip_protocol,
        start_port,
        end_port,
        start_addr,
        end_addr,
    })
}

/// Appends the body of a TSi or TSr payload (RFC 7296 3.13).
pub(super) fn emit_ts(ts: &TsPayload, out: &mut Vec<u8>) {
    out.extend_from_slice(&[sat_u8(ts.selectors.len()), 0, 0, 0]);
    for s in &ts.selectors {
        emit_selector(s, out);
    }
}

/// Appends one traffic selector (RFC 7296 3.13.1). A range whose two
/// addresses are both IPv4 is TS_IPV4_ADDR_RANGE; any other range is
/// TS_IPV6_ADDR_RANGE, with an IPv4 address written IPv4-mapped. An `Other`
/// with an empty body is written with a zero second octet.
fn emit_selector(s: &TrafficSelector, out: &mut Vec<u8>) {
    let start = out.len();
    match s {
        TrafficSelector::Range {
            ip_protocol,
            start_port,
            end_port,
            start_addr,
            end_addr,
        } => {
            let v4 = match (start_addr, end_addr) {
                (IpAddr::V4(a), IpAddr::V4(b)) => Some((a.octets(), b.octets())),
                _ => None,
            };
            let ty = if v4.is_some() {
                TsType::TS_IPV4_ADDR_RANGE
            } else {
                TsType::TS_IPV6_ADDR_RANGE
            };
            out.extend_from_slice(&[ty.0, *ip_protocol, 0, 0]);
            put_u16(out, *start_port);
            put_u16(out, *end_port);
            match v4 {
                Some((a, b)) => {
                    out.extend_from_slice(&a);
                    out.extend_from_slice(&b);
                }
                None => {
                    out.extend_from_slice(&v6_octets(start_addr));
                    out.extend_from_slice(&v6_octets(end_addr));
                }
            }
        }
        TrafficSelector::Other { ts_type, body } => {
            let (second, rest) = body.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
            out.extend_from_slice(&[ts_type.0, second, 0, 0]);
            out.extend_from_slice(rest);
        }
    }
    patch_len16(out, start, 2);
}

/// An address as 16 octets, IPv4 addresses IPv4-mapped.
fn v6_octets(a: &IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emit(ts: &TsPayload) -> Vec<u8> {
        let mut out = Vec::new();
        emit_ts(ts, &mut out);
        out
    }

    fn sample() -> TsPayload {
        TsPayload {
            selectors: vec![
                TrafficSelector::Range {
                    ip_protocol: 6,
                    start_port: 179,
                    end_port: 179,
                    start_addr: "192.0.2.1".parse().unwrap(),
                    end_addr: "192.0.2.1".parse().unwrap(),
                },
                TrafficSelector::Range {
                    ip_protocol: 0,
                    start_port: 0,
                    end_port: 65535,
                    start_addr: "2001:db8::1".parse().unwrap(),
                    end_addr: "2001:db8::ffff".parse().unwrap(),
                },
                TrafficSelector::Other {
                    ts_type: TsType(9),
                    body: vec![0xaa, 1, 2, 3, 4, 5],
                },
                TrafficSelector::Other {
                    ts_type: TsType(0),
                    body: vec![0],
                },
            ],
        }
    }

    #[test]
    fn ipv4_selector_encoding_is_exact() {
        let ts = TsPayload {
            selectors: vec![sample().selectors[0].clone()],
        };
        #[rustfmt::skip]
        let expected = [
            0x01, 0x00, 0x00, 0x00,
            0x07, 0x06, 0x00, 0x10, 0x00, 0xb3, 0x00, 0xb3,
            192, 0, 2, 1, 192, 0, 2, 1,
        ];
        assert_eq!(emit(&ts), expected);
        assert_eq!(parse_ts(&expected), Ok(ts));
    }

    #[test]
    fn round_trip() {
        let ts = sample();
        let bytes = emit(&ts);
        assert_eq!(parse_ts(&bytes), Ok(ts));
        assert_eq!(parse_ts(&[0, 0, 0, 0]), Ok(TsPayload { selectors: vec![] }));
    }

    #[test]
    fn mixed_families_emit_as_ipv6() {
        let ts = TsPayload {
            selectors: vec![TrafficSelector::Range {
                ip_protocol: 6,
                start_port: 1,
                end_port: 2,
                start_addr: "192.0.2.1".parse().unwrap(),
                end_addr: "2001:db8::1".parse().unwrap(),
            }],
        };
        let bytes = emit(&ts);
        assert_eq!(bytes[4], 8);
        assert_eq!(bytes.len(), 4 + 40);
        let back = parse_ts(&bytes).unwrap();
        assert_eq!(
            back.selectors[0],
            TrafficSelector::Range {
                ip_protocol: 6,
                start_port: 1,
                end_port: 2,
                start_addr: "::ffff:192.0.2.1".parse().unwrap(),
                end_addr: "2001:db8::1".parse().unwrap(),
            }
        );
    }

    #[test]
    fn other_with_empty_body_emits_zero_octet() {
        let ts = TsPayload {
            selectors: vec![TrafficSelector::Other {
                ts_type: TsType(1),
                body: vec![],
            }],
        };
        assert_eq!(emit(&ts), [1, 0, 0, 0, 1, 0, 0, 4]);
    }

    #[test]
    fn bad_lengths_and_counts_fail() {
        let bytes = emit(&sample());
        for n in 0..bytes.len() {
            assert!(parse_ts(&bytes[..n]).is_err(), "prefix {n}");
        }
        let mut b = bytes.clone();
        b[0] = 3;
        assert_eq!(
            parse_ts(&b),
            Err(WireError::Invalid("number of traffic selectors"))
        );
        b[0] = 5;
        assert_eq!(
            parse_ts(&b),
            Err(WireError::Invalid("number of traffic selectors"))
        );
        for len in [0u16, 3, 4, 15, 17, 40, 0xffff] {
            let mut b = bytes.clone();
            b[6..8].copy_from_slice(&len.to_be_bytes());
            assert!(parse_ts(&b).is_err(), "IPv4 selector length {len}");
        }
        for len in [0u16, 3, 16, 39, 41] {
            let mut b = bytes.clone();
            b[22..24].copy_from_slice(&len.to_be_bytes());
            assert!(parse_ts(&b).is_err(), "IPv6 selector length {len}");
        }
        // An Other selector whose length is below its header.
        assert!(parse_ts(&[1, 0, 0, 0, 9, 0, 0, 3]).is_err());
        assert!(parse_ts(&[1, 0, 0, 0, 9, 0, 0, 5]).is_err());
    }
}
