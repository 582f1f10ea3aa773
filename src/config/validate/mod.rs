//! Turns a connector document into a validated [`Config`] plus every diagnostic (SPEC §2),
//! whether the document is the TOML connector file or a JSON document (daemon-managed
//! connectors, `PUT /v1/runtime/connectors`): the same rules run on both.
//!
//! Entry points:
//! - [`parse_str`]: TOML text. Positions are 1-based line and character column.
//! - [`parse_json`]: a JSON document of the file's shape
//!   (`{"http_connectors": [...], "slack_connectors": [...], ...}`).
//! - [`parse_connector_json`]: one connector of a given kind, as the runtime store receives it.
//!
//! JSON positions are RFC 6901 pointers relative to the document that was passed in, carried in
//! [`Diagnostic::pointer`](crate::model::Diagnostic) with `line` and `column` 0: a file-shaped
//! document gives `/external_connectors/0/base_url`, a single connector `/base_url`. A problem
//! with a missing key points at the object that lacks it, as the TOML form points at its table.
//! Messages, help and field paths are the same in both forms, so a connector reads the same
//! whichever way it was written (the type words are TOML's: a JSON object is "a table").
//! Diagnostics are sorted by line and column (TOML) or by pointer with array indices compared as
//! numbers (JSON), then errors before warnings.
//!
//! The walk reads every table, checks types, ranges and cross-field rules, and records a
//! diagnostic for each problem instead of stopping at the first, so `validate` reports them all
//! in one run. Unknown keys are errors with the nearest valid key suggested. Nothing here reads
//! a file or the environment: checks that need them (env vars set, secret slots present) live
//! in `commands::validate`.
//!
//! Layout: `walker` (document abstraction and typed getters), `common` (rules every kind
//! shares), one file per kind, `refs` (cross-connector reply-target references).

mod common;
mod external;
mod http;
mod refs;
mod slack;
mod telegram;
mod walker;

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::Value as Json;
use toml::de::DeTable;

pub use self::common::check_secret_ref;
use self::refs::{Seen, TargetRef};
use self::walker::{suggest, Ctx, LineIndex, Node, Pos, Subject, Table, Walker};
use super::{Config, Loaded};
use crate::model::{ConnectorKind, Severity};

/// Parses and validates TOML `text`, naming `file` in diagnostics.
pub fn parse_str(file: &str, text: &str) -> Loaded {
    let mut w = Walker::new(file, Some(LineIndex::new(text)));
    let (root, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        // A recovered tree after a syntax error is a guess; validating it would report
        // problems the operator did not write. Report the syntax errors alone.
        for e in &errors {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().trim_end_matches('.').to_string();
            w.push(
                Severity::Error,
                &Pos::Offset(span.start),
                Subject::file(),
                format!("invalid TOML: {message}"),
                Some("fix the syntax at this position; strings need quotes, tables `[[http_connectors]]`".into()),
            );
        }
        return Loaded {
            unparsable: true,
            ..finish(w, Config::default())
        };
    }
    let config = w.document(&Table::toml_root(root.get_ref()));
    finish(w, config)
}

/// Validates a JSON document shaped like the connector file (an object with any of the four
/// `*_connectors` arrays), naming `source` in diagnostics. Positions are JSON pointers from
/// the document root (`/http_connectors/0/name`).
pub fn parse_json(source: &str, doc: &Json) -> Loaded {
    let mut w = Walker::new(source, None);
    let root = Node::json(doc, String::new());
    let Some(table) = root.as_table(String::new()) else {
        w.push(
            Severity::Error,
            &root.pos,
            Subject::file(),
            format!("expected a table, found {}", root.type_name()),
            Some(format!(
                "send one object with any of the arrays {}",
                sections().join(", ")
            )),
        );
        return finish(w, Config::default());
    };
    let config = w.document(&table);
    finish(w, config)
}

/// Validates ONE connector of `kind` given as a JSON object (the body the runtime store
/// receives), naming `source` in diagnostics. Positions are JSON pointers from that object
/// (`/base_url`, `/child_process/env/X`); an unnamed connector is labelled `#1`.
///
/// Reply targets may name this connector or any connector in `known` (the file-backed and
/// other daemon-managed connectors), whose allowlists apply; a name this connector shares with
/// a `known` one is not reported here (the runtime store owns those conflict rules). The
/// returned config holds just this connector when it is valid.
pub fn parse_connector_json(
    source: &str,
    kind: ConnectorKind,
    doc: &Json,
    known: &Config,
) -> Loaded {
    let mut w = Walker::new(source, None);
    let mut config = Config::default();
    let mut seen: Seen = BTreeMap::new();
    let mut refs: Vec<TargetRef> = Vec::new();
    let item = Node::json(doc, String::new());
    w.connector(kind, &item, 0, &mut config, &mut seen, &mut refs);
    w.check_refs(refs, &[&config, known], &seen);
    finish(w, config)
}

