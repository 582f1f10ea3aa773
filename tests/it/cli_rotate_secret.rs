//! `rotate-secret`: every value source, newline handling, `--grace`, generated values, the
//! `--json` shape, master-key errors, and that no secret value ever reaches stdout or stderr.
//!
//! What was stored is checked by opening `state.db` independently of kheishctl
//! (`support::db`: rusqlite plus XChaCha20-Poly1305 with the slot ref as associated data, as
//! SPEC §4 and `secrets` document), with the master key the test passed in. That also proves
//! the value is encrypted at rest.

use base64::Engine as _;

use crate::support::db::{Slot, StateDb};
use crate::support::{file_mode, Sandbox, MASTER_KEY as KEY_A};

const REF: &str = "connectors.http.orders.hmac_secret";
/// A second master key: 32 bytes other than `KEY_A`, standard base64.
const KEY_B: &str = "HxwdHhscGRoXGBUWExQREg8QDQ4LDAkKBwgFBgMEAQI=";

/// The slot's current value, decrypted with `KEY_A` straight from `state.db`.
fn current(sandbox: &Sandbox, secret_ref: &str) -> String {
    StateDb::open(&sandbox.state_root())
        .secret_value(KEY_A, secret_ref, Slot::Current)
        .expect("slot exists")
}

#[test]
fn from_env_writes_the_value_and_never_prints_it() {
    let sandbox = Sandbox::new();
    let value = "planted-env-secret-9f2c";
    sandbox
        .cmd()
        .args(["rotate-secret", REF, "--from-env", "NEW_HMAC"])
        .env("NEW_HMAC", value)
        .env("KHEISH_MASTER_KEY", KEY_A)
        .run()
        .success()
        .stdout_is(&format!("rotated {REF} (new slot)\n"))
        .never_shows(value)
        .never_shows(KEY_A);
    assert_eq!(current(&sandbox, REF), value);
}

#[test]
fn missing_or_empty_env_var_is_named_and_nothing_is_created() {
    let sandbox = Sandbox::new();
    sandbox
        .cmd()
        .args(["rotate-secret", REF, "--from-env", "NOT_SET_ANYWHERE"])
        .run()
        .status(1)
        .stderr_contains("`NOT_SET_ANYWHERE` is not set");
    sandbox
        .cmd()
        .args(["rotate-secret", REF, "--from-env", "BLANK"])
        .env("BLANK", "  ")
        .run()
        .status(1)
        .stderr_contains("`BLANK` is empty");
    assert!(
        !sandbox.state_root().exists(),
        "a failed read creates no state root"
    );
}

#[test]
fn file_and_stdin_strip_exactly_one_trailing_newline() {
    let sandbox = Sandbox::new();
    let cases: [(&str, &[u8], &str); 5] = [
        ("file.lf", b"value-lf\n", "value-lf"),
        ("file.crlf", b"value-crlf\r\n", "value-crlf"),
        ("file.two", b"value-two\n\n", "value-two\n"),
        ("file.none", b"value-none", "value-none"),
        ("file.inner", b"  spaced value  \n", "  spaced value  "),
    ];
    for (name, contents, expected) in cases {
        let path = sandbox.write(name, contents);
        let secret_ref = format!("t.{}", name.replace('.', "_"));
        sandbox
            .cmd()
            .args(["rotate-secret", &secret_ref, "--from-file"])
            .arg(&path)
            .env("KHEISH_MASTER_KEY", KEY_A)
            .run()
            .success()
            .never_shows(expected.trim());
        assert_eq!(current(&sandbox, &secret_ref), expected, "{name}");
    }
    for (idx, (input, expected)) in [("stdin-lf\n", "stdin-lf"), ("stdin-crlf\r\n", "stdin-crlf")]
        .into_iter()
        .enumerate()
    {
        let secret_ref = format!("t.stdin{idx}");
        sandbox
            .cmd()
            .args(["rotate-secret", &secret_ref, "--stdin"])
            .env("KHEISH_MASTER_KEY", KEY_A)
            .stdin(input)
            .run()
            .success()
            .never_shows(expected);
        assert_eq!(current(&sandbox, &secret_ref), expected);
    }
}

