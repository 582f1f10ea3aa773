//! Reply targets (SPEC §11.2): `{"plugin", "address"}` pairs and the shape rules of each plugin's
//! address. Pure: whether a named connector exists, and its allowlists, are checked by callers
//! that know the connectors.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The delivery plugins a reply target can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyPlugin {
    Http,
    Slack,
    Telegram,
    External,
}

impl ReplyPlugin {
    pub const NAMES: [&'static str; 4] = ["http", "slack", "telegram", "external"];

    pub fn parse(s: &str) -> Result<ReplyPlugin, String> {
        match s {
            "http" => Ok(ReplyPlugin::Http),
            "slack" => Ok(ReplyPlugin::Slack),
            "telegram" => Ok(ReplyPlugin::Telegram),
            "external" => Ok(ReplyPlugin::External),
            other => Err(format!(
                "unknown plugin `{other}`; expected one of http, slack, telegram, external"
            )),
        }
    }

    /// True when this build has a delivery transport for the plugin; targets of other plugins
    /// are refused when stored (they could only dead-letter).
    pub fn served(self) -> bool {
        matches!(
            self,
            ReplyPlugin::Http | ReplyPlugin::Slack | ReplyPlugin::Telegram | ReplyPlugin::External
        )
    }

    /// Why a target of an unserved plugin is refused, in the words of
    /// [`ConnectorKind::unserved_warning`](crate::model::ConnectorKind::unserved_warning).
    pub fn unserved_reason(self) -> String {
        let served: Vec<String> = ReplyPlugin::NAMES
            .iter()
            .filter(|n| ReplyPlugin::parse(n).is_ok_and(ReplyPlugin::served))
            .map(|n| format!("`{n}`"))
            .collect();
        format!(
            "{} reply targets are not served by this build; its deliveries could not be sent (use one of {})",
            self.as_str(),
            served.join(", ")
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReplyPlugin::Http => "http",
            ReplyPlugin::Slack => "slack",
            ReplyPlugin::Telegram => "telegram",
            ReplyPlugin::External => "external",
        }
    }
}

/// A reply target as stored and sent around: the plugin and its address string. Construct it
/// with [`ReplyTarget::new`] so the address is known to be well-formed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTarget {
    pub plugin: ReplyPlugin,
    pub address: String,
}

impl ReplyTarget {
    /// Validates `address` for `plugin` and returns the target with its parsed address.
    pub fn new(plugin: ReplyPlugin, address: &str) -> Result<(ReplyTarget, TargetAddress), String> {
        let parsed = TargetAddress::parse(plugin, address)?;
        Ok((
            ReplyTarget {
                plugin,
                address: address.to_string(),
            },
            parsed,
        ))
    }

    /// A target from its JSON members, as the control plane and `exec` handler output send it:
    /// `plugin` a plugin name, `address` a string or (for `http`) a JSON object. Plugins this
    /// build cannot deliver to are refused here, when the target would be stored. The error
    /// names the member (`` `plugin`: … ``, `` `address` … ``).
    pub fn from_json(plugin: &str, address: &Value) -> Result<ReplyTarget, String> {
        let plugin = ReplyPlugin::parse(plugin).map_err(|e| format!("`plugin`: {e}"))?;
        if !plugin.served() {
            return Err(format!("`plugin`: {}", plugin.unserved_reason()));
        }
        let address = match address {
            Value::String(s) => s.clone(),
            obj @ Value::Object(_) => obj.to_string(),
            _ => return Err("`address` must be a string (or a JSON object)".to_string()),
        };
        ReplyTarget::new(plugin, &address)
            .map(|(target, _)| target)
            .map_err(|e| format!("`address` {e}"))
    }

    /// Re-parses the stored address (targets are validated again when delivered).
    pub fn parsed(&self) -> Result<TargetAddress, String> {
        TargetAddress::parse(self.plugin, &self.address)
    }
}

/// Header names an `http` target may not set (SPEC §11.2), compared case-insensitively; any
/// `x-forwarded-*` name is refused as well.
pub const FORBIDDEN_HTTP_HEADERS: [&str; 14] = [
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "cookie",
    "forwarded",
    "host",
    "idempotency-key",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-api-key",
];

