//! Writes the persistent state ([`crate::state`]) off the event loop.
//!
//! Every change (an MKT negotiated or deleted, an IKE SA established or
//! gone, a socket attached or gone) is sent as an [`Op`] to one writer
//! thread. The writer takes everything queued when it wakes (up to
//! [`MAX_BATCH`] changes) and commits it as **one** durable redb
//! transaction: one `fsync` for all the changes of a loop turn, or of a
//! storm of handshakes, instead of one per change (group commit).
//!
//! Under load the writer gathers changes for [`GATHER`] after the first
//! one before it commits, so that one transaction carries the records of
//! several loop turns.
//!
//! The event loop never waits for the `fsync`s. One thing does: a new
//! MKT's record is durable *before* its key goes on any socket and before
//! the exchange that gives the peer the same MKT goes out
//! ([`Persist::durable`] after the loop turn's records; the runtime holds
//! that turn's key changes and datagrams back and goes on with the next
//! datagrams meanwhile), so that after a crash at any moment the restarted
//! aokd knows every KeyID that may be on a socket and never negotiates a
//! colliding one (the kernel refuses a key that shares a SendID or RecvID
//! with another key of the same peer).
//!
//! A failed commit (a full disk, an I/O error) does not lose the changes:
//! they stay queued in memory, the file is closed and opened again (redb
//! refuses every write after one I/O error until then), and the commit is
//! tried again every [`RETRY`] until it succeeds. Meanwhile keys still go
//! on sockets (keys on sockets matter more than the record of them) and
//! [`Persist::health`] says the state file is failing, with the error and
//! the number of changes waiting, for `aoctl status`. One warning is
//! logged when the file starts failing and one line when it recovers.
//!
//! MKT records stay until their hard lifetime ([`Op::PruneMkts`]); the
//! writer keeps their keys ordered by hard lifetime, so a prune visits
//! only the records that are due. The order is not kept exact (a record
//! replaced or deleted leaves its old entry, which saves a second index of
//! every MKT; issue: scale, memory per peer): each due entry becomes an
//! [`Op::DeleteExpiredMkt`], which deletes the record only if the one in
//! the file has expired.

use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn};

use crate::state::{
    Batch, IkeSaRecord, MktRecord, SocketRecord, StagedOpen, StateError, StateStore,
};

/// The most changes committed in one transaction.
pub const MAX_BATCH: usize = 4096;
/// How often a failing state file is tried again.
pub const RETRY: Duration = Duration::from_secs(1);
/// Under load (the previous commit ended less than [`BUSY`] ago and carried
/// at least [`BUSY_BATCH`] changes) the writer gathers changes for this
/// long after the first one before it commits: fewer, larger transactions
/// (each costs an `fdatasync` and the pages it rewrites) for a little more
/// latency. An idle daemon's change, or one of a start-up, is committed at
/// once.
pub const GATHER: Duration = Duration::from_millis(1);
/// See [`GATHER`].
pub const BUSY: Duration = Duration::from_millis(20);
/// See [`GATHER`].
pub const BUSY_BATCH: usize = 32;
/// Changes kept in memory while the state file fails; beyond that new
/// changes are counted as lost (and reported) rather than kept.
pub const MAX_PENDING: usize = 200_000;

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
    /// What a prune queues for each record it finds due: forget the MKT
    /// if its record's hard lifetime ended before `now_unix` (it may have
    /// been stored again since, with a later one).
    DeleteExpiredMkt {
        /// The peer's name.
        peer: String,
        /// SendID.
        send_id: u8,
        /// RecvID.
        recv_id: u8,
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
    /// Answered once every earlier op is applied (or its commit failed).
    Barrier(Done),
}

/// How a barrier is answered: a thread waiting on a channel, or a task
/// awaiting a one-shot ([`Persist::durable`]).
enum Done {
    Wait(SyncSender<()>),
    Notify(tokio::sync::oneshot::Sender<()>),
}

impl Done {
    fn send(self) {
        match self {
            Done::Wait(tx) => {
                let _ = tx.send(());
            }
            Done::Notify(tx) => {
                let _ = tx.send(());
            }
        }
    }
}

