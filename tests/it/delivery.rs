//! Delivery (SPEC §11.2–§11.6, §13, §15) against the real binary: a `serve --handler echo`
//! turns each ingested event into output, whose deliveries go to a fake webhook receiver on
//! 127.0.0.1:0 (`support::receiver`). The daemon runs with `--delivery-workers 0` and the tests
//! drive the queue deterministically with `kheishctl drain-deliveries` beside it, with tiny
//! retry delays from the `KHEISH_DELIVERY_*` variables — so "nothing else happens" needs no
//! waiting. Only the crash test and the metrics test use the daemon's own workers.
//!
//! Covered: retries keep one `Idempotency-Key`; `Retry-After` in both forms (asserted on the
//! stored `next_attempt_at_ms`, not by waiting); terminal 4xx; timeouts; dropped connections;
//! redirects not followed; oversize answers capped; the private-address guard; forbidden
//! headers refused when stored; replay/resolve through the CLI and the API (new key per
//! replay, existing replays, `--force`, dry runs, bulk); kill -9 mid-delivery; planted secrets
//! absent from every output; the queue metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::daemon::Daemon;
use crate::support::ingress::ingest;
use crate::support::problem::assert_problem;
use crate::support::receiver::{Answer, Receiver, Recorded};
use crate::support::wait::wait_until;
use crate::support::{metric_sample, Kheishctl, Run, Sandbox};

/// Retry delays small enough that `--ignore-backoff` is never needed for speed, yet large
/// enough to be distinguishable from a Retry-After.
const FAST_RETRIES: [(&str, &str); 2] = [
    ("KHEISH_DELIVERY_INITIAL_RETRY_MS", "10"),
    ("KHEISH_DELIVERY_MAX_RETRY_MS", "50"),
];

const DEADLINE: Duration = Duration::from_secs(30);

/// The connector file: `http/orders`, unauthenticated, one session, with `targets` (TOML
/// literal strings, so JSON addresses need no escaping) as its default reply targets.
fn config(targets: &[String]) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|a| format!("{{ plugin = \"http\", address = '{a}' }}"))
        .collect();
    format!(
        r#"
[[http_connectors]]
name = "orders"
allow_unauthenticated_ingress = true
default_binding_keys = ["orders"]
ingress_events_per_second = 100000
default_reply_targets = [{}]
[http_connectors.session_policy]
create_if_missing = true
"#,
        targets.join(", ")
    )
}

/// A daemon with the echo handler and no delivery workers (unless `args` asks for some), plus
/// its sandbox.
pub(crate) struct Gateway {
    pub(crate) sandbox: Sandbox,
    pub(crate) daemon: Daemon,
}

impl Gateway {
    fn start(targets: &[String]) -> Gateway {
        Gateway::start_with(targets, &[], &[])
    }

    fn start_with(targets: &[String], args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let sandbox = Sandbox::new();
        let daemon = start_daemon(&sandbox, targets, args, env);
        Gateway { sandbox, daemon }
    }

    /// Posts one event; returns its run id.
    fn ingest(&self, content: &str, key: &str) -> String {
        ingest(&self.daemon, content, key)
    }

    /// Posts one event and waits for the echo handler's delivery of it; returns the delivery.
    fn ingest_and_wait(&self, content: &str, key: &str) -> Value {
        let run = self.ingest(content, key);
        wait_until(&format!("the delivery of run {run}"), DEADLINE, || {
            let list = self.list(&format!("/v1/deliveries?run={run}"));
            list.first().cloned().ok_or_else(|| format!("{list:?}"))
        })
    }

    /// [`Gateway::ingest_and_wait`], returning the delivery's id.
    fn ingest_delivery_id(&self, content: &str, key: &str) -> String {
        id_of(&self.ingest_and_wait(content, key))
    }

    /// `GET target` → its `deliveries` array.
    fn list(&self, target: &str) -> Vec<Value> {
        let resp = self.daemon.admin("GET", target, None);
        assert_eq!(resp.status, 200, "GET {target}: {}", resp.text());
        resp.json()["deliveries"].as_array().unwrap().clone()
    }

    fn delivery(&self, id: &str) -> Value {
        let resp = self
            .daemon
            .admin("GET", &format!("/v1/deliveries/{id}"), None);
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.json()
    }

    /// A CLI command on this state root with the fast retry policy.
    fn cmd(&self) -> Kheishctl {
        let mut k = self.sandbox.cmd();
        for (name, value) in FAST_RETRIES {
            k.env(name, value);
        }
        k
    }

    /// `drain-deliveries --json ARGS`.
    fn drain(&self, args: &[&str]) -> Run {
        self.cmd()
            .args(["--json", "drain-deliveries"])
            .args(args)
            .run()
    }
}

fn start_daemon(
    sandbox: &Sandbox,
    targets: &[String],
    args: &[&str],
    env: &[(&str, &str)],
) -> Daemon {
    let mut builder = Daemon::builder(sandbox)
        .config(&config(targets))
        .args(&["--handler", "echo"])
        .args(args);
    if !args.contains(&"--delivery-workers") {
        builder = builder.args(&["--delivery-workers", "0"]);
    }
    for (name, value) in FAST_RETRIES.iter().chain(env) {
        builder = builder.env(name, value);
    }
    builder.start()
}