/// A parsed `http` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAddress {
    pub url: url::Url,
    pub headers: Vec<(String, String)>,
    pub allow_private_network: bool,
}

/// A parsed `slack` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlackAddress {
    pub connector: String,
    pub enterprise_id: Option<String>,
    pub team_id: Option<String>,
    pub channel_id: String,
    pub thread_ts: Option<String>,
}

/// A parsed `telegram` address; `chat_id` is an integer id or an `@channel` username.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelegramAddress {
    pub connector: String,
    pub chat_id: ChatId,
    pub message_thread_id: Option<i64>,
    pub reply_to_message_id: Option<i64>,
}

/// Telegram chat identifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatId {
    Id(i64),
    Username(String),
}

/// A parsed `external` address: the connector and the sidecar's opaque reply route.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalAddress {
    pub connector: String,
    pub route: Value,
}

/// A reply target's address, parsed according to its plugin.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetAddress {
    Http(HttpAddress),
    Slack(SlackAddress),
    Telegram(TelegramAddress),
    External(ExternalAddress),
}

impl TargetAddress {
    /// Parses and checks an address string for `plugin`.
    pub fn parse(plugin: ReplyPlugin, address: &str) -> Result<TargetAddress, String> {
        match plugin {
            ReplyPlugin::Http => parse_http(address).map(TargetAddress::Http),
            ReplyPlugin::Slack => parse_slack(address).map(TargetAddress::Slack),
            ReplyPlugin::Telegram => parse_telegram(address).map(TargetAddress::Telegram),
            ReplyPlugin::External => parse_external(address).map(TargetAddress::External),
        }
    }

    /// The connector a non-http address names.
    pub fn connector(&self) -> Option<&str> {
        match self {
            TargetAddress::Http(_) => None,
            TargetAddress::Slack(a) => Some(&a.connector),
            TargetAddress::Telegram(a) => Some(&a.connector),
            TargetAddress::External(a) => Some(&a.connector),
        }
    }
}

/// Checks an outbound URL: absolute http/https with a host and no userinfo. Never echoes the
/// URL itself in the error (it may carry a token in its path or query).
pub fn check_http_url(raw: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(raw.trim()).map_err(|e| format!("is not an absolute URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme `{}` is not http or https", url.scheme()));
    }
    if url.host().is_none() {
        return Err("has no host".to_string());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials (user:password@); put them in headers or the secret store".to_string());
    }
    Ok(url)
}

fn object(address: &str, what: &str) -> Result<serde_json::Map<String, Value>, String> {
    match serde_json::from_str::<Value>(address) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) | Err(_) => Err(format!("must be a JSON object {what}")),
    }
}

fn only_members(map: &serde_json::Map<String, Value>, allowed: &[&str]) -> Result<(), String> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "unknown member `{k}`; allowed members are {}",
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

fn req_str(map: &serde_json::Map<String, Value>, key: &str) -> Result<String, String> {
    match map.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(format!("member `{key}` must not be empty")),
        Some(_) => Err(format!("member `{key}` must be a string")),
        None => Err(format!("member `{key}` is required")),
    }
}

fn opt_str(map: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => req_str(map, key).map(Some),
    }
}

fn opt_int(map: &serde_json::Map<String, Value>, key: &str) -> Result<Option<i64>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("member `{key}` must be an integer")),
    }
}

fn parse_http(address: &str) -> Result<HttpAddress, String> {
    let trimmed = address.trim();
    if !trimmed.starts_with('{') {
        return Ok(HttpAddress {
            url: check_http_url(trimmed)?,
            headers: Vec::new(),
            allow_private_network: false,
        });
    }
    let map = object(
        trimmed,
        r#"{"url", "headers"?, "allow_private_network"?} or a URL"#,
    )?;
    only_members(&map, &["url", "headers", "allow_private_network"])?;
    let url = check_http_url(&req_str(&map, "url")?).map_err(|e| format!("`url` {e}"))?;
    let mut headers = Vec::new();
    match map.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (name, value) in h {
                check_header_name(name)?;
                let value = value
                    .as_str()
                    .ok_or_else(|| format!("header `{name}` must have a string value"))?;
                if value.contains(['\r', '\n']) {
                    return Err(format!("header `{name}` value contains a line break"));
                }
                headers.push((name.clone(), value.to_string()));
            }
        }
        Some(_) => return Err("member `headers` must be an object of name → value".to_string()),
    }
    let allow_private_network = match map.get("allow_private_network") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("member `allow_private_network` must be a boolean".to_string()),
    };
    Ok(HttpAddress {
        url,
        headers,
        allow_private_network,
    })
}

