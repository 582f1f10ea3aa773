//! The delivery queue's SQL (SPEC §11.2–§11.6, §3 retention): enqueue, claim, settle, progress,
//! replay, resolve, listings, statistics and pruning. Deliveries change status only here.
//!
//! # Shape
//!
//! `deliveries` holds one row per (output, target); `delivery_targets` holds one row per target
//! that still has open (`pending`/`retrying`) deliveries: the FIFO head (`head_seq`), when that
//! head is due, the lease of the worker sending it, and the circuit breaker. Only a target's head
//! is ever claimed, and a target is leased as a whole while its head is in flight, so deliveries
//! to one target go out one at a time in creation order by construction (SPEC §11.3); a failing
//! head holds back the deliveries behind it and nothing else.
//!
//! # Transactions
//!
//! Every state change is one short `BEGIN IMMEDIATE` transaction; no transaction is ever open
//! across network I/O. A claim leases the target row AND its head delivery (owner, expiry); an
//! expired lease makes the target claimable again (a crashed worker's delivery is sent again,
//! with the same delivery id: at-least-once). Settling checks that the delivery's lease is
//! still the caller's; if another worker took over in the meantime, nothing is written.
//!
//! # Circuit breaker
//!
//! A target's `consecutive_failures` counts retryable failures in a row. When it reaches
//! [`CIRCUIT_THRESHOLD`], the target is paused for [`CIRCUIT_PAUSE_MS`] and the counter starts
//! again from zero (so the next pause needs another three failures); a delivered head also resets
//! it. Terminal failures (the target answered, but will never take this delivery) leave it as is.
//!
//! # Retention
//!
//! Delivered deliveries are kept [`DELIVERED_RETENTION_MS`] (7 days) after delivery. A dead
//! letter is kept until it is done — resolved by an operator, or redelivered through a replay —
//! plus [`DEAD_LETTER_RETENTION_MS`] (30 days); an unresolved dead letter is never pruned. A
//! delivered replay is the record that makes its source "done", so it is kept as long as its
//! source is and pruned together with it. Rows are only deleted when no remaining row refers to
//! them (`replayed_from_delivery_id`), children first, in bounded batches.

use rusqlite::types::Type;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Store, StoreError};
use crate::model::delivery::{Delivery, DeliveryJob, DeliveryStatus};
use crate::model::reply::{ReplyPlugin, ReplyTarget};
use crate::model::run::{new_id, RunOutput};
use crate::model::ConnectorKind;

/// Retryable failures in a row that open a target's circuit (SPEC §11.3).
pub const CIRCUIT_THRESHOLD: i64 = 3;
/// How long an open circuit pauses its target (SPEC §11.3).
pub const CIRCUIT_PAUSE_MS: i64 = 60_000;
/// Delivered deliveries are pruned this long after `delivered_at_ms` (SPEC §3).
pub const DELIVERED_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// Done dead letters are pruned this long after they were resolved or redelivered (SPEC §3).
pub const DEAD_LETTER_RETENTION_MS: i64 = 30 * 24 * 3600 * 1000;
/// Rows examined per prune transaction, so a prune never holds the write lock for long.
pub const PRUNE_BATCH: u32 = 500;
/// Default number of rows a listing returns when [`DeliveryFilter::limit`] is 0.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// The most rows one listing returns (SPEC §1.3 `replay --limit`).
pub const MAX_LIST_LIMIT: u32 = 500;
/// `last_error_code` of a delivery whose stored target no longer passes validation.
pub const INVALID_TARGET_CODE: &str = "invalid_target";

/// The identity of a reply target for per-target order and the circuit breaker: lowercase hex
/// SHA-256 of `plugin + "\n" + address`. The only definition; everything else calls this.
pub fn target_key(target: &ReplyTarget) -> String {
    let mut hasher = Sha256::new();
    hasher.update(target.plugin.as_str().as_bytes());
    hasher.update(b"\n");
    hasher.update(target.address.as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Filters for listings and bulk replay/resolve. Every member narrows the result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
    /// Reply plugin name (`http`, `slack`, …).
    pub plugin: Option<String>,
    /// `(kind, name)` of the connector whose run produced the output.
    pub connector: Option<(ConnectorKind, String)>,
    pub session_id: Option<String>,
    pub run_id: Option<String>,
    /// Only deliveries created at or after this unix ms.
    pub since_ms: Option<i64>,
    /// [`Store::list_dead_letters`] only: also list resolved dead letters and those with a
    /// delivered replay. [`Store::list_deliveries`] ignores it.
    pub include_resolved: bool,
    /// At most this many rows: 0 means [`DEFAULT_LIST_LIMIT`]; capped at [`MAX_LIST_LIMIT`].
    pub limit: u32,
}

/// Which targets a worker may claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimFilter {
    /// Only targets of this plugin.
    pub plugin: Option<String>,
    /// Only heads whose run came from this connector.
    pub connector: Option<(ConnectorKind, String)>,
    /// Claim heads before their retry time and through an open circuit (`drain-deliveries
    /// --ignore-backoff`). Leases are always respected.
    pub ignore_backoff: bool,
}

/// A leased delivery, ready to send: the job for the transport and what settling needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub job: DeliveryJob,
    /// When the lease ends; after it, another worker may claim the same delivery.
    pub lease_expires_at_ms: i64,
    /// The delivery's row (its position in the target's FIFO).
    seq: i64,
}

/// How an attempt ends, as the store records it. `delivery` maps an
/// [`crate::delivery::AttemptOutcome`] through the retry policy into one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// The target took it.
    Delivered { http_status: Option<u16> },
    /// Try again at `at_ms`.
    Retry {
        at_ms: i64,
        code: String,
        reason: String,
        http_status: Option<u16>,
    },
    /// Give up: a terminal failure, or a retryable one on the last attempt (`retryable`, which
    /// counts towards the target's circuit breaker).
    DeadLetter {
        code: String,
        reason: String,
        http_status: Option<u16>,
        retryable: bool,
    },
}

/// What [`Store::settle`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum SettleOutcome {
    /// The settlement was written; `delivery` is the row after it.
    Settled {
        delivery: Box<Delivery>,
        /// This failure opened the target's circuit.
        circuit_opened: bool,
    },
    /// The lease was no longer ours (it expired and another worker claimed the delivery, or it
    /// was settled already); nothing was written. The other worker settles it.
    LeaseLost {
        delivery_id: String,
        current_owner: Option<String>,
        status: DeliveryStatus,
    },
}

/// The deliveries one output produced (see [`Store::add_output_queued`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enqueued {
    /// New `pending` deliveries: wake the workers when this is not empty.
    pub pending: Vec<String>,
    /// Deliveries created directly as dead letters because their stored target no longer
    /// validates (code [`INVALID_TARGET_CODE`]).
    pub dead_lettered: Vec<String>,
}

impl Enqueued {
    /// True when workers have something new to send.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Queue figures for metrics (SPEC §13).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryStats {
    pub pending: u64,
    pub retrying: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    /// Dead letters not resolved and without a delivered replay.
    pub dead_letters_unresolved: u64,
    /// Targets whose circuit is open (`paused_until_ms > now`).
    pub circuits_open: u64,
    /// Age of the oldest due, unpaused target head (queue lag); 0 when nothing is due.
    pub oldest_due_age_ms: i64,
}

/// Open deliveries left, as `drain-deliveries` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OpenCounts {
    /// Open deliveries of targets that are claimable now apart from leases (with
    /// `ignore_backoff`: every open delivery).
    pub due: u64,
    /// Every open (`pending` or `retrying`) delivery.
    pub pending: u64,
}

/// What one [`Store::prune_deliveries`] call deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryPruneReport {
    pub delivered: u64,
    pub dead_letters: u64,
}

/// One replay or resolve decision, made inside its transaction (mapped to `ReplayItem` by
/// `delivery`).
#[derive(Debug, Clone, PartialEq)]
pub enum DeadLetterAction {
    NotFound,
    NotDeadLettered(Delivery),
    /// Dry run: would create a replay.
    WouldReplay(Delivery),
    /// Created `replay` from `source`.
    Replayed {
        source: Delivery,
        replay: Delivery,
    },
    /// `source` already has `replay` and `force` was not given.
    ExistingReplay {
        source: Delivery,
        replay: Delivery,
    },
    /// Dry run: would resolve.
    WouldResolve(Delivery),
    /// Resolved now, or already resolved before (kept as it was).
    Resolved(Delivery),
}

/// The delivery columns, in the order [`delivery_from_row`] reads them, each prefixed with `$p`
/// (`RETURNING` cannot use a table alias, selects can).
macro_rules! delivery_columns {
    ($p:literal) => {
        concat!(
            $p,
            "seq, ",
            $p,
            "delivery_id, ",
            $p,
            "output_id, ",
            $p,
            "run_id, ",
            $p,
            "session_id, ",
            $p,
            "connector_kind, ",
            $p,
            "connector_name, ",
            $p,
            "plugin, ",
            $p,
            "address, ",
            $p,
            "target_key, ",
            $p,
            "status, ",
            $p,
            "attempts, ",
            $p,
            "next_attempt_at_ms, ",
            $p,
            "lease_owner, ",
            $p,
            "lease_expires_at_ms, ",
            $p,
            "last_error, ",
            $p,
            "last_error_code, ",
            $p,
            "last_http_status, ",
            $p,
            "progress, ",
            $p,
            "created_at_ms, ",
            $p,
            "updated_at_ms, ",
            $p,
            "delivered_at_ms, ",
            $p,
            "dead_lettered_at_ms, ",
            $p,
            "resolution, ",
            $p,
            "resolved_at_ms, ",
            $p,
            "replayed_from_delivery_id"
        )
    };
}

/// [`delivery_from_row`]'s columns of `deliveries d`.
const COLUMNS: &str = delivery_columns!("d.");
/// [`delivery_from_row`]'s columns for `RETURNING`.
const RETURNING: &str = delivery_columns!("");

/// "Unresolved" for a dead letter `d` (SPEC §11.6), as an SQL condition.
const UNRESOLVED: &str = "d.status = 'dead_lettered' AND d.resolved_at_ms IS NULL \
     AND NOT EXISTS (SELECT 1 FROM deliveries r \
         WHERE r.replayed_from_delivery_id = d.delivery_id AND r.status = 'delivered')";

