//! Observability through the real binary: `inspect-receipts` (table, `--json`, lookups, exit
//! codes, beside a running daemon), `GET /v1/receipts`, `GET /metrics`, and receipt retention
//! in `serve`. No sleeps: the daemon's answers are awaited with `wait_until`.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use kheishctl::ingress::sha256_hex;
use kheishctl::model::now_ms;

use crate::support::daemon::Daemon;
use crate::support::db::set_user_version;
use crate::support::problem::{assert_problem, assert_problem_detail};
use crate::support::wait::wait_until;
use crate::support::{metric_sample, Sandbox};

const ORDERS: &str = "[[http_connectors]]
name = \"orders\"
allow_unauthenticated_ingress = true
default_binding_keys = [\"orders\"]
[http_connectors.session_policy]
create_if_missing = true
";

const BODY: &str = r#"{"content":"hi","idempotency_key":"order-1"}"#;

const DAY_MS: i64 = 86_400_000;

/// Posts `BODY` and returns the accepted run id.
fn accept_one(daemon: &Daemon) -> String {
    let resp = daemon.post_json("/v1/connectors/http/orders", BODY);
    assert_eq!(resp.status, 202, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["status"], "accepted");
    body["run_id"].as_str().unwrap().to_string()
}

/// The stored receipt key of raw idempotency key `raw` on `http/orders` (SPEC §6.3).
fn orders_key(raw: &str) -> String {
    format!("http:orders:{}", &sha256_hex(raw.as_bytes())[..32])
}

fn receipts_of(json: &Value) -> &Vec<Value> {
    json["receipts"].as_array().expect("a `receipts` array")
}

#[test]
fn inspect_receipts_finds_an_accepted_event_beside_the_running_daemon() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox).config(ORDERS).start();
    let run_id = accept_one(&daemon);

    // Lookup by raw key: hashed the way ingress hashes it.
    let run = sandbox
        .cmd()
        .args([
            "inspect-receipts",
            "--connector",
            "http/orders",
            "--key",
            "order-1",
            "--json",
        ])
        .run();
    run.success();
    let json = run.json();
    let receipts = receipts_of(&json);
    assert_eq!(receipts.len(), 1, "{json:#}");
    let r = &receipts[0];
    assert_eq!(r["receipt_key"], orders_key("order-1"));
    assert_eq!(r["key_sha256"], sha256_hex(b"order-1"));
    assert_eq!(r["connector"], "http/orders");
    assert_eq!(r["run_id"], run_id.as_str());
    assert_eq!(r["status"], "submitted");
    assert_eq!(r["duplicate_hits"], 0);
    // The fingerprint is the full digest of the canonical payload (BODY is already canonical).
    assert_eq!(r["fingerprint"], sha256_hex(BODY.as_bytes()));
    let received = r["received_at"].as_str().unwrap();
    assert!(
        humantime::parse_rfc3339(received).is_ok(),
        "received_at {received:?} is not RFC 3339"
    );
    assert!(
        !run.stdout().contains("\"order-1\""),
        "raw key in the output"
    );

    // Lookup by run id.
    let by_run = sandbox
        .cmd()
        .args(["inspect-receipts", "--run", &run_id, "--json"])
        .run();
    by_run.success();
    assert_eq!(by_run.json(), json);
    // By key alone (SPEC §1.3: `--connector` is optional): every connector's receipts are
    // searched for the key's digest, as sent or trimmed.
    for raw in ["order-1", " order-1 "] {
        let by_key = sandbox
            .cmd()
            .args(["inspect-receipts", "--key", raw, "--json"])
            .run();
        by_key.success();
        assert_eq!(by_key.json(), json, "{raw:?}");
    }

    // A key nobody sent: exit 1, and the message shows only a hash prefix of it.
    let raw_missing = "missing-key-7f3a9c";
    sandbox
        .cmd()
        .args([
            "inspect-receipts",
            "--connector",
            "http/orders",
            "--key",
            raw_missing,
        ])
        .run()
        .status(1)
        .stdout_is("")
        .stderr_contains("no ingress receipt for connector `http/orders`")
        .stderr_contains(&sha256_hex(raw_missing.as_bytes())[..12])
        .never_shows(raw_missing);
    sandbox
        .cmd()
        .args(["inspect-receipts", "--key", raw_missing])
        .run()
        .status(1)
        .stdout_is("")
        .stderr_contains("no ingress receipt for any connector")
        .stderr_contains(&sha256_hex(raw_missing.as_bytes())[..12])
        .never_shows(raw_missing);
    sandbox
        .cmd()
        .args(["inspect-receipts", "--run", "run_nope", "--json"])
        .run()
        .status(1)
        .stderr_contains("run `run_nope`");

    // The human table: a header, then the row with a 12-digit fingerprint.
    let table = sandbox
        .cmd()
        .args(["inspect-receipts", "--connector", "http/orders"])
        .run();
    table.success();
    let stdout = table.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for column in [
        "RECEIVED",
        "CONNECTOR",
        "RECEIPT KEY",
        "FINGERPRINT",
        "STATUS",
        "RUN",
        "SESSION",
        "DUPLICATES",
    ] {
        assert!(lines[0].contains(column), "header {:?}", lines[0]);
    }
    assert!(lines[0].starts_with("RECEIVED "));
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[1], "http/orders");
    assert_eq!(row[2], orders_key("order-1"));
    assert_eq!(row[3], &sha256_hex(BODY.as_bytes())[..12]);
    assert_eq!(row[4], "submitted");
    assert_eq!(row[5], run_id);
    assert_eq!(row[7], "0");

    // The control plane answers with the same view.
    let api = daemon.admin(
        "GET",
        "/v1/receipts?connector=http/orders&key=order-1",
        None,
    );
    assert_eq!(api.status, 200, "{}", api.text());
    assert_eq!(api.json(), json);
    let by_key = daemon.admin("GET", "/v1/receipts?key=order-1", None);
    assert_eq!(by_key.json(), json, "{}", by_key.text());
    let all = daemon.admin("GET", &format!("/v1/receipts?run={run_id}&limit=5"), None);
    assert_eq!(all.json(), json);
}

