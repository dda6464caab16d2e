//! The uapi structs of Linux TCP-AO and TCP-MD5, and the one place in aokd
//! where they meet `setsockopt(2)`/`getsockopt(2)`.
//!
//! This is the only module of the daemon with `unsafe` code. Every struct is
//! a `#[repr(C)]` transcription of `include/uapi/linux/tcp.h`, field by
//! field, with its size and the offsets that matter asserted at compile time
//! (docs/kernel.md, reference §1.3 and §3.1):
//!
//! | uapi struct | Rust type | size |
//! |---|---|---|
//! | `struct tcp_ao_add` (TCP_AO_ADD_KEY) | [`TcpAoAdd`] | 288 |
//! | `struct tcp_ao_del` (TCP_AO_DEL_KEY) | [`TcpAoDel`] | 144 |
//! | `struct tcp_ao_info_opt` (TCP_AO_INFO) | [`TcpAoInfoOpt`] | 48 |
//! | `struct tcp_ao_getsockopt` (TCP_AO_GET_KEYS) | [`TcpAoGetsockopt`] | 304 |
//! | `struct tcp_md5sig` (TCP_MD5SIG_EXT) | [`TcpMd5Sig`] | 216 |
//!
//! The C bit-fields (`__u32 set_current:1, set_rnext:1, reserved:30` and
//! friends) are plain integers here with named setters and getters. GCC
//! allocates bit-fields from the least significant bit on little-endian
//! targets and from the most significant bit on big-endian ones; [`bit32`]
//! and [`bit16`] encode that rule.
//!
//! Structs that carry key bytes ([`TcpAoAdd`], [`TcpAoGetsockopt`],
//! [`TcpMd5Sig`]) zeroize their key on drop, are neither `Clone` nor `Copy`,
//! and their `Debug` prints `<redacted>` instead of the key.
//!
//! Soundness of the wrappers: [`setsockopt_raw`] and [`getsockopt_raw`] only
//! accept the options listed in [`is_plain_option`], for which the kernel
//! reads or writes at most `optlen` bytes of the buffer; `TCP_AO_GET_KEYS`,
//! which writes an array, has its own wrapper [`get_ao_keys`] that bounds the
//! array with `nkeys`.
//!
//! The socket calls of the attach API (docs/attach.md) that the attach
//! client, the preload library and the tests share (`SCM_RIGHTS`,
//! `pidfd_open`/`pidfd_getfd`, `SO_COOKIE`, socket addresses, `TCP_INFO`
//! state) are `aokd-sys`'s, re-exported here.

use std::io;
use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use aokd_proto::mkt::MasterKeyTuple;
use libc::{c_int, c_void, socklen_t};
use zeroize::Zeroize;

/// `SOL_TCP` / `IPPROTO_TCP`: the level of every TCP-AO and TCP-MD5 option.
pub const SOL_TCP: c_int = libc::IPPROTO_TCP;
/// `TCP_MD5SIG` (14): TCP MD5 Signature (RFC 2385).
pub const TCP_MD5SIG: c_int = 14;
/// `TCP_MD5SIG_EXT` (32): TCP MD5 Signature with extensions (prefix, ifindex).
pub const TCP_MD5SIG_EXT: c_int = 32;
/// `TCP_AO_ADD_KEY` (38): add/set an MKT.
pub const TCP_AO_ADD_KEY: c_int = 38;
/// `TCP_AO_DEL_KEY` (39): delete an MKT.
pub const TCP_AO_DEL_KEY: c_int = 39;
/// `TCP_AO_INFO` (40): set/list TCP-AO per-socket options.
pub const TCP_AO_INFO: c_int = 40;
/// `TCP_AO_GET_KEYS` (41): list MKTs.
pub const TCP_AO_GET_KEYS: c_int = 41;

/// `TCP_AO_MAXKEYLEN`: longest MKT key the kernel stores.
pub const TCP_AO_MAXKEYLEN: usize = 80;
/// `TCP_AO_KEYF_IFINDEX`: `ifindex` names an L3 (VRF) device.
pub const TCP_AO_KEYF_IFINDEX: u8 = 1 << 0;
/// `TCP_AO_KEYF_EXCLUDE_OPT`: TCP options other than TCP-AO are *not*
/// covered by the MAC (RFC 5925 TCP option flag cleared).
pub const TCP_AO_KEYF_EXCLUDE_OPT: u8 = 1 << 1;
/// `TCP_MD5SIG_MAXKEYLEN`: longest TCP-MD5 key.
pub const TCP_MD5SIG_MAXKEYLEN: usize = 80;
/// `TCP_MD5SIG_FLAG_PREFIX`: `tcpm_prefixlen` is valid.
pub const TCP_MD5SIG_FLAG_PREFIX: u8 = 0x1;
/// `TCP_MD5SIG_FLAG_IFINDEX`: `tcpm_ifindex` is valid.
pub const TCP_MD5SIG_FLAG_IFINDEX: u8 = 0x2;
/// Length of `alg_name` in `tcp_ao_add` and `tcp_ao_getsockopt`.
pub const TCP_AO_ALG_NAME_LEN: usize = 64;

/// The mask of C bit-field number `n` (0 = first declared) in a `__u32`.
pub const fn bit32(n: u32) -> u32 {
    if cfg!(target_endian = "little") {
        1 << n
    } else {
        1 << (31 - n)
    }
}

/// The mask of C bit-field number `n` (0 = first declared) in a `__u16`.
pub const fn bit16(n: u16) -> u16 {
    if cfg!(target_endian = "little") {
        1 << n
    } else {
        1 << (15 - n)
    }
}

fn set_bit32(word: &mut u32, mask: u32, on: bool) {
    if on {
        *word |= mask;
    } else {
        *word &= !mask;
    }
}

