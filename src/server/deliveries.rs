//! Delivery and dead-letter routes of the control plane (SPEC §5.1, §11.6), and the pieces the
//! CLI shares with them so the two cannot drift: the redacted [`DeliveryView`], the
//! [`ItemView`] of one replay/resolve result, and the queue gauges for `/metrics`
//! ([`delivery_samples`]). The server loop calls [`handle`] only after the admin token passed.
//!
//! Routes:
//! - `GET /v1/deliveries?status=&plugin=&connector=KIND/NAME&session=&run=&since=WHEN&limit=`
//!   → `{"deliveries":[view]}`, newest first;
//! - `GET /v1/deliveries/dead-letter` (the same filters without `status`, plus
//!   `include_resolved=true`) → `{"deliveries":[view]}`, unresolved dead letters by default;
//! - `GET /v1/deliveries/{id}` → the view, or 404 `delivery_not_found`;
//! - `POST /v1/deliveries/{id}/replay[?force=true]` → 201 `{"result":"replayed",…}`, 200
//!   `existing_replay`, 409 `not_dead_lettered`, 404 `delivery_not_found`;
//! - `POST /v1/deliveries/{id}/resolve {"reason"?}` → 200 `{"result":"resolved",…}`, 409, 404;
//! - `POST /v1/deliveries/replay-bulk {"delivery_ids"? | "filter"?, "limit"?, "force"?,
//!   "dry_run"?, "resolve"?, "reason"?}` → 200 `{"items":[item]}` (one item per selected dead
//!   letter or named id, whatever its result).
//!
//! Bad input is a 400 problem (`invalid_query` naming the parameter, `invalid_json`,
//! `invalid_request`); a database failure is 503 `store_unavailable` (busy) or 500
//! `store_error`, with the cause in the daemon log only.
//!
//! # Redaction (one rule, one function: [`redacted_address`])
//!
//! A delivery view never contains a secret. An `http` target may carry credentials in header
//! values and anywhere in its URL (Slack and Discord webhook URLs are credentials in their
//! path; Telegram puts the bot token in `/bot<token>/`; many hooks take `?token=`). No
//! heuristic reliably tells a route name from a short token, so the rule keeps only what is
//! never secret and fingerprints the rest:
//! - scheme, host and port are kept (`scheme://host[:port]`, the same form as error messages,
//!   from [`crate::net::redact_target`]);
//! - a path other than `/`, and any query, are replaced by `/<redacted:XXXXXXXX>`, where
//!   `XXXXXXXX` is the first 8 hex digits of the SHA-256 of the path and query as stored
//!   (enough to tell targets apart and to check a suspected URL, useless to recover a token);
//! - userinfo (refused when stored anyway) and the fragment are dropped;
//! - header names and `allow_private_network` are kept, every header value becomes
//!   `<redacted>`;
//! - an address that no longer parses is shown as `<redacted>`.
//!
//! Slack, Telegram and external addresses name a connector and a channel/chat/route — no
//! secrets (tokens live in the connector config) — and are shown as stored. The view leaves
//! out the internal `target_key`, which is derived from the full address.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{response, ApiRequest, ApiResponse, RequestCtx, Route};
use crate::delivery::{self, ReplayItem};
use crate::model::delivery::DeliveryStatus;
use crate::model::reply::{ReplyPlugin, ReplyTarget};
use crate::model::{now_ms, parse_when, ConnectorId};
use crate::store::deliveries::DeliveryFilter;
use crate::store::StoreError;

use crate::views::{
    check_plugin, DeliveryList, DeliveryView, ItemList, ItemView, PausedTargetView, QueryError,
};

/// Rows a listing returns without `limit`, and dead letters a bulk replay selects without one.
pub const DEFAULT_LIMIT: u32 = 100;

/// The largest `limit` (listings and bulk replays) and the most ids one bulk request may name.
pub const MAX_LIMIT: u32 = 500;

/// Longest `reason` accepted when resolving (characters).
pub const MAX_REASON_CHARS: usize = 1_000;

