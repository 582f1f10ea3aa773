//! The runtime connector store as operations (SPEC §12): list, get, upsert and delete
//! daemon-managed connectors, and write, list and delete secret slots through the same rules.
//! The admin API (`server::runtime`) and the CLI (`put-external`, `rotate-secret --connector`)
//! call these same functions.
//!
//! Also the merge of the two sources into one connector set ([`merged_config`]): file-backed
//! connectors first; a daemon-managed connector whose name a file-backed connector of its kind
//! now uses, or whose document no longer validates, is left out with a diagnostic naming
//! `daemon:KIND/NAME` and the JSON pointer.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::config::runtime::{self as docs, Document, PatchError};
use crate::config::validate::parse_connector_json;
use crate::config::{self, Config};
use crate::model::{ConnectorKind, Diagnostic, Severity};
use crate::secrets::{self, SecretError, SecretSource, SecretStore};
use crate::store::connectors::RuntimeConnectorRecord;
use crate::store::{Store, StoreError};

/// Why a runtime operation was refused. `server::response` maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// 404: no such daemon-managed connector (or slot).
    #[error("no daemon-managed {what} `{name}`")]
    NotFound { what: &'static str, name: String },
    /// 409 on PUT: a file-backed connector of that kind has the name. 404 on DELETE.
    #[error("`{kind}/{name}` is a file-backed connector; change it in the connector file (the runtime store cannot shadow or delete it)")]
    FileBacked { kind: ConnectorKind, name: String },
    /// 400 / 409 (platform change): the patch cannot be applied.
    #[error(transparent)]
    Patch(#[from] PatchError),
    /// 400: the resulting connector does not validate; nothing was written.
    #[error("the connector is invalid ({} problem(s)); nothing was written", .0.len())]
    Invalid(Vec<Diagnostic>),
    /// 409: still referenced (by other connectors' reply targets, or a slot by connectors).
    #[error("`{name}` is still referenced by {}; remove those references first", .by.join(", "))]
    Referenced { name: String, by: Vec<String> },
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a connector comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    File,
    Daemon,
}

/// One connector in a listing: its redacted view.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectorView {
    pub kind: ConnectorKind,
    pub name: String,
    pub source: Source,
    /// The redacted document ([`docs::redacted_view`]).
    pub connector: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at_ms: Option<i64>,
    /// An external connector's live sidecar state (`{"health","instance_id","restarts"}`), filled
    /// in by the daemon's control plane from what its supervisor last saw; absent elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<Value>,
}

/// What an upsert did (or would do, for a dry run).
#[derive(Debug, Clone, Serialize)]
pub struct PutOutcome {
    pub created: bool,
    pub dry_run: bool,
    pub view: ConnectorView,
    /// `{field, before, after}` of the redacted views.
    pub changes: Vec<Value>,
    /// Secret slots written (names only).
    pub secrets_written: Vec<String>,
    /// Warnings of the validation (errors refuse the write).
    pub warnings: Vec<Diagnostic>,
}

/// The label daemon-managed connectors carry in diagnostics.
pub fn source_label(kind: ConnectorKind, name: &str) -> String {
    format!("daemon:{kind}/{name}")
}

/// True when the file-backed config has connector `kind`/`name`.
pub fn in_file(file: &Config, kind: ConnectorKind, name: &str) -> bool {
    let names: Vec<&str> = match kind {
        ConnectorKind::Http => file.http.iter().map(|c| c.common.name.as_str()).collect(),
        ConnectorKind::Slack => file.slack.iter().map(|c| c.common.name.as_str()).collect(),
        ConnectorKind::Telegram => file
            .telegram
            .iter()
            .map(|c| c.common.name.as_str())
            .collect(),
        ConnectorKind::External => file
            .external
            .iter()
            .map(|c| c.common.name.as_str())
            .collect(),
    };
    names.contains(&name)
}

fn append(into: &mut Config, from: Config) {
    into.http.extend(from.http);
    into.slack.extend(from.slack);
    into.telegram.extend(from.telegram);
    into.external.extend(from.external);
}

/// The file-backed config plus every daemon-managed connector that validates, and one
/// diagnostic per problem of those left out.
pub fn merged_config(
    file: &Config,
    records: &[RuntimeConnectorRecord],
) -> (Config, Vec<Diagnostic>) {
    merge(file, records, false)
}

