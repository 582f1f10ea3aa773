//! The connector configuration (SPEC §2): validated connector types, and [`load`], the only
//! function here that reads a file or the environment.
//!
//! Flow: `load(path)` reads the file, [`validate::parse_str`] turns the text into a [`Config`]
//! plus every [`Diagnostic`] it found (parsing and validation are pure and unit-tested on
//! strings), and callers decide what to do with warnings. Daemon-managed connectors arrive as
//! JSON documents and go through the same rules ([`validate::parse_json`],
//! [`validate::parse_connector_json`]), with JSON pointers for positions.

pub mod knobs;
pub mod runtime;
pub mod validate;

use std::path::{Path, PathBuf};

use crate::model::reply::ReplyTarget;
use crate::model::{ConnectorKind, ConnectorName, Diagnostic, Severity};
use crate::secrets::{SecretError, SecretSource};

/// A position in a connector document: 1-based line and character column in a TOML file, or
/// (line and column 0) an RFC 6901 JSON pointer into a JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    pub line: u32,
    pub column: u32,
    pub pointer: Option<String>,
}

/// A secret field after precedence was applied (SPEC §2): which source won, and where it was
/// written so that later checks (env var missing, slot empty) can point at it.
#[derive(Debug, Clone)]
pub struct SecretField {
    /// The field's base name, e.g. `hmac_secret` (the winning key may be `hmac_secret_env`).
    pub field: String,
    /// The TOML key that won (`hmac_secret_env`).
    pub key: String,
    pub source: SecretSource,
    pub location: Location,
}

/// `session_policy` (every kind).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionPolicy {
    /// Create a missing session at ingress instead of refusing the event (409).
    pub create_if_missing: bool,
    pub persona_id: Option<String>,
    /// Stored and handed to the run handler; not interpreted by kheishctl.
    pub capability_scope: serde_json::Map<String, serde_json::Value>,
    /// Stored and handed to the run handler, e.g. `route_allow = ["openai"]`.
    pub credential_scope: serde_json::Map<String, serde_json::Value>,
}

/// Fields every connector kind has.
#[derive(Debug, Clone)]
pub struct Common {
    pub name: ConnectorName,
    /// Where the connector's table starts (for diagnostics found after loading).
    pub location: Location,
    pub fixed_session_id: Option<String>,
    pub allow_unauthenticated_ingress: bool,
    /// Token-bucket rate and capacity (events per second, ≥ 1).
    pub ingress_events_per_second: u32,
    pub session_policy: SessionPolicy,
    /// `default_reply_targets` (http) or `additional_reply_targets` (other kinds).
    pub reply_targets: Vec<ReplyTarget>,
    /// `default_binding_keys` (http) or `additional_binding_keys`: trimmed, sorted, deduplicated.
    pub binding_keys: Vec<String>,
}

/// `[[http_connectors]]` (SPEC §2.1).
#[derive(Debug, Clone)]
pub struct HttpConnector {
    pub common: Common,
    /// Default actor; the final fallback is `http-webhook`.
    pub actor_id: Option<String>,
    pub bearer_token: Option<SecretField>,
    pub hmac_secret: Option<SecretField>,
    pub require_hmac_signature: bool,
    /// Allowed clock skew for HMAC timestamps, both directions (1..=3600, default 300).
    pub signature_max_age_secs: u32,
    pub require_idempotency_key: bool,
    /// Payload reply overrides need authentication AND this.
    pub allow_payload_reply_targets: bool,
}

/// One `team_bot_tokens` entry of a Slack connector.
#[derive(Debug, Clone)]
pub struct TeamBotToken {
    pub team_id: String,
    pub bot_token: SecretField,
}

/// `[[slack_connectors]]` (SPEC §2.2).
#[derive(Debug, Clone)]
pub struct SlackConnector {
    pub common: Common,
    pub bot_token: Option<SecretField>,
    pub signing_secret: Option<SecretField>,
    /// Web API base, default `https://slack.com/api`.
    pub api_base_url: String,
    pub include_self_output: bool,
    /// Each list empty = allow all.
    pub allowed_api_app_ids: Vec<String>,
    pub allowed_enterprise_ids: Vec<String>,
    pub allowed_team_ids: Vec<String>,
    pub allowed_channel_ids: Vec<String>,
    /// Extra HTTPS host names files may be downloaded from.
    pub allowed_file_hosts: Vec<String>,
    pub team_bot_tokens: Vec<TeamBotToken>,
}

