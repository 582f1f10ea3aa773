//! The whole command-line surface as clap derive types (SPEC §1). Help text, man pages and shell
//! completions are all derived from these types, so this is the only place a flag is defined.
//!
//! This module depends on nothing in the crate except `model` (for value parsers), which keeps
//! `gen` and the completion freshness test independent of the server code.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::parse_duration;

/// A listener timeout: a DURATION from 1 ms to 1 day.
fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() || d > std::time::Duration::from_secs(86_400) {
        return Err(format!("`{s}` must be between 1ms and 1d"));
    }
    Ok(d)
}

/// Run and operate a durable connector gateway.
#[derive(Debug, Parser)]
#[command(
    name = "kheishctl",
    version,
    about = "Run and operate a durable connector gateway",
    long_about = "Run and operate a durable connector gateway: generic HTTP webhooks, Slack, \
Telegram and external sidecar connectors, with durable ingress receipts and at-least-once delivery.\n\n\
Examples:\n  kheishctl validate examples/kheishctl.toml\n  kheishctl sign --connector orders --body payload.json --format curl",
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted by every subcommand (SPEC §1.1).
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The state root directory (created 0700 when a command needs to write).
    ///
    /// Defaults to $XDG_STATE_HOME/kheishctl, else ~/.local/state/kheishctl.
    /// Example: --state-root /var/lib/kheishctl
    #[arg(long, global = true, env = "KHEISH_STATE_ROOT", value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    pub state_root: Option<PathBuf>,

    /// The TOML connector file.
    ///
    /// Example: --connectors-config examples/kheishctl.toml
    #[arg(
        long,
        global = true,
        env = "KHEISH_CONNECTORS_CONFIG",
        value_name = "FILE"
    )]
    pub connectors_config: Option<PathBuf>,

    /// Machine-readable output on stdout (one JSON document).
    #[arg(long, global = true)]
    pub json: bool,

    /// Only log errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Log more (debug level); overrides KHEISH_LOG.
    #[arg(short, long, global = true)]
    pub verbose: bool,

    /// When to color human output; NO_COLOR is honoured under `auto`.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
}

/// `--color` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// The subcommands. Only subcommands that work are listed here.
#[derive(Debug, Subcommand)]
pub enum Command {
    Serve(ServeArgs),
    Validate(ValidateArgs),
    Sign(SignArgs),
    RotateSecret(RotateSecretArgs),
    PutExternal(PutExternalArgs),
    Replay(ReplayArgs),
    InspectReceipts(InspectReceiptsArgs),
    DrainDeliveries(DrainDeliveriesArgs),
    Completions(CompletionsArgs),
    Man(ManArgs),
}

/// How `serve` turns runs into output (SPEC §11.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HandlerKind {
    /// Runs wait for an external worker to claim them through the control plane.
    None,
    /// Each run is piped as JSON to --handler-command; its stdout is the output.
    Exec,
    /// Replies with the inbound content (a working default for trying the gateway).
    Echo,
}

/// `serve --help` groups its flags under these headings.
const SERVE_LISTENER: &str = "Listener";
const SERVE_HANDLER: &str = "Run handler";
const SERVE_AUTH: &str = "Control-plane auth";
const SERVE_DELIVERY: &str = "Delivery";
const SERVE_RETENTION: &str = "Retention";

