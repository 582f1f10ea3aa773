//! External sidecar ingress (SPEC §10.2): `POST /v1/connectors/external/{name}/events` (one
//! event) and `/events/batch` (up to 64), the wire format the Kheish external connector SDK
//! speaks. This module authenticates the request (the connector's `shared_token`, grace
//! window honoured), parses each event into a kind-neutral [`Event`] for the shared
//! [`pipeline`](super::pipeline), and turns the pipeline's answers into the protocol's
//! bodies. It writes nothing itself.
//!
//! What is an HTTP error and what is a `rejected` answer: the request as a whole is refused
//! with a problem response only when it is not the protocol's envelope at all — unknown
//! connector (404), body too large (413), bad or missing token (401), a body that is not a JSON
//! object or a batch whose `events` is not an array of at most 64 (400). Everything about ONE
//! event (its protocol version, blank or oversized members, content shape, session, a reused
//! `event_id`) is a 200 answer with `status: rejected` and a `reason`, because that is what
//! sidecars read. Two per-event conditions keep their HTTP form on `/events` only: a
//! rate-limited event (429 `external_ingress_rate_limited`) and a state database that cannot
//! commit (503); in a batch they are the items `rate_limited` and `error`.
//!
//! Per-event order: protocol version, `event_id`, the other members (blank values, shapes and
//! limits of §6.7), `instance_id` against the running `child_process` sidecar, then the
//! pipeline (receipt, session, rate limit, the accepting transaction).

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::fingerprint::fingerprint_without;
use super::http::{check_bearer, Inbound};
use super::payload::{self, invalid, ContentRules, Mixing};
use super::pipeline::{self, Done, Event, IngressCtx, ReceiptKey};
use super::{receipt_key, sha256_hex, AcceptStatus, Answer, EventOutcome, IngressError};
use crate::config::ExternalMode;
use crate::model::reply::{ReplyPlugin, ReplyTarget};
use crate::model::ConnectorKind;
use crate::registry::{ConnectorSet, ExternalRuntime, Sidecars};
use crate::sessions::SessionRequest;

/// Request body cap of both external ingress routes (SPEC §5).
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;
/// Most events in one `/events/batch` request.
pub const MAX_BATCH_EVENTS: usize = 64;
/// The ingress protocol versions this build accepts; an event without one is the newest.
pub const MIN_PROTOCOL_VERSION: u64 = 1;
pub const MAX_PROTOCOL_VERSION: u64 = 2;
/// Longest `event_id`, `instance_id`, `intent`, `routing_key`, relation member, thread-path
/// segment, actor and source kind, in bytes.
const MAX_TEXT_LEN: usize = 512;
/// Most thread-path segments (each one is a binding key).
const MAX_THREAD_SEGMENTS: usize = 32;
/// The actor of an event that names none.
const DEFAULT_ACTOR: &str = "external-user";

/// The exact reason sidecars look for before falling back to protocol version 1.
pub fn unsupported_version_reason(version: u64) -> String {
    format!(
        "unsupported protocol_version {version}; supported range is \
         {MIN_PROTOCOL_VERSION}..={MAX_PROTOCOL_VERSION}"
    )
}

/// Why one event was rejected (a 200 answer, not an HTTP error), and its id when it had one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rejection {
    event_id: Option<String>,
    reason: String,
}

/// `POST /v1/connectors/external/{name}/events` for connector `name` of `set` (the server's
/// route-table entry): one event, answered 200 with `{"event_id","status",...}`.
pub fn accept_event(
    ctx: &IngressCtx<'_>,
    set: &ConnectorSet,
    name: &str,
    req: &Inbound<'_>,
    done: Done,
) {
    let Some(rt) = set.external.get(name) else {
        return done(Err(not_found(name)));
    };
    if let Err(refusal) = authenticate(rt, req, ctx.now_ms) {
        return done(Err(refusal));
    }
    let obj = match object_body(req.body) {
        Ok(obj) => obj,
        Err(refusal) => return done(Err(refusal)),
    };
    match event_with(rt, &obj, &Version::Default, ctx.sidecars, ctx.now_ms) {
        Err(rejection) => {
            let (body, outcome) = rejected(rejection);
            done(Ok(single(body, outcome)))
        }
        Ok((event_id, event)) => pipeline::accept(
            ctx,
            event,
            Box::new(move |answer| {
                done(match item(&event_id, answer) {
                    Item::Answer(body, outcome) => Ok(single(body, outcome)),
                    // A single event keeps the HTTP form of these two (429, 503).
                    Item::Refusal(refusal) => Err(refusal),
                })
            }),
        ),
    }
}

