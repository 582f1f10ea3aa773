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

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::{ApiRequest, ApiResponse, RequestCtx, Route};
use crate::delivery::{self, ReplayItem};
use crate::metrics::Sample;
use crate::model::delivery::{Delivery, DeliveryStatus};
use crate::model::reply::{ReplyPlugin, ReplyTarget, TargetAddress};
use crate::model::{now_ms, parse_when, rfc3339_ms, ConnectorId};
use crate::store::deliveries::{DeliveryFilter, DeliveryStats};
use crate::store::StoreError;

use super::observe::QueryError;

/// Rows a listing returns without `limit`, and dead letters a bulk replay selects without one.
pub const DEFAULT_LIMIT: u32 = 100;

/// The largest `limit` (listings and bulk replays) and the most ids one bulk request may name.
pub const MAX_LIMIT: u32 = 500;

/// Longest `reason` accepted when resolving (characters).
pub const MAX_REASON_CHARS: usize = 1_000;

/// What replaces a secret-bearing value in a view.
pub const REDACTED: &str = "<redacted>";

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
    Ok(ApiResponse::json(200, &DeliveryList::new(&deliveries)))
}

fn get(ctx: &RequestCtx<'_>, id: &str, req: &ApiRequest) -> Reply {
    known_params(&req.query, &[]).map_err(query_problem)?;
    match ctx
        .store
        .get_delivery(id)
        .map_err(|e| store_problem(ctx, &e))?
    {
        Some(d) => Ok(ApiResponse::json(200, &DeliveryView::new(&d))),
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

/// A plugin filter: one of the four plugin names.
pub fn check_plugin(value: &str) -> Result<String, String> {
    ReplyPlugin::parse(value.trim()).map(|p| p.as_str().to_string())
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

/// Parses a JSON request body; an empty body is `{}`. Syntax errors are `invalid_json`, shape
/// errors (types, unknown members) `invalid_request`.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiResponse> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => invalid(format!("request body: {e}")),
            Category::Syntax | Category::Eof | Category::Io => ApiResponse::problem(
                400,
                "invalid_json",
                format!("request body is not valid JSON: {e}"),
            ),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Views (shared with `kheishctl replay`)

/// An address with every secret-bearing part redacted (see the module docs for the rule).
pub fn redacted_address(target: &ReplyTarget) -> String {
    if target.plugin != ReplyPlugin::Http {
        return target.address.clone();
    }
    let Ok(TargetAddress::Http(http)) = target.parsed() else {
        return REDACTED.to_string();
    };
    let url = redacted_url(&http.url);
    if !target.address.trim_start().starts_with('{') {
        return url;
    }
    // Written by hand to keep the stored member order (`url` first, headers as configured);
    // serde_json's map would sort them.
    let mut out = format!("{{\"url\":{}", json!(url));
    if !http.headers.is_empty() {
        let headers: Vec<String> = http
            .headers
            .iter()
            .map(|(name, _)| format!("{}:{}", json!(name), json!(REDACTED)))
            .collect();
        out.push_str(&format!(",\"headers\":{{{}}}", headers.join(",")));
    }
    if http.allow_private_network {
        out.push_str(",\"allow_private_network\":true");
    }
    out.push('}');
    out
}

/// `scheme://host[:port]` plus `/<redacted:XXXXXXXX>` when there is a path or query.
fn redacted_url(url: &url::Url) -> String {
    let base = crate::net::redact_target(url);
    let path = url.path();
    let query = url.query().unwrap_or("");
    if (path.is_empty() || path == "/") && query.is_empty() {
        return format!("{base}/");
    }
    let mut rest = path.to_string();
    if url.query().is_some() {
        rest.push('?');
        rest.push_str(query);
    }
    let digest = Sha256::digest(rest.as_bytes());
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("{base}/<redacted:{hex}>")
}

/// A reply target as views show it: the plugin and its redacted address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetView {
    pub plugin: &'static str,
    /// The address with secrets redacted ([`redacted_address`]).
    pub address: String,
}

impl TargetView {
    pub fn new(target: &ReplyTarget) -> TargetView {
        TargetView {
            plugin: target.plugin.as_str(),
            address: redacted_address(target),
        }
    }
}

/// One delivery as the API and `kheishctl replay --json` show it: the stored members with the
/// target redacted, times both as Unix ms and RFC 3339.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryView {
    pub delivery_id: String,
    pub output_id: String,
    pub run_id: String,
    pub session_id: String,
    /// `KIND/NAME` of the run's connector.
    pub connector: String,
    pub target: TargetView,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at_ms: i64,
    pub next_attempt_at: String,
    pub lease_owner: Option<String>,
    pub lease_expires_at_ms: Option<i64>,
    /// The last failure, already redacted by the transport.
    pub last_error: Option<String>,
    pub last_error_code: Option<String>,
    pub last_http_status: Option<u16>,
    pub progress: Option<Value>,
    pub created_at_ms: i64,
    pub created_at: String,
    pub updated_at_ms: i64,
    pub delivered_at_ms: Option<i64>,
    pub dead_lettered_at_ms: Option<i64>,
    pub resolution: Option<String>,
    pub resolved_at_ms: Option<i64>,
    pub replayed_from_delivery_id: Option<String>,
}

impl DeliveryView {
    pub fn new(d: &Delivery) -> DeliveryView {
        DeliveryView {
            delivery_id: d.delivery_id.clone(),
            output_id: d.output_id.clone(),
            run_id: d.run_id.clone(),
            session_id: d.session_id.clone(),
            connector: d.connector.clone(),
            target: TargetView::new(&d.target),
            status: d.status,
            attempts: d.attempts,
            next_attempt_at_ms: d.next_attempt_at_ms,
            next_attempt_at: rfc3339_ms(d.next_attempt_at_ms),
            lease_owner: d.lease_owner.clone(),
            lease_expires_at_ms: d.lease_expires_at_ms,
            last_error: d.last_error.clone(),
            last_error_code: d.last_error_code.clone(),
            last_http_status: d.last_http_status,
            progress: d.progress.clone(),
            created_at_ms: d.created_at_ms,
            created_at: rfc3339_ms(d.created_at_ms),
            updated_at_ms: d.updated_at_ms,
            delivered_at_ms: d.delivered_at_ms,
            dead_lettered_at_ms: d.dead_lettered_at_ms,
            resolution: d.resolution.clone(),
            resolved_at_ms: d.resolved_at_ms,
            replayed_from_delivery_id: d.replayed_from_delivery_id.clone(),
        }
    }
}

/// `{"deliveries":[…]}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
}

