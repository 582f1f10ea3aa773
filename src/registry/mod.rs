//! The connector registry: the live connector set of a daemon, the validated config plus every
//! secret resolved into verifiers, built once at start and again on reload (SIGHUP, or a
//! rotated secret-store slot), and swapped atomically so a request sees one whole set.
//! Building fails closed: any secret that cannot be resolved makes the whole build fail with
//! diagnostics and the old set stays in force.
//!
//! Ingress, delivery transports and the control plane read the set through [`Registry`];
//! nothing here does I/O beyond resolving secrets at build time.

pub mod runtime;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::config::{
    self, Config, ExternalConnector, HttpConnector, SecretField, SlackConnector, TelegramConnector,
};
use crate::model::{ConnectorId, ConnectorKind, Diagnostic};
use crate::secrets::{self, Secret, SecretError, SecretSource, SecretStore};

/// Values that may verify an inbound credential: the current one, and a previous one until its
/// rotation grace window ends.
#[derive(Debug, Clone)]
pub struct Verifier {
    values: Vec<(Secret, Option<i64>)>,
}

impl Verifier {
    /// The values valid at `now_ms`.
    pub fn candidates(&self, now_ms: i64) -> Vec<&[u8]> {
        self.values
            .iter()
            .filter(|(_, until)| until.is_none_or(|u| now_ms < u))
            .map(|(s, _)| s.expose().as_bytes())
            .collect()
    }

    /// The current value: the one the daemon presents when it calls out (a sidecar's
    /// `Authorization`, a child's `KHEISH_EXTERNAL_CONNECTOR_SHARED_TOKEN`).
    pub fn current(&self) -> &Secret {
        &self.values[0].0
    }

    /// A verifier holding one value (tests, env and inline sources).
    pub fn single(secret: Secret) -> Verifier {
        Verifier {
            values: vec![(secret, None)],
        }
    }
}

/// An HTTP connector ready to serve.
#[derive(Debug)]
pub struct HttpRuntime {
    pub id: ConnectorId,
    pub config: HttpConnector,
    pub bearer: Option<Verifier>,
    pub hmac: Option<Verifier>,
}

impl HttpRuntime {
    /// True when requests are authenticated (bearer, or required HMAC with a secret).
    pub fn authenticated(&self) -> bool {
        self.bearer.is_some() || (self.config.require_hmac_signature && self.hmac.is_some())
    }
}

/// An external connector ready to serve (SPEC §10).
#[derive(Debug)]
pub struct ExternalRuntime {
    pub id: ConnectorId,
    pub config: ExternalConnector,
    /// The shared token: verifies the sidecar's ingress bearer (with its grace value) and is
    /// presented on manifest, health and deliver calls ([`Verifier::current`]).
    pub shared_token: Option<Verifier>,
}

/// A Slack connector ready to serve (SPEC §8).
#[derive(Debug)]
pub struct SlackRuntime {
    pub id: ConnectorId,
    pub config: SlackConnector,
    /// Verifies `X-Slack-Signature` (with a rotated secret's grace value).
    pub signing_secret: Option<Verifier>,
    /// The default bot token ([`Verifier::current`] is presented to the Web API).
    pub bot_token: Option<Verifier>,
    /// `team_bot_tokens` by team id.
    pub team_bot_tokens: HashMap<String, Verifier>,
}

impl SlackRuntime {
    /// The bot token for `team`: its `team_bot_tokens` entry, else `bot_token` (SPEC §8).
    pub fn token_for(&self, team: Option<&str>) -> Option<&Secret> {
        team.and_then(|t| self.team_bot_tokens.get(t))
            .or(self.bot_token.as_ref())
            .map(Verifier::current)
    }

