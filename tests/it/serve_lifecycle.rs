//! The daemon's lifecycle (SPEC §1.3, §5) against the real binary: the readiness line and log,
//! health and readiness probes, the admin token on the control plane, SIGHUP reloads (a valid
//! file takes effect, an invalid one keeps the previous config), SIGTERM draining to exit 0,
//! a fail-closed start on an invalid connector file or a missing secret, and a rotated bearer
//! token picked up by a running daemon with and without a grace window.
//!
//! Nothing here sleeps: reloads and rotations are awaited by polling with `wait_until`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::support::daemon::{Daemon, ADMIN_TOKEN};
use crate::support::ingress::{assert_accepted, post_bearer, BEARER, ORDERS};
use crate::support::problem::assert_problem;
use crate::support::wait::wait_until;
use crate::support::{fixture, Sandbox};

const LIFECYCLE: &str = r#"
[[http_connectors]]
name = "orders"
bearer_token_env = "ORDERS_BEARER"
default_binding_keys = ["orders"]
[http_connectors.session_policy]
create_if_missing = true
"#;

#[test]
fn lifecycle_ready_health_admin_auth_sighup_and_sigterm() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox)
        .config(LIFECYCLE)
        .env("ORDERS_BEARER", BEARER)
        .start();
    let listen = daemon.ready["listen"]
        .as_str()
        .expect("listen in the readiness JSON");
    assert_eq!(listen.parse::<SocketAddr>().unwrap(), daemon.addr);
    assert!(daemon.addr.ip().is_loopback());
    assert_ne!(daemon.addr.port(), 0);
    // The log line is written before the readiness line, but read by another thread.
    let listening = format!("listening on http://{listen}");
    daemon.wait_for_log(&listening, Duration::from_secs(10));

    let health = daemon.request("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200, "{}", health.text());
    let ready = daemon.request("GET", "/readyz", &[], b"");
    assert_eq!(ready.status, 200, "{}", ready.text());

    // The control plane needs the admin token, also on loopback.
    for target in ["/metrics", "/v1/receipts", "/v1/runs"] {
        let none = daemon.request("GET", target, &[], b"");
        assert_problem(&none, 401, "unauthorized");
    }
    let wrong = daemon.admin_as(&format!("{ADMIN_TOKEN}x"), "GET", "/v1/receipts");
    assert_problem(&wrong, 401, "unauthorized");
    let basic = daemon.request(
        "GET",
        "/v1/receipts",
        &[("Authorization", &format!("Basic {ADMIN_TOKEN}"))],
        b"",
    );
    assert_problem(&basic, 401, "unauthorized");
    assert_eq!(daemon.admin("GET", "/v1/receipts", None).status, 200);

    let mut n_events = 0;
    let mut event_to = |name: &str| {
        n_events += 1;
        post_bearer(
            &daemon,
            &format!("/v1/connectors/http/{name}"),
            BEARER,
            &json!({"content": "x", "idempotency_key": format!("life-{n_events}")}),
        )
    };
    assert_accepted(&event_to("orders"), "http/orders");
    assert_problem(&event_to("orders2"), 404, "connector_not_found");

    // SIGHUP with a valid file that adds `orders2`: it starts answering.
    let with_orders2 = format!(
        "{LIFECYCLE}{}",
        LIFECYCLE.replace("\"orders\"", "\"orders2\"")
    );
    let config_path = sandbox.write("connectors.toml", &with_orders2);
    daemon.signal("HUP");
    wait_until(
        "orders2 to be served after SIGHUP",
        Duration::from_secs(20),
        || {
            let resp = event_to("orders2");
            match resp.status {
                202 => Ok(()),
                _ => Err(format!("{} {}", resp.status, resp.text())),
            }
        },
    );
    assert_accepted(&event_to("orders"), "http/orders");

    // SIGHUP with an invalid file: the previous config stays in force.
    sandbox.write(
        "connectors.toml",
        format!(
            "{with_orders2}\n[[http_connectors]]\nname = \"orders3\"\nsignature_max_age_secs = 0\n"
        ),
    );
    daemon.signal("HUP");
    let stderr = daemon.wait_for_log("keeping the previous config", Duration::from_secs(20));
    let file_line_col = format!("error: {}:", config_path.display());
    assert!(stderr.contains(&file_line_col), "{stderr}");
    assert_accepted(&event_to("orders"), "http/orders");
    assert_accepted(&event_to("orders2"), "http/orders2");
    assert_problem(&event_to("orders3"), 404, "connector_not_found");
    assert_eq!(daemon.request("GET", "/readyz", &[], b"").status, 200);

    // SIGTERM: drain and exit 0.
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("SIGTERM: draining"), "{stderr}");
}