/// `POST /v1/connectors/external/{name}/events/batch`: `{"protocol_version","events":[...]}`,
/// answered 200 `{"results":[...]}` in request order. The size of the batch is checked before
/// authentication (issue 11), any other malformed body after it; events are independent (non-atomic), but every accepted one
/// goes to the writer in the same message, so the batch shares one commit.
pub fn accept_batch(
    ctx: &IngressCtx<'_>,
    set: &ConnectorSet,
    name: &str,
    req: &Inbound<'_>,
    done: Done,
) {
    let Some(rt) = set.external.get(name) else {
        return done(Err(not_found(name)));
    };
    // Only a batch over the limit is refused before authentication (issue 11); any other
    // malformed body is answered after it, in SPEC §6.1's order (401 before 400).
    let envelope = batch_envelope(req.body);
    if let Err(BatchRefusal::TooLarge(refusal)) = envelope {
        return done(Err(refusal));
    }
    if let Err(refusal) = authenticate(rt, req, ctx.now_ms) {
        return done(Err(refusal));
    }
    let (obj, events) = match envelope {
        Ok(envelope) => envelope,
        Err(refusal) => return done(Err(refusal.into_error())),
    };
    let version = Version::Envelope(obj.get("protocol_version").cloned());
    let collector = Arc::new(Mutex::new(Collector {
        slots: vec![None; events.len()],
        remaining: events.len(),
        done: Some(done),
    }));
    let mut submitted = Vec::new();
    for (idx, raw) in events.iter().enumerate() {
        let parsed = match raw {
            Value::Object(event) => event_with(rt, event, &version, ctx.sidecars, ctx.now_ms),
            _ => Err(Rejection {
                event_id: None,
                reason: invalid(format!("$.events[{idx}]"), "must be a JSON object").to_string(),
            }),
        };
        match parsed {
            Err(rejection) => {
                let (body, outcome) = rejected(rejection);
                Collector::fill(&collector, idx, body, outcome);
            }
            Ok((event_id, event)) => {
                let collector = Arc::clone(&collector);
                let done: Done = Box::new(move |answer| {
                    let (body, outcome) = match item(&event_id, answer) {
                        Item::Answer(body, outcome) => (body, outcome),
                        Item::Refusal(refusal) => batch_refusal(&event_id, &refusal),
                    };
                    Collector::fill(&collector, idx, body, outcome);
                });
                submitted.push((event, done));
            }
        }
    }
    if events.is_empty() {
        Collector::finish_empty(&collector);
    }
    pipeline::accept_all(ctx, submitted);
}

fn not_found(name: &str) -> IngressError {
    IngressError::ConnectorNotFound {
        kind: ConnectorKind::External,
        name: name.to_string(),
    }
}

/// The shared token (with its grace value), unless the connector allows unauthenticated
/// ingress. A configured token is always required.
pub fn authenticate(
    rt: &ExternalRuntime,
    req: &Inbound<'_>,
    now_ms: i64,
) -> Result<(), IngressError> {
    match &rt.shared_token {
        Some(token) => check_bearer(token, req, now_ms),
        None if rt.config.common.allow_unauthenticated_ingress => Ok(()),
        None => Err(IngressError::Unauthorized {
            detail: "connector has no shared token; configure `shared_token` or \
                     `allow_unauthenticated_ingress = true`"
                .into(),
        }),
    }
}

/// Why a batch body is not one (both are 400s).
#[derive(Debug)]
enum BatchRefusal {
    /// More than [`MAX_BATCH_EVENTS`] events: refused before authentication (issue 11).
    TooLarge(IngressError),
    /// Not JSON, not an object, no `events` array: refused after authentication (SPEC §6.1).
    Malformed(IngressError),
}

impl BatchRefusal {
    fn into_error(self) -> IngressError {
        match self {
            BatchRefusal::TooLarge(e) | BatchRefusal::Malformed(e) => e,
        }
    }
}

/// A batch body: the envelope object and its events, or the 400 that says why it is not one.
fn batch_envelope(body: &[u8]) -> Result<(Map<String, Value>, Vec<Value>), BatchRefusal> {
    let mut obj = object_body(body).map_err(BatchRefusal::Malformed)?;
    let events = match obj.remove("events") {
        Some(Value::Array(events)) => events,
        _ => {
            return Err(BatchRefusal::Malformed(invalid(
                "$.events",
                "must be an array of event objects",
            )))
        }
    };
    if events.len() > MAX_BATCH_EVENTS {
        return Err(BatchRefusal::TooLarge(invalid(
            "$.events",
            format!(
                "{} events; a batch holds at most {MAX_BATCH_EVENTS}: split it",
                events.len()
            ),
        )));
    }
    Ok((obj, events))
}

/// Parses a request body as [`accept_event`] (`batch = false`) or [`accept_batch`] does,
/// without authentication or the store: the envelope's refusal, or per event its trimmed id or
/// its rejection reason. The entry point of the `external_events` fuzz target (see
/// `crate::fuzzing`).
#[doc(hidden)]
pub fn check_request(
    rt: &ExternalRuntime,
    batch: bool,
    body: &[u8],
    sidecars: &Sidecars,
    now_ms: i64,
) -> Result<Vec<Result<String, String>>, IngressError> {
    let (version, events) = if batch {
        let (obj, events) = batch_envelope(body).map_err(BatchRefusal::into_error)?;
        (
            Version::Envelope(obj.get("protocol_version").cloned()),
            events,
        )
    } else {
        (Version::Default, vec![Value::Object(object_body(body)?)])
    };
    Ok(events
        .iter()
        .map(|event| match event {
            Value::Object(event) => event_with(rt, event, &version, sidecars, now_ms)
                .map(|(id, _)| id)
                .map_err(|r| r.reason),
            _ => Err("not an object".to_string()),
        })
        .collect())
}

