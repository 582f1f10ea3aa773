//! `telegram_connectors` (SPEC §2.3): their keys, `ingress_mode` (webhook or polling),
//! `allowed_chat_ids` as integers, and the bot-token and secret-token rules per mode.

use super::common::{has_any, COMMON_KEYS};
use super::refs::{Seen, TargetRef};
use super::walker::{Ctx, Table, Walker};
use crate::config::{TelegramConnector, TelegramMode};

const TELEGRAM_KEYS: &[&str] = &[
    "bot_token",
    "bot_token_env",
    "bot_token_secret_ref",
    "secret_token",
    "secret_token_env",
    "secret_token_secret_ref",
    "api_base_url",
    "ingress_mode",
    "polling_timeout_seconds",
    "allowed_chat_ids",
    "include_self_output",
    "additional_reply_targets",
    "additional_binding_keys",
];

impl Walker<'_> {
    pub(super) fn telegram(
        &mut self,
        ctx: &mut Ctx,
        t: &Table<'_, '_>,
        seen: &mut Seen,
        refs: &mut Vec<TargetRef>,
    ) -> Option<TelegramConnector> {
        let common = self.common(ctx, t, seen, refs);
        self.unknown_keys(ctx, t, &[COMMON_KEYS, TELEGRAM_KEYS]);
        let bot_token = self.secret(ctx, t, "bot_token");
        let secret_token = self.secret(ctx, t, "secret_token");
        let api_base_url = self.api_base_url(ctx, t, "https://api.telegram.org");
        let ingress_mode = match self.string(ctx, t, "ingress_mode") {
            Some((m, _)) if m == "webhook" => TelegramMode::Webhook,
            Some((m, _)) if m == "polling" => TelegramMode::Polling,
            Some((m, at)) => {
                self.err_help(
                    ctx,
                    &at,
                    "ingress_mode",
                    format!("unknown mode `{m}`"),
                    "use \"webhook\" or \"polling\"",
                );
                TelegramMode::Webhook
            }
            None => TelegramMode::Webhook,
        };
        let polling_timeout_seconds = self.int_range(
            ctx,
            t,
            "polling_timeout_seconds",
            30,
            1,
            i64::from(u32::MAX),
        );
        let mut allowed_chat_ids = Vec::new();
        if let Some(items) = self.array(ctx, t, "allowed_chat_ids") {
            for (i, item) in items.iter().enumerate() {
                match item.as_int() {
                    Some(id) => allowed_chat_ids.push(id),
                    None => self.err(
                        ctx,
                        &item.pos,
                        &format!("allowed_chat_ids[{i}]"),
                        format!("expected an integer chat id, found {}", item.type_name()),
                    ),
                }
            }
        }
        let include_self = self.boolean_at(ctx, t, "include_self_output");
        let include_self_output = include_self.as_ref().is_none_or(|(b, _)| *b);
        let unauth = self.boolean(ctx, t, "allow_unauthenticated_ingress", false);
        let has_bot = has_any(t, "bot_token");
        if ingress_mode == TelegramMode::Polling && !has_bot {
            let at = self.pos_of(t, "ingress_mode");
            self.err_help(
                ctx,
                &at,
                "ingress_mode",
                "polling needs a bot token",
                "set `bot_token_secret_ref` or `bot_token_env`",
            );
        }
        if ingress_mode == TelegramMode::Webhook && !has_any(t, "secret_token") && !unauth {
            self.err_help(ctx, &ctx.start, "",
                "webhook mode without a secret token and without the explicit opt-in to unauthenticated ingress",
                "set `secret_token_secret_ref` (or `secret_token_env`) and pass it to setWebhook; or `allow_unauthenticated_ingress = true`");
        }
        if include_self_output && !has_bot {
            let at = include_self.map_or_else(|| ctx.start.clone(), |(_, a)| a);
            self.err_help(
                ctx,
                &at,
                "include_self_output",
                "replying in the source chat needs a bot token, but none is configured",
                "set `bot_token_secret_ref` / `bot_token_env`, or `include_self_output = false`",
            );
        }
        Some(TelegramConnector {
            common: common?,
            bot_token,
            secret_token,
            api_base_url,
            ingress_mode,
            polling_timeout_seconds,
            allowed_chat_ids,
            include_self_output,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::tests::{check, diags};

    #[test]
    fn webhook_needs_a_secret_token_or_opt_in() {
        check(
            "[[telegram_connectors]]\nname = \"t\"\nbot_token_env = \"B\"\n",
            &[(
                "error",
                1,
                "telegram_connectors[t]",
                "without a secret token",
            )],
        );
    }

    #[test]
    fn polling_needs_a_bot_token() {
        check(
            "[[telegram_connectors]]\nname = \"t\"\ningress_mode = \"polling\"\ninclude_self_output = false\n",
            &[("error", 3, "telegram_connectors[t].ingress_mode", "polling needs a bot token")],
        );
        assert!(diags("[[telegram_connectors]]\nname = \"t\"\ningress_mode = \"polling\"\nbot_token_env = \"B\"\nallowed_chat_ids = [1, -100]\n").is_empty());
    }

    #[test]
    fn urls() {
        let tg = "[[telegram_connectors]]\nname = \"t\"\nbot_token_env = \"B\"\nsecret_token_env = \"S\"\n";
        for (url, fragment) in [
            ("https://user:pw@api.telegram.org", "credentials"),
            ("https://api.telegram.org?x=1", "query"),
            ("https://api.telegram.org#f", "fragment"),
            ("api.telegram.org", "absolute URL"),
        ] {
            check(
                &format!("{tg}api_base_url = \"{url}\"\n"),
                &[("error", 5, "telegram_connectors[t].api_base_url", fragment)],
            );
        }
    }
}
