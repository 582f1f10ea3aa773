//! `external_connectors` (SPEC §2.4): their keys, `platform` and `mode`, the `base_url` rules
//! per mode (loopback for a child process, public unless allowed for remote HTTP), the
//! `child_process` block with its `env` and `credential_slots` tables (not the six names the
//! daemon sets itself), and
//! the shared-token rule.

use super::common::{check_secret_ref, has_any, valid_env_name, COMMON_KEYS};
use super::refs::{Seen, TargetRef};
use super::walker::{Ctx, Pos, Table, Walker};
use crate::config::{ChildProcess, ExternalConnector, ExternalMode};

const EXTERNAL_KEYS: &[&str] = &[
    "platform",
    "mode",
    "base_url",
    "allow_private_network",
    "shared_token",
    "shared_token_env",
    "shared_token_secret_ref",
    "include_self_output",
    "additional_reply_targets",
    "additional_binding_keys",
    "child_process",
];
const CHILD_PROCESS_KEYS: &[&str] = &["command", "args", "env", "credential_slots", "working_dir"];

/// Environment names the daemon sets for sidecars itself (SPEC §2.4, §10.6). Other
/// `KHEISH_EXTERNAL_CONNECTOR_*` names are the sidecar's own settings (the Kheish sidecar SDK
/// reads e.g. `KHEISH_EXTERNAL_CONNECTOR_INSTANCE_ID` and `…_TEST_MODE`) and are allowed.
pub const RESERVED_ENV: [&str; 6] = [
    "KHEISH_EXTERNAL_CONNECTOR_NAME",
    "KHEISH_EXTERNAL_CONNECTOR_BASE_URL",
    "KHEISH_EXTERNAL_CONNECTOR_DAEMON_BASE_URL",
    "KHEISH_EXTERNAL_CONNECTOR_SHARED_TOKEN",
    "KHEISH_EXTERNAL_CONNECTOR_CREDENTIAL_TOKEN",
    "KHEISH_EXTERNAL_CONNECTOR_CREDENTIAL_KEYS_JSON",
];

