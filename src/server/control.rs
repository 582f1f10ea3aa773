//! Control-plane routes for sessions and runs (SPEC §5.1, §6.5, §11.1). The server loop calls
//! [`handle`] for these routes only after the admin token has been checked; this module parses
//! and validates the request, calls `store`, and maps every outcome to a response. Library
//! errors become problems here, in [`run_error`] and [`store_error`], and nowhere else.
//!
//! Every error is an `application/problem+json` response with a stable `code`:
//! `invalid_json` (body is not JSON), `invalid_request` (wrong member types, unknown members,
//! out-of-range values, unknown query parameters), `invalid_reply_target`, `missing_content`,
//! `session_not_found`, `run_not_found`, `run_not_claimed` (409, with `run_id` and `run_status`), and
//! `store_unavailable` (503, the database was busy or failed; the cause goes to the daemon log).
//! Bad input is always a 4xx.
//!
//! Claiming (`POST /v1/runs/claim`) is a long-poll without busy looping: [`claim_once`] reads the
//! `runs_queued` generation and tries to claim; when nothing is claimable the server waits
//! (asynchronously, holding no thread) until the generation moves (ingress queued a run), the
//! earliest lease expires (an expired claim makes a run claimable again without anyone
//! notifying), the daemon starts draining, or the wait ends, then looks again.
//! API claimers and the `--handler echo|exec` workers may run side by side: they all claim
//! through the same transaction and compete fairly, oldest run first.

use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};

use super::{response, ApiRequest, ApiResponse, RequestCtx, Route};
use crate::model::reply::ReplyTarget;
use crate::model::run::{Run, RunOutput, RunStatus};
use crate::model::{now_ms, parse_when, ConnectorId};
use crate::store::run_writes::Finish;
use crate::store::runs::{NewRunOutput, RunError, RunFilter, SessionChanges, MAX_LIST_LIMIT};
use crate::store::StoreError;
use crate::views::run_view;

/// Claim long-poll bounds (`wait_ms`), milliseconds.
const MAX_WAIT_MS: u64 = 60_000;
/// Claim lease bounds and default (`lease_ms`), milliseconds.
const MIN_LEASE_MS: u64 = 1_000;
const MAX_LEASE_MS: u64 = 3_600_000;
const DEFAULT_LEASE_MS: u64 = 60_000;
/// The most runs one claim may take (`max`).
const MAX_CLAIM_BATCH: u32 = 64;
/// Longest session id, persona id and run error text accepted (characters).
const MAX_ID_CHARS: usize = 256;
const MAX_ERROR_CHARS: usize = 4_096;
/// Most parts one output may carry (the same bound as ingress `input_items`).
const MAX_PARTS: usize = 64;
/// Most reply targets one list may carry.
const MAX_TARGETS: usize = 32;

/// Early-return type of the route functions: the error side is already a response.
type Reply = Result<ApiResponse, ApiResponse>;

/// Handles a session or run route (admin auth has already passed).
pub fn handle(ctx: &RequestCtx<'_>, route: &Route, req: &ApiRequest) -> ApiResponse {
    let res = match route {
        Route::PutSession { id } => put_session(ctx, id, req),
        Route::GetSession { id } => get_session(ctx, id),
        Route::PutSessionReplyTargets { id } => put_session_reply_targets(ctx, id, req),
        Route::ListRuns => list_runs(ctx, req),
        Route::GetRun { id } => get_run(ctx, id),
        Route::ClaimRun => claim_run(ctx, req),
        Route::RunOutput { id } => add_output(ctx, id, req),
        Route::CompleteRun { id } => complete_run(ctx, id, req),
        Route::FailRun { id } => fail_run(ctx, id, req),
        other => Err(ApiResponse::problem(
            404,
            "not_found",
            format!("`{}` is not a session or run route", other.template()),
        )),
    };
    res.unwrap_or_else(|problem| problem)
}

// ---------------------------------------------------------------------------------------------
// Sessions

/// `PUT /v1/sessions/{id}` body. Absent members keep the stored value (defaults on create);
/// `null` clears a member.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutSessionBody {
    #[serde(default, deserialize_with = "present")]
    persona_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    capability_scope: Option<Option<Map<String, Value>>>,
    #[serde(default, deserialize_with = "present")]
    credential_scope: Option<Option<Map<String, Value>>>,
    #[serde(default, deserialize_with = "present")]
    reply_targets: Option<Option<Vec<TargetInput>>>,
    #[serde(default, deserialize_with = "present")]
    metadata: Option<Option<Map<String, Value>>>,
}

