//! `docs/json-output.md` against the real binary: every `members of `NAME`: …` line there is the
//! documented member list of one `--json` shape, and each is checked here against real output
//! (required members present, nothing undocumented), so the document cannot drift from the code.
//! Every documented shape must be checked, and every subcommand with a `--json` document must be
//! documented.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::ingress::ingest;
use crate::support::receiver::{Answer, Receiver};
use crate::support::wait::wait_until;
use crate::support::{fixture, repo_root, Run, Sandbox, MASTER_KEY};

/// Documented members of each shape: `(required, optional)`.
type Shapes = BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>;

/// Reads every `members of `NAME`: `a`, `b?`` line of docs/json-output.md.
fn documented() -> Shapes {
    let text = std::fs::read_to_string(repo_root().join("docs/json-output.md")).unwrap();
    let mut shapes = Shapes::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("members of `") else {
            continue;
        };
        let (name, list) = rest.split_once("`: ").unwrap_or_else(|| panic!("{line}"));
        let (mut required, mut optional) = (BTreeSet::new(), BTreeSet::new());
        for item in list.split(", ") {
            let member = item
                .strip_prefix('`')
                .and_then(|m| m.strip_suffix('`'))
                .unwrap_or_else(|| panic!("not a `member`: {item:?} in {line}"));
            match member.strip_suffix('?') {
                Some(m) => optional.insert(m.to_string()),
                None => required.insert(member.to_string()),
            };
        }
        let previous = shapes.insert(name.to_string(), (required, optional));
        assert!(previous.is_none(), "`{name}` is documented twice");
    }
    shapes
}

/// Collects what was checked, so the test can tell which documented shapes it never saw.
struct Checker {
    shapes: Shapes,
    checked: BTreeSet<String>,
}

impl Checker {
    /// `value` is an object with every required member of `name` and only documented ones.
    fn check(&mut self, name: &str, value: &Value) {
        let (required, optional) = self
            .shapes
            .get(name)
            .unwrap_or_else(|| panic!("`{name}` is not documented in docs/json-output.md"));
        let keys: BTreeSet<String> = value
            .as_object()
            .unwrap_or_else(|| panic!("`{name}` is not an object: {value}"))
            .keys()
            .cloned()
            .collect();
        let missing: Vec<&String> = required.difference(&keys).collect();
        assert!(missing.is_empty(), "`{name}` lacks {missing:?}: {value}");
        let undocumented: Vec<&String> = keys
            .iter()
            .filter(|k| !required.contains(*k) && !optional.contains(*k))
            .collect();
        assert!(
            undocumented.is_empty(),
            "`{name}` has undocumented members {undocumented:?}: {value}"
        );
        self.checked.insert(name.to_string());
    }
}

fn config(target: &str) -> String {
    format!(
        r#"
[[http_connectors]]
name = "orders"
allow_unauthenticated_ingress = true
default_binding_keys = ["orders"]
ingress_events_per_second = 1000
default_reply_targets = [{{ plugin = "http", address = '{target}' }}]
[http_connectors.session_policy]
create_if_missing = true
"#
    )
}

fn json_run(sandbox: &Sandbox, args: &[&str], code: i32) -> Value {
    let run: Run = sandbox
        .cmd()
        .arg("--json")
        .args(args)
        .env("KHEISH_MASTER_KEY", MASTER_KEY)
        .env("SIGN_SECRET", "json-output-secret")
        .run();
    run.status(code);
    run.json()
}

