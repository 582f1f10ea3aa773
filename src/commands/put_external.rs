//! `kheishctl put-external` (SPEC §1.3, §12): build a JSON patch from `--file` and the flags,
//! call [`runtime::put`] (the same upsert as `PUT /v1/runtime/connectors/external/NAME`) and
//! print the redacted view, with a field-by-field diff under `--dry-run`.
//!
//! Also the pieces `rotate-secret --connector` shares: the file-backed connectors in force
//! ([`file_connectors`]) and the one mapping of a [`RuntimeError`] to an exit status
//! ([`runtime_failure`]).

use std::path::Path;

use anyhow::Result;
use serde_json::{json, Map, Value};

use super::Context;
use crate::cli::PutExternalArgs;
use crate::config::{self, Config};
use crate::exit::{ExitStatus, StatusError};
use crate::model::{ConnectorKind, Diagnostic};
use crate::registry::runtime::{self, PutOutcome, PutRequest, RuntimeError};
use crate::secrets;

pub fn run(ctx: &Context, args: PutExternalArgs) -> Result<ExitStatus> {
    let name = args.name.clone();
    let patch = build_patch(&args)?;
    let file = file_connectors(ctx)?;
    let outcome = runtime::put(&PutRequest {
        state_root: &ctx.state_root,
        file: &file,
        kind: ConnectorKind::External,
        name: &name,
        patch: &patch,
        dry_run: args.dry_run,
        // The CLI cannot see the daemon's environment: `{"env"}` sources are not checked.
        env: None,
        origin: "cli",
        now_ms: crate::model::now_ms(),
    })
    .map_err(|e| runtime_failure(ctx, ConnectorKind::External, &name, e))?;
    for w in &outcome.warnings {
        ctx.out.diagnostic(w);
    }
    if ctx.out.json_mode() {
        ctx.out.json(&json!({
            "created": outcome.created,
            "dry_run": outcome.dry_run,
            "connector": outcome.view,
            "changes": outcome.changes,
            "secrets_written": outcome.secrets_written,
            "warnings": outcome.warnings,
        }))?;
    } else {
        print_human(ctx, &name, &outcome)?;
    }
    Ok(ExitStatus::Success)
}

/// The patch: `--file`'s members, then every flag given (flags win; `child_process` members
/// merge with the file's).
fn build_patch(args: &PutExternalArgs) -> Result<Value> {
    let mut patch = match &args.file {
        Some(path) => read_patch_file(path, &args.name)?,
        None => Map::new(),
    };
    let mut set = |key: &str, value: Value| {
        patch.insert(key.to_string(), value);
    };
    if let Some(p) = &args.platform {
        set("platform", json!(p));
    }
    if let Some(m) = args.mode {
        set("mode", json!(m.as_str()));
    }
    if let Some(u) = &args.base_url {
        set("base_url", json!(u));
    }
    if let Some(b) = args.allow_private_network {
        set("allow_private_network", json!(b));
    }
    if let Some(b) = args.allow_unauthenticated_ingress {
        set("allow_unauthenticated_ingress", json!(b));
    }
    if let Some(s) = &args.fixed_session_id {
        set("fixed_session_id", json!(s));
    }
    if let Some(b) = args.include_self_output {
        set("include_self_output", json!(b));
    }
    if let Some(n) = args.ingress_events_per_second {
        set("ingress_events_per_second", json!(n));
    }
    if let Some(var) = &args.shared_token_env {
        set("shared_token", json!({ "env": var }));
    } else if let Some(r) = &args.shared_token_secret_ref {
        set("shared_token", json!({ "secret_ref": r }));
    } else if args.shared_token_stdin {
        let value =
            secrets::read_value(std::io::stdin().lock(), "standard input").map_err(|e| {
                let status = crate::exit::secret_status(&e);
                StatusError::new(
                    status,
                    format!("cannot read the shared token: {:#}", anyhow::Error::new(e)),
                )
            })?;
        // Stored under the default ref `connectors.external.NAME.shared_token` by the upsert.
        set("shared_token", json!({ "value": value.expose() }));
    }

    let mut child = Map::new();
    if let Some(c) = &args.command {
        child.insert("command".into(), json!(c));
    }
    if !args.args.is_empty() {
        child.insert("args".into(), json!(args.args));
    }
    if !args.env.is_empty() {
        child.insert("env".into(), Value::Object(pairs("--env", &args.env)?));
    }
    if !args.credential_slot.is_empty() {
        child.insert(
            "credential_slots".into(),
            Value::Object(pairs("--credential-slot", &args.credential_slot)?),
        );
    }
    if let Some(dir) = &args.working_dir {
        child.insert("working_dir".into(), json!(dir.display().to_string()));
    }
    if !child.is_empty() {
        let merged = match patch.remove("child_process") {
            Some(Value::Object(mut from_file)) => {
                from_file.extend(child);
                from_file
            }
            _ => child,
        };
        patch.insert("child_process".into(), Value::Object(merged));
    }
    Ok(Value::Object(patch))
}

