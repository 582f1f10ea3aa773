//! Dynamic shell completion (`COMPLETE=<shell> kheishctl`, SPEC §1.3): the real shells (bash,
//! zsh, fish) source the script the binary prints and complete live names from the connector
//! file and the state root; nothing secret is offered, nothing is written, and a missing or
//! locked state root offers nothing instead of failing.
//!
//! bash, zsh and fish must be installed (`.ci/run` installs zsh and fish when missing). elvish
//! and PowerShell are not on the test machine: their registration scripts are checked, and
//! their candidates through the same protocol call their scripts make.

use std::path::Path;
use std::process::Command;

use crate::delivery::dead_letters;
use crate::support::{bin, Sandbox};

/// Runs `shell -c script` with a clean environment whose PATH finds `kheishctl` first.
fn shell(shell: &str, dir: &Path, script: &str) -> (i32, String, String) {
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let link = bin_dir.join("kheishctl");
    if !link.exists() {
        std::os::unix::fs::symlink(bin(), &link).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(shell)
        .arg("-c")
        .arg(script)
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join(".config"))
        .env("XDG_DATA_HOME", dir.join(".data"))
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `{shell}` ({e}); install it (apt-get install zsh fish)")
        });
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The candidates bash offers for `words` (the last one being completed).
fn bash(dir: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let script = format!(
        "source <(COMPLETE=bash kheishctl)\n\
         COMP_WORDS=({words})\n\
         COMP_CWORD={cword}\n\
         COMP_TYPE=9\n\
         _clap_complete_kheishctl kheishctl '{cur}' '{prev}'\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        words = quoted.join(" "),
        cword = words.len() - 1,
        cur = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    let (code, stdout, stderr) = shell("bash", dir, &script);
    assert_eq!(code, 0, "bash failed: {stderr}");
    stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// `(value, description)` pairs fish offers for the command line `line`.
fn fish(dir: &Path, line: &str) -> Vec<(String, String)> {
    let script = format!("COMPLETE=fish kheishctl | source; complete -C '{line}'");
    let (code, stdout, stderr) = shell("fish", dir, &script);
    assert_eq!(code, 0, "fish failed: {stderr}");
    stdout
        .lines()
        .map(|l| match l.split_once('\t') {
            Some((v, d)) => (v.to_string(), d.to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// The `value:description` entries zsh's completer hands to `_describe` for `words`.
fn zsh(dir: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    // The completion system is not loaded in `zsh -c`: `compdef` is recorded and `_describe`
    // prints the array it is given, so the real generated function runs unchanged.
    let script = format!(
        "compdef() {{ : }}\n\
         _describe() {{ local name=${{@[-1]}}; print -l -- ${{(P)name}} }}\n\
         source <(COMPLETE=zsh kheishctl)\n\
         words=({words})\n\
         CURRENT={current}\n\
         _clap_dynamic_completer_kheishctl\n",
        words = quoted.join(" "),
        current = words.len(),
    );
    let (code, stdout, stderr) = shell("zsh", dir, &script);
    assert_eq!(code, 0, "zsh failed: {stderr}");
    stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

const CONFIG: &str = r#"
[[http_connectors]]
name = "orders"
bearer_token_secret_ref = "connectors.http.orders.bearer"

[[http_connectors]]
name = "billing"
allow_unauthenticated_ingress = true

[[external_connectors]]
name = "chat"
platform = "discord"
base_url = "https://sidecar.example.com"
allow_unauthenticated_ingress = true
"#;

#[test]
fn bash_zsh_and_fish_complete_live_names_from_the_file_and_the_state_root() {
    let (_receiver, gw, ids) = dead_letters(2);
    let dir = gw.sandbox.path();
    gw.sandbox.store_secret(
        "connectors.http.orders.bearer",
        "planted-completion-secret\n",
    );
    let config = gw.sandbox.write("complete.toml", CONFIG);
    let root = gw.sandbox.state_root();
    let (root, config) = (root.to_str().unwrap(), config.to_str().unwrap());

    // Connectors of every kind from the file named on the command line.
    let offered = bash(
        dir,
        &[
            "kheishctl",
            "--connectors-config",
            config,
            "replay",
            "--connector",
            "",
        ],
    );
    assert_eq!(
        offered,
        ["external/chat", "http/billing", "http/orders"],
        "{offered:?}"
    );
    // `sign --connector` takes an HTTP connector NAME.
    let offered = bash(
        dir,
        &[
            "kheishctl",
            "--connectors-config",
            config,
            "sign",
            "--connector",
            "o",
        ],
    );
    assert_eq!(offered, ["orders"]);
    // Plugins.
    let offered = bash(dir, &["kheishctl", "drain-deliveries", "--plugin", "t"]);
    assert_eq!(offered, ["telegram"]);
    // Unresolved dead letters of the state root named by --state-root.
    let mut offered = bash(dir, &["kheishctl", "--state-root", root, "replay", ""]);
    offered.retain(|v| v.starts_with("dlv"));
    let mut expected = ids.clone();
    expected.sort();
    offered.sort();
    assert_eq!(offered, expected);
    // Secret refs (names only) for rotate-secret, from the store and the file.
    let offered = bash(
        dir,
        &[
            "kheishctl",
            "--state-root",
            root,
            "--connectors-config",
            config,
            "rotate-secret",
            "conn",
        ],
    );
    assert_eq!(offered, ["connectors.http.orders.bearer"]);
    // Recent runs for inspect-receipts --run.
    let offered = bash(
        dir,
        &[
            "kheishctl",
            "--state-root",
            root,
            "inspect-receipts",
            "--run",
            "",
        ],
    );
    assert!(offered.len() >= 2, "{offered:?}");

    // fish shows the dead letters with a description: redacted target and error code.
    let offered = fish(dir, &format!("kheishctl --state-root {root} replay dlv"));
    assert_eq!(offered.len(), 2, "{offered:?}");
    for (value, about) in &offered {
        assert!(ids.contains(value), "{value}");
        assert!(
            about.contains("http") && about.contains("http_status_400"),
            "{about}"
        );
        assert!(!about.contains("/sink"), "a path is never shown: {about}");
    }
    // zsh through its generated function.
    let offered = zsh(
        dir,
        &[
            "kheishctl",
            "--connectors-config",
            config,
            "replay",
            "--connector",
            "http/",
        ],
    );
    assert_eq!(
        offered,
        ["http/billing:connector file", "http/orders:connector file"]
    );

    // Nothing anywhere shows the stored secret value.
    for words in [
        vec!["kheishctl", "--state-root", root, "rotate-secret", ""],
        vec!["kheishctl", "--state-root", root, "replay", ""],
    ] {
        for line in bash(dir, &words) {
            assert!(!line.contains("planted-completion-secret"), "{line}");
        }
    }
}

#[test]
fn a_missing_or_locked_state_root_offers_nothing_and_writes_nothing() {
    let sandbox = Sandbox::new();
    let missing = sandbox.path().join("no-root");
    let missing_s = missing.to_str().unwrap();
    let offered = bash(
        sandbox.path(),
        &["kheishctl", "--state-root", missing_s, "replay", ""],
    );
    assert!(offered.iter().all(|v| v.starts_with('-')), "{offered:?}");
    assert!(!missing.exists(), "completion created the state root");

    // A state root whose database another process holds exclusively.
    sandbox.store_secret("a.b", "value\n");
    let db = sandbox.state_root().join("state.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; CREATE TABLE lock_holder (x);",
    )
    .unwrap();
    let root = sandbox.state_root();
    let words = [
        "kheishctl",
        "--state-root",
        root.to_str().unwrap(),
        "rotate-secret",
        "a",
    ];
    let offered = bash(sandbox.path(), &words);
    assert!(offered.is_empty(), "{offered:?}");
    drop(conn);
    let offered = bash(sandbox.path(), &words);
    assert_eq!(offered, ["a.b"]);
}

#[test]
fn elvish_and_powershell_get_a_registration_script_and_candidates() {
    let sandbox = Sandbox::new();
    let config = sandbox.write("c.toml", CONFIG);
    for (shell_name, needle) in [
        ("elvish", "edit:completion"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = Command::new(bin())
            .env("COMPLETE", shell_name)
            .output()
            .unwrap();
        assert!(out.status.success());
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(needle), "{shell_name}: {script}");
        // The call the script makes: the binary, `--`, then the words, the cursor at the end.
        let out = Command::new(bin())
            .env("COMPLETE", shell_name)
            .env("_CLAP_COMPLETE_INDEX", "5")
            .args(["--", "kheishctl", "--connectors-config"])
            .arg(&config)
            .args(["replay", "--connector", "http/b"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell_name}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("http/billing"), "{shell_name}: {text}");
        assert!(!text.contains("http/orders"), "{shell_name}: {text}");
    }
}

#[test]
fn daemon_managed_connectors_and_put_external_values_are_completed() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    sandbox.store_secret("chat.token", "planted-put-completion-secret\n");
    sandbox
        .cmd()
        .args(["put-external", "live", "--platform", "discord"])
        .args(["--base-url", "https://sidecar.example.com"])
        .args(["--shared-token-secret-ref", "chat.token"])
        .run()
        .success();
    let config = sandbox.write("complete.toml", CONFIG);
    let root = sandbox.state_root();
    let (root, config) = (root.to_str().unwrap(), config.to_str().unwrap());
    let base = [
        "kheishctl",
        "--state-root",
        root,
        "--connectors-config",
        config,
    ];

    // --connector: the file's connectors and the daemon-managed one, each with its source.
    let mut words = base.to_vec();
    words.extend(["rotate-secret", "--connector", "ext"]);
    let offered = zsh(dir, &words);
    assert_eq!(
        offered,
        [
            "external/chat:connector file",
            "external/live:daemon-managed"
        ]
    );
    // put-external NAME offers the daemon-managed external connectors.
    let mut words = base.to_vec();
    words.extend(["put-external", "l"]);
    assert_eq!(bash(dir, &words), ["live"]);
    // Secret refs by name for --shared-token-secret-ref and --credential-slot K=.
    let mut words = base.to_vec();
    words.extend(["put-external", "live", "--shared-token-secret-ref", "chat"]);
    assert_eq!(bash(dir, &words), ["chat.token"]);
    let mut words = base.to_vec();
    words.extend(["put-external", "live", "--credential-slot", "TOKEN=chat"]);
    let offered = bash(dir, &words);
    assert_eq!(offered, ["TOKEN=chat.token"]);
    for line in offered {
        assert!(!line.contains("planted-put-completion-secret"), "{line}");
    }
}
