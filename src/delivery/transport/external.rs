//! The `external` delivery plugin (SPEC §10.1, §10.4–§10.5, §11.2): one `POST {base_url}/deliver`
//! to the sidecar of the external connector the target names, through
//! [`SidecarClient::deliver`], whose reading of the answer maps 1:1 onto an [`AttemptOutcome`].
//!
//! At delivery time the target is parsed again and its connector must exist in the live
//! registry and be external; otherwise the attempt is terminal `invalid_target` (the connector
//! was removed or renamed after the output was queued). Without a registry at all
//! (`drain-deliveries` run without a connector file) the attempt is retryable
//! `connector_config_unavailable`: the delivery is not lost, `serve` (or a drain given the
//! file) sends it later.
//!
//! One [`SidecarClient`] is kept per connector and rebuilt when its base URL, shared token or
//! private-network policy changes (a reload or a rotated token). Each client caches the
//! sidecar's manifest for [`MANIFEST_TTL`] and fetches it again after that; a fetch that fails
//! (or a manifest of another protocol version) makes the attempt retryable
//! `sidecar_manifest_unavailable` and is counted in [`SidecarStats`]. When the manifest says
//! `attachments_out = false`, a delivery that carries artifacts is terminal
//! `attachments_not_supported`; a part that names an asset the state root does not hold is
//! terminal `asset_not_found`.
//!
//! `remote_http` sidecars are called through the public-address guard unless the connector sets
//! `allow_private_network`; `child_process` sidecars are on loopback by rule, so their client
//! allows private addresses. A `child_process` sidecar that is not ready yet is still called:
//! a refused connection is a retryable `connection_failed`, which the retry policy and the
//! per-target circuit breaker already pace.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::ExternalMode;
use crate::delivery::{AttemptOutcome, ProgressSink, Transport};
use crate::model::delivery::{referenced_asset_ids, DeliveryJob};
use crate::model::reply::{ExternalAddress, ReplyPlugin, TargetAddress};
use crate::net::sidecar_api::{DeliverReply, Manifest, SidecarClient, PROTOCOL_VERSION};
use crate::net::OutboundConfig;
use crate::registry::{ExternalRuntime, Registry};

/// How long a fetched manifest is trusted before it is fetched again (SPEC §10.1).
pub const MANIFEST_TTL: Duration = Duration::from_secs(5 * 60);

/// Code of an attempt whose sidecar manifest could not be fetched or is unusable (retryable).
pub const MANIFEST_UNAVAILABLE: &str = "sidecar_manifest_unavailable";
/// Code of a delivery with artifacts to a sidecar whose manifest says `attachments_out=false`.
pub const ATTACHMENTS_NOT_SUPPORTED: &str = "attachments_not_supported";
/// Code of a part naming an asset the state root does not hold (terminal).
pub const ASSET_NOT_FOUND: &str = "asset_not_found";
/// Code of an attempt made without any connector configuration (retryable).
pub const CONFIG_UNAVAILABLE: &str = "connector_config_unavailable";

/// The path of the asset route for one asset of one delivery (SPEC §5.1), as handed to the
/// sidecar in `artifacts[].download_path`.
pub fn download_path(connector: &str, delivery_id: &str, asset_id: &str) -> String {
    format!(
        "/v1/connectors/external/{}/deliveries/{}/assets/{}/raw",
        encode_segment(connector),
        encode_segment(delivery_id),
        encode_segment(asset_id)
    )
}

/// Percent-encodes a path segment (ids and names are URL-safe already; this is a safeguard).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Counters of the external transport, by connector name: attempts by result
/// (`committed|retryable|terminal`) and failed manifest fetches. Only connectors found in the
/// registry are counted, so the labels stay bounded by the configuration. The daemon renders
/// them on `/metrics`.
#[derive(Debug, Default)]
pub struct SidecarStats {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    deliveries: BTreeMap<(String, &'static str), u64>,
    manifest_failures: BTreeMap<String, u64>,
}

impl SidecarStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn delivery(&self, connector: &str, result: &'static str) {
        *self
            .lock()
            .deliveries
            .entry((connector.to_string(), result))
            .or_default() += 1;
    }

    fn manifest_failure(&self, connector: &str) {
        *self
            .lock()
            .manifest_failures
            .entry(connector.to_string())
            .or_default() += 1;
    }