/// Refuses header names that are malformed, hop-by-hop, owned by the body or the daemon, or
/// secret-bearing (SPEC §11.2).
pub fn check_header_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return Err(format!("`{name}` is not a valid header name"));
    }
    let lower = name.to_ascii_lowercase();
    if FORBIDDEN_HTTP_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-forwarded-") {
        return Err(format!(
            "header `{name}` may not be set on a reply target (it is hop-by-hop, body-owned, \
             daemon-owned or secret-bearing)"
        ));
    }
    Ok(())
}

fn parse_slack(address: &str) -> Result<SlackAddress, String> {
    let map = object(
        address,
        r#"{"connector", "enterprise_id"?, "team_id"?, "channel_id", "thread_ts"?}"#,
    )?;
    only_members(
        &map,
        &[
            "connector",
            "enterprise_id",
            "team_id",
            "channel_id",
            "thread_ts",
        ],
    )?;
    Ok(SlackAddress {
        connector: req_str(&map, "connector")?,
        enterprise_id: opt_str(&map, "enterprise_id")?,
        team_id: opt_str(&map, "team_id")?,
        channel_id: req_str(&map, "channel_id")?,
        thread_ts: opt_str(&map, "thread_ts")?,
    })
}

fn parse_telegram(address: &str) -> Result<TelegramAddress, String> {
    let map = object(
        address,
        r#"{"connector", "chat_id", "message_thread_id"?, "reply_to_message_id"?}"#,
    )?;
    only_members(
        &map,
        &[
            "connector",
            "chat_id",
            "message_thread_id",
            "reply_to_message_id",
        ],
    )?;
    let chat_id = match map.get("chat_id") {
        Some(Value::Number(n)) => ChatId::Id(
            n.as_i64()
                .ok_or_else(|| "member `chat_id` must be an integer".to_string())?,
        ),
        Some(Value::String(s)) => match s.trim().parse::<i64>() {
            Ok(id) => ChatId::Id(id),
            Err(_) if s.starts_with('@') && s.len() > 1 => ChatId::Username(s.clone()),
            Err(_) => return Err("member `chat_id` must be an integer or an @username".to_string()),
        },
        Some(_) => return Err("member `chat_id` must be an integer or an @username".to_string()),
        None => return Err("member `chat_id` is required".to_string()),
    };
    Ok(TelegramAddress {
        connector: req_str(&map, "connector")?,
        chat_id,
        message_thread_id: opt_int(&map, "message_thread_id")?,
        reply_to_message_id: opt_int(&map, "reply_to_message_id")?,
    })
}

