//! Secrets: the [`Secret`] value type that cannot be printed by accident, the sources a connector
//! field can name ([`SecretSource`]) and [`resolve`], reading values from files, stdin and the
//! environment, generation, ref validation and [`constant_time_eq`]. The encrypted secret store
//! of the state root ([`SecretStore`], SPEC §4) is in `store` and re-exported here.
//!
//! Nothing here prints, and no error message contains a secret value: a [`Secret`] has no
//! `Display` and a redacted `Debug`. This module never touches the cipher or the master key
//! (that is `store`'s job) and contains no SQL.

mod store;

pub use store::{
    Rotation, SecretStore, SlotInfo, MASTER_KEY_ENV, MASTER_KEY_FILE, MASTER_KEY_FILE_ENV,
};

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

use base64::Engine as _;
use rand::TryRngCore as _;

use crate::store::StoreError;

/// Longest accepted secret ref.
pub const MAX_SECRET_REF_LEN: usize = 200;

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

/// Errors resolving, reading or writing secrets. Messages name the variable, file or slot and
/// say what to do; they never contain a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable `{var}` is not set; export it with the secret value")]
    EnvMissing { var: String },
    #[error(
        "environment variable `{var}` is empty or only whitespace; set it to the secret value"
    )]
    EnvEmpty { var: String },
    #[error("the inline secret value is empty or only whitespace; write a value or use an `_env` or `_secret_ref` field")]
    InlineEmpty,
    #[error("secret slot `{secret_ref}` does not exist in the state root; create it with `kheishctl rotate-secret {secret_ref} --stdin`")]
    SlotMissing { secret_ref: String },
    #[error("secret slot `{secret_ref}` holds an empty value; write a new one with `kheishctl rotate-secret {secret_ref} --stdin`")]
    SlotEmpty { secret_ref: String },
    #[error("secret slot `{secret_ref}` is referenced but the state root has no secret store yet; create the slot with `kheishctl rotate-secret {secret_ref} --stdin` using the same --state-root")]
    NoStateRoot { secret_ref: String },
    #[error("`{secret_ref}` is not a valid secret ref: {reason}")]
    InvalidRef {
        secret_ref: String,
        reason: &'static str,
    },
    #[error("the new value for secret slot `{secret_ref}` is empty or only whitespace; nothing was written")]
    EmptyValue { secret_ref: String },
    #[error("the secret store was written with a different master key; set KHEISH_MASTER_KEY or KHEISH_MASTER_KEY_FILE to the key used before")]
    WrongMasterKey,
    #[error("secret slot `{secret_ref}` cannot be decrypted with this master key: the secret store was written with a different master key (set KHEISH_MASTER_KEY or KHEISH_MASTER_KEY_FILE to the key used before) or the slot was altered")]
    Undecryptable { secret_ref: String },
    #[error("the secret store holds values but no master key is available; set KHEISH_MASTER_KEY or KHEISH_MASTER_KEY_FILE to the key used before, or restore `{path}`")]
    MasterKeyMissing { path: String },
    /// The configured master key is malformed. `origin` names the variable or file.
    #[error("master key from {origin}: {problem}")]
    MasterKey { origin: String, problem: String },
    #[error("cannot read the master key file `{path}`")]
    MasterKeyIo {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the secret value from {what}")]
    Read {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the secret value from {what} is not valid UTF-8; secrets must be text")]
    NotUtf8 { what: String },
    #[error("cannot get random bytes from the operating system")]
    Random {
        #[source]
        source: rand::rand_core::OsError,
    },
    #[error("cannot encrypt the value for secret slot `{secret_ref}`")]
    Encrypt { secret_ref: String },
    #[error("cannot open the secret store")]
    Store(#[source] StoreError),
}

impl From<StoreError> for SecretError {
    fn from(e: StoreError) -> SecretError {
        SecretError::Store(e)
    }
}

impl SecretError {
    /// True when the state root, its database or the master key cannot be used (exit 4 in
    /// `exit::status_for`); false for a missing or bad value (exit 1).
    pub fn is_unavailable(&self) -> bool {
        match self {
            SecretError::Store(_) => true,
            SecretError::WrongMasterKey
            | SecretError::Undecryptable { .. }
            | SecretError::MasterKeyMissing { .. }
            | SecretError::MasterKey { .. }
            | SecretError::MasterKeyIo { .. }
            | SecretError::Random { .. }
            | SecretError::Encrypt { .. } => true,
            SecretError::EnvMissing { .. }
            | SecretError::EnvEmpty { .. }
            | SecretError::InlineEmpty
            | SecretError::SlotMissing { .. }
            | SecretError::SlotEmpty { .. }
            | SecretError::NoStateRoot { .. }
            | SecretError::InvalidRef { .. }
            | SecretError::EmptyValue { .. }
            | SecretError::Read { .. }
            | SecretError::NotUtf8 { .. } => false,
        }
    }
}

/// Checks a secret ref: 1..=200 characters of `[A-Za-z0-9._-]`.
pub fn validate_secret_ref(secret_ref: &str) -> Result<(), SecretError> {
    let reason = if secret_ref.is_empty() {
        Some("it is empty")
    } else if secret_ref.len() > MAX_SECRET_REF_LEN {
        Some("it is longer than 200 characters")
    } else if !secret_ref
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("use only letters, digits, `.`, `_` and `-` (e.g. `connectors.http.orders.hmac_secret`)")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(SecretError::InvalidRef {
            // Cap what we echo: an operator who pasted a value as REF should not see it in full.
            secret_ref: secret_ref.chars().take(64).collect(),
            reason,
        }),
    }
}

/// Compares two byte strings in time that depends only on their lengths (tokens, signatures).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    // `subtle` returns false early for different lengths; lengths are not secret here.
    a.ct_eq(b).into()
}