/// The body as a JSON object, or the 400 that says why it is not one.
fn object_body(body: &[u8]) -> Result<Map<String, Value>, IngressError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(invalid("$", "the body must be a JSON object")),
        Err(e) => Err(IngressError::InvalidJson {
            detail: e.to_string(),
        }),
    }
}

/// Where an event's protocol version comes from.
#[derive(Debug, Clone)]
enum Version {
    /// `/events`: the event's own `protocol_version`.
    Default,
    /// `/events/batch`: the envelope's, unless the event carries its own.
    Envelope(Option<Value>),
}

/// The protocol version of an event: its own member, else the envelope's, else the newest.
fn protocol_version(obj: &Map<String, Value>, version: &Version) -> Result<u64, String> {
    let raw = match (obj.get("protocol_version"), version) {
        (Some(v), _) if !v.is_null() => Some(v.clone()),
        (_, Version::Envelope(Some(v))) if !v.is_null() => Some(v.clone()),
        _ => None,
    };
    let Some(raw) = raw else {
        return Ok(MAX_PROTOCOL_VERSION);
    };
    let n = raw.as_u64().ok_or_else(|| {
        invalid(
            "$.protocol_version",
            format!("must be an integer in {MIN_PROTOCOL_VERSION}..={MAX_PROTOCOL_VERSION}"),
        )
        .to_string()
    })?;
    if (MIN_PROTOCOL_VERSION..=MAX_PROTOCOL_VERSION).contains(&n) {
        Ok(n)
    } else {
        Err(unsupported_version_reason(n))
    }
}

/// A required, non-blank string member of at most [`MAX_TEXT_LEN`] bytes, trimmed.
fn required_text(obj: &Map<String, Value>, path: &str, key: &str) -> Result<String, String> {
    match optional_text(obj, path, key)? {
        Some(s) => Ok(s),
        None => Err(invalid(
            format!("{path}.{key}"),
            "is required: send a non-blank string",
        )
        .to_string()),
    }
}

/// An optional string member: absent or `null` is `None`; a blank string is refused, because
/// a sidecar that means "absent" sends `null`.
fn optional_text(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Err(invalid(
            format!("{path}.{key}"),
            "must not be blank; send null to leave it out",
        )
        .to_string()),
        Some(Value::String(s)) if s.trim().len() > MAX_TEXT_LEN => Err(invalid(
            format!("{path}.{key}"),
            format!("is longer than {MAX_TEXT_LEN} bytes"),
        )
        .to_string()),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(_) => Err(invalid(format!("{path}.{key}"), "must be a string").to_string()),
    }
}

/// An optional descriptive string (`actor_id`, `source_kind`): a blank one means absent, as
/// it did for the Kheish daemon, so sidecars that send `""` keep working.
fn descriptive_text(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        _ => optional_text(obj, "$", key),
    }
}

/// `thread.path`: non-blank string segments, as sent (they are hashed and encoded as sent).
fn thread_path(obj: &Map<String, Value>) -> Result<Vec<String>, String> {
    let path = match obj.get("thread") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(thread)) => match thread.get("path") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(path)) => path,
            Some(_) => {
                return Err(invalid("$.thread.path", "must be an array of strings").to_string())
            }
        },
        Some(_) => {
            return Err(invalid("$.thread", "must be an object {\"path\": [...]}").to_string())
        }
    };
    if path.len() > MAX_THREAD_SEGMENTS {
        return Err(invalid(
            "$.thread.path",
            format!("at most {MAX_THREAD_SEGMENTS} segments"),
        )
        .to_string());
    }
    path.iter()
        .enumerate()
        .map(|(i, segment)| match segment {
            Value::String(s) if !s.trim().is_empty() && s.len() <= MAX_TEXT_LEN => Ok(s.clone()),
            _ => Err(invalid(
                format!("$.thread.path[{i}]"),
                format!("must be a non-blank string of at most {MAX_TEXT_LEN} bytes"),
            )
            .to_string()),
        })
        .collect()
}

/// `relation`: `null`, or `{kind, target_event_id}` with both non-blank.
fn relation(obj: &Map<String, Value>) -> Result<Option<Value>, String> {
    match obj.get("relation") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(rel)) => {
            let kind = required_text(rel, "$.relation", "kind")?;
            let target = required_text(rel, "$.relation", "target_event_id")?;
            Ok(Some(json!({"kind": kind, "target_event_id": target})))
        }
        Some(_) => {
            Err(invalid("$.relation", "must be an object {kind, target_event_id}").to_string())
        }
    }
}

/// `reply_route`: opaque. `null` and a blank string mean "no route"; any other value (a JSON
/// string such as `"{}"`, an object, a number) is kept as sent.
fn reply_route(obj: &Map<String, Value>) -> Option<Value> {
    match obj.get("reply_route") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(route) => Some(route.clone()),
    }
}

/// Base64url (no padding) of one binding-key segment, so `:` and `/` in ids stay unambiguous.
fn b64(segment: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(segment.as_bytes())
}

