//! Delivery to external sidecars (SPEC §10.1, §10.4–§10.5, §11.2, §13, §15) against the real
//! binary and a fake sidecar on 127.0.0.1:0 (`support::fake_sidecar`): an HTTP connector whose
//! default reply target is the external connector `sc` (`remote_http`, private network allowed,
//! shared token), the echo handler turning each event into output, and `drain-deliveries`
//! (given the same connector file) driving the queue deterministically beside a daemon without
//! delivery workers. The metrics and crash tests use the daemon's own workers.
//!
//! Covered: the exact `/deliver` request (headers, body, `reply_route` handed back unchanged,
//! the string `"{}"` included); SPEC §10.1's reading of every answer (2xx-only commits, 429 +
//! Retry-After, `retryable_error`/`terminal_error` on any status, garbage, redirects, 64 KiB+
//! bodies, hangs, closed connections); the manifest cache; artifacts and `attachments_out`;
//! unknown connectors; drains without a connector file; the asset route; metrics; kill -9 with
//! sidecar deliveries in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::support::daemon::Daemon;
use crate::support::fake_sidecar::{self, FakeSidecar};
use crate::support::http::{self, Response};
use crate::support::ingress::{ingest, post_bearer};
use crate::support::problem::assert_problem;
use crate::support::receiver::{Answer, Receiver, Recorded};
use crate::support::wait::wait_until;
use crate::support::{metric_sample, Kheishctl, Run, Sandbox};

const SC_TOKEN: &str = "sc-shared-token-5ecret-0123456789";
const OTHER_TOKEN: &str = "other-shared-token-5ecret-9876543210";
const FILES_BEARER: &str = "files-bearer-token-for-tests";
const DEADLINE: Duration = Duration::from_secs(30);

/// Long retry delays: a drain without `--ignore-backoff` makes exactly one attempt per
/// delivery however loaded the machine is, and `--ignore-backoff` goes on at once.
const SLOW_RETRIES: [(&str, &str); 2] = [
    ("KHEISH_DELIVERY_INITIAL_RETRY_MS", "30000"),
    ("KHEISH_DELIVERY_MAX_RETRY_MS", "60000"),
];
/// Tiny retry delays for tests where the daemon's own workers retry.
const FAST_RETRIES: [(&str, &str); 2] = [
    ("KHEISH_DELIVERY_INITIAL_RETRY_MS", "10"),
    ("KHEISH_DELIVERY_MAX_RETRY_MS", "50"),
];

/// The reply target of `sc` with `route` (any JSON value, handed back unchanged).
fn sc_address(route: &Value) -> String {
    json!({"connector": "sc", "route": route}).to_string()
}

/// `http/orders` (open, echo input) and `http/files` (bearer, for inline assets) both reply to
/// `sc` with `route`; `external/sc` and `external/other` both point at `sidecar`.
fn config(sidecar: &FakeSidecar, route: &Value) -> String {
    let target = format!(
        "{{ plugin = \"external\", address = '{}' }}",
        sc_address(route)
    );
    format!(
        r#"
[[http_connectors]]
name = "orders"
allow_unauthenticated_ingress = true
default_binding_keys = ["orders"]
ingress_events_per_second = 100000
default_reply_targets = [{target}]
[http_connectors.session_policy]
create_if_missing = true

[[http_connectors]]
name = "files"
bearer_token_env = "FILES_BEARER"
default_binding_keys = ["files"]
ingress_events_per_second = 100000
default_reply_targets = [{target}]
[http_connectors.session_policy]
create_if_missing = true

[[external_connectors]]
name = "sc"
platform = "test"
base_url = "{base}"
allow_private_network = true
shared_token_env = "SC_TOKEN"

[[external_connectors]]
name = "other"
platform = "test"
base_url = "{base}"
allow_private_network = true
shared_token_env = "OTHER_TOKEN"
"#,
        base = sidecar.base_url()
    )
}

const ENV: [(&str, &str); 3] = [
    ("SC_TOKEN", SC_TOKEN),
    ("OTHER_TOKEN", OTHER_TOKEN),
    ("FILES_BEARER", FILES_BEARER),
];

struct Gateway {
    sandbox: Sandbox,
    daemon: Daemon,
}