fn id_of(delivery: &Value) -> String {
    delivery["delivery_id"].as_str().unwrap().to_string()
}

fn key_of(request: &Recorded) -> String {
    request
        .header("idempotency-key")
        .unwrap_or_else(|| panic!("request without Idempotency-Key: {request:?}"))
        .to_string()
}

/// The drain summary (`--json`).
fn summary(run: &Run) -> Value {
    run.json()
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) for Unix seconds.
fn http_date(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn http_dates_are_formatted_like_imf_fixdate() {
    assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(http_date(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
}

// ---------------------------------------------------------------------------------------------
// Attempts and their outcomes

#[test]
fn a_failed_attempt_is_retried_with_the_same_idempotency_key() {
    let receiver = Receiver::start();
    receiver.script([Answer::Status(500), Answer::Status(503)]);
    let gw = Gateway::start(&[receiver.address("/sink")]);
    let delivery = gw.ingest_and_wait("hello", "k1");
    let id = id_of(&delivery);
    assert_eq!(delivery["status"], "pending");
    assert_eq!(delivery["attempts"], 0);

    let run = gw.drain(&["--ignore-backoff"]);
    run.success();
    assert_eq!(summary(&run)["delivered"], 1, "{}", run.stdout());
    assert_eq!(summary(&run)["dead_lettered"], 0);

    let requests = receiver.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    for (idx, r) in requests.iter().enumerate() {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path(), "/sink");
        assert_eq!(key_of(r), format!("kheish:{id}"), "attempt {}", idx + 1);
        let body = r.json();
        assert_eq!(body["delivery_id"], id.as_str());
        assert_eq!(body["attempt"], idx + 1);
        assert_eq!(body["connector"], "http/orders");
        assert_eq!(body["content"], "hello");
        assert_eq!(
            r.header("x-kheish-delivery-attempt"),
            Some((idx + 1).to_string().as_str())
        );
    }
    let d = gw.delivery(&id);
    assert_eq!(d["status"], "delivered", "{d}");
    assert_eq!(d["attempts"], 3);
    assert_eq!(d["last_http_status"], 200);
    assert!(d["delivered_at_ms"].is_i64(), "{d}");
}

#[test]
fn retry_after_in_seconds_and_as_an_http_date_delays_the_retry() {
    let receiver = Receiver::start();
    let gw = Gateway::start(&[receiver.address("/sink")]);

    // Seconds: the retry is due no earlier than 1 s after the refusal, although the policy's
    // own backoff here is 10 ms.
    receiver.script([Answer::retry_after(429, "1")]);
    let first = gw.ingest_delivery_id("one", "k1");
    let run = gw.drain(&[]);
    run.success();
    assert_eq!(summary(&run)["retried"], 1, "{}", run.stdout());
    let refused = receiver.requests()[0].clone();
    let d = gw.delivery(&first);
    assert_eq!(d["status"], "retrying", "{d}");
    assert_eq!(d["last_http_status"], 429);
    let next = d["next_attempt_at_ms"].as_i64().unwrap();
    assert!(
        next >= refused.at_ms + 1000,
        "retry at {next} is earlier than 1 s after the 429 at {}",
        refused.at_ms
    );
    assert!(
        next <= refused.at_ms + 30_000,
        "retry at {next} is far too late"
    );

    // Deliver it, so the next delivery to this target is the FIFO head.
    receiver.script([Answer::Status(200)]);
    gw.drain(&["--ignore-backoff"]).success();
    assert_eq!(gw.delivery(&first)["status"], "delivered");

    // An HTTP-date a few seconds ahead (whole seconds, as the format has).
    let date_secs = kheishctl::model::now_ms() / 1000 + 4;
    receiver.script([Answer::retry_after(503, &http_date(date_secs))]);
    let second = gw.ingest_delivery_id("two", "k2");
    let run = gw.drain(&[]);
    run.success();
    assert_eq!(summary(&run)["retried"], 1, "{}", run.stdout());
    let d2 = gw.delivery(&second);
    assert_eq!(d2["status"], "retrying", "{d2}");
    assert_eq!(d2["last_http_status"], 503);
    let next = d2["next_attempt_at_ms"].as_i64().unwrap();
    // Integer-millisecond arithmetic may land one ms before the whole second.
    assert!(
        next >= date_secs * 1000 - 1,
        "retry at {next} is earlier than the HTTP-date {}",
        date_secs * 1000
    );
    assert!(
        next <= date_secs * 1000 + 30_000,
        "retry at {next} is far too late"
    );
}

#[test]
fn a_400_dead_letters_at_once() {
    let receiver = Receiver::start();
    receiver.set_default(Answer::Status(400));
    let gw = Gateway::start(&[receiver.address("/sink")]);
    let id = gw.ingest_delivery_id("bad", "k1");
    let run = gw.drain(&["--ignore-backoff"]);
    run.status(1);
    assert_eq!(summary(&run)["dead_lettered"], 1, "{}", run.stdout());
    assert_eq!(receiver.count(), 1);
    let d = gw.delivery(&id);
    assert_eq!(d["status"], "dead_lettered", "{d}");
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["last_http_status"], 400);
    assert_eq!(d["last_error_code"], "http_status_400");
    assert!(d["dead_lettered_at_ms"].is_i64());
    let dead = gw.list("/v1/deliveries/dead-letter");
    assert_eq!(dead.len(), 1);
    assert_eq!(id_of(&dead[0]), id);
}

#[test]
fn a_hanging_target_times_out_and_is_retried() {
    let receiver = Receiver::start();
    receiver.script([Answer::Hang]);
    let gw = Gateway::start(&[receiver.address("/sink")]);
    let id = gw.ingest_delivery_id("slow", "k1");
    // The http transport's total budget is 15 s: the first attempt ends there.
    let run = gw.drain(&["--ignore-backoff"]);
    run.success();
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests.iter().all(|r| key_of(r) == format!("kheish:{id}")));
    let d = gw.delivery(&id);
    assert_eq!(d["status"], "delivered", "{d}");
    assert_eq!(d["attempts"], 2);
}

