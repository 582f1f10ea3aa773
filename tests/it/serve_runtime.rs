//! The runtime connector store through the admin API (SPEC §12, issue 12): daemon-managed
//! connectors created, changed and deleted while `serve` runs, applied within 2 s; field-aware
//! upserts; secret members; the bad inputs of the issue; secrets never shown.

use std::time::Duration;

use serde_json::{json, Value};

use crate::serve_external_sidecars::{free_sidecar_addr, gone, python, SIDECAR};
use crate::support::daemon::Daemon;
use crate::support::problem::assert_problem;
use crate::support::wait::wait_until;
use crate::support::Sandbox;

/// The watcher applies changes within 2 s; the deadline leaves room for a loaded machine.
const APPLY: Duration = Duration::from_secs(20);

const FILE: &str = r#"
[[http_connectors]]
name = "filed"
allow_unauthenticated_ingress = true
default_binding_keys = ["filed"]
[http_connectors.session_policy]
create_if_missing = true
"#;

fn ingest(daemon: &Daemon, name: &str, headers: &[(&str, &str)]) -> u16 {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let body = format!(r#"{{"content":"hello","idempotency_key":"k{n}"}}"#);
    daemon
        .request(
            "POST",
            &format!("/v1/connectors/http/{name}"),
            &h,
            body.as_bytes(),
        )
        .status
}

fn wait_ingress(daemon: &Daemon, name: &str, headers: &[(&str, &str)], want: u16) {
    wait_until(
        &format!("ingress on {name} to answer {want}"),
        APPLY,
        || match ingest(daemon, name, headers) {
            s if s == want => Ok(()),
            s => Err(format!("status {s}")),
        },
    );
}

#[test]
fn an_http_connector_created_changed_and_deleted_through_the_api_takes_effect_live() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox).config(FILE).start();
    assert_eq!(ingest(&daemon, "live", &[]), 404);

    let created = daemon.admin(
        "PUT",
        "/v1/runtime/connectors/http/live",
        Some(&json!({
            "bearer_token": {"value": "planted-runtime-bearer"},
            "default_binding_keys": ["live"],
            "session_policy": {"create_if_missing": true},
            "ingress_events_per_second": 50
        })),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let body = created.json();
    assert_eq!(body["view"]["source"], "daemon");
    assert_eq!(
        body["view"]["connector"]["bearer_token"],
        json!({"configured": true, "source": "secret_ref", "secret_ref": "connectors.http.live.bearer_token"})
    );
    assert_eq!(
        body["secrets_written"],
        json!(["connectors.http.live.bearer_token"])
    );

    let auth = [("Authorization", "Bearer planted-runtime-bearer")];
    wait_ingress(&daemon, "live", &auth, 202);
    assert_eq!(ingest(&daemon, "live", &[]), 401);

    // Both sources are listed, secrets as views only.
    let list = daemon.admin("GET", "/v1/runtime/connectors", None);
    assert_eq!(list.status, 200);
    let connectors = list.json()["connectors"].as_array().unwrap().clone();
    let sources: Vec<(String, String)> = connectors
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["source"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        sources.contains(&("filed".into(), "file".into())),
        "{sources:?}"
    );
    assert!(
        sources.contains(&("live".into(), "daemon".into())),
        "{sources:?}"
    );

    // Field-aware: only the rate changes; the bearer and the binding keys stay.
    let changed = daemon.admin(
        "PUT",
        "/v1/runtime/connectors/http/live",
        Some(&json!({"ingress_events_per_second": 1})),
    );
    assert_eq!(changed.status, 200, "{}", changed.text());
    let changes = changed.json()["changes"].clone();
    assert_eq!(
        changes,
        json!([{"field": "ingress_events_per_second", "before": 50, "after": 1}])
    );
    let got = daemon
        .admin("GET", "/v1/runtime/connectors/http/live", None)
        .json();
    assert_eq!(got["connector"]["default_binding_keys"], json!(["live"]));
    assert_eq!(got["connector"]["bearer_token"]["source"], "secret_ref");
    // The new rate limit applies: a burst is refused soon.
    wait_until("the rate limit of 1/s to apply", APPLY, || {
        let statuses: Vec<u16> = (0..3).map(|_| ingest(&daemon, "live", &auth)).collect();
        if statuses.contains(&429) {
            Ok(())
        } else {
            Err(format!("{statuses:?}"))
        }
    });

    // The bearer is a slot the connector references: deleting it is refused.
    assert_problem(
        &daemon.admin(
            "DELETE",
            "/v1/runtime/secrets/connectors.http.live.bearer_token",
            None,
        ),
        409,
        "still_referenced",
    );
    let secrets = daemon.admin("GET", "/v1/runtime/secrets", None);
    assert_eq!(secrets.status, 200);
    assert_eq!(
        secrets.json()["secrets"][0]["used_by"],
        json!(["http/live"]),
        "{}",
        secrets.text()
    );

    // Delete: gone from ingress within the watcher's period; then the slot may go too.
    assert_eq!(
        daemon
            .admin("DELETE", "/v1/runtime/connectors/http/live", None)
            .status,
        204
    );
    wait_ingress(&daemon, "live", &auth, 404);
    assert_eq!(
        daemon
            .admin(
                "DELETE",
                "/v1/runtime/secrets/connectors.http.live.bearer_token",
                None
            )
            .status,
        204
    );

    // The planted bearer never shows in any answer or log.
    for target in ["/v1/runtime/connectors", "/v1/runtime/secrets", "/metrics"] {
        let text = daemon.admin("GET", target, None).text();
        assert!(!text.contains("planted-runtime-bearer"), "{target}: {text}");
    }
    let (_, stderr) = daemon.stop();
    assert!(!stderr.contains("planted-runtime-bearer"), "{stderr}");
}

