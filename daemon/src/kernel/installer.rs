//! The interface the daemon uses to put negotiated MKTs on sockets, with one
//! implementation per [`Backend`]: [`AoInstaller`] (TCP-AO, RFC 5925) and
//! [`Md5Installer`] (TCP-MD5, RFC 2385), plus the dummy-key guard
//! ([`guard_key`], docs/protocol.md "KeyID allocation").

use std::net::IpAddr;
use std::os::fd::BorrowedFd;

use aokd_proto::crypto::Secret;
use aokd_proto::mkt::{MacAlgorithm, MasterKeyTuple, MASTER_KEY_LEN};
use rand_core::{CryptoRng, RngCore};

use super::{ao, host_prefix, md5, sys, Backend, KernelError, KeyContext, Operation};

/// KeyIDs reserved for the dummy-key guard, and the test for one: the
/// KeyID space is defined once, in proto (docs/protocol.md "KeyID
/// allocation").
pub use aokd_proto::mkt::{is_guard_id, GUARD_KEY_IDS};

/// Installs and removes one peer's MKTs on a socket.
pub trait KeyInstaller {
    /// Which kernel facility this installer uses.
    fn backend(&self) -> Backend;

    /// Puts `mkt` on the socket `fd` for the host `peer`. With
    /// `make_current` the MKT is used at once for sending and requested
    /// from the peer; otherwise it is only made available.
    fn install(
        &self,
        fd: BorrowedFd<'_>,
        peer: IpAddr,
        mkt: &MasterKeyTuple,
        make_current: bool,
    ) -> Result<(), KernelError>;

    /// Takes the MKT (`send_id`, `recv_id`) for `peer` off the socket.
    fn remove(
        &self,
        fd: BorrowedFd<'_>,
        peer: IpAddr,
        send_id: u8,
        recv_id: u8,
    ) -> Result<(), KernelError>;
}

/// TCP-AO: one kernel MKT per negotiated MKT, host prefix (/32 or /128).
///
/// `install` with `make_current` sets both Current_key and RNext_key
/// (`set_current`/`set_rnext` of `struct tcp_ao_add`), which is right for a
/// socket that is not connected yet. Listening sockets have neither
/// (reference §1.7), so there the flag is ignored. For a hitless rollover
/// on an established connection install with `make_current = false`, then
/// move RNext with [`ao::set_rnext`], and remove the old MKT once
/// [`ao::info`] shows the new Current_key (reference §1.14).
///
/// `remove` fails with [`Cause::KeyInUse`](super::Cause::KeyInUse) while the
/// MKT is Current_key or RNext_key.
#[derive(Debug, Clone, Copy, Default)]
pub struct AoInstaller;

impl KeyInstaller for AoInstaller {
    fn backend(&self) -> Backend {
        Backend::Ao
    }

    fn install(
        &self,
        fd: BorrowedFd<'_>,
        peer: IpAddr,
        mkt: &MasterKeyTuple,
        make_current: bool,
    ) -> Result<(), KernelError> {
        let listening = if make_current {
            sys::is_listening(fd).map_err(|e| {
                KernelError::os(
                    Operation::SocketInfo,
                    KeyContext::peer(peer, host_prefix(peer))
                        .ids(Some(mkt.send_id), Some(mkt.recv_id)),
                    e,
                )
            })?
        } else {
            false
        };
        let select = make_current && !listening;
        ao::add_key(fd, peer, host_prefix(peer), mkt, select, select)
    }

    fn remove(
        &self,
        fd: BorrowedFd<'_>,
        peer: IpAddr,
        send_id: u8,
        recv_id: u8,
    ) -> Result<(), KernelError> {
        ao::del_key(fd, peer, host_prefix(peer), send_id, recv_id, None, None)
    }
}

/// TCP-MD5 fallback: the MKT's master key becomes the peer's TCP-MD5 host
/// key (docs/kernel.md).
///
/// TCP-MD5 has one key per peer and no KeyIDs, so `install` always takes
/// effect at once, whatever `make_current` says, replacing the peer's
/// previous key; and `remove` deletes the peer's key whichever MKT it came
/// from (the KeyIDs are ignored). Call `remove` only when the peer's last
/// MKT goes, not for an MKT that a newer one has already replaced.
#[derive(Debug, Clone, Copy, Default)]
pub struct Md5Installer;

impl KeyInstaller for Md5Installer {
    fn backend(&self) -> Backend {
        Backend::Md5
    }

    fn install(
        &self,
        fd: BorrowedFd<'_>,
        peer: IpAddr,
        mkt: &MasterKeyTuple,
        _make_current: bool,
    ) -> Result<(), KernelError> {
        md5::set_key(fd, peer, None, mkt.master_key.as_bytes())
    }

    fn remove(
        &self,
        fd: BorrowedFd<'_>,
        peer: IpAddr,
        _send_id: u8,
        _recv_id: u8,
    ) -> Result<(), KernelError> {
        md5::del_key(fd, peer, None)
    }
}

/// A dummy MKT that is never negotiated: a random 32-octet master key and
/// SendID/RecvID drawn from the reserved 240-255, HMAC-SHA-1-96 (which every
/// TCP-AO kernel accepts), options included.
///
/// Installed for a peer on a socket before any real MKT exists, it makes
/// the socket fail closed: with an AO key matching the peer the kernel drops
/// the peer's unsigned segments, and nobody can produce a valid MAC with the
/// guard's key (reference §1.9). Its KeyIDs cannot collide with negotiated
/// ones (0-239).
pub fn guard_key<R: RngCore + CryptoRng>(rng: &mut R) -> MasterKeyTuple {
    let mut key = vec![0u8; MASTER_KEY_LEN];
    rng.fill_bytes(&mut key);
    let span = u32::from(GUARD_KEY_IDS.end() - GUARD_KEY_IDS.start()) + 1;
    let mut pick = || GUARD_KEY_IDS.start() + (rng.next_u32() % span) as u8;
    let send_id = pick();
    let recv_id = pick();
    MasterKeyTuple {
        send_id,
        recv_id,
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
    fn guard_keys_use_only_reserved_ids() {
        let mut rng = Counter(1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let g = guard_key(&mut rng);
            assert!(is_guard_id(g.send_id) && is_guard_id(g.recv_id), "{g:?}");
            assert_eq!(g.master_key.len(), MASTER_KEY_LEN);
            seen.insert(g.send_id);
        }
        assert_eq!(seen.len(), 16, "all 16 reserved ids are used");
        assert!(!is_guard_id(239) && is_guard_id(240) && is_guard_id(255));
        let a = guard_key(&mut rng);
        let b = guard_key(&mut rng);
        assert_ne!(a.master_key.as_bytes(), b.master_key.as_bytes());
        assert!(!format!("{a:?}").contains(&format!("{:?}", a.master_key.as_bytes())));
    }

    #[test]
    fn backends_pick_their_installer() {
        assert_eq!(Backend::Ao.installer().backend(), Backend::Ao);
        assert_eq!(Backend::Md5.installer().backend(), Backend::Md5);
    }
}
