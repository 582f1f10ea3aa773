//! Shared bench helpers: generated connector files and a small timing harness that reports
//! minimum and median wall time of whole-process runs.

#![allow(dead_code, clippy::print_stdout)]

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A connector file with `n` connectors spread evenly over the four kinds, every field a real
/// deployment sets (secret refs, allowlists, reply targets, session policies, child processes).
pub fn connector_file(n: usize) -> String {
    let mut s = String::with_capacity(n * 600);
    for i in 0..n {
        match i % 4 {
            0 => write!(
                s,
                r#"[[http_connectors]]
name = "orders-{i}"
bearer_token_env = "ORDERS_{i}_TOKEN"
require_hmac_signature = true
hmac_secret_secret_ref = "connectors.http.orders-{i}.hmac_secret"
signature_max_age_secs = 300
ingress_events_per_second = 120
default_binding_keys = ["orders", "tenant-{i}"]
default_reply_targets = [{{ plugin = "http", address = '{{"url":"https://hooks.example.com/{i}","headers":{{"X-Tenant":"t{i}"}}}}' }}]

[http_connectors.session_policy]
create_if_missing = true
persona_id = "persona-{i}"

"#
            ),
            1 => write!(
                s,
                r#"[[slack_connectors]]
name = "support-{i}"
signing_secret_secret_ref = "connectors.slack.support-{i}.signing_secret"
bot_token_secret_ref = "connectors.slack.support-{i}.bot_token"
allowed_team_ids = ["T{i}", "T{i}b"]
allowed_channel_ids = ["C{i}"]
team_bot_tokens = [{{ team_id = "T{i}b", bot_token_env = "SLACK_{i}_TEAM_B" }}]

"#
            ),
            2 => write!(
                s,
                r#"[[telegram_connectors]]
name = "bot-{i}"
ingress_mode = "polling"
bot_token_secret_ref = "connectors.telegram.bot-{i}.bot_token"
polling_timeout_seconds = 30
allowed_chat_ids = [{i}, -100{i}]

"#
            ),
            _ => write!(
                s,
                r#"[[external_connectors]]
name = "sidecar-{i}"
platform = "discord"
mode = "child_process"
base_url = "http://127.0.0.1:{port}"
shared_token_secret_ref = "connectors.external.sidecar-{i}.shared_token"

[external_connectors.session_policy]
create_if_missing = true
credential_scope.route_allow = ["openai"]

[external_connectors.child_process]
command = "python3"
args = ["run_connector.py", "discord", "{i}"]
env = {{ DISCORD_REQUIRE_MENTION = "true" }}
credential_slots = {{ DISCORD_BOT_TOKEN = "connectors.external.sidecar-{i}.bot_token" }}

"#,
                port = 20000 + i
            ),
        }
        .expect("writing to a String cannot fail");
    }
    s
}

/// Runs `cmd` `runs` times (after one warm-up) and returns the wall times, sorted.
pub fn time_runs(runs: usize, mut cmd: impl FnMut() -> Command) -> Vec<Duration> {
    let mut out = Vec::with_capacity(runs);
    for i in 0..=runs {
        let start = Instant::now();
        let status = cmd()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("starting the benchmarked command");
        let elapsed = start.elapsed();
        assert!(status.success(), "benchmarked command failed: {status}");
        if i > 0 {
            out.push(elapsed);
        }
    }
    out.sort();
    out
}

/// Median of sorted durations.
pub fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a bench file");
    path
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
