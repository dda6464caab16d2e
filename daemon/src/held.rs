//! Loop turns held back until their new MKTs' records are durable
//! (pipelined group commit; docs/architecture.md, docs/state.md).
//!
//! The event loop never waits for the state writer. A turn that made a new
//! MKT asks [`crate::persist::Persist::durable`] for the commit of its
//! records and hands its output here: the datagrams to the peers of those
//! MKTs (the IKE_AUTH or CREATE_CHILD_SA answer that gives the peer the same
//! MKT; which datagram carries which key is not known here, so all of them)
//! and the key manager's part of its events (keys go on sockets) wait until
//! the commit is done, while the loop handles the next datagrams.
//!
//! The rules, which keep "no key on a socket and no answer carrying an MKT
//! before its record is durable" while a storm's other handshakes go on:
//!
//! - turns are released in order, each once its own commit is done;
//! - a later turn's datagram to an address that has datagrams waiting waits
//!   behind them (a peer sees its answers in order, and a replayed answer
//!   never overtakes the first one);
//! - a later turn's datagrams to other addresses go out at once (the
//!   IKE_SA_INIT answers of a storm do not wait for other peers' commits),
//!   while its key manager part waits in order behind the earlier turns;
//! - when the address of an MKT's peer is not known, all of the turn's
//!   datagrams wait.
//!
//! Attach answers wait the same way ([`HeldTurns::hold_answers`]): a
//! socket's record is durable before its owner is answered and goes on
//! with the socket (a restarted aokd must find it), without the loop
//! waiting for the commit, so that many attaches share one. They are
//! released in order with the turns.
//!
//! Bookkeeping is O(log n) per datagram in the number of addresses waiting.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use aokd_proto::ike::{Event, Transmit};
use tokio::sync::oneshot;

/// One turn's output that waits ([`HeldTurns::hold`]).
struct HeldTurn<A> {
    /// `None`: nothing of its own to wait for (it waits for the turns
    /// before it).
    durable: Option<oneshot::Receiver<()>>,
    events: Vec<Event>,
    transmits: Vec<Transmit>,
    answers: Vec<A>,
}

/// A released turn ([`HeldTurns::ready`]).
pub struct Released<A> {
    pub transmits: Vec<Transmit>,
    pub events: Vec<Event>,
    pub answers: Vec<A>,
}

/// Which of a turn's datagrams must wait for its new MKTs' commit
/// ([`HeldTurns::hold`]).
pub enum MktPeers {
    /// The addresses of the peers of the turn's new MKTs.
    At(BTreeSet<IpAddr>),
    /// A new MKT whose peer's address is not known: every datagram waits.
    Unknown,
}

/// The turns waiting for the state file, oldest first; `A`: an attach
/// answer.
pub struct HeldTurns<A> {
    turns: VecDeque<HeldTurn<A>>,
    /// How many waiting datagrams go to each IP address.
    to: BTreeMap<IpAddr, usize>,
}

impl<A> Default for HeldTurns<A> {
    fn default() -> Self {
        HeldTurns {
            turns: VecDeque::new(),
            to: BTreeMap::new(),
        }
    }
}