fn parse_external(address: &str) -> Result<ExternalAddress, String> {
    let map = object(address, r#"{"connector", "route"}"#)?;
    only_members(&map, &["connector", "route"])?;
    let route = match map.get("route") {
        None | Some(Value::Null) => return Err("member `route` is required".to_string()),
        Some(v) => v.clone(),
    };
    Ok(ExternalAddress {
        connector: req_str(&map, "connector")?,
        route,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_from_json_take_every_served_plugin() {
        let telegram = serde_json::json!("{\"connector\":\"t\",\"chat_id\":1}");
        let target = ReplyTarget::from_json("telegram", &telegram).unwrap();
        assert_eq!(target.plugin, ReplyPlugin::Telegram);
        let external = serde_json::json!({"connector": "sc", "route": "{}"});
        let target = ReplyTarget::from_json("external", &external).unwrap();
        assert_eq!(target.plugin, ReplyPlugin::External);
        assert_eq!(
            target.parsed().unwrap(),
            TargetAddress::External(ExternalAddress {
                connector: "sc".into(),
                route: serde_json::json!("{}"),
            }),
            "the route is kept as sent: here the JSON string \"{{}}\""
        );
        let http = serde_json::json!({"url": "https://example.com/a"});
        assert_eq!(
            ReplyTarget::from_json("http", &http).unwrap().plugin,
            ReplyPlugin::Http
        );
        assert!(ReplyTarget::from_json("http", &serde_json::json!(1))
            .unwrap_err()
            .starts_with("`address`"));
        assert!(ReplyTarget::from_json("nope", &http)
            .unwrap_err()
            .starts_with("`plugin`"));
    }

    fn check(plugin: ReplyPlugin, address: &str, expect_err: Option<&str>) {
        let res = TargetAddress::parse(plugin, address);
        match (res, expect_err) {
            (Ok(_), None) => {}
            (Err(e), Some(needle)) => assert!(e.contains(needle), "{address}: {e}"),
            (Ok(a), Some(needle)) => panic!("{address}: expected error {needle:?}, got {a:?}"),
            (Err(e), None) => panic!("{address}: unexpected error {e}"),
        }
    }

    #[test]
    fn http_addresses() {
        use ReplyPlugin::Http;
        check(Http, "https://example.com/hook", None);
        check(Http, "http://127.0.0.1:9000/sink?x=1", None);
        check(
            Http,
            r#"{"url":"https://example.com","headers":{"X-Tenant":"a"}}"#,
            None,
        );
        check(
            Http,
            r#"{"url":"https://example.com","allow_private_network":true}"#,
            None,
        );
        check(Http, "ftp://example.com", Some("not http or https"));
        check(Http, "https://user:pw@example.com", Some("credentials"));
        check(Http, "not a url", Some("absolute URL"));
        check(
            Http,
            r#"{"url":"https://e.com","headers":{"Authorization":"x"}}"#,
            Some("may not be set"),
        );
        check(
            Http,
            r#"{"url":"https://e.com","headers":{"X-Forwarded-For":"x"}}"#,
            Some("may not be set"),
        );
        check(
            Http,
            r#"{"url":"https://e.com","headers":{"idempotency-key":"x"}}"#,
            Some("may not be set"),
        );
        check(
            Http,
            r#"{"url":"https://e.com","headers":{"bad name":"x"}}"#,
            Some("not a valid header"),
        );
        check(
            Http,
            r#"{"url":"https://e.com","extra":1}"#,
            Some("unknown member `extra`"),
        );
        check(Http, r#"{"headers":{}}"#, Some("`url` is required"));
    }

    #[test]
    fn forbidden_headers_are_case_insensitive() {
        for name in FORBIDDEN_HTTP_HEADERS {
            assert!(
                check_header_name(&name.to_ascii_uppercase()).is_err(),
                "{name}"
            );
        }
        assert!(check_header_name("X-Request-Source").is_ok());
    }

    #[test]
    fn chat_addresses() {
        check(
            ReplyPlugin::Slack,
            r#"{"connector":"support","channel_id":"C1","thread_ts":"1.2"}"#,
            None,
        );
        check(
            ReplyPlugin::Slack,
            r#"{"connector":"support"}"#,
            Some("`channel_id` is required"),
        );
        check(ReplyPlugin::Slack, "C123", Some("JSON object"));
        check(
            ReplyPlugin::Telegram,
            r#"{"connector":"bot","chat_id":-100123}"#,
            None,
        );
        check(
            ReplyPlugin::Telegram,
            r#"{"connector":"bot","chat_id":"@news"}"#,
            None,
        );
        check(
            ReplyPlugin::Telegram,
            r#"{"connector":"bot","chat_id":true}"#,
            Some("integer"),
        );
        check(
            ReplyPlugin::External,
            r#"{"connector":"discord-main","route":{"channel":"1"}}"#,
            None,
        );
        check(
            ReplyPlugin::External,
            r#"{"connector":"discord-main"}"#,
            Some("`route` is required"),
        );
    }
}
