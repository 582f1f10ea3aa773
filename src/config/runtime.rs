//! Daemon-managed connector documents (SPEC §12): the field-aware upsert, the redacted view
//! of a document, and the conversion of file-backed connectors into the same document form.
//!
//! Pure: no I/O. A document is a JSON object in the connector file's own field names; secret
//! fields appear only as `X_secret_ref` or `X_env` (a value sent through the API is stored in a
//! secret slot by the caller and the document names its ref). The upsert rules:
//! - members present in the patch change; absent members keep their value; a blank string (or
//!   `null`) clears a member; a new connector starts from defaults (an empty document);
//! - `session_policy` and `child_process` merge member by member the same way; every other
//!   value (lists, `env` and `credential_slots` tables, `team_bot_tokens`) is replaced whole;
//! - a secret member takes `{"value"}` (stored under the default ref
//!   `connectors.KIND.NAME.FIELD` or the given `secret_ref`), `{"secret_ref"}` or `{"env"}`;
//!   `env` together with `value`/`secret_ref` is refused; a plain string is refused (a value
//!   must never be stored in a document);
//! - `name` must match the route's name; an external connector's `platform` cannot change.

use serde_json::{Map, Value};

use crate::model::ConnectorKind;
use crate::secrets::Secret;

/// One connector as a document: kind, name, and its JSON object.
pub type Document = (ConnectorKind, String, Value);

/// The secret fields of `kind` (each with `_env` / `_secret_ref` forms in a document).
pub fn secret_fields(kind: ConnectorKind) -> &'static [&'static str] {
    match kind {
        ConnectorKind::Http => &["bearer_token", "hmac_secret"],
        ConnectorKind::Slack => &["bot_token", "signing_secret"],
        ConnectorKind::Telegram => &["bot_token", "secret_token"],
        ConnectorKind::External => &["shared_token"],
    }
}

/// Members merged member by member instead of being replaced whole.
const MERGED_TABLES: &[&str] = &["session_policy", "child_process"];

/// The default secret ref of a daemon-managed field (SPEC §4).
pub fn default_ref(kind: ConnectorKind, name: &str, field: &str) -> String {
    format!("connectors.{kind}.{name}.{field}")
}

/// Why a patch cannot be applied. `pointer` is the JSON pointer of the member at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// 400: malformed patch.
    #[error("`{pointer}`: {detail}")]
    Invalid { pointer: String, detail: String },
    /// 409: the external connector's platform cannot change.
    #[error("`platform` cannot change (it is `{from}`); delete the connector and create it again to move it to `{to}`")]
    PlatformChange { from: String, to: String },
}

/// A secret value the caller must store in slot `secret_ref` together with the document.
pub struct SecretWrite {
    pub secret_ref: String,
    pub value: Secret,
    /// The document member it came from (`/shared_token`, `/team_bot_tokens/0/bot_token`).
    pub pointer: String,
}

impl std::fmt::Debug for SecretWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretWrite")
            .field("secret_ref", &self.secret_ref)
            .field("pointer", &self.pointer)
            .finish_non_exhaustive()
    }
}

/// The result of an upsert: the new document and the secret values to store with it.
#[derive(Debug)]
pub struct Upserted {
    pub document: Value,
    pub secrets: Vec<SecretWrite>,
}

fn invalid(pointer: impl Into<String>, detail: impl Into<String>) -> PatchError {
    PatchError::Invalid {
        pointer: pointer.into(),
        detail: detail.into(),
    }
}

fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

