//! The daemon's listener (SPEC §5 listener rules, §15 floods and slow clients; STYLE.md §4): our
//! own accept loop on a tokio `TcpListener`, HTTP/1.1 by hyper, on a multi-thread runtime whose
//! thread count does not depend on the number of connections.
//!
//! - **Caps.** Open connections are counted per client address and in all
//!   ([`Limits::max_connections_per_client`], [`Limits::max_connections`]). Past a cap a new
//!   connection is answered `503 overloaded` with `Connection: close` at once and closed; it is
//!   never queued. Rejections still being written are capped too ([`MAX_REJECTING`]).
//! - **Deadlines.** Each connection has a `Clock` (`clock.rs`): the request head must arrive within
//!   `header_timeout` (from the accept, or from the first byte of a later request), the whole
//!   request including its body within `request_timeout`, and a keep-alive connection may idle
//!   `idle_timeout` between requests. hyper's own `header_read_timeout` is not used: it also runs
//!   while a keep-alive connection idles, so it cannot tell a slow head from an idle client.
//!   A connection that has sent nothing yet is not handed to hyper (no buffers) until its first
//!   byte arrives.
//! - **Accept errors** (EMFILE, ENFILE, ENOBUFS, ECONNABORTED, …) are logged at most once per
//!   second per kind, with a count, and retried with a growing pause (5 ms to 1 s) for resource
//!   errors; they never end the loop. [`raise_open_files_limit`] lifts the soft open-files limit
//!   to the hard one at start.
//! - **Closing.** When hyper is done with a connection, the write side is shut and what the
//!   client still sends is read and dropped for a moment (bounded), so an early answer (413,
//!   `Connection: close`) is not destroyed by a TCP reset.
//! - **Shutdown.** [`Running::shutdown`] stops accepting, asks every connection to finish its
//!   request and close (hyper's graceful shutdown), waits at most the grace period, then drops
//!   the runtime.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::clock::{Clock, Limits, Watched};
use super::service::{Service, StorePool};
use super::{ApiResponse, App, BindError};
use crate::output::Printer;

/// How many connections the kernel may queue before `accept` (SPEC §5: never without bound).
const BACKLOG: i32 = 1024;
/// Rejections (503 `overloaded`) being written at once; past this a refused connection is
/// closed without an answer.
pub const MAX_REJECTING: usize = 256;
/// How long a refused or finished connection is drained before it is closed.
const LINGER: Duration = Duration::from_secs(2);
/// At most this much is read and dropped while lingering.
const LINGER_BYTES: usize = 256 * 1024;
/// Pauses after a resource error of `accept` grow from the first to the last.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// A bound listening socket, before any request is served (so the caller can announce it).
pub struct Listener {
    socket: std::net::TcpListener,
    addr: SocketAddr,
}

