//! Spawning `kheishctl serve --listen 127.0.0.1:0 --json` for tests: reads the readiness line
//! for the real address, sends requests to it through the raw client of `support::http` (so
//! tests control every byte, including duplicate headers and invalid UTF-8), stops it by
//! signal, and kills it on drop, printing its stderr when the test failed.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::http::{self, Response};
use super::wait::wait_until;
use super::{bin, Sandbox};

/// The admin token every test daemon uses (passed through `--admin-token-env`).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Builder for a test daemon.
pub struct DaemonBuilder<'a> {
    sandbox: &'a Sandbox,
    config: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    launcher: Vec<String>,
}

impl<'a> DaemonBuilder<'a> {
    /// Runs the binary through a launcher that execs it in place, e.g. `prlimit --nofile=64:64`
    /// (the binary and its arguments follow the launcher's; the pid stays the daemon's).
    pub fn launcher(mut self, launcher: &[&str]) -> Self {
        self.launcher = launcher.iter().map(|a| a.to_string()).collect();
        self
    }

    /// The connector file's TOML text (written to `<sandbox>/connectors.toml`).
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts the daemon and waits for its readiness line (panics with stderr if it exits).
    pub fn start(self) -> Daemon {
        self.try_start().unwrap_or_else(|(code, stderr)| {
            panic!("serve exited before ready with {code:?}\n--- stderr\n{stderr}\n---")
        })
    }

    /// Starts the daemon; `Err((exit code, stderr))` when it exits before becoming ready.
    pub fn try_start(self) -> Result<Daemon, (Option<i32>, String)> {
        let mut cmd = match self.launcher.split_first() {
            None => Command::new(bin()),
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(bin());
                cmd
            }
        };
        cmd.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd.env("HOME", self.sandbox.path())
            .env("KHEISH_STATE_ROOT", self.sandbox.state_root())
            .env("KHEISH_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
            .current_dir(self.sandbox.path());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.arg("--json");
        if let Some(config) = &self.config {
            let path = self.sandbox.write("connectors.toml", config);
            cmd.arg("--connectors-config").arg(path);
        }
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-token-env",
            "KHEISH_TEST_ADMIN_TOKEN",
        ]);
        cmd.args(&self.args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning kheishctl serve");
        let stderr_buf = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr_buf);
        let stderr_thread = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                match stderr.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&chunk[..n])),
                }
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let read = stdout.read_line(&mut line).unwrap_or(0);
        if read == 0 {
            let status = child.wait().ok();
            stderr_thread.join().ok();
            let err = stderr_buf.lock().unwrap().clone();
            return Err((status.and_then(|s| s.code()), err));
        }
        let ready: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("readiness line is not JSON ({e}): {line:?}"));
        let addr: SocketAddr = ready["listen"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("readiness line has no listen address: {line}"));
        Ok(Daemon {
            child: Some(child),
            addr,
            ready,
            stderr: stderr_buf,
            stdout: Some(stdout),
            state_root: self.sandbox.state_root(),
        })
    }
}

/// A running `kheishctl serve`.
pub struct Daemon {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The readiness JSON object.
    pub ready: serde_json::Value,
    stderr: Arc<Mutex<String>>,
    stdout: Option<BufReader<std::process::ChildStdout>>,
    pub state_root: PathBuf,
}

impl Daemon {
    pub fn builder(sandbox: &Sandbox) -> DaemonBuilder<'_> {
        DaemonBuilder {
            sandbox,
            config: None,
            args: Vec::new(),
            env: Vec::new(),
            launcher: Vec::new(),
        }
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends raw request bytes on a new connection and reads one response (panics without one).
    pub fn raw(&self, request: &[u8]) -> Response {
        http::send(self.addr, request)
    }

    /// Sends a request with the given headers and body (`Connection: close` is added).
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.raw(&http::request_bytes(
            self.addr, method, target, headers, body,
        ))
    }

    /// An unauthenticated JSON `POST` (`Content-Type: application/json`).
    pub fn post_json(&self, target: &str, body: impl AsRef<[u8]>) -> Response {
        self.request(
            "POST",
            target,
            &[("Content-Type", "application/json")],
            body.as_ref(),
        )
    }

    /// A control-plane request with the admin token; `body` is JSON when given.
    pub fn admin(&self, method: &str, target: &str, body: Option<&serde_json::Value>) -> Response {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let body = body
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        self.request(
            method,
            target,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
    }

    /// A control-plane request with `token` as the admin bearer token (right or wrong).
    pub fn admin_as(&self, token: &str, method: &str, target: &str) -> Response {
        let auth = format!("Bearer {token}");
        self.request(method, target, &[("Authorization", &auth)], b"")
    }

    /// SIGTERM, then waits for the daemon's last log line (`stopped: ...`) and its exit;
    /// returns the exit code and everything it wrote to stderr.
    pub fn stop(self) -> (Option<i32>, String) {
        self.signal("TERM");
        let stderr = self.wait_for_log("stopped", Duration::from_secs(30));
        (self.wait(), stderr)
    }

    /// Polls the daemon's stderr until it contains `needle` (panics after `deadline` with what
    /// it wrote); returns all of it.
    pub fn wait_for_log(&self, needle: &str, deadline: Duration) -> String {
        wait_until(&format!("{needle:?} in the daemon's log"), deadline, || {
            let stderr = self.stderr();
            if stderr.contains(needle) {
                Ok(stderr)
            } else {
                Err(stderr)
            }
        })
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        signal(child.id(), "TERM");
        let status = child.wait().expect("waiting for serve");
        self.child = None;
        status.code()
    }

    /// Sends a signal by name (`HUP`, `INT`, …) without waiting.
    pub fn signal(&self, name: &str) {
        if let Some(child) = &self.child {
            signal(child.id(), name);
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit on its own; returns its code.
    pub fn wait(mut self) -> Option<i32> {
        let status = self
            .child
            .take()
            .unwrap()
            .wait()
            .expect("waiting for serve");
        status.code()
    }
}

fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{name} {pid} failed");
}

#[allow(clippy::print_stderr)] // a failing test shows the daemon's log
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- serve stderr\n{}\n---", self.stderr());
        }
    }
}