#[test]
fn empty_values_are_refused() {
    let sandbox = Sandbox::new();
    let empty = sandbox.write("empty", "\n");
    sandbox
        .cmd()
        .args(["rotate-secret", REF, "--from-file"])
        .arg(&empty)
        .run()
        .status(1)
        .stderr_contains("is empty or only whitespace");
    sandbox
        .cmd()
        .args(["rotate-secret", REF, "--stdin"])
        .stdin("")
        .run()
        .status(1)
        .stderr_contains("is empty or only whitespace");
    sandbox
        .cmd()
        .args(["rotate-secret", REF, "--from-file", "does-not-exist"])
        .run()
        .status(1)
        .stderr_contains("cannot read the secret value from file `does-not-exist`");
}

#[test]
fn invalid_secret_refs_are_usage_errors() {
    let sandbox = Sandbox::new();
    sandbox
        .cmd()
        .args(["rotate-secret", "bad ref/with:colon", "--generate"])
        .run()
        .status(2)
        .stderr_contains("is not a valid secret ref");
    assert!(!sandbox.state_root().exists());
}

#[test]
fn json_output_has_the_documented_shape() {
    let sandbox = Sandbox::new();
    let value = "planted-json-secret-51aa";
    let file = sandbox.write("v", format!("{value}\n"));
    let run = sandbox
        .cmd()
        .args(["--json", "rotate-secret", REF, "--from-file"])
        .arg(&file)
        .env("KHEISH_MASTER_KEY", KEY_A)
        .run();
    run.success().never_shows(value);
    let doc = run.json();
    let obj = doc.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "grace_until",
            "previous_kept",
            "rotated_at",
            "secret_ref",
            "source"
        ]
    );
    assert_eq!(doc["secret_ref"], REF);
    assert_eq!(doc["source"], "file");
    assert_eq!(doc["previous_kept"], false);
    assert!(doc["grace_until"].is_null());
    let rotated_at = doc["rotated_at"].as_str().unwrap();
    assert!(
        humantime::parse_rfc3339(rotated_at).is_ok() && rotated_at.ends_with('Z'),
        "{rotated_at}"
    );
}

#[test]
fn grace_keeps_the_previous_value_for_verification() {
    let sandbox = Sandbox::new();
    let root = sandbox.state_root();
    sandbox
        .cmd()
        .args(["rotate-secret", REF, "--stdin"])
        .env("KHEISH_MASTER_KEY", KEY_A)
        .stdin("old-value-7d1e\n")
        .run()
        .success();

    // Human output names the end of the window.
    sandbox
        .cmd()
        .args(["rotate-secret", REF, "--stdin", "--grace", "10m"])
        .env("KHEISH_MASTER_KEY", KEY_A)
        .stdin("new-value-7d1e\n")
        .run()
        .success()
        .stdout_contains(&format!(
            "rotated {REF} (previous value accepted for verification until "
        ))
        .never_shows("old-value-7d1e")
        .never_shows("new-value-7d1e");
    assert_eq!(current(&sandbox, REF), "new-value-7d1e");
    assert_eq!(
        StateDb::open(&root)
            .secret_value(KEY_A, REF, Slot::Previous)
            .as_deref(),
        Some("old-value-7d1e")
    );

    let run = sandbox
        .cmd()
        .args([
            "--json",
            "rotate-secret",
            REF,
            "--from-env",
            "V",
            "--grace",
            "2h",
        ])
        .env("KHEISH_MASTER_KEY", KEY_A)
        .env("V", "newest-value-7d1e")
        .run();
    run.success();
    let doc = run.json();
    assert_eq!(doc["previous_kept"], true);
    assert_eq!(doc["source"], "env");
    let rotated = humantime::parse_rfc3339(doc["rotated_at"].as_str().unwrap()).unwrap();
    let until = humantime::parse_rfc3339(doc["grace_until"].as_str().unwrap()).unwrap();
    let window = until.duration_since(rotated).unwrap().as_secs();
    // Both are printed with second precision, so the window can be off by the rounding.
    assert!((7199..=7201).contains(&window), "window {window}s");
    assert_eq!(
        StateDb::open(&root)
            .secret_value(KEY_A, REF, Slot::Previous)
            .as_deref(),
        Some("new-value-7d1e")
    );

    // No --grace: the previous value is dropped at once.
    sandbox
        .cmd()
        .args(["rotate-secret", REF, "--stdin"])
        .env("KHEISH_MASTER_KEY", KEY_A)
        .stdin("final-value-7d1e")
        .run()
        .success()
        .stdout_is(&format!("rotated {REF}\n"));
    assert_eq!(
        StateDb::open(&root).secret_value(KEY_A, REF, Slot::Previous),
        None
    );

    let rotations = StateDb::open(&root).secret_rotations(REF);
    let sources: Vec<&str> = rotations.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(sources, ["stdin", "stdin", "env", "stdin"]);
    let graces: Vec<bool> = rotations.iter().map(|(g, _)| g.is_some()).collect();
    assert_eq!(graces, [false, true, true, false]);
}

