//! The external sidecar supervisor of `serve` (SPEC §10.3, §10.6, §10.7): one std thread per
//! external connector — a supervision loop for each `child_process` connector (`child.rs`),
//! a health poller for each `remote_http` one (`remote.rs`) — kept in step with the connector
//! set by a manager thread.
//!
//! The manager starts a worker for every external connector at start, and on each
//! [`Reconcile::request`] (after every registry swap: SIGHUP reload, rotated secret) compares
//! what runs with what the new set asks for ([`spec::desired`]): a connector whose spec changed
//! (command, args, env, credential slots, working dir, base URL, shared token) is stopped, then
//! started with the new spec; a removed one is stopped and forgotten; a new one is started.
//! Stops run in parallel, each SIGTERM → stop grace → SIGKILL of the child's process group.
//!
//! Live state goes to [`App::sidecars`] (instance id, health, restarts: ingress checks an
//! event's `instance_id` against it) and credential leases to [`App::leases`]; `/metrics`
//! gets `kheish_sidecar_health`, `kheish_sidecar_restarts_total` and
//! `kheish_sidecar_check_failures_total` through a collector.

mod child;
mod remote;
pub mod spec;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::metrics::Sample;
use crate::registry::Sidecars;
use crate::server::App;

pub use spec::{TimingError, Timings};

use spec::Spec;

/// The health states exported per sidecar: the four of the protocol, `unreachable` (a poll of
/// a running sidecar failed) and `down` (no child runs: not started yet, or waiting to restart).
pub const HEALTH_STATES: [&str; 6] = [
    "starting",
    "ready",
    "degraded",
    "draining",
    "unreachable",
    "down",
];

/// What a worker thread is told or learns.
pub(super) enum Event {
    /// The supervisor wants the connector stopped (removed, changed, or daemon shutdown).
    Stop,
    /// Spawn number `spawn` of the child was reaped (`None`: its status could not be read).
    Exited {
        spawn: u64,
        status: Option<ExitStatus>,
    },
}

/// Failed manifest/health requests by connector, for `/metrics`.
#[derive(Debug, Default)]
struct Stats {
    failures: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl Stats {
    fn failure(&self, name: &str, check: &'static str) {
        *self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((name.to_string(), check))
            .or_default() += 1;
    }

    fn get(&self, name: &str, check: &'static str) -> u64 {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(name.to_string(), check))
            .copied()
            .unwrap_or(0)
    }
}

/// What every worker shares.
struct Ctx {
    app: Arc<App>,
    /// `KHEISH_EXTERNAL_CONNECTOR_DAEMON_BASE_URL` of every child.
    daemon_base_url: String,
    timings: Timings,
    stats: Arc<Stats>,
    /// The sending side of this worker's own channel (the reaper threads send on it).
    events_tx: Sender<Event>,
}

/// Messages to the manager thread.
enum Control {
    Reconcile,
    Shutdown,
}

/// A cloneable handle that asks the supervisor to compare the running sidecars with the
/// connector set in force (the watcher calls it after each swap).
#[derive(Debug, Clone)]
pub struct Reconcile(Sender<Control>);

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Control::Reconcile => "Reconcile",
            Control::Shutdown => "Shutdown",
        })
    }
}

impl Reconcile {
    /// Queues a reconciliation (a no-op once the supervisor stopped).
    pub fn request(&self) {
        let _ = self.0.send(Control::Reconcile);
    }
}

/// The running supervisor; [`Supervisor::shutdown`] stops every child and joins.
pub struct Supervisor {
    control: Sender<Control>,
    thread: JoinHandle<()>,
}

/// A connector's worker thread.
struct Worker {
    spec: Spec,
    events: Sender<Event>,
    thread: JoinHandle<()>,
}

impl Supervisor {
    /// Starts the manager (which starts one worker per external connector) and registers the
    /// sidecar metrics. `listen` is the daemon's bound address, already accepting.
    pub fn spawn(
        app: Arc<App>,
        listen: SocketAddr,
        timings: Timings,
    ) -> std::io::Result<Supervisor> {
        let stats = Arc::new(Stats::default());
        register_metrics(&app, Arc::clone(&app.sidecars), Arc::clone(&stats));
        let daemon_base_url = spec::daemon_base_url(listen);
        let (control, inbox) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sidecars".into())
            .spawn(move || manage(&app, &daemon_base_url, timings, &stats, &inbox))?;
        Ok(Supervisor { control, thread })
    }

    /// A handle for the watcher.
    pub fn reconciler(&self) -> Reconcile {
        Reconcile(self.control.clone())
    }

    /// Stops every sidecar (in parallel, each within its stop grace) and joins the threads.
    pub fn shutdown(self) {
        let _ = self.control.send(Control::Shutdown);
        let _ = self.thread.join();
    }
}

