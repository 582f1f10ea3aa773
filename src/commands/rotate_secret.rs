//! `kheishctl rotate-secret` (SPEC §1.3): read the new value from the chosen source, call
//! [`SecretStore::rotate`] and print what happened. With `--connector KIND/NAME --field FIELD`
//! the write and the re-binding of that daemon-managed connector to the slot are one upsert
//! ([`runtime::put_with_grace`]), so the grace window holds there too. The value is printed only when this command
//! generated it (`--generate`), once, on stdout.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use serde_json::json;

use super::put_external::{file_connectors, runtime_failure};
use super::Context;
use crate::cli::RotateSecretArgs;
use crate::config::runtime as docs;
use crate::config::Config;
use crate::exit::{ExitStatus, StatusError};
use crate::model::ConnectorKind;
use crate::registry::runtime::{self, PutRequest};
use crate::secrets::{self, Secret, SecretError, SecretStore};

pub fn run(ctx: &Context, args: RotateSecretArgs) -> Result<ExitStatus> {
    let target = connector_target(&args)?;
    let secret_ref = match (&args.secret_ref, &target) {
        (Some(r), _) => r.clone(),
        (None, Some((kind, name, field))) => docs::default_ref(*kind, name, field),
        // clap requires REF unless --connector is given (and --connector requires --field).
        (None, None) => {
            return Err(StatusError::new(
                ExitStatus::Usage,
                "give REF or --connector KIND/NAME --field FIELD",
            )
            .into())
        }
    };
    let secret_ref = secret_ref.as_str();
    // A malformed REF argument is a usage error (exit 2) that clap cannot see. The error names
    // the ref (truncated), so the message does not repeat it.
    secrets::validate_secret_ref(secret_ref)
        .map_err(|e| with_status(e, ExitStatus::Usage, "cannot rotate the secret"))?;

    let file = match &target {
        Some((kind, name, _)) => Some(check_rebindable(ctx, *kind, name)?),
        None => None,
    };
    let (value, source) = read_new_value(&args).map_err(failed(secret_ref))?;
    let now_ms = now_ms()?;
    let rotation = match (&target, &file) {
        (Some((kind, name, field)), Some(file)) => {
            let patch =
                json!({ field.as_str(): { "value": value.expose(), "secret_ref": secret_ref } });
            let (_, rotations) = runtime::put_with_grace(
                &PutRequest {
                    state_root: &ctx.state_root,
                    file,
                    kind: *kind,
                    name,
                    patch: &patch,
                    dry_run: false,
                    env: None,
                    origin: source,
                    now_ms,
                },
                args.grace,
            )
            .map_err(|e| runtime_failure(ctx, *kind, name, e))?;
            ctx.out.info(&format!(
                "{kind}/{name}.{field} now uses secret slot {secret_ref}"
            ));
            rotations
                .into_iter()
                .find(|r| r.secret_ref == secret_ref)
                .ok_or_else(|| {
                    anyhow::anyhow!("internal: the rotation of `{secret_ref}` was not reported")
                })?
        }
        _ => {
            let store = SecretStore::open_or_create(&ctx.state_root).map_err(failed(secret_ref))?;
            store
                .rotate(secret_ref, value.clone(), args.grace, source, now_ms)
                .map_err(failed(secret_ref))?
        }
    };

    let generated = args.generate.then_some(&value);
    let rotated_at = rfc3339(rotation.rotated_at_ms);
    let grace_until = rotation.grace_until_ms.map(rfc3339);
    if ctx.out.json_mode() {
        let mut doc = json!({
            "secret_ref": rotation.secret_ref,
            "rotated_at": rotated_at,
            "grace_until": grace_until,
            "previous_kept": rotation.previous_kept,
            "source": source,
        });
        if let Some((kind, name, field)) = &target {
            doc["connector"] = json!(format!("{kind}/{name}"));
            doc["field"] = json!(field);
        }
        if let Some(value) = generated {
            doc["value"] = json!(value.expose());
        }
        ctx.out.json(&doc)?;
        return Ok(ExitStatus::Success);
    }

    let summary = match &grace_until {
        Some(until) => format!(
            "rotated {} (previous value accepted for verification until {until})",
            rotation.secret_ref
        ),
        None if rotation.created => format!("rotated {} (new slot)", rotation.secret_ref),
        None => format!("rotated {}", rotation.secret_ref),
    };
    if args.grace.is_some() && rotation.created {
        ctx.out.warn(&format!(
            "`{}` had no previous value, so --grace has nothing to keep",
            rotation.secret_ref
        ));
    }
    match generated {
        // The value alone on stdout, so `$(kheishctl rotate-secret … --generate)` captures it;
        // the summary goes to stderr.
        Some(value) => {
            ctx.out.line(value.expose())?;
            ctx.out.info(&summary);
        }
        None => ctx.out.line(&summary)?,
    }
    Ok(ExitStatus::Success)
}

