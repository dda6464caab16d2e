//! The persistent state file (docs/state.md): records survive close and
//! reopen, modes are 0700/0600 and wider ones refused, newer schemas and
//! garbage files give clear errors and are left untouched, and no key
//! material ever reaches the file.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use aokd::state::{
    IkeSaRecord, MktRecord, SocketRecord, StateError, StateStore, SCHEMA_VERSION, STATE_FILE_NAME,
};
use aokd_proto::crypto::{fingerprint, Secret};
use aokd_proto::mkt::{MacAlgorithm, MasterKeyTuple};
use common::TempDir;

/// A fresh, not yet existing state directory inside a temp dir.
fn state_dir(t: &TempDir) -> std::path::PathBuf {
    t.join("state")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn ike_sa(peer: &str, n: u8) -> IkeSaRecord {
    IkeSaRecord {
        peer: peer.to_owned(),
        spi_i: format!("{n:02x}00000000000001"),
        spi_r: format!("{n:02x}00000000000002"),
        role: if n % 2 == 0 { "initiator" } else { "responder" }.to_owned(),
        established_at_unix: 1_700_000_000 + u64::from(n),
        rekey_at_unix: if n % 2 == 0 {
            Some(1_700_003_600)
        } else {
            None
        },
    }
}

/// A 32-octet master key that no other test key shares a byte pattern with.
fn key(n: u8) -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = n.wrapping_mul(37).wrapping_add((i as u8).wrapping_mul(101)) ^ 0x5a;
    }
    k
}

fn mkt_of(peer: &str, n: u8, master_key: &[u8; 32]) -> MktRecord {
    let m = MasterKeyTuple {
        send_id: n,
        recv_id: n.wrapping_add(100),
        algorithm: if n % 2 == 0 {
            MacAlgorithm::HmacSha256_128
        } else {
            MacAlgorithm::AesCmac96
        },
        include_options: n % 3 == 0,
        master_key: Secret::new(master_key.to_vec()),
    };
    MktRecord::from_mkt(
        peer,
        &m,
        "0011223344556677",
        "8899aabbccddeeff",
        1_700_000_000,
        if n % 2 == 0 {
            Some(1_700_001_000)
        } else {
            None
        },
        1_700_002_000 + u64::from(n),
    )
}

fn socket(cookie: u64) -> SocketRecord {
    SocketRecord {
        pid: 4000 + cookie as i32,
        fd: 7,
        cookie,
        role: "connect".to_owned(),
        local: Some("192.0.2.1:40000".to_owned()),
        remote: if cookie % 2 == 0 {
            Some("[2001:db8::2]:179".to_owned())
        } else {
            None
        },
        peers: vec!["r2".to_owned(), "r3".to_owned()],
        attached_at_unix: 1_700_000_100,
    }
}

#[test]
fn records_round_trip_across_close_and_reopen() {
    let t = TempDir::new("state-roundtrip");
    let dir = state_dir(&t);
    let sas = vec![ike_sa("r2", 1), ike_sa("r2", 2), ike_sa("r3", 4)];
    let mkts = vec![
        mkt_of("r2", 1, &key(1)),
        mkt_of("r2", 2, &key(2)),
        mkt_of("r3", 3, &key(3)),
    ];
    let socks = vec![socket(1), socket(2), socket(u64::MAX)];
    {
        let s = StateStore::open(&dir).expect("open new");
        assert_eq!(s.path(), dir.join(STATE_FILE_NAME));
        let snap = s.load().expect("load");
        assert!(snap.ike_sas.is_empty() && snap.mkts.is_empty() && snap.sockets.is_empty());
        for r in &sas {
            s.put_ike_sa(r).expect("put sa");
        }
        for r in &mkts {
            s.put_mkt(r).expect("put mkt");
        }
        for r in &socks {
            s.put_socket(r).expect("put socket");
        }
        // One more of each, deleted again before closing.
        s.put_ike_sa(&ike_sa("gone", 9)).expect("put");
        s.put_mkt(&mkt_of("gone", 9, &key(9))).expect("put");
        s.put_socket(&socket(99)).expect("put");
        let g = ike_sa("gone", 9);
        assert!(s.delete_ike_sa("gone", &g.spi_i, &g.spi_r).expect("del"));
        assert!(s.delete_mkt("gone", 9, 109).expect("del"));
        assert!(s.delete_socket(99).expect("del"));
        assert!(!s.delete_socket(99).expect("del twice"));
    }
    let s = StateStore::open(&dir).expect("reopen");
    assert_eq!(s.ike_sas().expect("sas"), sas);
    assert_eq!(s.mkts().expect("mkts"), mkts);
    assert_eq!(s.sockets().expect("sockets"), socks);
    assert_eq!(s.ike_sas_for_peer("r2").expect("r2").len(), 2);
    assert_eq!(s.mkts_for_peer("r3").expect("r3"), vec![mkts[2].clone()]);
    let snap = s.load().expect("load");
    assert_eq!((snap.ike_sas, snap.mkts, snap.sockets), (sas, mkts, socks));
}

