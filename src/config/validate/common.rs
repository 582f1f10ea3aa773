//! Rules every connector kind shares (SPEC §2 "Common rules"): the name and its uniqueness,
//! secret triplets (`X` / `X_env` / `X_secret_ref`, with precedence), `session_policy`, reply
//! targets, binding keys, `ingress_events_per_second`, and the API base URL that Slack and
//! Telegram both take.

use super::refs::{Seen, TargetRef};
use super::walker::{Ctx, Pos, Table, Walker};
use crate::config::{Common, SecretField, SessionPolicy};
use crate::model::reply::{ReplyPlugin, ReplyTarget};
use crate::model::{ConnectorKind, ConnectorName};
use crate::secrets::{Secret, SecretSource};

/// Keys every connector kind accepts.
pub(super) const COMMON_KEYS: &[&str] = &[
    "name",
    "fixed_session_id",
    "allow_unauthenticated_ingress",
    "ingress_events_per_second",
    "session_policy",
];
const SESSION_POLICY_KEYS: &[&str] = &[
    "create_if_missing",
    "persona_id",
    "capability_scope",
    "credential_scope",
];
const REPLY_TARGET_KEYS: &[&str] = &["plugin", "address"];

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

pub(super) fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
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

/// True when any key of the secret triplet `base` is present (even if invalid): used by the
/// "needs a secret" rules so that a malformed secret is reported once, not twice.
pub(super) fn has_any(t: &Table<'_, '_>, base: &str) -> bool {
    t.has(base) || t.has(&format!("{base}_env")) || t.has(&format!("{base}_secret_ref"))
}

fn address_help(plugin: ReplyPlugin) -> String {
    match plugin {
        ReplyPlugin::Http => r#"use a URL ("https://example.com/hook") or '{"url":"https://…","headers":{"X-Name":"v"}}'"#.into(),
        ReplyPlugin::Slack => r#"use '{"connector":"NAME","channel_id":"C123","thread_ts":"…"}'"#.into(),
        ReplyPlugin::Telegram => r#"use '{"connector":"NAME","chat_id":123456}'"#.into(),
        ReplyPlugin::External => r#"use '{"connector":"NAME","route":{…}}'"#.into(),
    }
}

