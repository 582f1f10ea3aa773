//! Telegram webhook ingress end to end (SPEC §9.1, §6): the real daemon against the fake Bot
//! API of `support::fake_telegram` — authentication, update types, dedupe, allowlists, the
//! rate limit before any Bot API call, media through getFile, callback answers after the
//! commit, and planted tokens that never leak.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::daemon::Daemon;
use crate::support::db::StateDb;
use crate::support::fake_telegram::{FakeTelegram, Reply};
use crate::support::http::Response;
use crate::support::ingress::{assert_accepted, assert_duplicate};
use crate::support::problem::assert_problem;
use crate::support::wait::wait_until;
use crate::support::Sandbox;

pub const BOT_TOKEN: &str = "123456:PLANTED-BOT-TOKEN-q9";
pub const SECRET: &str = "PLANTED-WEBHOOK-SECRET-z7";

pub fn config(fake: &FakeTelegram, extra: &str) -> String {
    format!(
        "[[telegram_connectors]]\nname = \"bot\"\nbot_token_env = \"TG_BOT\"\n\
         secret_token_env = \"TG_SECRET\"\napi_base_url = \"{}\"\nallowed_chat_ids = [100, -200]\n\
         session_policy = {{ create_if_missing = true }}\n{extra}\n\
         [[telegram_connectors]]\nname = \"slow\"\nbot_token_env = \"TG_BOT\"\n\
         secret_token_env = \"TG_SECRET\"\napi_base_url = \"{}\"\ningress_events_per_second = 1\n\
         session_policy = {{ create_if_missing = true }}\n\
         [[telegram_connectors]]\nname = \"poll\"\ningress_mode = \"polling\"\n\
         bot_token_env = \"TG_BOT\"\napi_base_url = \"http://127.0.0.1:9\"\n\
         session_policy = {{ create_if_missing = true }}\n",
        fake.base_url(),
        fake.base_url()
    )
}

pub fn start(sandbox: &Sandbox, fake: &FakeTelegram, args: &[&str]) -> Daemon {
    Daemon::builder(sandbox)
        .config(&config(fake, ""))
        .env("TG_BOT", BOT_TOKEN)
        .env("TG_SECRET", SECRET)
        .env("KHEISH_DELIVERY_INITIAL_RETRY_MS", "20")
        .env("KHEISH_DELIVERY_MAX_RETRY_MS", "40")
        .env("KHEISH_DELIVERY_CIRCUIT_FAILURE_THRESHOLD", "0")
        .args(args)
        .start()
}

pub fn post_update(daemon: &Daemon, name: &str, secret: Option<&str>, body: &[u8]) -> Response {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(s) = secret {
        headers.push(("X-Telegram-Bot-Api-Secret-Token", s));
    }
    daemon.request(
        "POST",
        &format!("/v1/connectors/telegram/{name}"),
        &headers,
        body,
    )
}

pub fn send(daemon: &Daemon, name: &str, update: &Value) -> Response {
    post_update(daemon, name, Some(SECRET), update.to_string().as_bytes())
}

pub fn message(update_id: i64, chat: i64, text: &str) -> Value {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id + 500,
            "date": 1_700_000_000,
            "chat": {"id": chat, "type": "supergroup"},
            "from": {"id": 42, "is_bot": false, "first_name": "A"},
            "text": text
        }
    })
}

