//! The group-commit writer (SPEC §3, §6; STYLE §4): every write of the pipeline is a job of its
//! batches (accepted events here, run claims/settlements and delivery rounds in
//! `store::run_writes`), plus the reads and inserts that accepting an event needs.
//!
//! "202 means durable": an accept is answered only after its transaction committed with
//! `synchronous=FULL` in WAL mode. To avoid one fsync per request, ONE writer thread owns the
//! write connection and batches: it takes every job that queued while the previous commit was
//! in flight, runs them all in one `BEGIN IMMEDIATE` transaction with no savepoints, commits
//! once, and only then tells each job the outcome. Only when a job fails is the transaction
//! rolled back and the batch run again with a SAVEPOINT per job, so the failed job is undone
//! alone and the others still commit (jobs decide from what the transaction sees, so running
//! one twice is safe). An accept's first pass trusts its request-thread pre-check and lets the
//! schema refuse what changed since (a receipt or a session written meanwhile: primary keys;
//! a key bound meanwhile: a strict binding); such a refusal sends the batch to the savepoint
//! pass, where every job is told to check everything ([`WriteJob::check_everything`]). A failed commit fails every job of the batch (nothing was written), each
//! with the commit's own classified error (a full disk is reported as such, never as a lock).
//!
//! Every commit attempt updates the database's [`super::health`]: a failure marks it failing
//! (in `store::sqlite_error`), a batch that wrote something clears it. While it is failing the
//! idle writer probes with a one-row commit every [`PROBE_EVERY`], so readiness comes back by
//! itself once the cause is gone.
//!
//! Duplicate hits on receipts are counted in memory and folded into the next batch (or flushed
//! after two seconds), so a duplicate request is answered from a read with no write on its path.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};

use super::health::{StorageHealth, PROBE_EVERY};
use super::{Store, StoreError};
use crate::model::reply::ReplyTarget;
use crate::model::run::{
    NewAsset, NewReceipt, NewRun, NewSession, PolicySnapshot, Receipt, Session,
};
use crate::model::ConnectorKind;

/// Jobs taken into one transaction at most; more wait for the next commit.
const MAX_BATCH: usize = 1024;
/// The checkpointer is asked to run after this many commits.
const CHECKPOINT_EVERY: u64 = 64;
/// Page cache of the writer's connection (KiB, SQLite's negative form): receipt keys are
/// random, so their index pages are touched all over; keeping them cached avoids re-reads.
const WRITER_CACHE_KIB: i64 = 16 * 1024;
/// Pending duplicate-hit counts are written at the latest after this long.
const DUPLICATE_FLUSH: Duration = Duration::from_secs(2);

/// Reads and inserts for accepting events, over either a plain connection (reads on request
/// threads) or the writer's open transaction (inside a job).
pub struct IngressOps<'c> {
    conn: &'c Connection,
    path: &'c str,
    /// Answers already read in the current [`IngressOps::in_read_snapshot`]: inside one read
    /// transaction a binding or a session cannot change, and the events of a batch mostly share
    /// them (one channel's keys, one session). `None` outside a snapshot (the writer's reads
    /// see its own earlier inserts and are never memoised).
    memo: RefCell<Option<SnapshotMemo>>,
}

/// See [`IngressOps::memo`].
#[derive(Default)]
struct SnapshotMemo {
    bindings: HashMap<String, Option<String>>,
    sessions: HashMap<String, Option<Session>>,
}

impl Store {
    /// Ingress reads on this thread's connection.
    pub fn ingress_ops(&self) -> IngressOps<'_> {
        IngressOps {
            conn: self.conn(),
            path: &self.db_path,
            memo: RefCell::new(None),
        }
    }
}

fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serialising a stored JSON value cannot fail")
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str, column: usize) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn kind_from_sql(text: &str, column: usize) -> rusqlite::Result<ConnectorKind> {
    text.parse::<ConnectorKind>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Text,
            Box::<dyn std::error::Error + Send + Sync>::from(e),
        )
    })
}

/// Maps a `sessions` row selected with [`SESSION_COLUMNS`].
pub(crate) fn session_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Session> {
    let reply_targets: Vec<ReplyTarget> = parse_json(&row.get::<_, String>(7)?, 7)?;
    Ok(Session {
        session_id: row.get(0)?,
        created_at_ms: row.get(1)?,
        updated_at_ms: row.get(2)?,
        created_by: row.get(3)?,
        policy: PolicySnapshot {
            persona_id: row.get(4)?,
            capability_scope: parse_json(&row.get::<_, String>(5)?, 5)?,
            credential_scope: parse_json(&row.get::<_, String>(6)?, 6)?,
        },
        reply_targets,
        metadata: parse_json(&row.get::<_, String>(8)?, 8)?,
    })
}

/// Columns for [`session_from_row`], in order.
pub(crate) const SESSION_COLUMNS: &str = "session_id, created_at_ms, updated_at_ms, created_by, \
     persona_id, capability_scope, credential_scope, reply_targets, metadata";

/// Maps a `receipts` row selected with [`RECEIPT_COLUMNS`].
pub(crate) fn receipt_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Receipt> {
    Ok(Receipt {
        receipt_key: row.get(0)?,
        connector_kind: kind_from_sql(&row.get::<_, String>(1)?, 1)?,
        connector_name: row.get(2)?,
        key_sha256: row.get(3)?,
        fingerprint: row.get(4)?,
        status: row.get(5)?,
        run_id: row.get(6)?,
        session_id: row.get(7)?,
        received_at_ms: row.get(8)?,
        duplicate_hits: row.get(9)?,
        last_duplicate_at_ms: row.get(10)?,
    })
}

