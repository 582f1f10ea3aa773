//! Creating deliveries (SPEC §11.2): inside the transaction that records a run output, one
//! delivery per distinct reply target, and the one insert every new delivery (replays too) goes
//! through, which appends open deliveries to their target's FIFO.
//!
//! It must not open or commit a transaction of its own (the caller's output or replay
//! transaction holds it), and it never claims, settles or deletes a delivery.

use rusqlite::types::Type;
use rusqlite::{params, Connection};

use super::{cached_exec, target_key, CachedExt};
use crate::model::delivery::DeliveryStatus;
use crate::model::reply::ReplyTarget;
use crate::model::run::{new_id, RunOutput};
use crate::store::{Store, StoreError};

/// `last_error_code` of a delivery whose stored target no longer passes validation.
pub const INVALID_TARGET_CODE: &str = "invalid_target";

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

/// The columns of a new delivery row.
pub(super) struct NewDelivery<'a> {
    pub(super) output_id: &'a str,
    pub(super) run_id: &'a str,
    pub(super) session_id: &'a str,
    pub(super) connector_kind: &'a str,
    pub(super) connector_name: &'a str,
    pub(super) target: &'a ReplyTarget,
    /// `Some((code, reason))`: created directly as a dead letter.
    pub(super) dead_letter: Option<(&'a str, String)>,
    pub(super) replayed_from: Option<&'a str>,
    pub(super) now_ms: i64,
}

impl Store {
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
    pub(super) fn insert_delivery(
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
        // `seq` is the rowid; `last_insert_rowid` reads it without the temporary table a
        // `RETURNING` clause builds for every execution.
        conn.execute_cached(
            "INSERT INTO deliveries (delivery_id, output_id, run_id, session_id,
                     connector_kind, connector_name, plugin, address, target_key, status, attempts,
                     next_attempt_at_ms, last_error, last_error_code, created_at_ms, updated_at_ms,
                     dead_lettered_at_ms, replayed_from_delivery_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11, ?12, ?13, ?11, ?11, ?14,
                     ?15)",
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
        )
        .map_err(|e| self.err(op, e))?;
        let seq = conn.last_insert_rowid();
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::reply::ReplyPlugin;
    use crate::store::deliveries::fixture::*;
    use crate::store::deliveries::test_support::*;
    use crate::store::deliveries::DeliveryFilter;
    use crate::store::runs::NewRunOutput;

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
}
