//! `kheishctl serve`: resolve the config and every secret (fail closed, exit 4), open the state
//! root, bind, announce readiness, then serve until SIGINT/SIGTERM; SIGHUP reloads the
//! connector file. Shutdown order: stop accepting, finish in-flight requests (10 s at most),
//! stop the background workers, flush the writer, exit 0.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::Context;
use crate::cli::ServeArgs;
use crate::config::{self, Config};
use crate::delivery::policy::RetryPolicy;
use crate::delivery::pool::DEFAULT_LEASE;
use crate::delivery::retention::DeliveryRetention;
use crate::delivery::transport::http::HttpTransport;
use crate::delivery::{Observer, Transports, WorkerConfig, WorkerPool};
use crate::exit::{ExitStatus, StatusError};
use crate::ingress::runtime::{self, BuildError, Connectors};
use crate::model::reply::ReplyPlugin;
use crate::model::{now_ms, Severity};
use crate::notify::Notify;
use crate::server::admin::{self, AdminAuth, TokenOrigin};
use crate::server::shutdown::{Control, Signals};
use crate::server::{self, App, AppParts, Listener, Options, Phase};
use crate::store::deliveries::ClaimFilter;
use crate::store::ingress::GroupWriter;
use crate::store::Store;

/// In-flight requests get this long to finish on shutdown (SPEC §1.3).
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// How often the secret-store watcher looks for rotated slots (SPEC: within 2 seconds).
const SECRET_POLL: Duration = Duration::from_secs(1);

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn unavailable(message: String) -> anyhow::Error {
    StatusError::new(ExitStatus::Unavailable, message).into()
}

/// Loads, validates and resolves the connector file; prints diagnostics like `validate`.
fn load_connectors(ctx: &Context, path: Option<&Path>) -> Result<Connectors> {
    let (config, file) = match path {
        Some(path) => {
            let loaded = config::load(path)?;
            for d in &loaded.diagnostics {
                ctx.out.diagnostic(d);
            }
            if loaded.has_errors() {
                let n = loaded
                    .diagnostics
                    .iter()
                    .filter(|d| d.severity == Severity::Error)
                    .count();
                return Err(unavailable(format!(
                    "connector config {} has {n} error(s); fix them (see `kheishctl validate`) and start again",
                    path.display()
                )));
            }
            (loaded.config, path.display().to_string())
        }
        None => (Config::default(), String::from("<none>")),
    };
    build_connectors(ctx, config, &file)
}

fn build_connectors(ctx: &Context, config: Config, file: &str) -> Result<Connectors> {
    match runtime::build(config, file, &ctx.state_root, &env, now_ms()) {
        Ok(c) => Ok(c),
        Err(BuildError::Diagnostics(diags)) => {
            for d in &diags {
                ctx.out.diagnostic(d);
            }
            Err(unavailable(format!(
                "{} connector secret(s) cannot be resolved; the daemon does not start without them",
                diags.len()
            )))
        }
        Err(BuildError::Secrets(e)) => Err(e).context("resolving connector secrets"),
    }
}

