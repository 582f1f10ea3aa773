//! HTTP ingress authentication against the real daemon (SPEC §7.2, §15): SPEC §7.2's fixed
//! vector (including its path with a query string) is accepted once and replays answer the
//! original run; every bearer and HMAC failure is a 401 problem that names the failed check,
//! tells no expected signature and writes nothing; and planted secrets (bearer, HMAC, secret
//! store, admin token, and near misses of each) never appear in logs, responses, `/metrics`,
//! `inspect-receipts` or the state root.
//!
//! Nothing here sleeps: the daemon is stopped with `Daemon::stop`, which polls its log.

use std::collections::BTreeSet;

use serde_json::json;

use kheishctl::ingress::auth::kheish_v1_signature;
use kheishctl::ingress::{receipt_key, sha256_hex};
use kheishctl::model::ConnectorKind;

use crate::support::daemon::Daemon;
use crate::support::http::Response;
use crate::support::ingress::{
    assert_accepted, assert_duplicate, check_refusals, header_value, natural_session, now_secs,
    plus, post, post_bearer, post_signed, replaced, signed_headers, signed_headers_with,
    start_gateway, without, written, Headers, Refusal, BEARER, GATEWAY, HMAC, ORDERS,
};
use crate::support::problem::assert_problem_detail;
use crate::support::{files_under, Sandbox};

/// SPEC §7.2's fixed vector.
const VECTOR_TARGET: &str = "/v1/connectors/http/orders?source=a%2Fb&attempt=1";
const VECTOR_TS: i64 = 1_710_000_000;
const VECTOR_BODY: &str =
    r#"{"content":"hello","idempotency_key":"order-123","metadata":{"k":"v"}}"#;
const VECTOR_SIGNATURE: &str =
    "v1=f13a4b8c5099a2ffc6b8a913e0998d6765d61a693c27f594ca34ede2e0d4e557";

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
    assert_problem_detail(
        &post(&daemon, VECTOR_TARGET, &vector, body),
        401,
        "unauthorized",
        "stale",
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
    let conflict = assert_problem_detail(
        &post_signed(&daemon, VECTOR_TARGET, changed),
        409,
        "idempotency_conflict",
        &original.0,
    );
    assert_eq!(conflict["run_id"], original.0.as_str(), "{conflict}");

    // Signing a different target than the one sent fails: the query and its encoding are
    // covered.
    for signed_target in [ORDERS, "/v1/connectors/http/orders?source=a/b&attempt=1"] {
        let headers = signed_headers_with(BEARER, HMAC, signed_target, now_secs(), body);
        assert_problem_detail(
            &post(&daemon, VECTOR_TARGET, &headers, body),
            401,
            "unauthorized",
            "mismatch",
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
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("/v1/connectors/http/{name}"), "{stderr}");
    for private in ["source=a%2Fb", "order-123", BEARER, HMAC] {
        assert!(!stderr.contains(private), "{private:?} in\n{stderr}");
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
fn planted_secrets_never_appear_in_logs_responses_metrics_or_the_state_root() {
    const P_BEARER: &str = "pl4nted-bearer-Zq8XkR2mW7vN5cJ1";
    const P_HMAC: &str = "pl4nted-hmac-Lp3TgY6sB9dF0hQ4";
    const P_VAULT: &str = "pl4nted-vault-Wm5NcX8kE2rA7uS3";
    const P_ADMIN: &str = "pl4nted-admin-Hj4VbK1oP6yT9eG2";
    const VAULT_REF: &str = "connectors.http.vault.bearer_token";
    let sandbox = Sandbox::new();
    sandbox.store_secret(VAULT_REF, P_VAULT);
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
        let resp = daemon.admin_as(&wrong, "GET", "/v1/receipts");
        assert_eq!(resp.status, 401, "{}", resp.text());
        responses.push(resp);
    }
    for target in ["/metrics", "/v1/receipts?limit=500", "/v1/runs?limit=500"] {
        let resp = daemon.admin_as(P_ADMIN, "GET", target);
        assert_eq!(resp.status, 200, "{target}: {}", resp.text());
        responses.push(resp);
    }
    let metrics = daemon.admin_as(P_ADMIN, "GET", "/metrics");
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
    let (code, stderr) = daemon.stop();
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
