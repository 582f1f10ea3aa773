//! `kheishctl sign`: the SPEC §7.2 vector and Slack's documented example through the binary,
//! every output format, every secret source, `--verify`, and that no secret value is ever shown.

use std::path::Path;

use crate::support::ingress::{start_gateway, BEARER, HMAC, ORDERS};
use crate::support::{Run, Sandbox};

// SPEC §7.2 fixed vector.
const SECRET: &str = "hmac-test-secret";
const PATH: &str = "/v1/connectors/http/orders?source=a%2Fb&attempt=1";
const TS: &str = "1710000000";
const BODY: &str = r#"{"content":"hello","idempotency_key":"order-123","metadata":{"k":"v"}}"#;
const SIG: &str = "v1=f13a4b8c5099a2ffc6b8a913e0998d6765d61a693c27f594ca34ede2e0d4e557";
const HEADERS: &str = "X-Kheish-Timestamp: 1710000000\nX-Kheish-Signature: v1=f13a4b8c5099a2ffc6b8a913e0998d6765d61a693c27f594ca34ede2e0d4e557\n";

// Slack's documented example ("Verifying requests from Slack").
const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const SLACK_TS: &str = "1531420618";
const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
const SLACK_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

/// Runs `sign --secret-env ORDERS_HMAC --timestamp 1710000000 --body body.json <extra>` with the
/// §7.2 secret planted, and checks the secret never shows.
fn sign(sandbox: &Sandbox, extra: &[&str]) -> Run {
    let body = sandbox.write("body.json", BODY);
    let mut cmd = sandbox.cmd();
    cmd.args([
        "sign",
        "--secret-env",
        "ORDERS_HMAC",
        "--timestamp",
        TS,
        "--body",
    ])
    .arg(&body)
    .args(extra)
    .env("ORDERS_HMAC", SECRET);
    let run = cmd.run();
    run.never_shows(SECRET);
    run
}

/// Runs `sign --secret-env ORDERS_HMAC --timestamp 1710000000 --body - <extra>` with `stdin`
/// as the body and the §7.2 secret planted, and checks the secret never shows.
fn sign_stdin(sandbox: &Sandbox, stdin: &str, extra: &[&str]) -> Run {
    let run = sandbox
        .cmd()
        .args(["sign", "--secret-env", "ORDERS_HMAC", "--timestamp", TS])
        .args(["--body", "-"])
        .args(extra)
        .env("ORDERS_HMAC", SECRET)
        .stdin(stdin)
        .run();
    run.never_shows(SECRET);
    run
}

/// Runs `sign --scheme slack --secret-env SLACK_SIGNING_SECRET <extra> --body BODY` with
/// Slack's example secret planted, and checks the secret never shows.
fn sign_slack(sandbox: &Sandbox, body: &Path, extra: &[&str]) -> Run {
    let run = sandbox
        .cmd()
        .args(["sign", "--scheme", "slack"])
        .args(["--secret-env", "SLACK_SIGNING_SECRET"])
        .args(extra)
        .arg("--body")
        .arg(body)
        .env("SLACK_SIGNING_SECRET", SLACK_SECRET)
        .run();
    run.never_shows(SLACK_SECRET);
    run
}

#[test]
fn spec_vector_gives_the_two_header_lines() {
    let sandbox = Sandbox::new();
    sign(&sandbox, &["--path", PATH])
        .success()
        .stdout_is(HEADERS);
}

#[test]
fn url_form_equals_path_form() {
    let sandbox = Sandbox::new();
    let url = format!("http://127.0.0.1:4000{PATH}");
    sign(&sandbox, &["--url", &url])
        .success()
        .stdout_is(HEADERS);
    let https = format!("https://gw.example.com:8443{PATH}#fragment-is-not-sent");
    sign(&sandbox, &["--url", &https])
        .success()
        .stdout_is(HEADERS);
}

