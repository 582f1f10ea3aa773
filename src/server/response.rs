//! HTTP responses: the [`ApiResponse`] value every route returns, JSON bodies, and the RFC 9457
//! problem envelope with its stable `code` (SPEC §5). The mapping from library errors to status
//! codes lives here, in one table per error type.

use serde::Serialize;
use serde_json::{json, Map};

use crate::config::runtime::PatchError;
use crate::ingress::{AcceptStatus, Answer, IngressError};
use crate::leases::LeaseRefusal;
use crate::model::error_chain;
use crate::output::Printer;
use crate::registry::runtime::RuntimeError;
use crate::secrets::SecretError;
use crate::store::health::StorageFailure;
use crate::store::StoreError;

/// A response before it is written: status, extra headers and body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl ApiResponse {
    /// A JSON body (compact).
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> ApiResponse {
        let body = serde_json::to_vec(value).expect("serialising a response value cannot fail");
        ApiResponse {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body,
        }
    }

    /// A plain-text body (metrics, health).
    pub fn text(status: u16, content_type: &'static str, body: String) -> ApiResponse {
        ApiResponse {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into_bytes(),
        }
    }

    /// No body (204 and the like).
    pub fn empty(status: u16) -> ApiResponse {
        ApiResponse {
            status,
            content_type: "text/plain",
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// An `application/problem+json` error: `{"type","title","status","detail","code"}`.
    /// `detail` must never contain a secret value.
    pub fn problem(status: u16, code: &str, detail: impl Into<String>) -> ApiResponse {
        ApiResponse::problem_with(status, code, detail, serde_json::Map::new())
    }

    /// A problem with extra members (e.g. `retry_after_ms`, `run_id`).
    pub fn problem_with(
        status: u16,
        code: &str,
        detail: impl Into<String>,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> ApiResponse {
        let mut body = json!({
            "type": format!("https://kheish.dev/problems/{code}"),
            "title": title(status),
            "status": status,
            "detail": detail.into(),
            "code": code,
        });
        if let Some(obj) = body.as_object_mut() {
            obj.extend(extra);
        }
        let mut resp = ApiResponse::json(status, &body);
        resp.content_type = "application/problem+json";
        resp
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> ApiResponse {
        self.headers.push((name, value.into()));
        self
    }
}

/// The reason phrase used as a problem's `title`.
pub fn title(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// `Retry-After` seconds for a request refused because the state database failed: 1 s for a
/// passing hiccup (a lock), and while commits are known to fail (`failing`) half the time they
/// have been failing, between 2 and 30 s, so clients back off during a long outage. The daemon
/// does not depend on clients to notice recovery: its writer probes by itself.
pub fn storage_retry_after(failing: Option<&StorageFailure>, now: std::time::Instant) -> u64 {
    match failing {
        None => 1,
        Some(f) => (now.saturating_duration_since(f.since).as_secs() / 2).clamp(2, 30),
    }
}

/// The one answer to a state-database failure, on every route: 503 `store_unavailable` with
/// `Retry-After: 1`. The whole cause chain goes to the daemon log under `context` (identical
/// lines are rate-limited by the printer); the body names the cause but no paths.
pub fn store_error(out: &Printer, context: &str, err: &StoreError) -> ApiResponse {
    out.error(&format!("{context}: {}", error_chain(err)));
    let detail = match err.fault() {
        Some(fault) => format!(
            "the state database failed: {}; see the daemon log",
            fault.cause()
        ),
        None if matches!(err, StoreError::Busy { .. }) => {
            "the state database is busy; retry shortly".to_string()
        }
        None => "the state database failed; see the daemon log".to_string(),
    };
    ApiResponse::problem(503, "store_unavailable", detail).with_header("Retry-After", "1")
}

/// An ingress answer: 202 for a new event, 200 for a duplicate or a protocol answer.
pub fn answer(answer: &Answer) -> ApiResponse {
    match answer {
        Answer::Event(accepted) => match accepted.status {
            AcceptStatus::Accepted => ApiResponse::json(202, accepted),
            AcceptStatus::Duplicate => ApiResponse::json(200, accepted),
        },
        Answer::Protocol(body) | Answer::Events { body, .. } => ApiResponse::json(200, body),
    }
}

/// The one table from ingress errors to HTTP: status, stable code, extra members and headers.
/// A store failure (`Unavailable`) gets `Retry-After: 1`; see [`ingress_error_during`].
pub fn ingress_error(err: &IngressError) -> ApiResponse {
    ingress_error_during(err, None)
}

/// [`ingress_error`], knowing whether the state database is failing now (`failing`): a store
/// failure then gets the longer [`storage_retry_after`].
pub fn ingress_error_during(err: &IngressError, failing: Option<&StorageFailure>) -> ApiResponse {
    use IngressError as E;
    let detail = err.to_string();
    let mut extra = serde_json::Map::new();
    let (status, code) = match err {
        E::ConnectorNotFound { .. } => (404, "connector_not_found"),
        E::PayloadTooLarge { .. } => (413, "payload_too_large"),
        E::Unauthorized { .. } => (401, "unauthorized"),
        E::Forbidden { .. } => (403, "forbidden"),
        E::InvalidJson { .. } => (400, "invalid_json"),
        E::InvalidPayload { path, .. } => {
            extra.insert("path".into(), json!(path));
            (400, "invalid_payload")
        }
        E::UnknownMember { member } => {
            extra.insert("path".into(), json!(format!("$.{member}")));
            (400, "unknown_member")
        }
        E::IdempotencyKeyRequired => (400, "idempotency_key_required"),
        E::ReservedMetadataKey { .. } => (400, "reserved_metadata_key"),
        E::NotAllowedUnauthenticated { member } => {
            extra.insert("path".into(), json!(format!("$.{member}")));
            (400, "unauthenticated_member_not_allowed")
        }
        E::ReplyOverrideNotAllowed => (400, "reply_targets_not_allowed"),
        E::MissingContent => (400, "missing_content"),
        E::MixedContent => (400, "mixed_content"),
        E::UnknownAsset { .. } => (400, "unknown_asset"),
        E::WrongIngressMode { .. } => (409, "wrong_ingress_mode"),
        E::SessionUnresolved { .. } => (400, "session_unresolved"),
        E::SessionNotFound { .. } => (409, "session_not_found"),
        E::SessionPolicyConflict { .. } => (409, "session_policy_conflict"),
        E::AmbiguousBinding { .. } => (409, "ambiguous_binding"),
        E::IdempotencyConflict { run_id, session_id } => {
            extra.insert("run_id".into(), json!(run_id));
            extra.insert("session_id".into(), json!(session_id));
            (409, "idempotency_conflict")
        }
        E::RateLimited {
            kind,
            retry_after_ms,
        } => {
            extra.insert("retry_after_ms".into(), json!(retry_after_ms));
            let code = format!("{kind}_ingress_rate_limited");
            let secs = retry_after_ms.div_ceil(1000).max(1);
            return ApiResponse::problem_with(429, &code, detail, extra)
                .with_header("Retry-After", secs.to_string());
        }
        E::Unavailable { .. } => {
            let secs = storage_retry_after(failing, std::time::Instant::now());
            return ApiResponse::problem_with(503, "store_unavailable", detail, extra)
                .with_header("Retry-After", secs.to_string());
        }
    };
    ApiResponse::problem_with(status, code, detail, extra)
}

/// A refused credential lease fetch (SPEC §10.7): 404 for a key the connector does not
/// declare (or an unknown connector), 401 for a wrong, expired or revoked lease token.
pub fn lease_refusal(err: LeaseRefusal, name: &str, env_key: &str) -> ApiResponse {
    match err {
        LeaseRefusal::UndeclaredKey => ApiResponse::problem(
            404,
            "credential_not_found",
            format!("external connector `{name}` declares no credential slot `{env_key}`"),
        ),
        LeaseRefusal::Unauthorized => ApiResponse::problem(
            401,
            "unauthorized",
            "the credential lease token is missing, wrong, expired or revoked",
        )
        .with_header("WWW-Authenticate", "Bearer"),
    }
}

/// A declared credential whose secret cannot be read now (slot gone, store unreadable): 503
/// `credential_unavailable`; the message names the slot, never a value.
pub fn credential_unavailable(err: &SecretError) -> ApiResponse {
    ApiResponse::problem(503, "credential_unavailable", err.to_string())
        .with_header("Retry-After", "1")
}

/// Secret-store failures of the runtime control plane.
pub fn secret_error(out: &Printer, e: &SecretError) -> ApiResponse {
    match e {
        SecretError::InvalidRef { .. } | SecretError::EmptyValue { .. } => {
            ApiResponse::problem(400, "invalid_secret", e.to_string())
        }
        SecretError::Store(store) => store_error(out, "writing the secret store", store),
        _ => {
            out.error(&format!("secret store: {e}"));
            ApiResponse::problem(503, "secret_store_unavailable", e.to_string())
        }
    }
}

/// Runtime connector store refusals (SPEC §12).
pub fn runtime_error(out: &Printer, e: &RuntimeError) -> ApiResponse {
    match e {
        RuntimeError::NotFound { what, .. } => {
            let code = if *what == "connector" {
                "connector_not_found"
            } else {
                "secret_not_found"
            };
            ApiResponse::problem(404, code, e.to_string())
        }
        RuntimeError::FileBacked { .. } => {
            ApiResponse::problem(409, "connector_file_backed", e.to_string())
        }
        RuntimeError::Patch(PatchError::PlatformChange { .. }) => {
            ApiResponse::problem(409, "platform_immutable", e.to_string())
        }
        RuntimeError::Patch(PatchError::Invalid { pointer, detail }) => {
            let mut extra = Map::new();
            extra.insert("pointer".into(), json!(pointer));
            ApiResponse::problem_with(400, "invalid_connector", detail.clone(), extra)
        }
        RuntimeError::Invalid(diagnostics) => {
            let mut extra = Map::new();
            extra.insert("diagnostics".into(), json!(diagnostics));
            ApiResponse::problem_with(400, "invalid_connector", e.to_string(), extra)
        }
        RuntimeError::Referenced { by, .. } => {
            let mut extra = Map::new();
            extra.insert("referenced_by".into(), json!(by));
            ApiResponse::problem_with(409, "still_referenced", e.to_string(), extra)
        }
        RuntimeError::Secret(s) => secret_error(out, s),
        RuntimeError::Store(s) => store_error(out, "runtime store", s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_shape() {
        let r = ApiResponse::problem(404, "connector_not_found", "no http connector `x`");
        assert_eq!(r.content_type, "application/problem+json");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["status"], 404);
        assert_eq!(v["code"], "connector_not_found");
        assert_eq!(v["title"], "Not Found");
        assert_eq!(v["detail"], "no http connector `x`");
        assert!(v["type"]
            .as_str()
            .unwrap()
            .ends_with("/connector_not_found"));
    }

    #[test]
    fn rate_limit_has_retry_after() {
        let r = ingress_error(&IngressError::RateLimited {
            kind: crate::model::ConnectorKind::Http,
            retry_after_ms: 1200,
        });
        assert_eq!(r.status, 429);
        assert_eq!(r.headers, vec![("Retry-After", "2".to_string())]);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["code"], "http_ingress_rate_limited");
        assert_eq!(v["retry_after_ms"], 1200);
    }

    #[test]
    fn store_unavailable_has_retry_after_longer_while_failing() {
        let err = IngressError::Unavailable {
            detail: "the state database's disk is full".into(),
        };
        let r = ingress_error(&err);
        assert_eq!(r.status, 503);
        assert_eq!(r.headers, vec![("Retry-After", "1".to_string())]);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["code"], "store_unavailable");

        let since = std::time::Instant::now();
        let failing = StorageFailure {
            fault: crate::store::StorageFault::DiskFull,
            since,
            since_ms: 0,
            message: String::new(),
        };
        let r = ingress_error_during(&err, Some(&failing));
        assert_eq!(r.headers, vec![("Retry-After", "2".to_string())]);
        let after = |secs| since + std::time::Duration::from_secs(secs);
        assert_eq!(storage_retry_after(Some(&failing), after(20)), 10);
        assert_eq!(storage_retry_after(Some(&failing), after(600)), 30);
        assert_eq!(storage_retry_after(None, after(5)), 1);
    }

    #[test]
    fn store_error_detail_names_the_cause_without_the_path() {
        let out = Printer::plain(false);
        let err = StoreError::DiskFull {
            path: "/srv/state/state.db".into(),
            op: "claiming a run".into(),
        };
        let r = store_error(&out, "test", &err);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let detail = v["detail"].as_str().unwrap();
        assert!(detail.contains("disk is full"), "{detail}");
        assert!(!detail.contains("/srv"), "{detail}");
    }
}
