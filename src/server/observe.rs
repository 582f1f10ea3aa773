//! Observability routes of the control plane (SPEC §5.1, §13): `GET /metrics` (Prometheus text)
//! and `GET /v1/receipts` (the same filters as `kheishctl inspect-receipts`).
//!
//! Also home of the two pieces the CLI shares with the API so they cannot drift:
//! [`receipt_filter`] (raw key → stored key through `ingress::receipt_key`, the one hashing
//! function) and [`ReceiptView`] (the JSON shape of one receipt). Both routes run after the
//! caller checked the admin token.

use std::sync::atomic::Ordering;

use super::{response, ApiRequest, ApiResponse, RequestCtx};
use crate::metrics::Sample;
use crate::model::delivery::DeliveryStatus;
use crate::model::now_ms;
use crate::store::deliveries::DeliveryStats;
use crate::store::StoreError;
use crate::views::{parse_receipt_query, ReceiptList};

/// The content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`: the registry's families plus the samples the daemon's other parts own
/// (the group-commit writer's counters, the build version).
pub fn metrics(ctx: &RequestCtx<'_>) -> ApiResponse {
    let writer = ctx.app.writer.stats();
    let extra = [
        Sample::counter(
            "kheish_store_commits_total",
            "Transactions committed by the ingress group-commit writer.",
            writer.commits.load(Ordering::Relaxed) as f64,
        ),
        Sample::counter(
            "kheish_store_committed_events_total",
            "Writes (accepted events and other jobs) committed by the ingress group-commit writer.",
            writer.jobs.load(Ordering::Relaxed) as f64,
        ),
        Sample::gauge(
            "kheish_ingress_copies_waiting",
            "Re-sent events waiting for the answer of their first copy, still in flight.",
            ctx.app.in_flight.waiting() as f64,
        ),
        Sample::gauge(
            "kheish_build_info",
            "Always 1; the version label names the running kheishctl.",
            1.0,
        )
        .label("version", env!("CARGO_PKG_VERSION")),
    ];
    let mut extra = extra.to_vec();
    match ctx.store.delivery_stats(crate::model::now_ms()) {
        Ok(stats) => extra.extend(delivery_samples(&stats)),
        Err(e) => ctx
            .app
            .out
            .warn(&format!("/metrics: delivery statistics unavailable: {e}")),
    }
    ApiResponse::text(200, METRICS_CONTENT_TYPE, ctx.app.metrics.render(&extra))
}

/// `GET /v1/receipts?connector=KIND/NAME&key=RAW&run=ID&session=ID&since=WHEN&limit=N`:
/// `{"receipts":[…]}`, newest first. A bad parameter is a 400 `invalid_query` naming it.
pub fn list_receipts(ctx: &RequestCtx<'_>, req: &ApiRequest) -> ApiResponse {
    let filter = match parse_receipt_query(&req.query, now_ms()) {
        Ok(filter) => filter,
        Err(e) => {
            let mut extra = serde_json::Map::new();
            extra.insert("parameter".into(), e.parameter.clone().into());
            return ApiResponse::problem_with(400, "invalid_query", e.to_string(), extra);
        }
    };
    match ctx.store.list_receipts(&filter) {
        Ok(receipts) => ApiResponse::json(200, &ReceiptList::new(&receipts)),
        Err(e) => store_failure(ctx, &e),
    }
}

/// A store failure: the one answer of [`response::store_error`].
fn store_failure(ctx: &RequestCtx<'_>, err: &StoreError) -> ApiResponse {
    response::store_error(&ctx.app.out, "GET /v1/receipts", err)
}

/// The queue gauges of SPEC §13, read from [`DeliveryStats`] at scrape time:
/// `kheish_deliveries{state}` (every state, zeros included), `kheish_dead_letters_unresolved`,
/// `kheish_delivery_circuits_open` and `kheish_delivery_queue_lag_seconds` (age of the oldest
/// due delivery; 0 when nothing is due).
pub fn delivery_samples(stats: &DeliveryStats) -> Vec<Sample> {
    let mut out = Vec::with_capacity(7);
    for (status, n) in [
        (DeliveryStatus::Pending, stats.pending),
        (DeliveryStatus::Retrying, stats.retrying),
        (DeliveryStatus::Delivered, stats.delivered),
        (DeliveryStatus::DeadLettered, stats.dead_lettered),
    ] {
        out.push(
            Sample::gauge(
                "kheish_deliveries",
                "Deliveries in the queue by state (delivered and dead-lettered until retention prunes them).",
                n as f64,
            )
            .label("state", status.as_str()),
        );
    }
    out.push(Sample::gauge(
        "kheish_dead_letters_unresolved",
        "Dead letters that are neither resolved nor replayed successfully.",
        stats.dead_letters_unresolved as f64,
    ));
    out.push(Sample::gauge(
        "kheish_delivery_circuits_open",
        "Reply targets paused by the circuit breaker after consecutive failures.",
        stats.circuits_open as f64,
    ));
    out.push(Sample::gauge(
        "kheish_delivery_queue_lag_seconds",
        "Age of the oldest due delivery (0 when nothing is due).",
        stats.oldest_due_age_ms.max(0) as f64 / 1000.0,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_cover_every_state() {
        let stats = DeliveryStats {
            pending: 3,
            retrying: 1,
            delivered: 10,
            dead_lettered: 2,
            dead_letters_unresolved: 1,
            circuits_open: 1,
            oldest_due_age_ms: 2_500,
        };
        let text = crate::metrics::Metrics::new().render(&delivery_samples(&stats));
        for line in [
            "# TYPE kheish_deliveries gauge",
            r#"kheish_deliveries{state="pending"} 3"#,
            r#"kheish_deliveries{state="retrying"} 1"#,
            r#"kheish_deliveries{state="delivered"} 10"#,
            r#"kheish_deliveries{state="dead_lettered"} 2"#,
            "kheish_dead_letters_unresolved 1",
            "kheish_delivery_circuits_open 1",
            "kheish_delivery_queue_lag_seconds 2.5",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
