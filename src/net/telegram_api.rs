//! The Telegram Bot API (SPEC §9) as a typed client: `getUpdates`, `getFile`, file download,
//! `sendMessage`, `sendPhoto` / `sendAudio` / `sendDocument` (multipart) and
//! `answerCallbackQuery`. Used by Telegram ingress (media, callback answers), the poller and the
//! `telegram` delivery transport.
//!
//! Hygiene (SPEC §9.4): requests go through [`super::agent`] (no proxy from the environment, no
//! redirects, bounded timeouts, capped bodies, the public-address guard). The bot token is part
//! of every request path (`/bot<token>/<method>`), so no URL is ever put in a message: errors
//! name `scheme://host[:port]/bot<redacted>/<method>`, and a description the server sends back
//! has any copy of the token replaced. `Debug` never shows the token.
//!
//! Private networks: a client reaches non-public addresses only when the connector's
//! `api_base_url` itself names a loopback host (a self-hosted Bot API server on this machine,
//! or a test fake); any other base goes through the public-address guard, DNS answers included.
//!
//! Strict in what it sends (JSON bodies with exactly the members the Bot API documents, chat ids
//! as integers or `@username` strings), tolerant of what a correct server may omit: a
//! `sendMessage` whose `result` is `true` or a partial object still counts as sent, and only
//! `ok`, `result`, `description`, `error_code` and `parameters.retry_after` are read.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

use super::{classify, parse_retry_after, redact_target, FailureClass, OutboundConfig};
use crate::model::reply::ChatId;

/// Response-body cap of every call but `getUpdates` and file downloads.
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Response-body cap of `getUpdates` (100 updates of a busy group fit easily).
pub const MAX_UPDATES_BYTES: u64 = 16 * 1024 * 1024;
/// The update types the daemon handles (SPEC §9.2 `allowed_updates`).
pub const ALLOWED_UPDATES: [&str; 3] = ["message", "edited_message", "callback_query"];
/// Extra time a `getUpdates` long poll gets beyond its `timeout` before the client gives up.
pub const POLL_GRACE: Duration = Duration::from_secs(10);

/// Outcome labels of [`ApiStats`].
pub const OUTCOMES: [&str; 5] = [
    "ok",
    "api_error",
    "rate_limited",
    "transport_error",
    "invalid_response",
];

/// Bot API calls by method and outcome, for `/metrics` (outcomes: the fixed [`OUTCOMES`]).
pub type ApiStats = super::CallStats;

/// Why a Bot API call failed. Messages name the redacted endpoint, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request did not get an HTTP answer (refused, timeout, DNS, blocked address, …).
    #[error("{endpoint} failed: {reason}")]
    Transport {
        endpoint: String,
        class: FailureClass,
        reason: String,
    },
    /// The server answered `{"ok":false,...}` (or HTTP 429 without a body).
    #[error("{endpoint} answered HTTP {status}: {description}")]
    Rejected {
        endpoint: String,
        status: u16,
        /// `error_code` of the answer, else the HTTP status.
        error_code: i64,
        description: String,
        /// `parameters.retry_after`, else the `Retry-After` header.
        retry_after: Option<Duration>,
    },
    /// The answer is not a Bot API answer (not JSON, a redirect, too large, no `ok`).
    #[error("{endpoint} answered HTTP {status} with an unusable body: {detail}")]
    Invalid {
        endpoint: String,
        status: u16,
        detail: String,
    },
}

impl ApiError {
    /// The flood wait the server asked for (429), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Rejected { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// True for a 429 answer (a flood wait).
    pub fn is_flood_wait(&self) -> bool {
        matches!(
            self,
            ApiError::Rejected {
                error_code: 429,
                ..
            }
        ) || matches!(self, ApiError::Rejected { status: 429, .. })
    }

    /// The HTTP status of the answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Transport { .. } => None,
            ApiError::Rejected { status, .. } | ApiError::Invalid { status, .. } => Some(*status),
        }
    }

    /// The `ok:false` description (lowercase matching is the caller's), when there was one.
    pub fn description(&self) -> Option<&str> {
        match self {
            ApiError::Rejected { description, .. } => Some(description),
            _ => None,
        }
    }

    /// A stable code for delivery records and logs.
    pub fn code(&self) -> String {
        match self {
            ApiError::Transport { class, .. } => class.code().to_string(),
            ApiError::Rejected {
                error_code: 429, ..
            } => "telegram_flood_wait".into(),
            ApiError::Rejected { error_code, .. } => format!("telegram_error_{error_code}"),
            ApiError::Invalid { status, .. } if (300..400).contains(status) => {
                "redirect_not_followed".into()
            }
            ApiError::Invalid { .. } => "telegram_invalid_response".into(),
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            ApiError::Transport { .. } => "transport_error",
            e if e.is_flood_wait() => "rate_limited",
            ApiError::Rejected { .. } => "api_error",
            ApiError::Invalid { .. } => "invalid_response",
        }
    }
}

