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
//!
//! # Layout
//!
//! This file holds what the parts share: the row mapping, the statement-cache helpers and the
//! target key. `enqueue` creates deliveries inside the output transaction; `queue` claims,
//! settles, leases and runs the circuit breaker; `listing` reads (one delivery, listings,
//! statistics); `dead_letters` replays and resolves; `prune` applies retention.
//!
//! The queue's SQL lives here and nowhere else; it must not send anything, read a clock (every
//! function takes `now_ms`) or know about transports, HTTP or retry policy (the caller maps an
//! attempt's outcome to a [`Settlement`]).

mod dead_letters;
mod enqueue;
mod listing;
mod prune;
mod queue;

pub use dead_letters::DeadLetterAction;
pub use enqueue::{Enqueued, INVALID_TARGET_CODE};
pub use listing::{
    DeliveryFilter, DeliveryStats, PausedTarget, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT,
};
pub use prune::{
    DeliveryPruneReport, DEAD_LETTER_RETENTION_MS, DELIVERED_RETENTION_MS, PRUNE_BATCH,
};
pub use queue::{
    ClaimFilter, Claimed, OpenCounts, SettleOutcome, Settlement, TargetPacing, CIRCUIT_PAUSE_MS,
    CIRCUIT_THRESHOLD,
};

use rusqlite::types::Type;
use rusqlite::{Connection, Row};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Store, StoreError};
use crate::model::delivery::{Delivery, DeliveryStatus};
use crate::model::reply::{ReplyPlugin, ReplyTarget};

/// The identity of a reply target for per-target order and the circuit breaker: lowercase hex
/// SHA-256 of `plugin + "\n" + address`. The only definition; everything else calls this.
pub fn target_key(target: &ReplyTarget) -> String {
    let mut hasher = Sha256::new();
    hasher.update(target.plugin.as_str().as_bytes());
    hasher.update(b"\n");
    hasher.update(target.address.as_bytes());
    hex::encode(hasher.finalize())
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
/// A delivery by `seq` with its output's `content` (column 26) and `parts` (27): what a claim
/// hands to a sender.
const CLAIMED_ROW: &str = concat!(
    "SELECT ",
    delivery_columns!("d."),
    ", o.content, o.parts FROM deliveries d JOIN run_outputs o ON o.output_id = d.output_id
     WHERE d.seq = ?1"
);

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

impl Store {
    fn begin(&self, op: &str) -> Result<super::WriteTx<'_>, StoreError> {
        self.write_tx(op)
    }
}

/// Test fixtures shared with `delivery`'s unit tests: sessions and claimed runs written with
/// plain SQL (the real writers are ingress and the run claim), outputs through the real path.
#[cfg(test)]
pub(crate) mod fixture {
    use rusqlite::params;

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
                     updated_at_ms, claim_owner, claim_expires_at_ms, session_created_at_ms)
                 VALUES (?1, ?2, 'http', 'orders', 'claimed', 'anonymous', '{}', '{}', ?3,
                     '{\"persona_id\":null}', ?4, ?4, 'h', ?5,
                     (SELECT created_at_ms FROM sessions WHERE session_id = ?2))",
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

/// Test helpers shared by the unit tests of the submodules: claim, settle and the usual
/// settlements.
#[cfg(test)]
mod test_support {
    use super::*;

    pub(super) const LEASE: i64 = 60_000;

    pub(super) fn claim(store: &Store, owner: &str, now: i64) -> Option<Claimed> {
        store
            .claim_next(owner, LEASE, now, &ClaimFilter::default())
            .unwrap()
    }

    pub(super) fn text_of(c: &Claimed) -> &str {
        c.job.content.as_deref().unwrap()
    }

    pub(super) fn settle(
        store: &Store,
        owner: &str,
        c: &Claimed,
        s: Settlement,
        now: i64,
    ) -> Delivery {
        match store
            .settle(owner, c, s, now, &TargetPacing::default())
            .unwrap()
        {
            SettleOutcome::Settled { .. } => store
                .get_delivery(&c.job.delivery.delivery_id)
                .unwrap()
                .expect("the settled delivery"),
            other => panic!("not settled: {other:?}"),
        }
    }

    pub(super) fn retry(at_ms: i64) -> Settlement {
        Settlement::Retry {
            at_ms,
            code: "http_status_503".into(),
            reason: "target answered 503".into(),
            http_status: Some(503),
        }
    }

    pub(super) fn dead(retryable: bool) -> Settlement {
        Settlement::DeadLetter {
            code: "http_status_400".into(),
            reason: "target answered 400".into(),
            http_status: Some(400),
            retryable,
        }
    }

    pub(super) const DELIVERED: Settlement = Settlement::Delivered {
        http_status: Some(200),
    };

    pub(super) fn target_rows(store: &Store) -> i64 {
        store
            .conn()
            .query_row("SELECT COUNT(*) FROM delivery_targets", [], |r| r.get(0))
            .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;

    #[test]
    fn target_key_is_the_sha256_of_plugin_and_address() {
        assert_eq!(
            target_key(&http("https://example.com/a")),
            "35ad866777d7703c70bbda3fb7f7abbb0c51c31874973944fb79d30a66d6b812"
        );
    }
}