fn run(daemon: &Daemon, run_id: &str) -> Value {
    let resp = daemon.admin("GET", &format!("/v1/runs/{run_id}"), None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
}

#[test]
fn webhook_updates_become_runs_once() {
    let fake = FakeTelegram::start();
    let sandbox = Sandbox::new();
    let daemon = start(&sandbox, &fake, &[]);

    let mut update = message(10, -200, "hello");
    update["message"]["message_thread_id"] = json!(7);
    let first = assert_accepted(&send(&daemon, "bot", &update), "telegram/bot");
    assert_eq!(first.1, "telegram:bot:-200:7");
    let r = run(&daemon, &first.0);
    assert_eq!(r["input"]["content"], "hello");
    assert_eq!(r["actor_id"], "telegram:42");
    assert_eq!(r["metadata"]["connector_ingress_key"], "telegram:bot:10");
    assert_eq!(r["metadata"]["telegram_update_type"], "message");
    let target: Value =
        serde_json::from_str(r["reply_targets"][0]["address"].as_str().unwrap()).unwrap();
    assert_eq!(
        target,
        json!({"connector": "bot", "chat_id": -200, "message_thread_id": 7, "reply_to_message_id": 510})
    );

    // The same update again (Telegram retries), whitespace aside: the original run.
    let spaced = serde_json::to_string_pretty(&update).unwrap();
    let dup = post_update(&daemon, "bot", Some(SECRET), spaced.as_bytes());
    assert_duplicate(&dup, "telegram/bot", &first);
    // The same update_id with another payload: 409.
    let other = message(10, -200, "changed");
    let conflict = assert_problem(&send(&daemon, "bot", &other), 409, "idempotency_conflict");
    assert_eq!(conflict["run_id"], first.0.as_str());

    // edited_message is handled; its caption is the content.
    let edited = json!({"update_id": 11, "edited_message": {
        "message_id": 3, "chat": {"id": 100}, "caption": "edited caption", "date": 1}});
    let (run_id, session) = assert_accepted(&send(&daemon, "bot", &edited), "telegram/bot");
    assert_eq!(session, "telegram:bot:100");
    assert_eq!(run(&daemon, &run_id)["input"]["content"], "edited caption");

    // A reply chain in an ordinary supergroup carries a message_thread_id but is no forum
    // topic: the chat's session, and a reply that names no thread (sendMessage takes
    // message_thread_id for forum topics only).
    let chain = json!({"update_id": 13, "message": {
        "message_id": 611, "date": 1, "chat": {"id": -200, "type": "supergroup"},
        "from": {"id": 42, "is_bot": false, "first_name": "A"},
        "message_thread_id": 600, "text": "a reply",
        "reply_to_message": {"message_id": 600, "date": 1, "chat": {"id": -200, "type": "supergroup"}, "text": "root"}}});
    let (chain_run, chain_session) = assert_accepted(&send(&daemon, "bot", &chain), "telegram/bot");
    assert_eq!(chain_session, "telegram:bot:-200");
    let r = run(&daemon, &chain_run);
    let target: Value =
        serde_json::from_str(r["reply_targets"][0]["address"].as_str().unwrap()).unwrap();
    assert_eq!(
        target,
        json!({"connector": "bot", "chat_id": -200, "reply_to_message_id": 611})
    );
    // The same in a forum topic (marked is_topic_message) is the topic's session.
    let mut topic = chain.clone();
    topic["update_id"] = json!(14);
    topic["message"]["is_topic_message"] = json!(true);
    topic["message"]["chat"]["is_forum"] = json!(true);
    let (_, topic_session) = assert_accepted(&send(&daemon, "bot", &topic), "telegram/bot");
    assert_eq!(topic_session, "telegram:bot:-200:600");

    // Other update types are answered and skipped, with no run.
    let poll = json!({"update_id": 12, "poll": {"id": "p", "question": "?", "options": []}});
    let resp = send(&daemon, "bot", &poll);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json(),
        json!({"accepted": true, "skipped": true, "reason": "unsupported_update", "update_id": 12})
    );
    assert_eq!(StateDb::open(&daemon.state_root).count("runs"), 4);
}

