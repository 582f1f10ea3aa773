//! Redacted JSON views that the control plane and the CLI share, so an operator's
//! `kheishctl replay`/`inspect-receipts` and the API cannot show different shapes: runs,
//! deliveries (one redaction rule, [`redacted_address`]), replay/resolve items, receipts, and
//! the receipt filter both build from raw input (raw key -> stored key through
//! `ingress::receipt_key`, the one hashing function).
//!
//! # Redaction of delivery targets
//!
//! A delivery view never contains a secret. An `http` target may carry credentials in header
//! values and anywhere in its URL (Slack and Discord webhook URLs are credentials in their
//! path; Telegram puts the bot token in `/bot<token>/`; many hooks take `?token=`). No
//! heuristic reliably tells a route name from a short token, so the rule keeps only what is
//! never secret and fingerprints the rest:
//! - scheme, host and port are kept (`scheme://host[:port]`, the same form as error messages,
//!   from [`crate::net::redact_target`]);
//! - a path other than `/`, and any query, are replaced by `/<redacted:XXXXXXXX>`, where
//!   `XXXXXXXX` is the first 8 hex digits of the SHA-256 of the path and query as stored
//!   (enough to tell targets apart and to check a suspected URL, useless to recover a token);
//! - userinfo (refused when stored anyway) and the fragment are dropped;
//! - header names and `allow_private_network` are kept, every header value becomes
//!   `<redacted>`;
//! - an address that no longer parses is shown as `<redacted>`.
//!
//! Slack, Telegram and external addresses name a connector and a channel/chat/route — no
//! secrets (tokens live in the connector config) — and are shown as stored. The view leaves
//! out the internal `target_key`, which is derived from the full address.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::delivery::ReplayItem;
use crate::ingress;
use crate::model::delivery::Delivery;
use crate::model::delivery::DeliveryStatus;
use crate::model::reply::{ReplyPlugin, ReplyTarget, TargetAddress};
use crate::model::run::{Receipt, Run};
use crate::model::{parse_when, rfc3339_ms, ConnectorId};
use crate::store::deliveries::PausedTarget;
use crate::store::receipts::ReceiptFilter;

/// Rows `GET /v1/receipts` (and `inspect-receipts`) returns without `limit` (as `inspect-receipts`).
pub const DEFAULT_LIMIT: u32 = 100;

/// The largest `limit` the API accepts: one response stays a few hundred KiB. The CLI, which
/// streams to a terminal or a file, allows more.
pub const MAX_API_LIMIT: u32 = 1_000;

/// What replaces a secret-bearing value in a view.
pub const REDACTED: &str = "<redacted>";

/// A plugin filter: one of the four plugin names.
pub fn check_plugin(value: &str) -> Result<String, String> {
    ReplyPlugin::parse(value.trim()).map(|p| p.as_str().to_string())
}

/// The JSON view of a run: the model's members plus `connector` (`KIND/NAME`).
pub fn run_view(run: &Run) -> Map<String, Value> {
    let mut view = match serde_json::to_value(run) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    view.insert(
        "connector".into(),
        json!(format!("{}/{}", run.connector_kind, run.connector_name)),
    );
    view
}

/// An address with every secret-bearing part redacted (see the module docs for the rule).
pub fn redacted_address(target: &ReplyTarget) -> String {
    if target.plugin != ReplyPlugin::Http {
        return target.address.clone();
    }
    let Ok(TargetAddress::Http(http)) = target.parsed() else {
        return REDACTED.to_string();
    };
    let url = redacted_url(&http.url);
    if !target.address.trim_start().starts_with('{') {
        return url;
    }
    // Written by hand to keep the stored member order (`url` first, headers as configured);
    // serde_json's map would sort them.
    let mut out = format!("{{\"url\":{}", json!(url));
    if !http.headers.is_empty() {
        let headers: Vec<String> = http
            .headers
            .iter()
            .map(|(name, _)| format!("{}:{}", json!(name), json!(REDACTED)))
            .collect();
        out.push_str(&format!(",\"headers\":{{{}}}", headers.join(",")));
    }
    if http.allow_private_network {
        out.push_str(",\"allow_private_network\":true");
    }
    out.push('}');
    out
}