/// Early-return type of the route functions: the error side is already a response.
type Reply = Result<ApiResponse, ApiResponse>;

/// Handles a delivery route (admin auth has already passed).
pub fn handle(ctx: &RequestCtx<'_>, route: &Route, req: &ApiRequest) -> ApiResponse {
    let res = match route {
        Route::ListDeliveries => list(ctx, req, false),
        Route::DeadLetters => list(ctx, req, true),
        Route::GetDelivery { id } => get(ctx, id, req),
        Route::ReplayDelivery { id } => replay_one(ctx, id, req),
        Route::ResolveDelivery { id } => resolve_one(ctx, id, req),
        Route::ReplayBulk => replay_bulk(ctx, req),
        Route::ResetBackpressure => reset_backpressure(ctx, req),
        other => Err(ApiResponse::problem(
            404,
            "not_found",
            format!("`{}` is not a delivery route", other.template()),
        )),
    };
    res.unwrap_or_else(|problem| problem)
}

// ---------------------------------------------------------------------------------------------
// Routes

fn list(ctx: &RequestCtx<'_>, req: &ApiRequest, dead_letters: bool) -> Reply {
    let filter = parse_list_query(&req.query, dead_letters, now_ms()).map_err(query_problem)?;
    let found = if dead_letters {
        ctx.store.list_dead_letters(&filter)
    } else {
        ctx.store.list_deliveries(&filter)
    };
    let deliveries = found.map_err(|e| store_problem(ctx, &e))?;
    let paused = paused_map(ctx)?;
    Ok(ApiResponse::json(
        200,
        &DeliveryList::with_pauses(&deliveries, &paused),
    ))
}

fn get(ctx: &RequestCtx<'_>, id: &str, req: &ApiRequest) -> Reply {
    known_params(&req.query, &[]).map_err(query_problem)?;
    match ctx
        .store
        .get_delivery(id)
        .map_err(|e| store_problem(ctx, &e))?
    {
        Some(d) => {
            let paused = paused_map(ctx)?;
            let view = DeliveryView::new(&d).with_pause(&d, &paused);
            Ok(ApiResponse::json(200, &view))
        }
        None => Err(not_found(id)),
    }
}

/// `POST /v1/deliveries/{id}/replay` takes no body (or `{}`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

/// `POST /v1/deliveries/{id}/resolve` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    reason: Option<String>,
}

fn replay_one(ctx: &RequestCtx<'_>, id: &str, req: &ApiRequest) -> Reply {
    let params = known_params(&req.query, &["force"]).map_err(query_problem)?;
    let force = match params.iter().find(|(k, _)| *k == "force") {
        Some((_, v)) => parse_bool("force", v).map_err(query_problem)?,
        None => false,
    };
    let EmptyBody {} = parse_body(&req.body)?;
    let items = delivery::replay(ctx.store, &[id.to_string()], force, false, now_ms())
        .map_err(|e| store_problem(ctx, &e))?;
    notify_if_queued(ctx, &items);
    single_answer(items, id)
}

fn resolve_one(ctx: &RequestCtx<'_>, id: &str, req: &ApiRequest) -> Reply {
    known_params(&req.query, &[]).map_err(query_problem)?;
    let body: ResolveBody = parse_body(&req.body)?;
    let reason = check_reason(body.reason)?;
    let items = delivery::resolve(
        ctx.store,
        &[id.to_string()],
        reason.as_deref(),
        false,
        now_ms(),
    )
    .map_err(|e| store_problem(ctx, &e))?;
    single_answer(items, id)
}

/// The answer of a single-id route: its one item with the status its result calls for.
fn single_answer(items: Vec<ReplayItem>, id: &str) -> Reply {
    let Some(item) = items.into_iter().next() else {
        return Err(not_found(id));
    };
    let status = match &item {
        ReplayItem::Replayed { .. } => 201,
        ReplayItem::NotFound { id } => return Err(not_found(id)),
        ReplayItem::NotDeadLettered { source } => {
            let mut extra = Map::new();
            extra.insert("delivery_id".into(), json!(source.delivery_id));
            extra.insert("delivery_status".into(), json!(source.status.as_str()));
            return Err(ApiResponse::problem_with(
                409,
                "not_dead_lettered",
                format!(
                    "delivery `{}` is {}, not dead-lettered; only dead letters can be replayed or resolved",
                    source.delivery_id, source.status
                ),
                extra,
            ));
        }
        _ => 200,
    };
    Ok(ApiResponse::json(status, &ItemView::new(&item)))
}

