//! Pure domain types shared by every layer: connector kinds and names, reply targets, diagnostics,
//! durations. No I/O, no clock, no global state; everything here can fail only on validation.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub mod delivery;
pub mod reply;
pub mod run;

/// The four connector kinds of SPEC §0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectorKind {
    Http,
    Slack,
    Telegram,
    External,
}

impl ConnectorKind {
    pub const ALL: [ConnectorKind; 4] = [
        ConnectorKind::Http,
        ConnectorKind::Slack,
        ConnectorKind::Telegram,
        ConnectorKind::External,
    ];

    /// The kind's word as it appears in routes, ids and receipt keys (`http`, `slack`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorKind::Http => "http",
            ConnectorKind::Slack => "slack",
            ConnectorKind::Telegram => "telegram",
            ConnectorKind::External => "external",
        }
    }

    /// True when this build serves connectors of this kind (its ingress route exists). The
    /// connector issues of the roadmap each add their kind here, with its route and transport.
    pub fn served(self) -> bool {
        matches!(
            self,
            ConnectorKind::Http
                | ConnectorKind::Slack
                | ConnectorKind::Telegram
                | ConnectorKind::External
        )
    }

    /// The one warning about a configured connector of a kind this build does not serve
    /// (`serve` logs it, `validate` reports it).
    pub fn unserved_warning(self, name: &str) -> String {
        format!(
            "{self} connector `{name}` is configured but not served by this build; its webhook answers 404"
        )
    }

    /// The top-level TOML array that declares connectors of this kind (`http_connectors`, …).
    pub fn section(self) -> &'static str {
        match self {
            ConnectorKind::Http => "http_connectors",
            ConnectorKind::Slack => "slack_connectors",
            ConnectorKind::Telegram => "telegram_connectors",
            ConnectorKind::External => "external_connectors",
        }
    }
}

impl fmt::Display for ConnectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConnectorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ConnectorKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown connector kind `{s}`; expected http, slack, telegram or external")
            })
    }
}

/// A connector name: 1..=64 characters of `[A-Za-z0-9._-]` (so never a `:`, which ids use as
/// a separator, and never a `/`, which routes use).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ConnectorName(String);

impl ConnectorName {
    pub const MAX_LEN: usize = 64;

    pub fn new(name: &str) -> Result<ConnectorName, String> {
        if name.is_empty() {
            return Err("must not be empty".to_string());
        }
        if name.chars().count() > Self::MAX_LEN {
            return Err(format!(
                "must be at most {} characters (got {})",
                Self::MAX_LEN,
                name.chars().count()
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
        Ok(ConnectorName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConnectorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `KIND/NAME`, as used by CLI filters and the `connector` member of ingress responses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectorId {
    pub kind: ConnectorKind,
    pub name: ConnectorName,
}

impl fmt::Display for ConnectorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

impl FromStr for ConnectorId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, name) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not KIND/NAME (for example `http/orders`)"))?;
        Ok(ConnectorId {
            kind: kind.parse()?,
            name: ConnectorName::new(name).map_err(|e| format!("connector name `{name}` {e}"))?,
        })
    }
}

/// Severity of a [`Diagnostic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem found in a connector config (SPEC §1.3 `validate`). Serialises to the JSON shape
/// of `validate --json`; `Display` renders the human form without the `help:` line:
/// `error: FILE:LINE:COL: SUBJECT: MESSAGE` for a TOML file, and
/// `error: SOURCE#POINTER: SUBJECT: MESSAGE` for a JSON document (the pointer in its RFC 6901
/// URI-fragment place, not percent-encoded; `SOURCE#` alone is the whole document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file as the operator named it (or `<runtime>` for daemon-managed connectors).
    pub file: String,
    /// 1-based line; 0 when the problem concerns the whole file.
    pub line: u32,
    /// 1-based column, counted in characters.
    pub column: u32,
    /// RFC 6901 pointer into a JSON document (daemon-managed connectors); `line` and `column`
    /// are then 0. Absent for TOML files, and then left out of the JSON form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    pub connector_kind: Option<ConnectorKind>,
    pub connector: Option<String>,
    /// Dotted field path inside the connector (`session_policy.persona_id`), or the top-level key.
    pub field: Option<String>,
    /// What is wrong. Never contains a secret value.
    pub message: String,
    /// What to do about it, where a fix is known.
    pub help: Option<String>,
}

impl Diagnostic {
    /// The `http_connectors[orders].signature_max_age_secs` part of the human form.
    pub fn subject(&self) -> Option<String> {
        let mut out = String::new();
        if let Some(kind) = self.connector_kind {
            out.push_str(kind.section());
            if let Some(name) = &self.connector {
                out.push('[');
                out.push_str(name);
                out.push(']');
            }
        }
        if let Some(field) = &self.field {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(field);
        }
        (!out.is_empty()).then_some(out)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.severity, self.file)?;
        if let Some(pointer) = &self.pointer {
            write!(f, "#{pointer}")?;
        } else if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        f.write_str(": ")?;
        if let Some(subject) = self.subject() {
            write!(f, "{subject}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// An error and every cause under it, `outer: cause: root`, for log lines (a response body
/// never carries it: causes may name file-system paths).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut chain = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}

/// The current time in milliseconds since the Unix epoch. The one clock read for code above
/// `model`; `model` itself never calls it (functions here take `now_ms` as an argument).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Renders milliseconds since the epoch as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses a WHEN flag value: a DURATION ago (`30m`, `7d`) or an RFC 3339 time; returns
/// milliseconds since the epoch.
pub fn parse_when(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_ms - d.as_millis() as i64);
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        })
        .map_err(|_| format!("`{s}` is neither a duration ago (30m, 7d) nor an RFC 3339 time"))
}

/// Parses a DURATION flag value: `30s`, `10m`, `2h`, `7d` (and combinations humantime accepts,
/// such as `1h30m`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}); use for example 30s, 10m, 2h or 7d"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_name(name: &str, ok: bool) {
        assert_eq!(ConnectorName::new(name).is_ok(), ok, "{name:?}");
    }

