//! Runs after their creation (SPEC §11.1): listing, the claim lease, outputs, completion and
//! failure. Ingress creates sessions and runs in its own accepting transaction
//! (`store::writer`); everything that happens to a run afterwards happens here, so the
//! `queued → claimed → completed | failed` rules live in one file. Control-plane session reads
//! and writes are in `store::sessions` ([`SessionChanges`] and [`CONTROL_PLANE_CREATOR`] are
//! re-exported here for existing callers).
//!
//! Claiming is one short `BEGIN IMMEDIATE` transaction around a single `UPDATE … RETURNING`, so
//! two claimers (API long-polls, handler workers, other processes on the same state root) never
//! get the same run. A claim is a lease: once `claim_expires_at_ms` has passed, the run is
//! claimable again, exactly as if it were still queued. No write lock is held across a handler's
//! work or any network I/O.
//!
//! Recording an output also queues its deliveries (one per reply target, `store::deliveries`)
//! in the SAME transaction: after a crash there is never an output without its deliveries. The
//! `*_queued` variants return which deliveries were created so the caller can wake the delivery
//! workers.
//!
//! JSON columns are written with `serde_json` from the `model` types and read back into them:
//! `input` is a [`RunInput`], `metadata` a JSON object, `reply_targets` an array of
//! [`ReplyTarget`], `policy` a [`PolicySnapshot`](crate::model::run::PolicySnapshot);
//! `sessions.capability_scope`, `credential_scope` and `metadata` are JSON objects.

pub use super::sessions::{SessionChanges, CONTROL_PLANE_CREATOR};

use rusqlite::types::Type;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::deliveries::Enqueued;
use super::{Store, StoreError};
use crate::model::reply::ReplyTarget;
use crate::model::run::{new_id, Run, RunInput, RunOutput, RunStatus};
use crate::model::ConnectorKind;

/// Default number of runs [`Store::list_runs`] returns.
pub const DEFAULT_LIST_LIMIT: u32 = 50;
/// The most runs one [`Store::list_runs`] call returns.
pub const MAX_LIST_LIMIT: u32 = 500;

/// Why a run or session operation was refused. Callers branch on the variant (the control
/// plane maps them to 404/409, handler workers log and move on); messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No run has this id.
    #[error("run `{run_id}` does not exist")]
    NotFound { run_id: String },
    /// No session has this id.
    #[error("session `{session_id}` does not exist; create it with PUT /v1/sessions/{{id}}")]
    SessionNotFound { session_id: String },
    /// The run is not claimed (or, when an owner was given, not claimed by that owner), so it
    /// cannot take output or be finished.
    #[error("run `{run_id}` is {status}{}; only a claimed run takes output or is completed/failed (claim it with POST /v1/runs/claim)", owner_note(.claim_owner))]
    Conflict {
        run_id: String,
        status: RunStatus,
        /// The current claim owner when the refusal was about ownership.
        claim_owner: Option<String>,
    },
    /// A caller asked to finish a run into a status that is not final (a bug in the caller).
    #[error("cannot finish run `{run_id}` as {to}; a run finishes as completed or failed")]
    InvalidTransition { run_id: String, to: RunStatus },
    /// The database failed (busy, corrupt, I/O).
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn owner_note(owner: &Option<String>) -> String {
    match owner {
        Some(owner) => format!(" by `{owner}`, not by this worker"),
        None => String::new(),
    }
}

/// Filters for [`Store::list_runs`]. Every member narrows the result; the default lists the
/// newest [`DEFAULT_LIST_LIMIT`] runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    /// `(kind, name)` of the connector that accepted the run.
    pub connector: Option<(ConnectorKind, String)>,
    pub session_id: Option<String>,
    /// Only runs created at or after this unix ms.
    pub since_ms: Option<i64>,
    /// At most this many runs (default [`DEFAULT_LIST_LIMIT`], capped at [`MAX_LIST_LIMIT`]).
    pub limit: Option<u32>,
    /// The time that decides whether a claim has expired (Unix ms): a run whose claim expired
    /// before it is listed as `queued` (SPEC §11.1: an expired claim returns the run to the
    /// queue), under `status=queued` and not under `status=claimed`. `None` reads the stored
    /// status as is.
    pub now_ms: Option<i64>,
}

/// One output to record for a claimed run. At least one of `content` and `parts` should be
/// present; the control plane and the handlers check that before calling.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewRunOutput {
    pub content: Option<String>,
    pub parts: Option<Vec<Value>>,
    /// Explicit override targets (already validated); `None` means "the run's snapshot, else the
    /// session's defaults" at delivery time.
    pub reply_targets: Option<Vec<ReplyTarget>>,
}

