//! Per-connector token buckets (SPEC §6.6): capacity = rate, starts full, refills continuously.
//! In memory; a restart starts every bucket full again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    rate: f64,
    last: Instant,
}

/// All buckets of one daemon, keyed by a scope string (`http/orders`).
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new() -> RateLimiter {
        RateLimiter::default()
    }

    /// Takes one token from `scope`'s bucket (rate and capacity `per_second`). `Err` carries
    /// the milliseconds until a token is available (at least 1).
    pub fn try_take(&self, scope: &str, per_second: u32, now: Instant) -> Result<(), u64> {
        let rate = f64::from(per_second.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(scope.to_string()).or_insert(Bucket {
            tokens: rate,
            rate,
            last: now,
        });
        if bucket.rate != rate {
            // The connector's rate changed on reload: keep the fill level, clamp to capacity.
            bucket.rate = rate;
            bucket.tokens = bucket.tokens.min(rate);
        }
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.last = bucket.last.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = ((1.0 - bucket.tokens) / rate * 1000.0).ceil() as u64;
            Err(wait_ms.max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn starts_full_then_refills() {
        let rl = RateLimiter::new();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.try_take("http/a", 3, t0).is_ok());
        }
        let wait = rl.try_take("http/a", 3, t0).unwrap_err();
        assert!((1..=334).contains(&wait), "{wait}");
        assert!(rl
            .try_take("http/a", 3, t0 + Duration::from_millis(340))
            .is_ok());
        // Other scopes are independent.
        assert!(rl.try_take("http/b", 3, t0).is_ok());
    }

    #[test]
    fn capacity_is_the_rate() {
        let rl = RateLimiter::new();
        let t0 = Instant::now();
        assert!(rl.try_take("s", 2, t0).is_ok());
        // A long idle period does not bank more than the capacity.
        let later = t0 + Duration::from_secs(60);
        assert!(rl.try_take("s", 2, later).is_ok());
        assert!(rl.try_take("s", 2, later).is_ok());
        assert!(rl.try_take("s", 2, later).is_err());
    }
}
