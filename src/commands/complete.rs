//! Dynamic shell completion (SPEC §1.3 "completions"): the shell asks the binary
//! (`COMPLETE=bash kheishctl -- kheishctl replay <TAB>`) and values are completed from the live
//! configuration and state root, as kubectl completes resource names.
//!
//! Built on clap_complete's `CompleteEnv`: [`command`] is the clap tree of `cli.rs` with value
//! completers attached here (so `cli` stays free of I/O). Values come from the `--state-root` /
//! `--connectors-config` the command line being completed names (or their environment
//! variables, or the default state root), read before clap parses anything.
//!
//! Completion reads only: the database is opened read-only with a short busy timeout, a
//! missing, locked, older or newer state root offers nothing rather than an error, and no secret
//! value is ever read (secret refs are names; dead-letter descriptions use redacted targets).

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use clap::CommandFactory;
use clap_complete::engine::{ArgValueCandidates, ArgValueCompleter, CompletionCandidate};

use crate::cli::Cli;
use crate::model::reply::ReplyPlugin;
use crate::model::ConnectorKind;
use crate::secrets::SecretSource;
use crate::store::deliveries::DeliveryFilter;
use crate::store::runs::RunFilter;
use crate::store::Store;
use crate::views;

/// How long completion waits for a locked database before offering nothing.
const BUSY: Duration = Duration::from_millis(40);
/// Most dead letters / recent ids offered.
const MAX_OFFERED: u32 = 100;

/// Where completion reads its values from.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Sources {
    state_root: Option<PathBuf>,
    config: Option<PathBuf>,
}

static SOURCES: OnceLock<Sources> = OnceLock::new();

/// Answers the shell and exits when `COMPLETE` is set (clap_complete's protocol); returns at
/// once otherwise. Must run before anything writes to stdout.
pub fn handle_env() {
    let active = std::env::var_os("COMPLETE").is_some_and(|v| !v.is_empty() && v != "0");
    if active {
        let args: Vec<OsString> = std::env::args_os().collect();
        let _ = SOURCES.set(sources(&args, &|name| std::env::var_os(name)));
    }
    clap_complete::CompleteEnv::with_factory(command)
        .bin("kheishctl")
        .complete();
}

/// The clap tree with the value completers attached.
pub fn command() -> clap::Command {
    attach(Cli::command(), &[])
}

fn attach(cmd: clap::Command, path: &[&str]) -> clap::Command {
    let name = cmd.get_name().to_string();
    let mut here: Vec<&str> = path.to_vec();
    here.push(&name);
    let ids: Vec<String> = cmd
        .get_arguments()
        .map(|a| a.get_id().as_str().to_string())
        .collect();
    let mut cmd = cmd;
    for id in ids {
        let sub = here.get(1).copied().unwrap_or("");
        cmd = cmd.mut_arg(&id, |arg| match (sub, id.as_str()) {
            ("sign", "connector") => arg.add(ArgValueCandidates::new(http_connector_names)),
            ("put-external", "name") => arg.add(ArgValueCandidates::new(daemon_external_names)),
            (_, "connector") => arg.add(ArgValueCandidates::new(connector_ids)),
            (_, "plugin") => arg.add(ArgValueCandidates::new(plugins)),
            ("replay", "delivery_ids") => arg.add(ArgValueCandidates::new(dead_letters)),
            (_, "run") => arg.add(ArgValueCandidates::new(recent_runs)),
            (_, "session") => arg.add(ArgValueCandidates::new(recent_sessions)),
            ("rotate-secret", "secret_ref") => arg.add(ArgValueCandidates::new(secret_refs)),
            (_, id) if id.ends_with("secret_ref") => arg.add(ArgValueCandidates::new(secret_refs)),
            (_, "credential_slot") => arg.add(ArgValueCompleter::new(credential_slot)),
            _ => arg,
        });
    }
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for sub in subs {
        cmd = cmd.mut_subcommand(&sub, |s| attach(s, &here));
    }
    cmd
}