/// [`merged_config`] for `validate`: also the warnings of the daemon-managed connectors that
/// were merged (each naming `daemon:KIND/NAME` and its JSON pointer).
pub fn merged_config_with_warnings(
    file: &Config,
    records: &[RuntimeConnectorRecord],
) -> (Config, Vec<Diagnostic>) {
    merge(file, records, true)
}

fn merge(
    file: &Config,
    records: &[RuntimeConnectorRecord],
    keep_warnings: bool,
) -> (Config, Vec<Diagnostic>) {
    let mut merged = file.clone();
    let mut diags = Vec::new();
    let mut pending: Vec<&RuntimeConnectorRecord> = Vec::new();
    for r in records {
        if in_file(file, r.kind, &r.name) {
            diags.push(Diagnostic {
                severity: Severity::Warning,
                file: source_label(r.kind, &r.name),
                line: 0,
                column: 0,
                pointer: Some("/name".into()),
                connector_kind: Some(r.kind),
                connector: Some(r.name.clone()),
                field: Some("name".into()),
                message: "a file-backed connector of this kind now has this name; the file-backed one is in force and this one is ignored".into(),
                help: Some(format!(
                    "delete it (`DELETE /v1/runtime/connectors/{}/{}`) or rename one of them",
                    r.kind, r.name
                )),
            });
        } else {
            pending.push(r);
        }
    }
    // Two passes: reply targets may name daemon-managed connectors validated later.
    let mut failed = Vec::new();
    for pass in 0..2 {
        let round = if pass == 0 {
            std::mem::take(&mut pending)
        } else {
            std::mem::take(&mut failed)
        };
        for r in round {
            let loaded =
                parse_connector_json(&source_label(r.kind, &r.name), r.kind, &r.document, &merged);
            if loaded.has_errors() {
                if pass == 0 {
                    failed.push(r);
                } else {
                    diags.extend(loaded.diagnostics);
                }
            } else {
                if keep_warnings {
                    diags.extend(loaded.diagnostics);
                }
                append(&mut merged, loaded.config);
            }
        }
    }
    (merged, diags)
}

/// Every connector, file-backed then daemon-managed, as redacted views.
pub fn list(file_documents: &[Document], records: &[RuntimeConnectorRecord]) -> Vec<ConnectorView> {
    let mut out: Vec<ConnectorView> = file_documents
        .iter()
        .map(|(kind, name, doc)| ConnectorView {
            kind: *kind,
            name: name.clone(),
            source: Source::File,
            connector: docs::redacted_view(*kind, doc),
            updated_at_ms: None,
            sidecar: None,
        })
        .collect();
    out.extend(records.iter().map(daemon_view));
    out
}

fn daemon_view(r: &RuntimeConnectorRecord) -> ConnectorView {
    ConnectorView {
        kind: r.kind,
        name: r.name.clone(),
        source: Source::Daemon,
        connector: docs::redacted_view(r.kind, &r.document),
        updated_at_ms: Some(r.updated_at_ms),
        sidecar: None,
    }
}

/// The daemon-managed connectors of `state_root` (none without a state root).
pub fn records(state_root: &Path) -> Result<Vec<RuntimeConnectorRecord>, StoreError> {
    match Store::open_existing(state_root)? {
        Some(store) => store.runtime_connectors(),
        None => Ok(Vec::new()),
    }
}

/// An environment lookup (`std::env::var` in the daemon, a closure in tests).
pub type EnvLookup = dyn Fn(&str) -> Option<String>;

/// What a PUT needs besides the patch.
pub struct PutRequest<'a> {
    pub state_root: &'a Path,
    /// The file-backed connectors in force.
    pub file: &'a Config,
    pub kind: ConnectorKind,
    pub name: &'a str,
    pub patch: &'a Value,
    pub dry_run: bool,
    /// Resolve `{"env"}` sources in this environment (the daemon's); `None` skips env checks
    /// (the CLI cannot see the daemon's environment).
    pub env: Option<&'a EnvLookup>,
    /// `api`, `cli`: recorded as the source of written secret slots.
    pub origin: &'a str,
    pub now_ms: i64,
}

/// The field-aware upsert of one daemon-managed connector (SPEC §12). Validates the result
/// with the file's rules, checks every secret source it names (fail closed; values written by
/// this request count as present), then writes the document and its secret slots in one
/// transaction — or, with `dry_run`, writes nothing.
pub fn put(req: &PutRequest<'_>) -> Result<PutOutcome, RuntimeError> {
    put_with_grace(req, None).map(|(outcome, _)| outcome)
}

