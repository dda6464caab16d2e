//! Reading pcap and pcapng files (with the `pcap-parser` crate) and taking
//! the IP packet out of each frame.
//!
//! Link types: Ethernet (with 802.1Q / 802.1ad tags), Linux cooked capture
//! (SLL and SLL2), raw IP (DLT_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6) and BSD
//! loopback (NULL, LOOP). A file that cannot be read (not a capture, a
//! truncated or corrupt block, a link type not listed) is an error that
//! names the byte offset of the block at fault.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use pcap_parser::traits::PcapNGPacketBlock;
use pcap_parser::{create_reader, Block, Linktype, PcapBlockOwned, PcapError};

/// Initial buffer of the streaming reader; it grows for larger blocks.
const BUFFER: usize = 1 << 20;
/// Largest block accepted (pcapng blocks have 32-bit lengths).
const MAX_BUFFER: usize = 64 << 20;

/// Why a capture file could not be read.
#[derive(Debug)]
pub enum ReadError {
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    Format {
        path: PathBuf,
        offset: u64,
        what: String,
    },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Open { path, error } => write!(f, "{}: {error}", path.display()),
            ReadError::Format { path, offset, what } => {
                write!(f, "{}: at byte offset {offset}: {what}", path.display())
            }
        }
    }
}

/// What a frame holds, once its link layer is removed.
pub enum Frame<'a> {
    /// An IPv4 or IPv6 packet (starting at the version nibble).
    Ip(&'a [u8]),
    /// No IP (ARP, LLDP, ...).
    NotIp,
    /// The link header is cut short.
    Malformed,
}

/// The link layer of frames, by pcap LINKTYPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Ethernet,
    Sll,
    Sll2,
    RawIp,
    Null,
}

fn link_of(lt: Linktype) -> Option<Link> {
    match lt.0 {
        1 => Some(Link::Ethernet),
        113 => Some(Link::Sll),
        276 => Some(Link::Sll2),
        // LINKTYPE_RAW (101), DLT_RAW on some BSDs (12, 14), IPV4, IPV6.
        101 | 12 | 14 | 228 | 229 => Some(Link::RawIp),
        // BSD loopback: a 4-octet address family.
        0 | 108 => Some(Link::Null),
        _ => None,
    }
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;

fn ethertype_payload(ethertype: u16, rest: &[u8]) -> Frame<'_> {
    match ethertype {
        ETHERTYPE_IPV4 | ETHERTYPE_IPV6 => Frame::Ip(rest),
        _ => Frame::NotIp,
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_be_bytes([s[0], s[1]]))
}

fn decode(link: Link, data: &[u8]) -> Frame<'_> {
    match link {
        Link::Ethernet => {
            let mut at = 12;
            loop {
                let Some(ethertype) = be16(data, at) else {
                    return Frame::Malformed;
                };
                match ethertype {
                    // 802.1Q, 802.1ad, and the old QinQ type: skip the tag.
                    0x8100 | 0x88a8 | 0x9100 => at += 4,
                    _ => return ethertype_payload(ethertype, &data[at + 2..]),
                }
            }
        }
        // Linux cooked capture v1: protocol at 14, header 16 octets.
        Link::Sll => match (be16(data, 14), data.get(16..)) {
            (Some(proto), Some(rest)) => ethertype_payload(proto, rest),
            _ => Frame::Malformed,
        },
        // v2: protocol at 0, header 20 octets.
        Link::Sll2 => match (be16(data, 0), data.get(20..)) {
            (Some(proto), Some(rest)) => ethertype_payload(proto, rest),
            _ => Frame::Malformed,
        },
        Link::RawIp => match data.first().map(|b| b >> 4) {
            Some(4) | Some(6) => Frame::Ip(data),
            Some(_) => Frame::NotIp,
            None => Frame::Malformed,
        },
        Link::Null => match data.get(4..) {
            Some(rest) if matches!(rest.first().map(|b| b >> 4), Some(4) | Some(6)) => {
                Frame::Ip(rest)
            }
            Some(_) => Frame::NotIp,
            None => Frame::Malformed,
        },
    }
}

