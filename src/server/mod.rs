//! The daemon's HTTP side: the shared [`App`] state, the request type handlers see, and
//! [`run`], which owns the request threads and the shutdown handshake. The only module that
//! imports tiny_http.

pub mod control;
pub mod observe;
pub mod response;
pub mod router;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::cli::HandlerKind;
use crate::metrics::Metrics;
use crate::notify::Notify;
use crate::output::Printer;
use crate::store::Store;

pub use response::ApiResponse;
pub use router::Route;

/// Lifecycle phase, reported by `/readyz` (503 unless `Ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Starting = 0,
    Ready = 1,
    Draining = 2,
}

/// Options fixed at start.
#[derive(Debug, Clone)]
pub struct Options {
    pub handler: HandlerKind,
    /// Submitted receipts older than this are pruned.
    pub receipt_retention: Duration,
    /// At most this many receipts per connector are kept.
    pub receipt_max_per_connector: u64,
}

/// State shared by every request thread and background worker of one daemon.
pub struct App {
    pub out: Printer,
    pub state_root: PathBuf,
    pub options: Options,
    pub metrics: Metrics,
    /// Bumped whenever a run becomes claimable (new run, run released); claim long-polls and
    /// handler workers wait on it.
    pub runs_queued: Notify,
    phase: AtomicU8,
}

impl App {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }
}

/// One request as handlers see it: everything read from the wire, nothing of tiny_http.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: String,
    /// The request target exactly as received (path and query, percent-encoding kept).
    pub target: String,
    /// The path part of `target` (still encoded).
    pub path: String,
    /// Decoded query pairs.
    pub query: Vec<(String, String)>,
    /// Headers as sent, in order (names compared case-insensitively).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub remote: Option<IpAddr>,
}

impl ApiRequest {
    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of query parameter `key`.
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What a handler gets: the shared app and this thread's own database connection.
pub struct RequestCtx<'a> {
    pub app: &'a App,
    pub store: &'a Store,
}
