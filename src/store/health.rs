//! Whether the state database can commit right now, per state root and per process: what
//! `/readyz` reports (SPEC §5: 503 `storage_unavailable` while commits fail, 200 again once one
//! succeeds).
//!
//! Every store error whose fault stops commits (disk full, I/O error, read-only, cannot open,
//! corrupt) marks its database failing, from whichever thread hit it (`store::sqlite_error` is
//! the one place that records). A commit that wrote something clears it: the group-commit
//! writer's batches, every write transaction (`WriteTx`) that changed rows, and the writer's
//! probe — while failing, the idle writer tries a one-row commit every [`PROBE_EVERY`], so the
//! daemon becomes ready again by itself once space returns, even when a load balancer has
//! stopped sending it events.
//!
//! Databases are told apart by `state.db`'s path as the store spells it. The registry holds
//! weak references: an entry lives as long as some open [`super::Store`] of that database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::error::{StorageFault, StoreError};

/// How often the idle ingress writer tries a commit while the database is failing.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Since when, and why, commits have been failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageFailure {
    /// The fault of the latest failure.
    pub fault: StorageFault,
    /// When the first failure of this episode happened.
    pub since: Instant,
    /// The same moment, wall clock (milliseconds since the epoch), for reports.
    pub since_ms: i64,
    /// The latest failure's message (names the path, the cause and what to do).
    pub message: String,
}

/// A change of a database's health, as told to the observer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthChange {
    /// Commits started failing, or now fail for another reason.
    Failing(StorageFailure),
    /// A commit succeeded after `after` of failures caused by `fault`.
    Recovered {
        fault: StorageFault,
        after: Duration,
    },
}

/// Called on every health change (outside the health lock).
pub type HealthObserver = Box<dyn Fn(&HealthChange) + Send + Sync>;

/// The health of one state database in this process. See the module docs.
#[derive(Default)]
pub struct StorageHealth {
    /// Mirrors `state.failure.is_some()`, so a healthy commit costs one atomic load.
    failing: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    failure: Option<StorageFailure>,
    observer: Option<Arc<HealthObserver>>,
}

impl std::fmt::Debug for StorageHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageHealth")
            .field("failure", &self.failure())
            .finish()
    }
}

impl StorageHealth {
    /// True while commits are known to fail.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// The current failure, if commits are failing.
    pub fn failure(&self) -> Option<StorageFailure> {
        if !self.is_failing() {
            return None;
        }
        self.lock().failure.clone()
    }

    /// Installs the observer told about every change (replacing any earlier one). The daemon
    /// logs through it.
    pub fn observe(&self, observer: HealthObserver) {
        self.lock().observer = Some(Arc::new(observer));
    }

    /// Records a failure with a commit-stopping `fault`.
    pub(crate) fn record_failure(&self, fault: StorageFault, error: &StoreError) {
        let (change, observer) = {
            let mut state = self.lock();
            let message = error.to_string();
            let change = match &mut state.failure {
                Some(current) => {
                    let changed = current.fault != fault;
                    current.fault = fault;
                    current.message = message;
                    changed.then(|| HealthChange::Failing(current.clone()))
                }
                None => {
                    let failure = StorageFailure {
                        fault,
                        since: Instant::now(),
                        since_ms: crate::model::now_ms(),
                        message,
                    };
                    state.failure = Some(failure.clone());
                    self.failing.store(true, Ordering::Release);
                    Some(HealthChange::Failing(failure))
                }
            };
            (change, state.observer.clone())
        };
        notify(change, observer);
    }

