//! The daemon's HTTP side: the shared [`App`] state, the request type handlers see, and
//! [`run`], which owns the request threads and the shutdown handshake. The only module that
//! imports tiny_http.

pub mod admin;
pub mod control;
pub mod deliveries;
pub mod health;
pub mod ingress;
pub mod observe;
pub mod response;
pub mod router;
pub mod shutdown;

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ingress::ratelimit::RateLimiter;
use crate::metrics::Metrics;
use crate::notify::Notify;
use crate::output::Printer;
use crate::registry::{ConnectorSet, Registry};
use crate::store::ingress::GroupWriter;
use crate::store::Store;

use admin::{AdminAuth, AdminRefusal};

pub use response::ApiResponse;
pub use router::Route;

/// Lifecycle phase, reported by `/readyz` (503 unless `Ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Starting = 0,
    Ready = 1,
    Draining = 2,
}

/// Options fixed at start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Claim long-polls that may wait at once (each holds a request thread); further claims
    /// answer after one look. Half the request threads, at least one.
    pub long_poll_slots: usize,
}

/// State shared by every request thread and background worker of one daemon.
pub struct App {
    pub out: Printer,
    pub state_root: PathBuf,
    pub options: Options,
    pub metrics: Metrics,
    /// Bumped whenever a run becomes claimable (new run, run released); claim long-polls and
    /// handler workers wait on it.
    pub runs_queued: Arc<Notify>,
    /// Bumped whenever deliveries were queued (run output, replay); delivery workers wait on it.
    pub deliveries_queued: Arc<Notify>,
    /// The connectors in force; replaced whole on reload.
    pub registry: Registry,
    /// The group-commit writer: accepted events, run claims and settlements, delivery rounds.
    pub writer: Arc<GroupWriter>,
    pub limiter: RateLimiter,
    pub admin: AdminAuth,
    /// Writes ingress answers that complete after a group commit.
    pub responders: Responders,
    /// Claim long-polls waiting now (bounded by `options.long_poll_slots`).
    pub long_polls: std::sync::atomic::AtomicUsize,
    phase: AtomicU8,
}

/// A held long-poll slot (see [`App::long_poll_slot`]).
pub struct LongPollSlot<'a> {
    app: &'a App,
}

impl Drop for LongPollSlot<'_> {
    fn drop(&mut self) {
        self.app.long_polls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything [`App::new`] needs.
pub struct AppParts {
    pub out: Printer,
    pub state_root: PathBuf,
    pub options: Options,
    pub runs_queued: Arc<Notify>,
    pub deliveries_queued: Arc<Notify>,
    pub connectors: ConnectorSet,
    pub writer: Arc<GroupWriter>,
    pub admin: AdminAuth,
}

impl App {
    pub fn new(parts: AppParts) -> App {
        App {
            out: parts.out,
            state_root: parts.state_root,
            options: parts.options,
            metrics: Metrics::new(),
            runs_queued: parts.runs_queued,
            deliveries_queued: parts.deliveries_queued,
            registry: Registry::new(parts.connectors),
            writer: parts.writer,
            limiter: RateLimiter::new(),
            admin: parts.admin,
            responders: Responders::start(2),
            long_polls: std::sync::atomic::AtomicUsize::new(0),
            phase: AtomicU8::new(Phase::Starting as u8),
        }
    }

    /// Takes a long-poll slot if one is free; the slot is returned when the guard drops.
    pub fn long_poll_slot(&self) -> Option<LongPollSlot<'_>> {
        let taken = self.long_polls.fetch_add(1, Ordering::AcqRel);
        if taken < self.options.long_poll_slots {
            Some(LongPollSlot { app: self })
        } else {
            self.long_polls.fetch_sub(1, Ordering::AcqRel);
            None
        }
    }

    /// The connectors in force now.
    pub fn connectors(&self) -> Arc<ConnectorSet> {
        self.registry.current()
    }

    /// Replaces the connectors (reload).
    pub fn set_connectors(&self, connectors: ConnectorSet) {
        self.registry.swap(connectors);
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }
}

