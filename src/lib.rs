//! kheishctl: run and operate a durable connector gateway.
//!
//! Crate map, in reading order (ARCHITECTURE.md has the invariants):
//! - [`cli`]: the clap definition, the single source of every flag, man page and completion.
//! - [`gen`]: renders man pages and completion scripts from [`cli`].
//! - [`exit`]: the spec's exit codes and the error → code mapping.
//! - [`output`]: the only writer of stdout/stderr.
//! - [`model`]: pure domain types (connector names, reply targets, diagnostics).
//! - [`config`]: the connector file: parsing and validation with positions.
//! - [`secrets`]: the `Secret` type, secret sources and the encrypted secret store.
//! - [`store`]: the state root and its SQLite database (the only SQL).
//! - [`net`]: the one outbound HTTP agent builder and the private-address guard.
//! - [`delivery`]: the delivery queue: transports, retry policy, workers, replay.
//! - [`registry`]: the live connector set with resolved secrets, swapped atomically on reload.
//! - [`leases`]: credential leases of `child_process` sidecars (issued per spawn, checked per fetch).
//! - [`ingress`]: the inbound pipeline (auth, payload rules, sessions, receipts, runs).
//! - [`owner`]: claim owners naming a process of this host (host, pid, start time), and their liveness.
//! - [`process`]: child processes: cleared env, own process group, capped capture, TERM then KILL.
//! - [`daemon`]: the composition of `serve`: start and shutdown order, handlers, watcher, retention.
//! - [`metrics`]: in-memory counters and histograms, rendered as Prometheus text.
//! - [`notify`]: generation counter + condvar for "woken or deadline" waits.
//! - [`views`]: redacted JSON views shared by the control plane and the CLI.
//! - [`server`]: the daemon's HTTP side (hyper on tokio): listener, routes and shutdown.
//! - [`commands`]: one thin module per subcommand.

pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod exit;
#[doc(hidden)]
pub mod fuzzing;
pub mod gen;
pub mod ingress;
pub mod leases;
pub mod metrics;
pub mod model;
pub mod net;
pub mod notify;
pub mod output;
pub mod owner;
pub mod process;
pub mod registry;
pub mod secrets;
pub mod server;
pub mod sessions;
pub mod store;
pub mod views;
