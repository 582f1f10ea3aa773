//! Telegram ingress (SPEC §9.1, §9.2): the webhook `POST /v1/connectors/telegram/{name}` and
//! the updates the poller fetches, both turned into kind-neutral [`Event`]s for the shared
//! [`pipeline`](super::pipeline).
//!
//! Order for one update (SPEC §6.1): the webhook is refused on a polling connector (409), the
//! secret token is checked (401), the body parsed (`update_id` required, 400), the update read
//! (`message`, `edited_message`, `callback_query`; any other type is answered
//! `{"accepted":true,"skipped":true,"reason":"unsupported_update","update_id":N}` without a run),
//! the chat checked against `allowed_chat_ids` (403); then the pipeline: receipt
//! (`telegram:<name>:<update_id>`), session, rate limit, and only then the Bot API calls of
//! [`MediaStage`] (`getFile` and the download of the largest photo and of a document, each at
//! most 1 MiB; larger or undownloadable media are recorded in `telegram_media_skipped` and the
//! run is created without them), then the write. A callback query is answered
//! (`answerCallbackQuery`) only once its run is durably created, from a queue served by one
//! background thread, never for a duplicate.
//!
//! A message without text, caption, photo or document (a sticker, a location, …) is answered
//! like an unsupported update (`reason` `unsupported_message`): Telegram would otherwise resend
//! it forever, and the poller could never get past it.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::auth;
use super::fingerprint::fingerprint;
use super::http::Inbound;
use super::payload::{invalid, MAX_CONTENT_BYTES};
use super::pipeline::{self, Done, Event, IngressCtx, ReceiptKey, Stage, StagedEvent};
use super::{receipt_key, sha256_hex, AcceptStatus, Accepted, Answer, IngressError};
use crate::config::TelegramMode;
use crate::model::reply::{ReplyPlugin, ReplyTarget};
use crate::model::run::{new_id, NewAsset, RunInput};
use crate::model::ConnectorKind;
use crate::net::telegram_api::{BotApi, Download};

pub use super::telegram_io::TelegramIo;
use crate::registry::{ConnectorSet, TelegramRuntime};
use crate::secrets::constant_time_eq;
use crate::sessions::SessionRequest;

/// Request body cap of the webhook (SPEC §5).
pub const BODY_LIMIT: usize = super::http::BODY_LIMIT;
/// The header Telegram sends the webhook's `secret_token` in.
pub const SECRET_HEADER: &str = "X-Telegram-Bot-Api-Secret-Token";
/// Largest media file downloaded at ingress (SPEC §9.1).
pub const MAX_MEDIA_BYTES: u64 = 1024 * 1024;

/// `POST /v1/connectors/telegram/{name}` for connector `name` of `set` (the server's
/// route-table entry).
pub fn accept_webhook(
    ctx: &IngressCtx<'_>,
    set: &ConnectorSet,
    name: &str,
    req: &Inbound<'_>,
    done: Done,
) {
    let Some(rt) = set.telegram.get(name) else {
        return done(Err(IngressError::ConnectorNotFound {
            kind: ConnectorKind::Telegram,
            name: name.to_string(),
        }));
    };
    if rt.config.ingress_mode != TelegramMode::Webhook {
        return done(Err(IngressError::WrongIngressMode {
            detail: format!(
                "telegram connector `{name}` uses ingress_mode = \"polling\"; its updates come \
                 from getUpdates, not from this webhook (set ingress_mode = \"webhook\" to use it)"
            ),
        }));
    }
    if let Err(refusal) = authenticate(rt, req, ctx.now_ms) {
        return done(Err(refusal));
    }
    let update: Value = match serde_json::from_slice(req.body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return done(Err(invalid("$", "an update must be a JSON object"))),
        Err(e) => {
            return done(Err(IngressError::InvalidJson {
                detail: e.to_string(),
            }))
        }
    };
    accept_update(ctx, rt, &update, done);
}

