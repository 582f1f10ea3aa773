//! The request side of the listener: turns one hyper request into an [`ApiRequest`], applies
//! the generic checks in the documented order, runs the route, and turns the [`ApiResponse`]
//! back into a hyper response, recording metrics and the access-log line.
//!
//! Nothing here blocks the runtime (STYLE.md §4). Parsing, admin auth, health and readiness run
//! inline; every route that touches SQLite runs on the runtime's blocking pool (bounded by
//! `--workers`), with a database connection from [`StorePool`]. An accepted ingress event is
//! answered through a oneshot channel that the pipeline's `Done` callback fills after the group
//! commit, so no thread waits for the commit. Claim long-polls look on the blocking pool and
//! wait in between with [`Notify::wait_past_async`](crate::notify::Notify::wait_past_async).
//!
//! Order of the generic checks (docs/routes.md): the request head (bare LF, header values that
//! are not visible ASCII: 400), route (404/405), the connector lookup for ingress (404), the body
//! (413, 400, 408), the query string (400), authentication (401/429), then the route.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode, Uri};
use tokio::sync::oneshot;

use super::clock::{Clock, HeadInfo};
use super::control::{self, ClaimLook};
use super::{response, router, ApiRequest, ApiResponse, App, Phase, RequestCtx, Route};
use crate::ingress::IngressError;
use crate::output::LogLevel;
use crate::store::Store;

/// Database connections for the blocking pool: one is taken for each blocking task and given
/// back after it, so there are never more than the pool's threads; connections are opened on
/// first need and kept up to that number.
pub struct StorePool {
    root: PathBuf,
    keep: usize,
    idle: Mutex<Vec<Store>>,
}

impl StorePool {
    pub fn new(root: PathBuf, keep: usize) -> StorePool {
        StorePool {
            root,
            keep,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Result<Store, crate::store::StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(store) => Ok(store),
            None => Store::open(&self.root),
        }
    }

    fn give_back(&self, store: Store) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.keep {
            idle.push(store);
        }
    }
}

/// The daemon's request handling, shared by every connection.
#[derive(Clone)]
pub struct Service {
    pub app: Arc<App>,
    pool: Arc<StorePool>,
}

/// The hyper service of one connection.
#[derive(Clone)]
pub struct ConnService {
    service: Service,
    clock: Arc<Clock>,
    peer: IpAddr,
}

type Answer = Response<Full<Bytes>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Answer;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let answer = this.service.handle(&this.clock, this.peer, req).await;
            this.clock.answered();
            Ok(answer)
        })
    }
}

/// Why a request body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyError {
    /// Larger than the route's limit (413).
    TooLarge,
    /// Broken framing (bad chunk size, early close): 400.
    Malformed,
    /// Not complete by the request deadline (408).
    TimedOut,
}

impl Service {
    pub fn new(app: Arc<App>, pool: Arc<StorePool>) -> Service {
        Service { app, pool }
    }

    pub fn for_connection(&self, clock: Arc<Clock>, peer: IpAddr) -> ConnService {
        ConnService {
            service: self.clone(),
            clock,
            peer,
        }
    }

    async fn handle(&self, clock: &Clock, peer: IpAddr, req: Request<Incoming>) -> Answer {
        let head = clock.head_done();
        let started = Instant::now();
        let method = req.method().as_str().to_string();
        let target = raw_target(req.uri());
        let path = target.split_once('?').map_or(target.as_str(), |(p, _)| p);
        let routed = router::route(&method, path);
        let template = routed.as_ref().map_or("(unmatched)", Route::template);
        let (response, connector) = self
            .respond(clock, &head, peer, req, &method, &target, routed)
            .await;
        let status = response.status;
        let seconds = started.elapsed().as_secs_f64();
        self.app.metrics.request(template, status, seconds);
        if self.app.out.enabled(LogLevel::Info) {
            let connector = connector
                .as_deref()
                .map(|c| format!(" connector={c}"))
                .unwrap_or_default();
            self.app.out.info(&format!(
                "{method} {template} {status} {:.1}ms{connector}",
                seconds * 1000.0
            ));
        }
        to_hyper(response)
    }

