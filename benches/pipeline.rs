//! `cargo bench --bench pipeline` (or `benches/run.sh pipeline`): the whole pipeline an
//! operator runs (SPEC §14): signed ingress -> `echo` handler -> delivery to a no-op sink over
//! 64 reply-target paths, against a no-op tiny_http server under the same 64-connection load.
//!
//! events/s = accepted events / time from the start of the load until the last of them is
//! delivered. Also printed: ingress latency while the handler and delivery run, SQLite commits
//! per delivered event, and the same pipeline with `--handler none` and a bench client claiming
//! batches of 64 through `POST /v1/runs/claim`.
//!
//! Last: ingress with `--handler echo` while every reply target refuses connections, with the
//! delivery workers on and off (target: on >= 0.8x off), same load.
//!
//! Environment: `BENCH_SECONDS` (load duration, default 10), `BENCH_REQUESTS` (signed requests
//! per wrk thread, default 150 000), `BENCH_DELIVERY_WORKERS` (default 16).

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "common/load.rs"]
mod load;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use load::{Daemon, NoopServer, ADMIN};

const TARGET: &str = "/v1/connectors/http/bench";
const PATHS: usize = 64;
/// Threads one API worker settles a claimed batch with.
const API_SETTLERS: usize = 16;

fn main() -> std::process::ExitCode {
    if !load::wrk_installed() {
        eprintln!("wrk is not installed: run `benches/run.sh pipeline` (installs it) or `apt-get install wrk`");
        return std::process::ExitCode::from(2);
    }
    let seconds = load::env_num("BENCH_SECONDS", 10);
    let per_thread = load::env_num("BENCH_REQUESTS", 150_000) as usize;
    let senders = load::env_num("BENCH_DELIVERY_WORKERS", 16).to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path();
    let sink = NoopServer::start();
    let sink_addr = sink.addr;
    load::write_requests(work, "events", TARGET, per_thread, |t, i| {
        format!(
            r#"{{"content":"order {i} from thread {t}","idempotency_key":"e-{t}-{i}","reply_targets":[{{"plugin":"http","address":"{{\"url\":\"http://{sink_addr}/sink/{}\",\"allow_private_network\":true}}"}}]}}"#,
            (t * 7919 + i) % PATHS
        )
    });
    let script = load::write_script(work, TARGET);
    // The same load with every reply target on a loopback port that refuses connections (a
    // port bound, then released): delivery fails fast and backs off.
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    load::write_requests(work, "refused", TARGET, per_thread, |t, i| {
        format!(
            r#"{{"content":"order {i} from thread {t}","idempotency_key":"r-{t}-{i}","reply_targets":[{{"plugin":"http","address":"{{\"url\":\"http://{refused}/sink/{}\",\"allow_private_network\":true}}"}}]}}"#,
            (t * 7919 + i) % PATHS
        )
    });
    println!("pipeline bench: {} keep-alive connections, {seconds}s of signed ingress, --handler echo, delivery to a no-op sink over {PATHS} paths ({senders} senders)", load::CONNECTIONS);

    // Baseline: the no-op server under the same load.
    let base = load::wrk(
        &script,
        &format!("http://{sink_addr}{TARGET}"),
        work,
        "events",
        seconds,
    );

    let echo = run_pipeline(
        work,
        &script,
        seconds,
        &["--handler", "echo", "--delivery-workers", &senders],
        None,
    );
    let batch = run_pipeline(
        work,
        &script,
        seconds,
        &["--handler", "none", "--delivery-workers", &senders],
        Some(64),
    );
    // Ingress with echo while every target refuses, against the same with delivery off.
    let refusing = |workers: &str| {
        let _ = std::fs::remove_dir_all(work.join("state"));
        let daemon = Daemon::start(
            work,
            &pipeline_config(),
            &["--handler", "echo", "--delivery-workers", workers],
            &[],
        );
        let r = load::wrk(
            &script,
            &format!("http://{}{TARGET}", daemon.addr),
            work,
            "refused",
            seconds,
        );
        daemon.stop();
        r
    };
    let refusing_on = refusing(&senders);
    let refusing_off = refusing("0");
    sink.stop();

    println!();
    load::print_header();
    refusing_on.print("echo, every target refusing, delivery on");
    refusing_off.print("echo, every target refusing, delivery off");
    base.print("no-op tiny_http (baseline)");
    echo.ingress.print("serve ingress, echo + delivery running");
    batch.ingress.print("serve ingress, API claims + delivery");
    println!();
    for (label, p) in [
        ("--handler echo", &echo),
        ("--handler none + API batch claims of 64", &batch),
    ] {
        println!("  {label}:");
        println!(
            "    {} accepted, {} delivered in {:.2} s: {:.0} events/s end to end; ratio to the no-op server {:.3} (target >= 0.25)",
            p.accepted,
            p.delivered,
            p.elapsed.as_secs_f64(),
            p.events_per_sec(),
            p.events_per_sec() / base.rps
        );
        println!(
            "    ingress p99 {:.2} ms = {:.1}x the no-op's {:.2} ms (target <= 3x); SQLite commits per delivered event: {:.3} (target <= 0.2)",
            p.ingress.p99_ms,
            p.ingress.p99_ms / base.p99_ms,
            base.p99_ms,
            p.commits / p.delivered.max(1) as f64
        );
        if !p.complete {
            println!(
                "    NOT COMPLETE: not every accepted event was delivered before the deadline"
            );
        }
    }
    println!(
        "  refusing targets: ingress with delivery on / off = {:.2}x (target >= 0.8)",
        refusing_on.rps / refusing_off.rps.max(1.0)
    );
    std::process::ExitCode::SUCCESS
}

