//! The one integration-test binary: every test runs the real `kheishctl` binary.

mod support;

/// `rotate-secret`: sources, grace, generated values, nothing secret printed.
mod cli_rotate_secret;
/// `sign`: the fixed vectors, formats, secret sources, `--verify`.
mod cli_sign;
/// `validate`: every diagnostic shape, exit codes, `--json`, online secret checks.
mod cli_validate;
/// Delivery: queue, http transport, outbound guard, dead letters, replay, drain, crash.
mod delivery;
/// `completions/` and `man/` match what the clap definition renders.
mod generated_files;
/// `serve` with HTTP ingress: auth, payload rules, receipts, sessions, malformed input, crash.
mod serve_ingress;
/// `inspect-receipts`, `GET /v1/receipts`, `/metrics`, retention.
mod serve_observe;
/// Runs: claim/output/complete/fail, echo and exec handlers, sessions on the control plane.
mod serve_runs;
/// The state root: permissions, migrations, newer-schema refusal, concurrent opens.
mod state_root;
/// Repository hygiene: module docs, no dbg!/todo!, commented dependencies.
mod tidy;