    /// The answer to one request and the connector it was for (for the access log).
    #[allow(clippy::too_many_arguments)]
    async fn respond(
        &self,
        clock: &Clock,
        head: &HeadInfo,
        peer: IpAddr,
        req: Request<Incoming>,
        method: &str,
        target: &str,
        routed: Result<Route, router::NoRoute>,
    ) -> (ApiResponse, Option<String>) {
        let (parts, body) = req.into_parts();
        if head.bare_lf {
            clock.body_done();
            return (
                bad_head("a line of the request head ends with a bare LF; HTTP/1.1 needs CRLF"),
                None,
            );
        }
        let headers = match header_pairs(&parts.headers) {
            Ok(headers) => headers,
            Err(name) => {
                clock.body_done();
                let detail = format!(
                    "the value of header `{name}` is not visible ASCII (RFC 9110 field values)"
                );
                return (
                    ApiResponse::problem(400, "invalid_header", detail)
                        .with_header("Connection", "close"),
                    None,
                );
            }
        };
        // SPEC §6.1: the connector lookup (404) comes before the body-size check (413).
        if let Ok(Route::Ingress { kind, name, .. }) = &routed {
            if self.app.connectors().id(*kind, name).is_none() {
                clock.body_done();
                let err = IngressError::ConnectorNotFound {
                    kind: *kind,
                    name: name.clone(),
                };
                return (
                    response::ingress_error(&err).with_header("Connection", "close"),
                    None,
                );
            }
        }
        let body = match &routed {
            Ok(route) => read_body(body, route.body_limit(), head.body_deadline).await,
            Err(_) => Ok(Vec::new()),
        };
        clock.body_done();
        let route = match routed {
            Err(router::NoRoute::NotFound) => {
                let path = target.split_once('?').map_or(target, |(p, _)| p);
                return (
                    ApiResponse::problem(404, "not_found", format!("no route for {method} {path}")),
                    None,
                );
            }
            Err(router::NoRoute::MethodNotAllowed { allow }) => {
                return (
                    ApiResponse::problem(
                        405,
                        "method_not_allowed",
                        format!("{method} is not allowed here; use {allow}"),
                    )
                    .with_header("Allow", allow),
                    None,
                )
            }
            Ok(route) => route,
        };
        let body = match body {
            Ok(body) => body,
            Err(err) => {
                let too_large = matches!(err, BodyError::TooLarge);
                let problem = body_problem(err, route.body_limit());
                return match &route {
                    // A body over the limit is too large on every re-send; see `no_retry_for`.
                    Route::Ingress { kind, name, .. } if too_large => {
                        let err = IngressError::PayloadTooLarge {
                            limit: route.body_limit(),
                        };
                        // Counted like any other refusal of the connector (`rejected`).
                        if let Some(id) = self.app.connectors().id(*kind, name) {
                            super::ingress::count_refusal(&self.app, id, &err);
                        }
                        (super::ingress::no_retry_for(*kind, &err, problem), None)
                    }
                    _ => (problem, None),
                };
            }
        };
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let Some(query) = router::query_pairs(query) else {
            return (
                ApiResponse::problem(
                    400,
                    "invalid_query",
                    "the query string has a malformed percent-escape",
                ),
                None,
            );
        };
        let req = ApiRequest {
            method: method.to_string(),
            target: target.to_string(),
            path: path.to_string(),
            query,
            headers,
            body,
            remote: Some(peer),
        };
        if let Some(refusal) = super::admin_refusal(&self.app, &route, &req) {
            return (refusal, None);
        }
        if let Some(answer) = super::probe(&self.app, &route) {
            return (answer, None);
        }
        match route {
            Route::Ingress { kind, name, path } => self.ingress(kind, name, path, req).await,
            Route::ClaimRun => (self.claim(req).await, None),
            route => {
                let answer = self
                    .blocking(move |app, store| {
                        super::dispatch(&RequestCtx { app, store }, &route, &req)
                    })
                    .await;
                (answer.unwrap_or_else(|problem| problem), None)
            }
        }
    }

