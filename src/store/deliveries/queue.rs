//! The queue's moving parts (SPEC §11.3–§11.5): claiming a due target head under a lease,
//! settling an attempt (delivered, retry, dead letter) with per-target FIFO and the circuit
//! breaker, releasing unsent claims, per-step progress, and the due/open/leased reads the
//! delivery workers wait on.
//!
//! Every write here is one short transaction (or runs inside the caller's, for the dispatcher's
//! combined round); none may be held across network I/O, and nothing here decides a retry
//! delay: the caller's [`Settlement`] carries it.

use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value;

use super::{cached_exec, delivery_from_row, CachedExt, CLAIMED_ROW};
use crate::model::delivery::{referenced_asset_ids, Delivery, DeliveryJob, DeliveryStatus};
use crate::model::ConnectorKind;
use crate::store::assets::asset_infos;
use crate::store::{Store, StoreError};

/// Retryable failures in a row that open a target's circuit by default (SPEC §11.3).
pub const CIRCUIT_THRESHOLD: i64 = 3;
/// How long an open circuit pauses its target by default (SPEC §11.3).
pub const CIRCUIT_PAUSE_MS: i64 = 60_000;

/// How a target is paced (SPEC §11.3, the `KHEISH_DELIVERY_CIRCUIT_*` and
/// `KHEISH_DELIVERY_TARGET_MIN_INTERVAL_MS` knobs): settling applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetPacing {
    /// Retryable failures in a row that pause the target; 0 never pauses.
    pub circuit_threshold: i64,
    /// How long a pause lasts (ms).
    pub circuit_cooldown_ms: i64,
    /// The least time between two sends to one target (ms); 0 for none.
    pub min_interval_ms: i64,
}

impl Default for TargetPacing {
    fn default() -> TargetPacing {
        TargetPacing {
            circuit_threshold: CIRCUIT_THRESHOLD,
            circuit_cooldown_ms: CIRCUIT_PAUSE_MS,
            min_interval_ms: 0,
        }
    }
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
    /// The settlement was written (read the row with `Store::get_delivery` when needed).
    Settled {
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

/// Open deliveries left, as `drain-deliveries` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OpenCounts {
    /// Open deliveries of targets that are claimable now apart from leases (with
    /// `ignore_backoff`: every open delivery).
    pub due: u64,
    /// Every open (`pending` or `retrying`) delivery.
    pub pending: u64,
}

/// The end of a delivered attempt (`Store::settle_in`: ?1 now, ?2 seq, ?3 owner, ?4 status).
const SETTLE_DELIVERED: &str = "UPDATE deliveries SET status = 'delivered', delivered_at_ms = ?1,
        last_http_status = ?4, attempts = attempts + 1, lease_owner = NULL,
        lease_expires_at_ms = NULL, updated_at_ms = ?1
    WHERE seq = ?2 AND lease_owner = ?3 AND status IN ('pending', 'retrying')";
/// A retry (?4 at, ?5 reason, ?6 code, ?7 http status).
const SETTLE_RETRY: &str = "UPDATE deliveries SET status = 'retrying', next_attempt_at_ms = ?4,
        last_error = ?5, last_error_code = ?6, last_http_status = ?7, attempts = attempts + 1,
        lease_owner = NULL, lease_expires_at_ms = NULL, updated_at_ms = ?1
    WHERE seq = ?2 AND lease_owner = ?3 AND status IN ('pending', 'retrying')";
/// A dead letter (?4 reason, ?5 code, ?6 http status).
const SETTLE_DEAD_LETTER: &str = "UPDATE deliveries SET status = 'dead_lettered',
        dead_lettered_at_ms = ?1, last_error = ?4, last_error_code = ?5, last_http_status = ?6,
        attempts = attempts + 1, lease_owner = NULL, lease_expires_at_ms = NULL,
        updated_at_ms = ?1
    WHERE seq = ?2 AND lease_owner = ?3 AND status IN ('pending', 'retrying')";

impl Store {
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
        let claimed = self
            .claim_many_in(&tx, owner, lease_ms, now_ms, filter, 1)?
            .pop();
        tx.commit().map_err(|e| self.err(op, e))?;
        Ok(claimed)
    }

