//! Connector ingress routes: the one table of served connector kinds (path segment, body
//! limit, the kind's `accept`), the connector lookup that precedes the body read (SPEC §6.1:
//! 404 before 413), and the rendering of ingress answers with their metrics.
//!
//! Adding a connector kind to the daemon is one line in [`KINDS`].

use std::sync::Arc;
use std::time::Instant;

use super::{response, ApiRequest, ApiResponse, App};
use crate::ingress::http::{self, Inbound};
use crate::ingress::pipeline::{Done, IngressCtx};
use crate::ingress::{AcceptStatus, Answer, IngressError};
use crate::metrics::IngressOutcome;
use crate::model::{now_ms, ConnectorId, ConnectorKind};
use crate::registry::ConnectorSet;
use crate::store::Store;

/// One served connector kind.
pub struct IngressKind {
    pub kind: ConnectorKind,
    /// Request bodies above this many bytes answer 413 without being read further.
    pub body_limit: usize,
    /// Authenticates and parses a request for connector `name` of this kind and runs it through
    /// the pipeline; `done` gets the answer (a missing connector is `ConnectorNotFound`).
    pub accept: fn(&IngressCtx<'_>, &ConnectorSet, &str, &Inbound<'_>, Done),
}

/// Every connector kind this build serves, by its `/v1/connectors/{kind}/{name}` segment.
pub const KINDS: &[IngressKind] = &[IngressKind {
    kind: ConnectorKind::Http,
    body_limit: http::BODY_LIMIT,
    accept: http::accept_named,
}];

/// The table entry of `kind`, when this build serves it.
pub fn served(kind: ConnectorKind) -> Option<&'static IngressKind> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// Runs one ingress request on a blocking-pool thread; `reply` is called once with the
/// response: on this thread for refusals and duplicates, on the writer thread after the commit
/// for new events (it must not block: the server's reply fills a oneshot channel).
pub fn handle(
    app: &Arc<App>,
    store: &Store,
    kind: ConnectorKind,
    name: &str,
    req: &ApiRequest,
    reply: Box<dyn FnOnce(Option<String>, ApiResponse) + Send>,
) {
    let connectors = app.connectors();
    let (Some(entry), Some(id)) = (served(kind), connectors.id(kind, name).cloned()) else {
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

/// Maps an ingress answer to its response and counts its outcome.
fn render(app: &App, id: &ConnectorId, answer: Result<Answer, IngressError>) -> ApiResponse {
    let outcome = match &answer {
        Ok(Answer::Event(accepted)) => match accepted.status {
            AcceptStatus::Accepted => IngressOutcome::Accepted,
            AcceptStatus::Duplicate => IngressOutcome::Duplicate,
        },
        Ok(Answer::Protocol(_)) => IngressOutcome::Ignored,
        Err(IngressError::Unauthorized { .. }) => IngressOutcome::Unauthorized,
        Err(IngressError::RateLimited { .. }) => IngressOutcome::RateLimited,
        Err(IngressError::IdempotencyConflict { .. }) => IngressOutcome::Conflict,
        Err(_) => IngressOutcome::Rejected,
    };
    app.metrics.ingress(id, outcome);
    match answer {
        Ok(answer) => response::answer(&answer),
        Err(err) => {
            if let IngressError::Unavailable { detail } = &err {
                app.out.error(&format!("ingress for {id} failed: {detail}"));
                let failing = app.writer.health().failure();
                return response::ingress_error_during(&err, failing.as_ref());
            }
            response::ingress_error(&err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_table_serves_exactly_the_served_kinds() {
        for kind in ConnectorKind::ALL {
            assert_eq!(
                served(kind).is_some(),
                kind.served(),
                "{kind}: server::ingress::KINDS and ConnectorKind::served disagree"
            );
        }
    }
}