#[test]
fn generate_prints_the_value_exactly_once() {
    let sandbox = Sandbox::new();
    let run = sandbox
        .cmd()
        .args(["rotate-secret", REF, "--generate"])
        .env("KHEISH_MASTER_KEY", KEY_A)
        .run();
    run.success().stderr_contains(&format!("rotated {REF}"));
    let stdout = run.stdout();
    let value = stdout.strip_suffix('\n').expect("one line");
    assert!(!value.contains('\n'), "exactly one line: {stdout:?}");
    // 32 bytes of entropy in unpadded URL-safe base64.
    assert_eq!(value.len(), 43, "{value}");
    assert!(value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert!(
        !run.stderr().contains(value),
        "the value is printed only once"
    );
    assert_eq!(current(&sandbox, REF), value);

    let run = sandbox
        .cmd()
        .args([
            "--json",
            "rotate-secret",
            "other.slot",
            "--generate",
            "--bytes",
            "16",
        ])
        .env("KHEISH_MASTER_KEY", KEY_A)
        .run();
    run.success();
    let doc = run.json();
    assert_eq!(doc["source"], "generate");
    let value = doc["value"].as_str().unwrap();
    assert_eq!(value.len(), 22);
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .unwrap();
    assert_eq!(decoded.len(), 16);
    assert_eq!(run.stdout().matches(value).count(), 1);
    assert!(!run.stderr().contains(value));
    assert_eq!(current(&sandbox, "other.slot"), value);

    // Quiet mode still prints the value (it is the result), and nothing else.
    let run = sandbox
        .cmd()
        .args(["-q", "rotate-secret", "third.slot", "--generate"])
        .env("KHEISH_MASTER_KEY", KEY_A)
        .run();
    run.success();
    assert_eq!(run.stdout().trim_end().len(), 43);
    assert_eq!(run.stderr(), "");
}

#[test]
fn generated_master_key_and_files_are_private() {
    let sandbox = Sandbox::new();
    let root = sandbox.state_root();
    sandbox
        .cmd()
        .args(["rotate-secret", REF, "--stdin"])
        .stdin("value-under-generated-key")
        .run()
        .success()
        .never_shows("value-under-generated-key");
    assert_eq!(file_mode(&root), 0o700);
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(file_mode(&path), 0o600, "{}", path.display());
    }
    let key = std::fs::read_to_string(root.join("master.key")).unwrap();
    let key = key.trim();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(key)
            .unwrap()
            .len(),
        32
    );
    assert_eq!(
        StateDb::open(&root)
            .secret_value(key, REF, Slot::Current)
            .as_deref(),
        Some("value-under-generated-key")
    );

    // A second rotation reuses the generated key.
    sandbox
        .cmd()
        .args(["rotate-secret", REF, "--stdin"])
        .stdin("second-value")
        .run()
        .success();
    assert_eq!(
        std::fs::read_to_string(root.join("master.key"))
            .unwrap()
            .trim(),
        key
    );
    assert_eq!(
        StateDb::open(&root)
            .secret_value(key, REF, Slot::Current)
            .as_deref(),
        Some("second-value")
    );
}

#[test]
fn an_explicit_master_key_creates_no_key_file() {
    let sandbox = Sandbox::new();
    let key_file = sandbox.write("operator.key", format!("{KEY_A}\n"));
    sandbox
        .cmd()
        .args(["rotate-secret", REF, "--generate"])
        .env("KHEISH_MASTER_KEY_FILE", &key_file)
        .run()
        .success();
    assert!(!sandbox.state_root().join("master.key").exists());
    // The same key given inline reads what the file-keyed run wrote.
    sandbox
        .cmd()
        .args(["rotate-secret", REF, "--stdin"])
        .env("KHEISH_MASTER_KEY", KEY_A)
        .stdin("x-value")
        .run()
        .success();
    assert_eq!(current(&sandbox, REF), "x-value");
}