impl Gateway {
    /// Echo handler, no delivery workers, replies routed to `sc` with the route `"{}"`.
    fn start(sidecar: &FakeSidecar) -> Gateway {
        Gateway::start_with(sidecar, &json!("{}"), &["--handler", "echo"], &[])
    }

    fn start_with(
        sidecar: &FakeSidecar,
        route: &Value,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Gateway {
        let sandbox = Sandbox::new();
        let daemon = start_daemon(&sandbox, &config(sidecar, route), args, env);
        Gateway { sandbox, daemon }
    }

    /// Posts one event to `http/orders` and waits for its delivery; returns the delivery.
    fn ingest_and_wait(&self, content: &str, key: &str) -> Value {
        let run = ingest(&self.daemon, content, key);
        self.delivery_of(&run)
    }

    fn delivery_of(&self, run: &str) -> Value {
        wait_until(&format!("the delivery of run {run}"), DEADLINE, || {
            let list = self.list(&format!("/v1/deliveries?run={run}"));
            list.first().cloned().ok_or_else(|| format!("{list:?}"))
        })
    }

    fn list(&self, target: &str) -> Vec<Value> {
        let resp = self.daemon.admin("GET", target, None);
        assert_eq!(resp.status, 200, "GET {target}: {}", resp.text());
        resp.json()["deliveries"].as_array().unwrap().clone()
    }

    fn delivery(&self, id: &str) -> Value {
        let resp = self
            .daemon
            .admin("GET", &format!("/v1/deliveries/{id}"), None);
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.json()
    }

    fn config_path(&self) -> std::path::PathBuf {
        self.sandbox.path().join("connectors.toml")
    }

    /// A CLI command on this state root with the slow retries and the connectors' secrets.
    fn cmd(&self) -> Kheishctl {
        let mut k = self.sandbox.cmd();
        for (name, value) in SLOW_RETRIES.iter().chain(&ENV) {
            k.env(name, value);
        }
        k
    }

    /// `--connectors-config FILE --json drain-deliveries ARGS`.
    fn drain(&self, args: &[&str]) -> Run {
        self.cmd()
            .arg("--connectors-config")
            .arg(self.config_path())
            .args(["--json", "drain-deliveries"])
            .args(args)
            .run()
    }

    /// GET of the asset route with `token` (`None`: no Authorization header).
    fn asset(&self, connector: &str, delivery: &str, asset: &str, token: Option<&str>) -> Response {
        let target =
            format!("/v1/connectors/external/{connector}/deliveries/{delivery}/assets/{asset}/raw");
        let headers: Vec<(String, String)> = token
            .map(|t| vec![("Authorization".to_string(), format!("Bearer {t}"))])
            .unwrap_or_default();
        http::send(
            self.daemon.addr,
            &http::request_bytes(self.daemon.addr, "GET", &target, &headers, b""),
        )
    }
}

fn start_daemon(sandbox: &Sandbox, config: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let mut builder = Daemon::builder(sandbox).config(config).args(args);
    if !args.contains(&"--delivery-workers") {
        builder = builder.args(&["--delivery-workers", "0"]);
    }
    for (name, value) in SLOW_RETRIES.iter().chain(&ENV).chain(env) {
        builder = builder.env(name, value);
    }
    builder.start()
}

fn id_of(delivery: &Value) -> String {
    delivery["delivery_id"].as_str().unwrap().to_string()
}

fn key_of(request: &Recorded) -> String {
    request
        .header("idempotency-key")
        .unwrap_or_else(|| panic!("request without Idempotency-Key: {request:?}"))
        .to_string()
}

/// Ingests one event, drains once with `args`, and returns the delivery afterwards.
fn one_delivery(gw: &Gateway, args: &[&str]) -> (Value, Run) {
    let id = id_of(&gw.ingest_and_wait("hello sidecar", "k1"));
    let run = gw.drain(args);
    (gw.delivery(&id), run)
}

// ---------------------------------------------------------------------------------------------
// The request

#[test]
fn deliver_requests_have_the_exact_headers_and_body() {
    let sidecar = FakeSidecar::start();
    sidecar.script_deliver([fake_sidecar::retryable(503, "busy")]);
    let gw = Gateway::start(&sidecar);
    let delivery = gw.ingest_and_wait("hello sidecar", "k1");
    let id = id_of(&delivery);
    assert_eq!(delivery["status"], "pending", "{delivery}");
    assert_eq!(delivery["target"]["plugin"], "external");

    let run = gw.drain(&["--ignore-backoff"]);
    run.success();
    let requests = sidecar.deliveries();
    assert_eq!(requests.len(), 2, "{requests:?}");
    for (idx, r) in requests.iter().enumerate() {
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, "/deliver");
        assert_eq!(key_of(r), format!("kheish:{id}"), "stable across retries");
        assert_eq!(r.header("x-kheish-external-protocol-version"), Some("1"));
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {SC_TOKEN}").as_str())
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body = r.json();
        let members: BTreeSet<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            members,
            BTreeSet::from([
                "protocol_version",
                "delivery_id",
                "attempt",
                "reply_route",
                "conversation",
                "content",
                "parts",
                "artifacts",
                "metadata"
            ]),
            "{body}"
        );
        assert_eq!(body["protocol_version"], 1);
        assert_eq!(body["delivery_id"], id.as_str());
        assert_eq!(body["attempt"], idx + 1);
        assert_eq!(
            body["reply_route"],
            json!("{}"),
            "the JSON string, unchanged"
        );
        assert_eq!(
            body["conversation"],
            json!({"session_id": delivery["session_id"], "thread_id": null})
        );
        assert_eq!(body["content"], "hello sidecar");
        assert_eq!(body["parts"], json!([]));
        assert_eq!(body["artifacts"], json!([]));
        assert_eq!(body["metadata"]["run_id"], delivery["run_id"]);
        assert_eq!(body["metadata"]["output_id"], delivery["output_id"]);
        assert_eq!(body["metadata"]["source_connector"], "http/orders");
    }
    let manifests = sidecar.manifest_requests();
    assert!(!manifests.is_empty());
    assert_eq!(
        manifests[0].header("authorization"),
        Some(format!("Bearer {SC_TOKEN}").as_str())
    );
    let d = gw.delivery(&id);
    assert_eq!(d["status"], "delivered", "{d}");
    assert_eq!(d["attempts"], 2);
    assert_eq!(d["last_http_status"], 200);
    run.never_shows(SC_TOKEN);
}

