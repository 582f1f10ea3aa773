//! `kheishctl validate`: load the connector file, check every secret it references and the
//! daemon-managed connectors of the state root (unless `--offline`), print every diagnostic,
//! and exit 0/1 (4 when nothing could be read).

use anyhow::Result;
use serde::Serialize;

use super::Context;
use crate::cli::ValidateArgs;
use crate::config::{self, Config, SecretProblem};
use crate::exit::{ExitStatus, StatusError};
use crate::model::{ConnectorKind, Diagnostic, Severity};
use crate::registry::runtime;
use crate::secrets::{self, SecretError, SecretSource, SecretStore};

#[derive(Serialize)]
struct Report<'a> {
    valid: bool,
    diagnostics: &'a [Diagnostic],
}

pub fn run(ctx: &Context, args: ValidateArgs) -> Result<ExitStatus> {
    let path = args.file.clone().or_else(|| ctx.connectors_config.clone());
    // Without a file, the daemon-managed connectors alone are validated (when a state root
    // with a database exists and the run is not --offline).
    let store_db = ctx.state_root.join("state.db");
    if path.is_none() && (args.offline || !store_db.exists()) {
        return Err(StatusError::new(
            ExitStatus::Usage,
            "no connector file given: pass FILE, --connectors-config FILE or set KHEISH_CONNECTORS_CONFIG",
        )
        .into());
    }
    let loaded = match &path {
        Some(path) => config::load(path)?,
        None => config::Loaded {
            config: config::Config::default(),
            diagnostics: Vec::new(),
            unparsable: false,
        },
    };
    let unparsable = loaded.unparsable;
    let mut diagnostics = loaded.diagnostics;
    let env = |name: &str| std::env::var(name).ok();
    let mut daemon = Config::default();
    if !args.offline {
        let store = SecretStore::open_existing(&ctx.state_root)?;
        // Every problem in one run (SPEC §1.3): the sources of the connectors that parsed are
        // checked even when other fields have errors (after a TOML syntax error nothing parsed,
        // so nothing is checked).
        if let Some(path) = &path {
            let file = path.display().to_string();
            let online = config::check_secret_sources(&loaded.config, &file, |source| {
                source_problem(source, store.as_ref(), &env, ctx)
            })?;
            diagnostics.extend(online);
            diagnostics.sort_by_key(|d| (d.line, d.column));
        }
        if let Some(store) = &store {
            let (checked, problems) = daemon_managed(&loaded.config, store, &|source| {
                source_problem(source, Some(store), &env, ctx)
            })?;
            daemon = checked;
            diagnostics.extend(problems);
        }
    }
    let n_errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let n_warnings = diagnostics.len() - n_errors;
    let valid = n_errors == 0 && !(args.deny_warnings && n_warnings > 0);
    if ctx.out.json_mode() {
        ctx.out.json(&Report {
            valid,
            diagnostics: &diagnostics,
        })?;
    } else {
        for d in &diagnostics {
            ctx.out.diagnostic(d);
        }
        let what = match &path {
            Some(p) => p.display().to_string(),
            None => format!("daemon-managed connectors of {}", ctx.state_root.display()),
        };
        let counts = plural(n_errors, "error") + ", " + &plural(n_warnings, "warning");
        let summary = if valid && path.is_none() {
            format!(
                "{what}: valid ({}; {counts})",
                plural(daemon.len(), "connector")
            )
        } else if valid {
            let c = &loaded.config;
            let daemon_count = if !daemon.is_empty() {
                format!("; {} daemon-managed", daemon.len())
            } else {
                String::new()
            };
            format!(
                "{what}: valid ({}: {} http, {} slack, {} telegram, {} external{daemon_count}; {counts}{})",
                plural(c.len(), "connector"),
                c.http.len(),
                c.slack.len(),
                c.telegram.len(),
                c.external.len(),
                if args.offline {
                    "; secrets not checked (--offline)"
                } else {
                    ""
                },
            )
        } else if n_errors == 0 {
            format!("{what}: invalid ({counts}; --deny-warnings)")
        } else {
            format!("{what}: invalid ({counts})")
        };
        ctx.out.line(&summary)?;
    }
    Ok(if valid {
        ExitStatus::Success
    } else if unparsable {
        // Not TOML: the config could not be parsed (SPEC §1.2), as `serve` says for it too.
        ExitStatus::Unavailable
    } else {
        ExitStatus::Failure
    })
}

/// The daemon-managed connectors of the state root that validate beside the file (returned
/// as a config of their own), and the diagnostics of every one: left out (invalid, or its
/// name now used by a file-backed connector), warnings, and secret sources that do not
/// resolve. Each names `daemon:KIND/NAME` as its file and carries the JSON pointer.
fn daemon_managed(
    file: &Config,
    store: &SecretStore,
    check: &dyn Fn(&SecretSource) -> Result<Option<SecretProblem>, SecretError>,
) -> Result<(Config, Vec<Diagnostic>), SecretError> {
    let records = store.store().runtime_connectors()?;
    if records.is_empty() {
        return Ok((Config::default(), Vec::new()));
    }
    let (merged, mut diagnostics) = runtime::merged_config_with_warnings(file, &records);
    let mut daemon = merged;
    daemon
        .http
        .retain(|c| !runtime::in_file(file, ConnectorKind::Http, c.common.name.as_str()));
    daemon
        .slack
        .retain(|c| !runtime::in_file(file, ConnectorKind::Slack, c.common.name.as_str()));
    daemon
        .telegram
        .retain(|c| !runtime::in_file(file, ConnectorKind::Telegram, c.common.name.as_str()));
    daemon
        .external
        .retain(|c| !runtime::in_file(file, ConnectorKind::External, c.common.name.as_str()));
    let problems = config::check_secret_sources(&daemon, "", |source| check(source))?;
    diagnostics.extend(problems.into_iter().map(|mut d| {
        if let (Some(kind), Some(name)) = (d.connector_kind, &d.connector) {
            d.file = runtime::source_label(kind, name);
        }
        d
    }));
    diagnostics.sort_by(|a, b| a.file.cmp(&b.file));
    Ok((daemon, diagnostics))
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// Resolves one source; see [`config::secret_problem`].
fn source_problem(
    source: &SecretSource,
    store: Option<&SecretStore>,
    env: &dyn Fn(&str) -> Option<String>,
    ctx: &Context,
) -> Result<Option<SecretProblem>, SecretError> {
    match secrets::resolve(source, store, env) {
        Ok(_) => Ok(None),
        Err(e) => config::secret_problem(e, &ctx.state_root),
    }
}
