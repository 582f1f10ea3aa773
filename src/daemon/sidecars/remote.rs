//! Health of one `remote_http` sidecar (SPEC §10.3): the daemon does not run it, but polls
//! `GET {base_url}/health` every health interval (through the public-address guard unless the
//! connector sets `allow_private_network`) and exports what it answers, so `/metrics` shows
//! remote sidecars next to supervised ones. A failed poll makes it `unreachable`; the log
//! says so when the state changes, not at every poll.

use std::time::Instant;

use super::child::Inbox;
use super::spec::RemoteSpec;
use super::Ctx;
use crate::net::sidecar_api::SidecarClient;
use crate::registry::SidecarStatus;

/// Polls until told to stop.
pub(super) fn watch(ctx: &Ctx, spec: &RemoteSpec, inbox: &mut Inbox) {
    let name = spec.name.as_str();
    let token = spec.shared_token.as_ref().map(|t| t.expose().to_string());
    let client = match SidecarClient::new(&spec.base_url, token, spec.allow_private_network) {
        Ok(client) => Some(client),
        Err(e) => {
            ctx.app.out.error(&format!("sidecar `{name}`: {e}"));
            None
        }
    };
    loop {
        let (next, problem) = match client.as_ref().map(SidecarClient::health) {
            Some(Ok(h)) => (
                SidecarStatus {
                    instance_id: Some(h.instance_id),
                    health: h.status.as_str().into(),
                    restarts: 0,
                },
                None,
            ),
            Some(Err(e)) => (unreachable(), Some(e.to_string())),
            None => (unreachable(), Some("the base_url is not usable".into())),
        };
        if problem.is_some() {
            ctx.stats.failure(name, "health");
        }
        let before = ctx.app.sidecars.get(name).map(|s| s.health);
        if before.as_deref() != Some(next.health.as_str()) {
            match &problem {
                Some(why) => ctx.app.out.warn(&format!(
                    "sidecar `{name}` (remote): health check failed: {why}"
                )),
                None => ctx.app.out.info(&format!(
                    "sidecar `{name}` (remote): health {}",
                    next.health
                )),
            }
        }
        ctx.app.sidecars.set(name, next);
        if inbox.stopped_before(Instant::now() + ctx.timings.health_interval) {
            return;
        }
    }
}

fn unreachable() -> SidecarStatus {
    SidecarStatus {
        instance_id: None,
        health: "unreachable".into(),
        restarts: 0,
    }
}
