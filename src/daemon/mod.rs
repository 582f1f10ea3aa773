//! The composition of `kheishctl serve`: what starts in which order, and what stops in which
//! order. `commands/serve.rs` only turns flags into [`Settings`] and calls [`serve`].
//!
//! Start order: resolve the connector set (fail closed: a bad config or a missing secret is
//! [`StartRefused`], exit 4), read the delivery policy from the environment, open and migrate
//! the state root, release the claims of processes of this host that are gone (a crashed
//! daemon's runs and deliveries move again at once), resolve the admin token, start the
//! group-commit writer, raise the open-files limit, bind, then start the listener's runtime,
//! run handlers, delivery pool, retention timers, the sidecar supervisor (once the listener
//! accepts), the Telegram pollers and the secret watcher, and announce readiness.
//!
//! Shutdown order (SIGTERM/SIGINT): `readyz` says draining, stop accepting and let in-flight
//! requests finish (10 s at most), stop the handlers, then the delivery pool (in-flight sends
//! settle), the sidecars (SIGTERM, 10 s, SIGKILL of each child's group), the Telegram pollers,
//! the watcher and the retention timers, and flush the writer last.

pub mod handlers;
pub mod pollers;
pub mod retention;
pub mod sidecars;
pub mod watcher;

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::delivery::policy::{self, RetryPolicy};
use crate::delivery::pool::DEFAULT_LEASE;
use crate::delivery::retention::DeliveryRetention;
use crate::delivery::transport;
use crate::delivery::transport::external::SidecarStats;
use crate::delivery::{self, Observer, WorkerConfig, WorkerPool};
use crate::metrics::{Collector, Sample};
use crate::net::slack_api::SlackClients;
use crate::notify::Notify;
use crate::output::Printer;
use crate::secrets::Secret;
use crate::server::admin::{self, AdminAuth, TokenOrigin, TokenSource};
use crate::server::shutdown::{Control, Signals};
use crate::server::{self, App, AppParts, Listener, Phase};
use crate::store::deliveries::ClaimFilter;
use crate::store::writer::GroupWriter;
use crate::store::Store;

/// The listener's connection caps and deadlines, part of [`Settings`] (commands name them here:
/// they do not import `server`).
pub use crate::server::Limits;
pub use handlers::{HandlerConfig, HandlerMode};

/// In-flight requests get this long to finish on shutdown (SPEC §1.3).
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// The daemon refused to start because of its input (config, secrets, environment): exit 4.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartRefused(pub String);

/// Everything `serve` was told, already parsed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub state_root: PathBuf,
    /// The connector file, if any (without one only the control plane is served).
    pub connectors_config: Option<PathBuf>,
    /// `--listen` address.
    pub listen: String,
    /// Threads of the listener's blocking pool, which runs the requests' database work
    /// (`--workers`; default 4 per core).
    pub workers: Option<u16>,
    /// Connection caps and deadlines of the listener (`--max-connections`, `--header-timeout`, …).
    pub limits: Limits,
    pub handler: HandlerConfig,
    pub admin_token_env: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub readonly_token_env: Option<String>,
    pub readonly_token_file: Option<PathBuf>,
    /// Delivery sender threads (`--delivery-workers`).
    pub delivery_workers: u16,
    pub receipt_retention: Duration,
    pub receipt_max_per_connector: u64,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Runs the daemon until SIGINT/SIGTERM; SIGHUP reloads the connector file.