impl Listener {
    /// Binds `addr` (`127.0.0.1:0` picks a free port) with a backlog of `BACKLOG` (1024).
    pub fn bind(addr: &str) -> Result<Listener, BindError> {
        let err = |reason: String| BindError {
            addr: addr.to_string(),
            reason,
        };
        let target = addr
            .to_socket_addrs()
            .map_err(|e| err(e.to_string()))?
            .next()
            .ok_or_else(|| err("the address resolves to nothing".into()))?;
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(target),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .map_err(|e| err(e.to_string()))?;
        socket
            .set_reuse_address(true)
            .and_then(|()| socket.bind(&target.into()))
            .and_then(|()| socket.listen(BACKLOG))
            .and_then(|()| socket.set_nonblocking(true))
            .map_err(|e| err(e.to_string()))?;
        let socket: std::net::TcpListener = socket.into();
        let bound = socket.local_addr().map_err(|e| err(e.to_string()))?;
        Ok(Listener {
            socket,
            addr: bound,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Raises the soft open-files limit to the hard limit (SPEC §5) and says what it is now.
pub fn raise_open_files_limit(out: &Printer) {
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, hard)) if soft < hard => match rlimit::Resource::NOFILE.set(hard, hard) {
            Ok(()) => out.info(&format!(
                "open-files limit raised from {soft} to {hard} (the hard limit)"
            )),
            Err(e) => out.warn(&format!(
                "open-files limit is {soft}; raising it to the hard limit {hard} failed: {e}"
            )),
        },
        Ok((soft, _)) => out.info(&format!("open-files limit: {soft} (the hard limit)")),
        Err(e) => out.warn(&format!("cannot read the open-files limit: {e}")),
    }
}

/// The runtime of a running server and the handles to stop it.
pub struct Running {
    runtime: tokio::runtime::Runtime,
    stop: watch::Sender<bool>,
    counts: Arc<Counts>,
}

/// Starts the runtime (`core_threads` async workers, at most `blocking_threads` threads for
/// database work) and the accept loop.
pub fn start(
    listener: Listener,
    app: Arc<App>,
    limits: Limits,
    core_threads: usize,
    blocking_threads: usize,
) -> io::Result<Running> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(core_threads.max(1))
        .max_blocking_threads(blocking_threads.max(1))
        .thread_name("http")
        .enable_all()
        .build()?;
    let socket = {
        let _entered = runtime.enter();
        TcpListener::from_std(listener.socket)?
    };
    let (stop, stopped) = watch::channel(false);
    let counts = Arc::new(Counts::default());
    let pool = Arc::new(StorePool::new(
        app.state_root.clone(),
        blocking_threads.max(1),
    ));
    let shared = Arc::new(Shared {
        service: Service::new(app, pool),
        limits,
        counts: Arc::clone(&counts),
        rejecting: AtomicUsize::new(0),
        overloaded: render_raw(&overloaded()),
        http: http_builder(),
        log: Mutex::new(LogLimiter::default()),
    });
    runtime.spawn(accept_loop(socket, shared, stopped));
    Ok(Running {
        runtime,
        stop,
        counts,
    })
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (at most `grace`), closes every
    /// connection and returns how many were still open when the grace ran out.
    pub fn shutdown(self, grace: Duration) -> usize {
        let _ = self.stop.send(true);
        let counts = Arc::clone(&self.counts);
        let left = self.runtime.block_on(async move {
            let _ = tokio::time::timeout(grace, counts.all_closed()).await;
            counts.open()
        });
        self.runtime.shutdown_timeout(Duration::from_millis(200));
        left
    }
}

/// What every connection task shares.
struct Shared {
    service: Service,
    limits: Limits,
    counts: Arc<Counts>,
    rejecting: AtomicUsize,
    /// The bytes of the 503 `overloaded` answer.
    overloaded: Vec<u8>,
    http: http1::Builder,
    log: Mutex<LogLimiter>,
}

impl Shared {
    fn log(&self, kind: &'static str, line: String) {
        let now = Instant::now();
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(line) = log.note(kind, line, now) {
            self.service.app.out.warn(&line);
        }
    }

    /// After a successful accept: says how many errors went unlogged, if any.
    fn log_recovered(&self) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(line) = log.flush("accept", "accepting connections again") {
            self.service.app.out.warn(&line);
        }
    }
}

fn http_builder() -> http1::Builder {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        // The listener's own clock enforces the head deadline (see the module docs).
        .header_read_timeout(None)
        // A client that shuts its write side after the request still gets the answer.
        .half_close(true)
        .keep_alive(true);
    http
}

/// The 503 `overloaded` answer given to connections past a cap.
fn overloaded() -> ApiResponse {
    ApiResponse::problem(
        503,
        "overloaded",
        "too many open connections (from this address or in all); retry later",
    )
    .with_header("Retry-After", "1")
    .with_header("Connection", "close")
}

/// A complete HTTP/1.1 response as bytes, for answers written without hyper.
fn render_raw(resp: &ApiResponse) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        resp.status,
        super::response::title(resp.status),
        resp.content_type,
        resp.body.len()
    );
    for (name, value) in &resp.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&resp.body);
    bytes
}

