//! A fake Telegram Bot API on `127.0.0.1:0` (tiny_http), pointed to by a connector's
//! `api_base_url`. It speaks the real shapes: `POST /bot<token>/<method>` with JSON or
//! multipart bodies, answered `{"ok":true,"result":...}` or
//! `{"ok":false,"error_code":N,"description":"...","parameters":{"retry_after":S}}`, and file
//! downloads at `GET /file/bot<token>/<file_path>`.
//!
//! - `getUpdates` serves the queued updates with `update_id >= offset` (at most `limit`, 100 by
//!   default) and, like Telegram, forgets the ones below the offset it is called with (they are
//!   confirmed); with nothing to serve it long-polls up to the request's `timeout`, woken by
//!   [`FakeTelegram::push_update`].
//! - `getFile` and downloads serve the files added with [`FakeTelegram::add_file`].
//! - `sendMessage`, `sendPhoto`, `sendAudio`, `sendDocument` and `answerCallbackQuery` are
//!   recorded and answered with a Message (or `true`).
//! - A per-method script ([`FakeTelegram::script`]) replaces the next answers: any status and
//!   body, an `ok:false` error, or a hang (the request is never answered nor recorded as
//!   processed, as if the server had not got it).
//!
//! Nothing sleeps: request threads and waiters block on one `Condvar` with deadlines.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A raw status, headers and body.
    Raw {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Never answered until the fake is dropped; not recorded as a call.
    Hang,
}

impl Reply {
    /// `{"ok":false,"error_code":status,"description":...}` with HTTP `status`.
    pub fn error(status: u16, description: &str) -> Reply {
        Reply::Raw {
            status,
            headers: Vec::new(),
            body: json!({"ok": false, "error_code": status, "description": description})
                .to_string(),
        }
    }

    /// 429 with `parameters.retry_after`.
    pub fn flood_wait(seconds: u64) -> Reply {
        Reply::Raw {
            status: 429,
            headers: Vec::new(),
            body: json!({
                "ok": false,
                "error_code": 429,
                "description": format!("Too Many Requests: retry after {seconds}"),
                "parameters": {"retry_after": seconds}
            })
            .to_string(),
        }
    }

    /// `{"ok":true,"result":result}`.
    pub fn ok(result: Value) -> Reply {
        Reply::Raw {
            status: 200,
            headers: Vec::new(),
            body: json!({"ok": true, "result": result}).to_string(),
        }
    }

    /// Any status with a non-JSON body.
    pub fn garbage(status: u16) -> Reply {
        Reply::Raw {
            status,
            headers: Vec::new(),
            body: "<html>oops</html>".into(),
        }
    }

    /// A redirect elsewhere.
    pub fn redirect() -> Reply {
        Reply::Raw {
            status: 302,
            headers: vec![("Location".into(), "http://127.0.0.1:9/elsewhere".into())],
            body: String::new(),
        }
    }
}

/// One processed call.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    /// The bot token of the request path.
    pub token: String,
    /// The JSON body, or for multipart the form fields as strings plus `_file_name`,
    /// `_content_type` and `_file_len`.
    pub body: Value,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    updates: Vec<Value>,
    files: HashMap<String, (String, Vec<u8>)>,
    scripts: HashMap<String, VecDeque<Reply>>,
    next_message_id: i64,
    hung: usize,
    stopping: bool,
    /// Every `getUpdates` offset received, in order.
    offsets: Vec<Option<i64>>,
}

type Shared = super::shared::Shared<State>;

