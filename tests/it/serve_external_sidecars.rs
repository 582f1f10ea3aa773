//! `child_process` sidecar supervision and credential leases (SPEC §10.6, §10.7) against the
//! real binary: the child is `support/child_sidecar.py` (Python 3 standard library) speaking
//! the runtime contract on a loopback port, dumping its environment and the credentials it
//! fetched through the lease route.
//!
//! Covered: readiness visible in `/metrics`; the child's environment (only the allowed
//! variables, the configured `env` — with a sidecar setting such as
//! `KHEISH_EXTERNAL_CONNECTOR_TEST_MODE` — and the reserved ones); a planted-secret search over
//! the child's environment, the daemon log, `/metrics` and the control-plane views; leases
//! (declared key, undeclared key, wrong/missing token, the old token after a restart); a child
//! that exits at once, one that never becomes ready, one that floods its stdout; SIGHUP with a
//! changed env restarts the child; a removed connector stops it; SIGTERM of the daemon stops
//! the child's whole process group. Nothing sleeps: every wait polls with a deadline.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::daemon::{Daemon, ADMIN_TOKEN};
use crate::support::problem::assert_problem;
use crate::support::wait::wait_until;
use crate::support::{metric_sample, Sandbox, MASTER_KEY};

pub(crate) const SIDECAR: &str = include_str!("support/child_sidecar.py");

const SHARED_TOKEN: &str = "planted-shared-token-7f3a9c";
const BOT_TOKEN: &str = "planted-bot-credential-51d2e8";
const ORDERS_TOKEN: &str = "planted-orders-bearer-90ab3c";
const AWS_SECRET: &str = "planted-aws-secret-c4e1f7";

/// Variables the supervisor passes through from the daemon (SPEC §10.6).
const INHERITED: [&str; 10] = [
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
];
const RESERVED: [&str; 6] = [
    "KHEISH_EXTERNAL_CONNECTOR_NAME",
    "KHEISH_EXTERNAL_CONNECTOR_BASE_URL",
    "KHEISH_EXTERNAL_CONNECTOR_DAEMON_BASE_URL",
    "KHEISH_EXTERNAL_CONNECTOR_SHARED_TOKEN",
    "KHEISH_EXTERNAL_CONNECTOR_CREDENTIAL_TOKEN",
    "KHEISH_EXTERNAL_CONNECTOR_CREDENTIAL_KEYS_JSON",
];

const LONG: Duration = Duration::from_secs(60);

/// The Python interpreter itself: `python3` on PATH may be a shim (pyenv) that adds variables
/// of its own to the environment, which would blur what the daemon passed.
pub(crate) fn python() -> String {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let out = std::process::Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .expect("python3 on PATH (the sidecar tests need it)");
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert!(!path.is_empty(), "python3 did not name its executable");
            path
        })
        .clone()
}

/// An address for a sidecar to bind: a 127.x address that nothing else in the suite binds
/// (every other socket is on 127.0.0.1), with a port that was free on it. A port merely
/// released on 127.0.0.1 can be taken again before the sidecar binds it, by another test's
/// listener or an outgoing connection's ephemeral port. The sidecar then restarts with backoff
/// for as long as the port stays taken: under load that once outlasted a test's deadline.
pub(crate) fn free_sidecar_addr() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let ip = Ipv4Addr::new(
        127,
        90 + (std::process::id() % 100) as u8,
        1 + (n / 250 % 250) as u8,
        1 + (n % 250) as u8,
    );
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("binding a 127.x loopback address")
}

