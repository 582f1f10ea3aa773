//! `serve` external sidecar ingress (SPEC §10.2, §6): `/events` and `/events/batch` with
//! events in the exact shape the Kheish sidecar SDK sends — answers, receipts, fingerprints,
//! sessions and binding keys, run metadata, self reply targets, the rate limit, metrics, and
//! every ingress-side bad input of issue 11, each refused without writing anything.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use kheishctl::ingress::sha256_hex;

use crate::support::daemon::Daemon;
use crate::support::external::*;
use crate::support::ingress::written;
use crate::support::problem::{assert_problem, assert_problem_detail};
use crate::support::wait::wait_until;
use crate::support::{metric_sample, Sandbox};

fn start() -> (Sandbox, Daemon) {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox)
        .config(GATEWAY)
        .env("SIDE_TOKEN", TOKEN)
        .start();
    (sandbox, daemon)
}

fn metrics(daemon: &Daemon) -> String {
    let resp = daemon.admin("GET", "/metrics", None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.text()
}

fn sample(text: &str, series: &str) -> f64 {
    metric_sample(text, series).unwrap_or(0.0)
}

#[test]
fn an_event_is_accepted_replayed_as_duplicate_and_a_changed_payload_names_the_original() {
    let (_sandbox, daemon) = start();
    let event = with(
        with(
            with(
                sdk_event("evt-1", "hello", &["guild-1", "chan-2"]),
                "intent",
                json!("message"),
            ),
            "relation",
            json!({"kind": "reply_to", "target_event_id": "evt-0"}),
        ),
        "reply_route",
        json!("{}"),
    );
    let event = with(
        with(event, "routing_key", json!(" room-7 ")),
        "metadata",
        json!({"message_id": "123"}),
    );
    let first = answer(&post_event(&daemon, "side", &event));
    let original = assert_accepted(&first, "evt-1");
    assert_eq!(
        original.1,
        natural_for_path("side", "discord", &["guild-1", "chan-2"])
    );
    let members: BTreeSet<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        members,
        BTreeSet::from(["event_id", "status", "session_id", "run_id"])
    );

    // A restarted sidecar resends with another instance_id: same fingerprint, a duplicate.
    let resent = with(event.clone(), "instance_id", json!("inst-after-restart"));
    let dup = answer(&post_event(&daemon, "side", &resent));
    assert_eq!(dup["status"], "duplicate", "{dup}");
    assert_eq!(dup["run_id"], original.0.as_str());
    assert_eq!(dup["session_id"], original.1.as_str());
    // The same over protocol version 1 is the same event too.
    let v1 = post_raw(
        &daemon,
        &events_path("side"),
        Some(TOKEN),
        single(&event, 1).to_string().as_bytes(),
    );
    assert_eq!(answer(&v1)["status"], "duplicate");

    // The id reused with another payload: rejected, naming the ORIGINAL run and session.
    let changed = with(event.clone(), "content", json!("hello again"));
    let conflict = answer(&post_event(&daemon, "side", &changed));
    assert_eq!(conflict["status"], "rejected", "{conflict}");
    assert_eq!(conflict["event_id"], "evt-1");
    assert_eq!(conflict["run_id"], original.0.as_str());
    assert_eq!(conflict["session_id"], original.1.as_str());
    let reason = conflict["reason"].as_str().unwrap();
    assert!(
        reason.contains(&original.0) && reason.contains(&original.1),
        "{reason}"
    );

    // One receipt under the hashed key; the raw id is stored nowhere.
    let digest = sha256_hex(b"evt-1");
    let receipts = daemon.admin("GET", "/v1/receipts?connector=external/side", None);
    let receipts = receipts.json()["receipts"].as_array().unwrap().clone();
    assert_eq!(receipts.len(), 1, "{receipts:?}");
    assert_eq!(
        receipts[0]["receipt_key"],
        format!("external:side:{}", &digest[..32])
    );

    // The run: metadata of §10.2, the actor, the self target with the opaque route, then the
    // connector's additional target.
    let run = run(&daemon, &original.0);
    let m = &run["metadata"];
    assert_eq!(m["external_protocol_version"], 2, "{m}");
    assert_eq!(m["external_event_key_sha256"], digest.as_str());
    assert_eq!(
        m["connector_ingress_key"],
        format!("external:side:{}", &digest[..32])
    );
    let fingerprint = m["external_event_fingerprint"].as_str().unwrap();
    assert_eq!(fingerprint.len(), 64);
    assert_eq!(receipts[0]["fingerprint"], fingerprint);
    assert_eq!(m["external_intent"], "message");
    assert_eq!(
        m["external_relation"],
        json!({"kind": "reply_to", "target_event_id": "evt-0"})
    );
    assert_eq!(m["external_routing_key"], "room-7");
    assert_eq!(m["external_instance_id"], "inst-1");
    assert_eq!(m["message_id"], "123");
    assert_eq!(run["actor_id"], "user-42");
    assert_eq!(run["input"]["content"], "hello");
    assert_eq!(run["connector"], "external/side");
    let targets = run["reply_targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2, "{run}");
    assert_eq!(targets[0]["plugin"], "external");
    let address: Value = serde_json::from_str(targets[0]["address"].as_str().unwrap()).unwrap();
    assert_eq!(address, json!({"connector": "side", "route": "{}"}));
    assert_eq!(targets[1]["plugin"], "http");
    assert!(
        !run.to_string().contains("evt-1\""),
        "raw event id stored: {run}"
    );
}

#[test]
fn protocol_versions_one_and_two_are_accepted_and_three_is_rejected_with_the_exact_reason() {
    let (_sandbox, daemon) = start();
    for (id, version) in [("v1", 1), ("v2", 2)] {
        let body = single(&sdk_event(id, "x", &["t", id]), version);
        let resp = post_raw(
            &daemon,
            &events_path("side"),
            Some(TOKEN),
            body.to_string().as_bytes(),
        );
        let (run_id, _) = assert_accepted(&answer(&resp), id);
        assert_eq!(
            run(&daemon, &run_id)["metadata"]["external_protocol_version"],
            version
        );
    }
    // Without a version: the newest.
    let bare = sdk_event("v-none", "x", &["t"]);
    let resp = post_raw(
        &daemon,
        &events_path("side"),
        Some(TOKEN),
        bare.to_string().as_bytes(),
    );
    let (run_id, _) = assert_accepted(&answer(&resp), "v-none");
    assert_eq!(
        run(&daemon, &run_id)["metadata"]["external_protocol_version"],
        2
    );

    let before = written(&daemon);
    let body = single(&sdk_event("v3", "x", &["t"]), 3);
    let resp = post_raw(
        &daemon,
        &events_path("side"),
        Some(TOKEN),
        body.to_string().as_bytes(),
    );
    let v = answer(&resp);
    assert_eq!(
        v,
        json!({"event_id": "v3", "status": "rejected",
               "reason": "unsupported protocol_version 3; supported range is 1..=2"})
    );
    // A v3 batch: every item rejected with that reason, which is what makes the SDK fall back.
    let batch = json!({"protocol_version": 3, "events": [sdk_event("b1", "x", &["t"]), sdk_event("b2", "x", &["t"])]});
    let resp = post_raw(
        &daemon,
        &batch_path("side"),
        Some(TOKEN),
        batch.to_string().as_bytes(),
    );
    let results = answer(&resp)["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 2);
    for (item, id) in results.iter().zip(["b1", "b2"]) {
        assert_eq!(item["event_id"], id);
        assert_eq!(item["status"], "rejected");
        assert_eq!(
            item["reason"],
            "unsupported protocol_version 3; supported range is 1..=2"
        );
    }
    assert_eq!(written(&daemon), before, "rejected events wrote something");
}

#[test]
fn a_batch_is_ordered_non_atomic_and_commits_its_new_events_together() {
    // No delivery workers: their rounds are writer jobs too, and would make the commit count
    // below depend on timing.
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox)
        .config(GATEWAY)
        .env("SIDE_TOKEN", TOKEN)
        .args(&["--delivery-workers", "0"])
        .start();
    let mixed = with(
        sdk_event("b-mixed", "text", &["t"]),
        "input_items",
        json!([{"type": "text", "text": "t"}]),
    );
    let items_only = with(
        with(
            sdk_event("b-items", "", &["t"]),
            "input_items",
            json!([{"type": "text", "text": "hi"}]),
        ),
        "content",
        json!(""),
    );
    let mut events = vec![
        sdk_event("b-1", "one", &["room"]),
        with(
            sdk_event("ignored", "x", &["room"]),
            "event_id",
            json!("  "),
        ),
        items_only,
        mixed,
        json!(5),
        sdk_event("b-1", "one", &["room"]),
    ];
    for i in 0..10 {
        events.push(sdk_event(
            &format!("b-n{i}"),
            "n",
            &["room", &i.to_string()],
        ));
    }
    let before = metrics(&daemon);
    let resp = post_batch(&daemon, "side", &events);
    let results = answer(&resp)["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), events.len());
    let first = assert_accepted(&results[0], "b-1");
    assert_rejected(&results[1], "$.event_id");
    assert!(results[1].get("event_id").is_none(), "{}", results[1]);
    assert_accepted(&results[2], "b-items");
    assert_rejected(&results[3], "not both");
    assert_eq!(results[3]["event_id"], "b-mixed");
    assert_rejected(&results[4], "$.events[4]");
    // The same event twice in one batch: the second waits for the first (in flight) and is
    // answered from it.
    assert_eq!(results[5]["status"], "duplicate", "{}", results[5]);
    assert_eq!(results[5]["run_id"], first.0.as_str());
    for (i, item) in results[6..].iter().enumerate() {
        let (_, session) = assert_accepted(item, &format!("b-n{i}"));
        // [room] is a prefix of [room, i]: every one lands in b-1's session.
        assert_eq!(session, first.1);
    }

    // The batch's 12 writer jobs (its 12 new events; the repeated b-1 never reaches the
    // writer) went through ONE group commit. The repeated b-1's duplicate hit is written with
    // the next batch, or alone 2 s later: on a slow machine that commit may be counted too,
    // with no job in it.
    let after = metrics(&daemon);
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    let commits = delta("kheish_store_commits_total");
    assert!(commits == 1.0 || commits == 2.0, "{after}");
    assert_eq!(
        delta("kheish_store_committed_events_total"),
        12.0,
        "{after}"
    );
    let status = |s: &str| {
        format!(r#"kheish_external_ingress_events_total{{connector="external/side",status="{s}"}}"#)
    };
    assert_eq!(sample(&after, &status("accepted")), 12.0, "{after}");
    assert_eq!(sample(&after, &status("duplicate")), 1.0, "{after}");
    assert_eq!(sample(&after, &status("rejected")), 3.0, "{after}");
    assert_eq!(
        sample(
            &after,
            r#"kheish_ingress_requests_total{connector="external/side",outcome="accepted"}"#
        ),
        12.0
    );

    // An empty batch is an empty answer.
    let empty = answer(&post_batch(&daemon, "side", &[]));
    assert_eq!(empty, json!({"results": []}));
}

#[test]
fn authentication_refusals_are_401_and_write_nothing() {
    let (_sandbox, daemon) = start();
    let body = single(&sdk_event("a-1", "x", &["t"]), 2).to_string();
    let before = written(&daemon);
    let target = events_path("side");
    for (what, resp) in [
        (
            "no token",
            post_raw(&daemon, &target, None, body.as_bytes()),
        ),
        (
            "wrong token",
            post_raw(&daemon, &target, Some("nope"), body.as_bytes()),
        ),
        (
            "duplicate Authorization",
            daemon.request(
                "POST",
                &target,
                &[
                    ("Authorization", &format!("Bearer {TOKEN}")),
                    ("Authorization", &format!("Bearer {TOKEN}")),
                ],
                body.as_bytes(),
            ),
        ),
        (
            "basic scheme",
            daemon.request(
                "POST",
                &target,
                &[("Authorization", &format!("Basic {TOKEN}"))],
                body.as_bytes(),
            ),
        ),
        (
            "batch without token",
            post_raw(
                &daemon,
                &batch_path("side"),
                None,
                json!({"events": [sdk_event("a-2", "x", &["t"])]})
                    .to_string()
                    .as_bytes(),
            ),
        ),
    ] {
        let v = assert_problem(&resp, 401, "unauthorized");
        assert!(!v.to_string().contains(TOKEN), "{what}: {v}");
    }
    assert_eq!(
        written(&daemon),
        before,
        "a refused request wrote something"
    );
    assert!(!daemon.stderr().contains(TOKEN));
    // An unauthenticated connector takes events without a token.
    let resp = post_raw(&daemon, &events_path("open"), None, body.as_bytes());
    assert_accepted(&answer(&resp), "a-1");
}

#[test]
fn a_rotated_shared_token_keeps_verifying_during_its_grace_window() {
    let sandbox = Sandbox::new();
    let secret_ref = "connectors.external.side.shared_token";
    sandbox.store_secret(secret_ref, "first-shared-token\n");
    let config = "[[external_connectors]]\nname = \"side\"\nplatform = \"discord\"\n\
                  base_url = \"http://127.0.0.1:9\"\nallow_private_network = true\n\
                  shared_token_secret_ref = \"connectors.external.side.shared_token\"\n\
                  [external_connectors.session_policy]\ncreate_if_missing = true\n";
    let daemon = Daemon::builder(&sandbox).config(config).start();
    let post = |id: &str, token: &str| {
        let body = single(&sdk_event(id, "x", &["t"]), 2).to_string();
        post_raw(&daemon, &events_path("side"), Some(token), body.as_bytes())
    };
    assert_accepted(&answer(&post("g-1", "first-shared-token")), "g-1");
    sandbox
        .cmd()
        .args(["rotate-secret", secret_ref, "--stdin", "--grace", "10m"])
        .stdin("second-shared-token\n")
        .run()
        .success();
    let mut n = 0;
    wait_until(
        "the rotated token to verify",
        std::time::Duration::from_secs(10),
        || {
            n += 1;
            let resp = post(&format!("g-new-{n}"), "second-shared-token");
            if resp.status == 200 {
                Ok(())
            } else {
                Err(resp.text())
            }
        },
    );
    // The previous value still verifies inbound within its grace window.
    assert_accepted(&answer(&post("g-old", "first-shared-token")), "g-old");
    assert_problem(&post("g-bad", "third-shared-token"), 401, "unauthorized");
}

#[test]
fn envelope_refusals_are_400_after_auth_and_a_batch_over_64_is_refused_before_it() {
    let (_sandbox, daemon) = start();
    let before = written(&daemon);
    let events: Vec<Value> = (0..65)
        .map(|i| sdk_event(&format!("o-{i}"), "x", &["t"]))
        .collect();
    let body = json!({"protocol_version": 2, "events": events}).to_string();
    for token in [None, Some("wrong"), Some(TOKEN)] {
        let resp = post_raw(&daemon, &batch_path("side"), token, body.as_bytes());
        let v = assert_problem_detail(&resp, 400, "invalid_payload", "at most 64");
        assert_eq!(v["path"], "$.events");
    }
    // 64 is fine (and then authentication applies).
    let events: Vec<Value> = (0..64)
        .map(|i| sdk_event(&format!("o-{i}"), "x", &["t"]))
        .collect();
    let body = json!({"protocol_version": 2, "events": events}).to_string();
    assert_problem(
        &post_raw(&daemon, &batch_path("side"), None, body.as_bytes()),
        401,
        "unauthorized",
    );

    for (target, body, code) in [
        (batch_path("side"), "{not json".to_string(), "invalid_json"),
        (batch_path("side"), "[1,2]".to_string(), "invalid_payload"),
        (
            batch_path("side"),
            json!({"protocol_version": 2}).to_string(),
            "invalid_payload",
        ),
        (
            batch_path("side"),
            json!({"events": {"a": 1}}).to_string(),
            "invalid_payload",
        ),
        (
            events_path("side"),
            "\"just a string\"".to_string(),
            "invalid_payload",
        ),
        (
            events_path("side"),
            "{\"event_id\":".to_string(),
            "invalid_json",
        ),
    ] {
        let resp = post_raw(&daemon, &target, Some(TOKEN), body.as_bytes());
        assert_problem(&resp, 400, code);
        // Only the batch size comes before authentication: any other malformed body from a
        // caller without the token is 401 (SPEC §6.1).
        for token in [None, Some("wrong")] {
            let resp = post_raw(&daemon, &target, token, body.as_bytes());
            assert_problem(&resp, 401, "unauthorized");
        }
    }
    // Over the 2 MiB body cap: 413 before reading.
    let huge = vec![b'x'; 2 * 1024 * 1024 + 1];
    assert_problem(
        &post_raw(&daemon, &events_path("side"), Some(TOKEN), &huge),
        413,
        "payload_too_large",
    );
    // The plain connector path is not a route, and other methods are 405.
    assert_problem(
        &post_raw(&daemon, "/v1/connectors/external/side", Some(TOKEN), b"{}"),
        404,
        "not_found",
    );
    let get = daemon.request("GET", &events_path("side"), &[], b"");
    assert_problem(&get, 405, "method_not_allowed");
    assert_problem(
        &post_raw(&daemon, &events_path("nope"), Some(TOKEN), b"{}"),
        404,
        "connector_not_found",
    );
    assert_eq!(written(&daemon), before);
}

#[test]
fn every_bad_event_is_rejected_with_a_reason_naming_what_is_wrong_and_writes_nothing() {
    use base64::Engine as _;
    let (_sandbox, daemon) = start();
    let base = || sdk_event("bad-1", "x", &["t"]);
    let big_asset = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 1024 * 1024 + 1]);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "blank event_id",
            with(base(), "event_id", json!("   ")),
            "`$.event_id`",
        ),
        (
            "missing event_id",
            with(base(), "event_id", Value::Null),
            "`$.event_id`",
        ),
        (
            "blank instance_id",
            with(base(), "instance_id", json!("")),
            "`$.instance_id`",
        ),
        (
            "blank intent",
            with(base(), "intent", json!(" ")),
            "`$.intent`",
        ),
        (
            "blank routing_key",
            with(base(), "routing_key", json!("")),
            "`$.routing_key`",
        ),
        (
            "blank relation kind",
            with(
                base(),
                "relation",
                json!({"kind": "", "target_event_id": "e0"}),
            ),
            "`$.relation.kind`",
        ),
        (
            "blank relation target",
            with(
                base(),
                "relation",
                json!({"kind": "reply_to", "target_event_id": " "}),
            ),
            "`$.relation.target_event_id`",
        ),
        (
            "blank thread segment",
            with(base(), "thread", json!({"path": ["g", ""]})),
            "`$.thread.path[1]`",
        ),
        (
            "mixed content shapes",
            with(
                base(),
                "input_items",
                json!([{"type": "text", "text": "t"}]),
            ),
            "not both",
        ),
        (
            "no content",
            with(base(), "content", json!("")),
            "no content",
        ),
        (
            "oversize content",
            with(base(), "content", json!("x".repeat(1024 * 1024 + 1))),
            "`$.content`",
        ),
        (
            "too many items",
            with(
                with(base(), "content", json!("")),
                "input_items",
                json!(vec![json!({"type": "text", "text": "t"}); 65]),
            ),
            "`$.input_items`",
        ),
        (
            "too many attachments",
            with(
                base(),
                "attachments",
                json!(vec![
                    json!({"type": "asset_reference", "asset_id": "a"});
                    11
                ]),
            ),
            "`$.attachments`",
        ),
        (
            "oversize inline asset",
            with(
                base(),
                "attachments",
                json!([{"type": "inline_asset", "media_type": "image/png", "content_base64": big_asset}]),
            ),
            "`$.attachments[0].content_base64`: decoded asset exceeds 1 MiB",
        ),
        (
            "unknown asset",
            with(
                base(),
                "attachments",
                json!([{"type": "asset_reference", "asset_id": "asset_missing"}]),
            ),
            "asset_missing",
        ),
        (
            "reserved metadata",
            with(base(), "metadata", json!({"connector_ingress_key": "x"})),
            "connector_ingress_key",
        ),
        (
            "no session input",
            with(base(), "thread", json!({"path": []})),
            "no session could be resolved: send a non-empty `thread.path` or a `routing_key`",
        ),
    ];
    let before = written(&daemon);
    for (what, event, needle) in &cases {
        let v = answer(&post_event(&daemon, "side", event));
        assert_eq!(v["status"], "rejected", "{what}: {v}");
        let reason = v["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(needle),
            "{what}: the reason should contain {needle:?}: {v}"
        );
    }
    // The same through a batch, item by item, in order (without the two oversize events,
    // which together pass the 2 MiB body cap).
    let small: Vec<&(&str, Value, &str)> = cases
        .iter()
        .filter(|(what, _, _)| !what.starts_with("oversize"))
        .collect();
    let events: Vec<Value> = small.iter().map(|(_, e, _)| e.clone()).collect();
    let results = answer(&post_batch(&daemon, "side", &events))["results"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(results.len(), small.len());
    for ((what, _, needle), item) in small.into_iter().zip(&results) {
        assert_eq!(item["status"], "rejected", "{what}: {item}");
        assert!(
            item["reason"].as_str().unwrap().contains(needle),
            "{what}: {item}"
        );
    }
    assert_eq!(written(&daemon), before, "a rejected event wrote something");
    // Explicit nulls everywhere optional are simply absent.
    let mut nulls = base();
    for member in [
        "actor_id",
        "thread",
        "content",
        "input_items",
        "attachments",
        "metadata",
    ] {
        nulls[member] = Value::Null;
    }
    let nulls = with(
        with(nulls, "routing_key", json!("room")),
        "content",
        json!("hi"),
    );
    let (run_id, session) = assert_accepted(&answer(&post_event(&daemon, "side", &nulls)), "bad-1");
    assert_eq!(session, natural_for_routing_key("side", "discord", "room"));
    assert_eq!(run(&daemon, &run_id)["actor_id"], "external-user");
}

