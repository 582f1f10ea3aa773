//! `GET /v1/connectors/external/{name}/credentials/{env_key}` (SPEC §10.7): a `child_process`
//! sidecar fetches one of its declared credentials with the lease token it was spawned with
//! (`Authorization: Bearer <KHEISH_EXTERNAL_CONNECTOR_CREDENTIAL_TOKEN>`).
//!
//! The order: the key must be declared by the connector in the config in force (404, the same
//! answer for an unknown connector), then the token must match the connector's live lease,
//! unexpired, covering that key with the same secret ref (401), then the value is read from
//! the secret store now — it is never cached, logged or put in the child's environment. Runs
//! on the blocking pool (the secret store is SQLite plus decryption).

use serde_json::json;

use super::{response, ApiRequest, ApiResponse, RequestCtx};
use crate::config::ExternalMode;
use crate::model::now_ms;
use crate::secrets::{SecretError, SecretStore};

/// Answers one credential fetch.
pub fn fetch(ctx: &RequestCtx<'_>, name: &str, env_key: &str, req: &ApiRequest) -> ApiResponse {
    let app = ctx.app;
    let connectors = app.connectors();
    let declared = connectors
        .external
        .get(name)
        .filter(|rt| rt.config.mode == ExternalMode::ChildProcess)
        .and_then(|rt| rt.config.child_process.as_ref())
        .map(|cp| cp.credential_slots.as_slice());
    let token = bearer(req).unwrap_or_default();
    let granted = match app
        .leases
        .check(name, declared, env_key, token.as_bytes(), now_ms())
    {
        Ok(granted) => granted,
        Err(refusal) => return response::lease_refusal(refusal, name, env_key),
    };
    let value = SecretStore::open_existing(&app.state_root).and_then(|store| {
        let store = store.ok_or_else(|| SecretError::NoStateRoot {
            secret_ref: granted.secret_ref.clone(),
        })?;
        store
            .get(&granted.secret_ref)?
            .ok_or_else(|| SecretError::SlotMissing {
                secret_ref: granted.secret_ref.clone(),
            })
    });
    match value {
        Ok(secret) => {
            app.out.info(&format!(
                "external connector `{name}`: credential `{env_key}` served under lease {}",
                granted.lease_id
            ));
            ApiResponse::json(
                200,
                &json!({
                    "value": secret.expose(),
                    "lease_id": granted.lease_id,
                    "grant_id": granted.grant_id,
                    "expires_at_ms": granted.expires_at_ms,
                }),
            )
            .with_header("Cache-Control", "no-store")
        }
        Err(e) => {
            app.out.error(&format!(
                "external connector `{name}`: credential `{env_key}` cannot be read: {e}"
            ));
            response::credential_unavailable(&e)
        }
    }
}

/// The bearer token of `Authorization`, when there is exactly one such header.
fn bearer(req: &ApiRequest) -> Option<String> {
    match req.header_values("authorization").as_slice() {
        [one] => one
            .strip_prefix("Bearer ")
            .or_else(|| one.strip_prefix("bearer "))
            .map(|t| t.trim().to_string()),
        _ => None,
    }
}
