//! Kernel tests of `aokd::kernel` on the machine that runs them, over
//! loopback (docs/kernel.md):
//!
//! - TCP-MD5 (RFC 2385) keys set with `kernel::md5` are enforced by the
//!   kernel: the same key connects and carries data, a different key or no
//!   key does not connect, and `/proc/net/netstat` shows why
//!   (`TCPMD5Failure`, `TCPMD5NotFound`).
//! - On a kernel without TCP-AO, `kernel::probe()` reports TCP-MD5 only and
//!   `ao::add_key` fails with the `ENOPROTOOPT` error that says so.
//! - On a kernel with TCP-AO (the test VM), the TCP-AO API round-trips on a
//!   closed socket and a signed loopback connection works; these tests skip
//!   elsewhere with a message, or fail if `AOKD_REQUIRE_TCP_AO` is set.
//!
//! They need root: without it they fail when `CI` is set and skip otherwise.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::thread;
use std::time::{Duration, Instant};

use aokd::kernel::{self, ao, md5, sys, Backend, Cause, KernelError};
use aokd::sockets::reconcile;
use aokd_proto::crypto::Secret;
use aokd_proto::mkt::{MacAlgorithm, MasterKeyTuple};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const CONNECT_LIMIT: Duration = Duration::from_secs(2);

/// True when the test may run; panics under CI without root.
fn have_root(test: &str) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u32>().ok());
    if euid == Some(0) {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} requires root (CI is set, so this is a failure, not a skip)");
    }
    eprintln!("skipping {test}: requires root (euid {euid:?})");
    false
}

/// A `TcpExt:` counter from /proc/net/netstat.
fn tcp_ext(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").expect("read /proc/net/netstat");
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        panic!("no TcpExt lines in /proc/net/netstat");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no TcpExt counter {name}"))
}

/// A client socket created with socket(2), keyed by `key` before connect(2)
/// (keys must be on the socket before the SYN), connected with a
/// `CONNECT_LIMIT` send timeout: a connect that gets no answer fails with
/// `EINPROGRESS` after it.
fn keyed_connect(
    addr: SocketAddr,
    key: impl FnOnce(BorrowedFd<'_>) -> Result<(), KernelError>,
) -> io::Result<TcpStream> {
    let fd = sys::tcp_socket(addr.is_ipv6())?;
    if let Err(e) = key(fd.as_fd()) {
        panic!("installing the client key: {e}");
    }
    let stream = TcpStream::from(fd);
    stream.set_write_timeout(Some(CONNECT_LIMIT))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    sys::connect(stream.as_fd(), addr)?;
    Ok(stream)
}

/// Accepts one connection, reads "hello", answers "world", and hands the
/// accepted socket to `inspect`.
fn serve_once<T: Send + 'static>(
    listener: TcpListener,
    inspect: impl FnOnce(&TcpStream) -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read hello");
        assert_eq!(&buf, b"hello");
        s.write_all(b"world").expect("write world");
        inspect(&s)
    })
}

fn say_hello(stream: &mut TcpStream) {
    stream.write_all(b"hello").expect("write hello");
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).expect("read world");
    assert_eq!(&buf, b"world");
}

/// The connect must not complete: it times out (`EINPROGRESS` after
/// `SO_SNDTIMEO`) or is refused, and the listener has nothing to accept.
fn assert_no_connection(result: io::Result<TcpStream>, listener: &TcpListener, what: &str) {
    match result {
        Ok(_) => panic!("{what}: connect succeeded"),
        Err(e) => {
            assert!(
                e.raw_os_error() == Some(libc::EINPROGRESS) || e.kind() == io::ErrorKind::TimedOut,
                "{what}: expected a connect timeout, got {e}"
            );
        }
    }
    listener.set_nonblocking(true).expect("nonblocking");
    match listener.accept() {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        other => panic!("{what}: the listener accepted something: {other:?}"),
    }
}

#[test]
fn md5_key_is_enforced_by_the_kernel() {
    if !have_root("md5_key_is_enforced_by_the_kernel") {
        return;
    }
    let key = [0x5a_u8; 32];
    let other = [0xa5_u8; 32];

    // Same key on both ends: connects and carries data.
    let listener = TcpListener::bind((LOOPBACK, 0)).expect("bind");
    md5::set_key(&listener, LOOPBACK, None, &key).expect("listener key");
    let addr = listener.local_addr().expect("addr");
    let server = serve_once(listener, |_| ());
    let mut client = keyed_connect(addr, |fd| md5::set_key(fd, LOOPBACK, None, &key))
        .expect("connect with the same key");
    say_hello(&mut client);
    server.join().expect("server thread");

    // Different key: the listener drops the SYN as a TCP-MD5 failure.
    let failures = tcp_ext("TCPMD5Failure");
    let listener = TcpListener::bind((LOOPBACK, 0)).expect("bind");
    md5::set_key(&listener, LOOPBACK, None, &key).expect("listener key");
    let addr = listener.local_addr().expect("addr");
    let started = Instant::now();
    let result = keyed_connect(addr, |fd| md5::set_key(fd, LOOPBACK, None, &other));
    assert!(started.elapsed() >= CONNECT_LIMIT - Duration::from_millis(100));
    assert_no_connection(result, &listener, "different key");
    assert!(
        tcp_ext("TCPMD5Failure") > failures,
        "TCPMD5Failure did not move"
    );

    // No key on the client: the listener drops the unsigned SYN.
    let not_found = tcp_ext("TCPMD5NotFound");
    let listener = TcpListener::bind((LOOPBACK, 0)).expect("bind");
    md5::set_key(&listener, LOOPBACK, None, &key).expect("listener key");
    let addr = listener.local_addr().expect("addr");
    let result = keyed_connect(addr, |_| Ok(()));
    assert_no_connection(result, &listener, "no key");
    assert!(
        tcp_ext("TCPMD5NotFound") > not_found,
        "TCPMD5NotFound did not move"
    );
}

