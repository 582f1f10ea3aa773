//! Repository hygiene as ordinary tests (STYLE §7, rust-analyzer's `tidy.rs`): every `src/` file
//! starts with a `//!` module doc; no debugging or placeholder macros; no ignored or
//! panic-expecting tests; every to-do marker carries an issue number; every Cargo.toml
//! dependency has a comment saying why it is there; every top-level module imports only the
//! modules its row of [`ALLOWED_IMPORTS`] names (the layering of ARCHITECTURE.md, which rules
//! out import cycles); no `src/` file has more than [`MAX_LINES`] lines outside its
//! `#[cfg(test)]` module. Failures list FILE:LINE for each problem.
//!
//! The needles are assembled at run time so that this file does not trip its own checks.

use std::path::{Path, PathBuf};

use crate::support::repo_root;

/// Directories whose `.rs` files the content checks scan (those that exist).
const SCANNED_DIRS: [&str; 4] = ["src", "tests", "benches", "examples"];

#[test]
fn every_src_file_starts_with_a_module_doc() {
    let root = repo_root();
    let mut problems = Vec::new();
    for path in rust_files(&root, "src") {
        let text = read(&root.join(&path));
        if !text.starts_with("//!") {
            problems.push(format!(
                "{}:1: does not start with a `//!` doc saying what the module owns",
                path.display()
            ));
        }
    }
    report("module docs", problems);
}

#[test]
fn no_forbidden_macros_or_test_attributes() {
    let root = repo_root();
    let mut problems = Vec::new();
    for path in scanned_files(&root) {
        let text = read(&root.join(&path));
        for (line, what) in forbidden_items(&text) {
            problems.push(format!("{}:{line}: {what}", path.display()));
        }
    }
    report("forbidden macros and attributes", problems);
}

#[test]
fn todo_markers_carry_an_issue_number() {
    let root = repo_root();
    let mut problems = Vec::new();
    for path in scanned_files(&root) {
        let text = read(&root.join(&path));
        for line in untracked_todos(&text) {
            problems.push(format!(
                "{}:{line}: {} without an issue number; write {}(#N)",
                path.display(),
                todo_word(),
                todo_word()
            ));
        }
    }
    report("untracked to-do markers", problems);
}

/// Lines a `src/` file may have before its `#[cfg(test)]` module.
const MAX_LINES: usize = 800;

/// The crate's layering (ARCHITECTURE.md "Layers"): each top-level module of `src/` and the
/// modules it may name as `crate::X` outside tests and comments. A module is on a higher layer
/// than everything it names, so the table has no cycle (`layering_table_has_no_cycle`). A new
/// module needs its own row.
const ALLOWED_IMPORTS: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("notify", &[]),
    ("store", &["model"]),
    ("net", &["model"]),
    ("process", &[]),
    ("owner", &[]),
    ("cli", &["model"]),
    ("output", &["cli", "model"]),
    ("metrics", &["model"]),
    ("secrets", &["model", "store"]),
    ("config", &["model", "net", "secrets"]),
    ("registry", &["config", "model", "secrets", "store"]),
    ("leases", &["model", "secrets"]),
    ("sessions", &["config", "model", "store"]),
    (
        "delivery",
        &[
            "config", "model", "net", "notify", "output", "owner", "registry", "secrets", "store",
        ],
    ),
    (
        "ingress",
        &[
            "config", "model", "net", "registry", "secrets", "sessions", "store",
        ],
    ),
    ("views", &["delivery", "ingress", "model", "net", "store"]),
    (
        "server",
        &[
            "config", "delivery", "ingress", "leases", "metrics", "model", "net", "notify",
            "output", "registry", "secrets", "store", "views",
        ],
    ),
    (
        "daemon",
        &[
            "config", "delivery", "ingress", "leases", "metrics", "model", "net", "notify",
            "output", "owner", "process", "registry", "secrets", "server", "store", "views",
        ],
    ),
    ("gen", &["cli"]),
    ("exit", &["config", "daemon", "secrets", "store"]),
    (
        "fuzzing",
        &[
            "config", "delivery", "ingress", "model", "net", "registry", "secrets",
        ],
    ),
    (
        "commands",
        &[
            "cli", "config", "daemon", "delivery", "exit", "gen", "ingress", "model", "output",
            "registry", "secrets", "store", "views",
        ],
    ),
];

