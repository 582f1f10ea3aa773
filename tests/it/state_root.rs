//! The state root (SPEC §3) through the real binary: created 0700 with a 0600 database, schema
//! migrated to this binary's version, a newer schema refused with exit 4 and left byte-for-byte
//! unchanged, unusable roots and corrupt databases exit 4, and several processes opening a fresh
//! root at once all succeed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use kheishctl::store::migrations::SUPPORTED_VERSION;

use crate::support::db::{set_user_version, Slot, StateDb};
use crate::support::{file_mode, Run, Sandbox, MASTER_KEY as KEY};

/// `rotate-secret a.b --generate` with the test master key: the one write these tests make,
/// on `--state-root STATE_ROOT` when given, else on the sandbox's.
fn generate(sandbox: &Sandbox, state_root: Option<&Path>) -> Run {
    let mut cmd = sandbox.cmd();
    if let Some(root) = state_root {
        cmd.arg("--state-root").arg(root);
    }
    cmd.args(["rotate-secret", "a.b", "--generate"])
        .env("KHEISH_MASTER_KEY", KEY)
        .run()
}

/// Runs one successful write so the state root exists.
fn write_one(sandbox: &Sandbox) {
    generate(sandbox, None).success();
}

#[test]
fn a_write_creates_a_private_root_with_a_migrated_wal_database() {
    let sandbox = Sandbox::new();
    // Nested and missing: parents are created too, the root itself 0700.
    let root = sandbox.path().join("deep/er/state");
    generate(&sandbox, Some(&root)).success();
    assert_eq!(file_mode(&root), 0o700);
    assert_eq!(file_mode(&root.join("state.db")), 0o600);
    assert_eq!(
        StateDb::open(&root).pragma("user_version"),
        SUPPORTED_VERSION.to_string()
    );
    // WAL is recorded in the file header, so a fresh connection sees it.
    assert_eq!(StateDb::open(&root).pragma("journal_mode"), "wal");
}

#[test]
fn an_existing_root_keeps_the_operators_mode() {
    let sandbox = Sandbox::new();
    let root = sandbox.state_root();
    fs::create_dir(&root).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o750)).unwrap();
    write_one(&sandbox);
    assert_eq!(file_mode(&root), 0o750);
    assert_eq!(file_mode(&root.join("state.db")), 0o600);
}

#[test]
fn nothing_secret_is_stored_in_plain_text() {
    let sandbox = Sandbox::new();
    let planted = "plain-text-marker-3b8e9d";
    sandbox
        .cmd()
        .args(["rotate-secret", "a.b", "--from-env", "V"])
        .env("V", planted)
        .run()
        .success();
    for entry in fs::read_dir(sandbox.state_root()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = fs::read(&path).unwrap();
        assert!(
            !bytes
                .windows(planted.len())
                .any(|w| w == planted.as_bytes()),
            "{} holds the value in plain text",
            path.display()
        );
    }
}

#[test]
fn a_newer_schema_exits_4_and_is_not_modified() {
    let sandbox = Sandbox::new();
    let root = sandbox.state_root();
    write_one(&sandbox);
    set_user_version(&root, SUPPORTED_VERSION + 7);
    let snapshot = |root: &Path| -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(root)
            .unwrap()
            .map(|e| {
                let path = e.unwrap().path();
                (
                    path.file_name().unwrap().to_string_lossy().into_owned(),
                    fs::read(&path).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let before = snapshot(&root);
    generate(&sandbox, None)
        .status(4)
        .stderr_contains(&format!(
            "has schema version {}, newer than this kheishctl supports ({SUPPORTED_VERSION}); upgrade kheishctl",
            SUPPORTED_VERSION + 7
        ));
    assert_eq!(
        fs::read(root.join("state.db")).unwrap(),
        before
            .iter()
            .find(|(name, _)| name == "state.db")
            .unwrap()
            .1,
        "state.db bytes changed"
    );
    assert_eq!(snapshot(&root), before, "the state root changed");
}

#[test]
fn a_corrupt_database_exits_4() {
    let sandbox = Sandbox::new();
    let root = sandbox.state_root();
    fs::create_dir(&root).unwrap();
    let junk = "definitely not an SQLite database header, just text\n".repeat(40);
    fs::write(root.join("state.db"), &junk).unwrap();
    generate(&sandbox, None)
        .status(4)
        .stderr_contains("is not a valid SQLite database");
    assert_eq!(fs::read_to_string(root.join("state.db")).unwrap(), junk);
}

#[test]
fn a_root_that_is_a_file_exits_4() {
    let sandbox = Sandbox::new();
    let file = sandbox.write("plain-file", "x");
    sandbox
        .cmd()
        .arg("--state-root")
        .arg(&file)
        .args(["rotate-secret", "a.b", "--generate"])
        .run()
        .status(4)
        .stderr_contains("is not a directory");
    // A path under a regular file fails with ENOTDIR, which also stops root.
    sandbox
        .cmd()
        .arg("--state-root")
        .arg(file.join("state"))
        .args(["rotate-secret", "a.b", "--generate"])
        .run()
        .status(4)
        .stderr_contains("cannot access the state root");
    assert_eq!(fs::read_to_string(&file).unwrap(), "x");
}

#[test]
fn an_unreadable_root_exits_4() {
    let sandbox = Sandbox::new();
    let root = sandbox.state_root();
    write_one(&sandbox);
    fs::set_permissions(&root, fs::Permissions::from_mode(0o000)).unwrap();
    // root (CAP_DAC_OVERRIDE) ignores the mode bits; then there is nothing to deny, and the
    // path-under-a-file case above covers exit 4 for every user.
    let enforced = fs::read_dir(&root).is_err();
    let run = generate(&sandbox, None);
    fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
    if enforced {
        run.status(4).stderr_contains("state");
    } else {
        run.success();
    }
}

#[test]
fn concurrent_processes_on_a_fresh_root_all_succeed() {
    let sandbox = Sandbox::new();
    let n_procs = 8;
    // No KHEISH_MASTER_KEY: they also race to generate master.key, and must agree on one.
    let runs: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n_procs)
            .map(|idx| {
                let sandbox = &sandbox;
                scope.spawn(move || {
                    sandbox
                        .cmd()
                        .args(["rotate-secret", &format!("slot.n{idx}"), "--from-env", "V"])
                        .env("V", format!("value-{idx}"))
                        .run()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for run in &runs {
        run.success();
    }
    let root = sandbox.state_root();
    assert_eq!(
        StateDb::open(&root).pragma("user_version"),
        SUPPORTED_VERSION.to_string()
    );
    let db = StateDb::open(&root);
    assert_eq!(db.count("secret_slots"), n_procs);
    assert_eq!(db.count("secret_rotations"), n_procs);
    assert_eq!(db.count("store_meta"), 1);

    // Every slot decrypts with the one master key that won the race.
    let key = fs::read_to_string(root.join("master.key")).unwrap();
    for idx in 0..n_procs {
        let value = db.secret_value(key.trim(), &format!("slot.n{idx}"), Slot::Current);
        assert_eq!(value.as_deref(), Some(format!("value-{idx}").as_str()));
    }
}
