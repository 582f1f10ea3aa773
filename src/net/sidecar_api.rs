//! The sidecar runtime contract (SPEC §10.1, daemon -> sidecar) as a typed client:
//! `GET /manifest`, `GET /health` and `POST /deliver`.
//!
//! Requests carry `Authorization: Bearer <shared_token>` when the connector has one; the token
//! is never part of a message. Every message names the sidecar only as
//! [`redact_target`](super::redact_target) gives it (`scheme://host[:port]`). Manifest and health
//! calls use [`OutboundConfig::sidecar_control`] (3 s); deliveries use
//! [`OutboundConfig::http_delivery`] (15 s). Response bodies are read up to 64 KiB; a longer
//! body is not usable. `remote_http` sidecars go through the public-address guard unless the
//! connector sets `allow_private_network`; `child_process` sidecars are on loopback by rule.
//!
//! [`SidecarClient::deliver`] interprets the answer exactly as SPEC §10.1 says: `committed`
//! counts only with a 2xx status; `retryable_error` / `terminal_error` are honoured on any
//! status; 429 retries after `Retry-After`; a non-2xx without a usable body is terminal for 4xx
//! and retryable for 5xx. A 2xx without a usable body is retried (the sidecar deduplicates by
//! delivery id, so a repeat is safe; a lost output is not).

use std::io::Read;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::Value;

use super::{classify, parse_retry_after, redact_target, FailureClass, OutboundConfig};

/// The only runtime protocol version the daemon speaks to sidecars.
pub const PROTOCOL_VERSION: u64 = 1;
/// The header naming the runtime protocol version on `/deliver`.
pub const PROTOCOL_HEADER: &str = "X-Kheish-External-Protocol-Version";
/// The most response-body bytes read from a sidecar.
pub const MAX_BODY_BYTES: u64 = 64 * 1024;

/// What the sidecar can do (`capabilities` of its manifest). Absent members are `false`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    pub attachments_in: bool,
    pub attachments_out: bool,
    pub threads: bool,
}

/// `GET {base_url}/manifest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub protocol_version: u64,
    pub instance_id: String,
    pub capabilities: Capabilities,
}

/// The `status` of a health answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    Starting,
    Ready,
    Degraded,
    Draining,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Ready => "ready",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Draining => "draining",
        }
    }

    fn parse(s: &str) -> Option<HealthStatus> {
        Some(match s {
            "starting" => HealthStatus::Starting,
            "ready" => HealthStatus::Ready,
            "degraded" => HealthStatus::Degraded,
            "draining" => HealthStatus::Draining,
            _ => return None,
        })
    }

    /// `ready` and `degraded` take deliveries (SPEC §10.6 readiness).
    pub fn is_serving(self) -> bool {
        matches!(self, HealthStatus::Ready | HealthStatus::Degraded)
    }
}

/// `GET {base_url}/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub protocol_version: u64,
    pub instance_id: String,
    pub status: HealthStatus,
    pub detail: Option<String>,
}

/// Why a manifest or health call failed. Messages name the redacted sidecar address only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SidecarError {
    #[error("the sidecar base_url is not a valid http(s) URL")]
    InvalidBaseUrl,
    #[error("{what} request to `{target}` failed: {reason}")]
    Request {
        what: &'static str,
        target: String,
        class: FailureClass,
        reason: String,
    },
    #[error("`{target}` answered HTTP {status} to the {what} request")]
    Status {
        what: &'static str,
        target: String,
        status: u16,
    },
    #[error("`{target}` answered the {what} request with an unusable body: {detail}")]
    Invalid {
        what: &'static str,
        target: String,
        detail: String,
    },
}

/// How a `/deliver` attempt ended, as SPEC §10.1 reads the answer. The delivery layer maps it
/// onto its attempt outcome; codes are stable (`sidecar_terminal_error`, `http_status_404`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliverReply {
    Committed {
        status: u16,
    },
    Retryable {
        status: Option<u16>,
        code: String,
        reason: String,
        retry_after: Option<Duration>,
    },
    Terminal {
        status: Option<u16>,
        code: String,
        reason: String,
    },
}

/// A client for one sidecar. Holds its agents so keep-alive connections are reused; build one
/// per (base_url, token, private-network policy) and keep it.
pub struct SidecarClient {
    base: url::Url,
    target: String,
    token: Option<String>,
    control: ureq::Agent,
    delivery: ureq::Agent,
}