/// What `getFile` says about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// The path to download from; `None` when the server gave none (the file is not
    /// downloadable).
    pub file_path: Option<String>,
    pub file_size: Option<u64>,
}

/// A downloaded file, or the fact that it is larger than the cap (never read past it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Download {
    Bytes(Vec<u8>),
    TooLarge,
}

/// Where an outbound message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub chat_id: ChatId,
    pub message_thread_id: Option<i64>,
    pub reply_to_message_id: Option<i64>,
}

impl Destination {
    fn members(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(
            "chat_id".into(),
            match &self.chat_id {
                ChatId::Id(id) => json!(id),
                ChatId::Username(name) => json!(name),
            },
        );
        if let Some(thread) = self.message_thread_id {
            m.insert("message_thread_id".into(), json!(thread));
        }
        if let Some(reply) = self.reply_to_message_id {
            // A reply to a deleted message is still sent, without the quote.
            m.insert(
                "reply_parameters".into(),
                json!({"message_id": reply, "allow_sending_without_reply": true}),
            );
        }
        m
    }
}

/// A file to upload with `sendPhoto` / `sendAudio` / `sendDocument`.
#[derive(Debug, Clone, Copy)]
pub struct Upload<'a> {
    /// `sendPhoto`, `sendAudio` or `sendDocument`.
    pub method: MediaMethod,
    pub file_name: &'a str,
    pub media_type: &'a str,
    pub data: &'a [u8],
}

/// The three upload methods and their file field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaMethod {
    Photo,
    Audio,
    Document,
}

impl MediaMethod {
    /// The method for a media type: images as photos, audio as audio, the rest as documents.
    pub fn for_media_type(media_type: &str) -> MediaMethod {
        let lower = media_type.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "image/jpeg" | "image/png" | "image/webp" | "image/gif" | "image/bmp"
        ) {
            MediaMethod::Photo
        } else if lower.starts_with("audio/") {
            MediaMethod::Audio
        } else {
            MediaMethod::Document
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MediaMethod::Photo => "sendPhoto",
            MediaMethod::Audio => "sendAudio",
            MediaMethod::Document => "sendDocument",
        }
    }

    fn field(self) -> &'static str {
        match self {
            MediaMethod::Photo => "photo",
            MediaMethod::Audio => "audio",
            MediaMethod::Document => "document",
        }
    }
}

/// A client for one bot at one API base. Keep it: its agent pools keep-alive connections.
pub struct BotApi {
    /// The API base, ending with `/`.
    base: url::Url,
    token: String,
    /// `scheme://host[:port]` of the base.
    target: String,
    agent: ureq::Agent,
    /// Downloads: the same policy with a longer body budget.
    stats: Arc<ApiStats>,
}

impl std::fmt::Debug for BotApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotApi")
            .field("target", &self.target)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// The outbound policy of Bot API calls: 15 s total, 5 s connect; private networks only for a
/// loopback `api_base_url`.
fn outbound(base: &url::Url) -> OutboundConfig {
    OutboundConfig {
        allow_private_network: base.host().is_some_and(|h| super::is_loopback_host(&h)),
        max_response_bytes: MAX_UPDATES_BYTES,
        ..OutboundConfig::http_delivery()
    }
}

impl BotApi {
    /// A client for `token` at `api_base_url` (validated by config: absolute http/https).
    pub fn new(api_base_url: &str, token: &str, stats: Arc<ApiStats>) -> Result<BotApi, String> {
        let mut base = url::Url::parse(api_base_url)
            .map_err(|_| "`api_base_url` is not an absolute URL".to_string())?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err("`api_base_url` must be an http(s) URL with a host".into());
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(BotApi {
            target: redact_target(&base),
            agent: super::agent(&outbound(&base)),
            base,
            token: token.to_string(),
            stats,
        })
    }

    /// `scheme://host[:port]/bot<redacted>/<method>`: how messages name an endpoint.
    pub fn endpoint(&self, method: &str) -> String {
        format!("`{}/bot<redacted>/{method}`", self.target)
    }

    fn method_url(&self, method: &str) -> String {
        format!("{}bot{}/{method}", self.base, self.token)
    }