#[test]
fn new_directory_is_0700_and_file_0600() {
    let t = TempDir::new("state-modes");
    let dir = t.join("a/b/state");
    let s = StateStore::open(&dir).expect("open");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(STATE_FILE_NAME)), 0o600);
    drop(s);
    // Reopening keeps them.
    let _s = StateStore::open(&dir).expect("reopen");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(STATE_FILE_NAME)), 0o600);
}

#[test]
fn directory_open_to_others_is_refused() {
    let t = TempDir::new("state-dir0755");
    let dir = state_dir(&t);
    std::fs::create_dir(&dir).expect("mkdir");
    chmod(&dir, 0o755);
    let err = StateStore::open(&dir).expect_err("0755 accepted");
    assert!(
        matches!(&err, StateError::DirMode { dir: d, mode: 0o755 } if d == &dir),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&dir.display().to_string()) && msg.contains("0755"),
        "{msg}"
    );
    assert!(!dir.join(STATE_FILE_NAME).exists(), "a file was created");
    assert_eq!(mode(&dir), 0o755, "the mode was changed");
}

#[test]
fn file_open_to_others_is_refused() {
    let t = TempDir::new("state-file0644");
    let dir = state_dir(&t);
    StateStore::open(&dir)
        .expect("open")
        .put_socket(&socket(5))
        .expect("put");
    let file = dir.join(STATE_FILE_NAME);
    chmod(&file, 0o644);
    let before = std::fs::read(&file).expect("read");
    let err = StateStore::open(&dir).expect_err("0644 accepted");
    assert!(
        matches!(&err, StateError::FileMode { file: f, mode: 0o644 } if f == &file),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).expect("read"), before);
    assert_eq!(mode(&file), 0o644);
}

#[test]
fn symlinked_file_is_refused() {
    let t = TempDir::new("state-symlink");
    let dir = state_dir(&t);
    std::fs::create_dir(&dir).expect("mkdir");
    chmod(&dir, 0o700);
    let target = t.join("elsewhere");
    std::os::unix::fs::symlink(&target, dir.join(STATE_FILE_NAME)).expect("symlink");
    let err = StateStore::open(&dir).expect_err("symlink accepted");
    assert!(matches!(err, StateError::NotAFile { .. }), "{err:?}");
    assert!(!target.exists(), "created through the symlink");
}

#[test]
fn second_open_is_locked() {
    let t = TempDir::new("state-lock");
    let dir = state_dir(&t);
    let _s = StateStore::open(&dir).expect("open");
    let err = StateStore::open(&dir).expect_err("opened twice");
    assert!(matches!(err, StateError::Locked { .. }), "{err:?}");
}

