//! Claims of a crashed process are released at once (issue 15 item 2): run claims and delivery
//! leases carry an owner naming a process of this host (host, pid, start time, boot, pid
//! namespace); a starting `serve` releases those whose process is gone, so a killed daemon's
//! in-flight delivery is sent again (same `Idempotency-Key`, same per-target order) right after
//! the restart instead of after its 30 s lease. Claims of live processes (a `drain-deliveries`
//! running beside) and of external workers (`POST /v1/runs/claim`) keep their lease.
//!
//! Nothing here sleeps: progress is awaited by polling with deadlines.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::support::daemon::{Daemon, DaemonBuilder};
use crate::support::ingress::ingest;
use crate::support::receiver::{Answer, Receiver, Recorded};
use crate::support::wait::wait_until;
use crate::support::{bin, Sandbox};

/// The lease every daemon here uses for deliveries: the default, stated so the test does not
/// depend on it changing.
const LEASE_MS: i64 = 30_000;
/// Generous for a loaded machine, and still well under the lease.
const DEADLINE: Duration = Duration::from_secs(10);

fn config(target: &str) -> String {
    format!(
        r#"
[[http_connectors]]
name = "orders"
allow_unauthenticated_ingress = true
default_binding_keys = ["orders"]
ingress_events_per_second = 100000
default_reply_targets = [{{ plugin = "http", address = '{target}' }}]
[http_connectors.session_policy]
create_if_missing = true
"#
    )
}

fn builder<'a>(sandbox: &'a Sandbox, target: &str, args: &[&str]) -> DaemonBuilder<'a> {
    Daemon::builder(sandbox)
        .config(&config(target))
        .env("KHEISH_DELIVERY_LEASE_MS", &LEASE_MS.to_string())
        .env("KHEISH_DELIVERY_INITIAL_RETRY_MS", "10")
        .env("KHEISH_DELIVERY_MAX_RETRY_MS", "50")
        .args(args)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn admin_get(daemon: &Daemon, target: &str) -> Value {
    let resp = daemon.admin("GET", target, None);
    assert_eq!(resp.status, 200, "GET {target}: {}", resp.text());
    resp.json()
}

fn deliveries(daemon: &Daemon) -> Vec<Value> {
    admin_get(daemon, "/v1/deliveries?limit=100")["deliveries"]
        .as_array()
        .unwrap()
        .clone()
}

fn delivery_id(r: &Recorded) -> String {
    r.json()["delivery_id"].as_str().unwrap().to_string()
}

/// Asserts `owner` is a process owner of this format naming `pid`.
fn assert_process_owner(owner: &Value, pid: u32, role: &str) {
    let owner = owner
        .as_str()
        .unwrap_or_else(|| panic!("no owner: {owner}"));
    let parts: Vec<&str> = owner.splitn(7, ':').collect();
    assert_eq!(parts.len(), 7, "{owner}");
    assert_eq!(parts[0], "proc", "{owner}");
    assert_eq!(parts[2], pid.to_string(), "{owner}");
    assert!(parts[6].starts_with(role), "{owner}");
}

