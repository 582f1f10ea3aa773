//! Deliveries (SPEC §11.3–§11.6): one output envelope queued for one reply target, delivered at
//! least once or dead-lettered. The status names are the spec's words.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use super::reply::ReplyTarget;

/// Delivery states: `pending` (attempts 0), `retrying`, `delivered`, `dead_lettered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Retrying,
    Delivered,
    DeadLettered,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Retrying => "retrying",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::DeadLettered => "dead_lettered",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "retrying" => Some(DeliveryStatus::Retrying),
            "delivered" => Some(DeliveryStatus::Delivered),
            "dead_lettered" => Some(DeliveryStatus::DeadLettered),
            _ => None,
        }
    }

    /// `pending` or `retrying`: still owed to its target.
    pub fn is_open(self) -> bool {
        matches!(self, DeliveryStatus::Pending | DeliveryStatus::Retrying)
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A delivery as stored and shown by the control plane and `replay`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    pub delivery_id: String,
    pub output_id: String,
    pub run_id: String,
    pub session_id: String,
    /// The connector of the run that produced the output (`KIND/NAME`).
    pub connector: String,
    pub target: ReplyTarget,
    /// Identity of the target for per-target order and the circuit breaker.
    pub target_key: String,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    pub next_attempt_at_ms: i64,
    pub lease_owner: Option<String>,
    pub lease_expires_at_ms: Option<i64>,
    /// The last failure, redacted (never a token, path or query of a URL).
    pub last_error: Option<String>,
    /// Stable code of the last failure (`http_status_500`, `timeout`, `blocked_private_address`, …).
    pub last_error_code: Option<String>,
    pub last_http_status: Option<u16>,
    /// Per-step progress of multi-step transports (Slack, Telegram), opaque JSON.
    pub progress: Option<Value>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub delivered_at_ms: Option<i64>,
    pub dead_lettered_at_ms: Option<i64>,
    /// Set when an operator resolved a dead letter without redelivery.
    pub resolution: Option<String>,
    pub resolved_at_ms: Option<i64>,
    /// The dead letter this delivery replays, if any.
    pub replayed_from_delivery_id: Option<String>,
}

/// What a transport is asked to send: the delivery and its output's content.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryJob {
    pub delivery: Delivery,
    /// The attempt number of this send (1 for the first).
    pub attempt: u32,
    pub content: Option<String>,
    pub parts: Option<Vec<Value>>,
    /// The stored assets the parts reference ([`referenced_asset_ids`]), in order of first
    /// reference; a referenced id without a stored asset is absent here.
    pub assets: Vec<AssetInfo>,
}

/// What a delivery tells its target about one stored asset (never its bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssetInfo {
    pub asset_id: String,
    pub media_type: String,
    pub file_name: Option<String>,
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
}

/// The asset ids an output's `parts` reference, in order of first reference, each once: the
/// `asset_id` string of every part that has one (`{"type":"asset_reference","asset_id"}` and
/// any other part type that names a stored asset).
pub fn referenced_asset_ids(parts: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for part in parts {
        if let Some(id) = part.get("asset_id").and_then(Value::as_str) {
            let id = id.trim();
            if !id.is_empty() && !ids.iter().any(|seen| seen == id) {
                ids.push(id.to_string());
            }
        }
    }
    ids
}

impl Delivery {
    /// A delivery of `run_1`'s output `out_1` (session `sess`, connector `http/orders`) to
    /// `target` in `status`, with every optional member empty and times 0: the one fixture
    /// unit tests and benches build on (`..Delivery::sample(..)`).
    pub fn sample(id: &str, target: ReplyTarget, status: DeliveryStatus) -> Delivery {
        Delivery {
            delivery_id: id.into(),
            output_id: "out_1".into(),
            run_id: "run_1".into(),
            session_id: "sess".into(),
            connector: "http/orders".into(),
            target,
            target_key: "k".into(),
            status,
            attempts: 0,
            next_attempt_at_ms: 0,
            lease_owner: None,
            lease_expires_at_ms: None,
            last_error: None,
            last_error_code: None,
            last_http_status: None,
            progress: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            delivered_at_ms: None,
            dead_lettered_at_ms: None,
            resolution: None,
            resolved_at_ms: None,
            replayed_from_delivery_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referenced_assets_are_listed_once_in_order() {
        let parts = vec![
            serde_json::json!({"type": "text", "text": "hi"}),
            serde_json::json!({"type": "asset_reference", "asset_id": "b"}),
            serde_json::json!({"type": "image", "asset_id": " a "}),
            serde_json::json!({"type": "asset_reference", "asset_id": "b"}),
            serde_json::json!({"type": "asset_reference", "asset_id": 7}),
            serde_json::json!({"type": "asset_reference", "asset_id": ""}),
        ];
        assert_eq!(referenced_asset_ids(&parts), ["b", "a"]);
        assert!(referenced_asset_ids(&[]).is_empty());
    }
}