#[test]
fn an_object_reply_route_is_handed_back_unchanged() {
    let route = json!({"channel": "C1", "thread": {"ts": "1.2"}, "n": [1, null, true]});
    let sidecar = FakeSidecar::start();
    let gw = Gateway::start_with(&sidecar, &route, &["--handler", "echo"], &[]);
    let (d, run) = one_delivery(&gw, &[]);
    run.success();
    assert_eq!(d["status"], "delivered", "{d}");
    assert_eq!(sidecar.deliveries()[0].json()["reply_route"], route);
}

// ---------------------------------------------------------------------------------------------
// Reading the answer (SPEC §10.1)

/// One delivery answered `answer` first, drained once without `--ignore-backoff`.
fn answered(answer: Answer) -> (FakeSidecar, Gateway, Value, Run) {
    let sidecar = FakeSidecar::start();
    sidecar.script_deliver([answer]);
    let gw = Gateway::start(&sidecar);
    let (d, run) = one_delivery(&gw, &[]);
    (sidecar, gw, d, run)
}

fn assert_state(d: &Value, status: &str, code: &str, http_status: Value) {
    assert_eq!(d["status"], status, "{d}");
    assert_eq!(d["last_error_code"], code, "{d}");
    assert_eq!(d["last_http_status"], http_status, "{d}");
}

#[test]
fn committed_counts_only_with_a_2xx_status() {
    let (_s, _gw, d, _) = answered(fake_sidecar::json_answer(
        500,
        &json!({"status": "committed"}),
    ));
    assert_state(&d, "retrying", "http_status_500", json!(500));
    let (_s, _gw, d, run) = answered(fake_sidecar::json_answer(
        404,
        &json!({"status": "committed"}),
    ));
    run.status(1);
    assert_state(&d, "dead_lettered", "http_status_404", json!(404));
    let (_s, _gw, d, run) = answered(fake_sidecar::json_answer(
        202,
        &json!({"status": "committed"}),
    ));
    run.success();
    assert_eq!(d["status"], "delivered", "{d}");
    assert_eq!(d["last_http_status"], 202);
}

