//! `kheishctl serve` with HTTP webhook ingress, always against the real binary on 127.0.0.1 with
//! an ephemeral port: bearer + HMAC authentication (SPEC §7.2, including the fixed vector's
//! path with a query string), receipts and duplicates (§6.2–§6.4), every 4xx of the pipeline
//! (§6.1) with its problem `code` and no write, no 5xx for any malformed input (§15), rate
//! limiting (§6.6), session resolution (§6.5), concurrent copies of one event, secrets that
//! never leak (§15), the daemon's lifecycle (§1.3, §5: readiness, SIGHUP, SIGTERM, fail-closed
//! start), secret rotation picked up by a running daemon (§1.3), and the kill -9 crash test
//! (§3, §15).
//!
//! Nothing here sleeps: answers are awaited with `wait_until`, and the crash test picks its kill
//! moment by counting answers, not by waiting.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use kheishctl::ingress::auth::kheish_v1_signature;
use kheishctl::ingress::{receipt_key, sha256_hex};
use kheishctl::model::{now_ms, ConnectorKind};

use crate::support::daemon::{Daemon, Response, ADMIN_TOKEN};
use crate::support::wait::wait_until;
use crate::support::{fixture, Sandbox};

// ---------------------------------------------------------------------------------------------
// Shared configuration and helpers

/// The bearer token of `http/orders` (passed through the environment).
const BEARER: &str = "orders-bearer-token-for-tests";
/// The HMAC secret of `http/orders`: the one of the SPEC §7.2 fixed vector.
const HMAC: &str = "hmac-test-secret";
/// `http/orders`: bearer AND HMAC required; `http/open`: unauthenticated.
const GATEWAY: &str = r#"
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
const ORDERS: &str = "/v1/connectors/http/orders";
const OPEN: &str = "/v1/connectors/http/open";

/// SPEC §7.2's fixed vector.
const VECTOR_TARGET: &str = "/v1/connectors/http/orders?source=a%2Fb&attempt=1";
const VECTOR_TS: i64 = 1_710_000_000;
const VECTOR_BODY: &str =
    r#"{"content":"hello","idempotency_key":"order-123","metadata":{"k":"v"}}"#;
const VECTOR_SIGNATURE: &str =
    "v1=f13a4b8c5099a2ffc6b8a913e0998d6765d61a693c27f594ca34ede2e0d4e557";

/// One MiB: the HTTP ingress body cap (SPEC §5).
const MIB: usize = 1024 * 1024;

fn start_gateway() -> (Sandbox, Daemon) {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox)
        .config(GATEWAY)
        .env("ORDERS_BEARER", BEARER)
        .env("ORDERS_HMAC", HMAC)
        .start();
    (sandbox, daemon)
}

fn now_secs() -> i64 {
    now_ms().div_euclid(1000)
}

type Headers = Vec<(String, String)>;

/// The headers of a `POST target` with `body`, bearer `bearer` and an HMAC made with `secret`
/// at `ts`.
fn signed_headers_with(bearer: &str, secret: &str, target: &str, ts: i64, body: &[u8]) -> Headers {
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
fn signed_headers(target: &str, body: &[u8]) -> Headers {
    signed_headers_with(BEARER, HMAC, target, now_secs(), body)
}

/// `headers` without any header called `name`.
fn without(headers: &[(String, String)], name: &str) -> Headers {
    headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
        .cloned()
        .collect()
}

/// `headers` with every `name` header replaced by one `name: value`.
fn replaced(headers: &[(String, String)], name: &str, value: &str) -> Headers {
    let mut out = without(headers, name);
    out.push((name.to_string(), value.to_string()));
    out
}

/// `headers` plus one more `name: value` (duplicates allowed).
fn plus(headers: &[(String, String)], name: &str, value: &str) -> Headers {
    let mut out = headers.to_vec();
    out.push((name.to_string(), value.to_string()));
    out
}

fn header_value<'h>(headers: &'h [(String, String)], name: &str) -> &'h str {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

fn post(daemon: &Daemon, target: &str, headers: &[(String, String)], body: &[u8]) -> Response {
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    daemon.request("POST", target, &refs, body)
}

/// A correctly signed `POST` to `http/orders` (or another target of it).
fn post_signed(daemon: &Daemon, target: &str, body: &[u8]) -> Response {
    post(daemon, target, &signed_headers(target, body), body)
}

/// A `POST` with only a bearer token.
fn post_bearer(daemon: &Daemon, target: &str, token: &str, body: &Value) -> Response {
    let body = body.to_string();
    post(
        daemon,
        target,
        &[
            ("Authorization".into(), format!("Bearer {token}")),
            ("Content-Type".into(), "application/json".into()),
        ],
        body.as_bytes(),
    )
}

/// An unauthenticated JSON `POST`.
fn post_open(daemon: &Daemon, target: &str, body: &[u8]) -> Response {
    post(
        daemon,
        target,
        &[("Content-Type".into(), "application/json".into())],
        body,
    )
}

/// A control-plane request with `token` as the admin bearer token.
fn admin_as(daemon: &Daemon, token: &str, method: &str, target: &str) -> Response {
    daemon.request(
        method,
        target,
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    )
}

/// Asserts a 202 `accepted` answer of exactly the SPEC §6.2 shape; returns `(run_id, session_id)`.
fn assert_accepted(resp: &Response, connector: &str) -> (String, String) {
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
fn assert_duplicate(resp: &Response, connector: &str, original: &(String, String)) {
    assert_eq!(resp.status, 200, "expected 200 duplicate: {}", resp.text());
    let v = resp.json();
    assert_eq!(v["status"], "duplicate", "{v}");
    assert_eq!(v["connector"], connector, "{v}");
    assert_eq!(v["run_id"], original.0.as_str(), "{v}");
    assert_eq!(v["session_id"], original.1.as_str(), "{v}");
}

/// Asserts an RFC 9457 problem with `status` and `code`; returns the body.
fn assert_problem(resp: &Response, status: u16, code: &str) -> Value {
    assert_eq!(
        resp.status,
        status,
        "expected {status} {code}: got {} {}",
        resp.status,
        resp.text()
    );
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json"),
        "{}",
        resp.text()
    );
    let v = resp.json();
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["status"], status, "{v}");
    assert!(v["title"].is_string() && v["type"].is_string(), "{v}");
    assert!(v["detail"].is_string(), "{v}");
    v
}

/// `http:<name>:<first 16 hex of sha256(key)>`, the natural session id of SPEC §6.5.
fn natural_session(name: &str, first_key: &str) -> String {
    format!("http:{name}:{}", &sha256_hex(first_key.as_bytes())[..16])
}

/// The state root's database, opened read-only beside (or after) the daemon.
fn open_db(state_root: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        state_root.join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("opening state.db read-only")
}

fn count(conn: &rusqlite::Connection, table: &str) -> i64 {
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("counting {table}: {e}"))
}

/// What ingress has written so far, seen both through the control plane and in `state.db`.
#[derive(Debug, PartialEq, Eq)]
struct Written {
    receipts_api: usize,
    runs_api: usize,
    receipts: i64,
    runs: i64,
    sessions: i64,
    bindings: i64,
    assets: i64,
}

fn written(daemon: &Daemon) -> Written {
    let receipts = daemon.admin("GET", "/v1/receipts?limit=500", None);
    assert_eq!(receipts.status, 200, "{}", receipts.text());
    let runs = daemon.admin("GET", "/v1/runs?limit=500", None);
    assert_eq!(runs.status, 200, "{}", runs.text());
    let conn = open_db(&daemon.state_root);
    Written {
        receipts_api: receipts.json()["receipts"].as_array().unwrap().len(),
        runs_api: runs.json()["runs"].as_array().unwrap().len(),
        receipts: count(&conn, "receipts"),
        runs: count(&conn, "runs"),
        sessions: count(&conn, "sessions"),
        bindings: count(&conn, "session_bindings"),
        assets: count(&conn, "assets"),
    }
}

/// A raw HTTP/1.1 request (with `Connection: close`).
fn http_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends `request` on a fresh connection and reads one final response, tolerating every
/// failure: `None` when the connection was refused, reset or closed before a complete response.
/// The request is written from a second thread while this one reads, so a server that answers
/// before reading everything (413) is seen even if it then closes. With `half_close` the write
/// side is shut after the request, so a server waiting for bytes that never come sees EOF.
fn send(addr: SocketAddr, request: &[u8], half_close: bool) -> Option<Response> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let head_only = request.starts_with(b"HEAD ");
    let mut writer = stream.try_clone().ok()?;
    let request = request.to_vec();
    let writing = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
        if half_close {
            let _ = writer.shutdown(Shutdown::Write);
        }
    });
    let resp = read_response_lenient(&mut BufReader::new(stream), head_only);
    let _ = writing.join();
    resp
}

/// Reads one final (non-1xx) response; `None` on any I/O or framing problem.
fn read_response_lenient(reader: &mut impl BufRead, head_only: bool) -> Option<Response> {
    loop {
        let status_line = read_line(reader)?;
        let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            let line = read_line(reader)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':')?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        if (100..200).contains(&status) {
            continue;
        }
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if head_only || status == 204 || status == 304 {
            // No body follows.
        } else if let Some(len) = find("content-length") {
            body.resize(len.parse().ok()?, 0);
            reader.read_exact(&mut body).ok()?;
        } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let size = usize::from_str_radix(read_line(reader)?.trim(), 16).ok()?;
                let mut chunk = vec![0; size + 2];
                reader.read_exact(&mut chunk).ok()?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            reader.read_to_end(&mut body).ok()?;
        }
        return Some(Response {
            status,
            headers,
            body,
        });
    }
}

