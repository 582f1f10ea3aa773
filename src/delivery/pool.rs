//! The delivery pool (SPEC §11.3–§11.4): the dispatcher and sender threads that claim due
//! deliveries, send them through their plugin's transport and settle the results, inside
//! `serve` ([`WorkerPool`]) and, run to completion, for `drain-deliveries` (see `drain`). Also
//! the pieces both share: [`Transports`], [`Observer`], the lease default.
//!
//! A [`WorkerPool`] is one dispatcher thread, the only one of the pool that touches the
//! queue, and N sender threads. Each round the dispatcher settles every send that finished and
//! claims enough due deliveries to refill the senders, in one short transaction; a send holds
//! no database lock, only its lease. Leases are what make `serve`, `drain-deliveries` and a
//! second daemon safe side by side: a delivery is never sent by two workers at once unless a
//! lease expired, and then the first worker's late settlement is refused (at-least-once,
//! never lost).
//!
//! When nothing is claimable the dispatcher waits on the shared [`Notify`] until it is woken
//! (a finished send, new output, a replay, shutdown) or the next target becomes due — never
//! `sleep`. Senders never touch the queue (only a multi-step transport's progress), and no
//! SQL is written here: every queue change goes through `store::deliveries`.
//!
//! Plugins without a transport in [`Transports`] (slack and telegram until their transports
//! land with their own issues) settle as terminal failures with code `plugin_unavailable`, so
//! nothing waits forever for code that is not there.

use std::collections::HashMap;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::policy::RetryPolicy;
use super::{outcome_label, settlement_for, AttemptOutcome, ProgressSink, Transport};
use crate::model::now_ms;
use crate::model::reply::ReplyPlugin;
use crate::notify::Notify;
use crate::owner;
use crate::store::deliveries::{ClaimFilter, Claimed, SettleOutcome, Settlement, TargetPacing};
use crate::store::writer::GroupWriter;
use crate::store::{Store, StoreError};

/// Default lease: the http transport's total timeout (15 s, SPEC §11.5) plus as much again as
/// margin, so a slow but live send is never taken over. It is also how long a delivery that was
/// in flight when its process crashed waits before another worker sends it again.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The longest an idle worker waits before looking at the queue again. Workers of this process
/// are woken through [`Notify`] when output is queued or replayed here, but another process
/// (`kheishctl replay`, `drain-deliveries`, a second daemon on the same state root) can add or
/// release work this process is never told about; this cap bounds how late such work starts.
const MAX_IDLE_WAIT: Duration = Duration::from_secs(1);
/// How often a drain with nothing claimable looks again while another process holds a lease.
const FOREIGN_LEASE_POLL: Duration = Duration::from_millis(20);
/// The dispatcher asks for a WAL checkpoint after this many commits.
const CHECKPOINT_EVERY: u64 = 64;
/// Deliveries kept claimed per sender thread (see `dispatcher_loop`).
const PREFETCH: usize = 8;

/// Code of a delivery whose plugin has no transport in this build.
pub const PLUGIN_UNAVAILABLE: &str = "plugin_unavailable";
/// Code of a transport that panicked (a bug); the delivery is retried.
pub const TRANSPORT_PANIC: &str = "transport_panic";

/// Receives what workers do, so the server can count metrics and log without `delivery`
/// importing `server`.
pub trait Observer: Send + Sync {
    /// One attempt ended; `outcome` is `delivered`, `retryable`, `terminal` or `dead_lettered`
    /// (see [`super::outcome_label`]).
    fn attempt(&self, plugin: &str, outcome: &str);

    /// Something went wrong that the worker handled (database busy, a lease lost to another
    /// worker); the message names no secret. Ignored by default.
    fn warn(&self, _message: &str) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn attempt(&self, _plugin: &str, _outcome: &str) {}
}

/// The transport of each plugin that has one.
#[derive(Default, Clone)]
pub struct Transports {
    by_plugin: HashMap<ReplyPlugin, Arc<dyn Transport>>,
}

impl fmt::Debug for Transports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut plugins: Vec<&str> = self.by_plugin.keys().map(|p| p.as_str()).collect();
        plugins.sort_unstable();
        f.debug_struct("Transports")
            .field("plugins", &plugins)
            .finish()
    }
}

impl Transports {
    /// No transport at all: every delivery dead-letters as `plugin_unavailable`.
    pub fn new() -> Transports {
        Transports::default()
    }

    /// Adds (or replaces) the transport of `plugin`.
    pub fn with(mut self, plugin: ReplyPlugin, transport: Arc<dyn Transport>) -> Transports {
        self.by_plugin.insert(plugin, transport);
        self
    }

    /// The transport of `plugin`, if this build has one.
    pub fn get(&self, plugin: ReplyPlugin) -> Option<&Arc<dyn Transport>> {
        self.by_plugin.get(&plugin)
    }
}

