//! Run claims and settlements, and the delivery dispatcher's rounds, as jobs of the
//! group-commit writer (STYLE §4: one writer for every write of the pipeline). A handler
//! worker's claim of a batch of runs, each completion (output, its deliveries and the final
//! status together) and each settle-and-claim round of `serve`'s delivery pool ride in the
//! writer's next transaction beside accepted events, so one fsync serves them all instead of
//! one per claim, per completion and per delivery round.
//!
//! Each call blocks its (std) thread until the batch that carries it has committed: a run is
//! handed to a worker only once its claim is durable, and a completion is reported only once
//! its output and deliveries are. The SQL is `store::runs`' own (`*_in` functions run inside
//! whatever transaction is open), so the direct API and the writer cannot disagree.

use std::sync::mpsc;

use super::deliveries::{ClaimFilter, Claimed, Enqueued, SettleOutcome, Settlement, TargetPacing};
use super::runs::{NewRunOutput, RunError};
use super::writer::{GroupWriter, WriteJob};
use super::{Store, StoreError};
use crate::model::run::{Run, RunOutput, RunStatus};
use crate::model::ConnectorKind;

/// What a run job does inside the writer's transaction.
enum RunWrite {
    Claim {
        owner: String,
        lease_ms: i64,
        max: u32,
        connector: Option<(ConnectorKind, String)>,
    },
    Finish(Vec<Finish>),
    Output {
        run_id: String,
        owner: Option<String>,
        output: NewRunOutput,
    },
    Release {
        run_id: String,
        owner: String,
    },
}

/// One run to end: its output (if any) with its deliveries, and its final status.
#[derive(Debug, Clone)]
pub struct Finish {
    pub run_id: String,
    /// The claim owner the run must still have (`None`: any claim, as the control plane).
    pub owner: Option<String>,
    pub output: Option<NewRunOutput>,
    /// `completed` or `failed`.
    pub status: RunStatus,
    pub error: Option<String>,
}

/// A finished run: the run, its recorded output and the deliveries it queued.
pub type Finished = (Run, Option<RunOutput>, Enqueued);

/// What a run job answers.
#[derive(Debug)]
enum RunWritten {
    Claimed(Vec<Run>),
    /// One result per [`Finish`], in order; a refused run does not stop the others.
    Finished(Vec<Result<Finished, RunError>>),
    Released(Box<Run>),
    Output(Box<RunOutput>, Enqueued),
}

struct RunJob {
    write: RunWrite,
    now_ms: i64,
    outcome: Option<Result<RunWritten, RunError>>,
    reply: mpsc::SyncSender<Result<RunWritten, RunError>>,
}

impl RunJob {
    fn run(&self, store: &Store) -> Result<RunWritten, RunError> {
        match &self.write {
            RunWrite::Claim {
                owner,
                lease_ms,
                max,
                connector,
            } => store
                .claim_runs_in(
                    owner,
                    *lease_ms,
                    *max,
                    connector.as_ref().map(|(k, n)| (*k, n.as_str())),
                    self.now_ms,
                )
                .map(RunWritten::Claimed)
                .map_err(RunError::Store),
            RunWrite::Finish(items) => {
                let mut results = Vec::with_capacity(items.len());
                for f in items {
                    let res = store.finish_claimed_in(
                        &f.run_id,
                        f.owner.as_deref(),
                        f.output.as_ref(),
                        f.status,
                        f.error.as_deref(),
                        self.now_ms,
                    );
                    if let Err(RunError::Store(e)) = res {
                        // Undo the whole job; the writer's savepoint pass isolates it.
                        return Err(RunError::Store(e));
                    }
                    results.push(res);
                }
                Ok(RunWritten::Finished(results))
            }
            RunWrite::Output {
                run_id,
                owner,
                output,
            } => store
                .add_output_in(run_id, owner.as_deref(), output, self.now_ms)
                .map(|(recorded, enqueued)| RunWritten::Output(Box::new(recorded), enqueued)),
            RunWrite::Release { run_id, owner } => store
                .release_run_in(run_id, owner, self.now_ms)
                .map(|run| RunWritten::Released(Box::new(run))),
        }
    }
}

impl WriteJob for RunJob {
    fn apply(&mut self, store: &Store) -> Result<(), StoreError> {
        match self.run(store) {
            // A database error undoes the job (the writer reruns the batch with savepoints).
            Err(RunError::Store(e)) => Err(e),
            // Refusals (not claimed, not found) are decided before anything is written.
            other => {
                self.outcome = Some(other);
                Ok(())
            }
        }
    }

