//! Entry points of the cargo-fuzz targets in `fuzz/` (SPEC §15: parsers of untrusted input are
//! fuzzed). Each takes arbitrary bytes, runs one parser the daemon or the CLI exposes to
//! untrusted input, and checks what must hold for every input: no panic, and a refusal that
//! says what was wrong. The fuzz targets are one-line wrappers, so the same functions also
//! run in this crate's unit tests, on stable, over seed and generated inputs.
//!
//! Not part of the public interface (`#[doc(hidden)]` in `lib.rs`).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::config::validate::parse_str;
use crate::ingress::auth;
use crate::ingress::http::{authenticate, check_payload, Inbound};
use crate::ingress::IngressError;
use crate::model::reply::{ReplyPlugin, ReplyTarget};
use crate::model::{ConnectorId, ConnectorKind};
use crate::registry::{
    ExternalRuntime, HttpRuntime, SidecarStatus, Sidecars, SlackRuntime, TelegramRuntime, Verifier,
};
use crate::secrets::Secret;

/// The clock the fuzzed requests are judged against.
const NOW_MS: i64 = 1_710_000_000_000;
/// The HMAC secret of the fuzzed connector (a test value, not a real secret).
const HMAC_SECRET: &str = "fuzz-hmac-secret";
/// The path the fuzzed requests are addressed to.
const TARGET: &str = "/v1/ingress/http/orders";

fn runtime(toml: &str) -> HttpRuntime {
    let loaded = parse_str("fuzz.toml", toml);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let config = loaded.config.http[0].clone();
    HttpRuntime {
        id: ConnectorId {
            kind: ConnectorKind::Http,
            name: config.common.name.clone(),
        },
        bearer: config
            .bearer_token
            .as_ref()
            .map(|_| Verifier::single(Secret::new("fuzz-bearer".into()))),
        hmac: config
            .hmac_secret
            .as_ref()
            .map(|_| Verifier::single(Secret::new(HMAC_SECRET.into()))),
        config,
    }
}

/// An authenticated connector that accepts payload reply targets, and an unauthenticated one
/// (which must refuse them).
fn runtimes() -> &'static [HttpRuntime; 2] {
    static RUNTIMES: OnceLock<[HttpRuntime; 2]> = OnceLock::new();
    RUNTIMES.get_or_init(|| {
        [
            runtime(
                "[[http_connectors]]\nname = \"orders\"\nbearer_token_env = \"T\"\n\
                 hmac_secret_env = \"H\"\nrequire_hmac_signature = true\n\
                 allow_payload_reply_targets = true\n",
            ),
            runtime("[[http_connectors]]\nname = \"open\"\nallow_unauthenticated_ingress = true\n"),
        ]
    })
}

/// A remote_http external connector and a child_process one whose sidecar runs instance
/// `fuzz-1` (so both branches of the `instance_id` check are reachable).
fn external_runtimes() -> &'static ([ExternalRuntime; 2], Sidecars) {
    static RUNTIMES: OnceLock<([ExternalRuntime; 2], Sidecars)> = OnceLock::new();
    RUNTIMES.get_or_init(|| {
        let runtime = |toml: &str| {
            let loaded = parse_str("fuzz.toml", toml);
            assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
            let config = loaded.config.external[0].clone();
            ExternalRuntime {
                id: ConnectorId {
                    kind: ConnectorKind::External,
                    name: config.common.name.clone(),
                },
                shared_token: Some(Verifier::single(Secret::new("fuzz-shared".into()))),
                config,
            }
        };
        let sidecars = Sidecars::default();
        sidecars.set(
            "child",
            SidecarStatus {
                instance_id: Some("fuzz-1".into()),
                health: "ready".into(),
                restarts: 0,
            },
        );
        (
            [
                runtime(
                    "[[external_connectors]]\nname = \"side\"\nplatform = \"discord\"\n\
                     base_url = \"https://sidecar.example.com\"\nshared_token_env = \"T\"\n",
                ),
                runtime(
                    "[[external_connectors]]\nname = \"child\"\nplatform = \"discord\"\n\
                     mode = \"child_process\"\nbase_url = \"http://127.0.0.1:8787\"\n\
                     shared_token_env = \"T\"\n[external_connectors.child_process]\ncommand = \"x\"\n",
                ),
            ],
            sidecars,
        )
    })
}

