//! The state root (SPEC §3): one directory, mode 0700, holding `state.db` (SQLite, WAL) and, when
//! no master key is configured, `master.key`. The only module that imports rusqlite or contains
//! SQL.
//!
//! The store knows nothing about HTTP, clap, TOML or cryptography: callers pass and receive plain
//! values (the secret store hands it sealed bytes), and no rusqlite type appears in its public
//! API, so another backend can later sit behind the same functions.
//!
//! Opening is safe from several processes at once: the directory and file are created with
//! create-if-absent semantics, every connection has a busy timeout, and migrations run in an
//! `IMMEDIATE` transaction (see [`migrations`]).

pub mod assets;
pub mod claims;
pub mod connectors;
pub mod deliveries;
mod error;
pub mod health;
pub mod migrations;
pub mod poll_offsets;
pub mod receipts;
pub mod run_writes;
pub mod runs;
pub mod secret_slots;
pub mod sessions;
pub mod writer;

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

pub use error::{StorageFault, StoreError};
pub(crate) use health::sqlite_error;
use health::StorageHealth;

/// The database file inside the state root.
pub const DB_FILE: &str = "state.db";

/// How long a connection waits for another process's write lock before failing with
/// [`StoreError::Busy`]. Writes are short transactions, so this is generous.
const BUSY_TIMEOUT: Duration = Duration::from_millis(5000);

/// Serialises this process's write transactions on the state root.
///
/// SQLite allows one writer at a time; when several threads of one process collide, the
/// loser's busy handler sleeps with a growing backoff (1, 2, 5, 10 … ms) and the lock sits
/// idle meanwhile. Taking this mutex before `BEGIN IMMEDIATE` makes threads of one process
/// queue in order instead; other processes (a `drain-deliveries` beside `serve`) still meet
/// SQLite's own lock and busy timeout.
pub(crate) fn process_write_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// WAL frames (4 KiB pages) above which the checkpointer finishes a checkpoint under the
/// process write lock: about 64 MiB of WAL.
const WAL_RESTART_FRAMES: i64 = 16384;

/// Runs WAL checkpoints on its own connection when nudged; a final one when stopped.
///
/// Each nudge first copies what it can without blocking anyone (PASSIVE). Under a steady
/// stream of commits that never completes — new frames arrive while it copies — and the WAL
/// only restarts from its beginning after a complete checkpoint, so the file would grow
/// without bound (measured: 1.4 GB in 10 s of the ingress benchmark). So when the WAL holds
/// more than [`WAL_RESTART_FRAMES`], the checkpointer copies the remainder while holding the
/// process write lock: only the frames written since its unlocked pass, a short pause for the
/// writers, after which the next commit restarts the WAL.
pub(crate) struct Checkpointer {
    nudge: mpsc::SyncSender<()>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    pub(crate) fn start(store: Store) -> Checkpointer {
        let (nudge, nudged) = mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || {
                let passive = |store: &Store| -> Option<i64> {
                    // (busy, frames in the WAL, frames copied)
                    store
                        .conn()
                        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
                        .ok()
                };
                while nudged.recv().is_ok() {
                    if passive(&store).is_some_and(|frames| frames > WAL_RESTART_FRAMES) {
                        // A second unlocked pass copies what arrived during the first, so the
                        // locked pass (the writers' pause) has only a short tail left.
                        passive(&store);
                        let _lock = process_write_lock();
                        passive(&store);
                    }
                }
                let _ = store
                    .conn()
                    .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            })
            .expect("spawning the checkpoint thread");
        Checkpointer { nudge, thread }
    }

    /// Asks for a checkpoint; a request already pending is enough.
    pub(crate) fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }

    pub(crate) fn stop(self) {
        drop(self.nudge);
        let _ = self.thread.join();
    }
}

