//! Sessions, runs, run outputs and ingress receipts as the rest of the crate sees them (SPEC §0,
//! §6, §11.1). `store` reads and writes these; `ingress`, the run handlers and the control plane
//! pass them around. Serialisation is the JSON view the control plane returns.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::reply::ReplyTarget;
use super::ConnectorKind;

/// Run states (SPEC §11.1): `queued → claimed → completed | failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Claimed,
    Completed,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Claimed => "claimed",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        match s {
            "queued" => Some(RunStatus::Queued),
            "claimed" => Some(RunStatus::Claimed),
            "completed" => Some(RunStatus::Completed),
            "failed" => Some(RunStatus::Failed),
            _ => None,
        }
    }

    /// True for `completed` and `failed`: nothing changes a finished run.
    pub fn is_final(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The session policy recorded on a session and handed to run handlers (SPEC §2
/// `session_policy`). kheishctl stores the scopes and does not interpret them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicySnapshot {
    pub persona_id: Option<String>,
    #[serde(default)]
    pub capability_scope: Map<String, Value>,
    #[serde(default)]
    pub credential_scope: Map<String, Value>,
}

/// A durable conversation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Session {
    pub session_id: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// `connector:KIND/NAME` when ingress created it, `control_plane` for `PUT /v1/sessions/{id}`.
    pub created_by: String,
    #[serde(flatten)]
    pub policy: PolicySnapshot,
    /// Default reply targets, used when neither an output nor its run names any.
    pub reply_targets: Vec<ReplyTarget>,
    pub metadata: Map<String, Value>,
}

/// What an accepted event carries (SPEC §6.7): text `content` with optional `attachments`, or
/// ordered `input_items`. Inline assets are stored in the state root and appear here as
/// `{"type":"asset_reference","asset_id"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInput {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_items: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<Value>>,
}

/// A run as stored and shown by `GET /v1/runs/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    pub run_id: String,
    pub session_id: String,
    pub connector_kind: ConnectorKind,
    pub connector_name: String,
    pub status: RunStatus,
    pub actor_id: String,
    pub input: RunInput,
    pub metadata: Map<String, Value>,
    /// Reply-target snapshot taken when the run was created.
    pub reply_targets: Vec<ReplyTarget>,
    pub policy: PolicySnapshot,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub claim_owner: Option<String>,
    pub claim_expires_at_ms: Option<i64>,
    pub claim_count: i64,
    pub finished_at_ms: Option<i64>,
    pub error: Option<String>,
}

impl Run {
    /// The run as it stands at `now_ms`: a claim that expired before then has returned the
    /// run to the queue (SPEC §11.1), so it reads `queued`, without the old claim's owner and
    /// expiry. The row itself changes at the next claim; `claim_count` keeps counting.
    pub fn as_of(mut self, now_ms: i64) -> Run {
        if self.status == RunStatus::Claimed && self.claim_expires_at_ms.is_some_and(|t| t < now_ms)
        {
            self.status = RunStatus::Queued;
            self.claim_owner = None;
            self.claim_expires_at_ms = None;
        }
        self
    }
}

/// One output record of a run (SPEC §11.1 `POST /v1/runs/{id}/output`). The delivery queue
/// turns each into one delivery per reply target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunOutput {
    pub output_id: String,
    pub run_id: String,
    pub content: Option<String>,
    pub parts: Option<Vec<Value>>,
    /// Explicit override targets; `None` means "the run's snapshot, else the session's".
    pub reply_targets: Option<Vec<ReplyTarget>>,
    pub created_at_ms: i64,
}

/// An ingress receipt (SPEC §0, §6.3). The raw key is never stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Receipt {
    /// `KIND:NAME:<hash>` (telegram: `telegram:NAME:<update_id>`).
    pub receipt_key: String,
    pub connector_kind: ConnectorKind,
    pub connector_name: String,
    /// Full 64-hex SHA-256 of the raw key.
    pub key_sha256: String,
    /// 64-hex SHA-256 of the canonical payload (§6.4).
    pub fingerprint: String,
    pub status: String,
    pub run_id: String,
    pub session_id: String,
    pub received_at_ms: i64,
    pub duplicate_hits: i64,
    pub last_duplicate_at_ms: Option<i64>,
}

/// A new session to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSession {
    pub session_id: String,
    pub created_by: String,
    pub policy: PolicySnapshot,
    pub reply_targets: Vec<ReplyTarget>,
    pub metadata: Map<String, Value>,
    pub now_ms: i64,
}

/// A new run to insert (always `queued`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub run_id: String,
    pub session_id: String,
    pub connector_kind: ConnectorKind,
    pub connector_name: String,
    pub actor_id: String,
    pub input: RunInput,
    pub metadata: Map<String, Value>,
    pub reply_targets: Vec<ReplyTarget>,
    pub policy: PolicySnapshot,
    pub now_ms: i64,
}

/// A new receipt to insert, together with its run.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReceipt {
    pub receipt_key: String,
    pub connector_kind: ConnectorKind,
    pub connector_name: String,
    pub key_sha256: String,
    pub fingerprint: String,
    pub run_id: String,
    pub session_id: String,
    pub now_ms: i64,
}

/// A new stored asset (decoded bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct NewAsset {
    pub asset_id: String,
    pub media_type: String,
    pub file_name: Option<String>,
    pub sha256: String,
    pub data: Vec<u8>,
    pub now_ms: i64,
}

/// A random id with a prefix and a millisecond time component, so ids sort by creation:
/// `run_0192f3a4b5c6_9f8e7d6c5b4a3928`.
pub fn new_id(prefix: &str, now_ms: i64) -> String {
    let random: u64 = rand::random();
    format!("{prefix}_{:012x}_{random:016x}", now_ms.max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_differ() {
        let a = new_id("run", 1_700_000_000_000);
        let b = new_id("run", 1_700_000_000_001);
        assert!(a < b);
        assert_ne!(new_id("run", 5), new_id("run", 5));
        assert!(a.starts_with("run_"));
    }

    #[test]
    fn run_status_round_trips() {
        for s in [
            RunStatus::Queued,
            RunStatus::Claimed,
            RunStatus::Completed,
            RunStatus::Failed,
        ] {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
        }
        assert!(RunStatus::Completed.is_final());
        assert!(!RunStatus::Claimed.is_final());
    }
}