    fn finish(mut self: Box<Self>, committed: Result<(), StoreError>) {
        let answer = match (committed, self.outcome.take()) {
            (Ok(()), Some(outcome)) => outcome,
            (Err(e), _) => Err(RunError::Store(e)),
            (Ok(()), None) => Err(RunError::Store(StoreError::Busy {
                path: String::new(),
                op: "writing a run".into(),
                detail: Some("the run job produced no outcome".into()),
            })),
        };
        // The caller may have stopped waiting (it cannot: it blocks); nothing to tell then.
        let _ = self.reply.send(answer);
    }

    fn wakes_run_waiters(&self) -> bool {
        // A released run is claimable again.
        matches!(self.outcome, Some(Ok(RunWritten::Released(_))))
    }
}

impl GroupWriter {
    fn run_write(&self, write: RunWrite, now_ms: i64) -> Result<RunWritten, RunError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(Box::new(RunJob {
            write,
            now_ms,
            outcome: None,
            reply,
        }));
        answer.recv().unwrap_or_else(|_| {
            Err(RunError::Store(StoreError::Busy {
                path: self.db_path().to_string(),
                op: "writing a run".into(),
                detail: Some("the writer stopped".into()),
            }))
        })
    }

    /// Claims up to `max` runs (oldest first) for `owner` until `now_ms + lease_ms`, durably,
    /// in the writer's next batch. Empty when nothing is claimable.
    pub fn claim_runs(
        &self,
        owner: &str,
        lease_ms: i64,
        max: u32,
        connector: Option<(ConnectorKind, &str)>,
        now_ms: i64,
    ) -> Result<Vec<Run>, StoreError> {
        let write = RunWrite::Claim {
            owner: owner.to_string(),
            lease_ms,
            max,
            connector: connector.map(|(k, n)| (k, n.to_string())),
        };
        match self.run_write(write, now_ms) {
            Ok(RunWritten::Claimed(runs)) => Ok(runs),
            Ok(_) => unreachable!("a claim job answers with claimed runs"),
            Err(RunError::Store(e)) => Err(e),
            Err(other) => unreachable!("a claim refuses nothing but store errors: {other}"),
        }
    }

    /// Ends runs in the writer's next batch: for each, records its output (if any), queues
    /// the output's deliveries and sets the final status, as `Store::finish_run` /
    /// `complete_with_output_queued` do. One result per item, in order; a database failure
    /// fails them all (nothing was written).
    pub fn finish_runs(&self, items: Vec<Finish>, now_ms: i64) -> Vec<Result<Finished, RunError>> {
        let n = items.len();
        match self.run_write(RunWrite::Finish(items), now_ms) {
            Ok(RunWritten::Finished(results)) => results,
            Ok(_) => unreachable!("a finish job answers with the finished runs"),
            Err(RunError::Store(e)) => (0..n)
                .map(|_| Err(RunError::Store(e.duplicate())))
                .collect(),
            Err(other) => unreachable!("a finish job refuses per item only: {other}"),
        }
    }

    /// Records one more output of a claimed run and queues its deliveries (as
    /// `Store::add_output_queued`), in the writer's next batch.
    pub fn add_output(
        &self,
        run_id: &str,
        owner: Option<&str>,
        output: NewRunOutput,
        now_ms: i64,
    ) -> Result<(RunOutput, Enqueued), RunError> {
        let write = RunWrite::Output {
            run_id: run_id.to_string(),
            owner: owner.map(str::to_string),
            output,
        };
        match self.run_write(write, now_ms)? {
            RunWritten::Output(recorded, enqueued) => Ok((*recorded, enqueued)),
            _ => unreachable!("an output job answers with the recorded output"),
        }
    }

    /// Gives a claimed run back to the queue, in the writer's next batch.
    pub fn release_run(&self, run_id: &str, owner: &str, now_ms: i64) -> Result<Run, RunError> {
        let write = RunWrite::Release {
            run_id: run_id.to_string(),
            owner: owner.to_string(),
        };
        match self.run_write(write, now_ms)? {
            RunWritten::Released(run) => Ok(*run),
            _ => unreachable!("a release job answers with the released run"),
        }
    }
}

/// A delivery round's result: one outcome per settlement, then the new claims.
pub type Round = (Vec<SettleOutcome>, Vec<Claimed>);

/// One settle-and-claim round of a delivery dispatcher, inside the writer's transaction.
struct RoundJob {
    owner: String,
    settled: Vec<(Claimed, Settlement)>,
    claim: usize,
    lease_ms: i64,
    now_ms: i64,
    filter: ClaimFilter,
    pacing: TargetPacing,
    outcome: Option<Round>,
    reply: mpsc::SyncSender<Result<Round, StoreError>>,
}