pub fn serve(out: &Printer, settings: Settings) -> Result<()> {
    let config_path = settings.connectors_config.clone();
    if config_path.is_none() {
        out.warn("no connector file given (--connectors-config / KHEISH_CONNECTORS_CONFIG); serving the control plane only");
    }
    let connectors = watcher::load(out, &settings.state_root, config_path.as_deref())?;
    // Invalid KHEISH_DELIVERY_* values stop the start like an invalid config (exit 4).
    let delivery_policy = RetryPolicy::from_env(&env).map_err(|e| StartRefused(e.to_string()))?;
    let delivery_lease =
        policy::lease_from_env(&env, DEFAULT_LEASE).map_err(|e| StartRefused(e.to_string()))?;
    let sidecar_timings =
        sidecars::Timings::from_env(&env).map_err(|e| StartRefused(e.to_string()))?;
    let slack_file_budget =
        crate::config::knobs::slack_file_budget_from_env(&env).map_err(StartRefused)?;
    // Opening here creates the state root and migrates it before any thread needs it.
    let store = Store::open(&settings.state_root)?;
    // Before handlers and delivery workers start: the claims of a crashed daemon (or drain) of
    // this host are released now, not after their lease (issue 15).
    let released = delivery::release_claims_of_gone_processes(&store)?;
    if !released.is_empty() {
        out.warn(&delivery::released_message(&released));
    }
    drop(store);
    let (token, origin) = admin::resolve_token(
        settings.admin_token_env.as_deref(),
        settings.admin_token_file.as_deref(),
        &settings.state_root,
        &env,
    )
    // A token that cannot be read is a secret that cannot be resolved: exit 4 (SPEC §1.3).
    .map_err(|e| StartRefused(format!("resolving the admin token: {e:#}")))?;
    let admin = admin_auth(token, &origin, &settings)?;
    let runs_queued = Arc::new(Notify::new());
    let notify = Arc::clone(&runs_queued);
    let writer = Arc::new(GroupWriter::start(
        &settings.state_root,
        Box::new(move |_| notify.notify_all()),
    )?);
    let health_out = out.clone();
    writer.health().observe(Box::new(move |c| {
        server::health::log_change(&health_out, c)
    }));
    server::raise_open_files_limit(out);
    let listener = Listener::bind(&settings.listen)?;
    let addr = listener.local_addr();
    let (control_tx, control_rx) = mpsc::channel();
    let signals = Signals::install(control_tx.clone()).context("installing signal handlers")?;

    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = settings.workers.map_or_else(|| 4 * cores, usize::from);
    let app = Arc::new(App::new(AppParts {
        out: out.clone(),
        state_root: settings.state_root.clone(),
        runs_queued,
        deliveries_queued: Arc::new(Notify::new()),
        connectors,
        writer,
        admin,
        slack_file_budget,
    }));
    let running = server::start(listener, Arc::clone(&app), settings.limits, cores, workers)
        .context("starting the listener's runtime")?;
    let handlers = handlers::HandlerPool::spawn(Arc::clone(&app), &settings.handler)
        .context("starting run handlers")?;
    let delivery_observer: Arc<dyn Observer> = Arc::new(DaemonObserver(Arc::clone(&app)));
    let sidecar_stats = Arc::new(SidecarStats::default());
    app.metrics
        .add_collector(sidecar_collector(Arc::clone(&sidecar_stats)));
    app.metrics
        .add_collector(slack_api_collector(Arc::clone(&app.slack_api)));
    app.metrics
        .add_collector(telegram_api_collector(Arc::clone(app.telegram.stats())));
    let deliveries = WorkerPool::spawn(WorkerConfig {
        state_root: settings.state_root.clone(),
        workers: usize::from(settings.delivery_workers),
        owner_prefix: "serve".into(),
        policy: delivery_policy,
        transports: Arc::new(transport::for_this_build(
            Some(Arc::clone(&app.registry)),
            sidecar_stats,
            Arc::clone(&app.slack_api),
            Arc::clone(app.telegram.stats()),
        )),
        notify: Arc::clone(&app.deliveries_queued),
        filter: ClaimFilter::default(),
        lease: delivery_lease,
        observer: Arc::clone(&delivery_observer),
        writer: Some(Arc::clone(&app.writer)),
    });
    let delivery_retention =
        DeliveryRetention::spawn(settings.state_root.clone(), delivery_observer);
    // After the listener accepts: a child reaches KHEISH_EXTERNAL_CONNECTOR_DAEMON_BASE_URL
    // (ingress, credential leases) from its first line.
    let sidecars = sidecars::Supervisor::spawn(Arc::clone(&app), addr, sidecar_timings)
        .context("starting the sidecar supervisor")?;
    let pollers =
        pollers::Pollers::spawn(Arc::clone(&app)).context("starting the telegram pollers")?;
    let (sidecar_swap, poller_swap) = (sidecars.reconciler(), pollers.reconciler());
    let watcher = watcher::SecretWatcher::spawn(
        Arc::clone(&app),
        Box::new(move || {
            sidecar_swap.request();
            poller_swap.request();
        }),
    )
    .context("starting the secret watcher")?;
    let retention = retention::Retention::spawn(
        settings.state_root.clone(),
        settings.receipt_retention,
        settings.receipt_max_per_connector,
        out.clone(),
    );

    announce_token(out, &origin);
    app.set_phase(Phase::Ready);
    out.info(&format!("listening on http://{addr}"));
    if out.json_mode() {
        let token_file = match &origin {
            TokenOrigin::StateRoot(path, _) | TokenOrigin::File(path) => {
                Some(path.display().to_string())
            }
            TokenOrigin::Env(_) => None,
        };
        out.json_line(&serde_json::json!({
            "event": "listening",
            "listen": addr.to_string(),
            "url": format!("http://{addr}"),
            "pid": std::process::id(),
            "workers": workers,
            "connectors": app.connectors().config.len(),
            "admin_token_file": token_file,
        }))?;
    }

    let reason = loop {
        match control_rx.recv() {
            Ok(Control::Shutdown(signal)) => break signal,
            Ok(Control::Reload) => {
                watcher::reload(&app, config_path.as_deref());
                sidecars.reconciler().request();
                pollers.reconciler().request();
            }
            Err(_) => break "signal thread ended",
        }
    };
    out.info(&format!("{reason}: draining"));
    app.set_phase(Phase::Draining);
    // Wakes claim long-polls so they answer 204 now instead of waiting out their `wait_ms`.
    app.runs_queued.notify_all();
    let stuck = running.shutdown(DRAIN_GRACE);
    handlers.shutdown();
    // After the listener and handlers (nothing queues output any more), before the
    // writer: in-flight sends finish and their settlements are written.
    deliveries.shutdown();
    // After the delivery pool (in-flight sends to sidecars are settled), before the writer:
    // every child gets SIGTERM, then SIGKILL after its stop grace.
    sidecars.shutdown();
    // Before the writer: a batch in flight gets its commit answers and saves its offset.
    pollers.shutdown();
    if stuck > 0 {
        out.warn(&format!(
            "{stuck} connection(s) were still open after {DRAIN_GRACE:?}; closed them"
        ));
    }
    watcher.stop();
    retention.shutdown();
    delivery_retention.shutdown();
    app.writer.shutdown();
    signals.stop();
    let stats = app.writer.stats();
    out.flush_repeats();
    out.info(&format!(
        "stopped: {} events in {} commits",
        stats.jobs.load(std::sync::atomic::Ordering::Relaxed),
        stats.commits.load(std::sync::atomic::Ordering::Relaxed)
    ));
    Ok(())
}