/// The run columns in the order [`run_from_row`] reads them.
const RUN_COLUMNS: &str = "run_id, session_id, connector_kind, connector_name, status, actor_id, \
     input, metadata, reply_targets, policy, created_at_ms, updated_at_ms, claim_owner, \
     claim_expires_at_ms, claim_count, finished_at_ms, error";

const OUTPUT_COLUMNS: &str = "output_id, run_id, content, parts, reply_targets, created_at_ms";

impl Store {
    /// One run by id.
    pub fn get_run(&self, run_id: &str) -> Result<Option<Run>, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?1"),
                [run_id],
                run_from_row,
            )
            .optional()
            .map_err(|e| self.err("reading a run", e))
    }

    /// Runs matching `filter`, newest first.
    pub fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>, StoreError> {
        let (sql, values) = run_list_query(filter);
        let mut stmt = self
            .conn()
            .prepare_cached(&sql)
            .map_err(|e| self.err("listing runs", e))?;
        let rows = stmt
            .query_map(params_from_iter(values), run_from_row)
            .map_err(|e| self.err("listing runs", e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err("listing runs", e))
    }

    /// Claims the oldest claimable run for `owner` until `now_ms + lease_ms`: a `queued` run, or
    /// a `claimed` one whose lease has expired (a crashed or stalled worker's run returns to the
    /// queue this way). `connector` restricts the claim to one connector's runs. `None` when
    /// nothing is claimable.
    pub fn claim_run(
        &self,
        owner: &str,
        lease_ms: i64,
        connector: Option<(ConnectorKind, &str)>,
        now_ms: i64,
    ) -> Result<Option<Run>, StoreError> {
        self.claim_runs(owner, lease_ms, 1, connector, now_ms)
            .map(|runs| runs.into_iter().next())
    }

    /// [`Store::claim_run`] for up to `max` runs at once (oldest first), in one transaction.
    pub fn claim_runs(
        &self,
        owner: &str,
        lease_ms: i64,
        max: u32,
        connector: Option<(ConnectorKind, &str)>,
        now_ms: i64,
    ) -> Result<Vec<Run>, StoreError> {
        let op = "claiming runs";
        let tx = self.write_tx(op)?;
        let runs = self.claim_runs_in(owner, lease_ms, max, connector, now_ms)?;
        tx.commit().map_err(|e| self.err(op, e))?;
        Ok(runs)
    }

    /// The claim itself, inside a transaction the caller holds (the group-commit writer's, or
    /// [`Store::claim_runs`]'s own).
    pub(crate) fn claim_runs_in(
        &self,
        owner: &str,
        lease_ms: i64,
        max: u32,
        connector: Option<(ConnectorKind, &str)>,
        now_ms: i64,
    ) -> Result<Vec<Run>, StoreError> {
        let op = "claiming runs";
        let (kind, name) = match connector {
            Some((kind, name)) => (Some(kind.as_str()), Some(name)),
            None => (None, None),
        };
        let mut stmt = self
            .conn()
            .prepare_cached(&format!(
                "UPDATE runs SET status = 'claimed', claim_owner = ?1, claim_expires_at_ms = ?2,
                     claim_count = claim_count + 1, updated_at_ms = ?3
                 WHERE seq IN (
                     SELECT seq FROM runs
                     -- The first term lets the planner walk the small `runs_open` index.
                     WHERE status IN ('queued', 'claimed')
                       AND (status = 'queued'
                            OR (status = 'claimed' AND claim_expires_at_ms < ?3))
                       AND (?4 IS NULL OR (connector_kind = ?4 AND connector_name = ?5))
                     ORDER BY seq LIMIT ?6)
                 RETURNING {RUN_COLUMNS}"
            ))
            .map_err(|e| self.err(op, e))?;
        let rows = stmt
            .query_map(
                params![
                    owner,
                    now_ms.saturating_add(lease_ms),
                    now_ms,
                    kind,
                    name,
                    i64::from(max.max(1))
                ],
                run_from_row,
            )
            .map_err(|e| self.err(op, e))?;
        let mut runs = rows
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(op, e))?;
        // RETURNING gives rows in no promised order; hand them out oldest first.
        runs.sort_by_key(|r| r.created_at_ms);
        Ok(runs)
    }

    /// The earliest lease expiry among claimed runs (optionally of one connector): when an
    /// expired claim will make a run claimable again without anyone being notified. Waiters use
    /// it to bound their wait.
    pub fn next_claim_expiry(
        &self,
        connector: Option<(ConnectorKind, &str)>,
    ) -> Result<Option<i64>, StoreError> {
        let (kind, name) = match connector {
            Some((kind, name)) => (Some(kind.as_str()), Some(name)),
            None => (None, None),
        };
        self.conn()
            .query_row(
                "SELECT MIN(claim_expires_at_ms) FROM runs
                 WHERE status IN ('queued', 'claimed') AND status = 'claimed'
                   AND (?1 IS NULL OR (connector_kind = ?1 AND connector_name = ?2))",
                params![kind, name],
                |row| row.get(0),
            )
            .map_err(|e| self.err("reading claim expiries", e))
    }

    /// Records one output of a claimed run and queues its deliveries, in one transaction.
    /// `owner`, when given, must be the run's current claim owner (handler workers pass theirs
    /// so a run whose lease expired and was claimed by someone else is not written to twice);
    /// the control plane passes `None`.
    pub fn add_output(
        &self,
        run_id: &str,
        owner: Option<&str>,
        output: &NewRunOutput,
        now_ms: i64,
    ) -> Result<RunOutput, RunError> {
        self.add_output_queued(run_id, owner, output, now_ms)
            .map(|(recorded, _)| recorded)
    }

    /// [`Store::add_output`], also returning the deliveries it queued: wake the delivery
    /// workers when [`Enqueued::has_pending`].
    pub fn add_output_queued(
        &self,
        run_id: &str,
        owner: Option<&str>,
        output: &NewRunOutput,
        now_ms: i64,
    ) -> Result<(RunOutput, Enqueued), RunError> {
        let op = "recording run output";
        let tx = self.write_tx(op)?;
        let written = self.add_output_in(run_id, owner, output, now_ms)?;
        tx.commit().map_err(|e| self.err(op, e))?;
        Ok(written)
    }

    /// [`Store::add_output_queued`] inside a transaction the caller holds.
    pub(crate) fn add_output_in(
        &self,
        run_id: &str,
        owner: Option<&str>,
        output: &NewRunOutput,
        now_ms: i64,
    ) -> Result<(RunOutput, Enqueued), RunError> {
        let tx = self.conn();
        self.check_claimed(tx, run_id, owner)?;
        let recorded = self.insert_output(tx, run_id, output, now_ms)?;
        let enqueued = self.enqueue_output(tx, &recorded, now_ms)?;
        Ok((recorded, enqueued))
    }

    /// Ends a claimed run as `completed` or `failed` (with `error`), clearing its claim. Refused
    /// with [`RunError::Conflict`] naming the current status when the run is not claimed (by
    /// `owner`, when given).
    pub fn finish_run(
        &self,
        run_id: &str,
        owner: Option<&str>,
        status: RunStatus,
        error: Option<&str>,
        now_ms: i64,
    ) -> Result<Run, RunError> {
        self.finish_claimed(run_id, owner, None, status, error, now_ms)
            .map(|(run, _, _)| run)
    }

    /// Records `output` (if any), queues its deliveries and completes the run in ONE
    /// transaction, so a crash never leaves an output of a run that a later worker will handle
    /// again, nor an output without its deliveries. Used by the handlers.
    pub fn complete_with_output(
        &self,
        run_id: &str,
        owner: Option<&str>,
        output: Option<&NewRunOutput>,
        now_ms: i64,
    ) -> Result<(Run, Option<RunOutput>), RunError> {
        self.complete_with_output_queued(run_id, owner, output, now_ms)
            .map(|(run, recorded, _)| (run, recorded))
    }

    /// [`Store::complete_with_output`], also returning the deliveries it queued (empty without
    /// an output): wake the delivery workers when [`Enqueued::has_pending`].
    pub fn complete_with_output_queued(
        &self,
        run_id: &str,
        owner: Option<&str>,
        output: Option<&NewRunOutput>,
        now_ms: i64,
    ) -> Result<(Run, Option<RunOutput>, Enqueued), RunError> {
        self.finish_claimed(run_id, owner, output, RunStatus::Completed, None, now_ms)
    }

    /// Gives a claimed run back to the queue (a worker shutting down before it finished the
    /// run). The claim count stays as it was, so repeated hand-backs remain visible.
    pub fn release_run(&self, run_id: &str, owner: &str, now_ms: i64) -> Result<Run, RunError> {
        let op = "releasing a run";
        let tx = self.write_tx(op)?;
        let run = self.release_run_in(run_id, owner, now_ms)?;
        tx.commit().map_err(|e| self.err(op, e))?;
        Ok(run)
    }

    /// [`Store::release_run`] inside a transaction the caller holds.
    pub(crate) fn release_run_in(
        &self,
        run_id: &str,
        owner: &str,
        now_ms: i64,
    ) -> Result<Run, RunError> {
        let op = "releasing a run";
        let tx = self.conn();
        self.check_claimed(tx, run_id, Some(owner))?;
        let run = tx
            .query_row(
                &format!(
                    "UPDATE runs SET status = 'queued', claim_owner = NULL,
                         claim_expires_at_ms = NULL, updated_at_ms = ?2
                     WHERE run_id = ?1 RETURNING {RUN_COLUMNS}"
                ),
                params![run_id, now_ms],
                run_from_row,
            )
            .map_err(|e| self.err(op, e))?;
        Ok(run)
    }

    /// Every output of a run, oldest first.
    pub fn list_outputs(&self, run_id: &str) -> Result<Vec<RunOutput>, StoreError> {
        let op = "listing run outputs";
        let mut stmt = self
            .conn()
            .prepare_cached(&format!(
                "SELECT {OUTPUT_COLUMNS} FROM run_outputs WHERE run_id = ?1 ORDER BY seq"
            ))
            .map_err(|e| self.err(op, e))?;
        let rows = stmt
            .query_map([run_id], output_from_row)
            .map_err(|e| self.err(op, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(op, e))
    }

    /// Inside `tx`: fails unless `run_id` is claimed (by `owner`, when given).
    fn check_claimed(
        &self,
        tx: &Connection,
        run_id: &str,
        owner: Option<&str>,
    ) -> Result<(), RunError> {
        // Hot statements of the group-commit writer go through the statement cache.
        let found: Option<(String, Option<String>)> = tx
            .prepare_cached("SELECT status, claim_owner FROM runs WHERE run_id = ?1")
            .and_then(|mut st| {
                st.query_row([run_id], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()
            })
            .map_err(|e| self.err("reading a run's status", e))?;
        let Some((status, claim_owner)) = found else {
            return Err(RunError::NotFound {
                run_id: run_id.to_string(),
            });
        };
        let status = RunStatus::parse(&status).ok_or_else(|| {
            self.err(
                "reading a run's status",
                rusqlite::Error::FromSqlConversionFailure(
                    0,
                    Type::Text,
                    format!("unknown run status `{status}`").into(),
                ),
            )
        })?;
        let owner_matches = match owner {
            Some(owner) => claim_owner.as_deref() == Some(owner),
            None => true,
        };
        if status != RunStatus::Claimed {
            return Err(RunError::Conflict {
                run_id: run_id.to_string(),
                status,
                claim_owner: None,
            });
        }
        if !owner_matches {
            return Err(RunError::Conflict {
                run_id: run_id.to_string(),
                status,
                claim_owner,
            });
        }
        Ok(())
    }

    fn insert_output(
        &self,
        tx: &Connection,
        run_id: &str,
        output: &NewRunOutput,
        now_ms: i64,
    ) -> Result<RunOutput, StoreError> {
        let recorded = RunOutput {
            output_id: new_id("out", now_ms),
            run_id: run_id.to_string(),
            content: output.content.clone(),
            parts: output.parts.clone(),
            reply_targets: output.reply_targets.clone(),
            created_at_ms: now_ms,
        };
        tx.prepare_cached(
            "INSERT INTO run_outputs (output_id, run_id, content, parts, reply_targets, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut st| {
            st.execute(params![
                recorded.output_id,
                recorded.run_id,
                recorded.content,
                recorded.parts.as_ref().map(to_json),
                recorded.reply_targets.as_ref().map(to_json),
                recorded.created_at_ms,
            ])
        })
        .map_err(|e| self.err("recording run output", e))?;
        Ok(recorded)
    }

    /// The shared body of [`Store::finish_run`] and [`Store::complete_with_output`].
    fn finish_claimed(
        &self,
        run_id: &str,
        owner: Option<&str>,
        output: Option<&NewRunOutput>,
        status: RunStatus,
        error: Option<&str>,
        now_ms: i64,
    ) -> Result<(Run, Option<RunOutput>, Enqueued), RunError> {
        let op = "finishing a run";
        let tx = self.write_tx(op)?;
        let finished = self.finish_claimed_in(run_id, owner, output, status, error, now_ms)?;
        tx.commit().map_err(|e| self.err(op, e))?;
        Ok(finished)
    }

    /// [`Store::finish_claimed`] inside a transaction the caller holds.
    pub(crate) fn finish_claimed_in(
        &self,
        run_id: &str,
        owner: Option<&str>,
        output: Option<&NewRunOutput>,
        status: RunStatus,
        error: Option<&str>,
        now_ms: i64,
    ) -> Result<(Run, Option<RunOutput>, Enqueued), RunError> {
        if !status.is_final() {
            return Err(RunError::InvalidTransition {
                run_id: run_id.to_string(),
                to: status,
            });
        }
        let op = "finishing a run";
        let tx = self.conn();
        self.check_claimed(tx, run_id, owner)?;
        let (recorded, enqueued) = match output {
            Some(output) => {
                let recorded = self.insert_output(tx, run_id, output, now_ms)?;
                let enqueued = self.enqueue_output(tx, &recorded, now_ms)?;
                (Some(recorded), enqueued)
            }
            None => (None, Enqueued::default()),
        };
        // An UPDATE and a read by key instead of `RETURNING`, which builds a temporary table
        // for every execution.
        tx.prepare_cached(
            "UPDATE runs SET status = ?2, error = ?3, finished_at_ms = ?4,
                 updated_at_ms = ?4, claim_owner = NULL, claim_expires_at_ms = NULL
             WHERE run_id = ?1",
        )
        .and_then(|mut st| st.execute(params![run_id, status.as_str(), error, now_ms]))
        .map_err(|e| self.err(op, e))?;
        let run = tx
            .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?1"))
            .and_then(|mut st| st.query_row([run_id], run_from_row))
            .map_err(|e| self.err(op, e))?;
        Ok((run, recorded, enqueued))
    }
}

