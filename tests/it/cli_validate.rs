//! `kheishctl validate` against the fixtures under `tests/fixtures/`: one test per bad-input
//! case, each checking file, line, column, field and the help line; plus `--json`, warnings,
//! `--deny-warnings`, online secret checks and exit 4 for unreadable inputs.

use crate::support::db::set_user_version;
use crate::support::{fixture, repo_root, Kheishctl, Run, Sandbox};

/// Runs `validate NAME ARGS…` from inside `tests/fixtures`, so diagnostics name the file as given.
fn validate(name: &str, args: &[&str]) -> Run {
    let sandbox = Sandbox::new();
    let mut cmd = sandbox.cmd();
    cmd.current_dir(repo_root().join("tests/fixtures"))
        .arg("validate")
        .arg(name)
        .args(args);
    cmd.run()
}

/// Asserts a diagnostic line and, when given, its help line.
fn has_diag(run: &Run, line: &str, help: Option<&str>) {
    let stderr = run.stderr();
    let Some(idx) = stderr.lines().position(|l| l == line) else {
        run.fail(&format!("stderr has no line {line:?}"));
    };
    if let Some(help) = help {
        let next = stderr.lines().nth(idx + 1).unwrap_or_default();
        if !next.trim_start().starts_with("help:") || !next.contains(help) {
            run.fail(&format!(
                "the line after {line:?} is not a help line containing {help:?}"
            ));
        }
    }
}

#[test]
fn valid_file_passes_offline() {
    let run = validate("valid_all_kinds.toml", &["--offline"]);
    run.success()
        .stdout_contains("valid_all_kinds.toml: valid (4 connectors: 1 http, 1 slack, 1 telegram, 1 external; 0 errors, 0 warnings; secrets not checked (--offline))");
    // This build serves every connector kind: no warning about an unserved one.
    let stderr = run.stderr();
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    validate("valid_all_kinds.toml", &["--offline", "--deny-warnings"]).success();
}

#[test]
fn broken_syntax() {
    let run = validate("broken_syntax.toml", &["--offline"]);
    // Not TOML at all: the config could not be parsed (SPEC §1.2), exit 4 as for `serve`.
    run.status(4)
        .stderr_contains("error: broken_syntax.toml:3:20: invalid TOML:");
}

#[test]
fn wrong_value_types() {
    let run = validate("wrong_types.toml", &["--offline"]);
    run.status(1);
    has_diag(&run, "error: wrong_types.toml:4:27: http_connectors[orders].require_idempotency_key: expected a boolean (true or false), found a string", None);
    has_diag(&run, "error: wrong_types.toml:5:29: http_connectors[orders].ingress_events_per_second: expected an integer, found a string", None);
    has_diag(&run, "error: wrong_types.toml:6:24: http_connectors[orders].default_binding_keys: expected an array, found a string", None);
    run.stdout_contains("invalid (3 errors, 0 warnings)");
}

#[test]
fn unknown_key_with_suggestion() {
    let run = validate("unknown_key.toml", &["--offline"]);
    run.status(1);
    has_diag(
        &run,
        "error: unknown_key.toml:4:1: http_connectors[orders].signature_max_age: unknown key `signature_max_age`",
        Some("did you mean `signature_max_age_secs`?"),
    );
}

#[test]
fn missing_required_fields() {
    let run = validate("missing_required.toml", &["--offline"]);
    run.status(1);
    has_diag(&run, "error: missing_required.toml:1:1: external_connectors[discord-main].platform: missing required field", Some("platform = \"discord\""));
    has_diag(&run, "error: missing_required.toml:1:1: external_connectors[discord-main].base_url: missing required field", Some("base_url"));
}

#[test]
fn names_with_colon_or_too_long() {
    let run = validate("name_colon.toml", &["--offline"]);
    run.status(1);
    has_diag(&run, "error: name_colon.toml:2:8: http_connectors[#1].name: invalid name: may contain only letters, digits, `.`, `_` and `-` (found ':')", Some("1 to 64 characters"));
    let run = validate("name_too_long.toml", &["--offline"]);
    run.status(1);
    has_diag(&run, "error: name_too_long.toml:2:8: http_connectors[#1].name: invalid name: must be at most 64 characters (got 67)", None);
}

