//! Slack Events API ingress, `POST /v1/connectors/slack/{name}` (SPEC §8, §6).
//!
//! Order of checks: the connector (404) and body size (413) come first (server); then the
//! signature (401): `X-Slack-Request-Timestamp` and `X-Slack-Signature: v0=<hex>` over
//! `v0:<ts>:<raw body>`, each header exactly once, |now − ts| ≤ 300 s, constant time, the
//! rotated secret accepted during its grace window; a connector without a signing secret is
//! reached only with `allow_unauthenticated_ingress`. Then the body must be UTF-8 JSON (400),
//! and the envelope is dispatched:
//!
//! - `url_verification` → 200 `{"challenge"}` (after the signature, before allowlists);
//! - `app_rate_limited` → allowlists (its enterprise only when it names one: Slack's
//!   payload carries the team and app), then 200
//!   `{"ignored":true,"type":"app_rate_limited","minute_rate_limited":N}`, no run;
//! - `event_callback` → `event` must be an object (400); the allowlists of the envelope
//!   (`api_app_id`, enterprise, team and EVERY `authorizations[]` entry, 403); an event other
//!   than `message` → 200 `{"ignored":true,"reason":"unsupported_event"}`; a message needs
//!   `channel` and `ts` (400) and an allowed channel (403); bot messages (`bot_id`, subtype
//!   `bot_message`) → ignored `bot_message`; other subtypes but `file_share` → ignored
//!   `unsupported_message_subtype`; a user message → the pipeline (a run);
//! - any other envelope type → ignored `unsupported_envelope`.
//!
//! Allowlists: an empty list allows everything; a non-empty one refuses a missing value. An
//! `authorizations[]` entry of an org-wide install (`is_enterprise_install: true`, `team_id:
//! null`) is checked by its enterprise only: it covers every team of the organization, and the
//! event's own team is checked through the scope.
//!
//! Scope (§8): team = `context_team_id` → `team_id` → `event.team` → first authorization's
//! team; enterprise = `context_enterprise_id` → `enterprise_id` → first authorization's
//! enterprise. The scope prefix `[enterprise:E:][team:T:]` is part of the natural session
//! (`slack:<name>:<prefix><channel>:<root_ts>`), of the receipt's raw key
//! (`<prefix without its last colon>:<event_id or channel:ts>`), of the rate-limit bucket
//! (per connector + scope + channel) and of the self reply target.
//!
//! Files of a message (authenticated connectors only) are downloaded AFTER the rate limit
//! (a pipeline [`Stage`](super::pipeline::Stage)) through [`crate::net::slack_api`]; see
//! [`attach_files`].

use std::time::Instant;

use serde_json::{json, Map, Value};

use super::auth;
use super::fingerprint::fingerprint;
use super::http::Inbound;
use super::payload::invalid;
use super::pipeline::{self, Done, Event, IngressCtx, ReceiptKey};
use super::{receipt_key, sha256_hex, Answer, IngressError};
use crate::model::reply::{ReplyPlugin, ReplyTarget};
use crate::model::run::{new_id, NewAsset, RunInput};
use crate::model::ConnectorKind;
use crate::net::slack_api::{DownloadError, SlackClients};
use crate::registry::{ConnectorSet, SlackRuntime};
use crate::sessions::SessionRequest;

/// Most files downloaded from one message; the rest are recorded as skipped.
pub const MAX_FILES: usize = 8;
/// Largest file downloaded; larger ones are recorded as skipped (not an error).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Media type of a file whose `mimetype` Slack does not give.
const DEFAULT_MEDIA_TYPE: &str = "application/octet-stream";

/// What a Slack request becomes before the pipeline.
#[derive(Debug)]
pub enum Parsed {
    /// A protocol answer that creates no run (challenge, ignored event).
    Answer(Value),
    /// A user message: its event for the pipeline, the files it shares and its team.
    Message(Box<Message>),
}

/// A user message ready for the pipeline.
#[derive(Debug)]
pub struct Message {
    pub event: Event,
    /// `event.files` as Slack sent them.
    pub files: Vec<Value>,
    /// The resolved team (picks the bot token of file downloads).
    pub team: Option<String>,
}

