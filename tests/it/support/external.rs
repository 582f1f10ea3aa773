//! The sidecar side of external ingress (SPEC §10.2) for the `serve_external_*` tests: a
//! gateway of external connectors, events in the exact shape the Kheish sidecar SDK sends
//! (every member present, absent ones as explicit `null`, `content: ""` beside non-empty
//! `input_items`, `thread: {"path": [...]}`), posting helpers, the checks of a protocol answer,
//! and the expected natural ids and binding keys computed here independently of kheishctl.

#![allow(dead_code)]

use std::path::Path;

use base64::Engine as _;
use rusqlite::{Connection, OpenFlags};
use serde_json::{json, Value};

use kheishctl::ingress::sha256_hex;

use super::daemon::Daemon;
use super::http::Response;

/// The shared token of `external/side` and `external/slow` (passed through the environment).
pub const TOKEN: &str = "side-shared-token-for-tests";
/// `external/side`: a remote_http sidecar with a shared token, self output on, an extra http
/// reply target; `external/slow`: one event per second; `external/open`: no token;
/// `external/quiet`: `include_self_output = false` and a fixed session.
pub const GATEWAY: &str = r#"
[[external_connectors]]
name = "side"
platform = "discord"
base_url = "http://127.0.0.1:9"
allow_private_network = true
shared_token_env = "SIDE_TOKEN"
additional_reply_targets = [{ plugin = "http", address = "https://hooks.example.com/copy" }]
ingress_events_per_second = 100000
[external_connectors.session_policy]
create_if_missing = true

[[external_connectors]]
name = "slow"
platform = "discord"
base_url = "http://127.0.0.1:9"
allow_private_network = true
shared_token_env = "SIDE_TOKEN"
ingress_events_per_second = 1
[external_connectors.session_policy]
create_if_missing = true

[[external_connectors]]
name = "open"
platform = "matrix"
base_url = "http://127.0.0.1:9"
allow_private_network = true
allow_unauthenticated_ingress = true
ingress_events_per_second = 100000
[external_connectors.session_policy]
create_if_missing = true

[[external_connectors]]
name = "quiet"
platform = "discord"
base_url = "http://127.0.0.1:9"
allow_private_network = true
shared_token_env = "SIDE_TOKEN"
include_self_output = false
fixed_session_id = "ops-room"
ingress_events_per_second = 100000
[external_connectors.session_policy]
create_if_missing = true
"#;

/// `external/child`: a `child_process` connector whose command exits at once, so its sidecar
/// never becomes ready (kept out of [`GATEWAY`], so the other tests start no child).
pub const CHILD: &str = r#"
[[external_connectors]]
name = "child"
platform = "discord"
mode = "child_process"
base_url = "http://127.0.0.1:9"
shared_token_env = "SIDE_TOKEN"
[external_connectors.child_process]
command = "false"
[external_connectors.session_policy]
create_if_missing = true
"#;

/// `/v1/connectors/external/{name}/events`.
pub fn events_path(name: &str) -> String {
    format!("/v1/connectors/external/{name}/events")
}

/// `/v1/connectors/external/{name}/events/batch`.
pub fn batch_path(name: &str) -> String {
    format!("/v1/connectors/external/{name}/events/batch")
}

/// An event as the Kheish sidecar SDK builds it (`DaemonClient._build_event_request`), text
/// content on thread `path`.
pub fn sdk_event(event_id: &str, content: &str, path: &[&str]) -> Value {
    json!({
        "instance_id": "inst-1",
        "event_id": event_id,
        "fingerprint": null,
        "occurred_at_ms": null,
        "actor_id": "user-42",
        "source_kind": null,
        "intent": null,
        "relation": null,
        "thread": {"path": path},
        "routing_key": null,
        "content": content,
        "input_items": [],
        "attachments": [],
        "reply_route": null,
        "metadata": null,
    })
}

/// `event` with `member` set to `value`.
pub fn with(mut event: Value, member: &str, value: Value) -> Value {
    event[member] = value;
    event
}