/// Everything [`WorkerPool::spawn`] needs.
#[derive(Clone)]
pub struct WorkerConfig {
    pub state_root: PathBuf,
    /// Worker threads; 0 starts none.
    pub workers: usize,
    /// The role in the pool's lease owner (`serve`, `drain`); a random tag is appended and the
    /// whole is wrapped in this process's owner (`owner::this_process`).
    pub owner_prefix: String,
    pub policy: RetryPolicy,
    pub transports: Arc<Transports>,
    /// Woken when deliveries are queued (output, replay) and on shutdown.
    pub notify: Arc<Notify>,
    pub filter: ClaimFilter,
    /// How long a claim lasts ([`DEFAULT_LEASE`]); must exceed the transports' own timeouts.
    pub lease: Duration,
    pub observer: Arc<dyn Observer>,
    /// `serve`'s group-commit writer: when set, each dispatcher round is a job of its batches,
    /// so one fsync serves accepted events, run settlements and the round (and the writer's
    /// checkpointer keeps the WAL bounded). `drain-deliveries` runs alone and commits its own
    /// rounds.
    pub writer: Option<Arc<GroupWriter>>,
}

/// Running delivery workers; [`WorkerPool::shutdown`] stops and joins them.
pub struct WorkerPool {
    stop: Arc<AtomicBool>,
    notify: Arc<Notify>,
    threads: Vec<JoinHandle<Result<(), StoreError>>>,
}

impl fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerPool")
            .field("workers", &self.threads.len())
            .finish_non_exhaustive()
    }
}

/// The lease owner of one pool: this process's owner (`owner::this_process`: host, pid, start
/// time, so a restarted daemon can release the claims of a pool whose process is gone) with the
/// role `PREFIX-RANDOM`, unique to the call, so two pools of one process never settle each
/// other's claims.
fn pool_owner(prefix: &str) -> String {
    let tag: u32 = rand::random();
    owner::this_process(&format!("{prefix}-{tag:08x}"))
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl WorkerPool {
    /// Starts the dispatcher and `cfg.workers` sender threads (none when `cfg.workers` is 0).
    pub fn spawn(cfg: WorkerConfig) -> WorkerPool {
        let stop = Arc::new(AtomicBool::new(false));
        let notify = Arc::clone(&cfg.notify);
        if cfg.workers == 0 {
            return WorkerPool {
                stop,
                notify,
                threads: Vec::new(),
            };
        }
        let threads = start_pool(Arc::new(cfg), &stop, Until::Stopped)
            .into_iter()
            .map(|thread| thread.thread)
            .collect();
        WorkerPool {
            stop,
            notify,
            threads,
        }
    }

    /// Stops the pool: sets the stop flag, wakes the dispatcher, and joins every thread. Sends
    /// in flight finish (bounded by their transport's timeout) and are settled first; nothing
    /// new is claimed.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.notify.notify_all();
        for thread in self.threads {
            // A panicking thread already printed its message through the default hook.
            let _ = thread.join();
        }
    }
}

/// When a dispatcher ends.
pub(super) enum Until {
    /// When the pool's stop flag is set (`serve`): it then claims nothing new, gives back
    /// claims not yet sent, waits for the sends in flight and settles them.
    Stopped,
    /// When the queue is drained (`drain-deliveries`): nothing matching the filter is
    /// claimable, nothing of this pool is in flight, and no other process holds a lease on a
    /// matching target (its settlement can make the next delivery of that target due) — or
    /// when `deadline` passes (then as for a stop). Every written settlement is reported on
    /// `events`; store errors end the drain with that error.
    Drained {
        deadline: Option<Instant>,
        events: mpsc::Sender<AttemptEvent>,
    },
}

/// A started pool thread (the dispatcher first, then the senders).
pub(super) struct PoolThread {
    pub(super) thread: JoinHandle<Result<(), StoreError>>,
}

/// Starts a dispatcher and `cfg.workers` (at least one) sender threads.
pub(super) fn start_pool(
    cfg: Arc<WorkerConfig>,
    stop: &Arc<AtomicBool>,
    until: Until,
) -> Vec<PoolThread> {
    let owner: Arc<str> = pool_owner(&cfg.owner_prefix).into();
    let (jobs_tx, jobs_rx) = mpsc::channel::<Claimed>();
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    let (done_tx, done_rx) = mpsc::channel::<Sent>();
    let mut threads: Vec<PoolThread> = (0..cfg.workers.max(1))
        .map(|idx| {
            let (cfg, owner, stop) = (Arc::clone(&cfg), Arc::clone(&owner), Arc::clone(stop));
            let (jobs, done) = (Arc::clone(&jobs_rx), done_tx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("delivery-{idx}"))
                .spawn(move || {
                    sender_loop(&owner, &cfg, &stop, &jobs, &done);
                    Ok(())
                })
                .expect("spawning a delivery sender thread (the OS refused a thread)");
            PoolThread { thread }
        })
        .collect();
    drop(done_tx);
    let stop = Arc::clone(stop);
    let dispatcher = std::thread::Builder::new()
        .name("delivery-queue".into())
        .spawn(move || dispatcher_loop(&owner, &cfg, &stop, until, jobs_tx, &done_rx))
        .expect("spawning the delivery dispatcher thread (the OS refused a thread)");
    threads.insert(0, PoolThread { thread: dispatcher });
    threads
}

/// A claimed delivery handed back from a sender to the dispatcher: sent, with the settlement
/// to write, or not sent because the pool is stopping (its lease is released).
struct Sent {
    claimed: Claimed,
    settlement: Option<Settlement>,
}