/// `--connector KIND/NAME --field FIELD`, checked: FIELD must be a secret field of KIND.
fn connector_target(args: &RotateSecretArgs) -> Result<Option<(ConnectorKind, String, String)>> {
    let (Some(id), Some(field)) = (&args.connector, &args.field) else {
        return Ok(None);
    };
    let fields = docs::secret_fields(id.kind);
    if !fields.contains(&field.as_str()) {
        return Err(StatusError::new(
            ExitStatus::Usage,
            format!(
                "--field `{field}` is not a secret field of {} connectors; use one of: {}",
                id.kind,
                fields.join(", ")
            ),
        )
        .into());
    }
    Ok(Some((id.kind, id.name.to_string(), field.clone())))
}

/// The file-backed connectors in force, once `kind`/`name` is known to be a daemon-managed
/// connector: a file-backed one is changed in its file, and an unknown one is not created
/// here (exit 1 for both).
fn check_rebindable(ctx: &Context, kind: ConnectorKind, name: &str) -> Result<Config> {
    let file = file_connectors(ctx)?;
    if runtime::in_file(&file, kind, name) {
        return Err(StatusError::new(
            ExitStatus::Failure,
            format!(
                "`{kind}/{name}` is a file-backed connector: rotate the slot its file names (`kheishctl rotate-secret REF`) or edit the file; --connector re-binds daemon-managed connectors only"
            ),
        )
        .into());
    }
    let records = runtime::records(&ctx.state_root).map_err(|e| {
        StatusError::new(
            ExitStatus::Unavailable,
            format!(
                "cannot read the runtime connector store: {:#}",
                anyhow::Error::new(e)
            ),
        )
    })?;
    if !records.iter().any(|r| r.kind == kind && r.name == name) {
        return Err(StatusError::new(
            ExitStatus::Failure,
            format!(
                "no daemon-managed connector `{kind}/{name}` in state root {}; create it first (`kheishctl put-external`, or PUT /v1/runtime/connectors/{kind}/{name})",
                ctx.state_root.display()
            ),
        )
        .into());
    }
    Ok(file)
}

/// The new value and the source name recorded with the rotation.
fn read_new_value(args: &RotateSecretArgs) -> Result<(Secret, &'static str), SecretError> {
    if let Some(var) = &args.from_env {
        let value = secrets::value_from_env(var, &|k| std::env::var(k).ok())?;
        return Ok((value, "env"));
    }
    if let Some(path) = &args.from_file {
        return Ok((secrets::read_value_file(path)?, "file"));
    }
    if args.stdin {
        return Ok((
            secrets::read_value(std::io::stdin().lock(), "standard input")?,
            "stdin",
        ));
    }
    // clap's `source` group guarantees exactly one of the four flags.
    Ok((secrets::generate(usize::from(args.bytes))?, "generate"))
}

/// Attaches the exit status the spec wants (4 for state-root and master-key problems, 1 for a
/// bad or missing value) and the slot being rotated.
///
/// `exit::status_for` finds a [`StatusError`] only as an error in the chain, not as an anyhow
/// context, and does not know [`SecretError`]; so the status error is the root and carries the
/// rendered cause chain in its message.
fn with_status(err: SecretError, status: ExitStatus, what: &str) -> anyhow::Error {
    let cause = anyhow::Error::new(err);
    anyhow::Error::new(StatusError::new(status, format!("{what}: {cause:#}")))
}

fn failed(secret_ref: &str) -> impl Fn(SecretError) -> anyhow::Error + '_ {
    move |err| {
        let status = crate::exit::secret_status(&err);
        with_status(
            err,
            status,
            &format!("cannot rotate secret slot `{secret_ref}`"),
        )
    }
}

fn now_ms() -> Result<i64> {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970; fix the clock")?;
    Ok(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
}

fn rfc3339(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}
