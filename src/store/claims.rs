//! Releasing the claims of owners that are gone (issue 15): the run claims and delivery leases
//! of a process that no longer exists are given back at once, instead of after their lease.
//!
//! The store does not know what an owner names: the caller says which owners are gone (a
//! predicate; `serve` and `drain-deliveries` pass `owner::is_gone`, which only ever answers
//! `true` for a process of this host). Each released run goes back to `queued` (its claim count
//! kept); each released delivery loses its lease with no attempt counted, exactly as if the lease
//! had expired, so the next send carries the same `Idempotency-Key` (at-least-once) and the
//! target's FIFO is unchanged: only its head was leased.

use rusqlite::params;

use super::{Store, StoreError};

/// What [`Store::release_claims_of`] gave back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleasedClaims {
    /// Claimed runs put back in the queue.
    pub runs: usize,
    /// Leased deliveries made claimable again.
    pub deliveries: usize,
    /// The gone owners whose claims were released, sorted.
    pub owners: Vec<String>,
}

impl ReleasedClaims {
    /// True when nothing was released.
    pub fn is_empty(&self) -> bool {
        self.runs == 0 && self.deliveries == 0
    }
}

impl Store {
    /// In ONE transaction: looks at the owner of every claimed run and every leased delivery
    /// target, asks `gone` about each distinct owner once, and releases every claim of the owners
    /// it calls gone. Claims of other owners (live, of another host, or of a format `gone` does
    /// not know) are left alone, expired or not; so is a claim taken by another owner meanwhile.
    pub fn release_claims_of(
        &self,
        gone: &dyn Fn(&str) -> bool,
        now_ms: i64,
    ) -> Result<ReleasedClaims, StoreError> {
        let op = "releasing the claims of processes that are gone";
        let tx = self.write_tx(op)?;
        let mut owners: Vec<String> = Vec::new();
        for sql in [
            // The first term lets the planner walk the small `runs_open` index.
            "SELECT DISTINCT claim_owner FROM runs
             WHERE status IN ('queued', 'claimed') AND status = 'claimed'
               AND claim_owner IS NOT NULL",
            "SELECT DISTINCT lease_owner FROM delivery_targets WHERE lease_owner IS NOT NULL",
        ] {
            let mut stmt = tx.prepare(sql).map_err(|e| self.err(op, e))?;
            let found = stmt
                .query_map([], |row| row.get::<_, String>(0))
                .map_err(|e| self.err(op, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.err(op, e))?;
            owners.extend(found);
        }
        owners.sort();
        owners.dedup();
        owners.retain(|owner| gone(owner));

        let mut released = ReleasedClaims::default();
        for owner in &owners {
            released.runs += tx
                .execute(
                    "UPDATE runs SET status = 'queued', claim_owner = NULL,
                         claim_expires_at_ms = NULL, updated_at_ms = ?2
                     WHERE status IN ('queued', 'claimed') AND status = 'claimed'
                       AND claim_owner = ?1",
                    params![owner, now_ms],
                )
                .map_err(|e| self.err(op, e))?;
            let targets: Vec<String> = {
                let mut stmt = tx
                    .prepare("SELECT target_key FROM delivery_targets WHERE lease_owner = ?1")
                    .map_err(|e| self.err(op, e))?;
                let rows = stmt
                    .query_map([owner], |row| row.get(0))
                    .map_err(|e| self.err(op, e))?;
                rows.collect::<Result<_, _>>()
                    .map_err(|e| self.err(op, e))?
            };
            for key in &targets {
                // Only the head of a target is ever leased, and no open delivery of a target
                // comes before its head: `deliveries_by_target` is walked from the head on.
                released.deliveries += tx
                    .execute(
                        "UPDATE deliveries SET lease_owner = NULL, lease_expires_at_ms = NULL
                         WHERE target_key = ?1 AND status IN ('pending', 'retrying')
                           AND seq >= (SELECT head_seq FROM delivery_targets
                                       WHERE target_key = ?1)
                           AND lease_owner = ?2",
                        params![key, owner],
                    )
                    .map_err(|e| self.err(op, e))?;
                tx.execute(
                    "UPDATE delivery_targets SET lease_owner = NULL, lease_expires_at_ms = NULL
                     WHERE target_key = ?1 AND lease_owner = ?2",
                    params![key, owner],
                )
                .map_err(|e| self.err(op, e))?;
            }
        }
        tx.commit().map_err(|e| self.err(op, e))?;
        released.owners = owners;
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::run::RunStatus;
    use crate::store::deliveries::fixture::{self, T0};
    use crate::store::deliveries::{ClaimFilter, Settlement, TargetPacing};

    const LEASE: i64 = 60_000;

    fn claim(store: &Store, owner: &str) -> crate::store::deliveries::Claimed {
        store
            .claim_next(owner, LEASE, T0, &ClaimFilter::default())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn only_the_gone_owners_claims_are_released_and_the_head_is_sent_again_first() {
        let (_tmp, store) = fixture::store();
        let a = fixture::http("https://a.example/hook");
        let b = fixture::http("https://b.example/hook");
        let on_a = fixture::queue(&store, "r1", &[a], &["a1", "a2"]);
        let on_b = fixture::queue(&store, "r2", &[b], &["b1"]);
        // Two runs: one claimed by the gone process, one by a live one (the fixture's runs are
        // claimed by `h`, which is neither).
        fixture::run(&store, "r3", &[], &[]);
        fixture::run(&store, "r4", &[], &[]);
        store
            .conn()
            .execute(
                "UPDATE runs SET claim_owner = 'dead' WHERE run_id = 'r3'",
                [],
            )
            .unwrap();
        store
            .conn()
            .execute(
                "UPDATE runs SET claim_owner = 'live' WHERE run_id = 'r4'",
                [],
            )
            .unwrap();
        let dead = claim(&store, "dead");
        let live = claim(&store, "live");
        assert_eq!(dead.job.delivery.delivery_id, on_a[0]);
        assert_eq!(live.job.delivery.delivery_id, on_b[0]);
        let asked = std::cell::RefCell::new(Vec::new());
        let gone = |owner: &str| {
            asked.borrow_mut().push(owner.to_string());
            owner == "dead"
        };
        let released = store.release_claims_of(&gone, T0 + 1).unwrap();
        assert_eq!(
            released,
            ReleasedClaims {
                runs: 1,
                deliveries: 1,
                owners: vec!["dead".into()]
            }
        );
        // Each distinct owner was asked once.
        assert_eq!(*asked.borrow(), ["dead", "h", "live"]);

        let run = |id: &str| store.get_run(id).unwrap().unwrap();
        assert_eq!(run("r3").status, RunStatus::Queued);
        assert_eq!(run("r3").claim_owner, None);
        assert_eq!(run("r4").status, RunStatus::Claimed);
        assert_eq!(run("r1").claim_owner.as_deref(), Some("h"));

        // The released head is claimable at once (well within the old lease), the same
        // delivery (same id, so the same Idempotency-Key) and the same attempt number; the
        // live owner's target stays leased.
        let again = claim(&store, "new");
        assert_eq!(again.job.delivery.delivery_id, on_a[0]);
        assert_eq!(again.job.attempt, dead.job.attempt);
        assert!(store
            .claim_next("new", LEASE, T0 + 2, &ClaimFilter::default())
            .unwrap()
            .is_none());
        // The gone owner cannot settle any more; the live one still can.
        let refused = store
            .settle(
                "dead",
                &dead,
                Settlement::Delivered {
                    http_status: Some(200),
                },
                T0 + 3,
                &TargetPacing::default(),
            )
            .unwrap();
        assert!(
            matches!(
                refused,
                crate::store::deliveries::SettleOutcome::LeaseLost { .. }
            ),
            "{refused:?}"
        );
        let settled = store
            .settle(
                "live",
                &live,
                Settlement::Delivered {
                    http_status: Some(200),
                },
                T0 + 3,
                &TargetPacing::default(),
            )
            .unwrap();
        assert!(
            matches!(
                settled,
                crate::store::deliveries::SettleOutcome::Settled { .. }
            ),
            "{settled:?}"
        );

        // Nothing gone: nothing released, nothing written.
        let none = store.release_claims_of(&|_| false, T0 + 4).unwrap();
        assert!(none.is_empty() && none.owners.is_empty(), "{none:?}");
    }
}