fn set_bit16(word: &mut u16, mask: u16, on: bool) {
    if on {
        *word |= mask;
    } else {
        *word &= !mask;
    }
}

/// `struct __kernel_sockaddr_storage`: 128 bytes, 8-byte aligned, holding a
/// `sockaddr_in` or `sockaddr_in6` with port 0 (the kernel rejects ports,
/// reference §1.3). Encoded by hand, so no `unsafe` is needed to fill it.
#[repr(C, align(8))]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KernelSockaddr {
    bytes: [u8; 128],
}

impl KernelSockaddr {
    /// All zero: `AF_UNSPEC`, as `TCP_AO_GET_KEYS` wants with `get_all`.
    pub const fn unspecified() -> Self {
        KernelSockaddr { bytes: [0; 128] }
    }

    /// `sockaddr_in` for `addr`, port 0.
    pub fn v4(addr: Ipv4Addr) -> Self {
        let mut s = Self::unspecified();
        s.bytes[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        // sin_port (2..4) stays 0; sin_addr is in network order.
        s.bytes[4..8].copy_from_slice(&addr.octets());
        s
    }

    /// `sockaddr_in6` for `addr`, port, flow label and scope id 0.
    pub fn v6(addr: Ipv6Addr) -> Self {
        let mut s = Self::unspecified();
        s.bytes[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        // sin6_port (2..4) and sin6_flowinfo (4..8) stay 0.
        s.bytes[8..24].copy_from_slice(&addr.octets());
        s
    }

    /// The address family (`ss_family`).
    pub fn family(&self) -> u16 {
        u16::from_ne_bytes([self.bytes[0], self.bytes[1]])
    }

    /// The address, if the family is `AF_INET` or `AF_INET6`.
    pub fn ip(&self) -> Option<IpAddr> {
        let family = c_int::from(self.family());
        if family == libc::AF_INET {
            let mut o = [0u8; 4];
            o.copy_from_slice(&self.bytes[4..8]);
            Some(IpAddr::V4(Ipv4Addr::from(o)))
        } else if family == libc::AF_INET6 {
            let mut o = [0u8; 16];
            o.copy_from_slice(&self.bytes[8..24]);
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        } else {
            None
        }
    }

    /// The raw bytes (for tests).
    pub fn as_bytes(&self) -> &[u8; 128] {
        &self.bytes
    }
}

impl std::fmt::Debug for KernelSockaddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip() {
            Some(ip) => write!(f, "KernelSockaddr({ip})"),
            None => write!(f, "KernelSockaddr(family {})", self.family()),
        }
    }
}

/// Copies `name` into a NUL-terminated `char[64]`; `None` if it does not fit.
fn alg_name_bytes(name: &str) -> Option<[u8; TCP_AO_ALG_NAME_LEN]> {
    let src = name.as_bytes();
    if src.len() >= TCP_AO_ALG_NAME_LEN || src.contains(&0) {
        return None;
    }
    let mut out = [0u8; TCP_AO_ALG_NAME_LEN];
    out[..src.len()].copy_from_slice(src);
    Some(out)
}