/// `PUT /v1/sessions/{id}/reply-targets` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplyTargetsBody {
    reply_targets: Vec<TargetInput>,
}

/// A reply target as sent: `address` is the address string, or (for convenience) the JSON
/// object that the string would contain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetInput {
    plugin: String,
    address: Value,
}

fn put_session(ctx: &RequestCtx<'_>, id: &str, req: &ApiRequest) -> Reply {
    check_id("session id", id)?;
    let body: PutSessionBody = parse_body(req)?;
    if let Some(Some(persona)) = &body.persona_id {
        check_id("`persona_id`", persona)?;
    }
    let changes = SessionChanges {
        persona_id: body.persona_id,
        capability_scope: body.capability_scope.map(Option::unwrap_or_default),
        credential_scope: body.credential_scope.map(Option::unwrap_or_default),
        reply_targets: match body.reply_targets {
            Some(targets) => Some(reply_targets(
                ctx,
                "reply_targets",
                &targets.unwrap_or_default(),
            )?),
            None => None,
        },
        metadata: body.metadata.map(Option::unwrap_or_default),
    };
    let (session, created) = ctx
        .store
        .put_session(id, &changes, now_ms())
        .map_err(|e| store_error(ctx, &e))?;
    Ok(ApiResponse::json(if created { 201 } else { 200 }, &session))
}

fn get_session(ctx: &RequestCtx<'_>, id: &str) -> Reply {
    match ctx
        .store
        .get_session(id)
        .map_err(|e| store_error(ctx, &e))?
    {
        Some(session) => Ok(ApiResponse::json(200, &session)),
        None => Err(session_not_found(id)),
    }
}

fn put_session_reply_targets(ctx: &RequestCtx<'_>, id: &str, req: &ApiRequest) -> Reply {
    let body: ReplyTargetsBody = parse_body(req)?;
    let targets = reply_targets(ctx, "reply_targets", &body.reply_targets)?;
    let session = ctx
        .store
        .set_session_reply_targets(id, &targets, now_ms())
        .map_err(|e| run_error(ctx, &e))?;
    Ok(ApiResponse::json(200, &session))
}

// ---------------------------------------------------------------------------------------------
// Runs

/// `POST /v1/runs/claim` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody {
    wait_ms: Option<u64>,
    lease_ms: Option<u64>,
    connector: Option<String>,
    /// Claim up to this many runs at once (1..=64) and answer `{"runs": [...]}`; absent: one
    /// run, answered as the run view itself.
    max: Option<u32>,
}

/// `POST /v1/runs/{id}/output` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputBody {
    content: Option<String>,
    parts: Option<Vec<Value>>,
    reply_targets: Option<Vec<TargetInput>>,
}

/// `POST /v1/runs/{id}/complete` body (empty or `{}`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteBody {}

/// `POST /v1/runs/{id}/fail` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailBody {
    error: Option<String>,
}

fn list_runs(ctx: &RequestCtx<'_>, req: &ApiRequest) -> Reply {
    let now = now_ms();
    let filter = RunFilter {
        now_ms: Some(now),
        ..run_filter(&req.query, now)?
    };
    let runs = ctx
        .store
        .list_runs(&filter)
        .map_err(|e| store_error(ctx, &e))?;
    let views: Vec<Value> = runs
        .into_iter()
        .map(|r| Value::Object(run_view(&r.as_of(now))))
        .collect();
    Ok(ApiResponse::json(200, &json!({ "runs": views })))
}

fn get_run(ctx: &RequestCtx<'_>, id: &str) -> Reply {
    let run = ctx
        .store
        .get_run(id)
        .map_err(|e| store_error(ctx, &e))?
        .ok_or_else(|| run_not_found(id))?
        .as_of(now_ms());
    let outputs = ctx
        .store
        .list_outputs(id)
        .map_err(|e| store_error(ctx, &e))?;
    let mut view = run_view(&run);
    view.insert("outputs".into(), json!(outputs));
    Ok(ApiResponse::json(200, &view))
}

