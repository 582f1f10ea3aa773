//! The Slack Web API (SPEC §8) as a typed client: `chat.postMessage`, the external upload flow
//! (`files.getUploadURLExternal` → POST to the upload URL → `files.completeUploadExternal`) and
//! the download of a file a message shares (`url_private_download`).
//!
//! Tokens are arguments of each call, sent only as `Authorization: Bearer`, and never part of a
//! message or `Debug` output; every message names a host only as
//! [`redact_target`](super::redact_target) gives it (upload URLs and file URLs carry
//! credentials-like paths, so they are never echoed either).
//!
//! Address policy: the connector's `api_base_url` is where the operator says Slack is. When its
//! host is loopback (a local fake or a local proxy the operator configured on purpose), the API
//! calls, and upload and file URLs on that same host, may reach loopback; every other host —
//! `files.slack.com`, an upload URL Slack handed out, an `allowed_file_hosts` entry — goes
//! through the public-address guard and must be HTTPS. A production `api_base_url`
//! (`https://slack.com/api`) therefore never reaches a private address.
//!
//! Every call is counted by method and outcome in [`ApiStats`] (`/metrics`).

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::OutboundConfig;
use super::{classify, is_loopback_host, parse_retry_after, redact_target, FailureClass};

/// The most bytes read from a Web API answer.
pub const MAX_API_BODY_BYTES: u64 = 256 * 1024;
/// Slack's own file hosts (SPEC §8), reached over HTTPS only.
pub const SLACK_FILE_HOSTS: [&str; 3] =
    ["files.slack.com", "files.slack-edge.com", "slack-files.com"];

/// The `method` label values of [`ApiStats`].
pub const METHODS: [&str; 5] = [
    "chat.postMessage",
    "files.getUploadURLExternal",
    "files.upload_url",
    "files.completeUploadExternal",
    "files.download",
];
/// The `outcome` label values of [`ApiStats`].
pub const OUTCOMES: [&str; 5] = ["ok", "slack_error", "rate_limited", "http_error", "failed"];

/// Web API calls by method and outcome, for `/metrics` (labels: the fixed sets above).
pub type ApiStats = super::CallStats;

/// The clients of a process, one per `api_base_url`, sharing one [`ApiStats`]: ingress (file
/// downloads) and the `slack` delivery transport take theirs from here, so keep-alive
/// connections are reused and every call is counted once.
#[derive(Debug)]
pub struct SlackClients {
    stats: Arc<ApiStats>,
    clients: Mutex<std::collections::HashMap<String, Arc<SlackApi>>>,
    file_budget: Duration,
}

/// How long Slack ingress may spend downloading one message's files by default (issue 13
/// leaves it open): Slack takes an answer slower than 3 s as a failed delivery and re-sends the
/// event, so the downloads of one message stop in time for the answer to beat that.
pub const DEFAULT_FILE_BUDGET: Duration = Duration::from_millis(2_500);

impl Default for SlackClients {
    fn default() -> SlackClients {
        SlackClients::with_file_budget(DEFAULT_FILE_BUDGET)
    }
}

impl SlackClients {
    /// Clients whose ingress downloads of one message take at most `file_budget` in all.
    pub fn with_file_budget(file_budget: Duration) -> SlackClients {
        SlackClients {
            stats: Arc::default(),
            clients: Mutex::default(),
            file_budget,
        }
    }

    /// How long the downloads of one message's files may take in all.
    pub fn file_budget(&self) -> Duration {
        self.file_budget
    }

    /// The client of `api_base_url`, built on first use.
    pub fn get(&self, api_base_url: &str) -> Result<Arc<SlackApi>, String> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(api_base_url) {
            return Ok(Arc::clone(client));
        }
        let client = Arc::new(SlackApi::new(api_base_url, Arc::clone(&self.stats))?);
        clients.insert(api_base_url.to_string(), Arc::clone(&client));
        Ok(client)
    }

    /// The call counters of every client.
    pub fn stats(&self) -> &ApiStats {
        &self.stats
    }
}