#[test]
fn an_invalid_connector_file_fails_closed_with_exit_4_and_located_diagnostics() {
    let sandbox = Sandbox::new();
    let config = std::fs::read_to_string(fixture("serve_invalid_connectors.toml")).unwrap();
    let (code, stderr) = match Daemon::builder(&sandbox)
        .config(&config)
        .env("ORDERS_BEARER", BEARER)
        .try_start()
    {
        Ok(_) => panic!("serve started with an invalid connector file"),
        Err(failure) => failure,
    };
    assert_eq!(code, Some(4), "{stderr}");
    let file = sandbox.path().join("connectors.toml");
    // Every problem is reported, each at its FILE:LINE:COL, as `validate` prints them.
    for expected in [
        format!(
            "error: {}:5:26: http_connectors[orders].signature_max_age_secs: must be between 1 and 3600 (got 0)",
            file.display()
        ),
        format!("error: {}:8:", file.display()),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in\n{stderr}");
    }
    assert!(!stderr.contains("listening on"), "{stderr}");
}

#[test]
fn a_missing_secret_env_var_fails_closed_naming_it() {
    let sandbox = Sandbox::new();
    let config = "[[http_connectors]]\nname = \"orders\"\nbearer_token_env = \"KHEISH_TEST_UNSET_ORDERS_TOKEN\"\n";
    let (code, stderr) = match Daemon::builder(&sandbox).config(config).try_start() {
        Ok(_) => panic!("serve started without its secret"),
        Err(failure) => failure,
    };
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains("KHEISH_TEST_UNSET_ORDERS_TOKEN"),
        "{stderr}"
    );
    let file = sandbox.path().join("connectors.toml");
    assert!(
        stderr.contains(&format!("error: {}:3:", file.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
}

#[test]
fn a_running_daemon_picks_up_a_rotated_bearer_token_with_and_without_grace() {
    const REF: &str = "connectors.http.orders.bearer_token";
    let sandbox = Sandbox::new();
    let rotate = |value: &str, grace: Option<&str>| {
        let mut cmd = sandbox.cmd();
        cmd.args(["rotate-secret", REF, "--stdin"]).stdin(value);
        if let Some(grace) = grace {
            cmd.args(["--grace", grace]);
        }
        cmd.run().success().never_shows(value);
    };
    rotate("old-token", None);
    let daemon = Daemon::builder(&sandbox)
        .config(&format!(
            r#"
[[http_connectors]]
name = "orders"
bearer_token_secret_ref = "{REF}"
default_binding_keys = ["orders"]
ingress_events_per_second = 100000
[http_connectors.session_policy]
create_if_missing = true
"#
        ))
        .start();
    let n_events = AtomicUsize::new(0);
    let status_with = |token: &str| {
        let n = n_events.fetch_add(1, Ordering::Relaxed);
        let event = json!({"content": "x", "idempotency_key": format!("rot-{n}")});
        post_bearer(&daemon, ORDERS, token, &event).status
    };
    let await_status = |token: &str, wanted: u16, what: &str| {
        wait_until(what, Duration::from_secs(15), || match status_with(token) {
            s if s == wanted => Ok(()),
            s => Err(format!("{token}: {s}")),
        })
    };
    assert_eq!(status_with("old-token"), 202);
    assert_eq!(status_with("new-token"), 401);

    rotate("new-token", Some("10m"));
    await_status("new-token", 202, "the rotated token to be accepted");
    // The previous value still verifies during the grace window.
    assert_eq!(status_with("old-token"), 202);
    assert_eq!(status_with("new-token"), 202);

    rotate("newest-token", None);
    await_status("new-token", 401, "the replaced token to be refused");
    assert_eq!(status_with("newest-token"), 202);
    assert_eq!(status_with("old-token"), 401);
}

/// Connector kinds this build does not serve are named once each at start, their webhooks
/// answer 404, and reply targets of their plugins are refused when stored.
#[test]
fn every_kind_is_served_and_its_reply_targets_are_stored() {
    const ALL_KINDS: &str = r#"
[[http_connectors]]
name = "orders"
bearer_token_env = "ORDERS_BEARER"
default_binding_keys = ["orders"]
[http_connectors.session_policy]
create_if_missing = true

[[telegram_connectors]]
name = "bot"
secret_token_env = "TG_SECRET"
bot_token_env = "TG_BOT"
"#;
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox)
        .config(ALL_KINDS)
        .env("ORDERS_BEARER", BEARER)
        .env("TG_SECRET", "telegram-secret-token")
        .env("TG_BOT", "123:telegram-test")
        .start();
    // The webhook is served: without its secret token it is refused, not unknown.
    let webhook = daemon.post_json("/v1/connectors/telegram/bot", b"{}");
    assert_problem(&webhook, 401, "unauthorized");
    let session = daemon.admin(
        "PUT",
        "/v1/sessions/s-1",
        Some(&json!({"reply_targets": [
            {"plugin": "telegram", "address": "{\"connector\":\"bot\",\"chat_id\":1}"}
        ]})),
    );
    assert_eq!(session.status, 201, "{}", session.text());
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stderr.contains("is configured but not served by this build"),
        "{stderr}"
    );
    assert!(!stderr.contains("telegram-test"), "{stderr}");
}