#[test]
#[allow(clippy::print_stderr)] // the measured restart-to-delivery time is part of the report
fn a_restarted_daemon_sends_a_killed_daemons_delivery_again_at_once_not_after_the_lease() {
    let receiver = Receiver::start();
    receiver.set_default(Answer::held());
    let target = receiver.address("/hook");
    let sandbox = Sandbox::new();
    let args = ["--handler", "echo", "--delivery-workers", "2"];
    let daemon = builder(&sandbox, &target, &args).start();
    let pid = daemon.pid();
    ingest(&daemon, "first", "k1");
    // The first delivery is in flight, held by the receiver; the second waits behind it (FIFO).
    let held = receiver.wait_waiting(1, DEADLINE);
    let first = delivery_id(&held[0]);
    ingest(&daemon, "second", "k2");
    let leased = wait_until("both deliveries to be queued", DEADLINE, || {
        let list = deliveries(&daemon);
        let leased = list.iter().find(|d| d["delivery_id"] == first.as_str());
        match leased {
            Some(d) if list.len() == 2 && d["lease_owner"].is_string() => Ok(d.clone()),
            _ => Err(format!("{list:?}")),
        }
    });
    assert_process_owner(&leased["lease_owner"], pid, "serve-");
    let old_lease_expiry = leased["lease_expires_at_ms"].as_i64().unwrap();

    daemon.kill();
    receiver.set_default(Answer::Status(200));
    receiver.release();
    let restarted_at = now_ms();
    let daemon = builder(&sandbox, &target, &args).start();
    let ready_at = now_ms();
    let list = wait_until(
        "both deliveries delivered after the restart",
        DEADLINE,
        || {
            let list = deliveries(&daemon);
            let done = list.iter().filter(|d| d["status"] == "delivered").count();
            if list.len() == 2 && done == 2 {
                Ok(list)
            } else {
                Err(format!("{list:?}"))
            }
        },
    );
    let log = daemon.stderr();
    assert!(
        log.contains("released 0 run claim(s) and 1 delivery lease(s)"),
        "{log}"
    );

    // The held delivery was sent again with the same key, then the second one: per-target order.
    let requests = receiver.requests_to("/hook");
    let ids: Vec<String> = requests.iter().map(delivery_id).collect();
    let second = list
        .iter()
        .map(|d| d["delivery_id"].as_str().unwrap().to_string())
        .find(|id| *id != first)
        .unwrap();
    assert_eq!(ids, [first.clone(), first.clone(), second], "{requests:?}");
    for r in &requests[..2] {
        assert_eq!(
            r.header("idempotency-key"),
            Some(format!("kheish:{first}").as_str())
        );
    }
    let resent_at = requests[1].at_ms;
    eprintln!(
        "lease recovery: resent {} ms after the restart began, {} ms after readiness \
         (the old lease would have expired {} ms after the restart began)",
        resent_at - restarted_at,
        resent_at - ready_at,
        old_lease_expiry - restarted_at
    );
    assert!(
        resent_at < old_lease_expiry,
        "the delivery was sent again at {resent_at}, not before the killed daemon's lease \
         expired at {old_lease_expiry}: the restart waited out the lease"
    );
    assert!(
        resent_at - restarted_at < DEADLINE.as_millis() as i64,
        "resent {} ms after the restart",
        resent_at - restarted_at
    );
}

#[test]
fn a_restarted_daemon_requeues_a_killed_handlers_run_at_once() {
    let sandbox = Sandbox::new();
    // The command reads the run, then waits until its parent (the daemon) is gone, so the
    // kill leaves nothing running behind.
    let exec = [
        "--handler",
        "exec",
        "--handler-command",
        "/bin/sh",
        "--handler-command=-c",
        "--handler-command",
        "cat >/dev/null; exec tail --pid=$PPID -f /dev/null",
        "--handler-timeout",
        "120s",
        "--handler-concurrency",
        "1",
    ];
    let daemon = builder(&sandbox, "https://example.com/unused", &exec).start();
    let pid = daemon.pid();
    let run_id = ingest(&daemon, "slow", "k-run");
    let run = wait_until("the exec handler to claim the run", DEADLINE, || {
        let run = admin_get(&daemon, &format!("/v1/runs/{run_id}"));
        if run["status"] == "claimed" {
            Ok(run)
        } else {
            Err(run.to_string())
        }
    });
    assert_process_owner(&run["claim_owner"], pid, "exec-worker-1");
    let old_claim_expiry = run["claim_expires_at_ms"].as_i64().unwrap();
    daemon.kill();

    let daemon = builder(
        &sandbox,
        "https://example.com/unused",
        &["--handler", "echo"],
    )
    .start();
    let done = wait_until("the run to be handled again", DEADLINE, || {
        let run = admin_get(&daemon, &format!("/v1/runs/{run_id}"));
        if run["status"] == "completed" {
            Ok(run)
        } else {
            Err(run.to_string())
        }
    });
    assert_eq!(done["claim_count"], 2, "{done}");
    assert!(
        done["updated_at_ms"].as_i64().unwrap() < old_claim_expiry,
        "{done}"
    );
    let log = daemon.stderr();
    assert!(log.contains("released 1 run claim(s)"), "{log}");
    assert!(log.contains("exec-worker-1 (pid "), "{log}");
}

