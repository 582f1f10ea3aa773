//! The content rules every kind that takes a JSON payload shares (SPEC §6.7): `content` with
//! optional `attachments`, or ordered `input_items` (`text`, `inline_asset`,
//! `asset_reference`), their limits, inline assets decoded and stored by id, and the payload
//! `metadata` with its reserved daemon keys (§6.3).
//!
//! Used by `http.rs` (§7.1) and `external.rs` (§10.2). The two differ only where
//! [`ContentRules`] says so; everything else — member paths in errors, limits, the stored
//! shape of items — is one code path, so the kinds cannot drift.

use std::borrow::Cow;

use base64::Engine as _;
use serde_json::{Map, Value};

use super::{sha256_hex, IngressError};
use crate::model::run::{new_id, NewAsset, RunInput};

/// Largest `content`, in bytes of UTF-8.
pub const MAX_CONTENT_BYTES: usize = 1024 * 1024;
/// Most `input_items` of one event.
pub const MAX_ITEMS: usize = 64;
/// Most `attachments` of one event.
pub const MAX_ATTACHMENTS: usize = 10;
/// Largest inline asset, decoded.
pub const MAX_ASSET_BYTES: usize = 1024 * 1024;

/// Run-metadata keys (and prefixes) that only the daemon writes (SPEC §6.3, §10.2).
pub const RESERVED_METADATA_PREFIXES: [&str; 6] = [
    "connector_ingress_",
    "http_ingress_",
    "slack_ingress_",
    "telegram_ingress_",
    "external_",
    "kheish_",
];

/// An `InvalidPayload` refusal naming the JSON path of the problem.
pub fn invalid(path: impl Into<String>, detail: impl Into<String>) -> IngressError {
    IngressError::InvalidPayload {
        path: path.into(),
        detail: detail.into(),
    }
}

/// Member `key` as a string; absent and `null` are `None`.
pub fn string_member(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, IngressError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(format!("$.{key}"), "must be a string")),
    }
}

/// Member `key` as an array; absent and `null` are `None`.
pub fn array_member<'v>(
    obj: &'v Map<String, Value>,
    key: &str,
) -> Result<Option<&'v Vec<Value>>, IngressError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(_) => Err(invalid(format!("$.{key}"), "must be an array")),
    }
}

/// When `content`/`attachments` and `input_items` count as the two shapes mixed (§6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mixing {
    /// Any member of both shapes present, even empty, is mixed (HTTP, §7.1: the caller
    /// writes the payload by hand).
    Present,
    /// Only non-empty members count: real Kheish sidecars send `"content": ""`,
    /// `"input_items": []` and `"attachments": []` on every event, whichever shape they use.
    /// Empty members are then dropped from the stored input.
    NonEmpty,
}

/// How one kind's payload may carry content.
#[derive(Debug, Clone, Copy)]
pub struct ContentRules {
    /// Whether asset items and attachments may be sent; when not (an unauthenticated HTTP
    /// connector), naming one is `NotAllowedUnauthenticated`.
    pub assets_allowed: bool,
    pub mixing: Mixing,
    /// Also accept `content_base64` as the data member of an `inline_asset` (the name the
    /// Kheish sidecar SDK writes); `data_base64` is always accepted.
    pub content_base64_alias: bool,
    /// The sidecar dialect of items (SPEC §10.2): a member set to JSON `null` is absent, and
    /// members an item's type does not use are ignored, as they are on the event itself. Real
    /// sidecars write one asset shape with every member and `null` for the unused ones. When
    /// false (HTTP, §7.1) an item's unknown member is refused.
    pub lenient_items: bool,
}

/// An event's content after the rules: the run input, and the assets to store with the run.
#[derive(Debug, Default)]
pub struct Content {
    pub input: RunInput,
    /// Inline assets to store (their items were replaced by references).
    pub assets: Vec<NewAsset>,
    /// Asset ids the payload references; each must exist when the run is written.
    pub referenced_assets: Vec<String>,
}

