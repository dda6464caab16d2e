//! The IKE SAs of one peer, by local SPI, in a vector sorted by SPI:
//! iteration order is the order of SPIs, never the process's hash seed, so
//! that the same seed gives the same datagrams in every process. A peer has
//! one SA, or a few during a rekey or while half-open ones wait (bounded
//! by the cookie thresholds), so lookups are a binary search over a handful
//! and the table costs one small allocation (an ordered map's first node
//! holds eleven SAs, about 11 KB per peer for one SA). The endpoint keeps
//! the index from every local SPI to its peer beside it, so that a datagram
//! finds its SA in O(log n) and nothing on its path looks at other peers.

use super::sa::IkeSa;

/// One peer's SAs, sorted by local SPI.
#[derive(Default)]
pub(super) struct PeerSas {
    sas: Vec<IkeSa>,
}

impl PeerSas {
    fn find(&self, spi: u64) -> Result<usize, usize> {
        self.sas.binary_search_by_key(&spi, IkeSa::local_spi)
    }

    /// Puts `sa` in the table under its local SPI. An SA already there
    /// under that SPI is replaced (SPIs are drawn so that this never
    /// happens: [`super::context::Ctx::fresh_spi`]).
    pub(super) fn insert(&mut self, sa: IkeSa) {
        match self.find(sa.local_spi()) {
            Ok(i) => self.sas[i] = sa,
            Err(i) => {
                // Room for exactly one more: most peers have one SA.
                self.sas.reserve_exact(1);
                self.sas.insert(i, sa);
            }
        }
    }

    /// Takes the SA with local SPI `spi` out of the table.
    pub(super) fn remove(&mut self, spi: &u64) -> Option<IkeSa> {
        let i = self.find(*spi).ok()?;
        let sa = self.sas.remove(i);
        if self.sas.is_empty() {
            // A forgotten peer keeps nothing.
            self.sas = Vec::new();
        } else if self.sas.capacity() > 2 * self.sas.len() {
            self.sas.shrink_to_fit();
        }
        Some(sa)
    }

    pub(super) fn get(&self, spi: &u64) -> Option<&IkeSa> {
        self.find(*spi).ok().map(|i| &self.sas[i])
    }

    pub(super) fn get_mut(&mut self, spi: &u64) -> Option<&mut IkeSa> {
        self.find(*spi).ok().map(|i| &mut self.sas[i])
    }

    pub(super) fn contains_key(&self, spi: &u64) -> bool {
        self.find(*spi).is_ok()
    }

    /// The SAs, in SPI order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &IkeSa> + '_ {
        self.sas.iter()
    }

    /// The local SPIs, in order.
    pub(super) fn spis(&self) -> Vec<u64> {
        self.sas.iter().map(IkeSa::local_spi).collect()
    }
}