/// Columns for [`receipt_from_row`], in order.
pub(crate) const RECEIPT_COLUMNS: &str =
    "receipt_key, connector_kind, connector_name, key_sha256, \
     fingerprint, status, run_id, session_id, received_at_ms, duplicate_hits, last_duplicate_at_ms";

impl IngressOps<'_> {
    fn err(&self, op: &str, e: rusqlite::Error) -> StoreError {
        super::sqlite_error(self.path, op, e)
    }

    /// A [`StoreError::Busy`] for this database: `op` could not finish because of `detail` (a
    /// store failure that reached the caller through another error type).
    pub fn busy(&self, op: &str, detail: String) -> StoreError {
        StoreError::Busy {
            path: self.path.to_string(),
            op: op.to_string(),
            detail: Some(detail),
        }
    }

    /// The connection underneath, for tests that change its settings inside a job.
    #[cfg(test)]
    pub(crate) fn conn_for_tests(&self) -> &Connection {
        self.conn
    }

    /// Runs `reads` inside one read transaction of this connection (one snapshot), so its
    /// page cache stays warm across them: in WAL mode each autocommit read that follows a
    /// commit by another connection starts from an emptied cache. Without a snapshot (the
    /// connection is already in a transaction, or `BEGIN` failed) the reads run as they are.
    pub fn in_read_snapshot<T>(&self, reads: impl FnOnce() -> T) -> T {
        let began = self.conn.is_autocommit() && cached(self.conn, "BEGIN").is_ok();
        if began {
            *self.memo.borrow_mut() = Some(SnapshotMemo::default());
        }
        let out = reads();
        if began {
            *self.memo.borrow_mut() = None;
            // A read-only transaction: ending it cannot lose anything.
            let _ = cached(self.conn, "COMMIT");
        }
        out
    }

    /// The receipt stored under `receipt_key`, if any.
    pub fn receipt(&self, receipt_key: &str) -> Result<Option<Receipt>, StoreError> {
        let sql = format!("SELECT {RECEIPT_COLUMNS} FROM receipts WHERE receipt_key = ?1");
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut st| st.query_row([receipt_key], receipt_from_row).optional())
            .map_err(|e| self.err("reading a receipt", e))
    }

    /// The session `session_id`, if it exists.
    pub fn session(&self, session_id: &str) -> Result<Option<Session>, StoreError> {
        if let Some(memo) = self.memo.borrow().as_ref() {
            if let Some(found) = memo.sessions.get(session_id) {
                return Ok(found.clone());
            }
        }
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?1");
        let found = self
            .conn
            .prepare_cached(&sql)
            .and_then(|mut st| st.query_row([session_id], session_from_row).optional())
            .map_err(|e| self.err("reading a session", e))?;
        if let Some(memo) = self.memo.borrow_mut().as_mut() {
            memo.sessions.insert(session_id.to_string(), found.clone());
        }
        Ok(found)
    }

    /// `(binding_key, session_id)` for each of `keys` that is bound: by a `session_bindings`
    /// row, else to the self-bound session of that id (see [`IngressOps::bind_keys`]).
    pub fn bound_sessions(&self, keys: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT coalesce(\
                 (SELECT session_id FROM session_bindings WHERE binding_key = ?1), \
                 (SELECT session_id FROM sessions WHERE session_id = ?1 AND self_bound = 1))",
            )
            .map_err(|e| self.err("reading session bindings", e))?;
        for key in keys {
            let memoised = self
                .memo
                .borrow()
                .as_ref()
                .and_then(|memo| memo.bindings.get(key).cloned());
            let found: Option<String> = match memoised {
                Some(found) => found,
                None => {
                    let found: Option<String> = st
                        .query_row([key], |row| row.get(0))
                        .map_err(|e| self.err("reading session bindings", e))?;
                    if let Some(memo) = self.memo.borrow_mut().as_mut() {
                        memo.bindings.insert(key.clone(), found.clone());
                    }
                    found
                }
            };
            if let Some(session_id) = found {
                out.push((key.clone(), session_id));
            }
        }
        Ok(out)
    }

    /// True when a `session_bindings` row binds `key` to a session other than `session_id`.
    fn bound_elsewhere(&self, key: &str, session_id: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT 1 FROM session_bindings WHERE binding_key = ?1 AND session_id <> ?2",
            )
            .and_then(|mut st| st.exists([key, session_id]))
            .map_err(|e| self.err("reading session bindings", e))
    }

    /// True when asset `asset_id` exists.
    pub fn asset_exists(&self, asset_id: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("SELECT 1 FROM assets WHERE asset_id = ?1")
            .and_then(|mut st| st.exists([asset_id]))
            .map_err(|e| self.err("reading an asset", e))
    }

    /// Creates session `s`. `self_bound`: the session is bound to its own id, as a binding key,
    /// without a `session_bindings` row (see [`IngressOps::bind_keys`]).
    pub fn insert_session(&self, s: &NewSession, self_bound: bool) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO sessions (session_id, created_at_ms, updated_at_ms, created_by, \
                 persona_id, capability_scope, credential_scope, reply_targets, metadata, \
                 self_bound) \
                 VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    s.session_id,
                    s.now_ms,
                    s.created_by,
                    s.policy.persona_id,
                    json_text(&s.policy.capability_scope),
                    json_text(&s.policy.credential_scope),
                    json_text(&s.reply_targets),
                    json_text(&s.metadata),
                    self_bound,
                ])
            })
            .map(drop)
            .map_err(|e| self.err("creating a session", e))
    }

    /// Binds each key to `session_id` unless it is bound already (a bound key is never
    /// re-bound). `own`, given when `session_id` is a session created in this transaction with
    /// `self_bound` and is one of `keys`, gets no row: the session row binds it (migration 11).
    /// That saves every new Slack thread and Telegram chat a row in a B-tree keyed like the
    /// sessions' own.
    ///
    /// `strict`: a key bound already to another session is an error instead of being left
    /// alone, for a caller that trusted an older read (see `AcceptJob::decide`): the event
    /// would have resolved elsewhere, or been ambiguous.
    pub fn bind_keys(
        &self,
        session_id: &str,
        keys: &[String],
        own: Option<&str>,
        strict: bool,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "INSERT INTO session_bindings (binding_key, session_id, created_at_ms) \
                 VALUES (?1, ?2, ?3) ON CONFLICT (binding_key) DO NOTHING",
            )
            .map_err(|e| self.err("binding session keys", e))?;
        for key in keys {
            if own == Some(key.as_str()) && key == session_id {
                // Trusting an older read, a row written meanwhile for this id would go unseen.
                if strict && self.bound_elsewhere(key, session_id)? {
                    return Err(self.busy(
                        "binding session keys",
                        format!("binding key `{key}` was bound meanwhile; accepting again with every check"),
                    ));
                }
                continue;
            }
            let inserted = st
                .execute(params![key, session_id, now_ms])
                .map_err(|e| self.err("binding session keys", e))?;
            if strict && inserted == 0 && self.bound_elsewhere(key, session_id)? {
                return Err(self.busy(
                    "binding session keys",
                    format!(
                        "binding key `{key}` was bound meanwhile; accepting again with every check"
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn insert_asset(&self, a: &NewAsset) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO assets (asset_id, media_type, file_name, sha256, size, data, created_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    a.asset_id,
                    a.media_type,
                    a.file_name,
                    a.sha256,
                    a.data.len() as i64,
                    a.data,
                    a.now_ms
                ])
            })
            .map(drop)
            .map_err(|e| self.err("storing an asset", e))
    }

    /// Inserts run `r` of a session created at `session_created_at_ms` (the key that puts
    /// the runs of new sessions at the end of `runs_by_session`, migration 10).
    pub fn insert_run(&self, r: &NewRun, session_created_at_ms: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO runs (run_id, session_id, connector_kind, connector_name, status, \
                 actor_id, input, metadata, reply_targets, policy, created_at_ms, updated_at_ms, \
                 session_created_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    r.run_id,
                    r.session_id,
                    r.connector_kind.as_str(),
                    r.connector_name,
                    r.actor_id,
                    json_text(&r.input),
                    json_text(&r.metadata),
                    json_text(&r.reply_targets),
                    json_text(&r.policy),
                    r.now_ms,
                    session_created_at_ms,
                ])
            })
            .map(drop)
            .map_err(|e| self.err("creating a run", e))
    }

    pub fn insert_receipt(&self, r: &NewReceipt) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO receipts (receipt_key, connector_kind, connector_name, key_sha256, \
                 fingerprint, status, run_id, session_id, received_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'submitted', ?6, ?7, ?8)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    r.receipt_key,
                    r.connector_kind.as_str(),
                    r.connector_name,
                    r.key_sha256,
                    r.fingerprint,
                    r.run_id,
                    r.session_id,
                    r.now_ms,
                ])
            })
            .map(drop)
            .map_err(|e| self.err("writing a receipt", e))
    }

    fn add_duplicate_hits(&self, key: &str, count: i64, last_ms: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE receipts SET duplicate_hits = duplicate_hits + ?2, \
                 last_duplicate_at_ms = max(coalesce(last_duplicate_at_ms, 0), ?3) \
                 WHERE receipt_key = ?1",
            )
            .and_then(|mut st| st.execute(params![key, count, last_ms]))
            .map(drop)
            .map_err(|e| self.err("counting duplicate hits", e))
    }
}