/// External sidecar ingress (§10.2) on arbitrary bytes, as one event and as a batch, for both
/// modes. Whatever the body: a typed refusal of the envelope, or one answer per event (at most
/// 64); an accepted event has a non-blank, trimmed id; a rejection has a reason.
pub fn external_events(data: &[u8]) {
    let (runtimes, sidecars) = external_runtimes();
    for rt in runtimes {
        for batch in [false, true] {
            let Ok(results) =
                crate::ingress::external::check_request(rt, batch, data, sidecars, NOW_MS)
            else {
                continue;
            };
            assert!(results.len() <= crate::ingress::external::MAX_BATCH_EVENTS);
            assert!(batch || results.len() == 1);
            for result in results {
                match result {
                    Ok(id) => assert!(!id.is_empty() && id.trim() == id, "{id:?}"),
                    Err(reason) => assert!(!reason.is_empty()),
                }
            }
        }
    }
}

/// The ingress payload rules (§6.7, §7.1) on arbitrary bytes, for both connectors. Whatever
/// the body, the answer is an acceptance or a typed refusal; a body that is not a JSON object
/// is never accepted.
pub fn ingress_payload(data: &[u8]) {
    for rt in runtimes() {
        let result = check_payload(rt, data, NOW_MS);
        if result.is_ok() {
            let value: serde_json::Value =
                serde_json::from_slice(data).expect("an accepted payload is JSON");
            assert!(value.is_object(), "an accepted payload is a JSON object");
            // What ingress stores for it must be computable too.
            let _ = crate::ingress::fingerprint::fingerprint(&value);
        }
    }
}

/// Request authentication (bearer + required HMAC v1) on an arbitrary request. `data` is read
/// as text: the first line is the request target, the following lines up to an empty one are
/// `name: value` headers, the rest is the body. Also signs the body correctly and checks that
/// a request built from the fuzzed parts then verifies, unless its own headers get in the way.
pub fn ingress_auth(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let target = lines.next().unwrap_or("");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rt = &runtimes()[0];
    let refused = authenticate(
        rt,
        &Inbound {
            method: "POST",
            target,
            headers: &headers,
            body: body.as_bytes(),
        },
        NOW_MS,
    );
    if let Err(e) = &refused {
        assert!(
            matches!(e, IngressError::Unauthorized { .. }),
            "authentication refuses with an auth error, not {e:?}"
        );
    }

    // The same body, properly signed and with the right token, verifies.
    let ts = NOW_MS / 1000;
    let signature =
        auth::kheish_v1_signature(HMAC_SECRET.as_bytes(), "POST", TARGET, ts, body.as_bytes());
    let good = [
        (
            "authorization".to_string(),
            "Bearer fuzz-bearer".to_string(),
        ),
        ("x-kheish-timestamp".to_string(), ts.to_string()),
        ("x-kheish-signature".to_string(), signature),
    ];
    authenticate(
        rt,
        &Inbound {
            method: "POST",
            target: TARGET,
            headers: &good,
            body: body.as_bytes(),
        },
        NOW_MS,
    )
    .expect("a correctly signed request verifies");
}

/// The connector-file walker on arbitrary text: it reports problems, it does not panic, and
/// every diagnostic it reports points into the file (line 0 means "the whole file").
pub fn config_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let loaded = parse_str("fuzz.toml", &text);
    let lines = u32::try_from(text.lines().count()).unwrap_or(u32::MAX);
    for d in &loaded.diagnostics {
        assert!(
            d.line <= lines.saturating_add(1),
            "diagnostic past the end of the file: {d:?}"
        );
        assert!(!d.message.is_empty(), "diagnostic without a message: {d:?}");
    }
}

/// Reply-target addresses (as stored from payloads and the control plane) for every plugin,
/// and Retry-After values (as received from targets), on arbitrary text.
pub fn reply_target(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for plugin in [
        ReplyPlugin::Http,
        ReplyPlugin::Slack,
        ReplyPlugin::Telegram,
        ReplyPlugin::External,
    ] {
        if let Ok((target, _)) = ReplyTarget::new(plugin, &text) {
            // What validated when stored validates again when delivered.
            target
                .parsed()
                .expect("a stored target parses again at delivery");
        }
    }
    // Parsed values are capped later, by the retry policy; here only "no panic" must hold.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_710_000_000);
    let _ = crate::net::parse_retry_after(&text, now);
}

