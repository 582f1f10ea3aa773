//! `cargo bench --bench slack_delivery` (wrk must be installed: `apt-get install wrk`): the
//! Slack delivery figure of issue 13.
//!
//! A no-op Slack Web API in this process (tiny_http, keep-alive) answers
//! `POST /api/chat.postMessage` with Slack's real success shape (`ok`, `channel`, `ts`,
//! `message`) and counts the calls. A release `kheishctl serve --delivery-workers 16` drains N
//! queued `slack` deliveries spread over 64 channels of one Slack connector whose
//! `api_base_url` is that server (each delivery is one text step: one `chat.postMessage`). The
//! queue is filled BEFORE the daemon starts (`load::fill_queue`); the clock runs from the
//! daemon's readiness line until the server has counted N posts. Baseline: wrk (`-t2 -c16`,
//! POST of a `chat.postMessage`-sized JSON body with a bearer token) against the same endpoint
//! in the same run. Target: deliveries/s ≥ 0.5 × wrk's requests/s.
//!
//! Environment: `BENCH_DELIVERIES` (default 20 000, rounded to a multiple of 64),
//! `BENCH_SECONDS` (wrk duration, default 5).

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "common/load.rs"]
mod load;

use std::time::{Duration, Instant};

use kheishctl::model::reply::{ReplyPlugin, ReplyTarget};

const CHANNELS: usize = 64;
const WORKERS: &str = "16";
/// A `chat.postMessage` body the size the transport sends.
const POST_BODY: &str = r#"{"channel":"C17","text":"echo: order 17 shipped","thread_ts":"1700000000.000100","client_msg_id":"0192f3a4-b5c6-7d8e-9f8e-7d6c5b4a3928"}"#;

fn slack_answer(_url: &str) -> (&'static str, bool) {
    (
        r#"{"ok":true,"channel":"C17","ts":"1700000000.000200","message":{"type":"message","text":"echo","ts":"1700000000.000200"}}"#,
        true,
    )
}

fn main() -> std::process::ExitCode {
    if !load::wrk_installed() {
        eprintln!("wrk is not installed: `apt-get install wrk` (Debian package), then run again");
        return std::process::ExitCode::from(2);
    }
    let n = (load::env_num("BENCH_DELIVERIES", 20_000) as usize / CHANNELS).max(1) * CHANNELS;
    let seconds = load::env_num("BENCH_SECONDS", 5);
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path();
    let api = load::CountingServer::start(slack_answer);
    println!(
        "slack delivery bench: {CHANNELS} channels of one Slack connector, no-op Web API at {}",
        api.addr
    );

    let base_rps = load::wrk_post(
        work,
        &format!("http://{}/api/chat.postMessage", api.addr),
        POST_BODY,
        &[("Authorization", "Bearer xoxb-bench-token")],
        (2, 16),
        seconds,
    );
    let ceiling = load::ureq_ceiling(
        &format!("http://{}/api/chat.postMessage", api.addr),
        POST_BODY,
        &[("Authorization", "Bearer xoxb-bench-token")],
        16,
        seconds,
    );

    let root = work.join("state");
    let config = format!(
        "{}\n[[slack_connectors]]\nname = \"sl\"\nallow_unauthenticated_ingress = true\nbot_token_env = \"BENCH_SLACK_BOT\"\napi_base_url = \"http://{}\"\n",
        load::QUEUE_CONNECTOR,
        api.addr
    );
    let targets: Vec<ReplyTarget> = (0..CHANNELS)
        .map(|i| {
            let address = format!(r#"{{"connector":"sl","channel_id":"C{i}"}}"#);
            ReplyTarget::new(ReplyPlugin::Slack, &address)
                .expect("a valid bench target")
                .0
        })
        .collect();
    let env = [("BENCH_SLACK_BOT", "xoxb-bench-token")];
    load::fill_queue(work, &root, (&config, &env), &targets, n);
    api.hits.store(0, std::sync::atomic::Ordering::Release);
    let daemon = load::Daemon::start_in(
        &root,
        work,
        &config,
        &["-q"],
        &["--delivery-workers", WORKERS],
        &env,
    );
    let t0 = Instant::now();
    let got = api.wait_count(n as u64, Duration::from_secs(600));
    let elapsed = t0.elapsed();
    daemon.stop();
    api.stop();
    let rate = got as f64 / elapsed.as_secs_f64();
    println!();
    println!(
        "  wrk -t2 -c16 -d{seconds}s POST /api/chat.postMessage (baseline): {base_rps:.0} req/s"
    );
    println!(
        "  16 threads posting through one ureq agent, no queue (the client's ceiling): {ceiling:.0} req/s = {:.2}x wrk",
        ceiling / base_rps.max(1.0)
    );
    println!(
        "  serve --delivery-workers {WORKERS}: {got} of {n} posted in {:.2} s = {rate:.0} deliveries/s",
        elapsed.as_secs_f64()
    );
    println!(
        "  ratio deliveries/s ÷ wrk req/s: {:.2} (target >= 0.5)",
        rate / base_rps.max(1.0)
    );
    std::process::ExitCode::SUCCESS
}
