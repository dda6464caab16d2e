//! Persistent state (docs/state.md): what aokd must remember across a crash
//! or restart so that it finds its attached sockets again, keeps its
//! deadlines, and picks KeyIDs that do not collide with the ones still on
//! live connections.
//!
//! The state lives in one [redb](https://www.redb.org) file,
//! `<state_dir>/aokd.redb` ([`STATE_FILE_NAME`]). [`StateStore::open`]
//! prepares it:
//!
//! - the directory is created with mode 0700 when missing; an existing
//!   one that group or others can access is refused ([`StateError::DirMode`]);
//! - the file is created with mode 0600 (never through a symlink); an
//!   existing one with a wider mode is refused ([`StateError::FileMode`]);
//! - redb locks the file, so a second aokd on the same directory gets
//!   [`StateError::Locked`];
//! - the `meta` table's `schema_version` is checked: none in an empty file
//!   means a new file and [`SCHEMA_VERSION`] is written; an equal one is
//!   fine; a newer one gives [`StateError::NewerSchema`], an older one that
//!   no migration covers [`StateError::OlderSchema`];
//! - every page's checksum is verified and every record decoded once, so
//!   that a damaged file is reported at start-up rather than in the middle
//!   of a rekey.
//!
//! All of that is first done on a copy of the file in memory, and only then
//! on the file: redb writes to a file it opens (a recovery flag, crash
//! repair), and a file that is refused must stay as it was. The daemon's
//! start-up does it in two parts ([`StateStore::open_staged`], then
//! [`StagedOpen::finish`] on the state writer's thread: the page check
//! and the open of the file run beside the event loop). A file that
//! redb cannot open, whose checksums fail or whose contents do not decode
//! gives [`StateError::Corrupt`] (redb panics on some malformed files; the
//! panic is caught, its message kept off stderr, and reported the same way). aokd never deletes,
//! truncates or rewrites such a file: the error tells the operator to move
//! it aside.
//!
//! Three kinds of records are kept, each in its own table, as JSON values
//! ([`IkeSaRecord`], [`MktRecord`], [`SocketRecord`]). **No key material is
//! ever stored**: an MKT is described by its KeyIDs, algorithm, deadlines
//! and fingerprint only ([`MktRecord::from_mkt`] takes the fingerprint and
//! nothing else from the key, and [`StateStore::put_mkt`] refuses a
//! `key_fingerprint` that is not the 16 hex digits of a fingerprint). The
//! kernel sockets keep the keys; after a restart aokd negotiates new MKTs
//! and needs only the KeyIDs in use (to avoid collisions) and the deadlines
//! (to retire old keys on time).
//!
//! Every `put_*` and `delete_*` is one redb write transaction committed
//! with immediate durability and two-phase commit: when it returns `Ok`,
//! the change survives `kill -9` and power loss. The calls block for
//! `fsync`s; the event loop
//! should make them from a blocking context (`spawn_blocking`) or accept a
//! few milliseconds per write. [`StateStore`] is `Send + Sync`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use aokd_proto::mkt::MasterKeyTuple;
use redb::backends::FileBackend;
use redb::{
    Database, DatabaseError, ReadTransaction, ReadableTable, StorageBackend, StorageError,
    TableDefinition, TableError, TableHandle,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

/// Name of the state file inside the state directory.
pub const STATE_FILE_NAME: &str = "aokd.redb";

/// The schema version this aokd writes and reads (docs/state.md).
pub const SCHEMA_VERSION: u64 = 1;

/// Mode of the state directory when aokd creates it.
pub const DIR_MODE: u32 = 0o700;

/// Mode of the state file when aokd creates it.
pub const FILE_MODE: u32 = 0o600;

/// `meta`: small string settings. Its key and value types never change,
/// so that any aokd can read `schema_version` from any state file.
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// `ike_sas`: (peer, SPIi hex, SPIr hex) → JSON [`IkeSaRecord`].
const IKE_SAS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("ike_sas");
/// `mkts`: (peer, SendID, RecvID) → JSON [`MktRecord`].
const MKTS: TableDefinition<(&str, u8, u8), &[u8]> = TableDefinition::new("mkts");
/// `sockets`: `SO_COOKIE` → JSON [`SocketRecord`].
const SOCKETS: TableDefinition<u64, &[u8]> = TableDefinition::new("sockets");

/// `meta` key holding the schema version, in decimal.
const META_SCHEMA_VERSION: &str = "schema_version";
/// `meta` key naming the aokd that created the file (informational).
const META_CREATED_BY: &str = "created_by";

/// Length of a key fingerprint in hex digits (8 octets of SHA-256).
const FINGERPRINT_HEX_LEN: usize = 16;

/// Why the state could not be opened, read or written. Every variant names
/// the directory or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create state directory {}: {source}", dir.display())]
    CreateDir { dir: PathBuf, source: io::Error },

    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },

    #[error("state directory {} is not a directory", dir.display())]
    NotADirectory { dir: PathBuf },

    #[error(
        "state directory {} has mode {mode:04o}: group and others must have no access \
         (chmod 0700 {})",
        dir.display(),
        dir.display()
    )]
    DirMode { dir: PathBuf, mode: u32 },

    #[error("state file {} is not a regular file", file.display())]
    NotAFile { file: PathBuf },

    #[error(
        "state file {} has mode {mode:04o}: group and others must have no access \
         (chmod 0600 {})",
        file.display(),
        file.display()
    )]
    FileMode { file: PathBuf, mode: u32 },

    #[error(
        "state file {} is locked by another process: is another aokd using the same \
         state directory?",
        file.display()
    )]
    Locked { file: PathBuf },

    #[error(
        "state file {} is corrupt or not an aokd state file: {source}; aokd has not \
         changed it: move it aside (for example to {}.corrupt) to start with empty state, \
         or restore a backup",
        file.display(),
        file.display()
    )]
    Corrupt {
        file: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error(
        "state file {} has schema version {found}, but this aokd supports only up to \
         {supported}: it was written by a newer aokd; aokd has not changed it: run the \
         newer aokd, or move the file aside to start with empty state",
        file.display()
    )]
    NewerSchema {
        file: PathBuf,
        found: u64,
        supported: u64,
    },

    #[error(
        "state file {} has schema version {found}, which this aokd (schema {supported}) \
         cannot migrate; aokd has not changed it: move it aside to start with empty state",
        file.display()
    )]
    OlderSchema {
        file: PathBuf,
        found: u64,
        supported: u64,
    },

    #[error(
        "state file {} is in a redb file format this aokd cannot read ({detail}): it was \
         probably written by another aokd version; aokd has not changed it: run that \
         version, or move the file aside to start with empty state",
        file.display()
    )]
    UnsupportedFormat { file: PathBuf, detail: String },

    #[error("state file {}: cannot {what}: {source}", file.display())]
    Db {
        file: PathBuf,
        what: &'static str,
        source: Box<redb::Error>,
    },

    #[error("state file {}: refusing to store {what}: {reason}", file.display())]
    Invalid {
        file: PathBuf,
        what: &'static str,
        reason: String,
    },
}