/// One sandbox with the sidecar script, its secrets and a port.
struct Setup {
    sandbox: Sandbox,
    addr: SocketAddr,
    script: PathBuf,
    dump: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let sandbox = Sandbox::new();
        let script = sandbox.write("child_sidecar.py", SIDECAR);
        let dump = sandbox.path().join("dump.json");
        for (secret_ref, value) in [
            ("connectors.external.chat.shared_token", SHARED_TOKEN),
            ("connectors.external.chat.bot_token", BOT_TOKEN),
        ] {
            sandbox
                .cmd()
                .env("KHEISH_MASTER_KEY", MASTER_KEY)
                .args(["rotate-secret", secret_ref, "--stdin"])
                .stdin(value)
                .run()
                .success();
        }
        Setup {
            addr: free_sidecar_addr(),
            sandbox,
            script,
            dump,
        }
    }

    /// The connector file: an http connector whose bearer comes from the daemon's env (a
    /// secret the child must not see) and the `chat` sidecar with `env_lines`.
    fn config(&self, env_lines: &str) -> String {
        format!(
            r#"
[[http_connectors]]
name = "orders"
bearer_token_env = "ORDERS_TOKEN"

[[external_connectors]]
name = "chat"
platform = "fake"
mode = "child_process"
base_url = "http://{addr}"
shared_token_secret_ref = "connectors.external.chat.shared_token"

[external_connectors.child_process]
command = "{python}"
args = ["{script}"]

[external_connectors.child_process.env]
FAKE_DUMP = "{dump}"
KHEISH_EXTERNAL_CONNECTOR_TEST_MODE = "1"
{env_lines}

[external_connectors.child_process.credential_slots]
BOT_TOKEN = "connectors.external.chat.bot_token"

[external_connectors.session_policy]
create_if_missing = true
"#,
            addr = self.addr,
            python = python(),
            script = self.script.display(),
            dump = self.dump.display(),
        )
    }

    fn start(&self, env_lines: &str, knobs: &[(&str, &str)]) -> Daemon {
        let mut builder = Daemon::builder(&self.sandbox)
            .config(&self.config(env_lines))
            .env("KHEISH_MASTER_KEY", MASTER_KEY)
            .env("ORDERS_TOKEN", ORDERS_TOKEN)
            .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET);
        for (k, v) in knobs {
            builder = builder.env(k, v);
        }
        builder.start()
    }

    /// The dump of a spawn other than `not_pid` (0: any), once written.
    fn dump_after(&self, daemon: &Daemon, not_pid: u64) -> Value {
        wait_until("the sidecar's environment dump", LONG, || {
            let text = std::fs::read_to_string(&self.dump)
                .map_err(|e| format!("{e}; daemon log:\n{}", daemon.stderr()))?;
            let dump: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            if dump["pid"].as_u64() == Some(not_pid) {
                return Err(format!("still pid {not_pid}"));
            }
            Ok(dump)
        })
    }
}

fn metrics(daemon: &Daemon) -> String {
    let res = daemon.admin("GET", "/metrics", None);
    assert_eq!(res.status, 200, "{}", res.text());
    res.text()
}

fn health_is(text: &str, status: &str) -> bool {
    metric_sample(
        text,
        &format!("kheish_sidecar_health{{connector=\"external/chat\",status=\"{status}\"}}"),
    ) == Some(1.0)
}

fn restarts(text: &str) -> f64 {
    metric_sample(
        text,
        "kheish_sidecar_restarts_total{connector=\"external/chat\"}",
    )
    .unwrap_or(0.0)
}

fn wait_ready(daemon: &Daemon) {
    wait_until("the sidecar to be ready in /metrics", LONG, || {
        let text = metrics(daemon);
        if health_is(&text, "ready") {
            Ok(())
        } else {
            Err(format!("{text}\n--- log\n{}", daemon.stderr()))
        }
    })
}

/// A credential fetch with `token` (`None`: no Authorization header).
fn fetch(
    daemon: &Daemon,
    name: &str,
    key: &str,
    token: Option<&str>,
) -> crate::support::http::Response {
    let target = format!("/v1/connectors/external/{name}/credentials/{key}");
    match token {
        Some(token) => {
            let auth = format!("Bearer {token}");
            daemon.request("GET", &target, &[("Authorization", &auth)], b"")
        }
        None => daemon.request("GET", &target, &[], b""),
    }
}

/// True when `pid` no longer runs (absent, or a zombie nobody reaped yet).
pub(crate) fn gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn wait_gone(what: &str, pid: u64) {
    wait_until(&format!("{what} (pid {pid}) to be gone"), LONG, || {
        if gone(pid) {
            Ok(())
        } else {
            Err("still running".into())
        }
    });
}

fn kill(pid: u64, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{signal} {pid}");
}

fn env_of(dump: &Value) -> &serde_json::Map<String, Value> {
    dump["env"].as_object().expect("env in the dump")
}

