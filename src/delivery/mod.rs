//! The delivery queue's public API (SPEC §11): transports, attempt outcomes, and the operations
//! the server and the CLI share (replay, resolve, drain).
//!
//! `delivery` never reads ingress types; `ingress` calls out only through `net` clients after the rate limit. Durable state moves
//! only through `store::deliveries`; this module decides (retry policy, which transport) and
//! `pool` runs the claim → send → settle loop, which `drain` runs to completion.

pub mod drain;
pub mod policy;
pub mod pool;
pub mod retention;
pub mod transport;

use std::time::Duration;

use crate::model::delivery::{Delivery, DeliveryJob};
use crate::store::deliveries::{DeadLetterAction, DeliveryFilter, Settlement};
use crate::store::{Store, StoreError};

use policy::{Next, RetryPolicy};

pub use drain::{
    drain, release_claims_of_gone_processes, released_message, DrainConfig, DrainProgress,
    DrainSummary,
};
pub use pool::{Observer, Transports, WorkerConfig, WorkerPool};

/// The result of one attempt to send a delivery (SPEC §11.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The target took it.
    Delivered { http_status: Option<u16> },
    /// Try again later; `retry_after` from the target (Retry-After, Telegram retry_after, …).
    Retryable {
        code: String,
        reason: String,
        http_status: Option<u16>,
        retry_after: Option<Duration>,
    },
    /// Never going to work: dead-letter now.
    Terminal {
        code: String,
        reason: String,
        http_status: Option<u16>,
    },
}

/// Records per-step progress of a multi-step send (Slack, Telegram) durably, so a retry never
/// repeats a step that already succeeded. The http transport does not use it.
pub trait ProgressSink {
    /// Writes `progress` and returns once it is durable: for a marker that must be on disk
    /// before the next external call (an upload about to be completed, whose outcome after a
    /// crash must be known).
    fn save(&mut self, progress: &serde_json::Value) -> Result<(), String>;

    /// Records `progress` after the LAST step of an attempt, in order with this delivery's
    /// other writes but without waiting for its commit: `serve`'s group-commit writer applies
    /// it before the attempt's settlement (queued later), so a retry reads it, and a crash
    /// before that commit re-sends the step as a crash just before a waited [`save`] would
    /// have. A step before the last must use [`save`]: the next step may not start before its
    /// progress is durable, or a crash during the next step would re-send it. A note's answer
    /// is read at the next `note` or `save`, where a failed or refused (lease lost) note ends
    /// the attempt. Defaults to [`save`].
    ///
    /// [`save`]: ProgressSink::save
    fn note(&mut self, progress: &serde_json::Value) -> Result<(), String> {
        self.save(progress)
    }

    /// The bytes of stored asset `asset_id`, read while the delivery is open and its output
    /// references the asset (`None` otherwise). Transports that upload attachments (Slack,
    /// Telegram) read them here, on the same connection as the progress.
    fn asset(
        &mut self,
        asset_id: &str,
    ) -> Result<Option<crate::store::assets::AssetBytes>, String> {
        Err(format!(
            "asset `{asset_id}` cannot be read here: this delivery has no state root"
        ))
    }
}

/// One delivery plugin (`http`, `slack`, `telegram`, `external`).
pub trait Transport: Send + Sync {
    /// Sends one attempt. Never panics on target behaviour; every failure is an outcome.
    fn deliver(&self, job: &DeliveryJob, progress: &mut dyn ProgressSink) -> AttemptOutcome;
}

impl AttemptOutcome {
    /// The stable failure code, if the attempt failed.
    pub fn code(&self) -> Option<&str> {
        match self {
            AttemptOutcome::Delivered { .. } => None,
            AttemptOutcome::Retryable { code, .. } | AttemptOutcome::Terminal { code, .. } => {
                Some(code)
            }
        }
    }
}