/// Checks `X-Telegram-Bot-Api-Secret-Token` (exactly once, constant time, grace value
/// honoured) when the connector has a secret token; without one the connector must allow
/// unauthenticated ingress.
pub fn authenticate(
    rt: &TelegramRuntime,
    req: &Inbound<'_>,
    now_ms: i64,
) -> Result<(), IngressError> {
    let unauthorized = |detail: String| IngressError::Unauthorized { detail };
    let Some(verifier) = &rt.secret_token else {
        if rt.config.common.allow_unauthenticated_ingress {
            return Ok(());
        }
        return Err(unauthorized(
            "connector has no secret token; configure `secret_token` or \
             `allow_unauthenticated_ingress = true`"
                .into(),
        ));
    };
    let values: Vec<&str> = req
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(SECRET_HEADER))
        .map(|(_, v)| v.as_str())
        .collect();
    let value =
        auth::single_header(SECRET_HEADER, &values).map_err(|e| unauthorized(e.to_string()))?;
    let mut matched = false;
    for candidate in verifier.candidates(now_ms) {
        matched |= constant_time_eq(candidate, value.as_bytes());
    }
    if !matched {
        return Err(unauthorized(format!("`{SECRET_HEADER}` does not match")));
    }
    Ok(())
}

/// Runs one authenticated update (webhook body or polled) through parsing, the allowlist and
/// the pipeline; `done` gets the answer.
pub fn accept_update(ctx: &IngressCtx<'_>, rt: &Arc<TelegramRuntime>, update: &Value, done: Done) {
    match read_update(rt, update) {
        Err(refusal) => done(Err(refusal)),
        Ok(Read::Skip(body)) => done(Ok(Answer::Protocol(body))),
        Ok(Read::Event(update)) => {
            let (event, mut stage, done) = staged(ctx, rt, *update, done);
            pipeline::accept_staged(ctx, event, Some(&mut stage), done);
        }
    }
}

/// [`accept_update`] for a batch of polled updates: every new one goes to the writer in one
/// message, so the batch shares a commit. Each `done` is called once.
pub fn accept_updates(
    ctx: &IngressCtx<'_>,
    rt: &Arc<TelegramRuntime>,
    updates: Vec<(Value, Done)>,
) {
    let mut submitted: Vec<StagedEvent> = Vec::new();
    for (raw, done) in updates {
        match read_update(rt, &raw) {
            Err(refusal) => done(Err(refusal)),
            Ok(Read::Skip(body)) => done(Ok(Answer::Protocol(body))),
            Ok(Read::Event(update)) => {
                let (event, stage, done) = staged(ctx, rt, *update, done);
                submitted.push((event, Some(Box::new(stage)), done));
            }
        }
    }
    pipeline::accept_all_staged(ctx, submitted);
}

/// The event of `update`, its media stage, and `done` wrapped so that a new callback query is
/// answered after its commit.
fn staged(
    ctx: &IngressCtx<'_>,
    rt: &Arc<TelegramRuntime>,
    update: Update,
    done: Done,
) -> (Event, MediaStage, Done) {
    let api = ctx.telegram.api(rt);
    let stage = MediaStage {
        api: api.clone(),
        media: update.media.clone(),
        now_ms: ctx.now_ms,
    };
    let callback = update.callback_query_id.clone();
    let event = event(rt, update);
    let done: Done = match (callback, api) {
        (Some(id), Ok(api)) => {
            let io = Arc::clone(ctx.telegram);
            Box::new(move |answer| {
                if let Ok(Answer::Event(Accepted {
                    status: AcceptStatus::Accepted,
                    ..
                })) = &answer
                {
                    io.answer_callback(api, id);
                }
                done(answer)
            })
        }
        _ => done,
    };
    (event, stage, done)
}

/// One media file of a message, to fetch after the rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MediaRef {
    /// `photo` or `document`.
    kind: &'static str,
    file_id: String,
    file_unique_id: Option<String>,
    file_size: Option<u64>,
    file_name: Option<String>,
    mime_type: Option<String>,
}

/// A handled update after its rules.
#[derive(Debug, Clone)]
struct Update {
    update_id: i64,
    /// `message`, `edited_message` or `callback_query`.
    kind: &'static str,
    fingerprint: String,
    chat_id: i64,
    message_thread_id: Option<i64>,
    message_id: Option<i64>,
    user_id: Option<i64>,
    text: Option<String>,
    media: Vec<MediaRef>,
    callback_query_id: Option<String>,
}