/// Serialises a value for a JSON column.
pub(super) fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("model values always serialise to JSON")
}

/// Reads a JSON column into `T`; a column that does not parse is reported as a conversion
/// failure of that column (the store then classifies it like any other SQLite error).
fn json_col<T: DeserializeOwned>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

fn opt_json_col<T: DeserializeOwned>(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<T>> {
    let text: Option<String> = row.get(idx)?;
    text.map(|text| {
        serde_json::from_str(&text)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
    })
    .transpose()
}

fn run_from_row(row: &Row<'_>) -> rusqlite::Result<Run> {
    let kind: String = row.get(2)?;
    let connector_kind = kind
        .parse::<ConnectorKind>()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(2, Type::Text, e.into()))?;
    let status: String = row.get(4)?;
    let status = RunStatus::parse(&status).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            4,
            Type::Text,
            format!("unknown run status `{status}`").into(),
        )
    })?;
    Ok(Run {
        run_id: row.get(0)?,
        session_id: row.get(1)?,
        connector_kind,
        connector_name: row.get(3)?,
        status,
        actor_id: row.get(5)?,
        input: json_col::<RunInput>(row, 6)?,
        metadata: json_col(row, 7)?,
        reply_targets: json_col(row, 8)?,
        policy: json_col(row, 9)?,
        created_at_ms: row.get(10)?,
        updated_at_ms: row.get(11)?,
        claim_owner: row.get(12)?,
        claim_expires_at_ms: row.get(13)?,
        claim_count: row.get(14)?,
        finished_at_ms: row.get(15)?,
        error: row.get(16)?,
    })
}