/// The dispatcher of a [`WorkerPool`]: the one thread of the pool that touches the queue. Each
/// round it settles every send that finished since the last round and claims enough due
/// deliveries to keep all senders busy, in ONE transaction (`Store::settle_all_and_claim`), so
/// a busy pool pays one commit per round instead of one or two per delivery, and the queue's
/// pages stay in one connection's cache. The lease owner is the pool's; per-target FIFO holds
/// because a leased target is never claimed twice.
///
/// When nothing is claimable it waits on the shared [`Notify`] — which senders also ring when
/// they finish — until woken or the next target becomes due, never `sleep`.
fn dispatcher_loop(
    owner: &str,
    cfg: &WorkerConfig,
    stop: &AtomicBool,
    end: Until,
    jobs: mpsc::Sender<Claimed>,
    done: &mpsc::Receiver<Sent>,
) -> Result<(), StoreError> {
    let lease = lease_ms(cfg.lease);
    let pacing = cfg.policy.pacing();
    let (deadline, events) = match &end {
        Until::Stopped => (None, None),
        Until::Drained { deadline, events } => (*deadline, Some(events)),
    };
    let draining = events.is_some();
    let mut queue: Option<Store> = None;
    let mut commits = 0u64;
    let mut finished: Vec<Sent> = Vec::new();
    // Claimed and not yet settled (with a sender or waiting in `finished`).
    let mut in_flight = 0usize;
    loop {
        // Read the generation BEFORE looking for work: a notify after this point (a finished
        // send, new output, shutdown) ends the wait below at once, so no wake-up is missed.
        let seen = cfg.notify.generation();
        finished.extend(done.try_iter());
        if deadline.is_some_and(|d| Instant::now() >= d) {
            stop.store(true, Ordering::SeqCst);
        }
        let stopping = stop.load(Ordering::SeqCst);
        if stopping && in_flight == 0 {
            // Dropping `jobs` ends the senders.
            if let Some(st) = &queue {
                st.checkpoint_between_writes();
            }
            return Ok(());
        }
        // Claimed deliveries with a sender or waiting for one. Up to PREFETCH per sender are
        // kept claimed, so a sender that finishes takes its next delivery at once instead of
        // waiting for this thread's next round, and rounds grow (fewer commits, each writing
        // the queue's pages once for many deliveries). On shutdown the unsent ones are
        // released, not sent.
        let busy = in_flight - finished.len();
        let want = if stopping {
            0
        } else {
            (cfg.workers.max(1) * PREFETCH).saturating_sub(busy)
        };
        let cap = |wait: Duration| match deadline {
            Some(d) => wait.min(d.saturating_duration_since(Instant::now())),
            None => wait,
        };
        if finished.is_empty() && want == 0 {
            cfg.notify.wait_past(seen, cap(MAX_IDLE_WAIT));
            continue;
        }
        let st = match queue {
            Some(ref st) => st,
            None => match open_queue(&cfg.state_root) {
                Ok(opened) => queue.insert(opened),
                Err(e) if draining => {
                    stop.store(true, Ordering::SeqCst);
                    return Err(e);
                }
                Err(e) => {
                    cfg.observer
                        .warn(&format!("delivery dispatcher: {}", error_chain(&e)));
                    cfg.notify.wait_past(seen, MAX_IDLE_WAIT);
                    continue;
                }
            },
        };
        let mut settled: Vec<(Claimed, Settlement)> = Vec::with_capacity(finished.len());
        let mut unsent: Vec<Claimed> = Vec::new();
        for sent in finished.drain(..) {
            match sent.settlement {
                Some(settlement) => settled.push((sent.claimed, settlement)),
                None => unsent.push(sent.claimed),
            }
        }
        if !unsent.is_empty() {
            // Without a release they would wait out their lease before the next daemon (or a
            // drain) could send them. A failed release has the same, harmless, effect.
            if let Err(e) = st.release(owner, &unsent) {
                cfg.observer.warn(&format!(
                    "delivery dispatcher: {}; unsent deliveries wait for their lease to expire",
                    error_chain(&e)
                ));
            }
            in_flight -= unsent.len();
        }
        let report = |claimed: &Claimed, settlement: &Settlement, written| {
            if report_settled(claimed, written, &*cfg.observer, &pacing) {
                if let Some(events) = events {
                    // The receiver lives until the dispatcher has ended.
                    let _ = events.send(AttemptEvent {
                        delivery_id: claimed.job.delivery.delivery_id.clone(),
                        label: outcome_label(settlement),
                    });
                }
            }
        };
        // One clock reading for the claims and the drained check below: a lease that expires
        // between the two must be seen as claimable by both or by neither.
        let now = now_ms();
        let round = match &cfg.writer {
            Some(writer) => {
                writer.settle_and_claim(owner, &settled, want, lease, now, &cfg.filter, &pacing)
            }
            None => {
                st.settle_all_and_claim(owner, &settled, want, lease, now, &cfg.filter, &pacing)
            }
        };
        let mut reopen = false;
        let claims = match round {
            Ok((outcomes, claims)) => {
                commits += 1;
                if cfg.writer.is_none() && commits % CHECKPOINT_EVERY == 0 {
                    st.checkpoint_between_writes();
                }
                for ((claimed, settlement), outcome) in settled.iter().zip(outcomes) {
                    report(claimed, settlement, Ok(outcome));
                }
                claims
            }
            Err(e) => {
                cfg.observer.warn(&format!(
                    "delivery dispatcher: {}; settling one by one",
                    error_chain(&e)
                ));
                // One bad settlement must not hold back the others: write each alone. One
                // that still fails is reported and its delivery is sent again when the lease
                // expires (at-least-once).
                for (claimed, settlement) in &settled {
                    let written = st.settle(owner, claimed, settlement.clone(), now_ms(), &pacing);
                    report(claimed, settlement, written);
                }
                // Reopen next round: the connection may be what failed.
                reopen = true;
                Vec::new()
            }
        };
        in_flight -= settled.len();
        let idle = want > 0 && claims.is_empty() && settled.is_empty() && !reopen;
        let wait = if reopen {
            // The round failed (a full disk, an I/O error): try again after a pause, or when
            // woken, instead of spinning on a state root that cannot commit.
            Some(MAX_IDLE_WAIT)
        } else if !idle {
            None
        } else if draining && in_flight == 0 {
            // Nothing claimable and nothing of ours in flight: drained, unless another process
            // holds a lease whose settlement can make more work due.
            match st.leased_elsewhere(&cfg.filter, now) {
                Ok(false) => {
                    stop.store(true, Ordering::SeqCst);
                    None
                }
                Ok(true) => Some(FOREIGN_LEASE_POLL),
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    return Err(e);
                }
            }
        } else {
            // Nothing claimable: wait to be woken, for the next due target, or the cap.
            Some(match st.next_due_ms(&cfg.filter) {
                Ok(Some(at)) => until(at, now_ms()),
                Ok(None) => MAX_IDLE_WAIT,
                Err(e) if draining => {
                    stop.store(true, Ordering::SeqCst);
                    return Err(e);
                }
                Err(e) => {
                    cfg.observer
                        .warn(&format!("delivery dispatcher: {}", error_chain(&e)));
                    MAX_IDLE_WAIT
                }
            })
        };
        if reopen {
            queue = None;
        }
        for claimed in claims {
            in_flight += 1;
            if jobs.send(claimed).is_err() {
                // Every sender is gone (they only end when this thread does, or by a panic
                // outside the transport): the lease runs out and the delivery is sent later.
                in_flight -= 1;
            }
        }
        if let Some(wait) = wait {
            cfg.notify.wait_past(seen, cap(wait.min(MAX_IDLE_WAIT)));
        }
    }
}