/// Applies the content rules of §6.7 to the members of `obj`.
pub fn content(
    obj: &Map<String, Value>,
    rules: ContentRules,
    now_ms: i64,
) -> Result<Content, IngressError> {
    let refuse_assets = |member: &str| {
        if rules.assets_allowed {
            Ok(())
        } else {
            Err(IngressError::NotAllowedUnauthenticated {
                member: member.to_string(),
            })
        }
    };
    let mut content = string_member(obj, "content")?;
    let mut items = array_member(obj, "input_items")?;
    let mut attachments = array_member(obj, "attachments")?;
    if rules.mixing == Mixing::NonEmpty {
        content = content.filter(|c| !c.is_empty());
        items = items.filter(|i| !i.is_empty());
        attachments = attachments.filter(|a| !a.is_empty());
    }
    let has_shape_one = match rules.mixing {
        Mixing::Present => content.is_some() || attachments.is_some(),
        Mixing::NonEmpty => {
            content.as_deref().is_some_and(|c| !c.trim().is_empty()) || attachments.is_some()
        }
    };
    if items.is_some() && has_shape_one {
        return Err(IngressError::MixedContent);
    }
    if items.is_some() && rules.mixing == Mixing::NonEmpty {
        // Only blank text is left in `content`: the items carry the event.
        content = None;
    }
    if content
        .as_ref()
        .is_some_and(|c| c.len() > MAX_CONTENT_BYTES)
    {
        return Err(invalid(
            "$.content",
            format!("exceeds the limit of {MAX_CONTENT_BYTES} bytes"),
        ));
    }
    let mut out = Content {
        input: RunInput {
            content: content.clone(),
            ..RunInput::default()
        },
        ..Content::default()
    };
    if let Some(items) = items {
        if items.len() > MAX_ITEMS {
            return Err(invalid(
                "$.input_items",
                format!("at most {MAX_ITEMS} items"),
            ));
        }
        let mut stored = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("$.input_items[{i}]");
            let Value::Object(item) = item else {
                return Err(invalid(path, "must be an object"));
            };
            let item = &item_members(item, rules);
            match item.get("type").and_then(Value::as_str) {
                Some("text") => {
                    let unknown = item.keys().find(|k| !matches!(k.as_str(), "type" | "text"));
                    if let (Some(k), false) = (unknown, rules.lenient_items) {
                        return Err(invalid(format!("{path}.{k}"), "unknown member"));
                    }
                    let text = item
                        .get("text")
                        .and_then(Value::as_str)
                        .ok_or_else(|| invalid(format!("{path}.text"), "must be a string"))?;
                    stored.push(serde_json::json!({"type": "text", "text": text}));
                }
                Some("inline_asset" | "asset_reference") => {
                    refuse_assets(&format!("input_items[{i}]"))?;
                    stored.push(asset_item(item, &path, rules, now_ms, &mut out)?);
                }
                _ => {
                    return Err(invalid(
                        format!("{path}.type"),
                        "must be `text`, `inline_asset` or `asset_reference`",
                    ))
                }
            }
        }
        out.input.input_items = Some(stored);
    }
    if let Some(list) = attachments {
        refuse_assets("attachments")?;
        if list.len() > MAX_ATTACHMENTS {
            return Err(invalid(
                "$.attachments",
                format!("at most {MAX_ATTACHMENTS} attachments"),
            ));
        }
        let mut stored = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let path = format!("$.attachments[{i}]");
            let Value::Object(item) = item else {
                return Err(invalid(path, "must be an object"));
            };
            let item = &item_members(item, rules);
            stored.push(asset_item(item, &path, rules, now_ms, &mut out)?);
        }
        out.input.attachments = Some(stored);
    }
    let has_text = content.as_deref().is_some_and(|c| !c.trim().is_empty());
    let has_items = out
        .input
        .input_items
        .as_ref()
        .is_some_and(|i| !i.is_empty());
    let has_attachments = out
        .input
        .attachments
        .as_ref()
        .is_some_and(|a| !a.is_empty());
    if !has_text && !has_items && !has_attachments {
        return Err(IngressError::MissingContent);
    }
    Ok(out)
}