#[test]
fn a_closed_connection_is_retried() {
    let receiver = Receiver::start();
    receiver.script([Answer::Close, Answer::Close]);
    let gw = Gateway::start(&[receiver.address("/sink")]);
    let id = gw.ingest_delivery_id("flaky", "k1");
    gw.drain(&["--ignore-backoff"]).success();
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(requests.iter().all(|r| key_of(r) == format!("kheish:{id}")));
    assert_eq!(gw.delivery(&id)["status"], "delivered");
}

#[test]
fn redirects_are_not_followed() {
    let receiver = Receiver::start();
    let elsewhere = Receiver::start();
    receiver.set_default(Answer::redirect(&elsewhere.url("/moved")));
    let gw = Gateway::start(&[receiver.address("/sink")]);
    let id = gw.ingest_delivery_id("moved", "k1");
    gw.drain(&["--ignore-backoff"]).status(1);
    assert_eq!(receiver.count(), 1);
    assert_eq!(elsewhere.count(), 0, "the redirect was followed");
    let d = gw.delivery(&id);
    assert_eq!(d["status"], "dead_lettered", "{d}");
    assert_eq!(d["last_http_status"], 301);
    assert_eq!(d["last_error_code"], "redirect_not_followed");
}

#[test]
fn an_oversize_response_is_capped_and_still_delivered() {
    let receiver = Receiver::start();
    receiver.script([Answer::Huge {
        status: 200,
        len: 64 * 1024 * 1024,
    }]);
    let gw = Gateway::start(&[receiver.address("/sink")]);
    let id = gw.ingest_delivery_id("big answer", "k1");
    gw.drain(&["--ignore-backoff"]).success();
    assert_eq!(receiver.count(), 1);
    let d = gw.delivery(&id);
    assert_eq!(d["status"], "delivered", "{d}");
    assert_eq!(d["attempts"], 1);
}

#[test]
fn a_loopback_target_without_allow_private_network_is_blocked() {
    let receiver = Receiver::start();
    let gw = Gateway::start(&[receiver.url("/sink")]);
    let id = gw.ingest_delivery_id("private", "k1");
    let run = gw.drain(&["--ignore-backoff"]);
    run.status(1);
    assert_eq!(receiver.count(), 0, "the guard let a request through");
    let d = gw.delivery(&id);
    assert_eq!(d["status"], "dead_lettered", "{d}");
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["last_error_code"], "blocked_private_address");
    // The error names the redacted target only.
    let error = d["last_error"].as_str().unwrap();
    assert!(!error.contains("/sink"), "{error}");
}

#[test]
fn a_reply_target_with_a_forbidden_header_is_refused_when_stored() {
    let receiver = Receiver::start();
    let gw = Gateway::start(&[receiver.address("/sink")]);
    let created = gw
        .daemon
        .admin("PUT", "/v1/sessions/manual-1", Some(&json!({})));
    assert_eq!(created.status, 201, "{}", created.text());
    for header in [
        "Authorization",
        "x-forwarded-host",
        "Idempotency-Key",
        "Cookie",
    ] {
        let body = json!({"reply_targets": [{
            "plugin": "http",
            "address": {
                "url": receiver.url("/sink"),
                "headers": {header: "Bearer planted-value-123"},
                "allow_private_network": true
            }
        }]});
        let resp = gw
            .daemon
            .admin("PUT", "/v1/sessions/manual-1/reply-targets", Some(&body));
        let problem = assert_problem(&resp, 400, "invalid_reply_target");
        assert!(!resp.text().contains("planted-value-123"), "{problem}");
    }
    let session = gw.daemon.admin("GET", "/v1/sessions/manual-1", None).json();
    assert_eq!(session["reply_targets"], json!([]), "{session}");
}

// ---------------------------------------------------------------------------------------------
// Dead letters: replay and resolve

/// A gateway whose receiver refuses with 400, and `n` dead letters (oldest first).
pub(crate) fn dead_letters(n: usize) -> (Receiver, Gateway, Vec<String>) {
    let receiver = Receiver::start();
    receiver.set_default(Answer::Status(400));
    let gw = Gateway::start(&[receiver.address("/sink")]);
    let ids: Vec<String> = (0..n)
        .map(|i| gw.ingest_delivery_id(&format!("event {i}"), &format!("k{i}")))
        .collect();
    gw.drain(&["--ignore-backoff"]).status(1);
    for id in &ids {
        assert_eq!(gw.delivery(id)["status"], "dead_lettered");
    }
    (receiver, gw, ids)
}