/// Why a Web API call did not succeed. Messages name the redacted host and Slack's error code,
/// never a token or a URL path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// HTTP 429 (with its `Retry-After`) or `{"ok":false,"error":"ratelimited"}`.
    #[error("`{target}` rate limited {method}")]
    RateLimited {
        method: &'static str,
        target: String,
        retry_after: Option<Duration>,
    },
    /// `{"ok":false,"error":CODE}`.
    #[error("{method} failed at `{target}`: {error}")]
    Slack {
        method: &'static str,
        target: String,
        error: String,
    },
    /// A non-2xx status other than 429.
    #[error("`{target}` answered HTTP {status} to {method}")]
    Status {
        method: &'static str,
        target: String,
        status: u16,
    },
    /// The request did not complete (timeout, refused connection, blocked address, …).
    #[error("{method}: {reason}")]
    Request {
        method: &'static str,
        class: FailureClass,
        reason: String,
    },
    /// A 2xx answer that is not the documented shape.
    #[error("`{target}` answered {method} with an unusable body: {detail}")]
    Invalid {
        method: &'static str,
        target: String,
        detail: String,
    },
    /// A URL Slack handed out (an upload URL) that this client will not call.
    #[error("{method}: {detail}")]
    Refused {
        method: &'static str,
        detail: String,
    },
}

/// A message `chat.postMessage` created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub channel: String,
    pub ts: String,
}

/// The answer of `files.getUploadURLExternal`. The URL is a credential-like, short-lived
/// address: it is used at once and never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct UploadTicket {
    pub upload_url: String,
    pub file_id: String,
}

impl std::fmt::Debug for UploadTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadTicket")
            .field("upload_url", &"<redacted>")
            .field("file_id", &self.file_id)
            .finish()
    }
}

/// Why a file was not downloaded (SPEC §8). Each is recorded on the run as skipped; none
/// refuses the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadError {
    /// The URL's host is not a Slack file host, the `api_base_url` host or an
    /// `allowed_file_hosts` entry.
    HostNotAllowed,
    /// A Slack or allowed host over plain HTTP.
    NotHttps,
    /// The file is larger than the limit.
    TooLarge,
    /// The host answered a redirect (never followed).
    Redirected,
    /// Any other failure (status, network); the text names the redacted host only.
    Failed(String),
}

impl DownloadError {
    /// The stable reason recorded on the run.
    pub fn code(&self) -> &'static str {
        match self {
            DownloadError::HostNotAllowed => "host_not_allowed",
            DownloadError::NotHttps => "not_https",
            DownloadError::TooLarge => "too_large",
            DownloadError::Redirected => "redirected",
            DownloadError::Failed(_) => "download_failed",
        }
    }
}

/// A client for one connector's `api_base_url`. Holds its agents (keep-alive), so build one per
/// base URL and keep it.
pub struct SlackApi {
    base: url::Url,
    target: String,
    /// Whether the base host is loopback (see the module docs).
    base_is_loopback: bool,
    /// Calls to the base host (loopback allowed only when the base host is loopback).
    api: ureq::Agent,
    /// Calls to any other host: public addresses only.
    public: ureq::Agent,
    stats: Arc<ApiStats>,
}

impl std::fmt::Debug for SlackApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackApi")
            .field("target", &self.target)
            .finish()
    }
}

/// The Web API's limits: 15 s per call, 5 s connect (SPEC §11.5), capped bodies.
pub fn api_config() -> OutboundConfig {
    OutboundConfig {
        total_timeout: Duration::from_secs(15),
        connect_timeout: Duration::from_secs(5),
        max_response_bytes: MAX_API_BODY_BYTES,
        allow_private_network: false,
    }
}

impl SlackApi {
    /// A client for `api_base_url` (validated by the config: absolute http(s)).
    pub fn new(api_base_url: &str, stats: Arc<ApiStats>) -> Result<SlackApi, String> {
        let mut base = url::Url::parse(api_base_url)
            .map_err(|_| "`api_base_url` is not a valid URL".to_string())?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err("`api_base_url` must be an absolute http(s) URL".into());
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let base_is_loopback = base.host().is_some_and(|h| is_loopback_host(&h));
        let cfg = api_config();
        Ok(SlackApi {
            target: redact_target(&base),
            api: super::agent(&OutboundConfig {
                allow_private_network: base_is_loopback,
                ..cfg
            }),
            public: super::agent(&cfg),
            base,
            base_is_loopback,
            stats,
        })
    }