    /// Runs `f` on the blocking pool with a database connection.
    async fn blocking<T, F>(&self, f: F) -> Result<T, ApiResponse>
    where
        F: FnOnce(&Arc<App>, &Store) -> T + Send + 'static,
        T: Send + 'static,
    {
        let app = Arc::clone(&self.app);
        let pool = Arc::clone(&self.pool);
        let joined = tokio::task::spawn_blocking(move || {
            let store = pool.take()?;
            let out = f(&app, &store);
            pool.give_back(store);
            Ok::<T, crate::store::StoreError>(out)
        })
        .await;
        match joined {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(response::store_error(
                &self.app.out,
                "opening a database connection for a request",
                &e,
            )),
            Err(e) => {
                self.app
                    .out
                    .error(&format!("a request handler failed: {e}"));
                Err(ApiResponse::problem(
                    500,
                    "internal_error",
                    "the request failed inside the daemon; see the daemon log",
                ))
            }
        }
    }

    /// An ingress request: authentication, parsing and the reads on the blocking pool, the
    /// answer through a oneshot (after the group commit for a new event).
    async fn ingress(
        &self,
        kind: crate::model::ConnectorKind,
        name: String,
        path: super::ingress::IngressPath,
        req: ApiRequest,
    ) -> (ApiResponse, Option<String>) {
        let (tx, rx) = oneshot::channel();
        let submitted = self
            .blocking(move |app, store| {
                let reply = move |connector: Option<String>, response: ApiResponse| {
                    let _ = tx.send((response, connector));
                };
                super::ingress::handle(app, store, kind, &name, path, &req, Box::new(reply));
            })
            .await;
        if let Err(problem) = submitted {
            return (problem, None);
        }
        match rx.await {
            Ok(answer) => answer,
            Err(_) => {
                let err = IngressError::Unavailable {
                    detail: "the event's answer was lost (the writer stopped)".into(),
                };
                (response::ingress_error(&err), None)
            }
        }
    }