#[test]
fn modules_import_only_lower_layers() {
    let root = repo_root();
    let mut problems = Vec::new();
    for path in rust_files(&root, "src") {
        let Some(module) = top_module(&path) else {
            continue;
        };
        let Some((_, allowed)) = ALLOWED_IMPORTS.iter().find(|(m, _)| *m == module) else {
            problems.push(format!(
                "{}:1: module `{module}` has no row in ALLOWED_IMPORTS (tests/it/tidy.rs); add one",
                path.display()
            ));
            continue;
        };
        let text = read(&root.join(&path));
        for (line, used) in crate_imports(&text) {
            if used != module && !allowed.contains(&used.as_str()) {
                problems.push(format!(
                    "{}:{line}: `{module}` may not import `crate::{used}` (allowed: {})",
                    path.display(),
                    allowed.join(", ")
                ));
            }
        }
    }
    report("layering", problems);
}

#[test]
fn layering_table_has_no_cycle() {
    // Every row may name only rows above it in the table, so the graph is ordered.
    for (idx, (module, allowed)) in ALLOWED_IMPORTS.iter().enumerate() {
        for used in *allowed {
            let pos = ALLOWED_IMPORTS.iter().position(|(m, _)| m == used);
            assert!(
                pos.is_some_and(|p| p < idx),
                "`{module}` may import `{used}`, which is not on a lower row of ALLOWED_IMPORTS"
            );
        }
    }
}

#[test]
fn no_src_file_is_longer_than_the_limit_outside_its_tests() {
    let root = repo_root();
    let mut problems = Vec::new();
    for path in rust_files(&root, "src") {
        let n = code_lines(&read(&root.join(&path)));
        if n > MAX_LINES {
            problems.push(format!(
                "{}: {n} lines outside `#[cfg(test)]` (limit {MAX_LINES}); split it by responsibility",
                path.display()
            ));
        }
    }
    report("file length", problems);
}

#[test]
fn every_dependency_has_a_comment() {
    let root = repo_root();
    let text = read(&root.join("Cargo.toml"));
    let problems = undocumented_dependencies(&text)
        .into_iter()
        .map(|(line, what)| format!("Cargo.toml:{line}: {what}"))
        .collect();
    report("Cargo.toml dependency comments", problems);
}

// --- checks on text (pure, unit-tested below) ---

fn todo_word() -> String {
    ["TO", "DO"].concat()
}

/// (1-based line, description) of every forbidden macro call or test attribute in `text`.
fn forbidden_items(text: &str) -> Vec<(usize, String)> {
    let needles: Vec<(String, &str)> = vec![
        (format!("{}!(", "dbg"), "debugging output; remove it"),
        (
            format!("{}!(", "todo"),
            "placeholder; implement it or return an error",
        ),
        (
            format!("{}!(", "unimplemented"),
            "placeholder; implement it or return an error",
        ),
        (
            format!("#[{}", "ignore"),
            "ignored test; fix it or delete it",
        ),
        (
            format!("#[{}", "should_panic"),
            "panic-expecting test; assert on a Result instead",
        ),
    ];
    let mut out = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        for (needle, why) in &needles {
            if line.contains(needle.as_str()) {
                out.push((idx + 1, format!("`{needle}`: {why}")));
            }
        }
    }
    out
}

