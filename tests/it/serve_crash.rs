//! The kill -9 crash test of HTTP ingress (SPEC §3, §15): eight clients post 200 events, the
//! daemon is SIGKILLed after a random number of answers, restarted on the same state root, and
//! every event is sent twice more. No acknowledged event is lost, none gets a second run, and
//! the state root holds exactly one receipt and one run per key, each pointing at the other.
//!
//! Nothing here sleeps: the kill moment is picked by counting answers, not by waiting.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use kheishctl::ingress::receipt_key;
use kheishctl::model::ConnectorKind;

use crate::support::daemon::Daemon;
use crate::support::db::StateDb;
use crate::support::http::{self, exchange};
use crate::support::ingress::{bearer_headers, BEARER};
use crate::support::Sandbox;

const CRASH: &str = r#"
[[http_connectors]]
name = "crash"
bearer_token_env = "CRASH_BEARER"
ingress_events_per_second = 100000
[http_connectors.session_policy]
create_if_missing = true
"#;
const CRASH_TARGET: &str = "/v1/connectors/http/crash";
const N_CRASH_EVENTS: usize = 200;
const N_CLIENTS: usize = 8;
const N_ROUNDS: usize = 5;

/// The answer one client got for one request: `None` when the connection failed.
type Answer = Option<(u16, Value)>;

fn crash_body(round: usize, i: usize) -> Vec<u8> {
    json!({
        "content": format!("crash event {i}"),
        "idempotency_key": crash_key(round, i),
        "binding_keys": [format!("group-{}", i % 10)],
    })
    .to_string()
    .into_bytes()
}

fn crash_key(round: usize, i: usize) -> String {
    format!("crash-{round}-{i:03}")
}

