//! The whole pipeline against the real daemon (SPEC §3, §11, §15; issue 10): signed-free HTTP
//! ingress from many clients -> the `echo` handler -> delivery to a local receiver, with every
//! write going through the one group-commit writer. Every accepted event is delivered, repeats
//! at the receiver carry the same `Idempotency-Key`, and nothing is left claimed — also across a
//! SIGKILL of the daemon while ingress, the handler and delivery are all busy.
//!
//! Nothing here sleeps: progress is awaited by polling with deadlines.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::daemon::Daemon;
use crate::support::db::StateDb;
use crate::support::http::{exchange, request_bytes};
use crate::support::receiver::{Receiver, Recorded};
use crate::support::wait::wait_until;
use crate::support::Sandbox;

const CLIENTS: usize = 16;
const DEADLINE: Duration = Duration::from_secs(60);

/// Each client sends its events to its own reply target (`/p<client>`), so deliveries spread over
/// 16 targets as real traffic does (one target's deliveries go out one at a time, in order).
const CONFIG: &str = r#"
[[http_connectors]]
name = "orders"
bearer_token_env = "ORDERS_BEARER"
allow_payload_reply_targets = true
default_binding_keys = ["orders"]
ingress_events_per_second = 1000000
[http_connectors.session_policy]
create_if_missing = true
"#;
const BEARER: &str = "pipeline-bearer-token";

fn start(sandbox: &Sandbox) -> Daemon {
    Daemon::builder(sandbox)
        .config(CONFIG)
        .env("ORDERS_BEARER", BEARER)
        .args(&["--handler", "echo", "--delivery-workers", "4"])
        .env("KHEISH_DELIVERY_INITIAL_RETRY_MS", "10")
        .env("KHEISH_DELIVERY_MAX_RETRY_MS", "50")
        // The default 30 s delivery lease: a restart releases a killed daemon's leases at once
        // (their owner is a process that is gone), so nothing waits for them here.
        .start()
}

/// Posts one event replying to `target`; `Some(run_id)` for a 2xx answer, `None` when there was
/// no answer (the daemon was killed) or another status.
fn post(addr: SocketAddr, key: &str, target: &str) -> Option<String> {
    let body = json!({
        "content": format!("event {key}"),
        "idempotency_key": key,
        "reply_targets": [{"plugin": "http", "address": target}],
    })
    .to_string();
    let bearer = format!("Bearer {BEARER}");
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", bearer.as_str()),
    ];
    let req = request_bytes(
        addr,
        "POST",
        "/v1/connectors/http/orders",
        &headers,
        body.as_bytes(),
    );
    let resp = exchange(addr, &req, false).ok()?;
    if !(200..300).contains(&resp.status) {
        return None;
    }
    resp.json()["run_id"].as_str().map(str::to_string)
}

/// The deliveries the receiver got: `Idempotency-Key` -> every body sent with it.
fn by_key(requests: &[Recorded]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in requests {
        let key = r
            .header("idempotency-key")
            .unwrap_or_else(|| panic!("a delivery without Idempotency-Key: {r:?}"))
            .to_string();
        out.entry(key).or_default().push(r.json());
    }
    out
}

/// Every key's repeats are the same delivery (same id, run and content): at-least-once, never
/// two deliveries behind one key. Returns the run ids delivered.
fn check_keys(keys: &BTreeMap<String, Vec<Value>>) -> BTreeSet<String> {
    let mut runs = BTreeSet::new();
    for (key, bodies) in keys {
        let first = &bodies[0];
        assert_eq!(
            key,
            &format!("kheish:{}", first["delivery_id"].as_str().unwrap()),
            "{first}"
        );
        for b in bodies {
            assert_eq!(b["delivery_id"], first["delivery_id"], "{key}");
            assert_eq!(b["run_id"], first["run_id"], "{key}");
            assert_eq!(b["content"], first["content"], "{key}");
        }
        runs.insert(first["run_id"].as_str().unwrap().to_string());
    }
    runs
}

/// What the state root says while waiting: run statuses and delivery states.
fn progress(sandbox: &Sandbox, delivered: usize, wanted: usize) -> String {
    let db = StateDb::open(&sandbox.state_root());
    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    for status in db.run_statuses().into_values() {
        *runs.entry(status).or_default() += 1;
    }
    format!(
        "{delivered} of {wanted} delivered; runs {runs:?}; deliveries {:?}",
        db.delivery_states()
    )
}

