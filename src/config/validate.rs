//! Turns connector-file text into a validated [`Config`] plus every diagnostic (SPEC §2).
//!
//! The text is parsed once into toml's span-carrying tree; a walker then reads every table,
//! checks types, ranges and cross-field rules, and records a [`Diagnostic`] with line and column
//! for each problem instead of stopping at the first, so `validate` reports them all in one run.
//! Unknown keys are errors with the nearest valid key suggested. Nothing here reads a file or
//! the environment: checks that need them (env vars set, secret slots present) live in
//! `commands::validate`.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use serde_json::Value as Json;
use toml::de::{DeArray, DeTable, DeValue};
use toml::Spanned;

use super::{
    ChildProcess, Common, Config, ExternalConnector, ExternalMode, HttpConnector, Loaded, Location,
    SecretField, SessionPolicy, SlackConnector, TeamBotToken, TelegramConnector, TelegramMode,
};
use crate::model::reply::{ChatId, ReplyPlugin, ReplyTarget, TargetAddress};
use crate::model::{ConnectorKind, ConnectorName, Diagnostic, Severity};
use crate::secrets::{Secret, SecretSource};

/// Keys every connector kind accepts.
const COMMON_KEYS: &[&str] = &[
    "name",
    "fixed_session_id",
    "allow_unauthenticated_ingress",
    "ingress_events_per_second",
    "session_policy",
];
const HTTP_KEYS: &[&str] = &[
    "actor_id",
    "bearer_token",
    "bearer_token_env",
    "bearer_token_secret_ref",
    "hmac_secret",
    "hmac_secret_env",
    "hmac_secret_secret_ref",
    "require_hmac_signature",
    "signature_max_age_secs",
    "require_idempotency_key",
    "allow_payload_reply_targets",
    "default_reply_targets",
    "default_binding_keys",
];
const SLACK_KEYS: &[&str] = &[
    "bot_token",
    "bot_token_env",
    "bot_token_secret_ref",
    "signing_secret",
    "signing_secret_env",
    "signing_secret_secret_ref",
    "api_base_url",
    "include_self_output",
    "additional_reply_targets",
    "additional_binding_keys",
    "allowed_api_app_ids",
    "allowed_enterprise_ids",
    "allowed_team_ids",
    "allowed_channel_ids",
    "allowed_file_hosts",
    "team_bot_tokens",
];
const TELEGRAM_KEYS: &[&str] = &[
    "bot_token",
    "bot_token_env",
    "bot_token_secret_ref",
    "secret_token",
    "secret_token_env",
    "secret_token_secret_ref",
    "api_base_url",
    "ingress_mode",
    "polling_timeout_seconds",
    "allowed_chat_ids",
    "include_self_output",
    "additional_reply_targets",
    "additional_binding_keys",
];
const EXTERNAL_KEYS: &[&str] = &[
    "platform",
    "mode",
    "base_url",
    "allow_private_network",
    "shared_token",
    "shared_token_env",
    "shared_token_secret_ref",
    "include_self_output",
    "additional_reply_targets",
    "additional_binding_keys",
    "child_process",
];
const SESSION_POLICY_KEYS: &[&str] = &[
    "create_if_missing",
    "persona_id",
    "capability_scope",
    "credential_scope",
];
const CHILD_PROCESS_KEYS: &[&str] = &["command", "args", "env", "credential_slots", "working_dir"];
const TEAM_TOKEN_KEYS: &[&str] = &[
    "team_id",
    "bot_token",
    "bot_token_env",
    "bot_token_secret_ref",
];
const REPLY_TARGET_KEYS: &[&str] = &["plugin", "address"];

/// Environment names the daemon sets for sidecars itself (SPEC §10.6).
const RESERVED_ENV_PREFIX: &str = "KHEISH_EXTERNAL_CONNECTOR_";

/// Parses and validates `text`, naming `file` in diagnostics.
pub fn parse_str(file: &str, text: &str) -> Loaded {
    let lines = LineIndex::new(text);
    let mut w = Walker {
        file,
        lines: &lines,
        diags: Vec::new(),
    };
    let (root, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        // A recovered tree after a syntax error is a guess; validating it would report
        // problems the operator did not write. Report the syntax errors alone.
        for e in &errors {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().trim_end_matches('.').to_string();
            w.push(
                Severity::Error,
                span.start,
                Subject::file(),
                format!("invalid TOML: {message}"),
                Some("fix the syntax at this position; strings need quotes, tables `[[http_connectors]]`".into()),
            );
        }
        return w.finish(Config::default());
    }
    let config = w.config(root.get_ref());
    w.finish(config)
}

/// Byte offset → 1-based line and character column.
struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> LineIndex<'a> {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    fn locate(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let line_idx = self.starts.partition_point(|&s| s <= offset) - 1;
        let start = self.starts[line_idx];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        Location {
            line: line_idx as u32 + 1,
            column: column as u32,
            pointer: None,
        }
    }
}

/// Which connector (and which nested table) a diagnostic is about.
#[derive(Debug, Clone)]
struct Subject {
    kind: Option<ConnectorKind>,
    connector: Option<String>,
    field: Option<String>,
}

impl Subject {
    fn file() -> Subject {
        Subject {
            kind: None,
            connector: None,
            field: None,
        }
    }
}

struct Walker<'a> {
    file: &'a str,
    lines: &'a LineIndex<'a>,
    diags: Vec<Diagnostic>,
}

/// The connector being read: its kind, its label for diagnostics (the name once known, else
/// `#N`), and the span of its table.
#[derive(Clone)]
struct Ctx {
    kind: ConnectorKind,
    label: String,
    start: usize,
}

impl Ctx {
    fn subject(&self, field: &str) -> Subject {
        Subject {
            kind: Some(self.kind),
            connector: Some(self.label.clone()),
            field: (!field.is_empty()).then(|| field.to_string()),
        }
    }
}

/// One table being read: tracks which keys were consumed so the rest can be reported unknown.
struct Table<'t, 'i> {
    table: &'t DeTable<'i>,
    span: Range<usize>,
    /// Dotted prefix of keys in this table (`session_policy.`), empty at connector level.
    prefix: String,
}

type SV<'i> = Spanned<DeValue<'i>>;

impl<'t, 'i> Table<'t, 'i> {
    fn get(&self, key: &str) -> Option<(&'t Spanned<DeString<'i>>, &'t SV<'i>)> {
        self.table.get_key_value(key)
    }

    fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

type DeString<'i> = std::borrow::Cow<'i, str>;

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn int_value(v: &DeValue<'_>) -> Option<i64> {
    match v {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
        _ => None,
    }
}

/// The key closest to `unknown` among `known`, when one is close enough to be a likely typo.
fn suggest<'k>(unknown: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(unknown, k), *k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

fn to_json(v: &DeValue<'_>) -> Json {
    match v {
        DeValue::String(s) => Json::String(s.to_string()),
        DeValue::Integer(_) => int_value(v).map_or(Json::Null, Json::from),
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Json::Null, Json::Number),
        DeValue::Boolean(b) => Json::Bool(*b),
        DeValue::Datetime(d) => Json::String(d.to_string()),
        DeValue::Array(a) => Json::Array(a.iter().map(|x| to_json(x.get_ref())).collect()),
        DeValue::Table(t) => Json::Object(
            t.iter()
                .map(|(k, x)| (k.get_ref().to_string(), to_json(x.get_ref())))
                .collect(),
        ),
    }
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Secret refs are slot names: `[A-Za-z0-9._-]`, at most 200 characters.
pub fn check_secret_ref(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 200 {
        return Err(format!(
            "must be at most 200 characters (got {})",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "may contain only letters, digits, `.`, `_` and `-` (found {bad:?})"
        ));
    }
    Ok(())
}

/// Checks a Bot/Web API base URL: absolute http(s), no userinfo, query or fragment.
fn check_api_base_url(raw: &str) -> Result<(), String> {
    let url = crate::model::reply::check_http_url(raw)?;
    if url.query().is_some() {
        return Err("must not have a query string".into());
    }
    if url.fragment().is_some() {
        return Err("must not have a fragment".into());
    }
    Ok(())
}

impl<'a> Walker<'a> {
    fn push(
        &mut self,
        severity: Severity,
        offset: usize,
        subject: Subject,
        message: String,
        help: Option<String>,
    ) {
        let loc = self.lines.locate(offset);
        self.diags.push(Diagnostic {
            severity,
            file: self.file.to_string(),
            line: loc.line,
            column: loc.column,
            pointer: None,
            connector_kind: subject.kind,
            connector: subject.connector,
            field: subject.field,
            message,
            help,
        });
    }