/// Removes exactly one trailing `\n` or `\r\n` (file and stdin input, SPEC §1.3).
pub fn strip_one_newline(text: &str) -> &str {
    text.strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text)
}

/// Reads a secret value from a file, stripping one trailing newline.
pub fn read_value_file(path: &Path) -> Result<Secret, SecretError> {
    let what = format!("file `{}`", path.display());
    let bytes = fs::read(path).map_err(|source| SecretError::Read {
        what: what.clone(),
        source,
    })?;
    value_from_bytes(bytes, what)
}

/// Reads a secret value from a reader (standard input), stripping one trailing newline.
pub fn read_value(mut reader: impl Read, what: &str) -> Result<Secret, SecretError> {
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|source| SecretError::Read {
            what: what.to_string(),
            source,
        })?;
    value_from_bytes(bytes, what.to_string())
}

fn value_from_bytes(bytes: Vec<u8>, what: String) -> Result<Secret, SecretError> {
    let text = String::from_utf8(bytes).map_err(|_| SecretError::NotUtf8 { what })?;
    Ok(Secret::new(strip_one_newline(&text).to_string()))
}

/// Reads a secret value from an environment variable through `env`; missing and blank values are
/// errors naming the variable.
pub fn value_from_env(
    var: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, SecretError> {
    let value = env(var).ok_or_else(|| SecretError::EnvMissing {
        var: var.to_string(),
    })?;
    let secret = Secret::new(value);
    if secret.is_blank() {
        return Err(SecretError::EnvEmpty {
            var: var.to_string(),
        });
    }
    Ok(secret)
}

/// A new random value: `n_bytes` from the OS CSPRNG, URL-safe base64 without padding.
pub fn generate(n_bytes: usize) -> Result<Secret, SecretError> {
    let bytes = random_bytes(n_bytes)?;
    Ok(Secret::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
    ))
}

fn random_bytes(n: usize) -> Result<Vec<u8>, SecretError> {
    let mut buf = vec![0u8; n];
    rand::rngs::OsRng
        .try_fill_bytes(&mut buf)
        .map_err(|source| SecretError::Random { source })?;
    Ok(buf)
}

