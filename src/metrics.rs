//! In-memory metrics rendered as Prometheus text (SPEC §13).

use crate::model::ConnectorId;

/// Outcomes counted per connector on ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IngressOutcome {
    Accepted,
    Duplicate,
    Conflict,
    Rejected,
    RateLimited,
    Unauthorized,
}

/// The daemon's metrics registry.
#[derive(Debug, Default)]
pub struct Metrics {}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Counts one ingress request of `connector` with `outcome`.
    pub fn ingress(&self, _connector: &ConnectorId, _outcome: IngressOutcome) {}

    /// Records one HTTP request's latency under its route template and status.
    pub fn request(&self, _route: &'static str, _status: u16, _seconds: f64) {}
}
