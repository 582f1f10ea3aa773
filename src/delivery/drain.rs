//! `drain-deliveries` (SPEC §1.3): runs a delivery pool in this process until nothing matching
//! the filter is claimable and nothing is in flight here or leased elsewhere, or until a
//! timeout, and counts what happened per delivery ([`DrainSummary`]).
//!
//! It reuses the dispatcher and senders of `pool` (one code path with `serve`); it must not
//! claim, send or settle on its own, and it never sends a delivery another process holds a
//! live lease on.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::policy::RetryPolicy;
use super::pool::{start_pool, AttemptEvent, Observer, Transports, Until, WorkerConfig};
use crate::model::now_ms;
use crate::notify::Notify;
use crate::owner;
use crate::store::claims::ReleasedClaims;
use crate::store::deliveries::ClaimFilter;
use crate::store::{Store, StoreError};

/// Everything [`drain`] needs.
#[derive(Clone)]
pub struct DrainConfig {
    pub state_root: PathBuf,
    /// Deliveries sent at the same time (at least 1).
    pub concurrency: usize,
    pub policy: RetryPolicy,
    pub transports: Arc<Transports>,
    /// Plugin/connector filters and `ignore_backoff`.
    pub filter: ClaimFilter,
    /// Stop claiming after this long; in-flight sends still finish.
    pub timeout: Option<Duration>,
    pub lease: Duration,
    pub owner_prefix: String,
    pub observer: Arc<dyn Observer>,
}

/// Running totals, reported after every attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainProgress {
    /// Attempts made so far.
    pub attempts: u64,
    /// Distinct deliveries whose latest attempt here delivered / was retried / dead-lettered.
    pub delivered: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    /// Open deliveries matching the filter when the drain started (a progress bar's length).
    pub open_at_start: u64,
}

/// What a drain did, per distinct delivery by its last attempt here, and what is left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DrainSummary {
    pub delivered: u64,
    /// Attempted and still open (retrying) at the end.
    pub retried: u64,
    pub dead_lettered: u64,
    /// Open deliveries due now (with `ignore_backoff`: every open one).
    pub remaining_due: u64,
    pub remaining_pending: u64,
    pub elapsed_ms: u64,
    /// The timeout passed with due deliveries left (`drain-deliveries` exits 3).
    #[serde(skip)]
    pub timed_out: bool,
}

