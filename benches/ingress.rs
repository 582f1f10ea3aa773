//! `cargo bench --bench ingress` (or `benches/run.sh ingress`, which installs wrk first):
//! authenticated HTTP ingress throughput of a release `kheishctl serve` against two no-op
//! servers measured in the same run (SPEC §14): a tiny_http one (the historical baseline) and a
//! hyper 1 one on a multi-thread tokio runtime (the daemon's own HTTP stack, so that ratio is the
//! cost of the pipeline alone); plus duplicates, SQLite commits per accepted event, the RSS
//! growth of `serve` holding 10 000 idle connections, and start-to-ready time with a
//! 1 000-connector file.
//!
//! Load: wrk, 64 keep-alive connections (2 threads), each request bearer + HMAC signed with a
//! unique idempotency key. Requests are signed ahead of time (wrk's Lua has no HMAC) into one
//! file per wrk thread; the Lua script formats them at start and sends them in order.
//!
//! Environment: `BENCH_SECONDS` (default 10), `BENCH_REQUESTS` (signed requests per wrk thread,
//! default 150 000; must exceed what one thread sends in BENCH_SECONDS), `BENCH_STARTS` (start
//! time samples, default 10), `BENCH_IDLE` (idle connections for the memory figure, default
//! 10 000), `BENCH_SERVE_ARGS` (extra `serve` flags for the throughput runs, e.g. `--workers 2`).

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod common;
#[path = "common/load.rs"]
mod load;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Instant;

use load::{env_num, metric, wrk, Daemon, NoopServer, CONNECTIONS, WRK_THREADS};

const TARGET: &str = "/v1/connectors/http/bench";

fn main() -> std::process::ExitCode {
    if !load::wrk_installed() {
        eprintln!("wrk is not installed: run `benches/run.sh ingress` (installs it) or `apt-get install wrk`");
        return std::process::ExitCode::from(2);
    }
    let seconds = env_num("BENCH_SECONDS", 10);
    let per_thread = env_num("BENCH_REQUESTS", 150_000) as usize;
    let starts = env_num("BENCH_STARTS", 10) as usize;
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path();

    println!("ingress bench: {CONNECTIONS} keep-alive connections, {WRK_THREADS} wrk threads, {seconds}s per run, bearer + HMAC, unique idempotency keys");
    write_requests(work, "accept", per_thread, 0);
    write_requests(work, "dup", 500, 1);
    let script = load::write_script(work, TARGET);

    // Baseline: a no-op tiny_http server answering 200, same machine, same load.
    let noop = NoopServer::start();
    let base = wrk(
        &script,
        &format!("http://{}{TARGET}", noop.addr),
        work,
        "accept",
        seconds,
    );
    noop.stop();

    // Baseline of the daemon's own stack: a no-op hyper 1 server on a multi-thread runtime.
    let noop_hyper = HyperNoop::start();
    let base_hyper = wrk(
        &script,
        &format!("http://{}{TARGET}", noop_hyper.addr),
        work,
        "accept",
        seconds,
    );
    noop_hyper.stop();

    // kheishctl serve, release build.
    let serve_args = std::env::var("BENCH_SERVE_ARGS").unwrap_or_default();
    let serve_args: Vec<&str> = serve_args.split_whitespace().collect();
    let daemon = Daemon::start_with(work, &bench_config(), &[], &serve_args, &[]);
    let before = daemon.metrics();
    let serve = wrk(
        &script,
        &format!("http://{}{TARGET}", daemon.addr),
        work,
        "accept",
        seconds,
    );
    let after = daemon.metrics();
    let accepted = metric(
        &after,
        "kheish_ingress_requests_total{connector=\"http/bench\",outcome=\"accepted\"}",
    ) - metric(
        &before,
        "kheish_ingress_requests_total{connector=\"http/bench\",outcome=\"accepted\"}",
    );
    let commits = metric(&after, "kheish_store_commits_total")
        - metric(&before, "kheish_store_commits_total");
    // The WAL must stay bounded under a steady stream of commits (see store::Checkpointer).
    let wal_mib = std::fs::metadata(work.join("state").join("state.db-wal"))
        .map(|m| m.len() as f64 / (1024.0 * 1024.0))
        .unwrap_or(0.0);

    // Pure duplicates: prime 500 keys per thread, then replay them in a loop.
    wrk(
        &script,
        &format!("http://{}{TARGET}", daemon.addr),
        work,
        "dup",
        2,
    );
    let d0 = daemon.metrics();
    let dups = wrk(
        &script,
        &format!("http://{}{TARGET}", daemon.addr),
        work,
        "dup",
        seconds,
    );
    let d1 = daemon.metrics();
    let dup_commits =
        metric(&d1, "kheish_store_commits_total") - metric(&d0, "kheish_store_commits_total");
    let dup_answers = metric(
        &d1,
        "kheish_ingress_requests_total{connector=\"http/bench\",outcome=\"duplicate\"}",
    ) - metric(
        &d0,
        "kheish_ingress_requests_total{connector=\"http/bench\",outcome=\"duplicate\"}",
    );
    daemon.stop();

    println!();
    println!(
        "  {:<34} {:>10} {:>9} {:>9} {:>8}",
        "", "req/s", "p50 ms", "p99 ms", "non-2xx"
    );
    base.print("no-op tiny_http (baseline)");
    base_hyper.print("no-op hyper (same stack)");
    serve.print("serve: accepted events");
    dups.print("serve: pure duplicates");
    println!();
    for (label, run) in [("accepted", &serve), ("duplicates", &dups)] {
        println!(
            "  {label:<10} vs no-op tiny_http: throughput {:.2} (target >= 0.6), p99 {:.1}x (target <= 3x)",
            run.rps / base.rps,
            run.p99_ms / base.p99_ms
        );
        println!(
            "  {label:<10} vs no-op hyper:     throughput {:.2}, p99 {:.1}x (target <= 3x)",
            run.rps / base_hyper.rps,
            run.p99_ms / base_hyper.p99_ms
        );
    }
    println!(
        "  accepted events: {accepted:.0}, SQLite commits: {commits:.0}, commits per accepted event: {:.4} (target <= 0.1)",
        commits / accepted.max(1.0)
    );
    println!("  WAL file after the accepted run: {wal_mib:.1} MiB (bounded: the checkpointer restarts it past ~64 MiB)");
    println!("  duplicate run: {dup_answers:.0} duplicate answers, {dup_commits:.0} commits (only the deferred hit counters, every 2 s)");

    idle_connections_rss(work, env_num("BENCH_IDLE", 10_000) as usize);

    // Start to ready with 1 000 connectors (secrets in env vars and the secret store).
    let (config, env) = thousand_connectors(work);
    let mut samples = Vec::new();
    for _ in 0..starts {
        let started = Instant::now();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let d = Daemon::start_with(work, &config, &["-q"], &[], &env);
        samples.push(started.elapsed());
        d.stop();
    }
    samples.sort();
    println!(
        "  start to ready, 1000 connectors: min {:.1} ms, median {:.1} ms over {starts} starts (target < 200 ms)",
        common::ms(samples[0]),
        common::ms(common::median(&samples))
    );
    std::process::ExitCode::SUCCESS
}