/// The event's own binding keys (SPEC §6.5), in the Kheish daemon's format: one per thread-path
/// prefix, `external:<name>:<b64 platform>:<b64 seg1>[:<b64 seg2>...]`, or without a path the
/// routing key's `external:<name>:<b64 platform>:route:<b64 routing_key>`.
pub fn binding_keys(
    name: &str,
    platform: &str,
    path: &[String],
    routing_key: Option<&str>,
) -> Vec<String> {
    let head = format!("external:{name}:{}", b64(platform));
    if !path.is_empty() {
        let mut prefix = head;
        return path
            .iter()
            .map(|segment| {
                prefix.push(':');
                prefix.push_str(&b64(segment));
                prefix.clone()
            })
            .collect();
    }
    routing_key
        .map(|rk| format!("{head}:route:{}", b64(rk)))
        .into_iter()
        .collect()
}

/// The natural session id (SPEC §6.5): `external:<name>:<first 16 hex of sha256(J)>`, J the
/// compact JSON `["<platform>",[segments]]`, or without a path
/// `["routing_key","<platform>","<routing key>"]`; `None` with neither.
pub fn natural_session_id(
    name: &str,
    platform: &str,
    path: &[String],
    routing_key: Option<&str>,
) -> Option<String> {
    let j = if !path.is_empty() {
        json!([platform, path])
    } else {
        json!(["routing_key", platform, routing_key?])
    };
    Some(format!(
        "external:{name}:{}",
        &sha256_hex(j.to_string().as_bytes())[..16]
    ))
}

/// The fingerprint of an event (SPEC §6.4): the canonical JSON of the event as sent, without
/// `instance_id` (a restarted sidecar resends with a new one) and `protocol_version` (a
/// sidecar may resend over the other route or version). The sidecar's own `fingerprint`
/// member is part of the payload like any other.
pub fn event_fingerprint(obj: &Map<String, Value>) -> String {
    fingerprint_without(obj, &["instance_id", "protocol_version"])
}

/// One event object -> `(trimmed event_id, Event)`, or why it is rejected. See the module docs
/// for the order.
fn event_with(
    rt: &ExternalRuntime,
    obj: &Map<String, Value>,
    version: &Version,
    sidecars: &Sidecars,
    now_ms: i64,
) -> Result<(String, Event), Rejection> {
    // The id to echo in a rejection, when the event has a usable one.
    let echo = obj
        .get("event_id")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_string);
    let reject = |reason: String| Rejection {
        event_id: echo.clone(),
        reason,
    };
    let protocol_version = protocol_version(obj, version).map_err(reject)?;
    let event_id = required_text(obj, "$", "event_id").map_err(reject)?;
    let fields = fields(obj, now_ms).map_err(reject)?;
    check_instance(rt, sidecars, &fields.instance_id).map_err(reject)?;

    let name = rt.id.name.as_str();
    let connector = rt.id.to_string();
    let (key, key_sha256) = receipt_key(ConnectorKind::External, name, &event_id);
    let fingerprint = event_fingerprint(obj);

    let platform = rt.config.platform.as_str();
    let routing_key = fields.routing_key.as_deref();
    let mut keys = binding_keys(name, platform, &fields.path, routing_key);
    keys.extend(rt.config.common.binding_keys.iter().cloned());
    keys.sort();
    keys.dedup();
    let session = SessionRequest {
        explicit: rt.config.common.fixed_session_id.clone(),
        natural_id: natural_session_id(name, platform, &fields.path, routing_key),
        binding_keys: keys,
        unresolved_hint: "send a non-empty `thread.path` or a `routing_key`, or configure \
                          `fixed_session_id` on the connector"
            .into(),
        policy: rt.config.common.session_policy.clone(),
        created_by: format!("connector:{connector}"),
    };

    let mut metadata = fields.metadata;
    let mut put = |k: &str, v: Value| {
        metadata.insert(k.to_string(), v);
    };
    put("connector_ingress_key", key.clone().into());
    put("external_protocol_version", protocol_version.into());
    put("external_event_key_sha256", key_sha256.clone().into());
    put("external_event_fingerprint", fingerprint.clone().into());
    put("external_instance_id", fields.instance_id.into());
    if let Some(intent) = fields.intent {
        put("external_intent", intent.into());
    }
    if let Some(relation) = fields.relation {
        put("external_relation", relation);
    }
    if let Some(rk) = fields.routing_key {
        put("external_routing_key", rk.into());
    }
    if let Some(kind) = fields.source_kind {
        put("external_source_kind", kind.into());
    }
    if let Some(at) = fields.occurred_at_ms {
        put("external_occurred_at_ms", at.into());
    }

    let mut reply_targets = Vec::new();
    if rt.config.include_self_output {
        if let Some(route) = fields.reply_route {
            let address = json!({"connector": name, "route": route}).to_string();
            let (target, _) = ReplyTarget::new(ReplyPlugin::External, &address)
                .map_err(|e| reject(invalid("$.reply_route", e).to_string()))?;
            reply_targets.push(target);
        }
    }
    reply_targets.extend(rt.config.common.reply_targets.iter().cloned());

    let event = Event {
        connector: rt.id.clone(),
        receipt: Some(ReceiptKey { key, key_sha256 }),
        fingerprint,
        session,
        actor_id: fields.actor_id.unwrap_or_else(|| DEFAULT_ACTOR.into()),
        input: fields.content.input,
        assets: fields.content.assets,
        referenced_assets: fields.content.referenced_assets,
        metadata,
        reply_targets,
        events_per_second: rt.config.common.ingress_events_per_second,
        rate_bucket: None,
    };
    Ok((event_id, event))
}