/// Reads a NUL-terminated `char[64]` (lossily, for display).
fn alg_name_str(bytes: &[u8; TCP_AO_ALG_NAME_LEN]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `struct tcp_ao_add`, the argument of `setsockopt(TCP_AO_ADD_KEY)`
/// (uapi `linux/tcp.h`; 288 bytes, reference §1.3).
#[repr(C, align(8))]
pub struct TcpAoAdd {
    /// Peer address of the key (`addr`), port 0.
    pub addr: KernelSockaddr,
    /// Crypto API name, NUL-terminated (`alg_name`).
    pub alg_name: [u8; TCP_AO_ALG_NAME_LEN],
    /// L3 device index for VRF (`ifindex`); needs [`TCP_AO_KEYF_IFINDEX`].
    pub ifindex: i32,
    /// `set_current:1, set_rnext:1, reserved:30`.
    flags: u32,
    /// `reserved2`, must be 0.
    pub reserved2: u16,
    /// Peer prefix length (`prefix`).
    pub prefix: u8,
    /// SendID: KeyID of outgoing segments (`sndid`).
    pub sndid: u8,
    /// RecvID: KeyID to match on incoming segments (`rcvid`).
    pub rcvid: u8,
    /// MAC length; 0 means the RFC 5925 default of 12 (`maclen`).
    pub maclen: u8,
    /// `TCP_AO_KEYF_*` (`keyflags`).
    pub keyflags: u8,
    /// Length of `key` in use, at most 80 (`keylen`).
    pub keylen: u8,
    /// The MKT's key (`key[TCP_AO_MAXKEYLEN]`); zeroized on drop.
    pub key: [u8; TCP_AO_MAXKEYLEN],
}

impl TcpAoAdd {
    const SET_CURRENT: u32 = bit32(0);
    const SET_RNEXT: u32 = bit32(1);

    /// An all-zero command.
    pub fn zeroed() -> Self {
        TcpAoAdd {
            addr: KernelSockaddr::unspecified(),
            alg_name: [0; TCP_AO_ALG_NAME_LEN],
            ifindex: 0,
            flags: 0,
            reserved2: 0,
            prefix: 0,
            sndid: 0,
            rcvid: 0,
            maclen: 0,
            keyflags: 0,
            keylen: 0,
            key: [0; TCP_AO_MAXKEYLEN],
        }
    }

    /// The command that installs `mkt` for `addr`/`prefix`: `sndid` =
    /// `mkt.send_id`, `rcvid` = `mkt.recv_id`, `alg_name` =
    /// [`kernel_name`](aokd_proto::mkt::MacAlgorithm::kernel_name),
    /// `maclen` = [`mac_len`](aokd_proto::mkt::MacAlgorithm::mac_len),
    /// [`TCP_AO_KEYF_EXCLUDE_OPT`] when `include_options` is false, and the
    /// master key. `None` when the key is longer than `TCP_AO_MAXKEYLEN`.
    pub fn for_mkt(addr: KernelSockaddr, prefix: u8, mkt: &MasterKeyTuple) -> Option<Self> {
        let key = mkt.master_key.as_bytes();
        let alg_name = alg_name_bytes(mkt.algorithm.kernel_name())?;
        let keylen = u8::try_from(key.len())
            .ok()
            .filter(|&l| usize::from(l) <= TCP_AO_MAXKEYLEN)?;
        let maclen = u8::try_from(mkt.algorithm.mac_len()).ok()?;
        let mut cmd = TcpAoAdd::zeroed();
        cmd.addr = addr;
        cmd.alg_name = alg_name;
        cmd.prefix = prefix;
        cmd.sndid = mkt.send_id;
        cmd.rcvid = mkt.recv_id;
        cmd.maclen = maclen;
        cmd.keyflags = if mkt.include_options {
            0
        } else {
            TCP_AO_KEYF_EXCLUDE_OPT
        };
        cmd.keylen = keylen;
        cmd.key[..key.len()].copy_from_slice(key);
        Some(cmd)
    }

    /// `set_current`: make this key Current_key.
    pub fn set_current(&mut self, on: bool) {
        set_bit32(&mut self.flags, Self::SET_CURRENT, on);
    }

    /// `set_rnext`: make this key RNext_key.
    pub fn set_rnext(&mut self, on: bool) {
        set_bit32(&mut self.flags, Self::SET_RNEXT, on);
    }

    /// The raw bit-field word (for tests and diagnostics).
    pub fn flags_word(&self) -> u32 {
        self.flags
    }
}

impl TcpAoAdd {
    /// Zeroizes the key bytes and `keylen` (also done on drop).
    pub fn wipe_key(&mut self) {
        self.key.zeroize();
        self.keylen = 0;
    }
}

impl Drop for TcpAoAdd {
    fn drop(&mut self) {
        self.wipe_key();
    }
}

impl std::fmt::Debug for TcpAoAdd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpAoAdd")
            .field("addr", &self.addr)
            .field("alg_name", &alg_name_str(&self.alg_name))
            .field("ifindex", &self.ifindex)
            .field("flags", &self.flags)
            .field("prefix", &self.prefix)
            .field("sndid", &self.sndid)
            .field("rcvid", &self.rcvid)
            .field("maclen", &self.maclen)
            .field("keyflags", &self.keyflags)
            .field("keylen", &self.keylen)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// `struct tcp_ao_del`, the argument of `setsockopt(TCP_AO_DEL_KEY)`
/// (144 bytes, reference §1.3).
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy)]
pub struct TcpAoDel {
    /// Peer address of the key to delete (`addr`).
    pub addr: KernelSockaddr,
    /// `ifindex` (with [`TCP_AO_KEYF_IFINDEX`]).
    pub ifindex: i32,
    /// `set_current:1, set_rnext:1, del_async:1, reserved:29`.
    flags: u32,
    /// `reserved2`, must be 0.
    pub reserved2: u16,
    /// `prefix` of the key to delete.
    pub prefix: u8,
    /// `sndid` of the key to delete.
    pub sndid: u8,
    /// `rcvid` of the key to delete.
    pub rcvid: u8,
    /// `current_key`: SendID of the key to make Current_key (with `set_current`).
    pub current_key: u8,
    /// `rnext`: RecvID of the key to make RNext_key (with `set_rnext`).
    pub rnext: u8,
    /// `keyflags` (only [`TCP_AO_KEYF_IFINDEX`] is valid).
    pub keyflags: u8,
}

impl TcpAoDel {
    const SET_CURRENT: u32 = bit32(0);
    const SET_RNEXT: u32 = bit32(1);
    const DEL_ASYNC: u32 = bit32(2);

    /// An all-zero command.
    pub fn zeroed() -> Self {
        TcpAoDel {
            addr: KernelSockaddr::unspecified(),
            ifindex: 0,
            flags: 0,
            reserved2: 0,
            prefix: 0,
            sndid: 0,
            rcvid: 0,
            current_key: 0,
            rnext: 0,
            keyflags: 0,
        }
    }

    /// `set_current`: switch Current_key to `current_key` in the same call.
    pub fn set_current(&mut self, on: bool) {
        set_bit32(&mut self.flags, Self::SET_CURRENT, on);
    }

    /// `set_rnext`: switch RNext_key to `rnext` in the same call.
    pub fn set_rnext(&mut self, on: bool) {
        set_bit32(&mut self.flags, Self::SET_RNEXT, on);
    }

    /// `del_async`: RCU-deferred delete, listening sockets only.
    pub fn set_del_async(&mut self, on: bool) {
        set_bit32(&mut self.flags, Self::DEL_ASYNC, on);
    }

    /// The raw bit-field word.
    pub fn flags_word(&self) -> u32 {
        self.flags
    }
}

