//! Receipt retention inside `serve` (SPEC §3): submitted receipts older than
//! `--receipt-retention` are deleted, and each connector keeps at most
//! `--receipt-max-per-connector` receipts (oldest pruned first).
//!
//! One background thread with an explicit shutdown handshake (mini-redis's purge task): it prunes
//! once at start, then blocks on its shutdown channel with a timeout that ends when the oldest
//! receipt expires — but never longer than [`MAX_INTERVAL`], so the per-connector cap is enforced
//! even when nothing expires. It is a timer wait, not a polling loop. The thread opens its own
//! [`Store`]; pruning runs in short batches (`store::receipts`), so ingress never waits long
//! behind it, and shutdown interrupts a long prune between batches.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::model::now_ms;
use crate::output::Printer;
use crate::store::receipts::{PruneReport, PRUNE_BATCH};
use crate::store::{Store, StoreError};

/// The longest wait between two prunes: the per-connector cap has no due time of its own.
pub const MAX_INTERVAL: Duration = Duration::from_secs(600);

/// The shortest wait between two prunes, so a receipt right at the boundary (or a clock step)
/// cannot make the loop spin.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How long to wait after a failed prune (state database locked, disk trouble) before retrying.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(30);

/// Handle of the retention thread; [`Retention::shutdown`] stops and joins it.
#[derive(Debug)]
pub struct Retention {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl Retention {
    /// Starts the retention thread for the state root. `max_per_connector = 0` keeps no receipt.
    pub fn spawn(
        state_root: PathBuf,
        retention: Duration,
        max_per_connector: u64,
        out: Printer,
    ) -> Retention {
        let (stop, stopped) = mpsc::channel();
        let task = Task {
            state_root,
            retention_ms: i64::try_from(retention.as_millis()).unwrap_or(i64::MAX),
            retention,
            max_per_connector,
            out,
            stopped,
        };
        let thread = std::thread::Builder::new()
            .name("receipt-retention".into())
            .spawn(move || task.run())
            .expect("spawning the receipt-retention thread (the OS refused a thread)");
        Retention { stop, thread }
    }

    /// Asks the thread to stop (it finishes at most the current prune batch) and joins it.
    pub fn shutdown(self) {
        // A send error means the thread already ended (it only ends on a stop signal or a
        // panic); joining tells which.
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            // The panic message was already printed by the default hook.
        }
    }
}

/// What the thread owns.
struct Task {
    state_root: PathBuf,
    retention: Duration,
    /// `retention` in ms, saturated.
    retention_ms: i64,
    max_per_connector: u64,
    out: Printer,
    stopped: Receiver<()>,
}