/// Run the gateway daemon.
#[derive(Debug, Args)]
#[command(
    long_about = "Run the gateway daemon: connector ingress, durable runs and the control \
plane on one HTTP listener. It fails closed (exit 4, with validate's diagnostics) when the \
connector file is invalid or a referenced secret cannot be resolved. When ready it logs \
`listening on http://ADDR` (and prints one JSON object on stdout under --json). SIGINT/SIGTERM \
stop accepting, finish in-flight requests (at most 10 s) and exit 0; SIGHUP reloads the \
connector file, keeping the old one if the new one is invalid.\n\n\
The control plane needs `Authorization: Bearer <admin token>`; without --admin-token-env or \
--admin-token-file a token is generated into STATE_ROOT/admin.token on first start.\n\n\
Examples:\n  kheishctl serve --connectors-config examples/kheishctl.toml --handler echo\n  \
kheishctl serve --listen 127.0.0.1:0 --json --handler exec --handler-command ./handler.py\n  \
kheishctl serve --admin-token-file /run/secrets/kheish-admin --workers 16"
)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the readiness line names it).
    #[arg(help_heading = SERVE_LISTENER, long, default_value = "127.0.0.1:4000", value_name = "ADDR")]
    pub listen: String,

    /// Threads for the requests' database work (the listener's blocking pool; default: 4 ×
    /// available cores). Connections and long-polls hold no thread of their own.
    #[arg(help_heading = SERVE_LISTENER, long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    /// Open connections allowed in all; past it a new connection is answered 503 overloaded and
    /// closed.
    #[arg(
        help_heading = SERVE_LISTENER,
        long,
        default_value_t = 1024,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=1_000_000),
        long_help = "Open connections allowed in all (1-1000000). Past it a new connection is \
answered `503 overloaded` (problem+json, `Connection: close`) at once and closed; it is never \
queued. Each connection holds a file descriptor, so keep this well under the open-files limit \
(serve raises its soft limit to the hard limit at start and logs both).\n\n\
Example: --max-connections 4096"
    )]
    pub max_connections: u32,

    /// Open connections allowed from one client address; past it that client's new connections
    /// are answered 503 overloaded and closed.
    #[arg(
        help_heading = SERVE_LISTENER,
        long,
        default_value_t = 128,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=1_000_000),
        long_help = "Open connections allowed from one client IP address (1-1000000). Past it \
that address's new connections are answered `503 overloaded` and closed, so one client cannot \
take every connection: a flood from one address never stops others from being served. Behind a reverse proxy every client shares the proxy's address: raise it there.\n\n\
Example: --max-connections-per-client 512"
    )]
    pub max_connections_per_client: u32,

    /// A connection must send its whole request head within this (from the connection, or from
    /// the first byte of a later request); else it is closed.
    #[arg(
        help_heading = SERVE_LISTENER,
        long,
        default_value = "10s",
        value_name = "DURATION",
        value_parser = parse_timeout,
        long_help = "A connection must send its whole request head (request line and headers) \
within this long, counted from the accept or, on a keep-alive connection, from the first byte \
of the request; else it is closed without an answer. It stops clients that send a head a byte \
at a time.\n\n\
Example: --header-timeout 5s"
    )]
    pub header_timeout: std::time::Duration,

    /// The whole request, head and body, must arrive within this; a stalled body is answered 408
    /// and the connection closed.
    #[arg(
        help_heading = SERVE_LISTENER,
        long,
        default_value = "30s",
        value_name = "DURATION",
        value_parser = parse_timeout,
        long_help = "The whole request, head and body, must arrive within this long, counted \
like --header-timeout. A body still incomplete then is answered `408 request_timeout` with \
`Connection: close`. The daemon's own work on the answer (a commit, a claim long-poll's \
`wait_ms`) does not count.\n\n\
Example: --request-timeout 1m"
    )]
    pub request_timeout: std::time::Duration,

    /// A keep-alive connection may wait this long for its next request before it is closed.
    #[arg(
        help_heading = SERVE_LISTENER,
        long,
        default_value = "60s",
        value_name = "DURATION",
        value_parser = parse_timeout,
        long_help = "A keep-alive connection may wait this long between the end of an answer \
and the first byte of the next request; then it is closed.\n\n\
Example: --idle-timeout 2m"
    )]
    pub idle_timeout: std::time::Duration,

    /// How runs are handled.
    #[arg(help_heading = SERVE_HANDLER, long, value_enum, default_value_t = HandlerKind::None)]
    pub handler: HandlerKind,

    /// With --handler exec: the program, then its arguments, one per flag
    /// (e.g. --handler-command python3 --handler-command handler.py).
    #[arg(help_heading = SERVE_HANDLER, long, value_name = "CMD", required_if_eq("handler", "exec"), value_hint = clap::ValueHint::CommandName)]
    pub handler_command: Vec<String>,

    /// With --handler exec or echo: runs handled at the same time.
    #[arg(help_heading = SERVE_HANDLER, long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub handler_concurrency: u16,

    /// With --handler exec: a run whose command takes longer is killed and failed.
    #[arg(help_heading = SERVE_HANDLER, long, default_value = "60s", value_name = "DURATION", value_parser = parse_duration)]
    pub handler_timeout: std::time::Duration,

    /// Read the admin token from this environment variable.
    #[arg(help_heading = SERVE_AUTH, long, value_name = "VAR", conflicts_with = "admin_token_file")]
    pub admin_token_env: Option<String>,

    /// Read the admin token from this file (one trailing newline is stripped). The file is
    /// re-read when it changes, so the token rotates without a restart.
    #[arg(help_heading = SERVE_AUTH, long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub admin_token_file: Option<PathBuf>,

    /// Read a read-only control-plane token from this environment variable: accepted on GET
    /// routes only (metrics scrapers, dashboards); writes with it answer 403. Must differ from
    /// the admin token.
    #[arg(help_heading = SERVE_AUTH, long, value_name = "VAR", conflicts_with = "readonly_token_file")]
    pub readonly_token_env: Option<String>,

    /// Read the read-only token from this file (re-read when it changes).
    #[arg(help_heading = SERVE_AUTH, long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub readonly_token_file: Option<PathBuf>,

    /// Delivery worker threads sending queued output to reply targets (0 disables delivery in
    /// this daemon; `drain-deliveries` can still send).
    #[arg(help_heading = SERVE_DELIVERY, long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=256))]
    pub delivery_workers: u16,

    /// How long submitted ingress receipts are kept.
    #[arg(help_heading = SERVE_RETENTION, long, default_value = "7d", value_name = "DURATION", value_parser = parse_duration)]
    pub receipt_retention: std::time::Duration,

    /// At most this many receipts are kept per connector (oldest pruned first).
    #[arg(help_heading = SERVE_RETENTION, long, default_value_t = 100_000, value_name = "N")]
    pub receipt_max_per_connector: u64,
}