#[test]
fn body_statuses_are_honoured_on_any_http_status() {
    let (_s, _gw, d, _) = answered(fake_sidecar::retryable(200, "rate limited upstream"));
    assert_state(&d, "retrying", "sidecar_retryable_error", json!(200));
    assert!(d["last_error"]
        .as_str()
        .unwrap()
        .ends_with(": rate limited upstream"));
    let (_s, _gw, d, _) = answered(fake_sidecar::retryable(400, "later"));
    assert_state(&d, "retrying", "sidecar_retryable_error", json!(400));
    let (_s, _gw, d, run) = answered(fake_sidecar::terminal(200, "channel deleted"));
    run.status(1);
    assert_state(&d, "dead_lettered", "sidecar_terminal_error", json!(200));
    let (_s, _gw, d, _) = answered(fake_sidecar::terminal(503, "no"));
    assert_state(&d, "dead_lettered", "sidecar_terminal_error", json!(503));
}

#[test]
fn a_429_is_retried_after_its_retry_after() {
    // 120 s, longer than the policy's own 30 s backoff here.
    let (sidecar, gw, d, run) = answered(Answer::retry_after(429, "120"));
    run.success();
    assert_state(&d, "retrying", "http_status_429", json!(429));
    let refused = sidecar.deliveries()[0].clone();
    let next = d["next_attempt_at_ms"].as_i64().unwrap();
    assert!(
        next >= refused.at_ms + 120_000,
        "retry at {next} is earlier than 120 s after the 429 at {}",
        refused.at_ms
    );
    assert!(
        next <= refused.at_ms + 150_000,
        "retry at {next} is far too late"
    );
    gw.drain(&["--ignore-backoff"]).success();
    let after = sidecar.deliveries();
    assert_eq!(after.len(), 2);
    assert_eq!(key_of(&after[0]), key_of(&after[1]));
}

#[test]
fn garbage_answers_go_by_status_class() {
    let garbage = |status| Answer::Full {
        status,
        headers: vec![("Content-Type".into(), "text/html".into())],
        body: b"<html>oops</html>".to_vec(),
    };
    let (_s, _gw, d, _) = answered(garbage(200));
    assert_state(&d, "retrying", "sidecar_invalid_response", json!(200));
    let (_s, _gw, d, _) = answered(garbage(502));
    assert_state(&d, "retrying", "http_status_502", json!(502));
    let (_s, _gw, d, run) = answered(garbage(400));
    run.status(1);
    assert_state(&d, "dead_lettered", "http_status_400", json!(400));
    // An unknown status word is no answer either.
    let (_s, _gw, d, _) = answered(fake_sidecar::json_answer(200, &json!({"status": "ok"})));
    assert_state(&d, "retrying", "sidecar_invalid_response", json!(200));
}

#[test]
fn an_answer_over_64_kib_is_not_usable() {
    let (_s, _gw, d, _) = answered(Answer::Huge {
        status: 200,
        len: 64 * 1024 + 1,
    });
    assert_state(&d, "retrying", "sidecar_invalid_response", json!(200));
}

#[test]
fn redirects_are_not_followed() {
    let elsewhere = Receiver::start();
    let (sidecar, _gw, d, run) = answered(Answer::redirect(&elsewhere.url("/deliver")));
    run.status(1);
    assert_state(&d, "dead_lettered", "redirect_not_followed", json!(301));
    assert_eq!(sidecar.deliveries().len(), 1);
    assert_eq!(elsewhere.count(), 0, "the redirect was followed");
}

#[test]
fn a_closed_connection_is_retried_with_the_same_key() {
    let sidecar = FakeSidecar::start();
    sidecar.script_deliver([Answer::Close, Answer::Close]);
    let gw = Gateway::start(&sidecar);
    let (d, run) = one_delivery(&gw, &["--ignore-backoff"]);
    run.success();
    assert_eq!(d["status"], "delivered", "{d}");
    let requests = sidecar.deliveries();
    assert_eq!(requests.len(), 3, "{requests:?}");
    let keys: BTreeSet<String> = requests.iter().map(key_of).collect();
    assert_eq!(keys.len(), 1);
}

