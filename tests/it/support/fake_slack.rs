//! A fake Slack Web API on `127.0.0.1:0` (tiny_http), pointed to by a connector's
//! `api_base_url = http://127.0.0.1:PORT/api`. It answers in Slack's documented shapes:
//!
//! - `POST /api/chat.postMessage` (JSON body) → `{"ok":true,"channel","ts","message":{...}}`
//!   with a fresh `ts` per message;
//! - `POST /api/files.getUploadURLExternal` (form `filename`, `length`) →
//!   `{"ok":true,"upload_url":"http://127.0.0.1:PORT/upload/F…","file_id":"F…"}`;
//! - `POST /upload/F…` (raw bytes) → `200 OK - <length>`;
//! - `POST /api/files.completeUploadExternal` (form `files`, `channel_id`, `thread_ts`) →
//!   `{"ok":true,"files":[{"id","title"}]}`;
//! - `GET /files/NAME` → the bytes registered with [`FakeSlack::file`] (private file URLs).
//!
//! A token list ([`FakeSlack::tokens`]) makes other bearer tokens `invalid_auth`. Per path, a
//! script of [`Reply`]s overrides the default answers (429 with `Retry-After`, `ok:false`
//! errors, 5xx, garbage, a hang). Every request is recorded. Nothing sleeps: waits are on a
//! `Condvar` with a deadline.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const POST_MESSAGE: &str = "/api/chat.postMessage";
pub const GET_UPLOAD_URL: &str = "/api/files.getUploadURLExternal";
pub const COMPLETE_UPLOAD: &str = "/api/files.completeUploadExternal";

/// A scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A status and a JSON body.
    Json(u16, Value),
    /// A status, headers and raw bytes.
    Raw(u16, Vec<(String, String)>, Vec<u8>),
    /// Never answered (held until the fake is dropped).
    Hang,
    /// The default answer (lets a script skip ahead: `[Pass, Hang]` hangs the second call).
    Pass,
}

impl Reply {
    /// `{"ok":false,"error":code}` with 200, as Slack answers errors.
    pub fn error(code: &str) -> Reply {
        Reply::Json(200, json!({"ok": false, "error": code}))
    }

