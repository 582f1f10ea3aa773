//! The `telegram` delivery plugin against the fake Bot API (SPEC §9.3, §11): chunked
//! `sendMessage`, media uploads, per-step progress that survives a SIGKILL, the answers that
//! are terminal or retried, and `allowed_chat_ids` when a target is stored.

use std::time::Duration;

use serde_json::{json, Value};

use crate::serve_telegram::{message, send, start, BOT_TOKEN, SECRET};
use crate::support::daemon::Daemon;
use crate::support::fake_telegram::{FakeTelegram, Reply};
use crate::support::ingress::assert_accepted;
use crate::support::wait::wait_until;
use crate::support::Sandbox;

const DEADLINE: Duration = Duration::from_secs(20);

/// Ingests one message, claims its run and queues `output` for its self target; returns the
/// run id.
fn output(daemon: &Daemon, update_id: i64, output: Value) -> String {
    let mut update = message(update_id, -200, "question");
    update["message"]["message_thread_id"] = json!(7);
    let (run_id, _) = assert_accepted(&send(daemon, "bot", &update), "telegram/bot");
    let claim = daemon.admin("POST", "/v1/runs/claim", Some(&json!({"lease_ms": 60000})));
    assert_eq!(claim.status, 200, "{}", claim.text());
    assert_eq!(claim.json()["run_id"], run_id.as_str());
    let out = daemon.admin("POST", &format!("/v1/runs/{run_id}/output"), Some(&output));
    assert_eq!(out.status, 201, "{}", out.text());
    run_id
}

fn delivery(daemon: &Daemon, run_id: &str, status: &str) -> Value {
    wait_until(
        &format!("a {status} delivery of {run_id}"),
        DEADLINE,
        || {
            let resp = daemon.admin("GET", &format!("/v1/deliveries?run={run_id}"), None);
            let list = resp.json()["deliveries"].clone();
            match list.get(0) {
                Some(d) if d["status"] == status => Ok(d.clone()),
                _ => Err(list.to_string()),
            }
        },
    )
}

#[test]
fn text_is_sent_in_chunks_of_4096_scalar_values() {
    let fake = FakeTelegram::start();
    let sandbox = Sandbox::new();
    let daemon = start(&sandbox, &fake, &[]);
    let text = format!("{}ééé", "a".repeat(4096));
    let run_id = output(&daemon, 1, json!({"content": text}));
    let d = delivery(&daemon, &run_id, "delivered");
    assert_eq!(d["progress"]["steps_done"], 2, "{d}");
    let sent = fake.calls_of("sendMessage");
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].body["text"].as_str().unwrap().chars().count(), 4096);
    assert_eq!(sent[1].body["text"], "ééé");
    for call in &sent {
        assert_eq!(call.token, BOT_TOKEN);
        assert_eq!(call.body["chat_id"], -200);
        assert_eq!(call.body["message_thread_id"], 7);
        assert_eq!(call.body["reply_parameters"]["message_id"], 501);
    }
}

