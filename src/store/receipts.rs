//! Reading and pruning ingress receipts (SPEC §0, §3 retention, §6.3): the SQL behind
//! `kheishctl inspect-receipts`, `GET /v1/receipts` and the daemon's retention task.
//!
//! Receipts are written only by the ingress writer (`store::writer`), in the same transaction
//! as their run; this module never inserts or updates one. It lists them with bound parameters
//! only, and deletes them in bounded batches, each its own short transaction, so a large prune
//! never holds the write lock long enough to stall ingress.

use rusqlite::types::Value;
use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};
use crate::model::run::Receipt;
use crate::model::ConnectorKind;

/// The most rows one prune transaction deletes. Deleting 5 000 receipts (and their index
/// entries) takes a few milliseconds, short enough for the group-commit writer to wait behind.
pub const PRUNE_BATCH: u32 = 5_000;

/// Which receipts [`Store::list_receipts`] returns. Every filter that is set must match (AND).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptFilter {
    /// Only receipts of this connector (kind, name).
    pub connector: Option<(ConnectorKind, String)>,
    /// Only the receipt with this STORED key (`http:orders:<hash>`, as
    /// `ingress::receipt_key` derives it from a raw key); never a raw key.
    pub receipt_key: Option<String>,
    /// Only receipts whose raw key has one of these SHA-256 digests (`key_sha256`), of any
    /// connector: a key lookup without a connector. Read without an index (a scan of the
    /// receipts), so the connector form above is the fast one.
    pub key_sha256: Option<Vec<String>>,
    /// Only the receipt of this run.
    pub run_id: Option<String>,
    /// Only receipts of this session.
    pub session_id: Option<String>,
    /// Only receipts received at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// At most this many rows (newest first).
    pub limit: u32,
}

impl ReceiptFilter {
    /// No filter, at most `limit` rows.
    pub fn all(limit: u32) -> ReceiptFilter {
        ReceiptFilter {
            connector: None,
            receipt_key: None,
            key_sha256: None,
            run_id: None,
            session_id: None,
            since_ms: None,
            limit,
        }
    }
}

/// What one prune did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Receipts deleted because they were older than the retention window.
    pub expired: u64,
    /// Receipts deleted because their connector had more than the per-connector cap.
    pub over_cap: u64,
    /// False when the caller asked to stop between batches before the prune finished; the rest
    /// is pruned next time.
    pub complete: bool,
}

impl PruneReport {
    /// Receipts deleted in total.
    pub fn total(&self) -> u64 {
        self.expired + self.over_cap
    }
}

const RECEIPT_COLUMNS: &str = "receipt_key, connector_kind, connector_name, key_sha256, \
     fingerprint, status, run_id, session_id, received_at_ms, duplicate_hits, last_duplicate_at_ms";

impl Store {
    /// Receipts matching `filter`, newest first (ties: most recently inserted first).
    pub fn list_receipts(&self, filter: &ReceiptFilter) -> Result<Vec<Receipt>, StoreError> {
        let op = "listing ingress receipts";
        let (sql, values) = receipt_query(filter);
        let mut stmt = self.conn().prepare(&sql).map_err(|e| self.err(op, e))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(values), receipt_from_row)
            .map_err(|e| self.err(op, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(op, e))
    }

    /// The receipt time of the oldest submitted receipt (Unix ms), or `None` when there is none.
    /// The retention task uses it to sleep until the next receipt expires.
    pub fn oldest_receipt_ms(&self) -> Result<Option<i64>, StoreError> {
        self.conn()
            .query_row(
                "SELECT MIN(received_at_ms) FROM receipts WHERE status = 'submitted'",
                [],
                |row| row.get(0),
            )
            .map_err(|e| self.err("finding the oldest ingress receipt", e))
    }

    /// Deletes submitted receipts received before `older_than_ms`, then, per connector, the
    /// oldest receipts beyond the newest `max_per_connector` (SPEC §3). Runs to completion in
    /// batches of at most [`PRUNE_BATCH`] rows, each batch its own transaction.
    pub fn prune_receipts(
        &self,
        older_than_ms: i64,
        max_per_connector: u64,
    ) -> Result<PruneReport, StoreError> {
        self.prune_receipts_with(older_than_ms, max_per_connector, PRUNE_BATCH, &mut || true)
    }

