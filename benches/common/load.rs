//! Shared load harness for the HTTP benches: wrk with a pre-signed request script, the no-op
//! tiny_http baseline server, a release `kheishctl serve` launcher and `/metrics` readers.

#![allow(dead_code, clippy::print_stdout, clippy::print_stderr)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kheishctl::ingress::auth::kheish_v1_signature;

pub const TOKEN: &str = "bench-bearer-token-0123456789abcdef";
pub const HMAC: &str = "bench-hmac-secret-0123456789abcdef";
pub const ADMIN: &str = "bench-admin-token";
pub const WRK_THREADS: usize = 2;
pub const CONNECTIONS: usize = 64;

pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn wrk_installed() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// Writes `per_thread` signed requests to `target` for each wrk thread, one
/// `signature \t timestamp \t body` line each; `body(thread, i)` makes the JSON body.
pub fn write_requests(
    dir: &Path,
    set: &str,
    target: &str,
    per_thread: usize,
    body: impl Fn(usize, usize) -> String,
) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for t in 0..WRK_THREADS {
        let mut out = String::with_capacity(per_thread * 200);
        for i in 0..per_thread {
            let body = body(t, i);
            let sig = kheish_v1_signature(HMAC.as_bytes(), "POST", target, ts, body.as_bytes());
            writeln!(out, "{sig}\t{ts}\t{body}").unwrap();
        }
        std::fs::write(dir.join(format!("{set}-{t}.txt")), out).unwrap();
    }
}

/// The wrk script that sends the pre-signed requests of a set, in order, each once (then wraps).
pub fn write_script(dir: &Path, target: &str) -> PathBuf {
    write_replay_script(
        dir,
        "signed",
        target,
        &[
            ("Authorization", &format!("Bearer {TOKEN}")),
            ("Content-Type", "application/json"),
        ],
        &["X-Kheish-Signature", "X-Kheish-Timestamp"],
    )
}

/// A wrk script (`<name>.lua`) that replays the request files of a set (`<set>-<thread>.txt`,
/// the set given to [`wrk`]): each line is `field \t … \t body`, the fields being the values of
/// the `line_headers` in order; every request is a POST to `target` with `fixed` headers too.
/// Requests go out in file order, each once, then wrap.
pub fn write_replay_script(
    dir: &Path,
    name: &str,
    target: &str,
    fixed: &[(&str, &str)],
    line_headers: &[&str],
) -> PathBuf {
    let vars: Vec<String> = (0..line_headers.len()).map(|k| format!("f{k}")).collect();
    let pattern = "([^\\t]*)\\t".repeat(line_headers.len()) + "(.*)";
    let mut headers = String::new();
    for (k, v) in fixed {
        let _ = writeln!(headers, "      [\"{k}\"] = \"{v}\",");
    }
    for (k, var) in line_headers.iter().zip(&vars) {
        let _ = writeln!(headers, "      [\"{k}\"] = {var},");
    }
    let locals = vars
        .iter()
        .map(String::as_str)
        .chain(["body"])
        .collect::<Vec<_>>()
        .join(", ");
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
    local {locals} = line:match("{pattern}")
    reqs[#reqs + 1] = wrk.format("POST", "{target}", {{
{headers}    }}, body)
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
    let path = dir.join(format!("{name}.lua"));
    std::fs::write(&path, script).unwrap();
    path
}

pub struct WrkResult {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub non_2xx: u64,
    pub requests: u64,
}

impl WrkResult {
    pub fn print(&self, label: &str) {
        println!(
            "  {label:<40} {:>10.0} {:>9.2} {:>9.2} {:>8}",
            self.rps, self.p50_ms, self.p99_ms, self.non_2xx
        );
    }
}

pub fn print_header() {
    println!(
        "  {:<40} {:>10} {:>9} {:>9} {:>8}",
        "", "req/s", "p50 ms", "p99 ms", "non-2xx"
    );
}