/// Replay or resolve dead-lettered deliveries.
#[derive(Debug, Args)]
#[command(
    long_about = "Replay dead-lettered deliveries: each becomes a NEW pending delivery with \
`replayed_from_delivery_id`, and the dead letter stays as audit history. Without --force, a dead \
letter that already has a replay returns that replay instead of creating another. --all selects \
unresolved dead letters in bulk with the filters (default limit 100, at most 500); --dry-run \
only lists what would happen; --resolve marks the selected dead letters as handled without \
redelivery. Prints one row per item: would_replay, replayed, existing_replay or resolved.\n\n\
Works on the state root directly and is safe beside a running daemon, whose workers pick up \
the new deliveries.\n\n\
Examples:\n  kheishctl replay dlv_0192f3a4b5c6_9f8e7d6c5b4a3928\n  \
kheishctl replay --all --plugin http --since 1h --dry-run\n  \
kheishctl replay --all --connector http/orders --resolve --reason \"customer endpoint retired\""
)]
pub struct ReplayArgs {
    /// Dead-lettered delivery ids to replay (or resolve).
    #[arg(
        value_name = "DELIVERY_ID",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub delivery_ids: Vec<String>,

    /// Select dead letters with the filters below instead of naming them.
    #[arg(long)]
    pub all: bool,

    /// Only deliveries of runs from this connector (KIND/NAME).
    #[arg(long, value_name = "KIND/NAME", requires = "all")]
    pub connector: Option<crate::model::ConnectorId>,

    /// Only deliveries to this plugin (http, slack, telegram, external).
    #[arg(long, value_name = "P", requires = "all")]
    pub plugin: Option<String>,

    /// Only deliveries of this session.
    #[arg(long, value_name = "S", requires = "all")]
    pub session: Option<String>,

    /// Only deliveries of this run.
    #[arg(long, value_name = "R", requires = "all")]
    pub run: Option<String>,