/// The dispatcher's connection: relaxed sync (see `Store::relax_sync_for_redoable_writes`) and
/// WAL checkpoints where they can complete (see `Store::checkpoint_between_writes`).
fn open_queue(state_root: &Path) -> Result<Store, StoreError> {
    let store = Store::open(state_root)?;
    store.relax_sync_for_redoable_writes()?;
    store.prepare_queue_writer()?;
    Ok(store)
}

/// One sender thread of a [`WorkerPool`]: takes a claimed delivery from the dispatcher, sends
/// it through its plugin's transport, and hands the settlement back. It touches the database
/// only when a multi-step transport saves progress (on a connection opened for that).
fn sender_loop(
    owner: &str,
    cfg: &WorkerConfig,
    stop: &AtomicBool,
    jobs: &Mutex<mpsc::Receiver<Claimed>>,
    done: &mpsc::Sender<Sent>,
) {
    let mut progress_store: Option<Store> = None;
    loop {
        let next = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(claimed) = next else {
            return;
        };
        // A claim that waited in the channel for more than half its lease (every sender busy
        // with slow targets) goes back too: sent now, it could outlive its lease and race a
        // worker that took it over. Released, it is claimed again with a fresh lease.
        let stale = claimed.lease_expires_at_ms - now_ms() < lease_ms(cfg.lease) / 2;
        if stale || stop.load(Ordering::SeqCst) {
            // Stopping: a send already under way finishes, but a claimed delivery that has not
            // started goes back to the queue instead of holding up the shutdown.
            let _ = done.send(Sent {
                claimed,
                settlement: None,
            });
            cfg.notify.notify_all();
            continue;
        }
        // Every claim goes back to the dispatcher, whatever happens here: one that never came
        // back would keep the dispatcher waiting for it at shutdown. A panic outside the
        // transport (which `attempt` already contains) is a bug; the delivery is retried after
        // the longest retry delay (at-least-once, same Idempotency-Key), not in a hot loop.
        let settlement = panic::catch_unwind(AssertUnwindSafe(|| {
            let outcome = attempt(
                &cfg.state_root,
                &mut progress_store,
                cfg.writer.as_deref(),
                owner,
                &claimed,
                &cfg.transports,
            );
            let settlement = settlement_for(&outcome, claimed.job.attempt, &cfg.policy, now_ms());
            cfg.observer.attempt(
                claimed.job.delivery.target.plugin.as_str(),
                outcome_label(&settlement),
            );
            settlement
        }))
        .unwrap_or_else(|_| Settlement::Retry {
            at_ms: now_ms()
                .saturating_add(i64::try_from(cfg.policy.max_retry_ms).unwrap_or(i64::MAX)),
            code: TRANSPORT_PANIC.into(),
            reason: "the delivery worker panicked (a bug in kheishctl)".into(),
            http_status: None,
        });
        if done
            .send(Sent {
                claimed,
                settlement: Some(settlement),
            })
            .is_err()
        {
            return;
        }
        cfg.notify.notify_all();
    }
}

