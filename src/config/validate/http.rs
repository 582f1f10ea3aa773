//! `http_connectors` (SPEC §2.1): their keys, and the authentication rules (a bearer token, or
//! a required HMAC signature with a secret and idempotency keys, or the explicit opt-in to
//! unauthenticated ingress).

use super::common::{has_any, COMMON_KEYS};
use super::refs::{Seen, TargetRef};
use super::walker::{Ctx, Table, Walker};
use crate::config::HttpConnector;

const HTTP_KEYS: &[&str] = &[
    "actor_id",
    "bearer_token",
    "bearer_token_env",
    "bearer_token_secret_ref",
    "hmac_secret",
    "hmac_secret_env",
    "hmac_secret_secret_ref",
    "require_hmac_signature",
    "signature_max_age_secs",
    "require_idempotency_key",
    "allow_payload_reply_targets",
    "default_reply_targets",
    "default_binding_keys",
];

impl Walker<'_> {
    pub(super) fn http(
        &mut self,
        ctx: &mut Ctx,
        t: &Table<'_, '_>,
        seen: &mut Seen,
        refs: &mut Vec<TargetRef>,
    ) -> Option<HttpConnector> {
        let common = self.common(ctx, t, seen, refs);
        self.unknown_keys(ctx, t, &[COMMON_KEYS, HTTP_KEYS]);
        let actor_id = self.nonblank(ctx, t, "actor_id");
        let bearer_token = self.secret(ctx, t, "bearer_token");
        let hmac_secret = self.secret(ctx, t, "hmac_secret");
        let require_hmac = self.boolean_at(ctx, t, "require_hmac_signature");
        let require_hmac_signature = require_hmac.as_ref().is_some_and(|(b, _)| *b);
        let signature_max_age_secs = self.int_range(ctx, t, "signature_max_age_secs", 300, 1, 3600);
        let require_idem = self.boolean_at(ctx, t, "require_idempotency_key");
        let require_idempotency_key = require_idem.as_ref().is_none_or(|(b, _)| *b);
        let allow_payload_reply_targets =
            self.boolean(ctx, t, "allow_payload_reply_targets", false);
        let unauth = self.boolean(ctx, t, "allow_unauthenticated_ingress", false);

        if let Some((true, at)) = require_hmac {
            if hmac_secret.is_none() && !has_any(t, "hmac_secret") {
                self.err_help(
                    ctx,
                    &at,
                    "require_hmac_signature",
                    "requires an HMAC secret",
                    "set `hmac_secret_secret_ref` (or `hmac_secret_env`) for this connector",
                );
            }
            if !require_idempotency_key {
                let at = require_idem.map_or(at, |(_, a)| a);
                self.err_help(ctx, &at, "require_idempotency_key",
                    "must be true when require_hmac_signature = true (a signed request without an idempotency key could be replayed within the signature window)",
                    "remove `require_idempotency_key = false`");
            }
        }
        if hmac_secret.is_some() && !require_hmac_signature {
            let at = hmac_secret
                .as_ref()
                .map_or_else(|| ctx.start.clone(), |f| self.pos_of(t, &f.key));
            self.warn(ctx, &at, "hmac_secret",
                "an HMAC secret is configured but require_hmac_signature is false, so signatures are not checked".into(),
                "set `require_hmac_signature = true`, or remove the secret".into());
        }
        let authenticated =
            has_any(t, "bearer_token") || (require_hmac_signature && has_any(t, "hmac_secret"));
        if !authenticated && !unauth {
            self.err_help(ctx, &ctx.start, "",
                "accepts unauthenticated requests without the explicit opt-in",
                "configure `bearer_token_secret_ref` / `bearer_token_env`, or `require_hmac_signature = true` with an HMAC secret; or set `allow_unauthenticated_ingress = true` if anonymous senders are intended");
        }
        Some(HttpConnector {
            common: common?,
            actor_id,
            bearer_token,
            hmac_secret,
            require_hmac_signature,
            signature_max_age_secs,
            require_idempotency_key,
            allow_payload_reply_targets,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::parse_str;
    use crate::config::validate::tests::{check, diags, OK_HTTP};

    #[test]
    fn minimal_http_is_valid() {
        let loaded = parse_str("t.toml", OK_HTTP);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        let c = &loaded.config.http[0];
        assert_eq!(c.signature_max_age_secs, 300);
        assert!(c.require_idempotency_key);
        assert_eq!(c.common.ingress_events_per_second, 60);
    }

    #[test]
    fn max_age_range() {
        check(
            &format!("{OK_HTTP}signature_max_age_secs = 0\n"),
            &[(
                "error",
                4,
                "http_connectors[orders].signature_max_age_secs",
                "must be between 1 and 3600 (got 0)",
            )],
        );
    }

    #[test]
    fn wrong_types() {
        check(
            &format!(
                "{OK_HTTP}require_idempotency_key = \"yes\"\ningress_events_per_second = 1.5\n"
            ),
            &[
                (
                    "error",
                    4,
                    "http_connectors[orders].require_idempotency_key",
                    "expected a boolean",
                ),
                (
                    "error",
                    5,
                    "http_connectors[orders].ingress_events_per_second",
                    "expected an integer, found a float",
                ),
            ],
        );
    }

    #[test]
    fn hmac_rules() {
        check(
            "[[http_connectors]]\nname = \"h\"\nrequire_hmac_signature = true\n",
            &[
                ("error", 1, "http_connectors[h]", "unauthenticated"),
                (
                    "error",
                    3,
                    "http_connectors[h].require_hmac_signature",
                    "requires an HMAC secret",
                ),
            ],
        );
        check("[[http_connectors]]\nname = \"h\"\nrequire_hmac_signature = true\nhmac_secret_env = \"H\"\nrequire_idempotency_key = false\n", &[
            ("error", 5, "http_connectors[h].require_idempotency_key", "must be true"),
        ]);
        // HMAC-only counts as authenticated.
        assert!(diags("[[http_connectors]]\nname = \"h\"\nrequire_hmac_signature = true\nhmac_secret_env = \"H\"\n").is_empty());
    }

    #[test]
    fn unauthenticated_needs_opt_in() {
        check(
            "[[http_connectors]]\nname = \"open\"\n",
            &[("error", 1, "http_connectors[open]", "unauthenticated")],
        );
        assert!(diags(
            "[[http_connectors]]\nname = \"open\"\nallow_unauthenticated_ingress = true\n"
        )
        .is_empty());
    }
}