#[test]
fn md5_installer_uses_the_master_key() {
    if !have_root("md5_installer_uses_the_master_key") {
        return;
    }
    let mkt = MasterKeyTuple {
        send_id: 5,
        recv_id: 7,
        algorithm: MacAlgorithm::HmacSha256_128,
        include_options: true,
        master_key: Secret::new((100..132).collect()),
    };
    // The daemon's TCP-MD5 path: reconcile with the MKT.
    let listener = TcpListener::bind((LOOPBACK, 0)).expect("bind");
    reconcile(
        listener.as_fd(),
        Backend::Md5,
        LOOPBACK,
        std::slice::from_ref(&mkt),
        None,
        true,
    )
    .expect("install on listener");
    let addr = listener.local_addr().expect("addr");
    let server = serve_once(listener, |_| ());
    // The peer's side, keyed directly with the 32 master-key octets.
    let mut client = keyed_connect(addr, |fd| {
        md5::set_key(fd, LOOPBACK, None, mkt.master_key.as_bytes())
    })
    .expect("connect");
    say_hello(&mut client);
    server.join().expect("server thread");
    reconcile(client.as_fd(), Backend::Md5, LOOPBACK, &[], None, false)
        .expect("remove from the connected socket");
}

#[test]
fn without_tcp_ao_probe_reports_md5_and_add_key_says_why() {
    if !have_root("without_tcp_ao_probe_reports_md5_and_add_key_says_why") {
        return;
    }
    let support = kernel::probe().expect("probe");
    if support.tcp_ao {
        eprintln!("skipping: this kernel has TCP-AO ({support:?}); see the tcp_ao_* tests");
        return;
    }
    assert_eq!(support.backends(), vec![Backend::Md5], "{support:?}");
    assert_eq!(support.preferred(), Some(Backend::Md5));

    let sock = sys::tcp_socket(false).expect("socket");
    let mkt = mkt(5, 7, [1; 32]);
    let e = ao::add_key(
        &sock,
        "192.0.2.2".parse().expect("literal"),
        32,
        &mkt,
        true,
        true,
    )
    .expect_err("no TCP-AO");
    eprintln!("{e}");
    assert_eq!(e.cause(), Some(Cause::NotSupported));
    assert_eq!(e.errno(), Some(libc::ENOPROTOOPT));
    assert!(
        e.to_string()
            .starts_with("TCP_AO_ADD_KEY for 192.0.2.2 send_id 5 recv_id 7: "),
        "{e}"
    );
    assert!(e.to_string().contains("no TCP-AO"), "{e}");
    let e =
        reconcile(sock.as_fd(), Backend::Ao, LOOPBACK, &[mkt], None, false).expect_err("no TCP-AO");
    assert!(e.is_not_supported(), "{e}");
}

fn mkt(send_id: u8, recv_id: u8, key: [u8; 32]) -> MasterKeyTuple {
    MasterKeyTuple {
        send_id,
        recv_id,
        algorithm: MacAlgorithm::HmacSha256_128,
        include_options: true,
        master_key: Secret::new(key.to_vec()),
    }
}

fn tcp_ao_available(test: &str) -> bool {
    if !have_root(test) {
        return false;
    }
    match kernel::probe() {
        Ok(s) if s.tcp_ao => true,
        Ok(s) => {
            if std::env::var_os("AOKD_REQUIRE_TCP_AO").is_some() {
                panic!("{test}: AOKD_REQUIRE_TCP_AO is set but this kernel has no TCP-AO ({s:?})");
            }
            eprintln!("skipping {test}: this kernel has no TCP-AO ({s:?})");
            false
        }
        Err(e) => panic!("probe: {e}"),
    }
}