    /// Only dead letters since WHEN (a duration ago like 1h, or an RFC 3339 time).
    #[arg(long, value_name = "WHEN", requires = "all")]
    pub since: Option<String>,

    /// At most this many dead letters with --all.
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=500))]
    pub limit: u32,

    /// Also select dead letters that were already resolved.
    #[arg(long)]
    pub include_resolved: bool,

    /// Replay even when a replay of the dead letter exists already.
    #[arg(long)]
    pub force: bool,

    /// Show what would happen; change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Mark the selected dead letters as handled instead of replaying them.
    #[arg(long, requires = "reason", conflicts_with = "force")]
    pub resolve: bool,

    /// Why the dead letters are resolved (recorded with --resolve).
    #[arg(long, value_name = "TEXT", requires = "resolve")]
    pub reason: Option<String>,
}

/// Run the delivery worker in this process until the queue is drained.
#[derive(Debug, Args)]
#[command(
    long_about = "Run the delivery worker in this process until no pending delivery is due \
(with --ignore-backoff: until none is pending at all), then print a summary: delivered, retried \
(still pending) and dead-lettered. Shows a progress bar on a terminal. Safe beside a running \
daemon: deliveries are leased, so two workers never send the same delivery at once; while \
another process holds a lease, the drain waits for its settlement (or for the lease to expire) \
before it ends.\n\n\
Exit status: 0 when everything attempted was delivered, 1 when a delivery was dead-lettered, \
3 when --timeout passed with due deliveries left, 4 when the state root cannot be opened.\n\n\
Examples:\n  kheishctl drain-deliveries\n  kheishctl drain-deliveries --plugin http --timeout 5m --json\n  \
KHEISH_DELIVERY_INITIAL_RETRY_MS=10 kheishctl drain-deliveries --ignore-backoff"
)]
pub struct DrainDeliveriesArgs {
    /// Stop after this long even if due deliveries are left (exit 3).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,

    /// Only deliveries to this plugin.
    #[arg(long, value_name = "P")]
    pub plugin: Option<String>,

    /// Only deliveries of runs from this connector (KIND/NAME).
    #[arg(long, value_name = "KIND/NAME")]
    pub connector: Option<crate::model::ConnectorId>,

    /// Deliveries sent at the same time.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    /// Also send deliveries whose retry time has not come yet, until nothing is pending.
    #[arg(long)]
    pub ignore_backoff: bool,
}

/// List ingress receipts from the state root.
#[derive(Debug, Args)]
#[command(
    long_about = "List ingress receipts, newest first: connector, receipt key (hashed as \
ingress hashes it), fingerprint, status, run, session, received time and duplicate hits. Reads \
the state root directly and is safe beside a running daemon.\n\n\
Exit status: 0, or 1 when a --key or --run lookup finds nothing; 4 when the state root cannot \
be read.\n\n\
Examples:\n  kheishctl inspect-receipts --connector http/orders --since 1h\n  \
kheishctl inspect-receipts --connector http/orders --key order-123 --json\n  \
kheishctl inspect-receipts --key order-123\n  \
kheishctl inspect-receipts --run run_0192f3a4b5c6_9f8e7d6c5b4a3928"
)]
pub struct InspectReceiptsArgs {
    /// Only receipts of this connector (KIND/NAME, e.g. http/orders).
    #[arg(long, value_name = "KIND/NAME")]
    pub connector: Option<crate::model::ConnectorId>,

    /// Find the receipt of this raw idempotency key / event id / update id (hashed the way
    /// ingress hashes it). With --connector it is one look-up; without, the receipts of every
    /// connector are searched for the key's digest.
    #[arg(long, value_name = "RAW_KEY")]
    pub key: Option<String>,

    /// Only the receipt of this run.
    #[arg(long, value_name = "RUN_ID")]
    pub run: Option<String>,

    /// Only receipts of this session.
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,

    /// Only receipts received since WHEN (a duration ago like 1h, or an RFC 3339 time).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,

    /// At most this many rows.
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,
}