/// `struct tcp_ao_info_opt`, set/get with `TCP_AO_INFO` (48 bytes,
/// reference §1.3). A set assigns `ao_required` and `accept_icmps`
/// unconditionally (reference §1.8): always read, modify, write.
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpAoInfoOpt {
    /// `set_current:1, set_rnext:1, ao_required:1, set_counters:1,
    /// accept_icmps:1, reserved:27`.
    flags: u32,
    /// `reserved2`, must be 0.
    pub reserved2: u16,
    /// `current_key`: SendID of Current_key.
    pub current_key: u8,
    /// `rnext`: RecvID of RNext_key.
    pub rnext: u8,
    /// `pkt_good`: segments that verified.
    pub pkt_good: u64,
    /// `pkt_bad`: segments that failed verification.
    pub pkt_bad: u64,
    /// `pkt_key_not_found`: segments with a KeyID that matches no MKT.
    pub pkt_key_not_found: u64,
    /// `pkt_ao_required`: unsigned segments dropped.
    pub pkt_ao_required: u64,
    /// `pkt_dropped_icmp`: ICMP errors ignored (RFC 5925 7.8).
    pub pkt_dropped_icmp: u64,
}

impl TcpAoInfoOpt {
    const SET_CURRENT: u32 = bit32(0);
    const SET_RNEXT: u32 = bit32(1);
    const AO_REQUIRED: u32 = bit32(2);
    const SET_COUNTERS: u32 = bit32(3);
    const ACCEPT_ICMPS: u32 = bit32(4);

    /// An all-zero struct.
    pub fn zeroed() -> Self {
        TcpAoInfoOpt {
            flags: 0,
            reserved2: 0,
            current_key: 0,
            rnext: 0,
            pkt_good: 0,
            pkt_bad: 0,
            pkt_key_not_found: 0,
            pkt_ao_required: 0,
            pkt_dropped_icmp: 0,
        }
    }

    /// `set_current` (in: switch to `current_key`; out: `current_key` valid).
    pub fn set_current(&mut self, on: bool) {
        set_bit32(&mut self.flags, Self::SET_CURRENT, on);
    }
    /// See [`set_current`](Self::set_current).
    pub fn has_current(&self) -> bool {
        self.flags & Self::SET_CURRENT != 0
    }
    /// `set_rnext` (in: switch to `rnext`; out: `rnext` valid).
    pub fn set_rnext(&mut self, on: bool) {
        set_bit32(&mut self.flags, Self::SET_RNEXT, on);
    }
    /// See [`set_rnext`](Self::set_rnext).
    pub fn has_rnext(&self) -> bool {
        self.flags & Self::SET_RNEXT != 0
    }
    /// `ao_required`: refuse segments without TCP-AO.
    pub fn set_ao_required(&mut self, on: bool) {
        set_bit32(&mut self.flags, Self::AO_REQUIRED, on);
    }
    /// See [`set_ao_required`](Self::set_ao_required).
    pub fn ao_required(&self) -> bool {
        self.flags & Self::AO_REQUIRED != 0
    }
    /// `set_counters`: overwrite the `pkt_*` counters.
    pub fn set_counters(&mut self, on: bool) {
        set_bit32(&mut self.flags, Self::SET_COUNTERS, on);
    }
    /// `accept_icmps`: act on ICMP errors RFC 5925 7.8 says to ignore.
    pub fn set_accept_icmps(&mut self, on: bool) {
        set_bit32(&mut self.flags, Self::ACCEPT_ICMPS, on);
    }
    /// See [`set_accept_icmps`](Self::set_accept_icmps).
    pub fn accept_icmps(&self) -> bool {
        self.flags & Self::ACCEPT_ICMPS != 0
    }
    /// The raw bit-field word.
    pub fn flags_word(&self) -> u32 {
        self.flags
    }
}

/// `struct tcp_ao_getsockopt`, one element of the `TCP_AO_GET_KEYS` array
/// (304 bytes, reference §1.3 and §1.11). The kernel returns key bytes
/// here; they are zeroized on drop and never printed.
#[repr(C, align(8))]
pub struct TcpAoGetsockopt {
    /// `addr` (in: filter; out: key's peer).
    pub addr: KernelSockaddr,
    /// `alg_name` (out).
    pub alg_name: [u8; TCP_AO_ALG_NAME_LEN],
    /// `key` (out): the secret.
    pub key: [u8; TCP_AO_MAXKEYLEN],
    /// `nkeys` (in: array length; out: number of keys that matched).
    pub nkeys: u32,
    /// `is_current:1, is_rnext:1, get_all:1, reserved:13`.
    flags: u16,
    /// `sndid` (in/out).
    pub sndid: u8,
    /// `rcvid` (in/out).
    pub rcvid: u8,
    /// `prefix` (in/out).
    pub prefix: u8,
    /// `maclen` (out).
    pub maclen: u8,
    /// `keyflags` (in/out).
    pub keyflags: u8,
    /// `keylen` (out).
    pub keylen: u8,
    /// `ifindex` (in/out).
    pub ifindex: i32,
    /// `pkt_good` (out, per key).
    pub pkt_good: u64,
    /// `pkt_bad` (out, per key).
    pub pkt_bad: u64,
}

impl TcpAoGetsockopt {
    const IS_CURRENT: u16 = bit16(0);
    const IS_RNEXT: u16 = bit16(1);
    const GET_ALL: u16 = bit16(2);

    /// An all-zero element.
    pub fn zeroed() -> Self {
        TcpAoGetsockopt {
            addr: KernelSockaddr::unspecified(),
            alg_name: [0; TCP_AO_ALG_NAME_LEN],
            key: [0; TCP_AO_MAXKEYLEN],
            nkeys: 0,
            flags: 0,
            sndid: 0,
            rcvid: 0,
            prefix: 0,
            maclen: 0,
            keyflags: 0,
            keylen: 0,
            ifindex: 0,
            pkt_good: 0,
            pkt_bad: 0,
        }
    }

