//! Runs through the control plane (claim long-poll, leases, output, complete/fail), the `echo`
//! and `exec` handlers, and sessions on the control plane — all against the real daemon on
//! loopback, with runs created by real HTTP ingress.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::daemon::{Daemon, DaemonBuilder, ADMIN_TOKEN};
use crate::support::http::Response;
use crate::support::ingress::ingest;
use crate::support::problem::{assert_problem, assert_problem_detail};
use crate::support::wait::wait_until;
use crate::support::Sandbox;

const CONFIG: &str = r#"
[[http_connectors]]
name = "orders"
allow_unauthenticated_ingress = true
default_binding_keys = ["orders"]
[http_connectors.session_policy]
create_if_missing = true
"#;

fn admin_json(daemon: &Daemon, method: &str, target: &str, body: Value) -> Response {
    daemon.admin(method, target, Some(&body))
}

fn get_run(daemon: &Daemon, run_id: &str) -> Value {
    let resp = daemon.admin("GET", &format!("/v1/runs/{run_id}"), None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
}

/// Waits until the run is completed or failed and returns its view.
fn wait_finished(daemon: &Daemon, run_id: &str) -> Value {
    wait_until(
        &format!("run {run_id} to finish"),
        Duration::from_secs(20),
        || {
            let run = get_run(daemon, run_id);
            match run["status"].as_str() {
                Some("completed" | "failed") => Ok(run),
                _ => Err(run.to_string()),
            }
        },
    )
}

#[test]
fn claim_output_complete_through_the_api() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox).config(CONFIG).start();
    let run_id = ingest(&daemon, "hello", "k1");

    let queued = get_run(&daemon, &run_id);
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["outputs"], json!([]));

    let claim = admin_json(
        &daemon,
        "POST",
        "/v1/runs/claim",
        json!({"lease_ms": 60000}),
    );
    assert_eq!(claim.status, 200, "{}", claim.text());
    let claimed = claim.json();
    assert_eq!(claimed["run_id"], run_id.as_str());
    assert_eq!(claimed["status"], "claimed");
    assert_eq!(claimed["connector"], "http/orders");
    assert_eq!(claimed["input"]["content"], "hello");
    assert_eq!(claimed["claim_count"], 1);
    assert!(claimed["claim_owner"]
        .as_str()
        .unwrap()
        .starts_with("control-plane:127.0.0.1"));
    assert_eq!(
        claimed["lease_expires_at_ms"],
        claimed["claim_expires_at_ms"]
    );

    // Nothing else is queued.
    let none = admin_json(&daemon, "POST", "/v1/runs/claim", json!({}));
    assert_eq!(none.status, 204, "{}", none.text());

    let out = admin_json(
        &daemon,
        "POST",
        &format!("/v1/runs/{run_id}/output"),
        json!({"content": "first answer"}),
    );
    assert_eq!(out.status, 201, "{}", out.text());
    let out = out.json();
    assert!(out["output_id"].as_str().unwrap().starts_with("out_"));
    assert_eq!(out["content"], "first answer");
    let out2 = admin_json(
        &daemon,
        "POST",
        &format!("/v1/runs/{run_id}/output"),
        json!({
            "parts": [{"type": "text", "text": "second"}],
            "reply_targets": [{"plugin": "http", "address": "https://example.com/hook"}]
        }),
    );
    assert_eq!(out2.status, 201, "{}", out2.text());

    let done = admin_json(
        &daemon,
        "POST",
        &format!("/v1/runs/{run_id}/complete"),
        json!({}),
    );
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.json()["status"], "completed");

    let run = get_run(&daemon, &run_id);
    assert_eq!(run["status"], "completed");
    assert_eq!(run["claim_owner"], Value::Null);
    let outputs = run["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    assert_eq!(outputs[0]["content"], "first answer");
    assert_eq!(outputs[1]["parts"][0]["text"], "second");
    assert_eq!(
        outputs[1]["reply_targets"][0]["address"],
        "https://example.com/hook"
    );

    // A finished run takes nothing more.
    let again = admin_json(
        &daemon,
        "POST",
        &format!("/v1/runs/{run_id}/fail"),
        json!({}),
    );
    let problem = assert_problem(&again, 409, "run_not_claimed");
    assert_eq!(problem["status"], 409);
    assert_eq!(problem["run_status"], "completed");
    let again = admin_json(
        &daemon,
        "POST",
        &format!("/v1/runs/{run_id}/output"),
        json!({"content": "late"}),
    );
    assert_problem(&again, 409, "run_not_claimed");

    // Listings and filters.
    let list = daemon.admin(
        "GET",
        "/v1/runs?status=completed&connector=http/orders",
        None,
    );
    assert_eq!(list.status, 200, "{}", list.text());
    let runs = list.json()["runs"].as_array().unwrap().clone();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["run_id"], run_id.as_str());
    let session = runs[0]["session_id"].as_str().unwrap().to_string();
    let list = daemon.admin(
        "GET",
        &format!("/v1/runs?session={session}&since=1h&limit=10"),
        None,
    );
    assert_eq!(list.json()["runs"].as_array().unwrap().len(), 1);
    let list = daemon.admin("GET", "/v1/runs?status=queued", None);
    assert_eq!(list.json()["runs"], json!([]));
    assert_problem(
        &daemon.admin("GET", "/v1/runs?status=done", None),
        400,
        "invalid_request",
    );
    assert_problem(
        &daemon.admin("GET", "/v1/runs?limit=501", None),
        400,
        "invalid_request",
    );
    assert_problem(
        &daemon.admin("GET", "/v1/runs?colour=red", None),
        400,
        "invalid_request",
    );
}

