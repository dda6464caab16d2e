//! The one interface between the key policy ([`crate::keys`],
//! [`crate::sockets::reconcile_on`]) and the kernel: everything aokd does
//! to an attached socket's keys goes through [`SocketKeys`]. Taking a
//! registered socket again (`pidfd_getfd`, checked by `SO_COOKIE`), reading
//! its TCP state and its TCP-AO keys with Current_key and RNext_key, adding
//! and deleting keys (a forced delete selects others in the same call),
//! moving Current_key and RNext_key, reading the counters for `aoctl
//! sockets`, setting and deleting a peer's TCP-MD5 key.
//!
//! [`KernelKeys`] is the real implementation (the [`crate::kernel`]
//! socket options); the tests use an in-memory kernel (`fake`) that keeps a
//! socket's key list, Current_key and RNext_key and refuses what Linux
//! refuses (a duplicate KeyID, deleting a key in use, selecting keys on a
//! listener), so that the policy is tested without root or real sockets.
//!
//! Also here: the dummy-key guards ([`guard_key`] for a peer,
//! [`group_guard_key`] for a peer group's prefixes on a listener;
//! docs/protocol.md "KeyID allocation"), whose KeyIDs come from proto's
//! KeyID space.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};

use aokd_proto::crypto::Secret;
use aokd_proto::mkt::{MacAlgorithm, MasterKeyTuple, MASTER_KEY_LEN};
use rand_core::{CryptoRng, RngCore};

use crate::kernel::ao::{self, AoInfo, AoKeyInfo};
use crate::kernel::sys::{self, TcpState};
use crate::kernel::{md5, KernelError};
use crate::sockets::{reacquire, Gone};

/// KeyIDs reserved for the dummy-key guard, and the test for one: the
/// KeyID space is defined once, in proto (docs/protocol.md "KeyID
/// allocation").
pub use aokd_proto::mkt::{
    is_guard_id, AOKD_GUARD_KEY_IDS, GROUP_GUARD_KEY_ID, GUARD_KEY_IDS, PEER_GUARD_KEY_IDS,
};

#[cfg(test)]
pub mod fake;

/// What aokd does to attached sockets' keys. `peer`/`prefix` name the
/// peer's host key, or a peer group's prefix for its guard on a listener
/// (no VRF binding).
pub trait SocketKeys {
    /// A socket aokd holds for the moment: it must drop it as soon as it
    /// has changed the keys (a descriptor, for the kernel).
    type Socket;

    /// Takes descriptor `fd` of process `pid` again and checks that it is
    /// still the socket with `cookie`.
    fn reacquire(&self, pid: i32, fd: i32, cookie: u64) -> Result<Self::Socket, Gone>;

    /// The socket's TCP state.
    fn tcp_state(&self, sock: &Self::Socket) -> io::Result<TcpState>;

    /// `TCP_AO_GET_KEYS`: every TCP-AO key on the socket, with which is
    /// Current_key and RNext_key.
    fn ao_keys(&self, sock: &Self::Socket) -> Result<Vec<AoKeyInfo>, KernelError>;

    /// `TCP_AO_ADD_KEY`, optionally making the key Current_key/RNext_key.
    fn ao_add(
        &self,
        sock: &Self::Socket,
        peer: IpAddr,
        prefix: u8,
        mkt: &MasterKeyTuple,
        set_current: bool,
        set_rnext: bool,
    ) -> Result<(), KernelError>;

    /// `TCP_AO_DEL_KEY`; with `set_current`/`set_rnext` a forced delete
    /// that selects those KeyIDs in the same call.
    #[allow(clippy::too_many_arguments)]
    fn ao_del(
        &self,
        sock: &Self::Socket,
        peer: IpAddr,
        prefix: u8,
        send_id: u8,
        recv_id: u8,
        set_current: Option<u8>,
        set_rnext: Option<u8>,
    ) -> Result<(), KernelError>;

    /// `TCP_AO_INFO`: Current_key := the key with this SendID.
    fn ao_set_current(&self, sock: &Self::Socket, send_id: u8) -> Result<(), KernelError>;

    /// `TCP_AO_INFO`: RNext_key := the key with this RecvID.
    fn ao_set_rnext(&self, sock: &Self::Socket, recv_id: u8) -> Result<(), KernelError>;

    /// `TCP_AO_INFO`: the selection and the counters.
    fn ao_info(&self, sock: &Self::Socket) -> Result<AoInfo, KernelError>;

    /// `TCP_MD5SIG_EXT`: the peer's TCP-MD5 host key := `key`.
    fn md5_set(&self, sock: &Self::Socket, peer: IpAddr, key: &[u8]) -> Result<(), KernelError>;

    /// `TCP_MD5SIG_EXT` with no key: deletes the peer's TCP-MD5 host key.
    fn md5_del(&self, sock: &Self::Socket, peer: IpAddr) -> Result<(), KernelError>;

