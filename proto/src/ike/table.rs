//! The IKE SAs of an endpoint, indexed: by local SPI (the key every
//! datagram names) and by peer, so that nothing on the per-datagram path
//! scans the SAs of other peers. Ordered maps only: iteration order is the
//! order of SPIs, never the process's hash seed, so that the same seed gives
//! the same datagrams in every process.
//!
//! Every change through the table marks the SA's peer as touched; the
//! endpoint recomputes the deadlines of touched peers after each input
//! ([`SaTable::take_touched`]).

use std::collections::{BTreeMap, BTreeSet};

use super::sa::IkeSa;

/// The SAs, by local SPI and by peer.
#[derive(Default)]
pub(super) struct SaTable {
    sas: BTreeMap<u64, IkeSa>,
    by_peer: BTreeMap<usize, BTreeSet<u64>>,
    touched: BTreeSet<usize>,
}

impl SaTable {
    /// Puts `sa` in the table under its local SPI. An SA already there
    /// under that SPI is replaced (SPIs are drawn so that this never
    /// happens: [`SaTable::contains_key`]).
    pub(super) fn insert(&mut self, sa: IkeSa) {
        let spi = sa.local_spi();
        self.by_peer.entry(sa.peer).or_default().insert(spi);
        self.touched.insert(sa.peer);
        self.sas.insert(spi, sa);
    }

    /// Takes the SA with local SPI `spi` out of the table.
    pub(super) fn remove(&mut self, spi: &u64) -> Option<IkeSa> {
        let sa = self.sas.remove(spi)?;
        if let Some(set) = self.by_peer.get_mut(&sa.peer) {
            set.remove(spi);
            if set.is_empty() {
                self.by_peer.remove(&sa.peer);
            }
        }
        self.touched.insert(sa.peer);
        Some(sa)
    }

    pub(super) fn get(&self, spi: &u64) -> Option<&IkeSa> {
        self.sas.get(spi)
    }

    /// The SA, to change it in place (its peer counts as touched).
    pub(super) fn get_mut(&mut self, spi: &u64) -> Option<&mut IkeSa> {
        let sa = self.sas.get_mut(spi)?;
        self.touched.insert(sa.peer);
        Some(sa)
    }

    pub(super) fn contains_key(&self, spi: &u64) -> bool {
        self.sas.contains_key(spi)
    }

    /// The local SPIs of the peer's SAs, in SPI order.
    pub(super) fn spis_of(&self, peer: usize) -> Vec<u64> {
        self.by_peer
            .get(&peer)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The peer's SAs, in SPI order.
    pub(super) fn of_peer(&self, peer: usize) -> impl Iterator<Item = &IkeSa> + '_ {
        self.by_peer
            .get(&peer)
            .into_iter()
            .flat_map(|s| s.iter())
            .filter_map(|spi| self.sas.get(spi))
    }

    /// Marks a peer as touched without changing an SA.
    pub(super) fn touch(&mut self, peer: usize) {
        self.touched.insert(peer);
    }

    /// The peers touched since the last call, in order.
    pub(super) fn take_touched(&mut self) -> BTreeSet<usize> {
        std::mem::take(&mut self.touched)
    }
}
