//! Verifying the TCP-AO and TCP-MD5 signatures of captured segments,
//! connection by connection (the logic of `aoctl verify`, sans-IO: the
//! caller hands over raw IP packets in capture order).
//!
//! For each TCP connection the verifier learns the ISNs from the SYN and the
//! SYN-ACK (RFC 5925 5.2: SYN keys use the sender's ISN and 0, every later
//! segment both ISNs), tracks the SNE of each direction (RFC 5925 6.2, see
//! [`super::sne`]), derives the traffic keys of every configured MKT whose
//! KeyID matches the segment's (RFC 5925 3.1: "An incoming TCP segment
//! including TCP-AO MUST match exactly one MKT, indicated solely by the
//! segment's socket pair and its TCP-AO KeyID"), and checks the MAC. TCP-MD5
//! segments (RFC 2385) are checked against every configured MD5 key.
//!
//! Counts per connection: segments, verified, bad MAC, unsigned (no option),
//! unknown KeyID (no configured key; for TCP-MD5: no MD5 key given), no ISN
//! (a TCP-AO segment of a connection whose SYN or SYN-ACK was not captured,
//! so its traffic key cannot be derived), truncated (signed, but cut by the
//! capture's snap length) and malformed (the TCP header or options do not
//! parse). Of the verified segments, those that matched a key marked
//! retired (an MKT the daemon no longer holds, [`AoKey::retired`],
//! [`KeySet::md5_retired`]) are also counted as verified with a retired key.
//!
//! A connection passes ([`ConnectionReport::passed`]) when none of its
//! segments is a bad MAC, unknown KeyID, no ISN, truncated or malformed
//! segment, and, if any of its segments carries TCP-AO or TCP-MD5, none is
//! unsigned. A signed segment that could not be checked is not verified, so
//! it fails the connection. A capture passes when every connection passes
//! and no IP packet that may carry TCP was left unparsed.

use std::collections::HashMap;
use std::net::IpAddr;

use super::kdf::{derive_traffic_key, KeyContext, TrafficKey};
use super::mac::{verify_mac, VerifyError};
use super::segment::{parse_ip_packet, AuthOption, Segment, SegmentError};
use super::sne::SneTracker;
use super::tcp_md5::verify_digest;
use crate::{MacAlgorithm, Secret};

/// A TCP-AO key for verification: the KeyID seen on the wire (the sender's
/// SendID), the algorithm, the TCP option flag and the master key.
#[derive(Clone)]
pub struct AoKey {
    pub key_id: u8,
    pub algorithm: MacAlgorithm,
    /// RFC 5925 3.1 TCP option flag: true when options are covered.
    pub include_options: bool,
    pub master_key: Secret,
    /// The key of an MKT that has ended (kept by the daemon for a while so
    /// that older segments can still be verified): segments it verifies
    /// are counted in [`Counters::verified_retired`] too.
    pub retired: bool,
}

impl core::fmt::Debug for AoKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AoKey")
            .field("key_id", &self.key_id)
            .field("algorithm", &self.algorithm)
            .field("include_options", &self.include_options)
            .field("retired", &self.retired)
            .field("master_key", &"<redacted>")
            .finish()
    }
}

/// The keys a verifier tries.
#[derive(Clone, Default)]
pub struct KeySet {
    pub ao: Vec<AoKey>,
    /// TCP-MD5 keys (RFC 2385 has no key identifier: each is tried).
    pub md5: Vec<Secret>,
    /// TCP-MD5 keys of MKTs that have ended, tried after `md5`; segments
    /// they verify are counted in [`Counters::verified_retired`] too.
    pub md5_retired: Vec<Secret>,
}

impl core::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeySet")
            .field("ao", &self.ao)
            .field("md5", &format_args!("{} key(s)", self.md5.len()))
            .field(
                "md5_retired",
                &format_args!("{} key(s)", self.md5_retired.len()),
            )
            .finish()
    }
}

