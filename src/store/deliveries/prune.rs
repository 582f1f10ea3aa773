//! Delivery retention (SPEC §3; the rules are in the parent module's docs): deletes delivered
//! deliveries and done dead letters once their retention has passed, in bounded batches of
//! short transactions, children before the rows they refer to.
//!
//! It must never delete an open delivery or an unresolved dead letter, and it does not decide
//! the cut-off times: the caller passes them.

use rusqlite::params;
use serde::Serialize;

use super::cached_exec;
use crate::store::{Store, StoreError};

/// Delivered deliveries are pruned this long after `delivered_at_ms` (SPEC §3).
pub const DELIVERED_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// Done dead letters are pruned this long after they were resolved or redelivered (SPEC §3).
pub const DEAD_LETTER_RETENTION_MS: i64 = 30 * 24 * 3600 * 1000;
/// Rows examined per prune transaction, so a prune never holds the write lock for long.
pub const PRUNE_BATCH: u32 = 500;

/// What one [`Store::prune_deliveries`] call deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryPruneReport {
    pub delivered: u64,
    pub dead_letters: u64,
}

impl Store {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::deliveries::fixture::*;
    use crate::store::deliveries::test_support::*;
    use crate::store::deliveries::{DeadLetterAction, Settlement};

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