    /// `is_current` (in: filter on Current_key; out: this key is current).
    pub fn set_is_current(&mut self, on: bool) {
        set_bit16(&mut self.flags, Self::IS_CURRENT, on);
    }
    /// See [`set_is_current`](Self::set_is_current).
    pub fn is_current(&self) -> bool {
        self.flags & Self::IS_CURRENT != 0
    }
    /// `is_rnext` (in: filter on RNext_key; out: this key is rnext).
    pub fn set_is_rnext(&mut self, on: bool) {
        set_bit16(&mut self.flags, Self::IS_RNEXT, on);
    }
    /// See [`set_is_rnext`](Self::set_is_rnext).
    pub fn is_rnext(&self) -> bool {
        self.flags & Self::IS_RNEXT != 0
    }
    /// `get_all`: dump every key (addr must then be `AF_UNSPEC`).
    pub fn set_get_all(&mut self, on: bool) {
        set_bit16(&mut self.flags, Self::GET_ALL, on);
    }
    /// The algorithm name the kernel reported.
    pub fn alg_name(&self) -> String {
        alg_name_str(&self.alg_name)
    }
    /// The raw bit-field word.
    pub fn flags_word(&self) -> u16 {
        self.flags
    }
}

impl TcpAoGetsockopt {
    /// Zeroizes the key bytes the kernel returned (also done on drop).
    pub fn wipe_key(&mut self) {
        self.key.zeroize();
    }
}

impl Drop for TcpAoGetsockopt {
    fn drop(&mut self) {
        self.wipe_key();
    }
}

impl std::fmt::Debug for TcpAoGetsockopt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpAoGetsockopt")
            .field("addr", &self.addr)
            .field("alg_name", &self.alg_name())
            .field("key", &"<redacted>")
            .field("nkeys", &self.nkeys)
            .field("flags", &self.flags)
            .field("sndid", &self.sndid)
            .field("rcvid", &self.rcvid)
            .field("prefix", &self.prefix)
            .field("maclen", &self.maclen)
            .field("keyflags", &self.keyflags)
            .field("keylen", &self.keylen)
            .field("ifindex", &self.ifindex)
            .field("pkt_good", &self.pkt_good)
            .field("pkt_bad", &self.pkt_bad)
            .finish()
    }
}

/// `struct tcp_md5sig`, the argument of `setsockopt(TCP_MD5SIG[_EXT])`
/// (216 bytes, reference §3.1). `tcpm_keylen == 0` deletes the key.
#[repr(C, align(8))]
pub struct TcpMd5Sig {
    /// `tcpm_addr`: the peer (port ignored).
    pub addr: KernelSockaddr,
    /// `tcpm_flags`: `TCP_MD5SIG_FLAG_*` (TCP_MD5SIG_EXT only).
    pub flags: u8,
    /// `tcpm_prefixlen` (with [`TCP_MD5SIG_FLAG_PREFIX`]).
    pub prefixlen: u8,
    /// `tcpm_keylen`: 0 deletes, at most 80.
    pub keylen: u16,
    /// `tcpm_ifindex` (with [`TCP_MD5SIG_FLAG_IFINDEX`]).
    pub ifindex: i32,
    /// `tcpm_key[TCP_MD5SIG_MAXKEYLEN]`; zeroized on drop.
    pub key: [u8; TCP_MD5SIG_MAXKEYLEN],
}

impl TcpMd5Sig {
    /// An all-zero command (a delete of a host key for `AF_UNSPEC`).
    pub fn zeroed() -> Self {
        TcpMd5Sig {
            addr: KernelSockaddr::unspecified(),
            flags: 0,
            prefixlen: 0,
            keylen: 0,
            ifindex: 0,
            key: [0; TCP_MD5SIG_MAXKEYLEN],
        }
    }
}

impl TcpMd5Sig {
    /// Zeroizes the key bytes (also done on drop).
    pub fn wipe_key(&mut self) {
        self.key.zeroize();
    }
}

impl Drop for TcpMd5Sig {
    fn drop(&mut self) {
        self.wipe_key();
    }
}

impl std::fmt::Debug for TcpMd5Sig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpMd5Sig")
            .field("addr", &self.addr)
            .field("flags", &self.flags)
            .field("prefixlen", &self.prefixlen)
            .field("keylen", &self.keylen)
            .field("ifindex", &self.ifindex)
            .field("key", &"<redacted>")
            .finish()
    }
}