#[test]
fn the_receipts_api_checks_its_parameters_and_the_admin_token() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox).config(ORDERS).start();

    let empty = daemon.admin("GET", "/v1/receipts", None);
    assert_eq!(empty.status, 200, "{}", empty.text());
    assert_eq!(empty.json(), serde_json::json!({ "receipts": [] }));

    for (query, parameter) in [
        ("connector=orders", "connector"),
        ("since=someday", "since"),
        ("limit=0", "limit"),
        ("colour=red", "colour"),
    ] {
        let resp = daemon.admin("GET", &format!("/v1/receipts?{query}"), None);
        let problem = assert_problem_detail(&resp, 400, "invalid_query", parameter);
        assert_eq!(problem["parameter"], parameter, "{query}");
    }

    let anonymous = daemon.request("GET", "/v1/receipts", &[], b"");
    assert_problem(&anonymous, 401, "unauthorized");
}

#[test]
fn metrics_count_ingress_outcomes_and_request_latency() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox).config(ORDERS).start();
    accept_one(&daemon);
    let dup = daemon.post_json("/v1/connectors/http/orders", BODY);
    assert_eq!(dup.status, 200, "{}", dup.text());
    assert_eq!(dup.json()["status"], "duplicate");

    let resp = daemon.admin("GET", "/metrics", None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        resp.header("Content-Type")
            .is_some_and(|ct| ct.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        resp.header("Content-Type")
    );
    let text = resp.text();
    let route = "/v1/connectors/http/{name}";
    for line in [
        "# TYPE kheish_ingress_requests_total counter".to_string(),
        r#"kheish_ingress_requests_total{connector="http/orders",outcome="accepted"} 1"#.into(),
        r#"kheish_ingress_requests_total{connector="http/orders",outcome="duplicate"} 1"#.into(),
        r#"kheish_ingress_requests_total{connector="http/orders",outcome="conflict"} 0"#.into(),
        "# TYPE kheish_http_request_duration_seconds histogram".into(),
        format!(r#"kheish_http_request_duration_seconds_bucket{{route="{route}",le="+Inf"}} 2"#),
        format!(r#"kheish_http_request_duration_seconds_count{{route="{route}"}} 2"#),
        format!(r#"kheish_http_requests_total{{route="{route}",status="202"}} 1"#),
        format!(r#"kheish_http_requests_total{{route="{route}",status="200"}} 1"#),
        "# TYPE kheish_store_commits_total counter".into(),
        "# TYPE kheish_store_committed_events_total counter".into(),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing line {line:?} in\n{text}"
        );
    }
    assert!(
        text.lines().any(|l| l.starts_with(&format!(
            r#"kheish_http_request_duration_seconds_sum{{route="{route}"}} "#
        ))),
        "{text}"
    );
    // One accepted event was committed (the duplicate wrote nothing durable of its own).
    let counter = |name: &str| -> f64 {
        metric_sample(&text, name).unwrap_or_else(|| panic!("no {name} sample in\n{text}"))
    };
    assert!(counter("kheish_store_commits_total") >= 1.0, "{text}");
    assert!(
        counter("kheish_store_committed_events_total") >= 1.0,
        "{text}"
    );

    // Route templates only: no connector name from a raw path, no key, no admin token.
    assert!(!text.contains("/v1/connectors/http/orders"), "{text}");
    assert!(!text.contains("order-1"), "{text}");
    assert!(
        !text.contains(crate::support::daemon::ADMIN_TOKEN),
        "{text}"
    );

    let anonymous = daemon.request("GET", "/metrics", &[], b"");
    assert_problem(&anonymous, 401, "unauthorized");
}

/// Creates the state root with this binary's schema and inserts receipts (with the session and
/// run rows their foreign keys need) directly, as an older daemon would have left them.
fn seed_receipts(root: &Path, rows: &[(&str, &str, i64)]) {
    drop(kheishctl::store::Store::open(root).expect("creating the state root"));
    let conn = rusqlite::Connection::open(root.join("state.db")).unwrap();
    conn.execute(
        "INSERT INTO sessions (session_id, created_at_ms, updated_at_ms, created_by,
             capability_scope, credential_scope, reply_targets, metadata)
         VALUES ('seeded', 0, 0, 'test', '{}', '{}', '[]', '{}')",
        [],
    )
    .unwrap();
    for (name, raw_key, at_ms) in rows {
        let run_id = format!("run_seeded_{name}_{raw_key}");
        conn.execute(
            "INSERT INTO runs (run_id, session_id, connector_kind, connector_name, status,
                 actor_id, input, metadata, reply_targets, policy, created_at_ms, updated_at_ms)
             VALUES (?1, 'seeded', 'http', ?2, 'completed', 'a', '{}', '{}', '[]', '{}', ?3, ?3)",
            rusqlite::params![run_id, name, at_ms],
        )
        .unwrap();
        let digest = sha256_hex(raw_key.as_bytes());
        conn.execute(
            "INSERT INTO receipts (receipt_key, connector_kind, connector_name, key_sha256,
                 fingerprint, status, run_id, session_id, received_at_ms)
             VALUES (?1, 'http', ?2, ?3, ?4, 'submitted', ?5, 'seeded', ?6)",
            rusqlite::params![
                format!("http:{name}:{}", &digest[..32]),
                name,
                digest,
                "0".repeat(64),
                run_id,
                at_ms
            ],
        )
        .unwrap();
    }
}

