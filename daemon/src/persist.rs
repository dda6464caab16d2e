//! Writes the persistent state ([`crate::state`]) off the event loop.
//!
//! Every change (an MKT negotiated or deleted, an IKE SA established or
//! gone, a socket attached or gone) is sent as an [`Op`] to one writer
//! thread that applies them in order, each as its own durable redb
//! transaction. The event loop does not wait for the `fsync`s, with one
//! exception: a new MKT's record is written *before* its key goes on any
//! socket ([`Persist::put_mkt_durable`]), so that after a crash at any
//! moment the restarted aokd knows every KeyID that may be on a socket and
//! never negotiates a colliding one (the kernel refuses a key that shares
//! a SendID or RecvID with another key of the same peer).
//!
//! A failed write is logged with the file and the operation; aokd keeps
//! running (keys on sockets matter more than the record of them), and the
//! next restart reports what it could not find.

use std::sync::mpsc::{channel, sync_channel, Sender, SyncSender};
use std::thread::JoinHandle;

use tracing::warn;

use crate::state::{IkeSaRecord, MktRecord, SocketRecord, StateError, StateStore};

/// One change to the state file.
#[derive(Debug, Clone)]
pub enum Op {
    /// Store an MKT record (replacing one with the same KeyIDs).
    PutMkt(MktRecord),
    /// Forget an MKT.
    DeleteMkt {
        /// The peer's name.
        peer: String,
        /// SendID.
        send_id: u8,
        /// RecvID.
        recv_id: u8,
    },
    /// Forget every MKT whose hard lifetime ended before `now_unix`.
    PruneMkts {
        /// Seconds since the Unix epoch.
        now_unix: u64,
    },
    /// Store an IKE SA record.
    PutIkeSa(IkeSaRecord),
    /// Forget an IKE SA.
    DeleteIkeSa {
        /// The peer's name.
        peer: String,
        /// SPIi, 16 hex digits.
        spi_i: String,
        /// SPIr, 16 hex digits.
        spi_r: String,
    },
    /// Store a socket record.
    PutSocket(SocketRecord),
    /// Forget a socket (by `SO_COOKIE`).
    DeleteSocket(u64),
}

enum Msg {
    Op(Op),
    /// Answered once every earlier op is applied.
    Barrier(SyncSender<()>),
}

/// A handle to the writer thread; cheap to clone. A disabled handle
/// ([`Persist::disabled`], for `aokd demo` and tests) drops every op.
#[derive(Clone, Default)]
pub struct Persist {
    tx: Option<Sender<Msg>>,
}

impl Persist {
    /// A handle that stores nothing.
    pub fn disabled() -> Persist {
        Persist { tx: None }
    }

    /// Starts the writer thread on `store`. The thread ends, closing the
    /// file, when every handle is dropped.
    pub fn start(store: StateStore) -> std::io::Result<(Persist, JoinHandle<()>)> {
        let (tx, rx) = channel::<Msg>();
        let handle = std::thread::Builder::new()
            .name("aokd-state".into())
            .spawn(move || {
                for msg in rx {
                    match msg {
                        Msg::Op(op) => {
                            if let Err(e) = apply(&store, &op) {
                                warn!(file = %store.path().display(), op = op.describe(), error = %e,
                                    "cannot update the state file");
                            }
                        }
                        Msg::Barrier(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })?;
        Ok((Persist { tx: Some(tx) }, handle))
    }

    /// Whether changes are stored.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues `op`.
    pub fn send(&self, op: Op) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Op(op));
        }
    }

    /// Stores an MKT record and waits until it (and everything queued
    /// before it) is durable.
    pub fn put_mkt_durable(&self, rec: MktRecord) {
        self.send(Op::PutMkt(rec));
        self.barrier();
    }

    /// Waits until every op queued so far is applied.
    pub fn barrier(&self) {
        if let Some(tx) = &self.tx {
            let (done_tx, done_rx) = sync_channel(1);
            if tx.send(Msg::Barrier(done_tx)).is_ok() {
                let _ = done_rx.recv();
            }
        }
    }
}

