//! The sockets routing daemons attached (docs/attach.md), and making each
//! one hold exactly the keys its peer should have.
//!
//! aokd never keeps a descriptor of an attached socket once it has answered
//! the attach request: holding one would keep the connection alive after
//! its owner closed it. A [`SocketRegistry`] remembers, per socket, the
//! owner's pid, the owner's descriptor number and the socket's `SO_COOKIE`
//! ([`AttachedSocket`]). To change keys later aokd [`reacquire`]s the
//! socket: `pidfd_open(pid)` + `pidfd_getfd(pidfd, fd)` gives a fresh
//! descriptor of whatever the owner's `fd` is now, and the cookie proves it
//! is still the same socket. A process that exited, a descriptor that was
//! closed, or a number reused for another file all give [`Gone`], and the
//! record is dropped ([`SocketRegistry::prune`]).
//!
//! [`reconcile_on`] ([`reconcile`] on a descriptor) is the one operation on
//! a socket's keys, done through [`SocketKeys`]: given the MKTs
//! that should be on it for one peer (oldest first), and the dummy-key
//! guard to use when there are none, it reads what is there and adds,
//! selects and deletes keys until the socket matches. Its decisions come
//! from [`plan_ao`], a pure function tested without a kernel; the rules
//! (reference §1.6-1.8, §1.14):
//!
//! - **Not yet connected** ([`SocketState::Closed`], the `connect` role):
//!   the newest desired MKT becomes Current_key and RNext_key when added
//!   (or by `TCP_AO_INFO` if it is already there); nothing uses the old
//!   keys yet, so they are deleted.
//! - **Listening** ([`SocketState::Listening`]; pass `listening = true` for
//!   the `listen` role even before `listen()` is called): listeners have no
//!   Current_key/RNext_key, so keys are only added and deleted. Setting
//!   current/rnext on a closed socket that is about to listen would leave
//!   the listener reporting them (the "listen() after current/rnext keys
//!   set" oddity of reference §1.7) and make the keys undeletable.
//! - **Connected** (any other state, the `accepted` role, and a `connect`
//!   socket re-keyed later): missing MKTs are added and the newest becomes
//!   RNext_key, which asks the peer to switch; Current_key is left to the
//!   kernel, which moves it when the peer asks for one of ours (RFC 5925
//!   7.5.2.e). Stale keys that are neither current nor rnext are deleted. A
//!   stale key that is still Current_key is *deferred* (reported in
//!   [`ReconcileOutcome::deferred`]; call `reconcile` again once the peer
//!   has switched) unless it is the guard, which no peer can ever use: the
//!   guard is removed at once with a forced delete naming the newest real
//!   MKT as Current_key ([`reconcile_with`] can force real keys too).
//! - The guard goes on only when there is no desired MKT; an existing guard
//!   key (KeyIDs 240-255) is kept rather than replaced by a fresh one.
//! - Only keys aokd could have put there are touched: host-prefix keys for
//!   the peer's address without a VRF binding.
//!
//! TCP-MD5 has one key per peer and no way to read it back: [`reconcile`]
//! sets the newest desired MKT's master key (the guard's when there is none)
//! and deletes the peer's key when neither exists.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::SystemTime;

use aokd_api::attach::SocketRole;
use aokd_proto::mkt::{MacAlgorithm, MasterKeyTuple};

use crate::kernel::{canonical, host_prefix, sys, Backend, Cause, KernelError};
use crate::kernel::{KeyContext, Operation};
use crate::socket_keys::{is_guard_id, KernelKeys, SocketKeys};

/// One socket a process attached, as aokd remembers it (no descriptor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedSocket {
    /// Registry-assigned identifier (shown by aoctl).
    pub id: u64,
    /// The owner's pid (`SO_PEERCRED` of the attach connection), in aokd's
    /// PID namespace.
    pub pid: i32,
    /// The socket's descriptor number in the owner.
    pub fd: i32,
    /// `SO_COOKIE`: identifies the socket across descriptors.
    pub cookie: u64,
    /// What the owner said the socket is for.
    pub role: SocketRole,
    /// Local address when attached (`None` if not bound yet).
    pub local: Option<SocketAddr>,
    /// Remote address: from the request for `connect`, from the socket for
    /// `accepted`; `None` for listeners.
    pub remote: Option<SocketAddr>,
    /// Names of the configured peers whose keys (or guards) are on it.
    pub peers: Vec<String>,
    /// The peers whose guard is on the socket (no MKT with them).
    pub guarded: Vec<String>,
    /// The peer groups whose prefix guard is on the socket (a listener on
    /// one of their ports, [`crate::group_guard`]).
    pub groups: Vec<String>,
    /// When it was attached.
    pub attached_at: SystemTime,
}

impl AttachedSocket {
    /// A record for the socket `sock` (a descriptor aokd holds right now)
    /// that is descriptor `fd` in process `pid`: reads its cookie and local
    /// address, and its remote address unless `remote` is given (a
    /// `connect` socket is not connected yet). `id` is 0 until
    /// [`SocketRegistry::add`].
    pub fn describe(
        sock: BorrowedFd<'_>,
        pid: i32,
        fd: i32,
        role: SocketRole,
        remote: Option<SocketAddr>,
    ) -> io::Result<AttachedSocket> {
        Self::describe_at(sock, pid, fd, role, remote, SystemTime::now())
    }

    /// [`AttachedSocket::describe`], attached at `attached_at`.
    pub fn describe_at(
        sock: BorrowedFd<'_>,
        pid: i32,
        fd: i32,
        role: SocketRole,
        remote: Option<SocketAddr>,
        attached_at: SystemTime,
    ) -> io::Result<AttachedSocket> {
        let cookie = sys::socket_cookie(sock)?;
        let local = sys::local_address(sock)?;
        let remote = match remote {
            Some(r) => Some(r),
            None => sys::peer_address(sock)?,
        };
        Ok(AttachedSocket {
            id: 0,
            pid,
            fd,
            cookie,
            role,
            local,
            remote,
            peers: Vec::new(),
            guarded: Vec::new(),
            groups: Vec::new(),
            attached_at,
        })
    }
}

