//! The inbound pipeline (SPEC §6): authenticate, parse, apply payload rules, resolve the
//! session, deduplicate through the durable receipt, rate-limit, and create the run — receipt,
//! session, bindings and run in ONE group-committed transaction before the answer.
//!
//! `ingress` calls out only through `net` clients and only after the dedupe and the rate limit
//! (a pipeline `Stage`: Slack file downloads, Telegram media) or after the commit (Telegram
//! callback answers), and never knows HTTP status codes: it returns
//! [`Accepted`] or a typed [`IngressError`], and `server::response` maps errors to statuses.

pub mod auth;
pub mod external;
pub mod fingerprint;
pub mod http;
pub mod in_flight;
pub mod payload;
pub mod pipeline;
pub mod ratelimit;
pub mod slack;
pub mod telegram;
pub mod telegram_io;

use crate::model::ConnectorKind;
use crate::sessions::SessionError;

/// Whether an event was new or a replay of an accepted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AcceptStatus {
    Accepted,
    Duplicate,
}

/// The answer to an accepted (or duplicate) event: SPEC §6.2.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Accepted {
    pub status: AcceptStatus,
    pub run_id: String,
    pub session_id: String,
    /// `KIND/NAME`.
    pub connector: String,
}

/// What the server renders for an ingress request that was not refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A new event (202) or a replay of an accepted one (200), SPEC §6.2.
    Event(Accepted),
    /// A protocol-level answer that creates no run, rendered as 200 with this JSON body: the
    /// form Slack's `url_verification` challenge, a skipped Telegram update or a batch's
    /// per-item results take.
    Protocol(serde_json::Value),
    /// The answer of an external sidecar request (SPEC §10.2): 200 with `body` whatever the
    /// events' statuses, and one outcome per event (one for `/events`, one per item of
    /// `/events/batch`, in order) for the metrics.
    Events {
        body: serde_json::Value,
        outcomes: Vec<EventOutcome>,
    },
}

/// What became of one external event, as counted in the metrics. The wire status is
/// [`EventOutcome::status`]; a reused `event_id` with another payload is `rejected` on the
/// wire and counted as a conflict, like the 409 of the other kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    Accepted,
    Duplicate,
    Conflict,
    Rejected,
    RateLimited,
    Error,
}

impl EventOutcome {
    /// The protocol's status word (`accepted|duplicate|rejected|rate_limited|error`).
    pub fn status(self) -> &'static str {
        match self {
            EventOutcome::Accepted => "accepted",
            EventOutcome::Duplicate => "duplicate",
            EventOutcome::Conflict | EventOutcome::Rejected => "rejected",
            EventOutcome::RateLimited => "rate_limited",
            EventOutcome::Error => "error",
        }
    }
}

/// Why an event was refused. Messages name the member or check that failed, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngressError {
    #[error("no {kind} connector named `{name}`")]
    ConnectorNotFound { kind: ConnectorKind, name: String },
    #[error("request body exceeds the limit of {limit} bytes for this route")]
    PayloadTooLarge { limit: usize },
    #[error("{detail}")]
    Unauthorized { detail: String },
    #[error("request body is not valid JSON: {detail}")]
    InvalidJson { detail: String },
    #[error("`{path}`: {detail}")]
    InvalidPayload { path: String, detail: String },
    #[error("unknown member `{member}`")]
    UnknownMember { member: String },
    #[error("`idempotency_key` is required by this connector")]
    IdempotencyKeyRequired,
    #[error("metadata key `{key}` is reserved for the daemon")]
    ReservedMetadataKey { key: String },
    #[error("`{member}` is not accepted on a connector without authentication")]
    NotAllowedUnauthenticated { member: String },
    #[error("payload reply targets need an authenticated connector with allow_payload_reply_targets = true")]
    ReplyOverrideNotAllowed,
    #[error("the event has no content: send a non-empty `content` or `input_items`")]
    MissingContent,
    #[error("send either `content` (with optional `attachments`) or `input_items`, not both")]
    MixedContent,
    #[error("asset `{asset_id}` does not exist")]
    UnknownAsset { asset_id: String },
    #[error("no session could be resolved: {hint}")]
    SessionUnresolved { hint: String },
    #[error("session `{session_id}` does not exist and this connector's session_policy.create_if_missing is false")]
    SessionNotFound { session_id: String },
    #[error("session `{session_id}` was created with a different persona or scope than this connector's session_policy")]
    SessionPolicyConflict { session_id: String },
    #[error(
        "the event's binding keys are bound to two different sessions (`{first}` and `{second}`)"
    )]
    AmbiguousBinding { first: String, second: String },
    #[error(
        "this idempotency key was already used with a different payload (original run `{run_id}`)"
    )]
    IdempotencyConflict { run_id: String, session_id: String },
    #[error("{kind} connector ingress is rate limited; retry after {retry_after_ms} ms")]
    RateLimited {
        kind: ConnectorKind,
        retry_after_ms: u64,
    },
    /// The request came in a way the connector is not configured for (a webhook on a
    /// polling Telegram connector).
    #[error("{detail}")]
    WrongIngressMode { detail: String },
    /// An allowlist of the connector refuses the event (403); `detail` names the member,
    /// its value and the list.
    #[error("{detail}")]
    Forbidden { detail: String },
    #[error("the state root is unavailable ({detail}); retry later")]
    Unavailable { detail: String },
}

impl From<SessionError> for IngressError {
    fn from(e: SessionError) -> IngressError {
        match e {
            SessionError::Unresolved { hint } => IngressError::SessionUnresolved { hint },
            SessionError::NotFound { session_id } => IngressError::SessionNotFound { session_id },
            SessionError::PolicyConflict { session_id } => {
                IngressError::SessionPolicyConflict { session_id }
            }
            SessionError::AmbiguousBinding { first, second } => {
                IngressError::AmbiguousBinding { first, second }
            }
            SessionError::Store(e) => IngressError::Unavailable {
                detail: e.to_string(),
            },
        }
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The stored receipt key and the full key digest for a raw key (SPEC §6.3). Raw keys are
/// never stored. `raw` is: http — the idempotency key; slack — `SCOPE:EVENT_ID` as ingress
/// forms it; telegram — the update id; external — the event id. http and external keys are
/// trimmed first.
pub fn receipt_key(kind: ConnectorKind, name: &str, raw: &str) -> (String, String) {
    let raw = match kind {
        ConnectorKind::Http | ConnectorKind::External | ConnectorKind::Telegram => raw.trim(),
        ConnectorKind::Slack => raw,
    };
    let digest = sha256_hex(raw.as_bytes());
    let key = match kind {
        ConnectorKind::Telegram => format!("telegram:{name}:{raw}"),
        _ => format!("{kind}:{name}:{}", &digest[..32]),
    };
    (key, digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_keys_follow_the_spec_table() {
        let (key, digest) = receipt_key(ConnectorKind::Http, "orders", " order-123 ");
        assert_eq!(digest, sha256_hex(b"order-123"));
        assert_eq!(key, format!("http:orders:{}", &digest[..32]));
        assert_eq!(
            receipt_key(ConnectorKind::Telegram, "bot", "42").0,
            "telegram:bot:42"
        );
        assert!(receipt_key(ConnectorKind::External, "d", "e1")
            .0
            .starts_with("external:d:"));
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