fn conversion(idx: usize, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, msg.into())
}

/// Maps a row selected with [`COLUMNS`] to `(seq, delivery)`.
fn delivery_from_row(row: &Row<'_>) -> rusqlite::Result<(i64, Delivery)> {
    let kind: String = row.get(5)?;
    let name: String = row.get(6)?;
    let plugin: String = row.get(7)?;
    let plugin = ReplyPlugin::parse(&plugin).map_err(|e| conversion(7, e))?;
    let status: String = row.get(10)?;
    let status = DeliveryStatus::parse(&status)
        .ok_or_else(|| conversion(10, format!("unknown delivery status `{status}`")))?;
    let progress: Option<String> = row.get(18)?;
    let progress = progress
        .map(|text| serde_json::from_str::<Value>(&text))
        .transpose()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(18, Type::Text, Box::new(e)))?;
    let http_status: Option<i64> = row.get(17)?;
    Ok((
        row.get(0)?,
        Delivery {
            delivery_id: row.get(1)?,
            output_id: row.get(2)?,
            run_id: row.get(3)?,
            session_id: row.get(4)?,
            connector: format!("{kind}/{name}"),
            target: ReplyTarget {
                plugin,
                address: row.get(8)?,
            },
            target_key: row.get(9)?,
            status,
            attempts: row.get(11)?,
            next_attempt_at_ms: row.get(12)?,
            lease_owner: row.get(13)?,
            lease_expires_at_ms: row.get(14)?,
            last_error: row.get(15)?,
            last_error_code: row.get(16)?,
            last_http_status: http_status.and_then(|s| u16::try_from(s).ok()),
            progress,
            created_at_ms: row.get(19)?,
            updated_at_ms: row.get(20)?,
            delivered_at_ms: row.get(21)?,
            dead_lettered_at_ms: row.get(22)?,
            resolution: row.get(23)?,
            resolved_at_ms: row.get(24)?,
            replayed_from_delivery_id: row.get(25)?,
        },
    ))
}

/// The columns of a new delivery row.
struct NewDelivery<'a> {
    output_id: &'a str,
    run_id: &'a str,
    session_id: &'a str,
    connector_kind: &'a str,
    connector_name: &'a str,
    target: &'a ReplyTarget,
    /// `Some((code, reason))`: created directly as a dead letter.
    dead_letter: Option<(&'a str, String)>,
    replayed_from: Option<&'a str>,
    now_ms: i64,
}

/// `query_row` through the connection's prepared-statement cache: the queue runs the same few
/// statements for every delivery, and parsing them each time was a visible share of its CPU.
fn cached_row<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}

/// `execute` through the connection's prepared-statement cache (see [`cached_row`]).
fn cached_exec<P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// [`cached_row`] and [`cached_exec`] in method form, so the hot queue paths read like
/// rusqlite's own `query_row` and `execute`.
trait CachedExt {
    fn query_row_cached<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
}

impl CachedExt for Connection {
    fn query_row_cached<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        cached_row(self, sql, params, f)
    }
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        cached_exec(self, sql, params)
    }
}

fn limit_of(limit: u32) -> i64 {
    i64::from(if limit == 0 {
        DEFAULT_LIST_LIMIT
    } else {
        limit.min(MAX_LIST_LIMIT)
    })
}