#[test]
fn duplicate_names() {
    let run = validate("duplicate_names.toml", &["--offline"]);
    run.status(1);
    has_diag(&run, "error: duplicate_names.toml:6:8: http_connectors[orders].name: duplicate http connector name `orders` (first used on line 2)", Some("rename one"));
}

#[test]
fn every_problem_in_one_run() {
    let run = validate("many_problems.toml", &["--offline"]);
    run.status(1);
    has_diag(&run, "error: many_problems.toml:3:26: http_connectors[orders].signature_max_age_secs: must be between 1 and 3600 (got 0)", None);
    has_diag(
        &run,
        "error: many_problems.toml:5:1: http_connectors[orders].colour: unknown key `colour`",
        None,
    );
    has_diag(&run, "error: many_problems.toml:8:8: slack_connectors[#1].name: invalid name: may contain only letters, digits, `.`, `_` and `-` (found ':')", None);
    has_diag(&run, "error: many_problems.toml:14:16: telegram_connectors[bot].ingress_mode: polling needs a bot token", Some("bot_token_secret_ref"));
    run.stdout_contains("invalid (4 errors, 0 warnings)");
}

#[test]
fn max_age_zero() {
    let run = validate("max_age_zero.toml", &["--offline"]);
    run.status(1);
    has_diag(&run, "error: max_age_zero.toml:5:26: http_connectors[orders].signature_max_age_secs: must be between 1 and 3600 (got 0)", None);
}

#[test]
fn hmac_needs_secret_and_idempotency() {
    let run = validate("hmac_without_secret.toml", &["--offline"]);
    run.status(1);
    has_diag(&run, "error: hmac_without_secret.toml:4:26: http_connectors[orders].require_hmac_signature: requires an HMAC secret", Some("hmac_secret_secret_ref"));
    let run = validate("hmac_without_idempotency.toml", &["--offline"]);
    run.status(1);
    has_diag(&run, "error: hmac_without_idempotency.toml:5:27: http_connectors[orders].require_idempotency_key: must be true when require_hmac_signature = true (a signed request without an idempotency key could be replayed within the signature window)", Some("remove `require_idempotency_key = false`"));
}

#[test]
fn unauthenticated_needs_explicit_opt_in() {
    let run = validate("unauthenticated.toml", &["--offline"]);
    run.status(1);
    has_diag(&run, "error: unauthenticated.toml:1:1: http_connectors[public]: accepts unauthenticated requests without the explicit opt-in", Some("allow_unauthenticated_ingress = true"));
}

#[test]
fn urls_with_userinfo_query_or_fragment() {
    let run = validate("url_userinfo.toml", &["--offline"]);
    run.status(1).never_shows("hunter2");
    has_diag(&run, "error: url_userinfo.toml:5:16: telegram_connectors[bot].api_base_url: invalid URL: must not contain credentials (user:password@); put them in headers or the secret store", None);
    let run = validate("url_query.toml", &["--offline"]);
    run.status(1);
    has_diag(&run, "error: url_query.toml:5:16: telegram_connectors[bot].api_base_url: invalid URL: must not have a query string", None);
    let run = validate("url_fragment.toml", &["--offline"]);
    run.status(1);
    has_diag(&run, "error: url_fragment.toml:5:16: slack_connectors[support].api_base_url: invalid URL: must not have a fragment", None);
}

#[test]
fn child_process_base_url_must_be_loopback() {
    let run = validate("child_not_loopback.toml", &["--offline"]);
    run.status(1);
    has_diag(&run, "error: child_not_loopback.toml:5:12: external_connectors[discord-main].base_url: a child_process sidecar must listen on loopback", Some("http://127.0.0.1:PORT"));
}

#[test]
fn only_the_six_daemon_set_names_are_reserved() {
    let run = validate("child_env_sidecar_settings.toml", &["--offline"]);
    run.status(1);
    has_diag(&run, "error: child_env_sidecar_settings.toml:14:1: external_connectors[discord-main].child_process.env.KHEISH_EXTERNAL_CONNECTOR_DAEMON_BASE_URL: `KHEISH_EXTERNAL_CONNECTOR_DAEMON_BASE_URL` is reserved: the daemon sets it for the sidecar itself", Some("remove it"));
    has_diag(&run, "error: child_env_sidecar_settings.toml:17:1: external_connectors[discord-main].child_process.credential_slots.KHEISH_EXTERNAL_CONNECTOR_CREDENTIAL_TOKEN: `KHEISH_EXTERNAL_CONNECTOR_CREDENTIAL_TOKEN` is reserved: the daemon sets it for the sidecar itself", Some("remove it"));
    // The sidecar's own settings with the same prefix are accepted: exactly two errors.
    run.stdout_contains("invalid (2 errors,");
    let stderr = run.stderr();
    assert!(!stderr.contains("TEST_MODE"), "{stderr}");
    assert!(!stderr.contains("INSTANCE_ID"), "{stderr}");
}