#[test]
fn webhook_bad_input_is_refused_and_writes_nothing() {
    let fake = FakeTelegram::start();
    let sandbox = Sandbox::new();
    let daemon = start(&sandbox, &fake, &[]);
    let good = message(1, 100, "hi").to_string();

    let missing = post_update(&daemon, "bot", None, good.as_bytes());
    assert_problem(&missing, 401, "unauthorized");
    let wrong = post_update(&daemon, "bot", Some("not-the-secret"), good.as_bytes());
    let body = assert_problem(&wrong, 401, "unauthorized");
    assert!(!body.to_string().contains(SECRET));
    let twice = daemon.request(
        "POST",
        "/v1/connectors/telegram/bot",
        &[
            ("X-Telegram-Bot-Api-Secret-Token", SECRET),
            ("X-Telegram-Bot-Api-Secret-Token", SECRET),
        ],
        good.as_bytes(),
    );
    assert_problem(&twice, 401, "unauthorized");

    let polling = post_update(&daemon, "poll", Some(SECRET), good.as_bytes());
    assert_problem(&polling, 409, "wrong_ingress_mode");
    let unknown = post_update(&daemon, "nope", Some(SECRET), good.as_bytes());
    assert_problem(&unknown, 404, "connector_not_found");

    let no_id = json!({"message": {"chat": {"id": 100}, "text": "x"}});
    let v = assert_problem(&send(&daemon, "bot", &no_id), 400, "invalid_payload");
    assert_eq!(v["path"], "$.update_id");
    let invalid = post_update(&daemon, "bot", Some(SECRET), b"{\"update_id\": 1,");
    assert_problem(&invalid, 400, "invalid_json");
    let array = post_update(&daemon, "bot", Some(SECRET), b"[1]");
    assert_problem(&array, 400, "invalid_payload");

    let outside = message(2, 555, "hi");
    assert_problem(&send(&daemon, "bot", &outside), 403, "forbidden");

    let no_data = json!({"update_id": 3, "callback_query": {
        "id": "cb1", "from": {"id": 1}, "chat_instance": "c",
        "message": {"message_id": 1, "chat": {"id": 100}}}});
    let v = assert_problem(&send(&daemon, "bot", &no_data), 400, "invalid_payload");
    assert_eq!(v["path"], "$.callback_query.data");
    let no_message = json!({"update_id": 4, "callback_query": {
        "id": "cb2", "from": {"id": 1}, "chat_instance": "c", "data": "x"}});
    let v = assert_problem(&send(&daemon, "bot", &no_message), 400, "invalid_payload");
    assert_eq!(v["path"], "$.callback_query.message");
    // Valid updates with nothing to run (a button of an inline-mode message, a game's button)
    // are skipped with 200, so Telegram does not re-send them.
    for (update_id, cb) in [
        (
            5,
            json!({"id": "cb3", "from": {"id": 1}, "chat_instance": "c", "data": "x", "inline_message_id": "AAE"}),
        ),
        (
            6,
            json!({"id": "cb4", "from": {"id": 1}, "chat_instance": "c", "game_short_name": "g",
                   "message": {"message_id": 1, "date": 1, "chat": {"id": 100}}}),
        ),
    ] {
        let resp = send(
            &daemon,
            "bot",
            &json!({"update_id": update_id, "callback_query": cb}),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(
            resp.json(),
            json!({"accepted": true, "skipped": true, "reason": "unsupported_callback_query", "update_id": update_id})
        );
    }

    let db = StateDb::open(&daemon.state_root);
    assert_eq!((db.count("runs"), db.count("receipts")), (0, 0));
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
}

#[test]
fn callbacks_are_answered_once_after_the_run_exists() {
    let fake = FakeTelegram::start();
    let sandbox = Sandbox::new();
    let daemon = start(&sandbox, &fake, &[]);
    let callback = |update_id: i64, id: &str| {
        json!({"update_id": update_id, "callback_query": {
            "id": id, "from": {"id": 9}, "chat_instance": "c", "data": "button-1",
            "message": {"message_id": 77, "chat": {"id": -200}, "date": 1}}})
    };
    let first = assert_accepted(&send(&daemon, "bot", &callback(20, "cb-a")), "telegram/bot");
    fake.wait_for("one callback answer", Duration::from_secs(10), |calls| {
        calls.iter().any(|c| c.method == "answerCallbackQuery")
    });
    let r = run(&daemon, &first.0);
    assert_eq!(r["input"]["content"], "button-1");
    assert_eq!(r["metadata"]["telegram_callback_query_id"], "cb-a");

    // A replay is a duplicate and is not answered again; the next new one is.
    assert_duplicate(
        &send(&daemon, "bot", &callback(20, "cb-a")),
        "telegram/bot",
        &first,
    );
    assert_accepted(&send(&daemon, "bot", &callback(21, "cb-b")), "telegram/bot");
    fake.wait_for(
        "the second callback answer",
        Duration::from_secs(10),
        |calls| {
            calls
                .iter()
                .filter(|c| c.method == "answerCallbackQuery")
                .count()
                >= 2
        },
    );
    let answered: Vec<Value> = fake
        .calls_of("answerCallbackQuery")
        .iter()
        .map(|c| c.body["callback_query_id"].clone())
        .collect();
    assert_eq!(answered, [json!("cb-a"), json!("cb-b")]);
    assert!(fake
        .calls_of("answerCallbackQuery")
        .iter()
        .all(|c| c.token == BOT_TOKEN));
}

#[test]
fn the_rate_limit_comes_before_any_bot_api_call() {
    let fake = FakeTelegram::start();
    fake.add_file("ph-big", "photos/file_1.jpg", vec![7u8; 2048]);
    let sandbox = Sandbox::new();
    let daemon = start(&sandbox, &fake, &[]);
    assert_accepted(
        &send(&daemon, "slow", &message(1, 5, "first")),
        "telegram/slow",
    );
    let photo = json!({"update_id": 2, "message": {"message_id": 2, "chat": {"id": 5},
        "photo": [{"file_id": "ph-big", "file_unique_id": "u", "width": 10, "height": 10}]}});
    let limited = assert_problem(
        &send(&daemon, "slow", &photo),
        429,
        "telegram_ingress_rate_limited",
    );
    assert!(limited["retry_after_ms"].as_u64().is_some());
    let callback = json!({"update_id": 3, "callback_query": {"id": "cb", "data": "d",
        "chat_instance": "c", "from": {"id": 1}, "message": {"message_id": 1, "chat": {"id": 5}}}});
    assert_problem(
        &send(&daemon, "slow", &callback),
        429,
        "telegram_ingress_rate_limited",
    );
    // A duplicate consumes no token and still answers.
    let resp = send(&daemon, "slow", &message(1, 5, "first"));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
}

#[test]
fn media_are_fetched_through_get_file_within_one_mib() {
    let fake = FakeTelegram::start();
    fake.add_file("big-photo", "photos/file_9.jpg", b"JPEGDATA".to_vec());
    fake.add_file("doc", "documents/report.pdf", b"%PDF-1.4 tiny".to_vec());
    fake.add_file("huge", "documents/huge.bin", vec![1u8; 1024 * 1024 + 1]);
    let sandbox = Sandbox::new();
    let daemon = start(&sandbox, &fake, &[]);

    let update = json!({"update_id": 30, "message": {"message_id": 5, "chat": {"id": 100},
        "caption": "look",
        "photo": [
            {"file_id": "small-photo", "file_unique_id": "s", "width": 90, "height": 90},
            {"file_id": "big-photo", "file_unique_id": "b", "width": 1280, "height": 960}
        ],
        "document": {"file_id": "doc", "file_unique_id": "d", "file_name": "report.pdf",
                     "mime_type": "application/pdf"}}});
    let (run_id, _) = assert_accepted(&send(&daemon, "bot", &update), "telegram/bot");
    let r = run(&daemon, &run_id);
    let attachments = r["input"]["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 2, "{r}");
    assert_eq!(attachments[0]["media_type"], "image/jpeg");
    assert_eq!(attachments[0]["size"], 8);
    assert_eq!(attachments[1]["file_name"], "report.pdf");
    assert_eq!(attachments[1]["media_type"], "application/pdf");
    let asked: Vec<Value> = fake
        .calls_of("getFile")
        .iter()
        .map(|c| c.body["file_id"].clone())
        .collect();
    assert_eq!(asked, [json!("big-photo"), json!("doc")]);
    assert_eq!(StateDb::open(&daemon.state_root).count("assets"), 2);

    // Oversize (declared, or found while downloading), ok:false and no file_path are recorded
    // as skipped; the run is created without them.
    let declared = json!({"update_id": 31, "message": {"message_id": 6, "chat": {"id": 100},
        "caption": "too big", "document": {"file_id": "x", "file_size": 5_000_000}}});
    let (run_id, _) = assert_accepted(&send(&daemon, "bot", &declared), "telegram/bot");
    let r = run(&daemon, &run_id);
    assert_eq!(r["input"]["attachments"], json!([]));
    assert!(r["metadata"]["telegram_media_skipped"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("larger than"));
    assert_eq!(
        fake.calls_of("getFile").len(),
        2,
        "a declared oversize file is never asked for"
    );

    let found_large = json!({"update_id": 32, "message": {"message_id": 7, "chat": {"id": 100},
        "document": {"file_id": "huge"}}});
    let (run_id, _) = assert_accepted(&send(&daemon, "bot", &found_large), "telegram/bot");
    assert!(
        run(&daemon, &run_id)["metadata"]["telegram_media_skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("larger than")
    );

    fake.script(
        "getFile",
        vec![
            Reply::error(400, "Bad Request: invalid file_id"),
            Reply::ok(json!({"file_id": "nopath", "file_unique_id": "n"})),
        ],
    );
    for (id, file) in [(33, "gone"), (34, "nopath")] {
        let update = json!({"update_id": id, "message": {"message_id": id, "chat": {"id": 100},
            "caption": "c", "document": {"file_id": file}}});
        let (run_id, _) = assert_accepted(&send(&daemon, "bot", &update), "telegram/bot");
        let reason = run(&daemon, &run_id)["metadata"]["telegram_media_skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            !reason.contains(BOT_TOKEN) && !reason.contains("PLANTED"),
            "{reason}"
        );
        assert!(
            reason.contains("/bot<redacted>/getFile") || reason.contains("file_path"),
            "{reason}"
        );
    }
    let log = daemon.stderr();
    assert!(!log.contains("PLANTED"), "{log}");
}

#[test]
fn planted_tokens_never_appear_in_views_metrics_or_logs() {
    let fake = FakeTelegram::start();
    fake.script(
        "answerCallbackQuery",
        vec![Reply::error(401, "Unauthorized")],
    );
    let sandbox = Sandbox::new();
    let daemon = start(&sandbox, &fake, &[]);
    let callback = json!({"update_id": 1, "callback_query": {"id": "c", "data": "d",
        "chat_instance": "c", "from": {"id": 1}, "message": {"message_id": 1, "chat": {"id": 100}}}});
    assert_accepted(&send(&daemon, "bot", &callback), "telegram/bot");
    fake.wait_for("the callback answer", Duration::from_secs(10), |calls| {
        !calls.is_empty()
    });
    let wrong = post_update(&daemon, "bot", Some("PLANTED-guess"), b"{}");
    assert_problem(&wrong, 401, "unauthorized");
    let metrics = wait_until("bot api metrics", Duration::from_secs(10), || {
        let text = daemon.admin("GET", "/metrics", None).text();
        if text.contains("kheish_telegram_bot_api_calls_total") {
            Ok(text)
        } else {
            Err(text)
        }
    });
    let mut seen = vec![metrics, daemon.stderr()];
    for target in [
        "/v1/runtime/connectors",
        "/v1/runs?limit=50",
        "/v1/receipts",
    ] {
        seen.push(daemon.admin("GET", target, None).text());
    }
    for text in &seen {
        assert!(!text.contains(BOT_TOKEN), "{text}");
        assert!(!text.contains("PLANTED-BOT"), "{text}");
        assert!(!text.contains(SECRET), "{text}");
    }
}

#[test]
fn a_rotated_secret_token_is_honoured_during_its_grace_window() {
    const REF: &str = "connectors.telegram.bot.secret_token";
    let fake = FakeTelegram::start();
    let sandbox = Sandbox::new();
    let rotate = |value: &str, grace: Option<&str>| {
        let mut cmd = sandbox.cmd();
        cmd.args(["rotate-secret", REF, "--stdin"]).stdin(value);
        if let Some(grace) = grace {
            cmd.args(["--grace", grace]);
        }
        cmd.run().success().never_shows(value);
    };
    rotate("old-secret", None);
    let daemon = Daemon::builder(&sandbox)
        .config(&format!(
            "[[telegram_connectors]]\nname = \"bot\"\nsecret_token_secret_ref = \"{REF}\"\n\
             include_self_output = false\napi_base_url = \"{}\"\n\
             session_policy = {{ create_if_missing = true }}\n",
            fake.base_url()
        ))
        .start();
    let mut next_id = 0;
    let mut status_with = |secret: &str| {
        next_id += 1;
        post_update(
            &daemon,
            "bot",
            Some(secret),
            message(next_id, 1, "x").to_string().as_bytes(),
        )
        .status
    };
    assert_eq!(status_with("old-secret"), 202);
    assert_eq!(status_with("new-secret"), 401);
    rotate("new-secret", Some("10m"));
    wait_until(
        "the rotated secret",
        Duration::from_secs(15),
        || match status_with("new-secret") {
            202 => Ok(()),
            s => Err(s.to_string()),
        },
    );
    assert_eq!(status_with("old-secret"), 202, "the grace window");
    rotate("newest-secret", None);
    wait_until(
        "the replaced secret refused",
        Duration::from_secs(15),
        || match status_with("new-secret") {
            401 => Ok(()),
            s => Err(s.to_string()),
        },
    );
    assert_eq!(status_with("old-secret"), 401);
}