/// What an update is: one to run, or a protocol answer (skipped).
enum Read {
    Event(Box<Update>),
    Skip(Value),
}

fn skipped(reason: &str, update_id: i64) -> Read {
    Read::Skip(json!({
        "accepted": true,
        "skipped": true,
        "reason": reason,
        "update_id": update_id,
    }))
}

/// What [`read_update`] made of an update, for the fuzz checks (`crate::fuzzing`): its
/// `update_id` and whether it is run (`true`) or answered as skipped (`false`); or the typed
/// refusal.
#[doc(hidden)]
pub fn check_update(rt: &TelegramRuntime, update: &Value) -> Result<(i64, bool), IngressError> {
    match read_update(rt, update)? {
        Read::Event(u) => Ok((u.update_id, true)),
        Read::Skip(body) => Ok((body["update_id"].as_i64().unwrap_or_default(), false)),
    }
}

/// Reads an update object: `update_id`, the handled type, chat, content and the allowlist.
fn read_update(rt: &TelegramRuntime, update: &Value) -> Result<Read, IngressError> {
    let Value::Object(obj) = update else {
        return Err(invalid("$", "an update must be a JSON object"));
    };
    let update_id = obj
        .get("update_id")
        .and_then(Value::as_i64)
        .ok_or_else(|| invalid("$.update_id", "is required: an integer update id"))?;
    let (kind, message, callback) = if let Some(m) = obj.get("message") {
        ("message", m, None)
    } else if let Some(m) = obj.get("edited_message") {
        ("edited_message", m, None)
    } else if let Some(cb) = obj.get("callback_query") {
        let Value::Object(cb) = cb else {
            return Err(invalid("$.callback_query", "must be an object"));
        };
        let id = match cb.get("id") {
            Some(Value::String(id)) if !id.trim().is_empty() => id.clone(),
            _ => return Err(invalid("$.callback_query.id", "is required: a string")),
        };
        // Valid updates the gateway has nothing to run for: a game's button (no `data`) and
        // a button of an inline-mode message (no `message`, so no chat). Skipped with 200, as
        // other update types are, so Telegram does not re-send them.
        let is_string = |key: &str| matches!(cb.get(key), Some(Value::String(s)) if !s.is_empty());
        if (!cb.contains_key("data") && is_string("game_short_name"))
            || (cb.get("message").is_none_or(Value::is_null) && is_string("inline_message_id"))
        {
            return Ok(skipped("unsupported_callback_query", update_id));
        }
        let data = match cb.get("data") {
            Some(Value::String(d)) if !d.is_empty() => d.clone(),
            _ => {
                return Err(invalid(
                    "$.callback_query.data",
                    "is required: a callback query without `data` carries nothing to run",
                ))
            }
        };
        let Some(message) = cb.get("message").filter(|m| m.is_object()) else {
            return Err(invalid(
                "$.callback_query.message",
                "is required: a callback query without its message (an inline-mode button) \
                 has no chat to run in",
            ));
        };
        let user_id = cb
            .get("from")
            .and_then(|f| f.get("id"))
            .and_then(Value::as_i64);
        ("callback_query", message, Some((id, data, user_id)))
    } else {
        return Ok(skipped("unsupported_update", update_id));
    };
    let path = if kind == "callback_query" {
        "$.callback_query.message".to_string()
    } else {
        format!("$.{kind}")
    };
    let Value::Object(message) = message else {
        return Err(invalid(path, "must be an object"));
    };
    let chat_id = message
        .get("chat")
        .and_then(|c| c.get("id"))
        .and_then(Value::as_i64)
        .ok_or_else(|| invalid(format!("{path}.chat.id"), "is required: an integer chat id"))?;
    let int = |key: &str| -> Result<Option<i64>, IngressError> {
        match message.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| invalid(format!("{path}.{key}"), "must be an integer")),
        }
    };
    // A forum topic is a thread; a reply chain in an ordinary group is not. Telegram sets
    // `message_thread_id` on both, and marks topic messages `is_topic_message: true` (their
    // `reply_to_message` is the topic's creation). A reply without that mark belongs to the
    // chat: its id names no thread `sendMessage` accepts ("for forum supergroups only").
    let is_topic = message.get("is_topic_message").and_then(Value::as_bool) == Some(true);
    let is_reply = message
        .get("reply_to_message")
        .is_some_and(|v| !v.is_null());
    let message_thread_id = int("message_thread_id")?.filter(|_| is_topic || !is_reply);
    let message_id = int("message_id")?;
    let (text, media, callback_query_id, user_id) = match callback {
        Some((id, data, user_id)) => (Some(data), Vec::new(), Some(id), user_id),
        None => {
            let text = match (message.get("text"), message.get("caption")) {
                (Some(Value::String(t)), _) | (None, Some(Value::String(t))) => Some(t.clone()),
                (Some(Value::Null) | None, None | Some(Value::Null)) => None,
                (Some(Value::Null), Some(Value::String(t))) => Some(t.clone()),
                _ => return Err(invalid(format!("{path}.text"), "must be a string")),
            };
            let user_id = message
                .get("from")
                .and_then(|f| f.get("id"))
                .and_then(Value::as_i64);
            (
                text.filter(|t| !t.is_empty()),
                media(message),
                None,
                user_id,
            )
        }
    };
    if !rt.chat_allowed(chat_id) {
        return Err(IngressError::Forbidden {
            detail: format!(
                "chat {chat_id} is not in telegram connector `{}`'s allowed_chat_ids",
                rt.id.name
            ),
        });
    }
    if text.is_none() && media.is_empty() {
        return Ok(skipped("unsupported_message", update_id));
    }
    if text.as_ref().is_some_and(|t| t.len() > MAX_CONTENT_BYTES) {
        return Err(invalid(
            format!("{path}.text"),
            format!("exceeds the limit of {MAX_CONTENT_BYTES} bytes"),
        ));
    }
    Ok(Read::Event(Box::new(Update {
        update_id,
        kind,
        fingerprint: fingerprint(update),
        chat_id,
        message_thread_id,
        message_id,
        user_id,
        text,
        media,
        callback_query_id,
    })))
}