/// Validate a connector file and the secrets it references.
#[derive(Debug, Args)]
#[command(
    long_about = "Validate a connector file and, when a state root exists, every secret it \
references (env vars present and non-empty, secret-store slots present and non-empty). Every \
problem is reported in one run as FILE:LINE:COL with the connector and field it concerns; secret \
values are never printed.\n\n\
Exit status: 0 when there is no error (warnings allowed unless --deny-warnings), 1 when there is, \
4 when the file or the state root cannot be read or the file is not TOML (its syntax errors are \
still listed).\n\n\
Examples:\n  kheishctl validate examples/kheishctl.toml\n  kheishctl validate --offline --json connectors.toml\n  KHEISH_CONNECTORS_CONFIG=connectors.toml kheishctl validate --deny-warnings"
)]
pub struct ValidateArgs {
    /// The connector file (overrides --connectors-config).
    #[arg(value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub file: Option<PathBuf>,

    /// Skip checks that need the environment or the state root (env vars, secret slots).
    #[arg(long)]
    pub offline: bool,

    /// Treat warnings (inline secrets, ignored secret sources) as errors.
    #[arg(long)]
    pub deny_warnings: bool,
}

/// Signature schemes `sign` can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SignScheme {
    /// X-Kheish-Timestamp / X-Kheish-Signature: v1=HMAC(v1:METHOD:PATH:TS:BODY).
    Kheish,
    /// X-Slack-Request-Timestamp / X-Slack-Signature: v0=HMAC(v0:TS:BODY).
    Slack,
}

/// Output formats of `sign`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SignFormat {
    /// Two header lines.
    Headers,
    /// One JSON object.
    Json,
    /// A ready-to-run curl command (quiet: -sS; --curl-fail adds --fail-with-body).
    Curl,
}

/// Sign a request body the way ingress verifies it.
#[derive(Debug, Args)]
#[command(
    long_about = "Compute the signature a client must send to a connector (SPEC §7.2), or \
verify one with --verify. The secret comes from a connector's configured HMAC secret \
(--connector), an environment variable, a file or a secret-store slot; it is never taken as a \
plain argument and never printed.\n\n\
Examples:\n  kheishctl sign --connectors-config examples/kheishctl.toml --connector orders --body payload.json\n  \
kheishctl sign --secret-env ORDERS_HMAC --url 'http://127.0.0.1:4000/v1/connectors/http/orders?src=ci' --body - --format curl < payload.json\n  \
kheishctl sign --scheme slack --secret-file slack.secret --body event.json --timestamp 1531420618\n  \
kheishctl sign --secret-env ORDERS_HMAC --path /v1/connectors/http/orders --timestamp 1710000000 --body payload.json --verify v1=f13a..."
)]
#[command(group(clap::ArgGroup::new("secret").required(true).args(["connector", "secret_env", "secret_file", "secret_ref"])))]
pub struct SignArgs {
    /// The request body to sign: a file, or - for standard input.
    #[arg(long, value_name = "FILE|-", value_hint = clap::ValueHint::FilePath)]
    pub body: PathBuf,

    /// Use this HTTP connector's HMAC secret and its ingress path /v1/connectors/http/NAME
    /// (with --scheme slack: that Slack connector's signing secret).
    #[arg(long, value_name = "NAME")]
    pub connector: Option<String>,

    /// Read the secret from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub secret_env: Option<String>,

    /// Read the secret from this file (one trailing newline is stripped).
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub secret_file: Option<PathBuf>,

    /// Read the secret from this secret-store slot in the state root.
    #[arg(long, value_name = "REF")]
    pub secret_ref: Option<String>,

    /// The request target exactly as it will be sent (path and query), e.g. /v1/connectors/http/orders?src=a.
    ///
    /// With --format curl the command then targets http://127.0.0.1:4000 (the serve default).
    #[arg(long, value_name = "PATH", conflicts_with = "url")]
    pub path: Option<String>,

    /// The full URL; gives host (for curl) and path+query at once.
    #[arg(long, value_name = "URL", value_hint = clap::ValueHint::Url)]
    pub url: Option<String>,