#[test]
fn empty_inline_secret() {
    let run = validate("empty_inline_secret.toml", &["--offline"]);
    run.status(1);
    has_diag(&run, "error: empty_inline_secret.toml:3:16: http_connectors[orders].bearer_token: secret is empty", Some("bearer_token_env"));
}

#[test]
fn inline_secret_warnings_and_deny_warnings() {
    let run = validate("inline_secret.toml", &["--offline"]);
    run.success().never_shows("planted-inline-secret-value");
    has_diag(&run, "warning: inline_secret.toml:3:16: http_connectors[orders].bearer_token: ignored: `bearer_token_env` takes precedence (secret store ref, then env var, then inline)", Some("remove `bearer_token`"));
    run.stdout_contains("0 errors, 1 warning");
    let run = validate("inline_secret.toml", &["--offline", "--deny-warnings"]);
    run.status(1)
        .stdout_contains("invalid (0 errors, 1 warning; --deny-warnings)");
}

#[test]
fn json_report_shape() {
    let run = validate("max_age_zero.toml", &["--offline", "--json"]);
    run.status(1);
    let doc = run.json();
    assert_eq!(doc["valid"], false);
    let d = &doc["diagnostics"][0];
    assert_eq!(d["severity"], "error");
    assert_eq!(d["file"], "max_age_zero.toml");
    assert_eq!(d["line"], 5);
    assert_eq!(d["column"], 26);
    assert_eq!(d["connector_kind"], "http");
    assert_eq!(d["connector"], "orders");
    assert_eq!(d["field"], "signature_max_age_secs");
    assert_eq!(d["message"], "must be between 1 and 3600 (got 0)");
    assert!(
        d.get("help").is_some(),
        "help member is always present: {d}"
    );
    assert_eq!(run.stderr(), "", "--json keeps diagnostics out of stderr");
    let ok = validate("valid_all_kinds.toml", &["--offline", "--json"]);
    ok.success();
    let doc = ok.json();
    assert_eq!(doc["valid"], true);
    // Every kind is served: a valid file of all four kinds draws no diagnostic at all.
    assert_eq!(doc["diagnostics"], serde_json::json!([]), "{doc}");
}

#[test]
fn config_from_env_and_flag() {
    let sandbox = Sandbox::new();
    sandbox
        .cmd()
        .args(["validate", "--offline"])
        .env("KHEISH_CONNECTORS_CONFIG", fixture("valid_all_kinds.toml"))
        .run()
        .success();
    sandbox
        .cmd()
        .args(["--connectors-config"])
        .arg(fixture("valid_all_kinds.toml"))
        .args(["validate", "--offline"])
        .run()
        .success();
    sandbox
        .cmd()
        .args(["validate", "--offline"])
        .run()
        .status(2)
        .stderr_contains("no connector file given");
}

#[test]
fn unreadable_file_exits_4() {
    let sandbox = Sandbox::new();
    sandbox
        .cmd()
        .args(["validate", "does-not-exist.toml"])
        .run()
        .status(4)
        .stderr_contains("cannot read connector config does-not-exist.toml");
    // A directory is not a readable file either (this holds for root too).
    sandbox
        .cmd()
        .arg("validate")
        .arg(sandbox.path())
        .run()
        .status(4);
}

