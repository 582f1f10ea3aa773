//! Observability routes of the control plane (SPEC §5.1, §13): `GET /metrics` (Prometheus text)
//! and `GET /v1/receipts` (the same filters as `kheishctl inspect-receipts`).
//!
//! Also home of the two pieces the CLI shares with the API so they cannot drift:
//! [`receipt_filter`] (raw key → stored key through `ingress::receipt_key`, the one hashing
//! function) and [`ReceiptView`] (the JSON shape of one receipt). Both routes run after the
//! caller checked the admin token.

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::{ApiRequest, ApiResponse, RequestCtx};
use crate::ingress;
use crate::metrics::Sample;
use crate::model::run::Receipt;
use crate::model::{now_ms, parse_when, rfc3339_ms, ConnectorId};
use crate::store::receipts::ReceiptFilter;
use crate::store::StoreError;

/// Rows `GET /v1/receipts` returns without `limit` (as `inspect-receipts`).
pub const DEFAULT_LIMIT: u32 = 100;

/// The largest `limit` the API accepts: one response stays a few hundred KiB. The CLI, which
/// streams to a terminal or a file, allows more.
pub const MAX_API_LIMIT: u32 = 1_000;

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
            "kheish_build_info",
            "Always 1; the version label names the running kheishctl.",
            1.0,
        )
        .label("version", env!("CARGO_PKG_VERSION")),
    ];
    let mut extra = extra.to_vec();
    match ctx.store.delivery_stats(crate::model::now_ms()) {
        Ok(stats) => extra.extend(super::deliveries::delivery_samples(&stats)),
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

/// A store failure as a response: the full error goes to the daemon log; the body says only
/// that the database could not be read (it would otherwise name file-system paths).
fn store_failure(ctx: &RequestCtx<'_>, err: &StoreError) -> ApiResponse {
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        chain.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    ctx.app.out.error(&format!("GET /v1/receipts: {chain}"));
    match err {
        StoreError::Busy { .. } => ApiResponse::problem(
            503,
            "store_unavailable",
            "the state database is busy; retry later",
        )
        .with_header("Retry-After", "1"),
        _ => ApiResponse::problem(
            500,
            "store_error",
            "the state database could not be read; see the daemon log",
        ),
    }
}

/// A query parameter `GET /v1/receipts` could not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("query parameter `{parameter}`: {message}")]
pub struct QueryError {
    /// The parameter's name as sent.
    pub parameter: String,
    pub message: String,
}

fn query_error(parameter: &str, message: impl Into<String>) -> QueryError {
    QueryError {
        parameter: parameter.to_string(),
        message: message.into(),
    }
}

/// Parses the decoded query pairs of `GET /v1/receipts`. Unknown and repeated parameters are
/// refused (a typo would otherwise silently widen the listing), as are empty values.
pub fn parse_receipt_query(
    pairs: &[(String, String)],
    now_ms: i64,
) -> Result<ReceiptFilter, QueryError> {
    const KNOWN: [&str; 6] = ["connector", "key", "run", "session", "since", "limit"];
    for (idx, (name, value)) in pairs.iter().enumerate() {
        if !KNOWN.contains(&name.as_str()) {
            return Err(query_error(
                name,
                "unknown parameter; use connector, key, run, session, since or limit",
            ));
        }
        if pairs[..idx].iter().any(|(n, _)| n == name) {
            return Err(query_error(name, "given more than once"));
        }
        if value.trim().is_empty() {
            return Err(query_error(name, "must not be empty"));
        }
    }
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };

    let connector = get("connector")
        .map(|v| v.parse::<ConnectorId>())
        .transpose()
        .map_err(|e| query_error("connector", e))?;
    let since_ms = get("since")
        .map(|v| parse_when(v, now_ms))
        .transpose()
        .map_err(|e| query_error("since", e))?;
    let limit = match get("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_API_LIMIT).contains(n))
            .ok_or_else(|| {
                query_error(
                    "limit",
                    format!("must be an integer from 1 to {MAX_API_LIMIT}"),
                )
            })?,
    };
    receipt_filter(
        connector.as_ref(),
        get("key"),
        get("run").map(str::to_string),
        get("session").map(str::to_string),
        since_ms,
        limit,
    )
    .map_err(|message| query_error("key", message))
}

/// Builds the store filter from the operator's terms, shared by `inspect-receipts` and
/// `GET /v1/receipts`. A raw key is hashed exactly as ingress hashes it
/// ([`ingress::receipt_key`]), which needs the connector: the error says so.
pub fn receipt_filter(
    connector: Option<&ConnectorId>,
    raw_key: Option<&str>,
    run_id: Option<String>,
    session_id: Option<String>,
    since_ms: Option<i64>,
    limit: u32,
) -> Result<ReceiptFilter, &'static str> {
    let receipt_key = match (raw_key, connector) {
        (None, _) => None,
        (Some(raw), Some(id)) => Some(ingress::receipt_key(id.kind, id.name.as_str(), raw).0),
        (Some(_), None) => {
            return Err("a key lookup needs `connector` (KIND/NAME): keys are hashed per connector")
        }
    };
    Ok(ReceiptFilter {
        connector: connector.map(|id| (id.kind, id.name.as_str().to_string())),
        receipt_key,
        run_id,
        session_id,
        since_ms,
        limit,
    })
}