// Sizes and offsets from reference §1.3 / §3.1 (computed with gcc on
// x86_64; identical on every 64-bit ABI with 8-byte aligned
// __kernel_sockaddr_storage).
const _: () = assert!(size_of::<KernelSockaddr>() == 128);
const _: () = assert!(size_of::<TcpAoAdd>() == 288);
const _: () = assert!(size_of::<TcpAoDel>() == 144);
const _: () = assert!(size_of::<TcpAoInfoOpt>() == 48);
const _: () = assert!(size_of::<TcpAoGetsockopt>() == 304);
const _: () = assert!(size_of::<TcpMd5Sig>() == 216);
const _: () = assert!(offset_of!(TcpAoAdd, alg_name) == 128);
const _: () = assert!(offset_of!(TcpAoAdd, ifindex) == 192);
const _: () = assert!(offset_of!(TcpAoAdd, flags) == 196);
const _: () = assert!(offset_of!(TcpAoAdd, reserved2) == 200);
const _: () = assert!(offset_of!(TcpAoAdd, prefix) == 202);
const _: () = assert!(offset_of!(TcpAoAdd, sndid) == 203);
const _: () = assert!(offset_of!(TcpAoAdd, rcvid) == 204);
const _: () = assert!(offset_of!(TcpAoAdd, maclen) == 205);
const _: () = assert!(offset_of!(TcpAoAdd, keyflags) == 206);
const _: () = assert!(offset_of!(TcpAoAdd, keylen) == 207);
const _: () = assert!(offset_of!(TcpAoAdd, key) == 208);
const _: () = assert!(offset_of!(TcpAoDel, ifindex) == 128);
const _: () = assert!(offset_of!(TcpAoDel, flags) == 132);
const _: () = assert!(offset_of!(TcpAoDel, reserved2) == 136);
const _: () = assert!(offset_of!(TcpAoDel, prefix) == 138);
const _: () = assert!(offset_of!(TcpAoDel, sndid) == 139);
const _: () = assert!(offset_of!(TcpAoDel, rcvid) == 140);
const _: () = assert!(offset_of!(TcpAoDel, current_key) == 141);
const _: () = assert!(offset_of!(TcpAoDel, rnext) == 142);
const _: () = assert!(offset_of!(TcpAoDel, keyflags) == 143);
const _: () = assert!(offset_of!(TcpAoInfoOpt, reserved2) == 4);
const _: () = assert!(offset_of!(TcpAoInfoOpt, current_key) == 6);
const _: () = assert!(offset_of!(TcpAoInfoOpt, rnext) == 7);
const _: () = assert!(offset_of!(TcpAoInfoOpt, pkt_good) == 8);
const _: () = assert!(offset_of!(TcpAoInfoOpt, pkt_bad) == 16);
const _: () = assert!(offset_of!(TcpAoInfoOpt, pkt_key_not_found) == 24);
const _: () = assert!(offset_of!(TcpAoInfoOpt, pkt_ao_required) == 32);
const _: () = assert!(offset_of!(TcpAoInfoOpt, pkt_dropped_icmp) == 40);
const _: () = assert!(offset_of!(TcpAoGetsockopt, alg_name) == 128);
const _: () = assert!(offset_of!(TcpAoGetsockopt, key) == 192);
const _: () = assert!(offset_of!(TcpAoGetsockopt, nkeys) == 272);
const _: () = assert!(offset_of!(TcpAoGetsockopt, flags) == 276);
const _: () = assert!(offset_of!(TcpAoGetsockopt, sndid) == 278);
const _: () = assert!(offset_of!(TcpAoGetsockopt, rcvid) == 279);
const _: () = assert!(offset_of!(TcpAoGetsockopt, prefix) == 280);
const _: () = assert!(offset_of!(TcpAoGetsockopt, maclen) == 281);
const _: () = assert!(offset_of!(TcpAoGetsockopt, keyflags) == 282);
const _: () = assert!(offset_of!(TcpAoGetsockopt, keylen) == 283);
const _: () = assert!(offset_of!(TcpAoGetsockopt, ifindex) == 284);
const _: () = assert!(offset_of!(TcpAoGetsockopt, pkt_good) == 288);
const _: () = assert!(offset_of!(TcpAoGetsockopt, pkt_bad) == 296);
const _: () = assert!(offset_of!(TcpMd5Sig, flags) == 128);
const _: () = assert!(offset_of!(TcpMd5Sig, prefixlen) == 129);
const _: () = assert!(offset_of!(TcpMd5Sig, keylen) == 130);
const _: () = assert!(offset_of!(TcpMd5Sig, ifindex) == 132);
const _: () = assert!(offset_of!(TcpMd5Sig, key) == 136);

/// A plain-old-data argument of a socket option.
///
/// # Safety
///
/// Implementors are `#[repr(C)]` (or a primitive integer), have no padding
/// bytes (the sizes asserted above equal the sum of the fields), and every
/// bit pattern is a valid value (only integers and integer arrays), so the
/// kernel may read all `size_of::<Self>()` bytes and write any of them.
pub unsafe trait KernelStruct: Sized {}

// SAFETY: see the trait; layouts asserted above.
unsafe impl KernelStruct for TcpAoAdd {}
// SAFETY: see the trait; layouts asserted above.
unsafe impl KernelStruct for TcpAoDel {}
// SAFETY: see the trait; layouts asserted above.
unsafe impl KernelStruct for TcpAoInfoOpt {}
// SAFETY: see the trait; layouts asserted above.
unsafe impl KernelStruct for TcpAoGetsockopt {}
// SAFETY: see the trait; layouts asserted above.
unsafe impl KernelStruct for TcpMd5Sig {}
// SAFETY: a primitive integer: no padding, every bit pattern valid.
unsafe impl KernelStruct for c_int {}
// SAFETY: a primitive integer (SO_COOKIE): no padding, every bit pattern valid.
unsafe impl KernelStruct for u64 {}

/// Whether `(level, name)` is an option the raw wrappers may pass: one for
/// which the kernel reads or writes at most `optlen` bytes at `optval` and
/// follows no pointer inside it. `TCP_AO_GET_KEYS` is not one (it writes
/// `nkeys` elements): use [`get_ao_keys`].
pub fn is_plain_option(level: c_int, name: c_int) -> bool {
    match level {
        SOL_TCP => matches!(
            name,
            TCP_MD5SIG
                | TCP_MD5SIG_EXT
                | TCP_AO_ADD_KEY
                | TCP_AO_DEL_KEY
                | TCP_AO_INFO
                | libc::TCP_INFO
        ),
        libc::SOL_SOCKET => matches!(
            name,
            libc::SO_DOMAIN
                | libc::SO_TYPE
                | libc::SO_PROTOCOL
                | libc::SO_ACCEPTCONN
                | libc::SO_COOKIE
        ),
        _ => false,
    }
}

fn refuse(level: c_int, name: c_int) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("socket option {level}/{name} is not one the raw wrappers may pass"),
    )
}