/// Applies `patch` (a JSON object) to `existing` (the stored document, `None` for a new
/// connector) for connector `kind`/`name`.
pub fn upsert(
    kind: ConnectorKind,
    name: &str,
    existing: Option<&Value>,
    patch: &Value,
) -> Result<Upserted, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(invalid(
            "",
            "the body must be a JSON object of connector fields",
        ));
    };
    let mut doc = match existing {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    doc.insert("name".into(), Value::String(name.to_string()));
    let mut secrets = Vec::new();
    for (key, value) in patch {
        let pointer = format!("/{}", escape(key));
        if key == "name" {
            if value.as_str() != Some(name) {
                return Err(invalid(
                    pointer,
                    format!("must be `{name}`, the name in the route (a connector is renamed by deleting it and creating the new one)"),
                ));
            }
            continue;
        }
        if kind == ConnectorKind::External && key == "platform" {
            let old = doc.get("platform").and_then(Value::as_str);
            let new = value.as_str();
            if let (Some(old), Some(new)) = (old, new) {
                if old != new {
                    return Err(PatchError::PlatformChange {
                        from: old.to_string(),
                        to: new.to_string(),
                    });
                }
            }
            if existing.is_some() && old.is_some() && is_blank(value) {
                return Err(invalid(pointer, "`platform` cannot be cleared"));
            }
        }
        if let Some(field) = secret_fields(kind).iter().find(|f| *f == key) {
            let default = default_ref(kind, name, field);
            apply_secret(&mut doc, field, value, &pointer, default, &mut secrets)?;
            continue;
        }
        if kind == ConnectorKind::Slack && key == "team_bot_tokens" {
            let tokens = team_tokens(name, value, &pointer, &mut secrets)?;
            set_or_clear(&mut doc, key, tokens);
            continue;
        }
        if MERGED_TABLES.contains(&key.as_str()) {
            match value {
                Value::Object(members) => {
                    let mut table = match doc.get(key) {
                        Some(Value::Object(t)) => t.clone(),
                        _ => Map::new(),
                    };
                    for (k, v) in members {
                        set_or_clear(&mut table, k, v.clone());
                    }
                    set_or_clear(&mut doc, key, Value::Object(table));
                }
                v if is_blank(v) => {
                    doc.remove(key);
                }
                _ => return Err(invalid(pointer, "must be an object (a table)")),
            }
            continue;
        }
        // The `_env` / `_secret_ref` forms of a secret field replace its other sources.
        if let Some(field) = secret_fields(kind)
            .iter()
            .find(|f| key == &format!("{f}_env") || key == &format!("{f}_secret_ref"))
        {
            if !is_blank(value) {
                clear_secret(&mut doc, field);
            }
        }
        set_or_clear(&mut doc, key, value.clone());
    }
    Ok(Upserted {
        document: Value::Object(doc),
        secrets,
    })
}

/// Sets `key` to `value`, or removes it when the value is blank (or an empty table).
fn set_or_clear(doc: &mut Map<String, Value>, key: &str, value: Value) {
    let empty_table = matches!(&value, Value::Object(m) if m.is_empty());
    if is_blank(&value) || empty_table {
        doc.remove(key);
    } else {
        doc.insert(key.to_string(), value);
    }
}

fn clear_secret(doc: &mut Map<String, Value>, field: &str) {
    doc.remove(field);
    doc.remove(&format!("{field}_env"));
    doc.remove(&format!("{field}_secret_ref"));
}

/// A secret member (`{"value"}`, `{"secret_ref"}`, `{"value","secret_ref"}`, `{"env"}`, or
/// blank to clear) applied to `doc` under the field's `_secret_ref` / `_env` keys.
fn apply_secret(
    doc: &mut Map<String, Value>,
    field: &str,
    value: &Value,
    pointer: &str,
    default_ref: String,
    secrets: &mut Vec<SecretWrite>,
) -> Result<(), PatchError> {
    if is_blank(value) {
        clear_secret(doc, field);
        return Ok(());
    }
    let Value::Object(m) = value else {
        return Err(invalid(
            pointer,
            "a secret is sent as {\"value\": \"...\"}, {\"secret_ref\": \"...\"} or {\"env\": \"VAR\"}, never as a plain string",
        ));
    };
    for k in m.keys() {
        if !matches!(k.as_str(), "value" | "secret_ref" | "env") {
            return Err(invalid(
                format!("{pointer}/{}", escape(k)),
                "unknown member; a secret takes `value`, `secret_ref` or `env`",
            ));
        }
    }
    let text = |k: &str| -> Result<Option<String>, PatchError> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(invalid(
                format!("{pointer}/{k}"),
                "must be a non-empty string",
            )),
        }
    };
    let (v, r, e) = (text("value")?, text("secret_ref")?, text("env")?);
    if e.is_some() && (v.is_some() || r.is_some()) {
        return Err(invalid(
            format!("{pointer}/env"),
            "`env` cannot be combined with `value` or `secret_ref`: the value comes from one source",
        ));
    }
    clear_secret(doc, field);
    match (v, r, e) {
        (_, _, Some(env)) => {
            doc.insert(format!("{field}_env"), Value::String(env));
        }
        (Some(value), r, None) => {
            let secret_ref = r.unwrap_or(default_ref);
            doc.insert(
                format!("{field}_secret_ref"),
                Value::String(secret_ref.clone()),
            );
            secrets.push(SecretWrite {
                secret_ref,
                value: Secret::new(value),
                pointer: format!("{pointer}/value"),
            });
        }
        (None, Some(r), None) => {
            doc.insert(format!("{field}_secret_ref"), Value::String(r));
        }
        (None, None, None) => {
            return Err(invalid(
                pointer,
                "give one of `value`, `secret_ref` or `env` (or an empty string to clear it)",
            ))
        }
    }
    Ok(())
}