/// The control-plane tokens: the admin token and the optional read-only one (SPEC §5.2). A
/// read-only token that is blank or equals the admin token refuses the start (exit 4).
fn admin_auth(token: Secret, origin: &TokenOrigin, settings: &Settings) -> Result<AdminAuth> {
    let readonly = admin::resolve_readonly_token(
        settings.readonly_token_env.as_deref(),
        settings.readonly_token_file.as_deref(),
        &env,
    )
    .map_err(|e| StartRefused(format!("resolving the read-only token: {e:#}")))?;
    let readonly = match readonly {
        Some((value, _)) if value.is_blank() => {
            return Err(StartRefused("the read-only token is empty; give it a value".into()).into())
        }
        Some((value, ro_origin)) => Some(TokenSource {
            value,
            file: ro_origin.file().map(Path::to_path_buf),
        }),
        None => None,
    };
    let admin = TokenSource {
        value: token,
        file: origin.file().map(Path::to_path_buf),
    };
    AdminAuth::with_sources(admin, readonly).map_err(|why| StartRefused(why.into()).into())
}

/// Says where the admin token comes from (never its value).
fn announce_token(out: &Printer, origin: &TokenOrigin) {
    match origin {
        TokenOrigin::StateRoot(path, true) => {
            out.info(&format!("generated an admin token in {}", path.display()))
        }
        TokenOrigin::StateRoot(path, false) => {
            out.info(&format!("admin token: {}", path.display()))
        }
        TokenOrigin::Env(var) => out.info(&format!("admin token from ${var}")),
        TokenOrigin::File(path) => out.info(&format!("admin token from {}", path.display())),
    }
}