    /// Claims the heads of up to `want` due targets inside the caller's write transaction, due
    /// longest first. The due targets are found by ONE walk of `delivery_targets_due` per call
    /// (a walk per claim re-read every leased target at the front of that index each time).
    fn claim_many_in(
        &self,
        tx: &Connection,
        owner: &str,
        lease_ms: i64,
        now_ms: i64,
        filter: &ClaimFilter,
        want: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        let op = "claiming a delivery";
        let (kind, name) = match &filter.connector {
            Some((kind, name)) => (Some(kind.as_str()), Some(name.as_str())),
            None => (None, None),
        };
        let expires = now_ms.saturating_add(lease_ms.max(1));
        let mut claims = Vec::with_capacity(want);
        // A head that is not open (which only a bug or a hand edit can cause) is repaired by
        // moving the head on and looking again; a few rounds bound the work.
        for _ in 0..8 {
            if claims.len() >= want {
                break;
            }
            let limit = i64::try_from(want - claims.len()).unwrap_or(i64::MAX);
            let candidates: Vec<(String, i64)> = tx
                .prepare_cached(
                    "SELECT t.target_key, t.head_seq FROM delivery_targets t
                     WHERE (?1 OR (t.next_attempt_at_ms <= ?2 AND t.paused_until_ms <= ?2))
                       AND (t.lease_owner IS NULL OR t.lease_expires_at_ms < ?2)
                       AND (?3 IS NULL OR t.plugin = ?3)
                       AND (?4 IS NULL OR EXISTS (SELECT 1 FROM deliveries d
                            WHERE d.seq = t.head_seq AND d.connector_kind = ?4
                              AND d.connector_name = ?5))
                     ORDER BY t.next_attempt_at_ms LIMIT ?6",
                )
                .and_then(|mut stmt| {
                    stmt.query_map(
                        params![
                            filter.ignore_backoff,
                            now_ms,
                            filter.plugin,
                            kind,
                            name,
                            limit
                        ],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )?
                    .collect()
                })
                .map_err(|e| self.err(op, e))?;
            if candidates.is_empty() {
                break;
            }
            let mut repaired = false;
            for (key, head_seq) in candidates {
                match self.lease_head(tx, owner, expires, now_ms, &key, head_seq)? {
                    Some(claimed) => claims.push(claimed),
                    None => {
                        self.advance_head(tx, &key, head_seq, false, 0, false)?;
                        repaired = true;
                    }
                }
            }
            if !repaired {
                break;
            }
        }
        Ok(claims)
    }