/// A sidecar's answers (SPEC §10.1) on arbitrary bytes: the body of a `/deliver` answer under
/// every class of status, and of a manifest and a health answer. A delivery counts as
/// committed only with a 2xx status and a body saying `committed`; every failure has a stable
/// code and a reason naming the (redacted) target; a parsed manifest or health answer has a
/// non-blank instance id.
pub fn sidecar_answers(data: &[u8]) {
    use crate::net::sidecar_api::{deliver_reply, parse_health, parse_manifest, DeliverReply};
    let says_committed = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .is_some_and(|v| v.get("status").and_then(|s| s.as_str()) == Some("committed"));
    for status in [200u16, 202, 204, 301, 400, 404, 409, 429, 500, 503, 599] {
        for body in [Some(data), None] {
            match deliver_reply(status, None, body, "http://sidecar:1") {
                DeliverReply::Committed { status: s } => {
                    assert!((200..300).contains(&s) && body.is_some() && says_committed);
                }
                DeliverReply::Retryable { code, reason, .. }
                | DeliverReply::Terminal { code, reason, .. } => {
                    assert!(!code.is_empty() && reason.contains("http://sidecar:1"));
                    assert!(
                        !reason.contains('\n'),
                        "a reason stays one line: {reason:?}"
                    );
                }
            }
        }
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(m) = parse_manifest(&value) {
            assert!(!m.instance_id.trim().is_empty());
        }
        if let Ok(h) = parse_health(&value) {
            assert!(!h.instance_id.trim().is_empty());
        }
    }
}

/// Runtime-store PUT documents (SPEC §12) on arbitrary bytes, for every kind, on a new and on
/// an existing connector: the upsert refuses with a pointer or yields a document; a document
/// never holds a secret field's value inline (values go to slots); every diagnostic of its validation points
/// at a member that exists in the document (or at the document itself).
pub fn runtime_document(data: &[u8]) {
    use crate::config::runtime::upsert;
    use crate::config::validate::parse_connector_json;
    let Ok(patch) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let existing = serde_json::json!({"name": "fuzz", "platform": "p", "base_url": "https://s.example.com",
        "allow_unauthenticated_ingress": true});
    for kind in ConnectorKind::ALL {
        for base in [None, Some(&existing)] {
            let Ok(up) = upsert(kind, "fuzz", base, &patch) else {
                continue;
            };
            // Secret fields are refs or env names in a document, never inline values.
            for field in crate::config::runtime::secret_fields(kind) {
                assert!(
                    up.document.get(*field).is_none(),
                    "an inline `{field}` reached the stored document"
                );
            }
            for secret in &up.secrets {
                assert!(!secret.value.expose().is_empty() && !secret.secret_ref.is_empty());
            }
            let loaded = parse_connector_json(
                "daemon:fuzz",
                kind,
                &up.document,
                &crate::config::Config::default(),
            );
            for d in &loaded.diagnostics {
                let Some(pointer) = &d.pointer else { continue };
                // The member itself, or (for a missing member) its parent, is in the document.
                let parent = pointer.rsplit_once('/').map_or("", |(p, _)| p);
                assert!(
                    up.document.pointer(pointer).is_some() || up.document.pointer(parent).is_some(),
                    "diagnostic points outside the document: {d:?}"
                );
            }
        }
    }
}

/// The Slack signing secret of the fuzzed connectors (a test value).
const SLACK_SECRET: &str = "fuzz-slack-signing";

