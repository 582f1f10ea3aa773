//! `cargo bench --bench telegram` (or `benches/run.sh telegram`, which installs wrk first): the
//! Telegram figures of issue 14, each against a baseline measured in the same run.
//!
//! (a) Webhook ingress: wrk, 64 keep-alive connections, every update new (unique `update_id`),
//!     a private-chat text message over 64 chats with `X-Telegram-Bot-Api-Secret-Token`, against
//!     signed HTTP-connector ingress (bearer + HMAC). Accepted events/s from `/metrics`.
//!     Target: ≥ 0.8x the HTTP figure.
//! (b) Polling: a fake Bot API in this process (a `TCP_NODELAY` socket, see [`FakeUpdates`])
//!     answers `getUpdates` with 100 new updates per call (from the requested `offset`); a polling connector ingests for `BENCH_SECONDS`.
//!     Updates/s accepted. Target: ≥ 0.5x the webhook figure of (a).
//! (c) Delivery: N queued `telegram` deliveries over 64 chats drained by
//!     `serve --delivery-workers 16` into a no-op `sendMessage` (one chunk each), against wrk
//!     POSTing a `sendMessage` body to the same endpoint. Target: ≥ 0.5x wrk.
//!
//! Environment: `BENCH_SECONDS` (default 5), `BENCH_REQUESTS` (webhook requests per wrk thread,
//! default 60 000), `BENCH_DELIVERIES` (default 20 000).

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "common/load.rs"]
mod load;

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kheishctl::model::reply::{ReplyPlugin, ReplyTarget};
use load::{env_num, metric, Daemon, CONNECTIONS, WRK_THREADS};

const SECRET: &str = "bench-telegram-secret-token";
const BOT: &str = "123456:bench-bot-token";
const CHATS: usize = 64;