/// A single-event body: the event plus `protocol_version`.
pub fn single(event: &Value, version: u64) -> Value {
    with(event.clone(), "protocol_version", json!(version))
}

/// `POST` with a bearer `token` (none when `None`) and a JSON body.
pub fn post_raw(daemon: &Daemon, target: &str, token: Option<&str>, body: &[u8]) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    daemon.request("POST", target, &headers, body)
}

/// One event (protocol version 2) to connector `name` with [`TOKEN`].
pub fn post_event(daemon: &Daemon, name: &str, event: &Value) -> Response {
    post_raw(
        daemon,
        &events_path(name),
        Some(TOKEN),
        single(event, 2).to_string().as_bytes(),
    )
}

/// A batch (protocol version 2) to connector `name` with [`TOKEN`].
pub fn post_batch(daemon: &Daemon, name: &str, events: &[Value]) -> Response {
    let body = json!({"protocol_version": 2, "events": events});
    post_raw(
        daemon,
        &batch_path(name),
        Some(TOKEN),
        body.to_string().as_bytes(),
    )
}

/// The body of a 200 protocol answer (panics on any other status).
pub fn answer(resp: &Response) -> Value {
    assert_eq!(resp.status, 200, "expected a 200 answer: {}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    resp.json()
}

/// Asserts an `accepted` answer for `event_id`; returns `(run_id, session_id)`.
pub fn assert_accepted(item: &Value, event_id: &str) -> (String, String) {
    assert_eq!(item["status"], "accepted", "{item}");
    assert_eq!(item["event_id"], event_id, "{item}");
    assert!(item.get("reason").is_none(), "{item}");
    let run = item["run_id"].as_str().expect("run_id").to_string();
    let session = item["session_id"].as_str().expect("session_id").to_string();
    (run, session)
}

/// Asserts a `rejected` answer whose reason contains `needle`.
pub fn assert_rejected(item: &Value, needle: &str) {
    assert_eq!(item["status"], "rejected", "{item}");
    let reason = item["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no reason: {item}"));
    assert!(
        reason.contains(needle),
        "the reason should contain {needle:?}: {item}"
    );
    assert!(
        item.get("run_id").is_none() || needle.contains("original"),
        "{item}"
    );
}

/// Base64url without padding, as binding-key segments are written.
pub fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s.as_bytes())
}

/// The natural session id of an event on thread `path` (SPEC §6.5).
pub fn natural_for_path(name: &str, platform: &str, path: &[&str]) -> String {
    let j = serde_json::to_string(&json!([platform, path])).unwrap();
    format!("external:{name}:{}", &sha256_hex(j.as_bytes())[..16])
}

/// The natural session id of an event routed by `routing_key` alone.
pub fn natural_for_routing_key(name: &str, platform: &str, routing_key: &str) -> String {
    let j = serde_json::to_string(&json!(["routing_key", platform, routing_key])).unwrap();
    format!("external:{name}:{}", &sha256_hex(j.as_bytes())[..16])
}

/// The binding key of one thread-path prefix.
pub fn prefix_key(name: &str, platform: &str, prefix: &[&str]) -> String {
    let mut key = format!("external:{name}:{}", b64(platform));
    for segment in prefix {
        key.push(':');
        key.push_str(&b64(segment));
    }
    key
}

/// Every `(binding_key, session_id)` row of the state database, sorted.
pub fn bindings(state_root: &Path) -> Vec<(String, String)> {
    let conn = Connection::open_with_flags(
        state_root.join("state.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("opening state.db read-only");
    let mut stmt = conn
        .prepare("SELECT binding_key, session_id FROM session_bindings ORDER BY binding_key")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// `GET /v1/runs/{id}` through the control plane.
pub fn run(daemon: &Daemon, run_id: &str) -> Value {
    let resp = daemon.admin("GET", &format!("/v1/runs/{run_id}"), None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
}
