//! The client side of HTTP webhook ingress (SPEC §6, §7.2) for the `serve_*` tests: the
//! authenticated test gateway (`http/orders` with bearer AND HMAC, `http/open` without
//! authentication), signed header sets and their deliberate corruptions, posting helpers, the
//! exact checks of a 202 `accepted` and a 200 `duplicate` answer, and what ingress has written.
//!
//! Signatures come from the library's `kheish_v1_signature`, which the auth tests pin to SPEC
//! §7.2's fixed vector; everything else here is computed independently of kheishctl.

#![allow(dead_code)]

use std::collections::BTreeSet;

use serde_json::{json, Value};

use kheishctl::ingress::auth::kheish_v1_signature;
use kheishctl::ingress::sha256_hex;
use kheishctl::model::now_ms;

use super::daemon::Daemon;
use super::db::StateDb;
use super::http::{self, Response};
use super::problem::assert_problem;
use super::Sandbox;

/// The bearer token of `http/orders` (passed through the environment).
pub const BEARER: &str = "orders-bearer-token-for-tests";
/// The HMAC secret of `http/orders`: the one of the SPEC §7.2 fixed vector.
pub const HMAC: &str = "hmac-test-secret";
/// `http/orders`: bearer AND HMAC required; `http/open`: unauthenticated.
pub const GATEWAY: &str = r#"
[[http_connectors]]
name = "orders"
bearer_token_env = "ORDERS_BEARER"
require_hmac_signature = true
hmac_secret_env = "ORDERS_HMAC"
signature_max_age_secs = 300
default_binding_keys = ["orders"]
ingress_events_per_second = 100000
[http_connectors.session_policy]
create_if_missing = true

[[http_connectors]]
name = "open"
allow_unauthenticated_ingress = true
default_binding_keys = ["open"]
ingress_events_per_second = 100000
[http_connectors.session_policy]
create_if_missing = true
"#;
pub const ORDERS: &str = "/v1/connectors/http/orders";
pub const OPEN: &str = "/v1/connectors/http/open";

/// One MiB: the HTTP ingress body cap (SPEC §5).
pub const MIB: usize = 1024 * 1024;

/// A daemon serving [`GATEWAY`] with its secrets, plus its sandbox.
pub fn start_gateway() -> (Sandbox, Daemon) {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox)
        .config(GATEWAY)
        .env("ORDERS_BEARER", BEARER)
        .env("ORDERS_HMAC", HMAC)
        .start();
    (sandbox, daemon)
}

pub fn now_secs() -> i64 {
    now_ms().div_euclid(1000)
}

pub type Headers = Vec<(String, String)>;

/// The headers of a `POST target` with `body`, bearer `bearer` and an HMAC made with `secret`
/// at `ts`.
pub fn signed_headers_with(
    bearer: &str,
    secret: &str,
    target: &str,
    ts: i64,
    body: &[u8],
) -> Headers {
    vec![
        ("Authorization".into(), format!("Bearer {bearer}")),
        ("Content-Type".into(), "application/json".into()),
        ("X-Kheish-Timestamp".into(), ts.to_string()),
        (
            "X-Kheish-Signature".into(),
            kheish_v1_signature(secret.as_bytes(), "POST", target, ts, body),
        ),
    ]
}

/// Correct `http/orders` credentials for `body` sent to `target` now.
pub fn signed_headers(target: &str, body: &[u8]) -> Headers {
    signed_headers_with(BEARER, HMAC, target, now_secs(), body)
}

/// `Authorization: Bearer token` and a JSON content type.
pub fn bearer_headers(token: &str) -> Headers {
    vec![
        ("Authorization".into(), format!("Bearer {token}")),
        ("Content-Type".into(), "application/json".into()),
    ]
}

/// `headers` without any header called `name`.
pub fn without(headers: &[(String, String)], name: &str) -> Headers {
    headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
        .cloned()
        .collect()
}

/// `headers` with every `name` header replaced by one `name: value`.
pub fn replaced(headers: &[(String, String)], name: &str, value: &str) -> Headers {
    let mut out = without(headers, name);
    out.push((name.to_string(), value.to_string()));
    out
}

/// `headers` plus one more `name: value` (duplicates allowed).
pub fn plus(headers: &[(String, String)], name: &str, value: &str) -> Headers {
    let mut out = headers.to_vec();
    out.push((name.to_string(), value.to_string()));
    out
}

/// The value of header `name` (panics when there is none).
pub fn header_value<'h>(headers: &'h [(String, String)], name: &str) -> &'h str {
    http::header(headers, name).unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

pub fn post(daemon: &Daemon, target: &str, headers: &[(String, String)], body: &[u8]) -> Response {
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    daemon.request("POST", target, &refs, body)
}