#[test]
fn assets_are_uploaded_by_media_type() {
    let fake = FakeTelegram::start();
    fake.add_file("p", "photos/a.jpg", b"JPEG".to_vec());
    fake.add_file("d", "documents/r.pdf", b"%PDF".to_vec());
    let sandbox = Sandbox::new();
    let daemon = start(&sandbox, &fake, &[]);
    let media = json!({"update_id": 90, "message": {"message_id": 1, "chat": {"id": 100},
        "caption": "files", "photo": [{"file_id": "p", "width": 1, "height": 1}],
        "document": {"file_id": "d", "file_name": "r.pdf", "mime_type": "application/pdf"}}});
    let (media_run, _) = assert_accepted(&send(&daemon, "bot", &media), "telegram/bot");
    let run = daemon
        .admin("GET", &format!("/v1/runs/{media_run}"), None)
        .json();
    let ids: Vec<Value> = run["input"]["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["asset_id"].clone())
        .collect();
    // The media run's own claim, then the output with both assets.
    let claim = daemon.admin("POST", "/v1/runs/claim", Some(&json!({})));
    assert_eq!(claim.json()["run_id"], media_run.as_str());
    let parts = json!([
        {"type": "text", "text": "here"},
        {"type": "asset_reference", "asset_id": ids[0]},
        {"type": "asset_reference", "asset_id": ids[1]}
    ]);
    let out = daemon.admin(
        "POST",
        &format!("/v1/runs/{media_run}/output"),
        Some(&json!({"parts": parts})),
    );
    assert_eq!(out.status, 201, "{}", out.text());
    let d = delivery(&daemon, &media_run, "delivered");
    assert_eq!(d["progress"]["steps_done"], 3, "{d}");
    let methods: Vec<String> = fake
        .calls()
        .iter()
        .filter(|c| c.method.starts_with("send"))
        .map(|c| c.method.clone())
        .collect();
    assert_eq!(methods, ["sendMessage", "sendPhoto", "sendDocument"]);
    let photo = &fake.calls_of("sendPhoto")[0].body;
    assert_eq!(photo["_file_field"], "photo");
    assert_eq!(photo["_content_type"], "image/jpeg");
    assert_eq!(photo["chat_id"], "100");
    let doc = &fake.calls_of("sendDocument")[0].body;
    assert_eq!(
        (doc["_file_name"].as_str(), doc["_file_len"].as_u64()),
        (Some("r.pdf"), Some(4))
    );
}

#[test]
fn bot_api_answers_decide_retry_or_dead_letter() {
    let fake = FakeTelegram::start();
    let sandbox = Sandbox::new();
    let daemon = start(&sandbox, &fake, &[]);
    // Flood wait, 5xx, garbage and a redirect are retried; then it goes through.
    fake.script(
        "sendMessage",
        vec![
            Reply::flood_wait(1),
            Reply::error(500, "Internal Server Error"),
            Reply::garbage(502),
            Reply::redirect(),
        ],
    );
    let run_id = output(&daemon, 1, json!({"content": "eventually"}));
    let d = delivery(&daemon, &run_id, "delivered");
    assert_eq!(d["attempts"], 5, "{d}");
    assert_eq!(fake.calls_of("sendMessage").len(), 5);

    let terminal = [
        (Reply::error(401, "Unauthorized"), "telegram_error_401"),
        (
            Reply::error(403, "Forbidden: bot was blocked by the user"),
            "telegram_error_403",
        ),
        (
            Reply::error(400, "Bad Request: chat not found"),
            "telegram_error_400",
        ),
        (
            Reply::error(400, "Bad Request: message thread not found"),
            "telegram_error_400",
        ),
        (
            Reply::error(400, "Bad Request: message is too long"),
            "telegram_error_400",
        ),
    ];
    for (i, (reply, code)) in terminal.into_iter().enumerate() {
        fake.script("sendMessage", vec![reply]);
        let run_id = output(&daemon, 10 + i as i64, json!({"content": "x"}));
        let d = delivery(&daemon, &run_id, "dead_lettered");
        assert_eq!(d["attempts"], 1, "{d}");
        assert_eq!(d["last_error_code"], code, "{d}");
        let error = d["last_error"].as_str().unwrap();
        assert!(error.contains("/bot<redacted>/sendMessage"), "{error}");
        assert!(!error.contains(BOT_TOKEN), "{error}");
    }
    let log = daemon.stderr();
    assert!(!log.contains(BOT_TOKEN) && !log.contains(SECRET), "{log}");
}

#[test]
fn targets_outside_allowed_chat_ids_are_refused_when_stored() {
    let fake = FakeTelegram::start();
    let sandbox = Sandbox::new();
    let daemon = start(&sandbox, &fake, &[]);
    let (run_id, _) = assert_accepted(&send(&daemon, "bot", &message(1, 100, "q")), "telegram/bot");
    daemon.admin("POST", "/v1/runs/claim", Some(&json!({})));
    let out = daemon.admin(
        "POST",
        &format!("/v1/runs/{run_id}/output"),
        Some(&json!({"content": "x", "reply_targets": [
            {"plugin": "telegram", "address": {"connector": "bot", "chat_id": 999}}
        ]})),
    );
    assert_eq!(out.status, 400, "{}", out.text());
    assert!(out.text().contains("allowed_chat_ids"), "{}", out.text());
    let unknown = daemon.admin(
        "POST",
        &format!("/v1/runs/{run_id}/output"),
        Some(&json!({"content": "x", "reply_targets": [
            {"plugin": "telegram", "address": {"connector": "nope", "chat_id": 100}}
        ]})),
    );
    assert_eq!(unknown.status, 400, "{}", unknown.text());
}

#[test]
fn a_target_naming_a_connector_without_a_bot_token_is_refused_when_stored() {
    let fake = FakeTelegram::start();
    let sandbox = Sandbox::new();
    // `listener` takes webhooks but has no bot token: nothing could send to it.
    let listener = "[[telegram_connectors]]\nname = \"listener\"\n\
                    secret_token_env = \"TG_SECRET\"\ninclude_self_output = false\n";
    let daemon = Daemon::builder(&sandbox)
        .config(&format!(
            "{}{listener}",
            crate::serve_telegram::config(&fake, "")
        ))
        .env("TG_BOT", BOT_TOKEN)
        .env("TG_SECRET", SECRET)
        .start();
    let (run_id, session_id) =
        assert_accepted(&send(&daemon, "bot", &message(1, 100, "q")), "telegram/bot");
    daemon.admin("POST", "/v1/runs/claim", Some(&json!({})));
    let target =
        json!([{"plugin": "telegram", "address": {"connector": "listener", "chat_id": 5}}]);
    let out = daemon.admin(
        "POST",
        &format!("/v1/runs/{run_id}/output"),
        Some(&json!({"content": "x", "reply_targets": target})),
    );
    assert_eq!(out.status, 400, "{}", out.text());
    assert!(out.text().contains("has no bot token"), "{}", out.text());
    let defaults = daemon.admin(
        "PUT",
        &format!("/v1/sessions/{session_id}/reply-targets"),
        Some(&json!({"reply_targets": target})),
    );
    assert_eq!(defaults.status, 400, "{}", defaults.text());
    assert!(
        defaults.text().contains("has no bot token"),
        "{}",
        defaults.text()
    );
}

#[test]
fn a_sigkill_mid_delivery_never_resends_a_sent_chunk() {
    let fake = FakeTelegram::start();
    let sandbox = Sandbox::new();
    let restart = || {
        Daemon::builder(&sandbox)
            .config(&crate::serve_telegram::config(&fake, ""))
            .env("TG_BOT", BOT_TOKEN)
            .env("TG_SECRET", SECRET)
            .env("KHEISH_DELIVERY_LEASE_MS", "2000")
            .env("KHEISH_DELIVERY_INITIAL_RETRY_MS", "20")
            .start()
    };
    let daemon = restart();
    // Chunk 1 goes through; chunk 2 hangs (the server never got it) while we kill the daemon.
    fake.script(
        "sendMessage",
        vec![
            Reply::ok(json!({"message_id": 1, "date": 1, "chat": {"id": -200}})),
            Reply::Hang,
        ],
    );
    let text = format!("{}{}{}", "a".repeat(4096), "b".repeat(4096), "c".repeat(10));
    let run_id = output(&daemon, 1, json!({"content": text}));
    fake.wait_hung(1, DEADLINE);
    let d = delivery(&daemon, &run_id, "pending");
    assert_eq!(d["progress"]["steps_done"], 1, "{d}");
    daemon.kill();

    let daemon = restart();
    let d = delivery(&daemon, &run_id, "delivered");
    assert_eq!(d["progress"]["steps_done"], 3, "{d}");
    let texts: Vec<char> = fake
        .calls_of("sendMessage")
        .iter()
        .map(|c| c.body["text"].as_str().unwrap().chars().next().unwrap())
        .collect();
    assert_eq!(texts, ['a', 'b', 'c'], "each chunk exactly once");
}