fn apply(store: &StateStore, op: &Op) -> Result<(), StateError> {
    match op {
        Op::PutMkt(r) => store.put_mkt(r),
        Op::DeleteMkt {
            peer,
            send_id,
            recv_id,
        } => store.delete_mkt(peer, *send_id, *recv_id).map(drop),
        Op::PruneMkts { now_unix } => {
            for r in store.mkts()? {
                if r.expires_at_unix < *now_unix {
                    store.delete_mkt(&r.peer, r.send_id, r.recv_id)?;
                }
            }
            Ok(())
        }
        Op::PutIkeSa(r) => store.put_ike_sa(r),
        Op::DeleteIkeSa { peer, spi_i, spi_r } => store.delete_ike_sa(peer, spi_i, spi_r).map(drop),
        Op::PutSocket(r) => store.put_socket(r),
        Op::DeleteSocket(cookie) => store.delete_socket(*cookie).map(drop),
    }
}

impl Op {
    fn describe(&self) -> String {
        match self {
            Op::PutMkt(r) => format!("store MKT {}/{} of {}", r.send_id, r.recv_id, r.peer),
            Op::DeleteMkt {
                peer,
                send_id,
                recv_id,
            } => format!("delete MKT {send_id}/{recv_id} of {peer}"),
            Op::PruneMkts { .. } => "delete expired MKT records".to_string(),
            Op::PutIkeSa(r) => format!("store IKE SA {}/{} of {}", r.spi_i, r.spi_r, r.peer),
            Op::DeleteIkeSa { peer, spi_i, spi_r } => {
                format!("delete IKE SA {spi_i}/{spi_r} of {peer}")
            }
            Op::PutSocket(r) => format!("store socket pid {} fd {}", r.pid, r.fd),
            Op::DeleteSocket(c) => format!("delete socket with cookie {c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("aokd-persist-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn socket(cookie: u64) -> SocketRecord {
        SocketRecord {
            pid: 1,
            fd: 3,
            cookie,
            role: "connect".into(),
            local: None,
            remote: Some("10.0.0.2:179".into()),
            peers: vec!["b".into()],
            attached_at_unix: 1,
        }
    }

    #[test]
    fn ops_are_applied_in_order_and_barrier_waits() {
        let dir = Dir::new("order");
        let state = dir.0.join("state");
        let store = StateStore::open(&state).unwrap();
        let (p, thread) = Persist::start(store).unwrap();
        p.send(Op::PutSocket(socket(7)));
        p.send(Op::PutSocket(socket(8)));
        p.send(Op::DeleteSocket(7));
        p.barrier();
        drop(p);
        thread.join().unwrap();
        let store = StateStore::open(&state).unwrap();
        let cookies: Vec<u64> = store.sockets().unwrap().iter().map(|s| s.cookie).collect();
        assert_eq!(cookies, vec![8]);
    }

    #[test]
    fn a_refused_write_is_reported_not_fatal() {
        let dir = Dir::new("refused");
        let store = StateStore::open(&dir.0.join("s")).unwrap();
        let (p, thread) = Persist::start(store).unwrap();
        // A key where a fingerprint belongs is refused by the store.
        let bad = MktRecord {
            peer: "b".into(),
            send_id: 1,
            recv_id: 2,
            algorithm: "hmac-sha256-128".into(),
            include_options: true,
            created_at_unix: 1,
            rekey_at_unix: None,
            expires_at_unix: 2,
            key_fingerprint: "00".repeat(32),
            ike_spi_i: "0".into(),
            ike_spi_r: "0".into(),
        };
        p.put_mkt_durable(bad);
        p.send(Op::PutSocket(socket(9)));
        p.barrier();
        drop(p);
        thread.join().unwrap();
        let store = StateStore::open(&dir.0.join("s")).unwrap();
        assert!(store.mkts().unwrap().is_empty());
        assert_eq!(store.sockets().unwrap().len(), 1);
    }

    #[test]
    fn disabled_handle_drops_everything() {
        let p = Persist::disabled();
        assert!(!p.enabled());
        p.send(Op::DeleteSocket(1));
        p.barrier();
    }
}
