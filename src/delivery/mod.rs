//! The delivery queue's public API (SPEC §11): transports, attempt outcomes, and the operations
//! the server and the CLI share (replay, resolve, drain).
//!
//! `delivery` never reads ingress types; `ingress` never sends outbound HTTP.

pub mod policy;
pub mod transport;
pub mod worker;

use std::time::Duration;

use crate::model::delivery::DeliveryJob;

/// The result of one attempt to send a delivery (SPEC §11.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The target took it.
    Delivered { http_status: Option<u16> },
    /// Try again later; `retry_after` from the target (Retry-After, Telegram retry_after, …).
    Retryable {
        code: String,
        reason: String,
        http_status: Option<u16>,
        retry_after: Option<Duration>,
    },
    /// Never going to work: dead-letter now.
    Terminal {
        code: String,
        reason: String,
        http_status: Option<u16>,
    },
}

/// Records per-step progress of a multi-step send (Slack, Telegram) durably, so a retry never
/// repeats a step that already succeeded. The http transport does not use it.
pub trait ProgressSink {
    fn save(&mut self, progress: &serde_json::Value) -> Result<(), String>;
}

/// One delivery plugin (`http`, `slack`, `telegram`, `external`).
pub trait Transport: Send + Sync {
    /// Sends one attempt. Never panics on target behaviour; every failure is an outcome.
    fn deliver(&self, job: &DeliveryJob, progress: &mut dyn ProgressSink) -> AttemptOutcome;
}