    fn err(&mut self, ctx: &Ctx, offset: usize, field: &str, message: impl Into<String>) {
        self.push(
            Severity::Error,
            offset,
            ctx.subject(field),
            message.into(),
            None,
        );
    }

    fn err_help(
        &mut self,
        ctx: &Ctx,
        offset: usize,
        field: &str,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.push(
            Severity::Error,
            offset,
            ctx.subject(field),
            message.into(),
            Some(help.into()),
        );
    }

    fn warn(&mut self, ctx: &Ctx, offset: usize, field: &str, message: String, help: String) {
        self.push(
            Severity::Warning,
            offset,
            ctx.subject(field),
            message,
            Some(help),
        );
    }

    fn finish(mut self, config: Config) -> Loaded {
        self.diags.sort_by_key(|d| (d.line, d.column, d.severity));
        Loaded {
            config,
            diagnostics: self.diags,
        }
    }

    fn location(&self, offset: usize) -> Location {
        self.lines.locate(offset)
    }

    // ---- typed getters: each reports a type error and returns None on a wrong type ----

    fn wrong_type(&mut self, ctx: &Ctx, t: &Table<'_, '_>, key: &str, v: &SV<'_>, want: &str) {
        let got = type_name(v.get_ref());
        self.err(
            ctx,
            v.span().start,
            &t.path(key),
            format!("expected {want}, found {got}"),
        );
    }

    fn string(&mut self, ctx: &Ctx, t: &Table<'_, '_>, key: &str) -> Option<(String, usize)> {
        let (_, v) = t.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some((s.to_string(), v.span().start)),
            _ => {
                self.wrong_type(ctx, t, key, v, "a string");
                None
            }
        }
    }

    /// A string that must not be blank when present.
    fn nonblank(&mut self, ctx: &Ctx, t: &Table<'_, '_>, key: &str) -> Option<String> {
        let (s, at) = self.string(ctx, t, key)?;
        if s.trim().is_empty() {
            self.err(ctx, at, &t.path(key), "must not be empty");
            return None;
        }
        Some(s)
    }

    fn boolean(&mut self, ctx: &Ctx, t: &Table<'_, '_>, key: &str, default: bool) -> bool {
        self.boolean_at(ctx, t, key).map_or(default, |(b, _)| b)
    }

