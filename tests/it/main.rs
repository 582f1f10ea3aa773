//! The one integration-test binary: every test runs the real `kheishctl` binary.

mod support;

/// `validate`: every diagnostic shape, exit codes, `--json`, online secret checks.
mod cli_validate;
/// `sign`: the fixed vectors, formats, secret sources, `--verify`.
mod cli_sign;
/// `rotate-secret`: sources, grace, generated values, nothing secret printed.
mod cli_rotate_secret;
/// The state root: permissions, migrations, newer-schema refusal, concurrent opens.
mod state_root;
/// `completions/` and `man/` match what the clap definition renders.
mod generated_files;
/// Repository hygiene: module docs, no dbg!/todo!, commented dependencies.
mod tidy;