#[test]
fn tcp_ao_api_round_trips_on_a_closed_socket() {
    if !tcp_ao_available("tcp_ao_api_round_trips_on_a_closed_socket") {
        return;
    }
    let sock = sys::tcp_socket(false).expect("socket");
    let peer: IpAddr = "192.0.2.2".parse().expect("literal");
    let a = mkt(5, 7, [1; 32]);
    let b = mkt(6, 8, [2; 32]);

    ao::add_key(&sock, peer, 32, &a, true, true).expect("add a");
    let info = ao::info(&sock).expect("info");
    assert_eq!(
        (info.current_key, info.rnext),
        (Some(5), Some(7)),
        "{info:?}"
    );
    let keys = ao::get_keys(&sock).expect("get keys");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let k = &keys[0];
    assert_eq!((k.peer, k.prefix, k.send_id, k.recv_id), (peer, 32, 5, 7));
    assert_eq!(
        (k.alg_name.as_str(), k.mac_len, k.include_options),
        ("hmac(sha256)", 16, true)
    );
    assert!(k.is_current && k.is_rnext);

    ao::add_key(&sock, peer, 32, &b, false, false).expect("add b");
    let e = ao::add_key(&sock, peer, 32, &mkt(5, 9, [3; 32]), false, false)
        .expect_err("SendID 5 taken");
    assert_eq!(e.cause(), Some(Cause::KeyIdConflict), "{e}");
    let e = ao::del_key(&sock, peer, 32, 5, 7, None, None).expect_err("a is current");
    assert_eq!(e.cause(), Some(Cause::KeyInUse), "{e}");
    ao::del_key(&sock, peer, 32, 5, 7, Some(6), Some(8)).expect("forced delete of a");
    let info = ao::info(&sock).expect("info");
    assert_eq!(
        (info.current_key, info.rnext),
        (Some(6), Some(8)),
        "{info:?}"
    );

    // set_rnext keeps ao_required (read-modify-write of TCP_AO_INFO).
    ao::set_ao_required(&sock, true).expect("ao_required");
    ao::add_key(&sock, peer, 32, &a, false, false).expect("add a again");
    ao::set_rnext(&sock, 7).expect("rnext 7");
    let info = ao::info(&sock).expect("info");
    assert!(info.ao_required, "{info:?}");
    assert_eq!(info.rnext, Some(7));
    let e = ao::set_rnext(&sock, 200).expect_err("no key with RecvID 200");
    assert_eq!(e.cause(), Some(Cause::NotFound), "{e}");
    assert_eq!(ao::get_keys(&sock).expect("get keys").len(), 2);
}

#[test]
fn tcp_ao_signs_a_loopback_connection() {
    if !tcp_ao_available("tcp_ao_signs_a_loopback_connection") {
        return;
    }
    let master = [0x42_u8; 32];
    // The server's MKT and the client's mirror image (SendID <-> RecvID).
    let server_mkt = mkt(5, 7, master);
    let client_mkt = mkt(7, 5, master);

    let listener = TcpListener::bind((LOOPBACK, 0)).expect("bind");
    reconcile(
        listener.as_fd(),
        Backend::Ao,
        LOOPBACK,
        std::slice::from_ref(&server_mkt),
        None,
        true,
    )
    .expect("listener key");
    let addr = listener.local_addr().expect("addr");
    let server = serve_once(listener, |s| (ao::info(s), ao::get_keys(s)));
    let mut client = keyed_connect(addr, |fd| {
        reconcile(
            fd,
            Backend::Ao,
            LOOPBACK,
            std::slice::from_ref(&client_mkt),
            None,
            false,
        )
        .map(|_| ())
    })
    .expect("connect");
    say_hello(&mut client);
    let (server_info, server_keys) = server.join().expect("server thread");
    let server_info = server_info.expect("server info");
    let server_keys = server_keys.expect("server keys");
    assert!(server_info.pkt_good > 0, "{server_info:?}");
    assert_eq!(server_info.current_key, Some(5), "{server_info:?}");
    assert_eq!(server_keys.len(), 1, "{server_keys:?}");
    assert!(server_keys[0].pkt_good > 0, "{server_keys:?}");
    let client_info = ao::info(&client).expect("client info");
    assert!(
        client_info.pkt_good > 0 && client_info.pkt_bad == 0,
        "{client_info:?}"
    );

    // A different master key: the listener drops the SYN as TCPAOBad.
    let bad = tcp_ext("TCPAOBad");
    let listener = TcpListener::bind((LOOPBACK, 0)).expect("bind");
    reconcile(
        listener.as_fd(),
        Backend::Ao,
        LOOPBACK,
        std::slice::from_ref(&server_mkt),
        None,
        true,
    )
    .expect("listener key");
    let addr = listener.local_addr().expect("addr");
    let wrong = mkt(7, 5, [0x43; 32]);
    let result = keyed_connect(addr, |fd| {
        reconcile(
            fd,
            Backend::Ao,
            LOOPBACK,
            std::slice::from_ref(&wrong),
            None,
            false,
        )
        .map(|_| ())
    });
    assert_no_connection(result, &listener, "different TCP-AO key");
    assert!(tcp_ext("TCPAOBad") > bad, "TCPAOBad did not move");
}
