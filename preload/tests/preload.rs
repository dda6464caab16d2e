//! End-to-end tests of `libaokd_preload.so`: the `tcp_probe` example (a
//! plain std TCP client and server) runs with `LD_PRELOAD`, against a fake
//! aokd in the test process that receives the attach requests and their
//! descriptors (`recvmsg`, `SCM_RIGHTS`) and, for the keyed case, installs
//! a real TCP-MD5 key on the received socket. Loopback addresses only;
//! setting TCP-MD5 keys needs no privilege.
//!
//! Needs `cargo test -p aokd-preload` (which builds the cdylib and the
//! example next to the test binary).

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use aokd_api::attach::{
    AttachReply, AttachRequest, AttachResult, Installed, SocketRole, ATTACH_VERSION,
};

/// `TCP_MD5SIG_EXT` (include/uapi/linux/tcp.h).
const TCP_MD5SIG_EXT: libc::c_int = 32;
/// `TCP_MD5SIG_FLAG_PREFIX`.
const TCP_MD5SIG_FLAG_PREFIX: u8 = 1;
/// `sizeof(struct tcp_md5sig)`.
const TCP_MD5SIG_LEN: usize = 216;
/// `TCP_CLOSE`: a socket that has neither connected nor listened.
const TCP_CLOSE: u8 = 7;
const MD5_KEY: &[u8] = b"preload-test-key";

// ---------------------------------------------------------------------
// Artifacts

/// target/debug/deps, where the test binary is (target/debug/deps/preload-HASH).
fn deps_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().expect("deps").to_path_buf()
}

/// target/debug.
fn artifact_dir() -> PathBuf {
    deps_dir().parent().expect("target/debug").to_path_buf()
}

/// The library `cargo test` just built: it builds the lib target (cdylib
/// and rlib) into deps/ for this test; `cargo build` also copies it up.
fn preload_lib() -> PathBuf {
    let built_for_test = deps_dir().join("libaokd_preload.so");
    if built_for_test.exists() {
        return built_for_test;
    }
    let path = artifact_dir().join("libaokd_preload.so");
    assert!(
        path.exists(),
        "{} missing: run `cargo test -p aokd-preload`",
        path.display()
    );
    path
}

fn probe_bin() -> PathBuf {
    let path = artifact_dir().join("examples").join("tcp_probe");
    assert!(
        path.exists(),
        "{} missing: run `cargo build -p aokd-preload --examples`",
        path.display()
    );
    path
}

// ---------------------------------------------------------------------
// Small libc helpers (test-only)

/// Receives data and at most a few descriptors from a Unix stream.
fn recv_with_fds(sock: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 16]>();
    // SAFETY: msg points to valid iov and control buffers of the sizes given.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: msg was filled in by recvmsg; the CMSG macros walk its control
    // buffer within msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: cmsg is a valid header inside the control buffer.
        let header = unsafe { cmsg.read_unaligned() };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_DATA of a valid header; CMSG_LEN(0) is a constant.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<libc::c_int>();
            let count = (header.cmsg_len as usize - unsafe { libc::CMSG_LEN(0) } as usize)
                / size_of::<libc::c_int>();
            for i in 0..count {
                // SAFETY: the kernel wrote `count` descriptors, now ours.
                let raw = unsafe { data.add(i).read_unaligned() };
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok((n as usize, fds))
}

fn sockopt_bytes(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int, value: &[u8]) {
    // SAFETY: value is valid for reads of its length.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", io::Error::last_os_error());
}