#[test]
fn fail_records_the_error() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox).config(CONFIG).start();
    let run_id = ingest(&daemon, "hello", "k1");
    let claim = admin_json(
        &daemon,
        "POST",
        "/v1/runs/claim",
        json!({"connector": "http/orders"}),
    );
    assert_eq!(claim.status, 200, "{}", claim.text());
    let failed = admin_json(
        &daemon,
        "POST",
        &format!("/v1/runs/{run_id}/fail"),
        json!({"error": "model unavailable"}),
    );
    assert_eq!(failed.status, 200, "{}", failed.text());
    let run = get_run(&daemon, &run_id);
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"], "model unavailable");
}

#[test]
fn claim_long_poll_waits_and_wakes_on_a_new_run() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox).config(CONFIG).start();

    // Nothing queued: 204 after the wait.
    let started = Instant::now();
    let none = admin_json(&daemon, "POST", "/v1/runs/claim", json!({"wait_ms": 300}));
    assert_eq!(none.status, 204, "{}", none.text());
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A run that arrives during the wait ends it at once.
    std::thread::scope(|scope| {
        let sent = Instant::now();
        let waiter = scope.spawn(|| {
            let started = Instant::now();
            let resp = admin_json(&daemon, "POST", "/v1/runs/claim", json!({"wait_ms": 30000}));
            (resp, started.elapsed())
        });
        // If the long-poll is not parked yet, it claims the run directly and the test still
        // passes, only covering less.
        let_the_long_poll_park(sent);
        let run_id = ingest(&daemon, "wake up", "k-wake");
        let (resp, elapsed) = waiter.join().unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["run_id"], run_id.as_str());
        assert!(
            elapsed < Duration::from_secs(20),
            "the long-poll returned when the run arrived, not at the end of its wait ({elapsed:?})"
        );
    });

    // A claim for another connector does not take this connector's runs.
    ingest(&daemon, "for orders", "k-other");
    let other = admin_json(
        &daemon,
        "POST",
        "/v1/runs/claim",
        json!({"connector": "http/billing", "wait_ms": 0}),
    );
    assert_eq!(other.status, 204, "{}", other.text());
}

#[test]
fn an_expired_lease_lets_another_claimer_take_the_run() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox).config(CONFIG).start();
    let run_id = ingest(&daemon, "hello", "k1");

    let first = admin_json(&daemon, "POST", "/v1/runs/claim", json!({"lease_ms": 1000}));
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["claim_count"], 1);

    // The second claimer long-polls; the expiry of the first lease wakes it.
    let second = admin_json(
        &daemon,
        "POST",
        "/v1/runs/claim",
        json!({"wait_ms": 15000, "lease_ms": 60000}),
    );
    assert_eq!(second.status, 200, "{}", second.text());
    let second = second.json();
    assert_eq!(second["run_id"], run_id.as_str());
    assert_eq!(second["claim_count"], 2);
}