/// Maps the outcome of attempt `attempt` through the retry policy into what the store records:
/// delivered; a retry at the policy's time (honouring the target's Retry-After within the
/// policy's cap); or a dead letter for a terminal failure or a failed last attempt.
pub fn settlement_for(
    outcome: &AttemptOutcome,
    attempt: u32,
    policy: &RetryPolicy,
    now_ms: i64,
) -> Settlement {
    match outcome {
        AttemptOutcome::Delivered { http_status } => Settlement::Delivered {
            http_status: *http_status,
        },
        AttemptOutcome::Retryable {
            code,
            reason,
            http_status,
            retry_after,
        } => match policy.after_failure(attempt, false, *retry_after, now_ms) {
            Next::RetryAt(at_ms) => Settlement::Retry {
                at_ms,
                code: code.clone(),
                reason: reason.clone(),
                http_status: *http_status,
            },
            Next::DeadLetter => Settlement::DeadLetter {
                code: code.clone(),
                reason: format!("{reason} (attempt {attempt} was the last)"),
                http_status: *http_status,
                retryable: true,
            },
        },
        AttemptOutcome::Terminal {
            code,
            reason,
            http_status,
        } => Settlement::DeadLetter {
            code: code.clone(),
            reason: reason.clone(),
            http_status: *http_status,
            retryable: false,
        },
    }
}

/// The `outcome` label of an attempt for metrics and observers: `delivered`, `retryable` (will
/// be retried), `terminal` (a terminal failure, dead-lettered) or `dead_lettered` (a retryable
/// failure on the last attempt).
pub fn outcome_label(settlement: &Settlement) -> &'static str {
    match settlement {
        Settlement::Delivered { .. } => "delivered",
        Settlement::Retry { .. } => "retryable",
        Settlement::DeadLetter {
            retryable: false, ..
        } => "terminal",
        Settlement::DeadLetter {
            retryable: true, ..
        } => "dead_lettered",
    }
}

/// The result of replaying or resolving one selected delivery (SPEC §1.3, §11.6).
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayItem {
    /// Dry run: a replay would be created.
    WouldReplay { source: Delivery },
    /// A new pending delivery `replay` was created from the dead letter `source`.
    Replayed { source: Delivery, replay: Delivery },
    /// `source` already had `replay` and `force` was not given; nothing was created.
    ExistingReplay { source: Delivery, replay: Delivery },
    /// Dry run: the dead letter would be resolved.
    WouldResolve { source: Delivery },
    /// The dead letter is resolved (now, or already before: the first resolution is kept).
    Resolved { source: Delivery },
    /// The delivery exists but is not dead-lettered; nothing was done.
    NotDeadLettered { source: Delivery },
    /// No delivery has this id.
    NotFound { id: String },
}

impl ReplayItem {
    /// The row kind printed by `replay` and returned by the control plane.
    pub fn kind(&self) -> &'static str {
        match self {
            ReplayItem::WouldReplay { .. } => "would_replay",
            ReplayItem::Replayed { .. } => "replayed",
            ReplayItem::ExistingReplay { .. } => "existing_replay",
            ReplayItem::WouldResolve { .. } => "would_resolve",
            ReplayItem::Resolved { .. } => "resolved",
            ReplayItem::NotDeadLettered { .. } => "not_dead_lettered",
            ReplayItem::NotFound { .. } => "not_found",
        }
    }

    /// The selected delivery, when it exists.
    pub fn source(&self) -> Option<&Delivery> {
        match self {
            ReplayItem::WouldReplay { source }
            | ReplayItem::Replayed { source, .. }
            | ReplayItem::ExistingReplay { source, .. }
            | ReplayItem::WouldResolve { source }
            | ReplayItem::Resolved { source }
            | ReplayItem::NotDeadLettered { source } => Some(source),
            ReplayItem::NotFound { .. } => None,
        }
    }

    fn from_action(id: &str, action: DeadLetterAction) -> ReplayItem {
        match action {
            DeadLetterAction::NotFound => ReplayItem::NotFound { id: id.to_string() },
            DeadLetterAction::NotDeadLettered(source) => ReplayItem::NotDeadLettered { source },
            DeadLetterAction::WouldReplay(source) => ReplayItem::WouldReplay { source },
            DeadLetterAction::Replayed { source, replay } => {
                ReplayItem::Replayed { source, replay }
            }
            DeadLetterAction::ExistingReplay { source, replay } => {
                ReplayItem::ExistingReplay { source, replay }
            }
            DeadLetterAction::WouldResolve(source) => ReplayItem::WouldResolve { source },
            DeadLetterAction::Resolved(source) => ReplayItem::Resolved { source },
        }
    }
}

