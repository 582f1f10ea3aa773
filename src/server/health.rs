//! `GET /readyz` (SPEC §5): 503 `starting` or `draining` outside the ready phase; once ready,
//! 503 `storage_unavailable` while the state database cannot commit (disk full, I/O error,
//! read-only, …; see `store::health`), and 200 again once a commit succeeds. A load balancer
//! therefore stops sending events to a daemon that could only refuse them, and sends them again
//! by itself when the disk recovers (the ingress writer probes while failing).
//!
//! The problem's `detail` names the cause without any path (strangers may read it); the daemon
//! log has the full message.

use std::time::Instant;

use serde_json::json;

use super::response::{self, ApiResponse};
use super::{App, Phase};
use crate::output::Printer;
use crate::store::health::{HealthChange, StorageFailure};

/// The answer to `GET /readyz`.
pub fn readyz(app: &App) -> ApiResponse {
    match app.phase() {
        Phase::Starting => ApiResponse::problem(503, "starting", "the daemon is starting"),
        Phase::Draining => ApiResponse::problem(503, "draining", "the daemon is shutting down"),
        Phase::Ready => match app.writer.health().failure() {
            None => ApiResponse::json(200, &json!({"status": "ready"})),
            Some(failure) => storage_unavailable(&failure, Instant::now()),
        },
    }
}

/// 503 `storage_unavailable`: the cause, since when, and a `Retry-After`.
pub fn storage_unavailable(failure: &StorageFailure, now: Instant) -> ApiResponse {
    let secs = now.saturating_duration_since(failure.since).as_secs();
    let detail = format!(
        "the state database cannot commit: {} (for {secs} s); new events are refused until a \
         commit succeeds — see the daemon log",
        failure.fault.cause()
    );
    let mut extra = serde_json::Map::new();
    extra.insert("storage_fault".into(), json!(failure.fault.code()));
    extra.insert("failing_since_ms".into(), json!(failure.since_ms));
    ApiResponse::problem_with(503, "storage_unavailable", detail, extra).with_header(
        "Retry-After",
        response::storage_retry_after(Some(failure), now).to_string(),
    )
}

/// The daemon's one log line per health change (the per-request errors meanwhile are
/// rate-limited by the printer).
pub fn log_change(out: &Printer, change: &HealthChange) {
    match change {
        HealthChange::Failing(f) => out.error(&format!(
            "storage failing ({}): {}; /readyz answers 503 storage_unavailable meanwhile",
            f.fault.code(),
            f.message
        )),
        HealthChange::Recovered { fault, after } => out.info(&format!(
            "storage recovered: commits succeed again after {:.1} s of {} failures; /readyz \
             answers 200",
            after.as_secs_f64(),
            fault.code()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StorageFault;
    use std::time::Duration;

    #[test]
    fn storage_unavailable_names_the_cause_without_a_path() {
        let since = Instant::now();
        let failure = StorageFailure {
            fault: StorageFault::DiskFull,
            since,
            since_ms: 1_700_000_000_000,
            message: "the state database's disk is full (`/srv/state/state.db`) …".into(),
        };
        let r = storage_unavailable(&failure, since + Duration::from_secs(12));
        assert_eq!(r.status, 503);
        assert_eq!(r.content_type, "application/problem+json");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["code"], "storage_unavailable");
        assert_eq!(v["storage_fault"], "disk_full");
        assert_eq!(v["failing_since_ms"], 1_700_000_000_000_i64);
        let detail = v["detail"].as_str().unwrap();
        assert!(detail.contains("disk is full"), "{detail}");
        assert!(detail.contains("12 s"), "{detail}");
        assert!(!detail.contains("/srv"), "{detail}");
        assert_eq!(r.headers, vec![("Retry-After", "6".to_string())]);
    }
}
