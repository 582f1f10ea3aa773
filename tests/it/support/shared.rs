//! The state a fake server's threads share with the test, and the condition variable rung when
//! it changes (the fake Slack, the fake Telegram and the webhook receiver).

use std::sync::{Condvar, Mutex, MutexGuard};

pub struct Shared<S> {
    pub state: Mutex<S>,
    pub changed: Condvar,
}

impl<S> Shared<S> {
    pub fn new(state: S) -> Shared<S> {
        Shared {
            state: Mutex::new(state),
            changed: Condvar::new(),
        }
    }

    /// The state, also after a thread panicked while holding it.
    pub fn lock(&self) -> MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