/// `POST /v1/deliveries/replay-bulk` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    delivery_ids: Option<Vec<String>>,
    filter: Option<BulkFilter>,
    limit: Option<u32>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    resolve: bool,
    reason: Option<String>,
}

/// The dead-letter selection of a bulk request (all members optional; `{}` selects every
/// unresolved dead letter up to `limit`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkFilter {
    plugin: Option<String>,
    connector: Option<String>,
    session: Option<String>,
    run: Option<String>,
    since: Option<String>,
    #[serde(default)]
    include_resolved: bool,
}

/// What a bulk request asks for, validated.
#[derive(Debug, Clone, PartialEq)]
enum Selection {
    Ids(Vec<String>),
    Matching(DeliveryFilter),
}

/// A validated bulk request.
#[derive(Debug, Clone, PartialEq)]
struct BulkRequest {
    selection: Selection,
    force: bool,
    dry_run: bool,
    /// `Some(reason)` to resolve instead of replaying (the reason itself is optional).
    resolve: Option<Option<String>>,
}

/// Target key -> end of its pause, for every target paused now.
fn paused_map(ctx: &RequestCtx<'_>) -> Result<HashMap<String, i64>, ApiResponse> {
    let paused = ctx
        .store
        .paused_targets(None, None, now_ms())
        .map_err(|e| store_problem(ctx, &e))?;
    Ok(paused
        .into_iter()
        .map(|p| (p.target_key, p.paused_until_ms))
        .collect())
}

/// `POST /v1/deliveries/backpressure/reset` body: at least one selector.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackpressureBody {
    /// One target, as a reply target is written: `{"plugin", "address"}`.
    target: Option<TargetSelector>,
    /// Every paused target of this plugin.
    plugin: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetSelector {
    plugin: String,
    address: Value,
}

/// Clears the circuit-breaker pause of the selected targets (SPEC §11.3).
fn reset_backpressure(ctx: &RequestCtx<'_>, req: &ApiRequest) -> Reply {
    known_params(&req.query, &[]).map_err(query_problem)?;
    let body: BackpressureBody = parse_body(&req.body)?;
    if body.target.is_none() && body.plugin.is_none() {
        return Err(ApiResponse::problem(
            400,
            "delivery_backpressure_selector_required",
            "name the paused targets to reset: `target` ({\"plugin\", \"address\"}) and/or `plugin`",
        ));
    }
    let plugin = match &body.plugin {
        Some(p) => Some(check_plugin(p).map_err(|e| invalid(format!("`plugin`: {e}")))?),
        None => None,
    };
    let now = now_ms();
    let reset = match &body.target {
        None => ctx
            .store
            .reset_backpressure(plugin.as_deref(), None, body.dry_run, now)
            .map_err(|e| store_problem(ctx, &e))?,
        Some(t) => {
            let selector = ReplyTarget {
                plugin: ReplyPlugin::parse(t.plugin.trim())
                    .map_err(|e| invalid(format!("`target.plugin`: {e}")))?,
                address: match &t.address {
                    Value::String(s) => s.clone(),
                    obj @ Value::Object(_) => obj.to_string(),
                    _ => {
                        return Err(invalid(
                            "`target.address` must be a string or a JSON object",
                        ))
                    }
                },
            };
            if plugin
                .as_deref()
                .is_some_and(|p| p != selector.plugin.as_str())
            {
                Vec::new()
            } else {
                // The selector names a target however it is spelled (member order, spacing,
                // a URL string or its `{"url"}` form): the paused targets of its plugin are
                // few, so each is compared with it as a parsed address.
                let paused = ctx
                    .store
                    .paused_targets(Some(selector.plugin.as_str()), None, now)
                    .map_err(|e| store_problem(ctx, &e))?;
                let mut reset = Vec::new();
                for p in paused.iter().filter(|p| same_target(&p.target, &selector)) {
                    reset.extend(
                        ctx.store
                            .reset_backpressure(None, Some(&p.target_key), body.dry_run, now)
                            .map_err(|e| store_problem(ctx, &e))?,
                    );
                }
                reset
            }
        }
    };
    if !body.dry_run && !reset.is_empty() {
        // Unpaused targets may be due now.
        ctx.app.deliveries_queued.notify_all();
    }
    let targets: Vec<PausedTargetView> = reset.iter().map(PausedTargetView::new).collect();
    Ok(ApiResponse::json(
        200,
        &json!({
            "dry_run": body.dry_run,
            "matched": reset.len(),
            "removed": if body.dry_run { 0 } else { reset.len() },
            "targets": targets,
        }),
    ))
}

