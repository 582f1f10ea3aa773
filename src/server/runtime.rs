//! The runtime control plane (SPEC §12, §5.1): `/v1/runtime/connectors…` and
//! `/v1/runtime/secrets…`. Every operation is a function of `registry::runtime`, the same the
//! CLI (`put-external`, `rotate-secret`) calls; this file only parses requests and maps the
//! outcome to statuses. The running daemon applies a change through its watcher (within 2 s).

use serde::Deserialize;
use serde_json::{json, Value};

use super::control::parse_json;
use super::{response, ApiRequest, ApiResponse, RequestCtx, Route};
use crate::model::{now_ms, parse_duration, ConnectorKind};
use crate::registry::runtime::{self, PutRequest, RuntimeError};
use crate::secrets::{Secret, SecretError, SecretStore};

type Reply = Result<ApiResponse, ApiResponse>;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Runs one `/v1/runtime/...` route.
pub fn handle(ctx: &RequestCtx<'_>, route: &Route, req: &ApiRequest) -> ApiResponse {
    let result = match route {
        Route::RuntimeConnectors => list(ctx),
        Route::RuntimeConnector { kind, name } => match req.method.as_str() {
            "GET" => get(ctx, kind, name),
            "PUT" => put(ctx, kind, name, req),
            _ => delete(ctx, kind, name),
        },
        Route::RuntimeSecrets => list_secrets(ctx),
        Route::RuntimeSecret { secret_ref } => match req.method.as_str() {
            "PUT" => put_secret(ctx, secret_ref, req),
            _ => delete_secret(ctx, secret_ref),
        },
        _ => Err(ApiResponse::problem(404, "not_found", "no such route")),
    };
    result.unwrap_or_else(|e| e)
}

fn kind_of(kind: &str) -> Result<ConnectorKind, ApiResponse> {
    kind.parse().map_err(|_| {
        ApiResponse::problem(
            404,
            "not_found",
            format!("`{kind}` is not a connector kind (http, slack, telegram, external)"),
        )
    })
}

fn list(ctx: &RequestCtx<'_>) -> Reply {
    let set = ctx.app.connectors();
    let records = ctx
        .store
        .runtime_connectors()
        .map_err(|e| response::store_error(&ctx.app.out, "listing runtime connectors", &e))?;
    let views: Vec<_> = runtime::list(&set.sources.file_documents, &records)
        .into_iter()
        .map(|view| with_sidecar(ctx, view))
        .collect();
    Ok(ApiResponse::json(200, &json!({ "connectors": views })))
}

fn get(ctx: &RequestCtx<'_>, kind: &str, name: &str) -> Reply {
    let kind = kind_of(kind)?;
    let set = ctx.app.connectors();
    runtime::get(&ctx.app.state_root, &set.sources.file_documents, kind, name)
        .map(|view| ApiResponse::json(200, &with_sidecar(ctx, view)))
        .map_err(|e| error(ctx, &e))
}

/// An external connector's view with its supervised sidecar's live state (issue 11: health is
/// polled and exported), when the supervisor has one for it.
fn with_sidecar(ctx: &RequestCtx<'_>, mut view: runtime::ConnectorView) -> runtime::ConnectorView {
    if view.kind == ConnectorKind::External {
        if let Some(state) = ctx.app.sidecars.get(&view.name) {
            view.sidecar = Some(json!({
                "health": state.health,
                "instance_id": state.instance_id,
                "restarts": state.restarts,
            }));
        }
    }
    view
}

fn put(ctx: &RequestCtx<'_>, kind: &str, name: &str, req: &ApiRequest) -> Reply {
    let kind = kind_of(kind)?;
    let patch: Value = parse_json(&req.body)?;
    let dry_run = query_flag(&req.target, "dry_run")?;
    let set = ctx.app.connectors();
    let outcome = runtime::put(&PutRequest {
        state_root: &ctx.app.state_root,
        file: &set.sources.file,
        kind,
        name,
        patch: &patch,
        dry_run,
        env: Some(&env),
        origin: "api",
        now_ms: now_ms(),
    })
    .map_err(|e| error(ctx, &e))?;
    let status = if outcome.created && !dry_run {
        201
    } else {
        200
    };
    Ok(ApiResponse::json(status, &outcome))
}