/// `POST /v1/connectors/slack/{name}` for connector `name` of `set` (the route-table entry).
pub fn accept(ctx: &IngressCtx<'_>, set: &ConnectorSet, name: &str, req: &Inbound<'_>, done: Done) {
    let Some(rt) = set.slack.get(name) else {
        return done(Err(IngressError::ConnectorNotFound {
            kind: ConnectorKind::Slack,
            name: name.to_string(),
        }));
    };
    let message = match parse_request(rt, req, ctx.now_ms) {
        Ok(Parsed::Message(message)) => *message,
        Ok(Parsed::Answer(body)) => return done(Ok(Answer::Protocol(body))),
        Err(refusal) => return done(Err(refusal)),
    };
    let Message { event, files, team } = message;
    if files.is_empty() {
        return pipeline::accept(ctx, event, done);
    }
    let clients = ctx.slack_api;
    let now_ms = ctx.now_ms;
    let rt = rt.as_ref();
    let mut hook = move |event: &mut Event| {
        attach_files(rt, clients, &files, team.as_deref(), now_ms, event);
        Ok(())
    };
    pipeline::accept_staged(ctx, event, Some(&mut hook), done);
}

/// Authenticates and parses a request up to the pipeline, without the store: the protocol
/// answer, the message, or the refusal.
pub fn parse_request(
    rt: &SlackRuntime,
    req: &Inbound<'_>,
    now_ms: i64,
) -> Result<Parsed, IngressError> {
    authenticate(rt, req, now_ms)?;
    let text = std::str::from_utf8(req.body)
        .map_err(|_| invalid("$", "the request body is not valid UTF-8"))?;
    let envelope: Value = serde_json::from_str(text).map_err(|e| IngressError::InvalidJson {
        detail: e.to_string(),
    })?;
    let Value::Object(obj) = &envelope else {
        return Err(invalid(
            "$",
            "must be a JSON object (a Slack Events API envelope)",
        ));
    };
    let envelope_type = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        _ => {
            return Err(invalid(
                "$.type",
                "is required: the envelope type (a string)",
            ))
        }
    };
    match envelope_type {
        "url_verification" => match obj.get("challenge") {
            Some(Value::String(challenge)) => Ok(Parsed::Answer(json!({"challenge": challenge}))),
            _ => Err(invalid("$.challenge", "is required: a string")),
        },
        "app_rate_limited" => {
            let scope = Scope::of(obj, &Map::new());
            // Slack's app_rate_limited payload names the team and app only: an enterprise
            // is checked when present, and its absence is not a refusal.
            check_envelope(rt, obj, &scope, scope.enterprise.is_some())?;
            Ok(Parsed::Answer(json!({
                "ignored": true,
                "type": "app_rate_limited",
                "minute_rate_limited": obj.get("minute_rate_limited").cloned().unwrap_or(Value::Null),
            })))
        }
        "event_callback" => event_callback(rt, &envelope, obj),
        _ => Ok(ignored("unsupported_envelope")),
    }
}

/// The signature check of the module docs.
pub fn authenticate(rt: &SlackRuntime, req: &Inbound<'_>, now_ms: i64) -> Result<(), IngressError> {
    let Some(secret) = &rt.signing_secret else {
        if rt.config.common.allow_unauthenticated_ingress {
            return Ok(());
        }
        return Err(IngressError::Unauthorized {
            detail: "connector has no signing secret; configure `signing_secret` or \
                     `allow_unauthenticated_ingress = true`"
                .into(),
        });
    };
    let ts = req.header_values(auth::SLACK_TIMESTAMP_HEADER);
    let sig = req.header_values(auth::SLACK_SIGNATURE_HEADER);
    auth::verify_slack_v0(
        &secret.candidates(now_ms),
        &ts,
        &sig,
        req.body,
        now_ms.div_euclid(1000),
        auth::SLACK_MAX_AGE_SECS,
    )
    .map_err(|e| IngressError::Unauthorized {
        detail: format!("Slack signature check failed: {e}"),
    })
}

fn ignored(reason: &str) -> Parsed {
    Parsed::Answer(json!({"ignored": true, "reason": reason}))
}