/// The receipt keys `inspect-receipts --json ARGS` lists, newest first.
fn listed_keys(sandbox: &Sandbox, args: &[&str]) -> Vec<String> {
    let run = sandbox
        .cmd()
        .args(["inspect-receipts", "--json"])
        .args(args)
        .run();
    run.success();
    receipts_of(&run.json())
        .iter()
        .map(|r| r["receipt_key"].as_str().unwrap().to_string())
        .collect()
}

/// Every stored receipt key, newest first.
fn stored_keys(sandbox: &Sandbox) -> Vec<String> {
    listed_keys(sandbox, &["--limit", "1000"])
}

#[test]
fn serve_prunes_expired_receipts_and_enforces_the_per_connector_cap() {
    let sandbox = Sandbox::new();
    let now = now_ms();
    seed_receipts(
        &sandbox.state_root(),
        &[
            ("orders", "expired", now - 8 * DAY_MS),
            ("orders", "recent-1", now - 3000),
            ("orders", "recent-2", now - 2000),
            ("orders", "recent-3", now - 1000),
            ("billing", "kept", now - 5000),
        ],
    );
    assert_eq!(stored_keys(&sandbox).len(), 5);

    let daemon = Daemon::builder(&sandbox)
        .config(ORDERS)
        .args(&[
            "--receipt-retention",
            "7d",
            "--receipt-max-per-connector",
            "2",
        ])
        .start();
    let billing_key = format!("http:billing:{}", &sha256_hex(b"kept")[..32]);
    let expected = vec![orders_key("recent-3"), orders_key("recent-2"), billing_key];
    wait_until(
        "retention to prune at start",
        Duration::from_secs(10),
        || {
            let keys = stored_keys(&sandbox);
            if keys == expected {
                Ok(())
            } else {
                Err(format!("{keys:?}"))
            }
        },
    );
    // Logged once at info, with the counts; and the retention thread does not hold up shutdown.
    wait_until("the prune log line", Duration::from_secs(10), || {
        let log = daemon.stderr();
        let line = "receipt retention: pruned 2 receipts (1 older than 7days, 1 over the per-connector cap of 2)";
        if log.contains(line) {
            Ok(())
        } else {
            Err(log)
        }
    });
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn without_a_state_root_listings_are_empty_and_lookups_fail() {
    let sandbox = Sandbox::new();
    sandbox
        .cmd()
        .args(["inspect-receipts", "--json"])
        .run()
        .success()
        .stdout_is("{\n  \"receipts\": []\n}\n");
    sandbox
        .cmd()
        .args(["inspect-receipts", "--connector", "http/orders"])
        .run()
        .success()
        .stdout_is("");
    sandbox
        .cmd()
        .args([
            "inspect-receipts",
            "--connector",
            "http/orders",
            "--key",
            "k",
        ])
        .run()
        .status(1);
    sandbox
        .cmd()
        .args(["inspect-receipts", "--run", "run_1"])
        .run()
        .status(1);
    assert!(
        !sandbox.state_root().exists(),
        "inspect-receipts created the state root"
    );
}

#[test]
fn inspect_receipts_usage_errors_exit_2() {
    let sandbox = Sandbox::new();
    // `--key` alone is a lookup (SPEC §1.3), not a usage error: nothing found is exit 1.
    sandbox
        .cmd()
        .args(["inspect-receipts", "--key", "order-1"])
        .run()
        .status(1);
    sandbox
        .cmd()
        .args(["inspect-receipts", "--since", "someday"])
        .run()
        .status(2)
        .stderr_contains("`--since`");
    sandbox
        .cmd()
        .args(["inspect-receipts", "--connector", "orders"])
        .run()
        .status(2);
}

#[test]
fn inspect_receipts_refuses_a_newer_schema_with_exit_4() {
    let sandbox = Sandbox::new();
    seed_receipts(&sandbox.state_root(), &[("orders", "k", now_ms())]);
    let db = sandbox.state_root().join("state.db");
    set_user_version(&sandbox.state_root(), 999);
    let before = std::fs::read(&db).unwrap();
    sandbox
        .cmd()
        .args(["inspect-receipts", "--json"])
        .run()
        .status(4)
        .stdout_is("")
        .stderr_contains("newer than this kheishctl supports");
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

#[test]
fn inspect_receipts_filters_and_limits_seeded_receipts() {
    let sandbox = Sandbox::new();
    let now = now_ms();
    seed_receipts(
        &sandbox.state_root(),
        &[
            ("orders", "a", now - 3 * DAY_MS),
            ("orders", "b", now - 2000),
            ("billing", "c", now - 1000),
        ],
    );
    let keys = |args: &[&str]| listed_keys(&sandbox, args);
    let billing_c = format!("http:billing:{}", &sha256_hex(b"c")[..32]);
    assert_eq!(
        keys(&[]),
        [billing_c.clone(), orders_key("b"), orders_key("a")]
    );
    assert_eq!(
        keys(&["--connector", "http/orders"]),
        [orders_key("b"), orders_key("a")]
    );
    assert_eq!(
        keys(&["--since", "1d"]),
        [billing_c.clone(), orders_key("b")]
    );
    assert_eq!(keys(&["--limit", "1"]), [billing_c]);
    assert_eq!(
        keys(&[
            "--session",
            "seeded",
            "--connector",
            "http/billing",
            "--since",
            "1h"
        ])
        .len(),
        1
    );
    assert!(keys(&["--session", "other"]).is_empty());
    // Keys are trimmed before hashing, as ingress trims them.
    assert_eq!(
        keys(&["--connector", "http/orders", "--key", "  b "]),
        [orders_key("b")]
    );
}