#[test]
fn replay_through_the_cli() {
    let (receiver, gw, ids) = dead_letters(2);
    let (dead, other) = (&ids[0], &ids[1]);
    let shown_target = gw.delivery(dead)["target"]["address"]
        .as_str()
        .unwrap()
        .to_string();
    receiver.set_default(Answer::Status(200));

    // Unknown ids fail (exit 1) and are named.
    let run = gw.cmd().args(["replay", "dlv_nope"]).run();
    run.status(1)
        .stdout_contains("not_found")
        .stderr_contains("`dlv_nope` does not exist");

    // A dry run lists and changes nothing.
    let before = gw.list("/v1/deliveries").len();
    let run = gw
        .cmd()
        .args(["--json", "replay", "--all", "--dry-run"])
        .run();
    run.success();
    let items = run.json()["items"].as_array().unwrap().clone();
    let results: Vec<(&str, &str)> = items
        .iter()
        .map(|i| {
            (
                i["result"].as_str().unwrap(),
                i["delivery_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        results,
        [
            ("would_replay", dead.as_str()),
            ("would_replay", other.as_str())
        ],
        "oldest first"
    );
    assert_eq!(gw.list("/v1/deliveries").len(), before);

    // Replay: a NEW pending delivery pointing back at the dead letter.
    let run = gw.cmd().args(["--json", "replay", dead]).run();
    run.success();
    let item = run.json()["items"][0].clone();
    assert_eq!(item["result"], "replayed", "{item}");
    assert_eq!(item["delivery_id"], dead.as_str());
    let new_id = item["new_delivery_id"].as_str().unwrap().to_string();
    assert_ne!(&new_id, dead);
    assert_eq!(item["delivery"]["delivery_id"], new_id.as_str());
    assert_eq!(item["delivery"]["status"], "pending");
    assert_eq!(item["delivery"]["replayed_from_delivery_id"], dead.as_str());
    assert_eq!(item["source"]["status"], "dead_lettered");
    let replayed = gw.delivery(&new_id);
    assert_eq!(replayed["replayed_from_delivery_id"], dead.as_str());
    assert_eq!(
        gw.delivery(dead)["status"],
        "dead_lettered",
        "audit history"
    );

    // Again without --force: the existing replay (human row).
    let run = gw.cmd().args(["replay", dead]).run();
    run.success().stdout_is(&format!(
        "existing_replay  {dead}  → {new_id}  http {shown_target}\n"
    ));

    // Delivered with a NEW Idempotency-Key.
    gw.drain(&["--ignore-backoff"]).success();
    let last = receiver.requests().last().unwrap().clone();
    assert_eq!(key_of(&last), format!("kheish:{new_id}"));
    assert_eq!(last.json()["delivery_id"], new_id.as_str());
    assert_eq!(gw.delivery(&new_id)["status"], "delivered");

    // --force makes another replay.
    let run = gw.cmd().args(["--json", "replay", "--force", dead]).run();
    run.success();
    let forced = run.json()["items"][0]["new_delivery_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(forced, new_id);
    gw.drain(&["--ignore-backoff"]).success();

    // Only dead letters can be replayed.
    gw.cmd()
        .args(["replay", &new_id])
        .run()
        .status(1)
        .stdout_contains("not_dead_lettered")
        .stderr_contains("is delivered, not dead-lettered");

    // The dead letter with a delivered replay is no longer unresolved; resolve the other one.
    let run = gw
        .cmd()
        .args([
            "--json",
            "replay",
            "--all",
            "--resolve",
            "--reason",
            "refunded by phone",
        ])
        .run();
    run.success();
    let items = run.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["result"], "resolved");
    assert_eq!(items[0]["delivery_id"], other.as_str());
    assert_eq!(items[0]["delivery"]["resolution"], "refunded by phone");
    let resolved = gw.delivery(other);
    assert_eq!(resolved["resolution"], "refunded by phone");
    assert!(resolved["resolved_at_ms"].is_i64());

    let run = gw.cmd().args(["--json", "replay", "--all"]).run();
    run.success();
    assert_eq!(run.json()["items"], json!([]));
    let run = gw
        .cmd()
        .args([
            "--json",
            "replay",
            "--all",
            "--dry-run",
            "--include-resolved",
        ])
        .run();
    run.success();
    assert_eq!(run.json()["items"].as_array().unwrap().len(), 2);

    // Filters narrow the selection.
    let run = gw
        .cmd()
        .args([
            "--json",
            "replay",
            "--all",
            "--dry-run",
            "--include-resolved",
            "--plugin",
            "slack",
        ])
        .run();
    run.success();
    assert_eq!(run.json()["items"], json!([]));
    gw.cmd()
        .args(["replay", "--all", "--since", "soon"])
        .run()
        .status(2)
        .stderr_contains("`--since`");
}

#[test]
fn replay_without_a_state_root_fails() {
    let sandbox = Sandbox::new();
    sandbox
        .cmd()
        .args(["replay", "dlv_1"])
        .run()
        .status(1)
        .stderr_contains("no state root");
    assert!(
        !sandbox.state_root().exists(),
        "replay created a state root"
    );
}

#[test]
fn replay_and_resolve_through_the_api() {
    let (receiver, gw, ids) = dead_letters(2);
    let (a, b) = (&ids[0], &ids[1]);
    receiver.set_default(Answer::Status(200));
    let admin = |method: &str, target: &str, body: Option<Value>| {
        gw.daemon.admin(method, target, body.as_ref())
    };

    let dead = gw.list("/v1/deliveries/dead-letter");
    assert_eq!(dead.len(), 2);

    let resp = admin("POST", &format!("/v1/deliveries/{a}/replay"), None);
    assert_eq!(resp.status, 201, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["result"], "replayed");
    assert_eq!(v["source"]["delivery_id"], a.as_str());
    assert_eq!(v["delivery"]["status"], "pending");
    assert_eq!(v["delivery"]["replayed_from_delivery_id"], a.as_str());
    let first = v["new_delivery_id"].as_str().unwrap().to_string();

    let resp = admin("POST", &format!("/v1/deliveries/{a}/replay"), None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["result"], "existing_replay");
    assert_eq!(resp.json()["new_delivery_id"], first.as_str());

    let resp = admin(
        "POST",
        &format!("/v1/deliveries/{a}/replay?force=true"),
        None,
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let forced = resp.json()["new_delivery_id"].as_str().unwrap().to_string();
    assert_ne!(forced, first);

    let problem = assert_problem(
        &admin("POST", &format!("/v1/deliveries/{first}/replay"), None),
        409,
        "not_dead_lettered",
    );
    assert_eq!(problem["delivery_status"], "pending");
    assert_problem(
        &admin("POST", "/v1/deliveries/dlv_nope/replay", None),
        404,
        "delivery_not_found",
    );
    assert_problem(
        &admin("GET", "/v1/deliveries/dlv_nope", None),
        404,
        "delivery_not_found",
    );
    assert_problem(
        &admin(
            "POST",
            &format!("/v1/deliveries/{a}/replay?force=maybe"),
            None,
        ),
        400,
        "invalid_query",
    );
    assert_problem(
        &admin(
            "POST",
            &format!("/v1/deliveries/{a}/replay"),
            Some(json!({"x": 1})),
        ),
        400,
        "invalid_request",
    );

    // Resolve B.
    let resp = admin(
        "POST",
        &format!("/v1/deliveries/{b}/resolve"),
        Some(json!({"reason": "customer called"})),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["result"], "resolved");
    assert_eq!(resp.json()["delivery"]["resolution"], "customer called");
    assert_problem(
        &admin(
            "POST",
            &format!("/v1/deliveries/{first}/resolve"),
            Some(json!({})),
        ),
        409,
        "not_dead_lettered",
    );
    assert_problem(
        &admin("POST", "/v1/deliveries/dlv_nope/resolve", None),
        404,
        "delivery_not_found",
    );
    let unresolved: Vec<String> = gw
        .list("/v1/deliveries/dead-letter")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(
        unresolved,
        std::slice::from_ref(a),
        "A's replays are not delivered yet"
    );
    assert_eq!(
        gw.list("/v1/deliveries/dead-letter?include_resolved=true")
            .len(),
        2
    );

    // Bulk dry run: nothing changes.
    let count = gw.list("/v1/deliveries?limit=500").len();
    let resp = admin(
        "POST",
        "/v1/deliveries/replay-bulk",
        Some(json!({"filter": {}, "dry_run": true})),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let items = resp.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["result"], "existing_replay", "without force");
    assert_eq!(items[0]["delivery_id"], a.as_str());
    assert_eq!(
        items[0]["new_delivery_id"],
        forced.as_str(),
        "the newest replay"
    );
    let resp = admin(
        "POST",
        "/v1/deliveries/replay-bulk",
        Some(json!({"filter": {}, "dry_run": true, "force": true})),
    );
    assert_eq!(resp.json()["items"][0]["result"], "would_replay");
    assert_eq!(gw.list("/v1/deliveries?limit=500").len(), count);

    // The replays go out, each under its own key.
    gw.drain(&["--ignore-backoff"]).success();
    let keys: Vec<String> = receiver.requests().iter().map(key_of).collect();
    for (id, sends) in [(a, 1), (b, 1), (&first, 1), (&forced, 1)] {
        let key = format!("kheish:{id}");
        assert_eq!(
            keys.iter().filter(|k| **k == key).count(),
            sends,
            "{id}: {keys:?}"
        );
    }
    assert!(gw.list("/v1/deliveries/dead-letter").is_empty());

    // Bulk by ids: resolve, with one unknown id; and a status filter on the listing.
    let resp = admin(
        "POST",
        "/v1/deliveries/replay-bulk",
        Some(json!({"delivery_ids": [a, "dlv_nope"], "resolve": true, "reason": "done"})),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let results: Vec<Value> = resp.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["result"].clone())
        .collect();
    assert_eq!(results, [json!("resolved"), json!("not_found")]);
    let delivered = gw.list("/v1/deliveries?status=delivered");
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    assert!(delivered
        .iter()
        .all(|d| d["replayed_from_delivery_id"] == a.as_str()));
    let of_run = gw.list(&format!(
        "/v1/deliveries?run={}&plugin=http&connector=http/orders&since=1h&limit=10",
        gw.delivery(a)["run_id"].as_str().unwrap()
    ));
    assert_eq!(of_run.len(), 3, "A and its two replays");

    // Bad input.
    for (target, parameter) in [
        ("/v1/deliveries?bogus=1", "bogus"),
        ("/v1/deliveries?status=lost", "status"),
        ("/v1/deliveries?limit=501", "limit"),
        ("/v1/deliveries?connector=orders", "connector"),
        (
            "/v1/deliveries/dead-letter?include_resolved=perhaps",
            "include_resolved",
        ),
    ] {
        let problem = assert_problem(&admin("GET", target, None), 400, "invalid_query");
        assert_eq!(problem["parameter"], parameter, "{target}");
    }
    for body in [
        json!({}),
        json!({"delivery_ids": [a], "filter": {}}),
        json!({"filter": {}, "limit": 0}),
        json!({"filter": {}, "resolve": true, "force": true}),
        json!({"filter": {"plugin": "smtp"}}),
    ] {
        assert_problem(
            &admin("POST", "/v1/deliveries/replay-bulk", Some(body)),
            400,
            "invalid_request",
        );
    }
    let anonymous = gw.daemon.request("GET", "/v1/deliveries", &[], b"");
    assert_problem(&anonymous, 401, "unauthorized");
}

// ---------------------------------------------------------------------------------------------
// Crash, secrets, metrics

#[test]
fn kill_9_during_delivery_loses_nothing_and_resends_with_the_same_key() {
    const TARGETS: usize = 4;
    const EVENTS: usize = 3;
    let receiver = Receiver::start();
    receiver.set_default(Answer::held());
    let targets: Vec<String> = (0..TARGETS)
        .map(|t| receiver.address(&format!("/t{t}")))
        .collect();
    let sandbox = Sandbox::new();
    // A short lease so the restarted daemon takes over the killed one's deliveries quickly.
    let env = [("KHEISH_DELIVERY_LEASE_MS", "3000")];
    let workers = ["--delivery-workers", "4"];
    let daemon = start_daemon(&sandbox, &targets, &workers, &env);
    for i in 0..EVENTS {
        ingest(&daemon, &format!("event {i}"), &format!("k{i}"));
    }
    // One delivery per target is in flight (per-target FIFO), each held by the receiver.
    receiver.wait_waiting(TARGETS, DEADLINE);
    let in_flight: BTreeSet<String> = receiver
        .requests()
        .iter()
        .map(|r| r.json()["delivery_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(in_flight.len(), TARGETS, "{in_flight:?}");
    daemon.kill();
    receiver.set_default(Answer::Status(200));
    receiver.release();

    let daemon = start_daemon(&sandbox, &targets, &workers, &env);
    let all = wait_until(
        "every delivery to be delivered after the restart",
        Duration::from_secs(150),
        || {
            let resp = daemon.admin("GET", "/v1/deliveries?limit=500", None);
            let list = resp.json()["deliveries"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let done = list.iter().filter(|d| d["status"] == "delivered").count();
            if list.len() == TARGETS * EVENTS && done == list.len() {
                Ok(list)
            } else {
                Err(format!("{done} of {} delivered", list.len()))
            }
        },
    );
    let requests = receiver.requests();
    let mut by_id: BTreeMap<String, Vec<&Recorded>> = BTreeMap::new();
    for r in &requests {
        let id = r.json()["delivery_id"].as_str().unwrap().to_string();
        assert_eq!(key_of(r), format!("kheish:{id}"), "{r:?}");
        by_id.entry(id).or_default().push(r);
    }
    let ids: BTreeSet<String> = all.iter().map(id_of).collect();
    assert_eq!(
        by_id.keys().cloned().collect::<BTreeSet<_>>(),
        ids,
        "every delivery reached the receiver, and nothing else did"
    );
    for id in &in_flight {
        assert!(
            by_id[id].len() >= 2,
            "{id} was in flight at the kill and must have been sent again"
        );
    }
    // Per-target order: first arrivals follow creation order (the listing is newest first).
    let mut created: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in all.iter().rev() {
        created
            .entry(d["target"]["address"].as_str().unwrap().to_string())
            .or_default()
            .push(id_of(d));
    }
    let path_of: BTreeMap<String, String> = requests
        .iter()
        .map(|r| {
            (
                r.json()["delivery_id"].as_str().unwrap().to_string(),
                r.path().to_string(),
            )
        })
        .collect();
    let mut arrived: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &requests {
        let id = r.json()["delivery_id"].as_str().unwrap().to_string();
        let seen = arrived.entry(r.path().to_string()).or_default();
        if !seen.contains(&id) {
            seen.push(id);
        }
    }
    for order in created.values() {
        let path = &path_of[&order[0]];
        assert_eq!(&arrived[path], order, "target {path}");
    }
}

#[test]
fn planted_secrets_never_appear_in_delivery_views_logs_or_metrics() {
    const HEADER_SECRET: &str = "hdr-5ecret-a1b2c3d4e5f6";
    const QUERY_SECRET: &str = "qry-5ecret-0f1e2d3c4b5a";
    const PATH_SECRET: &str = "pth-5ecret-9a8b7c6d5e4f";
    const SECRETS: [&str; 3] = [HEADER_SECRET, QUERY_SECRET, PATH_SECRET];
    let receiver = Receiver::start();
    receiver.set_default(Answer::Status(500));
    let address = json!({
        "url": receiver.url(&format!("/hooks/{PATH_SECRET}/in?token={QUERY_SECRET}")),
        "headers": {"X-Webhook-Secret": HEADER_SECRET},
        "allow_private_network": true
    })
    .to_string();
    let gw = Gateway::start_with(
        &[address],
        &[],
        &[
            ("KHEISH_DELIVERY_MAX_ATTEMPTS", "2"),
            ("KHEISH_LOG", "debug"),
        ],
    );
    let check = |what: &str, text: &str| {
        for secret in SECRETS {
            assert!(
                !text.contains(secret),
                "{what} contains {secret:?}:\n{text}"
            );
        }
    };
    let id = gw.ingest_delivery_id("secret", "k1");

    let run = gw.drain(&["--ignore-backoff"]);
    run.status(1);
    for secret in SECRETS {
        run.never_shows(secret);
    }
    let run = gw
        .cmd()
        .args(["-v", "drain-deliveries", "--ignore-backoff"])
        .run();
    for secret in SECRETS {
        run.never_shows(secret);
    }
    // The secrets were really used.
    let first = receiver.requests()[0].clone();
    assert_eq!(first.header("x-webhook-secret"), Some(HEADER_SECRET));
    assert!(first.target.contains(QUERY_SECRET) && first.target.contains(PATH_SECRET));
    assert_eq!(gw.delivery(&id)["status"], "dead_lettered");

    for args in [
        vec!["--json", "replay", "--all", "--dry-run"],
        vec!["replay", "--all", "--dry-run"],
        vec!["--json", "replay", &id],
        vec!["replay", &id],
    ] {
        let run = gw.cmd().args(&args).run();
        run.success();
        for secret in SECRETS {
            run.never_shows(secret);
        }
    }
    let run = gw.drain(&["--ignore-backoff"]);
    for secret in SECRETS {
        run.never_shows(secret);
    }

    let run_id = gw.delivery(&id)["run_id"].as_str().unwrap().to_string();
    for target in [
        "/v1/deliveries".to_string(),
        "/v1/deliveries/dead-letter?include_resolved=true".to_string(),
        format!("/v1/deliveries/{id}"),
        format!("/v1/deliveries?run={run_id}"),
        "/metrics".to_string(),
    ] {
        let resp = gw.daemon.admin("GET", &target, None);
        assert_eq!(resp.status, 200, "{target}: {}", resp.text());
        check(&target, &resp.text());
    }
    for (target, body) in [
        (format!("/v1/deliveries/{id}/replay?force=true"), None),
        (
            "/v1/deliveries/replay-bulk".to_string(),
            Some(json!({"filter": {}, "dry_run": true})),
        ),
        (format!("/v1/deliveries/{id}/resolve"), Some(json!({}))),
    ] {
        let resp = gw.daemon.admin("POST", &target, body.as_ref());
        assert!(resp.status < 300, "{target}: {}", resp.text());
        check(&target, &resp.text());
    }
    check("the daemon's stderr", &gw.daemon.stderr());
}

#[test]
fn metrics_report_the_queue_and_the_daemons_attempts() {
    let ok = Receiver::start();
    let refusing = Receiver::start();
    refusing.set_default(Answer::Status(410));
    let sandbox = Sandbox::new();
    let daemon = start_daemon(
        &sandbox,
        &[ok.address("/ok"), refusing.address("/gone")],
        &["--delivery-workers", "2"],
        &[],
    );
    ingest(&daemon, "hi", "k1");
    let text = wait_until("both deliveries settled in /metrics", DEADLINE, || {
        let text = daemon.admin("GET", "/metrics", None).text();
        let delivered = metric_sample(&text, r#"kheish_deliveries{state="delivered"}"#);
        let dead = metric_sample(&text, r#"kheish_deliveries{state="dead_lettered"}"#);
        if delivered == Some(1.0) && dead == Some(1.0) {
            Ok(text)
        } else {
            Err(text)
        }
    });
    for (series, value) in [
        (r#"kheish_deliveries{state="pending"}"#, 0.0),
        (r#"kheish_deliveries{state="retrying"}"#, 0.0),
        ("kheish_dead_letters_unresolved", 1.0),
        ("kheish_delivery_circuits_open", 0.0),
        ("kheish_delivery_queue_lag_seconds", 0.0),
        (
            r#"kheish_delivery_attempts_total{plugin="http",outcome="delivered"}"#,
            1.0,
        ),
        (
            r#"kheish_delivery_attempts_total{plugin="http",outcome="terminal"}"#,
            1.0,
        ),
    ] {
        assert_eq!(
            metric_sample(&text, series),
            Some(value),
            "{series} in\n{text}"
        );
    }
    for family in [
        "# TYPE kheish_deliveries gauge",
        "# TYPE kheish_dead_letters_unresolved gauge",
        "# TYPE kheish_delivery_attempts_total counter",
        "# TYPE kheish_delivery_circuits_open gauge",
        "# TYPE kheish_delivery_queue_lag_seconds gauge",
    ] {
        assert!(text.lines().any(|l| l == family), "{family} in\n{text}");
    }
    assert_eq!(ok.count(), 1);
    assert_eq!(refusing.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Pacing knobs and the backpressure reset (SPEC §11.3)

#[test]
fn a_paused_target_shows_in_views_and_the_reset_route_clears_it() {
    let receiver = Receiver::start();
    receiver.set_default(Answer::Status(503));
    let gw = Gateway::start_with(
        &[receiver.address("/sink")],
        &["--delivery-workers", "2"],
        &[
            ("KHEISH_DELIVERY_CIRCUIT_FAILURE_THRESHOLD", "2"),
            ("KHEISH_DELIVERY_CIRCUIT_COOLDOWN_MS", "600000"),
        ],
    );
    let id = gw.ingest_delivery_id("hello", "k1");
    // Two failures in a row pause the target for ten minutes.
    let paused = wait_until("the target to be paused", DEADLINE, || {
        let d = gw.delivery(&id);
        if d["paused_until_ms"].is_i64() {
            Ok(d)
        } else {
            Err(d.to_string())
        }
    });
    assert!(paused["paused_until"].is_string(), "{paused}");
    assert_eq!(paused["attempts"], 2, "{paused}");
    let metrics = gw.daemon.admin("GET", "/metrics", None).text();
    assert_eq!(
        metric_sample(&metrics, "kheish_delivery_circuits_open"),
        Some(1.0)
    );

    let reset = |body: Value| {
        gw.daemon
            .admin("POST", "/v1/deliveries/backpressure/reset", Some(&body))
    };
    assert_problem(
        &reset(json!({})),
        400,
        "delivery_backpressure_selector_required",
    );
    assert_problem(&reset(json!({"plugin": "smtp"})), 400, "invalid_request");
    let dry = reset(json!({"plugin": "http", "dry_run": true}));
    assert_eq!(dry.status, 200, "{}", dry.text());
    let dry = dry.json();
    assert_eq!(
        (dry["matched"].as_u64(), dry["removed"].as_u64()),
        (Some(1), Some(0)),
        "{dry}"
    );
    assert_eq!(dry["targets"][0]["target"]["plugin"], "http", "{dry}");
    assert!(
        gw.delivery(&id)["paused_until_ms"].is_i64(),
        "dry run changes nothing"
    );
    // Another target's selector matches nothing.
    let other = reset(json!({"target": {"plugin": "http", "address": "https://example.com/x"}}));
    assert_eq!(other.json()["matched"], 0, "{}", other.text());

    // The target selector names it however it is spelled: other member order and spacing
    // than the stored address, or the JSON object itself.
    let respelled = format!(
        r#"{{ "url": "{}",  "allow_private_network": true }}"#,
        receiver.url("/sink")
    );
    for address in [
        json!(respelled),
        json!({"url": receiver.url("/sink"), "allow_private_network": true}),
    ] {
        let dry = reset(json!({"target": {"plugin": "http", "address": address}, "dry_run": true}));
        assert_eq!(dry.json()["matched"], 1, "{address}: {}", dry.text());
    }
    // A plugin selector that contradicts the target's matches nothing.
    let both = reset(json!({"plugin": "slack", "dry_run": true,
        "target": {"plugin": "http", "address": receiver.address("/sink")}}));
    assert_eq!(both.json()["matched"], 0, "{}", both.text());

    // The target selector names it as written; the reset unpauses it and sending resumes.
    receiver.set_default(Answer::Status(200));
    let done = reset(json!({"target": {"plugin": "http", "address": receiver.address("/sink")}}));
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(
        (
            done.json()["matched"].as_u64(),
            done.json()["removed"].as_u64()
        ),
        (Some(1), Some(1))
    );
    wait_until("the delivery after the reset", DEADLINE, || {
        let d = gw.delivery(&id);
        if d["status"] == "delivered" {
            Ok(())
        } else {
            Err(d.to_string())
        }
    });
    assert!(gw.delivery(&id)["paused_until_ms"].is_null());
}

#[test]
fn invalid_pacing_knobs_stop_the_start() {
    for (var, value) in [
        ("KHEISH_DELIVERY_CIRCUIT_FAILURE_THRESHOLD", "many"),
        ("KHEISH_DELIVERY_CIRCUIT_COOLDOWN_MS", "0"),
        ("KHEISH_DELIVERY_TARGET_MIN_INTERVAL_MS", "-5"),
    ] {
        let sandbox = Sandbox::new();
        let res = Daemon::builder(&sandbox)
            .config(&config(&[]))
            .env(var, value)
            .try_start();
        let Err((code, stderr)) = res else {
            panic!("{var}={value} started the daemon");
        };
        assert_eq!(code, Some(4), "{var}={value}: {stderr}");
        assert!(stderr.contains(var), "{stderr}");
    }
}