/// A non-blank string member.
fn text(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The workspace scope of an event (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub enterprise: Option<String>,
    pub team: Option<String>,
}

impl Scope {
    /// Resolves the scope from the envelope and its event (an empty map when there is none).
    pub fn of(obj: &Map<String, Value>, event: &Map<String, Value>) -> Scope {
        let first_auth = obj
            .get("authorizations")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_object);
        let from_auth = |key: &str| first_auth.and_then(|a| text(a, key));
        Scope {
            team: text(obj, "context_team_id")
                .or_else(|| text(obj, "team_id"))
                .or_else(|| text(event, "team"))
                .or_else(|| from_auth("team_id")),
            enterprise: text(obj, "context_enterprise_id")
                .or_else(|| text(obj, "enterprise_id"))
                .or_else(|| from_auth("enterprise_id")),
        }
    }

    /// `[enterprise:E:][team:T:]`.
    pub fn prefix(&self) -> String {
        let mut out = String::new();
        if let Some(e) = &self.enterprise {
            out.push_str(&format!("enterprise:{e}:"));
        }
        if let Some(t) = &self.team {
            out.push_str(&format!("team:{t}:"));
        }
        out
    }
}

/// One allowlist: empty allows all; a non-empty list refuses a missing value or one not in it.
fn allow(
    list: &[String],
    value: Option<&str>,
    what: &str,
    list_name: &str,
    name: &str,
) -> Result<(), IngressError> {
    if list.is_empty() {
        return Ok(());
    }
    match value {
        Some(v) if list.iter().any(|a| a == v) => Ok(()),
        Some(v) => Err(IngressError::Forbidden {
            detail: format!("{what} `{v}` is not in slack connector `{name}`'s {list_name}"),
        }),
        None => Err(IngressError::Forbidden {
            detail: format!(
                "the event names no {what}, and slack connector `{name}` restricts {list_name}"
            ),
        }),
    }
}

/// The envelope's allowlists: `api_app_id`, the scope's enterprise and team, and every
/// `authorizations[]` entry.
fn check_envelope(
    rt: &SlackRuntime,
    obj: &Map<String, Value>,
    scope: &Scope,
    check_enterprise: bool,
) -> Result<(), IngressError> {
    let c = &rt.config;
    let name = rt.id.name.as_str();
    let app = text(obj, "api_app_id");
    allow(
        &c.allowed_api_app_ids,
        app.as_deref(),
        "api_app_id",
        "allowed_api_app_ids",
        name,
    )?;
    if check_enterprise {
        allow(
            &c.allowed_enterprise_ids,
            scope.enterprise.as_deref(),
            "enterprise",
            "allowed_enterprise_ids",
            name,
        )?;
    }
    allow(
        &c.allowed_team_ids,
        scope.team.as_deref(),
        "team",
        "allowed_team_ids",
        name,
    )?;
    let authorizations = match obj.get("authorizations") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(invalid("$.authorizations", "must be an array")),
    };
    for (i, entry) in authorizations.iter().enumerate() {
        let Value::Object(entry) = entry else {
            return Err(invalid(
                format!("$.authorizations[{i}]"),
                "must be an object",
            ));
        };
        let enterprise = text(entry, "enterprise_id");
        let team = text(entry, "team_id");
        let org_wide = entry.get("is_enterprise_install").and_then(Value::as_bool) == Some(true);
        let what = format!("authorizations[{i}] enterprise");
        allow(
            &c.allowed_enterprise_ids,
            enterprise.as_deref(),
            &what,
            "allowed_enterprise_ids",
            name,
        )?;
        if team.is_some() || !org_wide {
            let what = format!("authorizations[{i}] team");
            allow(
                &c.allowed_team_ids,
                team.as_deref(),
                &what,
                "allowed_team_ids",
                name,
            )?;
        }
    }
    Ok(())
}