impl Task {
    fn run(self) {
        let mut store: Option<Store> = None;
        let mut stopping = false;
        loop {
            let wait = match self.prune(&mut store, &mut stopping) {
                Ok(oldest_ms) => next_wait(now_ms(), oldest_ms, self.retention_ms),
                Err(e) => {
                    self.out.warn(&format!(
                        "receipt retention: {}; retrying in {}s",
                        error_chain(&e),
                        RETRY_AFTER_ERROR.as_secs()
                    ));
                    // Reopen next time: the connection may be what failed.
                    store = None;
                    RETRY_AFTER_ERROR
                }
            };
            if stopping {
                return;
            }
            match self.stopped.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// One prune; returns the oldest remaining receipt's time for the next due time.
    fn prune(
        &self,
        store: &mut Option<Store>,
        stopping: &mut bool,
    ) -> Result<Option<i64>, StoreError> {
        let store = match store {
            Some(store) => store,
            None => store.insert(Store::open(&self.state_root)?),
        };
        let older_than_ms = now_ms().saturating_sub(self.retention_ms);
        let report = store.prune_receipts_with(
            older_than_ms,
            self.max_per_connector,
            PRUNE_BATCH,
            &mut || {
                // A stop request (or a dropped handle) ends the prune between batches.
                if !*stopping {
                    *stopping = !matches!(self.stopped.try_recv(), Err(TryRecvError::Empty));
                }
                !*stopping
            },
        )?;
        if report.total() > 0 {
            self.out
                .info(&describe(&report, self.retention, self.max_per_connector));
        }
        store.oldest_receipt_ms()
    }
}

/// The info line for a prune that deleted something.
fn describe(report: &PruneReport, retention: Duration, max_per_connector: u64) -> String {
    let mut msg = format!(
        "receipt retention: pruned {} receipt{} ({} older than {}, {} over the per-connector cap of {max_per_connector})",
        report.total(),
        if report.total() == 1 { "" } else { "s" },
        report.expired,
        humantime::format_duration(retention),
        report.over_cap,
    );
    if !report.complete {
        msg.push_str("; stopped early for shutdown");
    }
    msg
}

/// How long to wait before the next prune: until the oldest receipt expires
/// (`oldest + retention`, plus 1 ms because pruning deletes strictly older receipts), clamped to
/// [`MIN_INTERVAL`, `MAX_INTERVAL`]; `MAX_INTERVAL` when there is no receipt. Pure, so the
/// schedule is tested without a clock.
pub fn next_wait(now_ms: i64, oldest_ms: Option<i64>, retention_ms: i64) -> Duration {
    let Some(oldest_ms) = oldest_ms else {
        return MAX_INTERVAL;
    };
    let due_ms = oldest_ms.saturating_add(retention_ms).saturating_add(1);
    let wait_ms = u64::try_from(due_ms.saturating_sub(now_ms)).unwrap_or(0);
    Duration::from_millis(wait_ms).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

fn error_chain(err: &StoreError) -> String {
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        chain.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;

    fn check(now: i64, oldest: Option<i64>, retention: i64, expected: Duration) {
        assert_eq!(
            next_wait(now, oldest, retention),
            expected,
            "now {now}, oldest {oldest:?}, retention {retention}"
        );
    }

    #[test]
    fn due_time_schedule() {
        let now = 1_700_000_000_000;
        // Nothing stored: only the cap matters.
        check(now, None, 7 * DAY_MS, MAX_INTERVAL);
        // The oldest receipt expires in 2 minutes (+1 ms for the strict comparison).
        check(
            now,
            Some(now - 7 * DAY_MS + 120_000),
            7 * DAY_MS,
            Duration::from_millis(120_001),
        );
        // Far in the future: capped.
        check(now, Some(now), 7 * DAY_MS, MAX_INTERVAL);
        // Already due (a receipt at the boundary, or a clock step): the floor, never a spin.
        check(now, Some(now - 8 * DAY_MS), 7 * DAY_MS, MIN_INTERVAL);
        check(now, Some(now - 1000), 1000, MIN_INTERVAL);
        // Huge retention and odd clocks saturate instead of overflowing.
        check(now, Some(now), i64::MAX, MAX_INTERVAL);
        check(i64::MIN, Some(i64::MAX), i64::MAX, MAX_INTERVAL);
        check(i64::MAX, Some(i64::MIN), 0, MIN_INTERVAL);
    }

    #[test]
    fn describes_what_was_pruned() {
        let report = PruneReport {
            expired: 3,
            over_cap: 1,
            complete: true,
        };
        assert_eq!(
            describe(&report, Duration::from_secs(7 * 86_400), 100_000),
            "receipt retention: pruned 4 receipts (3 older than 7days, 1 over the per-connector cap of 100000)"
        );
    }

    fn task(root: &std::path::Path, retention_ms: i64, max: u64) -> (Sender<()>, Task) {
        let (stop, stopped) = mpsc::channel();
        let task = Task {
            state_root: root.to_path_buf(),
            retention: Duration::from_millis(retention_ms as u64),
            retention_ms,
            max_per_connector: max,
            out: Printer::plain(false),
            stopped,
        };
        (stop, task)
    }

    #[test]
    fn one_prune_deletes_expired_and_over_cap_and_reports_the_oldest_left() {
        use crate::store::receipts::test_support::insert_receipt;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let now = now_ms();
        insert_receipt(&store, "http", "orders", "old", now - 2 * DAY_MS);
        insert_receipt(&store, "http", "orders", "a", now - 3000);
        insert_receipt(&store, "http", "orders", "b", now - 2000);
        insert_receipt(&store, "http", "orders", "c", now - 1000);

        let (_stop, task) = task(tmp.path(), DAY_MS, 2);
        let (mut conn, mut stopping) = (None, false);
        let oldest = task.prune(&mut conn, &mut stopping).unwrap();
        assert_eq!(oldest, Some(now - 2000));
        assert!(!stopping);
        assert_eq!(store.oldest_receipt_ms().unwrap(), Some(now - 2000));
    }

    #[test]
    fn a_stop_request_interrupts_a_prune() {
        use crate::store::receipts::test_support::insert_receipt;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        insert_receipt(&store, "http", "orders", "old", 5);
        let (stop, task) = task(tmp.path(), DAY_MS, 10);
        stop.send(()).unwrap();
        let (mut conn, mut stopping) = (None, false);
        task.prune(&mut conn, &mut stopping).unwrap();
        assert!(stopping);
        assert_eq!(store.oldest_receipt_ms().unwrap(), Some(5));
    }

    #[test]
    fn shutdown_returns_promptly() {
        let tmp = tempfile::tempdir().unwrap();
        let retention = Retention::spawn(
            tmp.path().to_path_buf(),
            Duration::from_secs(3600),
            10,
            Printer::plain(false),
        );
        // Whatever the thread is doing (pruning an empty store, or waiting up to 10 minutes),
        // shutdown returns at once: the wait is on the channel, not a sleep.
        let started = std::time::Instant::now();
        retention.shutdown();
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
