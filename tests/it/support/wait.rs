//! Polling with a deadline: the only place tests may pause, and only between probes.

use std::time::{Duration, Instant};

/// Polls `probe` until it returns `Some`, or panics after `deadline` naming what was awaited and
/// the last observation. The pause between probes grows from 5 ms to 100 ms.
#[allow(dead_code)]
pub fn wait_until<T>(
    what: &str,
    deadline: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) => {
                if start.elapsed() > deadline {
                    panic!(
                        "timed out after {deadline:?} waiting for {what}; last observation: {last}"
                    );
                }
            }
        }
        #[allow(clippy::disallowed_methods)] // the one sanctioned pause: between polls
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