/// Why an attached socket cannot be reacquired. Every variant means aokd
/// can no longer manage it; the record should be removed.
#[derive(Debug, thiserror::Error)]
pub enum Gone {
    /// The owner exited (`ESRCH`).
    #[error("process {pid} has exited")]
    ProcessExited {
        /// The owner's pid.
        pid: i32,
    },
    /// The owner closed the descriptor (`EBADF`).
    #[error("descriptor {fd} of process {pid} is closed")]
    DescriptorClosed {
        /// The owner's pid.
        pid: i32,
        /// The descriptor number.
        fd: i32,
    },
    /// The descriptor number now refers to something else (the socket was
    /// closed and the number reused, or the pid was reused).
    #[error("descriptor {fd} of process {pid} is no longer the attached socket (cookie {expected}, found {})", found_text(*.found))]
    Replaced {
        /// The owner's pid.
        pid: i32,
        /// The descriptor number.
        fd: i32,
        /// The attached socket's cookie.
        expected: u64,
        /// The cookie found (`None`: not a socket).
        found: Option<u64>,
    },
    /// aokd may not take the descriptor (`EPERM`: no ptrace rights over the
    /// process) or another error occurred.
    #[error("cannot take descriptor {fd} of process {pid}: {source}")]
    Inaccessible {
        /// The owner's pid.
        pid: i32,
        /// The descriptor number.
        fd: i32,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn found_text(found: Option<u64>) -> String {
    found.map_or_else(|| "not a socket".to_owned(), |c| c.to_string())
}

/// Takes a fresh descriptor of descriptor `fd` in process `pid` and checks
/// that it is the socket with `cookie`. The caller must drop the result as
/// soon as it has changed the keys.
///
/// The last process's pidfd is kept (one per thread) for the next call: a
/// pass over a peer's sockets takes thousands of descriptors from the same
/// routing daemon, and opening and closing a pidfd for each was a third of
/// such a pass. A kept pidfd names the process it was opened for even
/// after that process exits and its pid is reused: `pidfd_getfd` then
/// fails with `ESRCH`, which is the right answer for the exited owner.
pub fn reacquire(pid: i32, fd: i32, cookie: u64) -> Result<OwnedFd, Gone> {
    thread_local! {
        static LAST_PIDFD: std::cell::RefCell<Option<(i32, OwnedFd)>> =
            const { std::cell::RefCell::new(None) };
    }
    let copy = LAST_PIDFD.with(|last| {
        let mut last = last.borrow_mut();
        let pidfd = match last.take() {
            Some((p, f)) if p == pid => f,
            _ => sys::pidfd_open(pid).map_err(|e| match e.raw_os_error() {
                Some(libc::ESRCH) => Gone::ProcessExited { pid },
                _ => Gone::Inaccessible { pid, fd, source: e },
            })?,
        };
        let copy = sys::pidfd_getfd(pidfd.as_fd(), fd).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => Gone::ProcessExited { pid },
            Some(libc::EBADF) => Gone::DescriptorClosed { pid, fd },
            _ => Gone::Inaccessible { pid, fd, source: e },
        });
        // Kept unless the process is gone.
        if !matches!(copy, Err(Gone::ProcessExited { .. })) {
            *last = Some((pid, pidfd));
        }
        copy
    })?;
    match sys::socket_cookie(copy.as_fd()) {
        Ok(c) if c == cookie => Ok(copy),
        Ok(c) => Err(Gone::Replaced {
            pid,
            fd,
            expected: cookie,
            found: Some(c),
        }),
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => Err(Gone::Replaced {
            pid,
            fd,
            expected: cookie,
            found: None,
        }),
        Err(e) => Err(Gone::Inaccessible { pid, fd, source: e }),
    }
}

/// The attached sockets, by id, with indexes by peer, by cookie, by
/// descriptor and by remote address (listeners apart) so that adding a
/// socket, finding one peer's sockets and finding the sockets a new peer
/// may cover cost O(log n) in the number of sockets (plus the sockets
/// found); only [`SocketRegistry::iter`] and [`SocketRegistry::prune`]
/// (status answers) visit every socket.
#[derive(Debug, Default)]
pub struct SocketRegistry {
    next_id: u64,
    sockets: BTreeMap<u64, AttachedSocket>,
    /// Peer name -> ids of the sockets whose `peers` name it.
    by_peer: BTreeMap<String, BTreeSet<u64>>,
    /// `SO_COOKIE` -> id (at most one record per socket).
    by_cookie: BTreeMap<u64, u64>,
    /// (pid, fd) -> id (at most one record per descriptor).
    by_descriptor: BTreeMap<(i32, i32), u64>,
    /// Remote address (canonical: IPv4-mapped IPv6 as IPv4) -> ids of the
    /// connected and accepted sockets toward it.
    by_remote: BTreeMap<std::net::IpAddr, BTreeSet<u64>>,
    /// Ids of the listening sockets (they have no remote address).
    listeners: BTreeSet<u64>,
}

impl SocketRegistry {
    /// An empty registry.
    pub fn new() -> SocketRegistry {
        SocketRegistry::default()
    }

    /// Records `socket` under a new id (its `id` field is overwritten) and
    /// returns the id. A record of the same socket (same cookie), or of the
    /// same descriptor of the same process (which must have been closed and
    /// reused, since the cookie differs), is replaced.
    pub fn add(&mut self, mut socket: AttachedSocket) -> u64 {
        if let Some(&old) = self.by_cookie.get(&socket.cookie) {
            self.remove(old);
        }
        if let Some(&old) = self.by_descriptor.get(&(socket.pid, socket.fd)) {
            self.remove(old);
        }
        self.next_id += 1;
        socket.id = self.next_id;
        for p in &socket.peers {
            self.by_peer.entry(p.clone()).or_default().insert(socket.id);
        }
        self.by_cookie.insert(socket.cookie, socket.id);
        self.by_descriptor
            .insert((socket.pid, socket.fd), socket.id);
        match socket.remote {
            Some(r) => {
                self.by_remote
                    .entry(crate::kernel::canonical(r.ip()))
                    .or_default()
                    .insert(socket.id);
            }
            None => {
                self.listeners.insert(socket.id);
            }
        }
        self.sockets.insert(socket.id, socket);
        self.next_id
    }

