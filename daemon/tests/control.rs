//! Tests of the control socket server (docs/control.md): socket creation
//! and permissions, stale sockets, the line protocol, version and JSON
//! errors, the line limit, and the root-only `mkt-keys`.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use aokd::control::{
    self, ControlCall, ControlError, ControlServer, MAX_LINE_LEN, MKT_KEYS_REFUSED,
};
use aokd_api::control::{
    Command, DaemonStatus, PeerStatus, Response, ResponseData, ResponseResult, PROTOCOL_VERSION,
};
use common::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

fn status() -> DaemonStatus {
    DaemonStatus {
        daemon_version: "0.1.0".into(),
        started_at: 1_700_000_000,
        listen: vec!["0.0.0.0:500".into()],
        peers: vec![PeerStatus {
            name: "r2".into(),
            address: "192.0.2.2:500".into(),
            ike_state: "none".into(),
            tcp_ao_capable: None,
            mkts: 0,
            last_error: None,
            backend: None,
            rollovers: None,
            group: None,
        }],
        state_file: None,
        dos: None,
        negotiations: None,
    }
}

/// Starts a server on `path` answered by the placeholder handler.
async fn start(path: &Path) -> tokio::task::JoinHandle<()> {
    let server = ControlServer::bind(path).await.expect("bind");
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(control::run_placeholder(status(), rx));
    tokio::spawn(async move { server.run(tx).await })
}

/// A line-oriented client.
struct Client<S> {
    rd: BufReader<tokio::io::ReadHalf<S>>,
    wr: tokio::io::WriteHalf<S>,
}

impl<S: AsyncRead + AsyncWrite> Client<S> {
    fn new(s: S) -> Self {
        let (rd, wr) = tokio::io::split(s);
        Client {
            rd: BufReader::new(rd),
            wr,
        }
    }

    async fn send(&mut self, line: &str) -> Option<Response> {
        self.wr.write_all(line.as_bytes()).await.ok()?;
        self.wr.write_all(b"\n").await.ok()?;
        self.recv().await
    }

    async fn recv(&mut self) -> Option<Response> {
        let mut buf = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), self.rd.read_line(&mut buf))
            .await
            .expect("timely answer")
            .ok()?;
        if n == 0 {
            return None;
        }
        assert!(buf.ends_with('\n'), "{buf:?}");
        Some(serde_json::from_str(&buf).expect("response is JSON"))
    }
}

