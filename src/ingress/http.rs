//! Generic webhook ingress, `POST /v1/connectors/http/{name}` (SPEC §6, §7).
//!
//! This module only authenticates the request (bearer token, Kheish v1 HMAC) and applies the
//! payload rules of §6.7 and §7.1, turning it into a kind-neutral [`Event`]; the receipt
//! lookup, session resolution, rate limit and the durable write are the shared
//! [`pipeline`](super::pipeline).

use serde_json::{Map, Value};

use super::auth::{self, AuthError};
use super::fingerprint::fingerprint;
use super::payload::{self, array_member, invalid, string_member, ContentRules, Mixing};
use super::pipeline::{self, Done, Event, IngressCtx, ReceiptKey};
use super::{receipt_key, sha256_hex, IngressError};
use crate::model::reply::{ReplyPlugin, ReplyTarget};
use crate::model::run::{NewAsset, RunInput};
use crate::model::ConnectorKind;
use crate::registry::{ConnectorSet, HttpRuntime, Verifier};
use crate::secrets::constant_time_eq;
use crate::sessions::SessionRequest;

/// Request body cap for HTTP, Slack and Telegram ingress (SPEC §5).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// Members an HTTP payload may have (SPEC §7.1).
const MEMBERS: [&str; 11] = [
    "session_id",
    "binding_keys",
    "actor_id",
    "content",
    "input_items",
    "attachments",
    "metadata",
    "reply_targets",
    "reply_plugin",
    "reply_address",
    "idempotency_key",
];

const MAX_BINDING_KEYS: usize = 64;
const MAX_KEY_LEN: usize = 512;

/// The request as ingress sees it: borrowed from the server's request.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub method: &'a str,
    /// The request target exactly as received (path and query).
    pub target: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl Inbound<'_> {
    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Checks `Authorization: Bearer <token>` against the values `verifier` accepts at `now_ms`
/// (the current one and a rotated one within its grace window), in constant time. The header
/// must appear exactly once. Shared by every kind that takes a bearer token (http, external).
pub fn check_bearer(
    verifier: &Verifier,
    req: &Inbound<'_>,
    now_ms: i64,
) -> Result<(), IngressError> {
    let unauthorized = |detail: String| IngressError::Unauthorized { detail };
    let values = req.header_values("authorization");
    let value =
        auth::single_header("Authorization", &values).map_err(|e| unauthorized(e.to_string()))?;
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or_else(|| unauthorized("`Authorization` is not a `Bearer` token".into()))?;
    // Compare against every candidate, so timing does not tell which one matched.
    let mut matched = false;
    for candidate in verifier.candidates(now_ms) {
        matched |= constant_time_eq(candidate, token.as_bytes());
    }
    if !matched {
        return Err(unauthorized("bearer token does not match".into()));
    }
    Ok(())
}

/// Checks the bearer token and/or the HMAC signature the connector requires.
pub fn authenticate(rt: &HttpRuntime, req: &Inbound<'_>, now_ms: i64) -> Result<(), IngressError> {
    let unauthorized = |detail: String| IngressError::Unauthorized { detail };
    if let Some(bearer) = &rt.bearer {
        check_bearer(bearer, req, now_ms)?;
    }
    if rt.config.require_hmac_signature {
        let Some(hmac) = &rt.hmac else {
            return Err(unauthorized("connector has no HMAC secret".into()));
        };
        let ts = req.header_values(auth::KHEISH_TIMESTAMP_HEADER);
        let sig = req.header_values(auth::KHEISH_SIGNATURE_HEADER);
        auth::verify_kheish_v1(
            &hmac.candidates(now_ms),
            req.method,
            req.target,
            &ts,
            &sig,
            req.body,
            now_ms.div_euclid(1000),
            rt.config.signature_max_age_secs,
        )
        .map_err(|e: AuthError| unauthorized(format!("HMAC signature check failed: {e}")))?;
    }
    Ok(())
}