    /// Leases delivery `head_seq`, the head of target `key`, and the target itself to `owner`
    /// until `expires`, and reads what sending it needs. `None` (nothing written) when that
    /// delivery is not open.
    fn lease_head(
        &self,
        tx: &Connection,
        owner: &str,
        expires: i64,
        now_ms: i64,
        key: &str,
        head_seq: i64,
    ) -> Result<Option<Claimed>, StoreError> {
        let op = "claiming a delivery";
        let leased = cached_exec(
            tx,
            "UPDATE deliveries SET lease_owner = ?1, lease_expires_at_ms = ?2, updated_at_ms = ?3
             WHERE seq = ?4 AND status IN ('pending', 'retrying')",
            params![owner, expires, now_ms, head_seq],
        )
        .map_err(|e| self.err(op, e))?;
        if leased == 0 {
            return Ok(None);
        }
        cached_exec(
            tx,
            "UPDATE delivery_targets SET lease_owner = ?1, lease_expires_at_ms = ?2
             WHERE target_key = ?3",
            params![owner, expires, key],
        )
        .map_err(|e| self.err(op, e))?;
        let ((seq, delivery), content, parts): ((i64, Delivery), Option<String>, Option<String>) =
            tx.query_row_cached(CLAIMED_ROW, [head_seq], |row| {
                Ok((delivery_from_row(row)?, row.get(26)?, row.get(27)?))
            })
            .map_err(|e| self.err(op, e))?;
        let parts = parts
            .map(|text| serde_json::from_str::<Vec<Value>>(&text))
            .transpose()
            .map_err(|e| {
                self.err(
                    op,
                    rusqlite::Error::FromSqlConversionFailure(27, Type::Text, Box::new(e)),
                )
            })?;
        let assets = match parts.as_deref().map(referenced_asset_ids) {
            Some(ids) if !ids.is_empty() => asset_infos(tx, &ids).map_err(|e| self.err(op, e))?,
            _ => Vec::new(),
        };
        Ok(Some(Claimed {
            job: DeliveryJob {
                attempt: delivery.attempts.saturating_add(1),
                delivery,
                content,
                parts,
                assets,
            },
            lease_expires_at_ms: expires,
            seq,
        }))
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
        pacing: &TargetPacing,
    ) -> Result<SettleOutcome, StoreError> {
        let op = "settling a delivery";
        let tx = self.begin(op)?;
        let outcome = self.settle_in(&tx, owner, claimed, settlement, now_ms, pacing)?;
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
    #[allow(clippy::too_many_arguments)]
    pub fn settle_all_and_claim(
        &self,
        owner: &str,
        settled: &[(Claimed, Settlement)],
        claim: usize,
        lease_ms: i64,
        now_ms: i64,
        filter: &ClaimFilter,
        pacing: &TargetPacing,
    ) -> Result<(Vec<SettleOutcome>, Vec<Claimed>), StoreError> {
        let op = "settling deliveries and claiming more";
        let tx = self.begin(op)?;
        let round =
            self.settle_all_and_claim_in(owner, settled, claim, lease_ms, now_ms, filter, pacing)?;
        tx.commit().map_err(|e| self.err(op, e))?;
        Ok(round)
    }

    /// [`Store::settle_all_and_claim`] inside a transaction the caller holds (the group-commit
    /// writer's, when `serve`'s dispatcher rounds ride in its batches).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn settle_all_and_claim_in(
        &self,
        owner: &str,
        settled: &[(Claimed, Settlement)],
        claim: usize,
        lease_ms: i64,
        now_ms: i64,
        filter: &ClaimFilter,
        pacing: &TargetPacing,
    ) -> Result<(Vec<SettleOutcome>, Vec<Claimed>), StoreError> {
        let tx = self.conn();
        let mut outcomes = Vec::with_capacity(settled.len());
        for (claimed, settlement) in settled {
            outcomes.push(self.settle_in(
                tx,
                owner,
                claimed,
                settlement.clone(),
                now_ms,
                pacing,
            )?);
        }
        let claims = if claim > 0 {
            self.claim_many_in(tx, owner, lease_ms, now_ms, filter, claim)?
        } else {
            Vec::new()
        };
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
        pacing: &TargetPacing,
    ) -> Result<SettleOutcome, StoreError> {
        let op = "settling a delivery";
        let key = &claimed.job.delivery.target_key;
        // Failures in a row so far: only a failure needs them (a success resets them).
        let failures = || -> Result<i64, StoreError> {
            Ok(tx
                .query_row_cached(
                    "SELECT consecutive_failures FROM delivery_targets WHERE target_key = ?1",
                    [key],
                    |row| row.get(0),
                )
                .optional()
                .map_err(|e| self.err(op, e))?
                .unwrap_or(0))
        };
        // (failure counter after this attempt, whether the circuit opens)
        let bump = |failures: i64| -> (i64, bool) {
            let n = failures + 1;
            if pacing.circuit_threshold > 0 && n >= pacing.circuit_threshold {
                (0, true)
            } else {
                (n, false)
            }
        };
        let pause_until = now_ms.saturating_add(pacing.circuit_cooldown_ms);
        // The next send to this target not before this (0: no minimum interval).
        let not_before = if pacing.min_interval_ms > 0 {
            now_ms.saturating_add(pacing.min_interval_ms)
        } else {
            0
        };
        // Each UPDATE writes only while `owner` holds the lease of the still open delivery
        // (?1 now, ?2 seq, ?3 owner); no row changed means the lease was lost.
        let seq = &claimed.seq;
        let circuit_opened = match &settlement {
            Settlement::Delivered { http_status } => {
                if !self.close_attempt(
                    tx,
                    SETTLE_DELIVERED,
                    &[&now_ms, seq, &owner, http_status],
                )? {
                    return self.lease_lost(tx, claimed);
                }
                self.advance_head(tx, key, *seq, true, not_before, true)?;
                false
            }
            Settlement::Retry {
                at_ms,
                code,
                reason,
                http_status,
            } => {
                if !self.close_attempt(
                    tx,
                    SETTLE_RETRY,
                    &[&now_ms, seq, &owner, at_ms, reason, code, http_status],
                )? {
                    return self.lease_lost(tx, claimed);
                }
                let (failures, opened) = bump(failures()?);
                cached_exec(
                    tx,
                    "UPDATE delivery_targets SET next_attempt_at_ms = MAX(?2, ?6), lease_owner = NULL,
                         lease_expires_at_ms = NULL, consecutive_failures = ?3,
                         paused_until_ms = CASE WHEN ?4 THEN ?5 ELSE paused_until_ms END
                     WHERE target_key = ?1",
                    params![key, at_ms, failures, opened, pause_until, not_before],
                )
                .map_err(|e| self.err(op, e))?;
                opened
            }
            Settlement::DeadLetter {
                code,
                reason,
                http_status,
                retryable,
            } => {
                if !self.close_attempt(
                    tx,
                    SETTLE_DEAD_LETTER,
                    &[&now_ms, seq, &owner, reason, code, http_status],
                )? {
                    return self.lease_lost(tx, claimed);
                }
                let (failures, opened) = if *retryable {
                    bump(failures()?)
                } else {
                    (failures()?, false)
                };
                cached_exec(
                    tx,
                    "UPDATE delivery_targets SET consecutive_failures = ?2,
                         paused_until_ms = CASE WHEN ?3 THEN ?4 ELSE paused_until_ms END
                     WHERE target_key = ?1",
                    params![key, failures, opened, pause_until],
                )
                .map_err(|e| self.err(op, e))?;
                self.advance_head(tx, key, *seq, true, not_before, false)?;
                opened
            }
        };
        Ok(SettleOutcome::Settled { circuit_opened })
    }

