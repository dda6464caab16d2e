//! The attach API end to end on the machine that runs the tests
//! (docs/attach.md): a real [`AttachServer`], a small fake event loop that
//! installs TCP-MD5 keys with [`sockets::reconcile`] (the host kernel has
//! TCP-MD5; TCP-AO runs in the test VM), and the `aokd-attach` client.
//!
//! - A socket attached before `connect()` connects to a TCP-MD5 listener
//!   only because of the attach: the same connect without it fails.
//! - aokd keeps no descriptor of the socket once it has answered, and gets
//!   it back later with `pidfd_getfd` (same `SO_COOKIE`); once the owner
//!   closes it, it is reported gone.
//! - The accept-queue race: a connection that waited in the listener's
//!   accept queue while the listener's key changed keeps the old key;
//!   attaching it with the `accepted` role brings it up to date.
//!
//! They need root (TCP-MD5 on loopback and pidfd_getfd are fine without,
//! but the kernel tests' convention is kept): without it they fail when
//! `CI` is set and skip otherwise.

mod common;

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use aokd::attach::{result_error, result_ok, AttachCall, AttachServer, DEFAULT_MODE};
use aokd::kernel::{self, md5, sys, Backend};
use aokd::sockets::{self, AttachedSocket, Gone, SocketRegistry};
use aokd_api::attach::AttachResult;
use aokd_attach::{Installed, SocketRole};
use aokd_proto::crypto::Secret;
use aokd_proto::mkt::{MacAlgorithm, MasterKeyTuple};
use tokio::sync::{mpsc, oneshot};

use common::TempDir;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const CONNECT_LIMIT: Duration = Duration::from_secs(2);

/// True when the test may run; panics under CI without root.
fn can_run(test: &str) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u32>().ok());
    if euid != Some(0) {
        if std::env::var_os("CI").is_some() {
            panic!("{test} requires root (CI is set, so this is a failure, not a skip)");
        }
        eprintln!("skipping {test}: requires root (euid {euid:?})");
        return false;
    }
    match kernel::probe() {
        Ok(s) if s.tcp_md5 => true,
        other => {
            eprintln!("skipping {test}: no TCP-MD5 in this kernel ({other:?})");
            false
        }
    }
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

/// What the fake event loop knows: the MKTs of the one peer (loopback),
/// and the attached sockets.
#[derive(Default)]
struct State {
    desired: Vec<MasterKeyTuple>,
    registry: SocketRegistry,
    calls: usize,
}

/// A running attach server with a fake event loop in its own thread.
struct Daemon {
    path: PathBuf,
    state: Arc<Mutex<State>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
    _dir: TempDir,
}

impl Daemon {
    fn start(tag: &str, desired: Vec<MasterKeyTuple>) -> Daemon {
        let dir = TempDir::new(tag);
        let path = dir.join("run/attach.sock");
        let state = Arc::new(Mutex::new(State {
            desired,
            ..State::default()
        }));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = {
            let path = path.clone();
            let state = state.clone();
            thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let server = AttachServer::bind(&path, DEFAULT_MODE)
                        .await
                        .expect("bind the attach socket");
                    let (tx, rx) = mpsc::channel(8);
                    tokio::spawn(fake_event_loop(rx, state));
                    ready_tx.send(()).expect("ready");
                    tokio::select! {
                        () = server.run(tx) => {}
                        _ = stop_rx => {}
                    }
                });
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("attach server started");
        Daemon {
            path,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("state lock")
    }