fn lease_token(dump: &Value) -> String {
    env_of(dump)["KHEISH_EXTERNAL_CONNECTOR_CREDENTIAL_TOKEN"]
        .as_str()
        .expect("a lease token in the child's env")
        .to_string()
}

fn assert_absent(haystack: &str, where_: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            !haystack.contains(needle),
            "{where_} contains the planted secret {needle:?}:\n{haystack}"
        );
    }
}

#[test]
fn a_child_gets_only_its_environment_and_its_credentials_through_a_lease() {
    let setup = Setup::new();
    let daemon = setup.start("FAKE_TAG = \"one\"", &[]);
    let dump = setup.dump_after(&daemon, 0);
    wait_ready(&daemon);
    // The connector's view carries the sidecar's live state (issue 11: health is exported).
    let view = daemon.admin("GET", "/v1/runtime/connectors/external/chat", None);
    assert_eq!(view.status, 200, "{}", view.text());
    let sidecar = &view.json()["sidecar"];
    assert_eq!(sidecar["health"], "ready", "{sidecar}");
    let instance = format!("fake-{}", dump["pid"]);
    assert_eq!(sidecar["instance_id"], instance.as_str(), "{sidecar}");
    assert_eq!(sidecar["restarts"], 0, "{sidecar}");
    let listed = daemon.admin("GET", "/v1/runtime/connectors", None).json();
    let chat = listed["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "external" && c["name"] == "chat")
        .cloned()
        .unwrap();
    assert_eq!(chat["sidecar"]["health"], "ready", "{chat}");
    let orders = listed["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "orders")
        .cloned()
        .unwrap();
    assert!(orders.get("sidecar").is_none(), "{orders}");

    // The environment: the allowed inherited variables, the configured env, the reserved ones.
    let env = env_of(&dump);
    let configured = [
        "FAKE_DUMP",
        "FAKE_TAG",
        "KHEISH_EXTERNAL_CONNECTOR_TEST_MODE",
    ];
    for key in env.keys() {
        // Python's own locale coercion (PEP 538) may add LC_CTYPE in the child itself.
        assert!(
            INHERITED.contains(&key.as_str())
                || RESERVED.contains(&key.as_str())
                || configured.contains(&key.as_str())
                || key == "LC_CTYPE",
            "unexpected variable {key} in the child's environment: {env:?}"
        );
    }
    assert_eq!(env["KHEISH_EXTERNAL_CONNECTOR_TEST_MODE"], "1");
    assert_eq!(env["KHEISH_EXTERNAL_CONNECTOR_NAME"], "chat");
    assert_eq!(
        env["KHEISH_EXTERNAL_CONNECTOR_BASE_URL"],
        format!("http://{}", setup.addr).as_str()
    );
    assert_eq!(
        env["KHEISH_EXTERNAL_CONNECTOR_DAEMON_BASE_URL"],
        format!("http://{}", daemon.addr).as_str()
    );
    assert_eq!(env["KHEISH_EXTERNAL_CONNECTOR_SHARED_TOKEN"], SHARED_TOKEN);
    assert_eq!(
        env["KHEISH_EXTERNAL_CONNECTOR_CREDENTIAL_KEYS_JSON"],
        r#"["BOT_TOKEN"]"#
    );
    let token = lease_token(&dump);
    assert!(
        token.len() >= 43,
        "a lease token of >= 32 random bytes: {token}"
    );
    assert!(env.contains_key("PATH") && env.contains_key("HOME"));

    // The child fetched its declared credential through the lease route at start.
    let fetched = &dump["credentials"]["BOT_TOKEN"];
    assert_eq!(fetched["status"], 200, "{dump}");
    assert_eq!(fetched["body"]["value"], BOT_TOKEN);

    // Lease checks from outside: declared key, undeclared key, wrong or missing token.
    let ok = fetch(&daemon, "chat", "BOT_TOKEN", Some(&token));
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.header("cache-control"), Some("no-store"));
    let body = ok.json();
    assert_eq!(body["value"], BOT_TOKEN);
    assert!(body["lease_id"].as_str().unwrap().starts_with("lease_"));
    assert!(body["grant_id"].as_str().unwrap().starts_with("grant_"));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let expires = body["expires_at_ms"].as_i64().unwrap();
    assert!(
        expires > now_ms && expires <= now_ms + 5 * 60 * 1000,
        "expires_at_ms {expires} is within 5 minutes of {now_ms}"
    );
    assert_problem(
        &fetch(&daemon, "chat", "OTHER_KEY", Some(&token)),
        404,
        "credential_not_found",
    );
    assert_problem(
        &fetch(&daemon, "nope", "BOT_TOKEN", Some(&token)),
        404,
        "credential_not_found",
    );
    for wrong in [
        Some("wrong-token"),
        Some(SHARED_TOKEN),
        Some(ADMIN_TOKEN),
        None,
    ] {
        let res = fetch(&daemon, "chat", "BOT_TOKEN", wrong);
        assert_problem(&res, 401, "unauthorized");
        assert_absent(&res.text(), "a 401 body", &[BOT_TOKEN]);
    }

    // Planted-secret search: the daemon's secrets never reach the child; credential values,
    // the shared token and the lease token never reach logs, metrics or views.
    let daemon_secrets = [ADMIN_TOKEN, MASTER_KEY, ORDERS_TOKEN, AWS_SECRET, BOT_TOKEN];
    assert_absent(
        &serde_json::to_string(env).unwrap(),
        "the child's environment",
        &daemon_secrets,
    );
    let mut views = metrics(&daemon);
    for target in [
        "/v1/runs",
        "/v1/deliveries",
        "/v1/receipts",
        "/v1/deliveries/dead-letter",
    ] {
        let res = daemon.admin("GET", target, None);
        assert_eq!(res.status, 200, "{target}: {}", res.text());
        views.push_str(&res.text());
    }
    for target in ["/healthz", "/readyz"] {
        views.push_str(&daemon.request("GET", target, &[], b"").text());
    }
    let everywhere = [
        ADMIN_TOKEN,
        MASTER_KEY,
        ORDERS_TOKEN,
        AWS_SECRET,
        BOT_TOKEN,
        SHARED_TOKEN,
        token.as_str(),
    ];
    assert_absent(&views, "/metrics and the views", &everywhere);

    // A crash of the child: it is restarted, its old lease is revoked, the new one works.
    let first_pid = dump["pid"].as_u64().unwrap();
    kill(first_pid, "KILL");
    let second = setup.dump_after(&daemon, first_pid);
    wait_ready(&daemon);
    assert!(restarts(&metrics(&daemon)) >= 1.0);
    let new_token = lease_token(&second);
    assert_ne!(new_token, token);
    assert_problem(
        &fetch(&daemon, "chat", "BOT_TOKEN", Some(&token)),
        401,
        "unauthorized",
    );
    assert_eq!(
        fetch(&daemon, "chat", "BOT_TOKEN", Some(&new_token)).status,
        200
    );

    // SIGTERM of the daemon stops the child's whole process group.
    let pid = second["pid"].as_u64().unwrap();
    let grandchild = second["grandchild_pid"].as_u64().unwrap();
    assert!(!gone(pid) && !gone(grandchild));
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    wait_gone("the sidecar", pid);
    wait_gone("the sidecar's own child", grandchild);
    assert!(log.contains("sidecar `chat`: started"), "{log}");
    assert!(log.contains("sidecar `chat`: ready"), "{log}");
    assert!(
        log.contains("fake sidecar"),
        "the child's stderr is in the log: {log}"
    );
    assert_absent(
        &log,
        "the daemon log",
        &[
            ADMIN_TOKEN,
            MASTER_KEY,
            ORDERS_TOKEN,
            AWS_SECRET,
            BOT_TOKEN,
            SHARED_TOKEN,
            &token,
            &new_token,
        ],
    );
}

#[test]
fn a_child_that_exits_at_once_is_restarted_with_backoff() {
    let setup = Setup::new();
    let daemon = setup.start(
        "FAKE_MODE = \"exit\"",
        &[
            ("KHEISH_SIDECAR_INITIAL_RESTART_MS", "50"),
            ("KHEISH_SIDECAR_MAX_RESTART_MS", "200"),
        ],
    );
    let text = wait_until("three restarts in /metrics", LONG, || {
        let text = metrics(&daemon);
        if restarts(&text) >= 3.0 {
            Ok(text)
        } else {
            Err(format!("{text}\n--- log\n{}", daemon.stderr()))
        }
    });
    assert!(!health_is(&text, "ready"), "{text}");
    // The daemon itself is unaffected.
    assert_eq!(daemon.request("GET", "/healthz", &[], b"").status, 200);
    let log = daemon.stderr();
    assert!(log.contains("sidecar `chat` exited with code 3"), "{log}");
    assert!(log.contains("sidecar `chat`: restarting in"), "{log}");
    // No lease outlives its child: none was ever fetched, and the last one is revoked or
    // belongs to the spawn in progress; nothing secret was logged.
    assert_absent(&log, "the daemon log", &[BOT_TOKEN, SHARED_TOKEN]);
}

#[test]
fn a_child_that_never_becomes_ready_is_stopped_and_restarted() {
    let setup = Setup::new();
    let daemon = setup.start(
        "FAKE_MODE = \"never_ready\"",
        &[
            ("KHEISH_SIDECAR_READY_TIMEOUT_MS", "800"),
            ("KHEISH_SIDECAR_INITIAL_RESTART_MS", "50"),
            ("KHEISH_SIDECAR_MAX_RESTART_MS", "100"),
        ],
    );
    let first = setup.dump_after(&daemon, 0);
    let first_pid = first["pid"].as_u64().unwrap();
    let text = wait_until("two restarts after readiness timeouts", LONG, || {
        let text = metrics(&daemon);
        if restarts(&text) >= 2.0 {
            Ok(text)
        } else {
            Err(format!("{text}\n--- log\n{}", daemon.stderr()))
        }
    });
    assert!(!health_is(&text, "ready"), "{text}");
    let failures = metric_sample(
        &text,
        "kheish_sidecar_check_failures_total{connector=\"external/chat\",check=\"health\"}",
    )
    .unwrap_or(0.0);
    assert!(failures >= 2.0, "{text}");
    // The not-ready child was stopped (its group too), not left running beside the next one.
    wait_gone("the first, never ready, sidecar", first_pid);
    wait_gone("its own child", first["grandchild_pid"].as_u64().unwrap());
    let log = daemon.stderr();
    assert!(log.contains("sidecar `chat`: not ready within"), "{log}");
    assert!(log.contains("health is `starting`"), "{log}");
}

#[test]
fn a_child_speaking_another_protocol_is_refused_at_once_not_after_the_readiness_timeout() {
    let setup = Setup::new();
    // A readiness timeout far beyond the wait below: the refusal must not wait for it.
    let daemon = setup.start(
        "FAKE_MODE = \"protocol2\"",
        &[("KHEISH_SIDECAR_READY_TIMEOUT_MS", "600000")],
    );
    let log = daemon.wait_for_log("sidecar `chat`: cannot be used:", LONG);
    assert!(
        log.contains("the manifest says protocol_version 2; this daemon speaks 1"),
        "{log}"
    );
    assert!(!log.contains("not ready within"), "{log}");
}

#[test]
fn a_missing_working_directory_is_named_as_the_field_to_check() {
    let setup = Setup::new();
    let config = setup.config("").replacen(
        "[external_connectors.child_process]\n",
        "[external_connectors.child_process]\nworking_dir = \"/nonexistent/kheish-sidecar-dir\"\n",
        1,
    );
    let daemon = Daemon::builder(&setup.sandbox)
        .config(&config)
        .env("KHEISH_MASTER_KEY", MASTER_KEY)
        .env("ORDERS_TOKEN", ORDERS_TOKEN)
        .start();
    let log = daemon.wait_for_log("sidecar `chat`: cannot start", LONG);
    assert!(
        log.contains("`/nonexistent/kheish-sidecar-dir` is not a directory; check `child_process.working_dir`"),
        "{log}"
    );
}

#[test]
fn a_child_flooding_its_output_is_rate_limited_in_the_log() {
    let setup = Setup::new();
    let daemon = setup.start("FAKE_MODE = \"flood\"", &[]);
    let log = daemon.wait_for_log("line(s) not logged", LONG);
    wait_ready(&daemon);
    let logged = log.matches("flood line").count();
    assert!(
        (1..=50).contains(&logged),
        "{logged} flood lines in the daemon log (at most 50 per 10 s)"
    );
    let report = log
        .lines()
        .find(|l| l.contains("line(s) not logged"))
        .unwrap();
    assert!(report.contains("sidecar `chat` stdout:"), "{report}");
    assert_eq!(daemon.request("GET", "/healthz", &[], b"").status, 200);
    assert_eq!(daemon.admin("GET", "/v1/runs", None).status, 200);
}

#[test]
fn sighup_restarts_a_changed_child_and_stops_a_removed_one() {
    let setup = Setup::new();
    let daemon = setup.start("FAKE_TAG = \"one\"", &[]);
    let first = setup.dump_after(&daemon, 0);
    assert_eq!(first["tag"], "one");
    let first_pid = first["pid"].as_u64().unwrap();
    wait_ready(&daemon);

    // A changed env: the child is stopped and started with the new spec.
    let path = setup.sandbox.path().join("connectors.toml");
    std::fs::write(&path, setup.config("FAKE_TAG = \"two\"")).unwrap();
    daemon.signal("HUP");
    let second = setup.dump_after(&daemon, first_pid);
    assert_eq!(second["tag"], "two");
    wait_gone("the sidecar of the old config", first_pid);
    wait_ready(&daemon);
    // A config change is not a failure.
    assert_eq!(restarts(&metrics(&daemon)), 0.0);
    assert_problem(
        &fetch(&daemon, "chat", "BOT_TOKEN", Some(&lease_token(&first))),
        401,
        "unauthorized",
    );

    // The connector removed: its child is stopped and its state and leases are gone.
    let second_pid = second["pid"].as_u64().unwrap();
    std::fs::write(
        &path,
        "[[http_connectors]]\nname = \"orders\"\nbearer_token_env = \"ORDERS_TOKEN\"\n",
    )
    .unwrap();
    daemon.signal("HUP");
    wait_gone("the sidecar of the removed connector", second_pid);
    wait_gone("its own child", second["grandchild_pid"].as_u64().unwrap());
    daemon.wait_for_log("sidecar `chat`: connector removed; stopped", LONG);
    let text = metrics(&daemon);
    assert!(!text.contains("external/chat"), "{text}");
    assert_problem(
        &fetch(&daemon, "chat", "BOT_TOKEN", Some(&lease_token(&second))),
        404,
        "credential_not_found",
    );
}

#[test]
fn the_shipped_example_sidecar_becomes_ready_with_its_credential() {
    let sandbox = Sandbox::new();
    for (secret_ref, value) in [
        ("connectors.external.echo-demo.shared_token", SHARED_TOKEN),
        ("connectors.external.echo-demo.api_key", BOT_TOKEN),
    ] {
        sandbox
            .cmd()
            .env("KHEISH_MASTER_KEY", MASTER_KEY)
            .args(["rotate-secret", secret_ref, "--stdin"])
            .stdin(value)
            .run()
            .success();
    }
    let addr = free_sidecar_addr();
    let root = crate::support::repo_root();
    let shipped = std::fs::read_to_string(root.join("examples/sidecar.toml")).unwrap();
    let config = shipped
        .replace("127.0.0.1:8787", &addr.to_string())
        .replace("\"python3\"", &format!("\"{}\"", python()))
        .replace(
            "\"examples/sidecar.py\"",
            &format!("\"{}\"", root.join("examples/sidecar.py").display()),
        );
    assert_ne!(config, shipped, "examples/sidecar.toml changed shape");
    let daemon = Daemon::builder(&sandbox)
        .config(&config)
        .env("KHEISH_MASTER_KEY", MASTER_KEY)
        .args(&["--handler", "echo"])
        .start();
    wait_until("the example sidecar to be ready", LONG, || {
        let text = metrics(&daemon);
        let ready = "kheish_sidecar_health{connector=\"external/echo-demo\",status=\"ready\"}";
        if metric_sample(&text, ready) == Some(1.0) {
            Ok(())
        } else {
            Err(format!("{text}\n--- log\n{}", daemon.stderr()))
        }
    });
    // It fetched its credential through a lease and says so without the value.
    let log = daemon.wait_for_log("fetched credential DEMO_API_KEY (", LONG);
    // Its /inject refuses a caller without the shared token.
    let sidecar = addr;
    let res = crate::support::http::send(
        sidecar,
        &crate::support::http::request_bytes(
            sidecar,
            "POST",
            "/inject",
            &[("Authorization", "Bearer wrong")],
            br#"{"text":"x"}"#,
        ),
    );
    assert_eq!(res.status, 401, "{}", res.text());
    let (code, log_after) = daemon.stop();
    assert_eq!(code, Some(0), "{log_after}");
    assert!(
        log_after.contains("sidecar echo-demo stopped"),
        "{log_after}"
    );
    assert_absent(&log, "the daemon log", &[BOT_TOKEN, SHARED_TOKEN]);
}

#[test]
fn remote_http_sidecar_health_is_polled_and_exported() {
    use crate::support::receiver::{Answer, Receiver};
    let sidecar = Receiver::start();
    let health = |status: &str| Answer::Full {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: format!(r#"{{"protocol_version":1,"instance_id":"remote-1","status":"{status}"}}"#)
            .into_bytes(),
    };
    sidecar.set_default(health("degraded"));
    let sandbox = Sandbox::new();
    let config = format!(
        r#"
[[external_connectors]]
name = "chat"
platform = "fake"
base_url = "{}"
allow_private_network = true
shared_token_env = "CHAT_TOKEN"
"#,
        sidecar.url("")
    );
    let daemon = Daemon::builder(&sandbox)
        .config(&config)
        .env("CHAT_TOKEN", SHARED_TOKEN)
        .env("KHEISH_SIDECAR_HEALTH_INTERVAL_MS", "100")
        .start();
    wait_until("the remote sidecar's health in /metrics", LONG, || {
        let text = metrics(&daemon);
        if health_is(&text, "degraded") {
            Ok(())
        } else {
            Err(text)
        }
    });
    let polls = sidecar.wait_for(1, LONG);
    assert_eq!(polls[0].path(), "/health");
    assert_eq!(
        polls[0].header("authorization"),
        Some(format!("Bearer {SHARED_TOKEN}").as_str())
    );
    // `draining` is reported as it is; a failing sidecar becomes `unreachable`, counted.
    sidecar.set_default(health("draining"));
    wait_until("draining in /metrics", LONG, || {
        let text = metrics(&daemon);
        if health_is(&text, "draining") {
            Ok(())
        } else {
            Err(text)
        }
    });
    sidecar.set_default(Answer::Status(500));
    let text = wait_until("unreachable in /metrics", LONG, || {
        let text = metrics(&daemon);
        if health_is(&text, "unreachable") {
            Ok(text)
        } else {
            Err(text)
        }
    });
    let failures = metric_sample(
        &text,
        "kheish_sidecar_check_failures_total{connector=\"external/chat\",check=\"health\"}",
    );
    assert!(failures.is_some_and(|n| n >= 1.0), "{text}");
    assert_absent(&text, "/metrics", &[SHARED_TOKEN]);
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("sidecar `chat` (remote): health check failed"),
        "{log}"
    );
    assert_absent(&log, "the daemon log", &[SHARED_TOKEN]);
}

#[test]
fn child_process_events_must_carry_the_running_childs_instance_id() {
    use crate::support::external::{
        answer, assert_accepted, assert_rejected, post_raw, sdk_event, single,
    };
    let setup = Setup::new();
    let daemon = setup.start("", &[]);
    let dump = setup.dump_after(&daemon, 0);
    wait_ready(&daemon);
    let running = format!("fake-{}", dump["pid"].as_u64().unwrap());
    let post = |instance: &str, event_id: &str| {
        let mut event = sdk_event(event_id, "hello", &["room-1"]);
        event["instance_id"] = json!(instance);
        answer(&post_raw(
            &daemon,
            "/v1/connectors/external/chat/events",
            Some(SHARED_TOKEN),
            single(&event, 2).to_string().as_bytes(),
        ))
    };
    assert_rejected(
        &post("fake-0", "e-wrong"),
        "not the running sidecar's instance",
    );
    assert_accepted(&post(&running, "e-right"), "e-right");
    // After a restart the old instance is refused and the new one accepted.
    kill(dump["pid"].as_u64().unwrap(), "KILL");
    let next = setup.dump_after(&daemon, dump["pid"].as_u64().unwrap());
    wait_ready(&daemon);
    let restarted = format!("fake-{}", next["pid"].as_u64().unwrap());
    assert_rejected(
        &post(&running, "e-old"),
        "not the running sidecar's instance",
    );
    assert_accepted(&post(&restarted, "e-new"), "e-new");
    daemon.stop();
}