impl DeliveryList {
    pub fn new(deliveries: &[Delivery]) -> DeliveryList {
        DeliveryList {
            deliveries: deliveries.iter().map(DeliveryView::new).collect(),
        }
    }
}

/// One replay/resolve result: `result` is the item's kind (`would_replay`, `replayed`,
/// `existing_replay`, `would_resolve`, `resolved`, `not_dead_lettered`, `not_found`);
/// `delivery_id` the dead letter (or id) the item is about; `source` the dead letter that was
/// (or would be) replayed; `delivery` the record the result produced or found — the replay for
/// `replayed`/`existing_replay`, the dead letter itself for the resolve results, the delivery as
/// it is for `not_dead_lettered`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemView {
    pub result: &'static str,
    pub delivery_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_delivery_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<DeliveryView>,
}

impl ItemView {
    pub fn new(item: &ReplayItem) -> ItemView {
        let (delivery_id, new, delivery, source) = match item {
            ReplayItem::WouldReplay { source } => {
                (source.delivery_id.clone(), None, None, Some(source))
            }
            ReplayItem::Replayed { source, replay }
            | ReplayItem::ExistingReplay { source, replay } => (
                source.delivery_id.clone(),
                Some(replay.delivery_id.clone()),
                Some(replay),
                Some(source),
            ),
            ReplayItem::WouldResolve { source }
            | ReplayItem::Resolved { source }
            | ReplayItem::NotDeadLettered { source } => {
                (source.delivery_id.clone(), None, Some(source), None)
            }
            ReplayItem::NotFound { id } => (id.clone(), None, None, None),
        };
        ItemView {
            result: item.kind(),
            delivery_id,
            new_delivery_id: new,
            delivery: delivery.map(DeliveryView::new),
            source: source.map(DeliveryView::new),
        }
    }

    /// True for results that count as success (exit 0): everything but `not_found` and
    /// `not_dead_lettered`.
    pub fn is_success(&self) -> bool {
        !matches!(self.result, "not_found" | "not_dead_lettered")
    }
}

/// `{"items":[…]}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemList {
    pub items: Vec<ItemView>,
}