    /// `(connector, result, count)` for every result of every connector seen, zeros included,
    /// sorted by connector.
    pub fn deliveries(&self) -> Vec<(String, &'static str, u64)> {
        let counts = self.lock();
        let mut connectors: Vec<&String> = counts.deliveries.keys().map(|(c, _)| c).collect();
        connectors.dedup();
        let mut out = Vec::new();
        for c in connectors {
            for result in RESULTS {
                let n = counts
                    .deliveries
                    .get(&(c.clone(), result))
                    .copied()
                    .unwrap_or(0);
                out.push((c.clone(), result, n));
            }
        }
        out
    }

    /// `(connector, failed manifest fetches)`, sorted by connector.
    pub fn manifest_failures(&self) -> Vec<(String, u64)> {
        self.lock()
            .manifest_failures
            .iter()
            .map(|(c, n)| (c.clone(), *n))
            .collect()
    }
}

/// The `result` label values of [`SidecarStats::deliveries`].
pub const RESULTS: [&str; 3] = ["committed", "retryable", "terminal"];

/// What a cached client was built from; a change rebuilds it.
#[derive(PartialEq, Eq)]
struct ClientKey {
    base_url: String,
    /// The shared token presented (held in memory only, like the registry's own copy).
    token: Option<String>,
    allow_private_network: bool,
}

/// One sidecar's client and its manifest cache. The manifest mutex is held during a fetch, so
/// concurrent senders wait for one fetch instead of each calling the sidecar.
struct Cached {
    key: ClientKey,
    client: SidecarClient,
    manifest: Mutex<Option<(Manifest, Instant)>>,
}

/// The `external` transport. See the module docs.
pub struct ExternalTransport {
    /// The live connectors; `None` when this process has no connector configuration.
    registry: Option<Arc<Registry>>,
    stats: Arc<SidecarStats>,
    clients: Mutex<HashMap<String, Arc<Cached>>>,
    control: OutboundConfig,
    delivery: OutboundConfig,
    manifest_ttl: Duration,
}

impl ExternalTransport {
    /// The production transport: 3 s manifest calls, 15 s deliveries (SPEC §10.1, §11.5).
    pub fn new(registry: Option<Arc<Registry>>, stats: Arc<SidecarStats>) -> ExternalTransport {
        ExternalTransport {
            registry,
            stats,
            clients: Mutex::new(HashMap::new()),
            control: OutboundConfig::sidecar_control(),
            delivery: OutboundConfig::http_delivery(),
            manifest_ttl: MANIFEST_TTL,
        }
    }

    /// Sends one attempt, counting its result for a configured connector.
    fn attempt(&self, job: &DeliveryJob) -> AttemptOutcome {
        let address = match parse_target(job) {
            Ok(address) => address,
            Err(outcome) => return outcome,
        };
        let Some(registry) = &self.registry else {
            return AttemptOutcome::Retryable {
                code: CONFIG_UNAVAILABLE.into(),
                reason: format!(
                    "external connector `{}` is unknown to this process: it was started without \
                     a connector file (--connectors-config / KHEISH_CONNECTORS_CONFIG); pass the \
                     daemon's file, or let `serve` deliver it",
                    address.connector
                ),
                http_status: None,
                retry_after: None,
            };
        };
        let set = registry.current();
        let Some(runtime) = set.external.get(&address.connector) else {
            return invalid_target(format!(
                "it names external connector `{}`, which is not configured (removed or renamed \
                 since the output was queued)",
                address.connector
            ));
        };
        let outcome = self.send(job, &address, runtime);
        self.stats
            .delivery(&address.connector, result_label(&outcome));
        outcome
    }