fn delete(ctx: &RequestCtx<'_>, kind: &str, name: &str) -> Reply {
    let kind = kind_of(kind)?;
    let set = ctx.app.connectors();
    match runtime::delete(&ctx.app.state_root, &set.sources.file, kind, name) {
        Ok(()) => Ok(ApiResponse::empty(204)),
        // A file-backed connector is not the runtime store's to delete: 404 (SPEC §12).
        Err(RuntimeError::FileBacked { .. }) => Err(ApiResponse::problem(
            404,
            "connector_not_found",
            format!("no daemon-managed connector `{kind}/{name}` (a file-backed one is changed in the connector file)"),
        )),
        Err(e) => Err(error(ctx, &e)),
    }
}

fn list_secrets(ctx: &RequestCtx<'_>) -> Reply {
    let config = current_config(ctx)?;
    runtime::list_secrets(&ctx.app.state_root, &config)
        .map(|secrets| ApiResponse::json(200, &json!({ "secrets": secrets })))
        .map_err(|e| error(ctx, &e))
}

/// `PUT /v1/runtime/secrets/{ref}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutSecretBody {
    value: String,
    /// Keep the previous value valid for verification this long (`10m`).
    grace: Option<String>,
}

fn put_secret(ctx: &RequestCtx<'_>, secret_ref: &str, req: &ApiRequest) -> Reply {
    let body: PutSecretBody = parse_json(&req.body)?;
    let grace = body
        .grace
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| ApiResponse::problem(400, "invalid_request", format!("`grace`: {e}")))?;
    let store =
        SecretStore::open_or_create(&ctx.app.state_root).map_err(|e| secret_error(ctx, &e))?;
    let rotation = store
        .rotate(secret_ref, Secret::new(body.value), grace, "api", now_ms())
        .map_err(|e| secret_error(ctx, &e))?;
    let status = if rotation.created { 201 } else { 200 };
    Ok(ApiResponse::json(
        status,
        &json!({
            "secret_ref": rotation.secret_ref,
            "created": rotation.created,
            "rotated_at_ms": rotation.rotated_at_ms,
            "grace_until_ms": rotation.grace_until_ms,
        }),
    ))
}

fn delete_secret(ctx: &RequestCtx<'_>, secret_ref: &str) -> Reply {
    let config = current_config(ctx)?;
    runtime::delete_secret(&ctx.app.state_root, &config, secret_ref)
        .map(|()| ApiResponse::empty(204))
        .map_err(|e| error(ctx, &e))
}

/// The file's connectors plus the runtime store as it is now (not as the watcher last saw
/// it), so a slot a just-written connector names is protected at once.
fn current_config(ctx: &RequestCtx<'_>) -> Result<crate::config::Config, ApiResponse> {
    let set = ctx.app.connectors();
    let records = ctx
        .store
        .runtime_connectors()
        .map_err(|e| response::store_error(&ctx.app.out, "reading runtime connectors", &e))?;
    let (mut config, _) = runtime::merged_config(&set.sources.file, &[]);
    // Every stored document counts, even one left out of the set: its refs are still in use.
    for r in &records {
        let loaded = crate::config::validate::parse_connector_json(
            &runtime::source_label(r.kind, &r.name),
            r.kind,
            &r.document,
            &config,
        );
        let c = loaded.config;
        config.http.extend(c.http);
        config.slack.extend(c.slack);
        config.telegram.extend(c.telegram);
        config.external.extend(c.external);
    }
    Ok(config)
}

/// `?NAME=true|false` (absent: false).
fn query_flag(target: &str, name: &str) -> Result<bool, ApiResponse> {
    let Some((_, query)) = target.split_once('?') else {
        return Ok(false);
    };
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        if k == name {
            return match v {
                "true" | "1" | "" => Ok(true),
                "false" | "0" => Ok(false),
                other => Err(ApiResponse::problem(
                    400,
                    "invalid_query",
                    format!("`{name}` must be true or false (got `{other}`)"),
                )),
            };
        }
    }
    Ok(false)
}

fn secret_error(ctx: &RequestCtx<'_>, e: &SecretError) -> ApiResponse {
    response::secret_error(&ctx.app.out, e)
}

fn error(ctx: &RequestCtx<'_>, e: &RuntimeError) -> ApiResponse {
    response::runtime_error(&ctx.app.out, e)
}
