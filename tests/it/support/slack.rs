//! The Slack side of Slack ingress (SPEC §8) for the `serve_slack_*` tests: a gateway of Slack
//! connectors pointed at a [`FakeSlack`], Events API payloads in the shapes Slack documents
//! (channel message, thread reply, `file_share`, bot message, Enterprise Grid with
//! `authorizations[]`, `app_rate_limited`, `url_verification`), and signed posting helpers.
//!
//! Signatures come from the library's `slack_v0_signature`, which the auth unit tests pin to
//! Slack's documented example; `serve_slack_ingress` also signs with `kheishctl sign`.

#![allow(dead_code)]

use serde_json::{json, Value};

use kheishctl::ingress::auth::slack_v0_signature;

use super::daemon::Daemon;
use super::fake_slack::FakeSlack;
use super::http::Response;
use super::ingress::now_secs;
use super::Sandbox;

/// The signing secret of every test connector (through the environment).
pub const SIGNING: &str = "slack-signing-secret-for-tests-8f3a";
/// The default bot token, and the one of team `T2` (`team_bot_tokens`).
pub const BOT: &str = "xoxb-planted-default-bot-token-1111";
pub const BOT_T2: &str = "xoxb-planted-team-two-bot-token-2222";

/// `slack/support`: signed, bot token, no allowlists. `slack/grid`: every allowlist and a
/// per-team token. `slack/open`: unauthenticated. `slack/nobot`: signed, no bot token. `slack/slow`: one event per second.
pub fn gateway(api_base_url: &str) -> String {
    format!(
        r#"
[[slack_connectors]]
name = "support"
signing_secret_env = "SLACK_SIGNING"
bot_token_env = "SLACK_BOT"
api_base_url = "{api_base_url}"
ingress_events_per_second = 100000
[slack_connectors.session_policy]
create_if_missing = true

[[slack_connectors]]
name = "grid"
signing_secret_env = "SLACK_SIGNING"
bot_token_env = "SLACK_BOT"
api_base_url = "{api_base_url}"
allowed_api_app_ids = ["A1"]
allowed_enterprise_ids = ["E1"]
allowed_team_ids = ["T1", "T2"]
allowed_channel_ids = ["C1", "C2"]
team_bot_tokens = [{{ team_id = "T2", bot_token_env = "SLACK_BOT_T2" }}]
ingress_events_per_second = 100000
[slack_connectors.session_policy]
create_if_missing = true

[[slack_connectors]]
name = "open"
allow_unauthenticated_ingress = true
bot_token_env = "SLACK_BOT"
api_base_url = "{api_base_url}"
ingress_events_per_second = 100000
[slack_connectors.session_policy]
create_if_missing = true

[[slack_connectors]]
name = "nobot"
signing_secret_env = "SLACK_SIGNING"
include_self_output = false
api_base_url = "{api_base_url}"
ingress_events_per_second = 100000
[slack_connectors.session_policy]
create_if_missing = true

[[slack_connectors]]
name = "slow"
signing_secret_env = "SLACK_SIGNING"
bot_token_env = "SLACK_BOT"
api_base_url = "{api_base_url}"
ingress_events_per_second = 1
[slack_connectors.session_policy]
create_if_missing = true
"#
    )
}

/// A fake Slack, a sandbox and a daemon serving [`gateway`] with extra `args`.
pub fn start(args: &[&str]) -> (FakeSlack, Sandbox, Daemon) {
    let fake = FakeSlack::start();
    let sandbox = Sandbox::new();
    let daemon = daemon(&fake, &sandbox, args, &[]);
    (fake, sandbox, daemon)
}

/// A daemon serving [`gateway`] of `fake` in `sandbox` with extra `args` and `env`.
pub fn daemon(fake: &FakeSlack, sandbox: &Sandbox, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let mut builder = Daemon::builder(sandbox)
        .config(&gateway(&fake.api_base_url()))
        .env("SLACK_SIGNING", SIGNING)
        .env("SLACK_BOT", BOT)
        .env("SLACK_BOT_T2", BOT_T2)
        .args(args);
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    builder.start()
}

pub fn path(name: &str) -> String {
    format!("/v1/connectors/slack/{name}")
}

/// `X-Slack-Request-Timestamp` and `X-Slack-Signature` for `body` at `ts`.
pub fn signed_headers_at(body: &[u8], ts: i64) -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "application/json".into()),
        ("X-Slack-Request-Timestamp".into(), ts.to_string()),
        (
            "X-Slack-Signature".into(),
            slack_v0_signature(SIGNING.as_bytes(), ts, body),
        ),
    ]
}