/// `K=V` flags as a table; a malformed or repeated key is a usage error.
fn pairs(flag: &str, items: &[String]) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for item in items {
        let Some((k, v)) = item.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
            return Err(usage(format!(
                "{flag} takes KEY=VALUE, got `{}`",
                item.split('=').next().unwrap_or_default()
            )));
        };
        if out.insert(k.to_string(), json!(v)).is_some() {
            return Err(usage(format!("{flag}: `{k}` is given twice")));
        }
    }
    Ok(out)
}

fn usage(message: String) -> anyhow::Error {
    StatusError::new(ExitStatus::Usage, message).into()
}

fn refused(message: String) -> anyhow::Error {
    StatusError::new(ExitStatus::Failure, message).into()
}

/// `--file`: JSON (an object), or TOML (one `[[external_connectors]]` table or a bare table).
/// An unreadable file exits 4 (as `validate` does); a malformed one exits 1.
fn read_patch_file(path: &Path, name: &str) -> Result<Map<String, Value>> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| config::LoadError {
        path: shown.clone(),
        source,
    })?;
    let doc = parse_patch_text(&text).map_err(|why| refused(format!("--file {shown}: {why}")))?;
    if let Some(v) = doc.get("name") {
        if v.as_str() != Some(name) {
            return Err(refused(format!(
                "--file {shown}: `name` is {v}, but the command names `{name}`; rename by creating the new connector and deleting the old one"
            )));
        }
    }
    Ok(doc)
}

fn parse_patch_text(text: &str) -> Result<Map<String, Value>, String> {
    if text.trim_start().starts_with('{') {
        return match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err("the JSON document must be an object of connector fields".into()),
            Err(e) => Err(format!("not valid JSON: {e}")),
        };
    }
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("neither a JSON object nor valid TOML: {e}"))?;
    let section = ConnectorKind::External.section();
    let table = match table.get(section) {
        Some(toml::Value::Array(items)) => {
            if table.len() > 1 {
                return Err(format!(
                    "a file with [[{section}]] may hold nothing else (found {})",
                    table
                        .keys()
                        .filter(|k| *k != section)
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            match items.as_slice() {
                [toml::Value::Table(t)] => t.clone(),
                _ => {
                    return Err(format!(
                        "expected exactly one [[{section}]] table, found {}",
                        items.len()
                    ))
                }
            }
        }
        Some(_) => return Err(format!("`{section}` must be an array of tables")),
        None => table,
    };
    match serde_json::to_value(table) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("expected a table of connector fields".into()),
        Err(e) => Err(format!("cannot convert the TOML table: {e}")),
    }
}

/// The file-backed connectors in force (`--connectors-config`), or none. A file with errors is
/// refused: the names it defines cannot be trusted, and `serve` would not start with it.
pub(super) fn file_connectors(ctx: &Context) -> Result<Config> {
    let Some(path) = &ctx.connectors_config else {
        ctx.out.debug(
            "no --connectors-config: names used by file-backed connectors are not checked here (the daemon ignores a daemon-managed connector whose name its file uses)",
        );
        return Ok(Config::default());
    };
    let loaded = config::load(path)?;
    if loaded.has_errors() {
        for d in loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity == crate::model::Severity::Error)
        {
            ctx.out.diagnostic(d);
        }
        return Err(refused(format!(
            "the connector file {} has errors (above); fix it first (`kheishctl validate`)",
            path.display()
        )));
    }
    Ok(loaded.config)
}

/// Prints what belongs to `err` (the diagnostics of an invalid connector: on stderr, and
/// under `--json` also `{"valid": false, "diagnostics"}` on stdout) and returns the error with
/// its exit status: 4 when the state root cannot be used, 1 for a refusal.
pub(super) fn runtime_failure(
    ctx: &Context,
    kind: ConnectorKind,
    name: &str,
    err: RuntimeError,
) -> anyhow::Error {
    let status = match &err {
        RuntimeError::Store(_) => ExitStatus::Unavailable,
        RuntimeError::Secret(e) => crate::exit::secret_status(e),
        _ => ExitStatus::Failure,
    };
    let id = format!("{kind}/{name}");
    let message = match err {
        RuntimeError::Invalid(diags) => {
            print_diagnostics(ctx, &diags);
            format!(
                "`{id}` is invalid ({} problem(s) above); nothing was written",
                diags.len()
            )
        }
        RuntimeError::Patch(e) => format!("`{id}`: {e}; nothing was written"),
        RuntimeError::Store(e) => format!("cannot change `{id}`: {:#}", anyhow::Error::new(e)),
        RuntimeError::Secret(e) => format!("cannot change `{id}`: {:#}", anyhow::Error::new(e)),
        e => e.to_string(),
    };
    StatusError::new(status, message).into()
}