/// A Slack connector with allowlists (so the 403 paths are reachable) and an open one.
fn slack_runtimes() -> &'static [SlackRuntime; 2] {
    static RUNTIMES: OnceLock<[SlackRuntime; 2]> = OnceLock::new();
    RUNTIMES.get_or_init(|| {
        let runtime = |toml: &str, signed: bool| {
            let loaded = parse_str("fuzz.toml", toml);
            assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
            let config = loaded.config.slack[0].clone();
            SlackRuntime {
                id: ConnectorId {
                    kind: ConnectorKind::Slack,
                    name: config.common.name.clone(),
                },
                signing_secret: signed.then(|| Verifier::single(Secret::new(SLACK_SECRET.into()))),
                bot_token: Some(Verifier::single(Secret::new("xoxb-fuzz".into()))),
                team_bot_tokens: Default::default(),
                config,
            }
        };
        [
            runtime(
                "[[slack_connectors]]\nname = \"grid\"\nsigning_secret_env = \"S\"\nbot_token_env = \"B\"\n\
                 allowed_team_ids = [\"T1\"]\nallowed_channel_ids = [\"C1\"]\nallowed_enterprise_ids = [\"E1\"]\n\
                 [slack_connectors.session_policy]\ncreate_if_missing = true\n",
                true,
            ),
            runtime(
                "[[slack_connectors]]\nname = \"open\"\nallow_unauthenticated_ingress = true\n\
                 include_self_output = false\n",
                false,
            ),
        ]
    })
}

/// Slack Events API requests on arbitrary bytes: the envelope as the body, once unsigned and
/// once signed correctly (so the parser behind the signature is reached). An unsigned request
/// to the signed connector is refused as unauthorized; a correctly signed one is never; a
/// message event carries a receipt of this connector and a 64-hex fingerprint; a protocol
/// answer is a JSON object.
pub fn slack_events(data: &[u8]) {
    use crate::ingress::slack::{parse_request, Parsed};
    let ts = NOW_MS / 1000;
    let signature = auth::slack_v0_signature(SLACK_SECRET.as_bytes(), ts, data);
    let signed = [
        (auth::SLACK_TIMESTAMP_HEADER.to_string(), ts.to_string()),
        (auth::SLACK_SIGNATURE_HEADER.to_string(), signature),
    ];
    for rt in slack_runtimes() {
        for headers in [&[][..], &signed[..]] {
            let req = Inbound {
                method: "POST",
                target: "/v1/connectors/slack/x",
                headers,
                body: data,
            };
            match parse_request(rt, &req, NOW_MS) {
                Ok(Parsed::Answer(body)) => assert!(body.is_object(), "{body}"),
                Ok(Parsed::Message(m)) => {
                    let receipt = m.event.receipt.as_ref().expect("a message has a receipt");
                    assert!(receipt.key.starts_with(&format!("slack:{}:", rt.id.name)));
                    assert_eq!(m.event.fingerprint.len(), 64);
                }
                Err(e) => {
                    let unsigned_to_signed = headers.is_empty() && rt.signing_secret.is_some();
                    assert_eq!(
                        matches!(e, IngressError::Unauthorized { .. }),
                        unsigned_to_signed,
                        "{e:?}"
                    );
                }
            }
        }
    }
}

/// A Telegram connector with an `allowed_chat_ids` list (the 403 path) and an open one.
fn telegram_runtimes() -> &'static [TelegramRuntime; 2] {
    static RUNTIMES: OnceLock<[TelegramRuntime; 2]> = OnceLock::new();
    RUNTIMES.get_or_init(|| {
        let runtime = |toml: &str| {
            let loaded = parse_str("fuzz.toml", toml);
            assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
            let config = loaded.config.telegram[0].clone();
            TelegramRuntime {
                id: ConnectorId {
                    kind: ConnectorKind::Telegram,
                    name: config.common.name.clone(),
                },
                bot_token: Some(Verifier::single(Secret::new("123:fuzz".into()))),
                secret_token: None,
                config,
            }
        };
        [
            runtime(
                "[[telegram_connectors]]\nname = \"bot\"\nbot_token_env = \"B\"\nsecret_token_env = \"S\"\n\
                 allowed_chat_ids = [42]\n",
            ),
            runtime("[[telegram_connectors]]\nname = \"open\"\nbot_token_env = \"B\"\nallow_unauthenticated_ingress = true\n"),
        ]
    })
}