/// The state root and connector file named by the command line being completed: the
/// `--state-root` / `--connectors-config` flags (either `--flag VALUE` or `--flag=VALUE`),
/// else their environment variables, else the default state root.
fn sources(args: &[OsString], env: &dyn Fn(&str) -> Option<OsString>) -> Sources {
    let flag = |name: &str| -> Option<PathBuf> {
        let mut found = None;
        let eq = format!("{name}=");
        for (i, a) in args.iter().enumerate() {
            let Some(a) = a.to_str() else { continue };
            if a == name {
                found = args.get(i + 1).map(PathBuf::from);
            } else if let Some(v) = a.strip_prefix(&eq) {
                found = Some(PathBuf::from(v));
            }
        }
        found.filter(|p| !p.as_os_str().is_empty())
    };
    let from_env = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let state_root = flag("--state-root")
        .or_else(|| from_env("KHEISH_STATE_ROOT"))
        .or_else(|| {
            from_env("XDG_STATE_HOME")
                .map(|x| x.join("kheishctl"))
                .or_else(|| from_env("HOME").map(|h| h.join(".local/state/kheishctl")))
        });
    let config = flag("--connectors-config").or_else(|| from_env("KHEISH_CONNECTORS_CONFIG"));
    Sources { state_root, config }
}

fn current_sources() -> Sources {
    SOURCES
        .get()
        .cloned()
        .unwrap_or_else(|| sources(&[], &|name| std::env::var_os(name)))
}

/// The read-only store, or nothing (missing, locked, other schema: offer nothing).
fn store() -> Option<Store> {
    let root = current_sources().state_root?;
    Store::open_read_only(&root, BUSY).ok().flatten()
}

fn config() -> Option<crate::config::Config> {
    let path = current_sources().config?;
    crate::config::load(&path).ok().map(|l| l.config)
}