/// An IKE SA aokd had with a peer. Keyed by (`peer`, `spi_i`, `spi_r`).
/// Its keys (SK_*) are never stored: after a restart the SA is gone and a
/// new one is negotiated; the record tells aokd which SAs it had and when
/// they were due for rekeying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IkeSaRecord {
    /// The configured peer's name.
    pub peer: String,
    /// Initiator's SPI, 16 hex digits.
    pub spi_i: String,
    /// Responder's SPI, 16 hex digits.
    pub spi_r: String,
    /// "initiator" or "responder": which one aokd was.
    pub role: String,
    /// Seconds since the Unix epoch.
    pub established_at_unix: u64,
    /// When aokd would rekey it (seconds since the Unix epoch).
    pub rekey_at_unix: Option<u64>,
}

/// An MKT installed on sockets for a peer, without its key. Keyed by
/// (`peer`, `send_id`, `recv_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MktRecord {
    /// The configured peer's name.
    pub peer: String,
    /// KeyID this side sends.
    pub send_id: u8,
    /// KeyID this side expects to receive.
    pub recv_id: u8,
    /// MAC algorithm name ("hmac-sha256-128", ...).
    pub algorithm: String,
    /// Whether TCP options are covered by the MAC.
    pub include_options: bool,
    /// Seconds since the Unix epoch.
    pub created_at_unix: u64,
    /// When this side will rekey it (seconds since the Unix epoch).
    pub rekey_at_unix: Option<u64>,
    /// Its hard lifetime (seconds since the Unix epoch).
    pub expires_at_unix: u64,
    /// First 8 octets of SHA-256 of the master key, 16 lowercase hex digits.
    pub key_fingerprint: String,
    /// SPIs of the IKE SA that negotiated it (hex).
    pub ike_spi_i: String,
    pub ike_spi_r: String,
}

impl MktRecord {
    /// Describes `mkt`, negotiated for `peer` under the IKE SA
    /// (`ike_spi_i`, `ike_spi_r`). Only the key's fingerprint is taken from
    /// the key. Deadlines are seconds since the Unix epoch.
    pub fn from_mkt(
        peer: &str,
        mkt: &MasterKeyTuple,
        ike_spi_i: &str,
        ike_spi_r: &str,
        created_at_unix: u64,
        rekey_at_unix: Option<u64>,
        expires_at_unix: u64,
    ) -> MktRecord {
        MktRecord {
            peer: peer.to_owned(),
            send_id: mkt.send_id,
            recv_id: mkt.recv_id,
            algorithm: mkt.algorithm.name().to_owned(),
            include_options: mkt.include_options,
            created_at_unix,
            rekey_at_unix,
            expires_at_unix,
            key_fingerprint: mkt.fingerprint(),
            ike_spi_i: ike_spi_i.to_owned(),
            ike_spi_r: ike_spi_r.to_owned(),
        }
    }
}

/// A TCP socket a routing daemon attached (see [`crate::sockets`]). Keyed
/// by `cookie`. After a restart aokd reacquires it with
/// `pidfd_getfd(pid, fd)` and keeps it only if `SO_COOKIE` still equals
/// `cookie` (which also rules out sockets from before a reboot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketRecord {
    /// The owner's pid, in aokd's PID namespace.
    pub pid: i32,
    /// The socket's descriptor number in the owner.
    pub fd: i32,
    /// `SO_COOKIE`.
    pub cookie: u64,
    /// "connect", "listen" or "accepted".
    pub role: String,
    /// Local address when attached, `None` if not bound yet.
    pub local: Option<String>,
    /// Remote address, `None` for listeners.
    pub remote: Option<String>,
    /// Names of the peers whose keys (or guards) are on it.
    pub peers: Vec<String>,
    /// Seconds since the Unix epoch.
    pub attached_at_unix: u64,
}

/// Everything in the state file, read in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateSnapshot {
    /// Ordered by (peer, spi_i, spi_r).
    pub ike_sas: Vec<IkeSaRecord>,
    /// Ordered by (peer, send_id, recv_id).
    pub mkts: Vec<MktRecord>,
    /// Ordered by cookie.
    pub sockets: Vec<SocketRecord>,
}

/// The open state file. Dropping it closes the file (and releases the
/// lock); nothing needs flushing, every write is already durable.
pub struct StateStore {
    db: Database,
    file: PathBuf,
}