/// See the module docs.
pub struct FakeTelegram {
    pub addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FakeTelegram {
    pub fn start() -> FakeTelegram {
        let server =
            Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("binding fake telegram"));
        let addr = server.server_addr().to_ip().expect("an IP address");
        let shared = Arc::new(Shared::new(State {
            next_message_id: 1000,
            ..State::default()
        }));
        let (srv, sh) = (Arc::clone(&server), Arc::clone(&shared));
        let accept = std::thread::spawn(move || {
            while let Ok(request) = srv.recv() {
                let sh = Arc::clone(&sh);
                std::thread::spawn(move || handle(&sh, request));
            }
        });
        FakeTelegram {
            addr,
            server,
            shared,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT`: the connector's `api_base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues an update for `getUpdates`.
    pub fn push_update(&self, update: Value) {
        self.shared.lock().updates.push(update);
        self.shared.changed.notify_all();
    }

    /// Serves `data` for `file_id` at `file_path`.
    pub fn add_file(&self, file_id: &str, file_path: &str, data: Vec<u8>) {
        self.shared
            .lock()
            .files
            .insert(file_id.into(), (file_path.into(), data));
    }

    /// The next answers of `method`, in order, before its normal behaviour.
    pub fn script(&self, method: &str, replies: Vec<Reply>) {
        self.shared
            .lock()
            .scripts
            .entry(method.into())
            .or_default()
            .extend(replies);
    }

    /// Every processed call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// The processed calls of `method`.
    pub fn calls_of(&self, method: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method)
            .collect()
    }

    /// Requests hanging now (scripted [`Reply::Hang`]).
    pub fn hung(&self) -> usize {
        self.shared.lock().hung
    }

    /// Updates not yet confirmed by a higher `getUpdates` offset.
    pub fn pending_updates(&self) -> usize {
        self.shared.lock().updates.len()
    }

    /// The offsets of every `getUpdates` call.
    pub fn offsets(&self) -> Vec<Option<i64>> {
        self.shared.lock().offsets.clone()
    }

    /// Waits until `probe` holds on the processed calls (panics after `deadline`).
    pub fn wait_for(&self, what: &str, deadline: Duration, probe: impl Fn(&[Call]) -> bool) {
        let end = Instant::now() + deadline;
        let mut state = self.shared.lock();
        while !probe(&state.calls) {
            let now = Instant::now();
            if now >= end {
                panic!(
                    "timed out after {deadline:?} waiting for {what}; calls: {:#?}",
                    state.calls
                );
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, end - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until at least `n` requests hang.
    pub fn wait_hung(&self, n: usize, deadline: Duration) {
        let end = Instant::now() + deadline;
        let mut state = self.shared.lock();
        while state.hung < n {
            let now = Instant::now();
            assert!(now < end, "timed out waiting for {n} hung request(s)");
            state = self
                .shared
                .changed
                .wait_timeout(state, end - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for FakeTelegram {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.changed.notify_all();
        self.server.unblock();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn respond(request: tiny_http::Request, status: u16, headers: &[(String, String)], body: String) {
    let mut response = tiny_http::Response::from_string(body).with_status_code(status);
    let mut has_type = false;
    for (k, v) in headers {
        has_type |= k.eq_ignore_ascii_case("content-type");
        if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            response.add_header(h);
        }
    }
    if !has_type {
        response.add_header(
            tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).unwrap(),
        );
    }
    let _ = request.respond(response);
}

fn handle(shared: &Shared, mut request: tiny_http::Request) {
    let url = request.url().to_string();
    let content_type = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .map(|h| h.value.as_str().to_string())
        .unwrap_or_default();
    let mut raw = Vec::new();
    let _ = request.as_reader().read_to_end(&mut raw);
    // File downloads: /file/bot<token>/<path>
    if let Some(rest) = url.strip_prefix("/file/bot") {
        let path = rest.split_once('/').map(|(_, p)| p).unwrap_or("");
        let found = shared
            .lock()
            .files
            .values()
            .find(|(p, _)| p == path)
            .map(|(_, d)| d.clone());
        match found {
            Some(data) => {
                let _ = request.respond(tiny_http::Response::from_data(data));
            }
            None => respond(
                request,
                404,
                &[],
                json!({"ok": false, "error_code": 404, "description": "Not Found"}).to_string(),
            ),
        }
        return;
    }
    let Some((token, method)) = url
        .strip_prefix("/bot")
        .and_then(|r| r.split_once('/'))
        .map(|(t, m)| (t.to_string(), m.split('?').next().unwrap_or("").to_string()))
    else {
        return respond(
            request,
            404,
            &[],
            json!({"ok": false, "error_code": 404, "description": "Not Found"}).to_string(),
        );
    };
    let body = if content_type.starts_with("multipart/form-data") {
        multipart_fields(&content_type, &raw)
    } else {
        serde_json::from_slice(&raw).unwrap_or(Value::Null)
    };
    let scripted = shared
        .lock()
        .scripts
        .get_mut(&method)
        .and_then(VecDeque::pop_front);
    match scripted {
        Some(Reply::Hang) => {
            let mut state = shared.lock();
            state.hung += 1;
            shared.changed.notify_all();
            while !state.stopping {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
            return;
        }
        Some(Reply::Raw {
            status,
            headers,
            body: answer,
        }) => {
            {
                let mut state = shared.lock();
                if method == "getUpdates" {
                    state
                        .offsets
                        .push(body.get("offset").and_then(Value::as_i64));
                } else {
                    state.calls.push(Call {
                        method: method.clone(),
                        token,
                        body,
                    });
                }
                shared.changed.notify_all();
            }
            return respond(request, status, &headers, answer);
        }
        None => {}
    }
    let result = match method.as_str() {
        "getUpdates" => get_updates(shared, &body),
        "getFile" => {
            let id = body.get("file_id").and_then(Value::as_str).unwrap_or("");
            let state = shared.lock();
            match state.files.get(id) {
                Some((path, data)) => Ok(json!({
                    "file_id": id, "file_unique_id": format!("u-{id}"),
                    "file_size": data.len(), "file_path": path
                })),
                None => Err((400, "Bad Request: invalid file_id")),
            }
        }
        "sendMessage" | "sendPhoto" | "sendAudio" | "sendDocument" => {
            let mut state = shared.lock();
            state.next_message_id += 1;
            let chat = body.get("chat_id").cloned().unwrap_or(Value::Null);
            Ok(json!({
                "message_id": state.next_message_id,
                "date": 1_700_000_000,
                "chat": {"id": chat, "type": "private"},
                "text": body.get("text").cloned().unwrap_or(Value::Null),
            }))
        }
        "answerCallbackQuery" => Ok(json!(true)),
        _ => Err((404, "Not Found: method not found")),
    };
    {
        let mut state = shared.lock();
        if method != "getUpdates" {
            state.calls.push(Call {
                method: method.clone(),
                token,
                body,
            });
        }
        shared.changed.notify_all();
    }
    match result {
        Ok(result) => respond(
            request,
            200,
            &[],
            json!({"ok": true, "result": result}).to_string(),
        ),
        Err((status, description)) => respond(
            request,
            status,
            &[],
            json!({"ok": false, "error_code": status, "description": description}).to_string(),
        ),
    }
}

fn get_updates(shared: &Shared, body: &Value) -> Result<Value, (u16, &'static str)> {
    let offset = body.get("offset").and_then(Value::as_i64);
    let limit = body
        .get("limit")
        .and_then(Value::as_u64)
        .unwrap_or(100)
        .clamp(1, 100) as usize;
    let timeout = body.get("timeout").and_then(Value::as_u64).unwrap_or(0);
    let end = Instant::now() + Duration::from_secs(timeout);
    let mut state = shared.lock();
    state.offsets.push(offset);
    if let Some(offset) = offset {
        state
            .updates
            .retain(|u| u.get("update_id").and_then(Value::as_i64).unwrap_or(0) >= offset);
    }
    loop {
        if !state.updates.is_empty() || state.stopping {
            break;
        }
        let now = Instant::now();
        if now >= end {
            break;
        }
        state = shared
            .changed
            .wait_timeout(state, end - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    shared.changed.notify_all();
    Ok(Value::Array(
        state.updates.iter().take(limit).cloned().collect(),
    ))
}

/// The fields of a multipart body: text fields as strings, the file as `_file_field`,
/// `_file_name`, `_content_type` and `_file_len`.
fn multipart_fields(content_type: &str, raw: &[u8]) -> Value {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .unwrap_or("")
        .trim_matches('"');
    let delimiter = format!("--{boundary}");
    let text = String::from_utf8_lossy(raw).to_string();
    let mut out = serde_json::Map::new();
    for part in text.split(&delimiter).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let Some((head, value)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let value = value.strip_suffix("\r\n").unwrap_or(value);
        let name = head
            .split("name=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
            .to_string();
        if let Some(file_name) = head
            .split("filename=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        {
            let ct = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Type: "))
                .unwrap_or("")
                .to_string();
            out.insert("_file_field".into(), json!(name));
            out.insert("_file_name".into(), json!(file_name));
            out.insert("_content_type".into(), json!(ct));
            out.insert("_file_len".into(), json!(value.len()));
        } else {
            out.insert(name, json!(value));
        }
    }
    Value::Object(out)
}