    /// Forgets a socket.
    pub fn remove(&mut self, id: u64) -> Option<AttachedSocket> {
        let s = self.sockets.remove(&id)?;
        for p in &s.peers {
            if let Some(ids) = self.by_peer.get_mut(p) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_peer.remove(p);
                }
            }
        }
        if self.by_cookie.get(&s.cookie) == Some(&id) {
            self.by_cookie.remove(&s.cookie);
        }
        if self.by_descriptor.get(&(s.pid, s.fd)) == Some(&id) {
            self.by_descriptor.remove(&(s.pid, s.fd));
        }
        match s.remote {
            Some(r) => {
                let ip = crate::kernel::canonical(r.ip());
                if let Some(ids) = self.by_remote.get_mut(&ip) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        self.by_remote.remove(&ip);
                    }
                }
            }
            None => {
                self.listeners.remove(&id);
            }
        }
        Some(s)
    }

    /// The sockets a peer at `ip` may cover: the listeners and the sockets
    /// connected to or accepted from `ip`, by id. O(log n) plus the sockets
    /// found.
    pub fn toward<'a>(
        &'a self,
        ip: std::net::IpAddr,
    ) -> impl Iterator<Item = &'a AttachedSocket> + 'a {
        let mut ids: Vec<u64> = self.listeners.iter().copied().collect();
        ids.extend(
            self.by_remote
                .get(&crate::kernel::canonical(ip))
                .into_iter()
                .flatten()
                .copied(),
        );
        ids.sort_unstable();
        ids.into_iter().filter_map(|id| self.sockets.get(&id))
    }

    /// The socket with `id`.
    pub fn get(&self, id: u64) -> Option<&AttachedSocket> {
        self.sockets.get(&id)
    }

    /// Marks whether the guard of `peer` (one of its peers) is on the
    /// socket with `id`, leaving the other peers' marks as they are (the
    /// other fields, which the indexes depend on, change only through
    /// [`SocketRegistry::add_peer`]).
    pub fn set_guarded_peer(&mut self, id: u64, peer: &str, guarded: bool) {
        if let Some(s) = self.sockets.get_mut(&id) {
            s.guarded.retain(|p| p != peer);
            if guarded {
                s.guarded.push(peer.to_string());
            }
        }
    }

    /// Sets the peer groups whose prefix guard is on the socket with `id`.
    pub fn set_groups(&mut self, id: u64, groups: Vec<String>) {
        if let Some(s) = self.sockets.get_mut(&id) {
            s.groups = groups;
        }
    }

    /// Adds the peer named `peer` to the socket with `id` (a peer a reload
    /// added covers it); returns the changed record, `None` when there is
    /// no such socket or it names the peer already.
    pub fn add_peer(&mut self, id: u64, peer: &str) -> Option<AttachedSocket> {
        let s = self.sockets.get_mut(&id)?;
        if s.peers.iter().any(|p| p == peer) {
            return None;
        }
        s.peers.push(peer.to_string());
        self.by_peer.entry(peer.to_string()).or_default().insert(id);
        Some(s.clone())
    }

    /// Every socket, by id.
    pub fn iter(&self) -> impl Iterator<Item = &AttachedSocket> {
        self.sockets.values()
    }

    /// The sockets that carry keys (or the guard) of the peer named `peer`,
    /// by id.
    pub fn by_peer<'a>(&'a self, peer: &'a str) -> impl Iterator<Item = &'a AttachedSocket> + 'a {
        self.by_peer
            .get(peer)
            .into_iter()
            .flatten()
            .filter_map(|id| self.sockets.get(id))
    }

    /// Number of sockets.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// A fresh descriptor of `socket` ([`reacquire`]); on [`Gone`], remove
    /// the record.
    pub fn reacquire(&self, socket: &AttachedSocket) -> Result<OwnedFd, Gone> {
        reacquire(socket.pid, socket.fd, socket.cookie)
    }

    /// Removes every socket that cannot be reacquired, and returns them
    /// with the reason.
    pub fn prune(&mut self) -> Vec<(AttachedSocket, Gone)> {
        self.prune_with(&KernelKeys)
    }

    /// [`SocketRegistry::prune`], reacquiring through `keys`.
    pub fn prune_with<K: SocketKeys>(&mut self, keys: &K) -> Vec<(AttachedSocket, Gone)> {
        let gone: Vec<(u64, Gone)> = self
            .sockets
            .values()
            .filter_map(|s| {
                keys.reacquire(s.pid, s.fd, s.cookie)
                    .err()
                    .map(|g| (s.id, g))
            })
            .collect();
        gone.into_iter()
            .filter_map(|(id, g)| self.remove(id).map(|s| (s, g)))
            .collect()
    }
}

/// A key's SendID and RecvID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyIds {
    /// SendID.
    pub send_id: u8,
    /// RecvID.
    pub recv_id: u8,
}

impl KeyIds {
    /// A list for a log field: `89/20,193/178`, or `-` when empty.
    pub fn list(ids: &[KeyIds]) -> String {
        if ids.is_empty() {
            return "-".into();
        }
        ids.iter()
            .map(KeyIds::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Both KeyIDs are in the guard range 240-255.
    pub fn is_guard(self) -> bool {
        is_guard_id(self.send_id) && is_guard_id(self.recv_id)
    }
}

impl fmt::Display for KeyIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.send_id, self.recv_id)
    }
}

/// What [`plan_ao`] knows about a key: identity and parameters, never the
/// key bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// SendID and RecvID.
    pub ids: KeyIds,
    /// The algorithm (`None`: one aokd does not use).
    pub algorithm: Option<MacAlgorithm>,
    /// Whether TCP options are covered by the MAC.
    pub include_options: bool,
}

impl KeySpec {
    /// The spec of an MKT.
    pub fn of(mkt: &MasterKeyTuple) -> KeySpec {
        KeySpec {
            ids: KeyIds {
                send_id: mkt.send_id,
                recv_id: mkt.recv_id,
            },
            algorithm: Some(mkt.algorithm),
            include_options: mkt.include_options,
        }
    }
}

/// A key on the socket for the peer, as `TCP_AO_GET_KEYS` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExistingKey {
    /// Identity and parameters.
    pub spec: KeySpec,
    /// It is Current_key.
    pub is_current: bool,
    /// It is RNext_key.
    pub is_rnext: bool,
}

/// Where the socket is in its life, for key selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketState {
    /// Not connected yet (`TCP_CLOSE`): Current_key/RNext_key are chosen
    /// by aokd.
    Closed,
    /// Listening, or about to listen: no Current_key/RNext_key.
    Listening,
    /// Connecting or connected: RNext_key is aokd's, Current_key the
    /// peer's.
    Connected,
}

/// Which key an [`Step::Add`] installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `desired[i]`.
    Desired(usize),
    /// The guard.
    Guard,
}

/// One change to a socket's TCP-AO keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `TCP_AO_DEL_KEY`; with `set_current`/`set_rnext` a forced delete
    /// that makes those KeyIDs current/rnext in the same call.
    Delete {
        ids: KeyIds,
        set_current: Option<u8>,
        set_rnext: Option<u8>,
    },
    /// `TCP_AO_ADD_KEY`, optionally making the key Current_key/RNext_key.
    Add {
        source: Source,
        ids: KeyIds,
        set_current: bool,
        set_rnext: bool,
    },
    /// `TCP_AO_INFO`: Current_key := the key with this SendID.
    SetCurrent(u8),
    /// `TCP_AO_INFO`: RNext_key := the key with this RecvID.
    SetRnext(u8),
}

/// What [`plan_ao`] decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AoPlan {
    /// The changes, in order.
    pub steps: Vec<Step>,
    /// Stale keys left in place because the connection still uses them
    /// (Current_key on a connected socket) or because no replacement
    /// exists: try again later.
    pub deferred: Vec<KeyIds>,
    /// After the steps, the peer's only key on the socket is the guard.
    pub guarded: bool,
}