#[test]
fn a_hanging_sidecar_times_out_and_is_retried() {
    let sidecar = FakeSidecar::start();
    sidecar.script_deliver([Answer::Hang]);
    let gw = Gateway::start(&sidecar);
    // The delivery budget is 15 s: the first attempt ends there as a retryable timeout.
    let (d, run) = one_delivery(&gw, &[]);
    run.success();
    assert_state(&d, "retrying", "timeout", Value::Null);
    gw.drain(&["--ignore-backoff"]).success();
    assert_eq!(gw.delivery(&id_of(&d))["status"], "delivered");
    assert_eq!(sidecar.deliveries().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Manifest, connectors, configuration

#[test]
fn the_manifest_is_fetched_once_for_many_deliveries() {
    let sidecar = FakeSidecar::start();
    let gw = Gateway::start(&sidecar);
    for i in 0..6 {
        gw.ingest_and_wait(&format!("event {i}"), &format!("k{i}"));
    }
    let run = gw.drain(&[]);
    run.success();
    assert_eq!(run.json()["delivered"], 6, "{}", run.stdout());
    assert_eq!(sidecar.deliveries().len(), 6);
    assert_eq!(sidecar.manifest_fetches(), 1, "one fetch per 5 minutes");
}

#[test]
fn an_unavailable_manifest_is_retryable_and_sends_nothing() {
    for (manifest, detail) in [
        (Answer::Status(500), "HTTP 500"),
        (Answer::Close, "manifest request"),
        (
            fake_sidecar::json_answer(200, &json!({"instance_id": "x"})),
            "`protocol_version` is missing",
        ),
        // A manifest of another runtime protocol is not usable either.
        (
            fake_sidecar::json_answer(
                200,
                &json!({"protocol_version": 2, "instance_id": "x", "capabilities": {}}),
            ),
            "protocol_version 2",
        ),
    ] {
        let sidecar = FakeSidecar::start();
        sidecar.set_manifest_answer(manifest);
        let gw = Gateway::start(&sidecar);
        let (d, run) = one_delivery(&gw, &[]);
        run.success();
        assert_state(&d, "retrying", "sidecar_manifest_unavailable", Value::Null);
        let error = d["last_error"].as_str().unwrap();
        assert!(error.contains(detail), "{error}");
        assert!(sidecar.deliveries().is_empty());
        sidecar.set_manifest("fake-2", json!({}));
        gw.drain(&["--ignore-backoff"]).success();
        assert_eq!(gw.delivery(&id_of(&d))["status"], "delivered");
    }
}

#[test]
fn a_target_naming_a_removed_connector_is_terminal() {
    let sidecar = FakeSidecar::start();
    let gw = Gateway::start(&sidecar);
    let id = id_of(&gw.ingest_and_wait("to a connector that goes away", "k1"));
    // The drain reads a connector file without `sc` (nor any target naming it).
    let without = gw.sandbox.write(
        "without-sc.toml",
        "[[http_connectors]]\nname = \"orders\"\nallow_unauthenticated_ingress = true\n",
    );
    let run = gw
        .cmd()
        .arg("--connectors-config")
        .arg(&without)
        .args(["--json", "drain-deliveries"])
        .run();
    run.status(1);
    let d = gw.delivery(&id);
    assert_state(&d, "dead_lettered", "invalid_target", Value::Null);
    assert!(d["last_error"].as_str().unwrap().contains("`sc`"), "{d}");
    assert!(sidecar.deliveries().is_empty());
}

#[test]
fn a_drain_without_a_connector_file_retries_external_deliveries() {
    let sidecar = FakeSidecar::start();
    let gw = Gateway::start(&sidecar);
    let id = id_of(&gw.ingest_and_wait("no config", "k1"));
    let run = gw.cmd().args(["--json", "drain-deliveries"]).run();
    run.success();
    run.stderr_contains("1 external deliveries are open and no connector file was given");
    assert_eq!(run.json()["retried"], 1, "{}", run.stdout());
    let d = gw.delivery(&id);
    assert_state(&d, "retrying", "connector_config_unavailable", Value::Null);
    // --ignore-backoff would spend every attempt: refused.
    let run = gw
        .cmd()
        .args(["drain-deliveries", "--ignore-backoff"])
        .run();
    run.status(4);
    run.stderr_contains("--plugin http");
    assert_eq!(gw.delivery(&id)["attempts"], 1);
    assert!(sidecar.deliveries().is_empty());
    // With the file it goes out.
    gw.drain(&["--ignore-backoff"]).success();
    assert_eq!(gw.delivery(&id)["status"], "delivered");
}

// ---------------------------------------------------------------------------------------------
// Artifacts and the asset route

const PNG: &[u8] = b"\x89PNG\r\n\x1a\nnot really a png";

/// A gateway with the `none` handler: an event with one inline asset is posted to
/// `http/files`, claimed, and answered with a part referencing the asset (and `targets` when
/// given). Returns the gateway, the asset id and the delivery.
fn asset_delivery(sidecar: &FakeSidecar, targets: Option<Value>) -> (Gateway, String, Value) {
    let gw = Gateway::start_with(sidecar, &json!("{}"), &[], &[]);
    let body = json!({
        "idempotency_key": "with-asset",
        "input_items": [
            {"type": "text", "text": "see attached"},
            {
                "type": "inline_asset",
                "media_type": "image/png",
                "file_name": "pic.png",
                "data_base64": base64::engine::general_purpose::STANDARD.encode(PNG),
            }
        ],
    });
    let resp = post_bearer(&gw.daemon, "/v1/connectors/http/files", FILES_BEARER, &body);
    assert_eq!(resp.status, 202, "{}", resp.text());
    let run_id = resp.json()["run_id"].as_str().unwrap().to_string();
    let claim = gw
        .daemon
        .admin("POST", "/v1/runs/claim", Some(&json!({"lease_ms": 60000})));
    assert_eq!(claim.status, 200, "{}", claim.text());
    let claimed = claim.json();
    let asset_id = claimed["input"]["input_items"][1]["asset_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no asset id in {claimed}"))
        .to_string();
    let mut output = json!({
        "content": "here it is",
        "parts": [
            {"type": "text", "text": "here it is"},
            {"type": "asset_reference", "asset_id": asset_id},
        ],
    });
    if let Some(targets) = targets {
        output["reply_targets"] = targets;
    }
    let out = gw
        .daemon
        .admin("POST", &format!("/v1/runs/{run_id}/output"), Some(&output));
    assert_eq!(out.status, 201, "{}", out.text());
    let done = gw.daemon.admin(
        "POST",
        &format!("/v1/runs/{run_id}/complete"),
        Some(&json!({})),
    );
    assert_eq!(done.status, 200, "{}", done.text());
    let delivery = gw.delivery_of(&run_id);
    (gw, asset_id, delivery)
}

#[test]
fn artifacts_describe_the_referenced_assets_and_the_asset_route_serves_them() {
    let sidecar = FakeSidecar::start();
    sidecar.script_deliver([fake_sidecar::retryable(503, "later")]);
    let (gw, asset_id, delivery) = asset_delivery(&sidecar, None);
    let id = id_of(&delivery);

    // Pending: served with the shared token only.
    let ok = gw.asset("sc", &id, &asset_id, Some(SC_TOKEN));
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.body, PNG);
    assert_eq!(ok.header("content-type"), Some("image/png"));
    let no_token = gw.asset("sc", &id, &asset_id, None);
    assert_problem(&no_token, 401, "unauthorized");
    assert_problem(
        &gw.asset("sc", &id, &asset_id, Some(OTHER_TOKEN)),
        401,
        "unauthorized",
    );
    assert_problem(
        &gw.asset("sc", &id, &asset_id, Some(&gw.admin_token())),
        401,
        "unauthorized",
    );
    // Another connector (with its own right token), an unknown asset or delivery: 404.
    assert_problem(
        &gw.asset("other", &id, &asset_id, Some(OTHER_TOKEN)),
        404,
        "asset_not_found",
    );
    assert_problem(
        &gw.asset("sc", &id, "asset_nope", Some(SC_TOKEN)),
        404,
        "asset_not_found",
    );
    assert_problem(
        &gw.asset("sc", "dlv_nope", &asset_id, Some(SC_TOKEN)),
        404,
        "asset_not_found",
    );
    assert_problem(
        &gw.asset("nope", &id, &asset_id, Some(SC_TOKEN)),
        404,
        "connector_not_found",
    );

    // The retrying delivery (after one 503) is still pending: still served. The artifact
    // names the route.
    gw.drain(&[]).success();
    let first = sidecar.deliveries()[0].json();
    assert_eq!(
        first["artifacts"],
        json!([{
            "asset_id": asset_id,
            "media_type": "image/png",
            "file_name": "pic.png",
            "size": PNG.len(),
            "sha256": kheishctl::ingress::sha256_hex(PNG),
            "download_path": format!(
                "/v1/connectors/external/sc/deliveries/{id}/assets/{asset_id}/raw"
            ),
        }])
    );
    assert_eq!(first["parts"][1]["asset_id"], asset_id.as_str());
    let path = first["artifacts"][0]["download_path"].as_str().unwrap();
    let again = http::send(
        gw.daemon.addr,
        &http::request_bytes(
            gw.daemon.addr,
            "GET",
            path,
            &[("Authorization", format!("Bearer {SC_TOKEN}"))],
            b"",
        ),
    );
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.body, PNG);

    // Delivered: no longer served.
    gw.drain(&["--ignore-backoff"]).success();
    assert_eq!(gw.delivery(&id)["status"], "delivered");
    assert_problem(
        &gw.asset("sc", &id, &asset_id, Some(SC_TOKEN)),
        404,
        "asset_not_found",
    );
}