#[test]
fn sessions_come_from_the_fixed_id_bound_prefixes_or_the_natural_id() {
    let (sandbox, daemon) = start();
    let post =
        |id: &str, event: Value| assert_accepted(&answer(&post_event(&daemon, "side", &event)), id);
    let (_, s_a) = post("s-a", sdk_event("s-a", "x", &["a"]));
    assert_eq!(s_a, natural_for_path("side", "discord", &["a"]));
    // [a, b] has the prefix [a], bound to the first session: it joins it.
    let (_, s_ab) = post("s-ab", sdk_event("s-ab", "x", &["a", "b"]));
    assert_eq!(s_ab, s_a);
    // [x, b] shares no prefix: its own natural session.
    let (_, s_xb) = post("s-xb", sdk_event("s-xb", "x", &["x", "b"]));
    assert_eq!(s_xb, natural_for_path("side", "discord", &["x", "b"]));
    // A path wins over a routing key; without a path the routing key names the session.
    let (_, s_q) = post(
        "s-q",
        with(sdk_event("s-q", "x", &["q"]), "routing_key", json!("r-1")),
    );
    assert_eq!(s_q, natural_for_path("side", "discord", &["q"]));
    let (_, s_r) = post(
        "s-r",
        with(sdk_event("s-r", "x", &[]), "routing_key", json!("r-1")),
    );
    assert_eq!(s_r, natural_for_routing_key("side", "discord", "r-1"));
    // Segments with separators are encoded, never confused with two segments.
    let (_, s_sep) = post("s-sep", sdk_event("s-sep", "x", &["a:b"]));
    assert_ne!(s_sep, s_a);

    let expected: Vec<(String, String)> = {
        let mut rows = vec![
            (prefix_key("side", "discord", &["a"]), s_a.clone()),
            (prefix_key("side", "discord", &["a", "b"]), s_a.clone()),
            (prefix_key("side", "discord", &["x"]), s_xb.clone()),
            (prefix_key("side", "discord", &["x", "b"]), s_xb.clone()),
            (prefix_key("side", "discord", &["q"]), s_q.clone()),
            (
                format!("external:side:{}:route:{}", b64("discord"), b64("r-1")),
                s_r.clone(),
            ),
            (prefix_key("side", "discord", &["a:b"]), s_sep.clone()),
        ];
        rows.sort();
        rows
    };
    assert_eq!(bindings(&sandbox.state_root()), expected);

    // A fixed session id takes everything, whatever the thread.
    for (id, path) in [("f-1", ["a"]), ("f-2", ["zz"])] {
        let resp = post_event(&daemon, "quiet", &sdk_event(id, "x", &path));
        assert_eq!(assert_accepted(&answer(&resp), id).1, "ops-room");
    }
}

