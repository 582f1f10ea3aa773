//! `cargo bench --bench delivery` (wrk must be installed: `apt-get install wrk`): the delivery
//! figures of SPEC §14, each printed with its target.
//!
//! (a) Throughput: a release `kheishctl serve --delivery-workers 16` drains N queued http
//!     deliveries spread over 256 targets (distinct sink paths, so per-target FIFO order still
//!     lets 16 go out at once) into a keep-alive tiny_http sink in this process answering 200.
//!     The queue is filled BEFORE the daemon starts (through the library's enqueue path, see
//!     below); the clock runs from the daemon's readiness line until the sink has counted N
//!     requests. Baseline: wrk (`-t2 -c16 -d5s`, POST of a delivery-sized JSON body) against the
//!     same sink in the same run. Target: deliveries/s ≥ 0.5 × wrk's requests/s.
//! (b) Peak RSS (`VmHWM` of `/proc/PID/status`) of `serve` with 100 000 pending deliveries:
//!     once with delivery workers disabled (`--delivery-workers 0`), once with 16 workers
//!     pointed at a sink answering 503 (every head is tried, fails and backs off, so nothing
//!     drains), each after it has run for a few seconds. Target: < 64 MiB.
//! (c) Time for `kheishctl drain-deliveries --concurrency 16` to empty 10 000 due deliveries
//!     (256 targets) into the sink answering 200. No spec target; printed for comparison.
//!
//! Queue filling: one event is ingested through a real daemon (`--handler none`) so a session
//! and a run exist; the bench then claims that run and adds outputs with `Store::add_output_queued`
//! — the same call `POST /v1/runs/{id}/output` makes — each output naming all 256 targets, so
//! one transaction enqueues 256 deliveries exactly as the daemon would.
//!
//! (d) Constant cost at depth: for each depth of `BENCH_DEPTHS` (default `10000,200000`), serve's
//!     pool and then `drain-deliveries` empty that many queued deliveries over 64 targets with 16
//!     senders; rates against the same wrk baseline, and serve's VmHWM.
//!
//! Environment: `BENCH_DELIVERIES` (throughput run, default 20 000, rounded down to a multiple
//! of 256), `BENCH_PENDING` (RSS run, default 100 000), `BENCH_DRAIN` (drain run, default
//! 10 000), `BENCH_SECONDS` (wrk duration, default 5), `BENCH_RSS_SECONDS` (how long serve runs
//! before VmHWM is read, default 5).

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod common;
#[path = "common/load.rs"]
mod load;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use kheishctl::model::reply::{ReplyPlugin, ReplyTarget};