    /// HTTP 429 with `Retry-After: secs`.
    pub fn too_many(secs: u64) -> Reply {
        Reply::Raw(
            429,
            vec![("Retry-After".into(), secs.to_string())],
            b"{\"ok\":false,\"error\":\"ratelimited\"}".to_vec(),
        )
    }
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The form-encoded body as pairs.
    pub fn form(&self) -> HashMap<String, String> {
        url::form_urlencoded::parse(&self.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    pub fn bearer(&self) -> Option<&str> {
        self.header("Authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
    }
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    scripts: HashMap<String, VecDeque<Reply>>,
    files: HashMap<String, Reply>,
    tokens: Vec<String>,
    next: u64,
    held: Vec<tiny_http::Request>,
}

type Shared = super::shared::Shared<State>;

/// See the module docs.
pub struct FakeSlack {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl FakeSlack {
    pub fn start() -> FakeSlack {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("binding fake Slack"));
        let addr = server.server_addr().to_ip().expect("an IP address");
        let shared = Arc::new(Shared::new(State::default()));
        let thread = {
            let server = Arc::clone(&server);
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    handle(&shared, addr, request);
                }
            })
        };
        FakeSlack {
            addr,
            shared,
            server,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/api`, the connector's `api_base_url`.
    pub fn api_base_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// The private URL of file `name` on this fake.
    pub fn file_url(&self, name: &str) -> String {
        format!("http://{}/files/{name}", self.addr)
    }

    /// Only these bearer tokens are valid (others get `invalid_auth`).
    pub fn tokens(&self, tokens: &[&str]) -> &FakeSlack {
        self.shared.lock().tokens = tokens.iter().map(|t| t.to_string()).collect();
        self
    }

    /// `GET /files/NAME` answers `reply`.
    pub fn file(&self, name: &str, reply: Reply) -> &FakeSlack {
        self.shared.lock().files.insert(name.to_string(), reply);
        self
    }

    /// The next requests to `path` get `replies`, in order, before the default answer.
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) -> &FakeSlack {
        self.shared
            .lock()
            .scripts
            .entry(path.to_string())
            .or_default()
            .extend(replies);
        self
    }

    /// Answers every request held by [`Reply::Hang`] so far with `status`, `headers` and `body`.
    pub fn release(&self, status: u16, headers: &[(String, String)], body: &[u8]) {
        let held = std::mem::take(&mut self.shared.lock().held);
        for request in held {
            respond(request, status, headers, body.to_vec());
        }
    }

    /// Every request so far.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// The requests to `path`.
    pub fn calls_to(&self, path: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.path == path)
            .collect()
    }

    /// Waits until `path` saw at least `n` requests (panics after `deadline`).
    pub fn wait_for(&self, path: &str, n: usize, deadline: Duration) -> Vec<Call> {
        let end = Instant::now() + deadline;
        let mut state = self.shared.lock();
        loop {
            let calls: Vec<Call> = state
                .calls
                .iter()
                .filter(|c| c.path == path)
                .cloned()
                .collect();
            if calls.len() >= n {
                return calls;
            }
            let now = Instant::now();
            assert!(
                now < end,
                "fake Slack: waited {deadline:?} for {n} calls to {path}, saw {}",
                calls.len()
            );
            state = self
                .shared
                .changed
                .wait_timeout(state, end - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for FakeSlack {
    fn drop(&mut self) {
        self.server.unblock();
        self.shared.lock().held.clear();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(shared: &Shared, addr: SocketAddr, mut request: tiny_http::Request) {
    let mut body = Vec::new();
    let _ = request.as_reader().read_to_end(&mut body);
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let call = Call {
        method: request.method().to_string(),
        path: path.clone(),
        headers: request
            .headers()
            .iter()
            .map(|h| (h.field.to_string(), h.value.to_string()))
            .collect(),
        body,
    };
    let mut state = shared.lock();
    state.calls.push(call.clone());
    shared.changed.notify_all();
    let scripted = state.scripts.get_mut(&path).and_then(VecDeque::pop_front);
    let reply = match scripted {
        Some(Reply::Pass) | None => default_reply(&mut state, addr, &call),
        Some(reply) => reply,
    };
    match reply {
        Reply::Hang => state.held.push(request),
        Reply::Pass => unreachable!("Pass is replaced by the default answer above"),
        Reply::Json(status, value) => {
            drop(state);
            respond(
                request,
                status,
                &[(
                    "Content-Type".into(),
                    "application/json; charset=utf-8".into(),
                )],
                value.to_string().into_bytes(),
            );
        }
        Reply::Raw(status, headers, bytes) => {
            drop(state);
            respond(request, status, &headers, bytes);
        }
    }
}

fn respond(request: tiny_http::Request, status: u16, headers: &[(String, String)], body: Vec<u8>) {
    let mut response = tiny_http::Response::from_data(body).with_status_code(status);
    for (k, v) in headers {
        if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            response.add_header(h);
        }
    }
    let _ = request.respond(response);
}

fn default_reply(state: &mut State, addr: SocketAddr, call: &Call) -> Reply {
    let token_ok = state.tokens.is_empty()
        || call
            .bearer()
            .is_some_and(|t| state.tokens.iter().any(|k| k == t));
    if call.path.starts_with("/api/") && !token_ok {
        return Reply::error("invalid_auth");
    }
    state.next += 1;
    let n = state.next;
    match call.path.as_str() {
        POST_MESSAGE => {
            let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
            let channel = body["channel"].as_str().unwrap_or("").to_string();
            if channel.is_empty() {
                return Reply::error("channel_not_found");
            }
            let ts = format!("1700000000.{n:06}");
            let mut message = json!({"type": "message", "text": body["text"], "user": "U0BOT", "bot_id": "B0BOT", "ts": ts});
            if let Some(thread) = body["thread_ts"].as_str() {
                message["thread_ts"] = json!(thread);
            }
            Reply::Json(
                200,
                json!({"ok": true, "channel": channel, "ts": ts, "message": message}),
            )
        }
        GET_UPLOAD_URL => {
            let form = call.form();
            if !form.contains_key("filename") || !form.contains_key("length") {
                return Reply::error("invalid_arguments");
            }
            let file_id = format!("F{n:08}");
            Reply::Json(
                200,
                json!({"ok": true, "upload_url": format!("http://{addr}/upload/{file_id}"), "file_id": file_id}),
            )
        }
        COMPLETE_UPLOAD => {
            let form = call.form();
            let files: Value = form
                .get("files")
                .and_then(|f| serde_json::from_str(f).ok())
                .unwrap_or(Value::Null);
            Reply::Json(200, json!({"ok": true, "files": files}))
        }
        p if p.starts_with("/upload/") => Reply::Raw(
            200,
            Vec::new(),
            format!("OK - {}", call.body.len()).into_bytes(),
        ),
        p if p.starts_with("/files/") => {
            let name = &p["/files/".len()..];
            state.files.get(name).cloned().unwrap_or(Reply::Raw(
                404,
                Vec::new(),
                b"not found".to_vec(),
            ))
        }
        _ => Reply::Json(404, json!({"ok": false, "error": "unknown_method"})),
    }
}