/// Telegram updates on arbitrary bytes: as a webhook body (one update) and as a `getUpdates`
/// answer (`{"ok":true,"result":[updates…]}`, each element read like a webhook update). Each
/// update is run, skipped with its own `update_id`, or refused with a typed ingress error.
pub fn telegram_updates(data: &[u8]) {
    use crate::ingress::telegram::check_update;
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let mut updates = vec![value.clone()];
    if let Some(result) = value.get("result").and_then(|r| r.as_array()) {
        updates.extend(result.iter().cloned());
    }
    for rt in telegram_runtimes() {
        for update in &updates {
            match check_update(rt, update) {
                Ok((update_id, _)) => {
                    assert_eq!(
                        Some(update_id),
                        update.get("update_id").and_then(|u| u.as_i64())
                    );
                }
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The seed inputs shipped with the fuzz targets.
    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds")
            .join(target);
        let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
            .collect();
        assert!(!out.is_empty(), "no seeds in {}", dir.display());
        out.sort();
        out
    }

    /// Seeds, then byte-level mutations of them from a fixed-seed generator: a few thousand
    /// inputs per target, the same on every run.
    fn exercise(target: &str, run: fn(&[u8])) {
        let seeds = seeds(target);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b68_6569_7368);
        for seed in &seeds {
            run(seed);
        }
        for _ in 0..2_000 {
            let mut input = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..8) {
                let at = rng.random_range(0..=input.len());
                match rng.random_range(0..4) {
                    0 if at < input.len() => input[at] = rng.random(),
                    1 if at < input.len() => {
                        input.remove(at);
                    }
                    2 => input.insert(at, rng.random()),
                    _ => {
                        let from = rng.random_range(0..=input.len());
                        let piece: Vec<u8> = input[from..].iter().take(16).copied().collect();
                        input.splice(at..at, piece);
                    }
                }
            }
            run(&input);
        }
    }

    #[test]
    fn slack_events_hold_on_seeds_and_mutations() {
        exercise("slack_events", slack_events);
    }

    #[test]
    fn telegram_updates_hold_on_seeds_and_mutations() {
        exercise("telegram_updates", telegram_updates);
    }

    #[test]
    fn sidecar_answers_hold_on_seeds_and_mutations() {
        exercise("sidecar_answers", sidecar_answers);
    }

    #[test]
    fn runtime_documents_hold_on_seeds_and_mutations() {
        exercise("runtime_document", runtime_document);
    }

    #[test]
    fn ingress_payload_holds_on_seeds_and_mutations() {
        exercise("ingress_payload", ingress_payload);
    }

    #[test]
    fn external_events_hold_on_seeds_and_mutations() {
        exercise("external_events", external_events);
        // The seeds reach acceptance and rejection.
        let (runtimes, sidecars) = external_runtimes();
        let outcomes: Vec<bool> = seeds("external_events")
            .iter()
            .filter_map(|s| {
                crate::ingress::external::check_request(&runtimes[0], false, s, sidecars, NOW_MS)
                    .ok()
            })
            .flatten()
            .map(|r| r.is_ok())
            .collect();
        assert!(
            outcomes.contains(&true) && outcomes.contains(&false),
            "{outcomes:?}"
        );
    }

    #[test]
    fn ingress_auth_holds_on_seeds_and_mutations() {
        exercise("ingress_auth", ingress_auth);
    }

    #[test]
    fn config_file_holds_on_seeds_and_mutations() {
        exercise("config_file", config_file);
    }

    #[test]
    fn reply_target_holds_on_seeds_and_mutations() {
        exercise("reply_target", reply_target);
    }

    #[test]
    fn the_seeds_reach_acceptance_and_refusal() {
        // A fuzz target that only ever saw refusals would test one branch of each parser.
        let payloads = seeds("ingress_payload");
        let rt = &runtimes()[0];
        let outcomes: Vec<bool> = payloads
            .iter()
            .map(|p| check_payload(rt, p, NOW_MS).is_ok())
            .collect();
        assert!(
            outcomes.contains(&true) && outcomes.contains(&false),
            "{outcomes:?}"
        );
        let targets = seeds("reply_target");
        assert!(targets
            .iter()
            .any(|t| { ReplyTarget::new(ReplyPlugin::Http, &String::from_utf8_lossy(t)).is_ok() }));
        // And the auth check does fail: an unsigned request is refused.
        let unsigned = authenticate(
            rt,
            &Inbound {
                method: "POST",
                target: TARGET,
                headers: &[],
                body: b"{}",
            },
            NOW_MS,
        );
        assert!(matches!(unsigned, Err(IngressError::Unauthorized { .. })));
    }
}