    fn boolean_at(&mut self, ctx: &Ctx, t: &Table<'_, '_>, key: &str) -> Option<(bool, usize)> {
        let (_, v) = t.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some((*b, v.span().start)),
            _ => {
                self.wrong_type(ctx, t, key, v, "a boolean (true or false)");
                None
            }
        }
    }

    /// An integer in `min..=max`; out of range reports `must be between …` and gives the default.
    fn int_range(
        &mut self,
        ctx: &Ctx,
        t: &Table<'_, '_>,
        key: &str,
        default: u32,
        min: i64,
        max: i64,
    ) -> u32 {
        let Some((_, v)) = t.get(key) else {
            return default;
        };
        let Some(n) = int_value(v.get_ref()) else {
            self.wrong_type(ctx, t, key, v, "an integer");
            return default;
        };
        if n < min || n > max {
            let message = if max == i64::from(u32::MAX) {
                format!("must be at least {min} (got {n})")
            } else {
                format!("must be between {min} and {max} (got {n})")
            };
            self.err(ctx, v.span().start, &t.path(key), message);
            return default;
        }
        n as u32
    }

    fn array<'t, 'i>(
        &mut self,
        ctx: &Ctx,
        t: &Table<'t, 'i>,
        key: &str,
    ) -> Option<&'t DeArray<'i>> {
        let (_, v) = t.get(key)?;
        match v.get_ref() {
            DeValue::Array(a) => Some(a),
            _ => {
                self.wrong_type(ctx, t, key, v, "an array");
                None
            }
        }
    }

    fn string_list(&mut self, ctx: &Ctx, t: &Table<'_, '_>, key: &str) -> Vec<String> {
        let Some(items) = self.array(ctx, t, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("{}[{i}]", t.path(key));
            match item.get_ref() {
                DeValue::String(s) if !s.trim().is_empty() => out.push(s.trim().to_string()),
                DeValue::String(_) => self.err(ctx, item.span().start, &field, "must not be empty"),
                other => self.err(
                    ctx,
                    item.span().start,
                    &field,
                    format!("expected a string, found {}", type_name(other)),
                ),
            }
        }
        out
    }

    fn sub_table<'t, 'i>(
        &mut self,
        ctx: &Ctx,
        t: &Table<'t, 'i>,
        key: &str,
    ) -> Option<Table<'t, 'i>> {
        let (_, v) = t.get(key)?;
        match v.get_ref() {
            DeValue::Table(inner) => Some(Table {
                table: inner,
                span: v.span(),
                prefix: format!("{}.", t.path(key)),
            }),
            _ => {
                self.wrong_type(ctx, t, key, v, "a table");
                None
            }
        }
    }

    /// Reports every key of `t` not in `known` (plus `extra`), suggesting the nearest one.
    fn unknown_keys(&mut self, ctx: &Ctx, t: &Table<'_, '_>, known: &[&[&str]]) {
        let all: Vec<&str> = known.iter().flat_map(|k| k.iter().copied()).collect();
        for (key, _) in t.table.iter() {
            let name = key.get_ref().as_ref();
            if all.contains(&name) {
                continue;
            }
            let help = match suggest(name, &all) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("valid keys here: {}", all.join(", ")),
            };
            self.err_help(
                ctx,
                key.span().start,
                &t.path(name),
                format!("unknown key `{name}`"),
                help,
            );
        }
    }

    // ---- shared connector parts ----

    /// Reads a secret triplet `X`, `X_env`, `X_secret_ref` and applies precedence (SPEC §2).
    fn secret(&mut self, ctx: &Ctx, t: &Table<'_, '_>, base: &str) -> Option<SecretField> {
        let ref_key = format!("{base}_secret_ref");
        let env_key = format!("{base}_env");
        let mut candidates: Vec<(String, SecretSource, usize)> = Vec::new();
        if let Some((name, at)) = self.string(ctx, t, &ref_key) {
            match check_secret_ref(&name) {
                Ok(()) => candidates.push((ref_key.clone(), SecretSource::StoreRef(name), at)),
                Err(e) => self.err(ctx, at, &t.path(&ref_key), format!("secret ref {e}")),
            }
        }
        if let Some((name, at)) = self.string(ctx, t, &env_key) {
            if valid_env_name(&name) {
                candidates.push((env_key.clone(), SecretSource::Env(name), at));
            } else {
                self.err_help(
                    ctx,
                    at,
                    &t.path(&env_key),
                    format!("`{name}` is not a valid environment variable name"),
                    "use letters, digits and `_`, not starting with a digit",
                );
            }
        }
        if let Some((value, at)) = self.string(ctx, t, base) {
            if value.trim().is_empty() {
                self.err_help(
                    ctx,
                    at,
                    &t.path(base),
                    "secret is empty",
                    format!("set a value, or use `{env_key}` / `{ref_key}`"),
                );
            } else {
                candidates.push((
                    base.to_string(),
                    SecretSource::Inline(Secret::new(value)),
                    at,
                ));
            }
        }
        let mut iter = candidates.into_iter();
        let (key, source, at) = iter.next()?;
        for (ignored, _, ignored_at) in iter {
            self.warn(
                ctx,
                ignored_at,
                &t.path(&ignored),
                format!("ignored: `{key}` takes precedence (secret store ref, then env var, then inline)"),
                format!("remove `{ignored}` so the file says which source is used"),
            );
        }
        if matches!(source, SecretSource::Inline(_)) {
            self.warn(
                ctx,
                at,
                &t.path(base),
                "inline secret in the config file (such files are often committed)".into(),
                format!(
                    "store it with `kheishctl rotate-secret connectors.{}.{}.{base} --stdin` and set `{ref_key}`, or use `{env_key}`",
                    ctx.kind, ctx.label
                ),
            );
        }
        Some(SecretField {
            field: base.to_string(),
            key,
            source,
            location: self.location(at),
        })
    }

    fn session_policy(&mut self, ctx: &Ctx, t: &Table<'_, '_>) -> SessionPolicy {
        let Some(p) = self.sub_table(ctx, t, "session_policy") else {
            return SessionPolicy::default();
        };
        let mut policy = SessionPolicy {
            create_if_missing: self.boolean(ctx, &p, "create_if_missing", false),
            persona_id: self.nonblank(ctx, &p, "persona_id"),
            ..SessionPolicy::default()
        };
        for (key, slot) in [
            ("capability_scope", &mut policy.capability_scope),
            ("credential_scope", &mut policy.credential_scope),
        ] {
            if let Some((_, v)) = p.get(key) {
                match v.get_ref() {
                    DeValue::Table(_) => {
                        if let Json::Object(map) = to_json(v.get_ref()) {
                            *slot = map;
                        }
                    }
                    _ => self.wrong_type(ctx, &p, key, v, "a table"),
                }
            }
        }
        self.unknown_keys(ctx, &p, &[SESSION_POLICY_KEYS]);
        policy
    }

    fn reply_targets(
        &mut self,
        ctx: &Ctx,
        t: &Table<'_, '_>,
        key: &str,
        refs: &mut Vec<TargetRef>,
    ) -> Vec<ReplyTarget> {
        let Some(items) = self.array(ctx, t, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("{key}[{i}]");
            let DeValue::Table(inner) = item.get_ref() else {
                self.err_help(
                    ctx,
                    item.span().start,
                    &field,
                    format!("expected a table, found {}", type_name(item.get_ref())),
                    r#"write { plugin = "http", address = "https://example.com/hook" }"#,
                );
                continue;
            };
            let it = Table {
                table: inner,
                span: item.span(),
                prefix: format!("{field}."),
            };
            self.unknown_keys(ctx, &it, &[REPLY_TARGET_KEYS]);
            let plugin = match self.string(ctx, &it, "plugin") {
                Some((p, at)) => match ReplyPlugin::parse(&p) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        self.err(ctx, at, &it.path("plugin"), e);
                        None
                    }
                },
                None => {
                    if it.get("plugin").is_none() {
                        self.err(
                            ctx,
                            it.span.start,
                            &it.path("plugin"),
                            "missing required field",
                        );
                    }
                    None
                }
            };
            let address = self.string(ctx, &it, "address");
            if address.is_none() && it.get("address").is_none() {
                self.err(
                    ctx,
                    it.span.start,
                    &it.path("address"),
                    "missing required field",
                );
            }
            let (Some(plugin), Some((address, at))) = (plugin, address) else {
                continue;
            };
            match ReplyTarget::new(plugin, &address) {
                Ok((target, parsed)) => {
                    refs.push(TargetRef {
                        ctx: ctx.clone(),
                        field: it.path("address"),
                        at,
                        parsed,
                    });
                    out.push(target);
                }
                Err(e) => self.err_help(
                    ctx,
                    at,
                    &it.path("address"),
                    format!("invalid {} address: {e}", plugin.as_str()),
                    address_help(plugin),
                ),
            }
        }
        out
    }

    fn binding_keys(&mut self, ctx: &Ctx, t: &Table<'_, '_>, key: &str) -> Vec<String> {
        let mut keys = self.string_list(ctx, t, key);
        keys.sort();
        keys.dedup();
        keys
    }

    /// Name, and the fields every kind shares. The name check runs first so that later
    /// diagnostics can name the connector.
    fn common(
        &mut self,
        ctx: &mut Ctx,
        t: &Table<'_, '_>,
        seen: &mut Seen,
        refs: &mut Vec<TargetRef>,
    ) -> Option<Common> {
        // The kinds differ only in defaults and in the names of the two list fields.
        let (default_rate, targets_key, keys_key) = match ctx.kind {
            ConnectorKind::Http => (60, "default_reply_targets", "default_binding_keys"),
            ConnectorKind::Slack => (60, "additional_reply_targets", "additional_binding_keys"),
            ConnectorKind::Telegram | ConnectorKind::External => {
                (100, "additional_reply_targets", "additional_binding_keys")
            }
        };
        let seen = seen.entry(ctx.kind).or_default();
        let name = match self.string(ctx, t, "name") {
            Some((name, at)) => match ConnectorName::new(&name) {
                Ok(valid) => {
                    ctx.label = name.clone();
                    if let Some(&first) = seen.get(&name) {
                        let first_line = self.location(first).line;
                        self.err_help(
                            ctx,
                            at,
                            "name",
                            format!("duplicate {} connector name `{name}` (first used on line {first_line})", ctx.kind),
                            "names must be unique within a kind; rename one of them",
                        );
                    } else {
                        seen.insert(name, at);
                    }
                    Some(valid)
                }
                Err(e) => {
                    self.err_help(
                        ctx,
                        at,
                        "name",
                        format!("invalid name: {e}"),
                        "use 1 to 64 characters of letters, digits, `.`, `_` and `-`",
                    );
                    None
                }
            },
            None => {
                if t.get("name").is_none() {
                    self.err_help(
                        ctx,
                        t.span.start,
                        "name",
                        "missing required field",
                        "add `name = \"...\"` to this table",
                    );
                }
                None
            }
        };
        let fixed_session_id = self.nonblank(ctx, t, "fixed_session_id");
        let allow_unauthenticated_ingress =
            self.boolean(ctx, t, "allow_unauthenticated_ingress", false);
        let ingress_events_per_second = self.int_range(
            ctx,
            t,
            "ingress_events_per_second",
            default_rate,
            1,
            i64::from(u32::MAX),
        );
        let session_policy = self.session_policy(ctx, t);
        let reply_targets = self.reply_targets(ctx, t, targets_key, refs);
        let binding_keys = self.binding_keys(ctx, t, keys_key);
        Some(Common {
            name: name?,
            location: self.location(ctx.start),
            fixed_session_id,
            allow_unauthenticated_ingress,
            ingress_events_per_second,
            session_policy,
            reply_targets,
            binding_keys,
        })
    }

    // ---- the four kinds ----

    fn http(
        &mut self,
        ctx: &mut Ctx,
        t: &Table<'_, '_>,
        seen: &mut Seen,
        refs: &mut Vec<TargetRef>,
    ) -> Option<HttpConnector> {
        let common = self.common(ctx, t, seen, refs);
        self.unknown_keys(ctx, t, &[COMMON_KEYS, HTTP_KEYS]);
        let actor_id = self.nonblank(ctx, t, "actor_id");
        let bearer_token = self.secret(ctx, t, "bearer_token");
        let hmac_secret = self.secret(ctx, t, "hmac_secret");
        let require_hmac = self.boolean_at(ctx, t, "require_hmac_signature");
        let require_hmac_signature = require_hmac.is_some_and(|(b, _)| b);
        let signature_max_age_secs = self.int_range(ctx, t, "signature_max_age_secs", 300, 1, 3600);
        let require_idem = self.boolean_at(ctx, t, "require_idempotency_key");
        let require_idempotency_key = require_idem.is_none_or(|(b, _)| b);
        let allow_payload_reply_targets =
            self.boolean(ctx, t, "allow_payload_reply_targets", false);
        let unauth = self.boolean(ctx, t, "allow_unauthenticated_ingress", false);

        if let Some((true, at)) = require_hmac {
            if hmac_secret.is_none() && !has_any(t, "hmac_secret") {
                self.err_help(
                    ctx,
                    at,
                    "require_hmac_signature",
                    "requires an HMAC secret",
                    "set `hmac_secret_secret_ref` (or `hmac_secret_env`) for this connector",
                );
            }
            if !require_idempotency_key {
                let at = require_idem.map_or(at, |(_, a)| a);
                self.err_help(ctx, at, "require_idempotency_key",
                    "must be true when require_hmac_signature = true (a signed request without an idempotency key could be replayed within the signature window)",
                    "remove `require_idempotency_key = false`");
            }
        }
        if hmac_secret.is_some() && !require_hmac_signature {
            let at = hmac_secret
                .as_ref()
                .map_or(ctx.start, |f| self.offset_of(t, &f.key));
            self.warn(ctx, at, "hmac_secret",
                "an HMAC secret is configured but require_hmac_signature is false, so signatures are not checked".into(),
                "set `require_hmac_signature = true`, or remove the secret".into());
        }
        let authenticated =
            has_any(t, "bearer_token") || (require_hmac_signature && has_any(t, "hmac_secret"));
        if !authenticated && !unauth {
            self.err_help(ctx, ctx.start, "", 
                "accepts unauthenticated requests without the explicit opt-in",
                "configure `bearer_token_secret_ref` / `bearer_token_env`, or `require_hmac_signature = true` with an HMAC secret; or set `allow_unauthenticated_ingress = true` if anonymous senders are intended");
        }
        Some(HttpConnector {
            common: common?,
            actor_id,
            bearer_token,
            hmac_secret,
            require_hmac_signature,
            signature_max_age_secs,
            require_idempotency_key,
            allow_payload_reply_targets,
        })
    }

    fn offset_of(&self, t: &Table<'_, '_>, key: &str) -> usize {
        t.get(key).map_or(t.span.start, |(_, v)| v.span().start)
    }

    fn slack(
        &mut self,
        ctx: &mut Ctx,
        t: &Table<'_, '_>,
        seen: &mut Seen,
        refs: &mut Vec<TargetRef>,
    ) -> Option<SlackConnector> {
        let common = self.common(ctx, t, seen, refs);
        self.unknown_keys(ctx, t, &[COMMON_KEYS, SLACK_KEYS]);
        let bot_token = self.secret(ctx, t, "bot_token");
        let signing_secret = self.secret(ctx, t, "signing_secret");
        let api_base_url = self.api_base_url(ctx, t, "https://slack.com/api");
        let include_self = self.boolean_at(ctx, t, "include_self_output");
        let include_self_output = include_self.is_none_or(|(b, _)| b);
        let allowed_api_app_ids = self.string_list(ctx, t, "allowed_api_app_ids");
        let allowed_enterprise_ids = self.string_list(ctx, t, "allowed_enterprise_ids");
        let allowed_team_ids = self.string_list(ctx, t, "allowed_team_ids");
        let allowed_channel_ids = self.string_list(ctx, t, "allowed_channel_ids");
        let allowed_file_hosts = self.string_list(ctx, t, "allowed_file_hosts");
        for (i, host) in allowed_file_hosts.iter().enumerate() {
            if url::Host::parse(host).is_err() || host.contains(['/', ':', '@']) {
                let at = self
                    .array(ctx, t, "allowed_file_hosts")
                    .and_then(|a| a.get(i))
                    .map_or(ctx.start, |v| v.span().start);
                self.err_help(
                    ctx,
                    at,
                    &format!("allowed_file_hosts[{i}]"),
                    format!("`{host}` is not a host name"),
                    "write the bare host (files.example.com); downloads always use HTTPS",
                );
            }
        }
        let mut team_bot_tokens = Vec::new();
        if let Some(items) = self.array(ctx, t, "team_bot_tokens") {
            let mut team_seen: HashMap<String, usize> = HashMap::new();
            for (i, item) in items.iter().enumerate() {
                let field = format!("team_bot_tokens[{i}]");
                let DeValue::Table(inner) = item.get_ref() else {
                    self.err(
                        ctx,
                        item.span().start,
                        &field,
                        format!("expected a table, found {}", type_name(item.get_ref())),
                    );
                    continue;
                };
                let it = Table {
                    table: inner,
                    span: item.span(),
                    prefix: format!("{field}."),
                };
                self.unknown_keys(ctx, &it, &[TEAM_TOKEN_KEYS]);
                let team = self.string(ctx, &it, "team_id");
                let token = self.secret(ctx, &it, "bot_token");
                if token.is_none() && !has_any(&it, "bot_token") {
                    self.err_help(
                        ctx,
                        it.span.start,
                        &it.path("bot_token"),
                        "missing bot token",
                        "set `bot_token_secret_ref`, `bot_token_env` or `bot_token`",
                    );
                }
                match team {
                    Some((team_id, at)) if !team_id.trim().is_empty() => {
                        if let Some(&first) = team_seen.get(&team_id) {
                            let line = self.location(first).line;
                            self.err_help(
                                ctx,
                                at,
                                &it.path("team_id"),
                                format!("duplicate team_id `{team_id}` (first on line {line})"),
                                "each team may have one bot token; remove one entry",
                            );
                        } else {
                            team_seen.insert(team_id.clone(), at);
                        }
                        if let Some(bot_token) = token {
                            team_bot_tokens.push(TeamBotToken { team_id, bot_token });
                        }
                    }
                    Some((_, at)) => self.err(ctx, at, &it.path("team_id"), "must not be empty"),
                    None => {
                        if it.get("team_id").is_none() {
                            self.err(
                                ctx,
                                it.span.start,
                                &it.path("team_id"),
                                "missing required field",
                            );
                        }
                    }
                }
            }
        }
        let unauth = self.boolean(ctx, t, "allow_unauthenticated_ingress", false);
        if !has_any(t, "signing_secret") && !unauth {
            self.err_help(ctx, ctx.start, "",
                "has no signing secret and no explicit opt-in to unauthenticated ingress",
                "set `signing_secret_secret_ref` (or `signing_secret_env`); or `allow_unauthenticated_ingress = true` for local testing only");
        }
        if include_self_output && !has_any(t, "bot_token") && !has_any(t, "team_bot_tokens") {
            let at = include_self.map_or(ctx.start, |(_, a)| a);
            self.err_help(ctx, at, "include_self_output",
                "replying in the source channel needs a bot token, but none is configured",
                "set `bot_token_secret_ref` / `bot_token_env` or `team_bot_tokens`, or `include_self_output = false`");
        }
        Some(SlackConnector {
            common: common?,
            bot_token,
            signing_secret,
            api_base_url,
            include_self_output,
            allowed_api_app_ids,
            allowed_enterprise_ids,
            allowed_team_ids,
            allowed_channel_ids,
            allowed_file_hosts,
            team_bot_tokens,
        })
    }

    fn api_base_url(&mut self, ctx: &Ctx, t: &Table<'_, '_>, default: &str) -> String {
        match self.string(ctx, t, "api_base_url") {
            Some((url, at)) => {
                if let Err(e) = check_api_base_url(&url) {
                    self.err_help(
                        ctx,
                        at,
                        "api_base_url",
                        format!("invalid URL: {e}"),
                        format!("use an absolute http(s) URL such as `{default}`"),
                    );
                }
                url.trim().trim_end_matches('/').to_string()
            }
            None => default.to_string(),
        }
    }

    fn telegram(
        &mut self,
        ctx: &mut Ctx,
        t: &Table<'_, '_>,
        seen: &mut Seen,
        refs: &mut Vec<TargetRef>,
    ) -> Option<TelegramConnector> {
        let common = self.common(ctx, t, seen, refs);
        self.unknown_keys(ctx, t, &[COMMON_KEYS, TELEGRAM_KEYS]);
        let bot_token = self.secret(ctx, t, "bot_token");
        let secret_token = self.secret(ctx, t, "secret_token");
        let api_base_url = self.api_base_url(ctx, t, "https://api.telegram.org");
        let mode = match self.string(ctx, t, "ingress_mode") {
            Some((m, _)) if m == "webhook" => Some((TelegramMode::Webhook, 0)),
            Some((m, _)) if m == "polling" => Some((TelegramMode::Polling, 0)),
            Some((m, at)) => {
                self.err_help(
                    ctx,
                    at,
                    "ingress_mode",
                    format!("unknown mode `{m}`"),
                    "use \"webhook\" or \"polling\"",
                );
                None
            }
            None => None,
        };
        let ingress_mode = mode.map_or(TelegramMode::Webhook, |(m, _)| m);
        let polling_timeout_seconds = self.int_range(
            ctx,
            t,
            "polling_timeout_seconds",
            30,
            1,
            i64::from(u32::MAX),
        );
        let mut allowed_chat_ids = Vec::new();
        if let Some(items) = self.array(ctx, t, "allowed_chat_ids") {
            for (i, item) in items.iter().enumerate() {
                match int_value(item.get_ref()) {
                    Some(id) => allowed_chat_ids.push(id),
                    None => self.err(
                        ctx,
                        item.span().start,
                        &format!("allowed_chat_ids[{i}]"),
                        format!(
                            "expected an integer chat id, found {}",
                            type_name(item.get_ref())
                        ),
                    ),
                }
            }
        }
        let include_self = self.boolean_at(ctx, t, "include_self_output");
        let include_self_output = include_self.is_none_or(|(b, _)| b);
        let unauth = self.boolean(ctx, t, "allow_unauthenticated_ingress", false);
        let has_bot = has_any(t, "bot_token");
        if ingress_mode == TelegramMode::Polling && !has_bot {
            let at = self.offset_of(t, "ingress_mode");
            self.err_help(
                ctx,
                at,
                "ingress_mode",
                "polling needs a bot token",
                "set `bot_token_secret_ref` or `bot_token_env`",
            );
        }
        if ingress_mode == TelegramMode::Webhook && !has_any(t, "secret_token") && !unauth {
            self.err_help(ctx, ctx.start, "",
                "webhook mode without a secret token and without the explicit opt-in to unauthenticated ingress",
                "set `secret_token_secret_ref` (or `secret_token_env`) and pass it to setWebhook; or `allow_unauthenticated_ingress = true`");
        }
        if include_self_output && !has_bot {
            let at = include_self.map_or(ctx.start, |(_, a)| a);
            self.err_help(
                ctx,
                at,
                "include_self_output",
                "replying in the source chat needs a bot token, but none is configured",
                "set `bot_token_secret_ref` / `bot_token_env`, or `include_self_output = false`",
            );
        }
        Some(TelegramConnector {
            common: common?,
            bot_token,
            secret_token,
            api_base_url,
            ingress_mode,
            polling_timeout_seconds,
            allowed_chat_ids,
            include_self_output,
        })
    }

    fn external(
        &mut self,
        ctx: &mut Ctx,
        t: &Table<'_, '_>,
        seen: &mut Seen,
        refs: &mut Vec<TargetRef>,
    ) -> Option<ExternalConnector> {
        let common = self.common(ctx, t, seen, refs);
        self.unknown_keys(ctx, t, &[COMMON_KEYS, EXTERNAL_KEYS]);
        let platform = self.nonblank(ctx, t, "platform");
        if platform.is_none() && t.get("platform").is_none() {
            self.err_help(
                ctx,
                ctx.start,
                "platform",
                "missing required field",
                "add e.g. `platform = \"discord\"`",
            );
        }
        let mode = match self.string(ctx, t, "mode") {
            Some((m, _)) if m == "remote_http" => Some(ExternalMode::RemoteHttp),
            Some((m, _)) if m == "child_process" => Some(ExternalMode::ChildProcess),
            Some((m, at)) => {
                self.err_help(
                    ctx,
                    at,
                    "mode",
                    format!("unknown mode `{m}`"),
                    "use \"remote_http\" or \"child_process\"",
                );
                None
            }
            None => Some(ExternalMode::RemoteHttp),
        };
        let allow_private_network = self.boolean(ctx, t, "allow_private_network", false);
        let shared_token = self.secret(ctx, t, "shared_token");
        let include_self_output = self.boolean(ctx, t, "include_self_output", true);
        let unauth = self.boolean(ctx, t, "allow_unauthenticated_ingress", false);
        let child_process = self.child_process(ctx, t);

        let base_url = self.string(ctx, t, "base_url");
        if base_url.is_none() && t.get("base_url").is_none() {
            self.err_help(
                ctx,
                ctx.start,
                "base_url",
                "missing required field",
                "add e.g. `base_url = \"http://127.0.0.1:8787\"`",
            );
        }
        if let (Some((raw, at)), Some(mode)) = (&base_url, mode) {
            self.check_base_url(ctx, raw, *at, mode, allow_private_network);
        }
        match mode {
            Some(ExternalMode::RemoteHttp) if t.get("child_process").is_some() => {
                let at = self.offset_of(t, "child_process");
                self.err_help(
                    ctx,
                    at,
                    "child_process",
                    "a remote_http connector must not have a child_process block",
                    "set `mode = \"child_process\"`, or remove the block",
                );
            }
            Some(ExternalMode::ChildProcess) if t.get("child_process").is_none() => {
                let at = self.offset_of(t, "mode");
                self.err_help(
                    ctx,
                    at,
                    "child_process",
                    "child_process mode requires an [external_connectors.child_process] block",
                    "add the block with at least `command = \"...\"`",
                );
            }
            _ => {}
        }
        if !has_any(t, "shared_token") && !unauth {
            self.err_help(ctx, ctx.start, "",
                "has no shared token and no explicit opt-in to unauthenticated ingress",
                "set `shared_token_secret_ref` (or `shared_token_env`); or `allow_unauthenticated_ingress = true`");
        }
        Some(ExternalConnector {
            common: common?,
            platform: platform?,
            mode: mode?,
            base_url: base_url?.0.trim().to_string(),
            allow_private_network,
            shared_token,
            include_self_output,
            child_process,
        })
    }

    fn check_base_url(
        &mut self,
        ctx: &Ctx,
        raw: &str,
        at: usize,
        mode: ExternalMode,
        allow_private: bool,
    ) {
        let url = match crate::model::reply::check_http_url(raw) {
            Ok(url) => url,
            Err(e) => {
                self.err_help(
                    ctx,
                    at,
                    "base_url",
                    format!("invalid URL: {e}"),
                    "use an absolute http(s) URL such as `https://sidecar.example.com`",
                );
                return;
            }
        };
        let host = url.host().expect("check_http_url guarantees a host");
        match mode {
            ExternalMode::ChildProcess => {
                if !crate::net::is_loopback_host(&host) {
                    self.err_help(ctx, at, "base_url", "a child_process sidecar must listen on loopback",
                        "use `http://127.0.0.1:PORT` (the daemon starts the sidecar on this machine)");
                }
                if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
                    self.err_help(
                        ctx,
                        at,
                        "base_url",
                        "a child_process base_url must not have a path, query or fragment",
                        "use only scheme, host and port, e.g. `http://127.0.0.1:8787`",
                    );
                }
            }
            ExternalMode::RemoteHttp => {
                let private = match &host {
                    url::Host::Domain(d) => crate::net::is_localhost_name(d),
                    url::Host::Ipv4(v4) => !crate::net::is_public_ip((*v4).into()),
                    url::Host::Ipv6(v6) => !crate::net::is_public_ip((*v6).into()),
                };
                if private && !allow_private {
                    self.err_help(
                        ctx,
                        at,
                        "base_url",
                        "points at a loopback, private, link-local or otherwise non-public address",
                        "set `allow_private_network = true` for a trusted local sidecar",
                    );
                }
                if url.query().is_some() || url.fragment().is_some() {
                    self.err(ctx, at, "base_url", "must not have a query or fragment");
                }
            }
        }
    }

    fn child_process(&mut self, ctx: &Ctx, t: &Table<'_, '_>) -> Option<ChildProcess> {
        let cp = self.sub_table(ctx, t, "child_process")?;
        self.unknown_keys(ctx, &cp, &[CHILD_PROCESS_KEYS]);
        let command = self.nonblank(ctx, &cp, "command");
        if command.is_none() && cp.get("command").is_none() {
            self.err_help(
                ctx,
                cp.span.start,
                &cp.path("command"),
                "missing required field",
                "add `command = \"...\"`",
            );
        }
        let args = match self.array(ctx, &cp, "args") {
            Some(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.get_ref() {
                        DeValue::String(s) => out.push(s.to_string()),
                        other => self.err(
                            ctx,
                            item.span().start,
                            &format!("{}[{i}]", cp.path("args")),
                            format!("expected a string, found {}", type_name(other)),
                        ),
                    }
                }
                out
            }
            None => Vec::new(),
        };
        let env = self.env_table(ctx, &cp, "env", false);
        let credential_slots = self.env_table(ctx, &cp, "credential_slots", true);
        for (key, _) in &credential_slots {
            if env.iter().any(|(k, _)| k == key) {
                let at = self.offset_of(&cp, "credential_slots");
                self.err_help(
                    ctx,
                    at,
                    &cp.path("credential_slots"),
                    format!("`{key}` is set both in env and in credential_slots"),
                    "keep it in credential_slots only, so the value comes from the secret store",
                );
            }
        }
        let working_dir = self.nonblank(ctx, &cp, "working_dir").map(Into::into);
        Some(ChildProcess {
            command: command?,
            args,
            env,
            credential_slots,
            working_dir,
            location: self.location(cp.span.start),
        })
    }

    /// `env` (values are plain strings) or `credential_slots` (values are secret refs).
    fn env_table(
        &mut self,
        ctx: &Ctx,
        t: &Table<'_, '_>,
        key: &str,
        refs: bool,
    ) -> Vec<(String, String)> {
        let Some(inner) = self.sub_table(ctx, t, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in inner.table.iter() {
            let name = k.get_ref().to_string();
            let field = inner.path(&name);
            if !valid_env_name(&name) {
                self.err(
                    ctx,
                    k.span().start,
                    &field,
                    format!("`{name}` is not a valid environment variable name"),
                );
                continue;
            }
            if name.starts_with(RESERVED_ENV_PREFIX) {
                self.err_help(ctx, k.span().start, &field,
                    format!("`{name}` is reserved: the daemon sets {RESERVED_ENV_PREFIX}* variables itself"),
                    "choose another name");
                continue;
            }
            let DeValue::String(value) = v.get_ref() else {
                self.err(
                    ctx,
                    v.span().start,
                    &field,
                    format!("expected a string, found {}", type_name(v.get_ref())),
                );
                continue;
            };
            if refs {
                if let Err(e) = check_secret_ref(value) {
                    self.err(ctx, v.span().start, &field, format!("secret ref {e}"));
                    continue;
                }
            }
            out.push((name, value.to_string()));
        }
        out
    }

    // ---- top level ----

    fn config(&mut self, root: &DeTable<'_>) -> Config {
        let mut config = Config::default();
        let mut seen: Seen = BTreeMap::new();
        let mut refs: Vec<TargetRef> = Vec::new();
        let sections: Vec<&str> = ConnectorKind::ALL.iter().map(|k| k.section()).collect();
        for (key, value) in root.iter() {
            let name = key.get_ref().as_ref();
            let Some(kind) = ConnectorKind::ALL.into_iter().find(|k| k.section() == name) else {
                let help = match suggest(name, &sections) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("valid top-level keys: {}", sections.join(", ")),
                };
                self.push(
                    Severity::Error,
                    key.span().start,
                    Subject {
                        kind: None,
                        connector: None,
                        field: Some(name.to_string()),
                    },
                    format!("unknown key `{name}`"),
                    Some(help),
                );
                continue;
            };
            let DeValue::Array(items) = value.get_ref() else {
                self.push(
                    Severity::Error,
                    key.span().start,
                    Subject {
                        kind: None,
                        connector: None,
                        field: Some(name.to_string()),
                    },
                    format!(
                        "expected an array of tables, found {}",
                        type_name(value.get_ref())
                    ),
                    Some(format!("declare each connector with a `[[{name}]]` header")),
                );
                continue;
            };
            for (i, item) in items.iter().enumerate() {
                let mut ctx = Ctx {
                    kind,
                    label: format!("#{}", i + 1),
                    start: item.span().start,
                };
                let DeValue::Table(table) = item.get_ref() else {
                    self.err_help(
                        &ctx,
                        item.span().start,
                        "",
                        format!("expected a table, found {}", type_name(item.get_ref())),
                        format!("declare each connector with a `[[{name}]]` header"),
                    );
                    continue;
                };
                let t = Table {
                    table,
                    span: item.span(),
                    prefix: String::new(),
                };
                match kind {
                    ConnectorKind::Http => {
                        if let Some(c) = self.http(&mut ctx, &t, &mut seen, &mut refs) {
                            config.http.push(c);
                        }
                    }
                    ConnectorKind::Slack => {
                        if let Some(c) = self.slack(&mut ctx, &t, &mut seen, &mut refs) {
                            config.slack.push(c);
                        }
                    }
                    ConnectorKind::Telegram => {
                        if let Some(c) = self.telegram(&mut ctx, &t, &mut seen, &mut refs) {
                            config.telegram.push(c);
                        }
                    }
                    ConnectorKind::External => {
                        if let Some(c) = self.external(&mut ctx, &t, &mut seen, &mut refs) {
                            config.external.push(c);
                        }
                    }
                }
            }
        }
        for r in refs {
            self.check_target_ref(&config, &seen, r);
        }
        config
    }

    /// A chat/sidecar reply target must name a connector of its plugin's kind, and respect that
    /// connector's allowlists (SPEC §8, §9.3, §11.2).
    fn check_target_ref(&mut self, config: &Config, seen: &Seen, r: TargetRef) {
        let (kind, name) = match &r.parsed {
            TargetAddress::Http(_) => return,
            TargetAddress::Slack(a) => (ConnectorKind::Slack, &a.connector),
            TargetAddress::Telegram(a) => (ConnectorKind::Telegram, &a.connector),
            TargetAddress::External(a) => (ConnectorKind::External, &a.connector),
        };
        if !seen
            .get(&kind)
            .is_some_and(|names| names.contains_key(name.as_str()))
        {
            self.err_help(
                &r.ctx,
                r.at,
                &r.field,
                format!("names {kind} connector `{name}`, which this file does not declare"),
                format!("declare it in `[[{}]]` or fix the name", kind.section()),
            );
            return;
        }
        match &r.parsed {
            TargetAddress::Slack(a) => {
                let Some(c) = config.slack.iter().find(|c| c.common.name.as_str() == name) else {
                    return;
                };
                let checks = [
                    (
                        "channel",
                        Some(&a.channel_id),
                        &c.allowed_channel_ids,
                        "allowed_channel_ids",
                    ),
                    (
                        "team",
                        a.team_id.as_ref(),
                        &c.allowed_team_ids,
                        "allowed_team_ids",
                    ),
                    (
                        "enterprise",
                        a.enterprise_id.as_ref(),
                        &c.allowed_enterprise_ids,
                        "allowed_enterprise_ids",
                    ),
                ];
                for (what, value, allow, list) in checks {
                    if let Some(v) = value {
                        if !allow.is_empty() && !allow.contains(v) {
                            self.err_help(
                                &r.ctx,
                                r.at,
                                &r.field,
                                format!("{what} `{v}` is not in slack connector `{name}`'s {list}"),
                                format!("add it to {list}, or target an allowed {what}"),
                            );
                        }
                    }
                }
            }
            TargetAddress::Telegram(a) => {
                let Some(c) = config
                    .telegram
                    .iter()
                    .find(|c| c.common.name.as_str() == name)
                else {
                    return;
                };
                if c.allowed_chat_ids.is_empty() {
                    return;
                }
                let allowed =
                    matches!(a.chat_id, ChatId::Id(id) if c.allowed_chat_ids.contains(&id));
                if !allowed {
                    self.err_help(
                        &r.ctx,
                        r.at,
                        &r.field,
                        format!("chat is not in telegram connector `{name}`'s allowed_chat_ids"),
                        "add the chat id to allowed_chat_ids, or target an allowed chat",
                    );
                }
            }
            _ => {}
        }
    }
}