    /// The HTTP method that is signed.
    #[arg(long, default_value = "POST", value_name = "METHOD")]
    pub method: String,

    /// Unix timestamp in seconds to sign with (default: now).
    #[arg(long, value_name = "UNIX", value_parser = clap::value_parser!(i64).range(0..))]
    pub timestamp: Option<i64>,

    /// The signature scheme.
    #[arg(long, value_enum, default_value_t = SignScheme::Kheish)]
    pub scheme: SignScheme,

    /// What to print.
    #[arg(long, value_enum, default_value_t = SignFormat::Headers)]
    pub format: SignFormat,

    /// With --format curl: the command exits non-zero (22) when the answer is an HTTP error,
    /// still printing its body (curl --fail-with-body, curl 7.76 or newer).
    ///
    /// Without it the command exits 0 whatever the status; both print the answer's body and are
    /// quiet otherwise (curl -sS: no progress meter, errors still shown).
    #[arg(long)]
    pub curl_fail: bool,

    /// Check this signature instead of printing one: exit 0 on match, 1 on mismatch (constant time).
    ///
    /// Needs the --timestamp the request carried; the age window is not applied, so a captured
    /// request can be checked later.
    #[arg(long, value_name = "SIGNATURE", requires = "timestamp")]
    pub verify: Option<String>,
}

/// Write a new value into a secret-store slot.
#[derive(Debug, Args)]
#[command(
    long_about = "Write a new value into secret slot REF in the state root's encrypted \
secret store. File and stdin input strip one trailing newline. --generate creates a random \
URL-safe value and prints it once on stdout; otherwise nothing secret is printed.\n\n\
With --grace, the previous value is still accepted for that long wherever the slot verifies an \
inbound request (bearer token, HMAC secret, Slack signing secret, Telegram secret token, external \
shared token); outbound use switches at once. Rotations are recorded without values.\n\n\
With --connector KIND/NAME --field FIELD (a daemon-managed connector), REF defaults to \
connectors.KIND.NAME.FIELD and the connector is re-bound to REF in the same transaction as the \
write. A file-backed connector is refused: change its file instead.\n\n\
Examples:\n  kheishctl rotate-secret connectors.http.orders.hmac_secret --generate --grace 10m\n  \
printf %s \"$TOKEN\" | kheishctl rotate-secret connectors.slack.support.bot_token --stdin\n  \
kheishctl rotate-secret connectors.http.orders.bearer_token --from-env NEW_ORDERS_TOKEN --json\n  \
kheishctl rotate-secret --connector external/discord --field shared_token --generate --grace 10m"
)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["from_env", "from_file", "stdin", "generate"])))]
pub struct RotateSecretArgs {
    /// The secret ref (slot name), e.g. connectors.http.orders.hmac_secret. Optional with
    /// --connector/--field (default: connectors.KIND.NAME.FIELD).
    #[arg(value_name = "REF", required_unless_present = "connector")]
    pub secret_ref: Option<String>,

    /// Take the new value from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub from_env: Option<String>,

    /// Take the new value from this file (one trailing newline is stripped).
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub from_file: Option<PathBuf>,

    /// Take the new value from standard input (one trailing newline is stripped).
    #[arg(long)]
    pub stdin: bool,

    /// Generate a random URL-safe value and print it once on stdout.
    #[arg(long)]
    pub generate: bool,

    /// Bytes of entropy for --generate (16..=1024).
    #[arg(long, requires = "generate", value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(16..=1024))]
    pub bytes: u16,

    /// Keep accepting the previous value for inbound verification for this long (e.g. 10m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub grace: Option<std::time::Duration>,

    /// Re-bind this daemon-managed connector (KIND/NAME) to the rotated slot (needs --field).
    #[arg(long, value_name = "KIND/NAME", requires = "field")]
    pub connector: Option<crate::model::ConnectorId>,

    /// The connector's secret field to re-bind (e.g. shared_token, bearer_token, hmac_secret,
    /// bot_token, signing_secret, secret_token).
    #[arg(long, value_name = "FIELD", requires = "connector")]
    pub field: Option<String>,
}