#[test]
fn a_run_whose_claim_expired_reads_queued_again() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox).config(CONFIG).start();
    let run_id = ingest(&daemon, "hello", "k1");
    let listed = |status: &str| -> Vec<Value> {
        let resp = daemon.admin("GET", &format!("/v1/runs?status={status}"), None);
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.json()["runs"].as_array().unwrap().clone()
    };
    let clock = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };

    let claim = admin_json(&daemon, "POST", "/v1/runs/claim", json!({"lease_ms": 1000}));
    assert_eq!(claim.status, 200, "{}", claim.text());
    let expires = claim.json()["lease_expires_at_ms"].as_i64().unwrap();
    // While the lease runs (as far as this clock can tell) the run reads claimed.
    let run = get_run(&daemon, &run_id);
    let claimed = listed("claimed");
    if clock() < expires {
        assert_eq!(run["status"], "claimed", "{run}");
        assert_eq!(claimed.len(), 1, "{claimed:?}");
    }

    // Once it has expired the run is back in the queue: the view and both lists say so,
    // though nobody has claimed it again yet.
    let run = wait_until("the claim to expire", Duration::from_secs(20), || {
        let run = get_run(&daemon, &run_id);
        if run["status"] == "queued" {
            Ok(run)
        } else {
            Err(run.to_string())
        }
    });
    assert!(run["claim_owner"].is_null(), "{run}");
    assert!(run["claim_expires_at_ms"].is_null(), "{run}");
    assert_eq!(run["claim_count"], 1, "{run}");
    let queued = listed("queued");
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0]["run_id"], run_id.as_str());
    assert_eq!(queued[0]["status"], "queued");
    assert!(listed("claimed").is_empty());

    // And the next claim takes it.
    let again = admin_json(
        &daemon,
        "POST",
        "/v1/runs/claim",
        json!({"lease_ms": 60000}),
    );
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["claim_count"], 2);
    assert_eq!(get_run(&daemon, &run_id)["status"], "claimed");
    assert!(listed("queued").is_empty());
}

#[test]
fn batch_claims_take_up_to_max_runs_and_never_the_same_run_twice() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox).config(CONFIG).start();
    let ids: Vec<String> = (0..5)
        .map(|i| ingest(&daemon, &format!("hello {i}"), &format!("k{i}")))
        .collect();

    let first = admin_json(&daemon, "POST", "/v1/runs/claim", json!({"max": 3}));
    assert_eq!(first.status, 200, "{}", first.text());
    let first = first.json();
    let first_ids: Vec<&str> = first["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "claimed", "{r}");
            assert!(r["lease_expires_at_ms"].is_i64(), "{r}");
            r["run_id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        first_ids,
        ids[..3].iter().map(String::as_str).collect::<Vec<_>>()
    );

    let rest = admin_json(&daemon, "POST", "/v1/runs/claim", json!({"max": 64}));
    assert_eq!(rest.status, 200, "{}", rest.text());
    let rest = rest.json();
    let rest_ids: Vec<&str> = rest["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        rest_ids,
        ids[3..].iter().map(String::as_str).collect::<Vec<_>>()
    );

    // Nothing left: 204, batch or not.
    let none = admin_json(&daemon, "POST", "/v1/runs/claim", json!({"max": 8}));
    assert_eq!(none.status, 204, "{}", none.text());

    for bad in [json!({"max": 0}), json!({"max": 65}), json!({"max": "2"})] {
        let resp = admin_json(&daemon, "POST", "/v1/runs/claim", bad.clone());
        assert_eq!(resp.status, 400, "{bad}: {}", resp.text());
    }
}