impl Store {
    fn begin(&self, op: &str) -> Result<super::WriteTx<'_>, StoreError> {
        self.write_tx(op)
    }

    // -----------------------------------------------------------------------------------------
    // Enqueue

    /// Inside the transaction that inserted `output` (see `store::runs`): resolves its reply
    /// targets — the output's explicit override (even an empty one, which means "deliver
    /// nowhere") → the run's snapshot → the session's defaults, the first non-empty of the last
    /// two — and inserts one delivery per distinct target. A target that no longer validates
    /// becomes a dead letter with code [`INVALID_TARGET_CODE`] at once, so the output is still
    /// recorded and the problem is visible (and replayable once fixed) instead of the handler's
    /// output being refused for a reason it cannot change. An output with no target at all gets
    /// no delivery.
    pub(crate) fn enqueue_output(
        &self,
        conn: &Connection,
        output: &RunOutput,
        now_ms: i64,
    ) -> Result<Enqueued, StoreError> {
        let op = "queueing deliveries";
        let (session_id, kind, name, run_targets, session_targets): (
            String,
            String,
            String,
            String,
            Option<String>,
        ) = conn
            .query_row_cached(
                "SELECT r.session_id, r.connector_kind, r.connector_name, r.reply_targets,
                     s.reply_targets
                 FROM runs r LEFT JOIN sessions s ON s.session_id = r.session_id
                 WHERE r.run_id = ?1",
                [&output.run_id],
                |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                },
            )
            .map_err(|e| self.err(op, e))?;
        let parse = |text: &str, idx: usize| -> Result<Vec<ReplyTarget>, StoreError> {
            serde_json::from_str(text).map_err(|e| {
                self.err(
                    op,
                    rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)),
                )
            })
        };
        let targets = match &output.reply_targets {
            Some(explicit) => explicit.clone(),
            None => {
                let run_targets = parse(&run_targets, 3)?;
                if !run_targets.is_empty() {
                    run_targets
                } else {
                    match session_targets {
                        Some(text) => parse(&text, 4)?,
                        None => Vec::new(),
                    }
                }
            }
        };
        let mut enqueued = Enqueued::default();
        let mut seen = std::collections::HashSet::new();
        for target in &targets {
            if !seen.insert(target_key(target)) {
                continue; // One delivery per (output, target).
            }
            let dead_letter = target.parsed().err().map(|why| {
                (
                    INVALID_TARGET_CODE,
                    format!(
                        "{} reply target no longer valid: {why}",
                        target.plugin.as_str()
                    ),
                )
            });
            let is_dead = dead_letter.is_some();
            let (_, delivery_id) = self.insert_delivery(
                conn,
                &NewDelivery {
                    output_id: &output.output_id,
                    run_id: &output.run_id,
                    session_id: &session_id,
                    connector_kind: &kind,
                    connector_name: &name,
                    target,
                    dead_letter,
                    replayed_from: None,
                    now_ms,
                },
            )?;
            if is_dead {
                enqueued.dead_lettered.push(delivery_id);
            } else {
                enqueued.pending.push(delivery_id);
            }
        }
        Ok(enqueued)
    }

    /// Inserts a delivery (and, when it is open, appends it to its target's FIFO). Returns its
    /// `(seq, delivery_id)`.
    fn insert_delivery(
        &self,
        conn: &Connection,
        new: &NewDelivery<'_>,
    ) -> Result<(i64, String), StoreError> {
        let op = "inserting a delivery";
        let delivery_id = new_id("dlv", new.now_ms);
        let key = target_key(new.target);
        let (status, code, reason, dead_at) = match &new.dead_letter {
            Some((code, reason)) => (
                DeliveryStatus::DeadLettered,
                Some(*code),
                Some(reason.as_str()),
                Some(new.now_ms),
            ),
            None => (DeliveryStatus::Pending, None, None, None),
        };
        let seq: i64 = conn
            .query_row_cached(
                "INSERT INTO deliveries (delivery_id, output_id, run_id, session_id,
                     connector_kind, connector_name, plugin, address, target_key, status, attempts,
                     next_attempt_at_ms, last_error, last_error_code, created_at_ms, updated_at_ms,
                     dead_lettered_at_ms, replayed_from_delivery_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11, ?12, ?13, ?11, ?11, ?14,
                     ?15)
                 RETURNING seq",
                params![
                    delivery_id,
                    new.output_id,
                    new.run_id,
                    new.session_id,
                    new.connector_kind,
                    new.connector_name,
                    new.target.plugin.as_str(),
                    new.target.address,
                    key,
                    status.as_str(),
                    new.now_ms,
                    reason,
                    code,
                    dead_at,
                    new.replayed_from,
                ],
                |row| row.get(0),
            )
            .map_err(|e| self.err(op, e))?;
        if status.is_open() {
            // A new target starts with this delivery as its head, due now; an existing one
            // keeps its head (FIFO) and only counts one more open delivery.
            cached_exec(
                conn,
                "INSERT INTO delivery_targets (target_key, plugin, head_seq, next_attempt_at_ms,
                     open_count)
                 VALUES (?1, ?2, ?3, ?4, 1)
                 ON CONFLICT (target_key) DO UPDATE SET open_count = open_count + 1",
                params![key, new.target.plugin.as_str(), seq, new.now_ms],
            )
            .map_err(|e| self.err(op, e))?;
        }
        Ok((seq, delivery_id))
    }

    // -----------------------------------------------------------------------------------------
    // Claim and settle

    /// Claims the head of one due, unpaused, unleased (or lease-expired) target for `owner`
    /// until `now_ms + lease_ms`, leasing the target and its head delivery. Targets due longest
    /// are served first. `None` when nothing is claimable.
    pub fn claim_next(
        &self,
        owner: &str,
        lease_ms: i64,
        now_ms: i64,
        filter: &ClaimFilter,
    ) -> Result<Option<Claimed>, StoreError> {
        let op = "claiming a delivery";
        let tx = self.begin(op)?;
        let claimed = self.claim_in(&tx, owner, lease_ms, now_ms, filter)?;
        tx.commit().map_err(|e| self.err(op, e))?;
        Ok(claimed)
    }

    /// The body of [`Store::claim_next`] inside the caller's write transaction.
    fn claim_in(
        &self,
        tx: &Connection,
        owner: &str,
        lease_ms: i64,
        now_ms: i64,
        filter: &ClaimFilter,
    ) -> Result<Option<Claimed>, StoreError> {
        let op = "claiming a delivery";
        let (kind, name) = match &filter.connector {
            Some((kind, name)) => (Some(kind.as_str()), Some(name.as_str())),
            None => (None, None),
        };
        let expires = now_ms.saturating_add(lease_ms.max(1));
        // A head that is not open (which only a bug or a hand edit can cause) is repaired by
        // moving the head on; a few rounds bound the work.
        for _ in 0..8 {
            let candidate: Option<(String, i64)> = tx
                .query_row_cached(
                    "SELECT t.target_key, t.head_seq FROM delivery_targets t
                     WHERE (?1 OR (t.next_attempt_at_ms <= ?2 AND t.paused_until_ms <= ?2))
                       AND (t.lease_owner IS NULL OR t.lease_expires_at_ms < ?2)
                       AND (?3 IS NULL OR t.plugin = ?3)
                       AND (?4 IS NULL OR EXISTS (SELECT 1 FROM deliveries d
                            WHERE d.seq = t.head_seq AND d.connector_kind = ?4
                              AND d.connector_name = ?5))
                     ORDER BY t.next_attempt_at_ms LIMIT 1",
                    params![filter.ignore_backoff, now_ms, filter.plugin, kind, name],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(|e| self.err(op, e))?;
            let Some((key, head_seq)) = candidate else {
                return Ok(None);
            };
            let leased = tx
                .query_row_cached(
                    &format!(
                        "UPDATE deliveries SET lease_owner = ?1, lease_expires_at_ms = ?2,
                             updated_at_ms = ?3
                         WHERE seq = ?4 AND status IN ('pending', 'retrying')
                         RETURNING {RETURNING}"
                    ),
                    params![owner, expires, now_ms, head_seq],
                    delivery_from_row,
                )
                .optional()
                .map_err(|e| self.err(op, e))?;
            let Some((seq, delivery)) = leased else {
                self.advance_head(tx, &key, false)?;
                continue;
            };
            cached_exec(
                tx,
                "UPDATE delivery_targets SET lease_owner = ?1, lease_expires_at_ms = ?2
                 WHERE target_key = ?3",
                params![owner, expires, key],
            )
            .map_err(|e| self.err(op, e))?;
            let (content, parts): (Option<String>, Option<String>) = tx
                .query_row_cached(
                    "SELECT content, parts FROM run_outputs WHERE output_id = ?1",
                    [&delivery.output_id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .map_err(|e| self.err(op, e))?;
            let parts = parts
                .map(|text| serde_json::from_str::<Vec<Value>>(&text))
                .transpose()
                .map_err(|e| {
                    self.err(
                        op,
                        rusqlite::Error::FromSqlConversionFailure(1, Type::Text, Box::new(e)),
                    )
                })?;
            return Ok(Some(Claimed {
                job: DeliveryJob {
                    attempt: delivery.attempts.saturating_add(1),
                    delivery,
                    content,
                    parts,
                },
                lease_expires_at_ms: expires,
                seq,
            }));
        }
        Ok(None)
    }

    /// Writes the end of an attempt, if `owner` still holds the delivery's lease. Delivered and
    /// dead-lettered deliveries move their target's head to the next open delivery (or remove
    /// the target row when none is left); a retry keeps the head and makes the target due at
    /// the retry time. See the module docs for the circuit breaker.
    pub fn settle(
        &self,
        owner: &str,
        claimed: &Claimed,
        settlement: Settlement,
        now_ms: i64,
    ) -> Result<SettleOutcome, StoreError> {
        let op = "settling a delivery";
        let tx = self.begin(op)?;
        let outcome = self.settle_in(&tx, owner, claimed, settlement, now_ms)?;
        tx.commit().map_err(|e| self.err(op, e))?;
        Ok(outcome)
    }

    /// Gives back claims that were never sent (a pool shutting down): each delivery and its
    /// target lose `owner`'s lease and are claimable again at once, with no attempt counted.
    /// A claim whose lease `owner` no longer holds is left alone. Returns how many were freed.
    pub fn release(&self, owner: &str, unsent: &[Claimed]) -> Result<usize, StoreError> {
        let op = "releasing unsent deliveries";
        let tx = self.begin(op)?;
        let mut freed = 0;
        for claimed in unsent {
            let n = cached_exec(
                &tx,
                "UPDATE deliveries SET lease_owner = NULL, lease_expires_at_ms = NULL
                 WHERE seq = ?1 AND lease_owner = ?2 AND status IN ('pending', 'retrying')",
                params![claimed.seq, owner],
            )
            .map_err(|e| self.err(op, e))?;
            if n == 1 {
                cached_exec(
                    &tx,
                    "UPDATE delivery_targets SET lease_owner = NULL, lease_expires_at_ms = NULL
                     WHERE target_key = ?1 AND lease_owner = ?2",
                    params![claimed.job.delivery.target_key, owner],
                )
                .map_err(|e| self.err(op, e))?;
                freed += 1;
            }
        }
        tx.commit().map_err(|e| self.err(op, e))?;
        Ok(freed)
    }

    /// Settles every `(claimed, settlement)` pair and claims up to `claim` more due deliveries
    /// for `owner`, all in ONE transaction: the delivery dispatcher of `serve` pays one commit
    /// for a whole round of finished sends and the claims that refill its senders. The claims
    /// see the settlements (a delivered head makes its target's next delivery claimable at
    /// once). An error rolls everything back; nothing is half-written.
    pub fn settle_all_and_claim(
        &self,
        owner: &str,
        settled: &[(Claimed, Settlement)],
        claim: usize,
        lease_ms: i64,
        now_ms: i64,
        filter: &ClaimFilter,
    ) -> Result<(Vec<SettleOutcome>, Vec<Claimed>), StoreError> {
        let op = "settling deliveries and claiming more";
        let tx = self.begin(op)?;
        let mut outcomes = Vec::with_capacity(settled.len());
        for (claimed, settlement) in settled {
            outcomes.push(self.settle_in(&tx, owner, claimed, settlement.clone(), now_ms)?);
        }
        let mut claims = Vec::with_capacity(claim);
        while claims.len() < claim {
            match self.claim_in(&tx, owner, lease_ms, now_ms, filter)? {
                Some(claimed) => claims.push(claimed),
                None => break,
            }
        }
        tx.commit().map_err(|e| self.err(op, e))?;
        Ok((outcomes, claims))
    }

    /// The body of [`Store::settle`] inside the caller's write transaction.
    fn settle_in(
        &self,
        tx: &Connection,
        owner: &str,
        claimed: &Claimed,
        settlement: Settlement,
        now_ms: i64,
    ) -> Result<SettleOutcome, StoreError> {
        let op = "settling a delivery";
        let current: Option<(Option<String>, String)> = tx
            .query_row_cached(
                "SELECT lease_owner, status FROM deliveries WHERE seq = ?1",
                [claimed.seq],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(op, e))?;
        let delivery_id = &claimed.job.delivery.delivery_id;
        let status = current
            .as_ref()
            .and_then(|(_, s)| DeliveryStatus::parse(s))
            .unwrap_or(DeliveryStatus::DeadLettered);
        let current_owner = current.and_then(|(o, _)| o);
        if current_owner.as_deref() != Some(owner) || !status.is_open() {
            return Ok(SettleOutcome::LeaseLost {
                delivery_id: delivery_id.clone(),
                current_owner,
                status,
            });
        }
        let key = &claimed.job.delivery.target_key;
        let failures: i64 = tx
            .query_row_cached(
                "SELECT consecutive_failures FROM delivery_targets WHERE target_key = ?1",
                [key],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.err(op, e))?
            .unwrap_or(0);
        let set_delivery = |sql: &str, p: &[&dyn rusqlite::ToSql]| {
            cached_row(
                tx,
                &format!(
                    "UPDATE deliveries SET {sql}, attempts = attempts + 1, lease_owner = NULL,
                         lease_expires_at_ms = NULL, updated_at_ms = ?1
                     WHERE seq = ?2 RETURNING {RETURNING}"
                ),
                p,
                delivery_from_row,
            )
            .map(|(_, d)| d)
            .map_err(|e| self.err(op, e))
        };
        // (failure counter after this attempt, whether the circuit opens)
        let bump = |failed: bool| -> (i64, bool) {
            if !failed {
                return (failures, false);
            }
            let n = failures + 1;
            if n >= CIRCUIT_THRESHOLD {
                (0, true)
            } else {
                (n, false)
            }
        };
        let pause_until = now_ms.saturating_add(CIRCUIT_PAUSE_MS);
        let (delivery, circuit_opened) = match settlement {
            Settlement::Delivered { http_status } => {
                let delivery = set_delivery(
                    "status = 'delivered', delivered_at_ms = ?1, last_http_status = ?3",
                    &[&now_ms, &claimed.seq, &http_status],
                )?;
                if failures != 0 {
                    cached_exec(
                        tx,
                        "UPDATE delivery_targets SET consecutive_failures = 0 WHERE target_key = ?1",
                        [key],
                    )
                    .map_err(|e| self.err(op, e))?;
                }
                self.advance_head(tx, key, true)?;
                (delivery, false)
            }
            Settlement::Retry {
                at_ms,
                code,
                reason,
                http_status,
            } => {
                let delivery = set_delivery(
                    "status = 'retrying', next_attempt_at_ms = ?3, last_error = ?4,
                         last_error_code = ?5, last_http_status = ?6",
                    &[&now_ms, &claimed.seq, &at_ms, &reason, &code, &http_status],
                )?;
                let (failures, opened) = bump(true);
                cached_exec(
                    tx,
                    "UPDATE delivery_targets SET next_attempt_at_ms = ?2, lease_owner = NULL,
                         lease_expires_at_ms = NULL, consecutive_failures = ?3,
                         paused_until_ms = CASE WHEN ?4 THEN ?5 ELSE paused_until_ms END
                     WHERE target_key = ?1",
                    params![key, at_ms, failures, opened, pause_until],
                )
                .map_err(|e| self.err(op, e))?;
                (delivery, opened)
            }
            Settlement::DeadLetter {
                code,
                reason,
                http_status,
                retryable,
            } => {
                let delivery = set_delivery(
                    "status = 'dead_lettered', dead_lettered_at_ms = ?1, last_error = ?3,
                         last_error_code = ?4, last_http_status = ?5",
                    &[&now_ms, &claimed.seq, &reason, &code, &http_status],
                )?;
                let (failures, opened) = bump(retryable);
                cached_exec(
                    tx,
                    "UPDATE delivery_targets SET consecutive_failures = ?2,
                         paused_until_ms = CASE WHEN ?3 THEN ?4 ELSE paused_until_ms END
                     WHERE target_key = ?1",
                    params![key, failures, opened, pause_until],
                )
                .map_err(|e| self.err(op, e))?;
                self.advance_head(tx, key, true)?;
                (delivery, opened)
            }
        };
        Ok(SettleOutcome::Settled {
            delivery: Box::new(delivery),
            circuit_opened,
        })
    }

    /// Inside `conn`'s transaction: makes the oldest open delivery of `key` its head (due at its
    /// own due time, unleased), or deletes the target row when none is left. `closed_one`: the
    /// old head was just closed, so the open count drops by one.
    fn advance_head(
        &self,
        conn: &Connection,
        key: &str,
        closed_one: bool,
    ) -> Result<(), StoreError> {
        let op = "advancing a target's queue";
        // The condition matches `deliveries_open_by_target`'s, so this walks that index.
        let next: Option<(i64, i64)> = conn
            .query_row_cached(
                "SELECT seq, next_attempt_at_ms FROM deliveries
                 WHERE target_key = ?1 AND status IN ('pending', 'retrying')
                 ORDER BY seq LIMIT 1",
                [key],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(op, e))?;
        match next {
            Some((seq, due)) => cached_exec(
                conn,
                "UPDATE delivery_targets SET head_seq = ?2, next_attempt_at_ms = ?3,
                     lease_owner = NULL, lease_expires_at_ms = NULL,
                     open_count = MAX(open_count - ?4, 1)
                 WHERE target_key = ?1",
                params![key, seq, due, i64::from(closed_one)],
            ),
            None => cached_exec(
                conn,
                "DELETE FROM delivery_targets WHERE target_key = ?1",
                [key],
            ),
        }
        .map_err(|e| self.err(op, e))?;
        Ok(())
    }

    /// Records per-step progress of a multi-step send. `false` (nothing written) when `owner`
    /// no longer holds the delivery's lease.
    pub fn save_progress(
        &self,
        delivery_id: &str,
        owner: &str,
        progress: &Value,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute_cached(
                "UPDATE deliveries SET progress = ?3, updated_at_ms = ?4
                 WHERE delivery_id = ?1 AND lease_owner = ?2 AND status IN ('pending', 'retrying')",
                params![delivery_id, owner, progress.to_string(), now_ms],
            )
            .map_err(|e| self.err("saving delivery progress", e))?;
        Ok(n == 1)
    }

    /// The earliest time any target matching `filter` becomes claimable: the latest of its due
    /// time, the end of its circuit pause and the expiry of its lease (with `ignore_backoff`,
    /// only the lease counts). `None` when no target has open deliveries. Workers bound their
    /// wait with it.
    pub fn next_due_ms(&self, filter: &ClaimFilter) -> Result<Option<i64>, StoreError> {
        let (kind, name) = match &filter.connector {
            Some((kind, name)) => (Some(kind.as_str()), Some(name.as_str())),
            None => (None, None),
        };
        self.conn()
            .query_row_cached(
                "SELECT MIN(MAX(
                     CASE WHEN ?1 THEN 0 ELSE MAX(t.next_attempt_at_ms, t.paused_until_ms) END,
                     CASE WHEN t.lease_owner IS NULL THEN 0 ELSE t.lease_expires_at_ms + 1 END))
                 FROM delivery_targets t
                 WHERE (?2 IS NULL OR t.plugin = ?2)
                   AND (?3 IS NULL OR EXISTS (SELECT 1 FROM deliveries d
                        WHERE d.seq = t.head_seq AND d.connector_kind = ?3
                          AND d.connector_name = ?4))",
                params![filter.ignore_backoff, filter.plugin, kind, name],
                |row| row.get(0),
            )
            .map_err(|e| self.err("reading the next due delivery", e))
    }

    /// Open deliveries matching `filter` (plugin and connector of the delivery itself): how many
    /// are due now (see [`OpenCounts::due`]) and how many are open at all.
    pub fn count_open(&self, filter: &ClaimFilter, now_ms: i64) -> Result<OpenCounts, StoreError> {
        let (kind, name) = match &filter.connector {
            Some((kind, name)) => (Some(kind.as_str()), Some(name.as_str())),
            None => (None, None),
        };
        let (due, pending): (i64, i64) = self
            .conn()
            .query_row(
                "SELECT
                     COALESCE(SUM(CASE WHEN ?1 OR (t.next_attempt_at_ms <= ?2
                                       AND t.paused_until_ms <= ?2) THEN 1 ELSE 0 END), 0),
                     COUNT(*)
                 FROM deliveries d JOIN delivery_targets t ON t.target_key = d.target_key
                 WHERE d.status IN ('pending', 'retrying')
                   AND (?3 IS NULL OR d.plugin = ?3)
                   AND (?4 IS NULL OR (d.connector_kind = ?4 AND d.connector_name = ?5))",
                params![filter.ignore_backoff, now_ms, filter.plugin, kind, name],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(|e| self.err("counting open deliveries", e))?;
        Ok(OpenCounts {
            due: due.max(0) as u64,
            pending: pending.max(0) as u64,
        })
    }

    /// Whether a worker (of this or another process) holds an unexpired lease on a target with
    /// an open delivery matching `filter`: its settlement may make more work due, so a drain
    /// that found nothing claimable waits for it rather than ending with work in flight.
    pub fn leased_elsewhere(&self, filter: &ClaimFilter, now_ms: i64) -> Result<bool, StoreError> {
        let (kind, name) = match &filter.connector {
            Some((kind, name)) => (Some(kind.as_str()), Some(name.as_str())),
            None => (None, None),
        };
        self.conn()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM delivery_targets t
                     WHERE t.lease_owner IS NOT NULL AND t.lease_expires_at_ms >= ?1
                       AND (?2 IS NULL OR t.plugin = ?2)
                       AND (?3 IS NULL OR EXISTS (SELECT 1 FROM deliveries d
                            WHERE d.target_key = t.target_key
                              AND d.status IN ('pending', 'retrying')
                              AND d.connector_kind = ?3 AND d.connector_name = ?4)))",
                params![now_ms, filter.plugin, kind, name],
                |row| row.get(0),
            )
            .map_err(|e| self.err("looking for leased deliveries", e))
    }

    // -----------------------------------------------------------------------------------------
    // Reads

    /// One delivery by id.
    pub fn get_delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM deliveries d WHERE d.delivery_id = ?1"),
                [id],
                delivery_from_row,
            )
            .optional()
            .map(|found| found.map(|(_, d)| d))
            .map_err(|e| self.err("reading a delivery", e))
    }

    /// Deliveries matching `f`, newest first (`include_resolved` is ignored here).
    pub fn list_deliveries(&self, f: &DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        self.list_where(f, None, "listing deliveries")
    }

    /// Unresolved dead letters (dead-lettered, not resolved, and without a delivered replay)
    /// matching `f`, or every dead letter with `f.include_resolved`; newest first. `f.status`
    /// is ignored (it is `dead_lettered` by definition).
    pub fn list_dead_letters(&self, f: &DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        let filter = DeliveryFilter {
            status: Some(DeliveryStatus::DeadLettered),
            ..f.clone()
        };
        let extra = (!f.include_resolved).then_some(UNRESOLVED);
        self.list_where(&filter, extra, "listing dead letters")
    }

    fn list_where(
        &self,
        f: &DeliveryFilter,
        extra: Option<&str>,
        op: &str,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut clauses: Vec<&str> = Vec::new();
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(status) = f.status {
            clauses.push("d.status = ?");
            values.push(status.as_str().to_string().into());
        }
        if let Some(plugin) = &f.plugin {
            clauses.push("d.plugin = ?");
            values.push(plugin.clone().into());
        }
        if let Some((kind, name)) = &f.connector {
            clauses.push("d.connector_kind = ? AND d.connector_name = ?");
            values.push(kind.as_str().to_string().into());
            values.push(name.clone().into());
        }
        if let Some(session_id) = &f.session_id {
            clauses.push("d.session_id = ?");
            values.push(session_id.clone().into());
        }
        if let Some(run_id) = &f.run_id {
            clauses.push("d.run_id = ?");
            values.push(run_id.clone().into());
        }
        if let Some(since_ms) = f.since_ms {
            clauses.push("d.created_at_ms >= ?");
            values.push(since_ms.into());
        }
        if let Some(extra) = extra {
            clauses.push(extra);
        }
        values.push(limit_of(f.limit).into());
        let where_sql = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql =
            format!("SELECT {COLUMNS} FROM deliveries d {where_sql} ORDER BY d.seq DESC LIMIT ?");
        let mut stmt = self
            .conn()
            .prepare_cached(&sql)
            .map_err(|e| self.err(op, e))?;
        let rows = stmt
            .query_map(params_from_iter(values), delivery_from_row)
            .map_err(|e| self.err(op, e))?;
        rows.map(|r| r.map(|(_, d)| d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(op, e))
    }

    /// Queue figures for metrics at `now_ms`.
    pub fn delivery_stats(&self, now_ms: i64) -> Result<DeliveryStats, StoreError> {
        let op = "reading delivery statistics";
        let mut stats = DeliveryStats::default();
        {
            let mut stmt = self
                .conn()
                .prepare_cached("SELECT status, COUNT(*) FROM deliveries GROUP BY status")
                .map_err(|e| self.err(op, e))?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })
                .map_err(|e| self.err(op, e))?;
            for row in rows {
                let (status, n) = row.map_err(|e| self.err(op, e))?;
                let n = n.max(0) as u64;
                match DeliveryStatus::parse(&status) {
                    Some(DeliveryStatus::Pending) => stats.pending = n,
                    Some(DeliveryStatus::Retrying) => stats.retrying = n,
                    Some(DeliveryStatus::Delivered) => stats.delivered = n,
                    Some(DeliveryStatus::DeadLettered) => stats.dead_lettered = n,
                    None => {}
                }
            }
        }
        let unresolved: i64 = self
            .conn()
            .query_row(
                &format!("SELECT COUNT(*) FROM deliveries d WHERE {UNRESOLVED}"),
                [],
                |row| row.get(0),
            )
            .map_err(|e| self.err(op, e))?;
        stats.dead_letters_unresolved = unresolved.max(0) as u64;
        let (open, oldest): (i64, Option<i64>) = self
            .conn()
            .query_row(
                "SELECT
                     (SELECT COUNT(*) FROM delivery_targets WHERE paused_until_ms > ?1),
                     (SELECT MIN(next_attempt_at_ms) FROM delivery_targets
                      WHERE next_attempt_at_ms <= ?1 AND paused_until_ms <= ?1)",
                [now_ms],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(|e| self.err(op, e))?;
        stats.circuits_open = open.max(0) as u64;
        stats.oldest_due_age_ms = oldest.map_or(0, |at| (now_ms - at).max(0));
        Ok(stats)
    }

    // -----------------------------------------------------------------------------------------
    // Dead letters

    /// The newest replay of `source_id`, if any.
    fn newest_replay(
        &self,
        conn: &Connection,
        source_id: &str,
    ) -> Result<Option<Delivery>, StoreError> {
        cached_row(
            conn,
            &format!(
                "SELECT {COLUMNS} FROM deliveries d WHERE d.replayed_from_delivery_id = ?1
                 ORDER BY d.seq DESC LIMIT 1"
            ),
            [source_id],
            delivery_from_row,
        )
        .optional()
        .map(|found| found.map(|(_, d)| d))
        .map_err(|e| self.err("reading a replay", e))
    }

    fn delivery_in(&self, conn: &Connection, id: &str) -> Result<Option<Delivery>, StoreError> {
        cached_row(
            conn,
            &format!("SELECT {COLUMNS} FROM deliveries d WHERE d.delivery_id = ?1"),
            [id],
            delivery_from_row,
        )
        .optional()
        .map(|found| found.map(|(_, d)| d))
        .map_err(|e| self.err("reading a delivery", e))
    }

    /// Replays one dead letter in one transaction (SPEC §11.6): a NEW pending delivery (new id,
    /// so a new `Idempotency-Key`) for the same output and target, pointing at its source, which
    /// stays unchanged. Without `force`, a source that already has a replay returns the newest
    /// one instead.
    pub fn replay_dead_letter(
        &self,
        id: &str,
        force: bool,
        dry_run: bool,
        now_ms: i64,
    ) -> Result<DeadLetterAction, StoreError> {
        let op = "replaying a dead letter";
        let tx = self.begin(op)?;
        let action = match self.delivery_in(&tx, id)? {
            None => DeadLetterAction::NotFound,
            Some(source) if source.status != DeliveryStatus::DeadLettered => {
                DeadLetterAction::NotDeadLettered(source)
            }
            Some(source) => match self.newest_replay(&tx, id)? {
                Some(replay) if !force => DeadLetterAction::ExistingReplay { source, replay },
                _ if dry_run => DeadLetterAction::WouldReplay(source),
                _ => {
                    let (kind, name) = source
                        .connector
                        .split_once('/')
                        .unwrap_or((source.connector.as_str(), ""));
                    let (_, replay_id) = self.insert_delivery(
                        &tx,
                        &NewDelivery {
                            output_id: &source.output_id,
                            run_id: &source.run_id,
                            session_id: &source.session_id,
                            connector_kind: kind,
                            connector_name: name,
                            target: &source.target,
                            dead_letter: None,
                            replayed_from: Some(&source.delivery_id),
                            now_ms,
                        },
                    )?;
                    let replay = self
                        .delivery_in(&tx, &replay_id)?
                        .ok_or_else(|| self.err(op, rusqlite::Error::QueryReturnedNoRows))?;
                    DeadLetterAction::Replayed { source, replay }
                }
            },
        };
        tx.commit().map_err(|e| self.err(op, e))?;
        Ok(action)
    }

    /// Marks one dead letter as handled without redelivery, in one transaction: `resolution` is
    /// `reason` (or `"resolved"`) and `resolved_at_ms` is now. An already resolved dead letter
    /// keeps its first resolution.
    pub fn resolve_dead_letter(
        &self,
        id: &str,
        reason: Option<&str>,
        dry_run: bool,
        now_ms: i64,
    ) -> Result<DeadLetterAction, StoreError> {
        let op = "resolving a dead letter";
        let tx = self.begin(op)?;
        let action = match self.delivery_in(&tx, id)? {
            None => DeadLetterAction::NotFound,
            Some(source) if source.status != DeliveryStatus::DeadLettered => {
                DeadLetterAction::NotDeadLettered(source)
            }
            Some(source) if source.resolved_at_ms.is_some() => DeadLetterAction::Resolved(source),
            Some(source) if dry_run => DeadLetterAction::WouldResolve(source),
            Some(_) => {
                let reason = reason
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .unwrap_or("resolved");
                let (_, resolved) = tx
                    .query_row(
                        &format!(
                            "UPDATE deliveries SET resolution = ?2, resolved_at_ms = ?3,
                                 updated_at_ms = ?3
                             WHERE delivery_id = ?1 RETURNING {RETURNING}"
                        ),
                        params![id, reason, now_ms],
                        delivery_from_row,
                    )
                    .map_err(|e| self.err(op, e))?;
                DeadLetterAction::Resolved(resolved)
            }
        };
        tx.commit().map_err(|e| self.err(op, e))?;
        Ok(action)
    }

    // -----------------------------------------------------------------------------------------
    // Retention

    /// Deletes expired deliveries (see the module docs): delivered ones whose `delivered_at_ms`
    /// is before `delivered_before_ms`, and done dead letters (with their delivered replays)
    /// whose resolution or redelivery is before `dead_letters_done_before_ms`. Runs in batches
    /// of [`PRUNE_BATCH`], one short transaction each, until a batch finds nothing more.
    pub fn prune_deliveries(
        &self,
        delivered_before_ms: i64,
        dead_letters_done_before_ms: i64,
    ) -> Result<DeliveryPruneReport, StoreError> {
        let mut total = DeliveryPruneReport::default();
        loop {
            let batch = self.prune_deliveries_batch(
                delivered_before_ms,
                dead_letters_done_before_ms,
                PRUNE_BATCH,
            )?;
            total.delivered += batch.delivered;
            total.dead_letters += batch.dead_letters;
            if batch.delivered + batch.dead_letters == 0 {
                return Ok(total);
            }
        }
    }

    /// One prune transaction over at most `batch` candidates of each kind.
    pub fn prune_deliveries_batch(
        &self,
        delivered_before_ms: i64,
        dead_letters_done_before_ms: i64,
        batch: u32,
    ) -> Result<DeliveryPruneReport, StoreError> {
        let op = "pruning deliveries";
        let tx = self.begin(op)?;
        // Delivered deliveries that are not a replay (a delivered replay is its source's
        // resolution record and goes with it) and that nothing refers to.
        let delivered = tx
            .execute(
                "DELETE FROM deliveries WHERE seq IN (
                     SELECT d.seq FROM deliveries d
                     WHERE d.status = 'delivered' AND d.delivered_at_ms < ?1
                       AND d.replayed_from_delivery_id IS NULL
                       AND NOT EXISTS (SELECT 1 FROM deliveries r
                                       WHERE r.replayed_from_delivery_id = d.delivery_id)
                     LIMIT ?2)",
                params![delivered_before_ms, i64::from(batch)],
            )
            .map_err(|e| self.err(op, e))? as u64;
        // Done dead letters whose only referrers are delivered replays: delete those replays,
        // then the dead letters. A dead letter with an open or dead-lettered replay stays (the
        // replay refers to it) until that replay is done and pruned in turn.
        let done_at = "COALESCE(d.resolved_at_ms, (SELECT MIN(r.delivered_at_ms) FROM deliveries r
                 WHERE r.replayed_from_delivery_id = d.delivery_id AND r.status = 'delivered'))";
        let ids: Vec<String> = {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT d.delivery_id FROM deliveries d
                     WHERE d.status = 'dead_lettered' AND {done_at} < ?1
                       AND NOT EXISTS (SELECT 1 FROM deliveries r
                                       WHERE r.replayed_from_delivery_id = d.delivery_id
                                         AND r.status <> 'delivered')
                     LIMIT ?2"
                ))
                .map_err(|e| self.err(op, e))?;
            let rows = stmt
                .query_map(
                    params![dead_letters_done_before_ms, i64::from(batch)],
                    |row| row.get(0),
                )
                .map_err(|e| self.err(op, e))?;
            rows.collect::<Result<_, _>>()
                .map_err(|e| self.err(op, e))?
        };
        let mut dead_letters = 0u64;
        for id in &ids {
            // Delivered replays can never be replayed themselves, so nothing refers to them.
            cached_exec(
                &tx,
                "DELETE FROM deliveries
                 WHERE replayed_from_delivery_id = ?1 AND status = 'delivered'",
                [id],
            )
            .map_err(|e| self.err(op, e))?;
            dead_letters += tx
                .execute("DELETE FROM deliveries WHERE delivery_id = ?1", [id])
                .map_err(|e| self.err(op, e))? as u64;
        }
        tx.commit().map_err(|e| self.err(op, e))?;
        Ok(DeliveryPruneReport {
            delivered,
            dead_letters,
        })
    }
}