#[test]
fn method_is_uppercased() {
    let sandbox = Sandbox::new();
    sign(&sandbox, &["--path", PATH, "--method", "post"])
        .success()
        .stdout_is(HEADERS);
}

#[test]
fn body_from_stdin_is_signed_byte_for_byte() {
    let sandbox = Sandbox::new();
    sign_stdin(&sandbox, BODY, &["--path", PATH])
        .success()
        .stdout_is(HEADERS);
    // A trailing newline is part of the body: it changes the signature.
    let run = sign_stdin(&sandbox, &format!("{BODY}\n"), &["--path", PATH]);
    run.success();
    assert!(!run.stdout().contains(SIG), "{}", run.stdout());
}

#[test]
fn json_format_shape() {
    let sandbox = Sandbox::new();
    let expected = serde_json::json!({
        "timestamp": 1710000000,
        "signature": SIG,
        "canonical_prefix": format!("v1:POST:{PATH}:{TS}:"),
        "method": "POST",
        "path": PATH,
    });
    let run = sign(&sandbox, &["--path", PATH, "--format", "json"]);
    assert_eq!(run.success().json(), expected);
    let run = sign(&sandbox, &["--path", PATH, "--json"]);
    assert_eq!(run.success().json(), expected);
}

#[test]
fn curl_format_is_a_ready_to_run_command() {
    let sandbox = Sandbox::new();
    let body = sandbox.path().join("body.json");
    let url = format!("http://127.0.0.1:4000{PATH}");
    let run = sign(&sandbox, &["--url", &url, "--format", "curl"]);
    run.success();
    let expected = format!(
        "curl -sS --path-as-is \\\n  -X POST \\\n  -H 'Content-Type: application/json' \\\n  \
-H 'X-Kheish-Timestamp: {TS}' \\\n  -H 'X-Kheish-Signature: {SIG}' \\\n  \
--data-binary @{} \\\n  '{url}'\n",
        body.display()
    );
    run.stdout_contains(SIG)
        .stdout_contains("--data-binary @")
        .stdout_is(&expected);
}

#[test]
fn curl_with_path_targets_the_default_listen_address() {
    let sandbox = Sandbox::new();
    sign(&sandbox, &["--path", PATH, "--format", "curl"])
        .success()
        .stdout_contains(&format!("'http://127.0.0.1:4000{PATH}'"));
}

#[test]
fn curl_with_stdin_body_reads_stdin_again() {
    let sandbox = Sandbox::new();
    sign_stdin(&sandbox, BODY, &["--path", PATH, "--format", "curl"])
        .success()
        .stdout_contains("# the body was read from standard input")
        .stdout_contains("--data-binary @- \\")
        .stdout_contains(SIG);
}

#[test]
fn slack_scheme_matches_slacks_documented_example() {
    let sandbox = Sandbox::new();
    let body = sandbox.write("slack.txt", SLACK_BODY);
    sign_slack(&sandbox, &body, &["--timestamp", SLACK_TS])
        .success()
        .stdout_is(&format!(
            "X-Slack-Request-Timestamp: {SLACK_TS}\nX-Slack-Signature: {SLACK_SIG}\n"
        ));
    let run = sign_slack(
        &sandbox,
        &body,
        &["--timestamp", SLACK_TS, "--format", "json"],
    );
    let json = run.success().json();
    assert_eq!(json["signature"], SLACK_SIG);
    assert_eq!(json["canonical_prefix"], format!("v0:{SLACK_TS}:"));
    assert_eq!(json["path"], serde_json::Value::Null);
}

#[test]
fn slack_curl_needs_a_url() {
    let sandbox = Sandbox::new();
    let body = sandbox.write("slack.json", "{}");
    sign_slack(&sandbox, &body, &["--format", "curl"])
        .status(2)
        .stderr_contains("`--format curl` needs a URL");
}