/// How long until `at_ms` (at least 1 ms, so a target due "now" that another worker just took
/// cannot make the loop spin).
fn until(at_ms: i64, now_ms: i64) -> Duration {
    Duration::from_millis(at_ms.saturating_sub(now_ms).max(1) as u64)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Writes a transport's step progress to the delivery row while the lease is ours, on a
/// connection opened the first time a transport saves progress.
struct StoreProgress<'a> {
    state_root: &'a Path,
    store: &'a mut Option<Store>,
    /// `serve`'s group-commit writer: progress saves go through its batches when set.
    writer: Option<&'a GroupWriter>,
    delivery_id: &'a str,
    owner: &'a str,
    /// The answer of the last note, not yet read (see [`StoreProgress::settle_last_note`]).
    last_note: Option<mpsc::Receiver<Result<bool, StoreError>>>,
}

impl StoreProgress<'_> {
    /// Waits for the answer of the previous note, if any: a transport that notes and then
    /// writes progress again learns here that the note could not be written or was refused
    /// (the lease was lost), and ends the attempt.
    fn settle_last_note(&mut self) -> Result<(), String> {
        let Some(answer) = self.last_note.take() else {
            return Ok(());
        };
        let written = answer.recv().unwrap_or_else(|_| {
            Err(StoreError::Busy {
                path: self.state_root.display().to_string(),
                op: "saving delivery progress".into(),
                detail: Some("the writer stopped".into()),
            })
        });
        self.saved(written)
    }

    /// Maps the answer of a progress write.
    fn saved(&mut self, written: Result<bool, StoreError>) -> Result<(), String> {
        match written {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "delivery {} is no longer leased by {}; another worker took it over",
                self.delivery_id, self.owner
            )),
            Err(e) => {
                // Reopen next time: the connection may be what failed.
                *self.store = None;
                Err(error_chain(&e))
            }
        }
    }

    fn store(&mut self) -> Result<&Store, String> {
        Ok(match self.store {
            Some(store) => store,
            None => self
                .store
                .insert(Store::open(self.state_root).map_err(|e| error_chain(&e))?),
        })
    }
}

impl ProgressSink for StoreProgress<'_> {
    fn asset(
        &mut self,
        asset_id: &str,
    ) -> Result<Option<crate::store::assets::AssetBytes>, String> {
        let delivery_id = self.delivery_id.to_string();
        let store = self.store()?;
        match store.open_delivery_asset(&delivery_id, asset_id) {
            Ok(found) => Ok(found.map(|f| f.asset)),
            Err(e) => {
                *self.store = None;
                Err(error_chain(&e))
            }
        }
    }

    fn save(&mut self, progress: &serde_json::Value) -> Result<(), String> {
        self.settle_last_note()?;
        let (delivery_id, owner) = (self.delivery_id, self.owner);
        let saved = match self.writer {
            Some(writer) => writer.save_progress(delivery_id, owner, progress, now_ms()),
            None => self
                .store()?
                .save_progress(delivery_id, owner, progress, now_ms()),
        };
        self.saved(saved)
    }

    fn note(&mut self, progress: &serde_json::Value) -> Result<(), String> {
        match self.writer {
            Some(writer) => {
                self.settle_last_note()?;
                // Read at the next note or save, if any (see `settle_last_note`); the note of
                // an attempt's last step is not waited for (`ProgressSink::note`).
                self.last_note =
                    Some(writer.queue_progress(self.delivery_id, self.owner, progress, now_ms()));
                Ok(())
            }
            None => self.save(progress),
        }
    }
}

/// Runs one attempt: re-validates the target (SPEC §11.2: targets are checked again when
/// delivered), picks the plugin's transport and sends. Never panics: a panicking transport is
/// a retryable `transport_panic`.
fn attempt(
    state_root: &Path,
    progress_store: &mut Option<Store>,
    writer: Option<&GroupWriter>,
    owner: &str,
    claimed: &Claimed,
    transports: &Transports,
) -> AttemptOutcome {
    let job = &claimed.job;
    let target = &job.delivery.target;
    if let Err(why) = target.parsed() {
        return AttemptOutcome::Terminal {
            code: crate::store::deliveries::INVALID_TARGET_CODE.into(),
            reason: format!(
                "{} reply target is not valid: {why}",
                target.plugin.as_str()
            ),
            http_status: None,
        };
    }
    let Some(transport) = transports.get(target.plugin) else {
        return AttemptOutcome::Terminal {
            code: PLUGIN_UNAVAILABLE.into(),
            reason: format!(
                "no `{}` delivery transport in this kheishctl build",
                target.plugin.as_str()
            ),
            http_status: None,
        };
    };
    let mut sink = StoreProgress {
        state_root,
        store: progress_store,
        writer,
        delivery_id: &job.delivery.delivery_id,
        owner,
        last_note: None,
    };
    panic::catch_unwind(AssertUnwindSafe(|| transport.deliver(job, &mut sink))).unwrap_or_else(
        |_| AttemptOutcome::Retryable {
            code: TRANSPORT_PANIC.into(),
            reason: format!("the `{}` transport panicked", target.plugin.as_str()),
            http_status: None,
            retry_after: None,
        },
    )
}