/// Runs wrk with the signed-request script of `set` against `url` for `seconds`.
pub fn wrk(script: &Path, url: &str, dir: &Path, set: &str, seconds: u64) -> WrkResult {
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
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let result = WrkResult {
        rps: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        p50_ms: field("50%").map(latency_ms).unwrap_or(f64::NAN),
        p99_ms: field("99%").map(latency_ms).unwrap_or(f64::NAN),
        non_2xx: field("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        requests,
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
pub struct NoopServer {
    pub addr: std::net::SocketAddr,
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl NoopServer {
    pub fn start() -> NoopServer {
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

    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for _ in 0..self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// A release `kheishctl serve` on an ephemeral port, state root `work/state`.
pub struct Daemon {
    child: Child,
    pub addr: std::net::SocketAddr,
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Daemon {
    /// Starts serve with `config` (the bearer and HMAC env vars set) and `serve_args` after
    /// `serve`.
    pub fn start(work: &Path, config: &str, serve_args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::start_with(work, config, &[], serve_args, env)
    }

    /// [`Daemon::start`] with `global` options before the subcommand (`-q`, …).
    pub fn start_with(
        work: &Path,
        config: &str,
        global: &[&str],
        serve_args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        Daemon::start_in(&work.join("state"), work, config, global, serve_args, env)
    }

    /// [`Daemon::start_with`] on the state root `state_root` (config files are written in
    /// `work`).
    pub fn start_in(
        state_root: &Path,
        work: &Path,
        config: &str,
        global: &[&str],
        serve_args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        // One file per distinct config text (a file named by length alone could hold another
        // config of the same length).
        let digest = kheishctl::ingress::sha256_hex(config.as_bytes());
        let config_path = work.join(format!("connectors-{}.toml", &digest[..16]));
        if !config_path.exists() {
            std::fs::write(&config_path, config).unwrap();
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kheishctl"));
        cmd.env_clear()
            .env("KHEISH_STATE_ROOT", state_root)
            .env("KHEISH_ADMIN", ADMIN)
            .env("BENCH_TOKEN", TOKEN)
            .env("BENCH_HMAC", HMAC)
            .envs(env.iter().copied())
            .arg("--json")
            .args(global)
            .arg("--connectors-config")
            .arg(&config_path)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-token-env",
                "KHEISH_ADMIN",
            ])
            .args(serve_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting kheishctl serve");
        // The log is drained (and dropped) so serve never blocks on a full pipe; kept only to
        // explain a failed start.
        let mut stderr = child.stderr.take().unwrap();
        let log = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let ready: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            let _ = child.wait();
            let log = log.join().unwrap_or_default();
            panic!("serve did not become ready ({e}): {line:?}\n--- serve log\n{log}")
        });
        let addr = ready["listen"].as_str().unwrap().parse().unwrap();
        Daemon {
            child,
            addr,
            _stdout: stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn metrics(&self) -> String {
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

    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// One wrk run against a daemon with the daemon's `/metrics` before and after it.
pub struct Measured {
    pub run: WrkResult,
    before: String,
    after: String,
}

impl Measured {
    /// Runs wrk with the request set `set` (`script`) against `daemon` for `seconds`.
    pub fn wrk(daemon: &Daemon, script: &Path, work: &Path, set: &str, seconds: u64) -> Measured {
        let before = daemon.metrics();
        let run = wrk(
            script,
            &format!("http://{}", daemon.addr),
            work,
            set,
            seconds,
        );
        let after = daemon.metrics();
        Measured { run, before, after }
    }

    /// How much series `name` grew during the run.
    pub fn grew(&self, name: &str) -> f64 {
        metric(&self.after, name) - metric(&self.before, name)
    }

    /// Events of `connector` (`KIND/NAME`) accepted during the run.
    pub fn accepted(&self, connector: &str) -> f64 {
        self.grew(&format!(
            "kheish_ingress_requests_total{{connector=\"{connector}\",outcome=\"accepted\"}}"
        ))
    }
}

/// Sum of the samples whose line starts with `name` (exact series including labels).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l[name.len()..].split_whitespace().next())
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}

/// One HTTP/1.1 request with a JSON body (`Connection: close`); returns the raw answer.
pub fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut head = String::new();
    for (k, v) in headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: bench\r\n{head}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// The status code of a raw HTTP answer (0 when unreadable).
pub fn status_of(answer: &str) -> u16 {
    answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// wrk with `threads` threads and `connections` connections POSTing `body` (with `headers`)
/// to `url` for `seconds`; returns requests/s (0 and wrk's output on stderr if it failed).
pub fn wrk_post(
    work: &Path,
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
    (threads, connections): (usize, usize),
    seconds: u64,
) -> f64 {
    let script = work.join(format!("post-{}.lua", body.len()));
    let mut lua = format!("wrk.method = \"POST\"\nwrk.body = '{body}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n");
    for (k, v) in headers {
        let _ = writeln!(lua, "wrk.headers[\"{k}\"] = \"{v}\"");
    }
    std::fs::write(&script, lua).unwrap();
    let out = Command::new("wrk")
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
            "-d",
        ])
        .arg(format!("{seconds}s"))
        .arg("-s")
        .arg(&script)
        .arg(url)
        .output()
        .expect("running wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    if rps == 0.0 {
        eprintln!(
            "wrk output:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    rps
}

/// Requests/s of `threads` threads POSTing `body` (with `headers`) to `url` for `seconds` through
/// one keep-alive ureq agent, the outbound client every delivery transport uses, with no queue
/// at all: the ceiling of any delivery pool of that many senders on this machine, measured
/// beside wrk so a delivery ratio can be read against what the client alone reaches.
pub fn ureq_ceiling(
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
    threads: usize,
    seconds: u64,
) -> f64 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    rate_of_threads(threads, seconds, |_| {
        let (agent, url, body, headers) = (
            agent.clone(),
            url.to_string(),
            body.to_string(),
            headers.clone(),
        );
        move || {
            let mut request = agent
                .post(url.as_str())
                .header("Content-Type", "application/json");
            for (k, v) in &headers {
                request = request.header(k.as_str(), v.as_str());
            }
            let mut response = request.send(body.as_bytes()).expect("a ceiling request");
            assert!(response.status().is_success(), "the no-op endpoint refused");
            let _ = response.body_mut().read_to_vec();
        }
    })
}

/// Calls of `threads` threads per second, each thread running its own `make(index)` closure
/// in a loop for `seconds`.
pub fn rate_of_threads<F: FnMut() + Send + 'static>(
    threads: usize,
    seconds: u64,
    make: impl Fn(usize) -> F,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let (stop, calls) = (stop.clone(), calls.clone());
            let mut call = make(i);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    call();
                    calls.fetch_add(1, Ordering::AcqRel);
                }
            })
        })
        .collect();
    let t0 = std::time::Instant::now();
    let (_tx, rx) = std::sync::mpsc::channel::<()>();
    let _ = rx.recv_timeout(std::time::Duration::from_secs(seconds));
    stop.store(true, Ordering::Release);
    let n = calls.load(Ordering::Acquire);
    let elapsed = t0.elapsed();
    for worker in workers {
        worker.join().expect("a load thread");
    }
    n as f64 / elapsed.as_secs_f64()
}

/// The bench connector of queue-filling benches: unauthenticated, one session for all.
pub const QUEUE_CONNECTOR: &str = "[[http_connectors]]\nname = \"bench\"\nallow_unauthenticated_ingress = true\ndefault_binding_keys = [\"bench\"]\n[http_connectors.session_policy]\ncreate_if_missing = true\n";

/// Fills state root `root` with about `n` pending deliveries (rounded up to a multiple of
/// `targets.len()`) to `targets`, through the library's enqueue path: one event is ingested by
/// a real daemon with `env` (`config` must hold [`QUEUE_CONNECTOR`]) so a session and a run exist, then the
/// bench claims that run and adds outputs with `Store::add_output_queued` — the call
/// `POST /v1/runs/{id}/output` makes — each naming every target. Returns how many.
pub fn fill_queue(
    work: &Path,
    root: &Path,
    (config, env): (&str, &[(&str, &str)]),
    targets: &[kheishctl::model::reply::ReplyTarget],
    n: usize,
) -> usize {
    let daemon = Daemon::start_in(
        root,
        work,
        config,
        &["-q"],
        &["--delivery-workers", "0"],
        env,
    );
    let resp = request(
        daemon.addr,
        "POST",
        "/v1/connectors/http/bench",
        &[],
        r#"{"content":"bench","idempotency_key":"bench-1"}"#,
    );
    assert!(resp.starts_with("HTTP/1.1 202"), "ingest failed: {resp}");
    daemon.stop();
    let store = kheishctl::store::Store::open(root).expect("opening the bench state root");
    let now = kheishctl::model::now_ms();
    let run = store
        .claim_run("bench", 3_600_000, None, now)
        .expect("claiming the bench run")
        .expect("the bench run is queued");
    let outputs = n.div_ceil(targets.len());
    for i in 0..outputs {
        let output = kheishctl::store::runs::NewRunOutput {
            content: Some(format!("echo: order {i} shipped")),
            parts: None,
            reply_targets: Some(targets.to_vec()),
        };
        store
            .add_output_queued(&run.run_id, Some("bench"), &output, now)
            .expect("queueing bench output");
    }
    outputs * targets.len()
}

/// A keep-alive tiny_http server in the bench process answering every request with
/// `answer(url)` = (body, counted): counted requests add to `hits`, the others to `other`
/// (e.g. a sidecar's manifest fetches). Eight threads, as a no-op platform API would serve.
pub struct CountingServer {
    pub addr: std::net::SocketAddr,
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    pub hits: Arc<std::sync::atomic::AtomicU64>,
    pub other: Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CountingServer {
    pub fn start(answer: fn(&str) -> (&'static str, bool)) -> CountingServer {
        use std::sync::atomic::AtomicU64;
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let addr = server.server_addr().to_ip().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicU64::new(0));
        let other = Arc::new(AtomicU64::new(0));
        let threads = (0..8)
            .map(|_| {
                let (server, stop) = (Arc::clone(&server), Arc::clone(&stop));
                let (hits, other) = (Arc::clone(&hits), Arc::clone(&other));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let Ok(mut rq) = server.recv() else { continue };
                        let mut body = Vec::new();
                        let _ = rq.as_reader().read_to_end(&mut body);
                        let (text, counted) = answer(rq.url());
                        if counted { &hits } else { &other }.fetch_add(1, Ordering::AcqRel);
                        let header =
                            tiny_http::Header::from_bytes("Content-Type", "application/json")
                                .expect("a valid header");
                        let _ =
                            rq.respond(tiny_http::Response::from_string(text).with_header(header));
                    }
                })
            })
            .collect();
        CountingServer {
            addr,
            server,
            stop,
            hits,
            other,
            threads,
        }
    }

    pub fn count(&self) -> u64 {
        self.hits.load(Ordering::Acquire)
    }

    /// Waits until `n` counted requests arrived, `limit` passed, or none arrived for 20 s.
    pub fn wait_count(&self, n: u64, limit: std::time::Duration) -> u64 {
        use std::time::{Duration, Instant};
        let end = Instant::now() + limit;
        let (mut last, mut last_change) = (self.count(), Instant::now());
        while self.count() < n && Instant::now() < end {
            let (_tx, rx) = std::sync::mpsc::channel::<()>();
            let _ = rx.recv_timeout(Duration::from_millis(2));
            let now = self.count();
            if now != last {
                (last, last_change) = (now, Instant::now());
            } else if last_change.elapsed() > Duration::from_secs(20) {
                eprintln!("nothing arrived for 20 s; giving up at {now} of {n}");
                break;
            }
        }
        self.count()
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for _ in 0..self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}