#[test]
fn slack_connector_signing_secret_and_route() {
    let sandbox = Sandbox::new();
    let toml = "[[slack_connectors]]\nname = \"support\"\nsigning_secret_env = \"SLACK_SIGNING_SECRET\"\ninclude_self_output = false\n";
    let config = sandbox.write("connectors.toml", toml);
    let body = sandbox.write("slack.txt", SLACK_BODY);
    let run = sandbox
        .cmd()
        .arg("sign")
        .arg("--connectors-config")
        .arg(&config)
        .args([
            "--scheme",
            "slack",
            "--connector",
            "support",
            "--timestamp",
            SLACK_TS,
        ])
        .args(["--format", "json", "--body"])
        .arg(&body)
        .env("SLACK_SIGNING_SECRET", SLACK_SECRET)
        .run();
    let json = run.success().never_shows(SLACK_SECRET).json();
    assert_eq!(json["signature"], SLACK_SIG);
    assert_eq!(json["path"], "/v1/connectors/slack/support");
}

#[test]
fn verify_good_signature() {
    let sandbox = Sandbox::new();
    sign(&sandbox, &["--path", PATH, "--verify", SIG])
        .success()
        .stdout_is("signature ok\n");
    // Either hex case is accepted.
    let upper = format!("v1={}", SIG[3..].to_ascii_uppercase());
    sign(&sandbox, &["--path", PATH, "--verify", &upper])
        .success()
        .stdout_is("signature ok\n");
    let run = sign(&sandbox, &["--path", PATH, "--verify", SIG, "--json"]);
    assert_eq!(run.success().json(), serde_json::json!({"valid": true}));
}

#[test]
fn verify_bad_signature() {
    let sandbox = Sandbox::new();
    let wrong = format!("v1={}", "0".repeat(64));
    sign(&sandbox, &["--path", PATH, "--verify", &wrong])
        .status(1)
        .stdout_is("signature mismatch\n");
    // Same signature, different path: the target is signed.
    sign(
        &sandbox,
        &["--path", "/v1/connectors/http/orders", "--verify", SIG],
    )
    .status(1)
    .stdout_is("signature mismatch\n");
}

#[test]
fn verify_malformed_signature() {
    let sandbox = Sandbox::new();
    let short = &SIG[..SIG.len() - 1];
    let run = sign(&sandbox, &["--path", PATH, "--verify", short]);
    run.status(1)
        .stdout_is("")
        .stderr_contains("malformed `X-Kheish-Signature`")
        .stderr_contains("got 63 hex digits");
    let run = sign(&sandbox, &["--path", PATH, "--verify", &SIG[3..]]);
    run.status(1).stderr_contains("does not start with `v1=`");
}

#[test]
fn verify_needs_the_timestamp() {
    let sandbox = Sandbox::new();
    let body = sandbox.write("body.json", BODY);
    let run = sandbox
        .cmd()
        .args([
            "sign",
            "--secret-env",
            "ORDERS_HMAC",
            "--path",
            PATH,
            "--verify",
            SIG,
        ])
        .arg("--body")
        .arg(&body)
        .env("ORDERS_HMAC", SECRET)
        .run();
    run.status(2)
        .never_shows(SECRET)
        .stderr_contains("--timestamp <UNIX>");
}

#[test]
fn secret_file_strips_one_trailing_newline() {
    let sandbox = Sandbox::new();
    let body = sandbox.write("body.json", BODY);
    for contents in [
        SECRET.to_string(),
        format!("{SECRET}\n"),
        format!("{SECRET}\r\n"),
    ] {
        let secret_file = sandbox.write("hmac.secret", &contents);
        let run = sandbox
            .cmd()
            .args(["sign", "--timestamp", TS, "--path", PATH, "--secret-file"])
            .arg(&secret_file)
            .arg("--body")
            .arg(&body)
            .run();
        run.success().never_shows(SECRET).stdout_is(HEADERS);
    }
}