/// Runs a pool like [`WorkerPool`](super::WorkerPool)'s with `cfg.concurrency` senders in this
/// process until the queue is drained (see `Until::Drained` in `pool`) or the timeout passes. A delivery leased by
/// another process (a running `serve`, a second drain) is never sent here while the lease
/// lasts; the drain waits for it and takes the target over only when the lease expires.
/// `progress` is called on the calling thread after every attempt.
pub fn drain(
    cfg: DrainConfig,
    progress: &dyn Fn(DrainProgress),
) -> Result<DrainSummary, StoreError> {
    let started = Instant::now();
    let deadline = cfg.timeout.map(|t| started + t);
    let store = Store::open(&cfg.state_root)?;
    let released = release_claims_of_gone_processes(&store)?;
    if !released.is_empty() {
        cfg.observer.warn(&released_message(&released));
    }
    let open_at_start = store.count_open(&cfg.filter, now_ms())?.pending;
    let (events_tx, events_rx) = mpsc::channel::<AttemptEvent>();
    let filter = cfg.filter.clone();
    let pool = Arc::new(WorkerConfig {
        state_root: cfg.state_root.clone(),
        workers: cfg.concurrency.max(1),
        owner_prefix: cfg.owner_prefix,
        policy: cfg.policy,
        transports: cfg.transports,
        // Rung by this pool's senders only; nothing else adds work to a drain.
        notify: Arc::new(Notify::new()),
        filter: cfg.filter,
        lease: cfg.lease,
        observer: cfg.observer,
        writer: None,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let threads = start_pool(
        pool,
        &stop,
        Until::Drained {
            deadline,
            events: events_tx,
        },
    );

    let mut last: HashMap<String, &'static str> = HashMap::new();
    let mut tally = DrainProgress {
        open_at_start,
        ..DrainProgress::default()
    };
    // Ends when the dispatcher has ended (it holds the only sender).
    // The tally counts each delivery by its LAST attempt: an event moves its delivery from the
    // bucket of its previous label to the new one (O(1) per event; recounting the map each
    // time made a 200 000-delivery drain quadratic).
    for event in events_rx {
        tally.attempts += 1;
        if let Some(previous) = last.insert(event.delivery_id, event.label) {
            *bucket(&mut tally, previous) -= 1;
        }
        *bucket(&mut tally, event.label) += 1;
        progress(tally);
    }
    let results: Vec<Result<(), StoreError>> = threads
        .into_iter()
        .map(|t| {
            t.thread
                .join()
                .unwrap_or_else(|_| panic!("a delivery thread panicked (a bug in kheishctl)"))
        })
        .collect();
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    let remaining = store.count_open(&filter, now_ms())?;
    Ok(DrainSummary {
        delivered: tally.delivered,
        retried: tally.retried,
        dead_lettered: tally.dead_lettered,
        remaining_due: remaining.due,
        remaining_pending: remaining.pending,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        timed_out: deadline.is_some_and(|d| Instant::now() >= d) && remaining.due > 0,
    })
}

/// Releases at once the run claims and delivery leases whose owner is a process of this host
/// that no longer exists (`owner::is_gone`), so a crashed daemon's or drain's targets move again
/// now instead of after their lease. `serve` and `drain-deliveries` call it when they start.
pub fn release_claims_of_gone_processes(store: &Store) -> Result<ReleasedClaims, StoreError> {
    store.release_claims_of(&owner::is_gone, now_ms())
}

/// The log line for claims released by [`release_claims_of_gone_processes`].
pub fn released_message(released: &ReleasedClaims) -> String {
    let pids: Vec<String> = released
        .owners
        .iter()
        .filter_map(|o| owner::ProcessOwner::parse(o))
        .map(|o| format!("{} (pid {})", o.role, o.pid))
        .collect();
    format!(
        "released {} run claim(s) and {} delivery lease(s) held by process(es) of this host that \
         are gone: {}; their runs and deliveries go on now (a delivery in flight at the crash is \
         sent again with the same Idempotency-Key)",
        released.runs,
        released.deliveries,
        pids.join(", ")
    )
}

/// The counter of the tally a label belongs to (`delivered`, `retryable`, or a dead letter).
fn bucket<'t>(tally: &'t mut DrainProgress, label: &str) -> &'t mut u64 {
    match label {
        "delivered" => &mut tally.delivered,
        "retryable" => &mut tally.retried,
        _ => &mut tally.dead_lettered,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::delivery::pool::test_support::*;
    use crate::delivery::pool::PLUGIN_UNAVAILABLE;
    use crate::delivery::AttemptOutcome;
    use crate::model::delivery::DeliveryStatus;
    use crate::model::reply::{ReplyPlugin, ReplyTarget};
    use crate::store::deliveries::fixture::*;
    use crate::store::deliveries::DeliveryFilter;

    #[test]
    fn two_concurrent_drains_send_every_delivery_exactly_once() {
        let (tmp, store) = store();
        let mut ids = Vec::new();
        for t in 0..10 {
            ids.extend(queue(
                &store,
                &format!("run_{t}"),
                &[http(&format!("https://t{t}.example/"))],
                &["x", "y", "z"],
            ));
        }
        let (transports, rx) = fake(ok);
        let summaries: Vec<DrainSummary> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let cfg = drain_cfg(tmp.path(), Arc::clone(&transports));
                    scope.spawn(move || drain(cfg, &|_| {}).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        drop(transports);
        let sends: Vec<_> = rx.iter().collect();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for (id, _, _) in sends {
            *counts.entry(id).or_default() += 1;
        }
        assert_eq!(counts.len(), ids.len());
        assert!(counts.values().all(|&n| n == 1), "{counts:?}");
        let delivered: u64 = summaries.iter().map(|s| s.delivered).sum();
        assert_eq!(delivered, ids.len() as u64);
        assert!(summaries
            .iter()
            .all(|s| s.remaining_pending == 0 && s.dead_lettered == 0));
    }

    #[test]
    fn a_drain_waits_for_a_lease_held_elsewhere_instead_of_ending_with_work_in_flight() {
        let (tmp, store) = store();
        let ids = queue(
            &store,
            "run_l",
            &[http("https://leased.example/")],
            &["l1", "l2"],
        );
        // Another process claimed the head and then went quiet: its short lease must run out
        // before the drain may take the target over.
        let foreign = store
            .claim_next("other-process", 300, now_ms(), &ClaimFilter::default())
            .unwrap()
            .expect("the head is claimable");
        assert!(store
            .leased_elsewhere(&ClaimFilter::default(), now_ms())
            .unwrap());
        let (transports, rx) = fake(ok);
        let summary = drain(drain_cfg(tmp.path(), transports), &|_| {}).unwrap();
        assert_eq!(summary.delivered, 2, "{summary:?}");
        assert_eq!(summary.remaining_pending, 0);
        let sent: Vec<String> = rx.try_iter().map(|s| s.0).collect();
        assert_eq!(
            sent, ids,
            "the expired head is sent first, then the rest, once each"
        );
        assert_eq!(foreign.job.delivery.delivery_id, ids[0]);
        assert!(!store
            .leased_elsewhere(&ClaimFilter::default(), now_ms())
            .unwrap());
    }

    #[test]
    fn drain_sorts_outcomes_and_dead_letters_what_cannot_go() {
        let (tmp, store) = store();
        let ok_ids = queue(
            &store,
            "run_ok",
            &[http("https://ok.example/")],
            &["1", "2", "3"],
        );
        let terminal = queue(
            &store,
            "run_t",
            &[http("https://terminal.example/")],
            &["t"],
        );
        let flaky = queue(&store, "run_f", &[http("https://flaky.example/")], &["f"]);
        let slack = ReplyTarget::new(
            ReplyPlugin::Slack,
            r#"{"connector":"team","channel_id":"C1"}"#,
        )
        .unwrap()
        .0;
        let unavailable = queue(&store, "run_s", &[slack], &["s"]);
        let (transports, rx) = fake(|job| match address(job) {
            "https://terminal.example/" => AttemptOutcome::Terminal {
                code: "http_status_404".into(),
                reason: "target answered 404".into(),
                http_status: Some(404),
            },
            "https://flaky.example/" => AttemptOutcome::Retryable {
                code: "http_status_503".into(),
                reason: "target answered 503".into(),
                http_status: Some(503),
                retry_after: None,
            },
            _ => ok(job),
        });
        let mut cfg = drain_cfg(tmp.path(), transports);
        cfg.filter.ignore_backoff = true;
        let seen = Mutex::new(Vec::new());
        let summary = drain(cfg, &|p| seen.lock().unwrap().push(p)).unwrap();
        assert_eq!(
            (summary.delivered, summary.retried, summary.dead_lettered),
            (3, 0, 3)
        );
        assert_eq!((summary.remaining_due, summary.remaining_pending), (0, 0));
        assert!(!summary.timed_out);
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), 3 + 1 + 3 + 1, "one report per attempt");
        assert_eq!(seen[0].open_at_start, 6);

        for id in &ok_ids {
            assert_eq!(get(&store, id).status, DeliveryStatus::Delivered);
        }
        let t = get(&store, &terminal[0]);
        assert_eq!((t.status, t.attempts), (DeliveryStatus::DeadLettered, 1));
        assert_eq!(t.last_error_code.as_deref(), Some("http_status_404"));
        let f = get(&store, &flaky[0]);
        assert_eq!(
            (f.status, f.attempts),
            (DeliveryStatus::DeadLettered, 3),
            "the last attempt"
        );
        let s = get(&store, &unavailable[0]);
        assert_eq!(s.status, DeliveryStatus::DeadLettered);
        assert_eq!(s.last_error_code.as_deref(), Some(PLUGIN_UNAVAILABLE));
        assert!(s.last_error.unwrap().contains("slack"));
        let attempts: Vec<u32> = rx
            .try_iter()
            .filter(|(id, _, _)| id == &flaky[0])
            .map(|(_, _, a)| a)
            .collect();
        assert_eq!(attempts, [1, 2, 3]);
    }

    #[test]
    fn drain_honours_retry_after_and_keeps_the_target_in_order() {
        let (tmp, store) = store();
        let slow = queue(
            &store,
            "run_a",
            &[http("https://slow.example/")],
            &["a1", "a2"],
        );
        let fine = queue(
            &store,
            "run_b",
            &[http("https://fine.example/")],
            &["b1", "b2"],
        );
        let (transports, rx) = fake(|job| match address(job) {
            "https://slow.example/" => AttemptOutcome::Retryable {
                code: "http_status_429".into(),
                reason: "target answered 429".into(),
                http_status: Some(429),
                retry_after: Some(Duration::from_secs(30)),
            },
            _ => ok(job),
        });
        let before = now_ms();
        let summary = drain(drain_cfg(tmp.path(), transports), &|_| {}).unwrap();
        let after = now_ms();
        assert_eq!(
            (summary.delivered, summary.retried, summary.dead_lettered),
            (2, 1, 0)
        );
        assert_eq!((summary.remaining_due, summary.remaining_pending), (0, 2));
        let a1 = get(&store, &slow[0]);
        assert_eq!((a1.status, a1.attempts), (DeliveryStatus::Retrying, 1));
        assert!(
            (before + 30_000..=after + 30_000).contains(&a1.next_attempt_at_ms),
            "Retry-After honoured: {} not in {}..={}",
            a1.next_attempt_at_ms,
            before + 30_000,
            after + 30_000
        );
        assert_eq!(get(&store, &slow[1]).status, DeliveryStatus::Pending);
        for id in &fine {
            assert_eq!(get(&store, id).status, DeliveryStatus::Delivered);
        }
        let texts: Vec<String> = rx.try_iter().map(|(_, text, _)| text).collect();
        assert!(
            !texts.contains(&"a2".to_string()),
            "a2 waits behind a1: {texts:?}"
        );
    }

    #[test]
    fn drain_stops_at_its_timeout_with_due_work_left() {
        let (tmp, store) = store();
        queue(&store, "run_a", &[http("https://a.example/")], &["a1"]);
        let (transports, rx) = fake(ok);
        let mut cfg = drain_cfg(tmp.path(), transports);
        cfg.timeout = Some(Duration::ZERO);
        let summary = drain(cfg, &|_| {}).unwrap();
        assert!(summary.timed_out);
        assert_eq!((summary.remaining_due, summary.remaining_pending), (1, 1));
        assert!(rx.try_recv().is_err(), "nothing sent after the deadline");
        assert_eq!(
            store
                .list_deliveries(&DeliveryFilter::default())
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn drain_filters_by_plugin_and_connector() {
        let (tmp, store) = store();
        queue(&store, "run_a", &[http("https://a.example/")], &["a1"]);
        let (transports, rx) = fake(ok);
        let mut cfg = drain_cfg(tmp.path(), transports);
        cfg.filter.plugin = Some("slack".into());
        let summary = drain(cfg.clone(), &|_| {}).unwrap();
        assert_eq!((summary.delivered, summary.remaining_pending), (0, 0));
        cfg.filter.plugin = None;
        cfg.filter.connector = Some((crate::model::ConnectorKind::Http, "orders".into()));
        let summary = drain(cfg, &|_| {}).unwrap();
        assert_eq!(summary.delivered, 1);
        assert_eq!(receive(&rx, 1)[0].1, "a1");
    }
}