/// A payload after the rules of §6.7 and §7.1, ready to become a run.
#[derive(Debug)]
struct Parsed {
    fingerprint: String,
    idempotency_key: Option<String>,
    session_id: Option<String>,
    binding_keys: Option<Vec<String>>,
    actor_id: Option<String>,
    input: RunInput,
    assets: Vec<NewAsset>,
    /// Asset ids the payload references and that must exist.
    referenced_assets: Vec<String>,
    metadata: Map<String, Value>,
    reply_targets: Option<Vec<ReplyTarget>>,
}

/// Applies the payload rules to `body` exactly as [`accept`] does, without the store: the
/// entry point of the `ingress_payload` fuzz target (see `crate::fuzzing`).
#[doc(hidden)]
pub fn check_payload(rt: &HttpRuntime, body: &[u8], now_ms: i64) -> Result<(), IngressError> {
    parse_payload(rt, body, now_ms).map(drop)
}

/// Applies every payload rule of §6.7 and §7.1 to the parsed body.
fn parse_payload(rt: &HttpRuntime, body: &[u8], now_ms: i64) -> Result<Parsed, IngressError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| IngressError::InvalidJson {
        detail: e.to_string(),
    })?;
    let Value::Object(obj) = &value else {
        return Err(invalid("$", "the payload must be a JSON object"));
    };
    if let Some(member) = obj.keys().find(|k| !MEMBERS.contains(&k.as_str())) {
        return Err(IngressError::UnknownMember {
            member: member.clone(),
        });
    }
    let authenticated = rt.authenticated();
    let refuse_unauth = |member: &str| {
        if authenticated {
            Ok(())
        } else {
            Err(IngressError::NotAllowedUnauthenticated {
                member: member.to_string(),
            })
        }
    };

    // Idempotency key.
    let idempotency_key = match string_member(obj, "idempotency_key")? {
        Some(k) if k.trim().len() > MAX_KEY_LEN => {
            return Err(invalid(
                "$.idempotency_key",
                format!("must be at most {MAX_KEY_LEN} bytes"),
            ))
        }
        Some(k) if !k.trim().is_empty() => Some(k.trim().to_string()),
        _ => None,
    };
    if idempotency_key.is_none() && rt.config.require_idempotency_key {
        return Err(IngressError::IdempotencyKeyRequired);
    }

    // Session inputs (authenticated callers only).
    let session_id = match string_member(obj, "session_id")? {
        Some(s) => {
            refuse_unauth("session_id")?;
            if s.trim().is_empty() {
                return Err(invalid("$.session_id", "must not be empty"));
            }
            Some(s.trim().to_string())
        }
        None => None,
    };
    let binding_keys = match array_member(obj, "binding_keys")? {
        Some(items) => {
            refuse_unauth("binding_keys")?;
            if items.len() > MAX_BINDING_KEYS {
                return Err(invalid(
                    "$.binding_keys",
                    format!("at most {MAX_BINDING_KEYS} keys"),
                ));
            }
            let mut keys = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item.as_str().map(str::trim) {
                    Some(k) if !k.is_empty() && k.len() <= MAX_KEY_LEN => keys.push(k.to_string()),
                    _ => {
                        return Err(invalid(
                            format!("$.binding_keys[{i}]"),
                            "must be a non-empty string",
                        ))
                    }
                }
            }
            keys.sort();
            keys.dedup();
            Some(keys)
        }
        None => None,
    };
    let actor_id = match string_member(obj, "actor_id")? {
        Some(a) if a.trim().is_empty() || a.len() > MAX_KEY_LEN => {
            return Err(invalid(
                "$.actor_id",
                "must be a non-empty string of at most 512 bytes",
            ))
        }
        other => other,
    };

    // Content (§6.7) and metadata.
    let content = payload::content(
        obj,
        ContentRules {
            assets_allowed: authenticated,
            mixing: Mixing::Present,
            content_base64_alias: false,
            lenient_items: false,
        },
        now_ms,
    )?;
    let metadata = payload::metadata(obj)?;

    // Reply overrides (authentication AND allow_payload_reply_targets).
    let reply_targets = parse_reply_overrides(rt, obj, authenticated)?;

    Ok(Parsed {
        fingerprint: fingerprint(&value),
        idempotency_key,
        session_id,
        binding_keys,
        actor_id,
        input: content.input,
        assets: content.assets,
        referenced_assets: content.referenced_assets,
        metadata,
        reply_targets,
    })
}

