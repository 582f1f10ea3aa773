//! `put-external`: create, field-aware update, `--file` (TOML and JSON) under flags,
//! `--shared-token-stdin` under the default ref, `--dry-run` diffs that write nothing, the
//! `--json` shape, every refusal of "Bad input" with its exit code, planted secrets that never
//! reach stdout or stderr, and a running `serve` picking the change up.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::daemon::Daemon;
use crate::support::db::{Slot, StateDb};
use crate::support::wait::wait_until;
use crate::support::{Kheishctl, Sandbox, MASTER_KEY};

const TOKEN: &str = "planted-shared-token-7c1e";

/// A command on the sandbox's state root with a known master key (so the test can decrypt).
fn cmd(sandbox: &Sandbox) -> Kheishctl {
    let mut k = sandbox.cmd();
    k.env("KHEISH_MASTER_KEY", MASTER_KEY);
    k
}

/// The stored view of `name`: a dry run with no flags changes nothing and prints it.
fn view(sandbox: &Sandbox, name: &str) -> Value {
    let run = cmd(sandbox)
        .args(["--json", "put-external", name, "--dry-run"])
        .run();
    run.success();
    let doc = run.json();
    assert_eq!(
        doc["changes"],
        json!([]),
        "a flagless dry run changes nothing"
    );
    doc["connector"]["connector"].clone()
}

fn remote(sandbox: &Sandbox, name: &str) {
    cmd(sandbox)
        .args(["put-external", name, "--platform", "discord"])
        .args(["--base-url", "http://127.0.0.1:9"])
        .args(["--allow-private-network", "true"])
        .args(["--allow-unauthenticated-ingress", "true"])
        .run()
        .success()
        .stdout_contains(&format!("created external/{name} (daemon-managed)"));
}

#[test]
fn create_update_and_stdin_token_under_the_default_ref() {
    let sandbox = Sandbox::new();
    remote(&sandbox, "chat");
    let v = view(&sandbox, "chat");
    assert_eq!(v["platform"], "discord");
    assert_eq!(v["shared_token"], json!({"configured": false}));

    let run = cmd(&sandbox)
        .args(["--json", "put-external", "chat", "--shared-token-stdin"])
        .args([
            "--fixed-session-id",
            "s-1",
            "--ingress-events-per-second",
            "7",
        ])
        .stdin(format!("{TOKEN}\n"))
        .run();
    run.success().never_shows(TOKEN);
    let doc = run.json();
    assert_eq!(doc["created"], false);
    assert_eq!(doc["dry_run"], false);
    assert_eq!(doc["connector"]["kind"], "external");
    assert_eq!(doc["connector"]["source"], "daemon");
    let secret_ref = "connectors.external.chat.shared_token";
    assert_eq!(doc["secrets_written"], json!([secret_ref]));
    assert_eq!(
        doc["connector"]["connector"]["shared_token"],
        json!({"configured": true, "source": "secret_ref", "secret_ref": secret_ref})
    );
    let fields: Vec<&str> = doc["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "fixed_session_id",
            "ingress_events_per_second",
            "shared_token"
        ]
    );
    // One trailing newline stripped, encrypted at rest.
    let db = StateDb::open(&sandbox.state_root());
    assert_eq!(
        db.secret_value(MASTER_KEY, secret_ref, Slot::Current)
            .as_deref(),
        Some(TOKEN)
    );
    // Absent members keep their value; a blank string clears one.
    let v = view(&sandbox, "chat");
    assert_eq!(
        (v["base_url"].as_str(), v["fixed_session_id"].as_str()),
        (Some("http://127.0.0.1:9"), Some("s-1"))
    );
    cmd(&sandbox)
        .args(["put-external", "chat", "--fixed-session-id", ""])
        .run()
        .success()
        .stdout_contains("fixed_session_id: s-1 -> -");
    let v = view(&sandbox, "chat");
    assert!(v.get("fixed_session_id").is_none(), "{v}");
    assert_eq!(v["ingress_events_per_second"], 7);

    // Other sources replace the slot binding; the view names them, never a value.
    cmd(&sandbox)
        .args(["put-external", "chat", "--shared-token-env", "CHAT_TOKEN"])
        .run()
        .success()
        .stdout_contains("shared_token: env CHAT_TOKEN");
    cmd(&sandbox)
        .args([
            "put-external",
            "chat",
            "--shared-token-secret-ref",
            secret_ref,
        ])
        .run()
        .success()
        .stdout_contains(&format!("shared_token: secret slot {secret_ref}"))
        .never_shows(TOKEN);
}