fn error_message(r: Option<Response>) -> String {
    match r {
        Some(Response {
            version,
            result: ResponseResult::Error { message },
        }) => {
            assert_eq!(version, PROTOCOL_VERSION);
            message
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn socket_permissions_and_requests() {
    let dir = TempDir::new("ctl");
    let path = dir.join("run/aokd/control.sock");
    let server = start(&path).await;

    let dir_mode = std::fs::metadata(dir.join("run/aokd"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // No temporary socket left behind.
    assert_eq!(std::fs::read_dir(dir.join("run/aokd")).unwrap().count(), 1);

    let mut c = Client::new(UnixStream::connect(&path).await.unwrap());
    // Several requests on one connection.
    let r = c.send(r#"{"version":1,"command":"status"}"#).await.unwrap();
    assert_eq!(r.version, PROTOCOL_VERSION);
    assert_eq!(
        r.result,
        ResponseResult::Ok {
            data: ResponseData::Status(status())
        }
    );
    let r = c.send(r#"{"version":1,"command":"sas"}"#).await.unwrap();
    assert_eq!(
        r.result,
        ResponseResult::Ok {
            data: ResponseData::Sas { sas: vec![] }
        }
    );
    let r = c.send(r#"{"version":1,"command":"mkts"}"#).await.unwrap();
    assert_eq!(
        r.result,
        ResponseResult::Ok {
            data: ResponseData::Mkts { mkts: vec![] }
        }
    );
    let msg = error_message(
        c.send(r#"{"version":1,"command":"initiate","peer":"nobody"}"#)
            .await,
    );
    assert!(msg.contains("nobody"), "{msg}");

    // Errors do not close the connection.
    let msg = error_message(c.send(r#"{"version":2,"command":"status"}"#).await);
    assert!(
        msg.contains("version 2") && msg.contains("version 1"),
        "{msg}"
    );
    let msg = error_message(c.send("this is not json").await);
    assert!(msg.starts_with("invalid JSON"), "{msg}");
    let msg = error_message(c.send(r#"{"version":1,"command":"format-disk"}"#).await);
    assert!(msg.starts_with("invalid request"), "{msg}");
    let msg = error_message(c.send(r#"{"command":"status"}"#).await);
    assert!(msg.contains("version"), "{msg}");
    // Empty lines are ignored; the next request is answered.
    c.wr.write_all(b"\n\n").await.unwrap();
    let r = c.send(r#"{"version":1,"command":"sas"}"#).await.unwrap();
    assert!(matches!(r.result, ResponseResult::Ok { .. }));

    // Two clients at once.
    let mut c2 = Client::new(UnixStream::connect(&path).await.unwrap());
    assert!(c2
        .send(r#"{"version":1,"command":"status"}"#)
        .await
        .is_some());
    assert!(c
        .send(r#"{"version":1,"command":"status"}"#)
        .await
        .is_some());
    server.abort();
}

#[tokio::test]
async fn overlong_line_is_refused_and_closes() {
    let dir = TempDir::new("ctl-long");
    let path = dir.join("control.sock");
    let server = start(&path).await;
    let mut c = Client::new(UnixStream::connect(&path).await.unwrap());
    let long = format!(
        r#"{{"version":1,"command":"status","pad":"{}"}}"#,
        "x".repeat(MAX_LINE_LEN)
    );
    // The server may close before reading everything; ignore write errors.
    let _ = c.wr.write_all(long.as_bytes()).await;
    let msg = error_message(c.recv().await);
    assert!(msg.contains("longer than"), "{msg}");
    assert!(c.recv().await.is_none(), "connection must be closed");

    // A line just under the limit is fine (and here merely a bad request).
    let mut c = Client::new(UnixStream::connect(&path).await.unwrap());
    let pad = MAX_LINE_LEN - r#"{"version":1,"command":"status","pad":""}"#.len();
    let ok = format!(
        r#"{{"version":1,"command":"status","pad":"{}"}}"#,
        "x".repeat(pad)
    );
    assert_eq!(ok.len(), MAX_LINE_LEN);
    let r = c.send(&ok).await.unwrap();
    assert!(matches!(r.result, ResponseResult::Ok { .. }), "{r:?}");
    server.abort();
}

#[tokio::test]
async fn mkt_keys_refused_to_non_root() {
    let (tx, mut rx) = mpsc::channel::<ControlCall>(4);
    // The handler answers with keys; it must never see the non-root call.
    let handler = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(call) = rx.recv().await {
            seen.push((call.command.clone(), call.peer_uid));
            let _ = call.reply.send(ResponseResult::Ok {
                data: ResponseData::MktKeys { keys: vec![] },
            });
        }
        seen
    });
    for uid in [1000, 0] {
        let (client, server) = tokio::io::duplex(4096);
        let tx = tx.clone();
        let conn = tokio::spawn(control::serve_connection(server, uid, tx));
        let mut c = Client::new(client);
        let r = c.send(r#"{"version":1,"command":"mkt-keys"}"#).await;
        if uid == 0 {
            assert!(matches!(r.unwrap().result, ResponseResult::Ok { .. }));
        } else {
            assert_eq!(error_message(r), MKT_KEYS_REFUSED);
            // Other commands still work for that client.
            let r = c.send(r#"{"version":1,"command":"status"}"#).await.unwrap();
            assert!(matches!(r.result, ResponseResult::Ok { .. }));
        }
        drop(c);
        conn.await.unwrap().unwrap();
    }
    drop(tx);
    let seen = handler.await.unwrap();
    assert_eq!(seen, vec![(Command::Status, 1000), (Command::MktKeys, 0)]);
}

#[tokio::test]
async fn unanswered_call_is_an_error() {
    let (tx, mut rx) = mpsc::channel::<ControlCall>(4);
    tokio::spawn(async move {
        while let Some(call) = rx.recv().await {
            drop(call.reply);
        }
    });
    let (client, server) = tokio::io::duplex(4096);
    tokio::spawn(control::serve_connection(server, 0, tx));
    let mut c = Client::new(client);
    let msg = error_message(c.send(r#"{"version":1,"command":"status"}"#).await);
    assert!(msg.contains("unanswered"), "{msg}");

    // With the event loop gone, the client is told so.
    let (tx, rx) = mpsc::channel::<ControlCall>(4);
    drop(rx);
    let (client, server) = tokio::io::duplex(4096);
    tokio::spawn(control::serve_connection(server, 0, tx));
    let mut c = Client::new(client);
    let msg = error_message(c.send(r#"{"version":1,"command":"status"}"#).await);
    assert!(msg.contains("shutting down"), "{msg}");
}

#[tokio::test]
async fn last_line_without_newline_is_answered() {
    let (tx, rx) = mpsc::channel::<ControlCall>(4);
    tokio::spawn(control::run_placeholder(status(), rx));
    let (client, server) = tokio::io::duplex(4096);
    let conn = tokio::spawn(control::serve_connection(server, 0, tx));
    let mut c = Client::new(client);
    c.wr.write_all(br#"{"version":1,"command":"sas"}"#)
        .await
        .unwrap();
    c.wr.shutdown().await.unwrap();
    let r = c.recv().await.unwrap();
    assert!(matches!(r.result, ResponseResult::Ok { .. }));
    conn.await.unwrap().unwrap();
}

#[tokio::test]
async fn stale_socket_is_replaced() {
    let dir = TempDir::new("ctl-stale");
    let path = dir.join("control.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = start(&path).await;
    let mut c = Client::new(UnixStream::connect(&path).await.unwrap());
    assert!(c
        .send(r#"{"version":1,"command":"status"}"#)
        .await
        .is_some());
    server.abort();
}

#[tokio::test]
async fn live_socket_and_other_files_are_left_alone() {
    let dir = TempDir::new("ctl-busy");
    let path = dir.join("control.sock");
    let first = ControlServer::bind(&path).await.unwrap();
    match ControlServer::bind(&path).await {
        Err(e @ ControlError::InUse { .. }) => {
            assert!(e.to_string().contains(&path.display().to_string()), "{e}")
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    // Dropping the server removes its socket.
    drop(first);
    assert!(!path.exists());

    std::fs::write(&path, b"precious").unwrap();
    match ControlServer::bind(&path).await {
        Err(e @ ControlError::NotASocket { .. }) => {
            assert!(e.to_string().contains("not a socket"), "{e}")
        }
        other => panic!("expected NotASocket, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[tokio::test]
async fn drop_leaves_a_replaced_socket_alone() {
    let dir = TempDir::new("ctl-replaced");
    let path = dir.join("control.sock");
    let first = ControlServer::bind(&path).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    let second = ControlServer::bind(&path).await.unwrap();
    drop(first);
    assert!(
        path.exists(),
        "the first server removed the second's socket"
    );
    drop(second);
    assert!(!path.exists());
}