/// `scheme://host[:port]` plus `/<redacted:XXXXXXXX>` when there is a path or query.
fn redacted_url(url: &url::Url) -> String {
    let base = crate::net::redact_target(url);
    let path = url.path();
    let query = url.query().unwrap_or("");
    if (path.is_empty() || path == "/") && query.is_empty() {
        return format!("{base}/");
    }
    let mut rest = path.to_string();
    if url.query().is_some() {
        rest.push('?');
        rest.push_str(query);
    }
    let digest = Sha256::digest(rest.as_bytes());
    let hex = hex::encode(&digest[..4]);
    format!("{base}/<redacted:{hex}>")
}

/// A reply target as views show it: the plugin and its redacted address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetView {
    pub plugin: &'static str,
    /// The address with secrets redacted ([`redacted_address`]).
    pub address: String,
}

impl TargetView {
    pub fn new(target: &ReplyTarget) -> TargetView {
        TargetView {
            plugin: target.plugin.as_str(),
            address: redacted_address(target),
        }
    }
}

/// One delivery as the API and `kheishctl replay --json` show it: the stored members with the
/// target redacted, times both as Unix ms and RFC 3339.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryView {
    pub delivery_id: String,
    pub output_id: String,
    pub run_id: String,
    pub session_id: String,
    /// `KIND/NAME` of the run's connector.
    pub connector: String,
    pub target: TargetView,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at_ms: i64,
    pub next_attempt_at: String,
    pub lease_owner: Option<String>,
    pub lease_expires_at_ms: Option<i64>,
    /// The last failure, already redacted by the transport.
    pub last_error: Option<String>,
    pub last_error_code: Option<String>,
    pub last_http_status: Option<u16>,
    pub progress: Option<Value>,
    pub created_at_ms: i64,
    pub created_at: String,
    pub updated_at_ms: i64,
    pub delivered_at_ms: Option<i64>,
    pub dead_lettered_at_ms: Option<i64>,
    pub resolution: Option<String>,
    pub resolved_at_ms: Option<i64>,
    pub replayed_from_delivery_id: Option<String>,
    /// When the delivery's target is paused by its circuit breaker (SPEC §11.3): the end of the
    /// pause. Absent when the target is not paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_until_ms: Option<i64>,
}

impl DeliveryView {
    /// Marks the view with its target's pause, when `paused` (target key -> pause end) has one
    /// and the delivery is still open.
    pub fn with_pause(mut self, d: &Delivery, paused: &HashMap<String, i64>) -> DeliveryView {
        if d.status.is_open() {
            if let Some(until) = paused.get(&d.target_key) {
                self.paused_until = Some(rfc3339_ms(*until));
                self.paused_until_ms = Some(*until);
            }
        }
        self
    }

    pub fn new(d: &Delivery) -> DeliveryView {
        DeliveryView {
            delivery_id: d.delivery_id.clone(),
            output_id: d.output_id.clone(),
            run_id: d.run_id.clone(),
            session_id: d.session_id.clone(),
            connector: d.connector.clone(),
            target: TargetView::new(&d.target),
            status: d.status,
            attempts: d.attempts,
            next_attempt_at_ms: d.next_attempt_at_ms,
            next_attempt_at: rfc3339_ms(d.next_attempt_at_ms),
            lease_owner: d.lease_owner.clone(),
            lease_expires_at_ms: d.lease_expires_at_ms,
            last_error: d.last_error.clone(),
            last_error_code: d.last_error_code.clone(),
            last_http_status: d.last_http_status,
            progress: d.progress.clone(),
            created_at_ms: d.created_at_ms,
            created_at: rfc3339_ms(d.created_at_ms),
            updated_at_ms: d.updated_at_ms,
            delivered_at_ms: d.delivered_at_ms,
            dead_lettered_at_ms: d.dead_lettered_at_ms,
            resolution: d.resolution.clone(),
            resolved_at_ms: d.resolved_at_ms,
            replayed_from_delivery_id: d.replayed_from_delivery_id.clone(),
            paused_until: None,
            paused_until_ms: None,
        }
    }
}

/// `{"deliveries":[…]}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
}

impl DeliveryList {
    pub fn new(deliveries: &[Delivery]) -> DeliveryList {
        DeliveryList::with_pauses(deliveries, &HashMap::new())
    }