/// Installs a TCP-MD5 key for the IPv4 prefix `peer/prefix_len` on `fd`
/// (`struct tcp_md5sig` by hand: addr at 0, flags 128, prefixlen 129,
/// keylen 130, key 136).
fn set_md5_key(fd: BorrowedFd<'_>, peer: Ipv4Addr, prefix_len: u8, key: &[u8]) {
    let mut sig = [0u8; TCP_MD5SIG_LEN];
    sig[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    sig[4..8].copy_from_slice(&peer.octets());
    sig[128] = TCP_MD5SIG_FLAG_PREFIX;
    sig[129] = prefix_len;
    sig[130..132].copy_from_slice(&(key.len() as u16).to_ne_bytes());
    sig[136..136 + key.len()].copy_from_slice(key);
    sockopt_bytes(fd, libc::IPPROTO_TCP, TCP_MD5SIG_EXT, &sig);
}

fn tcp_state(fd: BorrowedFd<'_>) -> u8 {
    let mut info = [0u8; 8];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: info and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", io::Error::last_os_error());
    info[0]
}

/// The local and peer addresses of a received socket (via std, on a
/// duplicate so the original stays untouched).
fn addrs(fd: BorrowedFd<'_>) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let stream = TcpStream::from(fd.try_clone_to_owned().expect("dup"));
    (stream.local_addr().ok(), stream.peer_addr().ok())
}

// ---------------------------------------------------------------------
// The fake aokd

/// One request as the fake aokd saw it.
#[derive(Debug, Clone)]
struct Seen {
    request: AttachRequest,
    /// Whether a descriptor came with it.
    had_fd: bool,
    /// The received socket's TCP state at that moment.
    state: Option<u8>,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
}

type Handler = dyn Fn(&AttachRequest, BorrowedFd<'_>) -> AttachResult + Send + Sync;

struct FakeAokd {
    path: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn ok(installed: Installed) -> AttachResult {
    AttachResult::Ok {
        installed,
        peers: Vec::new(),
        mechanism: (installed != Installed::NotCovered).then(|| "tcp-md5".to_owned()),
        reason: None,
    }
}

impl FakeAokd {
    fn start(
        handler: impl Fn(&AttachRequest, BorrowedFd<'_>) -> AttachResult + Send + Sync + 'static,
    ) -> FakeAokd {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "aokd-preload-test-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        FakeAokd::start_at(path, handler)
    }

    /// A fake aokd on `path` (which must not exist yet).
    fn start_at(
        path: PathBuf,
        handler: impl Fn(&AttachRequest, BorrowedFd<'_>) -> AttachResult + Send + Sync + 'static,
    ) -> FakeAokd {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind fake attach socket");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let seen = Arc::clone(&seen);
            thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { return };
                    let seen = Arc::clone(&seen);
                    let handler = Arc::clone(&handler);
                    thread::spawn(move || serve_conn(conn, &seen, &*handler));
                }
            });
        }
        FakeAokd { path, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeAokd {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_conn(mut conn: UnixStream, seen: &Mutex<Vec<Seen>>, handler: &Handler) {
    let mut pending = Vec::new();
    let mut fds: VecDeque<OwnedFd> = VecDeque::new();
    let mut buf = [0u8; 4096];
    loop {
        let (n, received) = match recv_with_fds(&conn, &mut buf) {
            Ok((0, _)) | Err(_) => return,
            Ok(got) => got,
        };
        fds.extend(received);
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let request: AttachRequest = serde_json::from_slice(&line).expect("request is JSON");
            let fd = fds.pop_front();
            let result = match &fd {
                Some(fd) => {
                    let (local, peer) = addrs(fd.as_fd());
                    seen.lock().unwrap().push(Seen {
                        request: request.clone(),
                        had_fd: true,
                        state: Some(tcp_state(fd.as_fd())),
                        local,
                        peer,
                    });
                    handler(&request, fd.as_fd())
                }
                None => {
                    seen.lock().unwrap().push(Seen {
                        request: request.clone(),
                        had_fd: false,
                        state: None,
                        local: None,
                        peer: None,
                    });
                    AttachResult::Error {
                        message: "no descriptor".into(),
                    }
                }
            };
            let reply = AttachReply {
                version: ATTACH_VERSION,
                result,
            };
            let mut out = serde_json::to_vec(&reply).expect("reply");
            out.push(b'\n');
            if conn.write_all(&out).is_err() {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------
// Running the probe

struct Probe {
    env: Vec<(String, String)>,
    preload: bool,
}

impl Probe {
    fn new(socket: &Path, ports: &str) -> Probe {
        Probe {
            env: vec![
                ("AOKD_ATTACH_SOCKET".into(), socket.display().to_string()),
                ("AOKD_PORTS".into(), ports.into()),
            ],
            preload: true,
        }
    }

    fn env(mut self, name: &str, value: &str) -> Probe {
        self.env.push((name.into(), value.into()));
        self
    }

    fn without_preload(mut self) -> Probe {
        self.preload = false;
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(probe_bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars() {
            if name.starts_with("AOKD_") || name == "LD_PRELOAD" {
                cmd.env_remove(name);
            }
        }
        if self.preload {
            cmd.env("LD_PRELOAD", preload_lib());
        }
        for (name, value) in &self.env {
            cmd.env(name, value);
        }
        cmd
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.command(args).spawn().expect("spawn tcp_probe")
    }

    /// Runs to completion (killed after 20 s); returns output and duration.
    fn run(&self, args: &[&str]) -> (Output, Duration) {
        let start = Instant::now();
        let child = self.spawn(args);
        let output = finish(child, Duration::from_secs(20));
        (output, start.elapsed())
    }
}

fn finish(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("wait_with_output")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A listener on `ip` and a free port, non-blocking.
fn listener_on(ip: [u8; 4]) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind((Ipv4Addr::from(ip), 0)).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("local_addr");
    (listener, addr)
}

/// Accepts one connection within `limit`, writes `hello`, returns the peer.
fn accept_and_greet(
    listener: TcpListener,
    limit: Duration,
) -> thread::JoinHandle<Option<SocketAddr>> {
    thread::spawn(move || {
        let deadline = Instant::now() + limit;
        loop {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.write_all(b"hello\n");
                    return Some(peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return None;
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    })
}

/// A port free on `ip` right now.
fn free_port(ip: [u8; 4]) -> u16 {
    let (listener, addr) = listener_on(ip);
    drop(listener);
    addr.port()
}

// ---------------------------------------------------------------------
// The tests

/// (a) A covered connect is sent to aokd exactly once, with the right
/// remote and port, before the SYN: the fake aokd waits (a negotiation)
/// and then installs a TCP-MD5 key on the socket, and the listener only
/// accepts SYNs signed with that key. Both the non-blocking and the
/// blocking connect.
#[test]
fn covered_connect_is_keyed_before_the_syn() {
    for mode in ["connect", "connect-blocking"] {
        let fake = FakeAokd::start(|request, fd| {
            assert_eq!(request.role, SocketRole::Connect);
            thread::sleep(Duration::from_millis(300));
            set_md5_key(fd, Ipv4Addr::new(127, 0, 0, 2), 32, MD5_KEY);
            ok(Installed::Keys)
        });
        let (listener, server) = listener_on([127, 0, 0, 2]);
        set_md5_key(listener.as_fd(), Ipv4Addr::new(127, 0, 0, 0), 8, MD5_KEY);
        let greeter = accept_and_greet(listener, Duration::from_secs(10));

        let target = server.to_string();
        let args: Vec<&str> = match mode {
            "connect" => vec![mode, &target, "5000"],
            _ => vec![mode, &target],
        };
        let probe =
            Probe::new(&fake.path, &format!("22,{}", server.port())).env("AOKD_WAIT_MS", "4321");
        let (output, elapsed) = probe.run(&args);
        let out = stdout(&output);
        assert!(
            out.starts_with("connected ") && out.contains("read hello"),
            "{mode}: {out}\nstderr: {}",
            stderr(&output)
        );
        assert!(
            elapsed >= Duration::from_millis(300),
            "connect waited for aokd"
        );
        assert!(greeter.join().unwrap().is_some());

        let seen = fake.seen();
        assert_eq!(seen.len(), 1, "{mode}: exactly one request: {seen:?}");
        let request = &seen[0].request;
        assert_eq!(request.version, ATTACH_VERSION);
        assert_eq!(request.role, SocketRole::Connect);
        assert_eq!(request.remote.as_deref(), Some("127.0.0.2"));
        assert_eq!(request.remote_port, Some(server.port()));
        assert_eq!(request.wait_ms, Some(4321));
        assert!(seen[0].had_fd);
        assert_eq!(
            seen[0].state,
            Some(TCP_CLOSE),
            "{mode}: attached before the SYN"
        );
        assert_eq!(seen[0].peer, None, "{mode}: not connected yet");
    }
}

/// The control for (a): without the preload library the same connect
/// never gets through the keyed listener.
#[test]
fn without_the_preload_the_keyed_listener_drops_the_syn() {
    let fake = FakeAokd::start(|_, _| ok(Installed::Keys));
    let (listener, server) = listener_on([127, 0, 0, 2]);
    set_md5_key(listener.as_fd(), Ipv4Addr::new(127, 0, 0, 0), 8, MD5_KEY);
    let probe = Probe::new(&fake.path, &server.port().to_string()).without_preload();
    let (output, _) = probe.run(&["connect", &server.to_string(), "1000"]);
    assert!(!output.status.success(), "{}", stdout(&output));
    assert!(stdout(&output).starts_with("error "));
    assert!(fake.seen().is_empty());
    assert!(matches!(listener.accept(), Err(e) if e.kind() == io::ErrorKind::WouldBlock));
}

/// (b) A connect to an uncovered port, or to a peer outside `AOKD_PEERS`,
/// is not sent to aokd and connects normally.
#[test]
fn uncovered_connects_are_not_sent() {
    let fake = FakeAokd::start(|_, _| ok(Installed::Keys));
    let (listener, server) = listener_on([127, 0, 0, 4]);
    let greeter = accept_and_greet(listener, Duration::from_secs(10));
    let other_port = if server.port() == 179 { "180" } else { "179" };
    let probe = Probe::new(&fake.path, other_port);
    let (output, _) = probe.run(&["connect", &server.to_string(), "5000"]);
    assert!(
        stdout(&output).contains("read hello"),
        "{}",
        stdout(&output)
    );
    assert!(greeter.join().unwrap().is_some());

    let (listener, server) = listener_on([127, 0, 0, 4]);
    let greeter = accept_and_greet(listener, Duration::from_secs(10));
    let probe = Probe::new(&fake.path, &server.port().to_string())
        .env("AOKD_PEERS", "127.0.0.9, 10.0.0.0/8");
    let (output, _) = probe.run(&["connect-blocking", &server.to_string()]);
    assert!(
        stdout(&output).contains("read hello"),
        "{}",
        stdout(&output)
    );
    assert!(greeter.join().unwrap().is_some());

    assert!(fake.seen().is_empty(), "{:?}", fake.seen());
}

/// aokd's `guard` and `not-covered` answers let the connect proceed.
#[test]
fn guard_and_not_covered_proceed() {
    for installed in [Installed::Guard, Installed::NotCovered] {
        let fake = FakeAokd::start(move |_, _| ok(installed));
        let (listener, server) = listener_on([127, 0, 0, 6]);
        let greeter = accept_and_greet(listener, Duration::from_secs(10));
        let probe =
            Probe::new(&fake.path, &server.port().to_string()).env("AOKD_PEERS", "127.0.0.0/8");
        let (output, _) = probe.run(&["connect", &server.to_string(), "5000"]);
        assert!(
            stdout(&output).contains("read hello"),
            "{installed:?}: {}",
            stdout(&output)
        );
        assert!(greeter.join().unwrap().is_some());
        assert_eq!(fake.seen().len(), 1);
    }
}

/// (c) listen() on a covered port sends a `listen` request before the
/// socket listens; each accepted socket is sent as `accepted` before the
/// program sees it.
#[test]
fn listen_and_accept_are_attached() {
    let fake = FakeAokd::start(|_, _| ok(Installed::Keys));
    let port = free_port([127, 0, 0, 3]);
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)), port);
    let probe = Probe::new(&fake.path, &port.to_string());
    let mut child = probe.spawn(&["serve", &server.to_string(), "2"]);
    let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    lines.read_line(&mut first).expect("read");
    assert!(first.starts_with("listening "), "{first}");

    let seen = fake.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].request.role, SocketRole::Listen);
    assert_eq!(seen[0].request.remote, None);
    assert_eq!(seen[0].state, Some(TCP_CLOSE), "attached before listen()");
    assert_eq!(seen[0].local, Some(server));

    let mut clients = Vec::new();
    for n in 0..2 {
        let client = TcpStream::connect(server).expect("connect to the probe");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut greeting = String::new();
        BufReader::new(&client)
            .read_line(&mut greeting)
            .expect("greeting");
        assert_eq!(greeting, "hello\n");
        let seen = fake.seen();
        assert_eq!(seen.len(), 2 + n, "{seen:?}");
        let accepted = &seen[1 + n];
        assert_eq!(accepted.request.role, SocketRole::Accepted);
        assert_ne!(accepted.request.fd, seen[0].request.fd);
        assert_eq!(accepted.peer, Some(client.local_addr().unwrap()));
        assert_eq!(accepted.local, Some(server));
        clients.push(client);
    }
    let mut rest = String::new();
    lines.read_to_string(&mut rest).expect("rest");
    let output = finish(child, Duration::from_secs(10));
    assert!(output.status.success(), "{rest}");
    assert_eq!(rest.matches("accepted ").count(), 2, "{rest}");
}

/// Under fail-closed, a socket aokd cannot reconcile is closed and
/// accept() fails with ECONNABORTED; the next one is accepted normally.
#[test]
fn an_unreconciled_accepted_socket_is_aborted() {
    let refusals = Arc::new(AtomicUsize::new(0));
    let fake = {
        let refusals = Arc::clone(&refusals);
        FakeAokd::start(move |request, _| match request.role {
            SocketRole::Accepted if refusals.fetch_add(1, Ordering::SeqCst) == 0 => {
                AttachResult::Error {
                    message: "test refusal".into(),
                }
            }
            _ => ok(Installed::Keys),
        })
    };
    let port = free_port([127, 0, 0, 7]);
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7)), port);
    let probe = Probe::new(&fake.path, &port.to_string());
    let mut child = probe.spawn(&["serve", &server.to_string(), "2"]);
    let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    lines.read_line(&mut line).expect("read");
    assert!(line.starts_with("listening "), "{line}");

    let mut first = TcpStream::connect(server).expect("connect");
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let _ = first.read_to_end(&mut got);
    assert!(got.is_empty(), "the refused socket was closed unused");
    line.clear();
    lines.read_line(&mut line).expect("read");
    assert_eq!(
        line.split_whitespace().take(2).collect::<Vec<_>>(),
        ["accept-error", &libc::ECONNABORTED.to_string()],
        "{line}"
    );

    let second = TcpStream::connect(server).expect("connect");
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut greeting = String::new();
    BufReader::new(&second)
        .read_line(&mut greeting)
        .expect("greeting");
    assert_eq!(greeting, "hello\n");
    let output = finish(child, Duration::from_secs(10));
    assert!(output.status.success());
    let roles: Vec<SocketRole> = fake.seen().iter().map(|s| s.request.role).collect();
    assert_eq!(
        roles,
        [
            SocketRole::Listen,
            SocketRole::Accepted,
            SocketRole::Accepted
        ]
    );
}

/// (d) With aokd unreachable and fail-closed (the default), a covered
/// connect fails closed on the wire, not in the system call: the library's
/// own guard key is on the socket, the SYN is signed with it, the
/// listener (which has no key) drops it, and the connect times out; no
/// connection ever reaches the listener.
#[test]
fn unreachable_aokd_guards_the_connect() {
    let missing =
        std::env::temp_dir().join(format!("aokd-preload-missing-{}.sock", std::process::id()));
    let (listener, server) = listener_on([127, 0, 0, 5]);
    let probe = Probe::new(&missing, &server.port().to_string());
    let (output, elapsed) = probe.run(&["connect", &server.to_string(), "1500"]);
    let out = stdout(&output);
    assert!(
        out.starts_with("error ") && !out.contains("connected"),
        "{out}\n{}",
        stderr(&output)
    );
    assert!(
        !out.starts_with(&format!("error {} ", libc::EACCES)),
        "not refused in the system call: {out}"
    );
    assert!(
        elapsed >= Duration::from_millis(1400),
        "the SYN went out and was dropped: {elapsed:?}"
    );
    let err = stderr(&output);
    assert!(err.contains("guard key (tcp-"), "{err}");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
        "no connection reached the listener"
    );
}

/// (d) A covered listen with aokd unreachable succeeds under the library's
/// guard key for every address: an unsigned connect is dropped. When aokd
/// appears at the attach path, the library's background thread hands it
/// the listening socket (role listen, the program's descriptor number, in
/// state LISTEN) without any call from the program; the library then takes
/// its guard off (this aokd installs nothing), so the same unsigned connect
/// is accepted, and the accepted socket goes to aokd as usual.
#[test]
fn unreachable_aokd_guards_the_listener_until_it_is_back() {
    let path = std::env::temp_dir().join(format!("aokd-preload-later-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let port = free_port([127, 0, 0, 5]);
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)), port);
    let probe = Probe::new(&path, &port.to_string()).env("AOKD_ON_ERROR", "fail-closed");
    let mut child = probe.spawn(&["serve", &server.to_string(), "1"]);
    let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    lines.read_line(&mut line).expect("read");
    assert!(line.starts_with("listening "), "listen succeeded: {line}");

    // Under the guard: an unsigned SYN is dropped.
    let refused = TcpStream::connect_timeout(&server, Duration::from_millis(1000));
    assert!(
        refused.is_err(),
        "an unsigned connect got through the guard"
    );

    // aokd appears; the library finds it by itself.
    let fake = FakeAokd::start_at(path.clone(), |request, _| match request.role {
        SocketRole::Listen => ok(Installed::NotCovered),
        _ => ok(Installed::Keys),
    });
    let appeared = Instant::now();
    let deadline = appeared + Duration::from_secs(10);
    let listen = loop {
        if let Some(s) = fake
            .seen()
            .into_iter()
            .find(|s| s.request.role == SocketRole::Listen)
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no listen request after aokd appeared"
        );
        thread::sleep(Duration::from_millis(10));
    };
    let took = appeared.elapsed();
    assert!(listen.had_fd);
    assert_eq!(listen.state, Some(10), "TCP_LISTEN");
    assert_eq!(listen.local, Some(server));
    println!("takeover {} ms after aokd appeared", took.as_millis());

    // Guard removed (the library's takeover line follows the answer): the
    // unsigned connect is accepted now.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match TcpStream::connect_timeout(&server, Duration::from_millis(500)) {
            Ok(s) => break s,
            Err(e) => assert!(
                Instant::now() < deadline,
                "guard still on after the takeover: {e}"
            ),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut greeting = String::new();
    BufReader::new(&stream)
        .read_line(&mut greeting)
        .expect("greeting");
    assert_eq!(greeting, "hello\n");
    let output = finish(child, Duration::from_secs(10));
    assert!(output.status.success());
    let roles: Vec<SocketRole> = fake.seen().iter().map(|s| s.request.role).collect();
    assert_eq!(roles, [SocketRole::Listen, SocketRole::Accepted]);
    let err = stderr(&output);
    assert!(err.contains("guard key (tcp-"), "{err}");
    assert!(err.contains("took the socket over"), "{err}");
}

