//! The read-only control-plane token (SPEC §5.2): GET routes only, 403 `readonly_token` on
//! writes, distinct from the admin token, re-read from its file when it changes.

use std::time::Duration;

use crate::support::daemon::{Daemon, ADMIN_TOKEN};
use crate::support::problem::assert_problem;
use crate::support::wait::wait_until;
use crate::support::Sandbox;

#[test]
fn the_readonly_token_reads_and_never_writes() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox)
        .env("RO_TOKEN", "read-only-token-abcdef")
        .args(&["--readonly-token-env", "RO_TOKEN"])
        .start();
    for target in ["/metrics", "/v1/deliveries", "/v1/receipts", "/v1/runs"] {
        let resp = daemon.admin_as("read-only-token-abcdef", "GET", target);
        assert_eq!(resp.status, 200, "GET {target}: {}", resp.text());
        // HEAD answers like GET, head only.
        let head = daemon.admin_as("read-only-token-abcdef", "HEAD", target);
        assert_eq!(head.status, 200, "HEAD {target}: {}", head.text());
        assert!(head.body.is_empty(), "HEAD {target}: {}", head.text());
    }
    assert_eq!(daemon.request("HEAD", "/healthz", &[], b"").status, 200);
    for (method, target) in [
        ("POST", "/v1/runs/claim"),
        ("POST", "/v1/deliveries/replay-bulk"),
        ("PUT", "/v1/sessions/s1"),
    ] {
        let resp = daemon.admin_as("read-only-token-abcdef", method, target);
        assert_problem(&resp, 403, "readonly_token");
    }
    // Nothing was written by the refused writes.
    let resp = daemon.admin("GET", "/v1/sessions/s1", None);
    assert_eq!(resp.status, 404, "{}", resp.text());
    // A wrong token is still 401; the admin token still writes.
    assert_problem(
        &daemon.admin_as("read-only-token-abcdeX", "GET", "/metrics"),
        401,
        "unauthorized",
    );
    let resp = daemon.admin_as(ADMIN_TOKEN, "POST", "/v1/runs/claim");
    assert_ne!(resp.status, 403, "{}", resp.text());
    let (_, stderr) = daemon.stop();
    assert!(!stderr.contains("read-only-token-abcdef"), "{stderr}");
}

#[test]
fn the_readonly_token_file_is_re_read_when_it_changes() {
    let sandbox = Sandbox::new();
    let file = sandbox.write("ro.token", "first-read-only-token\n");
    let daemon = Daemon::builder(&sandbox)
        .args(&["--readonly-token-file", file.to_str().unwrap()])
        .start();
    assert_eq!(
        daemon
            .admin_as("first-read-only-token", "GET", "/metrics")
            .status,
        200
    );
    sandbox.write("ro.token", "second-read-only-token-longer\n");
    // Files are looked at on control requests; poll with the admin token (failed attempts
    // would count toward the per-client lockout) until the re-read is logged.
    reread(&daemon, "read-only token re-read");
    assert_eq!(
        daemon
            .admin_as("second-read-only-token-longer", "GET", "/metrics")
            .status,
        200
    );
    assert_problem(
        &daemon.admin_as("first-read-only-token", "GET", "/metrics"),
        401,
        "unauthorized",
    );
    // A rewrite to the admin token is refused; the token in force stays.
    sandbox.write("ro.token", ADMIN_TOKEN);
    reread(&daemon, "must differ");
    assert_eq!(
        daemon
            .admin_as("second-read-only-token-longer", "GET", "/metrics")
            .status,
        200
    );
    let (_, stderr) = daemon.stop();
    assert!(!stderr.contains("second-read-only-token"), "{stderr}");
}

/// Sends admin-token requests until the daemon's log contains `needle`.
fn reread(daemon: &Daemon, needle: &str) {
    wait_until(
        &format!("the daemon to log `{needle}`"),
        Duration::from_secs(20),
        || {
            let status = daemon.admin_as(ADMIN_TOKEN, "GET", "/metrics").status;
            if daemon.stderr().contains(needle) {
                Ok(())
            } else {
                Err(format!("GET /metrics answered {status}; not logged yet"))
            }
        },
    );
}

#[test]
fn a_readonly_token_equal_to_the_admin_token_or_empty_refuses_the_start() {
    let sandbox = Sandbox::new();
    let (code, stderr) = Daemon::builder(&sandbox)
        .env("RO_TOKEN", ADMIN_TOKEN)
        .args(&["--readonly-token-env", "RO_TOKEN"])
        .try_start()
        .map(|_| ())
        .expect_err("equal tokens must refuse the start");
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("must differ"), "{stderr}");
    assert!(!stderr.contains(ADMIN_TOKEN), "{stderr}");

    let empty = sandbox.write("empty.token", "\n");
    let (code, stderr) = Daemon::builder(&sandbox)
        .args(&["--readonly-token-file", empty.to_str().unwrap()])
        .try_start()
        .map(|_| ())
        .expect_err("an empty read-only token must refuse the start");
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("read-only token is empty"), "{stderr}");

    // An admin token that cannot be resolved is a missing secret too: exit 4 (SPEC §1.3).
    let (code, stderr) = Daemon::builder(&sandbox)
        .env("KHEISH_TEST_ADMIN_TOKEN", "")
        .try_start()
        .map(|_| ())
        .expect_err("an empty admin token variable must refuse the start");
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("KHEISH_TEST_ADMIN_TOKEN"), "{stderr}");
    let (code, stderr) = Daemon::builder(&sandbox)
        .args(&["--readonly-token-file", "/nonexistent/ro.token"])
        .try_start()
        .map(|_| ())
        .expect_err("an unreadable read-only token file must refuse the start");
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("ro.token"), "{stderr}");
}
