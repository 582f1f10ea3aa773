//! Telegram long polling (SPEC §9.2) against the fake Bot API: the persisted offset across a
//! restart, out-of-order and repeated updates, flood waits and failed calls, updates that can
//! never succeed, the rate limit, and pollers following config reloads.

use std::time::Duration;

use serde_json::{json, Value};

use crate::serve_telegram::{message, BOT_TOKEN};
use crate::support::daemon::{Daemon, DaemonBuilder};
use crate::support::db::StateDb;
use crate::support::fake_telegram::{FakeTelegram, Reply};
use crate::support::wait::wait_until;
use crate::support::{metric_sample, Sandbox};

const DEADLINE: Duration = Duration::from_secs(30);

fn config(base_url: &str, extra: &str) -> String {
    format!(
        "[[telegram_connectors]]\nname = \"poll\"\ningress_mode = \"polling\"\n\
         bot_token_env = \"TG_BOT\"\napi_base_url = \"{base_url}\"\npolling_timeout_seconds = 1\n\
         include_self_output = false\nsession_policy = {{ create_if_missing = true }}\n{extra}"
    )
}

fn builder<'a>(sandbox: &'a Sandbox, config: &str) -> DaemonBuilder<'a> {
    Daemon::builder(sandbox)
        .config(config)
        .env("TG_BOT", BOT_TOKEN)
}

fn runs(daemon: &Daemon) -> i64 {
    StateDb::open(&daemon.state_root).count("runs")
}

fn wait_runs(daemon: &Daemon, n: i64) {
    wait_until(&format!("{n} runs"), DEADLINE, || {
        let got = runs(daemon);
        if got == n {
            Ok(())
        } else {
            Err(format!("{got} runs"))
        }
    });
}

/// Waits until the fake saw a `getUpdates` with `offset` (the batch before it is saved).
fn wait_offset(fake: &FakeTelegram, offset: i64) {
    wait_until(
        &format!("getUpdates with offset {offset}"),
        DEADLINE,
        || {
            let offsets = fake.offsets();
            if offsets.contains(&Some(offset)) {
                Ok(())
            } else {
                Err(format!("{offsets:?}"))
            }
        },
    );
}

fn msg(id: i64) -> Value {
    let mut m = message(id, 100, &format!("update {id}"));
    m["message"]["date"] = json!(crate::support::ingress::now_secs());
    m
}