/// Replays the dead letters `ids`, in order, each in its own short transaction: every one
/// becomes a NEW pending delivery (new id, so a new `Idempotency-Key`) for the same output and
/// target with `replayed_from_delivery_id`; the dead letter stays unchanged as audit history.
/// Without `force`, a dead letter that already has a replay yields that replay
/// ([`ReplayItem::ExistingReplay`]). `dry_run` writes nothing. The caller wakes the workers
/// when an item is [`ReplayItem::Replayed`].
pub fn replay(
    store: &Store,
    ids: &[String],
    force: bool,
    dry_run: bool,
    now_ms: i64,
) -> Result<Vec<ReplayItem>, StoreError> {
    ids.iter()
        .map(|id| {
            store
                .replay_dead_letter(id, force, dry_run, now_ms)
                .map(|action| ReplayItem::from_action(id, action))
        })
        .collect()
}

/// [`replay`] over the dead letters [`Store::list_dead_letters`] selects with `filter`
/// (unresolved only unless `filter.include_resolved`; `filter.limit` applies).
pub fn replay_matching(
    store: &Store,
    filter: &DeliveryFilter,
    force: bool,
    dry_run: bool,
    now_ms: i64,
) -> Result<Vec<ReplayItem>, StoreError> {
    let ids = selected_ids(store, filter)?;
    replay(store, &ids, force, dry_run, now_ms)
}

/// Marks the dead letters `ids` as handled without redelivery, each in its own short
/// transaction: `resolution` = `reason` (or `"resolved"`), `resolved_at_ms` = now. Resolving an
/// already resolved dead letter keeps its first resolution and reports it as resolved.
pub fn resolve(
    store: &Store,
    ids: &[String],
    reason: Option<&str>,
    dry_run: bool,
    now_ms: i64,
) -> Result<Vec<ReplayItem>, StoreError> {
    ids.iter()
        .map(|id| {
            store
                .resolve_dead_letter(id, reason, dry_run, now_ms)
                .map(|action| ReplayItem::from_action(id, action))
        })
        .collect()
}

/// [`resolve`] over the dead letters [`Store::list_dead_letters`] selects with `filter`.
pub fn resolve_matching(
    store: &Store,
    filter: &DeliveryFilter,
    reason: Option<&str>,
    dry_run: bool,
    now_ms: i64,
) -> Result<Vec<ReplayItem>, StoreError> {
    let ids = selected_ids(store, filter)?;
    resolve(store, &ids, reason, dry_run, now_ms)
}