/// A parsed `POST /v1/runs/claim`: what to claim, for whom, and how long the caller may wait.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// `wait_ms`: how long the server may wait for a claimable run (0: look once).
    pub wait: Duration,
    lease_ms: u64,
    connector: Option<ConnectorId>,
    owner: String,
    /// `max`: a batch claim answered `{"runs": [...]}` (absent: one run, the view itself).
    max: Option<u32>,
}

/// The outcome of one look at the run queue.
pub enum ClaimLook {
    /// A run was claimed: the 200 answer.
    Claimed(ApiResponse),
    /// Nothing claimable. `seen` is the `runs_queued` generation read before looking (wait past
    /// it); `retry_in` is when the earliest claim lease expires (which makes a run claimable
    /// without a notification), when the request may wait.
    Nothing {
        seen: u64,
        retry_in: Option<Duration>,
    },
}

/// Parses and checks a claim request (no database access).
pub fn claim_request(req: &ApiRequest) -> Result<ClaimRequest, ApiResponse> {
    let body: ClaimBody = parse_body(req)?;
    let wait_ms = body.wait_ms.unwrap_or(0);
    if wait_ms > MAX_WAIT_MS {
        return Err(invalid(format!(
            "`wait_ms` must be between 0 and {MAX_WAIT_MS} (got {wait_ms})"
        )));
    }
    let lease_ms = body.lease_ms.unwrap_or(DEFAULT_LEASE_MS);
    if !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&lease_ms) {
        return Err(invalid(format!(
            "`lease_ms` must be between {MIN_LEASE_MS} and {MAX_LEASE_MS} (got {lease_ms})"
        )));
    }
    let connector = match &body.connector {
        Some(text) => Some(
            text.parse::<ConnectorId>()
                .map_err(|e| invalid(format!("`connector`: {e}")))?,
        ),
        None => None,
    };
    if let Some(max) = body.max {
        if !(1..=MAX_CLAIM_BATCH).contains(&max) {
            return Err(invalid(format!(
                "`max` must be between 1 and {MAX_CLAIM_BATCH} (got {max})"
            )));
        }
    }
    let owner = match req.remote {
        Some(ip) => format!("control-plane:{ip}"),
        None => "control-plane:unknown".to_string(),
    };
    Ok(ClaimRequest {
        wait: Duration::from_millis(wait_ms),
        lease_ms,
        connector,
        owner,
        max: body.max,
    })
}

/// One look at the queue: claims the oldest claimable run if there is one. The server calls it
/// again after each wait (an async wait: no thread is held while a long-poll waits).
pub fn claim_once(ctx: &RequestCtx<'_>, claim: &ClaimRequest) -> Result<ClaimLook, ApiResponse> {
    // Read the generation BEFORE looking, so a run queued between the look and the wait still
    // wakes the waiter.
    let seen = ctx.app.runs_queued.generation();
    let now = now_ms();
    let connector = claim.connector.as_ref().map(|c| (c.kind, c.name.as_str()));
    // Through the group-commit writer: the claim shares the next fsync with accepted events
    // and handler settlements, and is durable before it is answered.
    let claimed = ctx
        .app
        .writer
        .claim_runs(
            &claim.owner,
            claim.lease_ms as i64,
            claim.max.unwrap_or(1),
            connector,
            now,
        )
        .map_err(|e| store_error(ctx, &e))?;
    if !claimed.is_empty() {
        let views: Vec<Map<String, Value>> = claimed
            .iter()
            .map(|run| {
                ctx.app
                    .out
                    .debug(&format!("run {} claimed by {}", run.run_id, claim.owner));
                let mut view = run_view(run);
                view.insert("lease_expires_at_ms".into(), json!(run.claim_expires_at_ms));
                view
            })
            .collect();
        let answer = match claim.max {
            Some(_) => ApiResponse::json(200, &json!({ "runs": views })),
            None => ApiResponse::json(200, &views[0]),
        };
        return Ok(ClaimLook::Claimed(answer));
    }
    let retry_in = if claim.wait.is_zero() {
        None
    } else {
        ctx.store
            .next_claim_expiry(connector)
            .map_err(|e| store_error(ctx, &e))?
            .map(|at| Duration::from_millis((at - now).max(0) as u64 + 1))
    };
    Ok(ClaimLook::Nothing { seen, retry_in })
}