#[test]
fn bad_run_requests_are_4xx() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox).config(CONFIG).start();
    let run_id = ingest(&daemon, "hello", "k1");

    // Output and completion need a claim.
    let resp = admin_json(
        &daemon,
        "POST",
        &format!("/v1/runs/{run_id}/output"),
        json!({"content": "x"}),
    );
    let problem = assert_problem_detail(&resp, 409, "run_not_claimed", "queued");
    assert_eq!(problem["run_status"], "queued");
    assert_eq!(problem["run_id"], run_id.as_str());
    assert_problem(
        &admin_json(
            &daemon,
            "POST",
            &format!("/v1/runs/{run_id}/complete"),
            json!({}),
        ),
        409,
        "run_not_claimed",
    );

    // Unknown runs.
    assert_problem(
        &daemon.admin("GET", "/v1/runs/run_nope", None),
        404,
        "run_not_found",
    );
    assert_problem(
        &admin_json(
            &daemon,
            "POST",
            "/v1/runs/run_nope/output",
            json!({"content": "x"}),
        ),
        404,
        "run_not_found",
    );
    assert_problem(
        &admin_json(&daemon, "POST", "/v1/runs/run_nope/complete", json!({})),
        404,
        "run_not_found",
    );

    // Malformed bodies.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let raw = |target: &str, body: &[u8]| {
        daemon.request("POST", target, &[("Authorization", &auth)], body)
    };
    assert_problem(&raw("/v1/runs/claim", b"{"), 400, "invalid_json");
    assert_problem(&raw("/v1/runs/claim", b"\xff\xfe"), 400, "invalid_json");
    assert_problem(&raw("/v1/runs/claim", b"[1]"), 400, "invalid_request");
    assert_problem(
        &raw("/v1/runs/claim", br#"{"wait":1}"#),
        400,
        "invalid_request",
    );
    assert_problem(
        &raw("/v1/runs/claim", br#"{"lease_ms":10}"#),
        400,
        "invalid_request",
    );
    assert_problem(
        &raw("/v1/runs/claim", br#"{"wait_ms":60001}"#),
        400,
        "invalid_request",
    );
    assert_problem(
        &raw("/v1/runs/claim", br#"{"wait_ms":-5}"#),
        400,
        "invalid_request",
    );
    assert_problem(
        &raw("/v1/runs/claim", br#"{"connector":"orders"}"#),
        400,
        "invalid_request",
    );

    // Claim, then refuse bad outputs without changing the run.
    assert_eq!(
        admin_json(&daemon, "POST", "/v1/runs/claim", json!({})).status,
        200
    );
    let output = format!("/v1/runs/{run_id}/output");
    assert_problem(&raw(&output, b"{}"), 400, "missing_content");
    assert_problem(
        &raw(&output, br#"{"content":"x","extra":1}"#),
        400,
        "invalid_request",
    );
    let bad_target = admin_json(
        &daemon,
        "POST",
        &output,
        json!({"content": "x", "reply_targets": [
            {"plugin": "http", "address": "https://example.com/ok"},
            {"plugin": "http", "address": "https://user:secret-pw@example.com/"}
        ]}),
    );
    assert_problem_detail(&bad_target, 400, "invalid_reply_target", "reply_targets[1]");
    assert!(
        !bad_target.text().contains("secret-pw"),
        "never echoes credentials"
    );
    assert_problem(
        &raw(&format!("/v1/runs/{run_id}/fail"), br#"{"reason":"x"}"#),
        400,
        "invalid_request",
    );
    assert_eq!(get_run(&daemon, &run_id)["outputs"], json!([]));
    assert_eq!(get_run(&daemon, &run_id)["status"], "claimed");
}

#[test]
fn echo_handler_replies_with_the_content() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox)
        .config(CONFIG)
        .args(&["--handler", "echo", "--handler-concurrency", "2"])
        .start();
    let ids: Vec<String> = (0..3)
        .map(|i| ingest(&daemon, &format!("hello {i}"), &format!("k{i}")))
        .collect();
    for (i, run_id) in ids.iter().enumerate() {
        let run = wait_finished(&daemon, run_id);
        assert_eq!(run["status"], "completed", "{run}");
        assert_eq!(run["outputs"].as_array().unwrap().len(), 1, "{run}");
        assert_eq!(run["outputs"][0]["content"], format!("hello {i}"));
        assert!(run["claim_owner"].is_null());
    }
    // API claimers may run beside the workers; here nothing is left to claim.
    let none = admin_json(&daemon, "POST", "/v1/runs/claim", json!({}));
    assert_eq!(none.status, 204, "{}", none.text());
}

/// One script for every exec case, chosen by the run's content.
const EXEC_SCRIPT: &str = r#"#!/bin/sh
input=$(cat)
case "$input" in
  *'"content":"structured"'*) printf '{"content":"from exec"}\n' ;;
  *'"content":"plain"'*) echo "plain text"; echo "line two" ;;
  *'"content":"silent"'*) : ;;
  *'"content":"fail"'*) echo "something broke" >&2; exit 7 ;;
  *'"content":"slow"'*)
    sleep 30 &
    echo $! > "$(dirname "$0")/slow.pid"
    wait ;;
  *'"content":"env"'*) env ;;
  *'"content":"stdin"'*) printf '%s' "$input" ;;
  *) echo "unexpected input" >&2; exit 3 ;;
esac
"#;