/// `KIND/NAME` of the file's connectors and of the daemon-managed ones in the state root.
fn connector_ids() -> Vec<CompletionCandidate> {
    let mut ids: Vec<(ConnectorKind, String, &'static str)> = Vec::new();
    if let Some(config) = config() {
        let file = "connector file";
        ids.extend(
            config
                .http
                .iter()
                .map(|c| (ConnectorKind::Http, c.common.name.to_string(), file)),
        );
        ids.extend(
            config
                .slack
                .iter()
                .map(|c| (ConnectorKind::Slack, c.common.name.to_string(), file)),
        );
        ids.extend(
            config
                .telegram
                .iter()
                .map(|c| (ConnectorKind::Telegram, c.common.name.to_string(), file)),
        );
        ids.extend(
            config
                .external
                .iter()
                .map(|c| (ConnectorKind::External, c.common.name.to_string(), file)),
        );
    }
    if let Some(records) = store().and_then(|s| s.runtime_connectors().ok()) {
        ids.extend(
            records
                .into_iter()
                .map(|r| (r.kind, r.name, "daemon-managed")),
        );
    }
    let mut ids: Vec<(String, &'static str)> = ids
        .into_iter()
        .map(|(kind, name, source)| (format!("{kind}/{name}"), source))
        .collect();
    // Sorted by id; a name in both sources keeps the file's (the one in force).
    ids.sort();
    ids.dedup_by(|later, first| later.0 == first.0);
    ids.into_iter()
        .map(|(id, source)| CompletionCandidate::new(id).help(Some(source.into())))
        .collect()
}

/// `put-external NAME`: the daemon-managed external connectors (to update one).
fn daemon_external_names() -> Vec<CompletionCandidate> {
    let Some(records) = store().and_then(|s| s.runtime_connectors().ok()) else {
        return Vec::new();
    };
    records
        .into_iter()
        .filter(|r| r.kind == ConnectorKind::External)
        .map(|r| CompletionCandidate::new(r.name).help(Some("daemon-managed".into())))
        .collect()
}

fn http_connector_names() -> Vec<CompletionCandidate> {
    let Some(config) = config() else {
        return Vec::new();
    };
    config
        .http
        .iter()
        .map(|c| CompletionCandidate::new(c.common.name.to_string()))
        .collect()
}

fn plugins() -> Vec<CompletionCandidate> {
    [
        ReplyPlugin::Http,
        ReplyPlugin::Slack,
        ReplyPlugin::Telegram,
        ReplyPlugin::External,
    ]
    .into_iter()
    .map(|p| CompletionCandidate::new(p.as_str()))
    .collect()
}

/// Unresolved dead letters, newest first, described by redacted target and error code.
fn dead_letters() -> Vec<CompletionCandidate> {
    let Some(store) = store() else {
        return Vec::new();
    };
    let filter = DeliveryFilter {
        limit: MAX_OFFERED,
        ..DeliveryFilter::default()
    };
    let Ok(letters) = store.list_dead_letters(&filter) else {
        return Vec::new();
    };
    letters
        .into_iter()
        .map(|d| {
            let mut target = format!(
                "{} {}",
                d.target.plugin.as_str(),
                views::redacted_address(&d.target)
            );
            if target.chars().count() > 60 {
                target = target.chars().take(57).collect::<String>() + "...";
            }
            let error = d.last_error_code.as_deref().unwrap_or("dead-lettered");
            CompletionCandidate::new(d.delivery_id).help(Some(format!("{target}: {error}").into()))
        })
        .collect()
}

fn recent_runs() -> Vec<CompletionCandidate> {
    let Some(store) = store() else {
        return Vec::new();
    };
    let filter = RunFilter {
        limit: Some(MAX_OFFERED),
        ..RunFilter::default()
    };
    store
        .list_runs(&filter)
        .map(|runs| {
            runs.into_iter()
                .map(|r| {
                    let about = format!("{}/{} {}", r.connector_kind, r.connector_name, r.status);
                    CompletionCandidate::new(r.run_id).help(Some(about.into()))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn recent_sessions() -> Vec<CompletionCandidate> {
    let Some(store) = store() else {
        return Vec::new();
    };
    let filter = RunFilter {
        limit: Some(MAX_OFFERED),
        ..RunFilter::default()
    };
    let Ok(runs) = store.list_runs(&filter) else {
        return Vec::new();
    };
    let mut seen = std::collections::HashSet::new();
    runs.into_iter()
        .filter(|r| seen.insert(r.session_id.clone()))
        .map(|r| CompletionCandidate::new(r.session_id))
        .collect()
}

/// Secret refs by name: the store's slots and the refs the connector file names.
fn secret_ref_names() -> Vec<String> {
    let mut refs: Vec<String> = Vec::new();
    if let Some(store) = store() {
        if let Ok(slots) = store.secret_slots() {
            refs.extend(slots.into_iter().map(|s| s.secret_ref));
        }
    }
    if let Some(config) = config() {
        for (_, _, field) in config.secret_fields() {
            if let SecretSource::StoreRef(r) = &field.source {
                refs.push(r.clone());
            }
        }
        for c in &config.external {
            if let Some(cp) = &c.child_process {
                refs.extend(cp.credential_slots.iter().map(|(_, r)| r.clone()));
            }
        }
    }
    refs.sort();
    refs.dedup();
    refs
}

fn secret_refs() -> Vec<CompletionCandidate> {
    secret_ref_names()
        .into_iter()
        .map(CompletionCandidate::new)
        .collect()
}

/// `--credential-slot KEY=REF`: once `KEY=` is typed, the refs.
fn credential_slot(current: &OsStr) -> Vec<CompletionCandidate> {
    let Some(current) = current.to_str() else {
        return Vec::new();
    };
    let Some((key, typed)) = current.split_once('=') else {
        return Vec::new();
    };
    secret_ref_names()
        .into_iter()
        .filter(|r| r.starts_with(typed))
        .map(|r| CompletionCandidate::new(format!("{key}={r}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_follow_flags_then_env_then_defaults() {
        let args: Vec<OsString> = [
            "kheishctl",
            "--",
            "kheishctl",
            "--state-root",
            "/s",
            "replay",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let env = |name: &str| match name {
            "KHEISH_STATE_ROOT" => Some(OsString::from("/env")),
            "KHEISH_CONNECTORS_CONFIG" => Some(OsString::from("/c.toml")),
            "HOME" => Some(OsString::from("/home/u")),
            _ => None,
        };
        assert_eq!(
            sources(&args, &env),
            Sources {
                state_root: Some("/s".into()),
                config: Some("/c.toml".into())
            }
        );
        let args: Vec<OsString> = ["kheishctl", "--connectors-config=/f.toml"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(
            sources(&args, &env),
            Sources {
                state_root: Some("/env".into()),
                config: Some("/f.toml".into())
            }
        );
        let home_only = |name: &str| (name == "HOME").then(|| OsString::from("/home/u"));
        assert_eq!(
            sources(&[], &home_only).state_root,
            Some(PathBuf::from("/home/u/.local/state/kheishctl"))
        );
    }

    #[test]
    fn the_tree_still_parses_and_every_completer_finds_its_argument() {
        let cmd = command();
        cmd.clone().debug_assert();
        let replay = cmd.find_subcommand("replay").unwrap();
        let ids = replay
            .get_arguments()
            .find(|a| a.get_id() == "delivery_ids")
            .unwrap();
        assert!(ids.get::<ArgValueCandidates>().is_some());
        let rotate = cmd.find_subcommand("rotate-secret").unwrap();
        let r = rotate
            .get_arguments()
            .find(|a| a.get_id() == "secret_ref")
            .unwrap();
        assert!(r.get::<ArgValueCandidates>().is_some());
    }
}