/// A write transaction (`BEGIN IMMEDIATE`) holding this process's write lock. Dropping it
/// without `commit` rolls back. A commit that changed rows tells the database's
/// [`health`] that commits succeed (a failure was already recorded where it was classified).
///
/// `BEGIN`, `COMMIT` and `ROLLBACK` run through the connection's prepared-statement cache:
/// rusqlite's `Transaction` re-parses them for every transaction, which was a tenth of a
/// delivery worker's CPU.
pub(crate) struct WriteTx<'c> {
    conn: &'c Connection,
    health: &'c StorageHealth,
    /// `total_changes` at `BEGIN`: a commit that changed nothing proves nothing about space.
    changes_at_begin: u64,
    open: bool,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl WriteTx<'_> {
    pub(crate) fn commit(mut self) -> rusqlite::Result<()> {
        cached_control(self.conn, "COMMIT")?;
        self.open = false;
        if self.conn.total_changes() != self.changes_at_begin {
            self.health.record_success();
        }
        Ok(())
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        if self.open {
            // A failed COMMIT leaves the transaction open; a failed ROLLBACK leaves nothing
            // more to do (SQLite has already rolled back, or the connection is broken).
            let _ = cached_control(self.conn, "ROLLBACK");
        }
    }
}

/// Runs a transaction-control statement through the statement cache.
pub(crate) fn cached_control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// An open state root: the directory and one connection to its database. Each thread that needs
/// the database opens its own `Store` (connections are cheap; WAL lets readers run beside a
/// writer).
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    root: PathBuf,
    /// `state.db`'s path as text, for error messages.
    db_path: String,
    /// Whether this database can commit, shared by every store of it in this process.
    health: std::sync::Arc<StorageHealth>,
}