    /// The list with each open delivery marked with its target's pause (see
    /// [`DeliveryView::with_pause`]).
    pub fn with_pauses(deliveries: &[Delivery], paused: &HashMap<String, i64>) -> DeliveryList {
        DeliveryList {
            deliveries: deliveries
                .iter()
                .map(|d| DeliveryView::new(d).with_pause(d, paused))
                .collect(),
        }
    }
}

/// One paused target as `POST /v1/deliveries/backpressure/reset` shows it: redacted like a
/// delivery's target.
#[derive(Debug, Clone, Serialize)]
pub struct PausedTargetView {
    pub target: TargetView,
    pub paused_until: String,
    pub paused_until_ms: i64,
}

impl PausedTargetView {
    pub fn new(p: &PausedTarget) -> PausedTargetView {
        PausedTargetView {
            target: TargetView::new(&p.target),
            paused_until: rfc3339_ms(p.paused_until_ms),
            paused_until_ms: p.paused_until_ms,
        }
    }
}

/// One replay/resolve result: `result` is the item's kind (`would_replay`, `replayed`,
/// `existing_replay`, `would_resolve`, `resolved`, `not_dead_lettered`, `not_found`);
/// `delivery_id` the dead letter (or id) the item is about; `source` the dead letter that was
/// (or would be) replayed; `delivery` the record the result produced or found — the replay for
/// `replayed`/`existing_replay`, the dead letter itself for the resolve results, the delivery as
/// it is for `not_dead_lettered`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemView {
    pub result: &'static str,
    pub delivery_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_delivery_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<DeliveryView>,
}

impl ItemView {
    pub fn new(item: &ReplayItem) -> ItemView {
        let (delivery_id, new, delivery, source) = match item {
            ReplayItem::WouldReplay { source } => {
                (source.delivery_id.clone(), None, None, Some(source))
            }
            ReplayItem::Replayed { source, replay }
            | ReplayItem::ExistingReplay { source, replay } => (
                source.delivery_id.clone(),
                Some(replay.delivery_id.clone()),
                Some(replay),
                Some(source),
            ),
            ReplayItem::WouldResolve { source }
            | ReplayItem::Resolved { source }
            | ReplayItem::NotDeadLettered { source } => {
                (source.delivery_id.clone(), None, Some(source), None)
            }
            ReplayItem::NotFound { id } => (id.clone(), None, None, None),
        };
        ItemView {
            result: item.kind(),
            delivery_id,
            new_delivery_id: new,
            delivery: delivery.map(DeliveryView::new),
            source: source.map(DeliveryView::new),
        }
    }

    /// True for results that count as success (exit 0): everything but `not_found` and
    /// `not_dead_lettered`.
    pub fn is_success(&self) -> bool {
        !matches!(self.result, "not_found" | "not_dead_lettered")
    }
}

/// `{"items":[…]}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemList {
    pub items: Vec<ItemView>,
}

impl ItemList {
    pub fn new(items: &[ReplayItem]) -> ItemList {
        ItemList {
            items: items.iter().map(ItemView::new).collect(),
        }
    }
}

/// A query parameter `GET /v1/receipts` could not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("query parameter `{parameter}`: {message}")]
pub struct QueryError {
    /// The parameter's name as sent.
    pub parameter: String,
    pub message: String,
}

fn query_error(parameter: &str, message: impl Into<String>) -> QueryError {
    QueryError {
        parameter: parameter.to_string(),
        message: message.into(),
    }
}