fn output_from_row(row: &Row<'_>) -> rusqlite::Result<RunOutput> {
    Ok(RunOutput {
        output_id: row.get(0)?,
        run_id: row.get(1)?,
        content: row.get(2)?,
        parts: opt_json_col(row, 3)?,
        reply_targets: opt_json_col(row, 4)?,
        created_at_ms: row.get(5)?,
    })
}

/// Test helpers shared with `store::sessions`' tests.
#[cfg(test)]
pub(super) mod test_support {
    use rusqlite::params;

    use crate::model::reply::{ReplyPlugin, ReplyTarget};
    use crate::store::Store;

    pub(crate) const T0: i64 = 1_700_000_000_000;

    pub(crate) fn store() -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        (tmp, store)
    }

    /// Inserts a session the way ingress does (plain SQL; the real writer is `store::writer`).
    pub(crate) fn insert_session(store: &Store, id: &str) {
        store
            .conn()
            .execute(
                "INSERT INTO sessions (session_id, created_at_ms, updated_at_ms, created_by,
                     persona_id, capability_scope, credential_scope, reply_targets, metadata)
                 VALUES (?1, ?2, ?2, 'connector:http/orders', 'helper', '{\"tools\":[\"a\"]}',
                     '{}', '[]', '{}')",
                params![id, T0],
            )
            .unwrap();
    }

    /// Inserts a queued run of `http/NAME` in session `s1` (creating the session if needed).
    pub(crate) fn insert_run(
        store: &Store,
        run_id: &str,
        connector_name: &str,
        created_at_ms: i64,
    ) {
        if store.get_session("s1").unwrap().is_none() {
            insert_session(store, "s1");
        }
        store
            .conn()
            .execute(
                "INSERT INTO runs (run_id, session_id, connector_kind, connector_name, status,
                     actor_id, input, metadata, reply_targets, policy, created_at_ms, updated_at_ms,
                     session_created_at_ms)
                 VALUES (?1, 's1', 'http', ?2, 'queued', 'anonymous', ?3, '{\"k\":1}',
                     '[{\"plugin\":\"http\",\"address\":\"https://example.com/hook\"}]',
                     '{\"persona_id\":null,\"capability_scope\":{},\"credential_scope\":{}}',
                     ?4, ?4, (SELECT created_at_ms FROM sessions WHERE session_id = 's1'))",
                params![
                    run_id,
                    connector_name,
                    serde_json::json!({"content": format!("hello {run_id}")}).to_string(),
                    created_at_ms
                ],
            )
            .unwrap();
    }

    pub(crate) fn target(url: &str) -> ReplyTarget {
        ReplyTarget::new(ReplyPlugin::Http, url).unwrap().0
    }
}

