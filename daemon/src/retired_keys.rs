//! The keys of MKTs that have ended, kept in memory (never on disk) for
//! `[daemon] retired_keys` (default 10 min), so that `aoctl verify
//! --from-daemon` can still check the segments sent before a rekey. Once
//! an MKT is deleted the engine forgets its key; without this, every
//! segment captured before a TCP-MD5 rekey (TCP-MD5 has no KeyID to tell
//! keys apart) failed verification.
//!
//! Only root gets them, through the `mkt-keys` control command, marked
//! retired. They are not kept across a restart: the state file never holds
//! a key. Each key is zeroized when it is dropped (expired, or pushed out
//! by the limit of [`MAX_RETIRED`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use aokd_proto::ike::MktView;
use aokd_proto::mkt::MasterKeyTuple;

/// At most this many retired keys are kept (the oldest go first).
pub const MAX_RETIRED: usize = 4096;

/// One key of an MKT that ended.
pub struct Retired {
    /// The peer's name.
    pub peer: String,
    /// The MKT, key included.
    pub mkt: MasterKeyTuple,
    /// When this daemon saw it end.
    pub at: Instant,
}

/// The retired keys. The live ones are the key manager's: each change of
/// a peer's set comes with the set it replaces ([`RetiredKeys::mkts_changed`]),
/// so that no second copy of every peer's keys is kept (issue: scale,
/// memory per peer).
pub struct RetiredKeys {
    keep: Duration,
    retired: VecDeque<Retired>,
}

impl RetiredKeys {
    /// Keeps retired keys for `keep` (zero: none at all).
    pub fn new(keep: Duration) -> RetiredKeys {
        RetiredKeys {
            keep,
            retired: VecDeque::new(),
        }
    }

    /// The MKTs of `peer` were `old` and are now `mkts`: each one of `old`
    /// that is not in `mkts` is retired at `now`. O(MKTs of the peer) plus
    /// the expired ones dropped.
    pub fn mkts_changed(
        &mut self,
        peer: &str,
        old: &[MasterKeyTuple],
        mkts: &[MktView],
        now: Instant,
    ) {
        self.prune(now);
        if self.keep.is_zero() {
            return;
        }
        for mkt in old {
            if mkts.iter().any(|m| same(&m.mkt, mkt)) {
                continue;
            }
            if self.retired.len() >= MAX_RETIRED {
                self.retired.pop_front();
            }
            self.retired.push_back(Retired {
                peer: peer.to_string(),
                mkt: mkt.clone(),
                at: now,
            });
        }
    }

    /// The retired keys still kept at `now`, oldest first.
    pub fn list(&mut self, now: Instant) -> impl Iterator<Item = &Retired> {
        self.prune(now);
        self.retired.iter()
    }

    fn prune(&mut self, now: Instant) {
        while self
            .retired
            .front()
            .is_some_and(|r| now.saturating_duration_since(r.at) >= self.keep)
        {
            self.retired.pop_front();
        }
    }
}

/// The same MKT: KeyIDs and key.
fn same(a: &MasterKeyTuple, b: &MasterKeyTuple) -> bool {
    (a.send_id, a.recv_id) == (b.send_id, b.recv_id)
        && a.master_key.as_bytes() == b.master_key.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aokd_proto::crypto::Secret;
    use aokd_proto::mkt::MacAlgorithm;

    fn view(id: u8, key: u8, now: Instant) -> MktView {
        MktView {
            mkt: MasterKeyTuple {
                send_id: id,
                recv_id: id,
                algorithm: MacAlgorithm::HmacSha256_128,
                include_options: true,
                master_key: Secret::new(vec![key; 32]),
            },
            ports: Vec::new(),
            created_at: now,
            spi_i: 0,
            spi_r: 0,
            rekey_at: None,
            expires_at: now,
            retire_at: None,
            replaced: false,
        }
    }

    /// The key manager's part: each peer's live set, handed over with
    /// every change.
    struct Live(std::collections::BTreeMap<String, Vec<MasterKeyTuple>>);

    impl Live {
        fn change(&mut self, r: &mut RetiredKeys, peer: &str, mkts: &[MktView], now: Instant) {
            let old = self.0.remove(peer).unwrap_or_default();
            r.mkts_changed(peer, &old, mkts, now);
            self.0
                .insert(peer.into(), mkts.iter().map(|m| m.mkt.clone()).collect());
        }
    }

    #[test]
    fn ended_mkts_are_kept_for_a_while() {
        let t0 = Instant::now();
        let mut r = RetiredKeys::new(Duration::from_secs(600));
        let mut live = Live(Default::default());
        live.change(&mut r, "a", &[view(1, 1, t0)], t0);
        assert_eq!(r.list(t0).count(), 0);
        // Rekeyed: 1 and 2, then 2 only.
        live.change(&mut r, "a", &[view(1, 1, t0), view(2, 2, t0)], t0);
        let t1 = t0 + Duration::from_secs(60);
        live.change(&mut r, "a", &[view(2, 2, t0)], t1);
        let kept: Vec<(String, u8)> = r
            .list(t1)
            .map(|k| (k.peer.clone(), k.mkt.send_id))
            .collect();
        assert_eq!(kept, vec![("a".to_string(), 1)]);
        // Another peer's change does not retire a's MKTs.
        live.change(&mut r, "b", &[view(1, 9, t1)], t1);
        assert_eq!(r.list(t1).count(), 1);
        // The same KeyIDs with another key is another MKT.
        live.change(&mut r, "b", &[view(1, 8, t1)], t1);
        assert_eq!(r.list(t1).count(), 2);
        // Gone after `keep`.
        assert_eq!(r.list(t1 + Duration::from_secs(600)).count(), 0);
    }

    #[test]
    fn off_keeps_nothing_and_the_list_is_bounded() {
        let t0 = Instant::now();
        let mut r = RetiredKeys::new(Duration::ZERO);
        let mut live = Live(Default::default());
        live.change(&mut r, "a", &[view(1, 1, t0)], t0);
        live.change(&mut r, "a", &[], t0);
        assert_eq!(r.list(t0).count(), 0);
        let mut r = RetiredKeys::new(Duration::from_secs(600));
        let mut live = Live(Default::default());
        for i in 0..(MAX_RETIRED + 10) {
            let key = (i % 251) as u8;
            let id = (i % 240) as u8;
            live.change(&mut r, "a", &[view(id, key, t0)], t0);
        }
        assert_eq!(r.list(t0).count(), MAX_RETIRED);
    }
}