#[test]
fn a_different_master_key_is_refused_clearly() {
    let sandbox = Sandbox::new();
    sandbox
        .cmd()
        .args(["rotate-secret", REF, "--stdin"])
        .env("KHEISH_MASTER_KEY", KEY_A)
        .stdin("first-value-c0ffee")
        .run()
        .success();
    sandbox
        .cmd()
        .args(["rotate-secret", REF, "--stdin"])
        .env("KHEISH_MASTER_KEY", KEY_B)
        .stdin("second-value-c0ffee")
        .run()
        .status(4)
        .stderr_contains("the secret store was written with a different master key; set KHEISH_MASTER_KEY or KHEISH_MASTER_KEY_FILE to the key used before")
        .never_shows(KEY_A)
        .never_shows(KEY_B)
        .never_shows("first-value-c0ffee")
        .never_shows("second-value-c0ffee");
    // Nothing was written under the wrong key.
    assert_eq!(current(&sandbox, REF), "first-value-c0ffee");

    // Without any key, a write refuses to mint a new one over existing values.
    sandbox
        .cmd()
        .args(["rotate-secret", REF, "--generate"])
        .run()
        .status(4)
        .stderr_contains("no master key is available");
    assert!(!sandbox.state_root().join("master.key").exists());
}

#[test]
fn malformed_master_keys_are_named_never_echoed() {
    let sandbox = Sandbox::new();
    let bad = "this-is-not*base64*but-could-be-a-real-key";
    sandbox
        .cmd()
        .args(["rotate-secret", REF, "--generate"])
        .env("KHEISH_MASTER_KEY", bad)
        .run()
        .status(4)
        .stderr_contains("`KHEISH_MASTER_KEY`")
        .stderr_contains("not valid base64")
        .never_shows(bad);
    let short = "c2hvcnQtYnV0LXZhbGlkLWJhc2U2NA==";
    sandbox
        .cmd()
        .args(["rotate-secret", REF, "--generate"])
        .env("KHEISH_MASTER_KEY", short)
        .run()
        .status(4)
        .stderr_contains("the master key must be exactly 32 bytes")
        .never_shows(short);
    let key_file = sandbox.write("bad.key", "%%%%\n");
    sandbox
        .cmd()
        .args(["rotate-secret", REF, "--generate"])
        .env("KHEISH_MASTER_KEY_FILE", &key_file)
        .run()
        .status(4)
        .stderr_contains("`KHEISH_MASTER_KEY_FILE`")
        .stderr_contains("bad.key")
        .never_shows("%%%%");
}

/// `put-external NAME` of a remote_http connector on `sandbox`'s state root (key `KEY_A`).
fn daemon_managed(sandbox: &Sandbox, name: &str, token: &str) {
    sandbox
        .cmd()
        .env("KHEISH_MASTER_KEY", KEY_A)
        .args(["put-external", name, "--platform", "discord"])
        .args(["--base-url", "https://sidecar.example.com"])
        .args(["--shared-token-stdin"])
        .stdin(token)
        .run()
        .success()
        .never_shows(token);
}

/// The stored view of external connector `name` (a flagless dry run prints it).
fn external_view(sandbox: &Sandbox, name: &str) -> serde_json::Value {
    let run = sandbox
        .cmd()
        .env("KHEISH_MASTER_KEY", KEY_A)
        .args(["--json", "put-external", name, "--dry-run"])
        .run();
    run.success();
    run.json()["connector"]["connector"].clone()
}