    /// What the event loop does when an MKT changes: reacquire every
    /// attached socket and reconcile it.
    fn rekey(&self, desired: Vec<MasterKeyTuple>) {
        let mut st = self.state();
        st.desired = desired;
        let sockets: Vec<AttachedSocket> = st.registry.iter().cloned().collect();
        for s in sockets {
            let fd = st.registry.reacquire(&s).expect("reacquire");
            sockets::reconcile(
                fd.as_fd(),
                Backend::Md5,
                LOOPBACK,
                &st.desired,
                None,
                s.role == SocketRole::Listen,
            )
            .expect("reconcile");
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The fake event loop: installs the peer's TCP-MD5 key on every attached
/// socket, records it, closes its descriptor, then answers.
async fn fake_event_loop(mut calls: mpsc::Receiver<AttachCall>, state: Arc<Mutex<State>>) {
    while let Some(call) = calls.recv().await {
        let result = {
            let mut st = state.lock().expect("state lock");
            st.calls += 1;
            attach_one(&call, &mut st)
        };
        let AttachCall { socket, reply, .. } = call;
        // aokd keeps no descriptor: closed before the client hears back.
        drop(socket);
        let _ = reply.send(aokd_api::attach::AttachReply {
            version: aokd_api::attach::ATTACH_VERSION,
            result,
        });
    }
}

fn attach_one(call: &AttachCall, st: &mut State) -> AttachResult {
    let peer = match call.request.role {
        SocketRole::Listen => LOOPBACK,
        _ => match call.remote() {
            Some(a) => a.ip(),
            None => return result_error("no remote address"),
        },
    };
    if kernel::canonical(peer) != LOOPBACK {
        return result_ok(Installed::NotCovered, vec![], None, None);
    }
    let fd = call.socket.as_fd();
    if let Err(e) = sockets::reconcile(fd, Backend::Md5, peer, &st.desired, None, call.listening())
    {
        return result_error(e.to_string());
    }
    let mut record = match AttachedSocket::describe(
        fd,
        call.pid,
        call.request.fd,
        call.request.role,
        call.remote(),
    ) {
        Ok(r) => r,
        Err(e) => return result_error(e.to_string()),
    };
    record.peers = vec!["lo".into()];
    st.registry.add(record);
    result_ok(Installed::Keys, vec!["lo".into()], Some(Backend::Md5), None)
}

/// A TCP socket made with socket(2), not connected.
fn fresh_socket() -> OwnedFd {
    sys::tcp_socket(false).expect("socket")
}

/// connect(2) with a `CONNECT_LIMIT` send timeout (EINPROGRESS after it).
fn connect(sock: OwnedFd, addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::from(sock);
    stream.set_write_timeout(Some(CONNECT_LIMIT))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    sys::connect(stream.as_fd(), addr)?;
    Ok(stream)
}

fn assert_no_connection(result: io::Result<TcpStream>, what: &str) {
    match result {
        Ok(_) => panic!("{what}: connect succeeded"),
        Err(e) => assert!(
            e.raw_os_error() == Some(libc::EINPROGRESS) || e.kind() == io::ErrorKind::TimedOut,
            "{what}: expected a connect timeout, got {e}"
        ),
    }
}

/// Descriptors of this process that refer to the same socket as `fd`.
fn descriptors_of(fd: &impl AsRawFd) -> usize {
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("readlink");
    std::fs::read_dir("/proc/self/fd")
        .expect("list fds")
        .filter_map(|e| e.ok())
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == target))
        .count()
}

#[test]
fn attach_before_connect_installs_the_key() {
    if !can_run("attach_before_connect_installs_the_key") {
        return;
    }
    let key = mkt(1, 2, 0x5a);
    let daemon = Daemon::start("attach-connect", vec![key.clone()]);

    // The peer: a listener with the same TCP-MD5 key.
    let listener = TcpListener::bind((LOOPBACK, 0)).expect("bind");
    md5::set_key(&listener, LOOPBACK, None, key.master_key.as_bytes()).expect("listener key");
    let addr = listener.local_addr().expect("addr");
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read hello");
        assert_eq!(&buf, b"hello");
        s.write_all(b"world").expect("write world");
        listener
    });

    // Control: the same connect without attach does not get through.
    assert_no_connection(connect(fresh_socket(), addr), "without attach");

    // With attach.
    let sock = fresh_socket();
    let attached =
        aokd_attach::attach_connect(&daemon.path, &sock, addr, Some(Duration::from_secs(1)))
            .expect("attach");
    assert_eq!(attached.installed, Installed::Keys);
    assert_eq!(attached.peers, vec!["lo".to_owned()]);
    assert_eq!(attached.mechanism.as_deref(), Some("tcp-md5"));
    let mut stream = connect(sock, addr).expect("connect after attach");
    stream.write_all(b"hello").expect("write hello");
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).expect("read world");
    assert_eq!(&buf, b"world");
    let _listener = server.join().expect("server");

    // Refusals reach the client as errors, and the daemon saw two calls
    // only (the control connect never asked).
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let e = aokd_attach::attach_listen(&daemon.path, &udp).expect_err("not TCP");
    assert!(e.to_string().contains("not a TCP socket"), "{e}");
    assert_eq!(daemon.state().calls, 1);
}