#[test]
fn bad_runtime_writes_are_refused_and_write_nothing() {
    let sandbox = Sandbox::new();
    let file = format!(
        "{FILE}\n[[external_connectors]]\nname = \"filed-ext\"\nplatform = \"discord\"\nbase_url = \"https://sidecar.example.com\"\nallow_unauthenticated_ingress = true\n"
    );
    let daemon = Daemon::builder(&sandbox).config(&file).start();
    let put = |path: &str, body: &str| {
        daemon.request(
            "PUT",
            path,
            &[
                (
                    "Authorization",
                    &format!("Bearer {}", crate::support::daemon::ADMIN_TOKEN),
                ),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
    };
    // Not an object; unknown member; wrong type; invalid field value.
    assert_problem(
        &put("/v1/runtime/connectors/http/x", "[1]"),
        400,
        "invalid_connector",
    );
    let resp = put(
        "/v1/runtime/connectors/http/x",
        r#"{"allow_unauthenticated_ingress": true, "bogus": 1}"#,
    );
    let problem = assert_problem(&resp, 400, "invalid_connector");
    assert!(
        problem["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["pointer"] == "/bogus" && d["file"] == "daemon:http/x"),
        "{problem}"
    );
    let resp = put(
        "/v1/runtime/connectors/http/x",
        r#"{"allow_unauthenticated_ingress": "yes"}"#,
    );
    assert_problem(&resp, 400, "invalid_connector");
    let resp = put(
        "/v1/runtime/connectors/http/x",
        r#"{"allow_unauthenticated_ingress": true, "ingress_events_per_second": 0}"#,
    );
    let problem = assert_problem(&resp, 400, "invalid_connector");
    assert!(
        problem["diagnostics"][0]["pointer"] == "/ingress_events_per_second",
        "{problem}"
    );
    // A file-backed name of that kind.
    assert_problem(
        &put(
            "/v1/runtime/connectors/http/filed",
            r#"{"allow_unauthenticated_ingress": true}"#,
        ),
        409,
        "connector_file_backed",
    );
    assert_problem(
        &daemon.admin("DELETE", "/v1/runtime/connectors/http/filed", None),
        404,
        "connector_not_found",
    );
    assert_problem(
        &daemon.admin("DELETE", "/v1/runtime/connectors/http/nope", None),
        404,
        "connector_not_found",
    );
    // `env` with a value.
    let resp = put(
        "/v1/runtime/connectors/http/x",
        r#"{"bearer_token": {"env": "X", "value": "planted-mixed"}}"#,
    );
    let problem = assert_problem(&resp, 400, "invalid_connector");
    assert_eq!(problem["pointer"], "/bearer_token/env");
    // A credential slot that does not exist: nothing written, the shared token's slot neither.
    let resp = put(
        "/v1/runtime/connectors/external/ext",
        &json!({
            "platform": "discord",
            "mode": "child_process",
            "base_url": "http://127.0.0.1:9",
            "shared_token": {"value": "planted-ext-token"},
            "child_process": {"command": "true", "credential_slots": {"BOT": "missing.slot"}}
        })
        .to_string(),
    );
    let problem = assert_problem(&resp, 400, "invalid_connector");
    assert!(problem.to_string().contains("missing.slot"), "{problem}");
    let secrets = daemon.admin("GET", "/v1/runtime/secrets", None).json();
    assert_eq!(
        secrets["secrets"],
        json!([]),
        "a secret was written: {secrets}"
    );
    assert_problem(
        &daemon.admin("GET", "/v1/runtime/connectors/external/ext", None),
        404,
        "connector_not_found",
    );
    // Platform cannot change.
    let resp = put(
        "/v1/runtime/connectors/external/ext2",
        r#"{"platform": "discord", "base_url": "https://s.example.com", "allow_unauthenticated_ingress": true}"#,
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    assert_problem(
        &put(
            "/v1/runtime/connectors/external/ext2",
            r#"{"platform": "slack"}"#,
        ),
        409,
        "platform_immutable",
    );
    // A connector whose reply targets name another cannot let that one be deleted.
    let resp = put(
        "/v1/runtime/connectors/http/router",
        r#"{"allow_unauthenticated_ingress": true, "default_reply_targets": [{"plugin": "external", "address": "{\"connector\":\"ext2\",\"route\":\"r\"}"}]}"#,
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let problem = assert_problem(
        &daemon.admin("DELETE", "/v1/runtime/connectors/external/ext2", None),
        409,
        "still_referenced",
    );
    assert_eq!(problem["referenced_by"], json!(["http/router"]));
    // A dry run writes nothing.
    let resp = put(
        "/v1/runtime/connectors/http/dry?dry_run=true",
        r#"{"allow_unauthenticated_ingress": true}"#,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["dry_run"], true);
    assert_problem(
        &daemon.admin("GET", "/v1/runtime/connectors/http/dry", None),
        404,
        "connector_not_found",
    );
    let (_, stderr) = daemon.stop();
    for planted in ["planted-mixed", "planted-ext-token"] {
        assert!(!stderr.contains(planted), "{stderr}");
    }
}

#[test]
fn a_daemon_managed_sidecar_starts_restarts_on_a_spec_change_and_stops_on_delete() {
    let sandbox = Sandbox::new();
    let script = sandbox.write("child_sidecar.py", SIDECAR);
    let dump = sandbox.path().join("dump.json");
    let daemon = Daemon::builder(&sandbox)
        .config(FILE)
        .env("KHEISH_SIDECAR_INITIAL_RESTART_MS", "50")
        .start();
    let addr = free_sidecar_addr();
    let spec = |tag: &str| {
        json!({
            "platform": "fake",
            "mode": "child_process",
            "base_url": format!("http://{addr}"),
            "allow_unauthenticated_ingress": true,
            "child_process": {
                "command": python(),
                "args": [script.display().to_string()],
                "env": {"FAKE_DUMP": dump.display().to_string(), "FAKE_TAG": tag}
            }
        })
    };
    let resp = daemon.admin(
        "PUT",
        "/v1/runtime/connectors/external/chat",
        Some(&spec("one")),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let read_dump = |tag: &str| -> Value {
        wait_until(
            &format!("the sidecar tagged {tag}"),
            Duration::from_secs(60),
            || {
                let text = std::fs::read_to_string(&dump).map_err(|e| e.to_string())?;
                let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                if v["tag"] == tag {
                    Ok(v)
                } else {
                    Err(format!("tag {}; log:\n{}", v["tag"], daemon.stderr()))
                }
            },
        )
    };
    let first = read_dump("one");
    let first_pid = first["pid"].as_u64().unwrap();
    // Only the tag changes (child_process merges member-wise; env is replaced whole).
    let resp = daemon.admin(
        "PUT",
        "/v1/runtime/connectors/external/chat",
        Some(&json!({"child_process": {"env": {"FAKE_DUMP": dump.display().to_string(), "FAKE_TAG": "two"}}})),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let second = read_dump("two");
    assert_ne!(second["pid"].as_u64().unwrap(), first_pid);
    wait_until(
        "the first child to be gone",
        Duration::from_secs(30),
        || {
            if gone(first_pid) {
                Ok(())
            } else {
                Err("still running".into())
            }
        },
    );
    assert_eq!(
        daemon
            .admin("DELETE", "/v1/runtime/connectors/external/chat", None)
            .status,
        204
    );
    let second_pid = second["pid"].as_u64().unwrap();
    wait_until(
        "the child to stop after the delete",
        Duration::from_secs(30),
        || {
            if gone(second_pid) {
                Ok(())
            } else {
                Err("still running".into())
            }
        },
    );
    daemon.stop();
}

#[test]
fn external_reply_targets_are_checked_against_the_connectors_when_stored() {
    let sandbox = Sandbox::new();
    let file = format!(
        "{FILE}\n[[external_connectors]]\nname = \"chat\"\nplatform = \"discord\"\nbase_url = \"https://sidecar.example.com\"\nallow_unauthenticated_ingress = true\n"
    );
    let daemon = Daemon::builder(&sandbox).config(&file).start();
    assert_eq!(
        daemon
            .admin("PUT", "/v1/sessions/s1", Some(&json!({})))
            .status,
        201
    );
    let target = |connector: &str| json!({"reply_targets": [{"plugin": "external", "address": {"connector": connector, "route": "{}"}}]});
    let resp = daemon.admin(
        "PUT",
        "/v1/sessions/s1/reply-targets",
        Some(&target("nope")),
    );
    let problem = assert_problem(&resp, 400, "invalid_reply_target");
    assert!(
        problem["detail"].as_str().unwrap().contains("nope"),
        "{problem}"
    );
    let resp = daemon.admin(
        "PUT",
        "/v1/sessions/s1/reply-targets",
        Some(&target("chat")),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    daemon.stop();
}