    /// Records a commit that wrote something: the database is healthy again.
    pub(crate) fn record_success(&self) {
        if !self.is_failing() {
            return;
        }
        let (change, observer) = {
            let mut state = self.lock();
            self.failing.store(false, Ordering::Release);
            let change = state.failure.take().map(|f| HealthChange::Recovered {
                fault: f.fault,
                after: f.since.elapsed(),
            });
            (change, state.observer.clone())
        };
        notify(change, observer);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn notify(change: Option<HealthChange>, observer: Option<Arc<HealthObserver>>) {
    if let (Some(change), Some(observer)) = (change, observer) {
        observer(&change);
    }
}

type Registry = Mutex<HashMap<String, Weak<StorageHealth>>>;

fn registry() -> std::sync::MutexGuard<'static, HashMap<String, Weak<StorageHealth>>> {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY
        .get_or_init(Registry::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The health of the database at `db_path` (shared by every store of it in this process).
pub(crate) fn for_db(db_path: &str) -> Arc<StorageHealth> {
    let mut map = registry();
    if let Some(health) = map.get(db_path).and_then(Weak::upgrade) {
        return health;
    }
    // Forget databases nobody has open any more, so the map stays as small as the set of
    // open state roots.
    map.retain(|_, weak| weak.strong_count() > 0);
    let health = Arc::new(StorageHealth::default());
    map.insert(db_path.to_string(), Arc::downgrade(&health));
    health
}

/// Classifies a rusqlite error by its SQLite result code (never by message text), and marks
/// the state root of `path` as failing when the fault stops commits.
pub(crate) fn sqlite_error(path: &str, op: &str, err: rusqlite::Error) -> StoreError {
    let (error, fault) = super::error::classify(path, op, err);
    if let Some(fault) = fault.filter(|f| f.blocks_commits()) {
        record_failure(super::error::db_path_of(&error), fault, &error);
    }
    error
}

/// Marks the database at `db_path` failing, when some store of it is open in this process.
pub(crate) fn record_failure(db_path: &str, fault: StorageFault, error: &StoreError) {
    let health = registry().get(db_path).and_then(Weak::upgrade);
    if let Some(health) = health {
        health.record_failure(fault, error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(path: &str) -> StoreError {
        StoreError::DiskFull {
            path: path.into(),
            op: "committing accepted events".into(),
        }
    }

    #[test]
    fn failures_are_kept_until_a_commit_succeeds() {
        let path = "/health-test/a/state.db";
        let health = for_db(path);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        health.observe(Box::new(move |c| sink.lock().unwrap().push(c.clone())));
        assert!(!health.is_failing());
        health.record_success();
        assert!(seen.lock().unwrap().is_empty(), "no change while healthy");

        record_failure(path, StorageFault::DiskFull, &full(path));
        let first = health.failure().unwrap();
        assert_eq!(first.fault, StorageFault::DiskFull);
        assert!(first.message.contains("disk is full"));
        // A repeat of the same fault keeps the episode's start and tells nobody.
        record_failure(path, StorageFault::DiskFull, &full(path));
        assert_eq!(health.failure().unwrap().since, first.since);
        // Another fault is a change.
        let io = StoreError::IoError {
            path: path.into(),
            op: "x".into(),
            code: rusqlite::ffi::SQLITE_IOERR_WRITE,
        };
        record_failure(path, StorageFault::IoError, &io);
        assert_eq!(health.failure().unwrap().since, first.since);

        health.record_success();
        assert!(!health.is_failing());
        assert_eq!(health.failure(), None);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(matches!(&seen[0], HealthChange::Failing(f) if f.fault == StorageFault::DiskFull));
        assert!(matches!(&seen[1], HealthChange::Failing(f) if f.fault == StorageFault::IoError));
        assert!(matches!(
            seen[2],
            HealthChange::Recovered {
                fault: StorageFault::IoError,
                ..
            }
        ));
    }

    #[test]
    fn one_entry_per_open_database() {
        let a = for_db("/health-test/b/state.db");
        let again = for_db("/health-test/b/state.db");
        assert!(Arc::ptr_eq(&a, &again));
        let other = for_db("/health-test/c/state.db");
        assert!(!Arc::ptr_eq(&a, &other));
        drop((a, again));
        // Nobody holds it: a failure there is recorded nowhere, and a new entry starts healthy.
        record_failure(
            "/health-test/b/state.db",
            StorageFault::DiskFull,
            &full("/health-test/b/state.db"),
        );
        assert!(!for_db("/health-test/b/state.db").is_failing());
    }

    /// A writer job that caps the database's size (`PRAGMA max_page_count`, on the writer's
    /// own connection) and then stores an asset of `bytes`.
    struct CappedInsert {
        max_pages: u32,
        bytes: usize,
        done: std::sync::mpsc::Sender<Result<(), StoreError>>,
    }

    impl crate::store::writer::WriteJob for CappedInsert {
        fn apply(&mut self, store: &crate::store::Store) -> Result<(), StoreError> {
            let ops = store.ingress_ops();
            let pragma = format!("PRAGMA max_page_count = {}", self.max_pages);
            ops.conn_for_tests().execute_batch(&pragma).unwrap();
            ops.insert_asset(&crate::model::run::NewAsset {
                asset_id: crate::model::run::new_id("asset", 1),
                media_type: "application/octet-stream".into(),
                file_name: None,
                sha256: "00".into(),
                data: vec![0x5a; self.bytes],
                now_ms: 1,
            })
        }

        fn finish(self: Box<Self>, outcome: Result<(), StoreError>) {
            let _ = self.done.send(outcome);
        }
    }

    #[test]
    fn the_writer_reports_a_full_database_and_its_probe_recovers() {
        use crate::store::writer::GroupWriter;
        use std::sync::mpsc;
        let dir = tempfile::tempdir().unwrap();
        let writer = GroupWriter::start(dir.path(), Box::new(|_| {})).unwrap();
        let (changes_tx, changes) = mpsc::channel();
        let changes_tx = Mutex::new(changes_tx);
        writer.health().observe(Box::new(move |c| {
            let _ = changes_tx.lock().unwrap().send(c.clone());
        }));
        let wait = Duration::from_secs(10);

        // The database may not grow (a cap at its current size): SQLITE_FULL.
        let (done, result) = mpsc::channel();
        writer.submit(Box::new(CappedInsert {
            max_pages: 1,
            bytes: 256 * 1024,
            done: done.clone(),
        }));
        let err = result.recv_timeout(wait).unwrap().unwrap_err();
        assert!(matches!(err, StoreError::DiskFull { .. }), "{err:?}");
        assert!(!err.to_string().contains("locked"), "{err}");
        match changes.recv_timeout(wait).unwrap() {
            HealthChange::Failing(f) => assert_eq!(f.fault, StorageFault::DiskFull),
            other => panic!("{other:?}"),
        }
        // No event follows; the writer's own probe (a one-row update, which fits) recovers.
        match changes.recv_timeout(wait).unwrap() {
            HealthChange::Recovered { fault, .. } => assert_eq!(fault, StorageFault::DiskFull),
            other => panic!("{other:?}"),
        }
        assert!(!writer.health().is_failing());

        // With the cap lifted, events commit again.
        writer.submit(Box::new(CappedInsert {
            max_pages: 1_000_000,
            bytes: 256 * 1024,
            done,
        }));
        result.recv_timeout(wait).unwrap().unwrap();
        writer.shutdown();
    }

    #[test]
    fn a_disk_full_error_marks_its_database_failing() {
        let path = "/health-test/d/state.db";
        let health = for_db(path);
        let err = super::super::sqlite_error(
            path,
            "committing",
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                None,
            ),
        );
        assert_eq!(health.failure().unwrap().message, err.to_string());
        // A lock held by another process is not a storage failure.
        let other = "/health-test/e/state.db";
        let healthy = for_db(other);
        super::super::sqlite_error(
            other,
            "committing",
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                None,
            ),
        );
        assert!(!healthy.is_failing());
    }
}