#[test]
fn artifacts_to_a_sidecar_without_attachments_out_dead_letter() {
    let sidecar = FakeSidecar::start();
    sidecar.set_manifest("fake-1", json!({"attachments_out": false}));
    let (gw, asset_id, delivery) = asset_delivery(&sidecar, None);
    let id = id_of(&delivery);
    gw.drain(&[]).status(1);
    let d = gw.delivery(&id);
    assert_state(
        &d,
        "dead_lettered",
        "attachments_not_supported",
        Value::Null,
    );
    assert!(sidecar.deliveries().is_empty());
    // Dead-lettered: the asset is no longer served.
    assert_problem(
        &gw.asset("sc", &id, &asset_id, Some(SC_TOKEN)),
        404,
        "asset_not_found",
    );
}

#[test]
fn the_asset_route_serves_only_the_connector_the_delivery_goes_to() {
    let sidecar = FakeSidecar::start();
    let other = json!([{
        "plugin": "external",
        "address": {"connector": "other", "route": {"to": "other"}},
    }]);
    let (gw, asset_id, delivery) = asset_delivery(&sidecar, Some(other));
    let id = id_of(&delivery);
    assert_problem(
        &gw.asset("sc", &id, &asset_id, Some(SC_TOKEN)),
        404,
        "asset_not_found",
    );
    let ok = gw.asset("other", &id, &asset_id, Some(OTHER_TOKEN));
    assert_eq!(ok.status, 200, "{}", ok.text());
    gw.drain(&[]).success();
    let sent = sidecar.deliveries();
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer {OTHER_TOKEN}").as_str())
    );
    assert_eq!(sent[0].json()["reply_route"], json!({"to": "other"}));
    assert!(sent[0].json()["artifacts"][0]["download_path"]
        .as_str()
        .unwrap()
        .starts_with("/v1/connectors/external/other/"));
}