impl fmt::Debug for StateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateStore")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// Opens (creating when missing) `<dir>/aokd.redb`; see the module
    /// documentation for the checks made. A file that fails them is left
    /// exactly as it was.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        StateStore::open_loaded(dir).map(|(store, _)| store)
    }

    /// [`StateStore::open`], with every record as the open read them (the
    /// daemon's start-up: a route server's thousands of records are decoded
    /// once more, not twice).
    pub fn open_loaded(dir: &Path) -> Result<(StateStore, StateSnapshot), StateError> {
        let (staged, snapshot) = StateStore::open_staged(dir)?;
        Ok((staged.finish()?, snapshot))
    }

    /// The first part of [`StateStore::open_loaded`], which a start-up
    /// needs before it can go on: the directory and file checked, the file
    /// locked, and every record read from the view of the file whose writes
    /// stay in memory (schema checked, migrated there when older). The rest,
    /// every page's checksum and the open of the file itself
    /// ([`StagedOpen::finish`]), can run beside what does not write: the
    /// daemon's state writer does it before its first commit, while the
    /// event loop restores from the records and starts negotiating.
    pub fn open_staged(dir: &Path) -> Result<(StagedOpen, StateSnapshot), StateError> {
        prepare_dir(dir)?;
        let file_path = dir.join(STATE_FILE_NAME);
        let (file, created) = open_file(dir, &file_path)?;
        let trial_file = file.try_clone().map_err(|source| StateError::Io {
            path: file_path.clone(),
            what: "cannot duplicate the state file's descriptor",
            source,
        })?;
        // Locks the file (flock), for as long as the store is open.
        let backend = FileBackend::new(file).map_err(|e| db_open_error(e, &file_path))?;

        // Everything is first tried on a view of the file whose writes stay
        // in memory: redb writes to a file it opens (its header's recovery
        // flag, crash repair), and a file that turns out corrupt or newer
        // must stay as it was. The view reads only the pages redb asks for.
        let len = backend.len().map_err(|source| StateError::Io {
            path: file_path.clone(),
            what: "cannot read the state file's length",
            source,
        })?;
        // An empty file (new, or created by a crash before redb wrote its
        // header) has nothing to keep as it was: no trial, no records.
        let (trial, snapshot) = if len > 0 {
            let trial = StateStore {
                db: open_db(TrialBackend::new(trial_file, len), &file_path, Open::Trial)?,
                file: file_path.clone(),
            };
            let snapshot = trial.check_and_load()?;
            (Some(trial), snapshot)
        } else {
            (None, StateSnapshot::default())
        };
        info!(
            file = %file_path.display(),
            created,
            ike_sas = snapshot.ike_sas.len(),
            mkts = snapshot.mkts.len(),
            sockets = snapshot.sockets.len(),
            "state file opened"
        );
        Ok((
            StagedOpen {
                trial,
                backend,
                file: file_path,
            },
            snapshot,
        ))
    }

    /// Checks the schema version (initializing a new file, migrating an
    /// older one) and reads every record once. redb panics on some
    /// malformed files instead of returning an error: that is
    /// [`StateError::Corrupt`] too.
    fn check_and_load(&self) -> Result<StateSnapshot, StateError> {
        match quietly(|| self.check_and_load_inner()) {
            Ok(r) => r,
            Err(_) => Err(self.corrupt(panic_message())),
        }
    }

    fn check_and_load_inner(&self) -> Result<StateSnapshot, StateError> {
        self.prepare_schema()?;
        self.load()
    }

    /// [`StateStore::check_and_load`] without the load.
    fn check_schema(&self) -> Result<(), StateError> {
        match quietly(|| self.prepare_schema()) {
            Ok(r) => r,
            Err(_) => Err(self.corrupt(panic_message())),
        }
    }

    /// Checks the schema version: initializes a new file, migrates an
    /// older one, refuses a newer one.
    fn prepare_schema(&self) -> Result<(), StateError> {
        let new = match self.schema_version()? {
            None => true,
            Some(found) if found == SCHEMA_VERSION => false,
            Some(found) if found > SCHEMA_VERSION => {
                return Err(StateError::NewerSchema {
                    file: self.file.clone(),
                    found,
                    supported: SCHEMA_VERSION,
                })
            }
            Some(found) => {
                self.migrate(found)?;
                false
            }
        };
        if new {
            self.initialize()?;
        }
        Ok(())
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Every record, read in one transaction (a consistent view, for
    /// start-up).
    pub fn load(&self) -> Result<StateSnapshot, StateError> {
        let txn = self.begin_read()?;
        Ok(StateSnapshot {
            ike_sas: self.read_ike_sas(&txn, None)?,
            mkts: self.read_mkts(&txn, None)?,
            sockets: self.read_sockets(&txn)?,
        })
    }

    /// Stores `rec`, replacing the record with the same (peer, send_id,
    /// recv_id). Refuses a `key_fingerprint` that is not 16 hex digits, so
    /// that a key passed by mistake never reaches the disk.
    pub fn put_mkt(&self, rec: &MktRecord) -> Result<(), StateError> {
        check_fingerprint(&self.file, &rec.key_fingerprint)?;
        let value = self.encode(rec)?;
        self.write("store an MKT record", |txn| {
            let mut t = txn.open_table(MKTS)?;
            t.insert(
                (rec.peer.as_str(), rec.send_id, rec.recv_id),
                value.as_slice(),
            )?;
            Ok(())
        })
    }

    /// Deletes the MKT record (peer, send_id, recv_id); `true` if there was one.
    pub fn delete_mkt(&self, peer: &str, send_id: u8, recv_id: u8) -> Result<bool, StateError> {
        self.write("delete an MKT record", |txn| {
            let mut t = txn.open_table(MKTS)?;
            let removed = t.remove((peer, send_id, recv_id))?;
            Ok(removed.is_some())
        })
    }

    /// Every MKT record, ordered by (peer, send_id, recv_id).
    pub fn mkts(&self) -> Result<Vec<MktRecord>, StateError> {
        let txn = self.begin_read()?;
        self.read_mkts(&txn, None)
    }

    /// The MKT records of one peer, ordered by (send_id, recv_id).
    pub fn mkts_for_peer(&self, peer: &str) -> Result<Vec<MktRecord>, StateError> {
        let txn = self.begin_read()?;
        self.read_mkts(&txn, Some(peer))
    }

    /// Stores `rec`, replacing the record with the same (peer, spi_i, spi_r).
    pub fn put_ike_sa(&self, rec: &IkeSaRecord) -> Result<(), StateError> {
        let value = self.encode(rec)?;
        self.write("store an IKE SA record", |txn| {
            let mut t = txn.open_table(IKE_SAS)?;
            t.insert(
                (rec.peer.as_str(), rec.spi_i.as_str(), rec.spi_r.as_str()),
                value.as_slice(),
            )?;
            Ok(())
        })
    }

    /// Deletes the IKE SA record (peer, spi_i, spi_r); `true` if there was one.
    pub fn delete_ike_sa(&self, peer: &str, spi_i: &str, spi_r: &str) -> Result<bool, StateError> {
        self.write("delete an IKE SA record", |txn| {
            let mut t = txn.open_table(IKE_SAS)?;
            let removed = t.remove((peer, spi_i, spi_r))?;
            Ok(removed.is_some())
        })
    }

    /// Every IKE SA record, ordered by (peer, spi_i, spi_r).
    pub fn ike_sas(&self) -> Result<Vec<IkeSaRecord>, StateError> {
        let txn = self.begin_read()?;
        self.read_ike_sas(&txn, None)
    }

    /// The IKE SA records of one peer, ordered by (spi_i, spi_r).
    pub fn ike_sas_for_peer(&self, peer: &str) -> Result<Vec<IkeSaRecord>, StateError> {
        let txn = self.begin_read()?;
        self.read_ike_sas(&txn, Some(peer))
    }

    /// Stores `rec`, replacing the record with the same cookie.
    pub fn put_socket(&self, rec: &SocketRecord) -> Result<(), StateError> {
        let value = self.encode(rec)?;
        self.write("store a socket record", |txn| {
            let mut t = txn.open_table(SOCKETS)?;
            t.insert(rec.cookie, value.as_slice())?;
            Ok(())
        })
    }

    /// Deletes the socket record with `cookie`; `true` if there was one.
    pub fn delete_socket(&self, cookie: u64) -> Result<bool, StateError> {
        self.write("delete a socket record", |txn| {
            let mut t = txn.open_table(SOCKETS)?;
            let removed = t.remove(cookie)?;
            Ok(removed.is_some())
        })
    }

    /// Every socket record, ordered by cookie.
    pub fn sockets(&self) -> Result<Vec<SocketRecord>, StateError> {
        let txn = self.begin_read()?;
        self.read_sockets(&txn)
    }

    /// Begins one write transaction that several changes go into
    /// ([`Batch`]); nothing is written until [`Batch::commit`].
    pub fn batch(&self) -> Result<Batch<'_>, StateError> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(self.db_err("begin a write transaction"))?;
        txn.set_two_phase_commit(true);
        Ok(Batch { store: self, txn })
    }

    /// The directory the state file is in (for reopening it).
    pub fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }

    // ---- internals ----

    fn corrupt(&self, msg: String) -> StateError {
        StateError::Corrupt {
            file: self.file.clone(),
            source: msg.into(),
        }
    }

    fn db_err<E: Into<redb::Error>>(&self, what: &'static str) -> impl FnOnce(E) -> StateError {
        let file = self.file.clone();
        move |e| StateError::Db {
            file,
            what,
            source: Box::new(e.into()),
        }
    }

    fn begin_read(&self) -> Result<ReadTransaction, StateError> {
        self.db
            .begin_read()
            .map_err(self.db_err("begin a read transaction"))
    }

    /// Runs `f` in one write transaction and commits it durably.
    fn write<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, BoxedDbError>,
    ) -> Result<T, StateError> {
        let mut txn = self.db.begin_write().map_err(self.db_err(what))?;
        // With two-phase commit redb never falls back to an older commit
        // when the newest fails its checksums: damage is an error, not a
        // silent rollback (see `open_db`).
        txn.set_two_phase_commit(true);
        let out = f(&txn).map_err(|e| StateError::Db {
            file: self.file.clone(),
            what,
            source: e.0,
        })?;
        txn.commit().map_err(self.db_err(what))?;
        Ok(out)
    }

    fn encode<T: Serialize>(&self, rec: &T) -> Result<Vec<u8>, StateError> {
        serde_json::to_vec(rec).map_err(|e| StateError::Invalid {
            file: self.file.clone(),
            what: "a record",
            reason: e.to_string(),
        })
    }

    fn decode<T: DeserializeOwned>(
        &self,
        table: &str,
        key: &dyn fmt::Debug,
        bytes: &[u8],
    ) -> Result<T, StateError> {
        serde_json::from_slice(bytes)
            .map_err(|e| self.corrupt(format!("table {table}, key {key:?}: bad record: {e}")))
    }

    /// The `schema_version` in `meta`: `None` for a new (empty) file.
    fn schema_version(&self) -> Result<Option<u64>, StateError> {
        let txn = self.begin_read()?;
        let meta = match txn.open_table(META) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => {
                let mut tables = txn.list_tables().map_err(self.db_err("list the tables"))?;
                return match tables.next() {
                    None => Ok(None),
                    Some(t) => Err(self.corrupt(format!(
                        "it has table {:?} but no meta table (no schema version)",
                        t.name()
                    ))),
                };
            }
            Err(e) => return Err(self.corrupt(format!("cannot open the meta table: {e}"))),
        };
        let guard = meta
            .get(META_SCHEMA_VERSION)
            .map_err(|e| self.corrupt(format!("cannot read the schema version: {e}")))?;
        let Some(v) = guard else {
            return Err(self.corrupt("its meta table has no schema_version".to_owned()));
        };
        let text = v.value();
        text.parse::<u64>()
            .map(Some)
            .map_err(|_| self.corrupt(format!("its schema_version {text:?} is not a number")))
    }

    /// Writes `meta` and creates the record tables of a new file, in one
    /// transaction.
    fn initialize(&self) -> Result<(), StateError> {
        let version = SCHEMA_VERSION.to_string();
        let created_by = concat!("aokd ", env!("CARGO_PKG_VERSION"));
        self.write("initialize the state file", |txn| {
            let mut meta = txn.open_table(META)?;
            meta.insert(META_SCHEMA_VERSION, version.as_str())?;
            meta.insert(META_CREATED_BY, created_by)?;
            txn.open_table(IKE_SAS)?;
            txn.open_table(MKTS)?;
            txn.open_table(SOCKETS)?;
            Ok(())
        })
    }

    /// Brings a file of an older schema to [`SCHEMA_VERSION`]. Schema 1 is
    /// the first, so there is nothing to migrate from yet; docs/state.md
    /// says how future migrations are written.
    fn migrate(&self, found: u64) -> Result<(), StateError> {
        Err(StateError::OlderSchema {
            file: self.file.clone(),
            found,
            supported: SCHEMA_VERSION,
        })
    }

    fn read_mkts(
        &self,
        txn: &ReadTransaction,
        peer: Option<&str>,
    ) -> Result<Vec<MktRecord>, StateError> {
        let table = match txn.open_table(MKTS) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.corrupt(format!("cannot open table mkts: {e}"))),
        };
        let iter = match peer {
            Some(p) => table.range((p, 0u8, 0u8)..=(p, u8::MAX, u8::MAX)),
            None => table.iter(),
        }
        .map_err(|e| self.corrupt(format!("cannot read table mkts: {e}")))?;
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item.map_err(|e| self.corrupt(format!("cannot read table mkts: {e}")))?;
            let (peer, send_id, recv_id) = k.value();
            let rec: MktRecord = self.decode("mkts", &k.value(), v.value())?;
            if (rec.peer.as_str(), rec.send_id, rec.recv_id) != (peer, send_id, recv_id) {
                return Err(self.corrupt(format!(
                    "table mkts, key {:?}: the record is for {:?}",
                    k.value(),
                    (&rec.peer, rec.send_id, rec.recv_id)
                )));
            }
            out.push(rec);
        }
        Ok(out)
    }

    fn read_ike_sas(
        &self,
        txn: &ReadTransaction,
        peer: Option<&str>,
    ) -> Result<Vec<IkeSaRecord>, StateError> {
        let table = match txn.open_table(IKE_SAS) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.corrupt(format!("cannot open table ike_sas: {e}"))),
        };
        let mut out = Vec::new();
        let iter = table
            .iter()
            .map_err(|e| self.corrupt(format!("cannot read table ike_sas: {e}")))?;
        for item in iter {
            let (k, v) =
                item.map_err(|e| self.corrupt(format!("cannot read table ike_sas: {e}")))?;
            let (kpeer, spi_i, spi_r) = k.value();
            if peer.is_some_and(|p| p != kpeer) {
                continue;
            }
            let rec: IkeSaRecord = self.decode("ike_sas", &k.value(), v.value())?;
            if (rec.peer.as_str(), rec.spi_i.as_str(), rec.spi_r.as_str()) != (kpeer, spi_i, spi_r)
            {
                return Err(self.corrupt(format!(
                    "table ike_sas, key {:?}: the record is for {:?}",
                    k.value(),
                    (&rec.peer, &rec.spi_i, &rec.spi_r)
                )));
            }
            out.push(rec);
        }
        Ok(out)
    }

    fn read_sockets(&self, txn: &ReadTransaction) -> Result<Vec<SocketRecord>, StateError> {
        let table = match txn.open_table(SOCKETS) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.corrupt(format!("cannot open table sockets: {e}"))),
        };
        let mut out = Vec::new();
        let iter = table
            .iter()
            .map_err(|e| self.corrupt(format!("cannot read table sockets: {e}")))?;
        for item in iter {
            let (k, v) =
                item.map_err(|e| self.corrupt(format!("cannot read table sockets: {e}")))?;
            let cookie = k.value();
            let rec: SocketRecord = self.decode("sockets", &cookie, v.value())?;
            if rec.cookie != cookie {
                return Err(self.corrupt(format!(
                    "table sockets, key {cookie}: the record is for cookie {}",
                    rec.cookie
                )));
            }
            out.push(rec);
        }
        Ok(out)
    }
}