#[test]
fn online_problems_are_reported_with_the_files_own_errors() {
    // SPEC §1.3: every problem in one run. A typo in one field does not hide that the
    // connector's (or another connector's) environment variable is unset.
    let sandbox = Sandbox::new();
    let file = sandbox.path().join("two.toml");
    std::fs::write(
        &file,
        "[[http_connectors]]\nname = \"orders\"\nbearer_tokn = \"x\"\n\
         bearer_token_env = \"KHEISH_TEST_UNSET_A\"\n\n\
         [[http_connectors]]\nname = \"other\"\nbearer_token_env = \"KHEISH_TEST_UNSET_B\"\n\
         ingress_events_per_second = -1\n",
    )
    .unwrap();
    sandbox
        .cmd()
        .arg("validate")
        .arg(&file)
        .run()
        .status(1)
        .stderr_contains("http_connectors[orders].bearer_tokn: unknown key `bearer_tokn`")
        .stderr_contains(
            "http_connectors[orders].bearer_token_env: environment variable `KHEISH_TEST_UNSET_A` is not set",
        )
        .stderr_contains(
            "http_connectors[other].bearer_token_env: environment variable `KHEISH_TEST_UNSET_B` is not set",
        )
        .stderr_contains("http_connectors[other].ingress_events_per_second: must be at least 1")
        .stdout_contains("(4 errors, 0 warnings)");
}

#[test]
fn online_checks_report_missing_env_and_slots() {
    let sandbox = Sandbox::new();
    // No state root at all: the slot cannot exist; the env var is unset.
    let run = sandbox
        .cmd()
        .arg("validate")
        .arg(fixture("secrets_online.toml"))
        .run();
    run.status(1)
        .stderr_contains("http_connectors[orders].bearer_token_env: environment variable `ORDERS_TOKEN` is not set")
        .stderr_contains("http_connectors[orders].hmac_secret_secret_ref: secret slot `connectors.http.orders.hmac_secret` does not exist")
        .stderr_contains("kheishctl rotate-secret connectors.http.orders.hmac_secret --stdin");

    // Empty env var is reported as empty; a present slot passes.
    sandbox.store_secret(
        "connectors.http.orders.hmac_secret",
        "planted-hmac-secret\n",
    );
    let run = sandbox
        .cmd()
        .arg("validate")
        .arg(fixture("secrets_online.toml"))
        .env("ORDERS_TOKEN", "")
        .run();
    run.status(1)
        .stderr_contains("environment variable `ORDERS_TOKEN` is empty")
        .never_shows("planted-hmac-secret");
    assert!(
        !run.stderr().contains("hmac_secret_secret_ref"),
        "{}",
        run.stderr()
    );

    let run = sandbox
        .cmd()
        .arg("validate")
        .arg(fixture("secrets_online.toml"))
        .env("ORDERS_TOKEN", "planted-bearer-value")
        .run();
    run.success()
        .never_shows("planted-bearer-value")
        .never_shows("planted-hmac-secret");
}