    /// Replaces any copy of the token in text the server sent back.
    fn scrub(&self, text: &str) -> String {
        let one_line: String = text
            .chars()
            .take(300)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if self.token.is_empty() {
            one_line
        } else {
            one_line.replace(&self.token, "<redacted>")
        }
    }

    /// `getUpdates` with `offset`, `timeout` (seconds) and the handled `allowed_updates`; the
    /// request may take `timeout` + [`POLL_GRACE`]. Returns the updates as sent.
    pub fn get_updates(&self, offset: Option<i64>, timeout: u32) -> Result<Vec<Value>, ApiError> {
        let mut body = json!({"timeout": timeout, "allowed_updates": ALLOWED_UPDATES});
        if let Some(offset) = offset {
            body["offset"] = json!(offset);
        }
        let request = self
            .agent
            .post(self.method_url("getUpdates"))
            .config()
            .timeout_global(Some(Duration::from_secs(u64::from(timeout)) + POLL_GRACE))
            .timeout_recv_response(Some(Duration::from_secs(u64::from(timeout)) + POLL_GRACE))
            .timeout_recv_body(Some(Duration::from_secs(u64::from(timeout)) + POLL_GRACE))
            .build()
            .header("Content-Type", "application/json");
        let result = self.finish(
            "getUpdates",
            request.send(body.to_string().as_bytes()),
            MAX_UPDATES_BYTES,
        )?;
        match result {
            Value::Array(updates) => Ok(updates),
            Value::Null => Ok(Vec::new()),
            _ => Err(self.invalid("getUpdates", 200, "`result` is not an array")),
        }
    }

    /// `getFile` for `file_id`.
    pub fn get_file(&self, file_id: &str) -> Result<FileInfo, ApiError> {
        let result = self.call_json("getFile", &json!({"file_id": file_id}))?;
        Ok(FileInfo {
            file_path: result
                .get("file_path")
                .and_then(Value::as_str)
                .filter(|p| !p.trim().is_empty())
                .map(str::to_string),
            file_size: result.get("file_size").and_then(Value::as_u64),
        })
    }