/// A daemon builder with [`EXEC_SCRIPT`] (written to the sandbox) as its exec handler, run
/// by `/bin/sh` with `timeout`.
fn exec_builder<'a>(sandbox: &'a Sandbox, timeout: &str) -> DaemonBuilder<'a> {
    let script = sandbox.write("handler.sh", EXEC_SCRIPT);
    let mut perms = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).unwrap();
    Daemon::builder(sandbox).config(CONFIG).args(&[
        "--handler",
        "exec",
        "--handler-command",
        "/bin/sh",
        "--handler-command",
        script.to_str().unwrap(),
        "--handler-timeout",
        timeout,
    ])
}

/// The exec handler with a 1 s timeout, three at a time, and a planted variable that must not
/// reach the handler.
fn exec_daemon(sandbox: &Sandbox) -> Daemon {
    exec_builder(sandbox, "1s")
        .env("KHEISH_MASTER_KEY_PLANTED", "planted-master-key-value")
        .args(&["--handler-concurrency", "3"])
        .start()
}

/// Polls until process `pid` (as read from a pid file) is gone; a zombie waiting for its
/// reaper is dead too.
fn wait_process_gone(what: &str, pid: &str) {
    let proc_dir = std::path::PathBuf::from(format!("/proc/{}", pid.trim()));
    wait_until(
        &format!("{what} to be gone"),
        Duration::from_secs(10),
        || match std::fs::read_to_string(proc_dir.join("stat")) {
            Ok(stat) if !stat.contains(") Z ") => Err(stat),
            _ => Ok(()),
        },
    );
}

/// Lets a long-poll sent at `sent` park in the daemon: at least 300 ms pass before the test
/// goes on. Nothing can observe "parked" from outside, so this is the one place these tests
/// wait for time rather than a state; it polls the clock through `wait_until`.
fn let_the_long_poll_park(sent: Instant) {
    wait_until(
        "the long-poll to be under way",
        Duration::from_secs(5),
        || {
            if sent.elapsed() >= Duration::from_millis(300) {
                Ok(())
            } else {
                Err("waiting".to_string())
            }
        },
    );
}

#[test]
fn exec_handler_outputs_failures_timeouts() {
    let sandbox = Sandbox::new();
    let daemon = exec_daemon(&sandbox);

    let structured = ingest(&daemon, "structured", "k-structured");
    let plain = ingest(&daemon, "plain", "k-plain");
    let silent = ingest(&daemon, "silent", "k-silent");
    let fail = ingest(&daemon, "fail", "k-fail");
    let slow = ingest(&daemon, "slow", "k-slow");
    let stdin = ingest(&daemon, "stdin", "k-stdin");

    let run = wait_finished(&daemon, &structured);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["outputs"][0]["content"], "from exec");

    let run = wait_finished(&daemon, &plain);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["outputs"][0]["content"], "plain text\nline two");

    let run = wait_finished(&daemon, &silent);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["outputs"], json!([]));

    let run = wait_finished(&daemon, &fail);
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"], "handler command exited with code 7");
    assert_eq!(run["outputs"], json!([]));

    let run = wait_finished(&daemon, &slow);
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 1s"),
        "{run}"
    );
    // The whole process group was killed, including the background `sleep`.
    let pid = std::fs::read_to_string(sandbox.path().join("slow.pid")).unwrap();
    wait_process_gone("the timed-out handler's child", &pid);

    // stdin carried the run view plus the session.
    let run = wait_finished(&daemon, &stdin);
    assert_eq!(run["status"], "completed", "{run}");
    let doc: Value = serde_json::from_str(run["outputs"][0]["content"].as_str().unwrap()).unwrap();
    assert_eq!(doc["run_id"], stdin.as_str());
    assert_eq!(doc["connector"], "http/orders");
    assert_eq!(doc["input"]["content"], "stdin");
    assert_eq!(doc["session"]["session_id"], run["session_id"]);
    assert!(doc["policy"].is_object());
}

#[test]
fn exec_handler_gets_a_cleared_environment() {
    let sandbox = Sandbox::new();
    let daemon = exec_daemon(&sandbox);
    let run_id = ingest(&daemon, "env", "k-env");
    let run = wait_finished(&daemon, &run_id);
    assert_eq!(run["status"], "completed", "{run}");
    let env = run["outputs"][0]["content"].as_str().unwrap();
    assert!(env.contains("PATH="), "{env}");
    assert!(!env.contains("KHEISH"), "{env}");
    assert!(!env.contains(ADMIN_TOKEN), "{env}");
    assert!(!env.contains("planted-master-key-value"), "{env}");
}