#[test]
fn online_checks_cover_credential_slots() {
    let sandbox = Sandbox::new();
    let run = sandbox
        .cmd()
        .arg("validate")
        .arg(fixture("valid_all_kinds.toml"))
        .args(["--json"])
        .run();
    run.status(1);
    let doc = run.json();
    let fields: Vec<String> = doc["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["field"].is_string())
        .map(|d| {
            format!(
                "{}[{}].{}",
                d["connector_kind"].as_str().unwrap(),
                d["connector"].as_str().unwrap(),
                d["field"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        fields.contains(
            &"external[discord-main].child_process.credential_slots.DISCORD_BOT_TOKEN".to_string()
        ),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"slack[support].bot_token_secret_ref".to_string()),
        "{fields:?}"
    );
}

#[test]
fn state_root_newer_schema_exits_4() {
    let sandbox = Sandbox::new();
    sandbox.store_secret("connectors.http.orders.hmac_secret", "x-value");
    let db = sandbox.state_root().join("state.db");
    set_user_version(&sandbox.state_root(), 9999);
    let before = std::fs::read(&db).unwrap();
    let run = Kheishctl::new()
        .env("KHEISH_STATE_ROOT", sandbox.state_root())
        .env("ORDERS_TOKEN", "t")
        .arg("validate")
        .arg(fixture("secrets_online.toml"))
        .run();
    run.status(4).stderr_contains("9999");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "a newer database is left untouched"
    );
    // --offline does not touch the state root at all.
    Kheishctl::new()
        .env("KHEISH_STATE_ROOT", sandbox.state_root())
        .arg("validate")
        .arg(fixture("secrets_online.toml"))
        .arg("--offline")
        .run()
        .success();
}

#[test]
fn seed_example_validates_once_its_secrets_exist() {
    let sandbox = Sandbox::new();
    let seed = r#"[[external_connectors]]
name = "discord-main"
platform = "discord"
mode = "child_process"
base_url = "http://127.0.0.1:8787"
shared_token_secret_ref = "connectors.external.discord-main.shared_token"
include_self_output = true
ingress_events_per_second = 100

[external_connectors.session_policy]
create_if_missing = true
credential_scope.route_allow = ["openai"]

[external_connectors.child_process]
command = "python3"
args = ["connectors/python/run_connector.py", "discord"]

[external_connectors.child_process.env]
DISCORD_REQUIRE_MENTION = "true"

[external_connectors.child_process.credential_slots]
DISCORD_BOT_TOKEN = "connectors.external.discord-main.bot_token"
"#;
    let file = sandbox.write("seed.toml", seed);
    sandbox.cmd().arg("validate").arg(&file).run().status(1);
    for slot in [
        "connectors.external.discord-main.shared_token",
        "connectors.external.discord-main.bot_token",
    ] {
        sandbox
            .cmd()
            .args(["rotate-secret", slot, "--generate", "--json"])
            .run()
            .success();
    }
    // External connectors are served: not even a "not served" warning.
    sandbox
        .cmd()
        .args(["validate", "--deny-warnings"])
        .arg(&file)
        .run()
        .success();
}

/// `put-external chat` whose shared token comes from `CHAT_TOKEN` (not checked by the CLI).
fn daemon_managed_chat(sandbox: &Sandbox) {
    sandbox
        .cmd()
        .args(["put-external", "chat", "--platform", "discord"])
        .args(["--base-url", "https://sidecar.example.com"])
        .args(["--shared-token-env", "CHAT_TOKEN"])
        .run()
        .success();
}

#[test]
fn daemon_managed_connectors_are_validated_with_pointers() {
    let sandbox = Sandbox::new();
    daemon_managed_chat(&sandbox);
    // No file: the daemon-managed connectors alone; the env var is missing.
    let run = sandbox.cmd().arg("validate").run();
    run.status(1);
    has_diag(
        &run,
        "error: daemon:external/chat#/shared_token_env: external_connectors[chat].shared_token_env: environment variable `CHAT_TOKEN` is not set",
        Some("export CHAT_TOKEN="),
    );
    let secret = "planted-chat-token-e5e5";
    sandbox
        .cmd()
        .arg("validate")
        .env("CHAT_TOKEN", secret)
        .run()
        .success()
        .stdout_contains("daemon-managed connectors of")
        .stdout_contains("valid (1 connector; 0 errors")
        .never_shows(secret);
    // --offline does not look at the state root.
    sandbox
        .cmd()
        .args(["validate", "--offline"])
        .run()
        .status(2);

    // A file-backed connector now has the name: reported (a warning, as the daemon logs it).
    let file = sandbox.write(
        "connectors.toml",
        "[[external_connectors]]\nname = \"chat\"\nplatform = \"x\"\nbase_url = \"https://a.example.com\"\nallow_unauthenticated_ingress = true\n",
    );
    let run = sandbox
        .cmd()
        .arg("validate")
        .arg(&file)
        .arg("--deny-warnings")
        .run();
    run.status(1)
        .stderr_contains("warning: daemon:external/chat#/name: external_connectors[chat].name: a file-backed connector of this kind now has this name");

    // A stored document that no longer validates (seeded as an older kheishctl could have
    // left it): the diagnostic names the connector and the JSON pointer, in --json too.
    let conn = rusqlite::Connection::open(sandbox.state_root().join("state.db")).unwrap();
    conn.execute(
        "UPDATE runtime_connectors SET document = ?1 WHERE kind = 'external' AND name = 'chat'",
        [r#"{"name":"chat","platform":"discord","base_url":"ftp://sidecar.example.com","shared_token_env":"CHAT_TOKEN"}"#],
    )
    .unwrap();
    drop(conn);
    let run = sandbox
        .cmd()
        .args(["--json", "validate"])
        .env("CHAT_TOKEN", secret)
        .run();
    run.status(1).never_shows(secret);
    let doc = run.json();
    assert_eq!(doc["valid"], false);
    let diag = doc["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["pointer"] == "/base_url")
        .unwrap_or_else(|| run.fail("no diagnostic at /base_url"));
    assert_eq!(diag["file"], "daemon:external/chat");
    assert_eq!(diag["connector_kind"], "external");
    assert_eq!(diag["connector"], "chat");
    assert_eq!(diag["severity"], "error");
}