#[test]
fn dry_run_prints_the_diff_and_writes_nothing() {
    let sandbox = Sandbox::new();
    // On a state root that does not exist yet: nothing is created.
    let run = cmd(&sandbox)
        .args(["put-external", "new", "--platform", "p"])
        .args(["--base-url", "https://sidecar.example.com"])
        .args(["--allow-unauthenticated-ingress", "true", "--dry-run"])
        .run();
    run.success()
        .stdout_contains("would create external/new (dry run: nothing written)")
        .stdout_contains("  base_url: - -> https://sidecar.example.com");
    assert!(!sandbox.state_root().exists(), "a dry run creates nothing");

    remote(&sandbox, "chat");
    let run = cmd(&sandbox)
        .args(["--json", "put-external", "chat", "--shared-token-stdin"])
        .args(["--base-url", "http://127.0.0.1:10", "--dry-run"])
        .stdin(TOKEN)
        .run();
    run.success().never_shows(TOKEN);
    let doc = run.json();
    assert_eq!(doc["dry_run"], true);
    assert_eq!(
        doc["changes"][0],
        json!({"field": "base_url", "before": "http://127.0.0.1:9", "after": "http://127.0.0.1:10"})
    );
    assert_eq!(doc["changes"][1]["field"], "shared_token");
    let v = view(&sandbox, "chat");
    assert_eq!(v["base_url"], "http://127.0.0.1:9");
    assert_eq!(v["shared_token"], json!({"configured": false}));
    assert_eq!(
        StateDb::open(&sandbox.state_root()).count("secret_slots"),
        0,
        "a dry run writes no secret"
    );
}