#[test]
fn sessions_on_the_control_plane() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox).config(CONFIG).start();

    assert_problem(
        &daemon.admin("GET", "/v1/sessions/support-1", None),
        404,
        "session_not_found",
    );
    let created = admin_json(
        &daemon,
        "PUT",
        "/v1/sessions/support-1",
        json!({
            "persona_id": "helper",
            "capability_scope": {"tools": ["search"]},
            "reply_targets": [{"plugin": "http", "address": "https://example.com/replies"}],
            "metadata": {"team": "ops"}
        }),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let created = created.json();
    assert_eq!(created["session_id"], "support-1");
    assert_eq!(created["created_by"], "control_plane");
    assert_eq!(created["persona_id"], "helper");
    assert_eq!(created["capability_scope"]["tools"][0], "search");
    assert_eq!(created["reply_targets"][0]["plugin"], "http");

    // Field-aware update: absent members keep their value.
    let updated = admin_json(
        &daemon,
        "PUT",
        "/v1/sessions/support-1",
        json!({"metadata": {"team": "sales"}}),
    );
    assert_eq!(updated.status, 200, "{}", updated.text());
    let got = daemon.admin("GET", "/v1/sessions/support-1", None);
    assert_eq!(got.status, 200, "{}", got.text());
    let got = got.json();
    assert_eq!(got["metadata"]["team"], "sales");
    assert_eq!(got["persona_id"], "helper");
    assert_eq!(got["reply_targets"], created["reply_targets"]);

    let targets = admin_json(
        &daemon,
        "PUT",
        "/v1/sessions/support-1/reply-targets",
        json!({"reply_targets": [
            {"plugin": "http", "address": {"url": "https://example.com/a", "headers": {"X-Tenant": "t1"}}},
            {"plugin": "http", "address": "https://example.com/b"}
        ]}),
    );
    assert_eq!(targets.status, 200, "{}", targets.text());
    // A plugin this build cannot deliver to is refused when stored, not dead-lettered later.
    let unserved = admin_json(
        &daemon,
        "PUT",
        "/v1/sessions/support-1/reply-targets",
        json!({"reply_targets": [
            {"plugin": "telegram", "address": "{\"connector\":\"bot\",\"chat_id\":1}"}
        ]}),
    );
    assert_problem_detail(
        &unserved,
        400,
        "invalid_reply_target",
        "no telegram connector named `bot` is configured",
    );
    assert_eq!(targets.json()["reply_targets"].as_array().unwrap().len(), 2);

    let forbidden = admin_json(
        &daemon,
        "PUT",
        "/v1/sessions/support-1/reply-targets",
        json!({"reply_targets": [
            {"plugin": "http", "address": {"url": "https://example.com/a", "headers": {"Authorization": "x"}}}
        ]}),
    );
    assert_problem_detail(&forbidden, 400, "invalid_reply_target", "reply_targets[0]");
    // Unchanged after the refusal.
    let got = daemon.admin("GET", "/v1/sessions/support-1", None).json();
    assert_eq!(got["reply_targets"].as_array().unwrap().len(), 2);

    assert_problem(
        &admin_json(
            &daemon,
            "PUT",
            "/v1/sessions/nope/reply-targets",
            json!({"reply_targets": []}),
        ),
        404,
        "session_not_found",
    );
    assert_problem(
        &admin_json(&daemon, "PUT", "/v1/sessions/x", json!({"persona": "p"})),
        400,
        "invalid_request",
    );
    assert_problem(
        &admin_json(
            &daemon,
            "PUT",
            "/v1/sessions/x",
            json!({"reply_targets": [{"plugin": "fax", "address": "1"}]}),
        ),
        400,
        "invalid_reply_target",
    );

    // An ingress-created session is visible and keeps its creator.
    let run_id = ingest(&daemon, "hello", "k1");
    let session_id = get_run(&daemon, &run_id)["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let encoded = session_id.replace(':', "%3A");
    let got = daemon.admin("GET", &format!("/v1/sessions/{encoded}"), None);
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["created_by"], "connector:http/orders");
}

