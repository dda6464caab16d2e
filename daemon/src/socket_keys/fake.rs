//! An in-memory kernel for the key policy's tests: sockets with a TCP
//! state, a TCP-AO key list with Current_key and RNext_key, and TCP-MD5
//! keys, refusing what Linux refuses (reference §1.6-1.8, docs/kernel.md):
//! a second key with the same SendID or RecvID for an overlapping address
//! or prefix (`EEXIST`),
//! deleting Current_key or RNext_key without naming replacements
//! (`EBUSY`), selecting keys on a listener (`EINVAL`), selecting a key that
//! is not there (`ENOENT`). Every change is logged in order.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::rc::Rc;

use aokd_proto::mkt::{MacAlgorithm, MasterKeyTuple};

use super::SocketKeys;
use crate::kernel::ao::{AoInfo, AoKeyInfo};
use crate::kernel::sys::TcpState;
use crate::kernel::{canonical, KernelError, KeyContext, Operation};
use crate::sockets::Gone;

/// One TCP-AO key on a fake socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeKey {
    pub peer: IpAddr,
    pub prefix: u8,
    pub send_id: u8,
    pub recv_id: u8,
    pub algorithm: MacAlgorithm,
    pub include_options: bool,
    pub master_key: Vec<u8>,
}

/// A fake socket.
#[derive(Debug, Clone)]
pub struct FakeSocket {
    pub pid: i32,
    pub fd: i32,
    pub state: TcpState,
    pub open: bool,
    pub keys: Vec<FakeKey>,
    /// (SendID, RecvID) of Current_key.
    pub current: Option<(u8, u8)>,
    /// (SendID, RecvID) of RNext_key.
    pub rnext: Option<(u8, u8)>,
    pub md5: BTreeMap<IpAddr, Vec<u8>>,
    /// TCP-MD5 prefix keys (`TCP_MD5SIG_FLAG_PREFIX`), by network and length.
    pub md5_prefix: BTreeMap<(IpAddr, u8), Vec<u8>>,
}