#[test]
fn reply_routes_are_opaque_and_self_targets_follow_include_self_output() {
    let (_sandbox, daemon) = start();
    let targets = |name: &str, id: &str, route: Value| -> Vec<(String, Value)> {
        let event = with(sdk_event(id, "x", &["r", id]), "reply_route", route);
        let (run_id, _) = assert_accepted(&answer(&post_event(&daemon, name, &event)), id);
        run(&daemon, &run_id)["reply_targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let address = t["address"].as_str().unwrap();
                let parsed = serde_json::from_str(address).unwrap_or(json!(address));
                (t["plugin"].as_str().unwrap().to_string(), parsed)
            })
            .collect()
    };
    let copy = ("http".to_string(), json!("https://hooks.example.com/copy"));
    assert_eq!(
        targets("side", "rr-1", json!("{\"channel_id\":\"2\"}")),
        [
            (
                "external".to_string(),
                json!({"connector": "side", "route": "{\"channel_id\":\"2\"}"})
            ),
            copy.clone()
        ]
    );
    assert_eq!(
        targets("side", "rr-2", json!({"channel_id": 2})),
        [
            (
                "external".to_string(),
                json!({"connector": "side", "route": {"channel_id": 2}})
            ),
            copy.clone()
        ]
    );
    // Null and blank routes carry no self target.
    assert_eq!(
        targets("side", "rr-3", Value::Null),
        std::slice::from_ref(&copy)
    );
    assert_eq!(targets("side", "rr-4", json!("  ")), [copy]);
    // include_self_output = false: no self target even with a route.
    assert!(targets("quiet", "rr-5", json!("{}")).is_empty());
}