#[test]
fn missing_env_var_names_the_var() {
    let sandbox = Sandbox::new();
    let body = sandbox.write("body.json", BODY);
    let run = sandbox
        .cmd()
        .args([
            "sign",
            "--secret-env",
            "ORDERS_HMAC",
            "--path",
            PATH,
            "--body",
        ])
        .arg(&body)
        .env("OTHER_VAR", SECRET)
        .run();
    run.status(1)
        .never_shows(SECRET)
        .stdout_is("")
        .stderr_contains("ORDERS_HMAC");
}

#[test]
fn blank_secret_is_refused() {
    let sandbox = Sandbox::new();
    let body = sandbox.write("body.json", BODY);
    let blank = sandbox.write("blank.secret", " \n");
    sandbox
        .cmd()
        .args([
            "sign",
            "--secret-env",
            "ORDERS_HMAC",
            "--path",
            PATH,
            "--body",
        ])
        .arg(&body)
        .env("ORDERS_HMAC", "   ")
        .run()
        .status(1)
        .stderr_contains("ORDERS_HMAC");
    sandbox
        .cmd()
        .args(["sign", "--path", PATH, "--secret-file"])
        .arg(&blank)
        .arg("--body")
        .arg(&body)
        .run()
        .status(1)
        .stderr_contains("empty or only whitespace");
}

#[test]
fn a_request_target_is_required_for_kheish_signatures() {
    let sandbox = Sandbox::new();
    sign(&sandbox, &[])
        .status(2)
        .stderr_contains("pass `--url URL`, `--path PATH` or `--connector NAME`");
}

#[test]
fn bad_request_targets_are_usage_errors() {
    let sandbox = Sandbox::new();
    sign(&sandbox, &["--path", "v1/connectors/http/orders"])
        .status(2)
        .stderr_contains("must start with `/`");
    sign(&sandbox, &["--url", "http://127.0.0.1:4000/a b"])
        .status(2)
        .stderr_contains("write it exactly as sent");
}

#[test]
fn secret_ref_without_a_secret_store_fails_clearly() {
    let sandbox = Sandbox::new();
    let body = sandbox.write("body.json", BODY);
    sandbox
        .cmd()
        .args(["sign", "--secret-ref", "connectors.http.orders.hmac_secret"])
        .args(["--path", PATH, "--body"])
        .arg(&body)
        .run()
        .status(1)
        .stderr_contains("connectors.http.orders.hmac_secret");
}

#[test]
fn secret_ref_from_the_secret_store() {
    let sandbox = Sandbox::new();
    let body = sandbox.write("body.json", BODY);
    let key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    sandbox
        .cmd()
        .args([
            "rotate-secret",
            "connectors.http.orders.hmac_secret",
            "--stdin",
        ])
        .env("KHEISH_MASTER_KEY", key)
        .stdin(format!("{SECRET}\n"))
        .run()
        .success()
        .never_shows(SECRET);
    sandbox
        .cmd()
        .args(["sign", "--secret-ref", "connectors.http.orders.hmac_secret"])
        .args(["--timestamp", TS, "--path", PATH, "--body"])
        .arg(&body)
        .env("KHEISH_MASTER_KEY", key)
        .run()
        .success()
        .never_shows(SECRET)
        .stdout_is(HEADERS);
}

const ORDERS_TOML: &str = "[[http_connectors]]\nname = \"orders\"\nrequire_hmac_signature = true\nhmac_secret_env = \"ORDERS_HMAC\"\n";

/// `sign --connectors-config connectors.toml --connector NAME --timestamp T --body body.json`.
fn sign_connector(sandbox: &Sandbox, toml: &str, name: &str, extra: &[&str]) -> Run {
    let config = sandbox.write("connectors.toml", toml);
    let body = sandbox.write("body.json", BODY);
    let mut cmd = sandbox.cmd();
    cmd.arg("sign")
        .arg("--connectors-config")
        .arg(&config)
        .args(["--connector", name, "--timestamp", TS, "--body"])
        .arg(&body)
        .args(extra)
        .env("ORDERS_HMAC", SECRET)
        .env("ORDERS_TOKEN", "bearer-token-value");
    let run = cmd.run();
    run.never_shows(SECRET).never_shows("bearer-token-value");
    run
}

