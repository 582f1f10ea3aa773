//! The one integration-test binary: every test runs the real `kheishctl` binary.

mod support;

/// Dynamic shell completion through the real shells.
mod cli_completion;
/// `put-external`: upsert from flags and files, dry runs, refusals, a running daemon applying it.
mod cli_put_external;
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
/// docs/json-output.md: every documented `--json` shape against the real output.
mod json_output;
/// The read-only control-plane token and token-file re-reads.
mod serve_admin_tokens;
/// Claims of crashed processes released at start; live and external claims kept.
mod serve_claims;
/// The kill -9 crash test of `serve`'s HTTP ingress.
mod serve_crash;
/// Delivery to external sidecars: the `/deliver` contract, manifest cache, asset route, crash.
mod serve_external_delivery;
/// The README's external-sidecar walk-through (needs external ingress and delivery).
mod serve_external_example;
/// `serve` external sidecar ingress: `/events`, `/events/batch`, sessions, bad input.
mod serve_external_ingress;
/// `child_process` sidecars: supervision, environment, credential leases, restarts, reloads.
mod serve_external_sidecars;
/// `serve` HTTP ingress authentication: the SPEC §7.2 vector, 401s, secrets that never leak.
mod serve_ingress_auth;
/// `serve` HTTP ingress refusals: payload rules, 404/405/413, no 5xx for malformed input.
mod serve_ingress_payload;
/// `serve` HTTP ingress receipts, sessions and rate limit.
mod serve_ingress_sessions;
/// `serve` lifecycle: readiness, admin auth, SIGHUP, SIGTERM, fail-closed start, rotation.
mod serve_lifecycle;
/// `serve`'s listener: connection caps, slow clients, accept errors, refused heads.
mod serve_listener;
/// `inspect-receipts`, `GET /v1/receipts`, `/metrics`, retention.
mod serve_observe;
mod serve_pipeline;
/// Runs: claim/output/complete/fail, echo and exec handlers, sessions on the control plane.
mod serve_runs;
/// The runtime connector store through the admin API.
mod serve_runtime;
/// The `slack` delivery plugin against a fake Slack Web API: steps, progress, errors, crash.
mod serve_slack_delivery;
/// `serve` Slack Events API ingress: signatures, dispatch, allowlists, scope, files.
mod serve_slack_ingress;
/// `serve` on a full disk: 503 + Retry-After, readiness, honest and rate-limited logs, recovery.
mod serve_storage;
/// Telegram webhook ingress against the fake Bot API: auth, updates, media, callbacks.
mod serve_telegram;
/// The telegram delivery plugin: chunks, media, progress across SIGKILL, terminal answers.
mod serve_telegram_delivery;
/// Telegram long polling: persisted offsets across restarts, flood waits, skips, reloads.
mod serve_telegram_polling;
/// The state root: permissions, migrations, newer-schema refusal, concurrent opens.
mod state_root;
/// Repository hygiene: module docs, no dbg!/todo!, commented dependencies.
mod tidy;