#[test]
fn every_accepted_event_is_delivered_once_per_key_and_nothing_stays_claimed() {
    const PER_CLIENT: usize = 125;
    let receiver = Receiver::start();
    let sandbox = Sandbox::new();
    let daemon = start(&sandbox);
    let addr = daemon.addr;
    let targets: Vec<String> = (0..CLIENTS)
        .map(|c| receiver.address(&format!("/p{c}")))
        .collect();
    let accepted: Vec<String> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let target = targets[c].as_str();
                s.spawn(move || {
                    (0..PER_CLIENT)
                        .map(|i| {
                            post(addr, &format!("c{c}-{i}"), target)
                                .unwrap_or_else(|| panic!("event c{c}-{i} was not accepted"))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().expect("a client thread"))
            .collect()
    });
    assert_eq!(accepted.len(), CLIENTS * PER_CLIENT);
    let accepted: BTreeSet<String> = accepted.into_iter().collect();
    assert_eq!(accepted.len(), CLIENTS * PER_CLIENT, "one run per event");

    let delivered = wait_until("every event delivered", DEADLINE, || {
        let keys = by_key(&receiver.requests());
        if keys.len() >= accepted.len() {
            Ok(keys)
        } else {
            Err(progress(&sandbox, keys.len(), accepted.len()))
        }
    });
    assert_eq!(
        check_keys(&delivered),
        accepted,
        "exactly the accepted runs"
    );
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");

    let db = StateDb::open(&sandbox.state_root());
    let statuses = db.run_statuses();
    assert_eq!(statuses.len(), accepted.len());
    assert!(
        statuses.values().all(|s| s == "completed"),
        "{:?}",
        statuses.values().collect::<BTreeSet<_>>()
    );
    let states = db.delivery_states();
    assert_eq!(
        states.get("delivered"),
        Some(&(accepted.len() as i64)),
        "{states:?}"
    );
    assert_eq!(
        states.len(),
        1,
        "nothing pending, retrying or dead: {states:?}"
    );
}

#[test]
fn a_sigkill_mid_pipeline_loses_nothing_acknowledged() {
    const EVENTS: usize = 1200;
    let receiver = Receiver::start();
    let sandbox = Sandbox::new();
    let daemon = start(&sandbox);
    let addr = daemon.addr;
    let stop = AtomicBool::new(false);
    let targets: Vec<String> = (0..CLIENTS)
        .map(|c| receiver.address(&format!("/p{c}")))
        .collect();
    let target_of = |key: &str| -> String {
        let c: usize = key[1..key.find('-').unwrap()].parse().unwrap();
        targets[c].clone()
    };
    // Clients post until the daemon dies; each remembers what was acknowledged.
    let answers: HashMap<String, Option<String>> = std::thread::scope(|s| {
        let stop = &stop;
        let target_of = &target_of;
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..EVENTS / CLIENTS {
                        let key = format!("k{c}-{i}");
                        let answer = if stop.load(Ordering::Acquire) {
                            None
                        } else {
                            post(addr, &key, &target_of(&key))
                        };
                        mine.push((key, answer));
                    }
                    mine
                })
            })
            .collect();
        // Kill once the whole pipeline is busy: deliveries are arriving while clients post.
        wait_until("deliveries flowing", DEADLINE, || {
            if receiver.count() >= 100 {
                Ok(())
            } else {
                Err(format!("{} deliveries so far", receiver.count()))
            }
        });
        daemon.kill();
        stop.store(true, Ordering::Release);
        clients
            .into_iter()
            .flat_map(|c| c.join().expect("a client thread"))
            .collect()
    });
    let acknowledged: HashMap<&String, &String> = answers
        .iter()
        .filter_map(|(k, a)| a.as_ref().map(|run| (k, run)))
        .collect();
    assert!(!acknowledged.is_empty());

    // Restart on the same state root; every event is sent again (same keys).
    let daemon = start(&sandbox);
    for (key, first) in &answers {
        let again = post(daemon.addr, key, &target_of(key))
            .unwrap_or_else(|| panic!("{key} refused after restart"));
        if let Some(first) = first {
            assert_eq!(&again, first, "{key}: an acknowledged event keeps its run");
        }
    }
    let wanted: BTreeSet<String> = {
        let db = StateDb::open(&sandbox.state_root());
        db.run_statuses().into_keys().collect()
    };
    assert_eq!(wanted.len(), answers.len(), "exactly one run per event");
    for run in acknowledged.values() {
        assert!(wanted.contains(*run), "acknowledged run {run} is gone");
    }
    let delivered = wait_until("every run delivered after the restart", DEADLINE, || {
        let keys = by_key(&receiver.requests());
        let runs = check_keys(&keys);
        if runs == wanted {
            Ok(runs)
        } else {
            Err(progress(&sandbox, runs.len(), wanted.len()))
        }
    });
    assert_eq!(delivered.len(), answers.len());
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    let db = StateDb::open(&sandbox.state_root());
    assert!(db.run_statuses().values().all(|s| s == "completed"));
    let states = db.delivery_states();
    assert_eq!(states.len(), 1, "nothing left open: {states:?}");
}