/// Resolves a connector secret source to its value. `env` looks up environment variables (pass
/// `|k| std::env::var(k).ok()` in production, a map in tests). `store` is `None` when there is no
/// state root; a store ref then fails with [`SecretError::NoStateRoot`]. A blank value is an error.
pub fn resolve(
    source: &SecretSource,
    store: Option<&SecretStore>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, SecretError> {
    match source {
        SecretSource::StoreRef(secret_ref) => {
            validate_secret_ref(secret_ref)?;
            let store = store.ok_or_else(|| SecretError::NoStateRoot {
                secret_ref: secret_ref.clone(),
            })?;
            let secret = store
                .get(secret_ref)?
                .ok_or_else(|| SecretError::SlotMissing {
                    secret_ref: secret_ref.clone(),
                })?;
            if secret.is_blank() {
                return Err(SecretError::SlotEmpty {
                    secret_ref: secret_ref.clone(),
                });
            }
            Ok(secret)
        }
        SecretSource::Env(var) => value_from_env(var, env),
        SecretSource::Inline(secret) => {
            if secret.is_blank() {
                return Err(SecretError::InlineEmpty);
            }
            Ok(secret.clone())
        }
    }
}

/// Test helpers shared by this module's tests and `store`'s: fixed master keys, an environment
/// from pairs, and a secret store opened under a given key.
#[cfg(test)]
mod test_support {
    use std::collections::HashMap;
    use std::path::Path;

    use super::{Secret, SecretError, SecretStore, MASTER_KEY_ENV};

    pub(super) const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    pub(super) const KEY_B: &str = "HxwdHhscGRoXGBUWExQREg8QDQ4LDAkKBwgFBgMEAQI=";

    pub(super) fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    pub(super) fn secret(s: &str) -> Secret {
        Secret::new(s.to_string())
    }

    pub(super) fn open_with_key(root: &Path, key: &str) -> Result<SecretStore, SecretError> {
        SecretStore::open_or_create_with(root, &env_of(&[(MASTER_KEY_ENV, key)]))
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", secret("hunter2")), "Secret(<redacted>)");
        assert!(secret(" \n").is_blank());
    }

    fn check_ref(secret_ref: &str, ok: bool) {
        assert_eq!(
            validate_secret_ref(secret_ref).is_ok(),
            ok,
            "{secret_ref:?}"
        );
    }

    #[test]
    fn secret_refs() {
        check_ref("connectors.http.orders.hmac_secret", true);
        check_ref("a-b_c.9", true);
        check_ref(&"x".repeat(200), true);
        check_ref(&"x".repeat(201), false);
        check_ref("", false);
        check_ref("a b", false);
        check_ref("a:b", false);
        check_ref("a/b", false);
        check_ref("é", false);
    }

    #[test]
    fn newline_stripping_removes_exactly_one() {
        assert_eq!(strip_one_newline("v\n"), "v");
        assert_eq!(strip_one_newline("v\r\n"), "v");
        assert_eq!(strip_one_newline("v\n\n"), "v\n");
        assert_eq!(strip_one_newline("v\r"), "v\r");
        assert_eq!(strip_one_newline("v"), "v");
        assert_eq!(strip_one_newline(" v \n"), " v ");
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn generated_values_are_url_safe_base64() {
        let a = generate(32).unwrap();
        let b = generate(32).unwrap();
        assert_eq!(a.expose().len(), 43);
        assert_ne!(a.expose(), b.expose());
        assert!(a
            .expose()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(generate(16).unwrap().expose().len(), 22);
    }

    #[test]
    fn resolve_uses_the_given_source() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open_with_key(tmp.path(), KEY_A).unwrap();
        store
            .rotate("slot.full", secret("from-store"), None, "test", 0)
            .unwrap();
        let env = env_of(&[("FULL", "from-env"), ("BLANK", " \t")]);

        let ok = |source: SecretSource, store: Option<&SecretStore>| {
            resolve(&source, store, &env).unwrap().expose().to_string()
        };
        let err = |source: SecretSource, store: Option<&SecretStore>| {
            resolve(&source, store, &env).unwrap_err()
        };

        assert_eq!(
            ok(SecretSource::StoreRef("slot.full".into()), Some(&store)),
            "from-store"
        );
        assert_eq!(
            ok(SecretSource::Env("FULL".into()), Some(&store)),
            "from-env"
        );
        assert_eq!(ok(SecretSource::Env("FULL".into()), None), "from-env");
        assert_eq!(ok(SecretSource::Inline(secret("inline")), None), "inline");

        assert!(matches!(
            err(SecretSource::StoreRef("slot.none".into()), Some(&store)),
            SecretError::SlotMissing { secret_ref } if secret_ref == "slot.none"
        ));
        assert!(matches!(
            err(SecretSource::StoreRef("slot.full".into()), None),
            SecretError::NoStateRoot { .. }
        ));
        assert!(matches!(
            err(SecretSource::StoreRef("bad ref".into()), Some(&store)),
            SecretError::InvalidRef { .. }
        ));
        assert!(matches!(
            err(SecretSource::Env("UNSET".into()), Some(&store)),
            SecretError::EnvMissing { var } if var == "UNSET"
        ));
        assert!(matches!(
            err(SecretSource::Env("BLANK".into()), None),
            SecretError::EnvEmpty { var } if var == "BLANK"
        ));
        assert!(matches!(
            err(SecretSource::Inline(secret("")), None),
            SecretError::InlineEmpty
        ));
        let msg = err(SecretSource::StoreRef("slot.none".into()), Some(&store)).to_string();
        assert_eq!(
            msg,
            "secret slot `slot.none` does not exist in the state root; create it with `kheishctl rotate-secret slot.none --stdin`"
        );
    }

    #[test]
    fn store_errors_are_unavailable() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, "x").unwrap();
        let err = open_with_key(&file.join("state"), KEY_A).unwrap_err();
        assert!(matches!(err, SecretError::Store(_)), "{err:?}");
        assert!(err.is_unavailable());
    }
}