fn describe(e: &PcapError<&[u8]>) -> String {
    match e {
        PcapError::UnexpectedEof | PcapError::Incomplete(_) => {
            "truncated file: the block is incomplete".into()
        }
        PcapError::HeaderNotRecognized => "not a pcap or pcapng file".into(),
        PcapError::Eof => "empty file".into(),
        PcapError::ReadError => "read error".into(),
        PcapError::BufferTooSmall => format!("block larger than {MAX_BUFFER} octets"),
        PcapError::NomError(_, kind) | PcapError::OwnedNomError(_, kind) => {
            format!("malformed block ({kind:?})")
        }
    }
}

/// Reads every frame of a pcap or pcapng file and hands its decoded
/// content to `on_frame`.
pub fn read_frames(path: &Path, on_frame: impl FnMut(Frame<'_>)) -> Result<(), ReadError> {
    let file = File::open(path).map_err(|error| ReadError::Open {
        path: path.to_path_buf(),
        error,
    })?;
    read_frames_from(BufReader::new(file), path, on_frame)
}

/// [`read_frames`] from any reader (the fuzz target's octets); `path`
/// only names the capture in errors.
pub fn read_frames_from(
    input: impl Read + Send,
    path: &Path,
    mut on_frame: impl FnMut(Frame<'_>),
) -> Result<(), ReadError> {
    let format_error = |offset: u64, what: String| ReadError::Format {
        path: path.to_path_buf(),
        offset,
        what,
    };
    let mut reader = create_reader(BUFFER, input).map_err(|e| format_error(0, describe(&e)))?;
    let mut capacity = BUFFER;
    // Legacy pcap: one link type; pcapng: one per interface of the section.
    let mut interfaces: Vec<Linktype> = Vec::new();
    loop {
        let offset = reader.consumed() as u64;
        let step = match reader.next() {
            Ok((len, block)) => {
                let result = match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        interfaces = vec![h.network];
                        match link_of(h.network) {
                            Some(_) => Ok(()),
                            None => Err(format!("unsupported link type {}", h.network)),
                        }
                    }
                    PcapBlockOwned::Legacy(b) => match interfaces.first().and_then(|l| link_of(*l))
                    {
                        Some(link) => {
                            on_frame(decode(link, b.data));
                            Ok(())
                        }
                        None => Err("packet before the file header".into()),
                    },
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                        interfaces.clear();
                        Ok(())
                    }
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        interfaces.push(idb.linktype);
                        Ok(())
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        packet_on(&interfaces, epb.if_id, epb.packet_data(), &mut on_frame)
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        packet_on(&interfaces, 0, spb.packet_data(), &mut on_frame)
                    }
                    PcapBlockOwned::NG(_) => Ok(()),
                };
                Step::Consumed(len, result)
            }
            Err(PcapError::Eof) => return Ok(()),
            Err(PcapError::Incomplete(_)) => Step::Refill,
            Err(PcapError::BufferTooSmall) => Step::Grow,
            Err(e) => return Err(format_error(offset, describe(&e))),
        };
        match step {
            Step::Consumed(len, Ok(())) => reader.consume(len),
            Step::Consumed(_, Err(what)) => return Err(format_error(offset, what)),
            Step::Refill => {
                let exhausted_before = reader.reader_exhausted();
                reader
                    .refill()
                    .map_err(|e| format_error(offset, describe(&e)))?;
                if exhausted_before {
                    return Err(format_error(offset, describe(&PcapError::UnexpectedEof)));
                }
            }
            Step::Grow => {
                if capacity >= MAX_BUFFER || !reader.grow(capacity * 2) {
                    return Err(format_error(offset, describe(&PcapError::BufferTooSmall)));
                }
                capacity *= 2;
                reader
                    .refill()
                    .map_err(|e| format_error(offset, describe(&e)))?;
            }
        }
    }
}

enum Step {
    Consumed(usize, Result<(), String>),
    Refill,
    Grow,
}

fn packet_on(
    interfaces: &[Linktype],
    if_id: u32,
    data: &[u8],
    on_frame: &mut impl FnMut(Frame<'_>),
) -> Result<(), String> {
    let lt = interfaces
        .get(if_id as usize)
        .ok_or_else(|| format!("packet on undeclared interface {if_id}"))?;
    let link =
        link_of(*lt).ok_or_else(|| format!("unsupported link type {lt} (interface {if_id})"))?;
    on_frame(decode(link, data));
    Ok(())
}