fn main() -> std::process::ExitCode {
    if !load::wrk_installed() {
        eprintln!("wrk is not installed: run `benches/run.sh telegram` (installs it) or `apt-get install wrk`");
        return std::process::ExitCode::from(2);
    }
    let seconds = env_num("BENCH_SECONDS", 5);
    let per_thread = env_num("BENCH_REQUESTS", 60_000) as usize;
    let n = (env_num("BENCH_DELIVERIES", 20_000) as usize / CHATS).max(1) * CHATS;
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path();
    println!("telegram bench: {CONNECTIONS} keep-alive connections, {WRK_THREADS} wrk threads, {seconds}s per run");

    // (a) webhook vs http ingress
    let http_target = "/v1/connectors/http/bench";
    load::write_requests(work, "http", http_target, per_thread, |t, i| {
        format!(r#"{{"content":"event {i} from thread {t}","idempotency_key":"h-{t}-{i}"}}"#)
    });
    let http_script = load::write_script(work, http_target);
    write_updates(work, per_thread);
    let tg_script = load::write_replay_script(
        work,
        "tg",
        "/v1/connectors/telegram/hook",
        &[
            ("Content-Type", "application/json"),
            ("X-Telegram-Bot-Api-Secret-Token", SECRET),
        ],
        &[],
    );
    let mut rates = Vec::new();
    for (set, script, connector) in [
        ("http", http_script, "http/bench"),
        ("tg", tg_script, "telegram/hook"),
    ] {
        let daemon = Daemon::start_in(
            &work.join(format!("state-{set}")),
            work,
            &config("http://127.0.0.1:9"),
            &["-q"],
            &["--delivery-workers", "0"],
            &[("BENCH_TG_SECRET", SECRET), ("BENCH_TG_BOT", BOT)],
        );
        let measured = load::Measured::wrk(&daemon, &script, work, set, seconds);
        daemon.stop();
        let (run, rate) = (&measured.run, measured.accepted(connector) / seconds as f64);
        println!(
            "  (a) {set:<5} req/s {:>9.0}  p99 {:>7.2} ms  non-2xx {:>6}  accepted events/s {rate:>9.0}",
            run.rps, run.p99_ms, run.non_2xx
        );
        rates.push(rate);
    }
    let webhook = rates[1];
    println!(
        "      telegram webhook vs signed http ingress: {:.2}x (target >= 0.8x)",
        webhook / rates[0].max(1.0)
    );

    // (b) polling from a getUpdates answering 100 new updates per call
    let api = FakeUpdates::start();
    let daemon = Daemon::start_in(
        &work.join("state-poll"),
        work,
        &config(&format!("http://{}", api.addr)),
        &["-q"],
        &["--delivery-workers", "0"],
        &[("BENCH_TG_SECRET", SECRET), ("BENCH_TG_BOT", BOT)],
    );
    let series = "kheish_ingress_requests_total{connector=\"telegram/poll\",outcome=\"accepted\"}";
    let before = metric(&daemon.metrics(), series);
    let t0 = Instant::now();
    let (_tx, rx) = std::sync::mpsc::channel::<()>();
    let _ = rx.recv_timeout(Duration::from_secs(seconds));
    let polled = metric(&daemon.metrics(), series) - before;
    let elapsed = t0.elapsed().as_secs_f64();
    daemon.stop();
    api.stop();
    let poll_rate = polled / elapsed;
    println!(
        "  (b) polling: {polled:.0} updates accepted in {elapsed:.1} s = {poll_rate:.0}/s; vs the webhook {:.2}x (target >= 0.5x)",
        poll_rate / webhook.max(1.0)
    );

    // (c) sendMessage deliveries vs wrk on the same endpoint
    let sink = load::CountingServer::start(|_| {
        (
            r#"{"ok":true,"result":{"message_id":7,"date":1700000000,"chat":{"id":1,"type":"private"},"text":"echo"}}"#,
            true,
        )
    });
    let url = format!("http://{}/bot{BOT}/sendMessage", sink.addr);
    let base = load::wrk_post(
        work,
        &url,
        r#"{"chat_id":17,"text":"echo: order 17 shipped"}"#,
        &[],
        (2, 16),
        seconds,
    );
    let ceiling = load::ureq_ceiling(
        &url,
        r#"{"chat_id":17,"text":"echo: order 17 shipped"}"#,
        &[],
        16,
        seconds,
    );
    let root = work.join("state-send");
    let cfg = format!(
        "{}\n{}",
        load::QUEUE_CONNECTOR,
        telegram_config(&format!("http://{}", sink.addr))
    );
    let env = [("BENCH_TG_SECRET", SECRET), ("BENCH_TG_BOT", BOT)];
    let targets: Vec<ReplyTarget> = (0..CHATS)
        .map(|i| {
            ReplyTarget::new(
                ReplyPlugin::Telegram,
                &format!(r#"{{"connector":"hook","chat_id":{}}}"#, i + 1),
            )
            .expect("a valid bench target")
            .0
        })
        .collect();
    load::fill_queue(work, &root, (&cfg, &env), &targets, n);
    sink.hits.store(0, Ordering::Release);
    let daemon = Daemon::start_in(
        &root,
        work,
        &cfg,
        &["-q"],
        &["--delivery-workers", "16"],
        &env,
    );
    let t0 = Instant::now();
    let got = sink.wait_count(n as u64, Duration::from_secs(600));
    let elapsed = t0.elapsed();
    daemon.stop();
    sink.stop();
    let rate = got as f64 / elapsed.as_secs_f64();
    println!(
        "  (c) wrk POST sendMessage (baseline): {base:.0} req/s; 16 threads through one ureq agent, no queue (the client's ceiling): {ceiling:.0} req/s = {:.2}x wrk; serve --delivery-workers 16: {got} of {n} in {:.2} s = {rate:.0}/s; ratio {:.2} (target >= 0.5)",
        ceiling / base.max(1.0),
        elapsed.as_secs_f64(),
        rate / base.max(1.0)
    );
    std::process::ExitCode::SUCCESS
}

/// The HTTP connector of (a), a webhook Telegram connector `hook` and a polling one `poll`,
/// both on `api_base_url`.
fn config(api_base_url: &str) -> String {
    format!(
        "[[http_connectors]]\nname = \"bench\"\nbearer_token_env = \"BENCH_TOKEN\"\n\
         require_hmac_signature = true\nhmac_secret_env = \"BENCH_HMAC\"\n\
         ingress_events_per_second = {max}\ndefault_binding_keys = [\"bench\"]\n\
         [http_connectors.session_policy]\ncreate_if_missing = true\n\n{}",
        telegram_config(api_base_url),
        max = u32::MAX
    )
}

/// The webhook Telegram connector `hook` and the polling one `poll` on `api_base_url`.
fn telegram_config(api_base_url: &str) -> String {
    format!(
        "[[telegram_connectors]]\nname = \"hook\"\nsecret_token_env = \"BENCH_TG_SECRET\"\n\
         bot_token_env = \"BENCH_TG_BOT\"\napi_base_url = \"{api_base_url}\"\ninclude_self_output = false\n\
         ingress_events_per_second = {max}\n[telegram_connectors.session_policy]\ncreate_if_missing = true\n\n\
         [[telegram_connectors]]\nname = \"poll\"\ningress_mode = \"polling\"\npolling_timeout_seconds = 1\n\
         bot_token_env = \"BENCH_TG_BOT\"\napi_base_url = \"{api_base_url}\"\ninclude_self_output = false\n\
         ingress_events_per_second = {max}\n[telegram_connectors.session_policy]\ncreate_if_missing = true\n",
        max = u32::MAX
    )
}

/// One text message update per line, per wrk thread, each with a new `update_id`.
fn write_updates(dir: &Path, per_thread: usize) {
    for t in 0..WRK_THREADS {
        let mut out = String::with_capacity(per_thread * 250);
        for i in 0..per_thread {
            let id = t * 10_000_000 + i;
            let chat = 1000 + i % CHATS;
            writeln!(
                out,
                r#"{{"update_id":{id},"message":{{"message_id":{i},"from":{{"id":{chat},"is_bot":false,"first_name":"B"}},"chat":{{"id":{chat},"type":"private"}},"date":1700000000,"text":"message {i} from thread {t}"}}}}"#
            )
            .unwrap();
        }
        std::fs::write(dir.join(format!("tg-{t}.txt")), out).unwrap();
    }
}

/// A Bot API whose `getUpdates` answers 100 new text updates from the requested `offset`.
///
/// A plain `TcpListener` with `TCP_NODELAY` rather than tiny_http: tiny_http leaves Nagle on,
/// and a 25 KB answer's last segment then waits for the client's delayed ACK (~40 ms a call),
/// which would measure the fake, not the poller. One keep-alive connection at a time (the
/// poller's client).
struct FakeUpdates {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeUpdates {
    fn start() -> FakeUpdates {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(stream) = conn else { continue };
                    let _ = stream.set_nodelay(true);
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    loop {
                        let mut length = 0usize;
                        let mut line = String::new();
                        let mut head_ok = false;
                        while reader.read_line(&mut line).unwrap_or(0) > 0 {
                            let l = line.trim_end().to_ascii_lowercase();
                            if l.is_empty() {
                                head_ok = true;
                                break;
                            }
                            if let Some(v) = l.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                            line.clear();
                        }
                        if !head_ok {
                            break;
                        }
                        let mut body = vec![0u8; length];
                        if reader.read_exact(&mut body).is_err() {
                            break;
                        }
                        let offset = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v["offset"].as_i64())
                            .unwrap_or(1)
                            .max(1);
                        let mut updates = String::from(r#"{"ok":true,"result":["#);
                        for k in 0..100 {
                            let id = offset + k;
                            let chat = 1000 + id % CHATS as i64;
                            if k > 0 {
                                updates.push(',');
                            }
                            let _ = write!(
                                updates,
                                r#"{{"update_id":{id},"message":{{"message_id":{id},"from":{{"id":{chat},"is_bot":false,"first_name":"B"}},"chat":{{"id":{chat},"type":"private"}},"date":1700000000,"text":"polled {id}"}}}}"#
                            );
                        }
                        updates.push_str("]}");
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{updates}",
                            updates.len()
                        );
                        if writer.write_all(answer.as_bytes()).is_err() {
                            break;
                        }
                    }
                }
            })
        };
        FakeUpdates {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