/// Whether `a/alen` and `b/blen` share an address (as the kernel's
/// overlap check of `TCP_AO_ADD_KEY` sees them).
fn overlaps(a: IpAddr, alen: u8, b: IpAddr, blen: u8) -> bool {
    use aokd_proto::ike::group::IpPrefix;
    if a.is_ipv4() != b.is_ipv4() {
        return false;
    }
    let len = alen.min(blen);
    match (IpPrefix::new(a, len), IpPrefix::new(b, len)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

#[derive(Debug, Default)]
struct Inner {
    next_cookie: u64,
    sockets: BTreeMap<u64, FakeSocket>,
    log: Vec<String>,
}

/// The fake kernel; clones share it (the test keeps one to look inside).
#[derive(Debug, Clone, Default)]
pub struct FakeKernel(Rc<RefCell<Inner>>);

fn err(op: Operation, errno: i32) -> KernelError {
    KernelError::os(
        op,
        KeyContext::socket(),
        io::Error::from_raw_os_error(errno),
    )
}

impl FakeKernel {
    /// A new socket, descriptor `fd` of process `pid`: returns its cookie
    /// (which is also the handle aokd holds).
    pub fn socket(&self, pid: i32, fd: i32, state: TcpState) -> u64 {
        let mut k = self.0.borrow_mut();
        k.next_cookie += 1;
        let cookie = k.next_cookie;
        k.sockets.insert(
            cookie,
            FakeSocket {
                pid,
                fd,
                state,
                open: true,
                keys: Vec::new(),
                current: None,
                rnext: None,
                md5: BTreeMap::new(),
                md5_prefix: BTreeMap::new(),
            },
        );
        cookie
    }

    /// The socket with `cookie`, as it is now.
    pub fn get(&self, cookie: u64) -> FakeSocket {
        self.0.borrow().sockets[&cookie].clone()
    }

    /// (SendID, RecvID) of the socket's TCP-AO keys, in the kernel's order.
    pub fn ids(&self, cookie: u64) -> Vec<(u8, u8)> {
        self.get(cookie)
            .keys
            .iter()
            .map(|k| (k.send_id, k.recv_id))
            .collect()
    }

    /// Its owner closes the socket.
    pub fn close(&self, cookie: u64) {
        if let Some(s) = self.0.borrow_mut().sockets.get_mut(&cookie) {
            s.open = false;
        }
    }

    /// The socket connects (or the listener goes on listening).
    pub fn set_state(&self, cookie: u64, state: TcpState) {
        if let Some(s) = self.0.borrow_mut().sockets.get_mut(&cookie) {
            s.state = state;
        }
    }

    /// The peer asked for the key with `send_id` (its RNext): the kernel
    /// makes it Current_key (RFC 5925 7.5.2.e).
    pub fn peer_switches_to(&self, cookie: u64, send_id: u8) {
        let mut k = self.0.borrow_mut();
        let s = k.sockets.get_mut(&cookie).expect("socket");
        let key = s.keys.iter().find(|k| k.send_id == send_id).expect("key");
        s.current = Some((key.send_id, key.recv_id));
    }

    /// The changes made so far, in order, and forgets them.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.0.borrow_mut().log)
    }

    fn with<T>(
        &self,
        cookie: u64,
        op: Operation,
        f: impl FnOnce(&mut FakeSocket, &mut Vec<String>) -> Result<T, KernelError>,
    ) -> Result<T, KernelError> {
        let mut k = self.0.borrow_mut();
        let Inner { sockets, log, .. } = &mut *k;
        match sockets.get_mut(&cookie) {
            Some(s) if s.open => f(s, log),
            _ => Err(err(op, libc::EBADF)),
        }
    }
}

fn find(s: &FakeSocket, send_id: Option<u8>, recv_id: Option<u8>) -> Option<(u8, u8)> {
    s.keys
        .iter()
        .find(|k| {
            send_id.is_none_or(|id| k.send_id == id) && recv_id.is_none_or(|id| k.recv_id == id)
        })
        .map(|k| (k.send_id, k.recv_id))
}

impl SocketKeys for FakeKernel {
    type Socket = u64;

    fn reacquire(&self, pid: i32, fd: i32, cookie: u64) -> Result<u64, Gone> {
        let k = self.0.borrow();
        match k.sockets.get(&cookie) {
            Some(s) if s.open && s.pid == pid && s.fd == fd => Ok(cookie),
            _ => Err(Gone::DescriptorClosed { pid, fd }),
        }
    }

    fn tcp_state(&self, sock: &u64) -> io::Result<TcpState> {
        let k = self.0.borrow();
        match k.sockets.get(sock) {
            Some(s) if s.open => Ok(s.state),
            _ => Err(io::Error::from_raw_os_error(libc::EBADF)),
        }
    }

    fn ao_keys(&self, sock: &u64) -> Result<Vec<AoKeyInfo>, KernelError> {
        self.with(*sock, Operation::AoGetKeys, |s, _| {
            if s.keys.is_empty() {
                return Err(err(Operation::AoGetKeys, libc::ENOENT));
            }
            Ok(s.keys
                .iter()
                .map(|k| AoKeyInfo {
                    peer: k.peer,
                    prefix: k.prefix,
                    send_id: k.send_id,
                    recv_id: k.recv_id,
                    alg_name: match k.algorithm {
                        MacAlgorithm::HmacSha1_96 => "hmac(sha1)",
                        MacAlgorithm::HmacSha256_128 => "hmac(sha256)",
                        MacAlgorithm::AesCmac96 => "cmac(aes128)",
                    }
                    .to_string(),
                    mac_len: 12,
                    include_options: k.include_options,
                    ifindex: None,
                    is_current: s.current == Some((k.send_id, k.recv_id)),
                    is_rnext: s.rnext == Some((k.send_id, k.recv_id)),
                    pkt_good: 0,
                    pkt_bad: 0,
                })
                .collect())
        })
    }

    fn ao_add(
        &self,
        sock: &u64,
        peer: IpAddr,
        prefix: u8,
        mkt: &MasterKeyTuple,
        set_current: bool,
        set_rnext: bool,
    ) -> Result<(), KernelError> {
        let op = Operation::AoAddKey;
        self.with(*sock, op, |s, log| {
            let peer = canonical(peer);
            if (set_current || set_rnext) && s.state == TcpState::Listen {
                return Err(err(op, libc::EINVAL));
            }
            if s.keys.iter().any(|k| {
                overlaps(k.peer, k.prefix, peer, prefix)
                    && (k.send_id == mkt.send_id || k.recv_id == mkt.recv_id)
            }) {
                return Err(err(op, libc::EEXIST));
            }
            s.keys.push(FakeKey {
                peer,
                prefix,
                send_id: mkt.send_id,
                recv_id: mkt.recv_id,
                algorithm: mkt.algorithm,
                include_options: mkt.include_options,
                master_key: mkt.master_key.as_bytes().to_vec(),
            });
            let ids = (mkt.send_id, mkt.recv_id);
            if set_current {
                s.current = Some(ids);
            }
            if set_rnext {
                s.rnext = Some(ids);
            }
            log.push(format!(
                "add {}/{}{}{}",
                ids.0,
                ids.1,
                if set_current { " current" } else { "" },
                if set_rnext { " rnext" } else { "" }
            ));
            Ok(())
        })
    }

    fn ao_del(
        &self,
        sock: &u64,
        peer: IpAddr,
        prefix: u8,
        send_id: u8,
        recv_id: u8,
        set_current: Option<u8>,
        set_rnext: Option<u8>,
    ) -> Result<(), KernelError> {
        let op = Operation::AoDelKey;
        self.with(*sock, op, |s, log| {
            let peer = canonical(peer);
            let Some(pos) = s.keys.iter().position(|k| {
                k.peer == peer && k.prefix == prefix && k.send_id == send_id && k.recv_id == recv_id
            }) else {
                return Err(err(op, libc::ENOENT));
            };
            let ids = (send_id, recv_id);
            if (set_current.is_some() || set_rnext.is_some()) && s.state == TcpState::Listen {
                return Err(err(op, libc::EINVAL));
            }
            let new_current = match set_current {
                Some(id) => Some(find(s, Some(id), None).ok_or_else(|| err(op, libc::ENOENT))?),
                None => s.current,
            };
            let new_rnext = match set_rnext {
                Some(id) => Some(find(s, None, Some(id)).ok_or_else(|| err(op, libc::ENOENT))?),
                None => s.rnext,
            };
            if new_current == Some(ids) || new_rnext == Some(ids) {
                return Err(err(op, libc::EBUSY));
            }
            s.current = new_current;
            s.rnext = new_rnext;
            s.keys.remove(pos);
            log.push(format!(
                "del {send_id}/{recv_id}{}",
                set_current
                    .map(|c| format!(" current {c}"))
                    .unwrap_or_default()
            ));
            Ok(())
        })
    }

    fn ao_set_current(&self, sock: &u64, send_id: u8) -> Result<(), KernelError> {
        let op = Operation::AoSetInfo;
        self.with(*sock, op, |s, log| {
            if s.state == TcpState::Listen {
                return Err(err(op, libc::EINVAL));
            }
            s.current = Some(find(s, Some(send_id), None).ok_or_else(|| err(op, libc::ENOENT))?);
            log.push(format!("current {send_id}"));
            Ok(())
        })
    }

    fn ao_set_rnext(&self, sock: &u64, recv_id: u8) -> Result<(), KernelError> {
        let op = Operation::AoSetInfo;
        self.with(*sock, op, |s, log| {
            if s.state == TcpState::Listen {
                return Err(err(op, libc::EINVAL));
            }
            s.rnext = Some(find(s, None, Some(recv_id)).ok_or_else(|| err(op, libc::ENOENT))?);
            log.push(format!("rnext {recv_id}"));
            Ok(())
        })
    }

    fn ao_info(&self, sock: &u64) -> Result<AoInfo, KernelError> {
        self.with(*sock, Operation::AoGetInfo, |s, _| {
            Ok(AoInfo {
                current_key: s.current.map(|(send, _)| send),
                rnext: s.rnext.map(|(_, recv)| recv),
                ao_required: false,
                accept_icmps: false,
                pkt_good: 0,
                pkt_bad: 0,
                pkt_key_not_found: 0,
                pkt_ao_required: 0,
                pkt_dropped_icmp: 0,
            })
        })
    }

    fn md5_set(&self, sock: &u64, peer: IpAddr, key: &[u8]) -> Result<(), KernelError> {
        self.with(*sock, Operation::Md5SigExt, |s, log| {
            s.md5.insert(canonical(peer), key.to_vec());
            log.push(format!("md5 set {peer}"));
            Ok(())
        })
    }

    fn md5_set_prefix(
        &self,
        sock: &u64,
        addr: IpAddr,
        prefix: u8,
        key: &[u8],
    ) -> Result<(), KernelError> {
        self.with(*sock, Operation::Md5SigExt, |s, log| {
            s.md5_prefix.insert((canonical(addr), prefix), key.to_vec());
            log.push(format!("md5 set {addr}/{prefix}"));
            Ok(())
        })
    }

    fn md5_del(&self, sock: &u64, peer: IpAddr) -> Result<(), KernelError> {
        let op = Operation::Md5SigExt;
        self.with(*sock, op, |s, log| {
            s.md5
                .remove(&canonical(peer))
                .ok_or_else(|| err(op, libc::ENOENT))?;
            log.push(format!("md5 del {peer}"));
            Ok(())
        })
    }
}
