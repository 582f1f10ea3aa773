//! The daemon's HTTP side: the shared [`App`] state, the request type handlers see, and the
//! routing of a checked request to its handler. The listener (`listener.rs`: accept loop, caps,
//! deadlines, shutdown) and the request side (`service.rs`: hyper request -> [`ApiRequest`] ->
//! [`ApiResponse`]) are the only modules that import hyper.

pub mod admin;
pub mod assets;
mod clock;
pub mod control;
pub mod credentials;
pub mod deliveries;
pub mod health;
pub mod ingress;
pub mod listener;
pub mod observe;
pub mod response;
pub mod router;
pub mod runtime;
mod service;
pub mod shutdown;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::ingress::ratelimit::RateLimiter;
use crate::leases::Leases;
use crate::metrics::Metrics;
use crate::net::slack_api::SlackClients;
use crate::notify::Notify;
use crate::output::Printer;
use crate::registry::{ConnectorSet, Registry, Sidecars};
use crate::store::writer::GroupWriter;
use crate::store::Store;

use admin::{AdminAuth, AdminRefusal};

pub use clock::Limits;
pub use listener::{raise_open_files_limit, start, Listener, Running};
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

/// State shared by every request and background worker of one daemon.
pub struct App {
    pub out: Printer,
    pub state_root: PathBuf,
    pub metrics: Metrics,
    /// Bumped whenever a run becomes claimable (new run, run released); claim long-polls and
    /// handler workers wait on it.
    pub runs_queued: Arc<Notify>,
    /// Bumped whenever deliveries were queued (run output, replay); delivery workers wait on it.
    pub deliveries_queued: Arc<Notify>,
    /// The connectors in force; replaced whole on reload. Shared with the delivery transports.
    pub registry: Arc<Registry>,
    /// Live state of the external sidecars (the supervisor writes it).
    pub sidecars: Arc<Sidecars>,
    /// Credential leases of `child_process` sidecars: issued by the supervisor, checked by
    /// the credential route.
    pub leases: Arc<Leases>,
    /// The group-commit writer: accepted events, run claims and settlements, delivery rounds.
    pub writer: Arc<GroupWriter>,
    pub limiter: RateLimiter,
    /// Receipt keys of events between their receipt look-up and their answer: a copy sent
    /// meanwhile waits for the first (see `ingress::in_flight`).
    pub in_flight: Arc<crate::ingress::in_flight::InFlight>,
    /// Slack Web API clients and their call counters, shared by Slack ingress (file
    /// downloads) and the `slack` delivery transport.
    pub slack_api: Arc<SlackClients>,
    /// Bot API access of Telegram ingress (clients, callback answers, call counters), shared
    /// by the webhook and the pollers.
    pub telegram: Arc<crate::ingress::telegram::TelegramIo>,
    pub admin: AdminAuth,
    phase: AtomicU8,
}

/// Everything [`App::new`] needs.
pub struct AppParts {
    pub out: Printer,
    pub state_root: PathBuf,
    pub runs_queued: Arc<Notify>,
    pub deliveries_queued: Arc<Notify>,
    pub connectors: ConnectorSet,
    pub writer: Arc<GroupWriter>,
    pub admin: AdminAuth,
    /// How long Slack ingress may download one message's files (`KHEISH_SLACK_FILE_BUDGET_MS`).
    pub slack_file_budget: std::time::Duration,
}

impl App {
    pub fn new(parts: AppParts) -> App {
        let hits = parts.writer.duplicate_counter();
        App {
            out: parts.out,
            state_root: parts.state_root,
            metrics: Metrics::new(),
            runs_queued: parts.runs_queued,
            deliveries_queued: parts.deliveries_queued,
            registry: Arc::new(Registry::new(parts.connectors)),
            sidecars: Arc::new(Sidecars::default()),
            leases: Arc::new(Leases::new()),
            writer: parts.writer,
            limiter: RateLimiter::new(),
            in_flight: Arc::new(crate::ingress::in_flight::InFlight::new(hits)),
            slack_api: Arc::new(SlackClients::with_file_budget(parts.slack_file_budget)),
            telegram: Arc::new(crate::ingress::telegram::TelegramIo::new(Arc::default())),
            admin: parts.admin,
            phase: AtomicU8::new(Phase::Starting as u8),
        }
    }