#[test]
fn child_process_from_a_file_with_flags_on_top() {
    let sandbox = Sandbox::new();
    cmd(&sandbox)
        .args(["rotate-secret", "matrix.token", "--stdin"])
        .stdin("planted-credential-3b9d\n")
        .run()
        .success();
    let file = sandbox.write(
        "local.toml",
        r#"[[external_connectors]]
name = "local"
platform = "matrix"
mode = "child_process"
base_url = "http://127.0.0.1:7001"
allow_unauthenticated_ingress = true

[external_connectors.child_process]
command = "./sidecar"
args = ["--from-file"]
env = { LOG = "info", SECRETISH = "planted-env-value-11aa" }
"#,
    );
    let run = cmd(&sandbox)
        .args(["--json", "put-external", "local", "--file"])
        .arg(&file)
        .args(["--arg", "--verbose", "--arg", "-x"])
        .args(["--credential-slot", "MATRIX_TOKEN=matrix.token"])
        .args(["--working-dir", "/tmp"])
        .run();
    run.success()
        .never_shows("planted-credential-3b9d")
        .never_shows("planted-env-value-11aa");
    let cp = &run.json()["connector"]["connector"]["child_process"];
    assert_eq!(cp["command"], "./sidecar");
    assert_eq!(
        cp["args"],
        json!(["--verbose", "-x"]),
        "flags replace the file's list"
    );
    assert_eq!(cp["env_keys"], json!(["LOG", "SECRETISH"]));
    assert_eq!(cp["credential_env_keys"], json!(["MATRIX_TOKEN"]));
    assert_eq!(cp["working_dir"], "/tmp");
    assert!(cp.get("env").is_none() && cp.get("credential_slots").is_none());

    // JSON files work the same; `--env` replaces the env table whole, other members stay.
    let json_file = sandbox.write("patch.json", r#"{"include_self_output": false}"#);
    let run = cmd(&sandbox)
        .args(["--json", "put-external", "local", "--file"])
        .arg(&json_file)
        .args(["--env", "ONLY=1"])
        .run();
    run.success();
    let v = &run.json()["connector"]["connector"];
    assert_eq!(v["include_self_output"], false);
    assert_eq!(v["child_process"]["env_keys"], json!(["ONLY"]));
    assert_eq!(
        v["child_process"]["credential_env_keys"],
        json!(["MATRIX_TOKEN"])
    );
    assert_eq!(v["child_process"]["command"], "./sidecar");
}

#[test]
fn credential_slots_must_exist_and_nothing_is_written_otherwise() {
    let sandbox = Sandbox::new();
    let run = cmd(&sandbox)
        .args(["put-external", "local", "--platform", "matrix"])
        .args([
            "--mode",
            "child_process",
            "--base-url",
            "http://127.0.0.1:7001",
        ])
        .args([
            "--allow-unauthenticated-ingress",
            "true",
            "--command",
            "./s",
        ])
        .args(["--credential-slot", "MATRIX_TOKEN=matrix.missing"])
        .args(["--shared-token-stdin"])
        .stdin(TOKEN)
        .run();
    run.status(1)
        .never_shows(TOKEN)
        .stderr_contains("error: daemon:external/local#/child_process: external_connectors[local].child_process.credential_slots.MATRIX_TOKEN: secret slot `matrix.missing` does not exist")
        .stderr_contains("nothing was written");
    let db = StateDb::open(&sandbox.state_root());
    assert_eq!(db.count("runtime_connectors"), 0);
    assert_eq!(
        db.count("secret_slots"),
        0,
        "the shared token was not written either"
    );
}

#[test]
fn bad_input_is_refused_with_the_right_exit_code() {
    let sandbox = Sandbox::new();
    remote(&sandbox, "chat");
    let base = ["put-external", "chat"];

    // Invalid field: a diagnostic with the JSON pointer, exit 1.
    cmd(&sandbox)
        .args(base)
        .args(["--base-url", "https://user:pw@sidecar.example.com"])
        .run()
        .status(1)
        .stderr_contains("error: daemon:external/chat#/base_url:")
        .stderr_contains("nothing was written");
    let run = cmd(&sandbox)
        .args(["--json"])
        .args(base)
        .args(["--base-url", "ftp://sidecar.example.com"])
        .run();
    run.status(1);
    let doc = run.json();
    assert_eq!(doc["valid"], false);
    let errors: Vec<&Value> = doc["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["severity"] == "error")
        .collect();
    assert_eq!(errors.len(), 1, "{doc}");
    assert_eq!(errors[0]["pointer"], "/base_url");
    assert_eq!(errors[0]["file"], "daemon:external/chat");

    // Platform change: refused.
    cmd(&sandbox)
        .args(base)
        .args(["--platform", "slack"])
        .run()
        .status(1)
        .stderr_contains("`platform` cannot change (it is `discord`)");

    // A name used by a file-backed external connector.
    let file = sandbox.write(
        "connectors.toml",
        "[[external_connectors]]\nname = \"filed\"\nplatform = \"x\"\nbase_url = \"https://a.example.com\"\nallow_unauthenticated_ingress = true\n",
    );
    cmd(&sandbox)
        .arg("--connectors-config")
        .arg(&file)
        .args(["put-external", "filed", "--platform", "x"])
        .args(["--base-url", "https://b.example.com"])
        .args(["--allow-unauthenticated-ingress", "true"])
        .run()
        .status(1)
        .stderr_contains("`external/filed` is a file-backed connector");

    // Bad --file: unreadable (4), not TOML/JSON, two tables, another name, not an object (1).
    cmd(&sandbox)
        .args(base)
        .args(["--file", "no-such-file.toml"])
        .run()
        .status(4)
        .stderr_contains("no-such-file.toml");
    let cases = [
        (
            "broken.toml",
            "platform = \n",
            "neither a JSON object nor valid TOML",
        ),
        (
            "two.toml",
            "[[external_connectors]]\nname = \"chat\"\n[[external_connectors]]\nname = \"b\"\n",
            "expected exactly one [[external_connectors]] table, found 2",
        ),
        ("other.json", r#"{"name": "other"}"#, "`name` is \"other\""),
        ("list.json", "{\"a\": [1,}", "not valid JSON"),
        ("unknown.json", r#"{"no_such_member": 1}"#, "no_such_member"),
    ];
    for (name, text, needle) in cases {
        let path = sandbox.write(name, text);
        cmd(&sandbox)
            .args(base)
            .arg("--file")
            .arg(&path)
            .run()
            .status(1)
            .stderr_contains(needle);
    }

    // Usage errors (2): malformed K=V, two token sources, a bad mode or boolean.
    for args in [
        &["--env", "NOEQUALS"][..],
        &["--credential-slot", "=ref"],
        &["--env", "A=1", "--env", "A=2"],
        &["--shared-token-env", "A", "--shared-token-secret-ref", "b"],
        &["--mode", "sideways"],
        &["--allow-private-network", "maybe"],
        &["--ingress-events-per-second", "0"],
    ] {
        cmd(&sandbox).args(base).args(args).run().status(2);
    }
    // A secret is never a plain argument: there is no such flag.
    cmd(&sandbox)
        .args(base)
        .args(["--shared-token", TOKEN])
        .run()
        .status(2);

    // An unusable state root (a file where the directory should be): exit 4.
    let not_a_dir = sandbox.write("not-a-dir", "x");
    Kheishctl::new()
        .env("KHEISH_STATE_ROOT", &not_a_dir)
        .args(["put-external", "chat", "--platform", "discord"])
        .run()
        .status(4);

    // After all of that the connector is unchanged.
    let v = view(&sandbox, "chat");
    assert_eq!(v["base_url"], "http://127.0.0.1:9");
    assert_eq!(v["platform"], "discord");
}

#[test]
fn a_running_daemon_applies_the_change() {
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox)
        .env("KHEISH_MASTER_KEY", MASTER_KEY)
        .start();
    cmd(&sandbox)
        .args(["put-external", "live", "--platform", "discord"])
        .args(["--base-url", "http://127.0.0.1:9"])
        .args(["--allow-private-network", "true"])
        .args(["--allow-unauthenticated-ingress", "true"])
        .run()
        .success();
    daemon.wait_for_log("runtime connector store changed", Duration::from_secs(2));
    let series = "kheish_sidecar_health{connector=\"external/live\"";
    wait_until(
        "the new sidecar in /metrics",
        Duration::from_secs(5),
        || {
            let res = daemon.admin("GET", "/metrics", None);
            let text = res.text();
            if text.lines().any(|l| l.starts_with(series)) {
                Ok(())
            } else {
                Err(text)
            }
        },
    );

    // A shared token written beside the daemon never shows in its log.
    cmd(&sandbox)
        .args(["put-external", "live", "--shared-token-stdin"])
        .stdin(TOKEN)
        .run()
        .success()
        .never_shows(TOKEN);
    wait_until(
        "the second change to be applied",
        Duration::from_secs(5),
        || {
            let log = daemon.stderr();
            if log.matches("runtime connector store changed").count() >= 2 {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains(TOKEN), "the daemon logged the token:\n{log}");
}