/// A listen that aokd refuses (it answers with an error) is guarded too,
/// not failed, and offered again later: the second answer takes it over.
#[test]
fn a_refused_listen_is_guarded_and_offered_again() {
    let refusals = Arc::new(AtomicUsize::new(0));
    let fake = {
        let refusals = Arc::clone(&refusals);
        FakeAokd::start(move |request, _| match request.role {
            SocketRole::Listen if refusals.fetch_add(1, Ordering::SeqCst) == 0 => {
                AttachResult::Error {
                    message: "test refusal".into(),
                }
            }
            SocketRole::Listen => ok(Installed::NotCovered),
            _ => ok(Installed::Keys),
        })
    };
    let port = free_port([127, 0, 0, 6]);
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)), port);
    let probe = Probe::new(&fake.path, &port.to_string());
    let mut child = probe.spawn(&["serve", &server.to_string(), "1"]);
    let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    lines.read_line(&mut line).expect("read");
    assert!(line.starts_with("listening "), "listen succeeded: {line}");
    let refused = TcpStream::connect_timeout(&server, Duration::from_millis(1000));
    assert!(
        refused.is_err(),
        "an unsigned connect got through the guard"
    );
    // Offered again by the takeover thread, and taken over.
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match TcpStream::connect_timeout(&server, Duration::from_millis(500)) {
            Ok(s) => break s,
            Err(e) => assert!(Instant::now() < deadline, "still guarded: {e}"),
        }
    };
    drop(stream);
    let output = finish(child, Duration::from_secs(10));
    assert!(output.status.success());
    let roles: Vec<SocketRole> = fake.seen().iter().map(|s| s.request.role).collect();
    assert_eq!(
        roles,
        [SocketRole::Listen, SocketRole::Listen, SocketRole::Accepted]
    );
    let err = stderr(&output);
    assert!(
        err.contains("aokd refused the socket: test refusal"),
        "{err}"
    );
    assert!(err.contains("took the socket over"), "{err}");
}