impl Walker<'_> {
    /// Reads a secret triplet `X`, `X_env`, `X_secret_ref` and applies precedence (SPEC §2).
    pub(super) fn secret(
        &mut self,
        ctx: &Ctx,
        t: &Table<'_, '_>,
        base: &str,
    ) -> Option<SecretField> {
        let ref_key = format!("{base}_secret_ref");
        let env_key = format!("{base}_env");
        let mut candidates: Vec<(String, SecretSource, Pos)> = Vec::new();
        if let Some((name, at)) = self.string(ctx, t, &ref_key) {
            match check_secret_ref(&name) {
                Ok(()) => candidates.push((ref_key.clone(), SecretSource::StoreRef(name), at)),
                Err(e) => self.err(ctx, &at, &t.path(&ref_key), format!("secret ref {e}")),
            }
        }
        if let Some((name, at)) = self.string(ctx, t, &env_key) {
            if valid_env_name(&name) {
                candidates.push((env_key.clone(), SecretSource::Env(name), at));
            } else {
                self.err_help(
                    ctx,
                    &at,
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
                    &at,
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
                &ignored_at,
                &t.path(&ignored),
                format!("ignored: `{key}` takes precedence (secret store ref, then env var, then inline)"),
                format!("remove `{ignored}` so the file says which source is used"),
            );
        }
        if matches!(source, SecretSource::Inline(_)) {
            self.warn(
                ctx,
                &at,
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
            location: self.location(&at),
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
            if let Some(v) = p.get(key) {
                if v.as_table(String::new()).is_some() {
                    if let serde_json::Value::Object(map) = v.to_json() {
                        *slot = map;
                    }
                } else {
                    self.wrong_type(ctx, &p, key, &v, "a table");
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
            let Some(it) = item.as_table(format!("{field}.")) else {
                self.err_help(
                    ctx,
                    &item.pos,
                    &field,
                    format!("expected a table, found {}", item.type_name()),
                    r#"write { plugin = "http", address = "https://example.com/hook" }"#,
                );
                continue;
            };
            self.unknown_keys(ctx, &it, &[REPLY_TARGET_KEYS]);
            let plugin = match self.string(ctx, &it, "plugin") {
                Some((p, at)) => match ReplyPlugin::parse(&p) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        self.err(ctx, &at, &it.path("plugin"), e);
                        None
                    }
                },
                None => {
                    if !it.has("plugin") {
                        self.err(ctx, &it.pos, &it.path("plugin"), "missing required field");
                    }
                    None
                }
            };
            let address = self.string(ctx, &it, "address");
            if address.is_none() && !it.has("address") {
                self.err(ctx, &it.pos, &it.path("address"), "missing required field");
            }
            let (Some(plugin), Some((address, at))) = (plugin, address) else {
                continue;
            };
            if !plugin.served() {
                self.warn(
                    ctx,
                    &at,
                    &it.path("plugin"),
                    plugin.unserved_reason(),
                    "targets of this plugin dead-letter as `plugin_unavailable` in this build; \
                     the control plane and ingress refuse them"
                        .into(),
                );
            }
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
                    &at,
                    &it.path("address"),
                    format!("invalid {} address: {e}", plugin.as_str()),
                    address_help(plugin),
                ),
            }
        }
        out
    }

    /// Binding keys: non-empty strings, trimmed, sorted, deduplicated.
    fn binding_keys(&mut self, ctx: &Ctx, t: &Table<'_, '_>, key: &str) -> Vec<String> {
        let mut keys = self.string_list(ctx, t, key);
        keys.sort();
        keys.dedup();
        keys
    }

    /// `api_base_url` of Slack and Telegram: checked, trimmed, without a trailing `/`.
    pub(super) fn api_base_url(&mut self, ctx: &Ctx, t: &Table<'_, '_>, default: &str) -> String {
        match self.string(ctx, t, "api_base_url") {
            Some((url, at)) => {
                if let Err(e) = check_api_base_url(&url) {
                    self.err_help(
                        ctx,
                        &at,
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

    /// Name, and the fields every kind shares. The name check runs first so that later
    /// diagnostics can name the connector.
    pub(super) fn common(
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
                    if let Some(first) = seen.get(&name) {
                        let first = self.describe(first);
                        self.err_help(
                            ctx,
                            &at,
                            "name",
                            format!(
                                "duplicate {} connector name `{name}` (first used {first})",
                                ctx.kind
                            ),
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
                        &at,
                        "name",
                        format!("invalid name: {e}"),
                        "use 1 to 64 characters of letters, digits, `.`, `_` and `-`",
                    );
                    None
                }
            },
            None => {
                if !t.has("name") {
                    self.err_help(
                        ctx,
                        &t.pos,
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
            location: self.location(&ctx.start),
            fixed_session_id,
            allow_unauthenticated_ingress,
            ingress_events_per_second,
            session_policy,
            reply_targets,
            binding_keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::parse_str;
    use crate::config::validate::tests::{check, diags, OK_HTTP};
    use crate::model::Severity;

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
    fn binding_keys_are_normalised() {
        let loaded = parse_str("t.toml", "[[http_connectors]]\nname = \"o\"\nallow_unauthenticated_ingress = true\ndefault_binding_keys = [\" b \", \"a\", \"b\"]\n");
        assert_eq!(loaded.config.http[0].common.binding_keys, vec!["a", "b"]);
        check("[[http_connectors]]\nname = \"o\"\nallow_unauthenticated_ingress = true\ndefault_binding_keys = [\"\"]\n",
            &[("error", 4, "http_connectors[o].default_binding_keys[0]", "must not be empty")]);
    }
}