    fn send(
        &self,
        job: &DeliveryJob,
        address: &ExternalAddress,
        runtime: &ExternalRuntime,
    ) -> AttemptOutcome {
        let name = address.connector.as_str();
        let delivery_id = job.delivery.delivery_id.as_str();
        let referenced = job.parts.as_deref().map(referenced_asset_ids);
        if let Some(missing) = referenced
            .iter()
            .flatten()
            .find(|id| !job.assets.iter().any(|a| &a.asset_id == *id))
        {
            return AttemptOutcome::Terminal {
                code: ASSET_NOT_FOUND.into(),
                reason: format!(
                    "the output references asset `{missing}`, which the state root does not hold"
                ),
                http_status: None,
            };
        }
        let cached = match self.client(name, runtime) {
            Ok(cached) => cached,
            Err(outcome) => return outcome,
        };
        let manifest = match self.manifest(name, &cached) {
            Ok(manifest) => manifest,
            Err(outcome) => return outcome,
        };
        if !job.assets.is_empty() && !manifest.capabilities.attachments_out {
            return AttemptOutcome::Terminal {
                code: ATTACHMENTS_NOT_SUPPORTED.into(),
                reason: format!(
                    "the output carries {} artifact(s) but the sidecar of `{name}` says \
                     `attachments_out = false` in its manifest",
                    job.assets.len()
                ),
                http_status: None,
            };
        }
        let body = deliver_body(job, address);
        match cached.client.deliver(delivery_id, &body) {
            DeliverReply::Committed { status } => AttemptOutcome::Delivered {
                http_status: Some(status),
            },
            DeliverReply::Retryable {
                status,
                code,
                reason,
                retry_after,
            } => AttemptOutcome::Retryable {
                code,
                reason,
                http_status: status,
                retry_after,
            },
            DeliverReply::Terminal {
                status,
                code,
                reason,
            } => AttemptOutcome::Terminal {
                code,
                reason,
                http_status: status,
            },
        }
    }

    /// The cached client of connector `name`, rebuilt when what it was built from changed.
    fn client(&self, name: &str, runtime: &ExternalRuntime) -> Result<Arc<Cached>, AttemptOutcome> {
        let config = &runtime.config;
        let key = ClientKey {
            base_url: config.base_url.clone(),
            token: runtime
                .shared_token
                .as_ref()
                .map(|t| t.current().expose().to_string()),
            // child_process sidecars are loopback by rule (SPEC §2.4).
            allow_private_network: config.allow_private_network
                || config.mode == ExternalMode::ChildProcess,
        };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cached) = clients.get(name).filter(|c| c.key == key) {
            return Ok(Arc::clone(cached));
        }
        let client = SidecarClient::with_configs(
            &key.base_url,
            key.token.clone(),
            OutboundConfig {
                allow_private_network: key.allow_private_network,
                ..self.control
            },
            OutboundConfig {
                allow_private_network: key.allow_private_network,
                ..self.delivery
            },
        )
        .map_err(|e| AttemptOutcome::Terminal {
            code: "invalid_target".into(),
            reason: format!("external connector `{name}`: {e}"),
            http_status: None,
        })?;
        let cached = Arc::new(Cached {
            key,
            client,
            manifest: Mutex::new(None),
        });
        clients.insert(name.to_string(), Arc::clone(&cached));
        Ok(cached)
    }

    /// The sidecar's manifest: the cached one while it is fresh, else fetched again.
    fn manifest(&self, name: &str, cached: &Cached) -> Result<Manifest, AttemptOutcome> {
        let mut slot = cached.manifest.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((manifest, at)) = slot.as_ref() {
            if at.elapsed() < self.manifest_ttl {
                return Ok(manifest.clone());
            }
        }
        // Not trusted indefinitely: a stale manifest is dropped, and a failed revalidation
        // fails the attempt (retryable) instead of delivering on old capabilities.
        *slot = None;
        let unavailable = |why: String| {
            self.stats.manifest_failure(name);
            AttemptOutcome::Retryable {
                code: MANIFEST_UNAVAILABLE.into(),
                reason: format!("the manifest of external connector `{name}`: {why}"),
                http_status: None,
                retry_after: None,
            }
        };
        let manifest = cached
            .client
            .manifest()
            .map_err(|e| unavailable(e.to_string()))?;
        if manifest.protocol_version != PROTOCOL_VERSION {
            return Err(unavailable(format!(
                "`{}` speaks runtime protocol_version {}; this daemon speaks {PROTOCOL_VERSION}",
                cached.client.target(),
                manifest.protocol_version
            )));
        }
        *slot = Some((manifest.clone(), Instant::now()));
        Ok(manifest)
    }
}

impl Transport for ExternalTransport {
    fn deliver(&self, job: &DeliveryJob, _progress: &mut dyn ProgressSink) -> AttemptOutcome {
        self.attempt(job)
    }
}