/// Decides how to turn the peer's `existing` keys into `desired` (oldest
/// first; the last is the newest), or into the guard when `desired` is
/// empty. `force` also replaces a stale real key that is still Current_key
/// of a connection (which may break it if the peer does not have the new
/// key yet); the guard is always replaced.
pub fn plan_ao(
    existing: &[ExistingKey],
    desired: &[KeySpec],
    guard: Option<&KeySpec>,
    state: SocketState,
    force: bool,
) -> AoPlan {
    plan_ao_keeping(existing, desired, guard, &[], state, force)
}

/// [`plan_ao`], where stale keys with the KeyIDs in `keep` stay on the
/// socket (MKTs from before a restart, whose keys aokd no longer has but
/// the peer may still be sending with) unless a new key needs their
/// KeyIDs.
pub fn plan_ao_keeping(
    existing: &[ExistingKey],
    desired: &[KeySpec],
    guard: Option<&KeySpec>,
    keep: &[KeyIds],
    state: SocketState,
    force: bool,
) -> AoPlan {
    // The target: desired keys (a later duplicate of the same KeyIDs wins),
    // else the guard (an existing guard key counts as the guard).
    let mut target: Vec<(Option<Source>, KeySpec)> = Vec::new();
    for (i, spec) in desired.iter().enumerate() {
        target.retain(|(_, t)| t.ids != spec.ids);
        target.push((Some(Source::Desired(i)), *spec));
    }
    let mut guarded = false;
    if target.is_empty() {
        if let Some(g) = guard {
            guarded = true;
            match existing.iter().find(|e| e.spec.ids.is_guard()) {
                Some(e) => target.push((None, e.spec)),
                None => target.push((Some(Source::Guard), *g)),
            }
        }
    }
    let in_target = |e: &ExistingKey| target.iter().any(|(_, t)| *t == e.spec);
    let is_target = |e: &ExistingKey| in_target(e) || keep.contains(&e.spec.ids);
    let present = |t: &KeySpec| existing.iter().find(|e| e.spec == *t);
    let in_use = |e: &ExistingKey| e.is_current || e.is_rnext;
    let newest = target.last().map(|(_, t)| *t);

    let mut plan = AoPlan {
        guarded,
        ..AoPlan::default()
    };
    let delete = |ids| Step::Delete {
        ids,
        set_current: None,
        set_rnext: None,
    };

    // 1. Stale keys whose SendID or RecvID a missing key needs (the kernel
    //    refuses two keys with the same SendID or RecvID for a peer, EEXIST)
    //    go first. Other stale keys go only after the new keys are on, so
    //    the peer is never left without a key (a keyless moment would let
    //    unsigned segments through).
    let missing: Vec<KeyIds> = target
        .iter()
        .filter(|(s, t)| s.is_some() && present(t).is_none())
        .map(|(_, t)| t.ids)
        .collect();
    let conflicts = |e: &ExistingKey| {
        missing
            .iter()
            .any(|m| m.send_id == e.spec.ids.send_id || m.recv_id == e.spec.ids.recv_id)
    };
    for e in existing
        .iter()
        .filter(|e| !in_target(e) && !in_use(e) && conflicts(e))
    {
        plan.steps.push(delete(e.spec.ids));
    }

    // 2. Missing keys, oldest first; the newest selected on the way in.
    for (source, t) in &target {
        let Some(source) = source else { continue };
        if present(t).is_some() {
            continue;
        }
        let is_newest = Some(*t) == newest;
        let (set_current, set_rnext) = match state {
            SocketState::Closed => (is_newest, is_newest),
            SocketState::Connected => (false, is_newest),
            SocketState::Listening => (false, false),
        };
        plan.steps.push(Step::Add {
            source: *source,
            ids: t.ids,
            set_current,
            set_rnext,
        });
    }

    // 3. The newest key already there but not selected.
    if let Some(e) = newest.as_ref().and_then(present) {
        let ids = e.spec.ids;
        match state {
            SocketState::Closed => {
                if !e.is_current {
                    plan.steps.push(Step::SetCurrent(ids.send_id));
                }
                if !e.is_rnext {
                    plan.steps.push(Step::SetRnext(ids.recv_id));
                }
            }
            SocketState::Connected => {
                if !e.is_rnext {
                    plan.steps.push(Step::SetRnext(ids.recv_id));
                }
            }
            SocketState::Listening => {}
        }
    }

    // 4. The other stale keys. (One in use whose KeyIDs a new key needs
    //    makes the add in step 2 fail with EEXIST: key management gone
    //    wrong, which the error reports.)
    for e in existing
        .iter()
        .filter(|e| !is_target(e) && (in_use(e) || !conflicts(e)))
    {
        if !in_use(e) {
            plan.steps.push(delete(e.spec.ids));
            continue;
        }
        let ids = e.spec.ids;
        let Some(newest) = newest else {
            // No replacement: a connection cannot lose its last key, and
            // a selected key cannot be deleted without one.
            plan.deferred.push(ids);
            continue;
        };
        match state {
            // Step 2/3 moved current and rnext to the newest key.
            SocketState::Closed => plan.steps.push(delete(ids)),
            SocketState::Connected => {
                if !e.is_current {
                    // Only rnext, which step 2/3 moved.
                    plan.steps.push(delete(ids));
                } else if ids.is_guard() || force {
                    plan.steps.push(Step::Delete {
                        ids,
                        set_current: Some(newest.ids.send_id),
                        set_rnext: None,
                    });
                } else {
                    plan.deferred.push(ids);
                }
            }
            // A listener that reports current/rnext (set before listen()):
            // the kernel refuses both the delete and a forced one.
            SocketState::Listening => plan.deferred.push(ids),
        }
    }
    plan
}

/// What [`reconcile`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileOutcome {
    /// The backend used.
    pub backend: Backend,
    /// Keys added (TCP-MD5: the MKT whose key was set).
    pub added: Vec<KeyIds>,
    /// Keys deleted (TCP-AO only).
    pub removed: Vec<KeyIds>,
    /// Stale keys still on the socket because they are in use (see
    /// [`AoPlan::deferred`]): reconcile again later.
    pub deferred: Vec<KeyIds>,
    /// RNext_key was set to this RecvID.
    pub rnext: Option<u8>,
    /// Current_key was set to this SendID.
    pub current: Option<u8>,
    /// The guard was installed by this call.
    pub guard_installed: bool,
    /// A guard key was removed by this call.
    pub guard_removed: bool,
    /// The peer's only key on the socket is now the guard.
    pub guarded: bool,
    /// TCP-MD5: the peer's key was deleted (no desired MKT and no guard).
    pub cleared: bool,
}