    /// Runs one of the `SETTLE_*` updates; `false` when it changed nothing (the lease is lost).
    fn close_attempt(
        &self,
        tx: &Connection,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<bool, StoreError> {
        let n = cached_exec(tx, sql, params).map_err(|e| self.err("settling a delivery", e))?;
        Ok(n == 1)
    }

    /// What a settlement that found its lease gone reports: who holds the delivery now and its
    /// status.
    fn lease_lost(&self, tx: &Connection, claimed: &Claimed) -> Result<SettleOutcome, StoreError> {
        let current: Option<(Option<String>, String)> = tx
            .query_row_cached(
                "SELECT lease_owner, status FROM deliveries WHERE seq = ?1",
                [claimed.seq],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err("settling a delivery", e))?;
        let status = current
            .as_ref()
            .and_then(|(_, s)| DeliveryStatus::parse(s))
            .unwrap_or(DeliveryStatus::DeadLettered);
        Ok(SettleOutcome::LeaseLost {
            delivery_id: claimed.job.delivery.delivery_id.clone(),
            current_owner: current.and_then(|(o, _)| o),
            status,
        })
    }

    /// Inside `conn`'s transaction: makes the oldest open delivery of `key` its head (due at its
    /// own due time, unleased), or deletes the target row when none is left. `old_head`: the
    /// target's head until now (every open delivery of the target has a seq at or after it);
    /// `closed_one`: the old head was just closed, so the open count drops by one;
    /// `delivered`: it was delivered, which ends a run of failures.
    fn advance_head(
        &self,
        conn: &Connection,
        key: &str,
        old_head: i64,
        closed_one: bool,
        not_before: i64,
        delivered: bool,
    ) -> Result<(), StoreError> {
        let op = "advancing a target's queue";
        // Walks `deliveries_by_target` from the old head: the first open row is the new head.
        let next: Option<(i64, i64)> = conn
            .query_row_cached(
                "SELECT seq, next_attempt_at_ms FROM deliveries
                 WHERE target_key = ?1 AND seq >= ?2 AND status IN ('pending', 'retrying')
                 ORDER BY seq LIMIT 1",
                params![key, old_head],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(op, e))?;
        match next {
            Some((seq, due)) => cached_exec(
                conn,
                "UPDATE delivery_targets SET head_seq = ?2, next_attempt_at_ms = MAX(?3, ?5),
                     lease_owner = NULL, lease_expires_at_ms = NULL,
                     open_count = MAX(open_count - ?4, 1),
                     consecutive_failures = CASE WHEN ?6 THEN 0 ELSE consecutive_failures END
                 WHERE target_key = ?1",
                params![key, seq, due, i64::from(closed_one), not_before, delivered],
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
                            WHERE d.target_key = t.target_key AND d.seq >= t.head_seq
                              AND d.status IN ('pending', 'retrying')
                              AND d.connector_kind = ?3 AND d.connector_name = ?4)))",
                params![now_ms, filter.plugin, kind, name],
                |row| row.get(0),
            )
            .map_err(|e| self.err("looking for leased deliveries", e))
    }
}

#[cfg(test)]
mod tests {
    const PACING: TargetPacing = TargetPacing {
        circuit_threshold: CIRCUIT_THRESHOLD,
        circuit_cooldown_ms: CIRCUIT_PAUSE_MS,
        min_interval_ms: 0,
    };
    use super::*;
    use crate::store::deliveries::fixture::*;
    use crate::store::deliveries::test_support::*;
    use crate::store::deliveries::DeliveryFilter;