/// How the state file is doing, for `aoctl status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateHealth {
    /// The state file (`None`: nothing is stored).
    pub file: Option<PathBuf>,
    /// The last commit failed; the changes since wait in memory.
    pub failing: bool,
    /// The last commit's error while failing, else the last error seen.
    pub error: Option<String>,
    /// When the file started failing.
    pub failing_since: Option<SystemTime>,
    /// Changes not yet durable (queued, or kept after a failed commit).
    pub pending: usize,
    /// Changes dropped because [`MAX_PENDING`] were already waiting.
    pub lost: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Commits that failed.
    pub failed_commits: u64,
    /// Times the file was closed and opened again after a failure.
    pub reopened: u64,
}

/// A handle to the writer thread; cheap to clone. A disabled handle
/// ([`Persist::disabled`], for `aokd demo` and tests) drops every op.
#[derive(Clone, Default)]
pub struct Persist {
    tx: Option<Sender<Msg>>,
    health: Arc<Mutex<StateHealth>>,
    /// Set when the writer could not open the state file
    /// ([`Persist::start_staged`]): nothing will ever be durable.
    refused: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Persist {
    /// A handle that stores nothing.
    pub fn disabled() -> Persist {
        Persist::default()
    }

    /// Starts the writer thread on `store`. The thread ends, closing the
    /// file, when every handle is dropped (after a last try to commit what
    /// is still waiting).
    pub fn start(store: StateStore) -> std::io::Result<(Persist, JoinHandle<()>)> {
        let mkts = match store.mkts() {
            Ok(m) => m,
            Err(e) => {
                warn!(file = %store.path().display(), error = %e,
                    "cannot list the MKT records; expired ones are pruned at the next restart");
                Vec::new()
            }
        };
        Persist::start_with(store, &mkts)
    }

    /// [`Persist::start`] with the MKT records the file holds, as the
    /// caller already read them ([`StateStore::open_loaded`]): a route
    /// server's thousands are not decoded again.
    pub fn start_with(
        store: StateStore,
        mkts: &[MktRecord],
    ) -> std::io::Result<(Persist, JoinHandle<()>)> {
        let (persist, handle, _opened) = Persist::spawn(Opening::Open(store), mkts)?;
        Ok((persist, handle))
    }

    /// [`Persist::start_with`] on a state file whose records were read but
    /// which is not open yet ([`StateStore::open_staged`]): the writer
    /// finishes the open ([`StagedOpen::finish`]) before anything else,
    /// while the caller goes on. The receiver says how that went. Changes
    /// and barriers wait meanwhile; if the open fails, no barrier is ever
    /// answered (nothing that waits for a record to be durable goes on) and
    /// the changes are dropped: the daemon must stop with the error.
    pub fn start_staged(
        staged: StagedOpen,
        mkts: &[MktRecord],
    ) -> std::io::Result<(Persist, JoinHandle<()>, OpenResult)> {
        Persist::spawn(Opening::Staged(staged), mkts)
    }

    fn spawn(
        opening: Opening,
        mkts: &[MktRecord],
    ) -> std::io::Result<(Persist, JoinHandle<()>, OpenResult)> {
        let (tx, rx) = channel::<Msg>();
        let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
        let (refused_tx, refused_rx) = tokio::sync::watch::channel(false);
        let path = match &opening {
            Opening::Open(store) => store.path().to_owned(),
            Opening::Staged(staged) => staged.path().to_owned(),
        };
        let health = Arc::new(Mutex::new(StateHealth {
            file: Some(path.clone()),
            ..StateHealth::default()
        }));
        let mut writer = Writer::new(&path, mkts, Arc::clone(&health));
        let handle = std::thread::Builder::new()
            .name("aokd-state".into())
            .spawn(move || {
                let store = match opening {
                    Opening::Open(store) => store,
                    Opening::Staged(staged) => match staged.finish() {
                        Ok(store) => {
                            // The trial's view (the pages redb wrote to it)
                            // was freed in this thread's arena.
                            crate::memory::release_free_memory();
                            store
                        }
                        Err(e) => {
                            // Before the caller hears of it: whoever then
                            // looks finds the flag set.
                            let _ = refused_tx.send(true);
                            let _ = opened_tx.send(Err(e));
                            return refuse_all(&rx);
                        }
                    },
                };
                writer.store = Some(store);
                let _ = opened_tx.send(Ok(()));
                writer.run(&rx)
            })?;
        Ok((
            Persist {
                tx: Some(tx),
                health,
                refused: Some(refused_rx),
            },
            handle,
            opened_rx,
        ))
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

    /// Waits until every op queued so far is committed (or its commit
    /// failed, see [`Persist::health`]).
    pub fn barrier(&self) {
        if let Some(tx) = &self.tx {
            let (done_tx, done_rx) = sync_channel(1);
            if tx.send(Msg::Barrier(Done::Wait(done_tx))).is_ok() {
                let _ = done_rx.recv();
            }
        }
    }

    /// A barrier that does not block: the receiver completes once every op
    /// queued so far is committed (or its commit failed), and at once when
    /// nothing is stored or the writer is gone. The event loop awaits it
    /// while it goes on with other work (pipelined group commit).
    pub fn durable(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        match &self.tx {
            Some(tx) => {
                // A writer that is gone drops the sender: the receiver
                // completes with an error, which means the same.
                let _ = tx.send(Msg::Barrier(Done::Notify(done_tx)));
            }
            None => {
                let _ = done_tx.send(());
            }
        }
        done_rx
    }

    /// The writer could not open the state file: no commit will ever be
    /// durable, and what waits for one must be dropped, not released.
    pub fn refused(&self) -> bool {
        self.refused.as_ref().is_some_and(|r| *r.borrow())
    }

    /// Completes once [`Persist::refused`] is true; never otherwise.
    pub async fn until_refused(&self) {
        match self.refused.clone() {
            Some(mut r) => {
                if r.wait_for(|refused| *refused).await.is_err() {
                    // The writer is gone without refusing.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// The state file's health now.
    pub fn health(&self) -> StateHealth {
        self.health.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

/// How the writer's open of the state file went
/// ([`Persist::start_staged`]).
pub type OpenResult = tokio::sync::oneshot::Receiver<Result<(), StateError>>;

/// What the writer thread starts from.
enum Opening {
    Open(StateStore),
    Staged(StagedOpen),
}

/// The writer of a state file that could not be opened, until every
/// handle is gone: every change is dropped, and no barrier of the event
/// loop ([`Persist::durable`]) is ever answered, since a dropped one would
/// read as "durable or failing" and let a new MKT's key go on a socket. A
/// blocking [`Persist::barrier`] is answered (the caller would otherwise
/// never get to stop aokd); it guards only a socket record, never a key.
fn refuse_all(rx: &Receiver<Msg>) {
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Barrier(done @ Done::Wait(_)) => done.send(),
            Msg::Barrier(done @ Done::Notify(_)) => std::mem::forget(done),
            Msg::Op(_) => {}
        }
    }
}

/// An MKT record's key: peer, SendID, RecvID.
type MktKey = (Arc<str>, u8, u8);

/// The writer thread's state.
struct Writer {
    /// `None` after a failed commit: opened again before the next one.
    store: Option<StateStore>,
    dir: PathBuf,
    file: PathBuf,
    /// Changes not yet committed, in order.
    pending: VecDeque<Op>,
    /// Every MKT record in the file (or pending), by hard lifetime, and
    /// the old entries of records stored again or deleted since (see the
    /// module documentation).
    expiry: BTreeSet<(u64, MktKey)>,
    health: Arc<Mutex<StateHealth>>,
}

impl Writer {
    /// A writer of the state file `file`, which holds `mkts`; its store is
    /// set before it runs.
    fn new(file: &std::path::Path, mkts: &[MktRecord], health: Arc<Mutex<StateHealth>>) -> Writer {
        let mut writer = Writer {
            dir: file
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .to_owned(),
            file: file.to_owned(),
            store: None,
            pending: VecDeque::new(),
            expiry: BTreeSet::new(),
            health,
        };
        for r in mkts {
            writer.note_expiry(r);
        }
        writer
    }

    /// Orders MKT record `r` by its hard lifetime.
    fn note_expiry(&mut self, r: &MktRecord) {
        self.expiry.insert((
            r.expires_at_unix,
            (r.peer.as_str().into(), r.send_id, r.recv_id),
        ));
    }

    fn run(&mut self, rx: &Receiver<Msg>) {
        let mut barriers = Vec::new();
        // When the last commit ended, and how many changes it carried.
        let mut last_commit: Option<(Instant, usize)> = None;
        loop {
            let failing = !self.pending.is_empty();
            let first = if failing {
                rx.recv_timeout(RETRY)
            } else {
                rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            };
            let mut closed = match first {
                Ok(msg) => {
                    self.take(msg, &mut barriers);
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            let busy = last_commit.is_some_and(|(t, n)| t.elapsed() < BUSY && n >= BUSY_BATCH);
            if !closed && !failing && busy {
                let until = Instant::now() + GATHER;
                while self.pending.len() < MAX_BATCH {
                    let left = until.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(msg) => self.take(msg, &mut barriers),
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
            }
            while self.pending.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(msg) => self.take(msg, &mut barriers),
                    Err(_) => break,
                }
            }
            if !self.pending.is_empty() {
                let n = self.pending.len();
                self.commit();
                last_commit = Some((Instant::now(), n));
            }
            for done in barriers.drain(..) {
                done.send();
            }
            if closed {
                return;
            }
        }
    }

    /// Queues one message's change (expanding a prune into the deletions
    /// that are due) or its barrier.
    fn take(&mut self, msg: Msg, barriers: &mut Vec<Done>) {
        let op = match msg {
            Msg::Barrier(done) => return barriers.push(done),
            Msg::Op(op) => op,
        };
        match &op {
            Op::PruneMkts { now_unix } => {
                while self.expiry.first().is_some_and(|(at, _)| at < now_unix) {
                    let Some((_, (peer, send_id, recv_id))) = self.expiry.pop_first() else {
                        break;
                    };
                    self.queue(Op::DeleteExpiredMkt {
                        peer: peer.to_string(),
                        send_id,
                        recv_id,
                        now_unix: *now_unix,
                    });
                }
                return;
            }
            Op::PutMkt(r) => self.note_expiry(r),
            _ => {}
        }
        self.queue(op);
    }

    fn queue(&mut self, op: Op) {
        if self.pending.len() >= MAX_PENDING {
            if let Ok(mut h) = self.health.lock() {
                h.lost += 1;
            }
            debug!(
                op = op.describe(),
                "state change lost: too many changes wait for the state file"
            );
            return;
        }
        self.pending.push_back(op);
    }

    /// Commits every pending change in one transaction; on failure keeps
    /// them, closes the file (to open it again before the next try) and
    /// reports it.
    fn commit(&mut self) {
        let result = self.try_commit();
        let mut h = match self.health.lock() {
            Ok(h) => h,
            Err(p) => p.into_inner(),
        };
        match result {
            Ok(n) => {
                h.commits += 1;
                if h.failing {
                    info!(file = %self.file.display(), changes = n,
                        "the state file is written again; the changes kept in memory are stored");
                }
                h.failing = false;
                h.failing_since = None;
                self.pending.clear();
                h.pending = 0;
            }
            Err(e) => {
                h.failed_commits += 1;
                if !h.failing {
                    warn!(file = %self.file.display(), error = %e, waiting = self.pending.len(),
                        retry_s = RETRY.as_secs(),
                        "cannot write the state file; the changes are kept in memory and tried again");
                    h.failing_since = Some(SystemTime::now());
                } else {
                    debug!(file = %self.file.display(), error = %e, waiting = self.pending.len(),
                        "the state file still cannot be written");
                }
                h.failing = true;
                h.error = Some(e.to_string());
                h.pending = self.pending.len();
                // redb refuses every later write after an I/O error: close
                // the file and open it again for the next try.
                self.store = None;
            }
        }
    }

    /// One transaction with every pending change; the number committed.
    fn try_commit(&mut self) -> Result<usize, StateError> {
        let store = match &mut self.store {
            Some(store) => store,
            None => {
                let store = StateStore::open(&self.dir)?;
                if let Ok(mut h) = self.health.lock() {
                    h.reopened += 1;
                }
                self.store.insert(store)
            }
        };
        let mut batch = store.batch()?;
        let mut n = 0;
        for op in &self.pending {
            match apply(&mut batch, op) {
                Ok(()) => n += 1,
                // A record the store refuses never reaches the file; the
                // rest of the batch goes on.
                Err(e @ StateError::Invalid { .. }) => {
                    warn!(file = %self.file.display(), op = op.describe(), error = %e,
                        "state change refused")
                }
                Err(e) => return Err(e),
            }
        }
        batch.commit()?;
        Ok(n)
    }
}

fn apply(batch: &mut Batch<'_>, op: &Op) -> Result<(), StateError> {
    match op {
        Op::PutMkt(r) => batch.put_mkt(r),
        Op::DeleteMkt {
            peer,
            send_id,
            recv_id,
        } => batch.delete_mkt(peer, *send_id, *recv_id).map(drop),
        // Expanded into deletions when queued.
        Op::PruneMkts { .. } => Ok(()),
        Op::DeleteExpiredMkt {
            peer,
            send_id,
            recv_id,
            now_unix,
        } => batch
            .delete_mkt_expired(peer, *send_id, *recv_id, *now_unix)
            .map(drop),
        Op::PutIkeSa(r) => batch.put_ike_sa(r),
        Op::DeleteIkeSa { peer, spi_i, spi_r } => batch.delete_ike_sa(peer, spi_i, spi_r).map(drop),
        Op::PutSocket(r) => batch.put_socket(r),
        Op::DeleteSocket(cookie) => batch.delete_socket(*cookie).map(drop),
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
            Op::DeleteExpiredMkt {
                peer,
                send_id,
                recv_id,
                ..
            } => format!("delete MKT {send_id}/{recv_id} of {peer} if expired"),
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

    /// `durable` does not block its caller, and completes only once the
    /// ops sent before it are committed.
    #[test]
    fn durable_completes_after_the_commit_of_what_came_before() {
        let dir = Dir::new("durable");
        let state = dir.0.join("state");
        let store = StateStore::open(&state).unwrap();
        let (p, thread) = Persist::start(store).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for cookie in 1..=3 {
            p.send(Op::PutSocket(socket(cookie)));
        }
        let done = p.durable();
        rt.block_on(done).unwrap();
        let h = p.health();
        assert!(h.commits >= 1, "{h:?}");
        assert_eq!(h.pending, 0, "{h:?}");
        drop(p);
        thread.join().unwrap();
        let store = StateStore::open(&state).unwrap();
        assert_eq!(store.sockets().unwrap().len(), 3);
        // Nothing stored: ready at once.
        let off = Persist::disabled();
        assert!(rt.block_on(off.durable()).is_ok());
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

    /// A tmpfs of `size` on `dir` (root only): unmounted when dropped.
    struct Tmpfs(PathBuf);
    impl Tmpfs {
        fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
            std::fs::create_dir_all(dir).unwrap();
            let out = std::process::Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0700"),
                    "tmpfs",
                ])
                .arg(dir)
                .output();
            match out {
                Ok(o) if o.status.success() => Some(Tmpfs(dir.to_owned())),
                other => {
                    let why = format!(
                        "cannot mount a tmpfs on {} (needs root): {other:?}",
                        dir.display()
                    );
                    assert!(std::env::var_os("CI").is_none(), "{why}");
                    eprintln!("skipped: {why}");
                    None
                }
            }
        }
    }
    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }

    /// Fills the file system holding `path` with one file, to ENOSPC.
    fn fill(path: &std::path::Path) {
        use std::io::Write;
        let mut f = std::fs::File::create(path).unwrap();
        let block = vec![0x5au8; 4096];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        let _ = f.sync_all();
    }

    /// Polls the health until `f` holds (the writer retries every
    /// [`RETRY`]); panics after `secs`.
    fn wait_health(p: &Persist, secs: u64, f: impl Fn(&StateHealth) -> bool) -> StateHealth {
        let end = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let h = p.health();
            if f(&h) {
                return h;
            }
            assert!(
                std::time::Instant::now() < end,
                "health never matched: {h:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_full_disk_is_reported_and_recovered_from_without_losing_changes() {
        let dir = Dir::new("enospc");
        let Some(_fs) = Tmpfs::mount(&dir.0, "8m") else {
            return;
        };
        let state = dir.0.join("state");
        let store = StateStore::open(&state).unwrap();
        let (p, thread) = Persist::start(store).unwrap();
        p.send(Op::PutSocket(socket(1)));
        p.barrier();
        assert!(!p.health().failing, "{:?}", p.health());

        let filler = dir.0.join("filler");
        fill(&filler);
        // More than the file holds now: the commit must grow it, and fails.
        for cookie in 2..3000 {
            p.send(Op::PutSocket(socket(cookie)));
        }
        p.barrier();
        let h = p.health();
        assert!(h.failing, "the write to a full disk did not fail: {h:?}");
        assert!(h.pending >= 2998, "{h:?}");
        let err = h.error.clone().unwrap_or_default();
        assert!(
            err.contains("No space left on device") && err.contains("aokd.redb"),
            "{err}"
        );
        // Still failing while the disk is full (retried, reopened).
        let h = wait_health(&p, 10, |h| h.failed_commits >= 2);
        assert!(h.failing, "{h:?}");
        // More changes queue behind the failed ones, in order.
        p.send(Op::DeleteSocket(1));

        // Space is back: the writer reopens the file and writes everything.
        std::fs::remove_file(&filler).unwrap();
        let h = wait_health(&p, 10, |h| !h.failing);
        assert_eq!((h.pending, h.lost), (0, 0), "{h:?}");
        assert!(h.reopened >= 1, "{h:?}");
        p.send(Op::PutSocket(socket(5000)));
        p.barrier();
        assert!(!p.health().failing);
        drop(p);
        thread.join().unwrap();
        let store = StateStore::open(&state).unwrap();
        let cookies: Vec<u64> = store.sockets().unwrap().iter().map(|s| s.cookie).collect();
        let mut want: Vec<u64> = (2..3000).collect();
        want.push(5000);
        assert_eq!(cookies, want);
    }

    #[test]
    fn pruning_deletes_only_the_records_that_are_due() {
        let dir = Dir::new("prune");
        let state = dir.0.join("s");
        let mkt = |send_id: u8, expires: u64| MktRecord {
            peer: "b".into(),
            send_id,
            recv_id: send_id,
            algorithm: "hmac-sha256-128".into(),
            include_options: true,
            created_at_unix: 1,
            rekey_at_unix: None,
            expires_at_unix: expires,
            key_fingerprint: "00".repeat(8),
            ike_spi_i: "0".into(),
            ike_spi_r: "0".into(),
        };
        {
            let store = StateStore::open(&state).unwrap();
            store.put_mkt(&mkt(1, 100)).unwrap();
            let (p, thread) = Persist::start(store).unwrap();
            p.send(Op::PutMkt(mkt(2, 200)));
            p.send(Op::PutMkt(mkt(3, 300)));
            // Replaced with a later lifetime: not due at 350.
            p.send(Op::PutMkt(mkt(2, 400)));
            // Deleted, then stored again with a later lifetime: its old
            // entry is due at 350, the record is not.
            p.send(Op::DeleteMkt {
                peer: "b".into(),
                send_id: 3,
                recv_id: 3,
            });
            p.send(Op::PutMkt(mkt(3, 500)));
            // Deleted: its entry is due, there is nothing to delete.
            p.send(Op::PutMkt(mkt(4, 150)));
            p.send(Op::DeleteMkt {
                peer: "b".into(),
                send_id: 4,
                recv_id: 4,
            });
            p.send(Op::PruneMkts { now_unix: 350 });
            // Due now; the entries of 2 and 3 from before are gone.
            p.send(Op::PruneMkts { now_unix: 450 });
            p.barrier();
            drop(p);
            thread.join().unwrap();
        }
        let store = StateStore::open(&state).unwrap();
        let left: Vec<(u8, u64)> = store
            .mkts()
            .unwrap()
            .iter()
            .map(|r| (r.send_id, r.expires_at_unix))
            .collect();
        assert_eq!(left, vec![(3, 500)]);
    }

    #[test]
    fn disabled_handle_drops_everything() {
        let p = Persist::disabled();
        assert!(!p.enabled());
        p.send(Op::DeleteSocket(1));
        p.barrier();
    }
}