pub fn signed_headers(body: &[u8]) -> Vec<(String, String)> {
    signed_headers_at(body, now_secs())
}

/// POSTs `body` with `headers` to connector `name`.
pub fn post_raw(
    daemon: &Daemon,
    name: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Response {
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    daemon.request("POST", &path(name), &h, body)
}

/// POSTs `payload`, signed now, to connector `name`.
pub fn post(daemon: &Daemon, name: &str, payload: &Value) -> Response {
    let body = payload.to_string().into_bytes();
    post_raw(daemon, name, &signed_headers(&body), &body)
}

/// An `event_callback` envelope around `event` (a single-workspace install).
pub fn envelope(event_id: &str, event: Value) -> Value {
    json!({
        "token": "verification-token-unused",
        "team_id": "T1",
        "api_app_id": "A1",
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": 1_700_000_000,
        "authorizations": [{
            "enterprise_id": null,
            "team_id": "T1",
            "user_id": "U0BOT",
            "is_bot": true,
            "is_enterprise_install": false
        }],
        "is_ext_shared_channel": false,
        "event_context": "4-eyJldCI6Im1lc3NhZ2UifQ"
    })
}

/// A user's message in a channel.
pub fn message(channel: &str, ts: &str, text: &str) -> Value {
    json!({
        "type": "message",
        "channel": channel,
        "user": "U123",
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "channel_type": "channel",
        "team": "T1",
        "client_msg_id": "5f5bd2a4-6b2c-4b1e-9c8e-1c6e4d2f0a11"
    })
}

/// A reply in the thread rooted at `thread_ts`.
pub fn thread_reply(channel: &str, ts: &str, thread_ts: &str, text: &str) -> Value {
    let mut m = message(channel, ts, text);
    m["thread_ts"] = json!(thread_ts);
    m["parent_user_id"] = json!("U123");
    m
}

/// A `file_share` message sharing `files`.
pub fn file_share(channel: &str, ts: &str, text: &str, files: Vec<Value>) -> Value {
    let mut m = message(channel, ts, text);
    m["subtype"] = json!("file_share");
    m["files"] = Value::Array(files);
    m["upload"] = json!(false);
    m
}

/// A Slack file object whose private URLs are `url`.
pub fn file_object(id: &str, name: &str, url: &str, size: u64) -> Value {
    json!({
        "id": id,
        "created": 1_700_000_000,
        "name": name,
        "title": name,
        "mimetype": "text/plain",
        "filetype": "text",
        "user": "U123",
        "size": size,
        "mode": "hosted",
        "is_external": false,
        "url_private": url,
        "url_private_download": url,
        "permalink": "https://example.slack.com/files/U123/F1/x"
    })
}

/// A message posted by a bot (`bot_id`, subtype `bot_message`).
pub fn bot_message(channel: &str, ts: &str) -> Value {
    json!({
        "type": "message",
        "subtype": "bot_message",
        "text": "automated",
        "ts": ts,
        "username": "deploybot",
        "bot_id": "B999",
        "channel": channel,
        "event_ts": ts,
        "channel_type": "channel"
    })
}

/// An Enterprise Grid envelope: `enterprise_id`, `context_*` members and `authorizations[]`
/// (the second one an org-wide install with `team_id: null`).
pub fn grid_envelope(event_id: &str, team: &str, event: Value) -> Value {
    json!({
        "token": "verification-token-unused",
        "enterprise_id": "E1",
        "team_id": team,
        "context_team_id": team,
        "context_enterprise_id": "E1",
        "api_app_id": "A1",
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": 1_700_000_000,
        "authorizations": [
            {"enterprise_id": "E1", "team_id": team, "user_id": "U0BOT", "is_bot": true, "is_enterprise_install": false},
            {"enterprise_id": "E1", "team_id": null, "user_id": "U0BOT", "is_bot": true, "is_enterprise_install": true}
        ],
        "is_ext_shared_channel": false
    })
}

pub fn url_verification(challenge: &str) -> Value {
    json!({
        "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl",
        "challenge": challenge,
        "type": "url_verification"
    })
}

pub fn app_rate_limited(team: &str) -> Value {
    json!({
        "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl",
        "type": "app_rate_limited",
        "team_id": team,
        "minute_rate_limited": 1_518_467_820,
        "api_app_id": "A1"
    })
}
