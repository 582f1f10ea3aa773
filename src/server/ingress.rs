//! Connector ingress routes: the one table of served ingress endpoints (kind and path, route
//! template, body limit, the kind's `accept`), the connector lookup that precedes the body read (SPEC §6.1:
//! 404 before 413), and the rendering of ingress answers with their metrics.
//!
//! Adding a connector kind to the daemon is one entry in [`ENDPOINTS`] per route.

use std::sync::Arc;
use std::time::Instant;

use super::{response, ApiRequest, ApiResponse, App};
use crate::ingress::http::{self, Inbound};
use crate::ingress::pipeline::{Done, IngressCtx};
use crate::ingress::{external, slack, telegram, AcceptStatus, Answer, EventOutcome, IngressError};
use crate::metrics::IngressOutcome;
use crate::model::{now_ms, ConnectorId, ConnectorKind};
use crate::registry::ConnectorSet;
use crate::store::Store;

/// Which ingress endpoint of a connector a request is for: the path segments after
/// `/v1/connectors/{kind}/{name}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressPath {
    /// `/v1/connectors/{kind}/{name}`: the webhook of http, slack and telegram connectors.
    Webhook,
    /// `/v1/connectors/external/{name}/events`: one sidecar event.
    Events,
    /// `/v1/connectors/external/{name}/events/batch`: up to 64 sidecar events.
    EventsBatch,
}

impl IngressPath {
    /// The path from the segments after the connector name.
    pub(super) fn parse(rest: &[&str]) -> Option<IngressPath> {
        match rest {
            [] => Some(IngressPath::Webhook),
            ["events"] => Some(IngressPath::Events),
            ["events", "batch"] => Some(IngressPath::EventsBatch),
            _ => None,
        }
    }
}

/// One served ingress endpoint: a connector kind and a path under its connectors.
pub struct IngressEndpoint {
    pub kind: ConnectorKind,
    pub path: IngressPath,
    /// The route template for access logs and metrics labels.
    pub template: &'static str,
    /// Request bodies above this many bytes answer 413 without being read further.
    pub body_limit: usize,
    /// Authenticates and parses a request for connector `name` of this kind and runs it through
    /// the pipeline; `done` gets the answer (a missing connector is `ConnectorNotFound`).
    pub accept: fn(&IngressCtx<'_>, &ConnectorSet, &str, &Inbound<'_>, Done),
}

/// Every ingress endpoint this build serves. A kind is served when it has at least one.
pub const ENDPOINTS: &[IngressEndpoint] = &[
    IngressEndpoint {
        kind: ConnectorKind::Http,
        path: IngressPath::Webhook,
        template: "/v1/connectors/http/{name}",
        body_limit: http::BODY_LIMIT,
        accept: http::accept_named,
    },
    IngressEndpoint {
        kind: ConnectorKind::Slack,
        path: IngressPath::Webhook,
        template: "/v1/connectors/slack/{name}",
        body_limit: http::BODY_LIMIT,
        accept: slack::accept,
    },
    IngressEndpoint {
        kind: ConnectorKind::Telegram,
        path: IngressPath::Webhook,
        template: "/v1/connectors/telegram/{name}",
        body_limit: telegram::BODY_LIMIT,
        accept: telegram::accept_webhook,
    },
    IngressEndpoint {
        kind: ConnectorKind::External,
        path: IngressPath::Events,
        template: "/v1/connectors/external/{name}/events",
        body_limit: external::BODY_LIMIT,
        accept: external::accept_event,
    },
    IngressEndpoint {
        kind: ConnectorKind::External,
        path: IngressPath::EventsBatch,
        template: "/v1/connectors/external/{name}/events/batch",
        body_limit: external::BODY_LIMIT,
        accept: external::accept_batch,
    },
];

/// True when this build has an ingress endpoint for `kind`.
pub fn served(kind: ConnectorKind) -> bool {
    ENDPOINTS.iter().any(|e| e.kind == kind)
}

/// The table entry of `kind` at `path`, when this build serves it.
pub fn endpoint(kind: ConnectorKind, path: IngressPath) -> Option<&'static IngressEndpoint> {
    ENDPOINTS.iter().find(|e| e.kind == kind && e.path == path)
}

/// Runs one ingress request on a blocking-pool thread; `reply` is called once with the
/// response: on this thread for refusals and duplicates, on the writer thread after the commit
/// for new events (it must not block: the server's reply fills a oneshot channel).
pub fn handle(
    app: &Arc<App>,
    store: &Store,
    kind: ConnectorKind,
    name: &str,
    path: IngressPath,
    req: &ApiRequest,
    reply: Box<dyn FnOnce(Option<String>, ApiResponse) + Send>,
) {
    app.writer.wait_for_room();
    let connectors = app.connectors();
    let (Some(entry), Some(id)) = (endpoint(kind, path), connectors.id(kind, name).cloned()) else {
        let err = IngressError::ConnectorNotFound {
            kind,
            name: name.to_string(),
        };
        return reply(None, response::ingress_error(&err));
    };
    let ctx = IngressCtx {
        ops: store.ingress_ops(),
        writer: &app.writer,
        limiter: &app.limiter,
        in_flight: &app.in_flight,
        sidecars: &app.sidecars,
        slack_api: &app.slack_api,
        telegram: &app.telegram,
        now_ms: now_ms(),
        now: Instant::now(),
    };
    let inbound = Inbound {
        method: &req.method,
        target: &req.target,
        headers: &req.headers,
        body: &req.body,
    };
    let app_for_answer = Arc::clone(app);
    (entry.accept)(
        &ctx,
        &connectors,
        name,
        &inbound,
        Box::new(move |answer| {
            let response = render(&app_for_answer, &id, answer);
            reply(Some(id.to_string()), response);
        }),
    );
}