/// A connection accepted on an attached listener while aokd is gone is
/// handed to the program: it completed its handshake under the listener's
/// keys, and there is no aokd whose rollover it could miss.
#[test]
fn accepted_while_aokd_is_gone_is_kept() {
    let fake = FakeAokd::start(|_, _| ok(Installed::Keys));
    let port = free_port([127, 0, 0, 6]);
    let server = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)), port);
    let probe = Probe::new(&fake.path, &port.to_string());
    let mut child = probe.spawn(&["serve", &server.to_string(), "1"]);
    let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    lines.read_line(&mut line).expect("read");
    assert!(line.starts_with("listening "), "{line}");
    let roles: Vec<SocketRole> = fake.seen().iter().map(|s| s.request.role).collect();
    assert_eq!(roles, [SocketRole::Listen]);
    // aokd goes away (its socket file with it).
    drop(fake);
    let stream = TcpStream::connect_timeout(&server, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut greeting = String::new();
    BufReader::new(&stream)
        .read_line(&mut greeting)
        .expect("greeting");
    assert_eq!(greeting, "hello\n");
    let output = finish(child, Duration::from_secs(10));
    assert!(output.status.success());
    let mut rest = String::new();
    lines.read_to_string(&mut rest).expect("rest");
    assert!(rest.starts_with("accepted "), "{rest}");
}