    /// `POST /v1/runs/claim`: one look on the blocking pool; with `wait_ms`, an async wait
    /// until a run is queued, the earliest lease expires, the daemon drains or the wait ends.
    async fn claim(&self, req: ApiRequest) -> ApiResponse {
        let claim = match control::claim_request(&req) {
            Ok(claim) => Arc::new(claim),
            Err(problem) => return problem,
        };
        let deadline = Instant::now() + claim.wait;
        loop {
            let look = Arc::clone(&claim);
            let looked = self
                .blocking(move |app, store| control::claim_once(&RequestCtx { app, store }, &look))
                .await;
            let (seen, retry_in) = match looked {
                Err(problem) | Ok(Err(problem)) => return problem,
                Ok(Ok(ClaimLook::Claimed(answer))) => return answer,
                Ok(Ok(ClaimLook::Nothing { seen, retry_in })) => (seen, retry_in),
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() || self.app.phase() == Phase::Draining {
                return ApiResponse::empty(204);
            }
            let wait = retry_in.map_or(remaining, |d| d.min(remaining));
            self.app.runs_queued.wait_past_async(seen, wait).await;
        }
    }
}

/// A 400 for a request head hyper accepted but the daemon does not.
fn bad_head(detail: &str) -> ApiResponse {
    ApiResponse::problem(400, "invalid_head", detail).with_header("Connection", "close")
}

fn body_problem(err: BodyError, limit: usize) -> ApiResponse {
    let problem = match err {
        BodyError::Malformed => ApiResponse::problem(
            400,
            "invalid_body",
            "the request body could not be read (broken chunked framing or an early close)",
        ),
        BodyError::TooLarge => ApiResponse::problem(
            413,
            "payload_too_large",
            format!("request body exceeds the limit of {limit} bytes for this route"),
        ),
        BodyError::TimedOut => ApiResponse::problem(
            408,
            "request_timeout",
            "the request body did not arrive within the request timeout",
        ),
    };
    problem.with_header("Connection", "close")
}

/// Reads the body up to `limit` bytes by `deadline`: a `Content-Length` over the limit is
/// refused before anything is read, a streamed (chunked) body as soon as it passes the limit.
async fn read_body(
    body: Incoming,
    limit: usize,
    deadline: tokio::time::Instant,
) -> Result<Vec<u8>, BodyError> {
    if body.size_hint().lower() > limit as u64 {
        return Err(BodyError::TooLarge);
    }
    let collected = tokio::time::timeout_at(deadline, Limited::new(body, limit).collect()).await;
    match collected {
        Err(_) => Err(BodyError::TimedOut),
        Ok(Ok(collected)) => Ok(collected.to_bytes().into()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge),
        Ok(Err(_)) => Err(BodyError::Malformed),
    }
}

/// The request target exactly as received: the raw path and query of an origin-form target
/// (percent-encoding and `//` kept), the whole URI otherwise (absolute-form, `*`).
fn raw_target(uri: &Uri) -> String {
    match uri.path_and_query() {
        Some(pq) if uri.scheme().is_none() && uri.authority().is_none() => pq.as_str().to_string(),
        _ => uri.to_string(),
    }
}

/// Every header as `(name, value)`, all values of a name in the order sent; `Err(name)` for a
/// value that is not visible ASCII.
fn header_pairs(map: &HeaderMap) -> Result<Vec<(String, String)>, String> {
    map.iter()
        .map(|(name, value)| match value.to_str() {
            Ok(v) => Ok((name.as_str().to_string(), v.to_string())),
            Err(_) => Err(name.as_str().to_string()),
        })
        .collect()
}

fn to_hyper(response: ApiResponse) -> Answer {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut answer = Response::new(Full::new(Bytes::from(response.body)));
    *answer.status_mut() = status;
    let headers = answer.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(response.content_type),
    );
    for (name, value) in response.headers {
        // Names and values are the daemon's own ASCII; one that is not is dropped, not sent.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            // A handler's own `Content-Type` (a served asset's media type) replaces the
            // default one.
            if name == CONTENT_TYPE {
                headers.insert(name, value);
            } else {
                headers.append(name, value);
            }
        }
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_target_keeps_encoding_and_double_slashes() {
        for raw in [
            "/v1/connectors/http/orders",
            "/v1/connectors/http/or%64ers?x=%2F&y=a+b",
            "//v1//connectors/http/orders?",
            "*",
        ] {
            let uri: Uri = raw.parse().unwrap();
            assert_eq!(raw_target(&uri), raw);
        }
        let uri: Uri = "http://example.com/v1/x?y".parse().unwrap();
        assert_eq!(raw_target(&uri), "http://example.com/v1/x?y");
    }

    #[test]
    fn repeated_headers_keep_every_value_in_order_and_non_ascii_is_refused() {
        let mut map = HeaderMap::new();
        map.append("x-kheish-timestamp", HeaderValue::from_static("1"));
        map.append("authorization", HeaderValue::from_static("Bearer a"));
        map.append("x-kheish-timestamp", HeaderValue::from_static("2"));
        let pairs = header_pairs(&map).unwrap();
        let ts: Vec<&str> = pairs
            .iter()
            .filter(|(k, _)| k == "x-kheish-timestamp")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(ts, ["1", "2"]);
        map.append(
            "authorization",
            HeaderValue::from_bytes(b"Bearer t\xc3\xb6k").unwrap(),
        );
        assert_eq!(header_pairs(&map).unwrap_err(), "authorization");
    }

    #[test]
    fn answers_keep_their_headers() {
        let answer = to_hyper(
            ApiResponse::problem(413, "payload_too_large", "x").with_header("Connection", "close"),
        );
        assert_eq!(answer.status(), 413);
        assert_eq!(answer.headers()["connection"], "close");
        assert_eq!(answer.headers()["content-type"], "application/problem+json");
    }
}