fn sections() -> Vec<&'static str> {
    ConnectorKind::ALL.iter().map(|k| k.section()).collect()
}

/// Sorts the diagnostics into reading order and hands them back with the config.
fn finish(mut w: Walker<'_>, config: Config) -> Loaded {
    // Stable: problems at the same position keep the order the rules found them in.
    w.diags.sort_by(|a, b| {
        (a.line, a.column)
            .cmp(&(b.line, b.column))
            .then_with(|| cmp_pointers(a.pointer.as_deref(), b.pointer.as_deref()))
            .then(a.severity.cmp(&b.severity))
    });
    Loaded {
        config,
        diagnostics: w.diags,
        unparsable: false,
    }
}

/// Orders JSON pointers by reference token, array indices numerically (`/x/2` before `/x/10`)
/// and a parent before its members.
fn cmp_pointers(a: Option<&str>, b: Option<&str>) -> Ordering {
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    enum Token<'p> {
        Index(u64),
        Key(&'p str),
    }
    fn token(s: &str) -> Token<'_> {
        match s.parse() {
            Ok(i) if s.bytes().all(|b| b.is_ascii_digit()) => Token::Index(i),
            _ => Token::Key(s),
        }
    }
    match (a, b) {
        (Some(a), Some(b)) => a.split('/').map(token).cmp(b.split('/').map(token)),
        _ => a.cmp(&b),
    }
}