/// Creates `dir` (mode 0700) when missing; refuses a non-directory or one
/// that group or others can access.
fn prepare_dir(dir: &Path) -> Result<(), StateError> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(|source| StateError::CreateDir {
                    dir: dir.to_owned(),
                    source,
                })?;
            // The umask may have narrowed the mode; make it exactly 0700.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)).map_err(
                |source| StateError::Io {
                    path: dir.to_owned(),
                    what: "cannot chmod the new state directory 0700",
                    source,
                },
            )?;
            info!(dir = %dir.display(), "created state directory");
            std::fs::metadata(dir).map_err(|source| StateError::Io {
                path: dir.to_owned(),
                what: "cannot stat the new state directory",
                source,
            })?
        }
        Err(source) => {
            return Err(StateError::Io {
                path: dir.to_owned(),
                what: "cannot stat the state directory",
                source,
            })
        }
    };
    if !meta.is_dir() {
        return Err(StateError::NotADirectory {
            dir: dir.to_owned(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(StateError::DirMode {
            dir: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Opens `file` read-write, creating it with mode 0600 when missing (and
/// making the new directory entry durable). Symlinks are refused, and so is
/// an existing file that group or others can access. Returns the file and
/// whether it was created.
fn open_file(dir: &Path, path: &Path) -> Result<(File, bool), StateError> {
    let io_err = |what: &'static str| {
        let path = path.to_owned();
        move |source| StateError::Io { path, what, source }
    };
    let mut opts = OpenOptions::new();
    opts.read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(FILE_MODE);
    let (file, created) = match opts.open(path) {
        Ok(f) => (f, false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let f = opts
                .create_new(true)
                .open(path)
                .map_err(io_err("cannot create the state file"))?;
            f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
                .map_err(io_err("cannot chmod the new state file 0600"))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("cannot sync the state directory"))?;
            (f, true)
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(StateError::NotAFile {
                file: path.to_owned(),
            })
        }
        Err(e) => return Err(io_err("cannot open the state file")(e)),
    };
    let meta = file
        .metadata()
        .map_err(io_err("cannot stat the state file"))?;
    if !meta.is_file() {
        return Err(StateError::NotAFile {
            file: path.to_owned(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(StateError::FileMode {
            file: path.to_owned(),
            mode,
        });
    }
    Ok((file, created))
}

/// Several changes in one durable write transaction (the writer's group
/// commit, [`crate::persist`]). A record the store refuses (a bad
/// fingerprint, one that does not encode) is [`StateError::Invalid`] and
/// leaves the transaction usable; any other error means the transaction
/// must be dropped.
pub struct Batch<'a> {
    store: &'a StateStore,
    txn: redb::WriteTransaction,
}

impl Batch<'_> {
    fn db<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, BoxedDbError>,
    ) -> Result<T, StateError> {
        f(&self.txn).map_err(|e| StateError::Db {
            file: self.store.file.clone(),
            what,
            source: e.0,
        })
    }

    /// [`StateStore::put_mkt`] in this transaction.
    pub fn put_mkt(&mut self, rec: &MktRecord) -> Result<(), StateError> {
        check_fingerprint(&self.store.file, &rec.key_fingerprint)?;
        let value = self.store.encode(rec)?;
        self.db("store an MKT record", |txn| {
            txn.open_table(MKTS)?.insert(
                (rec.peer.as_str(), rec.send_id, rec.recv_id),
                value.as_slice(),
            )?;
            Ok(())
        })
    }

    /// [`StateStore::delete_mkt`] in this transaction.
    pub fn delete_mkt(&mut self, peer: &str, send_id: u8, recv_id: u8) -> Result<bool, StateError> {
        self.db("delete an MKT record", |txn| {
            Ok(txn
                .open_table(MKTS)?
                .remove((peer, send_id, recv_id))?
                .is_some())
        })
    }

    /// Deletes the MKT record (peer, send_id, recv_id) if its hard lifetime
    /// ended before `now_unix`; `true` if it did.
    pub fn delete_mkt_expired(
        &mut self,
        peer: &str,
        send_id: u8,
        recv_id: u8,
        now_unix: u64,
    ) -> Result<bool, StateError> {
        let key = (peer, send_id, recv_id);
        let stored = self.db("read an MKT record", |txn| {
            Ok(txn.open_table(MKTS)?.get(key)?.map(|v| v.value().to_vec()))
        })?;
        let Some(bytes) = stored else {
            return Ok(false);
        };
        let rec: MktRecord = self.store.decode("mkts", &key, &bytes)?;
        if rec.expires_at_unix >= now_unix {
            return Ok(false);
        }
        self.delete_mkt(peer, send_id, recv_id)
    }

    /// [`StateStore::put_ike_sa`] in this transaction.
    pub fn put_ike_sa(&mut self, rec: &IkeSaRecord) -> Result<(), StateError> {
        let value = self.store.encode(rec)?;
        self.db("store an IKE SA record", |txn| {
            txn.open_table(IKE_SAS)?.insert(
                (rec.peer.as_str(), rec.spi_i.as_str(), rec.spi_r.as_str()),
                value.as_slice(),
            )?;
            Ok(())
        })
    }

    /// [`StateStore::delete_ike_sa`] in this transaction.
    pub fn delete_ike_sa(
        &mut self,
        peer: &str,
        spi_i: &str,
        spi_r: &str,
    ) -> Result<bool, StateError> {
        self.db("delete an IKE SA record", |txn| {
            Ok(txn
                .open_table(IKE_SAS)?
                .remove((peer, spi_i, spi_r))?
                .is_some())
        })
    }

    /// [`StateStore::put_socket`] in this transaction.
    pub fn put_socket(&mut self, rec: &SocketRecord) -> Result<(), StateError> {
        let value = self.store.encode(rec)?;
        self.db("store a socket record", |txn| {
            txn.open_table(SOCKETS)?
                .insert(rec.cookie, value.as_slice())?;
            Ok(())
        })
    }

    /// [`StateStore::delete_socket`] in this transaction.
    pub fn delete_socket(&mut self, cookie: u64) -> Result<bool, StateError> {
        self.db("delete a socket record", |txn| {
            Ok(txn.open_table(SOCKETS)?.remove(cookie)?.is_some())
        })
    }

    /// Commits every change durably (one `fsync` for all of them).
    pub fn commit(self) -> Result<(), StateError> {
        self.txn
            .commit()
            .map_err(self.store.db_err("commit the changes"))
    }
}

/// A state file read but not yet open for writing
/// ([`StateStore::open_staged`]); [`StagedOpen::finish`] opens it. Holds
/// the file's lock.
pub struct StagedOpen {
    /// The view the records were read from (`None`: the file was empty).
    trial: Option<StateStore>,
    backend: FileBackend,
    file: PathBuf,
}

impl StagedOpen {
    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Checks every page's checksum on the view the records came from
    /// (normal reads do not), then opens the file itself, which it leaves
    /// as it was when a check fails; the same errors as
    /// [`StateStore::open`]. The records are not read again: they are the
    /// bytes the view read, under the same lock.
    pub fn finish(self) -> Result<StateStore, StateError> {
        let tried = match self.trial {
            Some(mut trial) => {
                let checked = quietly(|| trial.db.check_integrity());
                match checked {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => debug!(file = %self.file.display(),
                        "the state file's allocator state needs repair"),
                    Ok(Err(e)) => return Err(db_open_error(e, &self.file)),
                    Err(_) => return Err(trial.corrupt(panic_message())),
                }
                true
            }
            None => false,
        };
        let store = StateStore {
            // The trial checked every page of these same bytes (under the
            // same lock); a new file has none to check.
            db: open_db(
                self.backend,
                &self.file,
                if tried { Open::Checked } else { Open::New },
            )?,
            file: self.file,
        };
        store.check_schema()?;
        Ok(store)
    }
}

/// How [`open_db`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    /// The trial on a [`TrialBackend`] (its pages' checksums are checked
    /// by [`StagedOpen::finish`]); repairs are not worth a warning (the
    /// real open reports them).
    Trial,
    /// A new, empty file: nothing to check or report.
    New,
    /// The file itself after a trial that passed: its pages were checked
    /// by the trial, redb's repair of a file left by a crash is reported.
    Checked,
}

/// redb's cache for an open of kind `open` (its default, 1 GiB, is far
/// more than the state needs).
fn cache_size(open: Open) -> usize {
    match open {
        // The trial reads redb's 1 MiB allocator state at open and again
        // in `check_integrity`: with a cache below 4 MiB the second read
        // comes from the file, 1-2 ms more start-up (docs/performance.md).
        // The trial is dropped once the file itself is open.
        Open::Trial => TRIAL_CACHE_BYTES,
        // The file kept open reads the allocator state once, at open, and
        // later only the pages a commit changes (the kernel's page cache
        // has them): a cache that kept every page written would cost 300-400
        // octets per peer at 10,000 peers (docs/performance.md).
        Open::New | Open::Checked => FILE_CACHE_BYTES,
    }
}

/// [`cache_size`] of the trial open.
const TRIAL_CACHE_BYTES: usize = 4 << 20;
/// [`cache_size`] of the file kept open.
const FILE_CACHE_BYTES: usize = 256 << 10;

/// Hands `backend` to redb (every page's checksum is checked after a
/// trial's records are read: [`StagedOpen::finish`]). redb initializes an empty file, and repairs one left by
/// a crash (rolling back to the last committed transaction: no
/// acknowledged write is lost); anything it cannot read is
/// [`StateError::Corrupt`] (or [`StateError::UnsupportedFormat`]). redb
/// panics on some malformed files; that is caught and reported as
/// [`StateError::Corrupt`] too.
fn open_db(backend: impl StorageBackend, path: &Path, open: Open) -> Result<Database, StateError> {
    let trial = open != Open::Checked;
    let mut builder = Database::builder();
    // New files in redb's v3 format, which redb 3.x reads without upgrade.
    builder.create_with_file_format_v3(true);
    builder.set_cache_size(cache_size(open));
    // redb calls the repair callback when it opens a file left by a crash,
    // and again from `check_integrity` on every file: only the first is
    // worth a warning.
    let opening = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    if !trial {
        let repair_path = path.to_owned();
        let opening = std::sync::Arc::clone(&opening);
        let logged = std::sync::atomic::AtomicBool::new(false);
        builder.set_repair_callback(move |session| {
            // Once per repair (redb reports its progress several times).
            if opening.load(std::sync::atomic::Ordering::Relaxed)
                && !logged.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                warn!(
                    file = %repair_path.display(),
                    progress = session.progress(),
                    "repairing the state file after an unclean shutdown"
                );
            }
        });
    }
    let opened = quietly(|| {
        let db = builder.create_with_backend(backend)?;
        opening.store(false, std::sync::atomic::Ordering::Relaxed);
        Ok(db)
    });
    let corrupt = |source: Box<dyn std::error::Error + Send + Sync>| StateError::Corrupt {
        file: path.to_owned(),
        source,
    };
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(db_open_error(e, path)),
        Err(_) => Err(corrupt(panic_message().into())),
    }
}

/// Any redb error, boxed (redb's errors are large); `?` converts.
struct BoxedDbError(Box<redb::Error>);

impl<E: Into<redb::Error>> From<E> for BoxedDbError {
    fn from(e: E) -> Self {
        BoxedDbError(Box::new(e.into()))
    }
}

/// Classifies an error redb gave while opening the state file.
fn db_open_error(e: DatabaseError, path: &Path) -> StateError {
    let file = path.to_owned();
    match e {
        DatabaseError::DatabaseAlreadyOpen => StateError::Locked { file },
        DatabaseError::Storage(StorageError::Io(e)) if e.kind() == io::ErrorKind::InvalidData => {
            StateError::Corrupt {
                file,
                source: "not a redb database (wrong magic number)".into(),
            }
        }
        DatabaseError::Storage(StorageError::Io(source)) => StateError::Io {
            path: file,
            what: "cannot read the state file",
            source,
        },
        DatabaseError::Storage(StorageError::Corrupted(detail))
            if detail.starts_with("Expected file format version") =>
        {
            StateError::UnsupportedFormat { file, detail }
        }
        DatabaseError::UpgradeRequired(v) => StateError::UnsupportedFormat {
            file,
            detail: format!("redb file format {v} is too old"),
        },
        e => StateError::Corrupt {
            file,
            source: Box::new(e),
        },
    }
}

/// The state file as the trial open sees it: reads come from the file
/// (only the pages redb asks for, not a copy of the whole file), writes
/// stay in memory and are seen by later reads; nothing reaches the file.
#[derive(Debug)]
struct TrialBackend {
    file: File,
    overlay: std::sync::Mutex<Overlay>,
}

/// What the trial wrote, over the file.
#[derive(Debug)]
struct Overlay {
    /// The length redb sees.
    len: u64,
    /// How much of the file is still visible: shrinking hides the rest
    /// (it reads as zeros when the length grows again).
    file_len: u64,
    /// The writes, in order (a later one wins where they overlap).
    writes: Vec<(u64, Vec<u8>)>,
}

impl TrialBackend {
    fn new(file: File, len: u64) -> TrialBackend {
        TrialBackend {
            file,
            overlay: std::sync::Mutex::new(Overlay {
                len,
                file_len: len,
                writes: Vec::new(),
            }),
        }
    }

    fn overlay(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.overlay.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StorageBackend for TrialBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.overlay().len)
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, io::Error> {
        use std::os::unix::fs::FileExt;
        let o = self.overlay();
        let end = offset
            .checked_add(len as u64)
            .filter(|&end| end <= o.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        let mut buf = vec![0u8; len];
        if offset < o.file_len {
            let n = (o.file_len.min(end) - offset) as usize;
            self.file.read_exact_at(&mut buf[..n], offset)?;
        }
        for (at, data) in &o.writes {
            let w_end = at + data.len() as u64;
            if *at >= end || w_end <= offset {
                continue;
            }
            let from = (*at).max(offset);
            let to = w_end.min(end);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&data[(from - at) as usize..(to - at) as usize]);
        }
        Ok(buf)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut o = self.overlay();
        if len < o.len {
            o.file_len = o.file_len.min(len);
            o.writes.retain_mut(|(at, data)| {
                if *at >= len {
                    return false;
                }
                data.truncate((len - *at).min(data.len() as u64) as usize);
                true
            });
        }
        o.len = len;
        Ok(())
    }

    fn sync_data(&self, _eventual: bool) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut o = self.overlay();
        let end = offset + data.len() as u64;
        if end > o.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "write past the end",
            ));
        }
        // The same place written again (redb's header) when no later write
        // overlaps it: replaced, so that the list stays short.
        let newest_overlap = o
            .writes
            .iter_mut()
            .rev()
            .find(|(at, d)| *at < end && at + d.len() as u64 > offset);
        match newest_overlap {
            Some((at, d)) if *at == offset && d.len() == data.len() => d.copy_from_slice(data),
            _ => o.writes.push((offset, data.to_vec())),
        }
        Ok(())
    }
}