impl WriteJob for RoundJob {
    fn apply(&mut self, store: &Store) -> Result<(), StoreError> {
        let round = store.settle_all_and_claim_in(
            &self.owner,
            &self.settled,
            self.claim,
            self.lease_ms,
            self.now_ms,
            &self.filter,
            &self.pacing,
        )?;
        self.outcome = Some(round);
        Ok(())
    }

    fn finish(mut self: Box<Self>, committed: Result<(), StoreError>) {
        let answer = match (committed, self.outcome.take()) {
            (Ok(()), Some(round)) => Ok(round),
            (Err(e), _) => Err(e),
            (Ok(()), None) => Err(StoreError::Busy {
                path: String::new(),
                op: "a delivery round".into(),
                detail: Some("the round produced no outcome".into()),
            }),
        };
        let _ = self.reply.send(answer);
    }
}

impl GroupWriter {
    /// `Store::settle_all_and_claim` as a job of the writer's next batch: settles every
    /// `(claimed, settlement)` and claims up to `claim` more due deliveries for `owner`,
    /// durably, sharing the batch's fsync with accepted events and run settlements.
    #[allow(clippy::too_many_arguments)]
    pub fn settle_and_claim(
        &self,
        owner: &str,
        settled: &[(Claimed, Settlement)],
        claim: usize,
        lease_ms: i64,
        now_ms: i64,
        filter: &ClaimFilter,
        pacing: &TargetPacing,
    ) -> Result<Round, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(Box::new(RoundJob {
            owner: owner.to_string(),
            settled: settled.to_vec(),
            claim,
            lease_ms,
            now_ms,
            filter: filter.clone(),
            pacing: *pacing,
            outcome: None,
            reply,
        }));
        answer.recv().unwrap_or_else(|_| {
            Err(StoreError::Busy {
                path: self.db_path().to_string(),
                op: "a delivery round".into(),
                detail: Some("the writer stopped".into()),
            })
        })
    }
}

/// A delivery's step progress (`Store::save_progress`) as a writer job, so the progress saves
/// of many senders share commits like everything else of the pipeline.
struct ProgressJob {
    delivery_id: String,
    owner: String,
    progress: serde_json::Value,
    now_ms: i64,
    saved: Option<bool>,
    reply: mpsc::SyncSender<Result<bool, StoreError>>,
}

impl WriteJob for ProgressJob {
    fn apply(&mut self, store: &Store) -> Result<(), StoreError> {
        self.saved = Some(store.save_progress(
            &self.delivery_id,
            &self.owner,
            &self.progress,
            self.now_ms,
        )?);
        Ok(())
    }

    fn finish(self: Box<Self>, outcome: Result<(), StoreError>) {
        let answer = outcome.map(|()| self.saved.unwrap_or(false));
        let _ = self.reply.send(answer);
    }
}