/// Reports what writing a settlement did: a circuit that opened, a lease lost to another
/// worker, or a database error. True when the settlement was written.
fn report_settled(
    claimed: &Claimed,
    written: Result<SettleOutcome, StoreError>,
    observer: &dyn Observer,
    pacing: &TargetPacing,
) -> bool {
    let id = &claimed.job.delivery.delivery_id;
    let plugin = claimed.job.delivery.target.plugin.as_str();
    match written {
        Ok(SettleOutcome::Settled { circuit_opened, .. }) => {
            if circuit_opened {
                observer.warn(&format!(
                    "{plugin} target {} failed {} times in a row; paused for {} s",
                    short(&claimed.job.delivery.target_key),
                    pacing.circuit_threshold,
                    pacing.circuit_cooldown_ms / 1000
                ));
            }
            true
        }
        Ok(SettleOutcome::LeaseLost { current_owner, .. }) => {
            observer.warn(&format!(
                "delivery {id}: lease lost to {} before settling; its result was dropped",
                current_owner
                    .as_deref()
                    .unwrap_or("nobody (already settled)")
            ));
            false
        }
        Err(e) => {
            observer.warn(&format!(
                "delivery {id}: cannot record the attempt ({}); it is sent again when the lease expires",
                error_chain(&e)
            ));
            false
        }
    }
}

fn short(key: &str) -> &str {
    key.get(..12).unwrap_or(key)
}

/// One written settlement, sent from a draining dispatcher to the reporting thread.
pub(super) struct AttemptEvent {
    pub(super) delivery_id: String,
    pub(super) label: &'static str,
}

/// Test helpers shared with `drain`'s tests: a fake transport that reports every send, a fast
/// retry policy, and pool and drain configurations on a state root.
#[cfg(test)]
pub(super) mod test_support {
    use std::sync::Mutex;

    use super::*;
    use crate::delivery::DrainConfig;
    use crate::model::delivery::DeliveryJob;

    /// A transport that answers with `answer(job)` and reports every send on a channel.
    pub(crate) struct Fake {
        pub(crate) answer: Box<dyn Fn(&DeliveryJob) -> AttemptOutcome + Send + Sync>,
        pub(crate) sent: Mutex<mpsc::Sender<(String, String, u32)>>,
    }

    impl Transport for Fake {
        fn deliver(&self, job: &DeliveryJob, _progress: &mut dyn ProgressSink) -> AttemptOutcome {
            let sent = (
                job.delivery.delivery_id.clone(),
                job.content.clone().unwrap_or_default(),
                job.attempt,
            );
            let _ = self.sent.lock().unwrap().send(sent);
            (self.answer)(job)
        }
    }

    pub(crate) type Sends = mpsc::Receiver<(String, String, u32)>;

    pub(crate) fn fake(
        answer: impl Fn(&DeliveryJob) -> AttemptOutcome + Send + Sync + 'static,
    ) -> (Arc<Transports>, Sends) {
        let (tx, rx) = mpsc::channel();
        let transport = Fake {
            answer: Box::new(answer),
            sent: Mutex::new(tx),
        };
        (
            Arc::new(Transports::new().with(ReplyPlugin::Http, Arc::new(transport))),
            rx,
        )
    }

    pub(crate) fn ok(_: &DeliveryJob) -> AttemptOutcome {
        AttemptOutcome::Delivered {
            http_status: Some(200),
        }
    }

    /// Tiny delays so retries never make a test wait; three attempts.
    pub(crate) fn policy() -> RetryPolicy {
        RetryPolicy {
            initial_retry_ms: 1,
            max_retry_ms: 1,
            max_retry_after_ms: 3_600_000,
            max_attempts: 3,
            ..RetryPolicy::default()
        }
    }

    pub(crate) fn pool_cfg(
        root: &std::path::Path,
        workers: usize,
        transports: Arc<Transports>,
        notify: &Arc<Notify>,
    ) -> WorkerConfig {
        WorkerConfig {
            state_root: root.to_path_buf(),
            workers,
            owner_prefix: "test".into(),
            policy: policy(),
            transports,
            notify: Arc::clone(notify),
            filter: ClaimFilter::default(),
            lease: DEFAULT_LEASE,
            observer: Arc::new(NoObserver),
            writer: None,
        }
    }

    pub(crate) fn drain_cfg(root: &std::path::Path, transports: Arc<Transports>) -> DrainConfig {
        DrainConfig {
            state_root: root.to_path_buf(),
            concurrency: 4,
            policy: policy(),
            transports,
            filter: ClaimFilter::default(),
            timeout: None,
            lease: DEFAULT_LEASE,
            owner_prefix: "test-drain".into(),
            observer: Arc::new(NoObserver),
        }
    }

