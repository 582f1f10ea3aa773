//! `serve` Slack Events API ingress (SPEC §8, §6): signatures (and `kheishctl sign --scheme
//! slack` driving ingress), url_verification, app_rate_limited, ignored events with their
//! reasons, runs with scope, receipts, sessions, binding keys and self reply targets, Slack
//! retries deduplicated, Enterprise Grid allowlists including `authorizations[]`, the per
//! channel rate limit, file downloads (and every way one is skipped), metrics, and every
//! ingress-side bad input of issue 13, each refused without writing anything.

use serde_json::{json, Value};

use kheishctl::ingress::sha256_hex;

use crate::support::db::StateDb;
use crate::support::fake_slack::{FakeSlack, Reply};
use crate::support::ingress::{now_secs, written};
use crate::support::metric_sample;
use crate::support::problem::{assert_problem, assert_problem_detail};
use crate::support::slack::*;
use crate::support::Sandbox;

fn metrics(daemon: &crate::support::daemon::Daemon) -> String {
    let resp = daemon.admin("GET", "/metrics", None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.text()
}

fn run(daemon: &crate::support::daemon::Daemon, run_id: &str) -> Value {
    let resp = daemon.admin("GET", &format!("/v1/runs/{run_id}"), None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    v.get("run").cloned().unwrap_or(v)
}

fn accepted(resp: &crate::support::http::Response, connector: &str) -> (String, String) {
    assert_eq!(resp.status, 202, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["status"], "accepted", "{v}");
    assert_eq!(v["connector"], connector, "{v}");
    (
        v["run_id"].as_str().unwrap().to_string(),
        v["session_id"].as_str().unwrap().to_string(),
    )
}

#[test]
fn a_channel_message_becomes_a_run_and_slack_retries_are_duplicates() {
    let (_fake, _sandbox, daemon) = start(&[]);
    let payload = envelope(
        "Ev100",
        message("C1", "1700000001.000100", "hello from slack"),
    );
    let (run_id, session) = accepted(&post(&daemon, "support", &payload), "slack/support");
    assert_eq!(session, "slack:support:team:T1:C1:1700000001.000100");

    // Slack's retry of the same delivery (X-Slack-Retry-Num) is the original run.
    let body = payload.to_string().into_bytes();
    let mut headers = signed_headers(&body);
    headers.push(("X-Slack-Retry-Num".into(), "1".into()));
    headers.push(("X-Slack-Retry-Reason".into(), "http_timeout".into()));
    let retry = post_raw(&daemon, "support", &headers, &body);
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.json()["status"], "duplicate");
    assert_eq!(retry.json()["run_id"], run_id.as_str());

    let r = run(&daemon, &run_id);
    assert_eq!(r["actor_id"], "U123", "{r}");
    assert_eq!(r["input"]["content"], "hello from slack", "{r}");
    let m = &r["metadata"];
    let raw = "team:T1:Ev100";
    let expected_key = format!("slack:support:{}", &sha256_hex(raw.as_bytes())[..32]);
    assert_eq!(m["connector_ingress_key"], expected_key.as_str(), "{m}");
    assert_eq!(
        m["slack_ingress_key_sha256"],
        sha256_hex(raw.as_bytes()).as_str()
    );
    assert_eq!(m["slack_ingress_fingerprint"].as_str().unwrap().len(), 64);
    assert_eq!(m["slack_channel_id"], "C1");
    assert_eq!(m["slack_team_id"], "T1");
    assert_eq!(m["slack_event_id"], "Ev100");
    let targets = r["reply_targets"].as_array().unwrap();
    assert_eq!(targets.len(), 1, "{r}");
    assert_eq!(targets[0]["plugin"], "slack");
    let address: Value = serde_json::from_str(targets[0]["address"].as_str().unwrap()).unwrap();
    assert_eq!(
        address,
        json!({"connector": "support", "team_id": "T1", "channel_id": "C1", "thread_ts": "1700000001.000100"})
    );

    // A reply in the thread lands in the same session; its own event id makes a new run.
    let reply = envelope(
        "Ev101",
        thread_reply("C1", "1700000002.000200", "1700000001.000100", "follow-up"),
    );
    let (second, same) = accepted(&post(&daemon, "support", &reply), "slack/support");
    assert_ne!(second, run_id);
    assert_eq!(same, session);
    // The thread's natural id is bound through the session row itself: no binding row (the
    // connector has no additional binding keys).
    assert_eq!(
        StateDb::open(&daemon.state_root).count("session_bindings"),
        0
    );
    // The same event id with another body is a conflict.
    let changed = envelope("Ev100", message("C1", "1700000001.000100", "edited"));
    assert_problem(
        &post(&daemon, "support", &changed),
        409,
        "idempotency_conflict",
    );
    let db = StateDb::open(&daemon.state_root);
    assert_eq!(db.count("runs"), 2);
    assert_eq!(db.count("receipts"), 2);

    let text = metrics(&daemon);
    let series = |outcome: &str| {
        metric_sample(
            &text,
            &format!(
                r#"kheish_ingress_requests_total{{connector="slack/support",outcome="{outcome}"}}"#
            ),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(series("accepted"), 2.0, "{text}");
    assert_eq!(series("duplicate"), 1.0, "{text}");
    assert_eq!(series("conflict"), 1.0, "{text}");
}

#[test]
fn a_message_without_event_id_is_keyed_by_channel_and_ts() {
    let (_fake, _sandbox, daemon) = start(&[]);
    let mut payload = envelope("x", message("C7", "1700000003.000300", "no id"));
    payload.as_object_mut().unwrap().remove("event_id");
    let (run_id, _) = accepted(&post(&daemon, "support", &payload), "slack/support");
    let raw = "team:T1:C7:1700000003.000300";
    let m = &run(&daemon, &run_id)["metadata"];
    assert_eq!(
        m["connector_ingress_key"],
        format!("slack:support:{}", &sha256_hex(raw.as_bytes())[..32]).as_str()
    );
}

#[test]
fn kheishctl_sign_produces_what_ingress_verifies() {
    let (_fake, sandbox, daemon) = start(&[]);
    let payload = envelope(
        "Ev200",
        message("C1", "1700000010.000100", "signed by the CLI"),
    );
    let body_path = sandbox.write("event.json", payload.to_string());
    let run = sandbox
        .cmd()
        .env("SLACK_SIGNING_FOR_SIGN", SIGNING)
        .args([
            "sign",
            "--scheme",
            "slack",
            "--secret-env",
            "SLACK_SIGNING_FOR_SIGN",
            "--format",
            "headers",
            "--body",
        ])
        .arg(&body_path)
        .run();
    run.success().never_shows(SIGNING);
    let headers: Vec<(String, String)> = run
        .stdout()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    assert!(
        headers.iter().any(|(k, _)| k == "X-Slack-Signature"),
        "{headers:?}"
    );
    let mut with_type = headers.clone();
    with_type.push(("Content-Type".into(), "application/json".into()));
    let body = payload.to_string().into_bytes();
    accepted(
        &post_raw(&daemon, "support", &with_type, &body),
        "slack/support",
    );
    // The same headers over another body do not verify.
    let other = envelope("Ev201", message("C1", "1700000010.000100", "tampered")).to_string();
    assert_problem(
        &post_raw(&daemon, "support", &with_type, other.as_bytes()),
        401,
        "unauthorized",
    );
}

#[test]
fn url_verification_is_answered_after_the_signature_and_before_allowlists() {
    let (_fake, _sandbox, daemon) = start(&[]);
    // `grid` restricts app, enterprise, team and channel; the challenge names none of them.
    let resp = post(
        &daemon,
        "grid",
        &url_verification("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json(),
        json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
    );
    // A bad signature gets no challenge.
    let body = url_verification("abc").to_string().into_bytes();
    let mut headers = signed_headers(&body);
    headers[2].1 = format!("v0={}", "0".repeat(64));
    let refused = post_raw(&daemon, "grid", &headers, &body);
    assert_problem(&refused, 401, "unauthorized");
    assert!(!refused.text().contains("abc"));
    // A verification without a challenge is malformed.
    let mut broken = url_verification("x");
    broken.as_object_mut().unwrap().remove("challenge");
    assert_problem(&post(&daemon, "grid", &broken), 400, "invalid_payload");
}

#[test]
fn app_rate_limited_is_authenticated_and_allowlist_checked_and_creates_no_run() {
    let (_fake, _sandbox, daemon) = start(&[]);
    let resp = post(&daemon, "grid", &app_rate_limited("T1"));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json(),
        json!({"ignored": true, "type": "app_rate_limited", "minute_rate_limited": 1_518_467_820})
    );
    assert_problem_detail(
        &post(&daemon, "grid", &app_rate_limited("T9")),
        403,
        "forbidden",
        "allowed_team_ids",
    );
    let body = app_rate_limited("T1").to_string();
    let unsigned = post_raw(
        &daemon,
        "grid",
        &[("Content-Type".into(), "application/json".into())],
        body.as_bytes(),
    );
    assert_problem(&unsigned, 401, "unauthorized");
    assert_eq!(StateDb::open(&daemon.state_root).count("runs"), 0);
}

#[test]
fn bots_other_subtypes_events_and_envelopes_are_ignored_with_their_reason() {
    let (_fake, _sandbox, daemon) = start(&[]);
    let mut human_with_bot_id = message("C1", "1700000020.000001", "via app");
    human_with_bot_id["bot_id"] = json!("B1");
    let mut join = message("C1", "1700000020.000002", "joined");
    join["subtype"] = json!("channel_join");
    let reaction = json!({"type": "reaction_added", "user": "U123", "reaction": "thumbsup", "item": {"type": "message", "channel": "C1", "ts": "1700000020.000001"}, "event_ts": "1700000020.000003"});
    let cases = [
        (
            envelope("Ev1", bot_message("C1", "1700000020.000000")),
            "bot_message",
        ),
        (envelope("Ev2", human_with_bot_id), "bot_message"),
        (envelope("Ev3", join), "unsupported_message_subtype"),
        (envelope("Ev4", reaction), "unsupported_event"),
        (
            json!({"type": "block_actions", "team": {"id": "T1"}}),
            "unsupported_envelope",
        ),
    ];
    for (payload, reason) in cases {
        let resp = post(&daemon, "support", &payload);
        assert_eq!(resp.status, 200, "{reason}: {}", resp.text());
        assert_eq!(resp.json(), json!({"ignored": true, "reason": reason}));
    }
    assert_eq!(StateDb::open(&daemon.state_root).count("runs"), 0);
    let text = metrics(&daemon);
    assert_eq!(
        metric_sample(
            &text,
            r#"kheish_ingress_requests_total{connector="slack/support",outcome="ignored"}"#
        ),
        Some(5.0),
        "{text}"
    );
}

#[test]
fn bad_signatures_and_bodies_are_refused_without_writing() {
    let (_fake, _sandbox, daemon) = start(&[]);
    let before = written(&daemon);
    let body = envelope("Ev9", message("C1", "1700000030.000001", "x"))
        .to_string()
        .into_bytes();
    let good = signed_headers(&body);
    let now = now_secs();
    let drop_header = |name: &str| -> Vec<(String, String)> {
        good.iter().filter(|(k, _)| k != name).cloned().collect()
    };
    let mut dup_sig = good.clone();
    dup_sig.push(good[2].clone());
    let mut dup_ts = good.clone();
    dup_ts.push(good[1].clone());
    let mut malformed = good.clone();
    malformed[2].1 = good[2].1.replacen("v0=", "v1=", 1);
    let mut short = good.clone();
    short[2].1 = "v0=abc".into();
    let mut bad_ts = good.clone();
    bad_ts[1].1 = "yesterday".into();
    type Headers = Vec<(String, String)>;
    let cases: Vec<(&str, Headers, &str)> = vec![
        (
            "missing timestamp",
            drop_header("X-Slack-Request-Timestamp"),
            "X-Slack-Request-Timestamp",
        ),
        (
            "missing signature",
            drop_header("X-Slack-Signature"),
            "X-Slack-Signature",
        ),
        ("stale", signed_headers_at(&body, now - 301), "timestamp"),
        ("future", signed_headers_at(&body, now + 301), "timestamp"),
        ("malformed", malformed, "signature"),
        ("short", short, "signature"),
        ("timestamp not a number", bad_ts, "timestamp"),
        ("duplicated signature", dup_sig, "X-Slack-Signature"),
        ("duplicated timestamp", dup_ts, "X-Slack-Request-Timestamp"),
    ];
    for (what, headers, names) in cases {
        let resp = post_raw(&daemon, "support", &headers, &body);
        let v = assert_problem(&resp, 401, "unauthorized");
        // Slack keeps retrying a bad signature: the secret may be mid-rotation.
        assert_eq!(resp.header("x-slack-no-retry"), None, "{what}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains(&names.to_lowercase()),
            "{what}: {v}"
        );
    }
    let unknown = post_raw(&daemon, "no-such-connector", &good, &body);
    assert_problem(&unknown, 404, "connector_not_found");
    // A connector may still appear (the runtime store): Slack keeps retrying.
    assert_eq!(unknown.header("x-slack-no-retry"), None);
    // Within the window both ways.
    let edge = envelope("Ev10", message("C1", "1700000030.000002", "edge"))
        .to_string()
        .into_bytes();
    assert_eq!(
        post_raw(
            &daemon,
            "support",
            &signed_headers_at(&edge, now - 250),
            &edge
        )
        .status,
        202
    );

    let signed = |bytes: &[u8]| post_raw(&daemon, "support", &signed_headers(bytes), bytes);
    assert_problem_detail(
        &signed(b"{\"type\":\"event_callback\",\"x\":\"\xff\xfe\"}"),
        400,
        "invalid_payload",
        "UTF-8",
    );
    let not_json = signed(b"{not json");
    assert_problem(&not_json, 400, "invalid_json");
    // A payload Slack cannot fix by re-sending tells Slack not to retry.
    assert_eq!(not_json.header("x-slack-no-retry"), Some("1"));
    assert_problem(&signed(b"[1,2]"), 400, "invalid_payload");
    let mut no_event = envelope("Ev11", json!({}));
    no_event.as_object_mut().unwrap().remove("event");
    let mut no_channel = message("C1", "1700000030.000003", "x");
    no_channel.as_object_mut().unwrap().remove("channel");
    let mut no_ts = message("C1", "1700000030.000004", "x");
    no_ts.as_object_mut().unwrap().remove("ts");
    for (payload, path) in [
        (no_event, "$.event"),
        (envelope("Ev12", no_channel), "$.event.channel"),
        (envelope("Ev13", no_ts), "$.event.ts"),
        (json!({"event": {}}), "$.type"),
    ] {
        let v = assert_problem(
            &signed(payload.to_string().as_bytes()),
            400,
            "invalid_payload",
        );
        assert_eq!(v["path"], path, "{v}");
    }
    // A message with no text and no files has no content (SPEC §6.7), whatever else it
    // carries; Slack is told not to re-send it.
    let mut blocks_only = message("C1", "1700000030.000005", "");
    blocks_only["blocks"] = json!([{"type": "divider"}]);
    for event in [message("C1", "1700000030.000006", "  "), blocks_only] {
        let empty = signed(envelope("Ev14", event).to_string().as_bytes());
        assert_problem(&empty, 400, "missing_content");
        assert_eq!(empty.header("x-slack-no-retry"), Some("1"));
    }
    let after = written(&daemon);
    // Only the in-window event was written.
    assert_ne!(before, after);
    assert_eq!(StateDb::open(&daemon.state_root).count("runs"), 1);
}

#[test]
fn enterprise_grid_scope_and_every_allowlist() {
    let (_fake, _sandbox, daemon) = start(&[]);
    let event = message("C2", "1700000040.000001", "grid hello");
    let (run_id, session) = accepted(
        &post(&daemon, "grid", &grid_envelope("EvG1", "T2", event.clone())),
        "slack/grid",
    );
    assert_eq!(
        session,
        "slack:grid:enterprise:E1:team:T2:C2:1700000040.000001"
    );
    let r = run(&daemon, &run_id);
    let address: Value =
        serde_json::from_str(r["reply_targets"][0]["address"].as_str().unwrap()).unwrap();
    assert_eq!(
        address,
        json!({"connector": "grid", "enterprise_id": "E1", "team_id": "T2", "channel_id": "C2", "thread_ts": "1700000040.000001"})
    );
    let raw = "enterprise:E1:team:T2:EvG1";
    assert_eq!(
        r["metadata"]["connector_ingress_key"],
        format!("slack:grid:{}", &sha256_hex(raw.as_bytes())[..32]).as_str()
    );

    let before = StateDb::open(&daemon.state_root).count("runs");
    let with = |mutate: &dyn Fn(&mut Value)| {
        let mut p = grid_envelope("EvG2", "T1", message("C1", "1700000040.000002", "x"));
        mutate(&mut p);
        p
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "app",
            with(&|p| p["api_app_id"] = json!("A9")),
            "allowed_api_app_ids",
        ),
        (
            "no app",
            with(&|p| {
                p.as_object_mut().unwrap().remove("api_app_id");
            }),
            "allowed_api_app_ids",
        ),
        (
            "enterprise",
            with(&|p| p["context_enterprise_id"] = json!("E9")),
            "allowed_enterprise_ids",
        ),
        (
            "team",
            with(&|p| p["context_team_id"] = json!("T9")),
            "allowed_team_ids",
        ),
        (
            "channel",
            with(&|p| p["event"]["channel"] = json!("C9")),
            "allowed_channel_ids",
        ),
        (
            "authorization team",
            with(&|p| p["authorizations"][0]["team_id"] = json!("T9")),
            "authorizations[0]",
        ),
        (
            "authorization enterprise",
            with(&|p| p["authorizations"][1]["enterprise_id"] = json!("E9")),
            "authorizations[1]",
        ),
        (
            "authorization without team",
            with(&|p| p["authorizations"][1]["is_enterprise_install"] = json!(false)),
            "authorizations[1]",
        ),
    ];
    for (what, payload, names) in cases {
        let resp = post(&daemon, "grid", &payload);
        let v = assert_problem(&resp, 403, "forbidden");
        assert_eq!(resp.header("x-slack-no-retry"), Some("1"), "{what}");
        assert!(v["detail"].as_str().unwrap().contains(names), "{what}: {v}");
    }
    assert_eq!(StateDb::open(&daemon.state_root).count("runs"), before);
}

#[test]
fn the_rate_limit_is_per_channel_and_duplicates_take_no_token() {
    let (_fake, _sandbox, daemon) = start(&[]);
    let first = envelope("EvR1", message("C1", "1700000050.000001", "one"));
    let original = accepted(&post(&daemon, "slow", &first), "slack/slow");
    let limited = post(
        &daemon,
        "slow",
        &envelope("EvR2", message("C1", "1700000050.000002", "two")),
    );
    let v = assert_problem(&limited, 429, "slack_ingress_rate_limited");
    // Slack retries a rate-limited event after `Retry-After`.
    assert_eq!(limited.header("x-slack-no-retry"), None);
    assert!(v["retry_after_ms"].as_u64().unwrap() >= 1, "{v}");
    assert!(
        limited
            .header("retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // A duplicate still answers with the original run (no token needed).
    let dup = post(&daemon, "slow", &first);
    assert_eq!(dup.status, 200, "{}", dup.text());
    assert_eq!(dup.json()["run_id"], original.0.as_str());
    // Another channel has its own bucket.
    accepted(
        &post(
            &daemon,
            "slow",
            &envelope("EvR3", message("C2", "1700000050.000003", "three")),
        ),
        "slack/slow",
    );
}

#[test]
fn shared_files_are_downloaded_after_the_rate_limit_or_recorded_as_skipped() {
    let (fake, _sandbox, daemon) = start(&[]);
    fake.tokens(&[BOT]);
    fake.file(
        "notes.txt",
        Reply::Raw(
            200,
            vec![("Content-Type".into(), "text/plain".into())],
            b"meeting notes".to_vec(),
        ),
    );
    fake.file(
        "moved.txt",
        Reply::Raw(
            302,
            vec![("Location".into(), fake.file_url("notes.txt"))],
            Vec::new(),
        ),
    );
    fake.file(
        "big.bin",
        Reply::Raw(200, Vec::new(), vec![7u8; 1024 * 1024 + 1]),
    );
    let files = vec![
        file_object("F1", "notes.txt", &fake.file_url("notes.txt"), 13),
        file_object("F2", "evil.txt", "https://attacker.example.com/f", 10),
        file_object(
            "F3",
            "plain.txt",
            "http://files.slack.com/files-pri/T1-F3/plain.txt",
            10,
        ),
        file_object("F4", "moved.txt", &fake.file_url("moved.txt"), 10),
        file_object("F5", "big.bin", &fake.file_url("big.bin"), 10),
        file_object(
            "F6",
            "huge.bin",
            &fake.file_url("notes.txt"),
            5 * 1024 * 1024,
        ),
    ];
    let payload = envelope(
        "EvF1",
        file_share("C1", "1700000060.000001", "see attached", files.clone()),
    );
    let (run_id, _) = accepted(&post(&daemon, "support", &payload), "slack/support");
    let r = run(&daemon, &run_id);
    let items = r["input"]["input_items"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(items[0], json!({"type": "text", "text": "see attached"}));
    assert_eq!(items.len(), 2, "{r}");
    assert_eq!(items[1]["type"], "asset_reference");
    assert_eq!(items[1]["file_name"], "notes.txt");
    let statuses: Vec<(String, String)> = r["metadata"]["slack_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap().to_string(),
                f["reason"]
                    .as_str()
                    .unwrap_or(f["status"].as_str().unwrap())
                    .to_string(),
            )
        })
        .collect();
    let expect = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        statuses,
        expect(&[
            ("F1", "downloaded"),
            ("F2", "host_not_allowed"),
            ("F3", "not_https"),
            ("F4", "redirected"),
            ("F5", "too_large"),
            ("F6", "too_large"),
        ])
    );
    let downloads: Vec<_> = fake
        .calls()
        .into_iter()
        .filter(|c| c.path.starts_with("/files/"))
        .collect();
    assert_eq!(
        downloads.len(),
        3,
        "no download of refused hosts or declared-large files: {downloads:?}"
    );
    assert!(downloads.iter().all(|c| c.bearer() == Some(BOT)));
    let db = StateDb::open(&daemon.state_root);
    assert_eq!(db.count("assets"), 1);

    // A Slack retry of the same event downloads nothing again.
    post(&daemon, "support", &payload);
    assert_eq!(
        fake.calls()
            .iter()
            .filter(|c| c.path.starts_with("/files/"))
            .count(),
        3
    );

    // More than eight files: the rest are skipped.
    let many: Vec<Value> = (0..10)
        .map(|i| {
            file_object(
                &format!("M{i}"),
                "notes.txt",
                &fake.file_url("notes.txt"),
                13,
            )
        })
        .collect();
    let (run_id, _) = accepted(
        &post(
            &daemon,
            "support",
            &envelope("EvF2", file_share("C1", "1700000060.000002", "", many)),
        ),
        "slack/support",
    );
    let r = run(&daemon, &run_id);
    let files = r["metadata"]["slack_files"].as_array().unwrap();
    assert_eq!(
        files.iter().filter(|f| f["status"] == "downloaded").count(),
        8
    );
    assert_eq!(files[9]["reason"], "too_many_files");
    assert_eq!(
        r["input"]["input_items"].as_array().unwrap().len(),
        8,
        "no text item for empty text"
    );

    // No bot token, or no authentication: nothing is fetched.
    let one = vec![file_object(
        "F9",
        "notes.txt",
        &fake.file_url("notes.txt"),
        13,
    )];
    let calls_before = fake.calls().len();
    let (nobot, _) = accepted(
        &post(
            &daemon,
            "nobot",
            &envelope(
                "EvF3",
                file_share("C1", "1700000060.000003", "t", one.clone()),
            ),
        ),
        "slack/nobot",
    );
    assert_eq!(
        run(&daemon, &nobot)["metadata"]["slack_files"][0]["reason"],
        "no_bot_token"
    );
    let body = envelope("EvF4", file_share("C1", "1700000060.000004", "t", one)).to_string();
    let resp = post_raw(
        &daemon,
        "open",
        &[("Content-Type".into(), "application/json".into())],
        body.as_bytes(),
    );
    let (open, _) = accepted(&resp, "slack/open");
    assert_eq!(
        run(&daemon, &open)["metadata"]["slack_files"][0]["reason"],
        "unauthenticated_ingress"
    );
    assert_eq!(fake.calls().len(), calls_before);

    let text = metrics(&daemon);
    assert!(
        metric_sample(
            &text,
            r#"kheish_slack_api_calls_total{method="files.download",outcome="ok"}"#
        )
        .unwrap_or(0.0)
            >= 9.0,
        "{text}"
    );
    for secret in [BOT, BOT_T2, SIGNING] {
        assert!(!text.contains(secret));
        assert!(!daemon.stderr().contains(secret));
        let runs = daemon.admin("GET", "/v1/runs?limit=500", None).text();
        assert!(!runs.contains(secret));
        let connectors = daemon.admin("GET", "/v1/runtime/connectors", None).text();
        assert!(!connectors.contains(secret));
    }
}

#[test]
fn a_rotated_signing_secret_verifies_during_its_grace_window() {
    const REF: &str = "connectors.slack.rot.signing_secret";
    let sandbox = crate::support::Sandbox::new();
    let rotate = |value: &str, grace: Option<&str>| {
        let mut cmd = sandbox.cmd();
        cmd.args(["rotate-secret", REF, "--stdin"]).stdin(value);
        if let Some(grace) = grace {
            cmd.args(["--grace", grace]);
        }
        cmd.run().success().never_shows(value);
    };
    rotate("old-signing-secret-0001", None);
    let daemon = crate::support::daemon::Daemon::builder(&sandbox)
        .config(&format!(
            "[[slack_connectors]]\nname = \"rot\"\nsigning_secret_secret_ref = \"{REF}\"\n\
             include_self_output = false\nsession_policy = {{ create_if_missing = true }}\n"
        ))
        .start();
    let mut n = 0;
    let mut status_signed_with = |secret: &str| {
        n += 1;
        let body = envelope(&format!("EvRot{n}"), message("C1", &format!("1.{n}"), "hi"))
            .to_string()
            .into_bytes();
        let ts = now_secs();
        let headers = vec![
            ("Content-Type".to_string(), "application/json".to_string()),
            ("X-Slack-Request-Timestamp".to_string(), ts.to_string()),
            (
                "X-Slack-Signature".to_string(),
                kheishctl::ingress::auth::slack_v0_signature(secret.as_bytes(), ts, &body),
            ),
        ];
        post_raw(&daemon, "rot", &headers, &body).status
    };
    assert_eq!(status_signed_with("old-signing-secret-0001"), 202);
    assert_eq!(status_signed_with("new-signing-secret-0002"), 401);
    rotate("new-signing-secret-0002", Some("10m"));
    crate::support::wait::wait_until(
        "the rotated signing secret",
        std::time::Duration::from_secs(15),
        || match status_signed_with("new-signing-secret-0002") {
            202 => Ok(()),
            s => Err(s.to_string()),
        },
    );
    assert_eq!(
        status_signed_with("old-signing-secret-0001"),
        202,
        "the grace window"
    );
    rotate("newest-signing-secret-0003", None);
    crate::support::wait::wait_until(
        "the replaced signing secret refused",
        std::time::Duration::from_secs(15),
        || match status_signed_with("new-signing-secret-0002") {
            401 => Ok(()),
            s => Err(s.to_string()),
        },
    );
    assert_eq!(status_signed_with("old-signing-secret-0001"), 401);
    let (_, stderr) = daemon.stop();
    assert!(!stderr.contains("signing-secret-000"), "{stderr}");
}

#[test]
fn a_retry_sent_while_the_original_still_downloads_waits_for_it_and_takes_no_token() {
    // Slack re-sends an event it got no answer for within 3 s: here the original holds the
    // connector's only token (`slow`: one per second) and waits for its file download, which
    // here may take as long as the test needs (the budget is ten minutes).
    let fake = FakeSlack::start();
    let _sandbox = Sandbox::new();
    let daemon = daemon(
        &fake,
        &_sandbox,
        &[],
        &[("KHEISH_SLACK_FILE_BUDGET_MS", "600000")],
    );
    fake.tokens(&[BOT]);
    fake.file("slow.txt", Reply::Hang);
    let payload = envelope(
        "EvInFlight1",
        file_share(
            "C1",
            "1700000070.000001",
            "slow attachment",
            vec![file_object("F1", "slow.txt", &fake.file_url("slow.txt"), 4)],
        ),
    );
    let body = payload.to_string().into_bytes();
    std::thread::scope(|scope| {
        let original = scope.spawn(|| post_raw(&daemon, "slow", &signed_headers(&body), &body));
        fake.wait_for("/files/slow.txt", 1, std::time::Duration::from_secs(30));
        let retries: Vec<_> = (1..=2)
            .map(|n| {
                let body = &body;
                let daemon = &daemon;
                scope.spawn(move || {
                    let mut headers = signed_headers(body);
                    headers.push(("X-Slack-Retry-Num".into(), n.to_string()));
                    headers.push(("X-Slack-Retry-Reason".into(), "http_timeout".into()));
                    post_raw(daemon, "slow", &headers, body)
                })
            })
            .collect();
        // Both copies wait for the original instead of answering 429 (no token left).
        crate::support::wait::wait_until(
            "two copies waiting",
            std::time::Duration::from_secs(30),
            || {
                let text = metrics(&daemon);
                match metric_sample(&text, "kheish_ingress_copies_waiting") {
                    Some(n) if n >= 2.0 => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        );
        fake.release(
            200,
            &[("Content-Type".into(), "text/plain".into())],
            b"data",
        );
        let (run_id, session_id) = accepted(&original.join().unwrap(), "slack/slow");
        for retry in retries {
            let resp = retry.join().unwrap();
            assert_eq!(resp.status, 200, "{}", resp.text());
            let v = resp.json();
            assert_eq!(v["status"], "duplicate", "{v}");
            assert_eq!(v["run_id"], run_id.as_str());
            assert_eq!(v["session_id"], session_id.as_str());
        }
    });
    // One download, one run, and the copies counted as duplicate hits on the receipt.
    assert_eq!(fake.calls_to("/files/slow.txt").len(), 1);
    assert_eq!(StateDb::open(&daemon.state_root).count("runs"), 1);
    let text = metrics(&daemon);
    assert_eq!(
        metric_sample(&text, "kheish_ingress_copies_waiting"),
        Some(0.0)
    );
    crate::support::wait::wait_until(
        "the duplicate hits written",
        std::time::Duration::from_secs(30),
        || {
            let out = daemon.admin("GET", "/v1/receipts?connector=slack/slow", None);
            let hits = out.json()["receipts"][0]["duplicate_hits"].as_i64();
            if hits == Some(2) {
                Ok(())
            } else {
                Err(out.text())
            }
        },
    );
}

#[test]
fn the_downloads_of_one_message_stop_at_the_file_budget() {
    // Slack re-sends an event it got no answer for within 3 s: a message's downloads share
    // one budget (1 s here), and what it cuts off is recorded as `time_budget`, not refused.
    let fake = FakeSlack::start();
    let sandbox = Sandbox::new();
    let daemon = daemon(
        &fake,
        &sandbox,
        &[],
        &[("KHEISH_SLACK_FILE_BUDGET_MS", "1000")],
    );
    fake.tokens(&[BOT]);
    fake.file("hang.txt", Reply::Hang);
    fake.file(
        "next.txt",
        Reply::Raw(
            200,
            vec![("Content-Type".into(), "text/plain".into())],
            b"x".to_vec(),
        ),
    );
    let files = vec![
        file_object("F1", "hang.txt", &fake.file_url("hang.txt"), 4),
        file_object("F2", "next.txt", &fake.file_url("next.txt"), 1),
    ];
    let payload = envelope(
        "EvBudget1",
        file_share("C1", "1700000080.000001", "two files", files),
    );
    let body = payload.to_string().into_bytes();
    let resp = post_raw(&daemon, "support", &signed_headers(&body), &body);
    let (run_id, _) = accepted(&resp, "slack/support");
    let files = &run(&daemon, &run_id)["metadata"]["slack_files"];
    assert_eq!(files[0]["status"], "skipped", "{files}");
    assert_eq!(files[0]["reason"], "time_budget", "{files}");
    assert_eq!(files[1]["reason"], "time_budget", "{files}");
    // The second file was never asked for: the first used the whole budget.
    assert_eq!(fake.calls_to("/files/hang.txt").len(), 1);
    assert!(fake.calls_to("/files/next.txt").is_empty());
    fake.release(200, &[], b"late");
}

#[test]
fn an_invalid_file_budget_stops_the_start() {
    for value in ["0", "99", "600001", "soon"] {
        let sandbox = Sandbox::new();
        let res = crate::support::daemon::Daemon::builder(&sandbox)
            .config("")
            .env("KHEISH_SLACK_FILE_BUDGET_MS", value)
            .try_start();
        let Err((code, stderr)) = res else {
            panic!("KHEISH_SLACK_FILE_BUDGET_MS={value} started the daemon");
        };
        assert_eq!(code, Some(4), "{value}: {stderr}");
        assert!(stderr.contains("KHEISH_SLACK_FILE_BUDGET_MS"), "{stderr}");
    }
}