/// One receipt as the API and `inspect-receipts --json` show it: the stored (hashed) key, full
/// digests, and times both as RFC 3339 and Unix ms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptView {
    /// `KIND:NAME:<hash>` (telegram: `telegram:NAME:<update_id>`); never the raw key.
    pub receipt_key: String,
    /// `KIND/NAME`.
    pub connector: String,
    pub connector_kind: String,
    pub connector_name: String,
    /// Full 64-hex SHA-256 of the raw key.
    pub key_sha256: String,
    /// Full 64-hex payload fingerprint (SPEC §6.4).
    pub fingerprint: String,
    pub status: String,
    pub run_id: String,
    pub session_id: String,
    pub received_at: String,
    pub received_at_ms: i64,
    /// Replays answered from this receipt.
    pub duplicate_hits: i64,
    pub last_duplicate_at: Option<String>,
    pub last_duplicate_at_ms: Option<i64>,
}

impl From<&Receipt> for ReceiptView {
    fn from(r: &Receipt) -> ReceiptView {
        ReceiptView {
            receipt_key: r.receipt_key.clone(),
            connector: format!("{}/{}", r.connector_kind, r.connector_name),
            connector_kind: r.connector_kind.as_str().to_string(),
            connector_name: r.connector_name.clone(),
            key_sha256: r.key_sha256.clone(),
            fingerprint: r.fingerprint.clone(),
            status: r.status.clone(),
            run_id: r.run_id.clone(),
            session_id: r.session_id.clone(),
            received_at: rfc3339_ms(r.received_at_ms),
            received_at_ms: r.received_at_ms,
            duplicate_hits: r.duplicate_hits,
            last_duplicate_at: r.last_duplicate_at_ms.map(rfc3339_ms),
            last_duplicate_at_ms: r.last_duplicate_at_ms,
        }
    }
}

/// `{"receipts":[…]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptList {
    pub receipts: Vec<ReceiptView>,
}

impl ReceiptList {
    pub fn new(receipts: &[Receipt]) -> ReceiptList {
        ReceiptList {
            receipts: receipts.iter().map(ReceiptView::from).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ConnectorKind;

    const NOW: i64 = 1_700_000_000_000;

    fn parse(query: &str) -> Result<ReceiptFilter, QueryError> {
        let pairs = super::super::router::query_pairs(query).unwrap();
        parse_receipt_query(&pairs, NOW)
    }

    fn bad(query: &str, parameter: &str) {
        let err = parse(query).unwrap_err();
        assert_eq!(err.parameter, parameter, "{query}: {err}");
    }

    #[test]
    fn defaults() {
        assert_eq!(parse("").unwrap(), ReceiptFilter::all(DEFAULT_LIMIT));
    }

    #[test]
    fn every_filter() {
        let f = parse("connector=http/orders&key=+order-1+&run=r1&session=s%3A1&since=10m&limit=5")
            .unwrap();
        assert_eq!(
            f,
            ReceiptFilter {
                connector: Some((ConnectorKind::Http, "orders".into())),
                receipt_key: Some(ingress::receipt_key(ConnectorKind::Http, "orders", "order-1").0),
                run_id: Some("r1".into()),
                session_id: Some("s:1".into()),
                since_ms: Some(NOW - 600_000),
                limit: 5,
            }
        );
        assert_eq!(
            parse("since=2023-11-14T22:13:20Z").unwrap().since_ms,
            Some(1_700_000_000_000)
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        bad("connector=orders", "connector");
        bad("connector=ftp/orders", "connector");
        bad("key=order-1", "key");
        bad("since=yesterday", "since");
        bad("limit=0", "limit");
        bad("limit=1001", "limit");
        bad("limit=ten", "limit");
        bad("run=", "run");
        bad("run=a&run=b", "run");
        bad("conector=http/orders", "conector");
    }

    #[test]
    fn view_shows_times_in_both_forms() {
        let r = Receipt {
            receipt_key: "http:orders:abc".into(),
            connector_kind: ConnectorKind::Http,
            connector_name: "orders".into(),
            key_sha256: "a".repeat(64),
            fingerprint: "b".repeat(64),
            status: "submitted".into(),
            run_id: "run_1".into(),
            session_id: "sess".into(),
            received_at_ms: 1_700_000_000_000,
            duplicate_hits: 2,
            last_duplicate_at_ms: Some(1_700_000_000_500),
        };
        let v = serde_json::to_value(ReceiptList::new(&[r])).unwrap();
        let first = &v["receipts"][0];
        assert_eq!(first["connector"], "http/orders");
        assert_eq!(first["received_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(first["last_duplicate_at"], "2023-11-14T22:13:20.500Z");
        assert_eq!(first["fingerprint"], "b".repeat(64));
        assert_eq!(first["duplicate_hits"], 2);
    }
}