const TARGETS: usize = 256;
/// Targets of the depth runs (issue 10: 64 targets, 16 senders).
const DEPTH_TARGETS: usize = 64;
const WORKERS: &str = "16";
const WRK_THREADS: &str = "2";
const WRK_CONNECTIONS: &str = "16";
/// A body the size of a typical delivery envelope.
const ENVELOPE: &str = r#"{"delivery_id":"dlv_0192f3a4b5c6_9f8e7d6c5b4a3928","attempt":1,"run_id":"run_0192f3a4b5c6_9f8e7d6c5b4a3928","session_id":"http:bench:5f1d","output_id":"out_0192f3a4b5c6_9f8e7d6c5b4a3928","connector":"http/bench","content":"echo: order 17 shipped","parts":null}"#;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> std::process::ExitCode {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk is not installed: `apt-get install wrk` (Debian package), then run again");
        return std::process::ExitCode::from(2);
    }
    let n_deliveries = (env_num("BENCH_DELIVERIES", 20_000) as usize / TARGETS).max(1) * TARGETS;
    let n_pending = env_num("BENCH_PENDING", 100_000) as usize;
    let n_drain = env_num("BENCH_DRAIN", 10_000) as usize;
    let wrk_seconds = env_num("BENCH_SECONDS", 5);
    let rss_seconds = env_num("BENCH_RSS_SECONDS", 5);
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path();
    let sink = Sink::start();
    println!(
        "delivery bench: {TARGETS} targets on a keep-alive tiny_http sink at {}",
        sink.addr
    );

    // Baseline: wrk against the sink.
    let base_rps = wrk(work, &format!("http://{}/sink/0", sink.addr), wrk_seconds);
    // The transport's own ceiling: the same sends with no queue at all.
    sink.reset(200);
    let ceiling_rps = transport_ceiling(&sink, wrk_seconds);

    // (a) serve with 16 workers drains N deliveries.
    let root_a = work.join("state-a");
    fill_queue(work, &root_a, &sink, n_deliveries);
    sink.reset(200);
    let started = Instant::now();
    let daemon = Daemon::start(work, &root_a, &["--delivery-workers", WORKERS]);
    let ready_after = started.elapsed();
    let t0 = Instant::now();
    let drained = sink.wait_count(n_deliveries as u64, Duration::from_secs(600));
    let elapsed = t0.elapsed();
    let delivered_metric = daemon.metric(r#"kheish_deliveries{state="delivered"}"#);
    let rss_a = daemon.vm_hwm_kib();
    daemon.stop();
    let serve_rate = drained as f64 / elapsed.as_secs_f64();

    // (b) peak RSS with 100 000 pending deliveries.
    let root_b = work.join("state-b");
    let n_pending = fill_queue(work, &root_b, &sink, n_pending);
    sink.reset(503);
    let idle = Daemon::start(work, &root_b, &["--delivery-workers", "0"]);
    pace(Duration::from_secs(rss_seconds));
    let pending_seen = idle.metric(r#"kheish_deliveries{state="pending"}"#);
    let rss_idle = idle.vm_hwm_kib();
    idle.stop();
    let busy = Daemon::start(work, &root_b, &["--delivery-workers", WORKERS]);
    pace(Duration::from_secs(rss_seconds));
    let rss_busy = busy.vm_hwm_kib();
    let attempts_503 = sink.count();
    busy.stop();

    // (d) constant cost at depth: serve's pool and drain-deliveries at each queue depth, 64
    // targets, 16 senders, against the same wrk baseline.
    let mut depth_lines = Vec::new();
    for (idx, depth) in std::env::var("BENCH_DEPTHS")
        .unwrap_or_else(|_| "10000,200000".into())
        .split(',')
        .filter_map(|d| d.trim().parse::<usize>().ok())
        .enumerate()
    {
        let root = work.join(format!("state-depth-{idx}"));
        let n = fill_queue_over(work, &root, &sink, depth, DEPTH_TARGETS);
        sink.reset(200);
        let before = sink.count();
        let daemon = Daemon::start(work, &root, &["--delivery-workers", WORKERS]);
        let t0 = Instant::now();
        let got = sink.wait_count(before + n as u64, Duration::from_secs(1200)) - before;
        let serve_s = t0.elapsed().as_secs_f64();
        let hwm = daemon.vm_hwm_kib();
        daemon.stop();
        let root_d = work.join(format!("state-depth-drain-{idx}"));
        fill_queue_over(work, &root_d, &sink, depth, DEPTH_TARGETS);
        let before = sink.count();
        let t0 = Instant::now();
        let status = Command::new(env!("CARGO_BIN_EXE_kheishctl"))
            .env_clear()
            .env("KHEISH_STATE_ROOT", &root_d)
            .args(["-q", "drain-deliveries", "--concurrency", WORKERS])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("running drain-deliveries");
        let drain_s = t0.elapsed().as_secs_f64();
        let drained_d = sink.count() - before;
        let serve_rate = got as f64 / serve_s;
        let drain_rate = drained_d as f64 / drain_s;
        depth_lines.push(format!(
            "      {n:>7} queued: serve {got} in {serve_s:.2} s = {serve_rate:.0}/s ({:.2}x wrk, VmHWM {}); drain {drained_d} in {drain_s:.2} s = {drain_rate:.0}/s ({:.2}x wrk, exit {}); serve/drain {:.2}",
            serve_rate / base_rps.max(1.0),
            mib(hwm),
            drain_rate / base_rps.max(1.0),
            status.code().unwrap_or(-1),
            serve_rate / drain_rate.max(1.0),
        ));
    }

    // (c) drain-deliveries empties 10 000 due deliveries.
    let root_c = work.join("state-c");
    let n_drain = fill_queue(work, &root_c, &sink, n_drain);
    sink.reset(200);
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kheishctl"))
        .env_clear()
        .env("KHEISH_STATE_ROOT", &root_c)
        .args(["-q", "drain-deliveries", "--concurrency", WORKERS])
        .stdin(Stdio::null())
        .output()
        .expect("running drain-deliveries");
    let drain_time = t0.elapsed();
    let drain_count = sink.count();
    if !out.status.success() {
        eprintln!(
            "drain-deliveries exited with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    sink.stop();

    println!();
    println!(
        "  (a) wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{wrk_seconds}s against the sink (baseline): {base_rps:.0} req/s"
    );
    println!(
        "      the http transport alone ({WORKERS} threads sending without a queue, {wrk_seconds} s): {ceiling_rps:.0} req/s = {:.2}x wrk: the most any queue can reach with this transport",
        ceiling_rps / base_rps.max(1.0)
    );
    println!(
        "      serve --delivery-workers {WORKERS}: {drained} of {n_deliveries} delivered in {:.2} s = {serve_rate:.0} deliveries/s (ready after {:.0} ms; metric delivered = {})",
        elapsed.as_secs_f64(),
        common::ms(ready_after),
        delivered_metric.map_or("n/a".into(), |v| format!("{v:.0}"))
    );
    println!(
        "      ratio deliveries/s ÷ wrk req/s: {:.2} (target >= 0.5); serve VmHWM during the run: {}",
        serve_rate / base_rps.max(1.0),
        mib(rss_a)
    );
    println!(
        "  (b) peak RSS with {n_pending} pending deliveries (metric pending = {}), after {rss_seconds} s:",
        pending_seen.map_or("n/a".into(), |v| format!("{v:.0}"))
    );
    println!(
        "      --delivery-workers 0: {} (target < 64 MiB)",
        mib(rss_idle)
    );
    println!(
        "      --delivery-workers {WORKERS}, sink answering 503 ({attempts_503} attempts made): {} (target < 64 MiB)",
        mib(rss_busy)
    );
    println!(
        "  (c) drain-deliveries --concurrency {WORKERS}: {drain_count} of {n_drain} delivered in {:.2} s = {:.0} deliveries/s (exit {}; no spec target)",
        drain_time.as_secs_f64(),
        drain_count as f64 / drain_time.as_secs_f64(),
        out.status.code().unwrap_or(-1)
    );
    println!(
        "  (d) at depth, {DEPTH_TARGETS} targets, {WORKERS} senders (target: >= 0.5x wrk at every depth, serve and drain within 20% of each other, VmHWM < 64 MiB):"
    );
    for line in depth_lines {
        println!("{line}");
    }
    std::process::ExitCode::SUCCESS
}

/// Requests/s of [`WORKERS`] threads calling the daemon's own `http` transport in a loop (the
/// bench's delivery envelope, the 256 sink targets), with no queue, claim or settlement: the
/// ceiling of what any delivery pool built on this transport can reach on this machine.
fn transport_ceiling(sink: &Sink, seconds: u64) -> f64 {
    use kheishctl::delivery::transport::http::HttpTransport;
    use kheishctl::delivery::{AttemptOutcome, ProgressSink, Transport};
    use kheishctl::model::delivery::{Delivery, DeliveryJob, DeliveryStatus};

    struct NoProgress;
    impl ProgressSink for NoProgress {
        fn save(&mut self, _: &serde_json::Value) -> Result<(), String> {
            Ok(())
        }
    }
    let transport = Arc::new(HttpTransport::new());
    let addr = sink.addr;
    load::rate_of_threads(WORKERS.parse().unwrap(), seconds, |t| {
        let transport = transport.clone();
        let mut i = t;
        move || {
            let address = format!(
                r#"{{"url":"http://{addr}/sink/{}","allow_private_network":true}}"#,
                i % TARGETS
            );
            let target = ReplyTarget::new(ReplyPlugin::Http, &address).unwrap().0;
            let job = DeliveryJob {
                delivery: Delivery {
                    target_key: address.clone(),
                    ..Delivery::sample(
                        &format!("dlv_0192f3a4b5c6_{i:016x}"),
                        target,
                        DeliveryStatus::Pending,
                    )
                },
                attempt: 1,
                content: Some("echo: order 17 shipped".into()),
                parts: None,
                assets: Vec::new(),
            };
            let outcome = transport.deliver(&job, &mut NoProgress);
            assert!(
                matches!(outcome, AttemptOutcome::Delivered { .. }),
                "the sink refused a ceiling send: {outcome:?}"
            );
            i += 16;
        }
    })
}

/// Blocks the bench thread for `d` without `thread::sleep` (disallowed crate-wide): a receive
/// that never gets a message.
fn pace(d: Duration) {
    let (_tx, rx) = mpsc::channel::<()>();
    let _ = rx.recv_timeout(d);
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

const CONFIG: &str = load::QUEUE_CONNECTOR;

/// Creates a state root holding about `n` pending deliveries (a multiple of 256, rounded up)
/// over the 256 sink targets; returns how many.
fn fill_queue(work: &Path, root: &Path, sink: &Sink, n: usize) -> usize {
    fill_queue_over(work, root, sink, n, TARGETS)
}

/// [`fill_queue`] over `n_targets` sink targets ([`load::fill_queue`]).
fn fill_queue_over(work: &Path, root: &Path, sink: &Sink, n: usize, n_targets: usize) -> usize {
    let targets: Vec<ReplyTarget> = (0..n_targets)
        .map(|i| {
            let address = format!(
                r#"{{"url":"http://{}/sink/{i}","allow_private_network":true}}"#,
                sink.addr
            );
            ReplyTarget::new(ReplyPlugin::Http, &address)
                .expect("a valid bench target")
                .0
        })
        .collect();
    load::fill_queue(work, root, (CONFIG, &[]), &targets, n)
}

/// Runs wrk against `url` (POST of [`ENVELOPE`]) and returns requests/s.
fn wrk(work: &Path, url: &str, seconds: u64) -> f64 {
    load::wrk_post(
        work,
        url,
        ENVELOPE,
        &[("Idempotency-Key", "kheish:dlv_bench")],
        (
            WRK_THREADS.parse().unwrap(),
            WRK_CONNECTIONS.parse().unwrap(),
        ),
        seconds,
    )
}

/// The keep-alive tiny_http sink: counts requests and answers with a settable status.
struct Sink {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    status: Arc<AtomicU16>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn start() -> Sink {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let addr = server.server_addr().to_ip().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let status = Arc::new(AtomicU16::new(200));
        let threads = (0..8)
            .map(|_| {
                let server = Arc::clone(&server);
                let stop = Arc::clone(&stop);
                let count = Arc::clone(&count);
                let status = Arc::clone(&status);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        if let Ok(mut rq) = server.recv() {
                            let mut body = Vec::new();
                            let _ = rq.as_reader().read_to_end(&mut body);
                            count.fetch_add(1, Ordering::AcqRel);
                            let _ = rq.respond(
                                tiny_http::Response::from_string("{\"ok\":true}")
                                    .with_status_code(status.load(Ordering::Acquire)),
                            );
                        }
                    }
                })
            })
            .collect();
        Sink {
            addr,
            server,
            stop,
            count,
            status,
            threads,
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Zeroes the counter and sets the status of later answers.
    fn reset(&self, status: u16) {
        self.status.store(status, Ordering::Release);
        self.count.store(0, Ordering::Release);
    }

    /// Waits until `n` requests arrived, `limit` passed, or nothing arrived for 20 s (the
    /// daemon is not delivering); returns the count.
    fn wait_count(&self, n: u64, limit: Duration) -> u64 {
        let end = Instant::now() + limit;
        let (mut last, mut last_change) = (self.count(), Instant::now());
        while self.count() < n && Instant::now() < end {
            pace(Duration::from_millis(2));
            let now = self.count();
            if now != last {
                (last, last_change) = (now, Instant::now());
            } else if last_change.elapsed() > Duration::from_secs(20) {
                eprintln!("no delivery reached the sink for 20 s; giving up at {now} of {n}");
                break;
            }
        }
        self.count()
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for _ in 0..self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// A release `kheishctl serve` on a bench state root, with the helpers this bench reads.
struct Daemon(load::Daemon);

impl Daemon {
    fn start(work: &Path, root: &Path, extra: &[&str]) -> Daemon {
        Daemon(load::Daemon::start_in(
            root,
            work,
            CONFIG,
            &["-q"],
            extra,
            &[],
        ))
    }

    /// The value of one exact series of `/metrics`, when present.
    fn metric(&self, series: &str) -> Option<f64> {
        self.0
            .metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
    }

    /// `VmHWM` (peak resident set) in KiB.
    fn vm_hwm_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    fn stop(self) {
        self.0.stop();
    }
}