#[test]
fn the_control_plane_needs_the_admin_token() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox).config(CONFIG).start();
    for (method, target) in [
        ("GET", "/v1/runs"),
        ("POST", "/v1/runs/claim"),
        ("GET", "/v1/runs/run_x"),
        ("POST", "/v1/runs/run_x/complete"),
        ("GET", "/v1/sessions/s1"),
        ("PUT", "/v1/sessions/s1"),
    ] {
        let none = daemon.request(method, target, &[], b"{}");
        assert_problem(&none, 401, "unauthorized");
        let wrong = daemon.request(
            method,
            target,
            &[("Authorization", "Bearer not-the-token")],
            b"{}",
        );
        assert_problem(&wrong, 401, "unauthorized");
        assert!(!wrong.text().contains(ADMIN_TOKEN));
        // A good request clears this client's failure count (failures are rate-limited).
        assert_eq!(daemon.admin("GET", "/v1/runs", None).status, 200);
    }
    // Nothing was created by the refused PUT.
    assert_problem(
        &daemon.admin("GET", "/v1/sessions/s1", None),
        404,
        "session_not_found",
    );
}

#[test]
fn shutdown_releases_an_exec_run_and_ends_long_polls() {
    let sandbox = Sandbox::new();
    let daemon = exec_builder(&sandbox, "60s").start();
    let run_id = ingest(&daemon, "slow", "k-slow");
    let pid_file = sandbox.path().join("slow.pid");
    wait_until("the slow handler to start", Duration::from_secs(10), || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .filter(|pid| pid.ends_with('\n'))
            .ok_or_else(|| "no pid file yet".to_string())
    });
    assert_eq!(get_run(&daemon, &run_id)["status"], "claimed");

    std::thread::scope(|scope| {
        // A control-plane long-poll in flight must not hold the shutdown up.
        let poll = scope.spawn(|| {
            admin_json(&daemon, "POST", "/v1/runs/claim", json!({"wait_ms": 60000})).status
        });
        let_the_long_poll_park(Instant::now());
        let started = Instant::now();
        daemon.signal("TERM");
        let status = poll.join().unwrap();
        assert!(matches!(status, 204 | 503), "long-poll ended with {status}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "shutdown was held up ({:?})",
            started.elapsed()
        );
    });
    assert_eq!(daemon.wait(), Some(0));

    // The interrupted run is back in the queue, and its process group is gone.
    let sleeper = std::fs::read_to_string(&pid_file).unwrap();
    wait_process_gone("the interrupted handler's child", &sleeper);
    let daemon = Daemon::builder(&sandbox).config(CONFIG).start();
    let run = get_run(&daemon, &run_id);
    assert_eq!(run["status"], "queued", "{run}");
    assert_eq!(run["claim_count"], 1);
    assert_eq!(run["claim_owner"], Value::Null);
}

/// Long-polls are async waits that hold no thread: with `--workers 2` (two blocking-pool
/// threads), four claims wait at once while ingress is still answered, and each new run wakes
/// one of them (none gives up with 204, as claims past a thread budget used to).
#[test]
fn long_polls_hold_no_thread() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox)
        .config(CONFIG)
        .args(&["--workers", "2"])
        .start();
    const CLAIMS: usize = 4;
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    let (tx, rx) = std::sync::mpsc::channel();
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let request = crate::support::http::request_bytes(
        daemon.addr,
        "POST",
        "/v1/runs/claim",
        &[("Authorization", auth.as_str())],
        br#"{"wait_ms":30000}"#,
    );
    for _ in 0..CLAIMS {
        let (addr, request) = (daemon.addr, request.clone());
        let (sent_tx, tx) = (sent_tx.clone(), tx.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.write_all(&request).unwrap();
            let _ = sent_tx.send(());
            let mut reader = std::io::BufReader::new(stream);
            let _ = tx.send(crate::support::http::read_response(&mut reader, false));
        });
    }
    for _ in 0..CLAIMS {
        sent_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a claim request was sent");
    }
    let mut run_ids = Vec::new();
    for i in 0..CLAIMS {
        let started = Instant::now();
        let run_id = ingest(&daemon, "wake up", &format!("slot-{i}"));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "ingress waited for the long-polls"
        );
        let resp = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a waiting claim wakes for the new run")
            .expect("a claim answer");
        assert_eq!(resp.status, 200, "{}", resp.text());
        run_ids.push(run_id);
    }
    for run_id in &run_ids {
        assert_eq!(get_run(&daemon, run_id)["status"], "claimed");
    }
}
