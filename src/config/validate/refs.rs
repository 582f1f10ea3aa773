//! Cross-connector reply-target references (SPEC §8, §9.3, §11.2): a Slack, Telegram or
//! external reply target must name a declared connector of its plugin's kind and respect that
//! connector's allowlists. Checked after every connector of the document was read, against the
//! document's own connectors first and then any connectors the caller already knows.

use std::collections::{BTreeMap, HashMap};

use super::walker::{Ctx, Pos, Walker};
use crate::config::Config;
use crate::model::reply::{ChatId, TargetAddress};
use crate::model::ConnectorKind;

/// Every connector name read so far, per kind, with where it was first written (including
/// connectors that failed validation: a reference to them is not "undeclared").
pub(super) type Seen = BTreeMap<ConnectorKind, HashMap<String, Pos>>;

/// A reply target that names another connector, checked once every connector is known.
pub(super) struct TargetRef {
    pub(super) ctx: Ctx,
    pub(super) field: String,
    pub(super) at: Pos,
    pub(super) parsed: TargetAddress,
}

fn declares(config: &Config, kind: ConnectorKind, name: &str) -> bool {
    match kind {
        ConnectorKind::Http => config.http.iter().any(|c| c.common.name.as_str() == name),
        ConnectorKind::Slack => config.slack.iter().any(|c| c.common.name.as_str() == name),
        ConnectorKind::Telegram => config
            .telegram
            .iter()
            .any(|c| c.common.name.as_str() == name),
        ConnectorKind::External => config
            .external
            .iter()
            .any(|c| c.common.name.as_str() == name),
    }
}

impl Walker<'_> {
    /// Checks every reference; `configs` are searched in order (the document's own config
    /// first), `seen` holds the document's names.
    pub(super) fn check_refs(&mut self, refs: Vec<TargetRef>, configs: &[&Config], seen: &Seen) {
        for r in refs {
            self.check_target_ref(configs, seen, r);
        }
    }

    /// A chat/sidecar reply target must name a connector of its plugin's kind, and respect that
    /// connector's allowlists (SPEC §8, §9.3, §11.2).
    fn check_target_ref(&mut self, configs: &[&Config], seen: &Seen, r: TargetRef) {
        let (kind, name) = match &r.parsed {
            TargetAddress::Http(_) => return,
            TargetAddress::Slack(a) => (ConnectorKind::Slack, &a.connector),
            TargetAddress::Telegram(a) => (ConnectorKind::Telegram, &a.connector),
            TargetAddress::External(a) => (ConnectorKind::External, &a.connector),
        };
        let in_document = seen
            .get(&kind)
            .is_some_and(|names| names.contains_key(name.as_str()));
        if !in_document && !configs.iter().any(|c| declares(c, kind, name.as_str())) {
            self.err_help(
                &r.ctx,
                &r.at,
                &r.field,
                format!("names {kind} connector `{name}`, which this file does not declare"),
                format!("declare it in `[[{}]]` or fix the name", kind.section()),
            );
            return;
        }
        match &r.parsed {
            TargetAddress::Slack(a) => {
                let Some(c) = configs
                    .iter()
                    .find_map(|cfg| cfg.slack.iter().find(|c| c.common.name.as_str() == name))
                else {
                    return;
                };
                let checks = [
                    (
                        "channel",
                        Some(&a.channel_id),
                        &c.allowed_channel_ids,
                        "allowed_channel_ids",
                    ),
                    (
                        "team",
                        a.team_id.as_ref(),
                        &c.allowed_team_ids,
                        "allowed_team_ids",
                    ),
                    (
                        "enterprise",
                        a.enterprise_id.as_ref(),
                        &c.allowed_enterprise_ids,
                        "allowed_enterprise_ids",
                    ),
                ];
                for (what, value, allow, list) in checks {
                    if let Some(v) = value {
                        if !allow.is_empty() && !allow.contains(v) {
                            self.err_help(
                                &r.ctx,
                                &r.at,
                                &r.field,
                                format!("{what} `{v}` is not in slack connector `{name}`'s {list}"),
                                format!("add it to {list}, or target an allowed {what}"),
                            );
                        }
                    }
                }
            }
            TargetAddress::Telegram(a) => {
                let Some(c) = configs
                    .iter()
                    .find_map(|cfg| cfg.telegram.iter().find(|c| c.common.name.as_str() == name))
                else {
                    return;
                };
                if c.bot_token.is_none() {
                    // Nothing could ever send it (SPEC §11.2: checked when stored).
                    self.err_help(
                        &r.ctx,
                        &r.at,
                        &r.field,
                        format!("telegram connector `{name}` has no bot token, so it cannot send"),
                        format!("set `bot_token_secret_ref` or `bot_token_env` on `{name}`"),
                    );
                    return;
                }
                if c.allowed_chat_ids.is_empty() {
                    return;
                }
                let allowed =
                    matches!(a.chat_id, ChatId::Id(id) if c.allowed_chat_ids.contains(&id));
                if !allowed {
                    self.err_help(
                        &r.ctx,
                        &r.at,
                        &r.field,
                        format!("chat is not in telegram connector `{name}`'s allowed_chat_ids"),
                        "add the chat id to allowed_chat_ids, or target an allowed chat",
                    );
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::tests::check;

    #[test]
    fn reply_targets_and_allowlists() {
        let text = r#"[[http_connectors]]
name = "orders"
allow_unauthenticated_ingress = true
default_reply_targets = [
  { plugin = "http", address = "https://user:pw@example.com" },
  { plugin = "slack", address = '{"connector":"support","channel_id":"C9"}' },
  { plugin = "telegram", address = '{"connector":"nobody","chat_id":1}' },
  { plugin = "pigeon", address = "x" },
]
[[slack_connectors]]
name = "support"
signing_secret_env = "S"
bot_token_env = "B"
allowed_channel_ids = ["C1"]
"#;
        check(
            text,
            &[
                (
                    "error",
                    5,
                    "http_connectors[orders].default_reply_targets[0].address",
                    "credentials",
                ),
                (
                    "error",
                    6,
                    "http_connectors[orders].default_reply_targets[1].address",
                    "not in slack connector `support`'s allowed_channel_ids",
                ),
                (
                    "error",
                    7,
                    "http_connectors[orders].default_reply_targets[2].address",
                    "which this file does not declare",
                ),
                (
                    "error",
                    8,
                    "http_connectors[orders].default_reply_targets[3].plugin",
                    "unknown plugin",
                ),
            ],
        );
    }

    #[test]
    fn a_telegram_target_needs_a_connector_that_can_send() {
        let text = r#"[[http_connectors]]
name = "orders"
allow_unauthenticated_ingress = true
default_reply_targets = [
  { plugin = "telegram", address = '{"connector":"listener","chat_id":1}' },
  { plugin = "telegram", address = '{"connector":"bot","chat_id":1}' },
]
[[telegram_connectors]]
name = "listener"
secret_token_env = "S"
include_self_output = false
[[telegram_connectors]]
name = "bot"
secret_token_env = "S"
bot_token_env = "B"
"#;
        check(
            text,
            &[(
                "error",
                5,
                "http_connectors[orders].default_reply_targets[0].address",
                "telegram connector `listener` has no bot token, so it cannot send",
            )],
        );
    }
}