#[test]
fn newer_schema_is_refused_naming_the_file() {
    let t = TempDir::new("state-newer");
    let dir = state_dir(&t);
    let file = dir.join(STATE_FILE_NAME);
    {
        StateStore::open(&dir)
            .expect("open")
            .put_mkt(&mkt_of("r2", 1, &key(1)))
            .expect("put");
    }
    // Pretend a newer aokd wrote it: same meta table, higher version.
    {
        let db = redb::Database::create(&file).expect("redb open");
        let txn = db.begin_write().expect("write");
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, &str>::new("meta"))
                .expect("meta");
            let newer = (SCHEMA_VERSION + 1).to_string();
            meta.insert("schema_version", newer.as_str())
                .expect("insert");
        }
        txn.commit().expect("commit");
    }
    let before = std::fs::read(&file).expect("read");
    let err = StateStore::open(&dir).expect_err("newer accepted");
    assert_eq!(std::fs::read(&file).expect("read"), before, "file changed");
    match &err {
        StateError::NewerSchema {
            file: f,
            found,
            supported,
        } => {
            assert_eq!(f, &file);
            assert_eq!((*found, *supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(msg.contains("newer"), "{msg}");
    // Still refused, and its records still there for the newer aokd.
    assert!(matches!(
        StateStore::open(&dir),
        Err(StateError::NewerSchema { .. })
    ));
    let db = redb::Database::create(&file).expect("redb open");
    let txn = db.begin_read().expect("read");
    let mkts = txn
        .open_table(redb::TableDefinition::<(&str, u8, u8), &[u8]>::new("mkts"))
        .expect("mkts");
    assert!(mkts.get(("r2", 1, 101)).expect("get").is_some());
}

#[test]
fn garbage_file_is_corrupt_and_left_untouched() {
    let t = TempDir::new("state-garbage");
    let dir = state_dir(&t);
    std::fs::create_dir(&dir).expect("mkdir");
    chmod(&dir, 0o700);
    let garbage: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = dir.join(STATE_FILE_NAME);
    std::fs::write(&file, &garbage).expect("write");
    chmod(&file, 0o600);
    for _ in 0..2 {
        let err = StateStore::open(&dir).expect_err("garbage accepted");
        assert!(
            matches!(&err, StateError::Corrupt { file: f, .. } if f == &file),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        assert!(msg.contains("move it aside"), "{msg}");
        assert_eq!(std::fs::read(&file).expect("read"), garbage, "file changed");
    }
    let names: Vec<_> = std::fs::read_dir(&dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from(STATE_FILE_NAME)]);
}

#[test]
fn newer_redb_file_format_is_named() {
    let t = TempDir::new("state-format");
    let dir = state_dir(&t);
    drop(StateStore::open(&dir).expect("open"));
    let file = dir.join(STATE_FILE_NAME);
    let mut bytes = std::fs::read(&file).expect("read");
    // The version byte of both commit slots (redb's file header: slots of
    // 128 bytes at offsets 64 and 192), as a future redb might write it.
    bytes[64] = 9;
    bytes[192] = 9;
    std::fs::write(&file, &bytes).expect("write");
    let err = StateStore::open(&dir).expect_err("format 9 accepted");
    assert!(
        matches!(&err, StateError::UnsupportedFormat { file: f, .. } if f == &file),
        "{err:?}"
    );
    assert!(err.to_string().contains("found 9"), "{err}");
    assert_eq!(std::fs::read(&file).expect("read"), bytes, "file changed");
}

#[test]
fn damaged_redb_file_is_corrupt_not_a_panic() {
    // A real state file whose pages were overwritten: whatever redb makes
    // of it, open gives an error or a valid store, never a panic.
    let t = TempDir::new("state-damaged");
    let dir = state_dir(&t);
    {
        let s = StateStore::open(&dir).expect("open");
        for n in 0..20 {
            s.put_mkt(&mkt_of("r2", n, &key(n))).expect("put");
        }
    }
    let file = dir.join(STATE_FILE_NAME);
    let mut bytes = std::fs::read(&file).expect("read");
    for b in bytes.iter_mut().skip(4096) {
        *b ^= 0xa5;
    }
    std::fs::write(&file, &bytes).expect("write");
    match StateStore::open(&dir) {
        Err(StateError::Corrupt { file: f, source }) => {
            eprintln!("damaged file: {source}");
            assert_eq!(f, file);
            assert!(std::fs::read(&file).expect("read") == bytes, "file changed");
        }
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(s) => {
            // redb rolled back to a consistent commit; reads must not fail silently.
            let _ = s.load();
        }
    }
}

/// Every encoding of `key` that a careless implementation could have
/// written: raw, hex in both cases, base64, and a JSON array of numbers.
fn encodings(key: &[u8]) -> Vec<Vec<u8>> {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::new();
    for c in key.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            b64.push(B64[((n >> (18 - 6 * i)) & 63) as usize]);
        }
    }
    let json = serde_json::to_vec(&key.to_vec()).expect("json");
    vec![
        key.to_vec(),
        hex::encode(key).into_bytes(),
        hex::encode_upper(key).into_bytes(),
        b64,
        json,
    ]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_key_material_in_the_file() {
    let t = TempDir::new("state-nokeys");
    let keys: Vec<[u8; 32]> = (1..=8).map(key).collect();

    // Control: a store where a key *is* written (as a socket's role, hex)
    // shows that the scan below would notice one.
    let control_dir = t.join("control");
    {
        let s = StateStore::open(&control_dir).expect("open control");
        let mut leak = socket(1);
        leak.role = hex::encode(keys[0]);
        s.put_socket(&leak).expect("put");
    }
    let control = std::fs::read(control_dir.join(STATE_FILE_NAME)).expect("read control");
    assert!(
        encodings(&keys[0]).iter().any(|e| contains(&control, e)),
        "the scan cannot find a key that was written"
    );

    let dir = state_dir(&t);
    let fps: Vec<String> = keys.iter().map(|k| fingerprint(k)).collect();
    {
        let s = StateStore::open(&dir).expect("open");
        for (i, k) in keys.iter().enumerate() {
            let r = mkt_of("r2", i as u8, k);
            assert_eq!(r.key_fingerprint, fps[i]);
            s.put_mkt(&r).expect("put");
        }
        // A key passed where the fingerprint belongs is refused.
        let mut bad = mkt_of("r2", 200, &keys[7]);
        bad.key_fingerprint = hex::encode(keys[7]);
        let err = s.put_mkt(&bad).expect_err("key as fingerprint accepted");
        assert!(matches!(err, StateError::Invalid { .. }), "{err:?}");
        // Replace and delete some, so that freed pages exist too.
        s.put_mkt(&mkt_of("r2", 0, &keys[0])).expect("replace");
        assert!(s.delete_mkt("r2", 1, 101).expect("delete"));
    }
    let bytes = std::fs::read(dir.join(STATE_FILE_NAME)).expect("read");
    for fp in &fps {
        assert!(
            contains(&bytes, fp.as_bytes()),
            "fingerprint {fp} not in the file"
        );
    }
    for (i, k) in keys.iter().enumerate() {
        for e in encodings(k) {
            assert!(!contains(&bytes, &e), "key {i} is in the state file");
        }
    }
}

#[test]
fn errors_name_the_directory_when_it_cannot_be_created() {
    let t = TempDir::new("state-notdir");
    let blocker = t.join("file");
    std::fs::write(&blocker, b"x").expect("write");
    let dir = blocker.join("state");
    let err = StateStore::open(&dir).expect_err("created under a file");
    assert!(
        err.to_string().contains(&dir.display().to_string()),
        "{err}"
    );
    let err = StateStore::open(&blocker).expect_err("a file as the directory");
    assert!(matches!(err, StateError::NotADirectory { .. }), "{err:?}");
}

/// Run as a child by `survives_kill_9`: writes records, reporting each one
/// once `put_*` returned, then waits to be killed. Does nothing otherwise.
#[test]
fn kill_9_child() {
    let Some(dir) = std::env::var_os("AOKD_STATE_KILL9_DIR") else {
        return;
    };
    use std::io::Write;
    let s = StateStore::open(Path::new(&dir)).expect("child open");
    let mut out = std::io::stdout();
    for n in 0..50u8 {
        s.put_mkt(&mkt_of("r2", n, &key(n))).expect("put");
        s.put_socket(&socket(u64::from(n))).expect("put");
        writeln!(out, "durable {n}").expect("stdout");
        out.flush().expect("flush");
    }
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[test]
fn survives_kill_9() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let t = TempDir::new("state-kill9");
    let dir = state_dir(&t);
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .args(["--exact", "kill_9_child", "--nocapture", "--test-threads=1"])
        .env("AOKD_STATE_KILL9_DIR", &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut durable = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child");
        if line.starts_with("durable ") {
            durable += 1;
            // Kill it in the middle of its writes.
            if durable == 30 {
                break;
            }
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    assert_eq!(durable, 30, "child stopped early");
    let s = StateStore::open(&dir).expect("reopen after kill -9");
    let mkts = s.mkts().expect("mkts");
    let sockets = s.sockets().expect("sockets");
    // Everything reported durable is there (the child may have gone on a
    // little before the kill arrived), and intact.
    assert!(
        mkts.len() >= 30 && sockets.len() >= 30,
        "{} {}",
        mkts.len(),
        sockets.len()
    );
    for (n, r) in mkts.iter().enumerate() {
        assert_eq!(r, &mkt_of("r2", n as u8, &key(n as u8)));
    }
    for (n, r) in sockets.iter().enumerate() {
        assert_eq!(r, &socket(n as u64));
    }
    // And it stays writable.
    s.put_mkt(&mkt_of("r3", 1, &key(1)))
        .expect("write after recovery");
}

#[test]
fn damage_is_reported_never_silent() {
    // Every 32771th byte of a real state file flipped in turn: open either
    // gives exactly the records that were written, or Corrupt and leaves
    // the file as it found it. Never a panic, never different records.
    let t = TempDir::new("state-flip");
    let dir = state_dir(&t);
    let written = {
        let s = StateStore::open(&dir).expect("open");
        for n in 0..20 {
            s.put_mkt(&mkt_of("r2", n, &key(n))).expect("put");
            s.put_ike_sa(&ike_sa("r2", n)).expect("put");
            s.put_socket(&socket(u64::from(n))).expect("put");
        }
        s.load().expect("load")
    };
    let file = dir.join(STATE_FILE_NAME);
    let pristine = std::fs::read(&file).expect("read");
    let step = std::env::var("AOKD_STATE_FLIP_STEP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32771usize);
    let (mut intact, mut corrupt) = (0, 0);
    for off in (0..pristine.len()).step_by(step) {
        let mut bytes = pristine.clone();
        bytes[off] ^= 0x41;
        std::fs::write(&file, &bytes).expect("write");
        match StateStore::open(&dir) {
            Ok(s) => {
                assert_eq!(s.load().expect("load"), written, "offset {off}");
                intact += 1;
            }
            Err(StateError::Corrupt { .. }) => {
                let now = std::fs::read(&file).expect("read");
                assert!(now == bytes, "offset {off}: damaged file was changed");
                corrupt += 1;
            }
            Err(e) => panic!("offset {off}: {e}"),
        }
    }
    eprintln!("{intact} intact, {corrupt} corrupt");
    assert!(corrupt > 0);
}

#[test]
fn a_damaged_record_that_decodes_fails_the_page_check() {
    // The first part of the open reads the record as it now is; the page
    // check that follows finds the damage, and the file stays as it was.
    let t = TempDir::new("state-page-check");
    let dir = state_dir(&t);
    let file = common::state_file_with_a_damaged_record(&dir);
    let damaged = std::fs::read(&file).expect("read");
    let (staged, snapshot) = StateStore::open_staged(&dir).expect("the records decode");
    assert_eq!(snapshot.mkts.len(), 1);
    assert_eq!(snapshot.mkts[0].ike_spi_i, "9011223344556677");
    match staged.finish() {
        Err(StateError::Corrupt { file: f, .. }) => assert_eq!(f, file),
        Err(e) => panic!("not Corrupt: {e}"),
        Ok(_) => panic!("the damaged page passed its check"),
    }
    assert!(
        std::fs::read(&file).expect("read") == damaged,
        "the file was changed"
    );
    assert!(matches!(
        StateStore::open(&dir),
        Err(StateError::Corrupt { .. })
    ));
}

#[test]
fn a_writer_that_cannot_open_the_file_never_says_durable() {
    // The daemon's start-up: the writer finishes the open. When the page
    // check fails, it says so, is marked refused, drops every change, and
    // never completes a wait for a commit (a key would go on a socket).
    let t = TempDir::new("state-refused");
    let dir = state_dir(&t);
    let file = common::state_file_with_a_damaged_record(&dir);
    let damaged = std::fs::read(&file).expect("read");
    let (staged, snapshot) = StateStore::open_staged(&dir).expect("the records decode");
    let (persist, writer, mut opened) =
        aokd::persist::Persist::start_staged(staged, &snapshot.mkts).expect("writer");
    persist.send(aokd::persist::Op::DeleteSocket(1));
    let mut durable = persist.durable();
    // Answered in order, after the writer took the wait above.
    persist.barrier();
    assert!(matches!(
        opened.try_recv(),
        Ok(Err(StateError::Corrupt { .. }))
    ));
    assert!(persist.refused());
    assert!(matches!(
        durable.try_recv(),
        Err(tokio::sync::oneshot::error::TryRecvError::Empty)
    ));
    drop(persist);
    writer.join().expect("writer");
    assert!(
        std::fs::read(&file).expect("read") == damaged,
        "the file was changed"
    );
}