/// The bytes of a [`KernelStruct`] (tests only: they may be secret).
#[cfg(test)]
pub(crate) fn bytes_of<T: KernelStruct>(value: &T) -> &[u8] {
    // SAFETY: `value` is a valid reference to `size_of::<T>()` initialised
    // bytes: KernelStruct types have no padding, so every byte is
    // initialised; the slice borrows `value` and cannot outlive it.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

fn optlen_of<T>() -> socklen_t {
    // The structs are at most 304 bytes, far below socklen_t::MAX.
    size_of::<T>() as socklen_t
}

/// `setsockopt(fd, level, name, value, sizeof *value)`.
///
/// Only options for which [`is_plain_option`] holds are passed; any other
/// gives `InvalidInput` without a system call. The OS error comes back
/// unchanged (`io::Error::raw_os_error`).
pub fn setsockopt_raw<T: KernelStruct>(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    value: &T,
) -> io::Result<()> {
    if !is_plain_option(level, name) {
        return Err(refuse(level, name));
    }
    // SAFETY: `fd` is a live descriptor for the duration of the borrow;
    // `value` points to `size_of::<T>()` initialised bytes that stay borrowed
    // during the call, and for the allowed options the kernel only reads
    // `optlen` bytes from `optval`.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast::<c_void>(),
            optlen_of::<T>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getsockopt(fd, level, name, value, &len)` with `len = sizeof *value`;
/// returns the length the kernel reports back.
///
/// `value` is input too (the kernel reads it for `TCP_AO_INFO`). Only
/// options for which [`is_plain_option`] holds are passed.
pub fn getsockopt_raw<T: KernelStruct>(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    value: &mut T,
) -> io::Result<usize> {
    if !is_plain_option(level, name) {
        return Err(refuse(level, name));
    }
    let mut len = optlen_of::<T>();
    // SAFETY: `fd` is live; `value` is a unique borrow of `size_of::<T>()`
    // bytes, every bit pattern of which is a valid `T` (KernelStruct), and
    // for the allowed options the kernel writes at most `len` bytes there;
    // `len` is a valid, writable socklen_t.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *mut T).cast::<c_void>(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(len as usize)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getsockopt(TCP_AO_GET_KEYS)` into `buf` (reference §1.11).
///
/// `buf[0]` is the filter; this function sets `buf[0].nkeys = buf.len()`
/// itself, so the kernel writes at most `buf.len()` elements. Returns the
/// number of keys that matched, which may exceed `buf.len()` (then only the
/// first `buf.len()` were written: call again with a larger buffer).
pub fn get_ao_keys(fd: BorrowedFd<'_>, buf: &mut [TcpAoGetsockopt]) -> io::Result<u32> {
    let capacity =
        u32::try_from(buf.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let Some(first) = buf.first_mut() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP_AO_GET_KEYS needs at least one element",
        ));
    };
    first.nkeys = capacity;
    let mut len = optlen_of::<TcpAoGetsockopt>();
    // SAFETY: `fd` is live; `buf` is a unique borrow of `buf.len()`
    // contiguous elements. tcp_ao_copy_mkts_to_user() writes at most
    // `nkeys` (= buf.len()) entries of min(len, ksize) <= len bytes at
    // stride `len` = size_of::<TcpAoGetsockopt>(), plus `nkeys` inside
    // element 0 and the int at `&len`; every bit pattern is a valid
    // TcpAoGetsockopt (KernelStruct).
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_TCP,
            TCP_AO_GET_KEYS,
            buf.as_mut_ptr().cast::<c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf[0].nkeys)
}

// The socket calls that the attach client, the preload library and the
// tests make too live once, in `aokd-sys`; re-exported so that the daemon
// keeps one `kernel::sys` to call.
pub use aokd_sys::{
    connect, is_listening, local_address, peer_address, pidfd_getfd, pidfd_open, recv_with_fd,
    send_with_fd, socket_cookie, socket_domain, socket_protocol, socket_type, tcp_socket,
    tcp_state, TcpState, MAX_RECEIVED_FDS,
};

#[cfg(test)]
mod tests {
    use super::*;
    use aokd_proto::crypto::Secret;
    use aokd_proto::mkt::MacAlgorithm;
    use std::os::fd::AsFd;

    fn mkt(include_options: bool) -> MasterKeyTuple {
        MasterKeyTuple {
            send_id: 5,
            recv_id: 7,
            algorithm: MacAlgorithm::HmacSha256_128,
            include_options,
            master_key: Secret::new((1..=32).collect()),
        }
    }

    #[test]
    fn sizes_match_the_uapi() {
        assert_eq!(size_of::<TcpAoAdd>(), 288);
        assert_eq!(size_of::<TcpAoDel>(), 144);
        assert_eq!(size_of::<TcpAoInfoOpt>(), 48);
        assert_eq!(size_of::<TcpAoGetsockopt>(), 304);
        assert_eq!(size_of::<TcpMd5Sig>(), 216);
        assert_eq!(std::mem::align_of::<TcpAoAdd>(), 8);
        assert_eq!(std::mem::align_of::<TcpMd5Sig>(), 8);
    }

    #[test]
    fn offsets_match_the_uapi() {
        assert_eq!(offset_of!(TcpAoAdd, alg_name), 128);
        assert_eq!(offset_of!(TcpAoAdd, sndid), 203);
        assert_eq!(offset_of!(TcpAoAdd, key), 208);
        assert_eq!(offset_of!(TcpAoDel, current_key), 141);
        assert_eq!(offset_of!(TcpAoInfoOpt, pkt_dropped_icmp), 40);
        assert_eq!(offset_of!(TcpAoGetsockopt, nkeys), 272);
        assert_eq!(offset_of!(TcpAoGetsockopt, pkt_bad), 296);
        assert_eq!(offset_of!(TcpMd5Sig, keylen), 130);
        assert_eq!(offset_of!(TcpMd5Sig, key), 136);
    }