/// `team_bot_tokens` (Slack), replaced whole; each entry's `bot_token` is a secret member.
fn team_tokens(
    name: &str,
    value: &Value,
    pointer: &str,
    secrets: &mut Vec<SecretWrite>,
) -> Result<Value, PatchError> {
    if is_blank(value) {
        return Ok(Value::Null);
    }
    let Value::Array(entries) = value else {
        return Err(invalid(pointer, "must be a list of {team_id, bot_token}"));
    };
    let mut out = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("{pointer}/{i}");
        let Value::Object(m) = entry else {
            return Err(invalid(at, "must be an object {team_id, bot_token}"));
        };
        let mut entry = m.clone();
        if let Some(token) = m.get("bot_token") {
            let team = m
                .get("team_id")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("{at}/team_id"), "is required"))?;
            let default = format!("connectors.slack.{name}.team_bot_tokens.{team}.bot_token");
            apply_secret(
                &mut entry,
                "bot_token",
                token,
                &format!("{at}/bot_token"),
                default,
                secrets,
            )?;
        }
        out.push(Value::Object(entry));
    }
    Ok(Value::Array(out))
}

/// RFC 6901 escaping of one reference token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// The redacted view of a document (SPEC §4, §12): each secret field becomes
/// `{configured, source, secret_ref?, env?}` and never a value; an external connector's
/// `child_process.env` and `credential_slots` become `env_keys` and `credential_env_keys`.
pub fn redacted_view(kind: ConnectorKind, document: &Value) -> Value {
    let mut view = match document {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    for field in secret_fields(kind) {
        redact_secret(&mut view, field);
    }
    if let Some(Value::Array(tokens)) = view.get_mut("team_bot_tokens") {
        for t in tokens.iter_mut() {
            if let Value::Object(m) = t {
                redact_secret(m, "bot_token");
            }
        }
    }
    if let Some(Value::Object(cp)) = view.get_mut("child_process") {
        let keys = |v: Option<Value>| -> Value {
            match v {
                Some(Value::Object(m)) => {
                    Value::Array(m.keys().cloned().map(Value::String).collect())
                }
                _ => Value::Array(Vec::new()),
            }
        };
        let env = keys(cp.remove("env"));
        let creds = keys(cp.remove("credential_slots"));
        cp.insert("env_keys".into(), env);
        cp.insert("credential_env_keys".into(), creds);
    }
    Value::Object(view)
}

fn redact_secret(m: &mut Map<String, Value>, field: &str) {
    let inline = m.remove(field);
    let env = m.remove(&format!("{field}_env"));
    let secret_ref = m.remove(&format!("{field}_secret_ref"));
    // Precedence (SPEC §4): secret ref > env > inline.
    let view = if let Some(r) = secret_ref.filter(|v| !is_blank(v)) {
        serde_json::json!({"configured": true, "source": "secret_ref", "secret_ref": r})
    } else if let Some(e) = env.filter(|v| !is_blank(v)) {
        serde_json::json!({"configured": true, "source": "env", "env": e})
    } else if inline.is_some_and(|v| !is_blank(&v)) {
        serde_json::json!({"configured": true, "source": "inline"})
    } else {
        serde_json::json!({"configured": false})
    };
    m.insert(field.to_string(), view);
}

/// Field-by-field differences between two redacted views (top-level members), for
/// `put-external --dry-run` and the API's answer: `(field, before, after)`.
pub fn diff(before: &Value, after: &Value) -> Vec<(String, Value, Value)> {
    let empty = Map::new();
    let b = before.as_object().unwrap_or(&empty);
    let a = after.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (
                b.get(k).cloned().unwrap_or(Value::Null),
                a.get(k).cloned().unwrap_or(Value::Null),
            );
            (x != y).then(|| (k.clone(), x, y))
        })
        .collect()
}