/// Test fixtures shared with `delivery`'s unit tests: sessions and claimed runs written with
/// plain SQL (the real writers are ingress and the run claim), outputs through the real path.
#[cfg(test)]
pub(crate) mod fixture {
    use super::*;
    use crate::model::run::RunOutput;
    use crate::store::runs::NewRunOutput;

    pub const T0: i64 = 1_700_000_000_000;

    pub fn store() -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        (tmp, store)
    }

    pub fn http(url: &str) -> ReplyTarget {
        ReplyTarget::new(ReplyPlugin::Http, url).unwrap().0
    }

    /// A claimed run `run_id` of `http/orders` in session `s_<run_id>`, with the given session
    /// defaults and run snapshot.
    pub fn run(store: &Store, run_id: &str, session: &[ReplyTarget], snapshot: &[ReplyTarget]) {
        let session_id = format!("s_{run_id}");
        store
            .conn()
            .execute(
                "INSERT INTO sessions (session_id, created_at_ms, updated_at_ms, created_by,
                     persona_id, capability_scope, credential_scope, reply_targets, metadata)
                 VALUES (?1, ?2, ?2, 'connector:http/orders', NULL, '{}', '{}', ?3, '{}')",
                params![session_id, T0, serde_json::to_string(session).unwrap()],
            )
            .unwrap();
        store
            .conn()
            .execute(
                "INSERT INTO runs (run_id, session_id, connector_kind, connector_name, status,
                     actor_id, input, metadata, reply_targets, policy, created_at_ms,
                     updated_at_ms, claim_owner, claim_expires_at_ms)
                 VALUES (?1, ?2, 'http', 'orders', 'claimed', 'anonymous', '{}', '{}', ?3,
                     '{\"persona_id\":null}', ?4, ?4, 'h', ?5)",
                params![
                    run_id,
                    session_id,
                    serde_json::to_string(snapshot).unwrap(),
                    T0,
                    T0 + 3_600_000
                ],
            )
            .unwrap();
    }

    /// Records a text output of `run_id` (explicit targets when `Some`) through
    /// `add_output_queued`.
    pub fn output(
        store: &Store,
        run_id: &str,
        text: &str,
        explicit: Option<Vec<ReplyTarget>>,
        now_ms: i64,
    ) -> (RunOutput, Enqueued) {
        store
            .add_output_queued(
                run_id,
                None,
                &NewRunOutput {
                    content: Some(text.to_string()),
                    parts: None,
                    reply_targets: explicit,
                },
                now_ms,
            )
            .unwrap()
    }

    /// A run with snapshot `targets` and one output per text; returns the pending ids in order.
    pub fn queue(
        store: &Store,
        run_id: &str,
        targets: &[ReplyTarget],
        texts: &[&str],
    ) -> Vec<String> {
        run(store, run_id, &[], targets);
        texts
            .iter()
            .flat_map(|text| output(store, run_id, text, None, T0).1.pending)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;
    use crate::store::runs::NewRunOutput;

    const LEASE: i64 = 60_000;

    fn claim(store: &Store, owner: &str, now: i64) -> Option<Claimed> {
        store
            .claim_next(owner, LEASE, now, &ClaimFilter::default())
            .unwrap()
    }

    fn text_of(c: &Claimed) -> &str {
        c.job.content.as_deref().unwrap()
    }

    fn settle(store: &Store, owner: &str, c: &Claimed, s: Settlement, now: i64) -> Delivery {
        match store.settle(owner, c, s, now).unwrap() {
            SettleOutcome::Settled { delivery, .. } => *delivery,
            other => panic!("not settled: {other:?}"),
        }
    }

    fn retry(at_ms: i64) -> Settlement {
        Settlement::Retry {
            at_ms,
            code: "http_status_503".into(),
            reason: "target answered 503".into(),
            http_status: Some(503),
        }
    }

    fn dead(retryable: bool) -> Settlement {
        Settlement::DeadLetter {
            code: "http_status_400".into(),
            reason: "target answered 400".into(),
            http_status: Some(400),
            retryable,
        }
    }

    const DELIVERED: Settlement = Settlement::Delivered {
        http_status: Some(200),
    };

    fn target_rows(store: &Store) -> i64 {
        store
            .conn()
            .query_row("SELECT COUNT(*) FROM delivery_targets", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn target_key_is_the_sha256_of_plugin_and_address() {
        assert_eq!(
            target_key(&http("https://example.com/a")),
            "35ad866777d7703c70bbda3fb7f7abbb0c51c31874973944fb79d30a66d6b812"
        );
    }

    #[test]
    fn targets_resolve_explicit_then_run_snapshot_then_session() {
        let (_tmp, store) = store();
        let (s, r, e) = (
            http("https://s.example/"),
            http("https://r.example/"),
            http("https://e.example/"),
        );
        let targets_of = |enq: &Enqueued| -> Vec<String> {
            enq.pending
                .iter()
                .map(|id| store.get_delivery(id).unwrap().unwrap().target.address)
                .collect()
        };
        run(
            &store,
            "run_a",
            std::slice::from_ref(&s),
            std::slice::from_ref(&r),
        );
        let (_, enq) = output(&store, "run_a", "x", Some(vec![e.clone(), e.clone()]), T0);
        assert_eq!(
            targets_of(&enq),
            [e.address.as_str()],
            "explicit wins; duplicates collapse"
        );
        let (_, enq) = output(&store, "run_a", "x", None, T0);
        assert_eq!(
            targets_of(&enq),
            [r.address.as_str()],
            "then the run's snapshot"
        );
        let (_, enq) = output(&store, "run_a", "x", Some(vec![]), T0);
        assert_eq!(
            enq,
            Enqueued::default(),
            "an explicit empty list delivers nowhere"
        );

        run(&store, "run_b", std::slice::from_ref(&s), &[]);
        let (out, enq) = output(&store, "run_b", "x", None, T0);
        assert_eq!(
            targets_of(&enq),
            [s.address.as_str()],
            "then the session's defaults"
        );
        let d = store.get_delivery(&enq.pending[0]).unwrap().unwrap();
        assert_eq!(d.status, DeliveryStatus::Pending);
        assert_eq!((d.attempts, d.next_attempt_at_ms), (0, T0));
        assert_eq!(d.output_id, out.output_id);
        assert_eq!(d.session_id, "s_run_b");
        assert_eq!(d.connector, "http/orders");
        assert!(d.delivery_id.starts_with("dlv_"));

        run(&store, "run_c", &[], &[]);
        let (_, enq) = output(&store, "run_c", "x", None, T0);
        assert_eq!(enq, Enqueued::default(), "no target anywhere: no delivery");
    }

    #[test]
    fn a_target_that_no_longer_validates_is_dead_lettered_at_enqueue() {
        let (_tmp, store) = store();
        run(&store, "run_a", &[], &[]);
        let broken = ReplyTarget {
            plugin: ReplyPlugin::Http,
            address: "ftp://example.com/x".into(),
        };
        let (_, enq) = output(
            &store,
            "run_a",
            "x",
            Some(vec![broken, http("https://ok.example/")]),
            T0,
        );
        assert_eq!((enq.pending.len(), enq.dead_lettered.len()), (1, 1));
        let d = store.get_delivery(&enq.dead_lettered[0]).unwrap().unwrap();
        assert_eq!(d.status, DeliveryStatus::DeadLettered);
        assert_eq!(d.last_error_code.as_deref(), Some(INVALID_TARGET_CODE));
        assert_eq!(d.dead_lettered_at_ms, Some(T0));
        assert_eq!(target_rows(&store), 1, "only the valid target is queued");
        let listed = store.list_dead_letters(&DeliveryFilter::default()).unwrap();
        assert_eq!(listed.len(), 1);
    }

    #[test]
    fn completing_with_output_queues_in_the_same_transaction() {
        let (_tmp, store) = store();
        run(&store, "run_a", &[], &[http("https://r.example/")]);
        run(&store, "run_b", &[], &[http("https://r.example/")]);
        let text = NewRunOutput {
            content: Some("done".into()),
            ..NewRunOutput::default()
        };
        let (_, out, enq) = store
            .complete_with_output_queued("run_a", Some("h"), Some(&text), T0)
            .unwrap();
        assert!(out.is_some() && enq.has_pending());
        // A refused completion writes neither the output nor deliveries.
        assert!(store
            .complete_with_output_queued("run_b", Some("other"), Some(&text), T0)
            .is_err());
        let all = store.list_deliveries(&DeliveryFilter::default()).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].run_id, "run_a");
    }

    #[test]
    fn one_round_settles_many_and_claims_what_the_settlements_freed() {
        let (_tmp, store) = store();
        let (a, b) = (http("https://a.example/"), http("https://b.example/"));
        queue(&store, "run_a", std::slice::from_ref(&a), &["a1", "a2"]);
        queue(&store, "run_b", std::slice::from_ref(&b), &["b1", "b2"]);
        let none = ClaimFilter::default();
        let (outcomes, first) = store
            .settle_all_and_claim("pool", &[], 8, LEASE, T0, &none)
            .unwrap();
        assert!(outcomes.is_empty());
        let mut texts: Vec<&str> = first.iter().map(text_of).collect();
        texts.sort_unstable();
        assert_eq!(
            texts,
            ["a1", "b1"],
            "one head per target, however many are wanted"
        );

        // a1 delivered, b1 retried later: the same round claims a2 (freed by the settlement)
        // and nothing of b (its head is not due).
        let settled: Vec<(Claimed, Settlement)> = first
            .into_iter()
            .map(|c| {
                let s = if text_of(&c) == "a1" {
                    DELIVERED
                } else {
                    retry(T0 + 1_000)
                };
                (c, s)
            })
            .collect();
        let (outcomes, next) = store
            .settle_all_and_claim("pool", &settled, 8, LEASE, T0 + 1, &none)
            .unwrap();
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes
            .iter()
            .all(|o| matches!(o, SettleOutcome::Settled { .. })));
        assert_eq!(next.iter().map(text_of).collect::<Vec<_>>(), ["a2"]);

        // A settlement by an owner that does not hold the lease is refused, not written; the
        // claim limit is honoured.
        let (outcomes, none_claimed) = store
            .settle_all_and_claim(
                "intruder",
                &[(next[0].clone(), DELIVERED)],
                0,
                LEASE,
                T0 + 2,
                &none,
            )
            .unwrap();
        assert!(matches!(outcomes[0], SettleOutcome::LeaseLost { .. }));
        assert!(none_claimed.is_empty());
        assert_eq!(
            store
                .get_delivery(&next[0].job.delivery.delivery_id)
                .unwrap()
                .unwrap()
                .status,
            DeliveryStatus::Pending
        );
    }

    #[test]
    fn a_failing_head_blocks_its_target_only() {
        let (_tmp, store) = store();
        let (a, b) = (http("https://a.example/"), http("https://b.example/"));
        queue(&store, "run_a", std::slice::from_ref(&a), &["a1", "a2"]);
        queue(&store, "run_b", std::slice::from_ref(&b), &["b1"]);

        let first = claim(&store, "w", T0).unwrap();
        let second = claim(&store, "w", T0).unwrap();
        let mut texts = [text_of(&first), text_of(&second)];
        texts.sort_unstable();
        assert_eq!(texts, ["a1", "b1"], "only heads are claimed");
        assert!(
            claim(&store, "w", T0).is_none(),
            "a2 waits behind its leased head"
        );
        let (ca, cb) = if text_of(&first) == "a1" {
            (first, second)
        } else {
            (second, first)
        };
        assert_eq!(ca.job.attempt, 1);

        let d = settle(&store, "w", &ca, retry(T0 + 1_000), T0 + 5);
        assert_eq!(d.status, DeliveryStatus::Retrying);
        assert_eq!((d.attempts, d.next_attempt_at_ms), (1, T0 + 1_000));
        assert_eq!(d.last_error_code.as_deref(), Some("http_status_503"));
        assert_eq!(d.last_http_status, Some(503));
        assert_eq!(d.lease_owner, None);
        assert!(
            claim(&store, "w", T0 + 10).is_none(),
            "a1 is not due and a2 is behind it"
        );
        let d = settle(&store, "w", &cb, DELIVERED, T0 + 10);
        assert_eq!(d.status, DeliveryStatus::Delivered);
        assert_eq!(d.delivered_at_ms, Some(T0 + 10));

        let again = claim(&store, "w", T0 + 1_000).unwrap();
        assert_eq!((text_of(&again), again.job.attempt), ("a1", 2));
        settle(&store, "w", &again, DELIVERED, T0 + 1_001);
        let next = claim(&store, "w", T0 + 1_001).unwrap();
        assert_eq!((text_of(&next), next.job.attempt), ("a2", 1));
        settle(&store, "w", &next, DELIVERED, T0 + 1_002);
        assert_eq!(target_rows(&store), 0, "no open delivery, no target row");
    }

    #[test]
    fn dead_letters_move_the_head_on() {
        let (_tmp, store) = store();
        queue(
            &store,
            "run_a",
            &[http("https://a.example/")],
            &["a1", "a2", "a3"],
        );
        let c = claim(&store, "w", T0).unwrap();
        let d = settle(&store, "w", &c, dead(false), T0 + 1);
        assert_eq!(d.status, DeliveryStatus::DeadLettered);
        assert_eq!(d.dead_lettered_at_ms, Some(T0 + 1));
        assert_eq!(d.attempts, 1);
        assert_eq!(d.last_error_code.as_deref(), Some("http_status_400"));
        let c = claim(&store, "w", T0 + 1).unwrap();
        assert_eq!(text_of(&c), "a2");
        settle(&store, "w", &c, dead(true), T0 + 2);
        let c = claim(&store, "w", T0 + 2).unwrap();
        assert_eq!(text_of(&c), "a3");
        settle(&store, "w", &c, DELIVERED, T0 + 3);
        assert_eq!(target_rows(&store), 0);
        assert_eq!(
            store
                .list_dead_letters(&DeliveryFilter::default())
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn three_retryable_failures_open_the_circuit_for_one_target() {
        let (_tmp, store) = store();
        queue(&store, "run_a", &[http("https://a.example/")], &["a1"]);
        let mut now = T0;
        for n in 1..=3 {
            let c = store
                .claim_next(
                    "w",
                    LEASE,
                    now,
                    &ClaimFilter {
                        plugin: None,
                        connector: None,
                        ignore_backoff: false,
                    },
                )
                .unwrap()
                .unwrap();
            assert_eq!(text_of(&c), "a1");
            match store.settle("w", &c, retry(now + 1), now).unwrap() {
                SettleOutcome::Settled { circuit_opened, .. } => assert_eq!(circuit_opened, n == 3),
                other => panic!("{other:?}"),
            }
            now += 1;
        }
        // Paused for 60 s from the third failure (at `now - 1`).
        let paused_until = now - 1 + CIRCUIT_PAUSE_MS;
        queue(&store, "run_b", &[http("https://b.example/")], &["b1"]);
        let b = claim(&store, "w", now + 10).unwrap();
        assert_eq!(text_of(&b), "b1", "other targets keep flowing");
        assert!(claim(&store, "w", now + 10).is_none());
        assert_eq!(store.delivery_stats(now + 10).unwrap().circuits_open, 1);
        assert_eq!(
            store.next_due_ms(&ClaimFilter::default()).unwrap(),
            Some(paused_until)
        );
        assert!(claim(&store, "w", paused_until - 1).is_none());
        let a = claim(&store, "w", paused_until).unwrap();
        assert_eq!((text_of(&a), a.job.attempt), ("a1", 4));
        // The counter restarted at the pause: one more failure does not pause again.
        match store
            .settle("w", &a, retry(paused_until + 1), paused_until)
            .unwrap()
        {
            SettleOutcome::Settled { circuit_opened, .. } => assert!(!circuit_opened),
            other => panic!("{other:?}"),
        }
        // --ignore-backoff claims through backoff and an open circuit alike.
        let ignore = ClaimFilter {
            ignore_backoff: true,
            ..ClaimFilter::default()
        };
        assert!(store
            .claim_next("w", LEASE, paused_until, &ignore)
            .unwrap()
            .is_some());
    }

    #[test]
    fn an_expired_lease_is_claimable_again_and_the_old_owner_cannot_settle() {
        let (_tmp, store) = store();
        let ids = queue(&store, "run_a", &[http("https://a.example/")], &["a1"]);
        let first = store
            .claim_next("w1", 1_000, T0, &ClaimFilter::default())
            .unwrap()
            .unwrap();
        assert_eq!(first.lease_expires_at_ms, T0 + 1_000);
        let leased = store.get_delivery(&ids[0]).unwrap().unwrap();
        assert_eq!(leased.lease_owner.as_deref(), Some("w1"));
        assert_eq!(leased.lease_expires_at_ms, Some(T0 + 1_000));
        assert!(store
            .claim_next("w2", 1_000, T0 + 1_000, &ClaimFilter::default())
            .unwrap()
            .is_none());
        assert_eq!(
            store.next_due_ms(&ClaimFilter::default()).unwrap(),
            Some(T0 + 1_001)
        );
        let second = store
            .claim_next("w2", 1_000, T0 + 1_001, &ClaimFilter::default())
            .unwrap()
            .unwrap();
        assert_eq!(second.job.delivery.delivery_id, ids[0]);
        assert_eq!(second.job.attempt, 1, "a crashed attempt is not counted");

        assert!(!store
            .save_progress(&ids[0], "w1", &serde_json::json!({"step": 1}), T0)
            .unwrap());
        assert!(store
            .save_progress(&ids[0], "w2", &serde_json::json!({"step": 1}), T0)
            .unwrap());
        match store.settle("w1", &first, DELIVERED, T0 + 1_002).unwrap() {
            SettleOutcome::LeaseLost {
                current_owner,
                status,
                ..
            } => {
                assert_eq!(current_owner.as_deref(), Some("w2"));
                assert_eq!(status, DeliveryStatus::Pending);
            }
            other => panic!("{other:?}"),
        }
        let d = settle(&store, "w2", &second, DELIVERED, T0 + 1_003);
        assert_eq!(d.progress, Some(serde_json::json!({"step": 1})));
        // Settled already: a second settlement is refused too.
        assert!(matches!(
            store.settle("w2", &second, DELIVERED, T0 + 1_004).unwrap(),
            SettleOutcome::LeaseLost {
                status: DeliveryStatus::Delivered,
                ..
            }
        ));
    }

    #[test]
    fn claims_follow_plugin_and_connector_filters() {
        let (_tmp, store) = store();
        queue(&store, "run_a", &[http("https://a.example/")], &["a1"]);
        let slack = ClaimFilter {
            plugin: Some("slack".into()),
            ..ClaimFilter::default()
        };
        assert!(store.claim_next("w", LEASE, T0, &slack).unwrap().is_none());
        assert_eq!(store.next_due_ms(&slack).unwrap(), None);
        let other = ClaimFilter {
            connector: Some((ConnectorKind::Http, "billing".into())),
            ..ClaimFilter::default()
        };
        assert!(store.claim_next("w", LEASE, T0, &other).unwrap().is_none());
        let orders = ClaimFilter {
            plugin: Some("http".into()),
            connector: Some((ConnectorKind::Http, "orders".into())),
            ignore_backoff: false,
        };
        assert_eq!(
            store.count_open(&orders, T0).unwrap(),
            OpenCounts { due: 1, pending: 1 }
        );
        assert!(store.claim_next("w", LEASE, T0, &orders).unwrap().is_some());
    }

    #[test]
    fn next_due_is_the_earliest_claimable_time() {
        let (_tmp, store) = store();
        let all = ClaimFilter::default();
        assert_eq!(store.next_due_ms(&all).unwrap(), None);
        queue(
            &store,
            "run_a",
            &[http("https://a.example/")],
            &["a1", "a2"],
        );
        assert_eq!(store.next_due_ms(&all).unwrap(), Some(T0));
        let c = claim(&store, "w", T0 + 5).unwrap();
        assert_eq!(store.next_due_ms(&all).unwrap(), Some(T0 + 5 + LEASE + 1));
        settle(&store, "w", &c, retry(T0 + 7_000), T0 + 6);
        assert_eq!(store.next_due_ms(&all).unwrap(), Some(T0 + 7_000));
        let ignore = ClaimFilter {
            ignore_backoff: true,
            ..ClaimFilter::default()
        };
        assert_eq!(
            store.next_due_ms(&ignore).unwrap(),
            Some(0),
            "claimable now"
        );
        assert_eq!(
            store.count_open(&all, T0 + 6).unwrap(),
            OpenCounts { due: 0, pending: 2 }
        );
        assert_eq!(
            store.count_open(&ignore, T0 + 6).unwrap(),
            OpenCounts { due: 2, pending: 2 }
        );
    }

    #[test]
    fn listings_filter_and_go_newest_first() {
        let (_tmp, store) = store();
        let ids = queue(
            &store,
            "run_a",
            &[http("https://a.example/")],
            &["a1", "a2", "a3"],
        );
        let listed = |f: DeliveryFilter| -> Vec<String> {
            store
                .list_deliveries(&f)
                .unwrap()
                .into_iter()
                .map(|d| d.delivery_id)
                .collect()
        };
        assert_eq!(
            listed(DeliveryFilter::default()),
            [ids[2].clone(), ids[1].clone(), ids[0].clone()]
        );
        assert_eq!(
            listed(DeliveryFilter {
                limit: 1,
                ..DeliveryFilter::default()
            }),
            [ids[2].clone()]
        );
        assert_eq!(
            listed(DeliveryFilter {
                run_id: Some("nope".into()),
                ..DeliveryFilter::default()
            })
            .len(),
            0
        );
        assert_eq!(
            listed(DeliveryFilter {
                session_id: Some("s_run_a".into()),
                ..DeliveryFilter::default()
            })
            .len(),
            3
        );
        assert_eq!(
            listed(DeliveryFilter {
                plugin: Some("slack".into()),
                ..DeliveryFilter::default()
            })
            .len(),
            0
        );
        assert_eq!(
            listed(DeliveryFilter {
                connector: Some((ConnectorKind::Http, "orders".into())),
                ..DeliveryFilter::default()
            })
            .len(),
            3
        );
        assert_eq!(
            listed(DeliveryFilter {
                since_ms: Some(T0 + 1),
                ..DeliveryFilter::default()
            })
            .len(),
            0
        );
        let c = claim(&store, "w", T0).unwrap();
        settle(&store, "w", &c, DELIVERED, T0);
        assert_eq!(
            listed(DeliveryFilter {
                status: Some(DeliveryStatus::Delivered),
                ..DeliveryFilter::default()
            }),
            [ids[0].clone()]
        );
        assert_eq!(store.get_delivery("dlv_missing").unwrap(), None);
    }

    #[test]
    fn replays_append_to_the_fifo_and_resolve_the_source_when_delivered() {
        let (_tmp, store) = store();
        let ids = queue(&store, "run_a", &[http("https://a.example/")], &["a1"]);
        let c = claim(&store, "w", T0).unwrap();
        settle(&store, "w", &c, dead(false), T0 + 1);
        let unresolved = |include_resolved: bool| -> usize {
            store
                .list_dead_letters(&DeliveryFilter {
                    include_resolved,
                    ..DeliveryFilter::default()
                })
                .unwrap()
                .len()
        };
        assert_eq!(unresolved(false), 1);
        assert_eq!(
            store
                .delivery_stats(T0 + 1)
                .unwrap()
                .dead_letters_unresolved,
            1
        );

        let DeadLetterAction::Replayed { source, replay } = store
            .replay_dead_letter(&ids[0], false, false, T0 + 2)
            .unwrap()
        else {
            panic!("not replayed")
        };
        assert_eq!(source.status, DeliveryStatus::DeadLettered);
        assert_ne!(
            replay.delivery_id, source.delivery_id,
            "a new id, so a new Idempotency-Key"
        );
        assert_eq!(
            replay.replayed_from_delivery_id.as_deref(),
            Some(ids[0].as_str())
        );
        assert_eq!(
            (replay.status, replay.attempts),
            (DeliveryStatus::Pending, 0)
        );
        assert_eq!(
            (replay.output_id.as_str(), &replay.target),
            (source.output_id.as_str(), &source.target)
        );
        assert_eq!(
            unresolved(false),
            1,
            "still unresolved until the replay is delivered"
        );
        let c = claim(&store, "w", T0 + 2).unwrap();
        assert_eq!(c.job.delivery.delivery_id, replay.delivery_id);
        assert_eq!(text_of(&c), "a1");
        settle(&store, "w", &c, DELIVERED, T0 + 3);
        assert_eq!(unresolved(false), 0);
        assert_eq!(unresolved(true), 1);
        assert_eq!(
            store.get_delivery(&ids[0]).unwrap().unwrap(),
            source,
            "the dead letter is unchanged"
        );
    }

    #[test]
    fn stats_count_states_circuits_and_lag() {
        let (_tmp, store) = store();
        run(&store, "run_a", &[], &[http("https://a.example/")]);
        output(&store, "run_a", "a1", None, T0);
        output(&store, "run_a", "a2", None, T0);
        run(&store, "run_b", &[], &[http("https://b.example/")]);
        output(&store, "run_b", "b1", None, T0 + 100);
        let s = store.delivery_stats(T0 + 250).unwrap();
        assert_eq!(
            (s.pending, s.retrying, s.delivered, s.dead_lettered),
            (3, 0, 0, 0)
        );
        assert_eq!(s.oldest_due_age_ms, 250, "a's head has been due since T0");
        let c = claim(&store, "w", T0 + 250).unwrap();
        assert_eq!(text_of(&c), "a1", "the target due longest goes first");
        settle(&store, "w", &c, retry(T0 + 10_000), T0 + 260);
        let c = claim(&store, "w", T0 + 260).unwrap();
        assert_eq!(text_of(&c), "b1");
        settle(&store, "w", &c, dead(false), T0 + 270);
        let s = store.delivery_stats(T0 + 300).unwrap();
        assert_eq!(
            (s.pending, s.retrying, s.delivered, s.dead_lettered),
            (1, 1, 0, 1)
        );
        assert_eq!((s.dead_letters_unresolved, s.circuits_open), (1, 0));
        assert_eq!(s.oldest_due_age_ms, 0, "nothing is due until T0 + 10 s");
        assert_eq!(
            store.delivery_stats(T0 + 10_500).unwrap().oldest_due_age_ms,
            500
        );
    }

    /// Moves a delivery's timestamps back by `ms` (the clock of the test, not of the store).
    fn age(store: &Store, id: &str, delivered: Option<i64>, resolved: Option<i64>) {
        store
            .conn()
            .execute(
                "UPDATE deliveries SET delivered_at_ms = COALESCE(?2, delivered_at_ms),
                     resolved_at_ms = COALESCE(?3, resolved_at_ms) WHERE delivery_id = ?1",
                params![id, delivered, resolved],
            )
            .unwrap();
    }

    #[test]
    fn prune_keeps_what_retention_requires() {
        let (_tmp, store) = store();
        const DAY: i64 = 24 * 3600 * 1000;
        let now = T0 + 100 * DAY;
        let cut = |s: &Store| {
            s.prune_deliveries(now - DELIVERED_RETENTION_MS, now - DEAD_LETTER_RETENTION_MS)
                .unwrap()
        };
        let mut settle_head = |text: &str, s: Settlement| -> String {
            let c = claim(&store, "w", T0).unwrap();
            assert_eq!(text_of(&c), text);
            settle(&store, "w", &c, s, T0).delivery_id
        };
        let _ = &mut settle_head;
        let ids = queue(
            &store,
            "run_a",
            &[http("https://a.example/")],
            &[
                "old_ok",
                "new_ok",
                "dl_open",
                "dl_resolved",
                "dl_replayed",
                "open",
            ],
        );
        let old_ok = settle_head("old_ok", DELIVERED);
        let new_ok = settle_head("new_ok", DELIVERED);
        let dl_open = settle_head("dl_open", dead(false));
        let dl_resolved = settle_head("dl_resolved", dead(false));
        let dl_replayed = settle_head("dl_replayed", dead(false));
        assert_eq!(ids.len(), 6);
        age(&store, &old_ok, Some(now - 8 * DAY), None);
        age(&store, &new_ok, Some(now - 6 * DAY), None);
        store
            .resolve_dead_letter(&dl_resolved, None, false, now)
            .unwrap();
        age(&store, &dl_resolved, None, Some(now - 31 * DAY));
        // The replay of dl_replayed was delivered 8 days ago: older than the delivered
        // retention, but it is its source's resolution record, kept for 30 days with it.
        let DeadLetterAction::Replayed { replay, .. } = store
            .replay_dead_letter(&dl_replayed, false, false, now)
            .unwrap()
        else {
            panic!()
        };
        let c = claim(&store, "w", T0).unwrap();
        assert_eq!(text_of(&c), "open");
        settle(&store, "w", &c, retry(T0), T0);
        // A resolved dead letter with an open replay stays while the replay refers to it.
        let DeadLetterAction::Replayed {
            replay: open_replay,
            ..
        } = store
            .replay_dead_letter(&dl_open, false, false, now)
            .unwrap()
        else {
            panic!()
        };
        age(&store, &dl_open, None, Some(now - 40 * DAY));
        let c = claim(&store, "w", now).unwrap();
        assert_eq!(text_of(&c), "open");
        settle(&store, "w", &c, DELIVERED, now);
        let c = claim(&store, "w", now).unwrap();
        assert_eq!(c.job.delivery.delivery_id, replay.delivery_id);
        settle(&store, "w", &c, DELIVERED, now);
        age(&store, &replay.delivery_id, Some(now - 8 * DAY), None);

        let report = cut(&store);
        assert_eq!(
            report,
            DeliveryPruneReport {
                delivered: 1,
                dead_letters: 1
            }
        );
        let exists = |id: &str| store.get_delivery(id).unwrap().is_some();
        assert!(!exists(&old_ok) && !exists(&dl_resolved));
        assert!(exists(&new_ok) && exists(&dl_open) && exists(&open_replay.delivery_id));
        assert!(exists(&dl_replayed) && exists(&replay.delivery_id));

        // 31 days after the replay was delivered, the pair goes together.
        age(&store, &replay.delivery_id, Some(now - 31 * DAY), None);
        let report = cut(&store);
        assert_eq!(report.dead_letters, 1);
        assert!(!exists(&dl_replayed) && !exists(&replay.delivery_id));
        assert!(exists(&dl_open), "its open replay still refers to it");
        assert_eq!(cut(&store), DeliveryPruneReport::default());
    }

    #[test]
    fn prune_never_touches_unresolved_dead_letters() {
        let (_tmp, store) = store();
        queue(&store, "run_a", &[http("https://a.example/")], &["a1"]);
        let c = claim(&store, "w", T0).unwrap();
        let id = settle(&store, "w", &c, dead(false), T0).delivery_id;
        let report = store.prune_deliveries(i64::MAX, i64::MAX).unwrap();
        assert_eq!(report, DeliveryPruneReport::default());
        assert!(store.get_delivery(&id).unwrap().is_some());
    }
}