impl GroupWriter {
    /// [`Store::save_progress`] queued for the writer's next batch. Jobs are applied in the
    /// order they were queued, so any later job of this delivery (its settlement) commits with
    /// it or after it. The receiver gets the answer of [`GroupWriter::save_progress`] once it is
    /// durable; dropping it is how a caller does not wait (a save refused because the lease is
    /// lost is then dropped: the settlement is refused too).
    pub fn queue_progress(
        &self,
        delivery_id: &str,
        owner: &str,
        progress: &serde_json::Value,
        now_ms: i64,
    ) -> mpsc::Receiver<Result<bool, StoreError>> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(Box::new(ProgressJob {
            delivery_id: delivery_id.to_string(),
            owner: owner.to_string(),
            progress: progress.clone(),
            now_ms,
            saved: None,
            reply,
        }));
        answer
    }

    /// [`Store::save_progress`] in the writer's next batch; returns once it is durable. `false`
    /// when the lease is no longer `owner`'s.
    pub fn save_progress(
        &self,
        delivery_id: &str,
        owner: &str,
        progress: &serde_json::Value,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let answer = self.queue_progress(delivery_id, owner, progress, now_ms);
        answer.recv().unwrap_or_else(|_| {
            Err(StoreError::Busy {
                path: self.db_path().to_string(),
                op: "saving delivery progress".into(),
                detail: Some("the writer stopped".into()),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::store::runs::test_support::{insert_run, T0};

    fn writer(root: &std::path::Path) -> (GroupWriter, Arc<AtomicUsize>) {
        let woken = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&woken);
        let writer = GroupWriter::start(
            root,
            Box::new(move |n| {
                counter.fetch_add(n, Ordering::SeqCst);
            }),
        )
        .unwrap();
        (writer, woken)
    }

    fn done(run_id: &str, owner: &str) -> Finish {
        Finish {
            run_id: run_id.into(),
            owner: Some(owner.into()),
            output: Some(NewRunOutput {
                content: Some(format!("re: {run_id}")),
                ..NewRunOutput::default()
            }),
            status: RunStatus::Completed,
            error: None,
        }
    }

    #[test]
    fn a_queued_progress_commits_before_the_later_settlement_and_a_retry_reads_it() {
        use crate::store::deliveries::fixture::{http, queue};
        use crate::store::deliveries::{ClaimFilter, Settlement, TargetPacing};

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        queue(
            &store,
            "run_p",
            &[http("https://example.com/p")],
            &["two steps"],
        );
        drop(store);
        let (writer, _) = writer(dir.path());
        let (filter, pacing) = (ClaimFilter::default(), TargetPacing::default());
        let (_, claims) = writer
            .settle_and_claim("w", &[], 1, 60_000, T0, &filter, &pacing)
            .unwrap();
        let claimed = claims.into_iter().next().expect("the delivery is claimed");
        let id = claimed.job.delivery.delivery_id.clone();
        // Not waited for: the settlement queued after it is what the sender waits on.
        drop(writer.queue_progress(&id, "w", &serde_json::json!({"steps_done": 1}), T0 + 1));
        let retry = Settlement::Retry {
            at_ms: T0 + 2,
            code: "http_status_503".into(),
            reason: "step 2 failed".into(),
            http_status: Some(503),
        };
        writer
            .settle_and_claim(
                "w",
                &[(claimed, retry)],
                0,
                60_000,
                T0 + 1,
                &filter,
                &pacing,
            )
            .unwrap();
        let (_, again) = writer
            .settle_and_claim("w", &[], 1, 60_000, T0 + 3, &filter, &pacing)
            .unwrap();
        let again = again.into_iter().next().expect("the retry is claimed");
        assert_eq!(
            again.job.delivery.progress,
            Some(serde_json::json!({"steps_done": 1})),
            "the retry resumes after the finished step"
        );
        // A note by an owner that lost the lease is dropped, not written.
        drop(writer.queue_progress(&id, "other", &serde_json::json!({"steps_done": 9}), T0 + 4));
        writer
            .save_progress(&id, "w", &serde_json::json!({"steps_done": 2}), T0 + 5)
            .unwrap();
        let stored = Store::open(dir.path())
            .unwrap()
            .get_delivery(&id)
            .unwrap()
            .unwrap();
        assert_eq!(stored.progress, Some(serde_json::json!({"steps_done": 2})));
    }

    #[test]
    fn batches_claim_finish_and_release_through_the_writer() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        for i in 0..5 {
            insert_run(&store, &format!("run_{i}"), "orders", T0 + i);
        }
        let (writer, woken) = writer(tmp.path());

        // A batch is bounded by `max`, oldest first; a second claimer gets the rest, never the
        // same run twice.
        let a = writer.claim_runs("a", 60_000, 3, None, T0 + 10).unwrap();
        let ids: Vec<&str> = a.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["run_0", "run_1", "run_2"]);
        let b = writer.claim_runs("b", 60_000, 64, None, T0 + 10).unwrap();
        let ids: Vec<&str> = b.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["run_3", "run_4"]);
        assert!(writer
            .claim_runs("c", 60_000, 64, None, T0 + 10)
            .unwrap()
            .is_empty());
        // Claims and empty claims wake nobody (no spin of idle workers).
        assert_eq!(woken.load(Ordering::SeqCst), 0);

        // One job finishes several runs; a run claimed by someone else is refused alone.
        let results = writer.finish_runs(
            vec![done("run_0", "a"), done("run_3", "a"), done("run_1", "a")],
            T0 + 20,
        );
        assert!(results[0].is_ok(), "{:?}", results[0]);
        assert!(
            matches!(results[1], Err(RunError::Conflict { .. })),
            "{:?}",
            results[1]
        );
        let (run, output, queued) = results[2].as_ref().unwrap();
        assert_eq!(run.status, RunStatus::Completed);
        assert_eq!(
            output.as_ref().unwrap().content.as_deref(),
            Some("re: run_1")
        );
        assert!(
            queued.has_pending(),
            "the run's reply target got a delivery"
        );

        // A released run is claimable again and wakes run waiters.
        writer.release_run("run_2", "a", T0 + 30).unwrap();
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        let again = writer.claim_runs("c", 60_000, 64, None, T0 + 40).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].run_id, "run_2");

        // An expired lease returns every run of a batch.
        let expired = writer
            .claim_runs("d", 60_000, 64, None, T0 + 10 + 60_001)
            .unwrap();
        let ids: Vec<&str> = expired.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["run_3", "run_4"]);
        writer.shutdown();

        // Everything the writer answered is durable: a fresh connection sees it.
        let fresh = Store::open(tmp.path()).unwrap();
        assert_eq!(
            fresh.get_run("run_1").unwrap().unwrap().status,
            RunStatus::Completed
        );
    }
}
