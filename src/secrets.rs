//! Secrets: the [`Secret`] value type that cannot be printed by accident, the sources a connector
//! field can name ([`SecretSource`]), and (to come) the encrypted secret store.

use std::fmt;

/// A secret value. It has no `Display`, its `Debug` is redacted, and the bytes are reached only
/// through [`Secret::expose`], so a secret cannot reach a log line or error by accident.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value. Call sites are few and reviewed: signing, verifying, outbound auth headers.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the value is empty or only whitespace (SPEC §2: such a secret is an error).
    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where a connector's secret field takes its value from (SPEC §2, §4). When a config sets
/// several, the winner is chosen by precedence: store ref, then env var, then inline.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// A slot in the state root's secret store, e.g. `connectors.http.orders.bearer_token`.
    StoreRef(String),
    /// An environment variable name.
    Env(String),
    /// A value written in the config file itself.
    Inline(Secret),
}

impl SecretSource {
    /// `secret_ref`, `env` or `inline`: the `source` member of redacted views.
    pub fn kind(&self) -> &'static str {
        match self {
            SecretSource::StoreRef(_) => "secret_ref",
            SecretSource::Env(_) => "env",
            SecretSource::Inline(_) => "inline",
        }
    }
}