impl std::fmt::Debug for SidecarClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarClient")
            .field("target", &self.target)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl SidecarClient {
    /// A client for the sidecar at `base_url`. `allow_private_network`: the connector's flag,
    /// or `true` for `child_process` sidecars (loopback by rule).
    pub fn new(
        base_url: &str,
        token: Option<String>,
        allow_private_network: bool,
    ) -> Result<SidecarClient, SidecarError> {
        SidecarClient::with_configs(
            base_url,
            token,
            OutboundConfig {
                allow_private_network,
                ..OutboundConfig::sidecar_control()
            },
            OutboundConfig {
                allow_private_network,
                ..OutboundConfig::http_delivery()
            },
        )
    }

    /// A client with other limits (tests use short timeouts).
    pub fn with_configs(
        base_url: &str,
        token: Option<String>,
        control: OutboundConfig,
        delivery: OutboundConfig,
    ) -> Result<SidecarClient, SidecarError> {
        let mut base = url::Url::parse(base_url).map_err(|_| SidecarError::InvalidBaseUrl)?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(SidecarError::InvalidBaseUrl);
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(SidecarClient {
            target: redact_target(&base),
            base,
            token,
            control: super::agent(&control),
            delivery: super::agent(&delivery),
        })
    }

    /// The redacted address of the sidecar, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn url(&self, endpoint: &str) -> String {
        // `base` ends with '/', so joining keeps any path prefix of base_url.
        self.base
            .join(endpoint)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| format!("{}{endpoint}", self.base))
    }

    fn bearer(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// `GET {base_url}/manifest`.
    pub fn manifest(&self) -> Result<Manifest, SidecarError> {
        let body = self.get_json("manifest")?;
        parse_manifest(&body).map_err(|detail| SidecarError::Invalid {
            what: "manifest",
            target: self.target.clone(),
            detail,
        })
    }

    /// `GET {base_url}/health`.
    pub fn health(&self) -> Result<Health, SidecarError> {
        let body = self.get_json("health")?;
        parse_health(&body).map_err(|detail| SidecarError::Invalid {
            what: "health",
            target: self.target.clone(),
            detail,
        })
    }

    fn get_json(&self, what: &'static str) -> Result<Value, SidecarError> {
        let mut request = self.control.get(self.url(what));
        if let Some(bearer) = self.bearer() {
            request = request.header("Authorization", bearer);
        }
        let mut response = request.call().map_err(|e| {
            let class = classify(&e);
            SidecarError::Request {
                what,
                target: self.target.clone(),
                class,
                reason: class.reason(&self.target),
            }
        })?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(SidecarError::Status {
                what,
                target: self.target.clone(),
                status,
            });
        }
        let body = read_body(response.body_mut()).ok_or_else(|| SidecarError::Invalid {
            what,
            target: self.target.clone(),
            detail: format!("not read completely within {MAX_BODY_BYTES} bytes"),
        })?;
        let value: Value = serde_json::from_slice(&body).map_err(|e| SidecarError::Invalid {
            what,
            target: self.target.clone(),
            detail: format!("not JSON ({e})"),
        })?;
        if !value.is_object() {
            return Err(SidecarError::Invalid {
                what,
                target: self.target.clone(),
                detail: "not a JSON object".into(),
            });
        }
        Ok(value)
    }

    /// `POST {base_url}/deliver` of `body` (the SPEC §10.1 delivery document) for delivery
    /// `delivery_id`, with `Idempotency-Key: kheish:<delivery_id>`.
    pub fn deliver(&self, delivery_id: &str, body: &Value) -> DeliverReply {
        let mut request = self
            .delivery
            .post(self.url("deliver"))
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", format!("kheish:{delivery_id}"))
            .header(PROTOCOL_HEADER, PROTOCOL_VERSION.to_string());
        if let Some(bearer) = self.bearer() {
            request = request.header("Authorization", bearer);
        }
        let mut response = match request.send(body.to_string().as_bytes()) {
            Ok(r) => r,
            Err(e) => {
                let class = classify(&e);
                let reason = class.reason(&self.target);
                let code = class.code().to_string();
                return if class.is_retryable() {
                    DeliverReply::Retryable {
                        status: None,
                        code,
                        reason,
                        retry_after: None,
                    }
                } else {
                    DeliverReply::Terminal {
                        status: None,
                        code,
                        reason,
                    }
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = read_body(response.body_mut());
        deliver_reply(status, retry_after, body.as_deref(), &self.target)
    }
}

/// A manifest answer's body (a JSON object); the error says which member is wrong.
pub fn parse_manifest(body: &Value) -> Result<Manifest, String> {
    let protocol_version = body
        .get("protocol_version")
        .and_then(Value::as_u64)
        .ok_or("`protocol_version` is missing or not a number")?;
    let instance_id = required_string(body, "instance_id")?;
    let capabilities = match body.get("capabilities") {
        None | Some(Value::Null) => Capabilities::default(),
        Some(v) => Capabilities::deserialize(v).map_err(|e| format!("`capabilities`: {e}"))?,
    };
    Ok(Manifest {
        protocol_version,
        instance_id,
        capabilities,
    })
}

/// A health answer's body (a JSON object); the error says which member is wrong.
pub fn parse_health(body: &Value) -> Result<Health, String> {
    let protocol_version = body
        .get("protocol_version")
        .and_then(Value::as_u64)
        .ok_or("`protocol_version` is missing or not a number")?;
    let instance_id = required_string(body, "instance_id")?;
    let status = body
        .get("status")
        .and_then(Value::as_str)
        .and_then(HealthStatus::parse)
        .ok_or("`status` must be one of starting, ready, degraded, draining")?;
    let detail = body
        .get("detail")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Health {
        protocol_version,
        instance_id,
        status,
        detail,
    })
}

/// SPEC §10.1's reading of a `/deliver` answer from its status, `Retry-After` and raw body
/// (already capped at [`MAX_BODY_BYTES`]; `None` when it was longer or unreadable).
pub fn deliver_reply(
    status: u16,
    retry_after: Option<Duration>,
    body: Option<&[u8]>,
    target: &str,
) -> DeliverReply {
    let answer = body
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .and_then(|v| DeliverAnswer::from_json(&v));
    interpret(status, retry_after, answer, target)
}

/// The usable part of a `/deliver` answer body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeliverAnswer {
    status: AnswerStatus,
    detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnswerStatus {
    Committed,
    Retryable,
    Terminal,
}

impl DeliverAnswer {
    fn from_json(v: &Value) -> Option<DeliverAnswer> {
        let status = match v.get("status")?.as_str()? {
            "committed" => AnswerStatus::Committed,
            "retryable_error" => AnswerStatus::Retryable,
            "terminal_error" => AnswerStatus::Terminal,
            _ => return None,
        };
        // The detail is the sidecar's text: bounded, one line, so a log line stays a line.
        let detail = v.get("detail").and_then(Value::as_str).map(|d| {
            d.chars()
                .take(300)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect()
        });
        Some(DeliverAnswer { status, detail })
    }
}

/// SPEC §10.1's reading of a `/deliver` answer (pure, so every case is a unit test).
fn interpret(
    status: u16,
    retry_after: Option<Duration>,
    answer: Option<DeliverAnswer>,
    target: &str,
) -> DeliverReply {
    let with_detail = |base: String, a: &DeliverAnswer| match &a.detail {
        Some(d) if !d.trim().is_empty() => format!("{base}: {}", d.trim()),
        _ => base,
    };
    match answer {
        Some(a) if a.status == AnswerStatus::Terminal => DeliverReply::Terminal {
            status: Some(status),
            code: "sidecar_terminal_error".into(),
            reason: with_detail(
                format!("`{target}` refused the delivery (HTTP {status}, terminal_error)"),
                &a,
            ),
        },
        Some(a) if a.status == AnswerStatus::Retryable => DeliverReply::Retryable {
            status: Some(status),
            code: "sidecar_retryable_error".into(),
            reason: with_detail(
                format!("`{target}` asked to retry the delivery (HTTP {status}, retryable_error)"),
                &a,
            ),
            retry_after,
        },
        Some(_) if (200..300).contains(&status) => DeliverReply::Committed { status },
        answer => {
            let usable = if answer.is_some() {
                "`committed` without a 2xx status"
            } else {
                "no usable answer body"
            };
            match status {
                200..=299 => DeliverReply::Retryable {
                    status: Some(status),
                    code: "sidecar_invalid_response".into(),
                    reason: format!(
                        "`{target}` answered HTTP {status} with {usable}; the sidecar must answer \
                         {{\"status\":\"committed\"}}"
                    ),
                    retry_after: None,
                },
                300..=399 => DeliverReply::Terminal {
                    status: Some(status),
                    code: "redirect_not_followed".into(),
                    reason: format!(
                        "`{target}` answered HTTP {status} (a redirect); redirects are not \
                         followed, point base_url at the sidecar itself"
                    ),
                },
                429 | 500..=599 => DeliverReply::Retryable {
                    status: Some(status),
                    code: format!("http_status_{status}"),
                    reason: format!("`{target}` answered HTTP {status} with {usable}"),
                    retry_after,
                },
                400..=499 => DeliverReply::Terminal {
                    status: Some(status),
                    code: format!("http_status_{status}"),
                    reason: format!("`{target}` answered HTTP {status} with {usable}"),
                },
                _ => DeliverReply::Retryable {
                    status: Some(status),
                    code: format!("http_status_{status}"),
                    reason: format!("`{target}` answered unexpected HTTP {status}"),
                    retry_after,
                },
            }
        }
    }
}

/// A string member that must be present and non-blank.
fn required_string(body: &Value, member: &str) -> Result<String, String> {
    match body.get(member).and_then(Value::as_str) {
        Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
        _ => Err(format!("`{member}` is missing or blank")),
    }
}

/// The whole body when it fits in [`MAX_BODY_BYTES`]; `None` when it is longer or the read
/// failed (an unusable body).
fn read_body(body: &mut ureq::Body) -> Option<Vec<u8>> {
    let mut reader = body
        .with_config()
        .limit(MAX_BODY_BYTES + 1)
        .reader()
        .take(MAX_BODY_BYTES + 1);
    let mut buf = Vec::new();
    reader.read_to_end(&mut buf).ok()?;
    (buf.len() as u64 <= MAX_BODY_BYTES).then_some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: AnswerStatus) -> Option<DeliverAnswer> {
        Some(DeliverAnswer {
            status,
            detail: Some("why".into()),
        })
    }

    #[test]
    fn committed_counts_only_with_2xx() {
        assert_eq!(
            interpret(200, None, answer(AnswerStatus::Committed), "t"),
            DeliverReply::Committed { status: 200 }
        );
        assert!(matches!(
            interpret(404, None, answer(AnswerStatus::Committed), "t"),
            DeliverReply::Terminal { .. }
        ));
        assert!(matches!(
            interpret(503, None, answer(AnswerStatus::Committed), "t"),
            DeliverReply::Retryable { .. }
        ));
    }

    #[test]
    fn error_statuses_in_the_body_win_on_any_status() {
        let r = interpret(200, None, answer(AnswerStatus::Terminal), "t");
        assert!(
            matches!(&r, DeliverReply::Terminal { code, reason, .. } if code == "sidecar_terminal_error" && reason.ends_with(": why")),
            "{r:?}"
        );
        assert!(matches!(
            interpret(500, None, answer(AnswerStatus::Terminal), "t"),
            DeliverReply::Terminal { .. }
        ));
        assert!(matches!(
            interpret(400, None, answer(AnswerStatus::Retryable), "t"),
            DeliverReply::Retryable { .. }
        ));
    }

    #[test]
    fn unusable_bodies_go_by_status_class() {
        let after = Some(Duration::from_secs(7));
        assert_eq!(
            interpret(429, after, None, "t"),
            DeliverReply::Retryable {
                status: Some(429),
                code: "http_status_429".into(),
                reason: "`t` answered HTTP 429 with no usable answer body".into(),
                retry_after: after,
            }
        );
        assert!(matches!(
            interpret(404, None, None, "t"),
            DeliverReply::Terminal { .. }
        ));
        assert!(matches!(
            interpret(502, None, None, "t"),
            DeliverReply::Retryable { .. }
        ));
        assert!(matches!(
            interpret(302, None, None, "t"),
            DeliverReply::Terminal { code, .. } if code == "redirect_not_followed"
        ));
        assert!(matches!(
            interpret(200, None, None, "t"),
            DeliverReply::Retryable { code, .. } if code == "sidecar_invalid_response"
        ));
    }

    #[test]
    fn answers_parse_only_known_statuses() {
        let parse = |s: &str| DeliverAnswer::from_json(&serde_json::from_str(s).unwrap());
        assert_eq!(
            parse(r#"{"status":"committed"}"#).map(|a| a.status),
            Some(AnswerStatus::Committed)
        );
        assert_eq!(parse(r#"{"status":"ok"}"#), None);
        assert_eq!(parse(r#"{"detail":"x"}"#), None);
        assert_eq!(
            parse("{\"status\":\"terminal_error\",\"detail\":\"a\\nb\"}").and_then(|a| a.detail),
            Some("a b".into())
        );
    }

    #[test]
    fn base_urls_keep_their_path_prefix_and_the_debug_form_hides_the_token() {
        let c = SidecarClient::new(
            "http://127.0.0.1:9/prefix",
            Some("s3cr3t-value".into()),
            true,
        )
        .unwrap();
        assert_eq!(c.url("deliver"), "http://127.0.0.1:9/prefix/deliver");
        assert_eq!(c.target(), "http://127.0.0.1:9");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert_eq!(
            SidecarClient::new("ftp://x", None, false).unwrap_err(),
            SidecarError::InvalidBaseUrl
        );
    }
}