/// An `event_callback` envelope: see the module docs.
fn event_callback(
    rt: &SlackRuntime,
    envelope: &Value,
    obj: &Map<String, Value>,
) -> Result<Parsed, IngressError> {
    let event = match obj.get("event") {
        Some(Value::Object(event)) => event,
        Some(_) => return Err(invalid("$.event", "must be an object")),
        None => return Err(invalid("$.event", "is required in an event_callback")),
    };
    let scope = Scope::of(obj, event);
    check_envelope(rt, obj, &scope, true)?;
    if event.get("type").and_then(Value::as_str) != Some("message") {
        return Ok(ignored("unsupported_event"));
    }
    let channel = text(event, "channel")
        .ok_or_else(|| invalid("$.event.channel", "is required in a message event"))?;
    let ts =
        text(event, "ts").ok_or_else(|| invalid("$.event.ts", "is required in a message event"))?;
    let name = rt.id.name.as_str();
    allow(
        &rt.config.allowed_channel_ids,
        Some(&channel),
        "channel",
        "allowed_channel_ids",
        name,
    )?;
    let subtype = event.get("subtype").and_then(Value::as_str);
    if event.get("bot_id").is_some_and(|b| !b.is_null()) || subtype == Some("bot_message") {
        return Ok(ignored("bot_message"));
    }
    if subtype.is_some_and(|s| s != "file_share") {
        return Ok(ignored("unsupported_message_subtype"));
    }
    let user = text(event, "user")
        .ok_or_else(|| invalid("$.event.user", "is required in a user message"))?;
    let content = match event.get("text") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(invalid("$.event.text", "must be a string")),
    };
    let thread_ts = text(event, "thread_ts");
    let root_ts = thread_ts.clone().unwrap_or_else(|| ts.clone());
    let files = match event.get("files") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(files)) => files.clone(),
        Some(_) => return Err(invalid("$.event.files", "must be an array")),
    };
    // SPEC §6.7 (every kind): no text and nothing else is `missing_content`. A message that
    // shares files is taken even without text: its files are its content, and a file that
    // cannot be fetched is still recorded in the run (`slack_files`).
    if content.trim().is_empty() && files.is_empty() {
        return Err(IngressError::MissingContent);
    }

    let prefix = scope.prefix();
    let event_id = text(obj, "event_id");
    let raw_id = event_id
        .clone()
        .unwrap_or_else(|| format!("{channel}:{ts}"));
    let raw_key = format!("{}:{raw_id}", prefix.strip_suffix(':').unwrap_or(&prefix));
    let (key, key_sha256) = receipt_key(ConnectorKind::Slack, name, &raw_key);
    let fingerprint = fingerprint(envelope);
    let natural = format!("slack:{name}:{prefix}{channel}:{root_ts}");
    let session = SessionRequest::natural(
        &rt.config.common,
        &rt.id.to_string(),
        natural,
        "a Slack message always resolves its channel's session",
    );

    let mut metadata = Map::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            metadata.insert(k.to_string(), Value::String(v));
        }
    };
    put("connector_ingress_key", Some(key.clone()));
    put("slack_ingress_fingerprint", Some(fingerprint.clone()));
    put("slack_ingress_key_sha256", Some(key_sha256.clone()));
    put("slack_event_id", event_id);
    put("slack_api_app_id", text(obj, "api_app_id"));
    put("slack_enterprise_id", scope.enterprise.clone());
    put("slack_team_id", scope.team.clone());
    put("slack_channel_id", Some(channel.clone()));
    put("slack_user_id", Some(user.clone()));
    put("slack_ts", Some(ts));
    put("slack_thread_ts", thread_ts);
    put("slack_subtype", subtype.map(str::to_string));

    let mut reply_targets = Vec::new();
    if rt.config.include_self_output {
        let mut address = json!({"connector": name, "channel_id": channel, "thread_ts": root_ts});
        if let Some(e) = &scope.enterprise {
            address["enterprise_id"] = json!(e);
        }
        if let Some(t) = &scope.team {
            address["team_id"] = json!(t);
        }
        let (target, _) = ReplyTarget::new(ReplyPlugin::Slack, &address.to_string())
            .map_err(|e| invalid("$.event", format!("no reply target can be formed: {e}")))?;
        reply_targets.push(target);
    }
    reply_targets.extend(rt.config.common.reply_targets.iter().cloned());

    let event = Event {
        connector: rt.id.clone(),
        receipt: Some(ReceiptKey { key, key_sha256 }),
        fingerprint,
        session,
        actor_id: user,
        input: RunInput {
            content: Some(content),
            input_items: None,
            attachments: None,
        },
        assets: Vec::new(),
        referenced_assets: Vec::new(),
        metadata,
        reply_targets,
        events_per_second: rt.config.common.ingress_events_per_second,
        rate_bucket: Some(format!("{prefix}{channel}")),
    };
    Ok(Parsed::Message(Box::new(Message {
        event,
        files,
        team: scope.team,
    })))
}