/// The claim route run synchronously: one look, no wait (the server runs the long-poll itself
/// with [`claim_request`] and [`claim_once`]).
fn claim_run(ctx: &RequestCtx<'_>, req: &ApiRequest) -> Reply {
    let claim = claim_request(req)?;
    match claim_once(ctx, &claim)? {
        ClaimLook::Claimed(answer) => Ok(answer),
        ClaimLook::Nothing { .. } => Ok(ApiResponse::empty(204)),
    }
}

fn add_output(ctx: &RequestCtx<'_>, id: &str, req: &ApiRequest) -> Reply {
    let body: OutputBody = parse_body(req)?;
    let output = new_output(body)?;
    if let Some(targets) = &output.reply_targets {
        check_targets(ctx, "reply_targets", targets)?;
    }
    // Outputs, completions and failures go through the group-commit writer, sharing its fsync
    // with accepted events and other settlements (API workers get the handlers' throughput).
    let (recorded, queued) = ctx
        .app
        .writer
        .add_output(id, None, output, now_ms())
        .map_err(|e| run_error(ctx, &e))?;
    if queued.has_pending() {
        ctx.app.deliveries_queued.notify_all();
    }
    Ok(ApiResponse::json(201, &output_view(&recorded)))
}

fn complete_run(ctx: &RequestCtx<'_>, id: &str, req: &ApiRequest) -> Reply {
    let CompleteBody {} = parse_body(req)?;
    let run = finish(ctx, id, RunStatus::Completed, None)?;
    Ok(ApiResponse::json(200, &run_view(&run)))
}

fn fail_run(ctx: &RequestCtx<'_>, id: &str, req: &ApiRequest) -> Reply {
    let body: FailBody = parse_body(req)?;
    let error = match body.error {
        Some(error) if error.chars().count() > MAX_ERROR_CHARS => {
            return Err(invalid(format!(
                "`error` must be at most {MAX_ERROR_CHARS} characters"
            )))
        }
        Some(error) if !error.trim().is_empty() => error,
        _ => "failed through the control plane".to_string(),
    };
    let run = finish(ctx, id, RunStatus::Failed, Some(error))?;
    Ok(ApiResponse::json(200, &run_view(&run)))
}

/// Ends a claimed run (any claim owner) through the group-commit writer.
fn finish(
    ctx: &RequestCtx<'_>,
    id: &str,
    status: RunStatus,
    error: Option<String>,
) -> Result<Run, ApiResponse> {
    let item = Finish {
        run_id: id.to_string(),
        owner: None,
        output: None,
        status,
        error,
    };
    let mut results = ctx.app.writer.finish_runs(vec![item], now_ms());
    let result = results
        .pop()
        .unwrap_or_else(|| unreachable!("finish_runs answers once per item"));
    result
        .map(|(run, _, _)| run)
        .map_err(|e| run_error(ctx, &e))
}

// ---------------------------------------------------------------------------------------------
// Views