async fn accept_loop(socket: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut pause = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            accepted = socket.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if !pause.is_zero() {
                    pause = Duration::ZERO;
                    shared.log_recovered();
                }
                admit(&shared, stream, peer.ip().to_canonical(), &stop);
            }
            Err(e) => {
                shared.log("accept", format!("accepting a connection failed: {e}"));
                if is_per_connection(&e) {
                    continue;
                }
                pause = (pause * 2).clamp(ACCEPT_BACKOFF.0, ACCEPT_BACKOFF.1);
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// Errors about one connection (retry at once) rather than about the process or the system
/// (EMFILE, ENFILE, ENOBUFS, ENOMEM: pause first, or the loop spins).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

fn admit(shared: &Arc<Shared>, stream: TcpStream, peer: IpAddr, stop: &watch::Receiver<bool>) {
    match shared.counts.admit(peer, &shared.limits) {
        Ok(slot) => {
            let shared = Arc::clone(shared);
            let stop = stop.clone();
            tokio::spawn(async move {
                serve_connection(&shared, stream, peer, stop).await;
                drop(slot);
            });
        }
        Err(cap) => {
            shared.log(
                "cap",
                format!("connection from {peer} refused with 503 overloaded: {cap}"),
            );
            reject(shared, stream);
        }
    }
}

/// Answers 503 `overloaded` and closes, in a task of its own (bounded by [`MAX_REJECTING`]).
fn reject(shared: &Arc<Shared>, mut stream: TcpStream) {
    if shared.rejecting.fetch_add(1, Ordering::AcqRel) >= MAX_REJECTING {
        shared.rejecting.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let answer = async {
            stream.write_all(&shared.overloaded).await?;
            linger(&mut stream).await;
            Ok::<(), io::Error>(())
        };
        let _ = tokio::time::timeout(LINGER, answer).await;
        shared.rejecting.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Shuts the write side, then reads and drops what the client still sends until it closes, a
/// bounded time passes or enough was read.
async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let drain = async {
        // On the heap: a buffer in the future would make every connection's task this big.
        let mut sink = vec![0u8; 8192];
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Why a connection ended.
enum End {
    /// hyper finished with it (the client closed, `Connection: close`, an error it answered).
    Done,
    /// A deadline of the [`Clock`] passed.
    TimedOut(&'static str),
}

/// One admitted connection: waits for its first byte (a connection that has sent nothing holds
/// no HTTP state), then serves it with hyper.
async fn serve_connection(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: IpAddr,
    mut stop: watch::Receiver<bool>,
) {
    let accepted = Instant::now();
    // `peek` (not `readable`, which may resolve at once for a new socket) waits for a byte or
    // the end of the stream without consuming anything.
    let mut first = [0u8; 1];
    let first_byte = tokio::select! {
        _ = stop.wait_for(|s| *s) => return,
        peeked = tokio::time::timeout(shared.limits.header_timeout, stream.peek(&mut first)) => peeked,
    };
    // Closed before a byte (`Ok(0)`), an error or the header timeout: nothing to serve.
    if matches!(first_byte, Ok(Ok(n)) if n > 0) {
        // Boxed: the HTTP state is allocated only now, not in every idle connection's task.
        Box::pin(serve_http(shared, stream, peer, stop, accepted)).await;
    }
}

/// Serves HTTP/1.1 on a connection until hyper is done with it or a deadline passes.
async fn serve_http(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: IpAddr,
    stop: watch::Receiver<bool>,
    accepted: Instant,
) {
    let _ = stream.set_nodelay(true);
    let clock = Arc::new(Clock::new(shared.limits, accepted));
    let io = TokioIo::new(Watched {
        io: stream,
        clock: Arc::clone(&clock),
    });
    let service = shared.service.for_connection(Arc::clone(&clock), peer);
    let mut conn = shared.http.serve_connection(io, service);
    let mut stopping = Box::pin(async move {
        let mut stop = stop;
        let _ = stop.wait_for(|s| *s).await;
    });
    let mut stopped = false;
    let mut sleep = Box::pin(tokio::time::sleep_until(Instant::now()));
    let mut armed: Option<Instant> = None;
    let end = poll_fn(|cx| {
        if !stopped && stopping.as_mut().poll(cx).is_ready() {
            stopped = true;
            Pin::new(&mut conn).graceful_shutdown();
        }
        if conn.poll_without_shutdown(cx).is_ready() {
            return Poll::Ready(End::Done);
        }
        let Some((at, phase)) = clock.deadline() else {
            return Poll::Pending;
        };
        if armed != Some(at) {
            sleep.as_mut().reset(at);
            armed = Some(at);
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(End::TimedOut(phase)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    match end {
        End::Done => {
            let mut stream = conn.into_parts().io.into_inner().io;
            linger(&mut stream).await;
        }
        End::TimedOut(phase) => {
            shared.service.app.out.debug(&format!(
                "closing a connection from {peer}: {phase} timeout"
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connection caps

/// Open connections, in all and per client address.
#[derive(Default)]
struct Counts {
    inner: Mutex<CountsInner>,
    closed: tokio::sync::Notify,
}

#[derive(Default)]
struct CountsInner {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// An admitted connection; dropping it frees its place.
struct Slot {
    counts: Arc<Counts>,
    peer: IpAddr,
}

impl Counts {
    fn admit(self: &Arc<Self>, peer: IpAddr, limits: &Limits) -> Result<Slot, String> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let from_peer = inner.per_client.get(&peer).copied().unwrap_or(0);
        if from_peer >= limits.max_connections_per_client {
            return Err(format!(
                "{from_peer} connections open from this address (--max-connections-per-client {})",
                limits.max_connections_per_client
            ));
        }
        if inner.total >= limits.max_connections {
            return Err(format!(
                "{} connections open (--max-connections {})",
                inner.total, limits.max_connections
            ));
        }
        inner.total += 1;
        *inner.per_client.entry(peer).or_insert(0) += 1;
        Ok(Slot {
            counts: Arc::clone(self),
            peer,
        })
    }

    fn open(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    /// Resolves once no connection is open.
    async fn all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            closed.await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.counts.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.total = inner.total.saturating_sub(1);
        if let Some(n) = inner.per_client.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                inner.per_client.remove(&self.peer);
            }
        }
        let none_left = inner.total == 0;
        drop(inner);
        if none_left {
            self.counts.closed.notify_waiters();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rate-limited log lines

/// At most one line per second per kind; the lines in between are counted and the count goes
/// on the next line.
#[derive(Default)]
struct LogLimiter {
    kinds: HashMap<&'static str, (Instant, u64)>,
}

impl LogLimiter {
    const INTERVAL: Duration = Duration::from_secs(1);

    /// The line to print now, if any.
    fn note(&mut self, kind: &'static str, line: String, now: Instant) -> Option<String> {
        match self.kinds.get_mut(kind) {
            Some((last, skipped)) if now.duration_since(*last) < Self::INTERVAL => {
                *skipped += 1;
                None
            }
            Some((last, skipped)) => {
                let line = with_count(line, *skipped);
                *last = now;
                *skipped = 0;
                Some(line)
            }
            None => {
                self.kinds.insert(kind, (now, 0));
                Some(line)
            }
        }
    }

    /// A closing line for `kind` when lines were counted but not printed.
    fn flush(&mut self, kind: &'static str, line: &str) -> Option<String> {
        match self.kinds.remove(kind) {
            Some((_, skipped)) if skipped > 0 => Some(with_count(line.to_string(), skipped)),
            _ => None,
        }
    }
}

fn with_count(line: String, skipped: u64) -> String {
    if skipped == 0 {
        line
    } else {
        format!("{line} ({skipped} more like it since the last line)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_client_and_in_all() {
        let counts = Arc::new(Counts::default());
        let limits = Limits {
            max_connections: 3,
            max_connections_per_client: 2,
            ..Limits::default()
        };
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let a1 = counts.admit(a, &limits).unwrap();
        let _a2 = counts.admit(a, &limits).unwrap();
        assert!(counts.admit(a, &limits).is_err());
        let _b1 = counts.admit(b, &limits).unwrap();
        assert!(counts.admit(b, &limits).is_err(), "the global cap");
        drop(a1);
        assert_eq!(counts.open(), 2);
        assert!(counts.admit(a, &limits).is_ok());
    }

    #[test]
    fn log_lines_are_rate_limited_with_a_count() {
        let mut log = LogLimiter::default();
        let t0 = Instant::now();
        assert_eq!(log.note("accept", "x".into(), t0).as_deref(), Some("x"));
        assert_eq!(log.note("accept", "x".into(), t0), None);
        assert_eq!(log.note("accept", "x".into(), t0), None);
        assert!(
            log.note("cap", "y".into(), t0).is_some(),
            "kinds are separate"
        );
        let later = t0 + Duration::from_millis(1001);
        assert_eq!(
            log.note("accept", "x".into(), later).as_deref(),
            Some("x (2 more like it since the last line)")
        );
        log.note("accept", "x".into(), later);
        assert!(log.flush("accept", "ok").is_some());
        assert!(log.flush("accept", "ok").is_none());
    }

    #[test]
    fn the_overloaded_answer_is_a_complete_problem() {
        let bytes = render_raw(&overloaded());
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.contains("\"code\":\"overloaded\""), "{text}");
    }
}
