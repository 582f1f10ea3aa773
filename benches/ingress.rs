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

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kheishctl::ingress::auth::kheish_v1_signature;

const TOKEN: &str = "bench-bearer-token-0123456789abcdef";
const HMAC: &str = "bench-hmac-secret-0123456789abcdef";
const ADMIN: &str = "bench-admin-token";
const TARGET: &str = "/v1/connectors/http/bench";
const WRK_THREADS: usize = 2;
const CONNECTIONS: usize = 64;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> std::process::ExitCode {
    if Command::new("wrk").arg("--version").output().is_err() {
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
    let script = write_script(work);

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
    let daemon = Daemon::start(work, &bench_config(), &[], &serve_args);
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
        let d = Daemon::start_with(work, &config, &env, &["-q"], &[]);
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

/// Writes `per_thread` signed requests for each wrk thread: `signature \t timestamp \t body`.
fn write_requests(dir: &Path, set: &str, per_thread: usize, salt: u64) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for t in 0..WRK_THREADS {
        let mut out = String::with_capacity(per_thread * 200);
        for i in 0..per_thread {
            let body = format!(
                r#"{{"content":"order {i} from thread {t}","idempotency_key":"{set}-{salt}-{t}-{i}","metadata":{{"source":"bench","n":{i}}}}}"#
            );
            let sig = kheish_v1_signature(HMAC.as_bytes(), "POST", TARGET, ts, body.as_bytes());
            writeln!(out, "{sig}\t{ts}\t{body}").unwrap();
        }
        std::fs::write(dir.join(format!("{set}-{t}.txt")), out).unwrap();
    }
}

fn write_script(dir: &Path) -> PathBuf {
    let script = format!(
        r#"
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  local file = io.open(args[1] .. "/" .. args[2] .. "-" .. tid .. ".txt")
  reqs = {{}}
  for line in file:lines() do
    local sig, ts, body = line:match("([^\t]*)\t([^\t]*)\t(.*)")
    reqs[#reqs + 1] = wrk.format("POST", "{TARGET}", {{
      ["Authorization"] = "Bearer {TOKEN}",
      ["Content-Type"] = "application/json",
      ["X-Kheish-Timestamp"] = ts,
      ["X-Kheish-Signature"] = sig,
    }}, body)
  end
  file:close()
  i = 0
end
function request()
  i = i + 1
  if i > #reqs then i = 1 end
  return reqs[i]
end
"#
    );
    let path = dir.join("signed.lua");
    std::fs::write(&path, script).unwrap();
    path
}

struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
}

impl WrkResult {
    fn print(&self, label: &str) {
        println!(
            "  {label:<34} {:>10.0} {:>9.2} {:>9.2} {:>8}",
            self.rps, self.p50_ms, self.p99_ms, self.non_2xx
        );
    }
}

fn wrk(script: &Path, url: &str, dir: &Path, set: &str, seconds: u64) -> WrkResult {
    let out = Command::new("wrk")
        .args([
            "-t",
            &WRK_THREADS.to_string(),
            "-c",
            &CONNECTIONS.to_string(),
            "-d",
            &format!("{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .arg("--")
        .arg(dir)
        .arg(set)
        .output()
        .expect("running wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l[prefix.len()..].split_whitespace().next())
    };
    let latency_ms = |s: &str| -> f64 {
        let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
        let v: f64 = num.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => v / 1000.0,
            "ms" => v,
            "s" => v * 1000.0,
            _ => v,
        }
    };
    let result = WrkResult {
        rps: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        p50_ms: field("50%").map(latency_ms).unwrap_or(f64::NAN),
        p99_ms: field("99%").map(latency_ms).unwrap_or(f64::NAN),
        non_2xx: field("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    };
    if result.rps == 0.0 {
        eprintln!(
            "wrk output:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    result
}

/// A tiny_http server that answers every request with 200 and a small JSON body.
struct NoopServer {
    addr: std::net::SocketAddr,
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl NoopServer {
    fn start() -> NoopServer {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let addr = server.server_addr().to_ip().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let workers = 4 * std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..workers)
            .map(|_| {
                let server = Arc::clone(&server);
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        if let Ok(mut rq) = server.recv() {
                            let mut sink = Vec::new();
                            let _ = rq.as_reader().read_to_end(&mut sink);
                            let _ = rq.respond(
                                tiny_http::Response::from_string("{\"ok\":true}")
                                    .with_status_code(200),
                            );
                        }
                    }
                })
            })
            .collect();
        NoopServer {
            addr,
            server,
            stop,
            threads,
        }
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
    let daemon = Daemon::start(
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
    );
    let pid = daemon.child.id();
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

/// A release `kheishctl serve` on an ephemeral port.
struct Daemon {
    child: Child,
    addr: std::net::SocketAddr,
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Daemon {
    /// `extra` are global options, `serve_extra` options of `serve`.
    fn start(work: &Path, config: &str, extra: &[&str], serve_extra: &[&str]) -> Daemon {
        let env = vec![
            ("BENCH_TOKEN".to_string(), TOKEN.to_string()),
            ("BENCH_HMAC".to_string(), HMAC.to_string()),
        ];
        Daemon::start_with(work, config, &env, extra, serve_extra)
    }

    fn start_with(
        work: &Path,
        config: &str,
        env: &[(String, String)],
        extra: &[&str],
        serve_extra: &[&str],
    ) -> Daemon {
        let config_path = work.join(format!("connectors-{}.toml", config.len()));
        if !config_path.exists() {
            std::fs::write(&config_path, config).unwrap();
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kheishctl"));
        cmd.env_clear()
            .env("KHEISH_STATE_ROOT", work.join("state"))
            .env("KHEISH_ADMIN", ADMIN)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .arg("--json")
            .args(extra)
            .arg("--connectors-config")
            .arg(&config_path)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-token-env",
                "KHEISH_ADMIN",
            ])
            .args(serve_extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("starting kheishctl serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let ready: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("serve did not become ready ({e}): {line:?}"));
        let addr = ready["listen"].as_str().unwrap().parse().unwrap();
        Daemon {
            child,
            addr,
            _stdout: stdout,
        }
    }

    fn metrics(&self) -> String {
        let mut s = TcpStream::connect(self.addr).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {ADMIN}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Sum of the samples whose line starts with `name` (exact series including labels).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l[name.len()..].split_whitespace().next())
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
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