/// [`put`] where every secret slot the patch writes keeps its previous value for `grace`,
/// for inbound verification only (`rotate-secret --connector … --grace`): the rotation and
/// the re-binding of the connector commit together. Also returns what each slot write did
/// (empty for a dry run).
pub fn put_with_grace(
    req: &PutRequest<'_>,
    grace: Option<std::time::Duration>,
) -> Result<(PutOutcome, Vec<secrets::Rotation>), RuntimeError> {
    let (kind, name) = (req.kind, req.name);
    if in_file(req.file, kind, name) {
        return Err(RuntimeError::FileBacked {
            kind,
            name: name.to_string(),
        });
    }
    let secret_store = if req.dry_run {
        SecretStore::open_existing(req.state_root)?
    } else {
        Some(SecretStore::open_or_create(req.state_root)?)
    };
    let store_records = match &secret_store {
        Some(s) => s.store().runtime_connectors()?,
        None => Vec::new(),
    };
    let existing = store_records
        .iter()
        .find(|r| r.kind == kind && r.name == name);
    let upserted = docs::upsert(kind, name, existing.map(|r| &r.document), req.patch)?;

    let others: Vec<RuntimeConnectorRecord> = store_records
        .iter()
        .filter(|r| !(r.kind == kind && r.name == name))
        .cloned()
        .collect();
    let (known, _) = merged_config(req.file, &others);
    let label = source_label(kind, name);
    let loaded = parse_connector_json(&label, kind, &upserted.document, &known);
    if loaded.has_errors() {
        return Err(RuntimeError::Invalid(loaded.diagnostics));
    }
    // Every secret source must resolve now (startup would refuse it otherwise).
    let pending: Vec<&str> = upserted
        .secrets
        .iter()
        .map(|s| s.secret_ref.as_str())
        .collect();
    let problems = config::check_secret_sources(&loaded.config, &label, |source| {
        match source {
            SecretSource::StoreRef(r) if pending.contains(&r.as_str()) => return Ok(None),
            SecretSource::Env(_) if req.env.is_none() => return Ok(None),
            _ => {}
        }
        let no_env = |_: &str| None;
        let env: &dyn Fn(&str) -> Option<String> = req.env.unwrap_or(&no_env);
        match secrets::resolve(source, secret_store.as_ref(), env) {
            Ok(_) => Ok(None),
            Err(e) => config::secret_problem(e, req.state_root),
        }
    })?;
    if !problems.is_empty() {
        return Err(RuntimeError::Invalid(problems));
    }

    let before = existing.map(|r| docs::redacted_view(kind, &r.document));
    let after = docs::redacted_view(kind, &upserted.document);
    let changes = docs::diff(before.as_ref().unwrap_or(&Value::Null), &after)
        .into_iter()
        .map(|(field, b, a)| serde_json::json!({"field": field, "before": b, "after": a}))
        .collect();
    let secrets_written: Vec<String> = upserted
        .secrets
        .iter()
        .map(|s| s.secret_ref.clone())
        .collect();
    let mut record = RuntimeConnectorRecord {
        kind,
        name: name.to_string(),
        document: upserted.document.clone(),
        created_at_ms: existing.map_or(req.now_ms, |r| r.created_at_ms),
        updated_at_ms: req.now_ms,
    };
    let created = existing.is_none();
    let mut rotations = Vec::new();
    if !req.dry_run {
        let secret_store = secret_store.expect("opened for writing above");
        let writes = upserted
            .secrets
            .iter()
            .map(|s| {
                secret_store.sealed_rotation(&s.secret_ref, &s.value, grace, req.origin, req.now_ms)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let written = secret_store.store().put_runtime_connector_with_slots(
            kind,
            name,
            &upserted.document,
            &writes,
            req.now_ms,
        )?;
        rotations = writes
            .iter()
            .zip(written.slots)
            .map(|(w, out)| secrets::Rotation {
                secret_ref: w.secret_ref.to_string(),
                rotated_at_ms: req.now_ms,
                grace_until_ms: w.keep_previous_until_ms.filter(|_| out.previous_kept),
                previous_kept: out.previous_kept,
                created: out.created,
            })
            .collect();
    } else {
        record.updated_at_ms = existing.map_or(req.now_ms, |r| r.updated_at_ms);
    }
    let warnings = loaded
        .diagnostics
        .into_iter()
        .filter(|d| d.severity != Severity::Error)
        .collect();
    let outcome = PutOutcome {
        created,
        dry_run: req.dry_run,
        view: daemon_view(&record),
        changes,
        secrets_written,
        warnings,
    };
    Ok((outcome, rotations))
}

/// One daemon-managed connector's view.
pub fn get(
    state_root: &Path,
    file_documents: &[Document],
    kind: ConnectorKind,
    name: &str,
) -> Result<ConnectorView, RuntimeError> {
    if let Some((k, n, doc)) = file_documents
        .iter()
        .find(|(k, n, _)| *k == kind && n == name)
    {
        return Ok(ConnectorView {
            kind: *k,
            name: n.clone(),
            source: Source::File,
            connector: docs::redacted_view(*k, doc),
            updated_at_ms: None,
            sidecar: None,
        });
    }
    records(state_root)?
        .iter()
        .find(|r| r.kind == kind && r.name == name)
        .map(daemon_view)
        .ok_or_else(|| RuntimeError::NotFound {
            what: "connector",
            name: format!("{kind}/{name}"),
        })
}

/// Deletes one daemon-managed connector: 404 for file-backed or unknown ones, 409 while
/// another connector's reply targets name it.
pub fn delete(
    state_root: &Path,
    file: &Config,
    kind: ConnectorKind,
    name: &str,
) -> Result<(), RuntimeError> {
    let not_found = || RuntimeError::NotFound {
        what: "connector",
        name: format!("{kind}/{name}"),
    };
    let Some(store) = Store::open_existing(state_root)? else {
        return Err(not_found());
    };
    let all = store.runtime_connectors()?;
    if !all.iter().any(|r| r.kind == kind && r.name == name) {
        return Err(not_found());
    }
    let (merged, _) = merged_config(file, &all);
    let by = referencing(&merged, kind, name);
    if !by.is_empty() {
        return Err(RuntimeError::Referenced {
            name: format!("{kind}/{name}"),
            by,
        });
    }
    if store.delete_runtime_connector(kind, name)? {
        Ok(())
    } else {
        Err(not_found())
    }
}

/// The connectors (`KIND/NAME`) whose reply targets name connector `kind`/`name`.
fn referencing(config: &Config, kind: ConnectorKind, name: &str) -> Vec<String> {
    let plugin = kind.as_str();
    let mut by = Vec::new();
    let mut check =
        |owner_kind: ConnectorKind, owner: &str, targets: &[crate::model::reply::ReplyTarget]| {
            if owner_kind == kind && owner == name {
                return;
            }
            let names_it = targets.iter().any(|t| {
                t.plugin.as_str() == plugin
                    && serde_json::from_str::<Value>(&t.address)
                        .ok()
                        .and_then(|v| {
                            v.get("connector")
                                .and_then(Value::as_str)
                                .map(str::to_string)
                        })
                        .as_deref()
                        == Some(name)
            });
            if names_it {
                by.push(format!("{owner_kind}/{owner}"));
            }
        };
    for c in &config.http {
        check(
            ConnectorKind::Http,
            c.common.name.as_str(),
            &c.common.reply_targets,
        );
    }
    for c in &config.slack {
        check(
            ConnectorKind::Slack,
            c.common.name.as_str(),
            &c.common.reply_targets,
        );
    }
    for c in &config.telegram {
        check(
            ConnectorKind::Telegram,
            c.common.name.as_str(),
            &c.common.reply_targets,
        );
    }
    for c in &config.external {
        check(
            ConnectorKind::External,
            c.common.name.as_str(),
            &c.common.reply_targets,
        );
    }
    by
}

/// Slot metadata (never a value) of the secret store.
#[derive(Debug, Clone, Serialize)]
pub struct SecretView {
    pub secret_ref: String,
    pub updated_at_ms: i64,
    pub has_previous: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_valid_until_ms: Option<i64>,
    /// Connectors (`KIND/NAME`) whose config names this ref.
    pub used_by: Vec<String>,
}

/// Every slot with the connectors that use it.
pub fn list_secrets(state_root: &Path, config: &Config) -> Result<Vec<SecretView>, RuntimeError> {
    let Some(store) = SecretStore::open_existing(state_root)? else {
        return Ok(Vec::new());
    };
    Ok(store
        .list()?
        .into_iter()
        .map(|s| SecretView {
            used_by: users_of(config, &s.secret_ref),
            secret_ref: s.secret_ref,
            updated_at_ms: s.updated_at_ms,
            has_previous: s.has_previous,
            previous_valid_until_ms: s.previous_valid_until_ms,
        })
        .collect())
}

/// The connectors whose secret fields or credential slots name `secret_ref`.
pub fn users_of(config: &Config, secret_ref: &str) -> Vec<String> {
    let mut by: Vec<String> = config
        .secret_fields()
        .into_iter()
        .filter(|(_, _, f)| matches!(&f.source, SecretSource::StoreRef(r) if r == secret_ref))
        .map(|(kind, name, _)| format!("{kind}/{name}"))
        .collect();
    for c in &config.external {
        if let Some(cp) = &c.child_process {
            if cp.credential_slots.iter().any(|(_, r)| r == secret_ref) {
                by.push(format!("external/{}", c.common.name));
            }
        }
    }
    by.sort();
    by.dedup();
    by
}

/// Deletes slot `secret_ref`; 409 while a connector (file-backed or daemon-managed) names it.
pub fn delete_secret(
    state_root: &Path,
    config: &Config,
    secret_ref: &str,
) -> Result<(), RuntimeError> {
    let by = users_of(config, secret_ref);
    if !by.is_empty() {
        return Err(RuntimeError::Referenced {
            name: secret_ref.to_string(),
            by,
        });
    }
    let deleted = match Store::open_existing(state_root)? {
        Some(store) => store.delete_secret_slot(secret_ref)?,
        None => false,
    };
    if deleted {
        Ok(())
    } else {
        Err(RuntimeError::NotFound {
            what: "secret slot",
            name: secret_ref.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::secrets::Secret;

    fn request<'a>(
        root: &'a Path,
        file: &'a Config,
        patch: &'a Value,
        now_ms: i64,
    ) -> PutRequest<'a> {
        PutRequest {
            state_root: root,
            file,
            kind: ConnectorKind::External,
            name: "d",
            patch,
            dry_run: false,
            env: None,
            origin: "test",
            now_ms,
        }
    }

    #[test]
    fn a_put_with_grace_rotates_and_rebinds_in_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let file = Config::default();
        let create = json!({"platform": "p", "base_url": "https://s.example.com",
            "shared_token": {"value": "old-value"}});
        let (out, rotations) =
            put_with_grace(&request(dir.path(), &file, &create, 1_000), None).unwrap();
        assert!(out.created);
        assert_eq!(rotations.len(), 1);
        assert!(rotations[0].created && !rotations[0].previous_kept);

        let rotate = json!({"shared_token": {"value": "new-value", "secret_ref": "connectors.external.d.shared_token"}});
        let grace = Some(std::time::Duration::from_secs(60));
        let (out, rotations) =
            put_with_grace(&request(dir.path(), &file, &rotate, 2_000), grace).unwrap();
        assert!(!out.created);
        assert_eq!(
            (rotations[0].previous_kept, rotations[0].grace_until_ms),
            (true, Some(62_000))
        );
        let store = SecretStore::open_existing(dir.path()).unwrap().unwrap();
        let values = store
            .verification_values("connectors.external.d.shared_token", 2_001)
            .unwrap();
        let exposed: Vec<&str> = values.iter().map(Secret::expose).collect();
        assert_eq!(exposed, ["new-value", "old-value"]);

        // A dry run reports and writes nothing.
        let mut dry = request(dir.path(), &file, &rotate, 3_000);
        dry.dry_run = true;
        let (out, rotations) = put_with_grace(&dry, grace).unwrap();
        assert!(out.dry_run && rotations.is_empty());
        assert_eq!(
            store.list().unwrap()[0].updated_at_ms,
            2_000,
            "the slot was not written again"
        );
    }

    #[test]
    fn validate_sees_the_warnings_of_merged_connectors() {
        let record = RuntimeConnectorRecord {
            kind: ConnectorKind::External,
            name: "d".into(),
            document: json!({"name": "d", "platform": "p", "base_url": "https://s.example.com",
                "allow_unauthenticated_ingress": true}),
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let (merged, quiet) = merged_config(&Config::default(), std::slice::from_ref(&record));
        let (_, loud) = merged_config_with_warnings(&Config::default(), &[record]);
        assert_eq!(merged.external.len(), 1);
        assert!(quiet.len() <= loud.len());
        assert!(loud
            .iter()
            .all(|d| d.file == "daemon:external/d" && d.severity == Severity::Warning));
    }
}