/// One unit of work for the writer: `apply` runs inside the batch transaction (in its own
/// savepoint only when the batch is rerun after a failure, so `apply` may run twice and must
/// decide from what the transaction sees); `finish` runs once, after the commit, with its
/// result. A job must not answer its caller from `apply`: only `finish` knows whether anything
/// became durable.
/// One unit of work in a group-commit batch.
pub trait WriteJob: Send {
    /// Runs the job inside the writer's open transaction (on the writer's `store`). May run
    /// twice (the savepoint pass after a failure elsewhere in the batch), so it decides from
    /// what the transaction sees.
    fn apply(&mut self, store: &Store) -> Result<(), StoreError>;
    /// Called on every job of a batch before the savepoint pass runs it again: a job whose
    /// first `apply` trusted reads made before the transaction (an accept trusting its
    /// pre-check, relying on the schema to refuse what changed since) checks everything in
    /// the transaction from then on.
    fn check_everything(&mut self) {}
    /// Called once after the batch committed (or failed), off the write lock.
    fn finish(self: Box<Self>, outcome: Result<(), StoreError>);
    /// True when the committed job made a run claimable (a new run, a released claim): the
    /// writer's `after_commit` hook wakes run waiters only then, so claims and completions
    /// passing through the writer do not wake idle workers.
    fn wakes_run_waiters(&self) -> bool {
        false
    }
}