    #[test]
    fn names() {
        check_name("orders", true);
        check_name("discord-main", true);
        check_name("a.b_c-9", true);
        check_name(&"x".repeat(64), true);
        check_name(&"x".repeat(65), false);
        check_name("", false);
        check_name("a:b", false);
        check_name("a/b", false);
        check_name("a b", false);
        check_name("é", false);
    }

    #[test]
    fn connector_ids() {
        let id: ConnectorId = "http/orders".parse().unwrap();
        assert_eq!(id.kind, ConnectorKind::Http);
        assert_eq!(id.to_string(), "http/orders");
        assert!("orders".parse::<ConnectorId>().is_err());
        assert!("ftp/orders".parse::<ConnectorId>().is_err());
        assert!("http/a:b".parse::<ConnectorId>().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap().as_secs(), 30);
        assert_eq!(parse_duration("10m").unwrap().as_secs(), 600);
        assert_eq!(parse_duration("2h").unwrap().as_secs(), 7200);
        assert_eq!(parse_duration("7d").unwrap().as_secs(), 7 * 86400);
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn when_values() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_when("10m", now).unwrap(), now - 600_000);
        assert_eq!(
            parse_when("2023-11-14T22:13:20Z", now).unwrap(),
            1_700_000_000_000
        );
        assert!(parse_when("yesterday-ish", now).is_err());
        assert_eq!(rfc3339_ms(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn diagnostic_renders_like_the_spec() {
        let d = Diagnostic {
            severity: Severity::Error,
            file: "kheishctl.toml".into(),
            line: 7,
            column: 26,
            pointer: None,
            connector_kind: Some(ConnectorKind::Http),
            connector: Some("orders".into()),
            field: Some("signature_max_age_secs".into()),
            message: "must be between 1 and 3600 (got 0)".into(),
            help: None,
        };
        assert_eq!(
            d.to_string(),
            "error: kheishctl.toml:7:26: http_connectors[orders].signature_max_age_secs: must be between 1 and 3600 (got 0)"
        );
        let json = serde_json::to_value(&d).unwrap_or_default();
        assert!(json.get("pointer").is_none(), "{json}");
        let d = Diagnostic {
            line: 0,
            column: 0,
            pointer: Some("/http_connectors/0/signature_max_age_secs".into()),
            file: "<runtime>".into(),
            ..d
        };
        assert_eq!(
            d.to_string(),
            "error: <runtime>#/http_connectors/0/signature_max_age_secs: http_connectors[orders].signature_max_age_secs: must be between 1 and 3600 (got 0)"
        );
        let json = serde_json::to_value(&d).unwrap_or_default();
        assert_eq!(json["pointer"], "/http_connectors/0/signature_max_age_secs");
    }
}