/// An item's members as the rules read them: without its `null` members in the sidecar
/// dialect (borrowed unchanged otherwise, or when it has none).
fn item_members(item: &Map<String, Value>, rules: ContentRules) -> Cow<'_, Map<String, Value>> {
    if !rules.lenient_items || !item.values().any(Value::is_null) {
        return Cow::Borrowed(item);
    }
    Cow::Owned(
        item.iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

/// Parses an asset item (`inline_asset` / `asset_reference`) into its stored form: an inline
/// asset is decoded into `out.assets` and replaced by a reference; a reference is recorded in
/// `out.referenced_assets`.
fn asset_item(
    item: &Map<String, Value>,
    path: &str,
    rules: ContentRules,
    now_ms: i64,
    out: &mut Content,
) -> Result<Value, IngressError> {
    let ty = item.get("type").and_then(Value::as_str).unwrap_or_default();
    let only = |allowed: &[&str]| match item.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) if !rules.lenient_items => Err(invalid(format!("{path}.{k}"), "unknown member")),
        _ => Ok(()),
    };
    match ty {
        "inline_asset" => {
            if rules.content_base64_alias {
                only(&[
                    "type",
                    "media_type",
                    "data_base64",
                    "content_base64",
                    "file_name",
                ])?;
            } else {
                only(&["type", "media_type", "data_base64", "file_name"])?;
            }
            let media_type = match item.get("media_type") {
                Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
                _ => {
                    return Err(invalid(
                        format!("{path}.media_type"),
                        "must be a non-empty string",
                    ))
                }
            };
            let data_member = if rules.content_base64_alias && item.contains_key("content_base64") {
                if item.contains_key("data_base64") {
                    return Err(invalid(
                        format!("{path}.content_base64"),
                        "send `data_base64` or `content_base64`, not both",
                    ));
                }
                "content_base64"
            } else {
                "data_base64"
            };
            let data = item
                .get(data_member)
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    invalid(format!("{path}.{data_member}"), "must be a base64 string")
                })?;
            if data.len() > MAX_ASSET_BYTES / 3 * 4 + 4 {
                return Err(invalid(
                    format!("{path}.{data_member}"),
                    "decoded asset exceeds 1 MiB",
                ));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|_| invalid(format!("{path}.{data_member}"), "is not valid base64"))?;
            if bytes.len() > MAX_ASSET_BYTES {
                return Err(invalid(
                    format!("{path}.{data_member}"),
                    "decoded asset exceeds 1 MiB",
                ));
            }
            let file_name = match item.get("file_name") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(invalid(format!("{path}.file_name"), "must be a string")),
            };
            let asset_id = new_id("asset", now_ms);
            let mut stored = Map::new();
            stored.insert("type".into(), "asset_reference".into());
            stored.insert("asset_id".into(), asset_id.clone().into());
            stored.insert("media_type".into(), media_type.clone().into());
            if let Some(name) = &file_name {
                stored.insert("file_name".into(), name.clone().into());
            }
            stored.insert("size".into(), bytes.len().into());
            out.assets.push(NewAsset {
                asset_id,
                media_type,
                file_name,
                sha256: sha256_hex(&bytes),
                data: bytes,
                now_ms,
            });
            Ok(Value::Object(stored))
        }
        "asset_reference" => {
            only(&["type", "asset_id"])?;
            let id = match item.get("asset_id") {
                Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
                _ => {
                    return Err(invalid(
                        format!("{path}.asset_id"),
                        "must be a non-empty string",
                    ))
                }
            };
            out.referenced_assets.push(id.clone());
            let mut stored = Map::new();
            stored.insert("type".into(), "asset_reference".into());
            stored.insert("asset_id".into(), id.into());
            Ok(Value::Object(stored))
        }
        _ => Err(invalid(
            format!("{path}.type"),
            "must be `inline_asset` or `asset_reference`",
        )),
    }
}