/// 1-based lines with a to-do marker not immediately followed by `(#<digits>)`.
fn untracked_todos(text: &str) -> Vec<usize> {
    let word = todo_word();
    let mut out = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let untracked = line.match_indices(word.as_str()).any(|(at, _)| {
            let rest = &line[at + word.len()..];
            let digits = rest
                .strip_prefix("(#")
                .map(|r| r.bytes().take_while(u8::is_ascii_digit).count());
            !matches!(digits, Some(n) if n > 0 && rest[2 + n..].starts_with(')'))
        });
        if untracked {
            out.push(idx + 1);
        }
    }
    out
}

/// (1-based line, description) of every dependency entry in a dependency table of `manifest`
/// without a `#` comment line directly above it. Covers `[dependencies]`, `[dev-dependencies]`,
/// `[build-dependencies]` (also under `target.*` and `workspace`), and `[dependencies.NAME]`
/// tables, whose header needs the comment.
fn undocumented_dependencies(manifest: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut previous = "";
    // Open brackets of a multi-line value: its continuation lines are not entries.
    let mut depth = 0i32;
    for (idx, line) in manifest.lines().enumerate() {
        let trimmed = line.trim();
        let documented = previous.trim_start().starts_with('#');
        if depth == 0 && trimmed.starts_with('[') {
            // `[table]` or `[[array-of-tables]]` (such as `[[bench]]`, never a dependency table).
            section = trimmed
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            if let Some((table, name)) = section.rsplit_once('.') {
                if is_dependency_section(table) && !documented {
                    out.push((idx + 1, missing_comment(name, table)));
                }
            }
        } else if depth == 0
            && is_dependency_section(&section)
            && !trimmed.is_empty()
            && !trimmed.starts_with('#')
            && !documented
        {
            let name = trimmed.split('=').next().unwrap_or_default().trim();
            out.push((idx + 1, missing_comment(name, &section)));
        }
        depth += bracket_delta(line);
        previous = line;
    }
    out
}

fn missing_comment(name: &str, section: &str) -> String {
    format!(
        "dependency `{name}` in [{section}] has no `#` comment line directly above it saying why \
it is needed"
    )
}

fn is_dependency_section(section: &str) -> bool {
    ["dependencies", "dev-dependencies", "build-dependencies"]
        .iter()
        .any(|kind| section == *kind || section.ends_with(&format!(".{kind}")))
}

/// Net `[`/`{` minus `]`/`}` on a TOML line, outside strings and comments.
fn bracket_delta(line: &str) -> i32 {
    let mut delta = 0;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in line.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                '#' => break,
                '[' | '{' => delta += 1,
                ']' | '}' => delta -= 1,
                _ => {}
            },
        }
    }
    delta
}

/// The top-level module a `src/` path belongs to (`src/store/runs.rs` -> `store`); `None` for
/// `lib.rs` and `main.rs`, which only declare and call.
fn top_module(path: &Path) -> Option<String> {
    let mut parts = path.strip_prefix("src").ok()?.components();
    let first = parts.next()?.as_os_str().to_str()?;
    let module = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(module, "lib" | "main")).then(|| module.to_string())
}

/// The text before the file's `#[cfg(test)]` module (the whole text when it has none).
fn code_part(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

fn code_lines(text: &str) -> usize {
    code_part(text).lines().count()
}

/// (1-based line, module) of every `crate::MODULE` path outside tests and comments.
fn crate_imports(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (idx, line) in code_part(text).lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((idx + 1, name));
            }
            rest = after;
        }
    }
    out
}

// --- files ---

fn report(what: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "tidy ({what}): {} problem(s):\n  {}\n",
        problems.len(),
        problems.join("\n  ")
    );
}

/// `.rs` files of every scanned directory, relative to `root`, sorted.
fn scanned_files(root: &Path) -> Vec<PathBuf> {
    SCANNED_DIRS
        .iter()
        .flat_map(|dir| rust_files(root, dir))
        .collect()
}