fn manage(
    app: &Arc<App>,
    daemon_base_url: &str,
    timings: Timings,
    stats: &Arc<Stats>,
    control: &Receiver<Control>,
) {
    let mut workers: BTreeMap<String, Worker> = BTreeMap::new();
    let start = |name: &str, spec: Spec| -> Option<Worker> {
        let (events, rx) = mpsc::channel();
        let ctx = Ctx {
            app: Arc::clone(app),
            daemon_base_url: daemon_base_url.to_string(),
            timings,
            stats: Arc::clone(stats),
            events_tx: events.clone(),
        };
        let run = spec.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("sidecar-{name}"))
            .spawn(move || {
                let mut inbox = child::Inbox { rx, stopped: false };
                match &run {
                    Spec::Child(spec) => child::supervise(&ctx, spec, &mut inbox),
                    Spec::Remote(spec) => remote::watch(&ctx, spec, &mut inbox),
                }
            });
        match spawned {
            Ok(thread) => Some(Worker {
                spec,
                events,
                thread,
            }),
            Err(e) => {
                app.out
                    .error(&format!("sidecar `{name}`: cannot start its thread: {e}"));
                None
            }
        }
    };
    let reconcile = |workers: &mut BTreeMap<String, Worker>| {
        let desired = spec::desired(&app.connectors());
        let stale: Vec<String> = workers
            .iter()
            .filter(|(name, w)| desired.get(*name).is_none_or(|d| !d.same_as(&w.spec)))
            .map(|(name, _)| name.clone())
            .collect();
        let stopping: Vec<(String, Worker)> = stale
            .into_iter()
            .filter_map(|name| workers.remove(&name).map(|w| (name, w)))
            .collect();
        stop_all(app, stopping, |name| {
            if desired.contains_key(name) {
                app.out.info(&format!(
                    "sidecar `{name}`: configuration changed; starting it with the new one"
                ));
            } else {
                app.sidecars.remove(name);
                app.leases.revoke_all(name);
                app.out
                    .info(&format!("sidecar `{name}`: connector removed; stopped"));
            }
        });
        for (name, spec) in desired {
            if let std::collections::btree_map::Entry::Vacant(slot) = workers.entry(name) {
                let name = slot.key().clone();
                if let Spec::Child(_) = spec {
                    // Restarts carry over a config change; the health starts again.
                    app.sidecars.update(&name, |s| {
                        s.instance_id = None;
                        s.health = "down".into();
                    });
                }
                if let Some(worker) = start(&name, spec) {
                    slot.insert(worker);
                }
            }
        }
    };
    reconcile(&mut workers);
    // Until Shutdown, or until the supervisor handle is gone.
    while let Ok(Control::Reconcile) = control.recv() {
        // Several swaps in a row need one look at the newest set.
        let mut shutdown = false;
        while let Ok(next) = control.try_recv() {
            shutdown |= matches!(next, Control::Shutdown);
        }
        if shutdown {
            break;
        }
        reconcile(&mut workers);
    }
    stop_all(
        app,
        std::mem::take(&mut workers).into_iter().collect(),
        |_| {},
    );
}

/// Tells every worker to stop first, then joins them, so the children stop in parallel.
fn stop_all(app: &App, workers: Vec<(String, Worker)>, mut stopped: impl FnMut(&str)) {
    for (_, w) in &workers {
        let _ = w.events.send(Event::Stop);
    }
    for (name, w) in workers {
        if w.thread.join().is_err() {
            app.out
                .error(&format!("sidecar `{name}`: its thread panicked"));
        }
        stopped(&name);
    }
}

/// The sidecar families of `/metrics`, read at scrape time.
fn register_metrics(app: &App, sidecars: Arc<Sidecars>, stats: Arc<Stats>) {
    app.metrics.add_collector(Box::new(move |out: &mut Vec<Sample>| {
        let all = sidecars.all();
        for (name, status) in &all {
            let connector = format!("external/{name}");
            for state in HEALTH_STATES {
                out.push(
                    Sample::gauge(
                        "kheish_sidecar_health",
                        "1 for the current health of each external sidecar (starting, ready, degraded, draining, unreachable, down).",
                        if status.health == state { 1.0 } else { 0.0 },
                    )
                    .label("connector", connector.clone())
                    .label("status", state),
                );
            }
        }
        for (name, status) in &all {
            out.push(
                Sample::counter(
                    "kheish_sidecar_restarts_total",
                    "Restarts of child_process sidecars after a failed start, readiness or exit.",
                    status.restarts as f64,
                )
                .label("connector", format!("external/{name}")),
            );
        }
        for (name, _) in &all {
            for check in ["manifest", "health"] {
                out.push(
                    Sample::counter(
                        "kheish_sidecar_check_failures_total",
                        "Failed manifest/health checks of the sidecar supervisor (readiness timeouts and failed health polls).",
                        stats.get(name, check) as f64,
                    )
                    .label("connector", format!("external/{name}"))
                    .label("check", check),
                );
            }
        }
    }));
}