fn print_diagnostics(ctx: &Context, diags: &[Diagnostic]) {
    for d in diags {
        ctx.out.diagnostic(d);
    }
    if ctx.out.json_mode() {
        // Best effort: the exit status carries the failure either way.
        let _ = ctx.out.json(&json!({"valid": false, "diagnostics": diags}));
    }
}

fn print_human(ctx: &Context, name: &str, outcome: &PutOutcome) -> Result<()> {
    let id = format!("external/{name}");
    let head = match (outcome.dry_run, outcome.created) {
        (true, true) => format!("would create {id} (dry run: nothing written)"),
        (true, false) => format!("would update {id} (dry run: nothing written)"),
        (false, true) => format!("created {id} (daemon-managed)"),
        (false, false) => format!("updated {id} (daemon-managed)"),
    };
    ctx.out.line(&head)?;
    if let Value::Object(view) = &outcome.view.connector {
        for (k, v) in view {
            if k == "name" {
                continue;
            }
            ctx.out.line(&format!("  {k}: {}", render(v)))?;
        }
    }
    if outcome.dry_run || !outcome.changes.is_empty() {
        if outcome.changes.is_empty() {
            ctx.out.line("no changes")?;
        } else {
            ctx.out.line("changes:")?;
            for c in &outcome.changes {
                ctx.out.line(&format!(
                    "  {}: {} -> {}",
                    c["field"].as_str().unwrap_or_default(),
                    render(&c["before"]),
                    render(&c["after"])
                ))?;
            }
        }
    }
    if !outcome.secrets_written.is_empty() {
        let verb = if outcome.dry_run {
            "secrets that would be written"
        } else {
            "secrets written"
        };
        ctx.out
            .line(&format!("{verb}: {}", outcome.secrets_written.join(", ")))?;
    }
    Ok(())
}

/// A member of a redacted view as one short line: strings bare, secret views as their source,
/// everything else as compact JSON; absent as `-`.
fn render(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Object(m) if m.contains_key("configured") => {
            match (m.get("source").and_then(Value::as_str), m.get("configured")) {
                (Some("secret_ref"), _) => format!(
                    "secret slot {}",
                    m.get("secret_ref").and_then(Value::as_str).unwrap_or("?")
                ),
                (Some("env"), _) => format!(
                    "env {}",
                    m.get("env").and_then(Value::as_str).unwrap_or("?")
                ),
                (Some(other), _) => other.to_string(),
                (None, _) => "not configured".into(),
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_json_objects_or_one_toml_table() {
        let m = parse_patch_text("{\"platform\": \"x\"}").unwrap();
        assert_eq!(m["platform"], "x");
        let m = parse_patch_text("platform = \"x\"\n[child_process]\ncommand = \"c\"\n").unwrap();
        assert_eq!(m["child_process"]["command"], "c");
        let m =
            parse_patch_text("[[external_connectors]]\nname = \"d\"\nplatform = \"y\"\n").unwrap();
        assert_eq!(m["platform"], "y");
        for bad in [
            "[1, 2]",
            "{not json",
            "platform = ",
            "[[external_connectors]]\nname = \"a\"\n[[external_connectors]]\nname = \"b\"\n",
            "[[external_connectors]]\nname = \"a\"\n[[http_connectors]]\nname = \"b\"\n",
            "external_connectors = 3",
        ] {
            assert!(parse_patch_text(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pairs_need_a_key_and_no_repeats() {
        let m = pairs("--env", &["A=1".into(), "B=x=y".into(), "C=".into()]).unwrap();
        assert_eq!(m["B"], "x=y");
        assert_eq!(m["C"], "");
        assert!(pairs("--env", &["novalue".into()]).is_err());
        assert!(pairs("--env", &["=v".into()]).is_err());
        assert!(pairs("--env", &["A=1".into(), "A=2".into()]).is_err());
    }

    #[test]
    fn secret_views_render_without_values() {
        assert_eq!(
            render(&json!({"configured": true, "source": "secret_ref", "secret_ref": "r.x"})),
            "secret slot r.x"
        );
        assert_eq!(render(&json!({"configured": false})), "not configured");
        assert_eq!(render(&json!(["a"])), "[\"a\"]");
    }
}