/// `.rs` files under `root/dir` (recursively), relative to `root`, sorted; none if it is absent.
fn rust_files(root: &Path, dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::from(dir)];
    while let Some(relative) = pending.pop() {
        let entries = match std::fs::read_dir(root.join(&relative)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("listing {}: {e}", relative.display()),
        };
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("listing {}: {e}", relative.display()));
            let path = relative.join(entry.file_name());
            if entry.path().is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// --- the checks themselves ---

fn check_forbidden(text: &str, expected_lines: &[usize]) {
    let lines: Vec<usize> = forbidden_items(text).into_iter().map(|(l, _)| l).collect();
    assert_eq!(lines, expected_lines, "{text:?}");
}

fn check_todos(text: &str, expected_lines: &[usize]) {
    assert_eq!(untracked_todos(text), expected_lines, "{text:?}");
}

fn check_manifest(text: &str, expected_lines: &[usize]) {
    let lines: Vec<usize> = undocumented_dependencies(text)
        .into_iter()
        .map(|(l, _)| l)
        .collect();
    assert_eq!(lines, expected_lines, "{text}");
}

#[test]
fn tidy_reads_crate_imports_outside_tests_and_comments() {
    let text = "//! see crate::docs\nuse crate::model::X;\nlet a = crate::store::open(); // crate::no\nuse super::y;\n#[cfg(test)]\nuse crate::late;\n";
    assert_eq!(
        crate_imports(text),
        [(2, "model".to_string()), (3, "store".to_string())]
    );
    assert_eq!(code_lines(text), 4);
    assert_eq!(
        top_module(Path::new("src/store/runs.rs")).as_deref(),
        Some("store")
    );
    assert_eq!(
        top_module(Path::new("src/views.rs")).as_deref(),
        Some("views")
    );
    assert_eq!(top_module(Path::new("src/lib.rs")), None);
}

#[test]
fn tidy_finds_forbidden_items() {
    let dbg = format!("{}!(x)", "dbg");
    let ignore = format!("#[{}]", "ignore");
    let should_panic = format!("#[{} = \"boom\"]", "should_panic");
    let unimpl = format!("{}!()", "unimplemented");
    check_forbidden("let x = 1;\nprintln!(\"dbg\");\n", &[]);
    check_forbidden(
        &format!("ok\n{dbg}\n{ignore}\n{should_panic}\n{unimpl}\n"),
        &[2, 3, 4, 5],
    );
}

#[test]
fn tidy_finds_untracked_todos() {
    let t = todo_word();
    check_todos(&format!("// {t}(#12): later\n"), &[]);
    check_todos(
        &format!("// {t}: later\n// {t}(#)\n// {t}(#1\n// {t}(#3) and {t}\n"),
        &[1, 2, 3, 4],
    );
    check_todos("// nothing to do here\n", &[]);
}

#[test]
fn tidy_checks_dependency_comments() {
    check_manifest(
        "[package]\nname = \"x\"\n\n[dependencies]\n# why\nclap = \"4\"\nserde = \"1\"\n\n\
[dev-dependencies]\n# why\ntempfile = \"3\"\n",
        &[7],
    );
    // Multi-line values are one entry; comments inside them do not count as entries.
    check_manifest(
        "[dependencies]\n# why\ntokio = { version = \"1\", features = [\n  \"rt\", # the runtime\n  \"time\",\n] }\nurl = \"2\"\n",
        &[7],
    );
    check_manifest(
        "[target.'cfg(unix)'.dependencies]\nlibc = \"0.2\"\n\n# why\n[dependencies.regex]\nversion = \"1\"\n\n[dependencies.memchr]\nversion = \"2\"\n",
        &[2, 8],
    );
    check_manifest(
        "[features]\ndefault = []\n[lints.rust]\nunsafe_code = \"forbid\"\n",
        &[],
    );
    // An array of tables ends the dependency table before it.
    check_manifest(
        "[dev-dependencies]\n# why\ntempfile = \"3\"\n\n[[bench]]\nname = \"x\"\nharness = false\n",
        &[],
    );
}
