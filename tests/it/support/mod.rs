//! Test harness: a fluent builder that runs the real `kheishctl` binary with a clean environment
//! and a temporary state root, and prints everything (command, status, stdout, stderr, state-root
//! listing) when an expectation fails.
//!
//! The other helpers live beside it, one concern each: `daemon` (a running `serve`), `http`
//! (the one raw HTTP client), `problem` (the problem+json assertion), `db` (reading
//! `state.db`), `ingress` (signed ingress requests and their answers), `receiver` (the fake
//! webhook target), `fake_sidecar` (a sidecar of the external runtime contract), `fake_slack` (the Slack Web API), `slack` (Events API payloads and signing) and `wait` (polling with a deadline, the only pause).

#![allow(dead_code)]

pub mod daemon;
pub mod db;
pub mod external;
pub mod fake_sidecar;
pub mod fake_slack;
pub mod fake_telegram;
pub mod http;
pub mod ingress;
pub mod problem;
pub mod receiver;
pub mod shared;
pub mod slack;
pub mod wait;

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A master key for `KHEISH_MASTER_KEY`: the 32 bytes 0..=31, standard base64.
pub const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The path of the binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kheishctl"))
}

/// The repository root (for fixtures and generated files).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture file under `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// The permission bits of `path` (`0o700`, …).
pub fn file_mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file under `dir`, recursively, sorted (panics when `dir` cannot be listed).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries =
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("listing {}: {e}", d.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("listing {}: {e}", d.display()))
                .path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The value of one exact series (`name{labels}` as printed) of a Prometheus text document.
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
}

/// A temporary working area: a directory for files plus a state root path inside it (not yet
/// created, so commands that should create it can be checked).
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("creating a temp dir for the test"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `<sandbox>/state`: the state root every command of this sandbox uses.
    pub fn state_root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Writes a file into the sandbox and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// `rotate-secret SECRET_REF --stdin` with `stdin` (one trailing line end is not part of
    /// the value) on this sandbox's state root, which creates it and its master key when
    /// missing. Asserts success and that the value is never shown.
    pub fn store_secret(&self, secret_ref: &str, stdin: &str) {
        self.cmd()
            .args(["rotate-secret", secret_ref, "--stdin"])
            .stdin(stdin)
            .run()
            .success()
            .never_shows(stdin.trim_end_matches(['\r', '\n']));
    }

    /// A command builder bound to this sandbox's state root.
    pub fn cmd(&self) -> Kheishctl {
        let mut k = Kheishctl::new();
        k.env("KHEISH_STATE_ROOT", self.state_root());
        k.current_dir(self.path());
        k
    }
}

/// Fluent builder around one run of the binary.
pub struct Kheishctl {
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stdin: Option<Vec<u8>>,
    cwd: Option<PathBuf>,
}

impl Kheishctl {
    /// A command with a cleared environment (only PATH and a fake HOME are kept).
    pub fn new() -> Kheishctl {
        Kheishctl {
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            cwd: None,
        }
    }

    pub fn arg(&mut self, arg: impl Into<OsString>) -> &mut Kheishctl {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Kheishctl
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> &mut Kheishctl {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn stdin(&mut self, input: impl Into<Vec<u8>>) -> &mut Kheishctl {
        self.stdin = Some(input.into());
        self
    }

    pub fn current_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Kheishctl {
        self.cwd = Some(dir.into());
        self
    }

    /// Runs the command and returns its output wrapped for assertions.
    pub fn run(&self) -> Run {
        let mut cmd = Command::new(bin());
        cmd.args(&self.args).env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd.env(
            "HOME",
            std::env::temp_dir().join("kheishctl-test-home-unused"),
        );
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning kheishctl");
        if let Some(input) = &self.stdin {
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(input).unwrap();
        }
        let output = child.wait_with_output().expect("waiting for kheishctl");
        Run {
            description: self.describe(),
            output,
        }
    }

    fn describe(&self) -> String {
        let mut s = String::from("kheishctl");
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        for (k, v) in &self.env {
            s.push_str(&format!(
                "\n  env {}={}",
                k.to_string_lossy(),
                v.to_string_lossy()
            ));
        }
        if let Some(cwd) = &self.cwd {
            s.push_str(&format!("\n  cwd {}", cwd.display()));
        }
        s
    }
}

/// The finished run: assertions print the whole context on failure.
pub struct Run {
    description: String,
    pub output: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    /// Parses stdout as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.output.stdout)
            .unwrap_or_else(|e| self.fail(&format!("stdout is not JSON: {e}")))
    }

    /// Panics with the full context.
    pub fn fail(&self, why: &str) -> ! {
        panic!(
            "{why}\n--- command\n{}\n--- status: {:?}\n--- stdout\n{}\n--- stderr\n{}\n---",
            self.description,
            self.output.status,
            self.stdout(),
            self.stderr()
        )
    }

    pub fn status(&self, code: i32) -> &Run {
        if self.code() != Some(code) {
            self.fail(&format!("expected exit code {code}"));
        }
        self
    }

    pub fn success(&self) -> &Run {
        self.status(0)
    }

    pub fn stdout_contains(&self, needle: &str) -> &Run {
        if !self.stdout().contains(needle) {
            self.fail(&format!("stdout does not contain {needle:?}"));
        }
        self
    }

    pub fn stderr_contains(&self, needle: &str) -> &Run {
        if !self.stderr().contains(needle) {
            self.fail(&format!("stderr does not contain {needle:?}"));
        }
        self
    }

    pub fn stdout_is(&self, expected: &str) -> &Run {
        if self.stdout() != expected {
            self.fail(&format!("stdout is not exactly {expected:?}"));
        }
        self
    }

    /// Asserts that neither stream contains `secret` (planted secret values).
    pub fn never_shows(&self, secret: &str) -> &Run {
        if self.stdout().contains(secret) || self.stderr().contains(secret) {
            self.fail(&format!("output contains the secret value {secret:?}"));
        }
        self
    }
}