/// The largest photo size and the document of a message.
fn media(message: &Map<String, Value>) -> Vec<MediaRef> {
    let file = |kind: &'static str, v: &Value| -> Option<MediaRef> {
        Some(MediaRef {
            kind,
            file_id: v.get("file_id")?.as_str()?.to_string(),
            file_unique_id: v
                .get("file_unique_id")
                .and_then(Value::as_str)
                .map(str::to_string),
            file_size: v.get("file_size").and_then(Value::as_u64),
            file_name: v
                .get("file_name")
                .and_then(Value::as_str)
                .map(str::to_string),
            mime_type: v
                .get("mime_type")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    };
    let mut out = Vec::new();
    if let Some(Value::Array(sizes)) = message.get("photo") {
        let area = |v: &Value| {
            let dim = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
            (dim("width") * dim("height"), dim("file_size"))
        };
        if let Some(largest) = sizes.iter().max_by_key(|v| area(v)) {
            out.extend(file("photo", largest));
        }
    }
    if let Some(doc) = message.get("document") {
        out.extend(file("document", doc));
    }
    out
}

/// The natural session id (SPEC §6.5): `telegram:<name>:<chat_id>[:<message_thread_id>]`.
pub fn natural_session_id(name: &str, chat_id: i64, thread: Option<i64>) -> String {
    match thread {
        Some(t) => format!("telegram:{name}:{chat_id}:{t}"),
        None => format!("telegram:{name}:{chat_id}"),
    }
}

/// The kind-neutral event of a read update (before its media are fetched).
fn event(rt: &TelegramRuntime, u: Update) -> Event {
    let name = rt.id.name.as_str();
    let connector = rt.id.to_string();
    let (key, key_sha256) = receipt_key(ConnectorKind::Telegram, name, &u.update_id.to_string());
    let natural = natural_session_id(name, u.chat_id, u.message_thread_id);
    let session = SessionRequest::natural(
        &rt.config.common,
        &connector,
        natural,
        "the update names no chat",
    );
    let mut metadata = Map::new();
    let mut put = |k: &str, v: Value| {
        metadata.insert(k.to_string(), v);
    };
    put("connector_ingress_key", key.clone().into());
    put("telegram_ingress_fingerprint", u.fingerprint.clone().into());
    put("telegram_update_id", u.update_id.into());
    put("telegram_update_type", u.kind.into());
    put("telegram_chat_id", u.chat_id.into());
    if let Some(id) = u.message_id {
        put("telegram_message_id", id.into());
    }
    if let Some(t) = u.message_thread_id {
        put("telegram_message_thread_id", t.into());
    }
    if let Some(user) = u.user_id {
        put("telegram_user_id", user.into());
    }
    if let Some(cb) = &u.callback_query_id {
        put("telegram_callback_query_id", cb.clone().into());
    }
    let mut reply_targets = Vec::new();
    if rt.config.include_self_output {
        let mut address = json!({"connector": name, "chat_id": u.chat_id});
        if let Some(t) = u.message_thread_id {
            address["message_thread_id"] = json!(t);
        }
        if let Some(m) = u.message_id {
            address["reply_to_message_id"] = json!(m);
        }
        if let Ok((target, _)) = ReplyTarget::new(ReplyPlugin::Telegram, &address.to_string()) {
            reply_targets.push(target);
        }
    }
    reply_targets.extend(rt.config.common.reply_targets.iter().cloned());
    Event {
        connector: rt.id.clone(),
        receipt: Some(ReceiptKey { key, key_sha256 }),
        fingerprint: u.fingerprint,
        session,
        actor_id: u.user_id.map_or_else(
            || "telegram-user".to_string(),
            |id| format!("telegram:{id}"),
        ),
        input: RunInput {
            content: u.text,
            input_items: None,
            attachments: None,
        },
        assets: Vec::new(),
        referenced_assets: Vec::new(),
        metadata,
        reply_targets,
        events_per_second: rt.config.common.ingress_events_per_second,
        rate_bucket: None,
    }
}

/// Fetches an update's media once the event is new and within its rate: `getFile`, then the
/// download, each file at most [`MAX_MEDIA_BYTES`]. A file that cannot be fetched (no bot
/// token, `ok:false`, no `file_path`, too large, a failed call) is recorded in the run's
/// `telegram_media_skipped` with the reason, and the run is created without it.
struct MediaStage {
    api: Result<Arc<BotApi>, String>,
    media: Vec<MediaRef>,
    now_ms: i64,
}

impl MediaStage {
    fn fetch(&self, m: &MediaRef) -> Result<NewAsset, String> {
        if m.file_size.is_some_and(|s| s > MAX_MEDIA_BYTES) {
            return Err(format!("larger than {MAX_MEDIA_BYTES} bytes"));
        }
        let api = self.api.as_ref().map_err(Clone::clone)?;
        let info = api.get_file(&m.file_id).map_err(|e| e.to_string())?;
        let Some(path) = info.file_path else {
            return Err("getFile gave no `file_path` (the file is not downloadable)".into());
        };
        if info.file_size.is_some_and(|s| s > MAX_MEDIA_BYTES) {
            return Err(format!("larger than {MAX_MEDIA_BYTES} bytes"));
        }
        let data = match api
            .download(&path, MAX_MEDIA_BYTES)
            .map_err(|e| e.to_string())?
        {
            Download::Bytes(data) => data,
            Download::TooLarge => return Err(format!("larger than {MAX_MEDIA_BYTES} bytes")),
        };
        let base_name = path.rsplit('/').next().unwrap_or("file").to_string();
        let (media_type, file_name) = match m.kind {
            "photo" => ("image/jpeg".to_string(), Some(base_name)),
            _ => (
                m.mime_type
                    .clone()
                    .filter(|t| !t.trim().is_empty())
                    .unwrap_or_else(|| "application/octet-stream".into()),
                m.file_name.clone().or(Some(base_name)),
            ),
        };
        Ok(NewAsset {
            asset_id: new_id("asset", self.now_ms),
            media_type,
            file_name,
            sha256: sha256_hex(&data),
            data,
            now_ms: self.now_ms,
        })
    }
}

impl Stage for MediaStage {
    fn after_rate_limit(&mut self, event: &mut Event) -> Result<(), IngressError> {
        if self.media.is_empty() {
            return Ok(());
        }
        let mut attachments = Vec::new();
        let mut skipped = Vec::new();
        for m in &self.media {
            match self.fetch(m) {
                Ok(asset) => {
                    let mut item = json!({
                        "type": "asset_reference",
                        "asset_id": asset.asset_id,
                        "media_type": asset.media_type,
                        "size": asset.data.len(),
                        "telegram_media": m.kind,
                    });
                    if let Some(name) = &asset.file_name {
                        item["file_name"] = json!(name);
                    }
                    attachments.push(item);
                    event.assets.push(asset);
                }
                Err(reason) => {
                    let mut item = json!({"telegram_media": m.kind, "reason": reason});
                    if let Some(id) = &m.file_unique_id {
                        item["file_unique_id"] = json!(id);
                    }
                    skipped.push(item);
                }
            }
        }
        event.input.attachments = Some(attachments);
        if !skipped.is_empty() {
            event
                .metadata
                .insert("telegram_media_skipped".into(), Value::Array(skipped));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Verifier;
    use crate::secrets::Secret;

    fn runtime(extra: &str) -> TelegramRuntime {
        let toml = format!(
            "[[telegram_connectors]]\nname = \"bot\"\nsecret_token_env = \"S\"\nbot_token_env = \"B\"\n{extra}"
        );
        let loaded = crate::config::validate::parse_str("t.toml", &toml);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let config = loaded.config.telegram[0].clone();
        TelegramRuntime {
            id: crate::model::ConnectorId {
                kind: ConnectorKind::Telegram,
                name: config.common.name.clone(),
            },
            config,
            bot_token: Some(Verifier::single(Secret::new("1:tok".into()))),
            secret_token: Some(Verifier::single(Secret::new("sek".into()))),
        }
    }

    fn read(rt: &TelegramRuntime, v: Value) -> Result<Read, IngressError> {
        read_update(rt, &v)
    }

    fn refusal_path(rt: &TelegramRuntime, v: Value) -> String {
        match read(rt, v) {
            Err(IngressError::InvalidPayload { path, .. }) => path,
            Err(other) => panic!("unexpected refusal {other:?}"),
            Ok(_) => panic!("expected a refusal"),
        }
    }

    #[test]
    fn game_and_inline_mode_buttons_are_skipped_not_refused() {
        let rt = runtime("");
        let from = json!({"id": 42, "is_bot": false, "first_name": "A"});
        for (what, cb) in [
            (
                "game",
                json!({"id": "1", "from": from, "chat_instance": "c", "game_short_name": "g",
                       "message": {"message_id": 1, "date": 1, "chat": {"id": 5}}}),
            ),
            (
                "inline",
                json!({"id": "2", "from": from, "chat_instance": "c", "inline_message_id": "AAE", "data": "x"}),
            ),
        ] {
            let Ok(Read::Skip(body)) = read(&rt, json!({"update_id": 8, "callback_query": cb}))
            else {
                panic!("{what}: expected a skip")
            };
            assert_eq!(body["reason"], "unsupported_callback_query", "{what}");
        }
        // Without data, game, message or inline message id it is malformed: refused.
        assert_eq!(
            refusal_path(
                &rt,
                json!({"update_id": 9, "callback_query": {"id": "3", "message": {"message_id": 1, "chat": {"id": 5}}}})
            ),
            "$.callback_query.data"
        );
        assert_eq!(
            refusal_path(
                &rt,
                json!({"update_id": 9, "callback_query": {"id": "3", "data": "x"}})
            ),
            "$.callback_query.message"
        );
    }

    #[test]
    fn a_reply_chain_outside_forum_topics_is_no_thread() {
        let rt = runtime("");
        let thread_of =
            |message: Value| match read(&rt, json!({"update_id": 7, "message": message})) {
                Ok(Read::Event(u)) => u.message_thread_id,
                _ => panic!("expected an event"),
            };
        let reply = json!({"message_id": 1, "date": 0, "chat": {"id": -100}});
        // An ordinary supergroup: Telegram numbers the reply chain, but it is no topic.
        assert_eq!(
            thread_of(
                json!({"message_id": 9, "chat": {"id": -100, "type": "supergroup"}, "message_thread_id": 900, "reply_to_message": reply, "text": "re"})
            ),
            None
        );
        // A forum topic message (its reply_to_message is the topic's creation).
        assert_eq!(
            thread_of(
                json!({"message_id": 9, "chat": {"id": -100, "type": "supergroup", "is_forum": true}, "message_thread_id": 77, "is_topic_message": true, "reply_to_message": reply, "text": "t"})
            ),
            Some(77)
        );
        // A thread id that is not a reply is taken as given.
        assert_eq!(
            thread_of(
                json!({"message_id": 9, "chat": {"id": -100}, "message_thread_id": 5, "text": "t"})
            ),
            Some(5)
        );
    }

    #[test]
    fn updates_are_read_by_type() {
        let rt = runtime("");
        let Ok(Read::Event(u)) = read(
            &rt,
            json!({"update_id": 5, "message": {"message_id": 9, "chat": {"id": -100}, "message_thread_id": 3, "from": {"id": 42}, "caption": "hi"}}),
        ) else {
            panic!("expected an event")
        };
        assert_eq!(
            (u.chat_id, u.message_thread_id, u.user_id),
            (-100, Some(3), Some(42))
        );
        assert_eq!(u.text.as_deref(), Some("hi"));
        let Ok(Read::Skip(body)) = read(&rt, json!({"update_id": 6, "poll": {}})) else {
            panic!("expected a skip")
        };
        assert_eq!(
            body,
            json!({"accepted": true, "skipped": true, "reason": "unsupported_update", "update_id": 6})
        );
        assert!(matches!(
            read(
                &rt,
                json!({"update_id": 7, "message": {"chat": {"id": 1}, "sticker": {}}})
            ),
            Ok(Read::Skip(_))
        ));
    }

    #[test]
    fn bad_updates_name_the_member() {
        let rt = runtime("");
        assert_eq!(refusal_path(&rt, json!({"message": {}})), "$.update_id");
        assert_eq!(
            refusal_path(&rt, json!({"update_id": 1, "message": {"text": "x"}})),
            "$.message.chat.id"
        );
        assert_eq!(
            refusal_path(
                &rt,
                json!({"update_id": 1, "callback_query": {"id": "c", "message": {"chat": {"id": 1}}}})
            ),
            "$.callback_query.data"
        );
        // A callback query of an inline-mode message is skipped instead (see
        // game_and_inline_mode_buttons_are_skipped_not_refused); one with neither a message
        // nor an inline message id is refused.
        assert_eq!(
            refusal_path(
                &rt,
                json!({"update_id": 1, "callback_query": {"id": "c", "data": "d"}})
            ),
            "$.callback_query.message"
        );
    }

    #[test]
    fn allowed_chats_are_enforced() {
        let rt = runtime("allowed_chat_ids = [1]\n");
        assert!(matches!(
            read(
                &rt,
                json!({"update_id": 1, "message": {"chat": {"id": 2}, "text": "x"}})
            ),
            Err(IngressError::Forbidden { .. })
        ));
        assert!(matches!(
            read(
                &rt,
                json!({"update_id": 1, "message": {"chat": {"id": 1}, "text": "x"}})
            ),
            Ok(Read::Event(_))
        ));
    }

    #[test]
    fn the_largest_photo_is_chosen() {
        let msg = json!({"photo": [
            {"file_id": "small", "width": 90, "height": 90},
            {"file_id": "big", "width": 800, "height": 600},
            {"file_id": "mid", "width": 320, "height": 240}
        ], "document": {"file_id": "doc", "file_name": "a.pdf", "mime_type": "application/pdf"}});
        let found = media(msg.as_object().unwrap());
        assert_eq!(found[0].file_id, "big");
        assert_eq!(found[1].file_name.as_deref(), Some("a.pdf"));
    }

    #[test]
    fn natural_ids() {
        assert_eq!(natural_session_id("b", -5, None), "telegram:b:-5");
        assert_eq!(natural_session_id("b", -5, Some(7)), "telegram:b:-5:7");
    }
}