type Seen = BTreeMap<ConnectorKind, HashMap<String, usize>>;

/// A reply target that names another connector, checked once every connector is known.
struct TargetRef {
    ctx: Ctx,
    field: String,
    at: usize,
    parsed: TargetAddress,
}

/// True when any key of the secret triplet `base` is present (even if invalid): used by the
/// "needs a secret" rules so that a malformed secret is reported once, not twice.
fn has_any(t: &Table<'_, '_>, base: &str) -> bool {
    [
        base.to_string(),
        format!("{base}_env"),
        format!("{base}_secret_ref"),
    ]
    .iter()
    .any(|k| t.get(k).is_some())
}

fn address_help(plugin: ReplyPlugin) -> String {
    match plugin {
        ReplyPlugin::Http => r#"use a URL ("https://example.com/hook") or '{"url":"https://…","headers":{"X-Name":"v"}}'"#.into(),
        ReplyPlugin::Slack => r#"use '{"connector":"NAME","channel_id":"C123","thread_ts":"…"}'"#.into(),
        ReplyPlugin::Telegram => r#"use '{"connector":"NAME","chat_id":123456}'"#.into(),
        ReplyPlugin::External => r#"use '{"connector":"NAME","route":{…}}'"#.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diags(text: &str) -> Vec<Diagnostic> {
        parse_str("t.toml", text).diagnostics
    }

    /// Asserts that exactly the expected (severity, line, field, message fragment) appear.
    fn check(text: &str, expected: &[(&str, u32, &str, &str)]) {
        let got = diags(text);
        let rendered: Vec<String> = got
            .iter()
            .map(|d| format!("{d} | help: {:?}", d.help))
            .collect();
        assert_eq!(
            got.len(),
            expected.len(),
            "diagnostics:\n{}",
            rendered.join("\n")
        );
        for (d, (sev, line, subject, fragment)) in got.iter().zip(expected) {
            assert_eq!(d.severity.to_string(), *sev, "{d}");
            assert_eq!(d.line, *line, "{d}");
            assert_eq!(d.subject().unwrap_or_default(), *subject, "{d}");
            assert!(
                d.message.contains(fragment),
                "{d} should contain {fragment:?}"
            );
        }
    }

    const OK_HTTP: &str =
        "[[http_connectors]]\nname = \"orders\"\nbearer_token_env = \"ORDERS_TOKEN\"\n";

    #[test]
    fn minimal_http_is_valid() {
        let loaded = parse_str("t.toml", OK_HTTP);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        let c = &loaded.config.http[0];
        assert_eq!(c.signature_max_age_secs, 300);
        assert!(c.require_idempotency_key);
        assert_eq!(c.common.ingress_events_per_second, 60);
    }

    #[test]
    fn empty_file_is_valid() {
        assert!(diags("").is_empty());
    }

    #[test]
    fn syntax_error_has_position() {
        let d = diags("[[http_connectors]]\nname = orders\n");
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].line, 2);
        assert!(d[0].message.starts_with("invalid TOML"), "{}", d[0]);
    }

    #[test]
    fn unknown_key_suggests() {
        let d = diags(&format!("{OK_HTTP}bearer_tokn_env = \"X\"\n"));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            d[0].help.as_deref(),
            Some("did you mean `bearer_token_env`?")
        );
        assert_eq!(d[0].line, 4);
        assert_eq!(d[0].column, 1);
    }

    #[test]
    fn unknown_top_level_suggests() {
        let d = diags("[[http_connector]]\nname = \"a\"\n");
        assert_eq!(
            d[0].help.as_deref(),
            Some("did you mean `http_connectors`?")
        );
    }

    #[test]
    fn max_age_range() {
        check(
            &format!("{OK_HTTP}signature_max_age_secs = 0\n"),
            &[(
                "error",
                4,
                "http_connectors[orders].signature_max_age_secs",
                "must be between 1 and 3600 (got 0)",
            )],
        );
    }

    #[test]
    fn wrong_types() {
        check(
            &format!(
                "{OK_HTTP}require_idempotency_key = \"yes\"\ningress_events_per_second = 1.5\n"
            ),
            &[
                (
                    "error",
                    4,
                    "http_connectors[orders].require_idempotency_key",
                    "expected a boolean",
                ),
                (
                    "error",
                    5,
                    "http_connectors[orders].ingress_events_per_second",
                    "expected an integer, found a float",
                ),
            ],
        );
    }

    #[test]
    fn names() {
        check(
            "[[http_connectors]]\nname = \"a:b\"\nallow_unauthenticated_ingress = true\n",
            &[("error", 2, "http_connectors[#1].name", "invalid name")],
        );
        check(
            &format!(
                "[[http_connectors]]\nname = \"{}\"\nallow_unauthenticated_ingress = true\n",
                "x".repeat(65)
            ),
            &[("error", 2, "http_connectors[#1].name", "at most 64")],
        );
        check(
            "[[http_connectors]]\nallow_unauthenticated_ingress = true\n",
            &[(
                "error",
                1,
                "http_connectors[#1].name",
                "missing required field",
            )],
        );
        check(
            &format!("{OK_HTTP}{OK_HTTP}"),
            &[(
                "error",
                5,
                "http_connectors[orders].name",
                "duplicate http connector name `orders` (first used on line 2)",
            )],
        );
        // The same name in two kinds is fine.
        assert!(diags(&format!("{OK_HTTP}[[external_connectors]]\nname = \"orders\"\nplatform = \"x\"\nbase_url = \"https://example.com\"\nallow_unauthenticated_ingress = true\n")).is_empty());
    }

    #[test]
    fn hmac_rules() {
        check(
            "[[http_connectors]]\nname = \"h\"\nrequire_hmac_signature = true\n",
            &[
                ("error", 1, "http_connectors[h]", "unauthenticated"),
                (
                    "error",
                    3,
                    "http_connectors[h].require_hmac_signature",
                    "requires an HMAC secret",
                ),
            ],
        );
        check("[[http_connectors]]\nname = \"h\"\nrequire_hmac_signature = true\nhmac_secret_env = \"H\"\nrequire_idempotency_key = false\n", &[
            ("error", 5, "http_connectors[h].require_idempotency_key", "must be true"),
        ]);
        // HMAC-only counts as authenticated.
        assert!(diags("[[http_connectors]]\nname = \"h\"\nrequire_hmac_signature = true\nhmac_secret_env = \"H\"\n").is_empty());
    }

    #[test]
    fn unauthenticated_needs_opt_in() {
        check(
            "[[http_connectors]]\nname = \"open\"\n",
            &[("error", 1, "http_connectors[open]", "unauthenticated")],
        );
        assert!(diags(
            "[[http_connectors]]\nname = \"open\"\nallow_unauthenticated_ingress = true\n"
        )
        .is_empty());
        check(
            "[[slack_connectors]]\nname = \"s\"\nbot_token_env = \"B\"\n",
            &[("error", 1, "slack_connectors[s]", "no signing secret")],
        );
        check(
            "[[telegram_connectors]]\nname = \"t\"\nbot_token_env = \"B\"\n",
            &[(
                "error",
                1,
                "telegram_connectors[t]",
                "without a secret token",
            )],
        );
        check("[[external_connectors]]\nname = \"e\"\nplatform = \"p\"\nbase_url = \"https://example.com\"\n",
            &[("error", 1, "external_connectors[e]", "no shared token")]);
    }

    #[test]
    fn secret_precedence_and_inline_warnings() {
        check(&format!("{OK_HTTP}bearer_token_secret_ref = \"connectors.http.orders.bearer_token\"\nbearer_token = \"inline-value\"\n"), &[
            ("warning", 3, "http_connectors[orders].bearer_token_env", "ignored: `bearer_token_secret_ref` takes precedence"),
            ("warning", 5, "http_connectors[orders].bearer_token", "ignored"),
        ]);
        let loaded = parse_str(
            "t.toml",
            "[[http_connectors]]\nname = \"o\"\nbearer_token = \"s3cr3t-value\"\n",
        );
        assert_eq!(loaded.diagnostics.len(), 1);
        assert_eq!(loaded.diagnostics[0].severity, Severity::Warning);
        assert!(!format!("{:?}", loaded.diagnostics).contains("s3cr3t-value"));
        assert!(!format!("{:?}", loaded.config).contains("s3cr3t-value"));
        check(
            "[[http_connectors]]\nname = \"o\"\nbearer_token = \"  \"\n",
            &[(
                "error",
                3,
                "http_connectors[o].bearer_token",
                "secret is empty",
            )],
        );
        check(
            "[[http_connectors]]\nname = \"o\"\nbearer_token_env = \"1BAD\"\n",
            &[(
                "error",
                3,
                "http_connectors[o].bearer_token_env",
                "not a valid environment variable name",
            )],
        );
    }

    #[test]
    fn urls() {
        let tg = "[[telegram_connectors]]\nname = \"t\"\nbot_token_env = \"B\"\nsecret_token_env = \"S\"\n";
        for (url, fragment) in [
            ("https://user:pw@api.telegram.org", "credentials"),
            ("https://api.telegram.org?x=1", "query"),
            ("https://api.telegram.org#f", "fragment"),
            ("api.telegram.org", "absolute URL"),
        ] {
            check(
                &format!("{tg}api_base_url = \"{url}\"\n"),
                &[("error", 5, "telegram_connectors[t].api_base_url", fragment)],
            );
        }
    }

    #[test]
    fn external_modes() {
        let head = "[[external_connectors]]\nname = \"d\"\nplatform = \"discord\"\nallow_unauthenticated_ingress = true\n";
        check(&format!("{head}mode = \"child_process\"\nbase_url = \"http://10.0.0.5:8787\"\n[external_connectors.child_process]\ncommand = \"python3\"\n"),
            &[("error", 6, "external_connectors[d].base_url", "must listen on loopback")]);
        check(&format!("{head}mode = \"child_process\"\nbase_url = \"http://127.0.0.1:8787/x\"\n[external_connectors.child_process]\ncommand = \"python3\"\n"),
            &[("error", 6, "external_connectors[d].base_url", "path")]);
        check(
            &format!("{head}mode = \"child_process\"\nbase_url = \"http://127.0.0.1:8787\"\n"),
            &[(
                "error",
                5,
                "external_connectors[d].child_process",
                "requires",
            )],
        );
        check(
            &format!("{head}base_url = \"http://127.0.0.1:8787\"\n"),
            &[("error", 5, "external_connectors[d].base_url", "non-public")],
        );
        assert!(diags(&format!(
            "{head}base_url = \"http://127.0.0.1:8787\"\nallow_private_network = true\n"
        ))
        .is_empty());
        check(&format!("{head}base_url = \"http://127.0.0.1:1\"\nallow_private_network = true\n[external_connectors.child_process]\ncommand = \"x\"\n"),
            &[("error", 7, "external_connectors[d].child_process", "must not have a child_process block")]);
    }

    #[test]
    fn reserved_env_names() {
        let text = "[[external_connectors]]\nname = \"d\"\nplatform = \"discord\"\nallow_unauthenticated_ingress = true\nmode = \"child_process\"\nbase_url = \"http://127.0.0.1:8787\"\n[external_connectors.child_process]\ncommand = \"python3\"\nenv = { KHEISH_EXTERNAL_CONNECTOR_NAME = \"x\" }\ncredential_slots = { KHEISH_EXTERNAL_CONNECTOR_SHARED_TOKEN = \"a.b\" }\n";
        check(text, &[
            ("error", 9, "external_connectors[d].child_process.env.KHEISH_EXTERNAL_CONNECTOR_NAME", "reserved"),
            ("error", 10, "external_connectors[d].child_process.credential_slots.KHEISH_EXTERNAL_CONNECTOR_SHARED_TOKEN", "reserved"),
        ]);
    }

    #[test]
    fn seed_example_is_valid() {
        let seed = r#"
[[external_connectors]]
name = "discord-main"
platform = "discord"
mode = "child_process"
base_url = "http://127.0.0.1:8787"
shared_token_secret_ref = "connectors.external.discord-main.shared_token"
include_self_output = true
ingress_events_per_second = 100

[external_connectors.session_policy]
create_if_missing = true
credential_scope.route_allow = ["openai"]

[external_connectors.child_process]
command = "python3"
args = ["connectors/python/run_connector.py", "discord"]

[external_connectors.child_process.env]
DISCORD_REQUIRE_MENTION = "true"

[external_connectors.child_process.credential_slots]
DISCORD_BOT_TOKEN = "connectors.external.discord-main.bot_token"
"#;
        let loaded = parse_str("seed.toml", seed);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        let c = &loaded.config.external[0];
        assert_eq!(c.mode, ExternalMode::ChildProcess);
        assert!(c.common.session_policy.create_if_missing);
        assert_eq!(
            c.common.session_policy.credential_scope["route_allow"],
            serde_json::json!(["openai"])
        );
        let cp = c.child_process.as_ref().unwrap();
        assert_eq!(
            cp.credential_slots,
            vec![(
                "DISCORD_BOT_TOKEN".to_string(),
                "connectors.external.discord-main.bot_token".to_string()
            )]
        );
    }

    #[test]
    fn reply_targets_and_allowlists() {
        let text = r#"[[http_connectors]]
name = "orders"
allow_unauthenticated_ingress = true
default_reply_targets = [
  { plugin = "http", address = "https://user:pw@example.com" },
  { plugin = "slack", address = '{"connector":"support","channel_id":"C9"}' },
  { plugin = "telegram", address = '{"connector":"nobody","chat_id":1}' },
  { plugin = "pigeon", address = "x" },
]
[[slack_connectors]]
name = "support"
signing_secret_env = "S"
bot_token_env = "B"
allowed_channel_ids = ["C1"]
"#;
        check(
            text,
            &[
                (
                    "error",
                    5,
                    "http_connectors[orders].default_reply_targets[0].address",
                    "credentials",
                ),
                (
                    "error",
                    6,
                    "http_connectors[orders].default_reply_targets[1].address",
                    "not in slack connector `support`'s allowed_channel_ids",
                ),
                (
                    "error",
                    7,
                    "http_connectors[orders].default_reply_targets[2].address",
                    "which this file does not declare",
                ),
                (
                    "error",
                    8,
                    "http_connectors[orders].default_reply_targets[3].plugin",
                    "unknown plugin",
                ),
            ],
        );
    }

    #[test]
    fn slack_team_tokens() {
        let text = "[[slack_connectors]]\nname = \"s\"\nsigning_secret_env = \"S\"\nteam_bot_tokens = [\n { team_id = \"T1\", bot_token_env = \"A\" },\n { team_id = \"T1\", bot_token_env = \"B\" },\n { team_id = \"T2\" },\n]\n";
        check(
            text,
            &[
                (
                    "error",
                    6,
                    "slack_connectors[s].team_bot_tokens[1].team_id",
                    "duplicate team_id `T1`",
                ),
                (
                    "error",
                    7,
                    "slack_connectors[s].team_bot_tokens[2].bot_token",
                    "missing bot token",
                ),
            ],
        );
    }

    #[test]
    fn many_problems_are_all_reported() {
        let text = "[[http_connectors]]\nname = \"a\"\nsignature_max_age_secs = 0\nbogus = 1\n[[telegram_connectors]]\nname = \"t\"\ningress_mode = \"polling\"\nallow_unauthenticated_ingress = true\ninclude_self_output = false\n";
        let d = diags(text);
        assert_eq!(d.len(), 4, "{d:#?}");
    }

    #[test]
    fn binding_keys_are_normalised() {
        let loaded = parse_str("t.toml", "[[http_connectors]]\nname = \"o\"\nallow_unauthenticated_ingress = true\ndefault_binding_keys = [\" b \", \"a\", \"b\"]\n");
        assert_eq!(loaded.config.http[0].common.binding_keys, vec!["a", "b"]);
        check("[[http_connectors]]\nname = \"o\"\nallow_unauthenticated_ingress = true\ndefault_binding_keys = [\"\"]\n",
            &[("error", 4, "http_connectors[o].default_binding_keys[0]", "must not be empty")]);
    }

    #[test]
    fn columns_count_characters() {
        let idx = LineIndex::new("ab\né = 1\n");
        let at = |line, column| Location {
            line,
            column,
            pointer: None,
        };
        assert_eq!(idx.locate(0), at(1, 1));
        assert_eq!(idx.locate(3), at(2, 1));
        assert_eq!(idx.locate(6), at(2, 3));
    }
}