impl Store {
    /// Opens the state root, creating the directory (0700), `state.db` (0600) and the schema as
    /// needed. An existing directory keeps the permissions its owner gave it.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        ensure_root_dir(root)?;
        let db = root.join(DB_FILE);
        if !db.exists() {
            create_initialized_db(root, &db)?;
        }
        Store::connect(root, &db)
    }

    /// Opens the state root only if it already exists; never creates a directory or file.
    /// `Ok(None)` when the directory or `state.db` is absent. A database at an older schema is
    /// migrated; a newer one is refused untouched.
    pub fn open_existing(root: &Path) -> Result<Option<Store>, StoreError> {
        match fs::metadata(root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(StoreError::NotADirectory {
                    path: root.display().to_string(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StoreError::Io {
                    path: root.display().to_string(),
                    source: e,
                })
            }
        }
        let db = root.join(DB_FILE);
        match fs::metadata(&db) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StoreError::OpenDb {
                    path: db.display().to_string(),
                    source: e,
                })
            }
        }
        Store::connect(root, &db).map(Some)
    }

    /// Opens an existing state root for reading only (shell completion): never creates,
    /// migrates or writes anything, and waits at most `busy` for a lock. `Ok(None)` when there
    /// is no database, or its schema is not exactly this build's (an older one would need a
    /// migration, which is a write).
    pub fn open_read_only(
        root: &Path,
        busy: std::time::Duration,
    ) -> Result<Option<Store>, StoreError> {
        let db = root.join(DB_FILE);
        if !db.is_file() {
            return Ok(None);
        }
        let db_path = db.display().to_string();
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&db, flags)
            .map_err(|e| sqlite_error(&db_path, "opening read-only", e))?;
        conn.busy_timeout(busy)
            .map_err(|e| sqlite_error(&db_path, "setting the busy timeout", e))?;
        if migrations::user_version(&conn, &db_path)? != migrations::SUPPORTED_VERSION {
            return Ok(None);
        }
        Ok(Some(Store {
            conn,
            root: root.to_path_buf(),
            health: health::for_db(&db_path),
            db_path,
        }))
    }

    /// The state root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether this database can commit (what `/readyz` reports).
    pub fn health(&self) -> &std::sync::Arc<StorageHealth> {
        &self.health
    }

    /// Opens an existing `db` file: connection settings, the newer-schema check (before any
    /// write), WAL, then migrations.
    fn connect(root: &Path, db: &Path) -> Result<Store, StoreError> {
        let db_path = db.display().to_string();
        // Taken first, so failures while opening are recorded in a watched entry too.
        let health = health::for_db(&db_path);
        let conn = open_configured(db, &db_path)?;
        migrations::migrate(&conn, &db_path)?;
        // The hot paths (ingress, the delivery queue) reuse a few dozen distinct statements.
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Store {
            conn,
            root: root.to_path_buf(),
            db_path,
            health,
        })
    }

    /// Reads one `store_meta` value.
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .query_row(
                "SELECT value FROM store_meta WHERE key = ?1",
                [key],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.err("reading store metadata", e))
    }

    /// Writes a `store_meta` value unless the key already has one; returns whether it wrote.
    /// Two processes racing to initialise the same key both end up reading the winner's value.
    pub fn meta_insert_if_absent(&self, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute(
                "INSERT INTO store_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                rusqlite::params![key, value],
            )
            .map_err(|e| self.err("writing store metadata", e))?;
        Ok(n == 1)
    }

    /// Commits on this connection stop waiting for fsync (`synchronous=NORMAL`; WAL stays
    /// consistent and a killed process loses nothing, only an OS crash or power loss can drop
    /// the last commits). Only for connections whose writes are safe to lose that way: the
    /// delivery workers' claims and settlements, where a lost claim makes a delivery claimable
    /// again and a lost settlement makes it be sent again with the same Idempotency-Key — the
    /// at-least-once contract. Deliveries themselves are created with full durability.
    pub fn relax_sync_for_redoable_writes(&self) -> Result<(), StoreError> {
        self.conn
            .execute_batch("PRAGMA synchronous = NORMAL")
            .map_err(|e| self.err("relaxing synchronous for delivery workers", e))
    }

    /// Makes this the connection of a busy queue writer (the delivery dispatcher): a bigger
    /// page cache, and no automatic WAL checkpoint; the owner calls
    /// [`Store::checkpoint_between_writes`] itself.
    pub(crate) fn prepare_queue_writer(&self) -> Result<(), StoreError> {
        self.conn
            .execute_batch("PRAGMA cache_size = -8192; PRAGMA wal_autocheckpoint = 0;")
            .map_err(|e| self.err("setting up the queue connection", e))
    }

    /// Copies the WAL into the database (PASSIVE) while holding this process's write lock, so
    /// no writer of this process appends frames meanwhile: the checkpoint can complete and the
    /// next commit restarts the WAL from its beginning instead of growing the file. (A
    /// checkpoint racing a busy writer never catches up, and the ever-longer WAL makes every
    /// commit pay for new file blocks.) Best effort: a checkpoint that cannot complete now
    /// completes later.
    pub(crate) fn checkpoint_between_writes(&self) {
        let _lock = process_write_lock();
        let _ = cached_control(&self.conn, "PRAGMA wal_checkpoint(PASSIVE)");
    }

    /// Starts a write transaction behind the process write lock.
    pub(crate) fn write_tx(&self, op: &str) -> Result<WriteTx<'_>, StoreError> {
        let lock = process_write_lock();
        cached_control(&self.conn, "BEGIN IMMEDIATE").map_err(|e| self.err(op, e))?;
        Ok(WriteTx {
            conn: &self.conn,
            health: &self.health,
            changes_at_begin: self.conn.total_changes(),
            open: true,
            _lock: lock,
        })
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn err(&self, op: &str, e: rusqlite::Error) -> StoreError {
        sqlite_error(&self.db_path, op, e)
    }
}

/// Creates the state root with mode 0700 unless it exists. Parents are created like `mkdir -p`.
fn ensure_root_dir(root: &Path) -> Result<(), StoreError> {
    let display = || root.display().to_string();
    match fs::metadata(root) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => return Err(StoreError::NotADirectory { path: display() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(StoreError::Io {
                path: display(),
                source: e,
            })
        }
    }
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| StoreError::CreateDir {
            path: display(),
            source: e,
        })?;
    }
    match fs::DirBuilder::new().mode(0o700).create(root) {
        // The umask can only clear bits, but set the mode explicitly so the result does not
        // depend on it. Only a directory we just created is touched.
        Ok(()) => fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(|e| {
            StoreError::CreateDir {
                path: display(),
                source: e,
            }
        }),
        // Another process created it between our check and our mkdir.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && root.is_dir() => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(StoreError::NotADirectory { path: display() })
        }
        Err(e) => Err(StoreError::CreateDir {
            path: display(),
            source: e,
        }),
    }
}