fn parse_reply_overrides(
    rt: &HttpRuntime,
    obj: &Map<String, Value>,
    authenticated: bool,
) -> Result<Option<Vec<ReplyTarget>>, IngressError> {
    let list = array_member(obj, "reply_targets")?;
    let plugin = string_member(obj, "reply_plugin")?;
    let address = string_member(obj, "reply_address")?;
    let member = if list.is_some() {
        "reply_targets"
    } else if plugin.is_some() {
        "reply_plugin"
    } else if address.is_some() {
        "reply_address"
    } else {
        return Ok(None);
    };
    if !authenticated {
        return Err(IngressError::NotAllowedUnauthenticated {
            member: member.to_string(),
        });
    }
    if !rt.config.allow_payload_reply_targets {
        return Err(IngressError::ReplyOverrideNotAllowed);
    }
    let mut pairs: Vec<(String, Value, Value)> = Vec::new();
    if let Some(list) = list {
        if plugin.is_some() || address.is_some() {
            return Err(invalid(
                "$.reply_plugin",
                "use either `reply_targets` or `reply_plugin` + `reply_address`",
            ));
        }
        for (i, item) in list.iter().enumerate() {
            let Value::Object(t) = item else {
                return Err(invalid(
                    format!("$.reply_targets[{i}]"),
                    "must be an object {plugin, address}",
                ));
            };
            if let Some(k) = t
                .keys()
                .find(|k| !matches!(k.as_str(), "plugin" | "address"))
            {
                return Err(invalid(
                    format!("$.reply_targets[{i}].{k}"),
                    "unknown member",
                ));
            }
            pairs.push((
                format!("$.reply_targets[{i}]"),
                t.get("plugin").cloned().unwrap_or(Value::Null),
                t.get("address").cloned().unwrap_or(Value::Null),
            ));
        }
    } else {
        let (Some(p), Some(a)) = (plugin, address) else {
            return Err(invalid(
                "$.reply_address",
                "`reply_plugin` and `reply_address` go together",
            ));
        };
        pairs.push(("$".into(), Value::String(p), Value::String(a)));
    }
    let mut targets = Vec::with_capacity(pairs.len());
    for (path, plugin, address) in pairs {
        let plugin = plugin
            .as_str()
            .ok_or_else(|| invalid(format!("{path}.plugin"), "must be a string"))
            .and_then(|p| {
                ReplyPlugin::parse(p).map_err(|e| invalid(format!("{path}.plugin"), e))
            })?;
        if !plugin.served() {
            return Err(invalid(format!("{path}.plugin"), plugin.unserved_reason()));
        }
        let address = address
            .as_str()
            .ok_or_else(|| invalid(format!("{path}.address"), "must be a string"))?;
        let (target, _) = ReplyTarget::new(plugin, address).map_err(|e| {
            invalid(
                format!("{path}.address"),
                format!("invalid {} address: {e}", plugin.as_str()),
            )
        })?;
        targets.push(target);
    }
    Ok(Some(targets))
}

/// The HTTP natural session id (§6.5): `http:<name>:<first 16 hex of sha256(first key)>`.
pub fn natural_session_id(name: &str, sorted_keys: &[String]) -> Option<String> {
    sorted_keys
        .first()
        .map(|k| format!("http:{name}:{}", &sha256_hex(k.as_bytes())[..16]))
}

/// [`accept`] for the connector `name` of `set` (the server's route-table entry).
pub fn accept_named(
    ctx: &IngressCtx<'_>,
    set: &ConnectorSet,
    name: &str,
    req: &Inbound<'_>,
    done: Done,
) {
    match set.http.get(name) {
        Some(rt) => accept(ctx, rt, req, done),
        None => done(Err(IngressError::ConnectorNotFound {
            kind: ConnectorKind::Http,
            name: name.to_string(),
        })),
    }
}