    /// [`Store::prune_receipts`] with a batch size and a `keep_going` check asked before every
    /// batch: when it answers false the prune stops early (`complete: false`). The daemon's
    /// retention task uses it so that shutdown never waits for a long backlog.
    pub fn prune_receipts_with(
        &self,
        older_than_ms: i64,
        max_per_connector: u64,
        batch: u32,
        keep_going: &mut dyn FnMut() -> bool,
    ) -> Result<PruneReport, StoreError> {
        let batch = i64::from(batch.max(1));
        let mut report = PruneReport::default();

        // 1. Age. The index on received_at_ms finds the expired rows without a scan.
        loop {
            if !keep_going() {
                return Ok(report);
            }
            let n = self
                .conn()
                .execute(
                    "DELETE FROM receipts WHERE rowid IN (
                         SELECT rowid FROM receipts
                         WHERE received_at_ms < ?1 AND status = 'submitted'
                         ORDER BY received_at_ms LIMIT ?2)",
                    params![older_than_ms, batch],
                )
                .map_err(|e| self.err("pruning expired ingress receipts", e))?;
            report.expired += n as u64;
            if (n as i64) < batch {
                break;
            }
        }

        // 2. The per-connector cap. For each connector, find the newest receipt that falls
        // outside the cap once (OFFSET walks the connector index), then delete it and everything
        // older in batches. Receipts that arrive meanwhile are newer than that boundary, so they
        // are never counted against it, and two pruners running at once delete the same rows.
        let offset = i64::try_from(max_per_connector).unwrap_or(i64::MAX);
        for (kind, name) in self.receipt_connectors()? {
            let op = "pruning ingress receipts over the per-connector cap";
            let boundary: Option<(i64, i64)> = self
                .conn()
                .query_row(
                    "SELECT received_at_ms, rowid FROM receipts
                     WHERE connector_kind = ?1 AND connector_name = ?2
                     ORDER BY received_at_ms DESC, rowid DESC LIMIT 1 OFFSET ?3",
                    params![kind, name, offset],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(|e| self.err(op, e))?;
            let Some((at_ms, rowid)) = boundary else {
                continue;
            };
            loop {
                if !keep_going() {
                    return Ok(report);
                }
                let n = self
                    .conn()
                    .execute(
                        "DELETE FROM receipts WHERE rowid IN (
                             SELECT rowid FROM receipts
                             WHERE connector_kind = ?1 AND connector_name = ?2
                               AND (received_at_ms, rowid) <= (?3, ?4)
                             LIMIT ?5)",
                        params![kind, name, at_ms, rowid, batch],
                    )
                    .map_err(|e| self.err(op, e))?;
                report.over_cap += n as u64;
                if (n as i64) < batch {
                    break;
                }
            }
        }
        report.complete = true;
        Ok(report)
    }

    /// The distinct (kind, name) pairs that have receipts, as stored, in order. One seek of
    /// `receipts_by_connector` per connector (a skip scan), not a walk over every receipt.
    fn receipt_connectors(&self) -> Result<Vec<(String, String)>, StoreError> {
        let op = "listing connectors with ingress receipts";
        let mut stmt = self
            .conn()
            .prepare_cached(
                "SELECT connector_kind, connector_name FROM receipts
                 WHERE (connector_kind, connector_name) > (?1, ?2)
                 ORDER BY connector_kind, connector_name LIMIT 1",
            )
            .map_err(|e| self.err(op, e))?;
        let mut found: Vec<(String, String)> = Vec::new();
        loop {
            let (after_kind, after_name) = found
                .last()
                .map(|(k, n)| (k.as_str(), n.as_str()))
                .unwrap_or(("", ""));
            let next: Option<(String, String)> = stmt
                .query_row(params![after_kind, after_name], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()
                .map_err(|e| self.err(op, e))?;
            match next {
                Some(pair) => found.push(pair),
                None => return Ok(found),
            }
        }
    }
}