/// What became of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The MAC or digest matched a configured key.
    Verified,
    /// No configured key with the segment's KeyID matched.
    BadMac,
    /// A segment without TCP-AO or TCP-MD5.
    Unsigned,
    /// No key is configured for the segment's KeyID (or no MD5 key).
    UnknownKeyId,
    /// A TCP-AO segment whose connection's ISNs were never seen.
    NoIsn,
    /// A signed segment cut short by the capture.
    Truncated,
    /// A TCP segment whose header or options do not parse; attributed to
    /// its connection when the ports could be read.
    Malformed(SegmentError),
    /// Not IP, or IP that is not TCP: not counted.
    Ignored,
}

/// Which authentication a connection's segments carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signing {
    None,
    TcpAo,
    TcpMd5,
    /// Some segments carry TCP-AO and others TCP-MD5.
    Mixed,
}

impl Signing {
    pub fn name(self) -> &'static str {
        match self {
            Signing::None => "none",
            Signing::TcpAo => "tcp-ao",
            Signing::TcpMd5 => "tcp-md5",
            Signing::Mixed => "mixed",
        }
    }
}

/// Per-connection counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub segments: u64,
    pub verified: u64,
    /// Of `verified`, those that matched a retired key.
    pub verified_retired: u64,
    pub bad_mac: u64,
    pub unsigned: u64,
    pub unknown_key_id: u64,
    pub no_isn: u64,
    pub truncated: u64,
    pub malformed: u64,
    /// Segments carrying TCP-AO (whatever their outcome).
    pub tcp_ao: u64,
    /// Segments carrying TCP-MD5 (whatever their outcome).
    pub tcp_md5: u64,
}

/// One TCP endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

/// The result for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionReport {
    /// The endpoint that sent the first SYN (or, when no SYN was captured,
    /// the sender of the first segment seen).
    pub client: Endpoint,
    pub server: Endpoint,
    pub counters: Counters,
    /// Both ISNs were learned (from the SYN and SYN-ACK).
    pub isns_seen: bool,
}

impl ConnectionReport {
    pub fn signing(&self) -> Signing {
        match (self.counters.tcp_ao > 0, self.counters.tcp_md5 > 0) {
            (false, false) => Signing::None,
            (true, false) => Signing::TcpAo,
            (false, true) => Signing::TcpMd5,
            (true, true) => Signing::Mixed,
        }
    }

    /// Whether this connection passes (see the module documentation).
    pub fn passed(&self) -> bool {
        let c = &self.counters;
        let signed = self.signing() != Signing::None;
        c.bad_mac == 0
            && c.unknown_key_id == 0
            && c.no_isn == 0
            && c.truncated == 0
            && !(signed && (c.unsigned > 0 || c.malformed > 0))
    }
}

/// Totals over a capture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Packets handed to [`CaptureVerifier::process`] (or counted with
    /// [`CaptureVerifier::count_unparsed`]).
    pub packets: u64,
    /// Packets that are not IP, or IP but not TCP.
    pub ignored: u64,
    /// IP packets that may carry TCP but could not be parsed far enough to
    /// name a connection (bad IP header, fragment, unsupported extension
    /// header, TCP header cut short).
    pub unparsed: u64,
    pub connections: u64,
    pub counters: Counters,
}

/// State of one direction of a connection.
#[derive(Debug, Default)]
struct Direction {
    isn: Option<u32>,
    sne: Option<SneTracker>,
    /// The "other" traffic key of each AO key (by index in the key set),
    /// derived on first use for the current ISNs.
    keys: Vec<Option<TrafficKey>>,
}

#[derive(Debug)]
struct Connection {
    client: Endpoint,
    server: Endpoint,
    /// Index 0: segments sent by `client`; 1: sent by `server`.
    dirs: [Direction; 2],
    counters: Counters,
    /// A segment without SYN was seen.
    saw_non_syn: bool,
}

