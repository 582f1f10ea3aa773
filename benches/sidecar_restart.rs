//! `cargo bench --bench sidecar_restart`: how long a `child_process` sidecar is gone after a
//! crash. A release `kheishctl serve` supervises the Python test sidecar
//! (`tests/it/support/child_sidecar.py`, which fetches a credential through its lease at
//! start); the bench SIGKILLs the child `BENCH_CRASHES` times (default 10) and times each crash
//! until `/metrics` shows the restarted child `ready`.
//!
//! Two runs: with the SPEC backoff (first restart after 1 s plus up to 20 % jitter; the count
//! resets once ready, so every crash pays the first step), and with a 1 ms backoff, which
//! leaves only the supervisor's own cost. The baseline, measured in the same run, is the same
//! sidecar started by the bench itself and polled until ready (interpreter start, bind,
//! credential fetch): the ratio of the 1 ms run to it is the supervision overhead.

#![allow(clippy::print_stdout)]

#[path = "common/load.rs"]
mod load;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use load::{env_num, metric, Daemon, TOKEN};

const SIDECAR: &str = include_str!("../tests/it/support/child_sidecar.py");
const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Blocks for `d` without `thread::sleep` (disallowed crate-wide).
fn pace(d: Duration) {
    let (_tx, rx) = mpsc::channel::<()>();
    let _ = rx.recv_timeout(d);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn config(port: u16, python: &str, script: &Path, dump: &Path) -> String {
    format!(
        r#"
[[external_connectors]]
name = "bench"
platform = "bench"
mode = "child_process"
base_url = "http://127.0.0.1:{port}"
shared_token_env = "BENCH_TOKEN"

[external_connectors.child_process]
command = "{python}"
args = ["{script}"]

[external_connectors.child_process.env]
FAKE_DUMP = "{dump}"

[external_connectors.child_process.credential_slots]
BOT_TOKEN = "connectors.external.bench.bot_token"
"#,
        script = script.display(),
        dump = dump.display()
    )
}

fn dump_pid(dump: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dump).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["pid"].as_u64()
}

/// Polls until `done` or 60 s.
fn poll(mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if done() {
            return true;
        }
        pace(Duration::from_millis(2));
    }
    false
}

fn ready_with_restarts(daemon: &Daemon, restarts: f64) -> bool {
    let text = daemon.metrics();
    metric(
        &text,
        "kheish_sidecar_health{connector=\"external/bench\",status=\"ready\"}",
    ) == 1.0
        && metric(
            &text,
            "kheish_sidecar_restarts_total{connector=\"external/bench\"}",
        ) >= restarts
}

/// Crash → ready times of `crashes` SIGKILLs of the supervised child.
fn crash_times(work: &Path, crashes: usize, initial_restart_ms: &str) -> Vec<Duration> {
    let state_root = work.join(format!("state-{initial_restart_ms}"));
    let status = Command::new(env!("CARGO_BIN_EXE_kheishctl"))
        .env_clear()
        .env("KHEISH_STATE_ROOT", &state_root)
        .env("KHEISH_MASTER_KEY", MASTER_KEY)
        .args([
            "rotate-secret",
            "connectors.external.bench.bot_token",
            "--stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"bench-credential")?;
            c.wait()
        })
        .expect("storing the bench credential");
    assert!(status.success());
    let script = work.join("child_sidecar.py");
    std::fs::write(&script, SIDECAR).unwrap();
    let dump = work.join(format!("dump-{initial_restart_ms}.json"));
    let python = python();
    let path = std::env::var("PATH").unwrap_or_default();
    let daemon = Daemon::start_in(
        &state_root,
        work,
        &config(free_port(), &python, &script, &dump),
        &[],
        &[],
        &[
            ("KHEISH_MASTER_KEY", MASTER_KEY),
            ("KHEISH_SIDECAR_INITIAL_RESTART_MS", initial_restart_ms),
            ("PATH", &path),
        ],
    );
    assert!(
        poll(|| ready_with_restarts(&daemon, 0.0)),
        "the sidecar never became ready"
    );
    let mut times = Vec::with_capacity(crashes);
    for i in 0..crashes {
        let mut pid = None;
        assert!(poll(|| {
            pid = dump_pid(&dump);
            pid.is_some()
        }));
        let pid = pid.unwrap();
        let crashed = Instant::now();
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        assert!(
            poll(|| ready_with_restarts(&daemon, (i + 1) as f64)),
            "not ready after crash {i}"
        );
        times.push(crashed.elapsed());
        // The new spawn's dump (a new pid) before the next crash.
        assert!(poll(|| dump_pid(&dump).is_some_and(|p| p != pid)));
    }
    daemon.stop();
    times
}