/// `--mode` of an external connector (SPEC §10.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExternalMode {
    /// The sidecar runs elsewhere and is reached at --base-url.
    #[value(name = "remote_http")]
    RemoteHttp,
    /// The daemon starts and supervises the sidecar (--command) on a loopback --base-url.
    #[value(name = "child_process")]
    ChildProcess,
}

impl ExternalMode {
    /// The value as the connector file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ExternalMode::RemoteHttp => "remote_http",
            ExternalMode::ChildProcess => "child_process",
        }
    }
}

/// Create or update a daemon-managed external connector.
#[derive(Debug, Args)]
#[command(
    long_about = "Create or update one daemon-managed external connector in the state root's \
runtime connector store (SPEC §12): a field-aware upsert, so flags that are given change and \
everything else keeps its value (a new connector starts from defaults; an empty string clears a \
member). --file gives members as TOML (one [[external_connectors]] table or a bare table) or \
JSON; flags override its members. The result is validated like the connector file; every \
secret it names must resolve now (credential slots must exist as non-empty secrets). A name \
used by a file-backed external connector (of --connectors-config) is refused, and so is a change \
of platform.\n\n\
A secret is never taken as a plain argument: --shared-token-env names a variable of the \
daemon's environment, --shared-token-secret-ref a slot, and --shared-token-stdin reads the value \
from standard input (one trailing newline is stripped) into the slot \
connectors.external.NAME.shared_token.\n\n\
Prints the redacted connector view; --dry-run prints it with a field-by-field diff and writes \
nothing. Safe beside a running daemon, which applies the change within 2 seconds (restarting \
the sidecar when its process spec changed).\n\n\
Exit status: 0, 1 when the connector is invalid or refused, 2 on usage errors, 4 when the \
state root or --file cannot be read.\n\n\
Examples:\n  kheishctl put-external discord --platform discord --base-url https://sidecar.example.com \\\n      --shared-token-secret-ref connectors.external.discord.shared_token\n  \
printf %s \"$TOKEN\" | kheishctl put-external discord --shared-token-stdin\n  \
kheishctl put-external local --platform matrix --mode child_process --base-url http://127.0.0.1:7001 \\\n      \
--command ./sidecar --arg --verbose --env LOG=debug --credential-slot MATRIX_TOKEN=matrix.token \\\n      \
--allow-unauthenticated-ingress true\n  \
kheishctl put-external discord --file discord.toml --dry-run --json"
)]
#[command(group(clap::ArgGroup::new("shared_token").args(["shared_token_env", "shared_token_secret_ref", "shared_token_stdin"])))]
pub struct PutExternalArgs {
    /// The connector's name.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Members from a file: TOML (one [[external_connectors]] table or a bare table) or JSON.
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub file: Option<PathBuf>,

    /// The platform the sidecar bridges (required for a new connector; cannot change).
    #[arg(long, value_name = "P")]
    pub platform: Option<String>,

    /// How the sidecar runs.
    #[arg(long, value_enum, value_name = "MODE")]
    pub mode: Option<ExternalMode>,

    /// The sidecar's base URL (http/https; loopback for child_process).
    #[arg(long, value_name = "URL", value_hint = clap::ValueHint::Url)]
    pub base_url: Option<String>,

    /// Allow a remote_http base URL on a loopback, private or link-local address.
    #[arg(long, value_name = "BOOL")]
    pub allow_private_network: Option<bool>,

    /// The shared token comes from this environment variable of the daemon.
    #[arg(long, value_name = "VAR")]
    pub shared_token_env: Option<String>,

    /// The shared token comes from this secret-store slot.
    #[arg(long, value_name = "REF")]
    pub shared_token_secret_ref: Option<String>,

    /// Read the shared token from standard input (one trailing newline is stripped) and store
    /// it in slot connectors.external.NAME.shared_token.
    #[arg(long)]
    pub shared_token_stdin: bool,