impl ReconcileOutcome {
    fn new(backend: Backend) -> ReconcileOutcome {
        ReconcileOutcome {
            backend,
            added: Vec::new(),
            removed: Vec::new(),
            deferred: Vec::new(),
            rnext: None,
            current: None,
            guard_installed: false,
            guard_removed: false,
            guarded: false,
            cleared: false,
        }
    }

    /// Whether anything on the socket changed.
    pub fn changed(&self) -> bool {
        !self.added.is_empty()
            || !self.removed.is_empty()
            || self.rnext.is_some()
            || self.current.is_some()
            || self.cleared
    }
}

/// Makes socket `fd` hold exactly the keys for `peer_ip` given by `desired`
/// (oldest first, the last is the newest), or `guard` when `desired` is
/// empty, or none; see the module documentation for the rules. `listening`
/// is true for a listener or a socket about to `listen()`.
///
/// Safe to call again at any time (it reads the socket's keys first): a
/// failure leaves the steps before it done, and the next call finishes.
pub fn reconcile(
    fd: BorrowedFd<'_>,
    backend: Backend,
    peer_ip: IpAddr,
    desired: &[MasterKeyTuple],
    guard: Option<&MasterKeyTuple>,
    listening: bool,
) -> Result<ReconcileOutcome, KernelError> {
    let how = How {
        listening,
        ..How::default()
    };
    let sock = fd.try_clone_to_owned().map_err(|e| {
        KernelError::os(
            Operation::SocketInfo,
            KeyContext::peer(peer_ip, host_prefix(peer_ip)),
            e,
        )
    })?;
    reconcile_on(&KernelKeys, &sock, backend, peer_ip, desired, guard, how)
}

/// How [`reconcile_on`] treats a socket.
#[derive(Debug, Clone, Copy, Default)]
pub struct How<'a> {
    /// Stale keys with these KeyIDs stay (see [`plan_ao_keeping`]).
    pub keep: &'a [KeyIds],
    /// The socket is a listener.
    pub listening: bool,
    /// Also remove a stale real key that a connection still uses as
    /// Current_key, making the newest desired key (or the guard) current in
    /// the same call (the kernel's forced delete; the connection breaks if
    /// the peer has not installed that key yet). Meant for an MKT that has
    /// expired or been revoked.
    pub force: bool,
}

/// [`reconcile`] on a socket `keys` reaches, with options: stale keys
/// `how.keep` names stay (TCP-AO; a TCP-MD5 socket has one key, which
/// `desired`'s newest replaces), and `how.force` forces out stale keys
/// still in use.
pub fn reconcile_on<K: SocketKeys>(
    keys: &K,
    sock: &K::Socket,
    backend: Backend,
    peer_ip: IpAddr,
    desired: &[MasterKeyTuple],
    guard: Option<&MasterKeyTuple>,
    how: How<'_>,
) -> Result<ReconcileOutcome, KernelError> {
    match backend {
        Backend::Md5 => reconcile_md5(keys, sock, peer_ip, desired, guard),
        Backend::Ao => reconcile_ao(keys, sock, peer_ip, desired, guard, how),
    }
}

fn reconcile_md5<K: SocketKeys>(
    keys: &K,
    sock: &K::Socket,
    peer: IpAddr,
    desired: &[MasterKeyTuple],
    guard: Option<&MasterKeyTuple>,
) -> Result<ReconcileOutcome, KernelError> {
    let mut out = ReconcileOutcome::new(Backend::Md5);
    match (desired.last(), guard) {
        (Some(mkt), _) => {
            keys.md5_set(sock, peer, mkt.master_key.as_bytes())?;
            out.added.push(KeySpec::of(mkt).ids);
        }
        (None, Some(g)) => {
            keys.md5_set(sock, peer, g.master_key.as_bytes())?;
            out.added.push(KeySpec::of(g).ids);
            out.guard_installed = true;
            out.guarded = true;
        }
        (None, None) => match keys.md5_del(sock, peer) {
            Ok(()) => out.cleared = true,
            Err(e) if e.cause() == Some(Cause::NotFound) => {}
            Err(e) => return Err(e),
        },
    }
    Ok(out)
}

/// The socket's state for key selection.
fn socket_state<K: SocketKeys>(
    keys: &K,
    sock: &K::Socket,
    peer: IpAddr,
    listening: bool,
) -> Result<SocketState, KernelError> {
    if listening {
        return Ok(SocketState::Listening);
    }
    let state = keys.tcp_state(sock).map_err(|e| {
        KernelError::os(
            Operation::SocketInfo,
            KeyContext::peer(peer, host_prefix(peer)),
            e,
        )
    })?;
    Ok(match state {
        sys::TcpState::Close => SocketState::Closed,
        sys::TcpState::Listen => SocketState::Listening,
        _ => SocketState::Connected,
    })
}

