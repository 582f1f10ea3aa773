//! Delivery retention inside `serve` (SPEC §3): delivered records are kept 7 days, dead letters
//! until resolved (or redelivered by a replay) plus 30 days; an unresolved dead letter is never
//! pruned. The rules and the SQL live in `store::deliveries`; this module owns the timer.
//!
//! One background thread with an explicit shutdown handshake: it prunes once at start, then
//! blocks on its stop channel for [`INTERVAL`] (a timer wait, not polling). Each prune batch is
//! its own short transaction, and a stop request is honoured between batches.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::pool::Observer;
use crate::model::now_ms;
use crate::store::deliveries::{
    DeliveryPruneReport, DEAD_LETTER_RETENTION_MS, DELIVERED_RETENTION_MS, PRUNE_BATCH,
};
use crate::store::{Store, StoreError};

/// Time between two prunes. Retention is measured in days, so an hour late is harmless.
pub const INTERVAL: Duration = Duration::from_secs(3600);

/// Prunes what SPEC §3 lets go at `now_ms`, in batches, until nothing more is due.
pub fn prune_expired(store: &Store, now_ms: i64) -> Result<DeliveryPruneReport, StoreError> {
    store.prune_deliveries(
        now_ms.saturating_sub(DELIVERED_RETENTION_MS),
        now_ms.saturating_sub(DEAD_LETTER_RETENTION_MS),
    )
}

/// Handle of the delivery-retention thread; [`DeliveryRetention::shutdown`] stops and joins it.
#[derive(Debug)]
pub struct DeliveryRetention {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl DeliveryRetention {
    /// Starts the thread; problems (a locked or unreadable database) go to `observer.warn` and
    /// the next round tries again.
    pub fn spawn(state_root: PathBuf, observer: Arc<dyn Observer>) -> DeliveryRetention {
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("delivery-retention".into())
            .spawn(move || run(&state_root, &*observer, &stopped))
            .expect("spawning the delivery-retention thread (the OS refused a thread)");
        DeliveryRetention { stop, thread }
    }

    /// Asks the thread to stop (it finishes at most the current batch) and joins it.
    pub fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn run(state_root: &std::path::Path, observer: &dyn Observer, stopped: &Receiver<()>) {
    loop {
        match prune_round(state_root, stopped) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => observer.warn(&format!("delivery retention: {e}; retrying later")),
        }
        match stopped.recv_timeout(INTERVAL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One round of batches; `Ok(true)` when a stop request arrived in between.
fn prune_round(state_root: &std::path::Path, stopped: &Receiver<()>) -> Result<bool, StoreError> {
    let store = Store::open(state_root)?;
    let now = now_ms();
    loop {
        let batch = store.prune_deliveries_batch(
            now.saturating_sub(DELIVERED_RETENTION_MS),
            now.saturating_sub(DEAD_LETTER_RETENTION_MS),
            PRUNE_BATCH,
        )?;
        if batch.delivered + batch.dead_letters == 0 {
            return Ok(false);
        }
        match stopped.try_recv() {
            Err(TryRecvError::Empty) => {}
            Ok(()) | Err(TryRecvError::Disconnected) => return Ok(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::pool::NoObserver;

    #[test]
    fn starts_and_stops_promptly() {
        let tmp = tempfile::tempdir().unwrap();
        Store::open(tmp.path()).unwrap();
        let retention = DeliveryRetention::spawn(tmp.path().to_path_buf(), Arc::new(NoObserver));
        retention.shutdown();
    }
}