fn bench_config() -> String {
    format!(
        "[[http_connectors]]\nname = \"bench\"\nbearer_token_env = \"BENCH_TOKEN\"\nrequire_hmac_signature = true\n\
         hmac_secret_env = \"BENCH_HMAC\"\nsignature_max_age_secs = 3600\ningress_events_per_second = {}\n\
         default_binding_keys = [\"bench\"]\n[http_connectors.session_policy]\ncreate_if_missing = true\n",
        u32::MAX
    )
}

/// Writes `per_thread` signed requests for each wrk thread, each with a unique idempotency key.
fn write_requests(dir: &Path, set: &str, per_thread: usize, salt: u64) {
    load::write_requests(dir, set, TARGET, per_thread, |t, i| {
        format!(
            r#"{{"content":"order {i} from thread {t}","idempotency_key":"{set}-{salt}-{t}-{i}","metadata":{{"source":"bench","n":{i}}}}}"#
        )
    });
}

/// A hyper 1 server on a multi-thread tokio runtime (one worker per core, like `serve`) that
/// reads each request body and answers 200 with a small JSON body, keeping connections alive.
struct HyperNoop {
    addr: std::net::SocketAddr,
    runtime: tokio::runtime::Runtime,
}

impl HyperNoop {
    fn start() -> HyperNoop {
        use http_body_util::{BodyExt, Full};
        use hyper::body::Bytes;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |req: hyper::Request<hyper::body::Incoming>| async move {
                            let _ = req.into_body().collect().await;
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"{\"ok\":true}"),
                            )))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HyperNoop { addr, runtime }
    }

    fn stop(self) {
        self.runtime.shutdown_background();
    }
}