impl<A> HeldTurns<A> {
    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }

    /// Takes a turn's output. `durable`: the commit of its new MKTs'
    /// records (`None` when it made none); `mkts`: their peers' addresses;
    /// `events`: the key manager's part of its events. Returns the
    /// datagrams that may go out now; the rest waits with the events.
    pub fn hold(
        &mut self,
        durable: Option<oneshot::Receiver<()>>,
        mkts: &MktPeers,
        events: Vec<Event>,
        transmits: Vec<Transmit>,
    ) -> Vec<Transmit> {
        let (waiting, now): (Vec<Transmit>, Vec<Transmit>) = transmits.into_iter().partition(|t| {
            let ip = t.destination.ip();
            self.to.contains_key(&ip)
                || match mkts {
                    MktPeers::At(ips) => durable.is_some() && ips.contains(&ip),
                    MktPeers::Unknown => durable.is_some(),
                }
        });
        for t in &waiting {
            *self.to.entry(t.destination.ip()).or_default() += 1;
        }
        // A turn with nothing of its own to wait for and nothing to keep in
        // order leaves nothing behind.
        let keep_order = !self.turns.is_empty() && !events.is_empty();
        if durable.is_some() || keep_order || !waiting.is_empty() {
            self.turns.push_back(HeldTurn {
                durable,
                events,
                transmits: waiting,
                answers: Vec::new(),
            });
        }
        now
    }

    /// Takes attach answers that wait for `durable`, the commit of their
    /// sockets' records; they go out in order behind the turns before.
    pub fn hold_answers(&mut self, durable: oneshot::Receiver<()>, answers: Vec<A>) {
        self.turns.push_back(HeldTurn {
            durable: Some(durable),
            events: Vec::new(),
            transmits: Vec::new(),
            answers,
        });
    }

    /// Takes the oldest turns whose commits are done, in order: each one's
    /// datagrams, events and answers.
    pub fn ready(&mut self) -> Vec<Released<A>> {
        let mut out = Vec::new();
        while let Some(front) = self.turns.front_mut() {
            if let Some(rx) = front.durable.as_mut() {
                if matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
                    break;
                }
            }
            let Some(turn) = self.turns.pop_front() else {
                break;
            };
            for t in &turn.transmits {
                let ip = t.destination.ip();
                if let Some(n) = self.to.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        self.to.remove(&ip);
                    }
                }
            }
            out.push(Released {
                transmits: turn.transmits,
                events: turn.events,
                answers: turn.answers,
            });
        }
        out
    }

    /// Completes when the oldest turn may be released: at once when it
    /// waits for nothing of its own, when its commit is done otherwise;
    /// never when nothing waits.
    pub async fn first_durable(&mut self) {
        match self.turns.front_mut() {
            Some(HeldTurn {
                durable: Some(rx), ..
            }) => {
                // An error means the writer is gone: nothing more to wait for.
                let _ = rx.await;
            }
            Some(_) => {}
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn to(ip: &str) -> Transmit {
        Transmit {
            destination: SocketAddr::new(ip.parse().unwrap(), 500),
            contents: ip.as_bytes().to_vec(),
        }
    }

    fn dests(ts: &[Transmit]) -> Vec<String> {
        ts.iter().map(|t| t.destination.ip().to_string()).collect()
    }

    fn at(ips: &[&str]) -> MktPeers {
        MktPeers::At(ips.iter().map(|i| i.parse().unwrap()).collect())
    }

    /// A storm: peer A's IKE_AUTH answer (a new MKT) waits for its commit;
    /// B's IKE_SA_INIT answer of the same turn, and C's of the next turn,
    /// go out at once; A's next datagram waits behind the first; all of
    /// A's go out in order once the commit is done.
    #[test]
    fn only_the_datagrams_to_a_new_mkts_peer_wait() {
        let mut held = HeldTurns::<()>::default();
        let (tx, rx) = oneshot::channel();
        let now = held.hold(
            Some(rx),
            &at(&["192.0.2.1"]),
            Vec::new(),
            vec![to("192.0.2.1"), to("192.0.2.2")],
        );
        assert_eq!(dests(&now), ["192.0.2.2"]);
        let now = held.hold(
            None,
            &at(&[]),
            Vec::new(),
            vec![to("192.0.2.3"), to("192.0.2.1")],
        );
        assert_eq!(
            dests(&now),
            ["192.0.2.3"],
            "a datagram to A waits behind A's"
        );
        assert!(held.ready().is_empty(), "the commit is not done");
        tx.send(()).unwrap();
        let out: Vec<Vec<String>> = held.ready().iter().map(|r| dests(&r.transmits)).collect();
        assert_eq!(out, [["192.0.2.1"], ["192.0.2.1"]]);
        assert!(held.is_empty());
        let now = held.hold(None, &at(&[]), Vec::new(), vec![to("192.0.2.1")]);
        assert_eq!(dests(&now), ["192.0.2.1"], "nothing waits for A any more");
    }

    /// A new MKT whose peer's address is not known holds every datagram of
    /// its turn.
    #[test]
    fn an_unknown_peer_holds_the_whole_turn() {
        let mut held = HeldTurns::<()>::default();
        let (_tx, rx) = oneshot::channel();
        let now = held.hold(
            Some(rx),
            &MktPeers::Unknown,
            Vec::new(),
            vec![to("192.0.2.1"), to("2001:db8::2")],
        );
        assert!(now.is_empty());
        assert!(held.ready().is_empty());
    }

    /// The key manager's part of a later turn waits behind an earlier
    /// turn's commit, even with nothing of its own to wait for.
    #[test]
    fn events_stay_in_order_behind_a_commit() {
        let mut held = HeldTurns::<()>::default();
        let (tx, rx) = oneshot::channel();
        held.hold(
            Some(rx),
            &at(&["192.0.2.1"]),
            Vec::new(),
            vec![to("192.0.2.1")],
        );
        let ev = Event::MemberForgotten {
            peer: "rs/192.0.2.9".into(),
            group: "rs".into(),
        };
        let now = held.hold(None, &at(&[]), vec![ev], Vec::new());
        assert!(now.is_empty());
        assert!(held.ready().is_empty());
        tx.send(()).unwrap();
        let ready = held.ready();
        assert_eq!(ready.len(), 2);
        assert!(ready[0].events.is_empty() && ready[1].events.len() == 1);
    }

    /// An attach answer waits for its commit, behind the turns before it,
    /// and never blocks a datagram.
    #[test]
    fn answers_wait_for_their_commit_in_order() {
        let mut held = HeldTurns::<&str>::default();
        let (tx1, rx1) = oneshot::channel();
        held.hold(
            Some(rx1),
            &at(&["192.0.2.1"]),
            Vec::new(),
            vec![to("192.0.2.1")],
        );
        let (tx2, rx2) = oneshot::channel();
        held.hold_answers(rx2, vec!["socket 1"]);
        let now = held.hold(None, &at(&[]), Vec::new(), vec![to("192.0.2.2")]);
        assert_eq!(dests(&now), ["192.0.2.2"]);
        tx2.send(()).unwrap();
        assert!(held.ready().is_empty(), "behind the first turn's commit");
        tx1.send(()).unwrap();
        let ready = held.ready();
        assert_eq!(ready.len(), 2);
        assert_eq!(ready[1].answers, ["socket 1"]);
        assert!(held.is_empty());
    }
}
