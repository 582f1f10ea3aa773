//! A programmable fake webhook target on `127.0.0.1:0` (svix's `TestReceiver`, raw sockets so a
//! test controls every byte): it records every request (method, target, headers including
//! `Idempotency-Key`, body, arrival time) and answers from a script — a status sequence,
//! `429` with `Retry-After`, a redirect, a huge body, a connection closed without an answer, a
//! request held until the test releases it, or one that never gets an answer at all.
//!
//! Nothing here sleeps: connection threads block on the socket or on a `Condvar`, and
//! [`Receiver::wait_for`] waits on the same `Condvar` with a deadline. Dropping the receiver
//! releases every held request, shuts every socket down and joins the accept thread.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::http;

/// How the receiver answers one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A status with a small JSON body.
    Status(u16),
    /// A status with extra headers and a body.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// A status with a `Content-Length` body of this many bytes (streamed, never buffered).
    Huge { status: u16, len: usize },
    /// Reads the request, then closes the connection without a byte of answer.
    Close,
    /// Never answers: the socket is held open until the receiver is dropped.
    Hang,
    /// Waits until [`Receiver::release`] (or the drop of the receiver), then answers.
    Hold(Box<Answer>),
}

impl Answer {
    /// `status` with a `Retry-After: value` header (seconds or an HTTP-date).
    pub fn retry_after(status: u16, value: &str) -> Answer {
        Answer::Full {
            status,
            headers: vec![("Retry-After".into(), value.into())],
            body: b"{\"error\":\"slow down\"}".to_vec(),
        }
    }

    /// `301 Moved Permanently` to `location`.
    pub fn redirect(location: &str) -> Answer {
        Answer::Full {
            status: 301,
            headers: vec![("Location".into(), location.into())],
            body: Vec::new(),
        }
    }

    /// `Hold` then 200.
    pub fn held() -> Answer {
        Answer::Hold(Box::new(Answer::Status(200)))
    }
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query exactly as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Wall-clock arrival time, Unix ms (comparable with the daemon's `*_at_ms` members).
    pub at_ms: i64,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        http::header(&self.headers, name)
    }

    /// The body parsed as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "request body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    script: VecDeque<Answer>,
    default: Option<Answer>,
    /// Fixed answers by request path, used before the script (which they do not consume).
    fixed: Vec<(String, Answer)>,
    /// Bumped by `release`; a held request goes on once the generation passed the one it saw.
    released: u64,
    stopping: bool,
    /// Clones of every open connection, shut down on drop to end their threads.
    conns: Vec<TcpStream>,
    /// Requests currently held or hanging.
    waiting: usize,
    threads: Vec<JoinHandle<()>>,
}

type Shared = super::shared::Shared<State>;

