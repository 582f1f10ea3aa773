//! Freshness of the generated files (STYLE §6): every file under `completions/` and `man/` must
//! be exactly what `kheishctl::gen::render_all()` renders from the clap definition now, with no
//! missing and no extra file. With `KHEISHCTL_UPDATE_GENERATED=1` the test rewrites the
//! directories instead and passes; CI never sets it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::support::{files_under, repo_root, Sandbox};

const UPDATE_VAR: &str = "KHEISHCTL_UPDATE_GENERATED";
const REFRESH_COMMAND: &str = "KHEISHCTL_UPDATE_GENERATED=1 cargo test --test it generated_files";

#[test]
fn generated_files_are_fresh() {
    let root = repo_root();
    let expected: BTreeMap<PathBuf, Vec<u8>> = kheishctl::gen::render_all().into_iter().collect();
    let dirs = [kheishctl::gen::COMPLETIONS_DIR, kheishctl::gen::MAN_DIR];
    let mut actual: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
    // A missing directory holds no files (update mode creates it).
    for dir in dirs.map(|d| root.join(d)).iter().filter(|d| d.exists()) {
        for path in files_under(dir) {
            let relative = path.strip_prefix(&root).unwrap().to_path_buf();
            actual.insert(relative, read(&path));
        }
    }

    if update_mode() {
        for path in actual.keys().filter(|p| !expected.contains_key(*p)) {
            std::fs::remove_file(root.join(path))
                .unwrap_or_else(|e| panic!("removing {}: {e}", path.display()));
        }
        for (path, bytes) in &expected {
            if actual.get(path) != Some(bytes) {
                let full = root.join(path);
                std::fs::create_dir_all(full.parent().expect("generated files live in a dir"))
                    .unwrap_or_else(|e| panic!("creating the dir of {}: {e}", path.display()));
                std::fs::write(&full, bytes)
                    .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            }
        }
        return;
    }

    let mut problems = Vec::new();
    for (path, bytes) in &expected {
        match actual.get(path) {
            None => problems.push(format!("missing: {}", path.display())),
            Some(on_disk) if on_disk != bytes => {
                problems.push(format!("stale:   {}", path.display()))
            }
            Some(_) => {}
        }
    }
    for path in actual.keys().filter(|p| !expected.contains_key(*p)) {
        problems.push(format!(
            "extra:   {} (not rendered by gen.rs)",
            path.display()
        ));
    }
    assert!(
        problems.is_empty(),
        "the generated files do not match the CLI definition in src/cli.rs:\n  {}\n\n\
refresh them with:\n  {REFRESH_COMMAND}\n",
        problems.join("\n  ")
    );
}

#[test]
fn completions_command_prints_the_checked_in_script() {
    let sandbox = Sandbox::new();
    for (shell, file) in [
        ("bash", "kheishctl.bash"),
        ("zsh", "_kheishctl"),
        ("fish", "kheishctl.fish"),
    ] {
        let checked_in = checked_in(&Path::new("completions").join(file));
        let run = sandbox.cmd().args(["completions", shell]).run();
        run.success();
        if run.output.stdout != checked_in {
            run.fail(&format!(
                "`kheishctl completions {shell}` differs from completions/{file}; run: {REFRESH_COMMAND}"
            ));
        }
    }
}

#[test]
fn man_command_prints_the_checked_in_pages() {
    let sandbox = Sandbox::new();
    for (args, file) in [
        (&["man"][..], "kheishctl.1"),
        (&["man", "sign"][..], "kheishctl-sign.1"),
    ] {
        let checked_in = checked_in(&Path::new("man").join(file));
        let run = sandbox.cmd().args(args).run();
        run.success();
        if run.output.stdout != checked_in {
            run.fail(&format!(
                "`kheishctl {}` differs from man/{file}",
                args.join(" ")
            ));
        }
    }
}

#[test]
fn man_for_an_unknown_subcommand_lists_the_valid_ones() {
    let sandbox = Sandbox::new();
    sandbox
        .cmd()
        .args(["man", "frobnicate"])
        .run()
        .status(1)
        .stdout_is("")
        .stderr_contains("no man page for `frobnicate`")
        .stderr_contains("sign");
}

/// The checked-in bytes of a generated file. While the files are being rewritten (update mode,
/// possibly concurrently with this read) the rendered bytes stand in for them.
fn checked_in(relative: &Path) -> Vec<u8> {
    if update_mode() {
        let rendered = kheishctl::gen::render_all()
            .into_iter()
            .find(|(p, _)| p == relative);
        return rendered
            .unwrap_or_else(|| panic!("gen.rs renders no {}", relative.display()))
            .1;
    }
    read(&repo_root().join(relative))
}

fn update_mode() -> bool {
    std::env::var_os(UPDATE_VAR).is_some_and(|v| v == "1")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}