    /// The connectors in force now.
    pub fn connectors(&self) -> Arc<ConnectorSet> {
        self.registry.current()
    }

    /// Replaces the connectors (reload).
    pub fn set_connectors(&self, connectors: ConnectorSet) {
        self.registry.swap(connectors);
    }

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

/// One request as handlers see it: everything read from the wire, nothing of hyper.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: String,
    /// The request target exactly as received (path and query, percent-encoding kept).
    pub target: String,
    /// The path part of `target` (still encoded).
    pub path: String,
    /// Decoded query pairs.
    pub query: Vec<(String, String)>,
    /// Headers as sent (names lowercased; every value of a name, in the order sent).
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

/// What a handler gets: the shared app and a database connection of its own (on a thread of
/// the blocking pool).
pub struct RequestCtx<'a> {
    pub app: &'a App,
    pub store: &'a Store,
}

/// Why the listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {reason}")]
pub struct BindError {
    pub addr: String,
    pub reason: String,
}

/// The admin-token check of control-plane routes: `None` when the route needs none or the
/// token is right, else the 401/429 answer.
fn admin_refusal(app: &App, route: &Route, req: &ApiRequest) -> Option<ApiResponse> {
    if !route.needs_admin() {
        return None;
    }
    let auth = req.header_values("authorization");
    let now = Instant::now();
    for line in app.admin.refresh(now) {
        app.out.info(&line);
    }
    let write = !matches!(req.method.as_str(), "GET" | "HEAD");
    match app.admin.check(req.remote, &auth, write, now) {
        Ok(_) => None,
        Err(AdminRefusal::ReadOnly) => Some(ApiResponse::problem(
            403,
            "readonly_token",
            "the read-only token is accepted on GET routes only; use the admin token to change state",
        )),
        Err(AdminRefusal::Unauthorized(why)) => Some(
            ApiResponse::problem(401, "unauthorized", why)
                .with_header("WWW-Authenticate", "Bearer"),
        ),
        Err(AdminRefusal::Locked { retry_after_secs }) => Some(
            ApiResponse::problem(
                429,
                "too_many_auth_failures",
                "too many failed admin authentications from this address; retry later",
            )
            .with_header("Retry-After", retry_after_secs.to_string()),
        ),
    }
}

/// The routes answered on the runtime without the database (health and readiness); `None` for
/// every other route.
fn probe(app: &App, route: &Route) -> Option<ApiResponse> {
    let response = match route {
        Route::Healthz => ApiResponse::json(200, &serde_json::json!({"status": "ok"})),
        Route::Readyz => health::readyz(app),
        _ => return None,
    };
    Some(response)
}

/// Runs a control-plane route on a blocking-pool thread (the admin token was checked). Ingress
/// and claim long-polls are run by `service.rs`, which answers them without holding a thread.
fn dispatch(ctx: &RequestCtx<'_>, route: &Route, req: &ApiRequest) -> ApiResponse {
    match route {
        Route::Metrics => observe::metrics(ctx),
        Route::CredentialLease { name, env_key } => credentials::fetch(ctx, name, env_key, req),
        Route::ExternalAsset { .. } => assets::raw(ctx, route, req),
        Route::ListReceipts => observe::list_receipts(ctx, req),
        Route::ListDeliveries
        | Route::DeadLetters
        | Route::GetDelivery { .. }
        | Route::ReplayDelivery { .. }
        | Route::ResolveDelivery { .. }
        | Route::ReplayBulk
        | Route::ResetBackpressure => deliveries::handle(ctx, route, req),
        Route::RuntimeConnectors
        | Route::RuntimeConnector { .. }
        | Route::RuntimeSecrets
        | Route::RuntimeSecret { .. } => runtime::handle(ctx, route, req),
        _ => control::handle(ctx, route, req),
    }
}