    #[test]
    fn one_round_settles_many_and_claims_what_the_settlements_freed() {
        let (_tmp, store) = store();
        let (a, b) = (http("https://a.example/"), http("https://b.example/"));
        queue(&store, "run_a", std::slice::from_ref(&a), &["a1", "a2"]);
        queue(&store, "run_b", std::slice::from_ref(&b), &["b1", "b2"]);
        let none = ClaimFilter::default();
        let (outcomes, first) = store
            .settle_all_and_claim("pool", &[], 8, LEASE, T0, &none, &PACING)
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
            .settle_all_and_claim("pool", &settled, 8, LEASE, T0 + 1, &none, &PACING)
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
                &PACING,
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
    fn a_target_refilled_after_its_history_starts_at_its_new_deliveries() {
        let (_tmp, store) = store();
        let target = [http("https://a.example/")];
        queue(&store, "run_a", &target, &["a1", "a2"]);
        for expected in ["a1", "a2"] {
            let c = claim(&store, "w", T0).unwrap();
            assert_eq!(text_of(&c), expected);
            settle(&store, "w", &c, DELIVERED, T0 + 1);
        }
        assert_eq!(target_rows(&store), 0);
        // The delivered rows stay in `deliveries_by_target`; the new head is the new row and
        // the walk from it finds the next one, never a delivered row.
        queue(&store, "run_b", &target, &["b1", "b2"]);
        let c = claim(&store, "w", T0 + 2).unwrap();
        assert_eq!(text_of(&c), "b1");
        settle(&store, "w", &c, dead(false), T0 + 3);
        let c = claim(&store, "w", T0 + 3).unwrap();
        assert_eq!(text_of(&c), "b2");
        settle(&store, "w", &c, DELIVERED, T0 + 4);
        assert_eq!(target_rows(&store), 0);
        assert!(claim(&store, "w", T0 + 5).is_none());
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
            match store.settle("w", &c, retry(now + 1), now, &PACING).unwrap() {
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
            .settle("w", &a, retry(paused_until + 1), paused_until, &PACING)
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
        match store
            .settle("w1", &first, DELIVERED, T0 + 1_002, &PACING)
            .unwrap()
        {
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
            store
                .settle("w2", &second, DELIVERED, T0 + 1_004, &PACING)
                .unwrap(),
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
    fn pacing_knobs_disable_the_circuit_and_space_sends() {
        let (_tmp, store) = store();
        queue(
            &store,
            "run_a",
            &[http("https://a.example/")],
            &["a1", "a2"],
        );
        let off = TargetPacing {
            circuit_threshold: 0,
            circuit_cooldown_ms: CIRCUIT_PAUSE_MS,
            min_interval_ms: 0,
        };
        // Threshold 0: failures never pause the target.
        let mut now = T0;
        for _ in 0..5 {
            let c = claim(&store, "w", now).unwrap();
            match store.settle("w", &c, retry(now + 1), now, &off).unwrap() {
                SettleOutcome::Settled { circuit_opened, .. } => assert!(!circuit_opened),
                other => panic!("{other:?}"),
            }
            now += 1;
        }
        assert_eq!(store.delivery_stats(now).unwrap().circuits_open, 0);

        // A minimum interval: after a send, the target's next head waits that long, even when
        // it is due already; a short cooldown ends a pause early.
        let spaced = TargetPacing {
            circuit_threshold: 1,
            circuit_cooldown_ms: 500,
            min_interval_ms: 2_000,
        };
        let c = claim(&store, "w", now).unwrap();
        store.settle("w", &c, DELIVERED, now, &spaced).unwrap();
        assert!(
            claim(&store, "w", now + 1_999).is_none(),
            "a2 waits the interval"
        );
        let c = claim(&store, "w", now + 2_000).unwrap();
        assert_eq!(text_of(&c), "a2");
        // One failure opens the circuit (threshold 1) for the 500 ms cooldown; the retry time
        // (+1 ms) is later pushed out by the interval (2 s), which is the longer wait here.
        let at = now + 2_000;
        match store.settle("w", &c, retry(at + 1), at, &spaced).unwrap() {
            SettleOutcome::Settled { circuit_opened, .. } => assert!(circuit_opened),
            other => panic!("{other:?}"),
        }
        assert!(claim(&store, "w", at + 1_999).is_none());
        assert_eq!(text_of(&claim(&store, "w", at + 2_000).unwrap()), "a2");
    }
}