/// `drain-deliveries --json` beside the daemon, as a child process that is not waited for.
fn spawn_drain(sandbox: &Sandbox) -> Child {
    Command::new(bin())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", sandbox.path())
        .env("KHEISH_STATE_ROOT", sandbox.state_root())
        .env("KHEISH_DELIVERY_LEASE_MS", LEASE_MS.to_string())
        .args(["--json", "drain-deliveries", "--timeout", "60s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning drain-deliveries")
}

#[test]
fn a_starting_daemon_keeps_the_lease_of_a_live_drain_and_of_an_external_worker() {
    let receiver = Receiver::start();
    receiver.fixed("/held", Answer::held());
    let held_target = receiver.address("/held");
    let sandbox = Sandbox::new();
    // No delivery workers: the drain below sends the first delivery and holds its lease.
    let quiet = ["--handler", "echo", "--delivery-workers", "0"];
    let daemon = builder(&sandbox, &held_target, &quiet).start();
    ingest(&daemon, "held", "k-held");
    let drain = spawn_drain(&sandbox);
    let drain_pid = drain.id();
    let held = receiver.wait_waiting(1, DEADLINE);
    let first = delivery_id(&held[0]);
    daemon.kill();

    // A daemon with no handler: a run is claimed by an external worker through the control
    // plane, then the daemon is killed.
    let daemon = builder(&sandbox, &held_target, &["--delivery-workers", "2"]).start();
    let run_id = ingest(&daemon, "for the worker", "k-worker");
    let claim = daemon.admin(
        "POST",
        "/v1/runs/claim",
        Some(&json!({"lease_ms": 120_000})),
    );
    assert_eq!(claim.status, 200, "{}", claim.text());
    assert_eq!(claim.json()["run_id"], run_id.as_str());
    daemon.kill();
    let daemon = builder(&sandbox, &held_target, &["--delivery-workers", "2"]).start();

    // The new daemon's workers are running: a delivery to another target goes out.
    let run_other = ingest(&daemon, "elsewhere", "k-other");
    // No handler here: the run gets its output through the control plane (the worker's run
    // is still claimed, so this claim takes the new one).
    let claim = daemon.admin("POST", "/v1/runs/claim", Some(&json!({})));
    assert_eq!(claim.status, 200, "{}", claim.text());
    assert_eq!(claim.json()["run_id"], run_other.as_str());
    let output = daemon.admin(
        "POST",
        &format!("/v1/runs/{run_other}/output"),
        Some(&json!({
            "content": "reply",
            "reply_targets": [{"plugin": "http", "address": receiver.address("/other")}],
        })),
    );
    assert!(output.status < 300, "{}", output.text());
    receiver.wait_for_path("/other", 1, DEADLINE);

    // The drain still holds its lease: the daemon neither released nor sent the held delivery.
    let d = admin_get(&daemon, &format!("/v1/deliveries/{first}"));
    assert_process_owner(&d["lease_owner"], drain_pid, "drain-");
    assert_eq!(receiver.requests_to("/held").len(), 1);
    // The external worker's claim is not a process of this host: it keeps its lease.
    let run = admin_get(&daemon, &format!("/v1/runs/{run_id}"));
    assert_eq!(run["status"], "claimed", "{run}");
    assert!(
        run["claim_owner"]
            .as_str()
            .unwrap()
            .starts_with("control-plane:"),
        "{run}"
    );
    let log = daemon.stderr();
    assert!(!log.contains("released"), "{log}");

    // Once answered, the drain settles its delivery: sent once.
    receiver.fixed("/held", Answer::Status(200));
    receiver.release();
    let out = drain.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["delivered"], 1, "{summary}");
    assert_eq!(receiver.requests_to("/held").len(), 1);
    let d = admin_get(&daemon, &format!("/v1/deliveries/{first}"));
    assert_eq!(d["status"], "delivered", "{d}");
}

#[test]
fn drain_deliveries_takes_over_a_killed_daemons_delivery_at_once() {
    let receiver = Receiver::start();
    receiver.set_default(Answer::held());
    let target = receiver.address("/hook");
    let sandbox = Sandbox::new();
    let args = ["--handler", "echo", "--delivery-workers", "1"];
    let daemon = builder(&sandbox, &target, &args).start();
    ingest(&daemon, "only", "k-drain");
    let held = receiver.wait_waiting(1, DEADLINE);
    let id = delivery_id(&held[0]);
    daemon.kill();
    receiver.set_default(Answer::Status(200));
    receiver.release();

    // Without the release, the drain would wait for the killed daemon's 30 s lease.
    let out = spawn_drain(&sandbox).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["delivered"], 1, "{summary}");
    assert!(
        summary["elapsed_ms"].as_i64().unwrap() < LEASE_MS,
        "{summary}"
    );
    assert!(
        stderr.contains("released 0 run claim(s) and 1 delivery lease(s)"),
        "{stderr}"
    );
    let requests = receiver.requests_to("/hook");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests.iter().all(|r| delivery_id(r) == id));
}
