//! `kheishctl validate`: load the connector file, check every secret it references (unless
//! `--offline`), print every diagnostic, and exit 0/1 (4 when nothing could be read).

use anyhow::Result;
use serde::Serialize;

use super::Context;
use crate::cli::ValidateArgs;
use crate::config::{self, SecretProblem};
use crate::exit::{ExitStatus, StatusError};
use crate::model::{Diagnostic, Severity};
use crate::secrets::{self, SecretError, SecretSource, SecretStore};

#[derive(Serialize)]
struct Report<'a> {
    valid: bool,
    diagnostics: &'a [Diagnostic],
}

pub fn run(ctx: &Context, args: ValidateArgs) -> Result<ExitStatus> {
    let Some(path) = args.file.or_else(|| ctx.connectors_config.clone()) else {
        return Err(StatusError::new(
            ExitStatus::Usage,
            "no connector file given: pass FILE, --connectors-config FILE or set KHEISH_CONNECTORS_CONFIG",
        )
        .into());
    };
    let loaded = config::load(&path)?;
    let mut diagnostics = loaded.diagnostics;
    if !args.offline && !loaded_has_errors(&diagnostics) {
        let store = SecretStore::open_existing(&ctx.state_root)?;
        let env = |name: &str| std::env::var(name).ok();
        let file = path.display().to_string();
        let online = config::check_secret_sources(&loaded.config, &file, |source| {
            source_problem(source, store.as_ref(), &env, ctx)
        })?;
        diagnostics.extend(online);
        diagnostics.sort_by_key(|d| (d.line, d.column));
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
        let counts = plural(n_errors, "error") + ", " + &plural(n_warnings, "warning");
        let summary = if valid {
            let c = &loaded.config;
            format!(
                "{}: valid ({}: {} http, {} slack, {} telegram, {} external; {counts}{})",
                path.display(),
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
            format!("{}: invalid ({counts}; --deny-warnings)", path.display())
        } else {
            format!("{}: invalid ({counts})", path.display())
        };
        ctx.out.line(&summary)?;
    }
    Ok(if valid {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}

fn loaded_has_errors(diagnostics: &[Diagnostic]) -> bool {
    diagnostics.iter().any(|d| d.severity == Severity::Error)
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