    /// The redacted base, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// True when `url` is on the `api_base_url` host (same scheme, host and port).
    fn on_base_host(&self, url: &url::Url) -> bool {
        url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default()
    }

    fn agent_for(&self, url: &url::Url) -> &ureq::Agent {
        if self.base_is_loopback && self.on_base_host(url) {
            &self.api
        } else {
            &self.public
        }
    }

    fn method_url(&self, method: &str) -> String {
        self.base
            .join(method)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| format!("{}{method}", self.base))
    }

    /// `chat.postMessage` with `channel`, `text`, `thread_ts` (when given) and `client_msg_id`.
    pub fn post_message(
        &self,
        token: &str,
        channel: &str,
        text: &str,
        thread_ts: Option<&str>,
        client_msg_id: &str,
    ) -> Result<Posted, ApiError> {
        const METHOD: &str = "chat.postMessage";
        let mut body = json!({"channel": channel, "text": text, "client_msg_id": client_msg_id});
        if let Some(ts) = thread_ts {
            body["thread_ts"] = json!(ts);
        }
        let request = self
            .api
            .post(self.method_url(METHOD))
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "application/json; charset=utf-8");
        let answer = self.finish(METHOD, request.send(body.to_string().as_bytes()))?;
        let field = |k: &str| answer.get(k).and_then(Value::as_str).map(str::to_string);
        match (field("channel"), field("ts")) {
            (Some(channel), Some(ts)) => Ok(Posted { channel, ts }),
            _ => Err(self.invalid(METHOD, "`channel` or `ts` is missing")),
        }
    }

    /// `files.getUploadURLExternal` (form-encoded `filename`, `length`).
    pub fn get_upload_url(
        &self,
        token: &str,
        filename: &str,
        length: u64,
    ) -> Result<UploadTicket, ApiError> {
        const METHOD: &str = "files.getUploadURLExternal";
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("filename", filename)
            .append_pair("length", &length.to_string())
            .finish();
        let answer = self.form(METHOD, token, &form)?;
        let field = |k: &str| answer.get(k).and_then(Value::as_str).map(str::to_string);
        match (field("upload_url"), field("file_id")) {
            (Some(upload_url), Some(file_id)) => Ok(UploadTicket {
                upload_url,
                file_id,
            }),
            _ => Err(self.invalid(METHOD, "`upload_url` or `file_id` is missing")),
        }
    }

    /// POSTs the file's bytes to the upload URL of `ticket`. The URL must be HTTPS on a Slack
    /// file host, or on the `api_base_url` host.
    pub fn upload(&self, ticket: &UploadTicket, data: &[u8]) -> Result<(), ApiError> {
        const METHOD: &str = "files.upload_url";
        let url = url::Url::parse(&ticket.upload_url).map_err(|_| ApiError::Refused {
            method: METHOD,
            detail: "Slack handed out an upload URL that is not a URL".into(),
        })?;
        let slack_host = url.scheme() == "https"
            && url
                .host_str()
                .is_some_and(|h| SLACK_FILE_HOSTS.contains(&h.to_ascii_lowercase().as_str()));
        if !slack_host && !self.on_base_host(&url) {
            self.stats.record(METHOD, "failed");
            return Err(ApiError::Refused {
                method: METHOD,
                detail: format!(
                    "the upload URL is on `{}`, which is neither an HTTPS Slack file host nor the \
                     api_base_url host",
                    redact_target(&url)
                ),
            });
        }
        let target = redact_target(&url);
        let res = self
            .agent_for(&url)
            .post(url.as_str())
            .header("Content-Type", "application/octet-stream")
            .send(data);
        match res {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let retry_after = retry_after(&response);
                let _ = read_capped(response.body_mut(), MAX_API_BODY_BYTES);
                if (200..300).contains(&status) {
                    self.stats.record(METHOD, "ok");
                    Ok(())
                } else if status == 429 {
                    self.stats.record(METHOD, "rate_limited");
                    Err(ApiError::RateLimited {
                        method: METHOD,
                        target,
                        retry_after,
                    })
                } else {
                    self.stats.record(METHOD, "http_error");
                    Err(ApiError::Status {
                        method: METHOD,
                        target,
                        status,
                    })
                }
            }
            Err(e) => Err(self.request_failed(METHOD, &e, &target)),
        }
    }

    /// `files.completeUploadExternal` sharing `file_id` (titled `title`) into `channel`, in
    /// thread `thread_ts` when given.
    pub fn complete_upload(
        &self,
        token: &str,
        file_id: &str,
        title: &str,
        channel: &str,
        thread_ts: Option<&str>,
    ) -> Result<(), ApiError> {
        const METHOD: &str = "files.completeUploadExternal";
        let files = json!([{"id": file_id, "title": title}]).to_string();
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("files", &files)
            .append_pair("channel_id", channel);
        if let Some(ts) = thread_ts {
            form.append_pair("thread_ts", ts);
        }
        self.form(METHOD, token, &form.finish()).map(drop)
    }

    /// Downloads a shared file with the bot token (SPEC §8): the host rules of the module
    /// docs, no redirects, at most `max_bytes`.
    pub fn download(
        &self,
        token: &str,
        raw_url: &str,
        allowed_hosts: &[String],
        max_bytes: u64,
        timeout: Duration,
    ) -> Result<Vec<u8>, DownloadError> {
        const METHOD: &str = "files.download";
        let url = url::Url::parse(raw_url).map_err(|_| DownloadError::HostNotAllowed)?;
        let host = url.host_str().unwrap_or("").to_ascii_lowercase();
        let listed = SLACK_FILE_HOSTS.contains(&host.as_str())
            || allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(&host));
        if !self.on_base_host(&url) {
            if !listed {
                return Err(DownloadError::HostNotAllowed);
            }
            if url.scheme() != "https" {
                return Err(DownloadError::NotHttps);
            }
        }
        let target = redact_target(&url);
        let res = self
            .agent_for(&url)
            .get(url.as_str())
            .config()
            // The message's remaining budget, never more than a Web API call's own limit.
            .timeout_global(Some(timeout.min(api_config().total_timeout)))
            .build()
            .header("Authorization", format!("Bearer {token}"))
            .call();
        let mut response = match res {
            Ok(r) => r,
            Err(e) => {
                let err = self.request_failed(METHOD, &e, &target);
                return Err(DownloadError::Failed(err.to_string()));
            }
        };
        let status = response.status().as_u16();
        if (300..400).contains(&status) {
            self.stats.record(METHOD, "http_error");
            return Err(DownloadError::Redirected);
        }
        if !(200..300).contains(&status) {
            self.stats.record(
                METHOD,
                if status == 429 {
                    "rate_limited"
                } else {
                    "http_error"
                },
            );
            return Err(DownloadError::Failed(format!(
                "`{target}` answered HTTP {status} to the file download"
            )));
        }
        let declared = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_bytes) {
            self.stats.record(METHOD, "ok");
            return Err(DownloadError::TooLarge);
        }
        match read_capped(response.body_mut(), max_bytes) {
            Ok(Some(data)) => {
                self.stats.record(METHOD, "ok");
                Ok(data)
            }
            Ok(None) => {
                self.stats.record(METHOD, "ok");
                Err(DownloadError::TooLarge)
            }
            Err(e) => {
                self.stats.record(METHOD, "failed");
                Err(DownloadError::Failed(format!(
                    "reading the file from `{target}` failed: {}",
                    classify_io_reason(&e, &target)
                )))
            }
        }
    }

    /// A form-encoded call of `method` with the bearer token.
    fn form(&self, method: &'static str, token: &str, form: &str) -> Result<Value, ApiError> {
        let request = self
            .api
            .post(self.method_url(method))
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "application/x-www-form-urlencoded");
        self.finish(method, request.send(form.as_bytes()))
    }

    /// Reads a Web API answer: 429, other statuses, `ok:false` with its `error`, or the
    /// `ok:true` object. Counts the call.
    fn finish(
        &self,
        method: &'static str,
        res: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, ApiError> {
        let mut response = match res {
            Ok(r) => r,
            Err(e) => return Err(self.request_failed(method, &e, &self.target)),
        };
        let status = response.status().as_u16();
        let retry_after = retry_after(&response);
        let body = read_capped(response.body_mut(), MAX_API_BODY_BYTES);
        if status == 429 {
            self.stats.record(method, "rate_limited");
            return Err(ApiError::RateLimited {
                method,
                target: self.target.clone(),
                retry_after,
            });
        }
        if !(200..300).contains(&status) {
            self.stats.record(method, "http_error");
            return Err(ApiError::Status {
                method,
                target: self.target.clone(),
                status,
            });
        }
        let value = match body {
            Ok(Some(bytes)) => serde_json::from_slice::<Value>(&bytes).ok(),
            _ => None,
        };
        let Some(Value::Object(answer)) = value else {
            self.stats.record(method, "failed");
            return Err(self.invalid(method, "not a JSON object"));
        };
        match answer.get("ok").and_then(Value::as_bool) {
            Some(true) => {
                self.stats.record(method, "ok");
                Ok(Value::Object(answer))
            }
            Some(false) => {
                let error = answer
                    .get("error")
                    .and_then(Value::as_str)
                    .map(sanitize)
                    .unwrap_or_else(|| "unknown_error".into());
                if error == "ratelimited" || error == "rate_limited" {
                    self.stats.record(method, "rate_limited");
                    return Err(ApiError::RateLimited {
                        method,
                        target: self.target.clone(),
                        retry_after,
                    });
                }
                self.stats.record(method, "slack_error");
                Err(ApiError::Slack {
                    method,
                    target: self.target.clone(),
                    error,
                })
            }
            None => {
                self.stats.record(method, "failed");
                Err(self.invalid(method, "`ok` is missing"))
            }
        }
    }

    fn invalid(&self, method: &'static str, detail: &str) -> ApiError {
        ApiError::Invalid {
            method,
            target: self.target.clone(),
            detail: detail.into(),
        }
    }

    fn request_failed(&self, method: &'static str, e: &ureq::Error, target: &str) -> ApiError {
        self.stats.record(method, "failed");
        let class = classify(e);
        ApiError::Request {
            method,
            class,
            reason: class.reason(target),
        }
    }
}