#[test]
fn inline_assets_are_stored_and_referenced() {
    let (_sandbox, daemon) = start();
    let event = with(
        sdk_event("as-1", "see attached", &["t"]),
        "attachments",
        json!([{"type": "inline_asset", "file_name": "a.txt", "media_type": "text/plain", "content_base64": "aGVsbG8="}]),
    );
    let (run_id, _) = assert_accepted(&answer(&post_event(&daemon, "side", &event)), "as-1");
    let input = &run(&daemon, &run_id)["input"];
    let attachment = &input["attachments"][0];
    assert_eq!(attachment["type"], "asset_reference", "{input}");
    assert_eq!(attachment["size"], 5);
    assert!(!input.to_string().contains("aGVsbG8="), "{input}");
    let items = with(
        with(sdk_event("as-2", "", &["t"]), "content", json!("")),
        "input_items",
        json!([{"type": "text", "text": "look"}, {"type": "inline_asset", "media_type": "text/plain", "data_base64": "aGk="}]),
    );
    let (run_id, _) = assert_accepted(&answer(&post_event(&daemon, "side", &items)), "as-2");
    let input = &run(&daemon, &run_id)["input"];
    assert_eq!(
        input["input_items"][1]["type"], "asset_reference",
        "{input}"
    );
    assert!(input.get("content").is_none(), "{input}");

    // Items in the shape a sidecar writes them: one asset struct with every member, the
    // unused ones explicit nulls (SPEC §10.2). The nulls are absent, the unused members
    // ignored; the first item's asset is then referenced by id from an attachment.
    let asset_id = input["input_items"][1]["asset_id"]
        .as_str()
        .unwrap()
        .to_string();
    let sdk_items = with(
        with(sdk_event("as-3", "", &["t"]), "content", json!("")),
        "input_items",
        json!([
            {"type": "text", "text": "look", "asset_id": null, "media_type": null,
             "file_name": null, "content_base64": null},
            {"type": "inline_asset", "text": null, "asset_id": null, "media_type": "text/plain",
             "file_name": null, "content_base64": "aGk=", "data_base64": null},
            {"type": "asset_reference", "text": null, "asset_id": asset_id, "media_type": null,
             "file_name": null, "content_base64": null},
        ]),
    );
    let (run_id, _) = assert_accepted(&answer(&post_event(&daemon, "side", &sdk_items)), "as-3");
    let input = &run(&daemon, &run_id)["input"];
    assert_eq!(
        input["input_items"][0],
        json!({"type": "text", "text": "look"})
    );
    assert_eq!(input["input_items"][1]["size"], 2, "{input}");
    assert_eq!(input["input_items"][2]["asset_id"], asset_id.as_str());
    let attached = with(
        sdk_event("as-4", "again", &["t"]),
        "attachments",
        json!([{"type": "asset_reference", "asset_id": asset_id, "media_type": "text/plain",
                "file_name": null, "content_base64": null}]),
    );
    assert_accepted(&answer(&post_event(&daemon, "side", &attached)), "as-4");
}