    /// Downloads `file_path` (from `getFile`), reading at most `max_bytes`.
    pub fn download(&self, file_path: &str, max_bytes: u64) -> Result<Download, ApiError> {
        let method = "downloadFile";
        let usable = !file_path.starts_with('/')
            && !file_path.contains("..")
            && !file_path.contains(['?', '#', '\\']);
        if !usable {
            return Err(self.invalid(method, 200, "`file_path` is not a relative download path"));
        }
        let url = format!("{}file/bot{}/{file_path}", self.base, self.token);
        let response = self.agent.get(url).call();
        let mut response = match response {
            Ok(r) => r,
            Err(e) => return Err(self.transport(method, &e)),
        };
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let err = if status == 429 {
                ApiError::Rejected {
                    endpoint: self.endpoint(method),
                    status,
                    error_code: 429,
                    description: "Too Many Requests".into(),
                    retry_after: header_retry_after(&response),
                }
            } else {
                self.invalid(method, status, "the file download did not answer 2xx")
            };
            self.stats.record(method, err.outcome());
            return Err(err);
        }
        let mut reader = response
            .body_mut()
            .with_config()
            .limit(max_bytes + 1)
            .reader()
            .take(max_bytes + 1);
        let mut buf = Vec::new();
        if let Err(e) = reader.read_to_end(&mut buf) {
            let err = match e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()) {
                Some(ureq::Error::BodyExceedsLimit(_)) => {
                    self.stats.record(method, "ok");
                    return Ok(Download::TooLarge);
                }
                _ => self.transport(method, &ureq::Error::Io(e)),
            };
            return Err(err);
        }
        self.stats.record(method, "ok");
        if buf.len() as u64 > max_bytes {
            return Ok(Download::TooLarge);
        }
        Ok(Download::Bytes(buf))
    }

    /// `sendMessage` of `text`; returns the new message id when the server gave one.
    pub fn send_message(&self, to: &Destination, text: &str) -> Result<Option<i64>, ApiError> {
        let mut body = to.members();
        body.insert("text".into(), json!(text));
        let result = self.call_json("sendMessage", &Value::Object(body))?;
        Ok(message_id(&result))
    }

    /// `sendPhoto` / `sendAudio` / `sendDocument` as `multipart/form-data`.
    pub fn send_media(
        &self,
        to: &Destination,
        upload: Upload<'_>,
    ) -> Result<Option<i64>, ApiError> {
        let boundary = format!("kheish-{:032x}", rand::random::<u128>());
        let mut body = Vec::with_capacity(upload.data.len() + 1024);
        for (name, value) in to.members() {
            let text = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{text}\r\n"
                )
                .as_bytes(),
            );
        }
        let file_name: String = upload
            .file_name
            .chars()
            .map(|c| if c == '"' || c.is_control() { '_' } else { c })
            .collect();
        let media_type: String = upload
            .media_type
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"{file_name}\"\r\nContent-Type: {media_type}\r\n\r\n",
                upload.method.field()
            )
            .as_bytes(),
        );
        body.extend_from_slice(upload.data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let method = upload.method.name();
        let response = self
            .agent
            .post(self.method_url(method))
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .send(&body[..]);
        let result = self.finish(method, response, MAX_BODY_BYTES)?;
        Ok(message_id(&result))
    }

    /// `answerCallbackQuery` for `callback_query_id` (no text: it only stops the client's
    /// progress indicator).
    pub fn answer_callback_query(&self, callback_query_id: &str) -> Result<(), ApiError> {
        self.call_json(
            "answerCallbackQuery",
            &json!({"callback_query_id": callback_query_id}),
        )
        .map(drop)
    }

    fn call_json(&self, method: &'static str, body: &Value) -> Result<Value, ApiError> {
        let response = self
            .agent
            .post(self.method_url(method))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes());
        self.finish(method, response, MAX_BODY_BYTES)
    }

    fn transport(&self, method: &'static str, e: &ureq::Error) -> ApiError {
        let class = classify(e);
        self.stats.record(method, "transport_error");
        ApiError::Transport {
            endpoint: self.endpoint(method),
            class,
            reason: class.reason(&self.target),
        }
    }

    fn invalid(&self, method: &'static str, status: u16, detail: &str) -> ApiError {
        ApiError::Invalid {
            endpoint: self.endpoint(method),
            status,
            detail: detail.to_string(),
        }
    }

    /// Reads a Bot API answer: `result` of `{"ok":true}`, or the error. Counts the call.
    fn finish(
        &self,
        method: &'static str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        cap: u64,
    ) -> Result<Value, ApiError> {
        let mut response = match response {
            Ok(r) => r,
            Err(e) => return Err(self.transport(method, &e)),
        };
        let status = response.status().as_u16();
        let header_wait = header_retry_after(&response);
        let body = {
            let mut reader = response
                .body_mut()
                .with_config()
                .limit(cap + 1)
                .reader()
                .take(cap + 1);
            let mut buf = Vec::new();
            reader.read_to_end(&mut buf).ok().map(|_| buf)
        };
        let outcome = self.interpret(method, status, header_wait, body);
        match &outcome {
            Ok(_) => self.stats.record(method, "ok"),
            Err(e) => self.stats.record(method, e.outcome()),
        }
        outcome
    }

    fn interpret(
        &self,
        method: &'static str,
        status: u16,
        header_wait: Option<Duration>,
        body: Option<Vec<u8>>,
    ) -> Result<Value, ApiError> {
        let parsed = body
            .as_deref()
            .and_then(|b| serde_json::from_slice::<Value>(b).ok())
            .filter(|v| v.get("ok").and_then(Value::as_bool).is_some());
        let Some(answer) = parsed else {
            if status == 429 {
                return Err(ApiError::Rejected {
                    endpoint: self.endpoint(method),
                    status,
                    error_code: 429,
                    description: "Too Many Requests".into(),
                    retry_after: header_wait,
                });
            }
            let detail = if (300..400).contains(&status) {
                "a redirect, which is not followed; point `api_base_url` at the Bot API itself"
            } else {
                "not a Bot API answer (JSON with `ok`)"
            };
            return Err(self.invalid(method, status, detail));
        };
        if answer["ok"].as_bool() == Some(true) && (200..300).contains(&status) {
            return Ok(answer.get("result").cloned().unwrap_or(Value::Null));
        }
        let error_code = answer
            .get("error_code")
            .and_then(Value::as_i64)
            .unwrap_or(i64::from(status));
        let retry_after = answer
            .pointer("/parameters/retry_after")
            .and_then(Value::as_u64)
            .map(Duration::from_secs)
            .or(header_wait);
        let mut description = answer
            .get("description")
            .and_then(Value::as_str)
            .map(|d| self.scrub(d))
            .unwrap_or_else(|| "no description".into());
        // A group upgraded to a supergroup has a new chat id, given only here: the operator
        // needs it to fix the target.
        if let Some(id) = answer
            .pointer("/parameters/migrate_to_chat_id")
            .and_then(Value::as_i64)
        {
            description.push_str(&format!(" (parameters.migrate_to_chat_id: {id})"));
        }
        Err(ApiError::Rejected {
            endpoint: self.endpoint(method),
            status,
            error_code,
            description,
            retry_after,
        })
    }
}