    /// `TCP_MD5SIG_EXT` with `TCP_MD5SIG_FLAG_PREFIX`: sets (or replaces in
    /// place) the key for `addr/prefix` (a peer group's guard).
    fn md5_set_prefix(
        &self,
        sock: &Self::Socket,
        addr: IpAddr,
        prefix: u8,
        key: &[u8],
    ) -> Result<(), KernelError>;
}

/// The Linux kernel: the socket options of [`crate::kernel`] on a
/// descriptor taken with `pidfd_getfd`.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelKeys;

impl SocketKeys for KernelKeys {
    type Socket = OwnedFd;

    fn reacquire(&self, pid: i32, fd: i32, cookie: u64) -> Result<OwnedFd, Gone> {
        reacquire(pid, fd, cookie)
    }

    fn tcp_state(&self, sock: &OwnedFd) -> io::Result<TcpState> {
        sys::tcp_state(sock.as_fd())
    }

    fn ao_keys(&self, sock: &OwnedFd) -> Result<Vec<AoKeyInfo>, KernelError> {
        ao::get_keys(sock)
    }

    fn ao_add(
        &self,
        sock: &OwnedFd,
        peer: IpAddr,
        prefix: u8,
        mkt: &MasterKeyTuple,
        set_current: bool,
        set_rnext: bool,
    ) -> Result<(), KernelError> {
        ao::add_key(sock, peer, prefix, mkt, set_current, set_rnext)
    }

    fn ao_del(
        &self,
        sock: &OwnedFd,
        peer: IpAddr,
        prefix: u8,
        send_id: u8,
        recv_id: u8,
        set_current: Option<u8>,
        set_rnext: Option<u8>,
    ) -> Result<(), KernelError> {
        ao::del_key(sock, peer, prefix, send_id, recv_id, set_current, set_rnext)
    }

    fn ao_set_current(&self, sock: &OwnedFd, send_id: u8) -> Result<(), KernelError> {
        ao::set_current(sock, send_id)
    }

    fn ao_set_rnext(&self, sock: &OwnedFd, recv_id: u8) -> Result<(), KernelError> {
        ao::set_rnext(sock, recv_id)
    }

    fn ao_info(&self, sock: &OwnedFd) -> Result<AoInfo, KernelError> {
        ao::info(sock)
    }

    fn md5_set(&self, sock: &OwnedFd, peer: IpAddr, key: &[u8]) -> Result<(), KernelError> {
        md5::set_key(sock, peer, None, key)
    }

    fn md5_del(&self, sock: &OwnedFd, peer: IpAddr) -> Result<(), KernelError> {
        md5::del_key(sock, peer, None)
    }

    fn md5_set_prefix(
        &self,
        sock: &OwnedFd,
        addr: IpAddr,
        prefix: u8,
        key: &[u8],
    ) -> Result<(), KernelError> {
        md5::set_key(sock, addr, Some(prefix), key)
    }
}

/// A guard with a random key, as [`peer_guard_key`] makes it for a new
/// seed: for tests that need one guard.
#[cfg(test)]
pub fn guard_key<R: RngCore + CryptoRng>(rng: &mut R) -> MasterKeyTuple {
    peer_guard_key(&GuardSeed::new(rng), "")
}

/// A dummy MKT that is never negotiated: a 32-octet master key and
/// SendID/RecvID drawn from the peer guards' part of aokd's half of the
/// reserved range, 240-246 ([`PEER_GUARD_KEY_IDS`]; 247 is the group
/// guard's, [`group_guard_key`], and the preload library's guard uses
/// 248-255, so none of them clash on a listener aokd takes over),
/// HMAC-SHA-1-96 (which every TCP-AO kernel accepts), options included.
///
/// Installed for a peer on a socket before any real MKT exists, it makes
/// the socket fail closed: with an AO key matching the peer the kernel drops
/// the peer's unsigned segments, and nobody can produce a valid MAC with the
/// guard's key (reference §1.9). Its KeyIDs cannot collide with negotiated
/// ones (0-239).
///
/// The guard of the peer named `peer`: its key and KeyIDs are derived
/// (HMAC-SHA-256) from `seed`, which is random and one per daemon
/// ([`GuardSeed`]), instead of drawn and kept for each peer: the same key
/// for the peer as long as the process runs, and known to nobody, since
/// the seed never leaves the process (issue: scale, memory per peer; a
/// kept guard cost about 64 octets per peer).
pub fn peer_guard_key(seed: &GuardSeed, peer: &str) -> MasterKeyTuple {
    let prf = aokd_proto::crypto::Prf::HmacSha256;
    let mut input = Vec::with_capacity(GUARD_LABEL.len() + peer.len() + 1);
    input.extend_from_slice(GUARD_LABEL);
    input.extend_from_slice(peer.as_bytes());
    let master_key = prf.prf(seed.0.as_bytes(), &input);
    input.push(1);
    let ids = prf.prf(seed.0.as_bytes(), &input);
    let span = u32::from(PEER_GUARD_KEY_IDS.end() - PEER_GUARD_KEY_IDS.start()) + 1;
    let pick = |b: u8| PEER_GUARD_KEY_IDS.start() + (u32::from(b) % span) as u8;
    MasterKeyTuple {
        send_id: pick(ids.as_bytes()[0]),
        recv_id: pick(ids.as_bytes()[1]),
        algorithm: MacAlgorithm::HmacSha1_96,
        include_options: true,
        master_key,
    }
}