pub fn run(ctx: &Context, args: ServeArgs) -> Result<ExitStatus> {
    let config_path: Option<PathBuf> = ctx.connectors_config.clone();
    if config_path.is_none() {
        ctx.out.warn("no connector file given (--connectors-config / KHEISH_CONNECTORS_CONFIG); serving the control plane only");
    }
    let connectors = load_connectors(ctx, config_path.as_deref())?;
    // Invalid KHEISH_DELIVERY_* values stop the start like an invalid config (exit 4).
    let delivery_policy = RetryPolicy::from_env(&env).map_err(|e| unavailable(e.to_string()))?;
    let delivery_lease = crate::delivery::policy::lease_from_env(&env, DEFAULT_LEASE)
        .map_err(|e| unavailable(e.to_string()))?;
    // Opening here creates the state root and migrates it before any thread needs it.
    Store::open(&ctx.state_root)?;
    let (token, origin) = admin::resolve_token(
        args.admin_token_env.as_deref(),
        args.admin_token_file.as_deref(),
        &ctx.state_root,
        &env,
    )
    .context("resolving the admin token")?;
    let runs_queued = Arc::new(Notify::new());
    let notify = Arc::clone(&runs_queued);
    let writer = GroupWriter::start(&ctx.state_root, Box::new(move |_| notify.notify_all()))?;
    let listener = Listener::bind(&args.listen)?;
    let addr = listener.local_addr();
    let (control_tx, control_rx) = mpsc::channel();
    let signals = Signals::install(control_tx.clone()).context("installing signal handlers")?;

    let workers = args.workers.map_or_else(
        || 4 * std::thread::available_parallelism().map_or(2, |n| n.get()),
        usize::from,
    );
    let app = Arc::new(App::new(AppParts {
        out: ctx.out.clone(),
        state_root: ctx.state_root.clone(),
        options: Options {
            handler: args.handler,
            handler_command: args.handler_command.clone(),
            handler_concurrency: args.handler_concurrency,
            handler_timeout: args.handler_timeout,
            long_poll_slots: (workers / 2).max(1),
            receipt_retention: args.receipt_retention,
            receipt_max_per_connector: args.receipt_max_per_connector,
        },
        runs_queued,
        deliveries_queued: Arc::new(Notify::new()),
        connectors,
        writer,
        admin: AdminAuth::new(token),
    }));
    let running = server::start(listener, Arc::clone(&app), workers);
    let handlers =
        crate::handler::HandlerPool::spawn(Arc::clone(&app)).context("starting run handlers")?;
    let delivery_observer: Arc<dyn Observer> = Arc::new(DaemonObserver(Arc::clone(&app)));
    // Slack, Telegram and external transports come with their own issues; until then their
    // deliveries dead-letter as `plugin_unavailable`.
    let transports = Transports::new().with(ReplyPlugin::Http, Arc::new(HttpTransport::new()));
    let deliveries = WorkerPool::spawn(WorkerConfig {
        state_root: ctx.state_root.clone(),
        workers: usize::from(args.delivery_workers),
        owner_prefix: "serve".into(),
        policy: delivery_policy,
        transports: Arc::new(transports),
        notify: Arc::clone(&app.deliveries_queued),
        filter: ClaimFilter::default(),
        lease: delivery_lease,
        observer: Arc::clone(&delivery_observer),
    });
    let delivery_retention = DeliveryRetention::spawn(ctx.state_root.clone(), delivery_observer);
    let watcher = SecretWatcher::spawn(Arc::clone(&app), ctx.clone());
    let retention = crate::retention::Retention::spawn(
        ctx.state_root.clone(),
        args.receipt_retention,
        args.receipt_max_per_connector,
        ctx.out.clone(),
    );

    match &origin {
        TokenOrigin::StateRoot(path, true) => ctx
            .out
            .info(&format!("generated an admin token in {}", path.display())),
        TokenOrigin::StateRoot(path, false) => {
            ctx.out.info(&format!("admin token: {}", path.display()))
        }
        TokenOrigin::Env(var) => ctx.out.info(&format!("admin token from ${var}")),
        TokenOrigin::File(path) => ctx
            .out
            .info(&format!("admin token from {}", path.display())),
    }
    app.set_phase(Phase::Ready);
    ctx.out.info(&format!("listening on http://{addr}"));
    if ctx.out.json_mode() {
        let token_file = match &origin {
            TokenOrigin::StateRoot(path, _) | TokenOrigin::File(path) => {
                Some(path.display().to_string())
            }
            TokenOrigin::Env(_) => None,
        };
        ctx.out.json_line(&serde_json::json!({
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
            Ok(Control::Reload) => reload(ctx, &app, config_path.as_deref()),
            Err(_) => break "signal thread ended",
        }
    };
    ctx.out.info(&format!("{reason}: draining"));
    app.set_phase(Phase::Draining);
    // Wakes claim long-polls so they answer 204 now instead of holding a request thread.
    app.runs_queued.notify_all();
    let stuck = running.shutdown(DRAIN_GRACE);
    handlers.shutdown();
    // After the request threads and handlers (nothing queues output any more), before the
    // writer: in-flight sends finish and their settlements are written.
    deliveries.shutdown();
    if stuck > 0 {
        ctx.out.warn(&format!(
            "{stuck} request(s) did not finish within {DRAIN_GRACE:?}; closing them"
        ));
    }
    watcher.stop();
    retention.shutdown();
    delivery_retention.shutdown();
    app.writer.shutdown();
    app.responders.shutdown();
    signals.stop();
    let stats = app.writer.stats();
    ctx.out.info(&format!(
        "stopped: {} events in {} commits",
        stats.jobs.load(std::sync::atomic::Ordering::Relaxed),
        stats.commits.load(std::sync::atomic::Ordering::Relaxed)
    ));
    Ok(ExitStatus::Success)
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

/// SIGHUP: re-read the connector file; an invalid new file keeps the old config.
fn reload(ctx: &Context, app: &App, path: Option<&Path>) {
    let Some(path) = path else {
        ctx.out.warn("SIGHUP: no connector file to reload");
        return;
    };
    match load_connectors(ctx, Some(path)) {
        Ok(connectors) => {
            let n = connectors.config.len();
            app.set_connectors(connectors);
            ctx.out.info(&format!(
                "SIGHUP: reloaded {} ({n} connectors)",
                path.display()
            ));
        }
        Err(e) => ctx
            .out
            .error(&format!("SIGHUP: keeping the previous config: {e:#}")),
    }
}

/// Rebuilds the connectors when a secret-store slot they may use was rotated, so a running
/// daemon picks up `rotate-secret` within two seconds. Waits on its stop channel with a
/// timeout (a timer), not a sleep loop.
struct SecretWatcher {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl SecretWatcher {
    fn spawn(app: Arc<App>, ctx: Context) -> SecretWatcher {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("secret-watcher".into())
            .spawn(move || {
                // Versions a rebuild already failed on: not retried (or logged) until they change.
                let mut failed_on: Option<Vec<(String, i64, Option<i64>)>> = None;
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(SECRET_POLL) {
                    let current = app.connectors();
                    let versions = match runtime::current_slot_versions(&app.state_root) {
                        Ok(v) => v,
                        Err(e) => {
                            app.out.debug(&format!("secret watcher: {e}"));
                            continue;
                        }
                    };
                    if versions == current.slot_versions || failed_on.as_ref() == Some(&versions) {
                        continue;
                    }
                    failed_on = Some(versions);
                    match runtime::build(current.config.clone(), "<reload>", &app.state_root, &env, now_ms()) {
                        Ok(next) => {
                            failed_on = None;
                            app.set_connectors(next);
                            ctx.out.info("secret store changed: connector secrets reloaded");
                        }
                        Err(BuildError::Diagnostics(d)) => {
                            for diag in &d {
                                ctx.out.diagnostic(diag);
                            }
                            ctx.out.error("secret store changed but a referenced secret is now missing; keeping the previous values");
                        }
                        Err(BuildError::Secrets(e)) => {
                            ctx.out.error(&format!("secret store changed but cannot be read ({e}); keeping the previous values"))
                        }
                    }
                }
            })
            .expect("spawning the secret watcher");
        SecretWatcher { stop, thread }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}