enum Msg {
    Job(Box<dyn WriteJob>),
    /// Jobs that must land in the same batch (an external `/events/batch` request): the
    /// writer takes them together, so they share one commit.
    Jobs(Vec<Box<dyn WriteJob>>),
    DuplicateHit {
        receipt_key: String,
        at_ms: i64,
    },
}

/// Counts duplicate hits on receipts through the writer (see [`GroupWriter::duplicate_counter`]).
#[derive(Clone)]
pub struct DuplicateCounter(Arc<Mutex<Option<mpsc::Sender<Msg>>>>);

impl DuplicateCounter {
    /// Counts one hit on `receipt_key`; written with a later batch.
    pub fn note(&self, receipt_key: &str, at_ms: i64) {
        note_hit(&self.0, receipt_key, at_ms);
    }
}

/// Sends one duplicate hit to the writer, if it still runs.
fn note_hit(sender: &Mutex<Option<mpsc::Sender<Msg>>>, receipt_key: &str, at_ms: i64) {
    if let Some(s) = sender.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        let _ = s.send(Msg::DuplicateHit {
            receipt_key: receipt_key.to_string(),
            at_ms,
        });
    }
}

#[cfg(test)]
impl DuplicateCounter {
    /// A counter attached to no writer (its counts are dropped), for tests.
    pub(crate) fn detached() -> DuplicateCounter {
        DuplicateCounter(Arc::new(Mutex::new(None)))
    }
}

impl std::fmt::Debug for DuplicateCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DuplicateCounter")
    }
}

/// Counters of the writer, for `/metrics` and the benchmark's commits-per-event figure.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Jobs committed (accepted events and other writes).
    pub jobs: AtomicU64,
}

/// How long [`GroupWriter::wait_for_room`] waits at most: past it the request goes on and
/// queues behind the backlog, as it would without the gate.
const ROOM_WAIT: Duration = Duration::from_secs(1);

/// The jobs queued for the writer and not yet taken into a batch, and the wait for room of
/// [`GroupWriter::wait_for_room`].
#[derive(Default)]
struct Backlog {
    jobs: AtomicUsize,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    room: Condvar,
}

impl Backlog {
    fn full(&self) -> bool {
        self.jobs.load(Ordering::SeqCst) >= MAX_BATCH
    }

    fn queued(&self, n: usize) {
        self.jobs.fetch_add(n, Ordering::SeqCst);
    }