/// The payload's `metadata` as run metadata: any JSON, a non-object kept as
/// `{"payload": value}`; a key the daemon writes itself (§6.3) is refused.
pub fn metadata(obj: &Map<String, Value>) -> Result<Map<String, Value>, IngressError> {
    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            let mut m = Map::new();
            m.insert("payload".into(), other.clone());
            m
        }
    };
    if let Some(key) = metadata
        .keys()
        .find(|k| RESERVED_METADATA_PREFIXES.iter().any(|p| k.starts_with(p)))
    {
        return Err(IngressError::ReservedMetadataKey { key: key.clone() });
    }
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HTTP: ContentRules = ContentRules {
        assets_allowed: true,
        mixing: Mixing::Present,
        content_base64_alias: false,
        lenient_items: false,
    };
    const EXTERNAL: ContentRules = ContentRules {
        assets_allowed: true,
        mixing: Mixing::NonEmpty,
        content_base64_alias: true,
        lenient_items: true,
    };

    fn check(rules: ContentRules, body: &str) -> Result<Content, IngressError> {
        let Value::Object(obj) = serde_json::from_str(body).unwrap() else {
            panic!("not an object: {body}")
        };
        content(&obj, rules, 1_700_000_000_000)
    }

    #[test]
    fn sidecar_items_read_null_members_as_absent_and_ignore_unused_ones() {
        // One asset shape with every member, unused ones null: how real sidecars write items.
        let body = r#"{"input_items":[
            {"type":"text","text":"see","file_name":null,"asset_id":null},
            {"type":"inline_asset","media_type":"text/plain","data_base64":null,
             "content_base64":"aGk=","file_name":null,"asset_id":null},
            {"type":"inline_asset","media_type":"text/plain","data_base64":"aGk=",
             "content_base64":null,"file_name":"a.txt"},
            {"type":"asset_reference","asset_id":"asset_1","media_type":null,
             "file_name":"x.png","content_base64":null}
        ]}"#;
        let parsed = check(EXTERNAL, body).unwrap();
        let items = parsed.input.input_items.unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0], serde_json::json!({"type": "text", "text": "see"}));
        assert_eq!(parsed.assets.len(), 2);
        assert_eq!(parsed.assets[0].data, b"hi");
        assert_eq!(parsed.assets[1].file_name.as_deref(), Some("a.txt"));
        assert_eq!(parsed.referenced_assets, ["asset_1"]);
        assert_eq!(
            items[3],
            serde_json::json!({"type": "asset_reference", "asset_id": "asset_1"})
        );
        // Attachments read the same way.
        let attachments = r#"{"content":"hi","attachments":[{"type":"inline_asset",
            "media_type":"text/plain","data_base64":null,"content_base64":"aGk="}]}"#;
        assert_eq!(check(EXTERNAL, attachments).unwrap().assets.len(), 1);
        // Both data members set is still a refusal, and a null required member is missing.
        let both = r#"{"input_items":[{"type":"inline_asset","media_type":"text/plain",
            "data_base64":"aGk=","content_base64":"aGk="}]}"#;
        assert!(check(EXTERNAL, both).is_err());
        let no_data = r#"{"input_items":[{"type":"inline_asset","media_type":"text/plain",
            "data_base64":null,"content_base64":null}]}"#;
        let err = check(EXTERNAL, no_data).unwrap_err().to_string();
        assert!(err.contains("data_base64"), "{err}");
        // HTTP (§7.1) keeps refusing a member its item type does not have, even null.
        let http = r#"{"input_items":[{"type":"text","text":"t","file_name":null}]}"#;
        let err = check(HTTP, http).unwrap_err().to_string();
        assert!(err.contains("file_name"), "{err}");
    }

    #[test]
    fn empty_members_mix_only_for_http() {
        let sdk = r#"{"content":"","input_items":[{"type":"text","text":"t"}],"attachments":[]}"#;
        assert!(matches!(check(HTTP, sdk), Err(IngressError::MixedContent)));
        let parsed = check(EXTERNAL, sdk).unwrap();
        assert_eq!(parsed.input.content, None);
        assert_eq!(parsed.input.attachments, None);
        assert_eq!(parsed.input.input_items.unwrap().len(), 1);
        // Text with empty items: the content shape.
        let text = check(
            EXTERNAL,
            r#"{"content":"hi","input_items":[],"attachments":[]}"#,
        )
        .unwrap();
        assert_eq!(text.input.content.as_deref(), Some("hi"));
        assert_eq!(text.input.input_items, None);
        // Both shapes non-empty: mixed for both kinds.
        for body in [
            r#"{"content":"hi","input_items":[{"type":"text","text":"t"}]}"#,
            r#"{"attachments":[{"type":"asset_reference","asset_id":"a"}],"input_items":[{"type":"text","text":"t"}]}"#,
        ] {
            assert!(
                matches!(check(EXTERNAL, body), Err(IngressError::MixedContent)),
                "{body}"
            );
        }
        assert!(matches!(
            check(
                EXTERNAL,
                r#"{"content":"","input_items":[],"attachments":[]}"#
            ),
            Err(IngressError::MissingContent)
        ));
    }

    #[test]
    fn content_base64_is_an_alias_for_external_only() {
        let body = r#"{"attachments":[{"type":"inline_asset","file_name":"a.txt","media_type":"text/plain","content_base64":"aGVsbG8="}]}"#;
        let parsed = check(EXTERNAL, body).unwrap();
        assert_eq!(parsed.assets[0].data, b"hello");
        match check(HTTP, body) {
            Err(IngressError::InvalidPayload { path, .. }) => {
                assert_eq!(path, "$.attachments[0].content_base64")
            }
            other => panic!("{other:?}"),
        }
        let both = r#"{"attachments":[{"type":"inline_asset","media_type":"text/plain","content_base64":"aA==","data_base64":"aA=="}]}"#;
        assert!(matches!(
            check(EXTERNAL, both),
            Err(IngressError::InvalidPayload { .. })
        ));
    }

    #[test]
    fn limits() {
        let big = "x".repeat(MAX_CONTENT_BYTES + 1);
        match check(EXTERNAL, &serde_json::json!({ "content": big }).to_string()) {
            Err(IngressError::InvalidPayload { path, .. }) => assert_eq!(path, "$.content"),
            other => panic!("{other:?}"),
        }
        let items: Vec<Value> = (0..=MAX_ITEMS)
            .map(|_| serde_json::json!({"type":"text","text":"t"}))
            .collect();
        match check(
            EXTERNAL,
            &serde_json::json!({ "input_items": items }).to_string(),
        ) {
            Err(IngressError::InvalidPayload { path, .. }) => assert_eq!(path, "$.input_items"),
            other => panic!("{other:?}"),
        }
        let refs: Vec<Value> = (0..=MAX_ATTACHMENTS)
            .map(|_| serde_json::json!({"type":"asset_reference","asset_id":"a"}))
            .collect();
        match check(
            EXTERNAL,
            &serde_json::json!({ "attachments": refs }).to_string(),
        ) {
            Err(IngressError::InvalidPayload { path, .. }) => assert_eq!(path, "$.attachments"),
            other => panic!("{other:?}"),
        }
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD.encode(vec![0u8; MAX_ASSET_BYTES + 1]);
        let body = serde_json::json!({"attachments":[{"type":"inline_asset","media_type":"a/b","data_base64": data}]});
        match check(EXTERNAL, &body.to_string()) {
            Err(IngressError::InvalidPayload { path, detail }) => {
                assert_eq!(path, "$.attachments[0].data_base64");
                assert!(detail.contains("1 MiB"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reserved_metadata() {
        let obj = |v: Value| v.as_object().unwrap().clone();
        assert!(metadata(&obj(serde_json::json!({"metadata": {"a": 1}}))).is_ok());
        assert_eq!(
            metadata(&obj(serde_json::json!({"metadata": 5}))).unwrap()["payload"],
            5
        );
        assert!(matches!(
            metadata(&obj(
                serde_json::json!({"metadata": {"external_intent": "x"}})
            )),
            Err(IngressError::ReservedMetadataKey { .. })
        ));
    }
}