impl Connection {
    fn new(client: Endpoint, server: Endpoint) -> Connection {
        Connection {
            client,
            server,
            dirs: Default::default(),
            counters: Counters::default(),
            saw_non_syn: false,
        }
    }

    fn set_isn(&mut self, dir: usize, isn: u32) {
        let d = &mut self.dirs[dir];
        if d.isn != Some(isn) {
            d.isn = Some(isn);
            d.sne = Some(SneTracker::new(isn));
            // The "other" keys of both directions depend on both ISNs.
            self.dirs[0].keys.clear();
            self.dirs[1].keys.clear();
        }
    }
}

/// The connection key: both endpoints, lower first.
type FlowKey = (Endpoint, Endpoint);

fn flow_key(a: Endpoint, b: Endpoint) -> FlowKey {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// Verifies the segments of a capture, connection by connection.
#[derive(Debug)]
pub struct CaptureVerifier {
    keys: KeySet,
    index: HashMap<FlowKey, usize>,
    connections: Vec<Connection>,
    packets: u64,
    ignored: u64,
    unparsed: u64,
    /// Set by `check` when the key that verified the segment is retired.
    matched_retired: bool,
}

impl CaptureVerifier {
    pub fn new(keys: KeySet) -> CaptureVerifier {
        CaptureVerifier {
            keys,
            index: HashMap::new(),
            connections: Vec::new(),
            packets: 0,
            ignored: 0,
            unparsed: 0,
            matched_retired: false,
        }
    }

    /// Counts a frame whose link layer announced IP but could not be
    /// decoded (for example a frame shorter than its link header).
    pub fn count_unparsed(&mut self) {
        self.packets += 1;
        self.unparsed += 1;
    }

    /// Counts a frame that carries no IP (ARP, LLDP...).
    pub fn count_ignored(&mut self) {
        self.packets += 1;
        self.ignored += 1;
    }

    /// Processes one raw IP packet (starting at the IP header).
    pub fn process(&mut self, packet: &[u8]) -> Outcome {
        self.packets += 1;
        let segment = match parse_ip_packet(packet) {
            Ok(s) => s,
            Err(SegmentError::NotIp) | Err(SegmentError::NotTcp(_)) => {
                self.ignored += 1;
                return Outcome::Ignored;
            }
            Err(e @ (SegmentError::MalformedOption | SegmentError::BothAoAndMd5)) => {
                // The ports are readable: charge the connection.
                return self.malformed_with_ports(packet, e);
            }
            Err(e) => {
                self.unparsed += 1;
                return Outcome::Malformed(e);
            }
        };
        let (ci, dir) = self.connection_for(&segment);
        self.matched_retired = false;
        let outcome = self.check(ci, dir, &segment);
        let retired = self.matched_retired;
        let c = &mut self.connections[ci].counters;
        c.segments += 1;
        match segment.auth {
            AuthOption::Ao(_) => c.tcp_ao += 1,
            AuthOption::Md5(_) => c.tcp_md5 += 1,
            AuthOption::None => {}
        }
        match outcome {
            Outcome::Verified => {
                c.verified += 1;
                c.verified_retired += u64::from(retired);
            }
            Outcome::BadMac => c.bad_mac += 1,
            Outcome::Unsigned => c.unsigned += 1,
            Outcome::UnknownKeyId => c.unknown_key_id += 1,
            Outcome::NoIsn => c.no_isn += 1,
            Outcome::Truncated => c.truncated += 1,
            Outcome::Malformed(_) => c.malformed += 1,
            Outcome::Ignored => {}
        }
        outcome
    }

    /// A segment whose options do not parse: re-read the addresses and ports
    /// (which did parse) to find its connection.
    fn malformed_with_ports(&mut self, packet: &[u8], e: SegmentError) -> Outcome {
        let Some((src, dst)) = endpoints_of(packet) else {
            self.unparsed += 1;
            return Outcome::Malformed(e);
        };
        let key = flow_key(src, dst);
        let ci = match self.index.get(&key) {
            Some(&ci) => ci,
            None => self.add_connection(key, src, dst),
        };
        let c = &mut self.connections[ci].counters;
        c.segments += 1;
        c.malformed += 1;
        Outcome::Malformed(e)
    }

    fn add_connection(&mut self, key: FlowKey, client: Endpoint, server: Endpoint) -> usize {
        self.connections.push(Connection::new(client, server));
        let ci = self.connections.len() - 1;
        self.index.insert(key, ci);
        ci
    }

    /// Finds (or starts) the segment's connection, learns ISNs, and returns
    /// the connection index and the segment's direction.
    fn connection_for(&mut self, s: &Segment<'_>) -> (usize, usize) {
        let src = Endpoint {
            addr: s.addresses.src(),
            port: s.src_port,
        };
        let dst = Endpoint {
            addr: s.addresses.dst(),
            port: s.dst_port,
        };
        let key = flow_key(src, dst);
        let syn_only = s.syn() && !s.ack_flag();
        let ci = match self.index.get(&key) {
            Some(&ci) => {
                let conn = &self.connections[ci];
                let dir = usize::from(conn.client != src);
                // A SYN with a new ISN, or after the connection carried
                // other segments, opens a new connection on the same socket
                // pair (the old one is reported separately).
                let new_isn = conn.dirs[dir].isn.is_some_and(|isn| isn != s.seq);
                if syn_only && (new_isn || conn.saw_non_syn) {
                    self.add_connection(key, src, dst)
                } else {
                    ci
                }
            }
            None => self.add_connection(key, src, dst),
        };
        let conn = &mut self.connections[ci];
        let dir = usize::from(conn.client != src);
        if syn_only {
            conn.set_isn(dir, s.seq);
        } else if s.syn() {
            // SYN-ACK: the sender's ISN, and the peer's from the ACK.
            conn.set_isn(dir, s.seq);
            conn.set_isn(1 - dir, s.ack.wrapping_sub(1));
        } else {
            conn.saw_non_syn = true;
        }
        (ci, dir)
    }

    fn check(&mut self, ci: usize, dir: usize, s: &Segment<'_>) -> Outcome {
        let conn = &mut self.connections[ci];
        // Track the SNE of every segment of a direction whose ISN is known.
        let sne = conn.dirs[dir].sne.as_mut().map(|t| t.observe(s.seq));
        match s.auth {
            AuthOption::None => Outcome::Unsigned,
            AuthOption::Md5(_) => {
                if self.keys.md5.is_empty() && self.keys.md5_retired.is_empty() {
                    return Outcome::UnknownKeyId;
                }
                let mut result = Outcome::BadMac;
                let current = self.keys.md5.len();
                for (i, key) in self
                    .keys
                    .md5
                    .iter()
                    .chain(&self.keys.md5_retired)
                    .enumerate()
                {
                    match verify_digest(key.as_bytes(), s) {
                        Ok(()) => {
                            self.matched_retired = i >= current;
                            return Outcome::Verified;
                        }
                        Err(VerifyError::Truncated) => result = Outcome::Truncated,
                        Err(_) => {}
                    }
                }
                result
            }
            AuthOption::Ao(ao) => {
                let key_id = ao.key_id;
                let ao_keys = &self.keys.ao;
                let candidates =
                    || (0..ao_keys.len()).filter(move |&i| ao_keys[i].key_id == key_id);
                if candidates().next().is_none() {
                    return Outcome::UnknownKeyId;
                }
                if s.truncated {
                    return Outcome::Truncated;
                }
                if s.syn() {
                    // Self-contained: SYN (ISN, 0), SYN-ACK (ISN, ACK - 1).
                    let dst_isn = if s.ack_flag() {
                        s.ack.wrapping_sub(1)
                    } else {
                        0
                    };
                    let ctx = KeyContext::new(&s.addresses, s.src_port, s.dst_port, s.seq, dst_isn);
                    let sne = sne.unwrap_or(0);
                    for i in candidates() {
                        let k = &ao_keys[i];
                        let tk = derive_traffic_key(k.algorithm, k.master_key.as_bytes(), &ctx);
                        if verify_mac(&tk, s, sne, k.include_options).is_ok() {
                            self.matched_retired = k.retired;
                            return Outcome::Verified;
                        }
                    }
                    return Outcome::BadMac;
                }
                let (Some(src_isn), Some(dst_isn), Some(sne)) =
                    (conn.dirs[dir].isn, conn.dirs[1 - dir].isn, sne)
                else {
                    return Outcome::NoIsn;
                };
                let d = &mut conn.dirs[dir];
                if d.keys.len() != ao_keys.len() {
                    d.keys.clear();
                    d.keys.resize(ao_keys.len(), None);
                }
                for i in candidates() {
                    let k = &ao_keys[i];
                    let tk = d.keys[i].get_or_insert_with(|| {
                        let ctx =
                            KeyContext::new(&s.addresses, s.src_port, s.dst_port, src_isn, dst_isn);
                        derive_traffic_key(k.algorithm, k.master_key.as_bytes(), &ctx)
                    });
                    if verify_mac(tk, s, sne, k.include_options).is_ok() {
                        self.matched_retired = k.retired;
                        return Outcome::Verified;
                    }
                }
                Outcome::BadMac
            }
        }
    }

    /// Reports, one per connection, in the order they were first seen.
    pub fn reports(&self) -> Vec<ConnectionReport> {
        self.connections
            .iter()
            .map(|c| ConnectionReport {
                client: c.client,
                server: c.server,
                counters: c.counters,
                isns_seen: c.dirs[0].isn.is_some() && c.dirs[1].isn.is_some(),
            })
            .collect()
    }

    /// Totals over every connection.
    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            packets: self.packets,
            ignored: self.ignored,
            unparsed: self.unparsed,
            connections: self.connections.len() as u64,
            counters: Counters::default(),
        };
        for c in &self.connections {
            let (a, b) = (&mut t.counters, &c.counters);
            a.segments += b.segments;
            a.verified += b.verified;
            a.verified_retired += b.verified_retired;
            a.bad_mac += b.bad_mac;
            a.unsigned += b.unsigned;
            a.unknown_key_id += b.unknown_key_id;
            a.no_isn += b.no_isn;
            a.truncated += b.truncated;
            a.malformed += b.malformed;
            a.tcp_ao += b.tcp_ao;
            a.tcp_md5 += b.tcp_md5;
        }
        t
    }

    /// Whether the whole capture passes: every connection passes and no
    /// packet that may carry TCP was left unparsed.
    pub fn passed(&self) -> bool {
        self.unparsed == 0 && self.reports().iter().all(ConnectionReport::passed)
    }
}

/// Addresses and ports of a packet whose IP header parsed but whose TCP
/// options did not.
fn endpoints_of(packet: &[u8]) -> Option<(Endpoint, Endpoint)> {
    let v = packet.first()? >> 4;
    let (src, dst, tcp_at): (IpAddr, IpAddr, usize) = match v {
        4 => {
            let ihl = usize::from(packet.first()? & 0x0f) * 4;
            let s: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            (s.into(), d.into(), ihl)
        }
        6 => {
            // Only reached when the TCP header directly follows (the parser
            // walked any extension headers; re-walking them is not needed
            // for the common case, and a miss only moves the count to
            // `unparsed`).
            if *packet.get(6)? != 6 {
                return None;
            }
            let s: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            (s.into(), d.into(), 40)
        }
        _ => return None,
    };
    let p = packet.get(tcp_at..tcp_at + 4)?;
    Some((
        Endpoint {
            addr: src,
            port: u16::from_be_bytes([p[0], p[1]]),
        },
        Endpoint {
            addr: dst,
            port: u16::from_be_bytes([p[2], p[3]]),
        },
    ))
}