    /// Checks a `slack` address against the connector's allowlists (channel, team,
    /// enterprise): a value the address carries must be in a non-empty list, as the connector
    /// file's own check of reply targets has it (`config::validate::refs`). The message names
    /// the member and the list, never a secret.
    pub fn check_address(&self, address: &crate::model::reply::SlackAddress) -> Result<(), String> {
        let c = &self.config;
        let name = &self.id.name;
        let checks = [
            (
                "channel_id",
                Some(&address.channel_id),
                &c.allowed_channel_ids,
                "allowed_channel_ids",
            ),
            (
                "team_id",
                address.team_id.as_ref(),
                &c.allowed_team_ids,
                "allowed_team_ids",
            ),
            (
                "enterprise_id",
                address.enterprise_id.as_ref(),
                &c.allowed_enterprise_ids,
                "allowed_enterprise_ids",
            ),
        ];
        for (member, value, allowed, list) in checks {
            if let Some(v) = value {
                if !allowed.is_empty() && !allowed.contains(v) {
                    return Err(format!(
                        "`{member}`: `{v}` is not in slack connector `{name}`'s {list}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A Telegram connector ready to serve (SPEC §9).
#[derive(Debug)]
pub struct TelegramRuntime {
    pub id: ConnectorId,
    pub config: TelegramConnector,
    /// The bot token: presented on every Bot API call ([`Verifier::current`]).
    pub bot_token: Option<Verifier>,
    /// Verifies `X-Telegram-Bot-Api-Secret-Token` on the webhook (with its grace value).
    pub secret_token: Option<Verifier>,
}

impl TelegramRuntime {
    /// True when `chat_id` may be served: `allowed_chat_ids` is empty or lists it.
    pub fn chat_allowed(&self, chat_id: i64) -> bool {
        self.config.allowed_chat_ids.is_empty() || self.config.allowed_chat_ids.contains(&chat_id)
    }
}

/// Every connector of the running daemon: one immutable snapshot.
#[derive(Debug, Default)]
pub struct ConnectorSet {
    pub config: Config,
    pub http: HashMap<String, Arc<HttpRuntime>>,
    pub external: HashMap<String, Arc<ExternalRuntime>>,
    pub slack: HashMap<String, Arc<SlackRuntime>>,
    pub telegram: HashMap<String, Arc<TelegramRuntime>>,
    /// `(secret_ref, updated_at_ms, previous_valid_until_ms)` of every store slot seen at build
    /// time; the watcher rebuilds when the store's list differs.
    pub slot_versions: Vec<(String, i64, Option<i64>)>,
    /// The two sources the set was merged from (SPEC §12).
    pub sources: Sources,
}

/// The file-backed and daemon-managed parts of a connector set.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// The connector file's connectors (validated).
    pub file: Config,
    /// The same, as JSON documents for the runtime views.
    pub file_documents: Vec<crate::config::runtime::Document>,
    /// The runtime store's version the set was built from; the watcher rebuilds on change.
    pub runtime_version: i64,
    /// Diagnostics of daemon-managed connectors left out of the set.
    pub left_out: Vec<Diagnostic>,
}

/// Why the connectors could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// Secrets that are missing or empty (exit 4 for `serve`, printed like `validate`).
    Diagnostics(Vec<Diagnostic>),
    /// The state root or the secret store itself failed.
    Secrets(SecretError),
}

/// Resolves every secret of `config`. `file` names the config in diagnostics.
pub fn build(
    config: Config,
    file: &str,
    state_root: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    now_ms: i64,
) -> Result<ConnectorSet, BuildError> {
    let store = SecretStore::open_existing(state_root).map_err(BuildError::Secrets)?;
    let problems = config::check_secret_sources(&config, file, |source| {
        match secrets::resolve(source, store.as_ref(), env) {
            Ok(_) => Ok(None),
            Err(e) => config::secret_problem(e, state_root),
        }
    })
    .map_err(BuildError::Secrets)?;
    if !problems.is_empty() {
        return Err(BuildError::Diagnostics(problems));
    }
    let slots = match &store {
        Some(s) => s.list().map_err(BuildError::Secrets)?,
        None => Vec::new(),
    };
    let verifier = |field: &Option<SecretField>| -> Result<Option<Verifier>, SecretError> {
        let Some(field) = field else { return Ok(None) };
        let values = match &field.source {
            SecretSource::StoreRef(secret_ref) => {
                let store = store.as_ref().ok_or_else(|| SecretError::NoStateRoot {
                    secret_ref: secret_ref.clone(),
                })?;
                let until = slots
                    .iter()
                    .find(|s| &s.secret_ref == secret_ref)
                    .and_then(|s| s.previous_valid_until_ms);
                store
                    .verification_values(secret_ref, now_ms)?
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (v, if i == 0 { None } else { until }))
                    .collect()
            }
            other => vec![(secrets::resolve(other, None, env)?, None)],
        };
        Ok(Some(Verifier { values }))
    };
    let mut http = HashMap::new();
    for c in &config.http {
        let runtime = HttpRuntime {
            id: ConnectorId {
                kind: ConnectorKind::Http,
                name: c.common.name.clone(),
            },
            config: c.clone(),
            bearer: verifier(&c.bearer_token).map_err(BuildError::Secrets)?,
            hmac: verifier(&c.hmac_secret).map_err(BuildError::Secrets)?,
        };
        http.insert(c.common.name.to_string(), Arc::new(runtime));
    }
    let mut external = HashMap::new();
    for c in &config.external {
        let runtime = ExternalRuntime {
            id: ConnectorId {
                kind: ConnectorKind::External,
                name: c.common.name.clone(),
            },
            config: c.clone(),
            shared_token: verifier(&c.shared_token).map_err(BuildError::Secrets)?,
        };
        external.insert(c.common.name.to_string(), Arc::new(runtime));
    }
    let mut slack = HashMap::new();
    for c in &config.slack {
        let mut team_bot_tokens = HashMap::new();
        for t in &c.team_bot_tokens {
            if let Some(v) = verifier(&Some(t.bot_token.clone())).map_err(BuildError::Secrets)? {
                team_bot_tokens.insert(t.team_id.clone(), v);
            }
        }
        let runtime = SlackRuntime {
            id: ConnectorId {
                kind: ConnectorKind::Slack,
                name: c.common.name.clone(),
            },
            config: c.clone(),
            signing_secret: verifier(&c.signing_secret).map_err(BuildError::Secrets)?,
            bot_token: verifier(&c.bot_token).map_err(BuildError::Secrets)?,
            team_bot_tokens,
        };
        slack.insert(c.common.name.to_string(), Arc::new(runtime));
    }
    let mut telegram = HashMap::new();
    for c in &config.telegram {
        let runtime = TelegramRuntime {
            id: ConnectorId {
                kind: ConnectorKind::Telegram,
                name: c.common.name.clone(),
            },
            config: c.clone(),
            bot_token: verifier(&c.bot_token).map_err(BuildError::Secrets)?,
            secret_token: verifier(&c.secret_token).map_err(BuildError::Secrets)?,
        };
        telegram.insert(c.common.name.to_string(), Arc::new(runtime));
    }
    Ok(ConnectorSet {
        config,
        http,
        external,
        slack,
        telegram,
        slot_versions: slot_versions(&slots),
        sources: Sources::default(),
    })
}

/// Builds the set from the file's connectors plus the daemon-managed ones of the state root
/// (SPEC §12): the merge of [`runtime::merged_config`], then [`build`].
pub fn build_all(
    file: Config,
    file_documents: Vec<crate::config::runtime::Document>,
    label: &str,
    state_root: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    now_ms: i64,
) -> Result<ConnectorSet, BuildError> {
    let (records, runtime_version) = match crate::store::Store::open_existing(state_root) {
        Ok(Some(store)) => {
            let version = store
                .runtime_connectors_version()
                .map_err(|e| BuildError::Secrets(e.into()))?;
            let records = store
                .runtime_connectors()
                .map_err(|e| BuildError::Secrets(e.into()))?;
            (records, version)
        }
        Ok(None) => (Vec::new(), 0),
        Err(e) => return Err(BuildError::Secrets(e.into())),
    };
    let (merged, left_out) = runtime::merged_config(&file, &records);
    let mut set = build(merged, label, state_root, env, now_ms)?;
    set.sources = Sources {
        file,
        file_documents,
        runtime_version,
        left_out,
    };
    Ok(set)
}

/// The runtime store's version at `state_root` (0 without one), for change detection.
pub fn current_runtime_version(state_root: &Path) -> Result<i64, crate::store::StoreError> {
    match crate::store::Store::open_existing(state_root)? {
        Some(store) => store.runtime_connectors_version(),
        None => Ok(0),
    }
}

impl ConnectorSet {
    /// Checks a reply target against the connectors in force (SPEC §11.2: targets are
    /// validated when stored and again when delivered): an `external` target must name an
    /// external connector of this set; a `slack` target a Slack connector of this set whose
    /// allowlists admit its channel, team and enterprise; a `telegram` target a Telegram
    /// connector of this set that has a bot token, with a chat its `allowed_chat_ids` allows.
    /// The message names the member, never a secret.
    pub fn check_target(&self, target: &crate::model::reply::ReplyTarget) -> Result<(), String> {
        use crate::model::reply::{ReplyPlugin, TargetAddress};
        if target.plugin == ReplyPlugin::Slack {
            let Ok(TargetAddress::Slack(address)) = target.parsed() else {
                return Err("`address` is not a valid slack address".into());
            };
            let Some(rt) = self.slack.get(&address.connector) else {
                return Err(format!(
                    "`connector`: no slack connector named `{}` is configured",
                    address.connector
                ));
            };
            return rt.check_address(&address);
        }
        if target.plugin == ReplyPlugin::Telegram {
            let Ok(TargetAddress::Telegram(address)) = target.parsed() else {
                return Err("a telegram target needs `connector` and `chat_id`".into());
            };
            let Some(rt) = self.telegram.get(&address.connector) else {
                return Err(format!(
                    "`connector`: no telegram connector named `{}` is configured",
                    address.connector
                ));
            };
            check_telegram_chat(rt, &address.chat_id)?;
            if rt.bot_token.is_none() {
                return Err(format!(
                    "`connector`: telegram connector `{}` has no bot token, so it cannot send",
                    address.connector
                ));
            }
            return Ok(());
        }
        if target.plugin != ReplyPlugin::External {
            return Ok(());
        }
        let connector = serde_json::from_str::<serde_json::Value>(&target.address)
            .ok()
            .and_then(|v| {
                v.get("connector")
                    .and_then(|c| c.as_str())
                    .map(str::to_string)
            })
            .ok_or("an external target needs `connector`")?;
        if self.external.contains_key(&connector) {
            Ok(())
        } else {
            Err(format!(
                "`connector`: no external connector named `{connector}` is configured"
            ))
        }
    }

    /// [`ConnectorSet::check_target`] of each of `targets`; the error names `reply_targets[i]`.
    pub fn check_targets(
        &self,
        targets: &[crate::model::reply::ReplyTarget],
    ) -> Result<(), String> {
        for (idx, t) in targets.iter().enumerate() {
            self.check_target(t)
                .map_err(|why| format!("`reply_targets[{idx}]`: {why}"))?;
        }
        Ok(())
    }

    /// The id of connector `kind`/`name` when this set serves it.
    pub fn id(&self, kind: ConnectorKind, name: &str) -> Option<&ConnectorId> {
        match kind {
            ConnectorKind::Http => self.http.get(name).map(|rt| &rt.id),
            ConnectorKind::External => self.external.get(name).map(|rt| &rt.id),
            ConnectorKind::Slack => self.slack.get(name).map(|rt| &rt.id),
            ConnectorKind::Telegram => self.telegram.get(name).map(|rt| &rt.id),
        }
    }
}

/// `chat_id` against the `allowed_chat_ids` of `rt` (SPEC §2.3: a non-empty list restricts
/// outbound targets too). An `@username` cannot be checked against ids, so it is refused when
/// the list is non-empty.
pub fn check_telegram_chat(
    rt: &TelegramRuntime,
    chat_id: &crate::model::reply::ChatId,
) -> Result<(), String> {
    use crate::model::reply::ChatId;
    let name = &rt.id.name;
    match chat_id {
        ChatId::Id(id) if rt.chat_allowed(*id) => Ok(()),
        ChatId::Id(id) => Err(format!(
            "`chat_id`: chat {id} is not in telegram connector `{name}`'s allowed_chat_ids"
        )),
        ChatId::Username(_) if rt.config.allowed_chat_ids.is_empty() => Ok(()),
        ChatId::Username(user) => Err(format!(
            "`chat_id`: `{user}` cannot be checked against telegram connector `{name}`'s \
             allowed_chat_ids; use the numeric chat id"
        )),
    }
}

/// The swappable handle to the connector set in force. Readers take an `Arc` snapshot, so a
/// request keeps one consistent set even if a reload swaps it meanwhile.
#[derive(Debug)]
pub struct Registry {
    current: RwLock<Arc<ConnectorSet>>,
}

impl Registry {
    pub fn new(set: ConnectorSet) -> Registry {
        Registry {
            current: RwLock::new(Arc::new(set)),
        }
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<ConnectorSet> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the whole set (reload); readers holding the old one finish with it.
    pub fn swap(&self, set: ConnectorSet) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }
}

/// What the daemon knows of one external sidecar right now (SPEC §10.6): written by the
/// supervisor (`daemon::sidecars`) for `child_process` connectors, read by ingress (the
/// `instance_id` check), the external transport and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SidecarStatus {
    /// The running child's `instance_id` from its manifest, once it was ready; `None` while no
    /// child is ready (ingress then refuses events for a `child_process` connector).
    pub instance_id: Option<String>,
    /// Last health seen: `starting|ready|degraded|draining`, or `down` when no child runs.
    pub health: String,
    /// Restarts since the daemon started.
    pub restarts: u64,
}

/// The live sidecar states by connector name. Interior mutability: one writer (the
/// supervisor), many readers.
#[derive(Debug, Default)]
pub struct Sidecars {
    states: RwLock<HashMap<String, SidecarStatus>>,
}

impl Sidecars {
    pub fn get(&self, name: &str) -> Option<SidecarStatus> {
        self.states
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Replaces the state of `name`.
    pub fn set(&self, name: &str, status: SidecarStatus) {
        self.states
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), status);
    }

    /// Changes the state of `name` in place (a default state when there was none).
    pub fn update(&self, name: &str, change: impl FnOnce(&mut SidecarStatus)) {
        let mut states = self.states.write().unwrap_or_else(|p| p.into_inner());
        change(states.entry(name.to_string()).or_default());
    }

    /// Forgets `name` (connector removed).
    pub fn remove(&self, name: &str) {
        self.states
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Every state, sorted by connector name.
    pub fn all(&self) -> Vec<(String, SidecarStatus)> {
        let states = self.states.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = states.iter().map(|(k, s)| (k.clone(), s.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

fn slot_versions(slots: &[secrets::SlotInfo]) -> Vec<(String, i64, Option<i64>)> {
    let mut v: Vec<_> = slots
        .iter()
        .map(|s| {
            (
                s.secret_ref.clone(),
                s.updated_at_ms,
                s.previous_valid_until_ms,
            )
        })
        .collect();
    v.sort();
    v
}

/// The current slot versions of the state root's store (for change detection).
pub fn current_slot_versions(
    state_root: &Path,
) -> Result<Vec<(String, i64, Option<i64>)>, SecretError> {
    match SecretStore::open_existing(state_root)? {
        Some(store) => Ok(slot_versions(&store.list()?)),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_values_expire() {
        let v = Verifier {
            values: vec![
                (Secret::new("new".into()), None),
                (Secret::new("old".into()), Some(100)),
            ],
        };
        assert_eq!(v.candidates(99).len(), 2);
        assert_eq!(v.candidates(100), vec![b"new".as_slice()]);
    }

    #[test]
    fn build_fails_closed_on_missing_env() {
        let loaded = config::validate::parse_str(
            "t.toml",
            "[[http_connectors]]\nname = \"o\"\nbearer_token_env = \"NOPE\"\n",
        );
        let dir = tempfile::tempdir().unwrap();
        match build(loaded.config, "t.toml", dir.path(), &|_| None, 0) {
            Err(BuildError::Diagnostics(d)) => assert!(d[0].message.contains("NOPE"), "{d:?}"),
            other => panic!("expected diagnostics, got {other:?}"),
        }
        let loaded = config::validate::parse_str(
            "t.toml",
            "[[http_connectors]]\nname = \"o\"\nbearer_token_env = \"TOK\"\n",
        );
        let c = build(
            loaded.config,
            "t.toml",
            dir.path(),
            &|_| Some("v".into()),
            0,
        )
        .unwrap();
        assert!(c.http["o"].authenticated());
        assert_eq!(
            c.http["o"].bearer.as_ref().unwrap().candidates(0),
            vec![b"v".as_slice()]
        );
    }
}
