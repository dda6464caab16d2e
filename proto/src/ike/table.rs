//! The IKE SAs of one peer, by local SPI, in an ordered map: iteration order
//! is the order of SPIs, never the process's hash seed, so that the same
//! seed gives the same datagrams in every process. The endpoint keeps the
//! index from every local SPI to its peer beside it, so that a datagram
//! finds its SA in O(log n) and nothing on its path looks at other peers.

use std::collections::BTreeMap;

use super::sa::IkeSa;

/// One peer's SAs, by local SPI.
#[derive(Default)]
pub(super) struct PeerSas {
    sas: BTreeMap<u64, IkeSa>,
}

impl PeerSas {
    /// Puts `sa` in the table under its local SPI. An SA already there
    /// under that SPI is replaced (SPIs are drawn so that this never
    /// happens: [`super::context::Ctx::fresh_spi`]).
    pub(super) fn insert(&mut self, sa: IkeSa) {
        self.sas.insert(sa.local_spi(), sa);
    }

    /// Takes the SA with local SPI `spi` out of the table.
    pub(super) fn remove(&mut self, spi: &u64) -> Option<IkeSa> {
        self.sas.remove(spi)
    }

    pub(super) fn get(&self, spi: &u64) -> Option<&IkeSa> {
        self.sas.get(spi)
    }

    pub(super) fn get_mut(&mut self, spi: &u64) -> Option<&mut IkeSa> {
        self.sas.get_mut(spi)
    }

    pub(super) fn contains_key(&self, spi: &u64) -> bool {
        self.sas.contains_key(spi)
    }

    /// The SAs, in SPI order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &IkeSa> + '_ {
        self.sas.values()
    }

    /// The local SPIs, in order.
    pub(super) fn spis(&self) -> Vec<u64> {
        self.sas.keys().copied().collect()
    }
}