fn header_retry_after(response: &ureq::http::Response<ureq::Body>) -> Option<Duration> {
    response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()))
}

/// `message_id` of a `result` that is a Message; `None` for `true` or a partial object.
fn message_id(result: &Value) -> Option<i64> {
    result.get("message_id").and_then(Value::as_i64)
}

/// A cached client and what it was built from.
type CachedClient = (String, String, Arc<BotApi>);

/// Clients by connector name, rebuilt when the connector's base URL or token changes (a
/// reload or a rotated token). Shared by one component's threads.
#[derive(Debug)]
pub struct BotApis {
    stats: Arc<ApiStats>,
    /// By connector name: `(api_base_url, token, client)`.
    clients: Mutex<BTreeMap<String, CachedClient>>,
}

impl BotApis {
    pub fn new(stats: Arc<ApiStats>) -> BotApis {
        BotApis {
            stats,
            clients: Mutex::new(BTreeMap::new()),
        }
    }

    /// The client of connector `name` for `api_base_url` and `token`.
    pub fn get(&self, name: &str, api_base_url: &str, token: &str) -> Result<Arc<BotApi>, String> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((base, tok, client)) = clients.get(name) {
            if base == api_base_url && tok == token {
                return Ok(Arc::clone(client));
            }
        }
        let client = Arc::new(BotApi::new(api_base_url, token, Arc::clone(&self.stats))?);
        clients.insert(
            name.to_string(),
            (
                api_base_url.to_string(),
                token.to_string(),
                Arc::clone(&client),
            ),
        );
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> BotApi {
        BotApi::new(
            "https://api.telegram.org",
            "123:SECRET-TOKEN",
            Arc::default(),
        )
        .unwrap()
    }

    fn check(status: u16, body: &str) -> Result<Value, ApiError> {
        api().interpret("sendMessage", status, None, Some(body.as_bytes().to_vec()))
    }

    #[test]
    fn answers_are_read_tolerantly() {
        assert_eq!(check(200, r#"{"ok":true,"result":true}"#), Ok(json!(true)));
        assert_eq!(check(200, r#"{"ok":true}"#), Ok(Value::Null));
        assert_eq!(
            message_id(&check(200, r#"{"ok":true,"result":{"message_id":7}}"#).unwrap()),
            Some(7)
        );
        assert_eq!(message_id(&json!(true)), None);
    }

    #[test]
    fn errors_keep_code_description_and_flood_wait() {
        let e = check(
            429,
            r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 5","parameters":{"retry_after":5}}"#,
        )
        .unwrap_err();
        assert!(e.is_flood_wait());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
        let e = check(
            400,
            r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found 123:SECRET-TOKEN"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code(), "telegram_error_400");
        let text = e.to_string();
        assert!(!text.contains("SECRET-TOKEN"), "{text}");
        assert!(text.contains("/bot<redacted>/sendMessage"), "{text}");
        let e = check(
            400,
            r#"{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1009999999999}}"#,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .ends_with("(parameters.migrate_to_chat_id: -1009999999999)"),
            "{e}"
        );
        let e = check(502, "<html>bad gateway</html>").unwrap_err();
        assert_eq!(e.code(), "telegram_invalid_response");
        let e = check(301, "").unwrap_err();
        assert_eq!(e.code(), "redirect_not_followed");
    }

    #[test]
    fn media_methods_follow_the_media_type() {
        assert_eq!(MediaMethod::for_media_type("image/PNG"), MediaMethod::Photo);
        assert_eq!(
            MediaMethod::for_media_type("audio/mpeg"),
            MediaMethod::Audio
        );
        assert_eq!(
            MediaMethod::for_media_type("image/svg+xml"),
            MediaMethod::Document
        );
        assert_eq!(
            MediaMethod::for_media_type("application/pdf"),
            MediaMethod::Document
        );
    }

    #[test]
    fn debug_and_endpoints_hide_the_token() {
        let api = api();
        assert!(!format!("{api:?}").contains("SECRET"));
        assert_eq!(
            api.endpoint("getUpdates"),
            "`https://api.telegram.org/bot<redacted>/getUpdates`"
        );
    }

    #[test]
    fn loopback_bases_may_reach_private_addresses() {
        let cfg = |u: &str| outbound(&url::Url::parse(u).unwrap()).allow_private_network;
        assert!(cfg("http://127.0.0.1:8081"));
        assert!(cfg("http://localhost:8081/"));
        assert!(!cfg("https://api.telegram.org"));
        assert!(!cfg("http://10.0.0.5/"));
    }
}