/// Telegram ingress modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TelegramMode {
    Webhook,
    Polling,
}

/// `[[telegram_connectors]]` (SPEC §2.3).
#[derive(Debug, Clone)]
pub struct TelegramConnector {
    pub common: Common,
    pub bot_token: Option<SecretField>,
    pub secret_token: Option<SecretField>,
    /// Bot API base, default `https://api.telegram.org`.
    pub api_base_url: String,
    pub ingress_mode: TelegramMode,
    /// Long-poll timeout for getUpdates (≥ 1, default 30).
    pub polling_timeout_seconds: u32,
    /// Non-empty restricts inbound chats AND outbound targets.
    pub allowed_chat_ids: Vec<i64>,
    pub include_self_output: bool,
}

/// External connector modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalMode {
    RemoteHttp,
    ChildProcess,
}

/// `[external_connectors.child_process]` (SPEC §2.4, §10.6).
#[derive(Debug, Clone, PartialEq)]
pub struct ChildProcess {
    pub command: String,
    pub args: Vec<String>,
    /// Extra environment for the child (never one of the six names the daemon sets itself).
    pub env: Vec<(String, String)>,
    /// ENV_KEY → secret ref, served through credential leases (§10.7).
    pub credential_slots: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    pub location: Location,
}

/// `[[external_connectors]]` (SPEC §2.4).
#[derive(Debug, Clone)]
pub struct ExternalConnector {
    pub common: Common,
    pub platform: String,
    pub mode: ExternalMode,
    pub base_url: String,
    pub allow_private_network: bool,
    pub shared_token: Option<SecretField>,
    pub include_self_output: bool,
    pub child_process: Option<ChildProcess>,
}

/// A validated connector file.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub http: Vec<HttpConnector>,
    pub slack: Vec<SlackConnector>,
    pub telegram: Vec<TelegramConnector>,
    pub external: Vec<ExternalConnector>,
}

impl Config {
    /// Finds an HTTP connector by name.
    pub fn http(&self, name: &str) -> Option<&HttpConnector> {
        self.http.iter().find(|c| c.common.name.as_str() == name)
    }

    /// Total number of connectors of all kinds.
    pub fn len(&self) -> usize {
        self.http.len() + self.slack.len() + self.telegram.len() + self.external.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every secret field of every connector, with the connector it belongs to.
    pub fn secret_fields(&self) -> Vec<(ConnectorKind, &ConnectorName, &SecretField)> {
        let mut out = Vec::new();
        for c in &self.http {
            for f in [&c.bearer_token, &c.hmac_secret].into_iter().flatten() {
                out.push((ConnectorKind::Http, &c.common.name, f));
            }
        }
        for c in &self.slack {
            for f in [&c.bot_token, &c.signing_secret].into_iter().flatten() {
                out.push((ConnectorKind::Slack, &c.common.name, f));
            }
            for t in &c.team_bot_tokens {
                out.push((ConnectorKind::Slack, &c.common.name, &t.bot_token));
            }
        }
        for c in &self.telegram {
            for f in [&c.bot_token, &c.secret_token].into_iter().flatten() {
                out.push((ConnectorKind::Telegram, &c.common.name, f));
            }
        }
        for c in &self.external {
            if let Some(f) = &c.shared_token {
                out.push((ConnectorKind::External, &c.common.name, f));
            }
        }
        out
    }
}

/// The result of loading a file: the config (complete only when there is no error) and every
/// diagnostic, sorted by position.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub diagnostics: Vec<Diagnostic>,
    /// The text is not TOML at all (syntax errors, reported in `diagnostics`): the file could
    /// not be parsed, which `validate` exits 4 for (SPEC §1.2), not 1.
    pub unparsable: bool,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

/// The file could not be read at all (exit 4), as opposed to a file with problems (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("cannot read connector config {path}: {source}")]
pub struct LoadError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// Reads and validates the connector file at `path`. `Err` only when the file cannot be read;
/// problems inside it come back as diagnostics.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let text = read_text(path)?;
    Ok(validate::parse_str(&path.display().to_string(), &text))
}