    pub(crate) fn address(job: &DeliveryJob) -> &str {
        &job.delivery.target.address
    }

    pub(crate) fn get(store: &Store, id: &str) -> crate::model::delivery::Delivery {
        store.get_delivery(id).unwrap().unwrap()
    }

    /// Receives `n` sends, failing after a generous deadline instead of hanging.
    pub(crate) fn receive(rx: &Sends, n: usize) -> Vec<(String, String, u32)> {
        (0..n)
            .map(|i| {
                rx.recv_timeout(Duration::from_secs(20))
                    .unwrap_or_else(|e| panic!("send {i} of {n} never came: {e}"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::test_support::*;
    use super::*;
    use crate::delivery::drain;
    use crate::model::delivery::DeliveryStatus;
    use crate::store::deliveries::fixture::*;

    #[test]
    fn a_refused_note_ends_the_attempt_at_the_next_step_boundary() {
        use crate::delivery::ProgressSink;
        use crate::store::deliveries::{ClaimFilter, TargetPacing};

        let (tmp, store) = store();
        let ids = queue(&store, "run_n", &[http("https://n.example/")], &["steps"]);
        let writer = GroupWriter::start(tmp.path(), Box::new(|_| {})).unwrap();
        let (_, claims) = writer
            .settle_and_claim(
                "w",
                &[],
                1,
                60_000,
                T0,
                &ClaimFilter::default(),
                &TargetPacing::default(),
            )
            .unwrap();
        assert_eq!(claims.len(), 1);
        let mut progress_store = None;
        let mut sink = StoreProgress {
            state_root: tmp.path(),
            store: &mut progress_store,
            writer: Some(&writer),
            delivery_id: &ids[0],
            owner: "w",
            last_note: None,
        };
        sink.note(&serde_json::json!({"steps_done": 1})).unwrap();
        sink.note(&serde_json::json!({"steps_done": 2})).unwrap();
        // The first note is known written once the second is queued; the second may or may
        // not be yet.
        let steps = |store: &Store| get(store, &ids[0]).progress.unwrap()["steps_done"].clone();
        assert!([1, 2].contains(&steps(&store).as_i64().unwrap()));
        sink.settle_last_note().unwrap();
        assert_eq!(steps(&store), 2);
        // Another worker takes the delivery over (its lease expired): the next note is refused,
        // and the sender learns it one step later, before a third step would be sent.
        store
            .conn()
            .execute(
                "UPDATE deliveries SET lease_owner = 'other' WHERE delivery_id = ?1",
                [&ids[0]],
            )
            .unwrap();
        sink.note(&serde_json::json!({"steps_done": 3})).unwrap();
        let stopped = sink.note(&serde_json::json!({"steps_done": 4}));
        assert!(
            stopped
                .as_ref()
                .is_err_and(|e| e.contains("no longer leased")),
            "{stopped:?}"
        );
        assert_eq!(
            steps(&store),
            2,
            "nothing is written for an owner that lost the lease"
        );
    }

    #[test]
    fn shutdown_gives_back_claimed_deliveries_that_were_not_sent() {
        let (tmp, store) = store();
        let mut ids = queue(&store, "run_a", &[http("https://a.example/")], &["a"]);
        ids.extend(queue(
            &store,
            "run_b",
            &[http("https://b.example/")],
            &["b"],
        ));
        // One sender whose first send blocks until the test lets it go; the dispatcher has
        // claimed the second delivery for it meanwhile (prefetch).
        let (started_tx, started) = mpsc::channel::<String>();
        let (go, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let started_tx = Mutex::new(started_tx);
        let (transports, rx) = fake(move |job| {
            let _ = started_tx
                .lock()
                .unwrap()
                .send(job.delivery.delivery_id.clone());
            let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(20));
            ok(job)
        });
        let notify = Arc::new(Notify::new());
        let pool = WorkerPool::spawn(pool_cfg(tmp.path(), 1, transports, &notify));
        let first = started
            .recv_timeout(Duration::from_secs(20))
            .expect("the first send starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        let other = ids.iter().find(|id| **id != first).unwrap().clone();
        while get(&store, &other).lease_owner.is_none() {
            assert!(
                Instant::now() < deadline,
                "the second delivery is never claimed"
            );
            std::thread::yield_now();
        }
        let stop = Arc::clone(&pool.stop);
        let stopping = std::thread::spawn(move || pool.shutdown());
        while !stop.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "shutdown never starts");
            std::thread::yield_now();
        }
        go.send(()).unwrap();
        stopping.join().unwrap();

        assert_eq!(get(&store, &first).status, DeliveryStatus::Delivered);
        let unsent = get(&store, &other);
        assert_eq!(unsent.status, DeliveryStatus::Pending);
        assert_eq!((unsent.attempts, unsent.lease_owner), (0, None));
        assert_eq!(rx.try_iter().count(), 1, "the second delivery was not sent");
        let again = store
            .claim_next("next-daemon", 1_000, now_ms(), &ClaimFilter::default())
            .unwrap()
            .expect("released at once, not after its lease");
        assert_eq!(again.job.delivery.delivery_id, other);
    }

    #[test]
    fn a_panic_outside_the_transport_retries_the_delivery_and_shutdown_still_returns() {
        struct Panicking;
        impl Observer for Panicking {
            fn attempt(&self, _plugin: &str, _outcome: &str) {
                panic!("observer bug");
            }
        }
        let (tmp, store) = store();
        let ids = queue(&store, "run_p", &[http("https://p.example/")], &["p"]);
        let (transports, rx) = fake(ok);
        let notify = Arc::new(Notify::new());
        let mut cfg = pool_cfg(tmp.path(), 1, transports, &notify);
        cfg.observer = Arc::new(Panicking);
        cfg.policy = RetryPolicy {
            max_retry_ms: 60_000,
            ..policy()
        };
        let pool = WorkerPool::spawn(cfg);
        receive(&rx, 1);
        let deadline = Instant::now() + Duration::from_secs(20);
        let settled = loop {
            let d = get(&store, &ids[0]);
            if d.status == DeliveryStatus::Retrying {
                break d;
            }
            assert!(Instant::now() < deadline, "never settled: {d:?}");
            std::thread::yield_now();
        };
        assert_eq!(settled.last_error_code.as_deref(), Some(TRANSPORT_PANIC));
        assert!(
            settled.next_attempt_at_ms >= now_ms(),
            "not retried in a hot loop"
        );
        pool.shutdown();
        assert!(rx.try_recv().is_err(), "sent once");
    }

    #[test]
    fn a_pool_sends_queued_output_when_woken_and_shuts_down() {
        let (tmp, store) = store();
        let (transports, rx) = fake(ok);
        let notify = Arc::new(Notify::new());
        let pool = WorkerPool::spawn(pool_cfg(tmp.path(), 2, transports, &notify));
        let ids = queue(
            &store,
            "run_a",
            &[http("https://a.example/")],
            &["a1", "a2"],
        );
        notify.notify_all();
        let sends = receive(&rx, 2);
        assert_eq!(
            sends.iter().map(|s| s.1.as_str()).collect::<Vec<_>>(),
            ["a1", "a2"],
            "in order"
        );
        pool.shutdown();
        for id in &ids {
            assert_eq!(get(&store, id).status, DeliveryStatus::Delivered);
        }
        assert!(rx.try_recv().is_err(), "nothing sent twice");
    }

    #[test]
    fn two_pools_on_one_state_root_send_every_delivery_exactly_once() {
        let (tmp, store) = store();
        const TARGETS: usize = 12;
        const PER_TARGET: usize = 8;
        let mut ids = Vec::new();
        for t in 0..TARGETS {
            let texts: Vec<String> = (0..PER_TARGET).map(|n| format!("{t}-{n}")).collect();
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            ids.extend(queue(
                &store,
                &format!("run_{t}"),
                &[http(&format!("https://t{t}.example/"))],
                &texts,
            ));
        }
        let (tx, rx) = mpsc::channel();
        let pools: Vec<WorkerPool> = (0..2)
            .map(|p| {
                let transport = Fake {
                    answer: Box::new(ok),
                    sent: Mutex::new(tx.clone()),
                };
                WorkerPool::spawn(WorkerConfig {
                    state_root: tmp.path().to_path_buf(),
                    workers: 3,
                    owner_prefix: format!("pool{p}"),
                    policy: policy(),
                    transports: Arc::new(
                        Transports::new().with(ReplyPlugin::Http, Arc::new(transport)),
                    ),
                    // Separate notifiers, as two processes would have.
                    notify: Arc::new(Notify::new()),
                    filter: ClaimFilter::default(),
                    lease: DEFAULT_LEASE,
                    observer: Arc::new(NoObserver),
                    writer: None,
                })
            })
            .collect();
        let sends = receive(&rx, TARGETS * PER_TARGET);
        for pool in pools {
            pool.shutdown();
        }
        assert!(rx.try_recv().is_err(), "no extra sends");
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let mut order: HashMap<String, Vec<usize>> = HashMap::new();
        for (id, text, attempt) in &sends {
            *counts.entry(id.as_str()).or_default() += 1;
            assert_eq!(*attempt, 1);
            let (target, n) = text.split_once('-').unwrap();
            order
                .entry(target.to_string())
                .or_default()
                .push(n.parse().unwrap());
        }
        assert_eq!(counts.len(), ids.len());
        assert!(counts.values().all(|&n| n == 1), "{counts:?}");
        for (target, ns) in order {
            assert_eq!(
                ns,
                (0..PER_TARGET).collect::<Vec<_>>(),
                "target {target} in order"
            );
        }
        for id in &ids {
            assert_eq!(get(&store, id).status, DeliveryStatus::Delivered);
        }
    }

    #[test]
    fn a_panicking_transport_is_a_retryable_failure() {
        let (tmp, store) = store();
        let ids = queue(&store, "run_a", &[http("https://a.example/")], &["a1"]);
        let (transports, _rx) = fake(|_| panic!("transport bug"));
        let summary = drain(drain_cfg(tmp.path(), transports), &|_| {}).unwrap();
        assert_eq!(summary.dead_lettered + summary.retried, 1);
        let d = get(&store, &ids[0]);
        assert_eq!(d.last_error_code.as_deref(), Some(TRANSPORT_PANIC));
    }
}
