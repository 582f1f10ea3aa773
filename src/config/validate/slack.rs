//! `slack_connectors` (SPEC §2.2): their keys, the allowlists, `allowed_file_hosts` as bare host
//! names, `team_bot_tokens` (one per team), and the signing-secret and bot-token rules.

use std::collections::HashMap;

use super::common::{has_any, COMMON_KEYS};
use super::refs::{Seen, TargetRef};
use super::walker::{Ctx, Pos, Table, Walker};
use crate::config::{SlackConnector, TeamBotToken};

const SLACK_KEYS: &[&str] = &[
    "bot_token",
    "bot_token_env",
    "bot_token_secret_ref",
    "signing_secret",
    "signing_secret_env",
    "signing_secret_secret_ref",
    "api_base_url",
    "include_self_output",
    "additional_reply_targets",
    "additional_binding_keys",
    "allowed_api_app_ids",
    "allowed_enterprise_ids",
    "allowed_team_ids",
    "allowed_channel_ids",
    "allowed_file_hosts",
    "team_bot_tokens",
];
const TEAM_TOKEN_KEYS: &[&str] = &[
    "team_id",
    "bot_token",
    "bot_token_env",
    "bot_token_secret_ref",
];

impl Walker<'_> {
    pub(super) fn slack(
        &mut self,
        ctx: &mut Ctx,
        t: &Table<'_, '_>,
        seen: &mut Seen,
        refs: &mut Vec<TargetRef>,
    ) -> Option<SlackConnector> {
        let common = self.common(ctx, t, seen, refs);
        self.unknown_keys(ctx, t, &[COMMON_KEYS, SLACK_KEYS]);
        let bot_token = self.secret(ctx, t, "bot_token");
        let signing_secret = self.secret(ctx, t, "signing_secret");
        let api_base_url = self.api_base_url(ctx, t, "https://slack.com/api");
        let include_self = self.boolean_at(ctx, t, "include_self_output");
        let include_self_output = include_self.as_ref().is_none_or(|(b, _)| *b);
        let allowed_api_app_ids = self.string_list(ctx, t, "allowed_api_app_ids");
        let allowed_enterprise_ids = self.string_list(ctx, t, "allowed_enterprise_ids");
        let allowed_team_ids = self.string_list(ctx, t, "allowed_team_ids");
        let allowed_channel_ids = self.string_list(ctx, t, "allowed_channel_ids");
        let allowed_file_hosts = self.string_list(ctx, t, "allowed_file_hosts");
        for (i, host) in allowed_file_hosts.iter().enumerate() {
            if url::Host::parse(host).is_err() || host.contains(['/', ':', '@']) {
                // `i` counts the hosts kept by `string_list`, so after a skipped (blank or
                // non-string) entry it is not the array index; kept as the TOML output has it.
                let at = self
                    .array(ctx, t, "allowed_file_hosts")
                    .and_then(|a| a.get(i))
                    .map_or_else(|| ctx.start.clone(), |v| v.pos);
                self.err_help(
                    ctx,
                    &at,
                    &format!("allowed_file_hosts[{i}]"),
                    format!("`{host}` is not a host name"),
                    "write the bare host (files.example.com); downloads always use HTTPS",
                );
            }
        }
        let team_bot_tokens = self.team_bot_tokens(ctx, t);
        let unauth = self.boolean(ctx, t, "allow_unauthenticated_ingress", false);
        if !has_any(t, "signing_secret") && !unauth {
            self.err_help(ctx, &ctx.start, "",
                "has no signing secret and no explicit opt-in to unauthenticated ingress",
                "set `signing_secret_secret_ref` (or `signing_secret_env`); or `allow_unauthenticated_ingress = true` for local testing only");
        }
        if include_self_output && !has_any(t, "bot_token") && !has_any(t, "team_bot_tokens") {
            let at = include_self.map_or_else(|| ctx.start.clone(), |(_, a)| a);
            self.err_help(ctx, &at, "include_self_output",
                "replying in the source channel needs a bot token, but none is configured",
                "set `bot_token_secret_ref` / `bot_token_env` or `team_bot_tokens`, or `include_self_output = false`");
        }
        Some(SlackConnector {
            common: common?,
            bot_token,
            signing_secret,
            api_base_url,
            include_self_output,
            allowed_api_app_ids,
            allowed_enterprise_ids,
            allowed_team_ids,
            allowed_channel_ids,
            allowed_file_hosts,
            team_bot_tokens,
        })
    }

    /// `team_bot_tokens`: `{ team_id, bot_token* }` entries, one per team.
    fn team_bot_tokens(&mut self, ctx: &Ctx, t: &Table<'_, '_>) -> Vec<TeamBotToken> {
        let mut team_bot_tokens = Vec::new();
        let Some(items) = self.array(ctx, t, "team_bot_tokens") else {
            return team_bot_tokens;
        };
        let mut team_seen: HashMap<String, Pos> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("team_bot_tokens[{i}]");
            let Some(it) = item.as_table(format!("{field}.")) else {
                self.err(
                    ctx,
                    &item.pos,
                    &field,
                    format!("expected a table, found {}", item.type_name()),
                );
                continue;
            };
            self.unknown_keys(ctx, &it, &[TEAM_TOKEN_KEYS]);
            let team = self.string(ctx, &it, "team_id");
            let token = self.secret(ctx, &it, "bot_token");
            if token.is_none() && !has_any(&it, "bot_token") {
                self.err_help(
                    ctx,
                    &it.pos,
                    &it.path("bot_token"),
                    "missing bot token",
                    "set `bot_token_secret_ref`, `bot_token_env` or `bot_token`",
                );
            }
            match team {
                Some((team_id, at)) if !team_id.trim().is_empty() => {
                    if let Some(first) = team_seen.get(&team_id) {
                        let first = self.describe(first);
                        self.err_help(
                            ctx,
                            &at,
                            &it.path("team_id"),
                            format!("duplicate team_id `{team_id}` (first {first})"),
                            "each team may have one bot token; remove one entry",
                        );
                    } else {
                        team_seen.insert(team_id.clone(), at);
                    }
                    if let Some(bot_token) = token {
                        team_bot_tokens.push(TeamBotToken { team_id, bot_token });
                    }
                }
                Some((_, at)) => self.err(ctx, &at, &it.path("team_id"), "must not be empty"),
                None => {
                    if !it.has("team_id") {
                        self.err(ctx, &it.pos, &it.path("team_id"), "missing required field");
                    }
                }
            }
        }
        team_bot_tokens
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::tests::check;

    #[test]
    fn needs_a_signing_secret_or_opt_in() {
        check(
            "[[slack_connectors]]\nname = \"s\"\nbot_token_env = \"B\"\n",
            &[("error", 1, "slack_connectors[s]", "no signing secret")],
        );
    }

    #[test]
    fn slack_team_tokens() {
        let text = "[[slack_connectors]]\nname = \"s\"\nsigning_secret_env = \"S\"\nteam_bot_tokens = [\n { team_id = \"T1\", bot_token_env = \"A\" },\n { team_id = \"T1\", bot_token_env = \"B\" },\n { team_id = \"T2\" },\n]\n";
        check(
            text,
            &[
                (
                    "error",
                    6,
                    "slack_connectors[s].team_bot_tokens[1].team_id",
                    "duplicate team_id `T1`",
                ),
                (
                    "error",
                    7,
                    "slack_connectors[s].team_bot_tokens[2].bot_token",
                    "missing bot token",
                ),
            ],
        );
    }

    #[test]
    fn file_hosts_are_bare_host_names() {
        check(
            "[[slack_connectors]]\nname = \"s\"\nsigning_secret_env = \"S\"\nbot_token_env = \"B\"\nallowed_file_hosts = [\"files.example.com\", \"a/b\"]\n",
            &[(
                "error",
                5,
                "slack_connectors[s].allowed_file_hosts[1]",
                "`a/b` is not a host name",
            )],
        );
    }
}