/// The connectors of a connector file's text as `(kind, name, document)`: the TOML tables
/// converted to JSON, in the file's order. Tables without a string `name` are skipped (the
/// validator reports them).
pub fn file_documents(text: &str) -> Vec<Document> {
    let Ok(table) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for kind in ConnectorKind::ALL {
        let Some(toml::Value::Array(items)) = table.get(kind.section()) else {
            continue;
        };
        for item in items {
            let Ok(doc) = serde_json::to_value(item) else {
                continue;
            };
            if let Some(name) = doc.get("name").and_then(Value::as_str) {
                out.push((kind, name.to_string(), doc.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn up(existing: Option<Value>, patch: Value) -> Result<Upserted, PatchError> {
        upsert(ConnectorKind::External, "d", existing.as_ref(), &patch)
    }

    #[test]
    fn present_members_change_absent_keep_blank_clear() {
        let existing = json!({"name": "d", "platform": "discord", "base_url": "http://a", "fixed_session_id": "s",
            "session_policy": {"create_if_missing": true, "persona_id": "p"}});
        let out = up(
            Some(existing),
            json!({"base_url": "http://b", "fixed_session_id": "", "session_policy": {"persona_id": "q"}}),
        )
        .unwrap();
        assert_eq!(
            out.document,
            json!({"name": "d", "platform": "discord", "base_url": "http://b",
                "session_policy": {"create_if_missing": true, "persona_id": "q"}})
        );
        assert!(out.secrets.is_empty());
    }

    #[test]
    fn secret_members_become_refs_and_values_are_handed_back() {
        let out = up(
            None,
            json!({"platform": "x", "shared_token": {"value": "s3cr3t"}}),
        )
        .unwrap();
        assert_eq!(
            out.document["shared_token_secret_ref"],
            "connectors.external.d.shared_token"
        );
        assert!(!out.document.to_string().contains("s3cr3t"));
        assert_eq!(out.secrets.len(), 1);
        assert_eq!(out.secrets[0].value.expose(), "s3cr3t");
        assert!(!format!("{:?}", out.secrets).contains("s3cr3t"));
        let out = up(
            Some(out.document),
            json!({"shared_token": {"env": "TOKEN_VAR"}}),
        )
        .unwrap();
        assert_eq!(out.document["shared_token_env"], "TOKEN_VAR");
        assert!(out.document.get("shared_token_secret_ref").is_none());
        assert!(matches!(
            up(None, json!({"shared_token": {"env": "A", "value": "v"}})),
            Err(PatchError::Invalid { pointer, .. }) if pointer == "/shared_token/env"
        ));
        assert!(matches!(
            up(None, json!({"shared_token": "plain"})),
            Err(PatchError::Invalid { pointer, .. }) if pointer == "/shared_token"
        ));
    }

    #[test]
    fn platform_is_immutable_and_the_name_must_match() {
        let existing = json!({"name": "d", "platform": "discord"});
        assert!(matches!(
            up(Some(existing.clone()), json!({"platform": "slack"})),
            Err(PatchError::PlatformChange { .. })
        ));
        assert!(up(Some(existing), json!({"platform": "discord"})).is_ok());
        assert!(matches!(
            up(None, json!({"name": "other"})),
            Err(PatchError::Invalid { pointer, .. }) if pointer == "/name"
        ));
        assert!(up(None, json!([1])).is_err());
    }

    #[test]
    fn views_never_show_values_or_env_values() {
        let doc = json!({"name": "d", "shared_token": "inline-secret",
            "child_process": {"command": "x", "env": {"A": "secret-env-value"}, "credential_slots": {"K": "r.x"}}});
        let view = redacted_view(ConnectorKind::External, &doc);
        let text = view.to_string();
        assert!(
            !text.contains("inline-secret") && !text.contains("secret-env-value"),
            "{text}"
        );
        assert_eq!(
            view["shared_token"],
            json!({"configured": true, "source": "inline"})
        );
        assert_eq!(view["child_process"]["env_keys"], json!(["A"]));
        assert_eq!(view["child_process"]["credential_env_keys"], json!(["K"]));
        let d = diff(&json!({"a": 1, "b": 2}), &json!({"a": 1, "b": 3, "c": 4}));
        assert_eq!(
            d,
            vec![
                ("b".to_string(), json!(2), json!(3)),
                ("c".to_string(), Value::Null, json!(4))
            ]
        );
    }

    #[test]
    fn file_documents_follow_the_file() {
        let docs = file_documents(
            "[[http_connectors]]\nname = \"o\"\nbearer_token_env = \"T\"\n[[external_connectors]]\nname = \"e\"\nplatform = \"p\"\n",
        );
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].0, ConnectorKind::Http);
        assert_eq!(docs[1].2["platform"], "p");
    }
}
