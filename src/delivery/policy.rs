//! The retry policy (SPEC §11.3), pure: the delay after a failed attempt, the Retry-After
//! clamp, and the dead-letter decision. No clock, no I/O; table-tested.

use std::time::Duration;

use crate::config::knobs::{self, Refused};
use crate::store::deliveries::TargetPacing;

/// Retry knobs, from the `KHEISH_DELIVERY_*` environment variables or their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// `KHEISH_DELIVERY_INITIAL_RETRY_MS` (default 1000).
    pub initial_retry_ms: u64,
    /// `KHEISH_DELIVERY_MAX_RETRY_MS` (default 60000).
    pub max_retry_ms: u64,
    /// `KHEISH_DELIVERY_MAX_RETRY_AFTER_MS` (default 3600000): cap on a target's Retry-After.
    pub max_retry_after_ms: u64,
    /// `KHEISH_DELIVERY_MAX_ATTEMPTS` (default 8): the last attempt dead-letters on failure.
    pub max_attempts: u32,
    /// `KHEISH_DELIVERY_CIRCUIT_FAILURE_THRESHOLD` (default 3): retryable failures in a row
    /// that pause a target; 0 disables the circuit breaker.
    pub circuit_failure_threshold: u32,
    /// `KHEISH_DELIVERY_CIRCUIT_COOLDOWN_MS` (default 60000): how long a paused target waits.
    pub circuit_cooldown_ms: u64,
    /// `KHEISH_DELIVERY_TARGET_MIN_INTERVAL_MS` (default 0): the least time between two sends to
    /// one target.
    pub target_min_interval_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            initial_retry_ms: 1000,
            max_retry_ms: 60_000,
            max_retry_after_ms: 3_600_000,
            max_attempts: 8,
            circuit_failure_threshold: 3,
            circuit_cooldown_ms: 60_000,
            target_min_interval_ms: 0,
        }
    }
}

/// An invalid `KHEISH_DELIVERY_*` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}=`{value}` is invalid: {problem}")]
pub struct PolicyError {
    pub var: &'static str,
    pub value: String,
    pub problem: String,
}