/// The SQL and bound values of [`Store::list_receipts`]. Only fixed SQL fragments are
/// concatenated; every value is a bound parameter.
fn receipt_query(filter: &ReceiptFilter) -> (String, Vec<Value>) {
    let mut sql = format!("SELECT {RECEIPT_COLUMNS} FROM receipts WHERE 1 = 1");
    let mut values: Vec<Value> = Vec::new();
    let mut bind = |sql: &mut String, clause: &str, value: Value| {
        values.push(value);
        sql.push_str(&format!(" AND {clause} ?{}", values.len()));
    };
    if let Some((kind, name)) = &filter.connector {
        bind(
            &mut sql,
            "connector_kind =",
            Value::Text(kind.as_str().into()),
        );
        bind(&mut sql, "connector_name =", Value::Text(name.clone()));
    }
    if let Some(key) = &filter.receipt_key {
        bind(&mut sql, "receipt_key =", Value::Text(key.clone()));
    }
    if let Some(digests) = &filter.key_sha256 {
        // The digests as one JSON array parameter; an empty list matches nothing.
        let list = serde_json::Value::from(digests.clone()).to_string();
        bind(
            &mut sql,
            "key_sha256 IN (SELECT value FROM json_each(",
            Value::Text(list),
        );
        sql.push_str("))");
    }
    if let Some(run_id) = &filter.run_id {
        bind(&mut sql, "run_id =", Value::Text(run_id.clone()));
    }
    if let Some(session_id) = &filter.session_id {
        // A receipt's session is its run's session; this reads the session's runs
        // (`runs_by_session`, which starts with the session's creation time: migration 10)
        // and their receipts (`receipts_by_run`) instead of keeping an index by session that
        // every accepted event would pay for (migration 7).
        bind(
            &mut sql,
            "run_id IN (SELECT r.run_id FROM sessions AS s, runs AS r WHERE s.session_id =",
            Value::Text(session_id.clone()),
        );
        sql.push_str(
            " AND r.session_created_at_ms = s.created_at_ms AND r.session_id = s.session_id)",
        );
    }
    if let Some(since_ms) = filter.since_ms {
        bind(&mut sql, "received_at_ms >=", Value::Integer(since_ms));
    }
    values.push(Value::Integer(i64::from(filter.limit)));
    sql.push_str(&format!(
        " ORDER BY received_at_ms DESC, rowid DESC LIMIT ?{}",
        values.len()
    ));
    (sql, values)
}