/// One CRLF-terminated line; `None` at EOF, on error or on a line that is not UTF-8.
fn read_line(reader: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line),
    }
}

/// SIGTERM, then waits for the daemon's last log line (`stopped: ...`) and its exit; returns
/// the exit code and everything it wrote to stderr.
fn stop(daemon: Daemon) -> (Option<i32>, String) {
    daemon.signal("TERM");
    let stderr = wait_until("the daemon to stop", Duration::from_secs(30), || {
        let stderr = daemon.stderr();
        if stderr.contains("stopped") {
            Ok(stderr)
        } else {
            Err(stderr)
        }
    });
    (daemon.wait(), stderr)
}

// ---------------------------------------------------------------------------------------------
// 1. Happy path

#[test]
fn signed_event_is_accepted_once_and_replays_answer_the_original_run() {
    // The library signer reproduces SPEC §7.2's fixed vector.
    assert_eq!(
        kheish_v1_signature(
            HMAC.as_bytes(),
            "POST",
            VECTOR_TARGET,
            VECTOR_TS,
            VECTOR_BODY.as_bytes()
        ),
        VECTOR_SIGNATURE
    );
    let (_sandbox, daemon) = start_gateway();
    let body = VECTOR_BODY.as_bytes();

    // The fixed vector itself, sent as is: well-formed, so the only refusal is its age.
    let vector = vec![
        ("Authorization".to_string(), format!("Bearer {BEARER}")),
        ("X-Kheish-Timestamp".to_string(), VECTOR_TS.to_string()),
        (
            "X-Kheish-Signature".to_string(),
            VECTOR_SIGNATURE.to_string(),
        ),
    ];
    let stale = assert_problem(
        &post(&daemon, VECTOR_TARGET, &vector, body),
        401,
        "unauthorized",
    );
    assert!(
        stale["detail"].as_str().unwrap().contains("stale"),
        "{stale}"
    );

    // The same path, query and body signed now: the signature covers the target as sent.
    let first = post_signed(&daemon, VECTOR_TARGET, body);
    let original = assert_accepted(&first, "http/orders");
    assert_eq!(original.1, natural_session("orders", "orders"));

    // The same request again: 200 duplicate, the same run and session.
    let again = post_signed(&daemon, VECTOR_TARGET, body);
    assert_duplicate(&again, "http/orders", &original);
    // Member order and whitespace do not change the fingerprint (SPEC §6.4).
    let reordered =
        br#"{ "metadata": {"k": "v"},  "idempotency_key": "order-123", "content": "hello" }"#;
    assert_duplicate(
        &post_signed(&daemon, VECTOR_TARGET, reordered),
        "http/orders",
        &original,
    );

    // The same key with a different body: 409 naming the original run.
    let changed =
        br#"{"content":"hello, changed","idempotency_key":"order-123","metadata":{"k":"v"}}"#;
    let conflict = assert_problem(
        &post_signed(&daemon, VECTOR_TARGET, changed),
        409,
        "idempotency_conflict",
    );
    assert_eq!(conflict["run_id"], original.0.as_str(), "{conflict}");
    assert!(
        conflict["detail"].as_str().unwrap().contains(&original.0),
        "{conflict}"
    );

    // Signing a different target than the one sent fails: the query and its encoding are
    // covered.
    for signed_target in [ORDERS, "/v1/connectors/http/orders?source=a/b&attempt=1"] {
        let headers = signed_headers_with(BEARER, HMAC, signed_target, now_secs(), body);
        let refused = assert_problem(
            &post(&daemon, VECTOR_TARGET, &headers, body),
            401,
            "unauthorized",
        );
        assert!(
            refused["detail"].as_str().unwrap().contains("mismatch"),
            "{refused}"
        );
    }

    // Hex digits of either case are accepted.
    let upper_body = br#"{"content":"upper","idempotency_key":"order-upper"}"#;
    let headers = signed_headers(ORDERS, upper_body);
    let sig = header_value(&headers, "X-Kheish-Signature");
    let upper = format!("v1={}", sig.trim_start_matches("v1=").to_uppercase());
    assert_ne!(upper, sig);
    let upper_resp = post(
        &daemon,
        ORDERS,
        &replaced(&headers, "X-Kheish-Signature", &upper),
        upper_body,
    );
    let upper_run = assert_accepted(&upper_resp, "http/orders");
    assert_ne!(upper_run.0, original.0);
    assert_eq!(
        upper_run.1, original.1,
        "same default binding key, same session"
    );

    // The run, through the control plane.
    let run = daemon.admin("GET", &format!("/v1/runs/{}", original.0), None);
    assert_eq!(run.status, 200, "{}", run.text());
    let run = run.json();
    assert_eq!(run["run_id"], original.0.as_str(), "{run}");
    assert_eq!(run["session_id"], original.1.as_str(), "{run}");
    assert_eq!(run["connector"], "http/orders", "{run}");
    assert_eq!(run["status"], "queued", "{run}");
    assert_eq!(run["actor_id"], "http-webhook", "{run}");
    assert_eq!(run["input"]["content"], "hello", "{run}");
    let metadata = &run["metadata"];
    assert_eq!(metadata["k"], "v", "{run}");
    let (stored_key, digest) = receipt_key(ConnectorKind::Http, "orders", "order-123");
    assert_eq!(metadata["connector_ingress_key"], stored_key.as_str());
    assert_eq!(metadata["http_ingress_key_sha256"], digest.as_str());
    // The vector body is already canonical JSON, so its hash is the fingerprint.
    assert_eq!(
        metadata["http_ingress_fingerprint"],
        sha256_hex(VECTOR_BODY.as_bytes()).as_str()
    );

    // The receipts: one per key, hashed, pointing at the runs.
    let receipts = daemon.admin("GET", "/v1/receipts?connector=http/orders", None);
    assert_eq!(receipts.status, 200, "{}", receipts.text());
    assert!(
        !receipts.text().contains("order-123"),
        "raw keys are never stored"
    );
    let receipts = receipts.json()["receipts"].as_array().unwrap().clone();
    assert_eq!(receipts.len(), 2, "{receipts:?}");
    let mine = receipts
        .iter()
        .find(|r| r["receipt_key"] == stored_key.as_str())
        .expect("the receipt of order-123");
    assert_eq!(mine["run_id"], original.0.as_str());
    assert_eq!(mine["session_id"], original.1.as_str());
    assert_eq!(
        mine["fingerprint"],
        sha256_hex(VECTOR_BODY.as_bytes()).as_str()
    );

    // Access logs carry the route template, never the raw query, headers or body (SPEC §5).
    let (code, stderr) = stop(daemon);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("/v1/connectors/http/{name}"), "{stderr}");
    for private in ["source=a%2Fb", "order-123", BEARER, HMAC] {
        assert!(!stderr.contains(private), "{private:?} in\n{stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Bad input

/// One refused request and what it must get.
struct Refusal {
    what: &'static str,
    resp: Response,
    status: u16,
    code: &'static str,
    /// A substring of `detail` (or of the problem's `path`) that names the failed check.
    names: &'static str,
}

fn check_refusals(refusals: &[Refusal]) {
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

#[test]
fn authentication_failures_get_401_problems_and_write_nothing() {
    let (_sandbox, daemon) = start_gateway();
    let before = written(&daemon);
    let body = br#"{"content":"pay me","idempotency_key":"auth-1"}"#.as_slice();
    let good = signed_headers(ORDERS, body);
    let ts = header_value(&good, "X-Kheish-Timestamp").to_string();
    let sig = header_value(&good, "X-Kheish-Signature").to_string();
    let now = now_secs();
    let signed_at = |at: i64| signed_headers_with(BEARER, HMAC, ORDERS, at, body);
    let r = |what, headers: Headers, body: &[u8], names| Refusal {
        what,
        resp: post(&daemon, ORDERS, &headers, body),
        status: 401,
        code: "unauthorized",
        names,
    };
    let wrong_secret = signed_headers_with(BEARER, "hmac-test-secreT", ORDERS, now, body);
    let tampered = br#"{"content":"pay me more","idempotency_key":"auth-1"}"#;
    let refusals = vec![
        r(
            "missing Authorization",
            without(&good, "Authorization"),
            body,
            "Authorization",
        ),
        r(
            "duplicate Authorization in another letter case",
            plus(&good, "authorization", &format!("Bearer {BEARER}")),
            body,
            "duplicate `Authorization`",
        ),
        r(
            "duplicate Authorization (both correct)",
            plus(&good, "Authorization", &format!("Bearer {BEARER}")),
            body,
            "duplicate `Authorization`",
        ),
        r(
            "Basic instead of Bearer",
            replaced(&good, "Authorization", &format!("Basic {BEARER}")),
            body,
            "Bearer",
        ),
        r(
            "wrong bearer token",
            replaced(
                &good,
                "Authorization",
                "Bearer orders-bearer-token-for-testz",
            ),
            body,
            "does not match",
        ),
        r(
            "missing timestamp",
            without(&good, "X-Kheish-Timestamp"),
            body,
            "missing `X-Kheish-Timestamp`",
        ),
        r(
            "duplicate timestamp",
            plus(&good, "X-Kheish-Timestamp", &ts),
            body,
            "duplicate `X-Kheish-Timestamp`",
        ),
        r(
            "missing signature",
            without(&good, "X-Kheish-Signature"),
            body,
            "missing `X-Kheish-Signature`",
        ),
        r(
            "duplicate signature",
            plus(&good, "X-Kheish-Signature", &sig),
            body,
            "duplicate `X-Kheish-Signature`",
        ),
        r(
            "signature with 63 hex digits",
            replaced(&good, "X-Kheish-Signature", &sig[..sig.len() - 1]),
            body,
            "malformed `X-Kheish-Signature`",
        ),
        r(
            "signature with 65 hex digits",
            replaced(&good, "X-Kheish-Signature", &format!("{sig}0")),
            body,
            "malformed `X-Kheish-Signature`",
        ),
        r(
            "signature without v1=",
            replaced(&good, "X-Kheish-Signature", sig.trim_start_matches("v1=")),
            body,
            "malformed `X-Kheish-Signature`",
        ),
        r(
            "non-numeric timestamp",
            replaced(&good, "X-Kheish-Timestamp", "17100000x0"),
            body,
            "malformed `X-Kheish-Timestamp`",
        ),
        r(
            "negative timestamp",
            replaced(&good, "X-Kheish-Timestamp", "-1"),
            body,
            "malformed `X-Kheish-Timestamp`",
        ),
        r(
            "stale timestamp (now - max_age - 5), correctly signed",
            signed_at(now - 300 - 5),
            body,
            "stale",
        ),
        r(
            "future timestamp (now + max_age + 5), correctly signed",
            signed_at(now + 300 + 5),
            body,
            "future",
        ),
        r("wrong signature", wrong_secret, body, "mismatch"),
        r(
            "body changed after signing",
            good.clone(),
            tampered,
            "mismatch",
        ),
    ];
    check_refusals(&refusals);
    // No refusal tells the expected signature.
    let expected_for_tampered = kheish_v1_signature(
        HMAC.as_bytes(),
        "POST",
        ORDERS,
        ts.parse().unwrap(),
        tampered,
    );
    for r in &refusals {
        let text = r.resp.text();
        for secret in [
            expected_for_tampered.trim_start_matches("v1="),
            sig.trim_start_matches("v1="),
            HMAC,
            BEARER,
        ] {
            assert!(!text.contains(secret), "{}: {text}", r.what);
        }
    }
    assert_eq!(
        written(&daemon),
        before,
        "a refused request wrote something"
    );

    // The daemon keeps serving and the same request, correctly made, is accepted.
    assert_accepted(&post(&daemon, ORDERS, &good, body), "http/orders");
    // The window holds in both directions: a little inside max_age, past or future, passes.
    for (i, skew) in [-(300 - 10), 300 - 10].into_iter().enumerate() {
        let body = format!(r#"{{"content":"skewed","idempotency_key":"skew-{i}"}}"#);
        let headers = signed_headers_with(BEARER, HMAC, ORDERS, now_secs() + skew, body.as_bytes());
        assert_accepted(
            &post(&daemon, ORDERS, &headers, body.as_bytes()),
            "http/orders",
        );
    }
}

#[test]
fn payload_problems_get_400_problems_and_write_nothing() {
    let (_sandbox, daemon) = start_gateway();
    // One accepted event, so that a replay with another body can be refused.
    let accepted_body = br#"{"content":"first","idempotency_key":"taken"}"#;
    let original = assert_accepted(&post_signed(&daemon, ORDERS, accepted_body), "http/orders");
    let before = written(&daemon);

    let signed = |what, body: &[u8], status, code, names| Refusal {
        what,
        resp: post_signed(&daemon, ORDERS, body),
        status,
        code,
        names,
    };
    let open = |what, body: &[u8], names| Refusal {
        what,
        resp: post_open(&daemon, OPEN, body),
        status: 400,
        code: "unauthenticated_member_not_allowed",
        names,
    };
    let refusals = vec![
        signed(
            "invalid JSON",
            br#"{"content":"x","idempotency_key":"#,
            400,
            "invalid_json",
            "JSON",
        ),
        signed("empty body", b"", 400, "invalid_json", "JSON"),
        signed(
            "JSON that is not an object",
            br#"["content","x"]"#,
            400,
            "invalid_payload",
            "$",
        ),
        signed("a JSON string", br#""content""#, 400, "invalid_payload", "$"),
        signed("JSON null", b"null", 400, "invalid_payload", "$"),
        signed(
            "content is a number",
            br#"{"content":5,"idempotency_key":"t1"}"#,
            400,
            "invalid_payload",
            "$.content",
        ),
        signed(
            "idempotency_key is a number",
            br#"{"content":"x","idempotency_key":42}"#,
            400,
            "invalid_payload",
            "$.idempotency_key",
        ),
        signed(
            "binding_keys is a string",
            br#"{"content":"x","idempotency_key":"t2","binding_keys":"k"}"#,
            400,
            "invalid_payload",
            "$.binding_keys",
        ),
        signed(
            "a binding key is empty",
            br#"{"content":"x","idempotency_key":"t3","binding_keys":["ok"," "]}"#,
            400,
            "invalid_payload",
            "$.binding_keys[1]",
        ),
        signed(
            "input_items is an object",
            br#"{"input_items":{"type":"text"},"idempotency_key":"t4"}"#,
            400,
            "invalid_payload",
            "$.input_items",
        ),
        signed(
            "unknown member",
            br#"{"content":"x","idempotency_key":"t5","priority":1}"#,
            400,
            "unknown_member",
            "priority",
        ),
        signed(
            "bad UTF-8 (0xff) inside a JSON string",
            b"{\"content\":\"caf\xff\",\"idempotency_key\":\"t6\"}",
            400,
            "invalid_json",
            "JSON",
        ),
        signed(
            "bad UTF-8 (lone continuation byte) inside a JSON string",
            b"{\"content\":\"x\",\"idempotency_key\":\"t7\x80\"}",
            400,
            "invalid_json",
            "JSON",
        ),
        signed(
            "missing idempotency key",
            br#"{"content":"x"}"#,
            400,
            "idempotency_key_required",
            "idempotency_key",
        ),
        signed(
            "blank idempotency key",
            br#"{"content":"x","idempotency_key":"  "}"#,
            400,
            "idempotency_key_required",
            "idempotency_key",
        ),
        signed(
            "no content",
            br#"{"idempotency_key":"t8"}"#,
            400,
            "missing_content",
            "content",
        ),
        signed(
            "metadata sets connector_ingress_key",
            br#"{"content":"x","idempotency_key":"t9","metadata":{"connector_ingress_key":"http:orders:0"}}"#,
            400,
            "reserved_metadata_key",
            "connector_ingress_key",
        ),
        signed(
            "metadata sets http_ingress_fingerprint",
            br#"{"content":"x","idempotency_key":"t10","metadata":{"http_ingress_fingerprint":"00"}}"#,
            400,
            "reserved_metadata_key",
            "http_ingress_fingerprint",
        ),
        signed(
            "replayed idempotency key with a different body",
            br#"{"content":"second","idempotency_key":"taken"}"#,
            409,
            "idempotency_conflict",
            "taken",
        ),
        open(
            "unauthenticated session_id",
            br#"{"content":"x","idempotency_key":"u1","session_id":"s-1"}"#,
            "session_id",
        ),
        open(
            "unauthenticated binding_keys",
            br#"{"content":"x","idempotency_key":"u2","binding_keys":["k"]}"#,
            "binding_keys",
        ),
        open(
            "unauthenticated reply_targets",
            br#"{"content":"x","idempotency_key":"u3","reply_targets":[{"plugin":"http","address":"https://example.com/hook"}]}"#,
            "reply_targets",
        ),
        open(
            "unauthenticated reply_plugin + reply_address",
            br#"{"content":"x","idempotency_key":"u5","reply_plugin":"http","reply_address":"https://example.com/hook"}"#,
            "reply_plugin",
        ),
        open(
            "unauthenticated asset input item",
            br#"{"input_items":[{"type":"inline_asset","media_type":"text/plain","data_base64":"aGk="}],"idempotency_key":"u6"}"#,
            "input_items[0]",
        ),
        open(
            "unauthenticated attachments",
            br#"{"content":"x","idempotency_key":"u4","attachments":[{"type":"inline_asset","media_type":"text/plain","data_base64":"aGk="}]}"#,
            "attachments",
        ),
    ];
    // `names` of the conflict is checked against the original run id instead.
    let (conflict, rest): (Vec<&Refusal>, Vec<&Refusal>) = refusals
        .iter()
        .partition(|r| r.code == "idempotency_conflict");
    for r in rest {
        check_refusals(std::slice::from_ref(r));
    }
    let conflict = assert_problem(&conflict[0].resp, 409, "idempotency_conflict");
    assert_eq!(conflict["run_id"], original.0.as_str(), "{conflict}");

    assert_eq!(
        written(&daemon),
        before,
        "a refused request wrote something"
    );
    // Still serving: a valid event on each connector is accepted.
    assert_accepted(
        &post_signed(
            &daemon,
            ORDERS,
            br#"{"content":"fine","idempotency_key":"after-bad-input"}"#,
        ),
        "http/orders",
    );
    assert_accepted(
        &post_open(
            &daemon,
            OPEN,
            br#"{"content":"fine","idempotency_key":"after-bad-input"}"#,
        ),
        "http/open",
    );
}

/// A `POST` of `len` bytes with chunked transfer encoding (64 KiB chunks).
fn chunked_request(
    addr: SocketAddr,
    target: &str,
    headers: &[(String, String)],
    len: usize,
) -> Vec<u8> {
    let mut bytes =
        format!("POST {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n").into_bytes();
    for (k, v) in headers {
        bytes.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    bytes.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
    let mut left = len;
    while left > 0 {
        let n = left.min(64 * 1024);
        bytes.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        bytes.extend(std::iter::repeat_n(b' ', n));
        bytes.extend_from_slice(b"\r\n");
        left -= n;
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    bytes
}

#[test]
fn routing_and_size_problems_get_404_405_413_and_write_nothing() {
    let (_sandbox, daemon) = start_gateway();
    let before = written(&daemon);
    let addr = daemon.addr;

    // Over 1 MiB, with Content-Length and with chunked encoding, signed or not.
    let mut big = br#"{"content":"x","idempotency_key":"big","metadata":{"pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', MIB));
    big.extend_from_slice(br#""}}"#);
    let signed_big = signed_headers(ORDERS, &big);
    let oversize = [
        (
            "Content-Length, signed",
            send(
                addr,
                &http_request(addr, "POST", ORDERS, &signed_big, &big),
                false,
            ),
        ),
        (
            "Content-Length, unauthenticated connector",
            send(addr, &http_request(addr, "POST", OPEN, &[], &big), false),
        ),
        (
            "chunked, signed headers",
            send(
                addr,
                &chunked_request(addr, ORDERS, &signed_big, MIB + 1),
                false,
            ),
        ),
        (
            "chunked, unauthenticated connector",
            send(addr, &chunked_request(addr, OPEN, &[], MIB + 1), false),
        ),
    ];
    for (what, resp) in oversize {
        let resp = resp.unwrap_or_else(|| panic!("{what}: no answer"));
        let v = assert_problem(&resp, 413, "payload_too_large");
        assert!(
            v["detail"].as_str().unwrap().contains("1048576"),
            "{what}: {v}"
        );
    }
    // Exactly 1 MiB is not too large (it is refused later, for its JSON).
    let at_limit = vec![b' '; MIB];
    assert_problem(&post_open(&daemon, OPEN, &at_limit), 400, "invalid_json");

    let body = br#"{"content":"x","idempotency_key":"r1"}"#;
    let unknown = post_signed(&daemon, "/v1/connectors/http/nope", body);
    let v = assert_problem(&unknown, 404, "connector_not_found");
    assert!(v["detail"].as_str().unwrap().contains("nope"), "{v}");

    for method in ["GET", "PUT", "DELETE"] {
        let resp = daemon.request(method, ORDERS, &[], b"");
        assert_problem(&resp, 405, "method_not_allowed");
        assert_eq!(resp.header("allow"), Some("POST"), "{method}");
    }

    for path in [
        "/v1/connectors/http",
        "/v1/connectors/http/",
        "/v1/connectors/http/orders/extra",
        "/v1/connectors/carrier-pigeon/orders",
        "/nothing-here",
    ] {
        assert_problem(&post_signed(&daemon, path, body), 404, "not_found");
    }

    assert_eq!(
        written(&daemon),
        before,
        "a refused request wrote something"
    );
    assert_accepted(&post_signed(&daemon, ORDERS, body), "http/orders");
}

#[test]
fn an_unknown_connector_is_404_before_the_body_size_is_checked() {
    // SPEC §6.1: route and connector lookup (404) come before the body size (413).
    let (_sandbox, daemon) = start_gateway();
    let addr = daemon.addr;
    let big = vec![b' '; MIB + 1];
    let resp = send(
        addr,
        &http_request(addr, "POST", "/v1/connectors/http/nope", &[], &big),
        false,
    )
    .expect("an answer");
    assert_problem(&resp, 404, "connector_not_found");
}

/// Malformed requests of every kind; see [`no_input_yields_a_5xx`].
fn malformed_requests(addr: SocketAddr) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut raw = |what: &str, bytes: &[u8]| out.push((what.to_string(), bytes.to_vec()));
    raw("garbage line", b"GARBAGE\r\n\r\n");
    raw("empty lines", b"\r\n\r\n\r\n");
    raw("method only", b"GET\r\n\r\n");
    raw("no version", b"GET /healthz\r\n\r\n");
    raw("HTTP/9.9", b"GET /healthz HTTP/9.9\r\n\r\n");
    raw(
        "binary request line",
        b"\xff\xfe\xfd \x00\x01 HTTP/1.1\r\n\r\n",
    );
    raw("bare LF", b"GET /healthz HTTP/1.1\nHost: x\n\n");
    raw("HTTP/1.0 without Host", b"GET /healthz HTTP/1.0\r\n\r\n");
    raw("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
    raw(
        "absolute-form target",
        b"POST http://example.com/v1/connectors/http/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    );
    raw(
        "HEAD on ingress",
        b"HEAD /v1/connectors/http/orders HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    raw(
        "lowercase method",
        b"post /v1/connectors/http/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    );
    raw(
        "header line without a colon",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nthis is not a header\r\nContent-Length: 2\r\n\r\n{}",
    );
    raw(
        "header name with a space",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nBad Name: v\r\nContent-Length: 2\r\n\r\n{}",
    );
    raw(
        "non-UTF-8 header value",
        b"POST /v1/connectors/http/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nContent-Length: 2\r\n\r\n{}",
    );
    raw(
        "Content-Length not a number",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    );
    raw(
        "negative Content-Length",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
    );
    raw(
        "overflowing Content-Length",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999999999999999\r\n\r\n{}",
    );
    raw(
        "two different Content-Lengths",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}",
    );
    raw(
        "Content-Length longer than the body",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}",
    );
    raw(
        "bad chunk size",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    );
    raw(
        "unknown transfer encoding",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{}",
    );
    raw(
        "chunked and Content-Length",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    );
    raw(
        "malformed percent-escape in the path",
        b"POST /v1/connectors/http/or%zzders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    );
    raw(
        "NUL and non-UTF-8 escapes in the path",
        b"POST /v1/connectors/http/%00%ff HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    );
    raw(
        "malformed query",
        b"POST /v1/connectors/http/open?%zz=%G1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    );
    raw(
        "dot segments",
        b"GET /v1/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    raw(
        "two pipelined requests",
        b"POST /v1/connectors/http/open HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let long_path = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a/".repeat(8 * 1024));
    raw("16 KiB path", long_path.as_bytes());
    let long_header = format!(
        "POST /v1/connectors/http/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 2\r\n\r\n{{}}",
        "t".repeat(64 * 1024)
    );
    raw("64 KiB Authorization header", long_header.as_bytes());
    let many_headers = format!(
        "POST /v1/connectors/http/orders HTTP/1.1\r\nHost: x\r\n{}Content-Length: 2\r\n\r\n{{}}",
        "X-Kheish-Timestamp: 1\r\n".repeat(500)
    );
    raw("500 timestamp headers", many_headers.as_bytes());

    // Well-framed requests to the authenticated connector with odd headers.
    let body = br#"{"content":"x","idempotency_key":"fuzz-headers"}"#;
    let good = signed_headers(ORDERS, body);
    let sig = header_value(&good, "X-Kheish-Signature").to_string();
    let odd_headers: Vec<(&str, Headers)> = vec![
        ("empty bearer", replaced(&good, "Authorization", "Bearer ")),
        ("scheme only", replaced(&good, "Authorization", "Bearer")),
        (
            "non-ASCII bearer",
            replaced(&good, "Authorization", "Bearer tökén"),
        ),
        (
            "huge timestamp",
            replaced(&good, "X-Kheish-Timestamp", "99999999999999999999999"),
        ),
        (
            "i64::MAX timestamp",
            replaced(&good, "X-Kheish-Timestamp", &i64::MAX.to_string()),
        ),
        (
            "fractional timestamp",
            replaced(&good, "X-Kheish-Timestamp", "1710000000.5"),
        ),
        ("empty signature", replaced(&good, "X-Kheish-Signature", "")),
        (
            "non-hex signature",
            replaced(
                &good,
                "X-Kheish-Signature",
                &format!("v1={}", "g".repeat(64)),
            ),
        ),
        (
            "multi-byte signature",
            replaced(
                &good,
                "X-Kheish-Signature",
                &format!("v1={}", "é".repeat(32)),
            ),
        ),
        (
            "v0 signature",
            replaced(&good, "X-Kheish-Signature", &sig.replace("v1=", "v0=")),
        ),
        (
            "signature list",
            replaced(&good, "X-Kheish-Signature", &format!("{sig}, {sig}")),
        ),
    ];
    for (what, headers) in odd_headers {
        out.push((
            what.to_string(),
            http_request(addr, "POST", ORDERS, &headers, body),
        ));
    }

    // Correctly signed bodies that are hostile to a JSON parser or to the payload rules.
    let deep_arrays = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_metadata = format!(
        r#"{{"content":"x","idempotency_key":"deep","metadata":{}1{}}}"#,
        r#"{"a":"#.repeat(5_000),
        "}".repeat(5_000)
    );
    let many_items = json!({
        "idempotency_key": "items",
        "input_items": vec![json!({"type": "text", "text": "t"}); 65],
    })
    .to_string();
    let many_attachments = json!({
        "idempotency_key": "attachments",
        "content": "x",
        "attachments": vec![json!({"type": "inline_asset", "media_type": "text/plain", "data_base64": "aGk="}); 11],
    })
    .to_string();
    let many_keys = json!({
        "idempotency_key": "keys",
        "content": "x",
        "binding_keys": (0..65).map(|i| format!("k{i}")).collect::<Vec<_>>(),
    })
    .to_string();
    let long_key = json!({"idempotency_key": "k".repeat(600), "content": "x"}).to_string();
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("100 000 nested arrays", deep_arrays.into_bytes()),
        ("5 000 nested metadata objects", deep_metadata.into_bytes()),
        ("number out of range", br#"{"content":"x","idempotency_key":"n","metadata":{"n":1e400}}"#.to_vec()),
        ("lone surrogate escape", br#"{"content":"\ud800","idempotency_key":"s"}"#.to_vec()),
        ("raw control character", b"{\"content\":\"a\x00b\",\"idempotency_key\":\"c\"}".to_vec()),
        ("trailing garbage", br#"{"content":"x","idempotency_key":"g"} trailing"#.to_vec()),
        ("UTF-8 BOM", b"\xef\xbb\xbf{\"content\":\"x\",\"idempotency_key\":\"bom\"}".to_vec()),
        ("65 input items", many_items.into_bytes()),
        ("11 attachments", many_attachments.into_bytes()),
        ("65 binding keys", many_keys.into_bytes()),
        ("600-byte idempotency key", long_key.into_bytes()),
        ("mixed content shapes", br#"{"content":"x","input_items":[{"type":"text","text":"t"}],"idempotency_key":"m"}"#.to_vec()),
        ("unknown input item type", br#"{"input_items":[{"type":"video"}],"idempotency_key":"v"}"#.to_vec()),
        ("invalid base64 asset", br#"{"input_items":[{"type":"inline_asset","media_type":"text/plain","data_base64":"@@@"}],"idempotency_key":"b64"}"#.to_vec()),
        ("unknown asset reference", br#"{"input_items":[{"type":"asset_reference","asset_id":"asset_nope"}],"idempotency_key":"ref"}"#.to_vec()),
        ("reply override not allowed", br#"{"content":"x","idempotency_key":"reply","reply_plugin":"http","reply_address":"http://169.254.169.254/"}"#.to_vec()),
        ("null members", br#"{"content":null,"idempotency_key":null,"session_id":null}"#.to_vec()),
        ("empty object", b"{}".to_vec()),
    ];
    for (what, body) in bodies {
        let headers = signed_headers(ORDERS, &body);
        out.push((
            what.to_string(),
            http_request(addr, "POST", ORDERS, &headers, &body),
        ));
    }
    out
}

#[test]
fn no_input_yields_a_5xx() {
    let (_sandbox, daemon) = start_gateway();
    let addr = daemon.addr;
    let requests = malformed_requests(addr);
    assert!(requests.len() >= 40, "only {} requests", requests.len());
    let mut statuses: BTreeMap<String, String> = BTreeMap::new();
    for (what, bytes) in &requests {
        let outcome = match send(addr, bytes, true) {
            Some(resp) => {
                assert!(
                    resp.status < 500,
                    "{what}: got {} {}",
                    resp.status,
                    resp.text()
                );
                resp.status.to_string()
            }
            // A closed connection is an acceptable answer to garbage.
            None => "closed".to_string(),
        };
        statuses.insert(what.clone(), outcome);
    }
    // Still alive and serving, and nothing panicked on the way.
    let health = daemon.request("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200, "after {statuses:?}");
    assert_accepted(
        &post_signed(
            &daemon,
            ORDERS,
            br#"{"content":"still here","idempotency_key":"after-fuzz"}"#,
        ),
        "http/orders",
    );
    // A clean stop, and nothing panicked or answered 5xx on the way.
    let (code, stderr) = stop(daemon);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains(" 500 "), "{stderr}");
    assert!(!stderr.contains(" 503 "), "{stderr}");
}

#[test]
fn concurrent_copies_of_one_event_make_one_run() {
    let (_sandbox, daemon) = start_gateway();
    let addr = daemon.addr;
    let body = br#"{"content":"same","idempotency_key":"raced"}"#;
    let other = br#"{"content":"other","idempotency_key":"raced"}"#;
    // Sixteen identical copies and four with another body for the same key, all at once.
    let requests: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            let body: &[u8] = if i % 5 == 4 { other } else { body };
            http_request(addr, "POST", ORDERS, &signed_headers(ORDERS, body), body)
        })
        .collect();
    let answers: Vec<(usize, Response)> = std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .iter()
            .enumerate()
            .map(|(i, req)| scope.spawn(move || (i, send(addr, req, false).expect("an answer"))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let accepted: Vec<&(usize, Response)> =
        answers.iter().filter(|(_, r)| r.status == 202).collect();
    assert_eq!(accepted.len(), 1, "{answers:?}");
    let (winner, first) = accepted[0];
    let original = assert_accepted(first, "http/orders");
    for (i, resp) in &answers {
        if i == winner {
            continue;
        }
        let same_body = (i % 5 == 4) == (winner % 5 == 4);
        if same_body {
            assert_duplicate(resp, "http/orders", &original);
        } else {
            let v = assert_problem(resp, 409, "idempotency_conflict");
            assert_eq!(v["run_id"], original.0.as_str(), "{v}");
        }
    }
    let conn = open_db(&daemon.state_root);
    assert_eq!(count(&conn, "receipts"), 1);
    assert_eq!(count(&conn, "runs"), 1);
}

#[test]
fn a_replay_answers_the_original_session_even_after_routing_changed() {
    let sandbox = Sandbox::new();
    let config = |routing: &str| {
        format!(
            "[[http_connectors]]\nname = \"orders\"\nbearer_token_env = \"ORDERS_BEARER\"\n{routing}\n\
             [http_connectors.session_policy]\ncreate_if_missing = true\n"
        )
    };
    let daemon = Daemon::builder(&sandbox)
        .config(&config("default_binding_keys = [\"orders\"]"))
        .env("ORDERS_BEARER", BEARER)
        .start();
    let event = json!({"content": "x", "idempotency_key": "routed-1"});
    let original = assert_accepted(&post_bearer(&daemon, ORDERS, BEARER, &event), "http/orders");
    assert_eq!(original.1, natural_session("orders", "orders"));

    sandbox.write(
        "connectors.toml",
        config("fixed_session_id = \"elsewhere\""),
    );
    daemon.signal("HUP");
    let mut n = 0;
    wait_until(
        "new events to go to the new session",
        Duration::from_secs(20),
        || {
            n += 1;
            let probe = json!({"content": "x", "idempotency_key": format!("probe-{n}")});
            let resp = post_bearer(&daemon, ORDERS, BEARER, &probe);
            match resp.json()["session_id"].as_str() {
                Some("elsewhere") => Ok(()),
                _ => Err(resp.text()),
            }
        },
    );
    assert_duplicate(
        &post_bearer(&daemon, ORDERS, BEARER, &event),
        "http/orders",
        &original,
    );
}

#[test]
fn without_an_idempotency_key_every_request_is_a_new_run_and_no_receipt() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox)
        .config(
            r#"
[[http_connectors]]
name = "keyless"
allow_unauthenticated_ingress = true
require_idempotency_key = false
default_binding_keys = ["keyless"]
[http_connectors.session_policy]
create_if_missing = true
"#,
        )
        .start();
    let target = "/v1/connectors/http/keyless";
    let body = br#"{"content":"again and again"}"#;
    let first = assert_accepted(&post_open(&daemon, target, body), "http/keyless");
    let second = assert_accepted(&post_open(&daemon, target, body), "http/keyless");
    assert_ne!(first.0, second.0);
    assert_eq!(first.1, second.1);
    let conn = open_db(&daemon.state_root);
    assert_eq!(count(&conn, "receipts"), 0);
    assert_eq!(count(&conn, "runs"), 2);
}

// ---------------------------------------------------------------------------------------------
// 3. Rate limit

#[test]
fn new_events_beyond_the_rate_get_429_but_duplicates_still_answer() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox)
        .config(
            r#"
[[http_connectors]]
name = "limited"
bearer_token_env = "LIMITED_BEARER"
ingress_events_per_second = 1
default_binding_keys = ["limited"]
[http_connectors.session_policy]
create_if_missing = true
"#,
        )
        .env("LIMITED_BEARER", BEARER)
        .start();
    let target = "/v1/connectors/http/limited";
    let event = |key: &str| json!({"content": "tick", "idempotency_key": key});

    let mut last_accept_sent = Instant::now();
    let first = assert_accepted(
        &post_bearer(&daemon, target, BEARER, &event("rl-0")),
        "http/limited",
    );
    let mut n_accepted = 1;
    // The bucket holds one token and refills one per second: the next new event is refused
    // unless a full second passed since the last accepted one was sent (a loaded machine).
    let limited = (1..=5)
        .find_map(|i| {
            let sent = Instant::now();
            let resp = post_bearer(&daemon, target, BEARER, &event(&format!("rl-{i}")));
            if resp.status == 429 {
                return Some(resp);
            }
            assert_accepted(&resp, "http/limited");
            assert!(
                last_accept_sent.elapsed() >= Duration::from_secs(1),
                "a second new event within one second was accepted"
            );
            last_accept_sent = sent;
            n_accepted += 1;
            None
        })
        .expect("no new event was rate limited in five tries");
    let v = assert_problem(&limited, 429, "http_ingress_rate_limited");
    let retry_after_ms = v["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(retry_after_ms > 0 && retry_after_ms <= 1000, "{v}");
    let retry_after: u64 = limited
        .header("retry-after")
        .expect("a Retry-After header")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1, "{retry_after}");
    assert_eq!(retry_after, retry_after_ms.div_ceil(1000).max(1));

    // Duplicates are answered from the receipt and take no token; conflicts too.
    for _ in 0..3 {
        assert_duplicate(
            &post_bearer(&daemon, target, BEARER, &event("rl-0")),
            "http/limited",
            &first,
        );
    }
    assert_problem(
        &post_bearer(
            &daemon,
            target,
            BEARER,
            &json!({"content": "tock", "idempotency_key": "rl-0"}),
        ),
        409,
        "idempotency_conflict",
    );
    // The refused event left no receipt.
    let conn = open_db(&daemon.state_root);
    assert_eq!(count(&conn, "receipts"), n_accepted);
    assert_eq!(count(&conn, "runs"), n_accepted);
}

// ---------------------------------------------------------------------------------------------
// 4. Sessions

const SESSIONS: &str = r#"
[[http_connectors]]
name = "strict"
bearer_token_env = "SESSIONS_BEARER"
default_binding_keys = ["strict"]
ingress_events_per_second = 100000

[[http_connectors]]
name = "fixed"
bearer_token_env = "SESSIONS_BEARER"
fixed_session_id = "fixed-session-1"
ingress_events_per_second = 100000
[http_connectors.session_policy]
create_if_missing = true

[[http_connectors]]
name = "bound"
bearer_token_env = "SESSIONS_BEARER"
ingress_events_per_second = 100000
[http_connectors.session_policy]
create_if_missing = true

[[http_connectors]]
name = "hmaconly"
require_hmac_signature = true
hmac_secret_env = "SESSIONS_HMAC"
ingress_events_per_second = 100000
[http_connectors.session_policy]
create_if_missing = true
"#;

#[test]
fn sessions_resolve_by_fixed_id_payload_id_binding_keys_or_are_refused() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox)
        .config(SESSIONS)
        .env("SESSIONS_BEARER", BEARER)
        .env("SESSIONS_HMAC", HMAC)
        .start();
    let send_to = |name: &str, body: Value| {
        post_bearer(
            &daemon,
            &format!("/v1/connectors/http/{name}"),
            BEARER,
            &body,
        )
    };
    let session_of_run = |run_id: &str| {
        let run = daemon.admin("GET", &format!("/v1/runs/{run_id}"), None);
        assert_eq!(run.status, 200, "{}", run.text());
        run.json()["session_id"].as_str().unwrap().to_string()
    };

    // create_if_missing = false and no such session: 409, nothing written.
    let before = written(&daemon);
    let strict_session = natural_session("strict", "strict");
    let v = assert_problem(
        &send_to("strict", json!({"content": "x", "idempotency_key": "s1"})),
        409,
        "session_not_found",
    );
    assert!(
        v["detail"].as_str().unwrap().contains(&strict_session),
        "{v}"
    );
    assert_eq!(written(&daemon), before);
    // Once the session exists (control plane), the same event lands in it.
    let put = daemon.admin(
        "PUT",
        &format!("/v1/sessions/{}", strict_session.replace(':', "%3A")),
        Some(&json!({})),
    );
    assert!(put.status == 201 || put.status == 200, "{}", put.text());
    let (run, session) = assert_accepted(
        &send_to("strict", json!({"content": "x", "idempotency_key": "s1"})),
        "http/strict",
    );
    assert_eq!(session, strict_session);
    assert_eq!(session_of_run(&run), strict_session);

    // fixed_session_id wins, even over a payload session_id.
    let (run, session) = assert_accepted(
        &send_to(
            "fixed",
            json!({"content": "x", "idempotency_key": "f1", "session_id": "not-this-one"}),
        ),
        "http/fixed",
    );
    assert_eq!(session, "fixed-session-1");
    assert_eq!(session_of_run(&run), "fixed-session-1");
    let fixed = daemon.admin("GET", "/v1/sessions/fixed-session-1", None);
    assert_eq!(fixed.status, 200, "{}", fixed.text());

    // An authenticated payload session_id is used.
    let (run, session) = assert_accepted(
        &send_to(
            "bound",
            json!({"content": "x", "idempotency_key": "p1", "session_id": "payload-session-7"}),
        ),
        "http/bound",
    );
    assert_eq!(session, "payload-session-7");
    assert_eq!(session_of_run(&run), "payload-session-7");

    // An HMAC-only connector counts as authenticated (SPEC §2.1): its payload session_id too.
    let target = "/v1/connectors/http/hmaconly";
    let body = br#"{"content":"x","idempotency_key":"h1","session_id":"signed-session"}"#;
    let headers = without(&signed_headers(target, body), "Authorization");
    let (_, session) = assert_accepted(&post(&daemon, target, &headers, body), "http/hmaconly");
    assert_eq!(session, "signed-session");

    // Binding keys: the first sorted key names a new session; the same keys (any order, any
    // surrounding whitespace) or a subset of them find it again.
    let s1 = natural_session("bound", "customer:42");
    let keys_event = |key: &str, keys: Value| json!({"content": "x", "idempotency_key": key, "binding_keys": keys});
    let (_, a) = assert_accepted(
        &send_to("bound", keys_event("b1", json!(["order:7", "customer:42"]))),
        "http/bound",
    );
    assert_eq!(a, s1);
    let (_, b) = assert_accepted(
        &send_to("bound", keys_event("b2", json!(["customer:42", "order:7"]))),
        "http/bound",
    );
    assert_eq!(b, s1);
    let (_, c) = assert_accepted(
        &send_to("bound", keys_event("b3", json!([" order:7 "]))),
        "http/bound",
    );
    assert_eq!(c, s1);
    let s2 = natural_session("bound", "customer:99");
    let (_, d) = assert_accepted(
        &send_to("bound", keys_event("b4", json!(["customer:99"]))),
        "http/bound",
    );
    assert_eq!(d, s2);
    assert_ne!(s1, s2);

    // Keys bound to two different sessions: 409, nothing written.
    let before = written(&daemon);
    let v = assert_problem(
        &send_to(
            "bound",
            keys_event("b5", json!(["customer:42", "customer:99"])),
        ),
        409,
        "ambiguous_binding",
    );
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains(&s1) && detail.contains(&s2), "{v}");
    // No binding keys, no fixed id, no payload session: 400 saying what would resolve one.
    let v = assert_problem(
        &send_to("bound", json!({"content": "x", "idempotency_key": "b6"})),
        400,
        "session_unresolved",
    );
    assert!(
        v["detail"].as_str().unwrap().contains("binding_keys"),
        "{v}"
    );
    assert_eq!(written(&daemon), before);
}

// ---------------------------------------------------------------------------------------------
// 5. Secrets never leak

#[test]
fn planted_secrets_never_appear_in_logs_responses_metrics_or_the_state_root() {
    const P_BEARER: &str = "pl4nted-bearer-Zq8XkR2mW7vN5cJ1";
    const P_HMAC: &str = "pl4nted-hmac-Lp3TgY6sB9dF0hQ4";
    const P_VAULT: &str = "pl4nted-vault-Wm5NcX8kE2rA7uS3";
    const P_ADMIN: &str = "pl4nted-admin-Hj4VbK1oP6yT9eG2";
    const VAULT_REF: &str = "connectors.http.vault.bearer_token";
    let sandbox = Sandbox::new();
    sandbox
        .cmd()
        .args(["rotate-secret", VAULT_REF, "--stdin"])
        .stdin(P_VAULT)
        .run()
        .success()
        .never_shows(P_VAULT);
    let config = format!(
        "{GATEWAY}
[[http_connectors]]
name = \"vault\"
bearer_token_secret_ref = \"{VAULT_REF}\"
default_binding_keys = [\"vault\"]
[http_connectors.session_policy]
create_if_missing = true
"
    );
    let daemon = Daemon::builder(&sandbox)
        .config(&config)
        .env("ORDERS_BEARER", P_BEARER)
        .env("ORDERS_HMAC", P_HMAC)
        .env("KHEISH_TEST_ADMIN_TOKEN", P_ADMIN)
        .args(&["-v"])
        .start();
    // Near misses: the real value with its last character changed, one more character,
    // one fewer.
    let near = |s: &str| {
        let mut changed = s[..s.len() - 1].to_string();
        changed.push(if s.ends_with('X') { 'Y' } else { 'X' });
        vec![changed, format!("{s}0"), s[..s.len() - 1].to_string()]
    };
    let mut responses: Vec<Response> = Vec::new();
    let body = br#"{"content":"hello","idempotency_key":"leak-1"}"#;
    let good = signed_headers_with(P_BEARER, P_HMAC, ORDERS, now_secs(), body);
    responses.push(post(&daemon, ORDERS, &good, body));
    assert_eq!(responses[0].status, 202, "{}", responses[0].text());
    responses.push(post(&daemon, ORDERS, &good, body));
    assert_eq!(responses[1].status, 200, "{}", responses[1].text());
    for wrong in near(P_BEARER) {
        let h = signed_headers_with(&wrong, P_HMAC, ORDERS, now_secs(), body);
        responses.push(post(&daemon, ORDERS, &h, body));
    }
    for wrong in near(P_HMAC) {
        let h = signed_headers_with(P_BEARER, &wrong, ORDERS, now_secs(), body);
        responses.push(post(&daemon, ORDERS, &h, body));
    }
    responses.push(post(
        &daemon,
        ORDERS,
        &replaced(&good, "Authorization", &format!("Basic {P_BEARER}")),
        body,
    ));
    responses.push(post(
        &daemon,
        ORDERS,
        &plus(&good, "Authorization", &format!("Bearer {P_BEARER}")),
        body,
    ));
    for other in [
        br#"{not json"#.as_slice(),
        br#"{"content":"changed","idempotency_key":"leak-1"}"#,
    ] {
        let h = signed_headers_with(P_BEARER, P_HMAC, ORDERS, now_secs(), other);
        responses.push(post(&daemon, ORDERS, &h, other));
    }
    let vault = "/v1/connectors/http/vault";
    let event = json!({"content": "v", "idempotency_key": "vault-1"});
    responses.push(post_bearer(&daemon, vault, P_VAULT, &event));
    assert_eq!(responses.last().unwrap().status, 202);
    for wrong in near(P_VAULT) {
        responses.push(post_bearer(&daemon, vault, &wrong, &event));
    }
    // Three wrong admin tokens (the per-address lockout allows ten), then good ones.
    for wrong in near(P_ADMIN) {
        let resp = admin_as(&daemon, &wrong, "GET", "/v1/receipts");
        assert_eq!(resp.status, 401, "{}", resp.text());
        responses.push(resp);
    }
    for target in ["/metrics", "/v1/receipts?limit=500", "/v1/runs?limit=500"] {
        let resp = admin_as(&daemon, P_ADMIN, "GET", target);
        assert_eq!(resp.status, 200, "{target}: {}", resp.text());
        responses.push(resp);
    }
    let metrics = admin_as(&daemon, P_ADMIN, "GET", "/metrics");
    assert!(metrics.text().contains("kheish_"), "{}", metrics.text());
    let inspect = sandbox.cmd().args(["--json", "inspect-receipts"]).run();
    inspect.success();
    // 401s, 400s, 409s and successes were all seen.
    let statuses: BTreeSet<u16> = responses.iter().map(|r| r.status).collect();
    for s in [200, 202, 400, 401, 409] {
        assert!(statuses.contains(&s), "{statuses:?}");
    }

    // Stop the daemon so that its last log lines are in.
    let ready_line = daemon.ready.to_string();
    let (code, stderr) = stop(daemon);
    assert_eq!(code, Some(0), "{stderr}");

    let mut needles: Vec<String> = [P_BEARER, P_HMAC, P_VAULT, P_ADMIN]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for s in [P_BEARER, P_HMAC, P_VAULT, P_ADMIN] {
        needles.extend(near(s));
    }
    let mut places: Vec<(String, Vec<u8>)> = vec![
        ("daemon stderr".into(), stderr.into_bytes()),
        ("readiness line".into(), ready_line.into_bytes()),
        ("/metrics".into(), metrics.body.clone()),
        (
            "inspect-receipts stdout".into(),
            inspect.output.stdout.clone(),
        ),
        (
            "inspect-receipts stderr".into(),
            inspect.output.stderr.clone(),
        ),
    ];
    for (i, resp) in responses.iter().enumerate() {
        let mut bytes = resp.body.clone();
        for (k, v) in &resp.headers {
            bytes.extend_from_slice(format!("\n{k}: {v}").as_bytes());
        }
        places.push((format!("response #{i} ({})", resp.status), bytes));
    }
    for path in files_under(&sandbox.state_root()) {
        let bytes = std::fs::read(&path).unwrap();
        places.push((path.display().to_string(), bytes));
    }
    for (place, bytes) in &places {
        let text = String::from_utf8_lossy(bytes);
        for needle in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "{place} contains the planted secret (or near miss) {needle:?}"
            );
        }
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 6. Lifecycle

const LIFECYCLE: &str = r#"
[[http_connectors]]
name = "orders"
bearer_token_env = "ORDERS_BEARER"
default_binding_keys = ["orders"]
[http_connectors.session_policy]
create_if_missing = true
"#;

#[test]
fn lifecycle_ready_health_admin_auth_sighup_and_sigterm() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox)
        .config(LIFECYCLE)
        .env("ORDERS_BEARER", BEARER)
        .start();
    let listen = daemon.ready["listen"]
        .as_str()
        .expect("listen in the readiness JSON");
    assert_eq!(listen.parse::<SocketAddr>().unwrap(), daemon.addr);
    assert!(daemon.addr.ip().is_loopback());
    assert_ne!(daemon.addr.port(), 0);
    // The log line is written before the readiness line, but read by another thread.
    let listening = format!("listening on http://{listen}");
    wait_until("the listening log line", Duration::from_secs(10), || {
        let stderr = daemon.stderr();
        if stderr.contains(&listening) {
            Ok(())
        } else {
            Err(stderr)
        }
    });

    let health = daemon.request("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200, "{}", health.text());
    let ready = daemon.request("GET", "/readyz", &[], b"");
    assert_eq!(ready.status, 200, "{}", ready.text());

    // The control plane needs the admin token, also on loopback.
    for target in ["/metrics", "/v1/receipts", "/v1/runs"] {
        let none = daemon.request("GET", target, &[], b"");
        assert_problem(&none, 401, "unauthorized");
    }
    let wrong = admin_as(&daemon, &format!("{ADMIN_TOKEN}x"), "GET", "/v1/receipts");
    assert_problem(&wrong, 401, "unauthorized");
    let basic = daemon.request(
        "GET",
        "/v1/receipts",
        &[("Authorization", &format!("Basic {ADMIN_TOKEN}"))],
        b"",
    );
    assert_problem(&basic, 401, "unauthorized");
    assert_eq!(daemon.admin("GET", "/v1/receipts", None).status, 200);

    let mut n_events = 0;
    let mut event_to = |name: &str| {
        n_events += 1;
        post_bearer(
            &daemon,
            &format!("/v1/connectors/http/{name}"),
            BEARER,
            &json!({"content": "x", "idempotency_key": format!("life-{n_events}")}),
        )
    };
    assert_accepted(&event_to("orders"), "http/orders");
    assert_problem(&event_to("orders2"), 404, "connector_not_found");

    // SIGHUP with a valid file that adds `orders2`: it starts answering.
    let with_orders2 = format!(
        "{LIFECYCLE}{}",
        LIFECYCLE.replace("\"orders\"", "\"orders2\"")
    );
    let config_path = sandbox.write("connectors.toml", &with_orders2);
    daemon.signal("HUP");
    wait_until(
        "orders2 to be served after SIGHUP",
        Duration::from_secs(20),
        || {
            let resp = event_to("orders2");
            match resp.status {
                202 => Ok(()),
                _ => Err(format!("{} {}", resp.status, resp.text())),
            }
        },
    );
    assert_accepted(&event_to("orders"), "http/orders");

    // SIGHUP with an invalid file: the previous config stays in force.
    sandbox.write(
        "connectors.toml",
        format!(
            "{with_orders2}\n[[http_connectors]]\nname = \"orders3\"\nsignature_max_age_secs = 0\n"
        ),
    );
    daemon.signal("HUP");
    let stderr = wait_until(
        "the daemon to refuse the invalid reload",
        Duration::from_secs(20),
        || {
            let stderr = daemon.stderr();
            if stderr.contains("keeping the previous config") {
                Ok(stderr)
            } else {
                Err(stderr)
            }
        },
    );
    let file_line_col = format!("error: {}:", config_path.display());
    assert!(stderr.contains(&file_line_col), "{stderr}");
    assert_accepted(&event_to("orders"), "http/orders");
    assert_accepted(&event_to("orders2"), "http/orders2");
    assert_problem(&event_to("orders3"), 404, "connector_not_found");
    assert_eq!(daemon.request("GET", "/readyz", &[], b"").status, 200);

    // SIGTERM: drain and exit 0.
    let (code, stderr) = stop(daemon);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("SIGTERM: draining"), "{stderr}");
}

#[test]
fn an_invalid_connector_file_fails_closed_with_exit_4_and_located_diagnostics() {
    let sandbox = Sandbox::new();
    let config = std::fs::read_to_string(fixture("serve_invalid_connectors.toml")).unwrap();
    let (code, stderr) = match Daemon::builder(&sandbox)
        .config(&config)
        .env("ORDERS_BEARER", BEARER)
        .try_start()
    {
        Ok(_) => panic!("serve started with an invalid connector file"),
        Err(failure) => failure,
    };
    assert_eq!(code, Some(4), "{stderr}");
    let file = sandbox.path().join("connectors.toml");
    // Every problem is reported, each at its FILE:LINE:COL, as `validate` prints them.
    for expected in [
        format!(
            "error: {}:5:26: http_connectors[orders].signature_max_age_secs: must be between 1 and 3600 (got 0)",
            file.display()
        ),
        format!("error: {}:8:", file.display()),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in\n{stderr}");
    }
    assert!(!stderr.contains("listening on"), "{stderr}");
}

#[test]
fn a_missing_secret_env_var_fails_closed_naming_it() {
    let sandbox = Sandbox::new();
    let config = "[[http_connectors]]\nname = \"orders\"\nbearer_token_env = \"KHEISH_TEST_UNSET_ORDERS_TOKEN\"\n";
    let (code, stderr) = match Daemon::builder(&sandbox).config(config).try_start() {
        Ok(_) => panic!("serve started without its secret"),
        Err(failure) => failure,
    };
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains("KHEISH_TEST_UNSET_ORDERS_TOKEN"),
        "{stderr}"
    );
    let file = sandbox.path().join("connectors.toml");
    assert!(
        stderr.contains(&format!("error: {}:3:", file.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// 7. Secret rotation

#[test]
fn a_running_daemon_picks_up_a_rotated_bearer_token_with_and_without_grace() {
    const REF: &str = "connectors.http.orders.bearer_token";
    let sandbox = Sandbox::new();
    let rotate = |value: &str, grace: Option<&str>| {
        let mut cmd = sandbox.cmd();
        cmd.args(["rotate-secret", REF, "--stdin"]).stdin(value);
        if let Some(grace) = grace {
            cmd.args(["--grace", grace]);
        }
        cmd.run().success().never_shows(value);
    };
    rotate("old-token", None);
    let daemon = Daemon::builder(&sandbox)
        .config(&format!(
            r#"
[[http_connectors]]
name = "orders"
bearer_token_secret_ref = "{REF}"
default_binding_keys = ["orders"]
ingress_events_per_second = 100000
[http_connectors.session_policy]
create_if_missing = true
"#
        ))
        .start();
    let n_events = AtomicUsize::new(0);
    let status_with = |token: &str| {
        let n = n_events.fetch_add(1, Ordering::Relaxed);
        let event = json!({"content": "x", "idempotency_key": format!("rot-{n}")});
        post_bearer(&daemon, ORDERS, token, &event).status
    };
    let await_status = |token: &str, wanted: u16, what: &str| {
        wait_until(what, Duration::from_secs(15), || match status_with(token) {
            s if s == wanted => Ok(()),
            s => Err(format!("{token}: {s}")),
        })
    };
    assert_eq!(status_with("old-token"), 202);
    assert_eq!(status_with("new-token"), 401);

    rotate("new-token", Some("10m"));
    await_status("new-token", 202, "the rotated token to be accepted");
    // The previous value still verifies during the grace window.
    assert_eq!(status_with("old-token"), 202);
    assert_eq!(status_with("new-token"), 202);

    rotate("newest-token", None);
    await_status("new-token", 401, "the replaced token to be refused");
    assert_eq!(status_with("newest-token"), 202);
    assert_eq!(status_with("old-token"), 401);
}

// ---------------------------------------------------------------------------------------------
// 8. Crash test

const CRASH: &str = r#"
[[http_connectors]]
name = "crash"
bearer_token_env = "CRASH_BEARER"
ingress_events_per_second = 100000
[http_connectors.session_policy]
create_if_missing = true
"#;
const CRASH_TARGET: &str = "/v1/connectors/http/crash";
const N_CRASH_EVENTS: usize = 200;
const N_CLIENTS: usize = 8;
const N_ROUNDS: usize = 5;

/// The answer one client got for one request: `None` when the connection failed.
type Answer = Option<(u16, Value)>;

fn crash_body(round: usize, i: usize) -> Vec<u8> {
    json!({
        "content": format!("crash event {i}"),
        "idempotency_key": crash_key(round, i),
        "binding_keys": [format!("group-{}", i % 10)],
    })
    .to_string()
    .into_bytes()
}

fn crash_key(round: usize, i: usize) -> String {
    format!("crash-{round}-{i:03}")
}

/// Sends every body once, from `N_CLIENTS` threads over fresh connections. `on_answer` is
/// called after each complete answer with the number of answers so far.
fn send_all(
    addr: SocketAddr,
    bodies: &[Vec<u8>],
    on_answer: &(dyn Fn(usize) + Sync),
) -> Vec<Answer> {
    let headers = vec![
        ("Authorization".to_string(), format!("Bearer {BEARER}")),
        ("Content-Type".to_string(), "application/json".to_string()),
    ];
    let answered = AtomicUsize::new(0);
    let mut answers: Vec<Answer> = vec![None; bodies.len()];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..N_CLIENTS)
            .map(|client| {
                let (headers, answered) = (&headers, &answered);
                scope.spawn(move || {
                    (client..bodies.len())
                        .step_by(N_CLIENTS)
                        .map(|i| {
                            let request =
                                http_request(addr, "POST", CRASH_TARGET, headers, &bodies[i]);
                            let answer = send(addr, &request, false).and_then(|resp| {
                                let body = serde_json::from_slice(&resp.body).ok()?;
                                Some((resp.status, body))
                            });
                            if answer.is_some() {
                                on_answer(answered.fetch_add(1, Ordering::SeqCst) + 1);
                            }
                            (i, answer)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            for (i, answer) in handle.join().expect("a client thread panicked") {
                answers[i] = answer;
            }
        }
    });
    answers
}

fn run_id_of(answer: &(u16, Value)) -> String {
    answer.1["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run_id in {answer:?}"))
        .to_string()
}

fn start_crash_daemon(sandbox: &Sandbox) -> Daemon {
    Daemon::builder(sandbox)
        .config(CRASH)
        .env("CRASH_BEARER", BEARER)
        .start()
}

/// One crash round: load, SIGKILL after `kill_after` answers, restart, replay twice, check
/// the state root.
fn crash_round(round: usize, kill_after: usize) {
    let context = format!("round {round}, killed after {kill_after} answers");
    let sandbox = Sandbox::new();
    let bodies: Vec<Vec<u8>> = (0..N_CRASH_EVENTS).map(|i| crash_body(round, i)).collect();

    let daemon = start_crash_daemon(&sandbox);
    let addr = daemon.addr;
    let (kill_tx, kill_rx) = mpsc::sync_channel::<()>(1);
    let before_kill = std::thread::scope(|scope| {
        let loader = scope.spawn(|| {
            send_all(addr, &bodies, &|n| {
                if n == kill_after {
                    let _ = kill_tx.try_send(());
                }
            })
        });
        kill_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{context}: never got {kill_after} answers"));
        // SIGKILL while the clients are still sending: they see refused or reset connections.
        daemon.kill();
        loader.join().expect("the load thread panicked")
    });
    let n_acknowledged = before_kill.iter().flatten().count();
    assert!(n_acknowledged >= kill_after, "{context}");
    for (i, answer) in before_kill.iter().enumerate() {
        if let Some(answer) = answer {
            assert_eq!(answer.0, 202, "{context}: event {i} got {answer:?}");
            assert_eq!(answer.1["status"], "accepted", "{context}: {answer:?}");
        }
    }

    // Restart on the same state root and replay everything.
    let daemon = start_crash_daemon(&sandbox);
    let second = send_all(daemon.addr, &bodies, &|_| {});
    let mut run_ids: Vec<String> = Vec::with_capacity(N_CRASH_EVENTS);
    let mut n_new = 0;
    for (i, answer) in second.iter().enumerate() {
        let answer = answer
            .as_ref()
            .unwrap_or_else(|| panic!("{context}: no answer for event {i} after restart"));
        match (answer.0, answer.1["status"].as_str()) {
            (202, Some("accepted")) => n_new += 1,
            (200, Some("duplicate")) => {}
            _ => panic!("{context}: event {i} after restart got {answer:?}"),
        }
        if let Some(acknowledged) = &before_kill[i] {
            // Acknowledged before the crash: a duplicate of the ORIGINAL run.
            assert_eq!(
                answer.0, 200,
                "{context}: event {i} was acknowledged, then {answer:?}"
            );
            assert_eq!(
                run_id_of(answer),
                run_id_of(acknowledged),
                "{context}: event {i}"
            );
            assert_eq!(
                answer.1["session_id"], acknowledged.1["session_id"],
                "{context}"
            );
        }
        run_ids.push(run_id_of(answer));
    }
    assert!(n_new <= N_CRASH_EVENTS - n_acknowledged, "{context}");

    // Once more: every event is now a duplicate of the run the second pass reported.
    let third = send_all(daemon.addr, &bodies, &|_| {});
    for (i, answer) in third.iter().enumerate() {
        let answer = answer
            .as_ref()
            .unwrap_or_else(|| panic!("{context}: no answer for event {i} in the third pass"));
        assert_eq!(answer.0, 200, "{context}: event {i} got {answer:?}");
        assert_eq!(answer.1["status"], "duplicate", "{context}: {answer:?}");
        assert_eq!(run_id_of(answer), run_ids[i], "{context}: event {i}");
    }
    assert_eq!(daemon.terminate(), Some(0), "{context}");

    // The state root: exactly one receipt and one run per key, each pointing at the other.
    let conn = open_db(&sandbox.state_root());
    let receipts: HashMap<String, String> = conn
        .prepare("SELECT receipt_key, run_id FROM receipts WHERE connector_kind = 'http' AND connector_name = 'crash'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let runs: Vec<(String, String)> = conn
        .prepare("SELECT run_id, metadata FROM runs WHERE connector_kind = 'http' AND connector_name = 'crash'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(count(&conn, "receipts"), N_CRASH_EVENTS as i64, "{context}");
    assert_eq!(count(&conn, "runs"), N_CRASH_EVENTS as i64, "{context}");
    assert_eq!(receipts.len(), N_CRASH_EVENTS, "{context}");
    assert_eq!(runs.len(), N_CRASH_EVENTS, "{context}");
    let mut run_key: HashMap<String, String> = HashMap::new();
    for (run_id, metadata) in &runs {
        let metadata: Value = serde_json::from_str(metadata).unwrap();
        let key = metadata["connector_ingress_key"]
            .as_str()
            .unwrap_or_else(|| panic!("{context}: run {run_id} has no ingress key"))
            .to_string();
        assert!(
            run_key.insert(run_id.clone(), key).is_none(),
            "{context}: run {run_id} twice"
        );
    }
    let keys_of_runs: BTreeSet<&String> = run_key.values().collect();
    assert_eq!(
        keys_of_runs.len(),
        N_CRASH_EVENTS,
        "{context}: two runs for one key"
    );
    for (i, run_id) in run_ids.iter().enumerate() {
        let (stored_key, _) = receipt_key(ConnectorKind::Http, "crash", &crash_key(round, i));
        let receipt_run = receipts
            .get(&stored_key)
            .unwrap_or_else(|| panic!("{context}: no receipt for event {i}"));
        assert_eq!(receipt_run, run_id, "{context}: event {i}");
        assert_eq!(
            run_key.get(run_id),
            Some(&stored_key),
            "{context}: the run of event {i} is missing or belongs to another key"
        );
    }
}

#[test]
fn kill_9_during_ingress_loses_no_acknowledged_event_and_duplicates_none() {
    let started = Instant::now();
    let mut kill_points = Vec::new();
    for round in 0..N_ROUNDS {
        // A different moment each round: after 5..=100 answers.
        let kill_after = rand::random_range(5..=100);
        kill_points.push(kill_after);
        crash_round(round, kill_after);
    }
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the crash rounds {kill_points:?} took {:?}",
        started.elapsed()
    );
}