/// The members of an event after their rules, besides `event_id` and the version.
struct Fields {
    instance_id: String,
    actor_id: Option<String>,
    source_kind: Option<String>,
    occurred_at_ms: Option<u64>,
    intent: Option<String>,
    relation: Option<Value>,
    path: Vec<String>,
    routing_key: Option<String>,
    content: payload::Content,
    reply_route: Option<Value>,
    metadata: Map<String, Value>,
}

/// Applies every member rule; the error is the rejection reason, naming the member.
fn fields(obj: &Map<String, Value>, now_ms: i64) -> Result<Fields, String> {
    let instance_id = required_text(obj, "$", "instance_id")?;
    let occurred_at_ms = match obj.get("occurred_at_ms") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            invalid(
                "$.occurred_at_ms",
                "must be a non-negative integer (Unix milliseconds)",
            )
            .to_string()
        })?),
    };
    match obj.get("fingerprint") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(_) => return Err(invalid("$.fingerprint", "must be a string").to_string()),
    }
    let fields = Fields {
        instance_id,
        actor_id: descriptive_text(obj, "actor_id")?,
        source_kind: descriptive_text(obj, "source_kind")?,
        occurred_at_ms,
        intent: optional_text(obj, "$", "intent")?,
        relation: relation(obj)?,
        path: thread_path(obj)?,
        routing_key: optional_text(obj, "$", "routing_key")?,
        content: payload::content(
            obj,
            ContentRules {
                assets_allowed: true,
                mixing: Mixing::NonEmpty,
                content_base64_alias: true,
                lenient_items: true,
            },
            now_ms,
        )
        .map_err(|e| e.to_string())?,
        reply_route: reply_route(obj),
        metadata: payload::metadata(obj).map_err(|e| e.to_string())?,
    };
    Ok(fields)
}

/// In `child_process` mode the event must come from the running child: its `instance_id` must
/// be the one of the manifest the supervisor saw when the child became ready. `remote_http`
/// sidecars are not checked (the id is only recorded).
fn check_instance(
    rt: &ExternalRuntime,
    sidecars: &Sidecars,
    instance_id: &str,
) -> Result<(), String> {
    if rt.config.mode != ExternalMode::ChildProcess {
        return Ok(());
    }
    let name = rt.id.name.as_str();
    match sidecars.get(name).and_then(|s| s.instance_id) {
        None => Err(format!(
            "the child_process sidecar of connector `{name}` is not ready (no running instance \
             passed its readiness checks); retry once it is ready"
        )),
        Some(running) if running != instance_id => Err(format!(
            "`$.instance_id`: `{instance_id}` is not the running sidecar's instance \
             (`{running}`); events from a stopped or foreign process are refused"
        )),
        Some(_) => Ok(()),
    }
}

/// One event's answer, or a refusal that keeps its HTTP form on `/events`.
enum Item {
    Answer(Value, EventOutcome),
    Refusal(IngressError),
}

/// The protocol answer for one event the pipeline answered.
fn item(event_id: &str, answer: Result<Answer, IngressError>) -> Item {
    match answer {
        Ok(Answer::Event(accepted)) => {
            let (status, outcome) = match accepted.status {
                AcceptStatus::Accepted => ("accepted", EventOutcome::Accepted),
                AcceptStatus::Duplicate => ("duplicate", EventOutcome::Duplicate),
            };
            Item::Answer(
                json!({
                    "event_id": event_id,
                    "status": status,
                    "session_id": accepted.session_id,
                    "run_id": accepted.run_id,
                }),
                outcome,
            )
        }
        Ok(Answer::Protocol(_) | Answer::Events { .. }) => Item::Answer(
            json!({"event_id": event_id, "status": "error", "reason": "unexpected pipeline answer"}),
            EventOutcome::Error,
        ),
        Err(IngressError::IdempotencyConflict { run_id, session_id }) => Item::Answer(
            json!({
                "event_id": event_id,
                "status": "rejected",
                "session_id": session_id,
                "run_id": run_id,
                "reason": format!(
                    "event_id `{event_id}` was already submitted with a different payload \
                     (original run `{run_id}`, session `{session_id}`)"
                ),
            }),
            EventOutcome::Conflict,
        ),
        Err(refusal @ (IngressError::RateLimited { .. } | IngressError::Unavailable { .. })) => {
            Item::Refusal(refusal)
        }
        Err(other) => Item::Answer(
            json!({"event_id": event_id, "status": "rejected", "reason": other.to_string()}),
            EventOutcome::Rejected,
        ),
    }
}

/// A batch item for the refusals that are HTTP errors on `/events`.
fn batch_refusal(event_id: &str, refusal: &IngressError) -> (Value, EventOutcome) {
    match refusal {
        IngressError::RateLimited { retry_after_ms, .. } => (
            json!({
                "event_id": event_id,
                "status": "rate_limited",
                "reason": refusal.to_string(),
                "retry_after_ms": retry_after_ms,
            }),
            EventOutcome::RateLimited,
        ),
        other => (
            json!({"event_id": event_id, "status": "error", "reason": other.to_string()}),
            EventOutcome::Error,
        ),
    }
}