/// One request as handlers see it: everything read from the wire, nothing of tiny_http.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: String,
    /// The request target exactly as received (path and query, percent-encoding kept).
    pub target: String,
    /// The path part of `target` (still encoded).
    pub path: String,
    /// Decoded query pairs.
    pub query: Vec<(String, String)>,
    /// Headers as sent, in order (names compared case-insensitively).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub remote: Option<IpAddr>,
}

impl ApiRequest {
    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of query parameter `key`.
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What a handler gets: the shared app and this thread's own database connection.
pub struct RequestCtx<'a> {
    pub app: &'a App,
    pub store: &'a Store,
}

/// Why the listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {reason}")]
pub struct BindError {
    pub addr: String,
    pub reason: String,
}

/// A bound listener, before any request is served (so the caller can announce the address).
pub struct Listener {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
}

impl Listener {
    /// Binds `addr` (`127.0.0.1:0` picks a free port).
    pub fn bind(addr: &str) -> Result<Listener, BindError> {
        let err = |reason: String| BindError {
            addr: addr.to_string(),
            reason,
        };
        let server = tiny_http::Server::http(addr).map_err(|e| err(e.to_string()))?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| err("not an IP listener".into()))?;
        Ok(Listener {
            server: Arc::new(server),
            addr: bound,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The request threads of a running server.
pub struct Running {
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    exited: mpsc::Receiver<()>,
}

/// Starts `workers` request threads, each with its own database connection.
pub fn start(listener: Listener, app: Arc<App>, workers: usize) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let (exited_tx, exited) = mpsc::channel();
    let threads = (0..workers.max(1))
        .map(|i| {
            let app = Arc::clone(&app);
            let server = Arc::clone(&listener.server);
            let stop = Arc::clone(&stop);
            let exited_tx = exited_tx.clone();
            std::thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || {
                    request_loop(&app, &server, &stop);
                    let _ = exited_tx.send(());
                })
                .expect("spawning a request thread")
        })
        .collect();
    Running {
        server: listener.server,
        stop,
        threads,
        exited,
    }
}

impl Running {
    /// Stops taking requests, lets in-flight requests finish (at most `grace`), joins the
    /// threads that finished and returns how many did not finish in time.
    pub fn shutdown(self, grace: Duration) -> usize {
        self.stop.store(true, Ordering::Release);
        // One unblock per thread: each wakes one blocked `recv` (tiny_http's own shutdown idiom).
        for _ in 0..self.threads.len() {
            self.server.unblock();
        }
        let deadline = Instant::now() + grace;
        let mut finished = 0;
        while finished < self.threads.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.exited.recv_timeout(left) {
                Ok(()) => finished += 1,
                Err(_) => break,
            }
        }
        let stuck = self.threads.len() - finished;
        if stuck == 0 {
            for t in self.threads {
                let _ = t.join();
            }
        }
        stuck
    }
}

