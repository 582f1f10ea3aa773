//! The connector set's sources and their changes: loading the connector file and resolving its
//! secrets into a [`ConnectorSet`] (fail closed), SIGHUP reloads (an invalid new file keeps
//! the old set), and the secret-store watcher that rebuilds the set when a slot it may use was
//! rotated, so a running daemon picks up `rotate-secret` within two seconds. Every change is an
//! atomic swap in the [`Registry`](crate::registry::Registry).

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::StartRefused;
use crate::config::{self, Config};
use crate::model::{now_ms, Diagnostic, Severity};
use crate::output::Printer;
use crate::registry::{self, BuildError, ConnectorSet};
use crate::server::App;

/// How often the watcher looks for rotated slots and runtime-store changes (SPEC: applied
/// within 2 seconds).
const SECRET_POLL: Duration = Duration::from_secs(1);

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Loads, validates and resolves the connector file (or none); prints diagnostics like
/// `validate`, among them one warning per connector of a kind this build does not serve.
pub fn load(out: &Printer, state_root: &Path, path: Option<&Path>) -> anyhow::Result<ConnectorSet> {
    let (config, documents, file) = match path {
        Some(path) => {
            let (loaded, documents) = config::load_with_documents(path)?;
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
            (loaded.config, documents, path.display().to_string())
        }
        None => (Config::default(), Vec::new(), String::from("<none>")),
    };
    build(out, state_root, config, documents, &file)
}

fn build(
    out: &Printer,
    state_root: &Path,
    config: Config,
    documents: Vec<config::runtime::Document>,
    file: &str,
) -> anyhow::Result<ConnectorSet> {
    match registry::build_all(config, documents, file, state_root, &env, now_ms()) {
        Ok(c) => {
            print_all(out, &c.sources.left_out);
            Ok(c)
        }
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
    /// `swapped` is called after every swap, so supervised children and pollers follow the
    /// new set.
    pub fn spawn(app: Arc<App>, swapped: Box<dyn Fn() + Send>) -> std::io::Result<SecretWatcher> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("secret-watcher".into())
            .spawn(move || watch(&app, &*swapped, &stopped))?;
        Ok(SecretWatcher { stop, thread })
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// The secret-slot versions and the runtime store version a rebuild looked at.
type Seen = (Vec<(String, i64, Option<i64>)>, i64);

fn watch(app: &App, swapped: &dyn Fn(), stopped: &mpsc::Receiver<()>) {
    let state_root: PathBuf = app.state_root.clone();
    // Versions a rebuild already failed on: not retried (or logged) until they change.
    let mut failed_on: Option<Seen> = None;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(SECRET_POLL) {
        let current = app.registry.current();
        let versions = match registry::current_slot_versions(&state_root) {
            Ok(v) => v,
            Err(e) => {
                app.out.debug(&format!("secret watcher: {e}"));
                continue;
            }
        };
        let runtime = match registry::current_runtime_version(&state_root) {
            Ok(v) => v,
            Err(e) => {
                app.out.debug(&format!("runtime store watcher: {e}"));
                continue;
            }
        };
        let seen = (versions, runtime);
        if (seen.0 == current.slot_versions && seen.1 == current.sources.runtime_version)
            || failed_on.as_ref() == Some(&seen)
        {
            continue;
        }
        let what = if seen.1 != current.sources.runtime_version {
            "runtime connector store changed: connectors reloaded"
        } else {
            "secret store changed: connector secrets reloaded"
        };
        failed_on = Some(seen);
        match registry::build_all(
            current.sources.file.clone(),
            current.sources.file_documents.clone(),
            "<reload>",
            &state_root,
            &env,
            now_ms(),
        ) {
            Ok(next) => {
                failed_on = None;
                print_all(&app.out, &next.sources.left_out);
                let n = next.config.len();
                app.registry.swap(next);
                swapped();
                app.out.info(&format!("{what} ({n} connectors)"));
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