/// Maps an ingress answer to its response and counts its outcome ([`count`]).
fn render(app: &App, id: &ConnectorId, answer: Result<Answer, IngressError>) -> ApiResponse {
    count(app, id, &answer);
    match answer {
        Ok(answer) => response::answer(&answer),
        Err(err) => {
            if let IngressError::Unavailable { detail } = &err {
                app.out.error(&format!("ingress for {id} failed: {detail}"));
                let failing = app.writer.health().failure();
                return response::ingress_error_during(&err, failing.as_ref());
            }
            no_retry_for(id.kind, &err, response::ingress_error(&err))
        }
    }
}

/// Slack re-sends an event whose answer is not 2xx (three times, over minutes) unless the answer
/// carries `X-Slack-No-Retry: 1` (Slack's Events API documentation). Refusals of the event
/// itself, which every re-send repeats, get it: a payload that breaks the rules (400), an
/// allowlist refusal (403), another body under an event id already accepted (409
/// `idempotency_conflict`), a body over the limit (413). Everything that may pass by itself
/// keeps Slack's retries: a bad signature (401, the secret may be mid-rotation), a connector
/// not loaded yet (404, the runtime store), a missing session an operator can create (409), a
/// rate limit (429), a body cut off in transit (400 `invalid_body`), store failures (503).
pub(super) fn no_retry_for(
    kind: ConnectorKind,
    err: &IngressError,
    response: ApiResponse,
) -> ApiResponse {
    use IngressError as E;
    let permanent = match err {
        E::PayloadTooLarge { .. }
        | E::Forbidden { .. }
        | E::InvalidJson { .. }
        | E::InvalidPayload { .. }
        | E::IdempotencyConflict { .. } => true,
        E::ConnectorNotFound { .. }
        | E::Unauthorized { .. }
        | E::SessionNotFound { .. }
        | E::RateLimited { .. }
        | E::Unavailable { .. } => false,
        // The other refusals do not occur on Slack routes; a re-send would repeat them.
        _ => true,
    };
    if kind == ConnectorKind::Slack && permanent {
        response.with_header("X-Slack-No-Retry", "1")
    } else {
        response
    }
}

/// Counts an ingress answer's outcome: once per request (or polled Telegram update), except
/// for external answers, which count each event (each item of a batch) in both families.
pub fn count(app: &App, id: &ConnectorId, answer: &Result<Answer, IngressError>) {
    match answer {
        Ok(Answer::Events { outcomes, .. }) => {
            for outcome in outcomes {
                app.metrics.ingress(id, event_outcome(*outcome));
                app.metrics.external_event(id, outcome.status());
            }
        }
        Ok(Answer::Event(accepted)) => app.metrics.ingress(
            id,
            match accepted.status {
                AcceptStatus::Accepted => IngressOutcome::Accepted,
                AcceptStatus::Duplicate => IngressOutcome::Duplicate,
            },
        ),
        Ok(Answer::Protocol(_)) => app.metrics.ingress(id, IngressOutcome::Ignored),
        Err(err) => count_refusal(app, id, err),
    }
}

/// Counts a refusal of connector `id`'s route: by the pipeline, or before it (a body over
/// the limit).
pub fn count_refusal(app: &App, id: &ConnectorId, err: &IngressError) {
    app.metrics.ingress(id, error_outcome(err));
    // A single external event refused by its rate limit or the store is an event status
    // too (`rate_limited`, `error`) even though it is answered 429/503.
    if id.kind == ConnectorKind::External {
        match err {
            IngressError::RateLimited { .. } => app
                .metrics
                .external_event(id, EventOutcome::RateLimited.status()),
            IngressError::Unavailable { .. } => {
                app.metrics.external_event(id, EventOutcome::Error.status())
            }
            _ => {}
        }
    }
}

/// The request-level outcome of a refusal.
fn error_outcome(err: &IngressError) -> IngressOutcome {
    match err {
        IngressError::Unauthorized { .. } => IngressOutcome::Unauthorized,
        IngressError::RateLimited { .. } => IngressOutcome::RateLimited,
        IngressError::IdempotencyConflict { .. } => IngressOutcome::Conflict,
        _ => IngressOutcome::Rejected,
    }
}

/// The generic outcome of one external event.
fn event_outcome(outcome: EventOutcome) -> IngressOutcome {
    match outcome {
        EventOutcome::Accepted => IngressOutcome::Accepted,
        EventOutcome::Duplicate => IngressOutcome::Duplicate,
        EventOutcome::Conflict => IngressOutcome::Conflict,
        EventOutcome::Rejected | EventOutcome::Error => IngressOutcome::Rejected,
        EventOutcome::RateLimited => IngressOutcome::RateLimited,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_table_serves_exactly_the_served_kinds() {
        for kind in ConnectorKind::ALL {
            assert_eq!(
                served(kind),
                kind.served(),
                "{kind}: server::ingress::ENDPOINTS and ConnectorKind::served disagree"
            );
        }
        // External connectors are served on their event routes only, never as a webhook.
        assert!(endpoint(ConnectorKind::External, IngressPath::Webhook).is_none());
        assert!(endpoint(ConnectorKind::External, IngressPath::EventsBatch).is_some());
    }
}
