//! `cargo bench --bench sidecar_delivery` (wrk must be installed: `apt-get install wrk`): the
//! external-sidecar delivery figure of issue 11.
//!
//! A no-op sidecar in this process (tiny_http, keep-alive: `GET /manifest` answers protocol 1,
//! `POST /deliver` answers `{"status":"committed"}` and is counted). A release
//! `kheishctl serve --delivery-workers 16` drains N queued `external` deliveries spread over 256
//! reply routes of one external connector (distinct routes are distinct targets, so per-target
//! FIFO order still lets 16 go out at once). The queue is filled BEFORE the daemon starts
//! (through the library's enqueue path, as `benches/delivery.rs` does); the clock runs from the
//! daemon's readiness line until the sidecar has counted N deliveries. Baseline: wrk
//! (`-t2 -c16 -d5s`, POST of a `/deliver`-sized JSON body with the runtime headers) against the
//! same sidecar endpoint in the same run. Target: deliveries/s ≥ 0.5 × wrk's requests/s.
//!
//! Environment: `BENCH_DELIVERIES` (default 20 000, rounded down to a multiple of 256),
//! `BENCH_SECONDS` (wrk duration, default 5).

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "common/load.rs"]
mod load;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kheishctl::model::reply::{ReplyPlugin, ReplyTarget};

const ROUTES: usize = 256;
const WORKERS: &str = "16";
const WRK_THREADS: &str = "2";
const WRK_CONNECTIONS: &str = "16";
/// A body the size of a typical `/deliver` document.
const DELIVER_BODY: &str = r#"{"protocol_version":1,"delivery_id":"dlv_0192f3a4b5c6_9f8e7d6c5b4a3928","attempt":1,"reply_route":{"r":17},"conversation":{"session_id":"http:bench:5f1d","thread_id":null},"content":"echo: order 17 shipped","parts":[],"artifacts":[],"metadata":{"run_id":"run_0192f3a4b5c6_9f8e7d6c5b4a3928","output_id":"out_0192f3a4b5c6_9f8e7d6c5b4a3928","source_connector":"http/bench","replayed_from_delivery_id":null}}"#;

fn main() -> std::process::ExitCode {
    if !load::wrk_installed() {
        eprintln!("wrk is not installed: `apt-get install wrk` (Debian package), then run again");
        return std::process::ExitCode::from(2);
    }
    let n = (load::env_num("BENCH_DELIVERIES", 20_000) as usize / ROUTES).max(1) * ROUTES;
    let seconds = load::env_num("BENCH_SECONDS", 5);
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path();
    let sidecar = load::CountingServer::start(sidecar_answer);
    println!(
        "sidecar delivery bench: {ROUTES} routes of one external connector, no-op sidecar at {}",
        sidecar.addr
    );

    let base_rps = wrk(work, &format!("http://{}/deliver", sidecar.addr), seconds);
    let ceiling = load::ureq_ceiling(
        &format!("http://{}/deliver", sidecar.addr),
        DELIVER_BODY,
        &[
            ("Idempotency-Key", "kheish:dlv_bench"),
            ("X-Kheish-External-Protocol-Version", "1"),
        ],
        16,
        seconds,
    );

    let root = work.join("state");
    let config = config(&sidecar);
    fill_queue(work, &root, &config, n);
    let manifests_before = sidecar.other.load(Ordering::Acquire);
    sidecar.hits.store(0, Ordering::Release);
    let daemon = load::Daemon::start_in(
        &root,
        work,
        &config,
        &["-q"],
        &["--delivery-workers", WORKERS],
        &[],
    );
    let t0 = Instant::now();
    let got = sidecar.wait_count(n as u64, Duration::from_secs(600));
    let elapsed = t0.elapsed();
    let metrics = daemon.metrics();
    daemon.stop();
    let rate = got as f64 / elapsed.as_secs_f64();
    let committed = load::metric(
        &metrics,
        r#"kheish_external_deliveries_total{connector="external/sc",result="committed"}"#,
    );
    let manifests = sidecar.other.load(Ordering::Acquire) - manifests_before;
    sidecar.stop();

    println!();
    println!(
        "  wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{seconds}s POST /deliver on the sidecar (baseline): {base_rps:.0} req/s"
    );
    println!(
        "  16 threads posting through one ureq agent, no queue (the client's ceiling): {ceiling:.0} req/s = {:.2}x wrk",
        ceiling / base_rps.max(1.0)
    );
    println!(
        "  serve --delivery-workers {WORKERS}: {got} of {n} delivered in {:.2} s = {rate:.0} deliveries/s (metric committed = {committed:.0}; manifest fetches {manifests})",
        elapsed.as_secs_f64(),
    );
    println!(
        "  ratio deliveries/s ÷ wrk req/s: {:.2} (target >= 0.5)",
        rate / base_rps.max(1.0)
    );
    std::process::ExitCode::SUCCESS
}

/// `http/bench` (open) and `external/sc` at the sidecar (no shared token).
fn config(sidecar: &load::CountingServer) -> String {
    format!(
        r#"{}
[[external_connectors]]
name = "sc"
platform = "bench"
base_url = "http://{}"
allow_private_network = true
allow_unauthenticated_ingress = true
"#,
        load::QUEUE_CONNECTOR,
        sidecar.addr
    )
}

/// Creates the state root with `n` pending deliveries over the [`ROUTES`] routes of `sc`.
fn fill_queue(work: &Path, root: &Path, config: &str, n: usize) {
    let targets: Vec<ReplyTarget> = (0..ROUTES)
        .map(|i| {
            let address = format!(r#"{{"connector":"sc","route":{{"r":{i}}}}}"#);
            ReplyTarget::new(ReplyPlugin::External, &address)
                .expect("a valid bench target")
                .0
        })
        .collect();
    load::fill_queue(work, root, (config, &[]), &targets, n);
}

/// Runs wrk against `url` (POST of [`DELIVER_BODY`] with the runtime headers); requests/s.
fn wrk(work: &Path, url: &str, seconds: u64) -> f64 {
    load::wrk_post(
        work,
        url,
        DELIVER_BODY,
        &[
            ("Idempotency-Key", "kheish:dlv_bench"),
            ("X-Kheish-External-Protocol-Version", "1"),
        ],
        (
            WRK_THREADS.parse().unwrap(),
            WRK_CONNECTIONS.parse().unwrap(),
        ),
        seconds,
    )
}

/// The no-op sidecar: `/manifest` answers protocol 1 (not counted), everything else
/// `{"status":"committed"}` (counted).
fn sidecar_answer(url: &str) -> (&'static str, bool) {
    if url == "/manifest" {
        (
            r#"{"protocol_version":1,"instance_id":"bench","capabilities":{"attachments_out":true}}"#,
            false,
        )
    } else {
        (r#"{"status":"committed"}"#, true)
    }
}