/// [`load`], plus each connector of the file as a JSON document (for the runtime views of
/// file-backed connectors, SPEC §12).
pub fn load_with_documents(path: &Path) -> Result<(Loaded, Vec<runtime::Document>), LoadError> {
    let text = read_text(path)?;
    let loaded = validate::parse_str(&path.display().to_string(), &text);
    Ok((loaded, runtime::file_documents(&text)))
}

fn read_text(path: &Path) -> Result<String, LoadError> {
    let display = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| LoadError {
        path: display.clone(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|e| LoadError {
        path: display,
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 (first bad byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        ),
    })
}

/// A secret source that cannot be used, as found by a caller-supplied check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretProblem {
    pub message: String,
    pub help: Option<String>,
}

/// Runs `check` on every secret source the config names (connector secret fields and external
/// `credential_slots`) and turns each problem into a diagnostic at the field that named it.
/// `check` does the environment / secret-store look-ups, so this stays free of I/O; an `Err`
/// from it (the state root cannot be read) stops the walk.
pub fn check_secret_sources<E>(
    config: &Config,
    file: &str,
    mut check: impl FnMut(&SecretSource) -> Result<Option<SecretProblem>, E>,
) -> Result<Vec<Diagnostic>, E> {
    let mut out = Vec::new();
    let mut push = |kind: ConnectorKind,
                    name: &ConnectorName,
                    field: String,
                    loc: &Location,
                    p: SecretProblem| {
        out.push(Diagnostic {
            severity: Severity::Error,
            file: file.to_string(),
            line: loc.line,
            column: loc.column,
            pointer: loc.pointer.clone(),
            connector_kind: Some(kind),
            connector: Some(name.to_string()),
            field: Some(field),
            message: p.message,
            help: p.help,
        });
    };
    for (kind, name, field) in config.secret_fields() {
        if let Some(problem) = check(&field.source)? {
            push(kind, name, field.key.clone(), &field.location, problem);
        }
    }
    for c in &config.external {
        let Some(cp) = &c.child_process else { continue };
        for (key, secret_ref) in &cp.credential_slots {
            if let Some(problem) = check(&SecretSource::StoreRef(secret_ref.clone()))? {
                push(
                    ConnectorKind::External,
                    &c.common.name,
                    format!("child_process.credential_slots.{key}"),
                    &cp.location,
                    problem,
                );
            }
        }
    }
    out.sort_by_key(|d| (d.line, d.column));
    Ok(out)
}

/// Turns a resolution failure into a diagnostic-ready problem ("missing", "empty") with the fix;
/// a failure of the state root itself (unreadable, wrong master key) stays an error so the
/// command can exit 4.
pub fn secret_problem(
    err: SecretError,
    state_root: &Path,
) -> Result<Option<SecretProblem>, SecretError> {
    let root = state_root.display();
    let problem = |message: String, help: String| {
        Ok(Some(SecretProblem {
            message,
            help: Some(help),
        }))
    };
    match err {
        SecretError::EnvMissing { var } => problem(
            format!("environment variable `{var}` is not set"),
            format!("export {var}=... before starting kheishctl, or store the value in the secret store and use the `_secret_ref` field"),
        ),
        SecretError::EnvEmpty { var } => problem(
            format!("environment variable `{var}` is empty"),
            format!("set {var} to the secret value"),
        ),
        SecretError::SlotMissing { secret_ref } | SecretError::NoStateRoot { secret_ref } => problem(
            format!("secret slot `{secret_ref}` does not exist in state root {root}"),
            format!("create it with `kheishctl rotate-secret {secret_ref} --stdin` (or pass the right --state-root)"),
        ),
        SecretError::SlotEmpty { secret_ref } => problem(
            format!("secret slot `{secret_ref}` is empty"),
            format!("write a value with `kheishctl rotate-secret {secret_ref} --stdin`"),
        ),
        e @ SecretError::InlineEmpty => problem(e.to_string(), "set a non-empty value".into()),
        e => Err(e),
    }
}