/// Opens a connection to an existing database file and applies the connection settings. Checks
/// the schema version before anything writes; runs no migration.
fn open_configured(db: &Path, db_path: &str) -> Result<Connection, StoreError> {
    // No CREATE flag: the file was created by us with mode 0600 (or by an earlier run); if it
    // vanished in between, failing is better than SQLite creating it with the umask's mode.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn =
        Connection::open_with_flags(db, flags).map_err(|e| sqlite_error(db_path, "opening", e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| sqlite_error(db_path, "setting the busy timeout", e))?;

    // Refuse a newer schema before anything can write: switching to WAL rewrites the header.
    // Reading the version also proves the file is a SQLite database (SQLITE_NOTADB otherwise).
    let found = migrations::user_version(&conn, db_path)?;
    migrations::refuse_newer(found, db_path)?;

    // WAL lets readers run beside the one writer. The mode is persistent and every database we
    // create is already in it (see `create_initialized_db`), so this is normally a no-op; it
    // matters only for a database file someone else created. SQLite creates `-wal` and `-shm`
    // with the database file's own permission bits (unix VFS `findCreateFileMode`), so they are
    // 0600 like `state.db`. FULL makes every commit durable on power loss, which "202 means
    // durable" relies on.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|e| sqlite_error(db_path, "enabling WAL", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Sqlite {
            path: db_path.to_string(),
            op: "enabling WAL".into(),
            source: format!("SQLite kept journal mode `{mode}`").into(),
        });
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
        .map_err(|e| sqlite_error(db_path, "setting connection pragmas", e))?;
    // The query planner stability guarantee: a plan never depends on the value bound to a
    // parameter. Without it SQLite 3.50 marks a statement expired on every bind of a parameter
    // its planner looked at (a `LIMIT ?`, for one), so the cached delivery and run claims were
    // compiled again on every execution. Our statements are written for one plan anyway.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(|e| sqlite_error(db_path, "setting connection pragmas", e))?;
    Ok(conn)
}