/// What [`peer_guard_key`] derives from, before the peer's name.
const GUARD_LABEL: &[u8] = b"aokd peer guard\0";

/// The daemon's secret for [`peer_guard_key`]: 32 random octets, zeroized
/// on drop, never printed or stored.
pub struct GuardSeed(Secret);

impl GuardSeed {
    /// A new random seed.
    pub fn new<R: RngCore + CryptoRng>(rng: &mut R) -> GuardSeed {
        let mut seed = vec![0u8; MASTER_KEY_LEN];
        rng.fill_bytes(&mut seed);
        GuardSeed(Secret::new(seed))
    }
}

/// The guard of the peer groups' prefixes on a listener: like a peer's
/// ([`peer_guard_key`]) but with a random key, and with SendID and RecvID
/// [`GROUP_GUARD_KEY_ID`] (247), which no peer guard uses: a member's host guard overlaps its group's
/// prefix, and Linux refuses overlapping keys that share a KeyID.
pub fn group_guard_key<R: RngCore + CryptoRng>(rng: &mut R) -> MasterKeyTuple {
    let mut key = vec![0u8; MASTER_KEY_LEN];
    rng.fill_bytes(&mut key);
    MasterKeyTuple {
        send_id: GROUP_GUARD_KEY_ID,
        recv_id: GROUP_GUARD_KEY_ID,
        algorithm: MacAlgorithm::HmacSha1_96,
        include_options: true,
        master_key: Secret::new(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::{impls, Error};

    /// A deterministic counter "RNG" for tests (marked CryptoRng only here).
    struct Counter(u64);
    impl RngCore for Counter {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 16
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            impls::fill_bytes_via_next(self, dest)
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl CryptoRng for Counter {}

    #[test]
    fn a_peer_guard_is_the_same_for_its_peer_and_seed_only() {
        let (s1, s2) = (
            GuardSeed::new(&mut Counter(1)),
            GuardSeed::new(&mut Counter(9)),
        );
        let a = peer_guard_key(&s1, "r2");
        let again = peer_guard_key(&s1, "r2");
        assert_eq!(a.master_key.as_bytes(), again.master_key.as_bytes());
        assert_eq!((a.send_id, a.recv_id), (again.send_id, again.recv_id));
        assert_eq!(a.master_key.len(), MASTER_KEY_LEN);
        for other in [peer_guard_key(&s1, "r3"), peer_guard_key(&s2, "r2")] {
            assert_ne!(a.master_key.as_bytes(), other.master_key.as_bytes());
        }
        assert!(PEER_GUARD_KEY_IDS.contains(&a.send_id) && PEER_GUARD_KEY_IDS.contains(&a.recv_id));
    }

    #[test]
    fn guard_keys_use_only_reserved_ids() {
        let mut rng = Counter(1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let g = guard_key(&mut rng);
            assert!(is_guard_id(g.send_id) && is_guard_id(g.recv_id), "{g:?}");
            assert!(
                PEER_GUARD_KEY_IDS.contains(&g.send_id) && PEER_GUARD_KEY_IDS.contains(&g.recv_id),
                "{g:?}"
            );
            assert_eq!(g.master_key.len(), MASTER_KEY_LEN);
            seen.insert(g.send_id);
        }
        assert_eq!(seen.len(), 7, "all 7 of the peer guards' ids are used");
        assert!(
            !seen.contains(&GROUP_GUARD_KEY_ID),
            "247 is the group guard's"
        );
        let g = group_guard_key(&mut rng);
        assert_eq!((g.send_id, g.recv_id), (247, 247));
        assert!(AOKD_GUARD_KEY_IDS.contains(&g.send_id));
        assert!(!is_guard_id(239) && is_guard_id(240) && is_guard_id(255));
        let a = guard_key(&mut rng);
        let b = guard_key(&mut rng);
        assert_ne!(a.master_key.as_bytes(), b.master_key.as_bytes());
        assert!(!format!("{a:?}").contains(&format!("{:?}", a.master_key.as_bytes())));
    }
}