/// With `AOKD_ON_ERROR=open`, an unreachable aokd lets connects through
/// without keys.
#[test]
fn unreachable_aokd_with_on_error_open_passes_through() {
    let missing =
        std::env::temp_dir().join(format!("aokd-preload-gone-{}.sock", std::process::id()));
    let (listener, server) = listener_on([127, 0, 0, 8]);
    let greeter = accept_and_greet(listener, Duration::from_secs(10));
    let probe = Probe::new(&missing, &server.port().to_string()).env("AOKD_ON_ERROR", "open");
    let (output, _) = probe.run(&["connect", &server.to_string(), "5000"]);
    assert!(
        stdout(&output).contains("read hello"),
        "{}",
        stdout(&output)
    );
    assert!(greeter.join().unwrap().is_some());
}

/// A malformed environment is reported on stderr and fails closed for
/// every TCP connect.
#[test]
fn malformed_environment_fails_closed() {
    let fake = FakeAokd::start(|_, _| ok(Installed::Keys));
    let (listener, server) = listener_on([127, 0, 0, 9]);
    let probe = Probe::new(&fake.path, "bgp");
    let (output, _) = probe.run(&["connect", &server.to_string(), "5000"]);
    assert!(
        stdout(&output).starts_with(&format!("error {} ", libc::EACCES)),
        "{}",
        stdout(&output)
    );
    assert!(
        stderr(&output).contains("AOKD_PORTS"),
        "{}",
        stderr(&output)
    );
    assert!(matches!(listener.accept(), Err(e) if e.kind() == io::ErrorKind::WouldBlock));
    assert!(fake.seen().is_empty());
}

/// Diagnostics go to stderr only; stdout holds nothing but the probe's
/// own lines.
#[test]
fn debug_goes_to_stderr_only() {
    let fake = FakeAokd::start(|_, _| ok(Installed::Guard));
    let (listener, server) = listener_on([127, 0, 0, 10]);
    let greeter = accept_and_greet(listener, Duration::from_secs(10));
    let probe = Probe::new(&fake.path, &server.port().to_string()).env("AOKD_PRELOAD_DEBUG", "1");
    let (output, _) = probe.run(&["connect", &server.to_string(), "5000"]);
    assert!(greeter.join().unwrap().is_some());
    let out = stdout(&output);
    assert!(
        out.lines()
            .all(|l| l.starts_with("connected ") || l.starts_with("read ")),
        "{out}"
    );
    let err = stderr(&output);
    assert!(err.contains("aokd-preload["), "{err}");
    assert!(
        err.contains(&format!("to {server}: aokd installed guard")),
        "{err}"
    );
}