    #[test]
    fn tcp_ao_add_encodes_an_mkt() {
        let addr = KernelSockaddr::v4(Ipv4Addr::new(192, 0, 2, 2));
        let mut cmd = TcpAoAdd::for_mkt(addr, 32, &mkt(false)).expect("fits");
        cmd.set_current(true);
        let b = bytes_of(&cmd);
        assert_eq!(b.len(), 288);
        // sockaddr_in: family AF_INET (host order), port 0, 192.0.2.2.
        assert_eq!(&b[0..2], &(libc::AF_INET as u16).to_ne_bytes());
        assert_eq!(&b[2..4], &[0, 0]);
        assert_eq!(&b[4..8], &[192, 0, 2, 2]);
        assert!(b[8..128].iter().all(|&x| x == 0));
        // alg_name, NUL-padded.
        assert_eq!(&b[128..140], b"hmac(sha256)");
        assert!(b[140..192].iter().all(|&x| x == 0));
        // ifindex 0; bit-field word with set_current only; reserved2 0.
        assert_eq!(&b[192..196], &[0; 4]);
        assert_eq!(&b[196..200], &bit32(0).to_ne_bytes());
        assert_eq!(&b[200..202], &[0, 0]);
        assert_eq!(b[202], 32, "prefix");
        assert_eq!(b[203], 5, "sndid");
        assert_eq!(b[204], 7, "rcvid");
        assert_eq!(b[205], 16, "maclen");
        assert_eq!(b[206], TCP_AO_KEYF_EXCLUDE_OPT, "keyflags");
        assert_eq!(b[207], 32, "keylen");
        assert_eq!(&b[208..240], &(1..=32).collect::<Vec<u8>>()[..]);
        assert!(b[240..288].iter().all(|&x| x == 0));
    }

    #[test]
    fn tcp_ao_add_includes_options_by_default() {
        let addr = KernelSockaddr::v6("2001:db8::1".parse().expect("literal"));
        let mut cmd = TcpAoAdd::for_mkt(addr, 128, &mkt(true)).expect("fits");
        cmd.set_rnext(true);
        let b = bytes_of(&cmd);
        assert_eq!(&b[0..2], &(libc::AF_INET6 as u16).to_ne_bytes());
        assert_eq!(
            &b[8..24],
            &"2001:db8::1".parse::<Ipv6Addr>().expect("literal").octets()
        );
        assert_eq!(&b[196..200], &bit32(1).to_ne_bytes());
        assert_eq!(b[206], 0, "no TCP_AO_KEYF_EXCLUDE_OPT");
    }

    #[test]
    fn tcp_ao_add_refuses_long_keys() {
        let mut long = mkt(true);
        long.master_key = Secret::new(vec![1; 81]);
        assert!(TcpAoAdd::for_mkt(KernelSockaddr::unspecified(), 0, &long).is_none());
        long.master_key = Secret::new(vec![1; 80]);
        assert!(TcpAoAdd::for_mkt(KernelSockaddr::unspecified(), 0, &long).is_some());
    }

    #[test]
    fn key_bytes_are_zeroized_on_drop() {
        let mut cmd =
            TcpAoAdd::for_mkt(KernelSockaddr::unspecified(), 0, &mkt(true)).expect("fits");
        assert!(cmd.key[..32].iter().any(|&b| b != 0));
        // What Drop runs.
        cmd.wipe_key();
        assert!(cmd.key.iter().all(|&b| b == 0));
        assert_eq!(cmd.keylen, 0);
        let dbg = format!("{cmd:?}");
        assert!(dbg.contains("<redacted>"));
    }

    #[test]
    fn bitfields_land_where_gcc_puts_them() {
        let mut del = TcpAoDel::zeroed();
        del.set_current(true);
        del.set_rnext(true);
        del.set_del_async(true);
        let b = bytes_of(&del);
        assert_eq!(
            &b[132..136],
            &(bit32(0) | bit32(1) | bit32(2)).to_ne_bytes()
        );
        let mut info = TcpAoInfoOpt::zeroed();
        info.set_ao_required(true);
        info.set_accept_icmps(true);
        assert_eq!(info.flags_word(), bit32(2) | bit32(4));
        assert!(info.ao_required() && info.accept_icmps() && !info.has_rnext());
        info.set_ao_required(false);
        assert_eq!(info.flags_word(), bit32(4));
        let mut get = TcpAoGetsockopt::zeroed();
        get.set_get_all(true);
        let b = bytes_of(&get);
        assert_eq!(&b[276..278], &bit16(2).to_ne_bytes());
        if cfg!(target_endian = "little") {
            assert_eq!(bit32(0), 1);
            assert_eq!(bit16(2), 4);
        }
    }

    #[test]
    fn sockaddr_round_trips() {
        for ip in ["192.0.2.1", "2001:db8::7", "::ffff:192.0.2.1"] {
            let ip: IpAddr = ip.parse().expect("literal");
            let sa = match ip {
                IpAddr::V4(a) => KernelSockaddr::v4(a),
                IpAddr::V6(a) => KernelSockaddr::v6(a),
            };
            assert_eq!(sa.ip(), Some(ip));
        }
        assert_eq!(KernelSockaddr::unspecified().ip(), None);
    }

    #[test]
    fn raw_wrappers_refuse_other_options() {
        let sock = tcp_socket(false).expect("socket");
        let mut v: c_int = 0;
        let e =
            getsockopt_raw(sock.as_fd(), SOL_TCP, TCP_AO_GET_KEYS, &mut v).expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = setsockopt_raw(sock.as_fd(), libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &v)
            .expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            socket_domain(sock.as_fd()).expect("SO_DOMAIN"),
            libc::AF_INET
        );
        assert!(!is_listening(sock.as_fd()).expect("SO_ACCEPTCONN"));
    }
}
