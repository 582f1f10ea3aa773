//! The README's external-sidecar walk-through, end to end against the real binary: the shipped
//! `examples/sidecar.toml` (its port, interpreter and file paths pointed into a sandbox) runs
//! the shipped `examples/sidecar.py` under `serve --handler echo`; an event injected through
//! the sidecar's `/inject` becomes a run, and the echo output reaches the sidecar's `/deliver`
//! with `Idempotency-Key: kheish:<delivery_id>` and the event's reply route.
//!
//! It needs the external ingress (`POST /v1/connectors/external/{name}/events`) and the
//! external delivery transport; the supervision half (the example becoming ready and fetching
//! its credential through a lease) is also covered in `serve_external_sidecars.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::daemon::Daemon;
use crate::support::http;
use crate::support::wait::wait_until;
use crate::support::{metric_sample, repo_root, Sandbox, MASTER_KEY};

const SHARED_TOKEN: &str = "example-shared-token-3b9e27";
const API_KEY: &str = "example-api-key-d81c55";
const LONG: Duration = Duration::from_secs(60);

fn python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 on PATH (the example sidecar needs it)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The shipped example config, pointed into `sandbox` on `addr`.
fn example_config(addr: SocketAddr, deliveries: &std::path::Path) -> String {
    let text = std::fs::read_to_string(repo_root().join("examples/sidecar.toml")).unwrap();
    let script: PathBuf = repo_root().join("examples/sidecar.py");
    let replaced = text
        .replace(
            "base_url = \"http://127.0.0.1:8787\"",
            &format!("base_url = \"http://{addr}\""),
        )
        .replace(
            "command = \"python3\"",
            &format!("command = \"{}\"", python()),
        )
        .replace(
            "args = [\"examples/sidecar.py\"]",
            &format!("args = [\"{}\"]", script.display()),
        )
        .replace(
            "SIDECAR_DELIVERIES_FILE = \"sidecar-deliveries.jsonl\"",
            &format!("SIDECAR_DELIVERIES_FILE = \"{}\"", deliveries.display()),
        );
    assert_ne!(replaced, text, "examples/sidecar.toml changed shape");
    replaced
}

#[test]
fn readme_sidecar_walkthrough_event_in_echo_out() {
    let sandbox = Sandbox::new();
    for (secret_ref, value) in [
        ("connectors.external.echo-demo.shared_token", SHARED_TOKEN),
        ("connectors.external.echo-demo.api_key", API_KEY),
    ] {
        sandbox
            .cmd()
            .env("KHEISH_MASTER_KEY", MASTER_KEY)
            .args(["rotate-secret", secret_ref, "--stdin"])
            .stdin(value)
            .run()
            .success();
    }
    let addr = crate::serve_external_sidecars::free_sidecar_addr();
    let deliveries = sandbox.path().join("sidecar-deliveries.jsonl");
    let daemon = Daemon::builder(&sandbox)
        .config(&example_config(addr, &deliveries))
        .env("KHEISH_MASTER_KEY", MASTER_KEY)
        .args(&["--handler", "echo"])
        .start();
    wait_until("the example sidecar to be ready", LONG, || {
        let text = daemon.admin("GET", "/metrics", None).text();
        let ready = "kheish_sidecar_health{connector=\"external/echo-demo\",status=\"ready\"}";
        if metric_sample(&text, ready) == Some(1.0) {
            Ok(())
        } else {
            Err(daemon.stderr())
        }
    });

    // The operator's `curl … /inject` of the README.
    let sidecar = addr;
    let body = json!({"text": "hello sidecar", "thread": "t1", "event_id": "readme-1"}).to_string();
    let auth = format!("Bearer {SHARED_TOKEN}");
    let res = http::send(
        sidecar,
        &http::request_bytes(
            sidecar,
            "POST",
            "/inject",
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        ),
    );
    assert_eq!(
        res.status,
        200,
        "{}\n--- log\n{}",
        res.text(),
        daemon.stderr()
    );
    let answer = res.json();
    assert_eq!(answer["status"], "accepted", "{answer}");
    assert_eq!(answer["event_id"], "readme-1");
    let run_id = answer["run_id"].as_str().expect("a run id").to_string();
    let session_id = answer["session_id"]
        .as_str()
        .expect("a session id")
        .to_string();

    // The echo output reaches the sidecar's /deliver.
    let delivered: Value = wait_until("the echo reply at the sidecar", LONG, || {
        let text = std::fs::read_to_string(&deliveries)
            .map_err(|e| format!("{e}\n{}", daemon.stderr()))?;
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|d| d["content"] == "hello sidecar")
            .ok_or(text)
    });
    let delivery_id = delivered["delivery_id"].as_str().unwrap();
    assert_eq!(
        delivered["idempotency_key"],
        format!("kheish:{delivery_id}").as_str()
    );
    assert_eq!(delivered["reply_route"], r#"{"thread":"t1"}"#);
    assert_eq!(delivered["conversation"]["session_id"], session_id.as_str());
    let run = daemon.admin("GET", &format!("/v1/runs/{run_id}"), None);
    assert_eq!(run.status, 200, "{}", run.text());
    let log = daemon.wait_for_log(&format!("delivered {delivery_id}: hello sidecar"), LONG);
    assert!(
        !log.contains(API_KEY) && !log.contains(SHARED_TOKEN),
        "{log}"
    );
    let (code, _) = daemon.stop();
    assert_eq!(code, Some(0));
}