/// The `rejected` answer of an event refused before the pipeline.
fn rejected(rejection: Rejection) -> (Value, EventOutcome) {
    let mut body = Map::new();
    if let Some(id) = rejection.event_id {
        body.insert("event_id".into(), id.into());
    }
    body.insert("status".into(), "rejected".into());
    body.insert("reason".into(), rejection.reason.into());
    (Value::Object(body), EventOutcome::Rejected)
}

fn single(body: Value, outcome: EventOutcome) -> Answer {
    Answer::Events {
        body,
        outcomes: vec![outcome],
    }
}

/// Gathers a batch's per-event answers, which arrive in any order and on any thread (the
/// writer's, after the commit), and answers the request once the last one is in. Nothing
/// waits: the last `fill` calls `done`.
struct Collector {
    slots: Vec<Option<(Value, EventOutcome)>>,
    remaining: usize,
    done: Option<Done>,
}

impl Collector {
    fn fill(this: &Mutex<Collector>, idx: usize, body: Value, outcome: EventOutcome) {
        let finished = {
            let mut c = this.lock().unwrap_or_else(|p| p.into_inner());
            if c.slots[idx].is_none() {
                c.slots[idx] = Some((body, outcome));
                c.remaining -= 1;
            }
            if c.remaining == 0 {
                c.done
                    .take()
                    .map(|done| (done, std::mem::take(&mut c.slots)))
            } else {
                None
            }
        };
        if let Some((done, slots)) = finished {
            let (results, outcomes): (Vec<Value>, Vec<EventOutcome>) =
                slots.into_iter().flatten().unzip();
            done(Ok(Answer::Events {
                body: json!({ "results": results }),
                outcomes,
            }));
        }
    }