/// `committed`, `retryable` or `terminal`: the result label of one attempt.
fn result_label(outcome: &AttemptOutcome) -> &'static str {
    match outcome {
        AttemptOutcome::Delivered { .. } => "committed",
        AttemptOutcome::Retryable { .. } => "retryable",
        AttemptOutcome::Terminal { .. } => "terminal",
    }
}

fn invalid_target(problem: String) -> AttemptOutcome {
    AttemptOutcome::Terminal {
        code: "invalid_target".into(),
        reason: format!("the external reply target is invalid: {problem}"),
        http_status: None,
    }
}

/// Re-validates the stored target (SPEC §11.2: targets are validated again when delivered).
fn parse_target(job: &DeliveryJob) -> Result<ExternalAddress, AttemptOutcome> {
    let target = &job.delivery.target;
    if target.plugin != ReplyPlugin::External {
        return Err(invalid_target(format!(
            "it names plugin `{}`, not `external`",
            target.plugin.as_str()
        )));
    }
    match TargetAddress::parse(ReplyPlugin::External, &target.address) {
        Ok(TargetAddress::External(address)) => Ok(address),
        Ok(_) => Err(invalid_target("it is not an external address".into())),
        Err(problem) => Err(invalid_target(problem)),
    }
}

/// The `/deliver` document of SPEC §10.1. `reply_route` is the target's `route`, unchanged;
/// `thread_id` is null (the sidecar keeps its thread in the route it chose); `artifacts` are
/// the descriptors of the assets the parts reference, each with the asset route's path.
pub fn deliver_body(job: &DeliveryJob, address: &ExternalAddress) -> Value {
    let d = &job.delivery;
    let artifacts: Vec<Value> = job
        .assets
        .iter()
        .map(|a| {
            json!({
                "asset_id": a.asset_id,
                "media_type": a.media_type,
                "file_name": a.file_name,
                "size": a.size,
                "sha256": a.sha256,
                "download_path": download_path(&address.connector, &d.delivery_id, &a.asset_id),
            })
        })
        .collect();
    json!({
        "protocol_version": PROTOCOL_VERSION,
        "delivery_id": d.delivery_id,
        "attempt": job.attempt,
        "reply_route": address.route,
        "conversation": {
            "session_id": d.session_id,
            "thread_id": Value::Null,
        },
        "content": job.content,
        "parts": job.parts.clone().unwrap_or_default(),
        "artifacts": artifacts,
        "metadata": {
            "run_id": d.run_id,
            "output_id": d.output_id,
            "source_connector": d.connector,
            "replayed_from_delivery_id": d.replayed_from_delivery_id,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::thread::JoinHandle;

    use super::*;
    use crate::model::delivery::{AssetInfo, Delivery, DeliveryStatus};
    use crate::model::reply::ReplyTarget;
    use crate::registry::{self, ConnectorSet};

    struct NoProgress;

    impl ProgressSink for NoProgress {
        fn save(&mut self, _: &Value) -> Result<(), String> {
            Ok(())
        }
    }

    /// A sidecar on 127.0.0.1:0: `/manifest` answers with `attachments_out`, `/deliver`
    /// commits; every request's path and `Authorization` are sent on `seen`.
    struct Sidecar {
        url: String,
        server: Arc<tiny_http::Server>,
        seen: mpsc::Receiver<(String, Option<String>)>,
        thread: Option<JoinHandle<()>>,
    }

    impl Sidecar {
        fn start(attachments_out: bool) -> Sidecar {
            let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
            let url = format!("http://{}", server.server_addr().to_ip().unwrap());
            let (tx, seen) = mpsc::channel();
            let thread = {
                let server = Arc::clone(&server);
                std::thread::spawn(move || {
                    while let Ok(mut request) = server.recv() {
                        let mut body = String::new();
                        let _ = request.as_reader().read_to_string(&mut body);
                        let auth = request
                            .headers()
                            .iter()
                            .find(|h| h.field.equiv("authorization"))
                            .map(|h| h.value.to_string());
                        let _ = tx.send((request.url().to_string(), auth));
                        let answer = if request.url() == "/manifest" {
                            json!({
                                "protocol_version": 1,
                                "instance_id": "i-1",
                                "capabilities": {"attachments_out": attachments_out},
                            })
                        } else {
                            json!({"status": "committed"})
                        };
                        let _ =
                            request.respond(tiny_http::Response::from_string(answer.to_string()));
                    }
                })
            };
            Sidecar {
                url,
                server,
                seen,
                thread: Some(thread),
            }
        }

        fn paths(&self) -> Vec<(String, Option<String>)> {
            self.seen.try_iter().collect()
        }
    }

    impl Drop for Sidecar {
        fn drop(&mut self) {
            self.server.unblock();
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// The connector set of one external connector `sc` at `base_url` with token `token`.
    fn set(base_url: &str, token: &str) -> ConnectorSet {
        let toml = format!(
            "[[external_connectors]]\nname = \"sc\"\nplatform = \"t\"\nbase_url = \"{base_url}\"\n\
             allow_private_network = true\nshared_token_env = \"SC\"\n"
        );
        let loaded = crate::config::validate::parse_str("t.toml", &toml);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let dir = tempfile::tempdir().unwrap();
        let token = token.to_string();
        registry::build(
            loaded.config,
            "t.toml",
            dir.path(),
            &|_| Some(token.clone()),
            0,
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn transport(registry: Option<Arc<Registry>>) -> (ExternalTransport, Arc<SidecarStats>) {
        let stats = Arc::new(SidecarStats::default());
        let mut t = ExternalTransport::new(registry, Arc::clone(&stats));
        t.control.total_timeout = Duration::from_secs(5);
        t.delivery.total_timeout = Duration::from_secs(5);
        (t, stats)
    }

    fn job(connector: &str, route: Value, assets: Vec<AssetInfo>) -> DeliveryJob {
        let parts: Vec<Value> = assets
            .iter()
            .map(|a| json!({"type": "asset_reference", "asset_id": a.asset_id}))
            .collect();
        DeliveryJob {
            delivery: Delivery::sample(
                "dlv_1",
                ReplyTarget {
                    plugin: ReplyPlugin::External,
                    address: json!({"connector": connector, "route": route}).to_string(),
                },
                DeliveryStatus::Pending,
            ),
            attempt: 2,
            content: Some("hi".into()),
            parts: (!parts.is_empty()).then_some(parts),
            assets,
        }
    }

    fn asset(id: &str) -> AssetInfo {
        AssetInfo {
            asset_id: id.into(),
            media_type: "image/png".into(),
            file_name: Some("a b.png".into()),
            size: 3,
            sha256: "00".into(),
        }
    }

    fn code(outcome: &AttemptOutcome) -> Option<&str> {
        outcome.code()
    }

    #[test]
    fn the_body_is_the_spec_document_with_the_route_unchanged() {
        let j = job("sc", json!("{}"), vec![asset("asset_1")]);
        let address = parse_target(&j).unwrap();
        let body = deliver_body(&j, &address);
        assert_eq!(body["protocol_version"], 1);
        assert_eq!(body["delivery_id"], "dlv_1");
        assert_eq!(body["attempt"], 2);
        assert_eq!(body["reply_route"], json!("{}"));
        assert_eq!(
            body["conversation"],
            json!({"session_id": "sess", "thread_id": null})
        );
        assert_eq!(body["content"], "hi");
        assert_eq!(body["parts"][0]["asset_id"], "asset_1");
        assert_eq!(
            body["artifacts"],
            json!([{
                "asset_id": "asset_1",
                "media_type": "image/png",
                "file_name": "a b.png",
                "size": 3,
                "sha256": "00",
                "download_path": "/v1/connectors/external/sc/deliveries/dlv_1/assets/asset_1/raw",
            }])
        );
        assert_eq!(
            body["metadata"],
            json!({"run_id": "run_1", "output_id": "out_1", "source_connector": "http/orders",
                   "replayed_from_delivery_id": null})
        );
        let plain = job("sc", json!({"a": [1]}), Vec::new());
        let body = deliver_body(&plain, &parse_target(&plain).unwrap());
        assert_eq!(body["reply_route"], json!({"a": [1]}));
        assert_eq!(body["parts"], json!([]));
        assert_eq!(body["artifacts"], json!([]));
        assert_eq!(
            download_path("a/b", "d", "x y"),
            "/v1/connectors/external/a%2Fb/deliveries/d/assets/x%20y/raw"
        );
    }

    #[test]
    fn unknown_connectors_and_missing_configuration() {
        let sidecar = Sidecar::start(true);
        let registry = Arc::new(Registry::new(set(&sidecar.url, "tok")));
        let (t, stats) = transport(Some(registry));
        let out = t.deliver(&job("nope", json!("{}"), Vec::new()), &mut NoProgress);
        assert!(matches!(out, AttemptOutcome::Terminal { .. }), "{out:?}");
        assert_eq!(code(&out), Some("invalid_target"));
        assert!(
            stats.deliveries().is_empty(),
            "unknown names are not labels"
        );
        let (t, _) = transport(None);
        let out = t.deliver(&job("sc", json!("{}"), Vec::new()), &mut NoProgress);
        assert!(matches!(out, AttemptOutcome::Retryable { .. }), "{out:?}");
        assert_eq!(code(&out), Some(CONFIG_UNAVAILABLE));
        assert!(sidecar.paths().is_empty());
    }

    #[test]
    fn the_manifest_is_cached_and_the_client_follows_a_rotated_token() {
        let sidecar = Sidecar::start(true);
        let registry = Arc::new(Registry::new(set(&sidecar.url, "tok-1")));
        let (t, stats) = transport(Some(Arc::clone(&registry)));
        for _ in 0..3 {
            let out = t.deliver(&job("sc", json!("{}"), Vec::new()), &mut NoProgress);
            assert_eq!(
                out,
                AttemptOutcome::Delivered {
                    http_status: Some(200)
                }
            );
        }
        let seen = sidecar.paths();
        let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["/manifest", "/deliver", "/deliver", "/deliver"]);
        assert!(seen
            .iter()
            .all(|(_, a)| a.as_deref() == Some("Bearer tok-1")));
        assert_eq!(
            stats.deliveries(),
            [
                ("sc".to_string(), "committed", 3),
                ("sc".to_string(), "retryable", 0),
                ("sc".to_string(), "terminal", 0)
            ]
        );
        // A rotated token: a new client, a new manifest fetch, the new bearer.
        registry.swap(set(&sidecar.url, "tok-2"));
        t.deliver(&job("sc", json!("{}"), Vec::new()), &mut NoProgress);
        let seen = sidecar.paths();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen
            .iter()
            .all(|(_, a)| a.as_deref() == Some("Bearer tok-2")));
        // An expired manifest is fetched again.
        let (mut t, _) = transport(Some(registry));
        t.manifest_ttl = Duration::ZERO;
        t.deliver(&job("sc", json!("{}"), Vec::new()), &mut NoProgress);
        t.deliver(&job("sc", json!("{}"), Vec::new()), &mut NoProgress);
        let manifests = sidecar
            .paths()
            .iter()
            .filter(|(p, _)| p == "/manifest")
            .count();
        assert_eq!(manifests, 2);
    }

    #[test]
    fn artifacts_need_attachments_out_and_stored_assets() {
        let sidecar = Sidecar::start(false);
        let registry = Arc::new(Registry::new(set(&sidecar.url, "tok")));
        let (t, stats) = transport(Some(registry));
        let out = t.deliver(&job("sc", json!("{}"), vec![asset("a1")]), &mut NoProgress);
        assert_eq!(code(&out), Some(ATTACHMENTS_NOT_SUPPORTED));
        assert!(matches!(out, AttemptOutcome::Terminal { .. }));
        let mut missing = job("sc", json!("{}"), vec![asset("a1")]);
        missing.assets.clear();
        let out = t.deliver(&missing, &mut NoProgress);
        assert_eq!(code(&out), Some(ASSET_NOT_FOUND));
        let paths: Vec<String> = sidecar.paths().into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["/manifest"], "nothing was delivered");
        assert_eq!(stats.deliveries()[2], ("sc".to_string(), "terminal", 2));
    }

    #[test]
    fn failed_manifest_fetches_are_retryable_and_counted() {
        // Nothing listens on the port of a dropped sidecar.
        let url = Sidecar::start(true).url.clone();
        let registry = Arc::new(Registry::new(set(&url, "tok")));
        let (t, stats) = transport(Some(registry));
        let out = t.deliver(&job("sc", json!("{}"), Vec::new()), &mut NoProgress);
        assert_eq!(code(&out), Some(MANIFEST_UNAVAILABLE));
        assert!(matches!(out, AttemptOutcome::Retryable { .. }));
        assert_eq!(stats.manifest_failures(), [("sc".to_string(), 1)]);
    }
}