#[test]
fn connector_secret_and_default_path() {
    let sandbox = Sandbox::new();
    let expected_default_path = format!(
        "X-Kheish-Timestamp: {TS}\nX-Kheish-Signature: {}\n",
        "v1=".to_string() + &sig_of("/v1/connectors/http/orders")
    );
    sign_connector(&sandbox, ORDERS_TOML, "orders", &[])
        .success()
        .stdout_is(&expected_default_path);
    sign_connector(&sandbox, ORDERS_TOML, "orders", &["--path", PATH])
        .success()
        .stdout_is(HEADERS);
}

#[test]
fn connector_curl_never_contains_the_bearer_token() {
    let sandbox = Sandbox::new();
    let toml = format!("{ORDERS_TOML}bearer_token_env = \"ORDERS_TOKEN\"\n");
    sign_connector(&sandbox, &toml, "orders", &["--format", "curl"])
        .success()
        .stdout_contains("-H \"Authorization: Bearer $ORDERS_TOKEN\"")
        .stdout_contains("  http://127.0.0.1:4000/v1/connectors/http/orders\n");
}

#[test]
fn connector_not_found_lists_the_known_ones() {
    let sandbox = Sandbox::new();
    sign_connector(&sandbox, ORDERS_TOML, "billing", &[])
        .status(1)
        .stderr_contains("no http_connectors entry named `billing`")
        .stderr_contains("`orders`");
}

#[test]
fn connector_without_hmac_secret() {
    let sandbox = Sandbox::new();
    let toml = "[[http_connectors]]\nname = \"open\"\nallow_unauthenticated_ingress = true\n";
    sign_connector(&sandbox, toml, "open", &[])
        .status(1)
        .stderr_contains("http_connectors[open] has no `hmac_secret` configured");
}

#[test]
fn connector_file_with_errors_prints_diagnostics_and_exits_4() {
    let sandbox = Sandbox::new();
    let toml = format!("{ORDERS_TOML}signature_max_age_secs = 0\n");
    sign_connector(&sandbox, &toml, "orders", &[])
        .status(4)
        .stdout_is("")
        .stderr_contains("signature_max_age_secs")
        .stderr_contains("kheishctl validate");
}

#[test]
fn connector_needs_the_connector_file() {
    let sandbox = Sandbox::new();
    let body = sandbox.write("body.json", BODY);
    sandbox
        .cmd()
        .args(["sign", "--connector", "orders", "--body"])
        .arg(&body)
        .run()
        .status(2)
        .stderr_contains("--connectors-config FILE");
}

#[test]
fn connector_file_that_cannot_be_read_exits_4() {
    let sandbox = Sandbox::new();
    let body = sandbox.write("body.json", BODY);
    sandbox
        .cmd()
        .args(["sign", "--connectors-config", "does-not-exist.toml"])
        .args(["--connector", "orders", "--body"])
        .arg(&body)
        .run()
        .status(4)
        .stderr_contains("does-not-exist.toml");
}

/// The lowercase hex MAC of the §7.2 body at `TS` for `path`, computed by the library (which the
/// unit tests pin to the spec vector).
fn sig_of(path: &str) -> String {
    kheishctl::ingress::auth::kheish_v1_signature(
        SECRET.as_bytes(),
        "POST",
        path,
        TS.parse().expect("TS is an integer"),
        BODY.as_bytes(),
    )["v1=".len()..]
        .to_string()
}