/// A correctly signed `POST` to `http/orders` (or another target of it).
pub fn post_signed(daemon: &Daemon, target: &str, body: &[u8]) -> Response {
    post(daemon, target, &signed_headers(target, body), body)
}

/// A `POST` with only a bearer token.
pub fn post_bearer(daemon: &Daemon, target: &str, token: &str, body: &Value) -> Response {
    post(
        daemon,
        target,
        &bearer_headers(token),
        body.to_string().as_bytes(),
    )
}

/// Posts one event to the unauthenticated `http/orders` that the delivery, runs and observe
/// tests configure; asserts it was accepted and returns its run id.
pub fn ingest(daemon: &Daemon, content: &str, key: &str) -> String {
    let body = json!({"content": content, "idempotency_key": key}).to_string();
    let resp = daemon.post_json("/v1/connectors/http/orders", body);
    assert_eq!(resp.status, 202, "ingress: {}", resp.text());
    let v = resp.json();
    assert_eq!(v["status"], "accepted", "{v}");
    assert_eq!(v["connector"], "http/orders", "{v}");
    assert!(v["session_id"].is_string(), "{v}");
    v["run_id"].as_str().expect("run_id").to_string()
}

/// Asserts a 202 `accepted` answer of exactly the SPEC §6.2 shape; returns `(run_id, session_id)`.
pub fn assert_accepted(resp: &Response, connector: &str) -> (String, String) {
    assert_eq!(resp.status, 202, "expected 202: {}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let v = resp.json();
    let members: BTreeSet<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        members,
        BTreeSet::from(["status", "run_id", "session_id", "connector"]),
        "{v}"
    );
    assert_eq!(v["status"], "accepted", "{v}");
    assert_eq!(v["connector"], connector, "{v}");
    let run_id = v["run_id"].as_str().expect("run_id").to_string();
    let session_id = v["session_id"].as_str().expect("session_id").to_string();
    assert!(!run_id.is_empty() && !session_id.is_empty(), "{v}");
    (run_id, session_id)
}

/// Asserts a 200 `duplicate` answer for the original `(run_id, session_id)`.
pub fn assert_duplicate(resp: &Response, connector: &str, original: &(String, String)) {
    assert_eq!(resp.status, 200, "expected 200 duplicate: {}", resp.text());
    let v = resp.json();
    assert_eq!(v["status"], "duplicate", "{v}");
    assert_eq!(v["connector"], connector, "{v}");
    assert_eq!(v["run_id"], original.0.as_str(), "{v}");
    assert_eq!(v["session_id"], original.1.as_str(), "{v}");
}

/// `http:<name>:<first 16 hex of sha256(key)>`, the natural session id of SPEC §6.5.
pub fn natural_session(name: &str, first_key: &str) -> String {
    format!("http:{name}:{}", &sha256_hex(first_key.as_bytes())[..16])
}

/// What ingress has written so far, seen both through the control plane and in `state.db`.
#[derive(Debug, PartialEq, Eq)]
pub struct Written {
    receipts_api: usize,
    runs_api: usize,
    receipts: i64,
    runs: i64,
    sessions: i64,
    bindings: i64,
    assets: i64,
}

pub fn written(daemon: &Daemon) -> Written {
    let receipts = daemon.admin("GET", "/v1/receipts?limit=500", None);
    assert_eq!(receipts.status, 200, "{}", receipts.text());
    let runs = daemon.admin("GET", "/v1/runs?limit=500", None);
    assert_eq!(runs.status, 200, "{}", runs.text());
    let db = StateDb::open(&daemon.state_root);
    Written {
        receipts_api: receipts.json()["receipts"].as_array().unwrap().len(),
        runs_api: runs.json()["runs"].as_array().unwrap().len(),
        receipts: db.count("receipts"),
        runs: db.count("runs"),
        sessions: db.count("sessions"),
        bindings: db.count("session_bindings"),
        assets: db.count("assets"),
    }
}

/// One refused request and what it must get.
pub struct Refusal {
    pub what: &'static str,
    pub resp: Response,
    pub status: u16,
    pub code: &'static str,
    /// A substring of `detail` (or of the problem's `path`) that names the failed check.
    pub names: &'static str,
}

pub fn check_refusals(refusals: &[Refusal]) {
    for r in refusals {
        let v = assert_problem(&r.resp, r.status, r.code);
        let detail = v["detail"].as_str().unwrap();
        let path = v["path"].as_str().unwrap_or_default();
        assert!(
            detail.contains(r.names) || path.contains(r.names),
            "{}: the problem should name {:?}: {v}",
            r.what,
            r.names
        );
    }
}