/// Whether `stored` and `selector` name the same target: the same address string, or the same
/// parsed address (an address that no longer validates matches its exact string only).
fn same_target(stored: &ReplyTarget, selector: &ReplyTarget) -> bool {
    if stored.plugin != selector.plugin {
        return false;
    }
    if stored.address == selector.address {
        return true;
    }
    match (stored.parsed(), selector.parsed()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn replay_bulk(ctx: &RequestCtx<'_>, req: &ApiRequest) -> Reply {
    known_params(&req.query, &[]).map_err(query_problem)?;
    let body: BulkBody = parse_body(&req.body)?;
    let bulk = check_bulk(body, now_ms())?;
    let now = now_ms();
    let items = match (&bulk.selection, &bulk.resolve) {
        (Selection::Ids(ids), None) => {
            delivery::replay(ctx.store, ids, bulk.force, bulk.dry_run, now)
        }
        (Selection::Matching(f), None) => {
            delivery::replay_matching(ctx.store, f, bulk.force, bulk.dry_run, now)
        }
        (Selection::Ids(ids), Some(reason)) => {
            delivery::resolve(ctx.store, ids, reason.as_deref(), bulk.dry_run, now)
        }
        (Selection::Matching(f), Some(reason)) => {
            delivery::resolve_matching(ctx.store, f, reason.as_deref(), bulk.dry_run, now)
        }
    }
    .map_err(|e| store_problem(ctx, &e))?;
    notify_if_queued(ctx, &items);
    Ok(ApiResponse::json(200, &ItemList::new(&items)))
}

/// Wakes the daemon's delivery workers when a replay queued something.
fn notify_if_queued(ctx: &RequestCtx<'_>, items: &[ReplayItem]) {
    let queued = items
        .iter()
        .any(|i| matches!(i, ReplayItem::Replayed { .. }));
    if queued {
        ctx.app.deliveries_queued.notify_all();
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation (pure)

/// Checks that every query parameter is one of `known`, given once and not empty; returns the
/// pairs as `(known name, value)`.
fn known_params<'q>(
    pairs: &'q [(String, String)],
    known: &[&'static str],
) -> Result<Vec<(&'static str, &'q str)>, QueryError> {
    let mut out: Vec<(&'static str, &'q str)> = Vec::new();
    for (name, value) in pairs {
        let Some(k) = known.iter().copied().find(|k| k == name) else {
            let message = if known.is_empty() {
                "this route takes no query parameters".to_string()
            } else {
                format!("unknown parameter; use {}", known.join(", "))
            };
            return Err(query_error(name, message));
        };
        if out.iter().any(|(n, _)| *n == k) {
            return Err(query_error(name, "given more than once"));
        }
        if value.trim().is_empty() {
            return Err(query_error(name, "must not be empty"));
        }
        out.push((k, value.as_str()));
    }
    Ok(out)
}

fn query_error(parameter: &str, message: impl Into<String>) -> QueryError {
    QueryError {
        parameter: parameter.to_string(),
        message: message.into(),
    }
}

fn parse_bool(name: &str, value: &str) -> Result<bool, QueryError> {
    match value.trim() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(query_error(name, "must be true or false")),
    }
}

/// Parses the query of `GET /v1/deliveries` (`dead_letters = false`) or
/// `GET /v1/deliveries/dead-letter`.
fn parse_list_query(
    pairs: &[(String, String)],
    dead_letters: bool,
    now_ms: i64,
) -> Result<DeliveryFilter, QueryError> {
    let known: &[&'static str] = if dead_letters {
        &[
            "plugin",
            "connector",
            "session",
            "run",
            "since",
            "limit",
            "include_resolved",
        ]
    } else {
        &[
            "status",
            "plugin",
            "connector",
            "session",
            "run",
            "since",
            "limit",
        ]
    };
    let params = known_params(pairs, known)?;
    let mut filter = DeliveryFilter {
        status: None,
        plugin: None,
        connector: None,
        session_id: None,
        run_id: None,
        since_ms: None,
        include_resolved: false,
        limit: DEFAULT_LIMIT,
    };
    for (name, value) in params {
        match name {
            "status" => {
                filter.status = Some(DeliveryStatus::parse(value.trim()).ok_or_else(|| {
                    query_error(
                        name,
                        "must be one of pending, retrying, delivered, dead_lettered",
                    )
                })?)
            }
            "plugin" => {
                filter.plugin = Some(check_plugin(value).map_err(|e| query_error(name, e))?)
            }
            "connector" => {
                let id: ConnectorId = value.parse().map_err(|e: String| query_error(name, e))?;
                filter.connector = Some((id.kind, id.name.as_str().to_string()));
            }
            "session" => filter.session_id = Some(value.to_string()),
            "run" => filter.run_id = Some(value.to_string()),
            "since" => {
                filter.since_ms = Some(parse_when(value, now_ms).map_err(|e| query_error(name, e))?)
            }
            "limit" => filter.limit = parse_limit(value).map_err(|e| query_error(name, e))?,
            _ => filter.include_resolved = parse_bool(name, value)?,
        }
    }
    Ok(filter)
}

fn parse_limit(value: &str) -> Result<u32, String> {
    value
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| format!("must be an integer from 1 to {MAX_LIMIT}"))
}

/// A resolution reason: trimmed, at most [`MAX_REASON_CHARS`], no control characters other
/// than line breaks and tabs; blank means none.
fn check_reason(reason: Option<String>) -> Result<Option<String>, ApiResponse> {
    let Some(reason) = reason else {
        return Ok(None);
    };
    let reason = reason.trim();
    if reason.is_empty() {
        return Ok(None);
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(invalid(format!(
            "`reason` must be at most {MAX_REASON_CHARS} characters"
        )));
    }
    if reason
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        return Err(invalid("`reason` must not contain control characters"));
    }
    Ok(Some(reason.to_string()))
}

/// Validates a bulk request body.
fn check_bulk(body: BulkBody, now_ms: i64) -> Result<BulkRequest, ApiResponse> {
    if body.resolve && body.force {
        return Err(invalid(
            "`force` applies to replays; it cannot be combined with `resolve`",
        ));
    }
    if body.reason.is_some() && !body.resolve {
        return Err(invalid("`reason` is recorded only with `resolve: true`"));
    }
    let limit = match body.limit {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(n) => {
            return Err(invalid(format!(
                "`limit` must be between 1 and {MAX_LIMIT} (got {n})"
            )))
        }
    };
    let selection = match (body.delivery_ids, body.filter) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "give either `delivery_ids` or `filter`, not both",
            ))
        }
        (None, None) => {
            return Err(invalid(
                "give `delivery_ids` (a list of dead-letter ids) or `filter` (`{}` selects every unresolved dead letter)",
            ))
        }
        (Some(ids), None) => {
            if ids.is_empty() {
                return Err(invalid("`delivery_ids` must not be empty"));
            }
            if ids.len() > MAX_LIMIT as usize {
                return Err(invalid(format!(
                    "`delivery_ids` may hold at most {MAX_LIMIT} ids (got {})",
                    ids.len()
                )));
            }
            if let Some(idx) = ids.iter().position(|id| id.trim().is_empty()) {
                return Err(invalid(format!("`delivery_ids[{idx}]` must not be empty")));
            }
            let mut unique: Vec<String> = Vec::with_capacity(ids.len());
            for id in ids {
                if !unique.contains(&id) {
                    unique.push(id);
                }
            }
            Selection::Ids(unique)
        }
        (None, Some(f)) => {
            let plugin = f
                .plugin
                .as_deref()
                .map(check_plugin)
                .transpose()
                .map_err(|e| invalid(format!("`filter.plugin`: {e}")))?;
            let connector = f
                .connector
                .as_deref()
                .map(str::parse::<ConnectorId>)
                .transpose()
                .map_err(|e| invalid(format!("`filter.connector`: {e}")))?;
            let since_ms = f
                .since
                .as_deref()
                .map(|s| parse_when(s, now_ms))
                .transpose()
                .map_err(|e| invalid(format!("`filter.since`: {e}")))?;
            Selection::Matching(DeliveryFilter {
                status: Some(DeliveryStatus::DeadLettered),
                plugin,
                connector: connector.map(|c| (c.kind, c.name.as_str().to_string())),
                session_id: f.session,
                run_id: f.run,
                since_ms,
                include_resolved: f.include_resolved,
                limit,
            })
        }
    };
    let resolve = if body.resolve {
        Some(check_reason(body.reason)?)
    } else {
        None
    };
    Ok(BulkRequest {
        selection,
        force: body.force,
        dry_run: body.dry_run,
        resolve,
    })
}