/// Downloads the message's files (runs after the rate limit, SPEC §6.1 step 9) and adds them
/// to the event: each downloaded file is a stored asset and an `asset_reference` input item
/// after the message text; every file, downloaded or not, is listed in the run metadata
/// `slack_files` with its `status` (`downloaded` | `skipped`) and, when skipped, a `reason`:
/// `unauthenticated_ingress` (no signing secret: nothing is fetched for unauthenticated
/// callers), `too_many_files` (past [`MAX_FILES`]), `no_url`, `no_bot_token`, `too_large`,
/// `host_not_allowed`, `not_https`, `redirected`, `download_failed`, `time_budget` (the
/// message's downloads took the whole [`SlackClients::file_budget`], `KHEISH_SLACK_FILE_BUDGET_MS`,
/// 2.5 s by default, so that Slack gets its answer within its 3 s). A skipped file never
/// refuses the message.
pub fn attach_files(
    rt: &SlackRuntime,
    clients: &SlackClients,
    files: &[Value],
    team: Option<&str>,
    now_ms: i64,
    event: &mut Event,
) {
    let authenticated = rt.signing_secret.is_some();
    let client = clients.get(&rt.config.api_base_url).ok();
    let token = rt.token_for(team);
    let mut records = Vec::new();
    let mut items = Vec::new();
    let deadline = Instant::now() + clients.file_budget();
    for (idx, file) in files.iter().enumerate() {
        let empty = Map::new();
        let f = file.as_object().unwrap_or(&empty);
        let mut record = json!({"id": f.get("id"), "name": f.get("name")});
        let mut skip = |reason: &str| {
            record["status"] = json!("skipped");
            record["reason"] = json!(reason);
        };
        let url = text(f, "url_private_download").or_else(|| text(f, "url_private"));
        let size = f.get("size").and_then(Value::as_u64);
        match (&url, token, &client) {
            _ if !authenticated => skip("unauthenticated_ingress"),
            _ if idx >= MAX_FILES => skip("too_many_files"),
            (None, _, _) => skip("no_url"),
            (_, None, _) => skip("no_bot_token"),
            _ if size.is_some_and(|s| s > MAX_FILE_BYTES) => skip("too_large"),
            (_, _, None) => skip("download_failed"),
            _ if Instant::now() >= deadline => skip("time_budget"),
            (Some(url), Some(token), Some(client)) => {
                match client.download(
                    token.expose(),
                    url,
                    &rt.config.allowed_file_hosts,
                    MAX_FILE_BYTES,
                    deadline.saturating_duration_since(Instant::now()),
                ) {
                    // Cut off by the message's budget rather than failed by itself.
                    Err(DownloadError::Failed(_)) if Instant::now() >= deadline => {
                        skip("time_budget")
                    }
                    Err(e) => skip(e.code()),
                    Ok(data) => {
                        let asset_id = new_id("asset", now_ms);
                        let media_type =
                            text(f, "mimetype").unwrap_or_else(|| DEFAULT_MEDIA_TYPE.into());
                        let file_name = text(f, "name");
                        let mut item = json!({
                            "type": "asset_reference",
                            "asset_id": asset_id,
                            "media_type": media_type,
                            "size": data.len(),
                        });
                        if let Some(n) = &file_name {
                            item["file_name"] = json!(n);
                        }
                        items.push(item);
                        record["status"] = json!("downloaded");
                        record["asset_id"] = json!(asset_id);
                        event.assets.push(NewAsset {
                            asset_id,
                            media_type,
                            file_name,
                            sha256: sha256_hex(&data),
                            data,
                            now_ms,
                        });
                    }
                }
            }
        }
        records.push(record);
    }
    event
        .metadata
        .insert("slack_files".into(), Value::Array(records));
    if !items.is_empty() {
        let content = event.input.content.take().filter(|c| !c.is_empty());
        let mut all = Vec::with_capacity(items.len() + 1);
        if let Some(text) = content {
            all.push(json!({"type": "text", "text": text}));
        }
        all.extend(items);
        event.input = RunInput {
            content: None,
            input_items: Some(all),
            attachments: None,
        };
    }
}
