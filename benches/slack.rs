//! `cargo bench --bench slack` (or `benches/run.sh slack`, which installs wrk first): signed
//! Slack Events API ingress (SPEC §8, issue 13) of a release `kheishctl serve`, in accepted
//! events per second, against signed HTTP-connector ingress (bearer + Kheish v1 HMAC) measured
//! in the same run. Target: Slack at least 0.8x the HTTP figure.
//!
//! Load: wrk, 64 keep-alive connections (2 threads), every event new (unique `event_id`), a
//! channel message in Slack's documented `event_callback` shape over 64 channels, signed with
//! `X-Slack-Request-Timestamp` / `X-Slack-Signature` (timestamps taken at start, well inside the
//! 300 s window). Each run gets a fresh state root. Events per second are the events ACCEPTED
//! during the run (from `/metrics`) divided by its length.
//!
//! Two Slack runs: top-level channel messages (each starts a thread, so each event creates a
//! session: the target figure) and thread replies spread over 1 024 threads (each event lands
//! in an existing session, the work the HTTP run does: its events share the connector's
//! default binding key). The second isolates what the Slack connector itself costs.
//!
//! Environment: `BENCH_SECONDS` (per run, default 5), `BENCH_REQUESTS` (requests per wrk thread,
//! default 60 000).

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "common/load.rs"]
mod load;

use std::fmt::Write as _;
use std::path::Path;

use kheishctl::ingress::auth::slack_v0_signature;
use load::{env_num, Daemon, CONNECTIONS, WRK_THREADS};

/// The signing secret of the benchmark's Slack connector.
const SIGNING: &str = "bench-slack-signing-secret-0123456789";

fn main() -> std::process::ExitCode {
    if !load::wrk_installed() {
        eprintln!("wrk is not installed: run `benches/run.sh slack` (installs it) or `apt-get install wrk`");
        return std::process::ExitCode::from(2);
    }
    let seconds = env_num("BENCH_SECONDS", 5);
    let per_thread = env_num("BENCH_REQUESTS", 60_000) as usize;
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path();
    println!("slack ingress bench: {CONNECTIONS} keep-alive connections, {WRK_THREADS} wrk threads, {seconds}s per run, every event new");

    let http_target = "/v1/connectors/http/bench";
    load::write_requests(work, "http", http_target, per_thread, |t, i| {
        format!(r#"{{"content":"event {i} from thread {t}","idempotency_key":"h-{t}-{i}"}}"#)
    });
    let http_script = load::write_script(work, http_target);
    write_slack_requests(work, "slack", per_thread, false);
    write_slack_requests(work, "replies", per_thread, true);
    let slack_script = |set: &str| {
        load::write_replay_script(
            work,
            set,
            "/v1/connectors/slack/bench",
            &[("Content-Type", "application/json")],
            &["X-Slack-Signature", "X-Slack-Request-Timestamp"],
        )
    };

    let runs = [
        ("http", http_script, "http/bench"),
        ("slack", slack_script("slack"), "slack/bench"),
        ("replies", slack_script("replies"), "slack/bench"),
    ];
    let mut rates = Vec::new();
    for (set, script, connector) in runs {
        let state_root = work.join(format!("state-{set}"));
        let daemon = Daemon::start_in(
            &state_root,
            work,
            &config(),
            &["-q"],
            &[],
            &[("BENCH_SLACK", SIGNING)],
        );
        let measured = load::Measured::wrk(&daemon, &script, work, set, seconds);
        daemon.stop();
        let (run, events) = (&measured.run, measured.accepted(connector));
        println!(
            "  {set:<7} req/s {:>9.0}  p50 {:>7.2} ms  p99 {:>7.2} ms  non-2xx {:>6}  accepted events/s {:>9.0}",
            run.rps,
            run.p50_ms,
            run.p99_ms,
            run.non_2xx,
            events / seconds as f64
        );
        rates.push(events / seconds as f64);
    }
    println!(
        "\n  signed slack vs signed http ingress: {:.2}x (target >= 0.8x)",
        rates[1] / rates[0].max(1.0)
    );
    println!(
        "  the same with slack thread replies (existing sessions, as the http run): {:.2}x",
        rates[2] / rates[0].max(1.0)
    );
    std::process::ExitCode::SUCCESS
}

fn config() -> String {
    format!(
        "[[http_connectors]]\nname = \"bench\"\nbearer_token_env = \"BENCH_TOKEN\"\n\
         require_hmac_signature = true\nhmac_secret_env = \"BENCH_HMAC\"\n\
         ingress_events_per_second = {max}\ndefault_binding_keys = [\"bench\"]\n\
         [http_connectors.session_policy]\ncreate_if_missing = true\n\n\
         [[slack_connectors]]\nname = \"bench\"\nsigning_secret_env = \"BENCH_SLACK\"\n\
         include_self_output = false\ningress_events_per_second = {max}\n\
         [slack_connectors.session_policy]\ncreate_if_missing = true\n",
        max = u32::MAX
    )
}

/// `signature \t timestamp \t body` lines per wrk thread, in files `SET-<thread>.txt`: one
/// new event each. Top-level channel messages (`replies = false`) each start a thread, so each
/// creates a session; replies go to 16 threads per channel (1 024 in all), so after its first
/// message a thread's session exists, as the HTTP run's one session does.
fn write_slack_requests(dir: &Path, set: &str, per_thread: usize, replies: bool) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for t in 0..WRK_THREADS {
        let mut out = String::with_capacity(per_thread * 600);
        for i in 0..per_thread {
            let thread = if replies {
                format!(r#""thread_ts":"1690000000.{:06}","#, (i / 64) % 16)
            } else {
                String::new()
            };
            let body = format!(
                r#"{{"token":"unused","team_id":"T1","api_app_id":"A1","event":{{"type":"message","channel":"C{c}","user":"U{u}","text":"message {i} from thread {t}","ts":"1700000000.{t}{i:06}",{thread}"event_ts":"1700000000.{t}{i:06}","channel_type":"channel"}},"type":"event_callback","event_id":"Ev{t}x{i}","event_time":1700000000,"authorizations":[{{"enterprise_id":null,"team_id":"T1","user_id":"U0","is_bot":true,"is_enterprise_install":false}}]}}"#,
                c = i % 64,
                u = i % 100
            );
            let sig = slack_v0_signature(SIGNING.as_bytes(), ts, body.as_bytes());
            writeln!(out, "{sig}\t{ts}\t{body}").unwrap();
        }
        std::fs::write(dir.join(format!("{set}-{t}.txt")), out).unwrap();
    }
}