/// Parses the decoded query pairs of `GET /v1/receipts`. Unknown and repeated parameters are
/// refused (a typo would otherwise silently widen the listing), as are empty values.
pub fn parse_receipt_query(
    pairs: &[(String, String)],
    now_ms: i64,
) -> Result<ReceiptFilter, QueryError> {
    const KNOWN: [&str; 6] = ["connector", "key", "run", "session", "since", "limit"];
    for (idx, (name, value)) in pairs.iter().enumerate() {
        if !KNOWN.contains(&name.as_str()) {
            return Err(query_error(
                name,
                "unknown parameter; use connector, key, run, session, since or limit",
            ));
        }
        if pairs[..idx].iter().any(|(n, _)| n == name) {
            return Err(query_error(name, "given more than once"));
        }
        if value.trim().is_empty() {
            return Err(query_error(name, "must not be empty"));
        }
    }
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };

    let connector = get("connector")
        .map(|v| v.parse::<ConnectorId>())
        .transpose()
        .map_err(|e| query_error("connector", e))?;
    let since_ms = get("since")
        .map(|v| parse_when(v, now_ms))
        .transpose()
        .map_err(|e| query_error("since", e))?;
    let limit = match get("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_API_LIMIT).contains(n))
            .ok_or_else(|| {
                query_error(
                    "limit",
                    format!("must be an integer from 1 to {MAX_API_LIMIT}"),
                )
            })?,
    };
    receipt_filter(
        connector.as_ref(),
        get("key"),
        get("run").map(str::to_string),
        get("session").map(str::to_string),
        since_ms,
        limit,
    )
    .map_err(|message| query_error("key", message))
}

/// Builds the store filter from the operator's terms, shared by `inspect-receipts` and
/// `GET /v1/receipts`. A raw key is hashed exactly as ingress hashes it
/// ([`ingress::receipt_key`]): with the connector that gives its stored key (one index look-up);
/// without one, the receipts of every connector whose key has the same digest (the key as given
/// and trimmed, as each kind hashes it), found by a scan.
pub fn receipt_filter(
    connector: Option<&ConnectorId>,
    raw_key: Option<&str>,
    run_id: Option<String>,
    session_id: Option<String>,
    since_ms: Option<i64>,
    limit: u32,
) -> Result<ReceiptFilter, &'static str> {
    let (receipt_key, key_sha256) = match (raw_key, connector) {
        (None, _) => (None, None),
        (Some(raw), Some(id)) => (
            Some(ingress::receipt_key(id.kind, id.name.as_str(), raw).0),
            None,
        ),
        (Some(raw), None) => {
            let mut digests = vec![ingress::sha256_hex(raw.as_bytes())];
            let trimmed = ingress::sha256_hex(raw.trim().as_bytes());
            if trimmed != digests[0] {
                digests.push(trimmed);
            }
            (None, Some(digests))
        }
    };
    Ok(ReceiptFilter {
        connector: connector.map(|id| (id.kind, id.name.as_str().to_string())),
        receipt_key,
        key_sha256,
        run_id,
        session_id,
        since_ms,
        limit,
    })
}

/// One receipt as the API and `inspect-receipts --json` show it: the stored (hashed) key, full
/// digests, and times both as RFC 3339 and Unix ms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptView {
    /// `KIND:NAME:<hash>` (telegram: `telegram:NAME:<update_id>`); never the raw key.
    pub receipt_key: String,
    /// `KIND/NAME`.
    pub connector: String,
    pub connector_kind: String,
    pub connector_name: String,
    /// Full 64-hex SHA-256 of the raw key.
    pub key_sha256: String,
    /// Full 64-hex payload fingerprint (SPEC §6.4).
    pub fingerprint: String,
    pub status: String,
    pub run_id: String,
    pub session_id: String,
    pub received_at: String,
    pub received_at_ms: i64,
    /// Replays answered from this receipt.
    pub duplicate_hits: i64,
    pub last_duplicate_at: Option<String>,
    pub last_duplicate_at_ms: Option<i64>,
}

impl From<&Receipt> for ReceiptView {
    fn from(r: &Receipt) -> ReceiptView {
        ReceiptView {
            receipt_key: r.receipt_key.clone(),
            connector: format!("{}/{}", r.connector_kind, r.connector_name),
            connector_kind: r.connector_kind.as_str().to_string(),
            connector_name: r.connector_name.clone(),
            key_sha256: r.key_sha256.clone(),
            fingerprint: r.fingerprint.clone(),
            status: r.status.clone(),
            run_id: r.run_id.clone(),
            session_id: r.session_id.clone(),
            received_at: rfc3339_ms(r.received_at_ms),
            received_at_ms: r.received_at_ms,
            duplicate_hits: r.duplicate_hits,
            last_duplicate_at: r.last_duplicate_at_ms.map(rfc3339_ms),
            last_duplicate_at_ms: r.last_duplicate_at_ms,
        }
    }
}

/// `{"receipts":[…]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptList {
    pub receipts: Vec<ReceiptView>,
}