impl Walker<'_> {
    /// The whole document: the four `*_connectors` arrays, then the cross-references.
    fn document(&mut self, root: &Table<'_, '_>) -> Config {
        let mut config = Config::default();
        let mut seen: Seen = BTreeMap::new();
        let mut refs: Vec<TargetRef> = Vec::new();
        let sections = sections();
        for name in root.keys() {
            let Some(kind) = ConnectorKind::ALL.into_iter().find(|k| k.section() == name) else {
                let help = match suggest(name, &sections) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("valid top-level keys: {}", sections.join(", ")),
                };
                self.push(
                    Severity::Error,
                    &root.key_pos(name),
                    Subject::top_level(name),
                    format!("unknown key `{name}`"),
                    Some(help),
                );
                continue;
            };
            let Some(value) = root.get(name) else {
                continue;
            };
            let Some(items) = value.as_array() else {
                self.push(
                    Severity::Error,
                    &root.key_pos(name),
                    Subject::top_level(name),
                    format!("expected an array of tables, found {}", value.type_name()),
                    Some(format!("declare each connector with a `[[{name}]]` header")),
                );
                continue;
            };
            for (i, item) in items.iter().enumerate() {
                self.connector(kind, &item, i, &mut config, &mut seen, &mut refs);
            }
        }
        self.check_refs(refs, &[&config], &seen);
        config
    }

    /// One connector (the `index`-th of its kind): dispatches to the kind's rules and keeps
    /// the result when it is valid enough to build.
    fn connector(
        &mut self,
        kind: ConnectorKind,
        item: &Node<'_, '_>,
        index: usize,
        config: &mut Config,
        seen: &mut Seen,
        refs: &mut Vec<TargetRef>,
    ) {
        let mut ctx = Ctx {
            kind,
            label: format!("#{}", index + 1),
            start: item.pos.clone(),
        };
        let Some(t) = item.as_table(String::new()) else {
            self.err_help(
                &ctx,
                &item.pos,
                "",
                format!("expected a table, found {}", item.type_name()),
                format!(
                    "declare each connector with a `[[{}]]` header",
                    kind.section()
                ),
            );
            return;
        };
        match kind {
            ConnectorKind::Http => {
                if let Some(c) = self.http(&mut ctx, &t, seen, refs) {
                    config.http.push(c);
                }
            }
            ConnectorKind::Slack => {
                if let Some(c) = self.slack(&mut ctx, &t, seen, refs) {
                    config.slack.push(c);
                }
            }
            ConnectorKind::Telegram => {
                if let Some(c) = self.telegram(&mut ctx, &t, seen, refs) {
                    config.telegram.push(c);
                }
            }
            ConnectorKind::External => {
                if let Some(c) = self.external(&mut ctx, &t, seen, refs) {
                    config.external.push(c);
                }
            }
        }
        if !kind.served() {
            // After the kind's rules, so the connector is named (`#N` when it has no valid name).
            let name = ctx.label.clone();
            self.warn(
                &ctx,
                &item.pos,
                "",
                kind.unserved_warning(&name),
                "the connector is validated and its secrets are checked, but `serve` answers its \
                 webhook with 404 until a kheishctl that serves this kind runs it"
                    .into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Location;
    use crate::model::Diagnostic;

    /// True for the build-capability warnings (unserved kinds and reply plugins); this build
    /// serves every kind, so `no_kind_or_plugin_is_warned_as_unserved` checks there are none.
    pub(super) fn is_unserved(d: &Diagnostic) -> bool {
        d.message.contains("not served by this build")
    }

    pub(super) fn diags(text: &str) -> Vec<Diagnostic> {
        let mut all = parse_str("t.toml", text).diagnostics;
        all.retain(|d| !is_unserved(d));
        all
    }

    /// Every kind and plugin is served by this build, so no build-capability warning is drawn
    /// (the warning machinery stays for a build that leaves one out).
    #[test]
    fn no_kind_or_plugin_is_warned_as_unserved() {
        let text = "[[telegram_connectors]]\nname = \"support\"\nsecret_token_env = \"S\"\nbot_token_env = \"B\"\n\
                    [[http_connectors]]\nname = \"orders\"\nbearer_token_env = \"T\"\n\
                    default_reply_targets = [{ plugin = \"slack\", address = \"{\\\"connector\\\":\\\"support\\\",\\\"channel_id\\\":\\\"C1\\\"}\" }]\n\
                    [[external_connectors]]\nname = \"side\"\nplatform = \"discord\"\nbase_url = \"https://sidecar.example.com\"\nshared_token_env = \"T\"\n";
        let all = parse_str("t.toml", text).diagnostics;
        let unserved: Vec<String> = all
            .iter()
            .filter(|d| is_unserved(d))
            .map(|d| format!("{}:{} {}", d.line, d.severity, d.message))
            .collect();
        assert_eq!(unserved, Vec::<String>::new(), "{all:#?}");
    }

    /// Asserts that exactly the expected (severity, line, field, message fragment) appear.
    pub(super) fn check(text: &str, expected: &[(&str, u32, &str, &str)]) {
        let got = diags(text);
        let rendered: Vec<String> = got
            .iter()
            .map(|d| format!("{d} | help: {:?}", d.help))
            .collect();
        assert_eq!(
            got.len(),
            expected.len(),
            "diagnostics:\n{}",
            rendered.join("\n")
        );
        for (d, (sev, line, subject, fragment)) in got.iter().zip(expected) {
            assert_eq!(d.severity.to_string(), *sev, "{d}");
            assert_eq!(d.line, *line, "{d}");
            assert_eq!(d.subject().unwrap_or_default(), *subject, "{d}");
            assert!(
                d.message.contains(fragment),
                "{d} should contain {fragment:?}"
            );
        }
    }

    pub(super) const OK_HTTP: &str =
        "[[http_connectors]]\nname = \"orders\"\nbearer_token_env = \"ORDERS_TOKEN\"\n";

    #[test]
    fn empty_file_is_valid() {
        assert!(diags("").is_empty());
        assert!(parse_json("doc", &serde_json::json!({}))
            .diagnostics
            .is_empty());
    }

    #[test]
    fn syntax_error_has_position() {
        let d = diags("[[http_connectors]]\nname = orders\n");
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].line, 2);
        assert!(d[0].message.starts_with("invalid TOML"), "{}", d[0]);
    }

    #[test]
    fn unknown_key_suggests() {
        let d = diags(&format!("{OK_HTTP}bearer_tokn_env = \"X\"\n"));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            d[0].help.as_deref(),
            Some("did you mean `bearer_token_env`?")
        );
        assert_eq!(d[0].line, 4);
        assert_eq!(d[0].column, 1);
    }

    #[test]
    fn unknown_top_level_suggests() {
        let d = diags("[[http_connector]]\nname = \"a\"\n");
        assert_eq!(
            d[0].help.as_deref(),
            Some("did you mean `http_connectors`?")
        );
    }

    #[test]
    fn many_problems_are_all_reported() {
        let text = "[[http_connectors]]\nname = \"a\"\nsignature_max_age_secs = 0\nbogus = 1\n[[telegram_connectors]]\nname = \"t\"\ningress_mode = \"polling\"\nallow_unauthenticated_ingress = true\ninclude_self_output = false\n";
        let d = diags(text);
        assert_eq!(d.len(), 4, "{d:#?}");
    }

    // ---- the same rules on JSON documents ----

    /// TOML text as the equivalent JSON document (no datetimes in these tests).
    fn toml_to_json(text: &str) -> Json {
        let table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => panic!("test TOML does not parse: {e}"),
        };
        serde_json::to_value(table).unwrap_or_default()
    }

    type Key = (
        Severity,
        Option<ConnectorKind>,
        Option<String>,
        Option<String>,
        String,
        Option<String>,
    );

    /// (severity, connector_kind, connector, field, message, help), sorted: the part of a
    /// diagnostic that must not depend on the document's format.
    fn keys(diags: &[Diagnostic]) -> Vec<Key> {
        let mut out: Vec<Key> = diags
            .iter()
            .map(|d| {
                (
                    d.severity,
                    d.connector_kind,
                    d.connector.clone(),
                    d.field.clone(),
                    d.message.clone(),
                    d.help.clone(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// The pointer of the one diagnostic at `field` whose message contains `fragment`.
    fn pointer_of(diags: &[Diagnostic], field: &str, fragment: &str) -> String {
        let found: Vec<&Diagnostic> = diags
            .iter()
            .filter(|d| d.field.as_deref() == Some(field) && d.message.contains(fragment))
            .collect();
        assert_eq!(found.len(), 1, "{field} / {fragment}: {diags:#?}");
        found[0].pointer.clone().unwrap_or_default()
    }

    const BROKEN: &str = r#"
[[http_connectors]]
name = "orders"
bearer_tokn_env = "ORDERS_TOKEN"
bearer_token = "inline-value"
hmac_secret_env = "1BAD"
require_hmac_signature = true
require_idempotency_key = "yes"
ingress_events_per_second = 0
default_reply_targets = [
  { plugin = "http", address = "https://user:pw@example.com/hook" },
  { plugin = "pigeon", address = "x" },
  { plugin = "slack", address = '{"connector":"nobody","channel_id":"C1"}' },
  { plugin = "telegram", address = '{"connector":"bot","chat_id":99}' },
  "not-a-table",
]
[http_connectors.session_policy]
persona_id = " "
capability_scope = 3
create_if_missng = true

[[telegram_connectors]]
name = "bot"
ingress_mode = "polling"
bot_token_env = "BOT"
allowed_chat_ids = [1, "two"]

[[external_connectors]]
name = "side"
platform = "discord"
mode = "child_process"
base_url = "http://10.0.0.5:8787/x"
shared_token_secret_ref = "bad ref"
[external_connectors.child_process]
command = "python3"
env = { KHEISH_EXTERNAL_CONNECTOR_NAME = "x", "a/b~c" = "y" }
"#;

    #[test]
    fn json_and_toml_give_the_same_diagnostics() {
        let from_toml = parse_str("broken.toml", BROKEN).diagnostics;
        let doc = toml_to_json(BROKEN);
        let from_json = parse_json("broken.json", &doc).diagnostics;
        assert!(from_toml.len() >= 15, "{from_toml:#?}");
        assert_eq!(keys(&from_toml), keys(&from_json));

        for d in &from_toml {
            assert!(d.pointer.is_none() && d.line > 0, "{d:?}");
        }
        for d in &from_json {
            assert_eq!((d.line, d.column, d.file.as_str()), (0, 0, "broken.json"));
            let pointer = d.pointer.as_deref().unwrap_or("missing");
            // Every pointer names a node of the document.
            assert!(doc.pointer(pointer).is_some(), "{pointer} in {d:?}");
        }
        let at = |field: &str, fragment: &str| pointer_of(&from_json, field, fragment);
        assert_eq!(
            at("bearer_tokn_env", "unknown key"),
            "/http_connectors/0/bearer_tokn_env"
        );
        assert_eq!(
            at("require_idempotency_key", "expected a boolean"),
            "/http_connectors/0/require_idempotency_key"
        );
        assert_eq!(
            at("hmac_secret_env", "not a valid environment variable name"),
            "/http_connectors/0/hmac_secret_env"
        );
        assert_eq!(
            at("bearer_token", "inline secret"),
            "/http_connectors/0/bearer_token"
        );
        assert_eq!(
            at("ingress_events_per_second", "must be at least 1"),
            "/http_connectors/0/ingress_events_per_second"
        );
        assert_eq!(
            at("default_reply_targets[0].address", "credentials"),
            "/http_connectors/0/default_reply_targets/0/address"
        );
        assert_eq!(
            at("default_reply_targets[1].plugin", "unknown plugin"),
            "/http_connectors/0/default_reply_targets/1/plugin"
        );
        assert_eq!(
            at("default_reply_targets[2].address", "does not declare"),
            "/http_connectors/0/default_reply_targets/2/address"
        );
        assert_eq!(
            at("default_reply_targets[3].address", "allowed_chat_ids"),
            "/http_connectors/0/default_reply_targets/3/address"
        );
        assert_eq!(
            at(
                "default_reply_targets[4]",
                "expected a table, found a string"
            ),
            "/http_connectors/0/default_reply_targets/4"
        );
        assert_eq!(
            at("session_policy.persona_id", "must not be empty"),
            "/http_connectors/0/session_policy/persona_id"
        );
        assert_eq!(
            at("session_policy.capability_scope", "expected a table"),
            "/http_connectors/0/session_policy/capability_scope"
        );
        assert_eq!(
            at("session_policy.create_if_missng", "unknown key"),
            "/http_connectors/0/session_policy/create_if_missng"
        );
        assert_eq!(
            at("allowed_chat_ids[1]", "integer chat id"),
            "/telegram_connectors/0/allowed_chat_ids/1"
        );
        assert_eq!(
            at("shared_token_secret_ref", "secret ref"),
            "/external_connectors/0/shared_token_secret_ref"
        );
        assert_eq!(
            at(
                "child_process.env.KHEISH_EXTERNAL_CONNECTOR_NAME",
                "reserved"
            ),
            "/external_connectors/0/child_process/env/KHEISH_EXTERNAL_CONNECTOR_NAME"
        );
        assert_eq!(
            at(
                "child_process.env.a/b~c",
                "not a valid environment variable"
            ),
            "/external_connectors/0/child_process/env/a~1b~0c"
        );
        // A malformed shared token is reported once, not again as "no shared token".
        assert!(!from_json
            .iter()
            .any(|d| d.message.contains("no shared token")));
    }

    #[test]
    fn json_diagnostics_are_in_pointer_order() {
        let doc = toml_to_json(BROKEN);
        let pointers: Vec<String> = parse_json("broken.json", &doc)
            .diagnostics
            .iter()
            .filter_map(|d| d.pointer.clone())
            .collect();
        let mut sorted = pointers.clone();
        sorted.sort_by(|a, b| cmp_pointers(Some(a), Some(b)));
        assert_eq!(pointers, sorted);
        assert_eq!(
            cmp_pointers(Some("/a/2"), Some("/a/10")),
            Ordering::Less,
            "indices compare as numbers"
        );
        assert_eq!(cmp_pointers(Some("/a"), Some("/a/0")), Ordering::Less);
    }

    #[test]
    fn not_an_object() {
        let d = parse_json("doc.json", &serde_json::json!([1])).diagnostics;
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].pointer.as_deref(), Some(""));
        assert_eq!(d[0].message, "expected a table, found an array");
        let d = parse_json(
            "doc.json",
            &serde_json::json!({"http_connectors": [null], "slack_connectors": {}}),
        )
        .diagnostics;
        let found: Vec<(Option<&str>, &str)> = d
            .iter()
            .map(|d| (d.pointer.as_deref(), d.message.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (Some("/http_connectors/0"), "expected a table, found null"),
                (
                    Some("/slack_connectors"),
                    "expected an array of tables, found a table"
                ),
            ]
        );
    }

    /// The config with every position cleared, rendered for comparison (secrets stay redacted).
    fn without_positions(config: &Config) -> String {
        let mut c = config.clone();
        let clear = |l: &mut Location| *l = Location::default();
        for x in &mut c.http {
            clear(&mut x.common.location);
            for f in [&mut x.bearer_token, &mut x.hmac_secret]
                .into_iter()
                .flatten()
            {
                clear(&mut f.location);
            }
        }
        for x in &mut c.slack {
            clear(&mut x.common.location);
            for f in [&mut x.bot_token, &mut x.signing_secret]
                .into_iter()
                .flatten()
            {
                clear(&mut f.location);
            }
            for t in &mut x.team_bot_tokens {
                clear(&mut t.bot_token.location);
            }
        }
        for x in &mut c.telegram {
            clear(&mut x.common.location);
            for f in [&mut x.bot_token, &mut x.secret_token]
                .into_iter()
                .flatten()
            {
                clear(&mut f.location);
            }
        }
        for x in &mut c.external {
            clear(&mut x.common.location);
            if let Some(f) = &mut x.shared_token {
                clear(&mut f.location);
            }
            if let Some(cp) = &mut x.child_process {
                clear(&mut cp.location);
            }
        }
        format!("{c:#?}")
    }

    #[test]
    fn valid_fixture_as_json_gives_the_same_config() {
        let text = include_str!("../../../tests/fixtures/valid_all_kinds.toml");
        let from_toml = parse_str("valid_all_kinds.toml", text);
        let doc = toml_to_json(text);
        let from_json = parse_json("valid_all_kinds.json", &doc);
        assert!(
            from_toml.diagnostics.iter().all(is_unserved),
            "{:?}",
            from_toml.diagnostics
        );
        assert!(
            from_json.diagnostics.iter().all(is_unserved),
            "{:?}",
            from_json.diagnostics
        );
        assert_eq!(from_json.config.len(), 4);
        assert_eq!(
            without_positions(&from_toml.config),
            without_positions(&from_json.config)
        );
        // Positions are pointers in the JSON form, lines in the TOML form.
        let http = &from_json.config.http[0];
        assert_eq!(
            http.common.location.pointer.as_deref(),
            Some("/http_connectors/0")
        );
        assert_eq!(
            http.bearer_token
                .as_ref()
                .and_then(|f| f.location.pointer.as_deref()),
            Some("/http_connectors/0/bearer_token_env")
        );
        let cp = from_json.config.external[0].child_process.as_ref();
        assert_eq!(
            cp.and_then(|cp| cp.location.pointer.as_deref()),
            Some("/external_connectors/0/child_process")
        );
        assert_eq!(from_toml.config.http[0].common.location.line, 2);
    }

    #[test]
    fn one_connector_document() {
        let known = parse_str(
            "known.toml",
            "[[telegram_connectors]]\nname = \"bot\"\ningress_mode = \"polling\"\nbot_token_env = \"B\"\nallowed_chat_ids = [1]\n",
        );
        assert!(
            known.diagnostics.iter().all(is_unserved),
            "{:?}",
            known.diagnostics
        );
        let doc = serde_json::json!({
            "name": "side",
            "platform": "discord",
            "base_url": "https://sidecar.example.com",
            "shared_token_secret_ref": "connectors.external.side.shared_token",
            "additional_reply_targets": [
                {"plugin": "telegram", "address": "{\"connector\":\"bot\",\"chat_id\":1}"},
                {"plugin": "telegram", "address": "{\"connector\":\"bot\",\"chat_id\":2}"},
                {"plugin": "external", "address": "{\"connector\":\"side\",\"route\":{}}"},
                {"plugin": "slack", "address": "{\"connector\":\"none\",\"channel_id\":\"C1\"}"},
            ],
            "mode": "remote_htp",
        });
        let loaded =
            parse_connector_json("<runtime>", ConnectorKind::External, &doc, &known.config);
        let found: Vec<(&str, &str)> = loaded
            .diagnostics
            .iter()
            .filter(|d| !is_unserved(d))
            .map(|d| (d.pointer.as_deref().unwrap_or("-"), d.message.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "/additional_reply_targets/1/address",
                    "chat is not in telegram connector `bot`'s allowed_chat_ids"
                ),
                (
                    "/additional_reply_targets/3/address",
                    "names slack connector `none`, which this file does not declare"
                ),
                ("/mode", "unknown mode `remote_htp`"),
            ]
        );
        assert!(loaded
            .diagnostics
            .iter()
            .all(|d| d.connector.as_deref() == Some("side")));

        let ok = serde_json::json!({"name": "hook", "allow_unauthenticated_ingress": true});
        let loaded =
            parse_connector_json("<runtime>", ConnectorKind::Http, &ok, &Config::default());
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        assert_eq!(loaded.config.http.len(), 1);
        assert_eq!(
            loaded.config.http[0].common.location.pointer.as_deref(),
            Some("")
        );

        let loaded = parse_connector_json(
            "<runtime>",
            ConnectorKind::Slack,
            &serde_json::json!("x"),
            &Config::default(),
        );
        assert_eq!(
            loaded.diagnostics[0].to_string(),
            "error: <runtime>#: slack_connectors[#1]: expected a table, found a string"
        );
    }
}
