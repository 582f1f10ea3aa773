//! Operator actions on dead letters (SPEC §11.6): replay (a new pending delivery pointing at its
//! source) and resolve (marked handled without redelivery), each decided and written in one
//! transaction, with a dry-run form.
//!
//! A dead letter itself is never changed by a replay, and nothing here sends or deletes a
//! delivery.

use rusqlite::{params, Connection, OptionalExtension};

use super::enqueue::NewDelivery;
use super::{cached_row, delivery_from_row, COLUMNS, RETURNING};
use crate::model::delivery::{Delivery, DeliveryStatus};
use crate::store::{Store, StoreError};

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

impl Store {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::deliveries::fixture::*;
    use crate::store::deliveries::test_support::*;
    use crate::store::deliveries::DeliveryFilter;

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
}