#[test]
fn connector_rotation_rebinds_the_default_ref_with_grace() {
    let sandbox = Sandbox::new();
    let old = "planted-old-token-51f0";
    let new = "planted-new-token-0a8e";
    daemon_managed(&sandbox, "chat", old);
    let default_ref = "connectors.external.chat.shared_token";

    // REF omitted: the default ref; the previous value is kept for the grace window, in the
    // same transaction as the re-binding.
    let run = sandbox
        .cmd()
        .env("KHEISH_MASTER_KEY", KEY_A)
        .env("NEW_TOKEN", new)
        .args(["--json", "rotate-secret", "--connector", "external/chat"])
        .args([
            "--field",
            "shared_token",
            "--from-env",
            "NEW_TOKEN",
            "--grace",
            "10m",
        ])
        .run();
    run.success().never_shows(old).never_shows(new);
    let doc = run.json();
    assert_eq!(doc["secret_ref"], default_ref);
    assert_eq!(doc["previous_kept"], true);
    assert_eq!(doc["connector"], "external/chat");
    assert_eq!(doc["field"], "shared_token");
    assert!(doc["grace_until"].is_string(), "{doc}");
    let db = StateDb::open(&sandbox.state_root());
    assert_eq!(
        db.secret_value(KEY_A, default_ref, Slot::Current)
            .as_deref(),
        Some(new)
    );
    assert_eq!(
        db.secret_value(KEY_A, default_ref, Slot::Previous)
            .as_deref(),
        Some(old)
    );
    let rotations = db.secret_rotations(default_ref);
    assert_eq!(rotations.len(), 2, "{rotations:?}");
    assert!(
        rotations[1].0.is_some() && rotations[1].1 == "env",
        "{rotations:?}"
    );

    // An explicit REF: the connector is re-bound to it; --generate prints the value once.
    let run = sandbox
        .cmd()
        .env("KHEISH_MASTER_KEY", KEY_A)
        .args([
            "rotate-secret",
            "chat.shared",
            "--connector",
            "external/chat",
        ])
        .args(["--field", "shared_token", "--generate"])
        .run();
    run.success()
        .stderr_contains("external/chat.shared_token now uses secret slot chat.shared")
        .never_shows(new);
    let generated = run.stdout().trim().to_string();
    assert_eq!(
        db.secret_value(KEY_A, "chat.shared", Slot::Current),
        Some(generated)
    );
    assert_eq!(
        external_view(&sandbox, "chat")["shared_token"],
        serde_json::json!({"configured": true, "source": "secret_ref", "secret_ref": "chat.shared"})
    );
}

#[test]
fn connector_rotation_refusals() {
    let sandbox = Sandbox::new();
    let token = "planted-token-c3d4";
    daemon_managed(&sandbox, "chat", token);
    let file = sandbox.write(
        "connectors.toml",
        "[[http_connectors]]\nname = \"orders\"\nbearer_token_secret_ref = \"orders.bearer\"\n",
    );
    // A file-backed connector: edit the file (exit 1), nothing written.
    sandbox
        .cmd()
        .arg("--connectors-config")
        .arg(&file)
        .args([
            "rotate-secret",
            "--connector",
            "http/orders",
            "--field",
            "bearer_token",
        ])
        .arg("--generate")
        .run()
        .status(1)
        .stderr_contains("`http/orders` is a file-backed connector")
        .stdout_is("");
    // Unknown: not created here.
    sandbox
        .cmd()
        .args([
            "rotate-secret",
            "--connector",
            "external/nope",
            "--field",
            "shared_token",
        ])
        .arg("--generate")
        .run()
        .status(1)
        .stderr_contains("no daemon-managed connector `external/nope`")
        .stdout_is("");
    // FIELD must be a secret field of the kind; --field needs --connector; REF or --connector.
    sandbox
        .cmd()
        .args([
            "rotate-secret",
            "--connector",
            "external/chat",
            "--field",
            "base_url",
        ])
        .arg("--generate")
        .run()
        .status(2)
        .stderr_contains("use one of: shared_token");
    sandbox
        .cmd()
        .args([
            "rotate-secret",
            "--connector",
            "external/chat",
            "--generate",
        ])
        .run()
        .status(2);
    sandbox
        .cmd()
        .args(["rotate-secret", "--field", "shared_token", "--generate"])
        .run()
        .status(2);
    sandbox
        .cmd()
        .args(["rotate-secret", "--generate"])
        .run()
        .status(2);
    let db = StateDb::open(&sandbox.state_root());
    assert_eq!(db.count("secret_slots"), 1, "only the first token exists");
    assert_eq!(
        db.secret_value(
            KEY_A,
            "connectors.external.chat.shared_token",
            Slot::Current
        )
        .as_deref(),
        Some(token)
    );
}