/// Sends every body once, from `N_CLIENTS` threads over fresh connections. `on_answer` is
/// called after each complete answer with the number of answers so far.
fn send_all(
    addr: SocketAddr,
    bodies: &[Vec<u8>],
    on_answer: &(dyn Fn(usize) + Sync),
) -> Vec<Answer> {
    let headers = bearer_headers(BEARER);
    let answered = AtomicUsize::new(0);
    let mut answers: Vec<Answer> = vec![None; bodies.len()];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..N_CLIENTS)
            .map(|client| {
                let (headers, answered) = (&headers, &answered);
                scope.spawn(move || {
                    (client..bodies.len())
                        .step_by(N_CLIENTS)
                        .map(|i| {
                            let request = http::request_bytes(
                                addr,
                                "POST",
                                CRASH_TARGET,
                                headers,
                                &bodies[i],
                            );
                            let answer = exchange(addr, &request, false).ok().and_then(|resp| {
                                let body = serde_json::from_slice(&resp.body).ok()?;
                                Some((resp.status, body))
                            });
                            if answer.is_some() {
                                on_answer(answered.fetch_add(1, Ordering::SeqCst) + 1);
                            }
                            (i, answer)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            for (i, answer) in handle.join().expect("a client thread panicked") {
                answers[i] = answer;
            }
        }
    });
    answers
}

fn run_id_of(answer: &(u16, Value)) -> String {
    answer.1["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run_id in {answer:?}"))
        .to_string()
}

fn start_crash_daemon(sandbox: &Sandbox) -> Daemon {
    Daemon::builder(sandbox)
        .config(CRASH)
        .env("CRASH_BEARER", BEARER)
        .start()
}

/// One crash round: load, SIGKILL after `kill_after` answers, restart, replay twice, check
/// the state root.
fn crash_round(round: usize, kill_after: usize) {
    let context = format!("round {round}, killed after {kill_after} answers");
    let sandbox = Sandbox::new();
    let bodies: Vec<Vec<u8>> = (0..N_CRASH_EVENTS).map(|i| crash_body(round, i)).collect();

    let daemon = start_crash_daemon(&sandbox);
    let addr = daemon.addr;
    let (kill_tx, kill_rx) = mpsc::sync_channel::<()>(1);
    let before_kill = std::thread::scope(|scope| {
        let loader = scope.spawn(|| {
            send_all(addr, &bodies, &|n| {
                if n == kill_after {
                    let _ = kill_tx.try_send(());
                }
            })
        });
        kill_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{context}: never got {kill_after} answers"));
        // SIGKILL while the clients are still sending: they see refused or reset connections.
        daemon.kill();
        loader.join().expect("the load thread panicked")
    });
    let n_acknowledged = before_kill.iter().flatten().count();
    assert!(n_acknowledged >= kill_after, "{context}");
    for (i, answer) in before_kill.iter().enumerate() {
        if let Some(answer) = answer {
            assert_eq!(answer.0, 202, "{context}: event {i} got {answer:?}");
            assert_eq!(answer.1["status"], "accepted", "{context}: {answer:?}");
        }
    }

    // Restart on the same state root and replay everything.
    let daemon = start_crash_daemon(&sandbox);
    let second = send_all(daemon.addr, &bodies, &|_| {});
    let mut run_ids: Vec<String> = Vec::with_capacity(N_CRASH_EVENTS);
    let mut n_new = 0;
    for (i, answer) in second.iter().enumerate() {
        let answer = answer
            .as_ref()
            .unwrap_or_else(|| panic!("{context}: no answer for event {i} after restart"));
        match (answer.0, answer.1["status"].as_str()) {
            (202, Some("accepted")) => n_new += 1,
            (200, Some("duplicate")) => {}
            _ => panic!("{context}: event {i} after restart got {answer:?}"),
        }
        if let Some(acknowledged) = &before_kill[i] {
            // Acknowledged before the crash: a duplicate of the ORIGINAL run.
            assert_eq!(
                answer.0, 200,
                "{context}: event {i} was acknowledged, then {answer:?}"
            );
            assert_eq!(
                run_id_of(answer),
                run_id_of(acknowledged),
                "{context}: event {i}"
            );
            assert_eq!(
                answer.1["session_id"], acknowledged.1["session_id"],
                "{context}"
            );
        }
        run_ids.push(run_id_of(answer));
    }
    assert!(n_new <= N_CRASH_EVENTS - n_acknowledged, "{context}");

    // Once more: every event is now a duplicate of the run the second pass reported.
    let third = send_all(daemon.addr, &bodies, &|_| {});
    for (i, answer) in third.iter().enumerate() {
        let answer = answer
            .as_ref()
            .unwrap_or_else(|| panic!("{context}: no answer for event {i} in the third pass"));
        assert_eq!(answer.0, 200, "{context}: event {i} got {answer:?}");
        assert_eq!(answer.1["status"], "duplicate", "{context}: {answer:?}");
        assert_eq!(run_id_of(answer), run_ids[i], "{context}: event {i}");
    }
    assert_eq!(daemon.terminate(), Some(0), "{context}");

    // The state root: exactly one receipt and one run per key, each pointing at the other.
    let db = StateDb::open(&sandbox.state_root());
    let receipts = db.receipt_runs("http", "crash");
    let runs = db.run_metadata("http", "crash");
    assert_eq!(db.count("receipts"), N_CRASH_EVENTS as i64, "{context}");
    assert_eq!(db.count("runs"), N_CRASH_EVENTS as i64, "{context}");
    assert_eq!(receipts.len(), N_CRASH_EVENTS, "{context}");
    assert_eq!(runs.len(), N_CRASH_EVENTS, "{context}");
    let mut run_key: HashMap<String, String> = HashMap::new();
    for (run_id, metadata) in &runs {
        let key = metadata["connector_ingress_key"]
            .as_str()
            .unwrap_or_else(|| panic!("{context}: run {run_id} has no ingress key"))
            .to_string();
        assert!(
            run_key.insert(run_id.clone(), key).is_none(),
            "{context}: run {run_id} twice"
        );
    }
    let keys_of_runs: BTreeSet<&String> = run_key.values().collect();
    assert_eq!(
        keys_of_runs.len(),
        N_CRASH_EVENTS,
        "{context}: two runs for one key"
    );
    for (i, run_id) in run_ids.iter().enumerate() {
        let (stored_key, _) = receipt_key(ConnectorKind::Http, "crash", &crash_key(round, i));
        let receipt_run = receipts
            .get(&stored_key)
            .unwrap_or_else(|| panic!("{context}: no receipt for event {i}"));
        assert_eq!(receipt_run, run_id, "{context}: event {i}");
        assert_eq!(
            run_key.get(run_id),
            Some(&stored_key),
            "{context}: the run of event {i} is missing or belongs to another key"
        );
    }
}

#[test]
fn kill_9_during_ingress_loses_no_acknowledged_event_and_duplicates_none() {
    let started = Instant::now();
    let mut kill_points = Vec::new();
    for round in 0..N_ROUNDS {
        // A different moment each round: after 5..=100 answers.
        let kill_after = rand::random_range(5..=100);
        kill_points.push(kill_after);
        crash_round(round, kill_after);
    }
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the crash rounds {kill_points:?} took {:?}",
        started.elapsed()
    );
}
