//! The `slack` delivery plugin against a fake Slack Web API (SPEC §8, §11.3): `chat.postMessage`
//! in the event's thread with the team's bot token and a deterministic `client_msg_id`, multi-step
//! outputs threaded on the first post, attachments through the external upload flow, per-step
//! progress (a retry and a kill -9 never re-send a finished step; an upload completion whose
//! outcome is unknown is dead-lettered), the error table (429, `ratelimited`, every terminal
//! error, 5xx, garbage, a hang), reply targets checked against the allowlists when stored, and
//! planted tokens that never appear in logs, views or metrics.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::daemon::Daemon;
use crate::support::fake_slack::{
    Call, FakeSlack, Reply, COMPLETE_UPLOAD, GET_UPLOAD_URL, POST_MESSAGE,
};
use crate::support::problem::assert_problem_detail;
use crate::support::slack::*;
use crate::support::wait::wait_until;
use crate::support::Sandbox;

const DEADLINE: Duration = Duration::from_secs(30);
const SLOW_RETRIES: [(&str, &str); 2] = [
    ("KHEISH_DELIVERY_INITIAL_RETRY_MS", "30000"),
    ("KHEISH_DELIVERY_MAX_RETRY_MS", "60000"),
];
const FAST_RETRIES: [(&str, &str); 2] = [
    ("KHEISH_DELIVERY_INITIAL_RETRY_MS", "10"),
    ("KHEISH_DELIVERY_MAX_RETRY_MS", "50"),
];