/// The SQL and bound values of [`Store::list_runs`]. Only fixed SQL fragments are
/// concatenated; every value is a bound parameter.
fn run_list_query(filter: &RunFilter) -> (String, Vec<rusqlite::types::Value>) {
    let mut clauses: Vec<&str> = Vec::new();
    let mut values: Vec<rusqlite::types::Value> = Vec::new();
    match (filter.status, filter.now_ms) {
        (Some(RunStatus::Queued), Some(now)) => {
            // The first term is the `runs_open` index's own condition.
            clauses.push(
                "status IN ('queued', 'claimed') \
                 AND (status = 'queued' OR claim_expires_at_ms < ?)",
            );
            values.push(now.into());
        }
        (Some(RunStatus::Claimed), Some(now)) => {
            clauses.push(
                "status IN ('queued', 'claimed') \
                 AND status = 'claimed' AND claim_expires_at_ms >= ?",
            );
            values.push(now.into());
        }
        (Some(status), _) => {
            clauses.push("status = ?");
            values.push(status.as_str().to_string().into());
        }
        (None, _) => {}
    }
    if let Some((kind, name)) = &filter.connector {
        clauses.push("connector_kind = ? AND connector_name = ?");
        values.push(kind.as_str().to_string().into());
        values.push(name.clone().into());
    }
    if let Some(session_id) = &filter.session_id {
        // `runs_by_session` starts with the session's creation time (migration 10).
        clauses.push(
            "session_created_at_ms = \
             (SELECT created_at_ms FROM sessions WHERE sessions.session_id = ?) \
             AND session_id = ?",
        );
        values.push(session_id.clone().into());
        values.push(session_id.clone().into());
    }
    if let Some(since_ms) = filter.since_ms {
        clauses.push("created_at_ms >= ?");
        values.push(since_ms.into());
    }
    let limit = filter
        .limit
        .unwrap_or(DEFAULT_LIST_LIMIT)
        .clamp(1, MAX_LIST_LIMIT);
    values.push(i64::from(limit).into());
    let where_sql = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs {where_sql} ORDER BY seq DESC LIMIT ?");
    (sql, values)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Arc, Barrier};

    use serde_json::json;

    use super::test_support::*;
    use super::*;

    fn text_output(text: &str) -> NewRunOutput {
        NewRunOutput {
            content: Some(text.to_string()),
            ..NewRunOutput::default()
        }
    }

    #[test]
    fn get_run_reads_every_column() {
        let (_tmp, store) = store();
        insert_run(&store, "run_a", "orders", T0);
        let run = store.get_run("run_a").unwrap().unwrap();
        assert_eq!(run.session_id, "s1");
        assert_eq!(run.connector_kind, ConnectorKind::Http);
        assert_eq!(run.connector_name, "orders");
        assert_eq!(run.status, RunStatus::Queued);
        assert_eq!(run.input.content.as_deref(), Some("hello run_a"));
        assert_eq!(run.metadata["k"], 1);
        assert_eq!(run.reply_targets, vec![target("https://example.com/hook")]);
        assert_eq!(run.claim_count, 0);
        assert!(store.get_run("run_missing").unwrap().is_none());
    }

    #[test]
    fn claims_go_oldest_first_and_never_twice() {
        let (_tmp, store) = store();
        insert_run(&store, "run_a", "orders", T0);
        insert_run(&store, "run_b", "orders", T0 + 1);
        let a = store
            .claim_run("w1", 60_000, None, T0 + 10)
            .unwrap()
            .unwrap();
        assert_eq!(a.run_id, "run_a");
        assert_eq!(a.status, RunStatus::Claimed);
        assert_eq!(a.claim_owner.as_deref(), Some("w1"));
        assert_eq!(a.claim_expires_at_ms, Some(T0 + 60_010));
        assert_eq!(a.claim_count, 1);
        let b = store
            .claim_run("w2", 60_000, None, T0 + 11)
            .unwrap()
            .unwrap();
        assert_eq!(b.run_id, "run_b");
        assert!(store
            .claim_run("w3", 60_000, None, T0 + 12)
            .unwrap()
            .is_none());
        assert_eq!(
            store.next_claim_expiry(None).unwrap(),
            Some(T0 + 60_010),
            "the earliest lease"
        );
    }

    #[test]
    fn an_expired_claim_returns_the_run_to_the_queue() {
        let (_tmp, store) = store();
        insert_run(&store, "run_a", "orders", T0);
        store.claim_run("w1", 1_000, None, T0).unwrap().unwrap();
        // Not yet expired (expiry is exclusive of the current instant).
        assert!(store
            .claim_run("w2", 1_000, None, T0 + 1_000)
            .unwrap()
            .is_none());
        let again = store
            .claim_run("w2", 1_000, None, T0 + 1_001)
            .unwrap()
            .unwrap();
        assert_eq!(again.run_id, "run_a");
        assert_eq!(again.claim_owner.as_deref(), Some("w2"));
        assert_eq!(again.claim_count, 2);
        // The first owner lost the run: its writes are refused, the new owner's are not.
        let err = store
            .add_output("run_a", Some("w1"), &text_output("late"), T0 + 1_002)
            .unwrap_err();
        assert!(
            matches!(&err, RunError::Conflict { claim_owner: Some(o), .. } if o == "w2"),
            "{err:?}"
        );
        store
            .add_output("run_a", Some("w2"), &text_output("ok"), T0 + 1_003)
            .unwrap();
    }

    #[test]
    fn claims_can_be_limited_to_one_connector() {
        let (_tmp, store) = store();
        insert_run(&store, "run_a", "orders", T0);
        insert_run(&store, "run_b", "billing", T0 + 1);
        let b = store
            .claim_run("w", 60_000, Some((ConnectorKind::Http, "billing")), T0 + 2)
            .unwrap()
            .unwrap();
        assert_eq!(b.run_id, "run_b");
        assert!(store
            .claim_run("w", 60_000, Some((ConnectorKind::Http, "billing")), T0 + 3)
            .unwrap()
            .is_none());
        assert!(store
            .claim_run("w", 60_000, Some((ConnectorKind::Slack, "orders")), T0 + 3)
            .unwrap()
            .is_none());
        assert_eq!(
            store
                .next_claim_expiry(Some((ConnectorKind::Http, "orders")))
                .unwrap(),
            None
        );
    }

    #[test]
    fn concurrent_claimers_never_share_a_run() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        const RUNS: usize = 40;
        for i in 0..RUNS {
            insert_run(&store, &format!("run_{i:03}"), "orders", T0 + i as i64);
        }
        const CLAIMERS: usize = 4;
        let barrier = Arc::new(Barrier::new(CLAIMERS));
        let handles: Vec<_> = (0..CLAIMERS)
            .map(|w| {
                let root = tmp.path().to_path_buf();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let store = Store::open(&root).unwrap();
                    barrier.wait();
                    let mut got = Vec::new();
                    while let Some(run) = store
                        .claim_run(&format!("w{w}"), 60_000, None, T0 + 100)
                        .unwrap()
                    {
                        got.push(run.run_id);
                    }
                    got
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().unwrap());
        }
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), RUNS, "{all:?}");
        assert_eq!(unique.len(), RUNS);
    }

    #[test]
    fn outputs_need_a_claimed_run() {
        let (_tmp, store) = store();
        insert_run(&store, "run_a", "orders", T0);
        let err = store
            .add_output("run_a", None, &text_output("x"), T0)
            .unwrap_err();
        assert!(
            matches!(
                err,
                RunError::Conflict {
                    status: RunStatus::Queued,
                    claim_owner: None,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("is queued"), "{err}");
        let err = store
            .add_output("run_nope", None, &text_output("x"), T0)
            .unwrap_err();
        assert!(matches!(err, RunError::NotFound { .. }), "{err:?}");

        store.claim_run("w", 60_000, None, T0).unwrap().unwrap();
        let first = store
            .add_output("run_a", None, &text_output("one"), T0 + 1)
            .unwrap();
        assert!(first.output_id.starts_with("out_"));
        let second = NewRunOutput {
            content: None,
            parts: Some(vec![json!({"type": "text", "text": "two"})]),
            reply_targets: Some(vec![target("https://example.org/x")]),
        };
        store.add_output("run_a", None, &second, T0 + 2).unwrap();
        let outputs = store.list_outputs("run_a").unwrap();
        assert_eq!(outputs.len(), 2);
        assert_eq!(outputs[0], first);
        assert_eq!(outputs[1].parts, second.parts);
        assert_eq!(outputs[1].reply_targets, second.reply_targets);
        assert_eq!(outputs[0].reply_targets, None);
    }

    #[test]
    fn finishing_clears_the_claim_and_is_final() {
        let (_tmp, store) = store();
        insert_run(&store, "run_a", "orders", T0);
        insert_run(&store, "run_b", "orders", T0 + 1);
        store.claim_run("w", 60_000, None, T0).unwrap().unwrap();
        store.claim_run("w", 60_000, None, T0).unwrap().unwrap();

        let done = store
            .finish_run("run_a", None, RunStatus::Completed, None, T0 + 5)
            .unwrap();
        assert_eq!(done.status, RunStatus::Completed);
        assert_eq!(done.finished_at_ms, Some(T0 + 5));
        assert_eq!(done.claim_owner, None);
        assert_eq!(done.claim_expires_at_ms, None);

        let failed = store
            .finish_run("run_b", Some("w"), RunStatus::Failed, Some("boom"), T0 + 6)
            .unwrap();
        assert_eq!(failed.status, RunStatus::Failed);
        assert_eq!(failed.error.as_deref(), Some("boom"));

        let err = store
            .finish_run("run_a", None, RunStatus::Failed, None, T0 + 7)
            .unwrap_err();
        assert!(
            matches!(
                err,
                RunError::Conflict {
                    status: RunStatus::Completed,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = store
            .finish_run("run_a", None, RunStatus::Queued, None, T0 + 7)
            .unwrap_err();
        assert!(matches!(err, RunError::InvalidTransition { .. }), "{err:?}");
        // Finished runs are never claimable again.
        assert!(store
            .claim_run("w", 1, None, T0 + 999_999)
            .unwrap()
            .is_none());
    }

    #[test]
    fn complete_with_output_is_one_step_and_release_requeues() {
        let (_tmp, store) = store();
        insert_run(&store, "run_a", "orders", T0);
        insert_run(&store, "run_b", "orders", T0 + 1);
        store.claim_run("w", 60_000, None, T0).unwrap().unwrap();
        store.claim_run("w", 60_000, None, T0).unwrap().unwrap();

        let (run, output) = store
            .complete_with_output("run_a", Some("w"), Some(&text_output("hi")), T0 + 1)
            .unwrap();
        assert_eq!(run.status, RunStatus::Completed);
        assert_eq!(output.unwrap().content.as_deref(), Some("hi"));
        // A refused completion writes no output.
        let err = store
            .complete_with_output("run_b", Some("other"), Some(&text_output("x")), T0 + 2)
            .unwrap_err();
        assert!(matches!(err, RunError::Conflict { .. }), "{err:?}");
        assert!(store.list_outputs("run_b").unwrap().is_empty());

        let released = store.release_run("run_b", "w", T0 + 3).unwrap();
        assert_eq!(released.status, RunStatus::Queued);
        assert_eq!(released.claim_owner, None);
        let again = store
            .claim_run("w2", 60_000, None, T0 + 4)
            .unwrap()
            .unwrap();
        assert_eq!(again.run_id, "run_b");
        assert_eq!(again.claim_count, 2);
    }

    #[test]
    fn the_session_filter_reads_one_range_of_runs_by_session() {
        let (_tmp, store) = store();
        insert_run(&store, "run_a", "orders", T0);
        insert_run(&store, "run_b", "billing", T0 + 10);
        let filter = RunFilter {
            session_id: Some("s1".into()),
            ..RunFilter::default()
        };
        let ids: Vec<String> = store
            .list_runs(&filter)
            .unwrap()
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        assert_eq!(ids, ["run_b", "run_a"]);
        // One index range, already in seq order: no scan of runs, no sort.
        let (sql, values) = run_list_query(&filter);
        let mut stmt = store
            .conn()
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(values), |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("runs_by_session (session_created_at_ms=? AND session_id=?)"),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        assert!(!plan.contains("SCAN runs"), "{plan}");
    }

    #[test]
    fn list_runs_filters_and_orders_newest_first() {
        let (_tmp, store) = store();
        insert_run(&store, "run_a", "orders", T0);
        insert_run(&store, "run_b", "billing", T0 + 10);
        insert_run(&store, "run_c", "orders", T0 + 20);
        store
            .claim_run("w", 60_000, None, T0 + 30)
            .unwrap()
            .unwrap();

        let ids = |filter: RunFilter| -> Vec<String> {
            store
                .list_runs(&filter)
                .unwrap()
                .into_iter()
                .map(|r| r.run_id)
                .collect()
        };
        assert_eq!(ids(RunFilter::default()), ["run_c", "run_b", "run_a"]);
        assert_eq!(
            ids(RunFilter {
                status: Some(RunStatus::Queued),
                ..RunFilter::default()
            }),
            ["run_c", "run_b"]
        );
        assert_eq!(
            ids(RunFilter {
                connector: Some((ConnectorKind::Http, "orders".into())),
                ..RunFilter::default()
            }),
            ["run_c", "run_a"]
        );
        assert_eq!(
            ids(RunFilter {
                since_ms: Some(T0 + 10),
                ..RunFilter::default()
            }),
            ["run_c", "run_b"]
        );
        assert_eq!(
            ids(RunFilter {
                session_id: Some("nope".into()),
                ..RunFilter::default()
            }),
            Vec::<String>::new()
        );
        assert_eq!(
            ids(RunFilter {
                limit: Some(1),
                ..RunFilter::default()
            }),
            ["run_c"]
        );
        assert_eq!(
            ids(RunFilter {
                limit: Some(0),
                ..RunFilter::default()
            })
            .len(),
            1,
            "a zero limit is raised to one"
        );
    }
}