#[test]
fn every_documented_json_shape_matches_the_real_output() {
    let mut c = Checker {
        shapes: documented(),
        checked: BTreeSet::new(),
    };
    for command in [
        "serve",
        "validate",
        "sign",
        "rotate-secret",
        "put-external",
        "inspect-receipts",
        "replay",
        "drain-deliveries",
    ] {
        assert!(
            c.shapes.contains_key(command),
            "`{command}` is not documented"
        );
    }

    // serve, drain-deliveries, inspect-receipts, replay: one dead letter.
    let receiver = Receiver::start();
    receiver.set_default(Answer::Status(400));
    let sandbox = Sandbox::new();
    let daemon = Daemon::builder(&sandbox)
        .config(&config(&receiver.address("/hook")))
        .args(&["--handler", "echo", "--delivery-workers", "0"])
        .start();
    c.check("serve", &daemon.ready);
    let run_id = ingest(&daemon, "hello", "json-1");
    wait_until("the run's delivery", Duration::from_secs(30), || {
        let list = daemon.admin("GET", &format!("/v1/deliveries?run={run_id}"), None);
        let n = list.json()["deliveries"].as_array().map_or(0, Vec::len);
        if n == 1 {
            Ok(())
        } else {
            Err(list.text())
        }
    });
    let drained = json_run(&sandbox, &["drain-deliveries"], 1);
    assert_eq!(drained["dead_lettered"], 1, "{drained}");
    c.check("drain-deliveries", &drained);
    let receipts = json_run(&sandbox, &["inspect-receipts"], 0);
    c.check("inspect-receipts", &receipts);
    c.check("receipt", &receipts["receipts"][0]);
    let dry = json_run(&sandbox, &["replay", "--all", "--dry-run"], 0);
    c.check("replay", &dry);
    assert_eq!(dry["items"][0]["result"], "would_replay", "{dry}");
    c.check("replay item", &dry["items"][0]);
    let replayed = json_run(&sandbox, &["replay", "--all"], 0);
    assert_eq!(replayed["items"][0]["result"], "replayed", "{replayed}");
    c.check("replay item", &replayed["items"][0]);

    // validate: a valid file, and one with a problem.
    let valid = json_run(&sandbox, &["validate", "--offline", "connectors.toml"], 0);
    c.check("validate", &valid);
    let bad = fixture("max_age_zero.toml");
    let invalid = json_run(
        &sandbox,
        &["validate", "--offline", bad.to_str().unwrap()],
        1,
    );
    c.check("validate", &invalid);
    c.check("diagnostic", &invalid["diagnostics"][0]);

    // sign, and sign --verify both ways.
    let body = sandbox.write("body.json", "{}");
    let body = body.to_str().unwrap();
    let sign = [
        "sign",
        "--secret-env",
        "SIGN_SECRET",
        "--path",
        "/v1/connectors/http/orders",
        "--timestamp",
        "1710000000",
        "--body",
        body,
    ];
    let signed = json_run(&sandbox, &sign, 0);
    c.check("sign", &signed);
    let signature = signed["signature"].as_str().unwrap();
    let good = json_run(&sandbox, &[&sign[..], &["--verify", signature]].concat(), 0);
    assert_eq!(good["valid"], true, "{good}");
    c.check("sign --verify", &good);
    let wrong = format!("v1={}", "0".repeat(64));
    let bad = json_run(&sandbox, &[&sign[..], &["--verify", &wrong]].concat(), 1);
    assert_eq!(bad["valid"], false, "{bad}");
    c.check("sign --verify", &bad);
    drop(daemon);

    // rotate-secret and put-external on a state root of their own.
    let store = Sandbox::new();
    let rotated = json_run(&store, &["rotate-secret", "json.slot", "--generate"], 0);
    c.check("rotate-secret", &rotated);
    let put = [
        "put-external",
        "chat",
        "--platform",
        "discord",
        "--base-url",
        "http://127.0.0.1:9",
        "--allow-private-network",
        "true",
        "--allow-unauthenticated-ingress",
        "true",
    ];
    let created = json_run(&store, &put, 0);
    c.check("put-external", &created);
    c.check("put-external connector", &created["connector"]);
    let changed = json_run(
        &store,
        &["put-external", "chat", "--base-url", "http://127.0.0.1:10"],
        0,
    );
    c.check("put-external change", &changed["changes"][0]);
    let refused = json_run(
        &store,
        &["put-external", "chat", "--base-url", "ftp://example.com"],
        1,
    );
    assert_eq!(refused["valid"], false, "{refused}");
    c.check("put-external (invalid)", &refused);
    c.check("diagnostic", &refused["diagnostics"][0]);

    let unchecked: Vec<&String> = c
        .shapes
        .keys()
        .filter(|name| !c.checked.contains(*name))
        .collect();
    assert!(
        unchecked.is_empty(),
        "documented but not checked here: {unchecked:?}"
    );
}