impl Gateway {
    fn admin_token(&self) -> String {
        crate::support::daemon::ADMIN_TOKEN.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics and crash

#[test]
fn metrics_count_external_deliveries_and_manifest_failures() {
    let sidecar = FakeSidecar::start();
    sidecar.set_manifest_answer(Answer::Status(503));
    // The first delivery retries until the manifest is fixed: no circuit pause, no last attempt.
    let gw = Gateway::start_with(
        &sidecar,
        &json!("{}"),
        &["--handler", "echo", "--delivery-workers", "2"],
        &[
            FAST_RETRIES[0],
            FAST_RETRIES[1],
            ("KHEISH_DELIVERY_CIRCUIT_FAILURE_THRESHOLD", "0"),
            ("KHEISH_DELIVERY_MAX_ATTEMPTS", "1000"),
        ],
    );
    let id = id_of(&gw.ingest_and_wait("counted", "k1"));
    let metrics = || gw.daemon.admin("GET", "/metrics", None).text();
    let series = |result: &str| {
        format!("kheish_external_deliveries_total{{connector=\"external/sc\",result=\"{result}\"}}")
    };
    wait_until("a failed manifest fetch", DEADLINE, || {
        let text = metrics();
        match metric_sample(
            &text,
            "kheish_external_manifest_fetch_failures_total{connector=\"external/sc\"}",
        ) {
            Some(n) if n >= 1.0 => Ok(()),
            _ => Err(text),
        }
    });
    // The first delivery is its target's head (per-target FIFO), so it meets the scripted
    // refusal and the second one is committed.
    sidecar.script_deliver([fake_sidecar::terminal(200, "gone")]);
    let second = id_of(&gw.ingest_and_wait("committed", "k2"));
    sidecar.set_manifest("fake-1", json!({}));
    let text = wait_until("both deliveries settled", DEADLINE, || {
        let (a, b) = (gw.delivery(&id), gw.delivery(&second));
        if a["status"] == "dead_lettered" && b["status"] == "delivered" {
            Ok(metrics())
        } else {
            Err(format!("{} / {}", a["status"], b["status"]))
        }
    });
    let committed = metric_sample(&text, &series("committed")).unwrap_or(0.0);
    let terminal = metric_sample(&text, &series("terminal")).unwrap_or(0.0);
    let retryable = metric_sample(&text, &series("retryable")).unwrap_or(0.0);
    assert_eq!(committed, 1.0, "{text}");
    assert_eq!(terminal, 1.0, "{text}");
    assert!(
        retryable >= 1.0,
        "the manifest failures were retryable: {text}"
    );
    assert!(!text.contains(SC_TOKEN));
    let log = gw.daemon.stderr();
    assert!(
        !log.contains(SC_TOKEN) && !log.contains(OTHER_TOKEN),
        "a shared token reached the log"
    );
}

#[test]
fn kill_9_with_sidecar_deliveries_in_flight_loses_nothing() {
    const EVENTS: usize = 4;
    let sidecar = FakeSidecar::start();
    sidecar.set_deliver_default(Answer::Hold(Box::new(fake_sidecar::committed())));
    let sandbox = Sandbox::new();
    let config = config(&sidecar, &json!("{}"));
    // A short lease so the restarted daemon takes over the killed one's delivery quickly.
    let env = [("KHEISH_DELIVERY_LEASE_MS", "3000")];
    let args = ["--handler", "echo", "--delivery-workers", "2"];
    let daemon = start_daemon(&sandbox, &config, &args, &env);
    for i in 0..EVENTS {
        ingest(&daemon, &format!("event {i}"), &format!("k{i}"));
    }
    // One target, so one delivery is in flight (per-target FIFO), held by the sidecar.
    sidecar.receiver.wait_waiting(1, DEADLINE);
    let in_flight: Vec<String> = sidecar
        .deliveries()
        .iter()
        .map(|r| r.json()["delivery_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(in_flight.len(), 1, "{in_flight:?}");
    daemon.kill();
    sidecar.set_deliver_default(fake_sidecar::committed());
    sidecar.receiver.release();

    let daemon = start_daemon(&sandbox, &config, &args, &env);
    let all = wait_until(
        "every delivery to be delivered after the restart",
        Duration::from_secs(120),
        || {
            let resp = daemon.admin("GET", "/v1/deliveries?limit=500", None);
            let list = resp.json()["deliveries"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let done = list.iter().filter(|d| d["status"] == "delivered").count();
            if list.len() == EVENTS && done == EVENTS {
                Ok(list)
            } else {
                Err(format!("{done} of {} delivered", list.len()))
            }
        },
    );
    let mut by_id: BTreeMap<String, Vec<Recorded>> = BTreeMap::new();
    for r in sidecar.deliveries() {
        let id = r.json()["delivery_id"].as_str().unwrap().to_string();
        assert_eq!(key_of(&r), format!("kheish:{id}"), "{r:?}");
        by_id.entry(id).or_default().push(r);
    }
    let ids: BTreeSet<String> = all.iter().map(id_of).collect();
    assert_eq!(by_id.keys().cloned().collect::<BTreeSet<_>>(), ids);
    assert!(
        by_id[&in_flight[0]].len() >= 2,
        "the delivery in flight at the kill was sent again"
    );
    // Per-target order: first arrivals follow creation order (the listing is newest first).
    let created: Vec<String> = all.iter().rev().map(id_of).collect();
    let mut arrived: Vec<String> = Vec::new();
    for r in sidecar.deliveries() {
        let id = r.json()["delivery_id"].as_str().unwrap().to_string();
        if !arrived.contains(&id) {
            arrived.push(id);
        }
    }
    assert_eq!(arrived, created);
}