/// The fake webhook target. See the module docs.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Binds `127.0.0.1:0` and answers `200` until told otherwise.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake receiver");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::new(State::default()));
        let for_accept = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("receiver-accept".into())
            .spawn(move || accept_loop(&listener, &for_accept))
            .unwrap();
        Receiver {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The http reply-target address for `path` with `allow_private_network` (loopback).
    pub fn address(&self, path: &str) -> String {
        serde_json::json!({"url": self.url(path), "allow_private_network": true}).to_string()
    }

    /// Answers the next requests with `answers`, in order, then with the default.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) -> &Receiver {
        self.shared.lock().script.extend(answers);
        self
    }

    /// The answer once the script is used up (initially `200`).
    pub fn set_default(&self, answer: Answer) -> &Receiver {
        self.shared.lock().default = Some(answer);
        self
    }

    /// Answers every request to `path` (without the query) with `answer` from now on, before
    /// and without consuming the script (a fake sidecar's `/manifest` and `/health`).
    pub fn fixed(&self, path: &str, answer: Answer) -> &Receiver {
        let mut state = self.shared.lock();
        state.fixed.retain(|(p, _)| p != path);
        state.fixed.push((path.to_string(), answer));
        self
    }

    /// Every request to `path` (without the query) so far, in arrival order.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        let state = self.shared.lock();
        state
            .requests
            .iter()
            .filter(|r| r.path() == path)
            .cloned()
            .collect()
    }

    /// Waits until at least `n` requests to `path` arrived; returns them.
    pub fn wait_for_path(&self, path: &str, n: usize, deadline: Duration) -> Vec<Recorded> {
        self.wait_until(&format!("{n} requests to {path}"), deadline, |s| {
            s.requests.iter().filter(|r| r.path() == path).count() >= n
        })
        .into_iter()
        .filter(|r| r.path() == path)
        .collect()
    }

    /// Lets every request held so far go on.
    pub fn release(&self) {
        let mut state = self.shared.lock();
        state.released += 1;
        self.shared.changed.notify_all();
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    pub fn count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// Requests held or hanging right now.
    pub fn waiting(&self) -> usize {
        self.shared.lock().waiting
    }

    /// Waits until at least `n` requests arrived (panics after `deadline` with what came).
    pub fn wait_for(&self, n: usize, deadline: Duration) -> Vec<Recorded> {
        self.wait_until(&format!("{n} requests"), deadline, |s| {
            s.requests.len() >= n
        })
    }

    /// Waits until at least `n` requests are held or hanging.
    pub fn wait_waiting(&self, n: usize, deadline: Duration) -> Vec<Recorded> {
        self.wait_until(&format!("{n} held requests"), deadline, |s| s.waiting >= n)
    }

    fn wait_until(
        &self,
        what: &str,
        deadline: Duration,
        done: impl Fn(&State) -> bool,
    ) -> Vec<Recorded> {
        let end = Instant::now() + deadline;
        let mut state = self.shared.lock();
        while !done(&state) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let seen: Vec<String> = state
                    .requests
                    .iter()
                    .map(|r| format!("{} {}", r.method, r.target))
                    .collect();
                panic!(
                    "fake receiver: timed out after {deadline:?} waiting for {what}; got {} ({} waiting): {seen:?}",
                    state.requests.len(),
                    state.waiting
                );
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.requests.clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let threads = {
            let mut state = self.shared.lock();
            state.stopping = true;
            state.released += 1;
            for conn in &state.conns {
                let _ = conn.shutdown(Shutdown::Both);
            }
            self.shared.changed.notify_all();
            std::mem::take(&mut state.threads)
        };
        // Wake the blocking accept with one last connection.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let mut state = shared.lock();
        if state.stopping {
            return;
        }
        if let Ok(clone) = stream.try_clone() {
            state.conns.push(clone);
        }
        let for_conn = Arc::clone(shared);
        let handle = std::thread::Builder::new()
            .name("receiver-conn".into())
            .spawn(move || serve_connection(stream, &for_conn))
            .unwrap();
        state.threads.push(handle);
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Serves requests on one (keep-alive) connection until the peer closes it or an answer ends it.
fn serve_connection(stream: TcpStream, shared: &Shared) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut writer = write_half;
    loop {
        let Some(mut request) = read_request(&mut reader) else {
            return;
        };
        request.at_ms = now_ms();
        let close_requested = request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let answer = {
            let mut state = shared.lock();
            let fixed = state
                .fixed
                .iter()
                .find(|(path, _)| path == request.path())
                .map(|(_, answer)| answer.clone());
            state.requests.push(request);
            let answer = fixed
                .or_else(|| state.script.pop_front())
                .or_else(|| state.default.clone())
                .unwrap_or(Answer::Status(200));
            shared.changed.notify_all();
            answer
        };
        match answer_request(&mut writer, answer, shared) {
            Ok(true) if !close_requested => continue,
            _ => {
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// Writes one answer; `Ok(true)` when the connection may serve another request.
fn answer_request(
    writer: &mut TcpStream,
    answer: Answer,
    shared: &Shared,
) -> std::io::Result<bool> {
    match answer {
        Answer::Status(status) => write_response(writer, status, &[], b"{\"ok\":true}"),
        Answer::Full {
            status,
            headers,
            body,
        } => write_response(writer, status, &headers, &body),
        Answer::Huge { status, len } => {
            write!(
                writer,
                "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\n\r\n",
                reason(status)
            )?;
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len());
                writer.write_all(&chunk[..n])?;
                left -= n;
            }
            writer.flush()?;
            Ok(true)
        }
        Answer::Close => Ok(false),
        Answer::Hang => {
            let mut state = shared.lock();
            state.waiting += 1;
            shared.changed.notify_all();
            while !state.stopping {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
            state.waiting -= 1;
            Ok(false)
        }
        Answer::Hold(then) => {
            {
                let mut state = shared.lock();
                let seen = state.released;
                state.waiting += 1;
                shared.changed.notify_all();
                while state.released == seen && !state.stopping {
                    state = shared
                        .changed
                        .wait(state)
                        .unwrap_or_else(|p| p.into_inner());
                }
                state.waiting -= 1;
                shared.changed.notify_all();
                if state.stopping {
                    return Ok(false);
                }
            }
            answer_request(writer, *then, shared)
        }
    }
}

fn write_response(
    writer: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<bool> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    writer.write_all(head.as_bytes())?;
    writer.write_all(body)?;
    writer.flush()?;
    Ok(true)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Reads one request (Content-Length or chunked body); `None` when the peer closed or sent
/// something that is not an HTTP request.
fn read_request(reader: &mut impl BufRead) -> Option<Recorded> {
    // Skip stray blank lines between keep-alive requests.
    let line = loop {
        let line = http::read_line(reader).ok()??;
        if !line.trim().is_empty() {
            break line;
        }
    };
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let headers = http::read_headers(reader).ok()?;
    let mut body = Vec::new();
    if http::is_chunked(&headers) {
        body = http::read_chunked_body(reader).ok()?;
    } else if let Some(len) = http::header(&headers, "content-length") {
        body.resize(len.parse().ok()?, 0);
        reader.read_exact(&mut body).ok()?;
    }
    Some(Recorded {
        method,
        target,
        headers,
        body,
        at_ms: 0,
    })
}