#[test]
fn rate_limited_events_are_429_alone_and_rate_limited_items_in_a_batch() {
    let (_sandbox, daemon) = start();
    let first = answer(&post_event(
        &daemon,
        "slow",
        &sdk_event("rl-0", "x", &["t"]),
    ));
    assert_accepted(&first, "rl-0");
    // One event per second: within a few quick tries the bucket is empty.
    let mut limited = None;
    for i in 1..=5 {
        let resp = post_event(&daemon, "slow", &sdk_event(&format!("rl-{i}"), "x", &["t"]));
        if resp.status == 429 {
            limited = Some(resp);
            break;
        }
        assert_accepted(&answer(&resp), &format!("rl-{i}"));
    }
    let resp = limited.expect("no 429 within 5 events on a 1/s connector");
    let v = assert_problem(&resp, 429, "external_ingress_rate_limited");
    let retry_ms = v["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((1..=1000).contains(&retry_ms), "{v}");
    let secs: u64 = resp
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(secs >= 1);
    // A duplicate costs no token: answered even while the bucket is empty.
    let dup = answer(&post_event(
        &daemon,
        "slow",
        &sdk_event("rl-0", "x", &["t"]),
    ));
    assert_eq!(dup["status"], "duplicate", "{dup}");

    let events: Vec<Value> = (0..5)
        .map(|i| sdk_event(&format!("rb-{i}"), "x", &["t"]))
        .collect();
    let results = answer(&post_batch(&daemon, "slow", &events))["results"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(results.len(), 5);
    let mut n_limited = 0;
    for (i, item) in results.iter().enumerate() {
        assert_eq!(item["event_id"], format!("rb-{i}"), "{item}");
        match item["status"].as_str() {
            Some("accepted") => {}
            Some("rate_limited") => {
                n_limited += 1;
                assert!(
                    item["retry_after_ms"].as_u64().is_some_and(|ms| ms >= 1),
                    "{item}"
                );
                assert!(item.get("run_id").is_none(), "{item}");
            }
            other => panic!("unexpected status {other:?}: {item}"),
        }
    }
    assert!(n_limited >= 3, "{results:?}");
    let text = metrics(&daemon);
    let limited_events = sample(
        &text,
        r#"kheish_external_ingress_events_total{connector="external/slow",status="rate_limited"}"#,
    );
    assert_eq!(limited_events, f64::from(n_limited + 1), "{text}");
}

#[test]
fn a_child_process_connector_refuses_events_until_its_sidecar_is_ready() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox)
        .config(CHILD)
        .env("SIDE_TOKEN", TOKEN)
        .start();
    let before = written(&daemon);
    let v = answer(&post_event(
        &daemon,
        "child",
        &sdk_event("c-1", "x", &["t"]),
    ));
    assert_eq!(v["status"], "rejected", "{v}");
    assert_eq!(v["event_id"], "c-1");
    assert!(
        v["reason"].as_str().unwrap().contains("is not ready"),
        "{v}"
    );
    assert_eq!(written(&daemon), before);
}