/// The ids of the selected dead letters, oldest first so bulk replays keep creation order in
/// each target's queue.
fn selected_ids(store: &Store, filter: &DeliveryFilter) -> Result<Vec<String>, StoreError> {
    let mut ids: Vec<String> = store
        .list_dead_letters(filter)?
        .into_iter()
        .map(|d| d.delivery_id)
        .collect();
    ids.reverse();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::delivery::DeliveryStatus;
    use crate::store::deliveries::fixture::*;
    use crate::store::deliveries::ClaimFilter;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial_retry_ms: 1_000,
            max_retry_ms: 60_000,
            max_retry_after_ms: 3_600_000,
            max_attempts: 3,
            ..RetryPolicy::default()
        }
    }

    fn retryable(retry_after: Option<Duration>) -> AttemptOutcome {
        AttemptOutcome::Retryable {
            code: "http_status_429".into(),
            reason: "target answered 429".into(),
            http_status: Some(429),
            retry_after,
        }
    }

    fn check(outcome: AttemptOutcome, attempt: u32, expected: Settlement, label: &str) {
        let got = settlement_for(&outcome, attempt, &policy(), T0);
        assert_eq!(got, expected, "{outcome:?} attempt {attempt}");
        assert_eq!(outcome_label(&got), label);
    }

    #[test]
    fn outcomes_map_through_the_retry_policy() {
        check(
            AttemptOutcome::Delivered {
                http_status: Some(204),
            },
            1,
            Settlement::Delivered {
                http_status: Some(204),
            },
            "delivered",
        );
        let retry_at = |at_ms| Settlement::Retry {
            at_ms,
            code: "http_status_429".into(),
            reason: "target answered 429".into(),
            http_status: Some(429),
        };
        check(retryable(None), 1, retry_at(T0 + 1_000), "retryable");
        check(retryable(None), 2, retry_at(T0 + 2_000), "retryable");
        check(
            retryable(Some(Duration::from_secs(30))),
            1,
            retry_at(T0 + 30_000),
            "retryable",
        );
        check(
            retryable(None),
            3,
            Settlement::DeadLetter {
                code: "http_status_429".into(),
                reason: "target answered 429 (attempt 3 was the last)".into(),
                http_status: Some(429),
                retryable: true,
            },
            "dead_lettered",
        );
        check(
            AttemptOutcome::Terminal {
                code: "blocked_private_address".into(),
                reason: "refused".into(),
                http_status: None,
            },
            1,
            Settlement::DeadLetter {
                code: "blocked_private_address".into(),
                reason: "refused".into(),
                http_status: None,
                retryable: false,
            },
            "terminal",
        );
    }

    /// Queues one delivery per text to `https://a.example/` and dead-letters each.
    fn dead_letters(store: &Store, texts: &[&str]) -> Vec<String> {
        let ids = queue(store, "run_a", &[http("https://a.example/")], texts);
        for _ in &ids {
            let c = store
                .claim_next("w", 60_000, T0, &ClaimFilter::default())
                .unwrap()
                .unwrap();
            let dead = Settlement::DeadLetter {
                code: "http_status_400".into(),
                reason: "400".into(),
                http_status: Some(400),
                retryable: false,
            };
            store
                .settle("w", &c, dead, T0, &Default::default())
                .unwrap();
        }
        ids
    }

    fn kinds(items: &[ReplayItem]) -> Vec<&'static str> {
        items.iter().map(ReplayItem::kind).collect()
    }

    fn one(items: Vec<ReplayItem>) -> ReplayItem {
        assert_eq!(items.len(), 1, "{items:?}");
        items.into_iter().next().unwrap()
    }

    #[test]
    fn replay_creates_one_new_delivery_unless_forced() {
        let (_tmp, store) = store();
        let ids = dead_letters(&store, &["a1"]);
        let id = ids[0].clone();
        let pending = queue(&store, "run_b", &[http("https://b.example/")], &["b1"]);

        let items = replay(
            &store,
            &[id.clone(), pending[0].clone(), "dlv_nope".into()],
            false,
            true,
            T0 + 1,
        )
        .unwrap();
        assert_eq!(
            kinds(&items),
            ["would_replay", "not_dead_lettered", "not_found"]
        );
        assert_eq!(
            store
                .list_deliveries(&DeliveryFilter::default())
                .unwrap()
                .len(),
            2
        );

        let ReplayItem::Replayed {
            source,
            replay: first,
        } = one(replay(&store, std::slice::from_ref(&id), false, false, T0 + 2).unwrap())
        else {
            panic!("not replayed")
        };
        assert_eq!(source.delivery_id, id);
        assert_eq!(first.status, DeliveryStatus::Pending);
        assert_eq!(
            first.replayed_from_delivery_id.as_deref(),
            Some(id.as_str())
        );
        assert_eq!(first.next_attempt_at_ms, T0 + 2);

        let ReplayItem::ExistingReplay {
            replay: existing, ..
        } = one(replay(&store, std::slice::from_ref(&id), false, false, T0 + 3).unwrap())
        else {
            panic!("expected the existing replay")
        };
        assert_eq!(existing.delivery_id, first.delivery_id);
        assert_eq!(
            one(replay(&store, std::slice::from_ref(&id), true, true, T0 + 3).unwrap()).kind(),
            "would_replay",
            "a forced dry run would create another"
        );
        let ReplayItem::Replayed { replay: second, .. } =
            one(replay(&store, std::slice::from_ref(&id), true, false, T0 + 4).unwrap())
        else {
            panic!("force replays again")
        };
        assert_ne!(second.delivery_id, first.delivery_id);
        let ReplayItem::ExistingReplay { replay: newest, .. } =
            one(replay(&store, std::slice::from_ref(&id), false, false, T0 + 5).unwrap())
        else {
            panic!()
        };
        assert_eq!(newest.delivery_id, second.delivery_id, "the newest replay");
        let source_now = store.get_delivery(&id).unwrap().unwrap();
        assert_eq!(source_now, source, "the dead letter stays as it was");
    }

    #[test]
    fn resolve_marks_dead_letters_once() {
        let (_tmp, store) = store();
        let ids = dead_letters(&store, &["a1", "a2"]);
        assert_eq!(
            one(resolve(&store, &ids[..1], Some("handled by hand"), true, T0 + 1).unwrap()).kind(),
            "would_resolve"
        );
        assert_eq!(
            store.get_delivery(&ids[0]).unwrap().unwrap().resolution,
            None
        );
        let ReplayItem::Resolved { source } =
            one(resolve(&store, &ids[..1], Some("handled by hand"), false, T0 + 2).unwrap())
        else {
            panic!()
        };
        assert_eq!(source.resolution.as_deref(), Some("handled by hand"));
        assert_eq!(source.resolved_at_ms, Some(T0 + 2));
        let ReplayItem::Resolved { source: again } =
            one(resolve(&store, &ids[..1], Some("other"), false, T0 + 3).unwrap())
        else {
            panic!()
        };
        assert_eq!(again, source, "the first resolution is kept");
        let ReplayItem::Resolved { source } =
            one(resolve(&store, &ids[1..], None, false, T0 + 4).unwrap())
        else {
            panic!()
        };
        assert_eq!(source.resolution.as_deref(), Some("resolved"));
        assert_eq!(
            kinds(&resolve(&store, &["dlv_nope".to_string()], None, false, T0).unwrap()),
            ["not_found"]
        );
    }

    #[test]
    fn bulk_operations_select_unresolved_dead_letters() {
        let (_tmp, store) = store();
        let ids = dead_letters(&store, &["a1", "a2", "a3"]);
        resolve(&store, &ids[..1], None, false, T0 + 1).unwrap();
        let unresolved = DeliveryFilter::default();
        let items = replay_matching(&store, &unresolved, false, true, T0 + 2).unwrap();
        let selected: Vec<&str> = items
            .iter()
            .map(|i| i.source().unwrap().delivery_id.as_str())
            .collect();
        assert_eq!(selected, [ids[1].as_str(), ids[2].as_str()], "oldest first");
        let limited = DeliveryFilter {
            limit: 1,
            ..DeliveryFilter::default()
        };
        assert_eq!(
            kinds(&replay_matching(&store, &limited, false, false, T0 + 3).unwrap()),
            ["replayed"]
        );
        let all = DeliveryFilter {
            include_resolved: true,
            ..DeliveryFilter::default()
        };
        assert_eq!(
            kinds(&resolve_matching(&store, &all, Some("bulk"), false, T0 + 4).unwrap()),
            ["resolved", "resolved", "resolved"]
        );
        assert!(resolve_matching(&store, &unresolved, None, false, T0 + 5)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn item_kinds_are_the_spec_words() {
        let d = || {
            let (_tmp, store) = store();
            let ids = dead_letters(&store, &["a1"]);
            store.get_delivery(&ids[0]).unwrap().unwrap()
        };
        let source = d();
        let table = [
            (
                ReplayItem::WouldReplay {
                    source: source.clone(),
                },
                "would_replay",
            ),
            (
                ReplayItem::Replayed {
                    source: source.clone(),
                    replay: source.clone(),
                },
                "replayed",
            ),
            (
                ReplayItem::ExistingReplay {
                    source: source.clone(),
                    replay: source.clone(),
                },
                "existing_replay",
            ),
            (
                ReplayItem::WouldResolve {
                    source: source.clone(),
                },
                "would_resolve",
            ),
            (
                ReplayItem::Resolved {
                    source: source.clone(),
                },
                "resolved",
            ),
            (ReplayItem::NotDeadLettered { source }, "not_dead_lettered"),
            (ReplayItem::NotFound { id: "x".into() }, "not_found"),
        ];
        for (item, kind) in table {
            assert_eq!(item.kind(), kind);
        }
    }
}