/// Parses a JSON request body: the control plane's one parser ([`super::control::parse_json`]).
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiResponse> {
    super::control::parse_json(body)
}

// ---------------------------------------------------------------------------------------------
// Errors → responses (the one table for this module)

fn invalid(detail: impl Into<String>) -> ApiResponse {
    ApiResponse::problem(400, "invalid_request", detail)
}

fn query_problem(e: QueryError) -> ApiResponse {
    let mut extra = Map::new();
    extra.insert("parameter".into(), json!(e.parameter));
    ApiResponse::problem_with(400, "invalid_query", e.to_string(), extra)
}

fn not_found(id: &str) -> ApiResponse {
    let mut extra = Map::new();
    extra.insert("delivery_id".into(), json!(id));
    ApiResponse::problem_with(
        404,
        "delivery_not_found",
        format!("delivery `{id}` does not exist"),
        extra,
    )
}

/// A store failure: the one answer of [`response::store_error`].
fn store_problem(ctx: &RequestCtx<'_>, err: &StoreError) -> ApiResponse {
    response::store_error(&ctx.app.out, "delivery control plane", err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ConnectorKind;
    use serde_json::Value;

    const NOW: i64 = 1_700_000_000_000;

    fn pairs(query: &str) -> Vec<(String, String)> {
        super::super::router::query_pairs(query).unwrap()
    }

    fn list_query(query: &str, dead: bool) -> Result<DeliveryFilter, QueryError> {
        parse_list_query(&pairs(query), dead, NOW)
    }

    #[test]
    fn list_queries() {
        let f = list_query(
            "status=retrying&plugin=http&connector=http/orders&session=s%3A1&run=r1&since=10m&limit=500",
            false,
        )
        .unwrap();
        assert_eq!(
            f,
            DeliveryFilter {
                status: Some(DeliveryStatus::Retrying),
                plugin: Some("http".into()),
                connector: Some((ConnectorKind::Http, "orders".into())),
                session_id: Some("s:1".into()),
                run_id: Some("r1".into()),
                since_ms: Some(NOW - 600_000),
                include_resolved: false,
                limit: 500,
            }
        );
        assert_eq!(list_query("", false).unwrap().limit, DEFAULT_LIMIT);
        assert!(
            list_query("include_resolved=true", true)
                .unwrap()
                .include_resolved
        );
        for (query, dead, parameter) in [
            ("status=done", false, "status"),
            ("status=pending", true, "status"),
            ("include_resolved=true", false, "include_resolved"),
            ("include_resolved=maybe", true, "include_resolved"),
            ("plugin=smtp", false, "plugin"),
            ("connector=orders", false, "connector"),
            ("since=soon", false, "since"),
            ("limit=0", false, "limit"),
            ("limit=501", true, "limit"),
            ("run=", false, "run"),
            ("run=a&run=b", false, "run"),
            ("colour=red", false, "colour"),
        ] {
            let err = list_query(query, dead).unwrap_err();
            assert_eq!(err.parameter, parameter, "{query}: {err}");
        }
    }

    fn bulk(body: &str) -> Result<BulkRequest, String> {
        let body: BulkBody = parse_body(body.as_bytes()).map_err(|r| {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            v["detail"].as_str().unwrap().to_string()
        })?;
        check_bulk(body, NOW).map_err(|r| {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            v["detail"].as_str().unwrap().to_string()
        })
    }

    #[test]
    fn bulk_requests() {
        let b = bulk(r#"{"delivery_ids":["a","b","a"],"dry_run":true}"#).unwrap();
        assert_eq!(b.selection, Selection::Ids(vec!["a".into(), "b".into()]));
        assert!(b.dry_run && !b.force && b.resolve.is_none());

        let b = bulk(r#"{"filter":{},"force":true}"#).unwrap();
        let Selection::Matching(f) = b.selection else {
            panic!("expected a filter")
        };
        assert_eq!(f.limit, DEFAULT_LIMIT);
        assert!(!f.include_resolved);

        let b = bulk(
            r#"{"filter":{"plugin":"http","connector":"http/orders","session":"s","run":"r","since":"1h","include_resolved":true},"limit":7,"resolve":true,"reason":"  handled by hand "}"#,
        )
        .unwrap();
        assert_eq!(b.resolve, Some(Some("handled by hand".into())));
        let Selection::Matching(f) = b.selection else {
            panic!("expected a filter")
        };
        assert_eq!(f.limit, 7);
        assert_eq!(f.since_ms, Some(NOW - 3_600_000));
        assert_eq!(f.connector, Some((ConnectorKind::Http, "orders".into())));
        assert!(f.include_resolved);

        for (body, needle) in [
            ("{}", "give `delivery_ids`"),
            (r#"{"delivery_ids":["a"],"filter":{}}"#, "not both"),
            (r#"{"delivery_ids":[]}"#, "must not be empty"),
            (r#"{"delivery_ids":[" "]}"#, "`delivery_ids[0]`"),
            (r#"{"filter":{},"limit":0}"#, "`limit`"),
            (r#"{"filter":{},"limit":501}"#, "`limit`"),
            (r#"{"filter":{},"resolve":true,"force":true}"#, "`force`"),
            (r#"{"filter":{},"reason":"x"}"#, "`reason`"),
            (r#"{"filter":{"plugin":"smtp"}}"#, "`filter.plugin`"),
            (r#"{"filter":{"connector":"x"}}"#, "`filter.connector`"),
            (r#"{"filter":{"since":"soon"}}"#, "`filter.since`"),
            (r#"{"filter":{"status":"x"}}"#, "unknown field"),
            (r#"{"ids":["a"]}"#, "unknown field"),
        ] {
            let err = bulk(body).unwrap_err();
            assert!(err.contains(needle), "{body}: {err}");
        }
        let many: Vec<String> = (0..501).map(|i| format!("d{i}")).collect();
        let err = bulk(&json!({ "delivery_ids": many }).to_string()).unwrap_err();
        assert!(err.contains("at most 500"), "{err}");
    }

    #[test]
    fn reasons() {
        assert_eq!(check_reason(None).unwrap(), None);
        assert_eq!(check_reason(Some("  ".into())).unwrap(), None);
        assert_eq!(
            check_reason(Some("fixed\tby hand\n".into())).unwrap(),
            Some("fixed\tby hand".into())
        );
        assert!(check_reason(Some("a\u{7}b".into())).is_err());
        assert!(check_reason(Some("x".repeat(MAX_REASON_CHARS + 1))).is_err());
    }
}