    fn finish_empty(this: &Mutex<Collector>) {
        let done = this.lock().unwrap_or_else(|p| p.into_inner()).done.take();
        if let Some(done) = done {
            done(Ok(Answer::Events {
                body: json!({ "results": [] }),
                outcomes: Vec::new(),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{SidecarStatus, Verifier};
    use crate::secrets::Secret;

    const REMOTE: &str = "[[external_connectors]]\nname = \"d\"\nplatform = \"discord\"\nbase_url = \"https://sidecar.example.com\"\nshared_token_env = \"T\"\n";
    const CHILD: &str = "[[external_connectors]]\nname = \"c\"\nplatform = \"discord\"\nmode = \"child_process\"\nbase_url = \"http://127.0.0.1:8787\"\nshared_token_env = \"T\"\n[external_connectors.child_process]\ncommand = \"python3\"\n";

    fn runtime(toml: &str) -> ExternalRuntime {
        let loaded = crate::config::validate::parse_str("t.toml", toml);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let config = loaded.config.external[0].clone();
        ExternalRuntime {
            id: crate::model::ConnectorId {
                kind: ConnectorKind::External,
                name: config.common.name.clone(),
            },
            shared_token: Some(Verifier::single(Secret::new("tok".into()))),
            config,
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().expect("an object").clone()
    }

    /// The SDK's event shape: every member present, absent ones as explicit nulls.
    fn sdk_event(event_id: &str) -> Value {
        json!({
            "protocol_version": 2, "instance_id": "inst-1", "event_id": event_id,
            "fingerprint": null, "occurred_at_ms": null, "actor_id": null, "source_kind": null,
            "intent": null, "relation": null, "thread": {"path": ["g", "c"]},
            "routing_key": null, "content": "hello", "input_items": [], "attachments": [],
            "reply_route": null, "metadata": null,
        })
    }

    fn parse(rt: &ExternalRuntime, body: Value) -> Result<(String, Event), Rejection> {
        event_with(
            rt,
            &obj(body),
            &Version::Default,
            &Sidecars::default(),
            1_700_000_000_000,
        )
    }

    fn reason(rt: &ExternalRuntime, body: Value) -> String {
        match parse(rt, body) {
            Err(r) => r.reason,
            Ok((id, _)) => panic!("event {id} was not rejected"),
        }
    }

    fn with(mut base: Value, member: &str, value: Value) -> Value {
        base[member] = value;
        base
    }

    #[test]
    fn protocol_versions() {
        let rt = runtime(REMOTE);
        for v in [json!(1), json!(2), Value::Null] {
            let (_, event) =
                parse(&rt, with(sdk_event("e"), "protocol_version", v.clone())).unwrap();
            let expected = if v.is_null() { 2 } else { v.as_u64().unwrap() };
            assert_eq!(event.metadata["external_protocol_version"], expected);
        }
        assert_eq!(
            reason(&rt, with(sdk_event("e"), "protocol_version", json!(3))),
            "unsupported protocol_version 3; supported range is 1..=2"
        );
        assert_eq!(
            reason(&rt, with(sdk_event("e"), "protocol_version", json!(0))),
            "unsupported protocol_version 0; supported range is 1..=2"
        );
        // In a batch the envelope's version applies unless the event has its own.
        let mut event = sdk_event("e");
        event.as_object_mut().unwrap().remove("protocol_version");
        let batch = |v: Value| {
            event_with(
                &rt,
                &obj(event.clone()),
                &Version::Envelope(Some(v)),
                &Sidecars::default(),
                0,
            )
        };
        assert_eq!(
            batch(json!(1)).unwrap().1.metadata["external_protocol_version"],
            1
        );
        assert_eq!(
            batch(json!(7)).unwrap_err().reason,
            unsupported_version_reason(7)
        );
    }

    #[test]
    fn blank_and_null_members() {
        let rt = runtime(REMOTE);
        // Explicit nulls are absent.
        let (id, event) = parse(&rt, sdk_event("  e-1 ")).unwrap();
        assert_eq!(id, "e-1");
        assert_eq!(event.actor_id, DEFAULT_ACTOR);
        assert!(!event.metadata.contains_key("external_intent"));
        assert!(event.reply_targets.is_empty());
        for (member, value, names) in [
            ("event_id", json!("  "), "$.event_id"),
            ("event_id", Value::Null, "$.event_id"),
            ("event_id", json!(5), "$.event_id"),
            ("instance_id", json!(""), "$.instance_id"),
            ("intent", json!(" "), "$.intent"),
            ("routing_key", json!(""), "$.routing_key"),
            (
                "relation",
                json!({"kind": " ", "target_event_id": "x"}),
                "$.relation.kind",
            ),
            (
                "relation",
                json!({"kind": "reply_to", "target_event_id": ""}),
                "$.relation.target_event_id",
            ),
            (
                "relation",
                json!({"kind": "reply_to"}),
                "$.relation.target_event_id",
            ),
            ("thread", json!({"path": ["g", " "]}), "$.thread.path[1]"),
            ("occurred_at_ms", json!("soon"), "$.occurred_at_ms"),
            (
                "metadata",
                json!({"external_intent": "x"}),
                "external_intent",
            ),
        ] {
            let why = reason(&rt, with(sdk_event("e"), member, value.clone()));
            assert!(why.contains(names), "{member}={value}: {why}");
        }
        // A blank actor or source kind means "absent", as sidecars may send "".
        let (_, event) = parse(&rt, with(sdk_event("e"), "actor_id", json!(""))).unwrap();
        assert_eq!(event.actor_id, DEFAULT_ACTOR);
        let (_, event) = parse(&rt, with(sdk_event("e"), "actor_id", json!(" u-1 "))).unwrap();
        assert_eq!(event.actor_id, "u-1");
    }

    #[test]
    fn content_shapes() {
        let rt = runtime(REMOTE);
        let items = json!([{"type": "text", "text": "t"}]);
        let mixed = with(sdk_event("e"), "input_items", items.clone());
        assert_eq!(reason(&rt, mixed), IngressError::MixedContent.to_string());
        let only_items = with(
            with(sdk_event("e"), "content", json!("")),
            "input_items",
            items,
        );
        let (_, event) = parse(&rt, only_items).unwrap();
        assert_eq!(event.input.content, None);
        assert_eq!(event.input.input_items.unwrap().len(), 1);
        let none = with(sdk_event("e"), "content", json!(""));
        assert_eq!(reason(&rt, none), IngressError::MissingContent.to_string());
        let inline = json!([{"type": "inline_asset", "file_name": "a.txt", "media_type": "text/plain", "content_base64": "aGk="}]);
        let (_, event) = parse(&rt, with(sdk_event("e"), "attachments", inline)).unwrap();
        assert_eq!(event.assets[0].data, b"hi");
    }

    #[test]
    fn fingerprints_ignore_instance_and_version_only() {
        let fp = |v: Value| event_fingerprint(&obj(v));
        let base = fp(sdk_event("e"));
        assert_eq!(
            base,
            fp(with(sdk_event("e"), "instance_id", json!("restarted")))
        );
        assert_eq!(base, fp(with(sdk_event("e"), "protocol_version", json!(1))));
        let mut no_version = sdk_event("e");
        no_version
            .as_object_mut()
            .unwrap()
            .remove("protocol_version");
        assert_eq!(base, fp(no_version));
        assert_ne!(
            base,
            fp(with(sdk_event("e"), "fingerprint", json!("upstream-1")))
        );
        assert_ne!(base, fp(with(sdk_event("e"), "content", json!("other"))));
    }

    #[test]
    fn natural_ids_and_binding_keys() {
        let path = vec!["g".to_string(), "c/1:x".to_string()];
        assert_eq!(
            natural_session_id("d", "discord", &path, Some("ignored")).unwrap(),
            format!(
                "external:d:{}",
                &sha256_hex(br#"["discord",["g","c/1:x"]]"#)[..16]
            )
        );
        assert_eq!(
            natural_session_id("d", "discord", &[], Some("room-1")).unwrap(),
            format!(
                "external:d:{}",
                &sha256_hex(br#"["routing_key","discord","room-1"]"#)[..16]
            )
        );
        assert_eq!(natural_session_id("d", "discord", &[], None), None);
        // discord = ZGlzY29yZA, g = Zw, c/1:x = Yy8xOng
        assert_eq!(
            binding_keys("d", "discord", &path, Some("ignored")),
            [
                "external:d:ZGlzY29yZA:Zw",
                "external:d:ZGlzY29yZA:Zw:Yy8xOng"
            ]
        );
        assert_eq!(
            binding_keys("d", "discord", &[], Some("room-1")),
            ["external:d:ZGlzY29yZA:route:cm9vbS0x"]
        );
        assert!(binding_keys("d", "discord", &[], None).is_empty());
        let rt = runtime(REMOTE);
        let (_, event) = parse(&rt, sdk_event("e")).unwrap();
        assert_eq!(
            event.session.binding_keys,
            ["external:d:ZGlzY29yZA:Zw", "external:d:ZGlzY29yZA:Zw:Yw"]
        );
        let no_session = with(sdk_event("e"), "thread", Value::Null);
        let (_, event) = parse(&rt, no_session).unwrap();
        assert_eq!(event.session.natural_id, None);
        assert!(event.session.binding_keys.is_empty());
    }

    #[test]
    fn run_metadata_and_reply_targets() {
        let rt = runtime(REMOTE);
        let body = with(
            with(
                with(sdk_event("e-9"), "intent", json!("message")),
                "relation",
                json!({"kind": "reply_to", "target_event_id": "e-8"}),
            ),
            "reply_route",
            json!("{}"),
        );
        let (_, event) = parse(&rt, body.clone()).unwrap();
        let (key, digest) = receipt_key(ConnectorKind::External, "d", "e-9");
        assert_eq!(event.receipt.as_ref().unwrap().key, key);
        let m = &event.metadata;
        assert_eq!(m["connector_ingress_key"], key.as_str());
        assert_eq!(m["external_event_key_sha256"], digest.as_str());
        assert_eq!(m["external_event_fingerprint"], event.fingerprint.as_str());
        assert_eq!(m["external_instance_id"], "inst-1");
        assert_eq!(m["external_intent"], "message");
        assert_eq!(m["external_relation"]["target_event_id"], "e-8");
        assert_eq!(event.reply_targets.len(), 1);
        assert_eq!(event.reply_targets[0].plugin, ReplyPlugin::External);
        let address: Value = serde_json::from_str(&event.reply_targets[0].address).unwrap();
        assert_eq!(address, json!({"connector": "d", "route": "{}"}));
        // Blank routes are no route; other values are kept as sent.
        let (_, event) = parse(&rt, with(body.clone(), "reply_route", json!(" "))).unwrap();
        assert!(event.reply_targets.is_empty());
        let (_, event) = parse(&rt, with(body, "reply_route", json!({"c": 1}))).unwrap();
        let address: Value = serde_json::from_str(&event.reply_targets[0].address).unwrap();
        assert_eq!(address["route"], json!({"c": 1}));
        let quiet = runtime(&format!("{REMOTE}include_self_output = false\n"));
        let (_, event) = parse(&quiet, with(sdk_event("e"), "reply_route", json!("{}"))).unwrap();
        assert!(event.reply_targets.is_empty());
    }

    #[test]
    fn child_process_events_must_come_from_the_running_instance() {
        let rt = runtime(CHILD);
        let sidecars = Sidecars::default();
        let check = |sidecars: &Sidecars, instance: &str| {
            event_with(
                &rt,
                &obj(with(sdk_event("e"), "instance_id", json!(instance))),
                &Version::Default,
                sidecars,
                0,
            )
            .map(drop)
            .map_err(|r| r.reason)
        };
        assert!(check(&sidecars, "inst-1")
            .unwrap_err()
            .contains("is not ready"));
        sidecars.set(
            "c",
            SidecarStatus {
                instance_id: Some("inst-1".into()),
                health: "ready".into(),
                restarts: 0,
            },
        );
        assert!(check(&sidecars, "inst-1").is_ok());
        let why = check(&sidecars, "inst-2").unwrap_err();
        assert!(
            why.contains("$.instance_id") && why.contains("inst-1"),
            "{why}"
        );
        // remote_http records the id without checking it.
        let remote = runtime(REMOTE);
        assert!(parse(&remote, with(sdk_event("e"), "instance_id", json!("any"))).is_ok());
    }

    #[test]
    fn pipeline_answers_become_protocol_items() {
        let accepted = crate::ingress::Accepted {
            status: AcceptStatus::Duplicate,
            run_id: "run_1".into(),
            session_id: "s".into(),
            connector: "external/d".into(),
        };
        match item("e", Ok(Answer::Event(accepted))) {
            Item::Answer(body, EventOutcome::Duplicate) => assert_eq!(
                body,
                json!({"event_id": "e", "status": "duplicate", "session_id": "s", "run_id": "run_1"})
            ),
            _ => panic!("expected a duplicate"),
        }
        let conflict = IngressError::IdempotencyConflict {
            run_id: "run_1".into(),
            session_id: "s".into(),
        };
        match item("e", Err(conflict)) {
            Item::Answer(body, EventOutcome::Conflict) => {
                assert_eq!(body["status"], "rejected");
                assert_eq!(body["run_id"], "run_1");
                assert!(
                    body["reason"].as_str().unwrap().contains("`run_1`"),
                    "{body}"
                );
            }
            _ => panic!("expected a rejection"),
        }
        let limited = IngressError::RateLimited {
            kind: ConnectorKind::External,
            retry_after_ms: 250,
        };
        assert!(matches!(item("e", Err(limited.clone())), Item::Refusal(_)));
        let (body, outcome) = batch_refusal("e", &limited);
        assert_eq!(outcome, EventOutcome::RateLimited);
        assert_eq!(body["retry_after_ms"], 250);
        assert_eq!(body["status"], "rate_limited");
    }
}