/// Creates `state.db` fully initialised (mode 0600, WAL, current schema) so that no process ever
/// sees a half-made database.
///
/// Why not create it in place: switching a database to WAL needs an exclusive lock, and SQLite
/// answers `SQLITE_BUSY` without waiting when several fresh processes race for it. So the
/// database is built under a private temporary name and hard-linked into place, which fails if
/// `state.db` already exists; the loser of a race drops its copy and opens the winner's.
fn create_initialized_db(root: &Path, db: &Path) -> Result<(), StoreError> {
    let open_err = |path: &Path, source| StoreError::OpenDb {
        path: path.display().to_string(),
        source,
    };
    let tmp = root.join(format!(
        ".{DB_FILE}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| open_err(&tmp, e))?;
    let res = file
        .set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| open_err(&tmp, e))
        .and_then(|()| {
            drop(file);
            let tmp_path = tmp.display().to_string();
            let conn = open_configured(&tmp, &tmp_path)?;
            migrations::migrate(&conn, &tmp_path)?;
            // Closing checkpoints the WAL into the file; the header keeps the WAL mode.
            conn.close()
                .map_err(|(_, e)| sqlite_error(&tmp_path, "closing", e))
        })
        .and_then(|()| match fs::hard_link(&tmp, db) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(open_err(db, e)),
        });
    // The temporary name is ours alone; a leftover is a harmless 0600 file.
    for suffix in ["", "-wal", "-shm"] {
        let mut side = tmp.clone().into_os_string();
        side.push(suffix);
        let _ = fs::remove_file(side);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn busy_names_the_database_and_says_why() {
        let locked = StoreError::Busy {
            path: "/srv/state/state.db".into(),
            op: "claiming a delivery".into(),
            detail: None,
        };
        assert_eq!(
            locked.to_string(),
            "the state database `/srv/state/state.db` stayed locked by another process while \
             claiming a delivery; retry, or check for a stuck kheishctl process"
        );
        let stopped = StoreError::Busy {
            path: "/srv/state/state.db".into(),
            op: "accepting an event".into(),
            detail: Some("the writer has stopped".into()),
        };
        assert_eq!(
            stopped.to_string(),
            "the state database `/srv/state/state.db` could not be written while accepting an \
             event: the writer has stopped; retry, or check for a stuck kheishctl process"
        );
    }

    #[test]
    fn open_creates_a_private_root_and_database() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("a/b/state");
        let store = Store::open(&root).unwrap();
        assert_eq!(store.root(), root);
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join(DB_FILE)), 0o600);
        // Force the WAL side files into existence while the connection is open.
        store.meta_insert_if_absent("k", b"v").unwrap();
        for side in ["state.db-wal", "state.db-shm"] {
            let path = root.join(side);
            assert!(path.exists(), "{side} exists while the store is open");
            assert_eq!(mode(&path), 0o600, "{side}");
        }
        let journal: String = store
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        let fk: i64 = store
            .conn()
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
    }

    #[test]
    fn a_cached_statement_is_not_compiled_again_for_each_bound_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        // The shape of the delivery and run claims: an index walk with a bound LIMIT.
        let mut st = store
            .conn()
            .prepare(
                "SELECT target_key FROM delivery_targets WHERE next_attempt_at_ms <= ?1
                 ORDER BY next_attempt_at_ms LIMIT ?2",
            )
            .unwrap();
        for i in 0..10i64 {
            let rows = st
                .query_map(rusqlite::params![1000 + i, 1 + i], |_| Ok(()))
                .unwrap();
            assert_eq!(rows.count(), 0);
        }
        assert_eq!(st.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }

    #[test]
    fn existing_root_keeps_its_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o750)).unwrap();
        Store::open(&root).unwrap();
        assert_eq!(mode(&root), 0o750);
    }

    #[test]
    fn open_existing_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        assert!(Store::open_existing(&root).unwrap().is_none());
        assert!(!root.exists());
        fs::create_dir(&root).unwrap();
        assert!(Store::open_existing(&root).unwrap().is_none());
        assert!(!root.join(DB_FILE).exists());
        drop(Store::open(&root).unwrap());
        assert!(Store::open_existing(&root).unwrap().is_some());
    }

    #[test]
    fn meta_insert_keeps_the_first_value() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        assert_eq!(store.meta_get("k").unwrap(), None);
        assert!(store.meta_insert_if_absent("k", b"one").unwrap());
        assert!(!store.meta_insert_if_absent("k", b"two").unwrap());
        assert_eq!(store.meta_get("k").unwrap(), Some(b"one".to_vec()));
    }

    #[test]
    fn newer_schema_is_refused_and_the_file_is_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        drop(Store::open(root).unwrap());
        {
            let conn = Connection::open(root.join(DB_FILE)).unwrap();
            conn.execute_batch("PRAGMA user_version = 999").unwrap();
        }
        let before = fs::read(root.join(DB_FILE)).unwrap();
        for res in [
            Store::open(root).map(|_| ()),
            Store::open_existing(root).map(|_| ()),
        ] {
            let err = res.unwrap_err();
            assert!(
                matches!(err, StoreError::NewerSchema { found: 999, .. }),
                "{err:?}"
            );
        }
        assert_eq!(fs::read(root.join(DB_FILE)).unwrap(), before);
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let junk = "this is not a database, just some text long enough to have a header\n";
        fs::write(tmp.path().join(DB_FILE), junk.repeat(20)).unwrap();
        let err = Store::open(tmp.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("not a valid SQLite database"));
    }

    #[test]
    fn a_root_that_is_a_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, "x").unwrap();
        assert!(matches!(
            Store::open(&file).unwrap_err(),
            StoreError::NotADirectory { .. }
        ));
        assert!(matches!(
            Store::open_existing(&file).unwrap_err(),
            StoreError::NotADirectory { .. }
        ));
        // Under a regular file: ENOTDIR, which denies root too.
        assert!(Store::open(&file.join("state")).is_err());
    }
}