/// Authenticates and parses one request for the HTTP connector `rt` (body size was checked by
/// the caller) and runs it through the [`pipeline`](super::pipeline); `done` gets the answer.
pub fn accept(ctx: &IngressCtx<'_>, rt: &HttpRuntime, req: &Inbound<'_>, done: Done) {
    match event(rt, req, ctx.now_ms) {
        Ok(event) => pipeline::accept(ctx, event, done),
        Err(refusal) => done(Err(refusal)),
    }
}

/// Authentication, payload rules and the connector's defaults: the HTTP request as a
/// kind-neutral [`Event`].
fn event(rt: &HttpRuntime, req: &Inbound<'_>, now_ms: i64) -> Result<Event, IngressError> {
    authenticate(rt, req, now_ms)?;
    let parsed = parse_payload(rt, req.body, now_ms)?;
    let name = rt.id.name.as_str();
    let connector = rt.id.to_string();
    let receipt = parsed.idempotency_key.as_deref().map(|raw| {
        let (key, key_sha256) = receipt_key(ConnectorKind::Http, name, raw);
        ReceiptKey { key, key_sha256 }
    });
    let binding_keys = parsed
        .binding_keys
        .unwrap_or_else(|| rt.config.common.binding_keys.clone());
    let session = SessionRequest {
        explicit: rt
            .config
            .common
            .fixed_session_id
            .clone()
            .or(parsed.session_id),
        natural_id: natural_session_id(name, &binding_keys),
        binding_keys,
        unresolved_hint:
            "send `session_id` or `binding_keys` (authenticated connectors), or configure \
                          `fixed_session_id` or `default_binding_keys` on the connector"
                .into(),
        policy: rt.config.common.session_policy.clone(),
        created_by: format!("connector:{connector}"),
    };
    let mut metadata = parsed.metadata;
    metadata.insert(
        "http_ingress_fingerprint".into(),
        parsed.fingerprint.clone().into(),
    );
    if let Some(receipt) = &receipt {
        metadata.insert("connector_ingress_key".into(), receipt.key.clone().into());
        metadata.insert(
            "http_ingress_key_sha256".into(),
            receipt.key_sha256.clone().into(),
        );
    }
    Ok(Event {
        connector: rt.id.clone(),
        receipt,
        fingerprint: parsed.fingerprint,
        session,
        actor_id: parsed
            .actor_id
            .or_else(|| rt.config.actor_id.clone())
            .unwrap_or_else(|| "http-webhook".into()),
        input: parsed.input,
        assets: parsed.assets,
        referenced_assets: parsed.referenced_assets,
        metadata,
        reply_targets: parsed
            .reply_targets
            .unwrap_or_else(|| rt.config.common.reply_targets.clone()),
        events_per_second: rt.config.common.ingress_events_per_second,
        rate_bucket: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::Secret;

    fn runtime(toml: &str) -> HttpRuntime {
        let loaded = crate::config::validate::parse_str("t.toml", toml);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let config = loaded.config.http[0].clone();
        HttpRuntime {
            id: crate::model::ConnectorId {
                kind: ConnectorKind::Http,
                name: config.common.name.clone(),
            },
            bearer: config
                .bearer_token
                .as_ref()
                .map(|_| Verifier::single(Secret::new("tok".into()))),
            hmac: config
                .hmac_secret
                .as_ref()
                .map(|_| Verifier::single(Secret::new("hmac-test-secret".into()))),
            config,
        }
    }

    const AUTH: &str = "[[http_connectors]]\nname = \"orders\"\nbearer_token_env = \"T\"\nallow_payload_reply_targets = true\n";
    const OPEN: &str =
        "[[http_connectors]]\nname = \"open\"\nallow_unauthenticated_ingress = true\n";

    fn parse(toml: &str, body: &str) -> Result<Parsed, IngressError> {
        parse_payload(&runtime(toml), body.as_bytes(), 1_700_000_000_000)
    }

    fn err_code(toml: &str, body: &str) -> String {
        let e = parse(toml, body).expect_err("expected a refusal");
        crate::server::response::ingress_error(&e).body.pipe(|b| {
            serde_json::from_slice::<Value>(&b).unwrap()["code"]
                .as_str()
                .unwrap()
                .to_string()
        })
    }

    trait Pipe: Sized {
        fn pipe<R>(self, f: impl FnOnce(Self) -> R) -> R {
            f(self)
        }
    }
    impl<T> Pipe for T {}

    #[test]
    fn payload_rules() {
        assert!(parse(AUTH, r#"{"content":"hi","idempotency_key":"k"}"#).is_ok());
        assert_eq!(err_code(AUTH, "{"), "invalid_json");
        assert_eq!(err_code(AUTH, "[1]"), "invalid_payload");
        assert_eq!(
            err_code(AUTH, r#"{"content":"hi","idempotency_key":"k","extra":1}"#),
            "unknown_member"
        );
        assert_eq!(
            err_code(AUTH, r#"{"content":"hi"}"#),
            "idempotency_key_required"
        );
        assert_eq!(
            err_code(AUTH, r#"{"content":"hi","idempotency_key":"   "}"#),
            "idempotency_key_required"
        );
        assert_eq!(
            err_code(AUTH, r#"{"content":5,"idempotency_key":"k"}"#),
            "invalid_payload"
        );
        assert_eq!(
            err_code(AUTH, r#"{"content":"","idempotency_key":"k"}"#),
            "missing_content"
        );
        assert_eq!(
            err_code(
                AUTH,
                r#"{"content":"a","input_items":[],"idempotency_key":"k"}"#
            ),
            "mixed_content"
        );
        assert_eq!(
            err_code(
                AUTH,
                r#"{"content":"a","metadata":{"connector_ingress_key":"x"},"idempotency_key":"k"}"#
            ),
            "reserved_metadata_key"
        );
        assert_eq!(
            err_code(
                AUTH,
                r#"{"content":"a","metadata":{"http_ingress_anything":"x"},"idempotency_key":"k"}"#
            ),
            "reserved_metadata_key"
        );
        assert_eq!(
            err_code(
                AUTH,
                r#"{"input_items":[{"type":"video"}],"idempotency_key":"k"}"#
            ),
            "invalid_payload"
        );
        assert_eq!(
            err_code(
                AUTH,
                r#"{"input_items":[{"type":"inline_asset","media_type":"text/plain","data_base64":"!!"}],"idempotency_key":"k"}"#
            ),
            "invalid_payload"
        );
        assert_eq!(
            err_code(
                AUTH,
                r#"{"content":"a","reply_targets":[{"plugin":"http","address":"https://u:p@e.com"}],"idempotency_key":"k"}"#
            ),
            "invalid_payload"
        );
    }

    #[test]
    fn unauthenticated_restrictions() {
        for (member, body) in [
            ("session_id", r#"{"content":"a","session_id":"s"}"#),
            ("binding_keys", r#"{"content":"a","binding_keys":["b"]}"#),
            ("reply_targets", r#"{"content":"a","reply_targets":[]}"#),
            ("attachments", r#"{"content":"a","attachments":[]}"#),
            (
                "input_items[0]",
                r#"{"input_items":[{"type":"asset_reference","asset_id":"x"}]}"#,
            ),
        ] {
            let toml = format!("{OPEN}require_idempotency_key = false\n");
            match parse(&toml, body) {
                Err(IngressError::NotAllowedUnauthenticated { member: m }) => assert_eq!(m, member),
                other => panic!("{body}: {other:?}"),
            }
        }
        // Reply overrides on an authenticated connector without the opt-in.
        let toml = "[[http_connectors]]\nname = \"o\"\nbearer_token_env = \"T\"\n";
        assert!(matches!(
            parse(
                toml,
                r#"{"content":"a","idempotency_key":"k","reply_plugin":"http","reply_address":"https://e.com"}"#
            ),
            Err(IngressError::ReplyOverrideNotAllowed)
        ));
    }

    #[test]
    fn inline_assets_become_references() {
        let p = parse(AUTH, r#"{"input_items":[{"type":"text","text":"t"},{"type":"inline_asset","media_type":"text/plain","data_base64":"aGVsbG8=","file_name":"a.txt"}],"idempotency_key":"k"}"#).unwrap();
        assert_eq!(p.assets.len(), 1);
        assert_eq!(p.assets[0].data, b"hello");
        let items = p.input.input_items.unwrap();
        assert_eq!(items[1]["type"], "asset_reference");
        assert_eq!(items[1]["asset_id"], p.assets[0].asset_id.as_str());
        assert!(!serde_json::to_string(&items).unwrap().contains("aGVsbG8="));
    }

    #[test]
    fn fingerprint_ignores_order_and_whitespace() {
        let a = parse(
            AUTH,
            r#"{"content":"hi","idempotency_key":"k","metadata":{"a":1,"b":2}}"#,
        )
        .unwrap();
        let b = parse(
            AUTH,
            "{ \"metadata\": {\"b\":2, \"a\":1}, \"idempotency_key\":\"k\", \"content\":\"hi\" }",
        )
        .unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
    }

    #[test]
    fn bearer_and_hmac() {
        let rt = runtime("[[http_connectors]]\nname = \"orders\"\nbearer_token_env = \"T\"\nrequire_hmac_signature = true\nhmac_secret_env = \"H\"\n");
        let body = br#"{"content":"hello","idempotency_key":"order-123","metadata":{"k":"v"}}"#;
        let target = "/v1/connectors/http/orders?source=a%2Fb&attempt=1";
        let sig =
            auth::kheish_v1_signature(b"hmac-test-secret", "POST", target, 1_710_000_000, body);
        let headers = |auth: &str, ts: &str, sig: &str| {
            vec![
                ("Authorization".to_string(), auth.to_string()),
                ("X-Kheish-Timestamp".to_string(), ts.to_string()),
                ("X-Kheish-Signature".to_string(), sig.to_string()),
            ]
        };
        let check = |h: Vec<(String, String)>, now_ms: i64| {
            authenticate(
                &rt,
                &Inbound {
                    method: "POST",
                    target,
                    headers: &h,
                    body,
                },
                now_ms,
            )
        };
        let now = 1_710_000_000_000;
        assert!(check(headers("Bearer tok", "1710000000", &sig), now).is_ok());
        assert!(check(headers("Bearer nope", "1710000000", &sig), now).is_err());
        assert!(check(headers("Basic tok", "1710000000", &sig), now).is_err());
        assert!(check(headers("Bearer tok", "1710000000", &sig), now + 301_000).is_err());
        let mut dup = headers("Bearer tok", "1710000000", &sig);
        dup.push(("authorization".into(), "Bearer tok".into()));
        match check(dup, now) {
            Err(IngressError::Unauthorized { detail }) => {
                assert!(detail.contains("Authorization"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        // Bearer is still required when HMAC is.
        let no_bearer: Vec<(String, String)> = headers("Bearer tok", "1710000000", &sig)
            .into_iter()
            .skip(1)
            .collect();
        assert!(check(no_bearer, now).is_err());
    }

    #[test]
    fn natural_ids() {
        let id = natural_session_id("orders", &["a".into(), "b".into()]).unwrap();
        assert_eq!(id, format!("http:orders:{}", &sha256_hex(b"a")[..16]));
        assert_eq!(natural_session_id("orders", &[]), None);
    }

    #[test]
    fn a_reply_plugin_override_of_any_served_plugin_is_parsed() {
        let body = r#"{"content":"x","idempotency_key":"k1","reply_plugin":"telegram","reply_address":"{\"connector\":\"t\",\"chat_id\":1}"}"#;
        let parsed = parse(AUTH, body);
        assert!(
            !matches!(&parsed, Err(IngressError::InvalidPayload { path, .. }) if path == "$.plugin"),
            "{parsed:?}"
        );
    }
}