    /// Accept sidecar ingress without a shared token (must be explicit).
    #[arg(long, value_name = "BOOL")]
    pub allow_unauthenticated_ingress: Option<bool>,

    /// Put every event into this session ("" clears it).
    #[arg(long, value_name = "ID")]
    pub fixed_session_id: Option<String>,

    /// Also deliver output to the conversation the event came from.
    #[arg(long, value_name = "BOOL")]
    pub include_self_output: Option<bool>,

    /// Ingress rate limit of this connector (events per second, at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub ingress_events_per_second: Option<u32>,

    /// child_process: the sidecar program.
    #[arg(long, value_name = "CMD", value_hint = clap::ValueHint::CommandName)]
    pub command: Option<String>,

    /// child_process: one argument of the program (repeat in order; replaces the stored list).
    #[arg(long = "arg", value_name = "A", allow_hyphen_values = true)]
    pub args: Vec<String>,

    /// child_process: one environment variable K=V of the sidecar (repeat; replaces the
    /// stored table). Not for secrets: use --credential-slot.
    #[arg(long, value_name = "K=V")]
    pub env: Vec<String>,

    /// child_process: a credential the sidecar may lease, ENV_KEY=SECRET_REF (repeat; replaces
    /// the stored table). The slot must exist and be non-empty.
    #[arg(long, value_name = "K=REF")]
    pub credential_slot: Vec<String>,

    /// child_process: the sidecar's working directory ("" clears it).
    #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    pub working_dir: Option<PathBuf>,

    /// Print the result and the field-by-field diff; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Shells `completions` can generate for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// Bash (bash-completion).
    Bash,
    /// Zsh (put the file on $fpath as _kheishctl).
    Zsh,
    /// Fish.
    Fish,
    /// PowerShell.
    Powershell,
    /// Elvish.
    Elvish,
}

/// Print a shell completion script.
#[derive(Debug, Args)]
#[command(
    long_about = "Print a shell completion script generated from this binary's CLI \
definition; the same bytes are checked in under completions/.\n\n\
Examples:\n  kheishctl completions bash > ~/.local/share/bash-completion/completions/kheishctl\n  \
kheishctl completions zsh > \"${fpath[1]}/_kheishctl\"\n  kheishctl completions fish > ~/.config/fish/completions/kheishctl.fish"
)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Print a man page (for packagers).
#[derive(Debug, Args)]
#[command(
    hide = true,
    long_about = "Print the roff man page of kheishctl or of one subcommand; the \
same bytes are checked in under man/.\n\nExample:\n  kheishctl man validate > kheishctl-validate.1"
)]
pub struct ManArgs {
    /// The subcommand whose page to print (default: the kheishctl.1 overview).
    #[arg(value_name = "SUBCOMMAND")]
    pub subcommand: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn every_serve_flag_has_its_heading() {
        let mut cli = super::Cli::command();
        let serve = cli.find_subcommand_mut("serve").unwrap();
        let mut seen = Vec::new();
        for arg in serve.get_arguments().filter(|a| !a.is_global_set()) {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let heading = arg
                .get_help_heading()
                .unwrap_or_else(|| panic!("--{long} has no help heading"));
            seen.push((heading, long));
        }
        for (heading, flag) in [
            ("Listener", "listen"),
            ("Listener", "idle-timeout"),
            ("Run handler", "handler-command"),
            ("Control-plane auth", "admin-token-file"),
            ("Delivery", "delivery-workers"),
            ("Retention", "receipt-retention"),
        ] {
            assert!(
                seen.contains(&(heading, flag)),
                "--{flag} under {heading}: {seen:?}"
            );
        }
        let help = serve.render_long_help().to_string();
        let positions: Vec<usize> = [
            "\nListener:\n",
            "\nRun handler:\n",
            "\nControl-plane auth:\n",
            "\nDelivery:\n",
            "\nRetention:\n",
        ]
        .iter()
        .map(|h| {
            help.find(h)
                .unwrap_or_else(|| panic!("{h:?} missing:\n{help}"))
        })
        .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{help}");
    }
}
