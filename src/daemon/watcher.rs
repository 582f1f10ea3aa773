//! The connector set's sources and their changes: loading the connector file and resolving its
//! secrets into a [`ConnectorSet`] (fail closed), SIGHUP reloads (an invalid new file keeps
//! the old set), and the secret-store watcher that rebuilds the set when a slot it may use was
//! rotated, so a running daemon picks up `rotate-secret` within two seconds. Every change is an
//! atomic swap in the [`Registry`](crate::registry::Registry).

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::sidecars::Reconcile;
use super::StartRefused;
use crate::config::{self, Config};
use crate::model::{now_ms, Diagnostic, Severity};
use crate::output::Printer;
use crate::registry::{self, BuildError, ConnectorSet};
use crate::server::App;

/// How often the secret-store watcher looks for rotated slots (SPEC: within 2 seconds).
const SECRET_POLL: Duration = Duration::from_secs(1);

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Loads, validates and resolves the connector file (or none); prints diagnostics like
/// `validate`, among them one warning per connector of a kind this build does not serve.
pub fn load(out: &Printer, state_root: &Path, path: Option<&Path>) -> anyhow::Result<ConnectorSet> {
    let (config, file) = match path {
        Some(path) => {
            let loaded = config::load(path)?;
            for d in &loaded.diagnostics {
                out.diagnostic(d);
            }
            if loaded.has_errors() {
                let n = loaded
                    .diagnostics
                    .iter()
                    .filter(|d| d.severity == Severity::Error)
                    .count();
                return Err(StartRefused(format!(
                    "connector config {} has {n} error(s); fix them (see `kheishctl validate`) and start again",
                    path.display()
                ))
                .into());
            }
            (loaded.config, path.display().to_string())
        }
        None => (Config::default(), String::from("<none>")),
    };
    build(out, state_root, config, &file)
}

fn build(
    out: &Printer,
    state_root: &Path,
    config: Config,
    file: &str,
) -> anyhow::Result<ConnectorSet> {
    match registry::build(config, file, state_root, &env, now_ms()) {
        Ok(c) => Ok(c),
        Err(BuildError::Diagnostics(diags)) => {
            print_all(out, &diags);
            Err(StartRefused(format!(
                "{} connector secret(s) cannot be resolved; the daemon does not start without them",
                diags.len()
            ))
            .into())
        }
        Err(BuildError::Secrets(e)) => {
            Err(anyhow::Error::new(e).context("resolving connector secrets"))
        }
    }
}

fn print_all(out: &Printer, diags: &[Diagnostic]) {
    for d in diags {
        out.diagnostic(d);
    }
}

/// SIGHUP: re-read the connector file; an invalid new file keeps the old set.
pub fn reload(app: &App, path: Option<&Path>) {
    let out = &app.out;
    let Some(path) = path else {
        out.warn("SIGHUP: no connector file to reload");
        return;
    };
    match load(out, &app.state_root, Some(path)) {
        Ok(connectors) => {
            let n = connectors.config.len();
            app.registry.swap(connectors);
            out.info(&format!(
                "SIGHUP: reloaded {} ({n} connectors)",
                path.display()
            ));
        }
        Err(e) => out.error(&format!("SIGHUP: keeping the previous config: {e:#}")),
    }
}

/// Rebuilds the connector set when a secret-store slot was rotated. Waits on its stop channel
/// with a timeout (a timer), not a sleep loop.
pub struct SecretWatcher {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl SecretWatcher {
    /// `sidecars` is told after every swap, so supervised children follow the new set.
    pub fn spawn(app: Arc<App>, sidecars: Reconcile) -> std::io::Result<SecretWatcher> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("secret-watcher".into())
            .spawn(move || watch(&app, &sidecars, &stopped))?;
        Ok(SecretWatcher { stop, thread })
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn watch(app: &App, sidecars: &Reconcile, stopped: &mpsc::Receiver<()>) {
    let state_root: PathBuf = app.state_root.clone();
    // Versions a rebuild already failed on: not retried (or logged) until they change.
    let mut failed_on: Option<Vec<(String, i64, Option<i64>)>> = None;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(SECRET_POLL) {
        let current = app.registry.current();
        let versions = match registry::current_slot_versions(&state_root) {
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
        match registry::build(
            current.config.clone(),
            "<reload>",
            &state_root,
            &env,
            now_ms(),
        ) {
            Ok(next) => {
                failed_on = None;
                app.registry.swap(next);
                sidecars.request();
                app.out
                    .info("secret store changed: connector secrets reloaded");
            }
            Err(BuildError::Diagnostics(d)) => {
                print_all(&app.out, &d);
                app.out.error("secret store changed but a referenced secret is now missing; keeping the previous values");
            }
            Err(BuildError::Secrets(e)) => app.out.error(&format!(
                "secret store changed but cannot be read ({e}); keeping the previous values"
            )),
        }
    }
}
