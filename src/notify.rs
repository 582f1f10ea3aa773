//! A generation counter with a condition variable: writers bump it when something became
//! available (a run was queued), waiters block until it moves past what they saw or a deadline
//! passes. This is how background loops wait for "next due or woken" without polling. Async
//! waiters (claim long-polls on the listener's runtime) use [`Notify::wait_past_async`], which
//! parks no thread.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// See the module docs.
#[derive(Debug, Default)]
pub struct Notify {
    generation: Mutex<u64>,
    cv: Condvar,
    /// Wakes the async waiters; bumped together with the condvar.
    waiters: tokio::sync::Notify,
}

impl Notify {
    pub fn new() -> Notify {
        Notify::default()
    }

    /// The current generation; pass it to [`Notify::wait_past`].
    pub fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bumps the generation and wakes every waiter.
    pub fn notify_all(&self) {
        let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        *g = g.wrapping_add(1);
        self.cv.notify_all();
        drop(g);
        self.waiters.notify_waiters();
    }

    /// Blocks until the generation differs from `seen` or `timeout` passes; returns the
    /// generation observed last.
    pub fn wait_past(&self, seen: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        while *g == seen {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *g
    }

    /// [`Notify::wait_past`] for async code: resolves when the generation differs from `seen`
    /// or `timeout` passes, without holding a thread; returns the generation observed last.
    pub async fn wait_past_async(&self, seen: u64, timeout: Duration) -> u64 {
        let notified = self.waiters.notified();
        tokio::pin!(notified);
        // Registered before the generation is read, so a bump in between still wakes us.
        notified.as_mut().enable();
        let g = self.generation();
        if g != seen {
            return g;
        }
        let _ = tokio::time::timeout(timeout, notified).await;
        self.generation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn wait_returns_on_notify() {
        let n = Arc::new(Notify::new());
        let seen = n.generation();
        let n2 = Arc::clone(&n);
        let t = std::thread::spawn(move || n2.wait_past(seen, Duration::from_secs(30)));
        n.notify_all();
        assert_ne!(t.join().unwrap(), seen);
    }

    #[test]
    fn async_wait_returns_on_notify_and_times_out() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let n = Arc::new(Notify::new());
        let seen = n.generation();
        assert_eq!(
            rt.block_on(n.wait_past_async(seen, Duration::from_millis(1))),
            seen
        );
        let n2 = Arc::clone(&n);
        let t = std::thread::spawn(move || n2.notify_all());
        let g = rt.block_on(n.wait_past_async(seen, Duration::from_secs(30)));
        t.join().unwrap();
        assert_ne!(g, seen);
    }

    #[test]
    fn wait_times_out() {
        let n = Notify::new();
        let seen = n.generation();
        assert_eq!(n.wait_past(seen, Duration::from_millis(1)), seen);
    }
}