#[test]
fn aokd_keeps_no_descriptor_and_reacquires_the_socket() {
    if !can_run("aokd_keeps_no_descriptor_and_reacquires_the_socket") {
        return;
    }
    let daemon = Daemon::start("attach-registry", vec![mkt(1, 2, 0x11)]);
    let sock = fresh_socket();
    let cookie = sys::socket_cookie(sock.as_fd()).expect("cookie");
    let remote: SocketAddr = "127.0.0.1:179".parse().expect("literal");
    aokd_attach::attach_connect(&daemon.path, &sock, remote, None).expect("attach");

    // The event loop closed its descriptor before answering: the test's
    // is the only one left in this process (aokd is this process here).
    assert_eq!(descriptors_of(&sock), 1, "aokd kept a descriptor");

    let record = {
        let st = daemon.state();
        assert_eq!(st.registry.len(), 1);
        let record = st.registry.iter().next().cloned().expect("record");
        record
    };
    assert_eq!(record.cookie, cookie);
    assert_eq!(record.fd, sock.as_raw_fd());
    assert_eq!(record.pid, i32::try_from(std::process::id()).expect("pid"));
    assert_eq!(record.role, SocketRole::Connect);
    assert_eq!(record.remote, Some(remote));

    // Reacquired with pidfd_getfd: the same socket.
    let copy = daemon
        .state()
        .registry
        .reacquire(&record)
        .expect("reacquire");
    assert_eq!(sys::socket_cookie(copy.as_fd()).expect("cookie"), cookie);
    drop(copy);
    // Re-keying through the copy works on the owner's socket.
    daemon.rekey(vec![mkt(3, 4, 0x22)]);

    // The owner closes the socket: gone, and pruned.
    drop(sock);
    match daemon.state().registry.reacquire(&record) {
        Err(Gone::DescriptorClosed { .. } | Gone::Replaced { .. }) => {}
        other => panic!("expected the socket gone, got {other:?}"),
    }
    let pruned = daemon.state().registry.prune();
    assert_eq!(pruned.len(), 1);
    assert!(daemon.state().registry.is_empty());
}

/// A client keyed directly (the peer's side of the negotiation), connected
/// to `addr`.
fn keyed_client(addr: SocketAddr, key: &MasterKeyTuple) -> TcpStream {
    let sock = fresh_socket();
    md5::set_key(&sock, LOOPBACK, None, key.master_key.as_bytes()).expect("client key");
    connect(sock, addr).expect("connect")
}

/// Sends "ping" and expects "pong" back within `limit`.
fn ping(client: &mut TcpStream, server: &mut TcpStream, limit: Duration) -> bool {
    client.write_all(b"ping").expect("write ping");
    server.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 4];
    match server.read_exact(&mut buf) {
        Ok(()) => {
            assert_eq!(&buf, b"ping");
            true
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        Err(e) => panic!("read: {e}"),
    }
}

#[test]
fn accepted_role_closes_the_accept_queue_race() {
    if !can_run("accepted_role_closes_the_accept_queue_race") {
        return;
    }
    let old = mkt(1, 2, 0x31);
    let new = mkt(3, 4, 0x42);
    let daemon = Daemon::start("attach-accept", vec![old.clone()]);

    // The listener gets its keys from aokd.
    let listener = TcpListener::bind((LOOPBACK, 0)).expect("bind");
    let attached = aokd_attach::attach_listen(&daemon.path, &listener).expect("attach listener");
    assert_eq!(attached.installed, Installed::Keys);
    let addr = listener.local_addr().expect("addr");

    // Two connections complete the handshake with the old key and wait in
    // the accept queue.
    let mut c1 = keyed_client(addr, &old);
    let mut c2 = keyed_client(addr, &old);

    // The MKT changes: aokd re-keys the listener (reacquired with
    // pidfd_getfd), and the peer switches its connections to the new key.
    daemon.rekey(vec![new.clone()]);
    for c in [&c1, &c2] {
        md5::set_key(c, LOOPBACK, None, new.master_key.as_bytes()).expect("peer re-key");
    }

    // New connections get the new key from the listener.
    let (mut fresh, _) = {
        let mut c3 = keyed_client(addr, &new);
        let (s1, _) = listener.accept().expect("accept 1");
        let (s2, _) = listener.accept().expect("accept 2");
        let (s3, from) = listener.accept().expect("accept 3");
        // The queued ones still hold the old key (the kernel copied it when
        // the handshake completed): without aokd their data is dropped.
        let mut s1 = s1;
        assert!(
            !ping(&mut c1, &mut s1, Duration::from_millis(1500)),
            "a queued connection carried data with the new key without re-keying"
        );
        let mut s3 = s3;
        assert!(
            ping(&mut c3, &mut s3, Duration::from_secs(5)),
            "new connection"
        );
        // The `accepted` attach brings the second queued connection up to
        // date before its owner uses it.
        let attached = aokd_attach::attach_accepted(&daemon.path, &s2).expect("attach accepted");
        assert_eq!(attached.installed, Installed::Keys);
        let mut s2 = s2;
        assert!(
            ping(&mut c2, &mut s2, Duration::from_secs(5)),
            "the accepted socket was not re-keyed"
        );
        // And the first one too, late: its retransmitted data gets through.
        aokd_attach::attach_accepted(&daemon.path, &s1).expect("attach accepted");
        let mut buf = [0u8; 4];
        s1.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s1.read_exact(&mut buf).expect("retransmitted ping");
        assert_eq!(&buf, b"ping");
        (s3, from)
    };
    fresh.write_all(b"done").expect("write");
    let st = daemon.state();
    // Listener + two accepted sockets.
    assert_eq!(st.registry.len(), 3);
    assert_eq!(
        st.registry
            .iter()
            .filter(|s| s.role == SocketRole::Accepted)
            .count(),
        2
    );
}