impl RetryPolicy {
    /// Reads the seven variables through `env`; unset or empty means the default.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<RetryPolicy, PolicyError> {
        let d = RetryPolicy::default();
        let read =
            |var: &'static str, default: u64, min: u64, max: u64| -> Result<u64, PolicyError> {
                match knobs::number(env, var, min, max) {
                    Ok(n) => Ok(n.unwrap_or(default)),
                    Err(Refused::OutOfRange(value)) => Err(PolicyError {
                        var,
                        value,
                        problem: format!("must be between {min} and {max}"),
                    }),
                    Err(Refused::NotANumber(value)) => Err(PolicyError {
                        var,
                        value,
                        problem: "must be a whole number".into(),
                    }),
                }
            };
        let policy = RetryPolicy {
            initial_retry_ms: read(
                "KHEISH_DELIVERY_INITIAL_RETRY_MS",
                d.initial_retry_ms,
                1,
                86_400_000,
            )?,
            max_retry_ms: read(
                "KHEISH_DELIVERY_MAX_RETRY_MS",
                d.max_retry_ms,
                1,
                86_400_000,
            )?,
            max_retry_after_ms: read(
                "KHEISH_DELIVERY_MAX_RETRY_AFTER_MS",
                d.max_retry_after_ms,
                0,
                86_400_000,
            )?,
            max_attempts: read(
                "KHEISH_DELIVERY_MAX_ATTEMPTS",
                u64::from(d.max_attempts),
                1,
                1000,
            )? as u32,
            circuit_failure_threshold: read(
                "KHEISH_DELIVERY_CIRCUIT_FAILURE_THRESHOLD",
                u64::from(d.circuit_failure_threshold),
                0,
                1000,
            )? as u32,
            circuit_cooldown_ms: read(
                "KHEISH_DELIVERY_CIRCUIT_COOLDOWN_MS",
                d.circuit_cooldown_ms,
                1,
                86_400_000,
            )?,
            target_min_interval_ms: read(
                "KHEISH_DELIVERY_TARGET_MIN_INTERVAL_MS",
                d.target_min_interval_ms,
                0,
                3_600_000,
            )?,
        };
        if policy.max_retry_ms < policy.initial_retry_ms {
            return Err(PolicyError {
                var: "KHEISH_DELIVERY_MAX_RETRY_MS",
                value: policy.max_retry_ms.to_string(),
                problem: format!(
                    "must not be below KHEISH_DELIVERY_INITIAL_RETRY_MS ({})",
                    policy.initial_retry_ms
                ),
            });
        }
        Ok(policy)
    }

    /// How settling paces a target under this policy.
    pub fn pacing(&self) -> TargetPacing {
        TargetPacing {
            circuit_threshold: i64::from(self.circuit_failure_threshold),
            circuit_cooldown_ms: self.circuit_cooldown_ms as i64,
            min_interval_ms: self.target_min_interval_ms as i64,
        }
    }

    /// Delay after failed attempt `n` (1-based): `max(min(retry_after, max_retry_after),
    /// min(initial × 2^min(n−1, 6), max_retry))`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = attempt.saturating_sub(1).min(6);
        let backoff = self
            .initial_retry_ms
            .saturating_mul(1 << exp)
            .min(self.max_retry_ms);
        let hinted = retry_after
            .map(|d| (d.as_millis().min(u128::from(u64::MAX)) as u64).min(self.max_retry_after_ms))
            .unwrap_or(0);
        Duration::from_millis(backoff.max(hinted))
    }

    /// What happens after attempt `attempt` failed: retry at `now_ms + delay`, or dead-letter
    /// when the failure is terminal or this was the last attempt.
    pub fn after_failure(
        &self,
        attempt: u32,
        terminal: bool,
        retry_after: Option<Duration>,
        now_ms: i64,
    ) -> Next {
        if terminal || attempt >= self.max_attempts {
            Next::DeadLetter
        } else {
            Next::RetryAt(
                now_ms.saturating_add(self.delay(attempt, retry_after).as_millis() as i64),
            )
        }
    }
}

/// How long a delivery claim lasts: `KHEISH_DELIVERY_LEASE_MS`, else `default`. A crashed
/// worker's deliveries become claimable again after this long, so it must exceed the
/// transports' own time limits (15 s for http); 1 s to 1 h.
pub fn lease_from_env(
    env: &dyn Fn(&str) -> Option<String>,
    default: Duration,
) -> Result<Duration, PolicyError> {
    const VAR: &str = "KHEISH_DELIVERY_LEASE_MS";
    match knobs::number(env, VAR, 1000, 3_600_000) {
        Ok(ms) => Ok(ms.map_or(default, Duration::from_millis)),
        Err(Refused::OutOfRange(value)) => Err(PolicyError {
            var: VAR,
            value,
            problem: "must be between 1000 and 3600000".into(),
        }),
        Err(Refused::NotANumber(value)) => Err(PolicyError {
            var: VAR,
            value,
            problem: "must be a whole number of milliseconds".into(),
        }),
    }
}