    /// `n` jobs left the queue (taken by the writer, or never sent): wakes the waiters once
    /// there is room.
    fn taken(&self, n: usize) {
        self.jobs.fetch_sub(n, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 && !self.full() {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.room.notify_all();
        }
    }

    fn wait_for_room(&self, at_most: Duration) {
        if !self.full() {
            return;
        }
        let deadline = Instant::now() + at_most;
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.full() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            guard = match self.room.wait_timeout(guard, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        drop(guard);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The group-commit writer thread. See the module docs.
pub struct GroupWriter {
    /// `state.db`'s path, for the error a job gets once the writer has stopped.
    db_path: String,
    /// Whether commits succeed; see the module docs.
    health: Arc<StorageHealth>,
    /// Shared with every [`DuplicateCounter`]; `shutdown` empties it, which closes the channel
    /// whoever still holds a counter.
    sender: Arc<Mutex<Option<mpsc::Sender<Msg>>>>,
    handle: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<WriterStats>,
    backlog: Arc<Backlog>,
}

/// Called after every successful commit with the number of jobs it carried.
pub type AfterCommit = Box<dyn Fn(usize) + Send>;

impl GroupWriter {
    /// Opens the writer's own connection to the state root and starts the thread.
    ///
    /// WAL checkpoints are taken off the writer's path: its connection does not checkpoint
    /// automatically, and a checkpointer thread with its own connection runs PASSIVE
    /// checkpoints (which never block the writer) after every `CHECKPOINT_EVERY` commits.
    pub fn start(root: &Path, after_commit: AfterCommit) -> Result<GroupWriter, StoreError> {
        let store = Store::open(root)?;
        store
            .conn()
            .execute_batch(&format!(
                "PRAGMA cache_size = -{WRITER_CACHE_KIB}; PRAGMA wal_autocheckpoint = 0;"
            ))
            .map_err(|e| store.err("tuning the writer connection", e))?;
        let db_path = store.db_path.clone();
        let health = Arc::clone(store.health());
        let checkpointer = super::Checkpointer::start(Store::open(root)?);
        let (sender, receiver) = mpsc::channel();
        let stats = Arc::new(WriterStats::default());
        let thread_stats = Arc::clone(&stats);
        let backlog = Arc::new(Backlog::default());
        let thread_backlog = Arc::clone(&backlog);
        let handle = std::thread::Builder::new()
            .name("ingress-writer".into())
            .spawn(move || {
                writer_loop(
                    store,
                    receiver,
                    thread_stats,
                    &thread_backlog,
                    after_commit,
                    &checkpointer,
                );
                checkpointer.stop();
            })
            .map_err(|e| StoreError::Io {
                path: root.display().to_string(),
                source: e,
            })?;
        Ok(GroupWriter {
            db_path,
            health,
            sender: Arc::new(Mutex::new(Some(sender))),
            handle: Mutex::new(Some(handle)),
            stats,
            backlog,
        })
    }

    /// Queues a job. When the writer has shut down the job is finished at once with an error.
    pub fn submit<J: WriteJob + 'static>(&self, job: Box<J>) {
        self.submit_dyn(job)
    }

    fn submit_dyn(&self, job: Box<dyn WriteJob>) {
        self.send_jobs(Msg::Job(job));
    }

    /// Queues several jobs as one message, so they are committed in the same batch (one
    /// fsync for all of them). Each is still applied and finished on its own.
    pub fn submit_all(&self, jobs: Vec<Box<dyn WriteJob>>) {
        match jobs.len() {
            0 => {}
            1 => self.send_jobs(Msg::Job(jobs.into_iter().next().expect("one job"))),
            _ => self.send_jobs(Msg::Jobs(jobs)),
        }
    }

    /// Sends a job message; when the writer has stopped, its jobs are finished at once with
    /// an error.
    fn send_jobs(&self, msg: Msg) {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let count = match &msg {
            Msg::Job(_) => 1,
            Msg::Jobs(jobs) => jobs.len(),
            Msg::DuplicateHit { .. } => 0,
        };
        let unsent = match sender {
            Some(s) => {
                self.backlog.queued(count);
                match s.send(msg) {
                    Ok(()) => return,
                    Err(e) => {
                        self.backlog.taken(count);
                        e.0
                    }
                }
            }
            None => msg,
        };
        let jobs = match unsent {
            Msg::Job(job) => vec![job],
            Msg::Jobs(jobs) => jobs,
            Msg::DuplicateHit { .. } => Vec::new(),
        };
        for job in jobs {
            job.finish(Err(StoreError::Busy {
                path: self.db_path.clone(),
                op: "accepting an event".into(),
                detail: Some("the daemon is shutting down and its writer has stopped".into()),
            }));
        }
    }

    /// Counts a duplicate hit on a receipt; written with a later batch, never on this path.
    pub fn note_duplicate(&self, receipt_key: &str, at_ms: i64) {
        note_hit(&self.sender, receipt_key, at_ms);
    }

    /// A handle that counts duplicate hits from anywhere, including the writer thread itself (a
    /// re-send answered when its original commits). It does not keep the writer running: once
    /// [`GroupWriter::shutdown`] has run, its counts are dropped.
    pub fn duplicate_counter(&self) -> DuplicateCounter {
        DuplicateCounter(Arc::clone(&self.sender))
    }

    /// The state database this writer writes (for error messages).
    pub fn db_path(&self) -> &str {
        &self.db_path
    }

    /// Waits (at most [`ROOM_WAIT`]) while a whole batch of jobs is already queued for the
    /// writer. Called by a request thread before it parses a request: when the writer is the
    /// bottleneck, work done ahead of it only lengthens its queue and takes the CPU it needs.
    pub fn wait_for_room(&self) {
        self.backlog.wait_for_room(ROOM_WAIT);
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Whether the state database commits (what `/readyz` reports).
    pub fn health(&self) -> &StorageHealth {
        &self.health
    }

    /// Stops taking jobs, lets the thread write what is queued (and the pending duplicate
    /// counts), and joins it.
    pub fn shutdown(&self) {
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = self.handle.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = handle.join();
        }
    }
}

fn writer_loop(
    store: Store,
    receiver: mpsc::Receiver<Msg>,
    stats: Arc<WriterStats>,
    backlog: &Backlog,
    after_commit: AfterCommit,
    checkpointer: &super::Checkpointer,
) {
    let mut duplicates: HashMap<String, (i64, i64)> = HashMap::new();
    // When the oldest pending duplicate count arrived: it is written at most DUPLICATE_FLUSH
    // later, even under a steady stream of duplicates and no new events.
    let mut pending_since: Option<Instant> = None;
    // The last commit attempt (batch or probe): while the database is failing, the writer
    // probes when it has been idle for PROBE_EVERY since then.
    let mut last_attempt = Instant::now();
    let mut open = true;
    while open {
        // Wakes at least every PROBE_EVERY to notice a failure another thread recorded (the
        // delivery dispatcher, a run claim) even when no event arrives.
        let flush_at = pending_since.map(|since| since + DUPLICATE_FLUSH);
        let probe_at = last_attempt + PROBE_EVERY;
        let wake_at = flush_at.map_or(probe_at, |f| f.min(probe_at));
        let first = receiver.recv_timeout(wake_at.saturating_duration_since(Instant::now()));
        let mut jobs: Vec<Box<dyn WriteJob>> = Vec::new();
        let mut take = |msg: Msg, jobs: &mut Vec<Box<dyn WriteJob>>| match msg {
            Msg::Job(job) => {
                jobs.push(job);
                backlog.taken(1);
            }
            Msg::Jobs(batch) => {
                backlog.taken(batch.len());
                jobs.extend(batch);
            }
            Msg::DuplicateHit { receipt_key, at_ms } => {
                pending_since.get_or_insert_with(Instant::now);
                let entry = duplicates.entry(receipt_key).or_insert((0, at_ms));
                entry.0 += 1;
                entry.1 = entry.1.max(at_ms);
            }
        };
        match first {
            Ok(msg) => {
                take(msg, &mut jobs);
                while jobs.len() < MAX_BATCH {
                    match receiver.try_recv() {
                        Ok(msg) => take(msg, &mut jobs),
                        Err(_) => break,
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        // Pending counts ride along with any batch, and are written alone once they are old.
        let due = pending_since.is_some_and(|t| t.elapsed() >= DUPLICATE_FLUSH);
        let write_duplicates = !duplicates.is_empty() && (!jobs.is_empty() || due || !open);
        if jobs.is_empty() && !write_duplicates {
            if store.health().is_failing() && last_attempt.elapsed() >= PROBE_EVERY {
                probe(&store);
                last_attempt = Instant::now();
            } else if !store.health().is_failing() {
                // Healthy and idle: the next wake is a full PROBE_EVERY away.
                last_attempt = Instant::now();
            }
            continue;
        }
        last_attempt = Instant::now();
        let dups = if write_duplicates {
            pending_since = None;
            std::mem::take(&mut duplicates)
        } else {
            HashMap::new()
        };
        commit_batch(&store, jobs, &dups, &stats, &after_commit);
        if stats.commits.load(Ordering::Relaxed) % CHECKPOINT_EVERY == 0 {
            checkpointer.nudge();
        }
    }
}

/// Runs one statement through the connection's statement cache: the writer issues the same
/// transaction-control statements for every job and batch, and re-parsing them showed up in
/// profiles.
fn cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Runs one batch in one transaction and finishes every job with the commit's result.
///
/// Fast path: every job runs directly in the transaction. Only when a job fails (rare: a real
/// database error, since refusals are decided before any write) is the whole transaction
/// rolled back and the batch run again with each job in its own SAVEPOINT, so the failed job
/// is undone alone. Savepoints on every job cost the writer a sub-journal copy of each page it
/// touches. Jobs decide from what the transaction sees, so running one twice is safe.
fn commit_batch(
    store: &Store,
    mut jobs: Vec<Box<dyn WriteJob>>,
    duplicates: &HashMap<String, (i64, i64)>,
    stats: &WriterStats,
    after_commit: &AfterCommit,
) {
    let lock = super::process_write_lock();
    let mut result = run_batch(store, &mut jobs, duplicates, false);
    if matches!(result, Ok(None)) {
        result = run_batch(store, &mut jobs, duplicates, true);
    }
    // Answers are sent without holding the write lock.
    drop(lock);
    match result {
        Ok(Some(job_errors)) => {
            // Something was written (a job or duplicate counts), so the disk took it. A
            // failure was recorded where it was classified; only success is told here.
            if !duplicates.is_empty() || job_errors.iter().any(Option::is_none) {
                store.health().record_success();
            }
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats.jobs.fetch_add(jobs.len() as u64, Ordering::Relaxed);
            // Waiters are woken before the jobs are answered, so a caller that sees its answer
            // can rely on the wake-up having happened.
            let waking = jobs
                .iter()
                .zip(&job_errors)
                .filter(|(job, err)| err.is_none() && job.wakes_run_waiters())
                .count();
            if waking > 0 {
                after_commit(waking);
            }
            for (job, err) in jobs.into_iter().zip(job_errors) {
                job.finish(err.map_or(Ok(()), Err));
            }
        }
        Ok(None) => unreachable!("the savepoint pass isolates failed jobs"),
        // Nothing was written: every job gets the transaction's own error, classified by
        // SQLite's code (a full disk stays a full disk).
        Err(e) => {
            for job in jobs {
                job.finish(Err(e.duplicate()));
            }
        }
    }
}

/// `store_meta` key of the probe's row.
const PROBE_KEY: &str = "storage_probe_at_ms";

/// One small commit that needs new space (a changed row): does the database commit again?
/// Its success clears the failure; its failure is recorded where it is classified.
fn probe(store: &Store) {
    let conn = store.conn();
    let _lock = super::process_write_lock();
    let now = crate::model::now_ms().to_string();
    let written = cached(conn, "BEGIN IMMEDIATE")
        .and_then(|()| {
            conn.prepare_cached(
                "INSERT INTO store_meta (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![PROBE_KEY, now.as_bytes()])
        })
        .and_then(|_| cached(conn, "COMMIT"));
    match written {
        Ok(()) => store.health().record_success(),
        Err(e) => {
            let _ = cached(conn, "ROLLBACK");
            // Classifying records the failure (and keeps the episode's start).
            let _ = store.err("probing whether the state database commits again", e);
        }
    }
}

/// One attempt at a batch's transaction. With `savepoints`, each job runs in its own SAVEPOINT
/// and a failed job is rolled back alone (its error is returned in its slot). Without, the
/// first failed job rolls back the whole transaction and `Ok(None)` asks for the savepoint
/// pass. `Err` means the transaction itself failed (nothing was written).
fn run_batch(
    store: &Store,
    jobs: &mut [Box<dyn WriteJob>],
    duplicates: &HashMap<String, (i64, i64)>,
    savepoints: bool,
) -> Result<Option<Vec<Option<StoreError>>>, StoreError> {
    let conn = store.conn();
    let ops = store.ingress_ops();
    let mut job_errors: Vec<Option<StoreError>> = Vec::with_capacity(jobs.len());
    let result = (|| -> Result<bool, StoreError> {
        cached(conn, "BEGIN IMMEDIATE")
            .map_err(|e| store.err("starting the ingress transaction", e))?;
        for job in jobs.iter_mut() {
            if !savepoints {
                if job.apply(store).is_err() {
                    return Ok(false);
                }
                job_errors.push(None);
                continue;
            }
            job.check_everything();
            cached(conn, "SAVEPOINT job").map_err(|e| store.err("starting a savepoint", e))?;
            match job.apply(store) {
                Ok(()) => {
                    cached(conn, "RELEASE job")
                        .map_err(|e| store.err("releasing a savepoint", e))?;
                    job_errors.push(None);
                }
                // SQLite rolls the whole transaction back by itself after some errors in a
                // statement (SQLITE_FULL, SQLITE_IOERR, …): then nothing of the batch is
                // written, there is no savepoint left to roll back to, and the job's own
                // error is the batch's.
                Err(e) if conn.is_autocommit() => return Err(e),
                Err(e) => {
                    cached(conn, "ROLLBACK TO job")
                        .and_then(|()| cached(conn, "RELEASE job"))
                        .map_err(|e| store.err("rolling back a savepoint", e))?;
                    job_errors.push(Some(e));
                }
            }
        }
        for (key, (count, last_ms)) in duplicates {
            ops.add_duplicate_hits(key, *count, *last_ms)?;
        }
        cached(conn, "COMMIT").map_err(|e| store.err("committing the ingress transaction", e))?;
        Ok(true)
    })();
    match result {
        Ok(true) => Ok(Some(job_errors)),
        Ok(false) => {
            let _ = cached(conn, "ROLLBACK");
            Ok(None)
        }
        Err(e) => {
            let _ = cached(conn, "ROLLBACK");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::run::{NewSession, RunInput};
    use std::sync::mpsc::Sender;

    #[test]
    fn a_snapshot_reads_each_binding_and_session_once_and_forgets_them_after() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let other = Store::open(tmp.path()).unwrap();
        let writes = other.ingress_ops();
        let session = |id: &str| NewSession {
            session_id: id.into(),
            created_by: "test".into(),
            policy: PolicySnapshot::default(),
            reply_targets: Vec::new(),
            metadata: Default::default(),
            now_ms: 1,
        };
        writes.insert_session(&session("s1"), false).unwrap();
        writes
            .bind_keys("s1", &["k1".into()], None, false, 1)
            .unwrap();
        let ops = store.ingress_ops();
        let keys = ["k1".to_string(), "k2".to_string()];
        ops.in_read_snapshot(|| {
            let first = ops.bound_sessions(&keys).unwrap();
            assert_eq!(first, vec![("k1".to_string(), "s1".to_string())]);
            assert!(ops.session("s2").unwrap().is_none());
            assert!(ops.session("s1").unwrap().is_some());
            // Asked again inside the snapshot: the memoised answers, unchanged.
            assert_eq!(ops.bound_sessions(&keys).unwrap(), first);
            assert!(ops.session("s1").unwrap().is_some());
        });
        // Another connection binds k2 and creates s2; the next snapshot (and a read outside
        // any snapshot) sees both.
        writes.insert_session(&session("s2"), false).unwrap();
        writes
            .bind_keys("s2", &["k2".into()], None, false, 1)
            .unwrap();
        ops.in_read_snapshot(|| {
            assert_eq!(ops.bound_sessions(&keys).unwrap().len(), 2);
            assert!(ops.session("s2").unwrap().is_some());
        });
        assert_eq!(ops.bound_sessions(&keys[1..]).unwrap().len(), 1);
    }

    #[test]
    fn a_read_snapshot_ends_itself_and_leaves_an_open_transaction_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let ops = store.ingress_ops();
        let found = ops.in_read_snapshot(|| {
            assert!(
                !store.conn().is_autocommit(),
                "the reads share one transaction"
            );
            ops.receipt("http:orders:absent").unwrap()
        });
        assert_eq!(found, None);
        assert!(store.conn().is_autocommit(), "the snapshot was ended");
        // Inside a caller's transaction the reads join it and it stays open.
        store.conn().execute_batch("BEGIN").unwrap();
        ops.in_read_snapshot(|| ops.receipt("http:orders:absent").unwrap());
        assert!(!store.conn().is_autocommit());
        store.conn().execute_batch("ROLLBACK").unwrap();
    }

    struct Insert {
        run_id: String,
        fail: bool,
        done: Sender<Result<(), String>>,
    }

    impl WriteJob for Insert {
        fn apply(&mut self, store: &Store) -> Result<(), StoreError> {
            let ops = store.ingress_ops();
            let ops = &ops;
            if ops.session("s1")?.is_none() {
                ops.insert_session(
                    &NewSession {
                        session_id: "s1".into(),
                        created_by: "test".into(),
                        policy: PolicySnapshot::default(),
                        reply_targets: Vec::new(),
                        metadata: Default::default(),
                        now_ms: 1,
                    },
                    false,
                )?;
            }
            ops.insert_run(
                &NewRun {
                    run_id: self.run_id.clone(),
                    session_id: "s1".into(),
                    connector_kind: ConnectorKind::Http,
                    connector_name: "orders".into(),
                    actor_id: "a".into(),
                    input: RunInput {
                        content: Some("hi".into()),
                        ..Default::default()
                    },
                    metadata: Default::default(),
                    reply_targets: Vec::new(),
                    policy: PolicySnapshot::default(),
                    now_ms: 1,
                },
                1,
            )?;
            if self.fail {
                // Simulate a failure after a partial write: the savepoint must undo the run.
                return Err(StoreError::Busy {
                    path: "t".into(),
                    op: "forced".into(),
                    detail: Some("a simulated failure".into()),
                });
            }
            Ok(())
        }

        fn finish(self: Box<Self>, outcome: Result<(), StoreError>) {
            let _ = self.done.send(outcome.map_err(|e| e.to_string()));
        }
    }

    #[test]
    fn batch_commits_and_isolates_failed_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let writer = GroupWriter::start(dir.path(), Box::new(|_| {})).unwrap();
        let (tx, rx) = mpsc::channel();
        for (i, fail) in [(1, false), (2, true), (3, false)] {
            writer.submit(Box::new(Insert {
                run_id: format!("r{i}"),
                fail,
                done: tx.clone(),
            }));
        }
        let results: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            2,
            "{results:?}"
        );
        writer.shutdown();
        let store = Store::open(dir.path()).unwrap();
        let n: i64 = store
            .conn()
            .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        assert!(writer.stats().commits.load(Ordering::Relaxed) >= 1);
        // After shutdown a job is refused, not lost silently.
        writer.submit(Box::new(Insert {
            run_id: "r9".into(),
            fail: false,
            done: tx,
        }));
        assert!(rx.recv().unwrap().is_err());
    }

    #[test]
    fn duplicate_hits_are_flushed_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let writer = GroupWriter::start(dir.path(), Box::new(|_| {})).unwrap();
        let (tx, rx) = mpsc::channel();
        writer.submit(Box::new(Insert {
            run_id: "r1".into(),
            fail: false,
            done: tx,
        }));
        rx.recv().unwrap().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .ingress_ops()
            .conn
            .execute(
                "INSERT INTO receipts (receipt_key, connector_kind, connector_name, key_sha256, fingerprint, status, run_id, session_id, received_at_ms) VALUES ('k','http','orders','d','f','submitted','r1','s1',1)",
                [],
            )
            .unwrap();
        writer.note_duplicate("k", 5);
        writer.note_duplicate("k", 7);
        writer.shutdown();
        let r = store.ingress_ops().receipt("k").unwrap().unwrap();
        assert_eq!(r.duplicate_hits, 2);
        assert_eq!(r.last_duplicate_at_ms, Some(7));
    }
}

#[cfg(test)]
mod backlog_tests {
    use super::*;

    /// Polls `cond` until it holds; panics after `within`.
    fn eventually(within: Duration, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + within;
        while !cond() {
            assert!(Instant::now() < deadline, "condition not reached in time");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_request_waits_while_a_whole_batch_is_queued_and_goes_on_once_the_writer_takes_it() {
        let backlog = Arc::new(Backlog::default());
        // Below a whole batch nothing waits (a long limit would hang the test otherwise).
        backlog.queued(MAX_BATCH - 1);
        backlog.wait_for_room(Duration::from_secs(600));

        backlog.queued(1);
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let backlog = Arc::clone(&backlog);
            std::thread::spawn(move || {
                backlog.wait_for_room(Duration::from_secs(600));
                tx.send(()).unwrap();
            })
        };
        eventually(Duration::from_secs(30), || {
            backlog.waiters.load(Ordering::SeqCst) == 1
        });
        assert!(
            rx.try_recv().is_err(),
            "the request went on with a full queue"
        );
        // The writer takes one job: there is room, and the waiter is woken.
        backlog.taken(1);
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the waiter was not woken when the writer took a job");
        waiter.join().unwrap();
        assert_eq!(backlog.waiters.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_request_stops_waiting_at_its_limit_when_the_writer_never_catches_up() {
        let backlog = Backlog::default();
        backlog.queued(MAX_BATCH * 2);
        let started = Instant::now();
        backlog.wait_for_room(Duration::from_millis(20));
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert_eq!(backlog.waiters.load(Ordering::SeqCst), 0);
        assert_eq!(backlog.jobs.load(Ordering::SeqCst), MAX_BATCH * 2);
    }

    #[test]
    fn the_backlog_counts_every_job_a_writer_is_sent_and_takes() {
        let dir = tempfile::tempdir().unwrap();
        let writer = GroupWriter::start(dir.path(), Box::new(|_| {})).unwrap();
        let (tx, rx) = mpsc::channel();
        for _ in 0..3 {
            let tx = tx.clone();
            writer.submit(Box::new(Probe(Some(tx))));
        }
        for _ in 0..3 {
            rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
        }
        assert_eq!(writer.backlog.jobs.load(Ordering::SeqCst), 0);
        writer.shutdown();
        // After shutdown a job is finished at once with an error and leaves no count behind.
        writer.submit(Box::new(Probe(Some(tx))));
        assert!(rx.recv_timeout(Duration::from_secs(30)).unwrap().is_err());
        assert_eq!(writer.backlog.jobs.load(Ordering::SeqCst), 0);
    }

    /// A job that writes nothing and reports its outcome.
    struct Probe(Option<mpsc::Sender<Result<(), String>>>);

    impl WriteJob for Probe {
        fn apply(&mut self, _store: &Store) -> Result<(), StoreError> {
            Ok(())
        }

        fn finish(self: Box<Self>, outcome: Result<(), StoreError>) {
            if let Some(tx) = &self.0 {
                let _ = tx.send(outcome.map_err(|e| e.to_string()));
            }
        }
    }
}