/// Maps one row selected with [`RECEIPT_COLUMNS`]. An unknown connector kind (a newer binary's
/// row, or a damaged database) is a conversion error, not a panic.
fn receipt_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Receipt> {
    let kind: String = row.get(1)?;
    let connector_kind = kind.parse::<ConnectorKind>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.into())
    })?;
    Ok(Receipt {
        receipt_key: row.get(0)?,
        connector_kind,
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

/// Test fixtures for modules that work on receipts (the SQL stays in `store`).
#[cfg(test)]
pub(crate) mod test_support {
    use rusqlite::params;

    use crate::store::Store;

    /// Inserts a submitted receipt with the minimal session and run rows its foreign keys need.
    /// The receipt key is `KIND:NAME:KEY`, the run `run-KEY`, the session `sess-NAME`.
    pub(crate) fn insert_receipt(store: &Store, kind: &str, name: &str, key: &str, at_ms: i64) {
        let session = format!("sess-{name}");
        let run = format!("run-{key}");
        let conn = store.conn();
        conn.execute(
            "INSERT OR IGNORE INTO sessions (session_id, created_at_ms, updated_at_ms, created_by,
                 capability_scope, credential_scope, reply_targets, metadata)
             VALUES (?1, 0, 0, 'test', '{}', '{}', '[]', '{}')",
            [&session],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO runs (run_id, session_id, connector_kind, connector_name, status,
                 actor_id, input, metadata, reply_targets, policy, created_at_ms, updated_at_ms,
                 session_created_at_ms)
             VALUES (?1, ?2, ?3, ?4, 'queued', 'a', '{}', '{}', '[]', '{}', ?5, ?5,
                 (SELECT created_at_ms FROM sessions WHERE session_id = ?2))",
            params![run, session, kind, name, at_ms],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO receipts (receipt_key, connector_kind, connector_name, key_sha256,
                 fingerprint, status, run_id, session_id, received_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, 'submitted', ?6, ?7, ?8)",
            params![
                format!("{kind}:{name}:{key}"),
                kind,
                name,
                "0".repeat(64),
                "f".repeat(64),
                run,
                session,
                at_ms
            ],
        )
        .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::insert_receipt as insert;
    use super::*;

    /// A fresh state root. The tempdir guard must outlive the store.
    fn store() -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        (tmp, store)
    }

    fn keys(store: &Store, filter: &ReceiptFilter) -> Vec<String> {
        store
            .list_receipts(filter)
            .unwrap()
            .into_iter()
            .map(|r| r.receipt_key)
            .collect()
    }

    fn all_keys(store: &Store) -> Vec<String> {
        keys(store, &ReceiptFilter::all(u32::MAX))
    }

    /// Three receipts of http/orders (t = 10, 20, 30) and one of slack/team (t = 25).
    fn fixture() -> (tempfile::TempDir, Store) {
        let (tmp, store) = store();
        insert(&store, "http", "orders", "a", 10);
        insert(&store, "http", "orders", "b", 20);
        insert(&store, "slack", "team", "c", 25);
        insert(&store, "http", "orders", "d", 30);
        (tmp, store)
    }

    #[test]
    fn lists_newest_first_with_every_field() {
        let (_tmp, store) = fixture();
        assert_eq!(
            all_keys(&store),
            [
                "http:orders:d",
                "slack:team:c",
                "http:orders:b",
                "http:orders:a"
            ]
        );
        let r = &store.list_receipts(&ReceiptFilter::all(1)).unwrap()[0];
        assert_eq!(
            r,
            &Receipt {
                receipt_key: "http:orders:d".into(),
                connector_kind: ConnectorKind::Http,
                connector_name: "orders".into(),
                key_sha256: "0".repeat(64),
                fingerprint: "f".repeat(64),
                status: "submitted".into(),
                run_id: "run-d".into(),
                session_id: "sess-orders".into(),
                received_at_ms: 30,
                duplicate_hits: 0,
                last_duplicate_at_ms: None,
            }
        );
    }

    #[test]
    fn filters_combine() {
        let (_tmp, store) = fixture();
        let check = |f: ReceiptFilter, expected: &[&str]| assert_eq!(keys(&store, &f), expected);
        let base = ReceiptFilter::all(100);
        check(
            ReceiptFilter {
                connector: Some((ConnectorKind::Http, "orders".into())),
                ..base.clone()
            },
            &["http:orders:d", "http:orders:b", "http:orders:a"],
        );
        check(
            ReceiptFilter {
                connector: Some((ConnectorKind::Slack, "orders".into())),
                ..base.clone()
            },
            &[],
        );
        check(
            ReceiptFilter {
                receipt_key: Some("http:orders:b".into()),
                ..base.clone()
            },
            &["http:orders:b"],
        );
        check(
            ReceiptFilter {
                run_id: Some("run-c".into()),
                ..base.clone()
            },
            &["slack:team:c"],
        );
        check(
            ReceiptFilter {
                session_id: Some("sess-orders".into()),
                since_ms: Some(20),
                ..base.clone()
            },
            &["http:orders:d", "http:orders:b"],
        );
        check(
            ReceiptFilter { limit: 2, ..base },
            &["http:orders:d", "slack:team:c"],
        );
    }

    /// The query plan of `list_receipts(filter)`, one line per step.
    fn plan(store: &Store, filter: &ReceiptFilter) -> String {
        let (sql, values) = receipt_query(filter);
        let mut stmt = store
            .conn()
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(values), |r| {
                r.get::<_, String>(3)
            })
            .unwrap();
        rows.collect::<Result<Vec<_>, _>>().unwrap().join("\n")
    }

    #[test]
    fn the_session_filter_reads_the_sessions_runs_not_every_receipt() {
        let (_tmp, store) = fixture();
        let by_session = ReceiptFilter {
            session_id: Some("sess-orders".into()),
            ..ReceiptFilter::all(100)
        };
        let plan = plan(&store, &by_session);
        assert!(plan.contains("receipts_by_run"), "{plan}");
        assert!(plan.contains("runs_by_session"), "{plan}");
        assert!(!plan.contains("SCAN receipts"), "{plan}");
    }

    #[test]
    fn filter_values_are_bound_not_spliced() {
        let (_tmp, store) = fixture();
        let f = ReceiptFilter {
            run_id: Some("x' OR '1'='1".into()),
            ..ReceiptFilter::all(100)
        };
        assert!(keys(&store, &f).is_empty());
    }

    #[test]
    fn oldest_receipt() {
        let (_tmp, store) = store();
        assert_eq!(store.oldest_receipt_ms().unwrap(), None);
        insert(&store, "http", "orders", "a", 42);
        insert(&store, "http", "orders", "b", 7);
        assert_eq!(store.oldest_receipt_ms().unwrap(), Some(7));
    }

    #[test]
    fn prune_by_age_keeps_the_boundary() {
        let (_tmp, store) = fixture();
        let report = store.prune_receipts(20, 100).unwrap();
        assert_eq!(
            report,
            PruneReport {
                expired: 1,
                over_cap: 0,
                complete: true
            }
        );
        assert_eq!(
            all_keys(&store),
            ["http:orders:d", "slack:team:c", "http:orders:b"]
        );
        // The runs stay: retention removes receipts only.
        let runs: i64 = store
            .conn()
            .query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(runs, 4);
    }

    #[test]
    fn prune_by_cap_keeps_the_newest_per_connector() {
        let (_tmp, store) = fixture();
        let report = store.prune_receipts(0, 1).unwrap();
        assert_eq!((report.expired, report.over_cap), (0, 2));
        assert_eq!(all_keys(&store), ["http:orders:d", "slack:team:c"]);
        // Nothing left to do: a second prune deletes nothing.
        assert_eq!(store.prune_receipts(0, 1).unwrap().total(), 0);
        assert_eq!(store.prune_receipts(0, 0).unwrap().over_cap, 2);
        assert!(all_keys(&store).is_empty());
    }

    #[test]
    fn equal_times_are_cut_by_insertion_order() {
        let (_tmp, store) = store();
        for key in ["a", "b", "c"] {
            insert(&store, "http", "orders", key, 5);
        }
        assert_eq!(store.prune_receipts(0, 2).unwrap().over_cap, 1);
        assert_eq!(all_keys(&store), ["http:orders:c", "http:orders:b"]);
    }

    #[test]
    fn prunes_in_small_batches_and_stops_when_asked() {
        let (_tmp, store) = store();
        for i in 0..25 {
            insert(&store, "http", "orders", &format!("k{i:02}"), i);
        }
        // Age: 7 rows in batches of 3; cap: 18 left, keep 10, delete 8 in batches of 3.
        let mut batches = 0;
        let report = store
            .prune_receipts_with(7, 10, 3, &mut || {
                batches += 1;
                true
            })
            .unwrap();
        assert_eq!(
            report,
            PruneReport {
                expired: 7,
                over_cap: 8,
                complete: true
            }
        );
        assert_eq!(batches, 3 + 3);
        assert_eq!(all_keys(&store).len(), 10);
        assert_eq!(all_keys(&store).last().unwrap(), "http:orders:k15");

        // Asked to stop after two batches: partial, and says so.
        let mut left = 2;
        let report = store
            .prune_receipts_with(i64::MAX, 0, 3, &mut || {
                left -= 1;
                left >= 0
            })
            .unwrap();
        assert_eq!(
            report,
            PruneReport {
                expired: 6,
                over_cap: 0,
                complete: false
            }
        );
        assert_eq!(all_keys(&store).len(), 4);
    }
}