/// RSS growth of `serve` while it holds `n` idle connections: (a) connections that sent
/// nothing yet, (b) keep-alive connections idle after one answered request. The caps are raised
/// for this (the defaults would refuse all but 128 of them from one address).
fn idle_connections_rss(work: &Path, n: usize) {
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
    let caps = (2 * n).to_string();
    let daemon = Daemon::start_with(
        work,
        &bench_config(),
        &["-q"],
        &[
            "--max-connections",
            &caps,
            "--max-connections-per-client",
            &caps,
            "--header-timeout",
            "10m",
            "--idle-timeout",
            "10m",
        ],
        &[],
    );
    let pid = daemon.pid();
    // Settle the allocator and the blocking pool with a few requests first.
    for _ in 0..50 {
        daemon.metrics();
    }
    let base = status_kib(pid, "VmRSS:");
    for (label, source, request) in [
        ("that sent nothing", [127, 0, 0, 2], None),
        (
            "idle after one keep-alive request",
            [127, 0, 0, 3],
            Some(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n".as_slice()),
        ),
    ] {
        let before = status_kib(pid, "VmRSS:");
        let mut held = Vec::with_capacity(n);
        for i in 0..n {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("a socket");
            socket
                .bind(&std::net::SocketAddr::from((source, 0)).into())
                .expect("binding a source address");
            if let Err(e) = socket.connect(&daemon.addr.into()) {
                println!("  idle connections: connection {i} failed ({e}); stopping at {i}");
                break;
            }
            let mut stream: TcpStream = socket.into();
            if let Some(request) = request {
                stream.write_all(request).expect("writing a request");
                read_one_response(&mut stream);
            }
            held.push(stream);
        }
        // Wait until the daemon holds them all (its descriptor count), then read its RSS.
        let wanted = held.len();
        let started = Instant::now();
        while open_fds(pid) < wanted && started.elapsed() < std::time::Duration::from_secs(30) {
            #[allow(clippy::disallowed_methods)] // a pause between polls of /proc
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let after = status_kib(pid, "VmRSS:");
        println!(
            "  RSS with {wanted} idle connections {label}: {:.1} MiB -> {:.1} MiB, growth {:.1} MiB (target < 64 MiB); serve threads: {}",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            after.saturating_sub(before) as f64 / 1024.0,
            std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
        );
        drop(held);
        let started = Instant::now();
        while open_fds(pid) > 64 && started.elapsed() < std::time::Duration::from_secs(30) {
            #[allow(clippy::disallowed_methods)] // a pause between polls of /proc
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    println!(
        "  serve RSS before any idle connection: {:.1} MiB, peak (VmHWM) after both: {:.1} MiB",
        base as f64 / 1024.0,
        status_kib(pid, "VmHWM:") as f64 / 1024.0
    );
    daemon.stop();
}

/// A `KiB` figure of `/proc/PID/status` (`VmRSS:`, `VmHWM:`).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Reads one small response with a `Content-Length` body from a keep-alive connection.
fn read_one_response(stream: &mut TcpStream) {
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).expect("reading a response");
        assert!(n > 0, "the connection closed before an answer");
        got.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                return;
            }
        }
    }
}

/// The 1 000-connector file of the validate bench, with every env var it names set and every
/// secret-store slot it names written.
fn thousand_connectors(work: &Path) -> (String, Vec<(String, String)>) {
    let config = common::connector_file(1000);
    let mut env = Vec::new();
    let mut refs = Vec::new();
    for line in config.lines() {
        let Some((key, value)) = line.split_once(" = ") else {
            continue;
        };
        let value = value.trim_matches('"');
        if key.ends_with("_env") {
            env.push((value.to_string(), format!("value-of-{value}")));
        } else if key.ends_with("_secret_ref") {
            refs.push(value.to_string());
        } else if key == "credential_slots" {
            if let Some(r) = value.split('"').nth(1) {
                refs.push(r.to_string());
            }
        } else if key == "team_bot_tokens" {
            if let Some(var) = value
                .split("bot_token_env = \"")
                .nth(1)
                .and_then(|s| s.split('"').next())
            {
                env.push((var.to_string(), format!("value-of-{var}")));
            }
        }
    }
    // Writing ~1 500 slots with one `rotate-secret` process each is slow; use the library.
    // The store generates STATE_ROOT/master.key, which the daemon then reads too.
    let store = kheishctl::secrets::SecretStore::open_or_create(&work.join("state"));
    let store = store.expect("opening the bench state root");
    for r in &refs {
        store
            .rotate(
                r,
                kheishctl::secrets::Secret::new(format!("slot-{r}")),
                None,
                "bench",
                0,
            )
            .expect("writing a bench slot");
    }
    (config, env)
}