impl ReceiptList {
    pub fn new(receipts: &[Receipt]) -> ReceiptList {
        ReceiptList {
            receipts: receipts.iter().map(ReceiptView::from).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn http(address: &str) -> String {
        let (target, _) = ReplyTarget::new(ReplyPlugin::Http, address).unwrap();
        redacted_address(&target)
    }

    fn fp(rest: &str) -> String {
        let digest = Sha256::digest(rest.as_bytes());
        hex::encode(&digest[..4])
    }

    #[test]
    fn http_urls_keep_only_scheme_host_and_port() {
        assert_eq!(http("https://example.com"), "https://example.com/");
        assert_eq!(http("https://example.com/"), "https://example.com/");
        assert_eq!(
            http("https://hooks.slack.com/services/T0/B0/s3cr3tT0ken"),
            format!(
                "https://hooks.slack.com/<redacted:{}>",
                fp("/services/T0/B0/s3cr3tT0ken")
            )
        );
        assert_eq!(
            http("http://127.0.0.1:8080/sink?token=abc#frag"),
            format!("http://127.0.0.1:8080/<redacted:{}>", fp("/sink?token=abc"))
        );
        assert_eq!(
            http("https://api.telegram.org/bot123:ABC/sendMessage"),
            format!(
                "https://api.telegram.org/<redacted:{}>",
                fp("/bot123:ABC/sendMessage")
            )
        );
        assert_eq!(
            http("http://[::1]:9/x"),
            format!("http://[::1]:9/<redacted:{}>", fp("/x"))
        );
        // The same path gives the same fingerprint, a different one another.
        assert_eq!(http("https://e.com/a"), http("https://e.com/a"));
        assert_ne!(http("https://e.com/a"), http("https://e.com/b"));
    }

    #[test]
    fn http_json_addresses_redact_header_values() {
        let shown = http(
            r#"{"url":"https://e.com/hook?k=v","headers":{"X-Secret":"hunter2","X-Tenant":"t1"},"allow_private_network":true}"#,
        );
        let v: Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(
            v,
            json!({
                "url": format!("https://e.com/<redacted:{}>", fp("/hook?k=v")),
                "headers": {"X-Secret": REDACTED, "X-Tenant": REDACTED},
                "allow_private_network": true
            })
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("k=v"),
            "{shown}"
        );
        assert_eq!(
            http(r#"{"url":"https://e.com"}"#),
            r#"{"url":"https://e.com/"}"#
        );
    }

    #[test]
    fn other_plugins_and_broken_addresses() {
        let slack = ReplyTarget {
            plugin: ReplyPlugin::Slack,
            address: r#"{"connector":"support","channel_id":"C1"}"#.into(),
        };
        assert_eq!(redacted_address(&slack), slack.address);
        let broken = ReplyTarget {
            plugin: ReplyPlugin::Http,
            address: "https://user:pw@e.com/x".into(),
        };
        assert_eq!(redacted_address(&broken), REDACTED);
    }

    fn delivery(id: &str, status: DeliveryStatus) -> Delivery {
        let target = ReplyTarget {
            plugin: ReplyPlugin::Http,
            address: r#"{"url":"https://e.com/p?token=t0k","headers":{"X-S":"v4lue"}}"#.into(),
        };
        Delivery {
            attempts: 1,
            next_attempt_at_ms: NOW,
            created_at_ms: NOW,
            updated_at_ms: NOW,
            ..Delivery::sample(id, target, status)
        }
    }

    #[test]
    fn item_views() {
        let source = delivery("dlv_src", DeliveryStatus::DeadLettered);
        let mut replay = delivery("dlv_new", DeliveryStatus::Pending);
        replay.replayed_from_delivery_id = Some("dlv_src".into());
        let v = serde_json::to_value(ItemView::new(&ReplayItem::Replayed {
            source: source.clone(),
            replay,
        }))
        .unwrap();
        assert_eq!(v["result"], "replayed");
        assert_eq!(v["delivery_id"], "dlv_src");
        assert_eq!(v["new_delivery_id"], "dlv_new");
        assert_eq!(v["delivery"]["replayed_from_delivery_id"], "dlv_src");
        assert_eq!(v["source"]["status"], "dead_lettered");
        assert_eq!(v["source"]["created_at"], "2023-11-14T22:13:20.000Z");
        assert!(v["source"].get("target_key").is_none());
        let text = v.to_string();
        assert!(!text.contains("t0k") && !text.contains("v4lue"), "{text}");

        let v =
            serde_json::to_value(ItemView::new(&ReplayItem::NotFound { id: "x".into() })).unwrap();
        assert_eq!(v, json!({"result": "not_found", "delivery_id": "x"}));
        let item = ItemView::new(&ReplayItem::NotDeadLettered {
            source: delivery("d", DeliveryStatus::Delivered),
        });
        assert!(!item.is_success());
        assert_eq!(item.delivery.unwrap().status, DeliveryStatus::Delivered);
        assert!(ItemView::new(&ReplayItem::WouldResolve { source }).is_success());
    }

    mod receipts {
        use super::*;
        use crate::model::ConnectorKind;

        fn parse(query: &str) -> Result<ReceiptFilter, QueryError> {
            let pairs = crate::server::router::query_pairs(query).unwrap();
            parse_receipt_query(&pairs, NOW)
        }

        fn bad(query: &str, parameter: &str) {
            let err = parse(query).unwrap_err();
            assert_eq!(err.parameter, parameter, "{query}: {err}");
        }

        #[test]
        fn defaults() {
            assert_eq!(parse("").unwrap(), ReceiptFilter::all(DEFAULT_LIMIT));
        }

        #[test]
        fn every_filter() {
            let f =
                parse("connector=http/orders&key=+order-1+&run=r1&session=s%3A1&since=10m&limit=5")
                    .unwrap();
            assert_eq!(
                f,
                ReceiptFilter {
                    connector: Some((ConnectorKind::Http, "orders".into())),
                    receipt_key: Some(
                        ingress::receipt_key(ConnectorKind::Http, "orders", "order-1").0
                    ),
                    key_sha256: None,
                    run_id: Some("r1".into()),
                    session_id: Some("s:1".into()),
                    since_ms: Some(NOW - 600_000),
                    limit: 5,
                }
            );
            assert_eq!(
                parse("since=2023-11-14T22:13:20Z").unwrap().since_ms,
                Some(1_700_000_000_000)
            );
        }

        #[test]
        fn a_key_without_a_connector_is_looked_up_by_its_digests() {
            let f = parse("key=+order-1+").unwrap();
            assert_eq!(f.receipt_key, None);
            assert_eq!(
                f.key_sha256,
                Some(vec![
                    ingress::sha256_hex(b" order-1 "),
                    ingress::sha256_hex(b"order-1")
                ])
            );
            let f = parse("key=order-1").unwrap();
            assert_eq!(f.key_sha256, Some(vec![ingress::sha256_hex(b"order-1")]));
        }

        #[test]
        fn bad_parameters_are_named() {
            bad("connector=orders", "connector");
            bad("connector=ftp/orders", "connector");
            bad("since=yesterday", "since");
            bad("limit=0", "limit");
            bad("limit=1001", "limit");
            bad("limit=ten", "limit");
            bad("run=", "run");
            bad("run=a&run=b", "run");
            bad("conector=http/orders", "conector");
        }

        #[test]
        fn view_shows_times_in_both_forms() {
            let r = Receipt {
                receipt_key: "http:orders:abc".into(),
                connector_kind: ConnectorKind::Http,
                connector_name: "orders".into(),
                key_sha256: "a".repeat(64),
                fingerprint: "b".repeat(64),
                status: "submitted".into(),
                run_id: "run_1".into(),
                session_id: "sess".into(),
                received_at_ms: 1_700_000_000_000,
                duplicate_hits: 2,
                last_duplicate_at_ms: Some(1_700_000_000_500),
            };
            let v = serde_json::to_value(ReceiptList::new(&[r])).unwrap();
            let first = &v["receipts"][0];
            assert_eq!(first["connector"], "http/orders");
            assert_eq!(first["received_at"], "2023-11-14T22:13:20.000Z");
            assert_eq!(first["last_duplicate_at"], "2023-11-14T22:13:20.500Z");
            assert_eq!(first["fingerprint"], "b".repeat(64));
            assert_eq!(first["duplicate_hits"], 2);
        }
    }
}