/// Runs a printed command through `sh` in the sandbox, with only PATH and `env` set; returns
/// (exit code, stdout, stderr).
fn run_through_sh(sandbox: &Sandbox, script: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c")
        .arg(script)
        .current_dir(sandbox.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        sh.env(k, v);
    }
    let out = sh.output().expect("running sh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sign --connector orders --url URL --format curl ARGS` against a running gateway's connector
/// file, with `hmac` as the connector's HMAC secret.
fn sign_curl(sandbox: &Sandbox, url: &str, body: &Path, hmac: &str, extra: &[&str]) -> String {
    let mut cmd = sandbox.cmd();
    cmd.arg("--connectors-config")
        .arg(sandbox.path().join("connectors.toml"))
        .args(["sign", "--connector", "orders", "--url", url, "--body"])
        .arg(body)
        .args(["--format", "curl"])
        .args(extra)
        .env("ORDERS_HMAC", hmac)
        .env("ORDERS_BEARER", BEARER);
    let run = cmd.run();
    run.success().never_shows(hmac).never_shows(BEARER);
    run.stdout()
}

#[test]
fn the_printed_curl_command_runs_quietly_and_ingress_verifies_it() {
    let (sandbox, daemon) = start_gateway();
    let url = format!("http://{}{ORDERS}", daemon.addr);
    let body = sandbox.write(
        "payload.json",
        r#"{"content":"from curl","idempotency_key":"curl-1"}"#,
    );
    let env = [("ORDERS_BEARER", BEARER)];

    // Signed with the connector's secret: accepted (the connector requires bearer AND HMAC).
    let script = sign_curl(&sandbox, &url, &body, HMAC, &[]);
    assert!(script.starts_with("curl -sS --path-as-is \\\n"), "{script}");
    let (code, stdout, stderr) = run_through_sh(&sandbox, &script, &env);
    assert_eq!(code, 0, "{script}\n{stdout}\n{stderr}");
    // Quiet: no progress meter (curl draws one on stderr when stdout is not a terminal).
    assert_eq!(stderr, "", "{script}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).expect(&stdout);
    assert_eq!(answer["status"], "accepted", "{answer}");
    let run_id = answer["run_id"].as_str().unwrap();
    let run = daemon.admin("GET", &format!("/v1/runs/{run_id}"), None);
    assert_eq!(run.status, 200, "{}", run.text());

    // Signed with another secret: ingress refuses it. Without --curl-fail the command still
    // exits 0 (the body says why); with it, curl exits 22 and prints the body too.
    let wrong = "not-the-connector-secret";
    let fresh = sandbox.write(
        "payload2.json",
        r#"{"content":"bad signature","idempotency_key":"curl-2"}"#,
    );
    for (extra, expected_code) in [(&[][..], 0), (&["--curl-fail"][..], 22)] {
        let script = sign_curl(&sandbox, &url, &fresh, wrong, extra);
        if expected_code == 22 {
            assert!(
                script.starts_with("curl -sS --fail-with-body --path-as-is \\\n"),
                "{script}"
            );
        }
        let (code, stdout, stderr) = run_through_sh(&sandbox, &script, &env);
        assert_eq!(code, expected_code, "{script}\n{stdout}\n{stderr}");
        let problem: serde_json::Value = serde_json::from_str(&stdout).expect(&stdout);
        assert_eq!(problem["status"], 401, "{problem}");
        if expected_code == 22 {
            assert!(stderr.contains("401"), "{stderr}");
        } else {
            assert_eq!(stderr, "");
        }
    }
}

#[test]
fn curl_fail_needs_the_curl_format() {
    let sandbox = Sandbox::new();
    for extra in [
        &["--path", PATH, "--curl-fail"][..],
        &["--path", PATH, "--format", "json", "--curl-fail"][..],
        &["--path", PATH, "--json", "--format", "curl", "--curl-fail"][..],
    ] {
        sign(&sandbox, extra)
            .status(2)
            .stderr_contains("`--curl-fail` only applies to the printed curl command");
    }
}