fn output_view(output: &RunOutput) -> Value {
    json!(output)
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation (pure)

/// Deserialises a member that may be absent (`None`), `null` (`Some(None)`) or a value.
fn present<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Parses a JSON request body; an empty body is `{}`. Syntax errors are `invalid_json`, shape
/// errors (types, unknown members) `invalid_request`.
fn parse_body<T: serde::de::DeserializeOwned>(req: &ApiRequest) -> Result<T, ApiResponse> {
    parse_json(&req.body)
}

/// [`parse_body`] on raw bytes; the one JSON-body parser of the control plane (deliveries use
/// it too).
pub(super) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiResponse> {
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

/// Session and persona ids: 1..=256 characters, no control characters.
fn check_id(what: &str, id: &str) -> Result<(), ApiResponse> {
    if id.trim().is_empty() {
        return Err(invalid(format!("{what} must not be empty")));
    }
    if id.chars().count() > MAX_ID_CHARS {
        return Err(invalid(format!(
            "{what} must be at most {MAX_ID_CHARS} characters"
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

/// Validates a list of reply targets sent in member `member`; the error names the index.
fn reply_targets(
    ctx: &RequestCtx<'_>,
    member: &str,
    inputs: &[TargetInput],
) -> Result<Vec<ReplyTarget>, ApiResponse> {
    let targets = parse_targets(member, inputs)?;
    check_targets(ctx, member, &targets)?;
    Ok(targets)
}

/// The connector check of [`ReplyTarget`]s (an external target names an external connector).
fn check_targets(
    ctx: &RequestCtx<'_>,
    member: &str,
    targets: &[ReplyTarget],
) -> Result<(), ApiResponse> {
    let set = ctx.app.connectors();
    for (idx, t) in targets.iter().enumerate() {
        if let Err(why) = set.check_target(t) {
            let mut extra = Map::new();
            extra.insert("path".into(), json!(format!("$.{member}[{idx}]")));
            return Err(ApiResponse::problem_with(
                400,
                "invalid_reply_target",
                format!("`{member}[{idx}]`: {why}"),
                extra,
            ));
        }
    }
    Ok(())
}

/// The address rules of each target (no connector lookup).
fn parse_targets(member: &str, inputs: &[TargetInput]) -> Result<Vec<ReplyTarget>, ApiResponse> {
    if inputs.len() > MAX_TARGETS {
        return Err(invalid(format!(
            "`{member}` may hold at most {MAX_TARGETS} targets (got {})",
            inputs.len()
        )));
    }
    inputs
        .iter()
        .enumerate()
        .map(|(idx, input)| {
            reply_target(input).map_err(|why| {
                let mut extra = Map::new();
                extra.insert("path".into(), json!(format!("$.{member}[{idx}]")));
                ApiResponse::problem_with(
                    400,
                    "invalid_reply_target",
                    format!("`{member}[{idx}]`: {why}"),
                    extra,
                )
            })
        })
        .collect()
}

fn reply_target(input: &TargetInput) -> Result<ReplyTarget, String> {
    ReplyTarget::from_json(&input.plugin, &input.address)
}

/// Validates an output body: content and/or parts, parts are objects with a string `type`.
fn new_output(body: OutputBody) -> Result<NewRunOutput, ApiResponse> {
    let content = body.content.filter(|c| !c.is_empty());
    let parts = body.parts.filter(|p| !p.is_empty());
    if content.is_none() && parts.is_none() {
        return Err(ApiResponse::problem(
            400,
            "missing_content",
            "an output needs a non-empty `content` or `parts`",
        ));
    }
    if let Some(parts) = &parts {
        if parts.len() > MAX_PARTS {
            return Err(invalid(format!(
                "`parts` may hold at most {MAX_PARTS} items (got {})",
                parts.len()
            )));
        }
        for (idx, part) in parts.iter().enumerate() {
            if !part.get("type").is_some_and(Value::is_string) {
                return Err(invalid(format!(
                    "`parts[{idx}]` must be a JSON object with a string `type`"
                )));
            }
        }
    }
    let reply_targets = match &body.reply_targets {
        Some(targets) => Some(parse_targets("reply_targets", targets)?),
        None => None,
    };
    Ok(NewRunOutput {
        content,
        parts,
        reply_targets,
    })
}

/// `GET /v1/runs` query parameters: `status`, `connector` (KIND/NAME), `session`, `since`
/// (WHEN), `limit` (1..=500). Unknown or repeated parameters are refused.
fn run_filter(query: &[(String, String)], now_ms: i64) -> Result<RunFilter, ApiResponse> {
    const ALLOWED: [&str; 5] = ["status", "connector", "session", "since", "limit"];
    let mut filter = RunFilter::default();
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in query {
        let Some(name) = ALLOWED.iter().copied().find(|k| k == key) else {
            return Err(invalid(format!(
                "unknown query parameter `{key}`; allowed: {}",
                ALLOWED.join(", ")
            )));
        };
        if seen.contains(&name) {
            return Err(invalid(format!("query parameter `{name}` is repeated")));
        }
        seen.push(name);
        match name {
            "status" => {
                filter.status = Some(RunStatus::parse(value).ok_or_else(|| {
                    invalid(format!(
                        "`status`: `{value}` is not one of queued, claimed, completed, failed"
                    ))
                })?)
            }
            "connector" => {
                let id: ConnectorId = value
                    .parse()
                    .map_err(|e| invalid(format!("`connector`: {e}")))?;
                filter.connector = Some((id.kind, id.name.as_str().to_string()));
            }
            "session" => filter.session_id = Some(value.clone()),
            "since" => {
                filter.since_ms =
                    Some(parse_when(value, now_ms).map_err(|e| invalid(format!("`since`: {e}")))?)
            }
            _ => {
                let limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                    .ok_or_else(|| {
                        invalid(format!(
                            "`limit` must be a number between 1 and {MAX_LIST_LIMIT}"
                        ))
                    })?;
                filter.limit = Some(limit);
            }
        }
    }
    Ok(filter)
}

// ---------------------------------------------------------------------------------------------
// Errors → responses (the one table for this module)

fn invalid(detail: impl Into<String>) -> ApiResponse {
    ApiResponse::problem(400, "invalid_request", detail)
}

fn run_not_found(id: &str) -> ApiResponse {
    ApiResponse::problem(404, "run_not_found", format!("run `{id}` does not exist"))
}

fn session_not_found(id: &str) -> ApiResponse {
    ApiResponse::problem(
        404,
        "session_not_found",
        format!("session `{id}` does not exist; create it with PUT /v1/sessions/{{id}}"),
    )
}

/// Maps a [`RunError`] to its response.
fn run_error(ctx: &RequestCtx<'_>, err: &RunError) -> ApiResponse {
    match err {
        RunError::NotFound { run_id } => run_not_found(run_id),
        RunError::SessionNotFound { session_id } => session_not_found(session_id),
        RunError::Conflict { run_id, status, .. } => {
            let mut extra = Map::new();
            extra.insert("run_id".into(), json!(run_id));
            // `status` is the problem's own HTTP status member (RFC 9457).
            extra.insert("run_status".into(), json!(status));
            ApiResponse::problem_with(409, "run_not_claimed", err.to_string(), extra)
        }
        RunError::InvalidTransition { .. } => {
            ctx.app.out.error(&format!("control plane: {err}"));
            ApiResponse::problem(500, "internal_error", "the run could not be changed")
        }
        RunError::Store(e) => store_error(ctx, e),
    }
}

/// A store failure: the one answer of [`response::store_error`].
fn store_error(ctx: &RequestCtx<'_>, err: &StoreError) -> ApiResponse {
    response::store_error(&ctx.app.out, "control plane", err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(resp: &ApiResponse) -> String {
        let v: Value = serde_json::from_slice(&resp.body).unwrap();
        v["code"].as_str().unwrap_or_default().to_string()
    }

    fn detail(resp: &ApiResponse) -> String {
        let v: Value = serde_json::from_slice(&resp.body).unwrap();
        v["detail"].as_str().unwrap_or_default().to_string()
    }

    fn check_body<T: serde::de::DeserializeOwned>(body: &str, expected_code: Option<&str>) {
        match (parse_json::<T>(body.as_bytes()), expected_code) {
            (Ok(_), None) => {}
            (Err(resp), Some(c)) => {
                assert_eq!(resp.status, 400, "{body}");
                assert_eq!(code(&resp), c, "{body}: {}", detail(&resp));
            }
            (Ok(_), Some(c)) => panic!("{body}: expected {c}"),
            (Err(resp), None) => panic!("{body}: unexpected {}", detail(&resp)),
        }
    }

    #[test]
    fn bodies() {
        check_body::<ClaimBody>("", None);
        check_body::<ClaimBody>("  \n", None);
        check_body::<ClaimBody>(
            r#"{"wait_ms":10,"lease_ms":1000,"connector":"http/a"}"#,
            None,
        );
        check_body::<ClaimBody>(r#"{"wait":10}"#, Some("invalid_request"));
        check_body::<ClaimBody>(r#"{"wait_ms":-1}"#, Some("invalid_request"));
        check_body::<ClaimBody>(r#"{"wait_ms":"1"}"#, Some("invalid_request"));
        check_body::<ClaimBody>("[]", Some("invalid_request"));
        check_body::<ClaimBody>("{", Some("invalid_json"));
        check_body::<ClaimBody>("\u{0}", Some("invalid_json"));
        check_body::<CompleteBody>("{}", None);
        check_body::<CompleteBody>(r#"{"x":1}"#, Some("invalid_request"));
        check_body::<OutputBody>(r#"{"content":"hi","extra":true}"#, Some("invalid_request"));
        check_body::<PutSessionBody>(r#"{"persona_id":null,"metadata":{"a":1}}"#, None);
        check_body::<PutSessionBody>(r#"{"metadata":[1]}"#, Some("invalid_request"));
        check_body::<ReplyTargetsBody>("{}", Some("invalid_request"));
    }

    #[test]
    fn null_and_absent_members_differ() {
        let body: PutSessionBody = parse_json(br#"{"persona_id":null}"#).unwrap();
        assert_eq!(body.persona_id, Some(None));
        assert_eq!(body.metadata, None);
        let body: PutSessionBody = parse_json(br#"{"persona_id":"p"}"#).unwrap();
        assert_eq!(body.persona_id, Some(Some("p".into())));
    }

    fn targets(json_text: &str) -> Result<Vec<ReplyTarget>, ApiResponse> {
        let inputs: Vec<TargetInput> = serde_json::from_str(json_text).unwrap();
        parse_targets("reply_targets", &inputs)
    }

    #[test]
    fn reply_targets_are_validated_with_their_index() {
        let ok = targets(
            r#"[{"plugin":"http","address":"https://example.com/h"},
                {"plugin":"http","address":{"url":"https://example.com","headers":{"X-A":"1"}}}]"#,
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert!(ok[1].address.starts_with('{'));

        let err = targets(
            r#"[{"plugin":"http","address":"https://example.com/h"},
                {"plugin":"http","address":{"url":"https://e.com","headers":{"Cookie":"x"}}}]"#,
        )
        .unwrap_err();
        assert_eq!(err.status, 400);
        assert_eq!(code(&err), "invalid_reply_target");
        assert!(
            detail(&err).starts_with("`reply_targets[1]`"),
            "{}",
            detail(&err)
        );

        let err = targets(r#"[{"plugin":"smtp","address":"x"}]"#).unwrap_err();
        assert!(detail(&err).contains("unknown plugin"), "{}", detail(&err));
        let err = targets(r#"[{"plugin":"http","address":5}]"#).unwrap_err();
        assert!(
            detail(&err).contains("must be a string"),
            "{}",
            detail(&err)
        );
        let err = targets(r#"[{"plugin":"http","address":"https://u:p@e.com"}]"#).unwrap_err();
        assert!(!detail(&err).contains("u:p"), "never echoes credentials");
    }

    #[test]
    fn outputs_need_content_or_parts() {
        let out = |text: &str| new_output(serde_json::from_str(text).unwrap());
        assert!(out(r#"{"content":"hi"}"#).is_ok());
        assert!(out(r#"{"parts":[{"type":"text","text":"hi"}]}"#).is_ok());
        assert_eq!(code(&out("{}").unwrap_err()), "missing_content");
        assert_eq!(
            code(&out(r#"{"content":""}"#).unwrap_err()),
            "missing_content"
        );
        assert_eq!(
            code(&out(r#"{"parts":[1]}"#).unwrap_err()),
            "invalid_request"
        );
        assert_eq!(
            code(
                &out(r#"{"content":"x","reply_targets":[{"plugin":"http","address":"nope"}]}"#)
                    .unwrap_err()
            ),
            "invalid_reply_target"
        );
        let explicit_none = out(r#"{"content":"x","reply_targets":[]}"#).unwrap();
        assert_eq!(explicit_none.reply_targets, Some(vec![]));
    }

    fn filter(pairs: &[(&str, &str)]) -> Result<RunFilter, ApiResponse> {
        let query: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        run_filter(&query, 1_700_000_000_000)
    }

    #[test]
    fn run_list_queries() {
        let f = filter(&[
            ("status", "queued"),
            ("connector", "http/orders"),
            ("session", "s1"),
            ("since", "10m"),
            ("limit", "500"),
        ])
        .unwrap();
        assert_eq!(f.status, Some(RunStatus::Queued));
        assert_eq!(
            f.connector,
            Some((crate::model::ConnectorKind::Http, "orders".into()))
        );
        assert_eq!(f.session_id.as_deref(), Some("s1"));
        assert_eq!(f.since_ms, Some(1_700_000_000_000 - 600_000));
        assert_eq!(f.limit, Some(500));
        for bad in [
            ("status", "done"),
            ("connector", "orders"),
            ("since", "soon"),
            ("limit", "0"),
            ("limit", "501"),
            ("limit", "x"),
            ("color", "red"),
        ] {
            let err = filter(&[bad]).unwrap_err();
            assert_eq!(
                (err.status, code(&err)),
                (400, "invalid_request".into()),
                "{bad:?}"
            );
        }
        assert!(filter(&[("status", "queued"), ("status", "failed")]).is_err());
    }

    #[test]
    fn ids() {
        assert!(check_id("session id", "http:orders:abc").is_ok());
        assert!(check_id("session id", " ").is_err());
        assert!(check_id("session id", "a\nb").is_err());
        assert!(check_id("session id", &"x".repeat(257)).is_err());
    }
}