/// The decision after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    RetryAt(i64),
    DeadLetter,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_table() {
        let p = RetryPolicy::default();
        let table = [
            (1, 1000),
            (2, 2000),
            (3, 4000),
            (4, 8000),
            (5, 16000),
            (6, 32000),
            (7, 60000),
            (8, 60000),
            (20, 60000),
        ];
        for (attempt, expected) in table {
            assert_eq!(p.delay(attempt, None), ms(expected), "attempt {attempt}");
        }
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, Some(ms(30_000))), ms(30_000));
        assert_eq!(
            p.delay(7, Some(ms(5_000))),
            ms(60_000),
            "backoff wins when larger"
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(10 * 3600))),
            ms(3_600_000),
            "capped at one hour"
        );
    }

    #[test]
    fn dead_letter_decision() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert_eq!(p.after_failure(1, false, None, 0), Next::RetryAt(1000));
        assert_eq!(p.after_failure(3, false, None, 0), Next::DeadLetter);
        assert_eq!(p.after_failure(1, true, None, 0), Next::DeadLetter);
    }

    #[test]
    fn lease_values() {
        let d = Duration::from_secs(30);
        assert_eq!(lease_from_env(&|_| None, d).unwrap(), d);
        assert_eq!(
            lease_from_env(&|_| Some("3000".into()), d).unwrap(),
            Duration::from_secs(3)
        );
        assert!(lease_from_env(&|_| Some("10".into()), d).is_err());
        assert!(lease_from_env(&|_| Some("soon".into()), d).is_err());
    }

    /// An environment holding exactly `pairs`.
    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn env_values() {
        assert_eq!(
            RetryPolicy::from_env(&env(&[])).unwrap(),
            RetryPolicy::default()
        );
        let p = RetryPolicy::from_env(&env(&[
            ("KHEISH_DELIVERY_INITIAL_RETRY_MS", "5"),
            ("KHEISH_DELIVERY_MAX_ATTEMPTS", "2"),
        ]))
        .unwrap();
        assert_eq!((p.initial_retry_ms, p.max_attempts), (5, 2));
        let e =
            RetryPolicy::from_env(&env(&[("KHEISH_DELIVERY_MAX_ATTEMPTS", "lots")])).unwrap_err();
        assert_eq!(e.var, "KHEISH_DELIVERY_MAX_ATTEMPTS");
        assert!(RetryPolicy::from_env(&env(&[("KHEISH_DELIVERY_MAX_ATTEMPTS", "0")])).is_err());
        assert!(RetryPolicy::from_env(&env(&[
            ("KHEISH_DELIVERY_INITIAL_RETRY_MS", "9000"),
            ("KHEISH_DELIVERY_MAX_RETRY_MS", "10")
        ]))
        .is_err());
    }

    #[test]
    fn pacing_knobs() {
        let d = RetryPolicy::default().pacing();
        assert_eq!(
            (
                d.circuit_threshold,
                d.circuit_cooldown_ms,
                d.min_interval_ms
            ),
            (3, 60_000, 0)
        );
        let p = RetryPolicy::from_env(&env(&[
            ("KHEISH_DELIVERY_CIRCUIT_FAILURE_THRESHOLD", "0"),
            ("KHEISH_DELIVERY_CIRCUIT_COOLDOWN_MS", "1500"),
            ("KHEISH_DELIVERY_TARGET_MIN_INTERVAL_MS", "250"),
        ]))
        .unwrap()
        .pacing();
        assert_eq!(
            (
                p.circuit_threshold,
                p.circuit_cooldown_ms,
                p.min_interval_ms
            ),
            (0, 1500, 250)
        );
        for (var, bad) in [
            ("KHEISH_DELIVERY_CIRCUIT_FAILURE_THRESHOLD", "-1"),
            ("KHEISH_DELIVERY_CIRCUIT_FAILURE_THRESHOLD", "1001"),
            ("KHEISH_DELIVERY_CIRCUIT_COOLDOWN_MS", "0"),
            ("KHEISH_DELIVERY_CIRCUIT_COOLDOWN_MS", "soon"),
            ("KHEISH_DELIVERY_TARGET_MIN_INTERVAL_MS", "3600001"),
        ] {
            let pairs: &'static [(&'static str, &'static str)] =
                Box::leak(vec![(var, bad)].into_boxed_slice());
            let e = RetryPolicy::from_env(&env(pairs)).unwrap_err();
            assert_eq!(e.var, var, "{bad}");
        }
    }
}