#[test]
fn a_restart_neither_loses_nor_repeats_updates() {
    let fake = FakeTelegram::start();
    let sandbox = Sandbox::new();
    let config = config(&fake.base_url(), "");
    let daemon = builder(&sandbox, &config).start();
    for id in 1..=3 {
        fake.push_update(msg(id));
    }
    wait_runs(&daemon, 3);
    wait_offset(&fake, 4);
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains(BOT_TOKEN), "{log}");

    // Updates that arrive while the daemon is down are fetched from the saved offset.
    fake.push_update(msg(4));
    fake.push_update(msg(5));
    let before = fake.offsets().len();
    let daemon = builder(&sandbox, &config).start();
    wait_runs(&daemon, 5);
    wait_offset(&fake, 6);
    assert_eq!(
        fake.offsets()[before],
        Some(4),
        "the first call after the restart"
    );
    let db = StateDb::open(&daemon.state_root);
    assert_eq!((db.count("receipts"), db.count("runs")), (5, 5));
    assert_eq!(fake.pending_updates(), 0);
    let metrics = daemon.admin("GET", "/metrics", None).text();
    assert_eq!(
        metric_sample(
            &metrics,
            "kheish_ingress_requests_total{connector=\"telegram/poll\",outcome=\"accepted\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("kheish_telegram_poll_lag_seconds{connector=\"telegram/poll\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains(BOT_TOKEN));
}

#[test]
fn out_of_order_repeated_and_failed_fetches_are_handled() {
    let fake = FakeTelegram::start();
    fake.script(
        "getUpdates",
        vec![
            Reply::ok(json!([msg(3), msg(1), msg(2), msg(2), msg(1)])),
            Reply::flood_wait(1),
            Reply::error(500, "Internal Server Error"),
            Reply::garbage(502),
            Reply::redirect(),
        ],
    );
    let sandbox = Sandbox::new();
    let daemon = builder(&sandbox, &config(&fake.base_url(), "")).start();
    wait_runs(&daemon, 3);
    fake.push_update(msg(4));
    wait_runs(&daemon, 4);
    wait_offset(&fake, 5);
    let offsets = fake.offsets();
    assert_eq!(offsets[0], None, "{offsets:?}");
    assert!(offsets[1..6].iter().all(|o| *o == Some(4)), "{offsets:?}");
    let log = daemon.stderr();
    assert!(log.contains("/bot<redacted>/getUpdates"), "{log}");
    assert!(log.contains("Too Many Requests"), "{log}");
    assert!(!log.contains(BOT_TOKEN), "{log}");
    let db = StateDb::open(&daemon.state_root);
    assert_eq!((db.count("receipts"), db.count("runs")), (4, 4));
}

#[test]
fn updates_that_can_never_succeed_are_recorded_and_skipped() {
    let fake = FakeTelegram::start();
    let sandbox = Sandbox::new();
    let daemon = builder(
        &sandbox,
        &config(&fake.base_url(), "allowed_chat_ids = [100]\n"),
    )
    .start();
    fake.push_update(message(1, 555, "outside"));
    fake.push_update(json!({"update_id": 2, "message": {"text": "no chat"}}));
    fake.push_update(json!({"update_id": 3, "callback_query": {"id": "c", "data": "d"}}));
    fake.push_update(json!({"update_id": 4, "poll": {"id": "p"}}));
    fake.push_update(msg(5));
    wait_runs(&daemon, 1);
    wait_offset(&fake, 6);
    let log = daemon.stderr();
    for id in 1..=3 {
        assert!(
            log.contains(&format!("update {id} can never be accepted and is skipped")),
            "{log}"
        );
    }
    let metrics = daemon.admin("GET", "/metrics", None).text();
    assert_eq!(
        metric_sample(
            &metrics,
            "kheish_telegram_poll_skipped_updates_total{connector=\"telegram/poll\"}"
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(runs(&daemon), 1);
}

#[test]
fn the_rate_limit_delays_polled_updates_without_losing_them() {
    let fake = FakeTelegram::start();
    let sandbox = Sandbox::new();
    let daemon = builder(
        &sandbox,
        &config(&fake.base_url(), "ingress_events_per_second = 1\n"),
    )
    .start();
    for id in 1..=3 {
        fake.push_update(msg(id));
    }
    wait_runs(&daemon, 3);
    wait_offset(&fake, 4);
    let metrics = daemon.admin("GET", "/metrics", None).text();
    assert!(
        metric_sample(
            &metrics,
            "kheish_ingress_requests_total{connector=\"telegram/poll\",outcome=\"rate_limited\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    let db = StateDb::open(&daemon.state_root);
    assert_eq!(db.count("receipts"), 3);
}

#[test]
fn pollers_follow_config_reloads() {
    let first = FakeTelegram::start();
    let second = FakeTelegram::start();
    let sandbox = Sandbox::new();
    let daemon = builder(&sandbox, &config(&first.base_url(), "")).start();
    first.push_update(msg(1));
    wait_runs(&daemon, 1);
    wait_offset(&first, 2);

    // Point the connector at another Bot API server: its poller restarts there, from the
    // saved offset.
    sandbox.write("connectors.toml", config(&second.base_url(), ""));
    daemon.signal("HUP");
    second.push_update(msg(2));
    wait_runs(&daemon, 2);
    wait_offset(&second, 3);
    assert_eq!(second.offsets()[0], Some(2));

    // A connector switched to webhook mode stops polling: the next update stays unconfirmed.
    let webhook = config(&second.base_url(), "").replace(
        "ingress_mode = \"polling\"",
        "ingress_mode = \"webhook\"\nallow_unauthenticated_ingress = true",
    );
    sandbox.write("connectors.toml", webhook);
    daemon.signal("HUP");
    daemon.wait_for_log(
        "telegram poller `poll`: stopped (connector removed or not polling)",
        DEADLINE,
    );
    let resp = daemon.post_json("/v1/connectors/telegram/poll", msg(7).to_string());
    assert_eq!(resp.status, 202, "{}", resp.text());
    wait_runs(&daemon, 3);
    let log = daemon.stderr();
    assert!(
        log.contains("telegram poller `poll`: configuration changed; restarting it"),
        "{log}"
    );
}