impl Walker<'_> {
    pub(super) fn external(
        &mut self,
        ctx: &mut Ctx,
        t: &Table<'_, '_>,
        seen: &mut Seen,
        refs: &mut Vec<TargetRef>,
    ) -> Option<ExternalConnector> {
        let common = self.common(ctx, t, seen, refs);
        self.unknown_keys(ctx, t, &[COMMON_KEYS, EXTERNAL_KEYS]);
        let platform = self.nonblank(ctx, t, "platform");
        if platform.is_none() && !t.has("platform") {
            self.err_help(
                ctx,
                &ctx.start,
                "platform",
                "missing required field",
                "add e.g. `platform = \"discord\"`",
            );
        }
        let mode = match self.string(ctx, t, "mode") {
            Some((m, _)) if m == "remote_http" => Some(ExternalMode::RemoteHttp),
            Some((m, _)) if m == "child_process" => Some(ExternalMode::ChildProcess),
            Some((m, at)) => {
                self.err_help(
                    ctx,
                    &at,
                    "mode",
                    format!("unknown mode `{m}`"),
                    "use \"remote_http\" or \"child_process\"",
                );
                None
            }
            None => Some(ExternalMode::RemoteHttp),
        };
        let allow_private_network = self.boolean(ctx, t, "allow_private_network", false);
        let shared_token = self.secret(ctx, t, "shared_token");
        let include_self_output = self.boolean(ctx, t, "include_self_output", true);
        let unauth = self.boolean(ctx, t, "allow_unauthenticated_ingress", false);
        let child_process = self.child_process(ctx, t);

        let base_url = self.string(ctx, t, "base_url");
        if base_url.is_none() && !t.has("base_url") {
            self.err_help(
                ctx,
                &ctx.start,
                "base_url",
                "missing required field",
                "add e.g. `base_url = \"http://127.0.0.1:8787\"`",
            );
        }
        if let (Some((raw, at)), Some(mode)) = (&base_url, mode) {
            self.check_base_url(ctx, raw, at, mode, allow_private_network);
        }
        match mode {
            Some(ExternalMode::RemoteHttp) if t.has("child_process") => {
                let at = self.pos_of(t, "child_process");
                self.err_help(
                    ctx,
                    &at,
                    "child_process",
                    "a remote_http connector must not have a child_process block",
                    "set `mode = \"child_process\"`, or remove the block",
                );
            }
            Some(ExternalMode::ChildProcess) if !t.has("child_process") => {
                let at = self.pos_of(t, "mode");
                self.err_help(
                    ctx,
                    &at,
                    "child_process",
                    "child_process mode requires an [external_connectors.child_process] block",
                    "add the block with at least `command = \"...\"`",
                );
            }
            _ => {}
        }
        if !has_any(t, "shared_token") && !unauth {
            self.err_help(ctx, &ctx.start, "",
                "has no shared token and no explicit opt-in to unauthenticated ingress",
                "set `shared_token_secret_ref` (or `shared_token_env`); or `allow_unauthenticated_ingress = true`");
        }
        Some(ExternalConnector {
            common: common?,
            platform: platform?,
            mode: mode?,
            base_url: base_url?.0.trim().to_string(),
            allow_private_network,
            shared_token,
            include_self_output,
            child_process,
        })
    }

    fn check_base_url(
        &mut self,
        ctx: &Ctx,
        raw: &str,
        at: &Pos,
        mode: ExternalMode,
        allow_private: bool,
    ) {
        const HELP: &str = "use an absolute http(s) URL such as `https://sidecar.example.com`";
        let url = match crate::model::reply::check_http_url(raw) {
            Ok(url) => url,
            Err(e) => {
                self.err_help(ctx, at, "base_url", format!("invalid URL: {e}"), HELP);
                return;
            }
        };
        // check_http_url refuses a URL without a host; this only keeps the walker total.
        let Some(host) = url.host() else {
            self.err_help(ctx, at, "base_url", "invalid URL: has no host", HELP);
            return;
        };
        match mode {
            ExternalMode::ChildProcess => {
                if !crate::net::is_loopback_host(&host) {
                    self.err_help(ctx, at, "base_url", "a child_process sidecar must listen on loopback",
                        "use `http://127.0.0.1:PORT` (the daemon starts the sidecar on this machine)");
                }
                if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
                    self.err_help(
                        ctx,
                        at,
                        "base_url",
                        "a child_process base_url must not have a path, query or fragment",
                        "use only scheme, host and port, e.g. `http://127.0.0.1:8787`",
                    );
                }
            }
            ExternalMode::RemoteHttp => {
                let private = match &host {
                    url::Host::Domain(d) => crate::net::is_local_or_metadata_name(d),
                    url::Host::Ipv4(v4) => !crate::net::is_public_ip((*v4).into()),
                    url::Host::Ipv6(v6) => !crate::net::is_public_ip((*v6).into()),
                };
                if private && !allow_private {
                    self.err_help(
                        ctx,
                        at,
                        "base_url",
                        "points at a loopback, private, link-local, metadata or otherwise non-public address",
                        "set `allow_private_network = true` for a trusted local sidecar",
                    );
                }
                if url.query().is_some() || url.fragment().is_some() {
                    self.err(ctx, at, "base_url", "must not have a query or fragment");
                }
            }
        }
    }

    fn child_process(&mut self, ctx: &Ctx, t: &Table<'_, '_>) -> Option<ChildProcess> {
        let cp = self.sub_table(ctx, t, "child_process")?;
        self.unknown_keys(ctx, &cp, &[CHILD_PROCESS_KEYS]);
        let command = self.nonblank(ctx, &cp, "command");
        if command.is_none() && !cp.has("command") {
            self.err_help(
                ctx,
                &cp.pos,
                &cp.path("command"),
                "missing required field",
                "add `command = \"...\"`",
            );
        }
        let args = match self.array(ctx, &cp, "args") {
            Some(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(s) => out.push(s.to_string()),
                        None => self.err(
                            ctx,
                            &item.pos,
                            &format!("{}[{i}]", cp.path("args")),
                            format!("expected a string, found {}", item.type_name()),
                        ),
                    }
                }
                out
            }
            None => Vec::new(),
        };
        let env = self.env_table(ctx, &cp, "env", false);
        let credential_slots = self.env_table(ctx, &cp, "credential_slots", true);
        for (key, _) in &credential_slots {
            if env.iter().any(|(k, _)| k == key) {
                let at = self.pos_of(&cp, "credential_slots");
                self.err_help(
                    ctx,
                    &at,
                    &cp.path("credential_slots"),
                    format!("`{key}` is set both in env and in credential_slots"),
                    "keep it in credential_slots only, so the value comes from the secret store",
                );
            }
        }
        let working_dir = self.nonblank(ctx, &cp, "working_dir").map(Into::into);
        Some(ChildProcess {
            command: command?,
            args,
            env,
            credential_slots,
            working_dir,
            location: self.location(&cp.pos),
        })
    }

    /// `env` (values are plain strings) or `credential_slots` (values are secret refs).
    fn env_table(
        &mut self,
        ctx: &Ctx,
        t: &Table<'_, '_>,
        key: &str,
        refs: bool,
    ) -> Vec<(String, String)> {
        let Some(inner) = self.sub_table(ctx, t, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for name in inner.keys() {
            let field = inner.path(name);
            if !valid_env_name(name) {
                self.err(
                    ctx,
                    &inner.key_pos(name),
                    &field,
                    format!("`{name}` is not a valid environment variable name"),
                );
                continue;
            }
            if RESERVED_ENV.contains(&name) {
                self.err_help(
                    ctx,
                    &inner.key_pos(name),
                    &field,
                    format!("`{name}` is reserved: the daemon sets it for the sidecar itself"),
                    "remove it, or choose another name",
                );
                continue;
            }
            let Some(v) = inner.get(name) else { continue };
            let Some(value) = v.as_str() else {
                self.err(
                    ctx,
                    &v.pos,
                    &field,
                    format!("expected a string, found {}", v.type_name()),
                );
                continue;
            };
            if refs {
                if let Err(e) = check_secret_ref(value) {
                    self.err(ctx, &v.pos, &field, format!("secret ref {e}"));
                    continue;
                }
            }
            out.push((name.to_string(), value.to_string()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::parse_str;
    use crate::config::validate::tests::{check, diags};
    use crate::config::ExternalMode;

    #[test]
    fn needs_a_shared_token_or_opt_in() {
        check("[[external_connectors]]\nname = \"e\"\nplatform = \"p\"\nbase_url = \"https://example.com\"\n",
            &[("error", 1, "external_connectors[e]", "no shared token")]);
    }

    #[test]
    fn external_modes() {
        let head = "[[external_connectors]]\nname = \"d\"\nplatform = \"discord\"\nallow_unauthenticated_ingress = true\n";
        check(&format!("{head}mode = \"child_process\"\nbase_url = \"http://10.0.0.5:8787\"\n[external_connectors.child_process]\ncommand = \"python3\"\n"),
            &[("error", 6, "external_connectors[d].base_url", "must listen on loopback")]);
        check(&format!("{head}mode = \"child_process\"\nbase_url = \"http://127.0.0.1:8787/x\"\n[external_connectors.child_process]\ncommand = \"python3\"\n"),
            &[("error", 6, "external_connectors[d].base_url", "path")]);
        check(
            &format!("{head}mode = \"child_process\"\nbase_url = \"http://127.0.0.1:8787\"\n"),
            &[(
                "error",
                5,
                "external_connectors[d].child_process",
                "requires",
            )],
        );
        check(
            &format!("{head}base_url = \"http://127.0.0.1:8787\"\n"),
            &[("error", 5, "external_connectors[d].base_url", "non-public")],
        );
        // A cloud metadata service by name, whatever it would resolve to here.
        check(
            &format!("{head}base_url = \"http://metadata.google.internal:8080\"\n"),
            &[("error", 5, "external_connectors[d].base_url", "metadata")],
        );
        assert!(diags(&format!(
            "{head}base_url = \"http://127.0.0.1:8787\"\nallow_private_network = true\n"
        ))
        .is_empty());
        check(&format!("{head}base_url = \"http://127.0.0.1:1\"\nallow_private_network = true\n[external_connectors.child_process]\ncommand = \"x\"\n"),
            &[("error", 7, "external_connectors[d].child_process", "must not have a child_process block")]);
    }

    #[test]
    fn reserved_env_names() {
        let text = "[[external_connectors]]\nname = \"d\"\nplatform = \"discord\"\nallow_unauthenticated_ingress = true\nmode = \"child_process\"\nbase_url = \"http://127.0.0.1:8787\"\n[external_connectors.child_process]\ncommand = \"python3\"\nenv = { KHEISH_EXTERNAL_CONNECTOR_NAME = \"x\" }\ncredential_slots = { KHEISH_EXTERNAL_CONNECTOR_SHARED_TOKEN = \"a.b\" }\n";
        check(text, &[
            ("error", 9, "external_connectors[d].child_process.env.KHEISH_EXTERNAL_CONNECTOR_NAME", "reserved"),
            ("error", 10, "external_connectors[d].child_process.credential_slots.KHEISH_EXTERNAL_CONNECTOR_SHARED_TOKEN", "reserved"),
        ]);
        let head = "[[external_connectors]]\nname = \"d\"\nplatform = \"discord\"\nallow_unauthenticated_ingress = true\nmode = \"child_process\"\nbase_url = \"http://127.0.0.1:8787\"\n[external_connectors.child_process]\ncommand = \"python3\"\n";
        for (i, name) in super::RESERVED_ENV.iter().enumerate() {
            let table = if i % 2 == 0 {
                "env"
            } else {
                "credential_slots"
            };
            check(
                &format!("{head}{table} = {{ {name} = \"a.b\" }}\n"),
                &[(
                    "error",
                    9,
                    &format!("external_connectors[d].child_process.{table}.{name}"),
                    "reserved",
                )],
            );
        }
    }

    #[test]
    fn other_kheish_external_connector_names_are_the_sidecars_own() {
        let text = "[[external_connectors]]\nname = \"d\"\nplatform = \"discord\"\nallow_unauthenticated_ingress = true\nmode = \"child_process\"\nbase_url = \"http://127.0.0.1:8787\"\n[external_connectors.child_process]\ncommand = \"python3\"\nenv = { KHEISH_EXTERNAL_CONNECTOR_TEST_MODE = \"1\", KHEISH_EXTERNAL_CONNECTOR_INSTANCE_ID = \"i-1\", KHEISH_EXTERNAL_CONNECTOR_DELIVERY_CAPTURE_PATH = \"/tmp/c\" }\ncredential_slots = { KHEISH_EXTERNAL_CONNECTOR_API_KEY = \"a.b\" }\n";
        let loaded = parse_str("t.toml", text);
        assert!(
            loaded
                .diagnostics
                .iter()
                .all(crate::config::validate::tests::is_unserved),
            "{:?}",
            loaded.diagnostics
        );
        let cp = loaded.config.external[0].child_process.clone().unwrap();
        assert_eq!(cp.env.len(), 3);
        assert_eq!(
            cp.credential_slots[0].0,
            "KHEISH_EXTERNAL_CONNECTOR_API_KEY"
        );
    }

    #[test]
    fn seed_example_is_valid() {
        let seed = r#"
[[external_connectors]]
name = "discord-main"
platform = "discord"
mode = "child_process"
base_url = "http://127.0.0.1:8787"
shared_token_secret_ref = "connectors.external.discord-main.shared_token"
include_self_output = true
ingress_events_per_second = 100

[external_connectors.session_policy]
create_if_missing = true
credential_scope.route_allow = ["openai"]

[external_connectors.child_process]
command = "python3"
args = ["connectors/python/run_connector.py", "discord"]

[external_connectors.child_process.env]
DISCORD_REQUIRE_MENTION = "true"

[external_connectors.child_process.credential_slots]
DISCORD_BOT_TOKEN = "connectors.external.discord-main.bot_token"
"#;
        let loaded = parse_str("seed.toml", seed);
        // External connectors are served: the seed draws no diagnostic at all, not even the
        // "not served by this build" warning.
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        let c = &loaded.config.external[0];
        assert_eq!(c.mode, ExternalMode::ChildProcess);
        assert!(c.common.session_policy.create_if_missing);
        assert_eq!(
            c.common.session_policy.credential_scope["route_allow"],
            serde_json::json!(["openai"])
        );
        let cp = c.child_process.as_ref().unwrap();
        assert_eq!(
            cp.credential_slots,
            vec![(
                "DISCORD_BOT_TOKEN".to_string(),
                "connectors.external.discord-main.bot_token".to_string()
            )]
        );
    }
}