fn request_loop(app: &Arc<App>, server: &tiny_http::Server, stop: &AtomicBool) {
    let store = match Store::open(&app.state_root) {
        Ok(store) => store,
        Err(e) => {
            app.out
                .error(&format!("request thread cannot open the state root: {e}"));
            return;
        }
    };
    while !stop.load(Ordering::Acquire) {
        match server.recv() {
            Ok(rq) => handle(app, &store, rq),
            // `unblock` (shutdown) or a listener error: re-check the stop flag.
            Err(_) => continue,
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyError {
    /// Larger than the route's limit (413).
    TooLarge,
    /// The framing is broken (bad chunk size, unsupported transfer coding, early close): 400.
    Malformed,
}

/// Reads the body up to `limit` bytes.
fn read_body(rq: &mut tiny_http::Request, limit: usize) -> Result<Vec<u8>, BodyError> {
    if rq.body_length().is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::with_capacity(rq.body_length().unwrap_or(0).min(limit));
    match rq.as_reader().take(limit as u64 + 1).read_to_end(&mut body) {
        Ok(_) if body.len() <= limit => Ok(body),
        Ok(_) => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Malformed),
    }
}

/// The pending answer to one request: owns the connection's request object, and records the
/// metrics and access-log line when it is sent. It may be sent from another thread (ingress
/// answers after the group commit).
struct Reply {
    app: Arc<App>,
    rq: tiny_http::Request,
    started: Instant,
    method: String,
    template: &'static str,
    connector: Option<String>,
}

impl Reply {
    fn send(self, response: ApiResponse) {
        let status = response.status;
        let seconds = self.started.elapsed().as_secs_f64();
        self.app.metrics.request(self.template, status, seconds);
        if self.app.out.enabled(crate::output::LogLevel::Info) {
            let connector = self
                .connector
                .as_deref()
                .map(|c| format!(" connector={c}"))
                .unwrap_or_default();
            self.app.out.info(&format!(
                "{} {} {status} {:.1}ms{connector}",
                self.method,
                self.template,
                seconds * 1000.0
            ));
        }
        let mut resp = tiny_http::Response::from_data(response.body)
            .with_status_code(response.status)
            .with_header(header("Content-Type", response.content_type));
        for (name, value) in &response.headers {
            resp = resp.with_header(header(name, value));
        }
        // The client may have gone away; there is nobody left to tell.
        let _ = self.rq.respond(resp);
    }
}

fn handle(app: &Arc<App>, store: &Store, mut rq: tiny_http::Request) {
    let started = Instant::now();
    let method = rq.method().as_str().to_string();
    let target = rq.url().to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let routed = router::route(&method, path);
    let template = routed.as_ref().map_or("(unmatched)", Route::template);
    // SPEC §6.1: the connector lookup (404) comes before the body-size check (413).
    if let Ok(Route::Ingress { kind, name }) = &routed {
        if app.connectors().id(*kind, name).is_none() {
            let reply = Reply {
                app: Arc::clone(app),
                rq,
                started,
                method,
                template,
                connector: None,
            };
            let err = crate::ingress::IngressError::ConnectorNotFound {
                kind: *kind,
                name: name.clone(),
            };
            return reply.send(response::ingress_error(&err).with_header("Connection", "close"));
        }
    }
    let body = match &routed {
        Ok(route) => read_body(&mut rq, route.body_limit()),
        Err(_) => Ok(Vec::new()),
    };
    let query = router::query_pairs(query);
    let req = ApiRequest {
        method: method.clone(),
        target: target.clone(),
        path: path.to_string(),
        query: query.clone().unwrap_or_default(),
        headers: rq
            .headers()
            .iter()
            .map(|h| {
                (
                    h.field.as_str().as_str().to_string(),
                    h.value.as_str().to_string(),
                )
            })
            .collect(),
        body: body.clone().unwrap_or_default(),
        remote: rq.remote_addr().map(|a| a.ip()),
    };
    let reply = Reply {
        app: Arc::clone(app),
        rq,
        started,
        method: method.clone(),
        template,
        connector: None,
    };
    let route = match routed {
        Err(router::NoRoute::NotFound) => {
            return reply.send(ApiResponse::problem(
                404,
                "not_found",
                format!("no route for {method} {path}"),
            ))
        }
        Err(router::NoRoute::MethodNotAllowed { allow }) => {
            return reply.send(
                ApiResponse::problem(
                    405,
                    "method_not_allowed",
                    format!("{method} is not allowed here; use {allow}"),
                )
                .with_header("Allow", allow),
            )
        }
        Ok(route) => route,
    };
    if body == Err(BodyError::Malformed) {
        return reply.send(
            ApiResponse::problem(400, "invalid_body", "the request body could not be read (broken chunked framing or an unsupported transfer coding)")
                .with_header("Connection", "close"),
        );
    }
    if body.is_err() {
        let limit = route.body_limit();
        return reply.send(
            ApiResponse::problem(
                413,
                "payload_too_large",
                format!("request body exceeds the limit of {limit} bytes for this route"),
            )
            .with_header("Connection", "close"),
        );
    }
    if query.is_none() {
        return reply.send(ApiResponse::problem(
            400,
            "invalid_query",
            "the query string has a malformed percent-escape",
        ));
    }
    dispatch(app, store, &route, &req, reply);
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("response header names and values are ASCII without line breaks")
}

fn dispatch(app: &Arc<App>, store: &Store, route: &Route, req: &ApiRequest, reply: Reply) {
    if route.needs_admin() {
        let auth = req.header_values("authorization");
        match app.admin.check(req.remote, &auth, Instant::now()) {
            Ok(()) => {}
            Err(AdminRefusal::Unauthorized(why)) => {
                return reply.send(
                    ApiResponse::problem(401, "unauthorized", why)
                        .with_header("WWW-Authenticate", "Bearer"),
                )
            }
            Err(AdminRefusal::Locked { retry_after_secs }) => {
                return reply.send(
                    ApiResponse::problem(
                        429,
                        "too_many_auth_failures",
                        "too many failed admin authentications from this address; retry later",
                    )
                    .with_header("Retry-After", retry_after_secs.to_string()),
                )
            }
        }
    }
    let ctx = RequestCtx { app, store };
    let response = match route {
        Route::Healthz => ApiResponse::json(200, &serde_json::json!({"status": "ok"})),
        Route::Readyz => health::readyz(app),
        Route::Metrics => observe::metrics(&ctx),
        Route::ListReceipts => observe::list_receipts(&ctx, req),
        Route::ListDeliveries
        | Route::DeadLetters
        | Route::GetDelivery { .. }
        | Route::ReplayDelivery { .. }
        | Route::ResolveDelivery { .. }
        | Route::ReplayBulk
        | Route::ResetBackpressure => deliveries::handle(&ctx, route, req),
        Route::Ingress { kind, name } => {
            return ingress::handle(
                app,
                store,
                *kind,
                name,
                req,
                Box::new(move |connector, response| {
                    let mut reply = reply;
                    reply.connector = connector;
                    reply.send(response)
                }),
            )
        }
        _ => control::handle(&ctx, route, req),
    };
    reply.send(response);
}

/// Work handed to the responder threads.
type Task = Box<dyn FnOnce() + Send>;

/// A small pool of threads that write deferred responses, so the ingress writer never waits on
/// a client socket. Tasks submitted after shutdown run on the caller's thread.
pub struct Responders {
    sender: std::sync::Mutex<Option<mpsc::Sender<Task>>>,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Responders {
    pub fn start(n: usize) -> Responders {
        let (sender, receiver) = mpsc::channel::<Task>();
        let receiver = Arc::new(std::sync::Mutex::new(receiver));
        let threads = (0..n.max(1))
            .map(|i| {
                let receiver = Arc::clone(&receiver);
                std::thread::Builder::new()
                    .name(format!("responder-{i}"))
                    .spawn(move || loop {
                        let task = receiver.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match task {
                            Ok(task) => task(),
                            Err(_) => return,
                        }
                    })
                    .expect("spawning a responder thread")
            })
            .collect();
        Responders {
            sender: std::sync::Mutex::new(Some(sender)),
            threads: std::sync::Mutex::new(threads),
        }
    }

    pub fn run(&self, task: Task) {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match sender {
            Some(s) => {
                if let Err(mpsc::SendError(task)) = s.send(task) {
                    task();
                }
            }
            None => task(),
        }
    }

    /// Runs what is queued, then joins the threads.
    pub fn shutdown(&self) {
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        for t in self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = t.join();
        }
    }
}