fn reconcile_ao<K: SocketKeys>(
    keys: &K,
    sock: &K::Socket,
    peer: IpAddr,
    desired: &[MasterKeyTuple],
    guard: Option<&MasterKeyTuple>,
    how: How<'_>,
) -> Result<ReconcileOutcome, KernelError> {
    let state = socket_state(keys, sock, peer, how.listening)?;
    let on_socket = match keys.ao_keys(sock) {
        Ok(keys) => keys,
        // No TCP-AO state on the socket yet.
        Err(e) if e.cause() == Some(Cause::NotFound) => Vec::new(),
        Err(e) => return Err(e),
    };
    let peer = canonical(peer);
    let prefix = host_prefix(peer);
    let existing: Vec<ExistingKey> = on_socket
        .iter()
        .filter(|k| canonical(k.peer) == peer && k.prefix == prefix && k.ifindex.is_none())
        .map(|k| ExistingKey {
            spec: KeySpec {
                ids: KeyIds {
                    send_id: k.send_id,
                    recv_id: k.recv_id,
                },
                algorithm: k.algorithm(),
                include_options: k.include_options,
            },
            is_current: k.is_current,
            is_rnext: k.is_rnext,
        })
        .collect();
    let specs: Vec<KeySpec> = desired.iter().map(KeySpec::of).collect();
    let guard_spec = guard.map(KeySpec::of);
    let plan = plan_ao_keeping(
        &existing,
        &specs,
        guard_spec.as_ref(),
        how.keep,
        state,
        how.force,
    );

    let mut out = ReconcileOutcome::new(Backend::Ao);
    out.guarded = plan.guarded;
    out.deferred = plan.deferred;
    for step in plan.steps {
        match step {
            Step::Delete {
                ids,
                set_current,
                set_rnext,
            } => {
                keys.ao_del(
                    sock,
                    peer,
                    prefix,
                    ids.send_id,
                    ids.recv_id,
                    set_current,
                    set_rnext,
                )?;
                out.removed.push(ids);
                out.guard_removed |= ids.is_guard();
                if set_current.is_some() {
                    out.current = set_current;
                }
                if set_rnext.is_some() {
                    out.rnext = set_rnext;
                }
            }
            Step::Add {
                source,
                ids,
                set_current,
                set_rnext,
            } => {
                let mkt = match source {
                    Source::Desired(i) => desired.get(i),
                    Source::Guard => guard,
                };
                let Some(mkt) = mkt else {
                    // plan_ao only names entries it was given.
                    return Err(KernelError::Invalid {
                        op: Operation::AoAddKey,
                        context: KeyContext::peer(peer, prefix)
                            .ids(Some(ids.send_id), Some(ids.recv_id)),
                        reason: "internal error: the plan names a key that was not given",
                    });
                };
                keys.ao_add(sock, peer, prefix, mkt, set_current, set_rnext)?;
                out.added.push(ids);
                out.guard_installed |= source == Source::Guard;
                if set_current {
                    out.current = Some(ids.send_id);
                }
                if set_rnext {
                    out.rnext = Some(ids.recv_id);
                }
            }
            Step::SetCurrent(id) => {
                keys.ao_set_current(sock, id)?;
                out.current = Some(id);
            }
            Step::SetRnext(id) => {
                keys.ao_set_rnext(sock, id)?;
                out.rnext = Some(id);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::md5;
    use aokd_proto::crypto::Secret;
    use std::os::fd::AsRawFd;

    const ALG: Option<MacAlgorithm> = Some(MacAlgorithm::HmacSha256_128);

    fn spec(send_id: u8, recv_id: u8) -> KeySpec {
        KeySpec {
            ids: KeyIds { send_id, recv_id },
            algorithm: ALG,
            include_options: true,
        }
    }

    fn guard(send_id: u8, recv_id: u8) -> KeySpec {
        KeySpec {
            algorithm: Some(MacAlgorithm::HmacSha1_96),
            ..spec(send_id, recv_id)
        }
    }

    fn key(s: KeySpec, is_current: bool, is_rnext: bool) -> ExistingKey {
        ExistingKey {
            spec: s,
            is_current,
            is_rnext,
        }
    }

    fn ids(send_id: u8, recv_id: u8) -> KeyIds {
        KeyIds { send_id, recv_id }
    }

    fn del(send_id: u8, recv_id: u8) -> Step {
        Step::Delete {
            ids: ids(send_id, recv_id),
            set_current: None,
            set_rnext: None,
        }
    }

    fn add(source: Source, send_id: u8, recv_id: u8, current: bool, rnext: bool) -> Step {
        Step::Add {
            source,
            ids: ids(send_id, recv_id),
            set_current: current,
            set_rnext: rnext,
        }
    }

    #[test]
    fn a_new_connect_socket_gets_all_keys_with_the_newest_selected() {
        let plan = plan_ao(
            &[],
            &[spec(1, 2), spec(3, 4)],
            Some(&guard(240, 241)),
            SocketState::Closed,
            false,
        );
        assert_eq!(
            plan.steps,
            vec![
                add(Source::Desired(0), 1, 2, false, false),
                add(Source::Desired(1), 3, 4, true, true),
            ]
        );
        assert!(plan.deferred.is_empty() && !plan.guarded);
    }

    #[test]
    fn the_guard_goes_on_only_without_desired_keys_and_is_kept() {
        let g = guard(245, 250);
        let plan = plan_ao(&[], &[], Some(&g), SocketState::Closed, false);
        assert_eq!(plan.steps, vec![add(Source::Guard, 245, 250, true, true)]);
        assert!(plan.guarded);
        // An existing guard (other KeyIDs, other key) is kept as it is.
        let existing = [key(guard(241, 242), true, true)];
        let plan = plan_ao(&existing, &[], Some(&g), SocketState::Closed, false);
        assert!(plan.steps.is_empty(), "{plan:?}");
        assert!(plan.guarded);
        // On a listener, no selection.
        let plan = plan_ao(&[], &[], Some(&g), SocketState::Listening, false);
        assert_eq!(plan.steps, vec![add(Source::Guard, 245, 250, false, false)]);
        // Nothing desired, no guard, nothing there: nothing to do.
        let plan = plan_ao(&[], &[], None, SocketState::Connected, false);
        assert_eq!(plan, AoPlan::default());
    }

    #[test]
    fn the_guard_is_replaced_as_soon_as_a_real_key_exists() {
        let g = guard(240, 241);
        // Not connected yet: add the real key selected, then delete the
        // guard (no longer current).
        let existing = [key(g, true, true)];
        let plan = plan_ao(
            &existing,
            &[spec(7, 9)],
            Some(&g),
            SocketState::Closed,
            false,
        );
        assert_eq!(
            plan.steps,
            vec![add(Source::Desired(0), 7, 9, true, true), del(240, 241)]
        );
        // Connecting (SYN_SENT with the guard as current): forced delete.
        let plan = plan_ao(
            &existing,
            &[spec(7, 9)],
            Some(&g),
            SocketState::Connected,
            false,
        );
        assert_eq!(
            plan.steps,
            vec![
                add(Source::Desired(0), 7, 9, false, true),
                Step::Delete {
                    ids: ids(240, 241),
                    set_current: Some(7),
                    set_rnext: None,
                },
            ]
        );
        assert!(plan.deferred.is_empty());
        // A listener: plain add and delete.
        // A listener: the real key is added before the guard goes, so the
        // peer is never without a key.
        let existing = [key(g, false, false)];
        let plan = plan_ao(
            &existing,
            &[spec(7, 9)],
            None,
            SocketState::Listening,
            false,
        );
        assert_eq!(
            plan.steps,
            vec![add(Source::Desired(0), 7, 9, false, false), del(240, 241)]
        );
    }

    #[test]
    fn rollover_on_a_connection_moves_rnext_and_defers_the_current_key() {
        let old = spec(1, 2);
        let new = spec(3, 4);
        let existing = [key(old, true, true)];
        // The new MKT arrives; the old one is no longer desired.
        let plan = plan_ao(&existing, &[new], None, SocketState::Connected, false);
        assert_eq!(plan.steps, vec![add(Source::Desired(0), 3, 4, false, true)]);
        assert_eq!(plan.deferred, vec![ids(1, 2)]);
        // The peer switched: the kernel made the new key current.
        let existing = [key(old, false, false), key(new, true, true)];
        let plan = plan_ao(&existing, &[new], None, SocketState::Connected, false);
        assert_eq!(plan.steps, vec![del(1, 2)]);
        assert!(plan.deferred.is_empty());
        // Both still desired: the new one only becomes rnext.
        let existing = [key(old, true, true), key(new, false, false)];
        let plan = plan_ao(&existing, &[old, new], None, SocketState::Connected, false);
        assert_eq!(plan.steps, vec![Step::SetRnext(4)]);
        // Forced: the old current key goes at once.
        let existing = [key(old, true, false), key(new, false, true)];
        let plan = plan_ao(&existing, &[new], None, SocketState::Connected, true);
        assert_eq!(
            plan.steps,
            vec![Step::Delete {
                ids: ids(1, 2),
                set_current: Some(3),
                set_rnext: None,
            }]
        );
        // Old key only rnext (current already moved): a plain delete after
        // rnext moves.
        let existing = [key(old, false, true), key(new, true, false)];
        let plan = plan_ao(&existing, &[new], None, SocketState::Connected, false);
        assert_eq!(plan.steps, vec![Step::SetRnext(4), del(1, 2)]);
    }

    #[test]
    fn closed_sockets_are_reselected_and_cleaned() {
        let old = spec(1, 2);
        let new = spec(3, 4);
        let existing = [key(old, true, true), key(new, false, false)];
        let plan = plan_ao(&existing, &[new], None, SocketState::Closed, false);
        assert_eq!(
            plan.steps,
            vec![Step::SetCurrent(3), Step::SetRnext(4), del(1, 2)]
        );
        // Already right: nothing.
        let existing = [key(new, true, true)];
        let plan = plan_ao(&existing, &[new], None, SocketState::Closed, false);
        assert!(plan.steps.is_empty());
    }

    #[test]
    fn stale_keys_free_their_ids_before_new_keys_are_added() {
        // Same KeyIDs, different algorithm: the old one goes first.
        let stale = KeySpec {
            algorithm: Some(MacAlgorithm::AesCmac96),
            ..spec(3, 4)
        };
        let existing = [key(stale, false, false), key(spec(1, 2), true, true)];
        let plan = plan_ao(
            &existing,
            &[spec(1, 2), spec(3, 4)],
            None,
            SocketState::Connected,
            false,
        );
        assert_eq!(
            plan.steps,
            vec![del(3, 4), add(Source::Desired(1), 3, 4, false, true)]
        );
        // Duplicates in desired: the later one wins, added once.
        let plan = plan_ao(
            &[],
            &[spec(3, 4), spec(3, 4)],
            None,
            SocketState::Closed,
            false,
        );
        assert_eq!(plan.steps, vec![add(Source::Desired(1), 3, 4, true, true)]);
    }

    #[test]
    fn keys_in_use_without_a_replacement_are_deferred() {
        // Peer deconfigured, no guard: a connection keeps its current key.
        let existing = [key(spec(1, 2), true, true), key(spec(3, 4), false, false)];
        let plan = plan_ao(&existing, &[], None, SocketState::Connected, true);
        assert_eq!(plan.steps, vec![del(3, 4)]);
        assert_eq!(plan.deferred, vec![ids(1, 2)]);
        // A listener reporting current/rnext (set before listen()).
        let existing = [key(spec(1, 2), true, true)];
        let plan = plan_ao(
            &existing,
            &[spec(5, 6)],
            None,
            SocketState::Listening,
            false,
        );
        assert_eq!(
            plan.steps,
            vec![add(Source::Desired(0), 5, 6, false, false)]
        );
        assert_eq!(plan.deferred, vec![ids(1, 2)]);
        // A listener whose peer is gone: all its keys go.
        let existing = [
            key(spec(1, 2), false, false),
            key(guard(240, 240), false, false),
        ];
        let plan = plan_ao(&existing, &[], None, SocketState::Listening, false);
        assert_eq!(plan.steps, vec![del(1, 2), del(240, 240)]);
    }

    #[test]
    fn expiry_forces_the_guard_in_as_current_key() {
        // The only MKT expired on a live connection: the guard is added,
        // then the old key goes in a forced delete naming the guard current.
        let g = guard(241, 242);
        let existing = [key(spec(1, 2), true, true)];
        let plan = plan_ao(&existing, &[], Some(&g), SocketState::Connected, true);
        assert!(plan.guarded);
        assert_eq!(
            plan.steps,
            vec![
                add(Source::Guard, 241, 242, false, true),
                Step::Delete {
                    ids: ids(1, 2),
                    set_current: Some(241),
                    set_rnext: None,
                }
            ]
        );
        // Not forced, the old key would stay current: not fail-closed.
        let plan = plan_ao(&existing, &[], Some(&g), SocketState::Connected, false);
        assert_eq!(plan.deferred, vec![ids(1, 2)]);
    }

    #[test]
    fn restored_keys_stay_until_released() {
        // After a restart: K1 current, K2 rnext (mid-rollover), both from
        // before; the new MKT K3 arrives.
        let existing = [key(spec(1, 2), true, false), key(spec(3, 4), false, true)];
        let keep = [ids(1, 2), ids(3, 4)];
        let plan = plan_ao_keeping(
            &existing,
            &[spec(5, 6)],
            None,
            &keep,
            SocketState::Connected,
            false,
        );
        // Only the new key goes on (as rnext); nothing is deleted or deferred.
        assert_eq!(plan.steps, vec![add(Source::Desired(0), 5, 6, false, true)]);
        assert!(plan.deferred.is_empty());
        // Released: plain stale keys (the unused one goes, current waits).
        let existing = [
            key(spec(1, 2), true, false),
            key(spec(3, 4), false, false),
            key(spec(5, 6), false, true),
        ];
        let plan = plan_ao_keeping(
            &existing,
            &[spec(5, 6)],
            None,
            &[],
            SocketState::Connected,
            false,
        );
        assert_eq!(plan.steps, vec![del(3, 4)]);
        assert_eq!(plan.deferred, vec![ids(1, 2)]);
        // A kept key whose KeyIDs a new key needs, not in use, still goes first.
        let existing = [key(spec(1, 2), true, true), key(spec(7, 4), false, false)];
        let plan = plan_ao_keeping(
            &existing,
            &[spec(5, 4)],
            None,
            &[ids(1, 2), ids(7, 4)],
            SocketState::Connected,
            false,
        );
        assert_eq!(
            plan.steps,
            vec![del(7, 4), add(Source::Desired(0), 5, 4, false, true)]
        );
    }

    #[test]
    fn guard_ids_are_recognised() {
        assert!(ids(240, 255).is_guard());
        assert!(!ids(239, 255).is_guard());
        assert!(!ids(1, 2).is_guard());
        assert_eq!(ids(3, 4).to_string(), "3/4");
    }

    fn mkt(send_id: u8, recv_id: u8, byte: u8) -> MasterKeyTuple {
        MasterKeyTuple {
            send_id,
            recv_id,
            algorithm: MacAlgorithm::HmacSha256_128,
            include_options: true,
            master_key: Secret::new(vec![byte; 32]),
        }
    }

    fn md5_available() -> bool {
        match crate::kernel::probe() {
            Ok(s) if s.tcp_md5 => true,
            other => {
                eprintln!("no TCP-MD5 ({other:?}); skipping");
                false
            }
        }
    }

    #[test]
    fn md5_reconcile_sets_the_newest_key_or_the_guard_and_clears() {
        if !md5_available() {
            return;
        }
        let sock = sys::tcp_socket(false).expect("socket");
        let peer: IpAddr = "192.0.2.7".parse().expect("literal");
        let g = mkt(240, 241, 0xee);
        let out = reconcile(sock.as_fd(), Backend::Md5, peer, &[], Some(&g), false).expect("guard");
        assert!(out.guard_installed && out.guarded && out.changed());
        let out = reconcile(
            sock.as_fd(),
            Backend::Md5,
            peer,
            &[mkt(1, 2, 1), mkt(3, 4, 2)],
            Some(&g),
            false,
        )
        .expect("keys");
        assert_eq!(out.added, vec![ids(3, 4)]);
        assert!(!out.guarded && !out.guard_installed);
        let out = reconcile(sock.as_fd(), Backend::Md5, peer, &[], None, false).expect("clear");
        assert!(out.cleared);
        // The key is really gone: deleting it again is ENOENT.
        let e = md5::del_key(sock.as_fd(), peer, None).expect_err("gone");
        assert_eq!(e.cause(), Some(Cause::NotFound));
        let out =
            reconcile(sock.as_fd(), Backend::Md5, peer, &[], None, false).expect("idempotent");
        assert!(!out.changed());
    }

    #[test]
    fn ao_reconcile_reports_a_kernel_without_tcp_ao() {
        let Ok(support) = crate::kernel::probe() else {
            return;
        };
        if support.tcp_ao {
            return;
        }
        let sock = sys::tcp_socket(false).expect("socket");
        let peer: IpAddr = "192.0.2.7".parse().expect("literal");
        let e = reconcile(
            sock.as_fd(),
            Backend::Ao,
            peer,
            &[mkt(1, 2, 1)],
            None,
            false,
        )
        .expect_err("no TCP-AO");
        assert!(e.is_not_supported(), "{e}");
    }

    fn record(sock: &impl AsFd, role: SocketRole) -> AttachedSocket {
        let pid = i32::try_from(std::process::id()).expect("pid");
        AttachedSocket::describe(sock.as_fd(), pid, sock.as_fd().as_raw_fd(), role, None)
            .expect("describe")
    }

    /// `toward(ip)`: the listeners and the sockets toward `ip` (an IPv4
    /// address and its IPv4-mapped IPv6 form are the same), by id; the
    /// index follows removals.
    #[test]
    fn registry_finds_the_sockets_toward_an_address() {
        let mut reg = SocketRegistry::new();
        let rec = |cookie: u64, role, remote: Option<&str>| AttachedSocket {
            id: 0,
            pid: 1,
            fd: i32::try_from(cookie).unwrap(),
            cookie,
            role,
            local: None,
            remote: remote.map(|r| r.parse().unwrap()),
            peers: Vec::new(),
            guarded: Vec::new(),
            groups: Vec::new(),
            attached_at: SystemTime::UNIX_EPOCH,
        };
        let listener = reg.add(rec(1, SocketRole::Listen, None));
        let to_b = reg.add(rec(2, SocketRole::Connect, Some("10.0.0.2:179")));
        let from_c = reg.add(rec(3, SocketRole::Accepted, Some("10.0.0.3:40000")));
        let mapped_b = reg.add(rec(
            4,
            SocketRole::Accepted,
            Some("[::ffff:10.0.0.2]:40001"),
        ));
        let ids = |reg: &SocketRegistry, ip: &str| {
            reg.toward(ip.parse().unwrap())
                .map(|s| s.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&reg, "10.0.0.2"), vec![listener, to_b, mapped_b]);
        assert_eq!(ids(&reg, "10.0.0.3"), vec![listener, from_c]);
        assert_eq!(ids(&reg, "10.0.0.9"), vec![listener]);
        reg.remove(to_b);
        reg.remove(listener);
        assert_eq!(ids(&reg, "10.0.0.2"), vec![mapped_b]);
        reg.remove(mapped_b);
        assert!(ids(&reg, "10.0.0.2").is_empty());
    }

    #[test]
    fn registry_reacquires_until_the_socket_is_closed() {
        let mut reg = SocketRegistry::new();
        let a = sys::tcp_socket(false).expect("socket");
        let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut ra = record(&a, SocketRole::Connect);
        ra.peers = vec!["r1".into()];
        let mut rb = record(&b, SocketRole::Listen);
        rb.peers = vec!["r1".into(), "r2".into()];
        assert_eq!(rb.local, b.local_addr().ok());
        let ida = reg.add(ra);
        let idb = reg.add(rb);
        assert_ne!(ida, idb);
        assert_eq!(reg.len(), 2);
        assert_eq!(reg.by_peer("r1").count(), 2);
        assert_eq!(
            reg.by_peer("r2").map(|s| s.id).collect::<Vec<_>>(),
            vec![idb]
        );
        assert_eq!(reg.by_peer("r3").count(), 0);

        let sa = reg.get(ida).expect("a").clone();
        let copy = reg.reacquire(&sa).expect("reacquire");
        assert_eq!(sys::socket_cookie(copy.as_fd()).expect("cookie"), sa.cookie);
        drop(copy);
        assert!(reg.prune().is_empty());

        // Re-adding the same socket replaces the record.
        let ida2 = reg.add(record(&a, SocketRole::Connect));
        assert_eq!(reg.len(), 2);
        assert!(reg.get(ida).is_none() && reg.get(ida2).is_some());
        // The indexes follow: the new record names no peer.
        assert_eq!(
            reg.by_peer("r1").map(|s| s.id).collect::<Vec<_>>(),
            vec![idb]
        );

        // A wrong cookie is detected.
        let mut fake = sa.clone();
        fake.cookie ^= 1;
        assert!(matches!(reg.reacquire(&fake), Err(Gone::Replaced { .. })));
        // A pid that does not exist.
        fake.pid = i32::MAX;
        assert!(matches!(
            reg.reacquire(&fake),
            Err(Gone::ProcessExited { .. }) | Err(Gone::Inaccessible { .. })
        ));

        // The owner closes the socket: gone (closed, or the number reused).
        drop(a);
        let pruned = reg.prune();
        assert_eq!(pruned.len(), 1, "{pruned:?}");
        assert_eq!(pruned[0].0.id, ida2);
        assert!(
            matches!(
                pruned[0].1,
                Gone::DescriptorClosed { .. } | Gone::Replaced { .. }
            ),
            "{}",
            pruned[0].1
        );
        assert_eq!(reg.iter().map(|s| s.id).collect::<Vec<_>>(), vec![idb]);
        assert!(reg.remove(idb).is_some());
        assert!(reg.is_empty());
        assert_eq!(reg.by_peer("r1").count() + reg.by_peer("r2").count(), 0);
    }
}
