//! Reading the queue (SPEC §11.6, §13): one delivery by id, filtered listings of deliveries and
//! of dead letters, and the queue figures for metrics.
//!
//! Read-only: nothing here opens a write transaction or changes a row.

use rusqlite::{params, params_from_iter, OptionalExtension};
use serde::Serialize;

use super::{delivery_from_row, COLUMNS};
use crate::model::delivery::{Delivery, DeliveryStatus};
use crate::model::reply::{ReplyPlugin, ReplyTarget};
use crate::model::ConnectorKind;
use crate::store::{Store, StoreError};

/// Default number of rows a listing returns when [`DeliveryFilter::limit`] is 0.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// The most rows one listing returns (SPEC §1.3 `replay --limit`).
pub const MAX_LIST_LIMIT: u32 = 500;

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

/// "Unresolved" for a dead letter `d` (SPEC §11.6), as an SQL condition.
const UNRESOLVED: &str = "d.status = 'dead_lettered' AND d.resolved_at_ms IS NULL \
     AND NOT EXISTS (SELECT 1 FROM deliveries r \
         WHERE r.replayed_from_delivery_id = d.delivery_id AND r.status = 'delivered')";

fn limit_of(limit: u32) -> i64 {
    i64::from(if limit == 0 {
        DEFAULT_LIST_LIMIT
    } else {
        limit.min(MAX_LIST_LIMIT)
    })
}

impl Store {
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
}

/// A target paused by its circuit breaker: its identity, the address of its head delivery
/// (the target as stored) and when the pause ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PausedTarget {
    pub target_key: String,
    pub target: ReplyTarget,
    pub paused_until_ms: i64,
}

impl Store {
    /// Targets paused at `now_ms` (circuit open), optionally only those of `plugin` and/or the
    /// one with `target_key`, oldest pause end first.
    pub fn paused_targets(
        &self,
        plugin: Option<&str>,
        target_key: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<PausedTarget>, StoreError> {
        let op = "listing paused targets";
        let mut stmt = self
            .conn()
            .prepare_cached(
                "SELECT t.target_key, t.plugin, d.address, t.paused_until_ms
                 FROM delivery_targets t JOIN deliveries d ON d.seq = t.head_seq
                 WHERE t.paused_until_ms > ?1
                   AND (?2 IS NULL OR t.plugin = ?2)
                   AND (?3 IS NULL OR t.target_key = ?3)
                 ORDER BY t.paused_until_ms, t.target_key",
            )
            .map_err(|e| self.err(op, e))?;
        let rows = stmt
            .query_map(params![now_ms, plugin, target_key], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })
            .map_err(|e| self.err(op, e))?;
        let mut out = Vec::new();
        for row in rows {
            let (target_key, plugin, address, paused_until_ms) =
                row.map_err(|e| self.err(op, e))?;
            // A plugin name the model no longer knows cannot come from this binary's writes;
            // such a row is left out rather than failing the listing.
            let Ok(plugin) = ReplyPlugin::parse(&plugin) else {
                continue;
            };
            out.push(PausedTarget {
                target_key,
                target: ReplyTarget { plugin, address },
                paused_until_ms,
            });
        }
        Ok(out)
    }

    /// Clears the pause (and the failure count) of the paused targets `paused_targets` selects
    /// with the same arguments, in one transaction; returns them as they were. With `dry_run`
    /// nothing is written.
    pub fn reset_backpressure(
        &self,
        plugin: Option<&str>,
        target_key: Option<&str>,
        dry_run: bool,
        now_ms: i64,
    ) -> Result<Vec<PausedTarget>, StoreError> {
        if dry_run {
            return self.paused_targets(plugin, target_key, now_ms);
        }
        let op = "resetting paused targets";
        let tx = self.write_tx(op)?;
        let paused = self.paused_targets(plugin, target_key, now_ms)?;
        for p in &paused {
            tx.prepare_cached(
                "UPDATE delivery_targets SET paused_until_ms = 0, consecutive_failures = 0
                 WHERE target_key = ?1",
            )
            .and_then(|mut st| st.execute([&p.target_key]))
            .map_err(|e| self.err(op, e))?;
        }
        tx.commit().map_err(|e| self.err(op, e))?;
        Ok(paused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::deliveries::fixture::*;
    use crate::store::deliveries::test_support::*;

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
}
