//! Receipts, sessions and the rate limit of HTTP ingress, against the real daemon: concurrent
//! copies of one event make one run (SPEC §6.4), a replay answers the original session even
//! after routing changed, keyless connectors make a run per request and no receipt, new events
//! beyond the rate get 429 while duplicates still answer (§6.6), and sessions resolve by fixed
//! id, payload id or binding keys, or are refused without a write (§6.5).
//!
//! Nothing here sleeps: a reload is awaited by polling with `wait_until`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::daemon::Daemon;
use crate::support::db::StateDb;
use crate::support::http::{self, Response};
use crate::support::ingress::{
    assert_accepted, assert_duplicate, natural_session, post, post_bearer, signed_headers,
    start_gateway, without, written, BEARER, HMAC, ORDERS,
};
use crate::support::problem::{assert_problem, assert_problem_detail};
use crate::support::wait::wait_until;
use crate::support::Sandbox;

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
            http::request_bytes(addr, "POST", ORDERS, &signed_headers(ORDERS, body), body)
        })
        .collect();
    let answers: Vec<(usize, Response)> = std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .iter()
            .enumerate()
            .map(|(i, req)| scope.spawn(move || (i, http::send(addr, req))))
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
    let db = StateDb::open(&daemon.state_root);
    assert_eq!(db.count("receipts"), 1);
    assert_eq!(db.count("runs"), 1);
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
    let first = assert_accepted(&daemon.post_json(target, body), "http/keyless");
    let second = assert_accepted(&daemon.post_json(target, body), "http/keyless");
    assert_ne!(first.0, second.0);
    assert_eq!(first.1, second.1);
    let db = StateDb::open(&daemon.state_root);
    assert_eq!(db.count("receipts"), 0);
    assert_eq!(db.count("runs"), 2);
}

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
    let db = StateDb::open(&daemon.state_root);
    assert_eq!(db.count("receipts"), n_accepted);
    assert_eq!(db.count("runs"), n_accepted);
}

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
    assert_problem_detail(
        &send_to("strict", json!({"content": "x", "idempotency_key": "s1"})),
        409,
        "session_not_found",
        &strict_session,
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
    assert_problem_detail(
        &send_to("bound", json!({"content": "x", "idempotency_key": "b6"})),
        400,
        "session_unresolved",
        "binding_keys",
    );
    assert_eq!(written(&daemon), before);
}