/// The bench connector: bearer + HMAC, no rate limit, payload reply targets allowed.
fn pipeline_config() -> String {
    format!(
        "[[http_connectors]]\nname = \"bench\"\nbearer_token_env = \"BENCH_TOKEN\"\nrequire_hmac_signature = true\n\
         hmac_secret_env = \"BENCH_HMAC\"\nsignature_max_age_secs = 3600\ningress_events_per_second = {}\n\
         allow_payload_reply_targets = true\ndefault_binding_keys = [\"bench\"]\n\
         [http_connectors.session_policy]\ncreate_if_missing = true\n",
        u32::MAX
    )
}

struct Pipeline {
    ingress: load::WrkResult,
    accepted: u64,
    delivered: u64,
    elapsed: Duration,
    commits: f64,
    complete: bool,
}

impl Pipeline {
    fn events_per_sec(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64()
    }
}

fn run_pipeline(
    work: &Path,
    script: &Path,
    seconds: u64,
    serve_args: &[&str],
    api_batch: Option<u32>,
) -> Pipeline {
    let _ = std::fs::remove_dir_all(work.join("state"));
    let daemon = Daemon::start(work, &pipeline_config(), serve_args, &[]);
    let before = daemon.metrics();
    let stop = Arc::new(AtomicBool::new(false));
    let claimer = api_batch.map(|max| {
        let addr = daemon.addr;
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || api_worker(addr, max, &stop))
    });
    let started = Instant::now();
    let ingress = load::wrk(
        script,
        &format!("http://{}{TARGET}", daemon.addr),
        work,
        "events",
        seconds,
    );
    let accepted_series =
        "kheish_ingress_requests_total{connector=\"http/bench\",outcome=\"accepted\"}";
    let accepted = (load::metric(&daemon.metrics(), accepted_series)
        - load::metric(&before, accepted_series)) as u64;
    // Wait until every accepted event's delivery is delivered (or 120 s pass).
    let delivered_series = "kheish_deliveries{state=\"delivered\"}";
    let deadline = Instant::now() + Duration::from_secs(120);
    let (delivered, complete) = loop {
        let m = daemon.metrics();
        let delivered = load::metric(&m, delivered_series) as u64;
        if delivered >= accepted {
            break (delivered, true);
        }
        if Instant::now() > deadline {
            break (delivered, false);
        }
        std::thread::park_timeout(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Release);
    if let Some(t) = claimer {
        let _ = t.join();
    }
    let after = daemon.metrics();
    let commits = load::metric(&after, "kheish_store_commits_total")
        - load::metric(&before, "kheish_store_commits_total");
    daemon.stop();
    Pipeline {
        ingress,
        accepted,
        delivered,
        elapsed,
        commits,
        complete,
    }
}

/// A worker on the claim API: claims batches of `max` runs (long-polling 1 s), then posts one
/// output per run and completes it, [`API_SETTLERS`] runs at a time.
fn api_worker(addr: std::net::SocketAddr, max: u32, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let body = format!(r#"{{"max":{max},"wait_ms":1000,"lease_ms":60000}}"#);
        let (status, text) = post(addr, "/v1/runs/claim", &body);
        if status != 200 {
            continue;
        }
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let ids: Vec<String> = doc["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|run| run["run_id"].as_str().map(str::to_string))
            .collect();
        // A worker settles its batch concurrently (as a real worker pool would), so the
        // settlements share the daemon's group commits.
        std::thread::scope(|s| {
            for chunk in ids.chunks(ids.len().div_ceil(API_SETTLERS).max(1)) {
                s.spawn(move || {
                    for id in chunk {
                        post(
                            addr,
                            &format!("/v1/runs/{id}/output"),
                            r#"{"content":"ok"}"#,
                        );
                        post(addr, &format!("/v1/runs/{id}/complete"), "{}");
                    }
                });
            }
        });
    }
}

fn post(addr: std::net::SocketAddr, target: &str, body: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = write!(
        s,
        // HTTP/1.0: the answer comes with its length or until close, never chunked.
        "POST {target} HTTP/1.0\r\nHost: bench\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}