thread_local! {
    /// Set while [`quietly`] runs redb on this thread.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (redb reading a file), catching a panic without the panic
/// hook's message on stderr: a damaged state file is reported as
/// [`StateError::Corrupt`], not as "thread panicked at" a line of redb.
/// The panic's text and place go to the debug log. Panics on other threads,
/// or outside `f`, reach the previous hook as before.
fn quietly<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(std::cell::Cell::get) {
                tracing::debug!(panic = %info, "redb panicked reading the state file");
            } else {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    r
}

/// Describes a panic redb raised while reading the file (its text is in
/// the debug log).
fn panic_message() -> String {
    "redb cannot read its pages (the file is truncated or damaged)".to_owned()
}

/// A fingerprint is exactly 16 hex digits; anything else (a 64-digit hex
/// key, for one) is refused.
fn check_fingerprint(file: &Path, fp: &str) -> Result<(), StateError> {
    if fp.len() == FINGERPRINT_HEX_LEN && fp.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(StateError::Invalid {
            file: file.to_owned(),
            what: "an MKT record",
            reason: format!(
                "key_fingerprint must be {FINGERPRINT_HEX_LEN} hex digits (a fingerprint, never \
                 a key), got {} characters",
                fp.len()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aokd_proto::crypto::Secret;
    use aokd_proto::mkt::MacAlgorithm;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let p =
                std::env::temp_dir().join(format!("aokd-state-unit-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mkt(peer: &str, send_id: u8, recv_id: u8) -> MktRecord {
        let m = MasterKeyTuple {
            send_id,
            recv_id,
            algorithm: MacAlgorithm::HmacSha256_128,
            include_options: false,
            master_key: Secret::new(vec![send_id; 32]),
        };
        MktRecord::from_mkt(
            peer,
            &m,
            "0011223344556677",
            "8899aabbccddeeff",
            10,
            Some(20),
            30,
        )
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<StateStore>();
        check::<StateError>();
    }

    #[test]
    fn fingerprint_check() {
        let f = Path::new("/x");
        assert!(check_fingerprint(f, "66687aadf862bd77").is_ok());
        assert!(check_fingerprint(f, &"ab".repeat(32)).is_err());
        assert!(check_fingerprint(f, "").is_err());
        assert!(check_fingerprint(f, "66687aadf862bd7g").is_err());
    }

    #[test]
    fn from_mkt_takes_only_the_fingerprint() {
        let r = mkt("p", 7, 9);
        assert_eq!(
            r.key_fingerprint,
            aokd_proto::crypto::fingerprint(&[7u8; 32])
        );
        assert_eq!((r.send_id, r.recv_id), (7, 9));
        assert_eq!(r.algorithm, "hmac-sha256-128");
        let json = serde_json::to_string(&r).expect("encode");
        assert!(!json.contains(&hex::encode([7u8; 32])));
    }

    #[test]
    fn peer_ranges_and_deletes() {
        let d = Dir::new("ranges");
        let s = StateStore::open(&d.0).expect("open");
        for (p, a, b) in [("a", 1, 2), ("b", 3, 4), ("b", 5, 6), ("c", 255, 255)] {
            s.put_mkt(&mkt(p, a, b)).expect("put");
        }
        let b: Vec<_> = s
            .mkts_for_peer("b")
            .expect("b")
            .into_iter()
            .map(|r| (r.send_id, r.recv_id))
            .collect();
        assert_eq!(b, vec![(3, 4), (5, 6)]);
        assert_eq!(s.mkts_for_peer("c").expect("c").len(), 1);
        assert!(s.mkts_for_peer("bb").expect("bb").is_empty());
        assert!(s.delete_mkt("b", 3, 4).expect("delete"));
        assert!(!s.delete_mkt("b", 3, 4).expect("delete again"));
        assert_eq!(s.mkts().expect("all").len(), 3);
        // Replacing keeps one record per key.
        let mut r = mkt("a", 1, 2);
        r.expires_at_unix = 99;
        s.put_mkt(&r).expect("replace");
        assert_eq!(s.mkts_for_peer("a").expect("a"), vec![r]);
    }

    #[test]
    fn key_value_mismatch_is_corrupt() {
        let d = Dir::new("mismatch");
        let s = StateStore::open(&d.0).expect("open");
        let rec = serde_json::to_vec(&mkt("a", 1, 2)).expect("encode");
        s.write("test", |txn| {
            txn.open_table(MKTS)?.insert(("a", 9, 9), rec.as_slice())?;
            Ok(())
        })
        .expect("raw insert");
        let err = s.mkts().expect_err("mismatch");
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        drop(s);
        let err = StateStore::open(&d.0).expect_err("reopen");
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn unknown_fields_are_corrupt_not_dropped() {
        let d = Dir::new("unknown");
        let s = StateStore::open(&d.0).expect("open");
        let mut v = serde_json::to_value(mkt("a", 1, 2)).expect("encode");
        v["master_key"] = serde_json::json!("not allowed");
        let bytes = serde_json::to_vec(&v).expect("encode");
        s.write("test", |txn| {
            txn.open_table(MKTS)?
                .insert(("a", 1, 2), bytes.as_slice())?;
            Ok(())
        })
        .expect("raw insert");
        let err = s.mkts().expect_err("unknown field");
        assert!(err.to_string().contains("master_key"), "{err}");
    }

    #[test]
    fn tables_without_meta_are_corrupt() {
        let d = Dir::new("nometa");
        std::fs::create_dir_all(&d.0).expect("mkdir");
        std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let path = d.0.join(STATE_FILE_NAME);
        {
            let db = Database::create(&path).expect("create");
            let txn = db.begin_write().expect("write");
            txn.open_table(SOCKETS).expect("table");
            txn.commit().expect("commit");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = StateStore::open(&d.0).expect_err("no meta");
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("no meta table"), "{err}");
    }

    #[test]
    fn older_schema_is_refused() {
        let d = Dir::new("older");
        {
            let s = StateStore::open(&d.0).expect("open");
            s.write("test", |txn| {
                txn.open_table(META)?.insert(META_SCHEMA_VERSION, "0")?;
                Ok(())
            })
            .expect("set version");
        }
        let err = StateStore::open(&d.0).expect_err("older");
        assert!(
            matches!(
                err,
                StateError::OlderSchema {
                    found: 0,
                    supported: SCHEMA_VERSION,
                    ..
                }
            ),
            "{err}"
        );
    }

    /// The trial's view: reads see the file and the writes made since, in
    /// order; shrinking hides the file's end (zeros when it grows again);
    /// nothing reaches the file.
    #[test]
    fn the_trial_view_keeps_its_writes_off_the_file() {
        let d = Dir::new("trial-view");
        std::fs::create_dir_all(&d.0).unwrap();
        let path = d.0.join("f");
        std::fs::write(&path, b"abcdefgh").unwrap();
        let t = TrialBackend::new(File::open(&path).unwrap(), 8);
        let read = |t: &TrialBackend, len| String::from_utf8(t.read(0, len).unwrap()).unwrap();
        t.write(2, b"XY").unwrap();
        assert_eq!(read(&t, 8), "abXYefgh");
        t.write(0, b"1234").unwrap();
        t.write(2, b"ab").unwrap();
        // Not the same place as the newest write over it: appended, and wins.
        t.write(0, b"5678").unwrap();
        assert_eq!(read(&t, 8), "5678efgh");
        // The same place as the newest write over it: replaced.
        t.write(0, b"9999").unwrap();
        assert_eq!(read(&t, 8), "9999efgh");
        t.set_len(3).unwrap();
        assert_eq!(t.len().unwrap(), 3);
        assert!(t.read(0, 4).is_err());
        t.set_len(6).unwrap();
        assert_eq!(t.read(0, 6).unwrap(), b"999\0\0\0");
        assert!(t.write(5, b"zz").is_err(), "past the end");
        t.sync_data(false).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdefgh");
    }
}