/// Counts delivery attempts in the daemon's metrics and logs worker warnings.
struct DaemonObserver(Arc<App>);

impl Observer for DaemonObserver {
    fn attempt(&self, plugin: &str, outcome: &str) {
        self.0.metrics.delivery_attempt(plugin, outcome);
    }

    fn warn(&self, message: &str) {
        self.0.out.warn(message);
    }
}

/// Renders the Bot API calls of every Telegram component (ingress media and callback answers,
/// pollers, the delivery transport) on `/metrics`:
/// `kheish_telegram_bot_api_calls_total{method,outcome}`.
fn telegram_api_collector(stats: Arc<crate::net::telegram_api::ApiStats>) -> Collector {
    Box::new(move |out: &mut Vec<Sample>| {
        for (method, outcome, n) in stats.snapshot() {
            out.push(
                Sample::counter(
                    "kheish_telegram_bot_api_calls_total",
                    "Telegram Bot API calls by method and outcome (ok, api_error, rate_limited, transport_error, invalid_response).",
                    n as f64,
                )
                .label("method", method)
                .label("outcome", outcome),
            );
        }
    })
}

/// Renders the external transport's counters on `/metrics` (SPEC §13):
/// `kheish_external_deliveries_total{connector,result}` (`committed|retryable|terminal`) and
/// `kheish_external_manifest_fetch_failures_total{connector}`.
fn sidecar_collector(stats: Arc<SidecarStats>) -> Collector {
    Box::new(move |out: &mut Vec<Sample>| {
        for (connector, result, n) in stats.deliveries() {
            out.push(
                Sample::counter(
                    "kheish_external_deliveries_total",
                    "Delivery attempts to external sidecars by connector and result.",
                    n as f64,
                )
                .label("connector", format!("external/{connector}"))
                .label("result", result),
            );
        }
        for (connector, n) in stats.manifest_failures() {
            out.push(
                Sample::counter(
                    "kheish_external_manifest_fetch_failures_total",
                    "Failed fetches of an external sidecar's manifest by connector.",
                    n as f64,
                )
                .label("connector", format!("external/{connector}")),
            );
        }
    })
}

/// Renders the Slack Web API counters on `/metrics` (SPEC §13):
/// `kheish_slack_api_calls_total{method,outcome}` (outcomes `ok|slack_error|rate_limited|
/// http_error|failed`), ingress file downloads and the `slack` transport's calls alike.
fn slack_api_collector(clients: Arc<SlackClients>) -> Collector {
    Box::new(move |out: &mut Vec<Sample>| {
        for (method, outcome, n) in clients.stats().snapshot() {
            out.push(
                Sample::counter(
                    "kheish_slack_api_calls_total",
                    "Slack Web API calls (and file downloads and uploads) by method and outcome.",
                    n as f64,
                )
                .label("method", method)
                .label("outcome", outcome),
            );
        }
    })
}