/// Start → ready of the sidecar run by the bench itself (same script, same env shape, the
/// credential fetched from a daemon with a lease: here a tiny fake answering the lease route).
fn baseline(work: &Path, runs: usize) -> Vec<Duration> {
    let python = python();
    let script = work.join("child_sidecar.py");
    std::fs::write(&script, SIDECAR).unwrap();
    // A fake daemon for the credential fetch.
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in fake.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let body =
                r#"{"value":"bench-credential","lease_id":"l","grant_id":"g","expires_at_ms":1}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let port = free_port();
        let dump = work.join(format!("baseline-{i}.json"));
        let started = Instant::now();
        let mut child = Command::new(&python)
            .arg(&script)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KHEISH_EXTERNAL_CONNECTOR_NAME", "bench")
            .env(
                "KHEISH_EXTERNAL_CONNECTOR_BASE_URL",
                format!("http://127.0.0.1:{port}"),
            )
            .env(
                "KHEISH_EXTERNAL_CONNECTOR_DAEMON_BASE_URL",
                format!("http://{fake_addr}"),
            )
            .env("KHEISH_EXTERNAL_CONNECTOR_SHARED_TOKEN", TOKEN)
            .env("KHEISH_EXTERNAL_CONNECTOR_CREDENTIAL_TOKEN", "t")
            .env(
                "KHEISH_EXTERNAL_CONNECTOR_CREDENTIAL_KEYS_JSON",
                r#"["BOT_TOKEN"]"#,
            )
            .env("FAKE_DUMP", &dump)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("starting the sidecar");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(
            poll(|| health_ready(addr)),
            "the baseline sidecar never became ready"
        );
        times.push(started.elapsed());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .status();
        let _ = child.wait();
    }
    times
}

fn health_ready(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = write!(
        s,
        "GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.contains("\"status\": \"ready\"")
}

fn stats(times: &[Duration]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    (ms[0], ms[ms.len() / 2], ms[ms.len() - 1])
}

fn main() {
    let crashes = env_num("BENCH_CRASHES", 10) as usize;
    let dir = tempfile::tempdir().expect("temp dir");
    let base = baseline(dir.path(), crashes);
    let fast = crash_times(dir.path(), crashes, "1");
    let spec = crash_times(dir.path(), crashes, "1000");
    let (bmin, bmed, bmax) = stats(&base);
    let (fmin, fmed, fmax) = stats(&fast);
    let (smin, smed, smax) = stats(&spec);
    println!("sidecar restart bench: {crashes} SIGKILLs of a supervised Python sidecar per run (min / median / max)");
    println!("  baseline: the sidecar started directly, start -> ready: {bmin:.0} / {bmed:.0} / {bmax:.0} ms");
    println!(
        "  crash -> ready, backoff 1 ms (supervisor cost): {fmin:.0} / {fmed:.0} / {fmax:.0} ms; median {:.2}x the baseline",
        fmed / bmed
    );
    println!(
        "  crash -> ready, SPEC backoff (1 s + up to 20 % jitter): {smin:.0} / {smed:.0} / {smax:.0} ms; median {:.2}x (baseline + 1 s)",
        smed / (bmed + 1000.0)
    );
}