/// Slack's error codes are short snake_case words; anything else is cut and cleaned so a log
/// line stays one line.
fn sanitize(error: &str) -> String {
    error
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn retry_after(response: &ureq::http::Response<ureq::Body>) -> Option<Duration> {
    response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()))
}

/// Up to `max` bytes of a body: `Ok(None)` when it is longer.
fn read_capped(body: &mut ureq::Body, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut reader = body.with_config().limit(max + 1).reader().take(max + 1);
    let mut buf = Vec::new();
    reader.read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= max).then_some(buf))
}

fn classify_io_reason(e: &std::io::Error, target: &str) -> String {
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()) {
        return classify(inner).reason(target);
    }
    FailureClass::ConnectionFailed.reason(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(base: &str) -> SlackApi {
        SlackApi::new(base, Arc::default()).unwrap()
    }

    #[test]
    fn file_hosts_follow_the_spec() {
        let prod = api("https://slack.com/api");
        let allowed = vec!["cdn.example.com".to_string()];
        let check = |url: &str| match prod.download("t", url, &allowed, 10, Duration::from_secs(1))
        {
            Err(DownloadError::HostNotAllowed) => "host",
            Err(DownloadError::NotHttps) => "https",
            _ => "tried",
        };
        assert_eq!(check("https://evil.example.com/f"), "host");
        assert_eq!(check("http://files.slack.com/f"), "https");
        assert_eq!(check("http://cdn.example.com/f"), "https");
        assert_eq!(check("not a url"), "host");
        // A loopback file URL with a production base is refused before any connection.
        assert_eq!(check("http://127.0.0.1:9/f"), "host");
        let local = api("http://127.0.0.1:9/api");
        assert!(local.on_base_host(&url::Url::parse("http://127.0.0.1:9/files/x").unwrap()));
        assert!(!local.on_base_host(&url::Url::parse("http://127.0.0.1:10/files/x").unwrap()));
    }

    #[test]
    fn tickets_and_clients_redact() {
        let ticket = UploadTicket {
            upload_url: "https://files.slack.com/upload/v1/SECRET".into(),
            file_id: "F1".into(),
        };
        assert!(!format!("{ticket:?}").contains("SECRET"));
        let client = api("https://slack.com/api");
        assert_eq!(
            format!("{client:?}"),
            "SlackApi { target: \"https://slack.com\" }"
        );
        assert_eq!(sanitize("not_in_channel"), "not_in_channel");
        assert_eq!(sanitize("bad\nline xoxb"), "bad?line?xoxb");
    }
}