fn deliveries(daemon: &Daemon) -> Vec<Value> {
    let resp = daemon.admin("GET", "/v1/deliveries?limit=500", None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()["deliveries"].as_array().unwrap().clone()
}

/// Waits until the delivery of `run` satisfies `done`; returns it.
fn delivery_when(daemon: &Daemon, run: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_until(what, DEADLINE, || {
        let resp = daemon.admin("GET", &format!("/v1/deliveries?run={run}"), None);
        let list = resp.json()["deliveries"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        match list.first() {
            Some(d) if done(d) => Ok(d.clone()),
            other => Err(format!("{other:?}")),
        }
    })
}

fn ingest(daemon: &Daemon, name: &str, payload: &Value) -> String {
    let resp = post(daemon, name, payload);
    assert_eq!(resp.status, 202, "{}", resp.text());
    resp.json()["run_id"].as_str().unwrap().to_string()
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[test]
fn an_echo_reply_is_posted_in_the_thread_with_the_teams_bot_token() {
    let fake = FakeSlack::start();
    fake.tokens(&[BOT, BOT_T2]);
    let sandbox = Sandbox::new();
    let daemon = daemon(&fake, &sandbox, &["--handler", "echo"], &SLOW_RETRIES);
    let run = ingest(
        &daemon,
        "support",
        &envelope("EvD1", message("C1", "1700000100.000001", "ping")),
    );
    let d = delivery_when(&daemon, &run, "the echo delivery", |d| {
        d["status"] == "delivered"
    });
    let posts = fake.calls_to(POST_MESSAGE);
    assert_eq!(posts.len(), 1, "{posts:?}");
    let body = posts[0].json();
    assert_eq!(body["channel"], "C1");
    assert_eq!(body["text"], "ping");
    assert_eq!(body["thread_ts"], "1700000100.000001");
    assert!(is_uuid(body["client_msg_id"].as_str().unwrap()), "{body}");
    assert_eq!(posts[0].bearer(), Some(BOT));
    assert!(d["progress"]["done"] == 1, "{d}");

    // Enterprise Grid, team T2: its own token; the reply stays in the thread of the event.
    let run = ingest(
        &daemon,
        "grid",
        &grid_envelope(
            "EvD2",
            "T2",
            message("C2", "1700000100.000002", "grid ping"),
        ),
    );
    delivery_when(&daemon, &run, "the grid delivery", |d| {
        d["status"] == "delivered"
    });
    let posts = fake.calls_to(POST_MESSAGE);
    assert_eq!(posts[1].bearer(), Some(BOT_T2));
    assert_eq!(posts[1].json()["thread_ts"], "1700000100.000002");

    for secret in [BOT, BOT_T2, SIGNING] {
        assert!(!daemon.stderr().contains(secret));
        for route in [
            "/v1/deliveries?limit=500",
            "/v1/runs?limit=500",
            "/metrics",
            "/v1/runtime/connectors",
        ] {
            assert!(
                !daemon.admin("GET", route, None).text().contains(secret),
                "{route}"
            );
        }
    }
    let metrics = daemon.admin("GET", "/metrics", None).text();
    assert!(
        metrics
            .contains(r#"kheish_slack_api_calls_total{method="chat.postMessage",outcome="ok"} 2"#),
        "{metrics}"
    );
}

/// Ingests a `file_share` message on `support` (one stored asset), claims its run, and queues
/// an output of two text parts and the asset to `targets`; returns the run id.
fn multi_step_output(daemon: &Daemon, fake: &FakeSlack, targets: Value) -> String {
    fake.file(
        "report.txt",
        Reply::Raw(200, Vec::new(), b"quarterly numbers".to_vec()),
    );
    let files = vec![file_object(
        "F1",
        "report.txt",
        &fake.file_url("report.txt"),
        17,
    )];
    let run = ingest(
        daemon,
        "support",
        &envelope(
            "EvM1",
            file_share("C1", "1700000200.000001", "numbers?", files),
        ),
    );
    let claim = daemon.admin("POST", "/v1/runs/claim", Some(&json!({"lease_ms": 60000})));
    assert_eq!(claim.status, 200, "{}", claim.text());
    let asset_id = claim.json()["input"]["input_items"][1]["asset_id"]
        .as_str()
        .unwrap()
        .to_string();
    let output = json!({
        "parts": [
            {"type": "text", "text": "first step"},
            {"type": "text", "text": "second step"},
            {"type": "asset_reference", "asset_id": asset_id},
        ],
        "reply_targets": targets,
    });
    let out = daemon.admin("POST", &format!("/v1/runs/{run}/output"), Some(&output));
    assert_eq!(out.status, 201, "{}", out.text());
    let done = daemon.admin(
        "POST",
        &format!("/v1/runs/{run}/complete"),
        Some(&json!({})),
    );
    assert_eq!(done.status, 200, "{}", done.text());
    run
}

fn texts(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .map(|c| c.json()["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn later_steps_thread_on_the_first_post_and_attachments_use_the_upload_flow() {
    let fake = FakeSlack::start();
    let sandbox = Sandbox::new();
    let daemon = daemon(&fake, &sandbox, &[], &SLOW_RETRIES);
    let target =
        json!([{"plugin": "slack", "address": {"connector": "support", "channel_id": "C2"}}]);
    let run = multi_step_output(&daemon, &fake, target);
    let d = delivery_when(&daemon, &run, "the multi-step delivery", |d| {
        d["status"] == "delivered"
    });
    let posts = fake.calls_to(POST_MESSAGE);
    assert_eq!(texts(&posts), ["first step", "second step"]);
    assert!(
        posts[0].json().get("thread_ts").is_none(),
        "{:?}",
        posts[0].json()
    );
    let first_ts = d["progress"]["thread_ts"]
        .as_str()
        .unwrap_or_else(|| panic!("{d}"));
    assert_eq!(posts[1].json()["thread_ts"], first_ts);
    assert_ne!(
        posts[0].json()["client_msg_id"],
        posts[1].json()["client_msg_id"]
    );
    let ticket = fake.calls_to(GET_UPLOAD_URL);
    assert_eq!(ticket.len(), 1);
    assert_eq!(ticket[0].form()["filename"], "report.txt");
    assert_eq!(ticket[0].form()["length"], "17");
    let uploads: Vec<Call> = fake
        .calls()
        .into_iter()
        .filter(|c| c.path.starts_with("/upload/"))
        .collect();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].body, b"quarterly numbers");
    let complete = fake.calls_to(COMPLETE_UPLOAD);
    assert_eq!(complete.len(), 1);
    let form = complete[0].form();
    assert_eq!(form["channel_id"], "C2");
    assert_eq!(form["thread_ts"], first_ts);
    let files: Value = serde_json::from_str(&form["files"]).unwrap();
    assert_eq!(files[0]["title"], "report.txt");
    assert_eq!(d["progress"]["done"], 3, "{d}");
    assert!(
        !d.to_string().contains("/upload/"),
        "upload URLs are never saved: {d}"
    );
}

#[test]
fn a_failed_step_is_retried_without_resending_the_finished_ones() {
    let fake = FakeSlack::start();
    fake.script(POST_MESSAGE, [Reply::Pass, Reply::too_many(1)]);
    let sandbox = Sandbox::new();
    let daemon = daemon(&fake, &sandbox, &[], &FAST_RETRIES);
    let target =
        json!([{"plugin": "slack", "address": {"connector": "support", "channel_id": "C3"}}]);
    let run = multi_step_output(&daemon, &fake, target);
    let d = delivery_when(&daemon, &run, "the retried delivery", |d| {
        d["status"] == "delivered"
    });
    assert_eq!(
        texts(&fake.calls_to(POST_MESSAGE)),
        ["first step", "second step", "second step"]
    );
    assert_eq!(d["attempts"], 2, "{d}");
    let posts = fake.calls_to(POST_MESSAGE);
    assert_eq!(
        posts[1].json()["client_msg_id"],
        posts[2].json()["client_msg_id"]
    );
}

#[test]
fn web_api_answers_map_to_retries_and_dead_letters() {
    let fake = FakeSlack::start();
    let sandbox = Sandbox::new();
    let daemon = daemon(&fake, &sandbox, &["--handler", "echo"], &SLOW_RETRIES);
    let terminal = [
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "missing_scope",
        "not_allowed_token_type",
        "ekm_access_denied",
    ];
    let mut cases: Vec<(Reply, &str, String)> = terminal
        .iter()
        .map(|e| (Reply::error(e), "dead_lettered", format!("slack_{e}")))
        .collect();
    cases.extend([
        (
            Reply::error("ratelimited"),
            "retrying",
            "slack_ratelimited".to_string(),
        ),
        (
            Reply::too_many(7),
            "retrying",
            "slack_ratelimited".to_string(),
        ),
        (
            Reply::Json(503, json!({"ok": false})),
            "retrying",
            "http_status_503".to_string(),
        ),
        (
            Reply::Raw(200, Vec::new(), b"<html>gateway</html>".to_vec()),
            "retrying",
            "invalid_response".to_string(),
        ),
        (
            Reply::error("internal_error"),
            "retrying",
            "slack_internal_error".to_string(),
        ),
    ]);
    for (i, (reply, status, code)) in cases.into_iter().enumerate() {
        fake.script(POST_MESSAGE, [reply]);
        let channel = format!("C{}", 100 + i);
        let run = ingest(
            &daemon,
            "support",
            &envelope(
                &format!("EvE{i}"),
                message(&channel, &format!("1700000300.{i:06}"), "x"),
            ),
        );
        let d = delivery_when(&daemon, &run, &code, |d| {
            d["status"] != "pending" && d["attempts"] == 1
        });
        assert_eq!(d["status"], status, "{code}: {d}");
        assert_eq!(d["last_error_code"], code.as_str(), "{d}");
        if code == "slack_ratelimited" && d["last_http_status"] == 429 {
            let next =
                d["next_attempt_at_ms"].as_i64().unwrap() - d["updated_at_ms"].as_i64().unwrap();
            assert!(next >= 6_000, "Retry-After 7 s is honoured: {d}");
        }
    }
}

#[test]
fn a_hanging_web_api_times_out_and_is_retried() {
    let fake = FakeSlack::start();
    fake.script(POST_MESSAGE, [Reply::Hang]);
    let sandbox = Sandbox::new();
    let daemon = daemon(&fake, &sandbox, &["--handler", "echo"], &FAST_RETRIES);
    let run = ingest(
        &daemon,
        "support",
        &envelope("EvH1", message("C1", "1700000400.000001", "slow")),
    );
    let d = delivery_when(&daemon, &run, "the delivery after the timeout", |d| {
        d["status"] == "delivered"
    });
    assert_eq!(d["attempts"], 2, "{d}");
    assert_eq!(d["last_error_code"], "timeout", "{d}");
}

#[test]
fn kill_9_between_steps_never_resends_a_finished_step() {
    let fake = FakeSlack::start();
    fake.script(POST_MESSAGE, [Reply::Pass, Reply::Hang]);
    let sandbox = Sandbox::new();
    let env = [
        FAST_RETRIES[0],
        FAST_RETRIES[1],
        ("KHEISH_DELIVERY_LEASE_MS", "3000"),
    ];
    let daemon = daemon(&fake, &sandbox, &[], &env);
    let target =
        json!([{"plugin": "slack", "address": {"connector": "support", "channel_id": "C4"}}]);
    let run = multi_step_output(&daemon, &fake, target);
    fake.wait_for(POST_MESSAGE, 2, DEADLINE);
    daemon.kill();
    let daemon = crate::support::slack::daemon(&fake, &sandbox, &[], &env);
    delivery_when(&daemon, &run, "the delivery after the restart", |d| {
        d["status"] == "delivered"
    });
    let posted = texts(&fake.calls_to(POST_MESSAGE));
    assert_eq!(
        posted.iter().filter(|t| *t == "first step").count(),
        1,
        "{posted:?}"
    );
    assert_eq!(
        posted.last().map(String::as_str),
        Some("second step"),
        "{posted:?}"
    );
    assert_eq!(fake.calls_to(COMPLETE_UPLOAD).len(), 1);
}

#[test]
fn kill_9_during_an_upload_completion_dead_letters_it_as_unknown() {
    let fake = FakeSlack::start();
    fake.script(COMPLETE_UPLOAD, [Reply::Hang]);
    let sandbox = Sandbox::new();
    let env = [
        FAST_RETRIES[0],
        FAST_RETRIES[1],
        ("KHEISH_DELIVERY_LEASE_MS", "3000"),
    ];
    let daemon = daemon(&fake, &sandbox, &[], &env);
    let target =
        json!([{"plugin": "slack", "address": {"connector": "support", "channel_id": "C5"}}]);
    let run = multi_step_output(&daemon, &fake, target);
    fake.wait_for(COMPLETE_UPLOAD, 1, DEADLINE);
    daemon.kill();
    let daemon = crate::support::slack::daemon(&fake, &sandbox, &[], &env);
    let d = delivery_when(&daemon, &run, "the dead letter", |d| {
        d["status"] == "dead_lettered"
    });
    assert_eq!(d["last_error_code"], "upload_outcome_unknown", "{d}");
    assert_eq!(fake.calls_to(COMPLETE_UPLOAD).len(), 1);
    assert_eq!(
        texts(&fake.calls_to(POST_MESSAGE)),
        ["first step", "second step"]
    );
}

#[test]
fn slack_targets_outside_the_allowlists_are_refused_when_stored() {
    let (_fake, _sandbox, daemon) = start(&[]);
    let put = |address: Value| {
        daemon.admin(
            "PUT",
            "/v1/sessions/s-1/reply-targets",
            Some(&json!({"reply_targets": [{"plugin": "slack", "address": address}]})),
        )
    };
    let created = daemon.admin("PUT", "/v1/sessions/s-1", Some(&json!({})));
    assert!(created.status < 300, "{}", created.text());
    assert_problem_detail(
        &put(json!({"connector": "grid", "channel_id": "C9"})),
        400,
        "invalid_reply_target",
        "allowed_channel_ids",
    );
    assert_problem_detail(
        &put(json!({"connector": "grid", "channel_id": "C1", "team_id": "T9"})),
        400,
        "invalid_reply_target",
        "allowed_team_ids",
    );
    assert_problem_detail(
        &put(json!({"connector": "grid", "channel_id": "C1", "enterprise_id": "E9"})),
        400,
        "invalid_reply_target",
        "allowed_enterprise_ids",
    );
    assert_problem_detail(
        &put(json!({"connector": "nope", "channel_id": "C1"})),
        400,
        "invalid_reply_target",
        "nope",
    );
    assert_eq!(
        put(
            json!({"connector": "grid", "channel_id": "C1", "team_id": "T2", "enterprise_id": "E1"})
        )
        .status,
        200
    );
    assert_eq!(deliveries(&daemon).len(), 0);
}