impl ItemList {
    pub fn new(items: &[ReplayItem]) -> ItemList {
        ItemList {
            items: items.iter().map(ItemView::new).collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

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

/// A store failure: the whole cause chain goes to the daemon log; the body names no paths.
fn store_problem(ctx: &RequestCtx<'_>, err: &StoreError) -> ApiResponse {
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    ctx.app
        .out
        .error(&format!("delivery control plane: {chain}"));
    match err {
        StoreError::Busy { .. } => ApiResponse::problem(
            503,
            "store_unavailable",
            "the state database is busy; retry shortly",
        )
        .with_header("Retry-After", "1"),
        _ => ApiResponse::problem(
            500,
            "store_error",
            "the state database failed; see the daemon log",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ConnectorKind;

    const NOW: i64 = 1_700_000_000_000;

    fn http(address: &str) -> String {
        let (target, _) = ReplyTarget::new(ReplyPlugin::Http, address).unwrap();
        redacted_address(&target)
    }

    fn fp(rest: &str) -> String {
        let digest = Sha256::digest(rest.as_bytes());
        digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn http_urls_keep_only_scheme_host_and_port() {
        assert_eq!(http("https://example.com"), "https://example.com/");
        assert_eq!(http("https://example.com/"), "https://example.com/");
        assert_eq!(
            http("https://hooks.slack.com/services/T0/B0/s3cr3tT0ken"),
            format!(
                "https://hooks.slack.com/<redacted:{}>",
                fp("/services/T0/B0/s3cr3tT0ken")
            )
        );
        assert_eq!(
            http("http://127.0.0.1:8080/sink?token=abc#frag"),
            format!("http://127.0.0.1:8080/<redacted:{}>", fp("/sink?token=abc"))
        );
        assert_eq!(
            http("https://api.telegram.org/bot123:ABC/sendMessage"),
            format!(
                "https://api.telegram.org/<redacted:{}>",
                fp("/bot123:ABC/sendMessage")
            )
        );
        assert_eq!(
            http("http://[::1]:9/x"),
            format!("http://[::1]:9/<redacted:{}>", fp("/x"))
        );
        // The same path gives the same fingerprint, a different one another.
        assert_eq!(http("https://e.com/a"), http("https://e.com/a"));
        assert_ne!(http("https://e.com/a"), http("https://e.com/b"));
    }

    #[test]
    fn http_json_addresses_redact_header_values() {
        let shown = http(
            r#"{"url":"https://e.com/hook?k=v","headers":{"X-Secret":"hunter2","X-Tenant":"t1"},"allow_private_network":true}"#,
        );
        let v: Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(
            v,
            json!({
                "url": format!("https://e.com/<redacted:{}>", fp("/hook?k=v")),
                "headers": {"X-Secret": REDACTED, "X-Tenant": REDACTED},
                "allow_private_network": true
            })
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("k=v"),
            "{shown}"
        );
        assert_eq!(
            http(r#"{"url":"https://e.com"}"#),
            r#"{"url":"https://e.com/"}"#
        );
    }

    #[test]
    fn other_plugins_and_broken_addresses() {
        let slack = ReplyTarget {
            plugin: ReplyPlugin::Slack,
            address: r#"{"connector":"support","channel_id":"C1"}"#.into(),
        };
        assert_eq!(redacted_address(&slack), slack.address);
        let broken = ReplyTarget {
            plugin: ReplyPlugin::Http,
            address: "https://user:pw@e.com/x".into(),
        };
        assert_eq!(redacted_address(&broken), REDACTED);
    }

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

    fn delivery(id: &str, status: DeliveryStatus) -> Delivery {
        Delivery {
            delivery_id: id.into(),
            output_id: "out_1".into(),
            run_id: "run_1".into(),
            session_id: "sess".into(),
            connector: "http/orders".into(),
            target: ReplyTarget {
                plugin: ReplyPlugin::Http,
                address: r#"{"url":"https://e.com/p?token=t0k","headers":{"X-S":"v4lue"}}"#.into(),
            },
            target_key: "k".into(),
            status,
            attempts: 1,
            next_attempt_at_ms: NOW,
            lease_owner: None,
            lease_expires_at_ms: None,
            last_error: None,
            last_error_code: None,
            last_http_status: None,
            progress: None,
            created_at_ms: NOW,
            updated_at_ms: NOW,
            delivered_at_ms: None,
            dead_lettered_at_ms: None,
            resolution: None,
            resolved_at_ms: None,
            replayed_from_delivery_id: None,
        }
    }

    #[test]
    fn item_views() {
        let source = delivery("dlv_src", DeliveryStatus::DeadLettered);
        let mut replay = delivery("dlv_new", DeliveryStatus::Pending);
        replay.replayed_from_delivery_id = Some("dlv_src".into());
        let v = serde_json::to_value(ItemView::new(&ReplayItem::Replayed {
            source: source.clone(),
            replay,
        }))
        .unwrap();
        assert_eq!(v["result"], "replayed");
        assert_eq!(v["delivery_id"], "dlv_src");
        assert_eq!(v["new_delivery_id"], "dlv_new");
        assert_eq!(v["delivery"]["replayed_from_delivery_id"], "dlv_src");
        assert_eq!(v["source"]["status"], "dead_lettered");
        assert_eq!(v["source"]["created_at"], "2023-11-14T22:13:20.000Z");
        assert!(v["source"].get("target_key").is_none());
        let text = v.to_string();
        assert!(!text.contains("t0k") && !text.contains("v4lue"), "{text}");

        let v =
            serde_json::to_value(ItemView::new(&ReplayItem::NotFound { id: "x".into() })).unwrap();
        assert_eq!(v, json!({"result": "not_found", "delivery_id": "x"}));
        let item = ItemView::new(&ReplayItem::NotDeadLettered {
            source: delivery("d", DeliveryStatus::Delivered),
        });
        assert!(!item.is_success());
        assert_eq!(item.delivery.unwrap().status, DeliveryStatus::Delivered);
        assert!(ItemView::new(&ReplayItem::WouldResolve { source }).is_success());
    }

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
