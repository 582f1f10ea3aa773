//! Secrets: the [`Secret`] value type that cannot be printed by accident, the sources a connector
//! field can name ([`SecretSource`]) and [`resolve`], and the encrypted secret store of the state
//! root ([`SecretStore`], SPEC §4).
//!
//! The secret store seals every value with XChaCha20-Poly1305 under a 32-byte master key, with
//! the slot's ref as associated data (a ciphertext copied into another slot does not open). The
//! SQL lives in `store::secret_slots`, which only ever sees sealed bytes; this module owns the key
//! and the cipher. Nothing here prints, and no error message contains a secret value.
//!
//! The master key comes from `KHEISH_MASTER_KEY` (standard base64), or `KHEISH_MASTER_KEY_FILE`
//! (base64 text, or exactly 32 raw bytes), or else `STATE_ROOT/master.key`, generated with mode
//! 0600 on the first write (reads never create it). A check value sealed under the key is kept
//! in `store_meta`, so a different key is reported as such instead of producing garbage.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::TryRngCore as _;

use crate::exit::ExitStatus;
use crate::store::secret_slots::{Sealed, SlotWrite};
use crate::store::{Store, StoreError};

/// Environment variable holding the master key as standard base64.
pub const MASTER_KEY_ENV: &str = "KHEISH_MASTER_KEY";
/// Environment variable naming a file that holds the master key.
pub const MASTER_KEY_FILE_ENV: &str = "KHEISH_MASTER_KEY_FILE";
/// The generated master key's file name inside the state root.
pub const MASTER_KEY_FILE: &str = "master.key";
/// Longest accepted secret ref.
pub const MAX_SECRET_REF_LEN: usize = 200;

/// `store_meta` key of the master-key check value.
const KEY_CHECK_META: &str = "secret_store.key_check";
/// Plaintext sealed as the key check value.
const KEY_CHECK_LABEL: &[u8] = b"kheishctl secret store key check v1";
/// Associated data of the key check. It contains `:`, which no secret ref may, so it can never
/// equal a slot's associated data.
const KEY_CHECK_AAD: &[u8] = b"kheishctl:key-check";
/// XChaCha20 nonce length.
const NONCE_LEN: usize = 24;
/// Master key length.
const KEY_LEN: usize = 32;

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
    /// Exit status (SPEC §1.2): 4 when the state root, its database or the master key cannot be
    /// used; 1 for a missing or bad value.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            SecretError::Store(e) => e.exit_status(),
            SecretError::WrongMasterKey
            | SecretError::Undecryptable { .. }
            | SecretError::MasterKeyMissing { .. }
            | SecretError::MasterKey { .. }
            | SecretError::MasterKeyIo { .. }
            | SecretError::Random { .. }
            | SecretError::Encrypt { .. } => ExitStatus::Unavailable,
            SecretError::EnvMissing { .. }
            | SecretError::EnvEmpty { .. }
            | SecretError::InlineEmpty
            | SecretError::SlotMissing { .. }
            | SecretError::SlotEmpty { .. }
            | SecretError::NoStateRoot { .. }
            | SecretError::InvalidRef { .. }
            | SecretError::EmptyValue { .. }
            | SecretError::Read { .. }
            | SecretError::NotUtf8 { .. } => ExitStatus::Failure,
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

/// The 32-byte master key. Debug is redacted.
struct MasterKey([u8; KEY_LEN]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }

    fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Sealed, ()> {
        let nonce = random_bytes(NONCE_LEN).map_err(|_| ())?;
        let ciphertext = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| ())?;
        Ok(Sealed { nonce, ciphertext })
    }

    /// `None` when the tag does not verify (other key, other slot, altered bytes).
    fn open(&self, sealed: &Sealed, aad: &[u8]) -> Option<Vec<u8>> {
        if sealed.nonce.len() != NONCE_LEN {
            return None;
        }
        self.cipher()
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .ok()
    }
}

/// Parses key material: exactly 32 raw bytes, or base64 text (trimmed) of 32 bytes.
fn parse_key(bytes: &[u8], origin: &str, allow_raw: bool) -> Result<MasterKey, SecretError> {
    let problem = |problem: String| SecretError::MasterKey {
        origin: origin.to_string(),
        problem,
    };
    if allow_raw && bytes.len() == KEY_LEN {
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(bytes);
        return Ok(MasterKey(key));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| problem("is neither 32 raw bytes nor base64 text".into()))?
        .trim();
    if text.is_empty() {
        return Err(problem(
            "is empty; it must hold 32 random bytes in standard base64 (e.g. `head -c 32 /dev/urandom | base64`)".into(),
        ));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| {
            problem("is not valid base64; it must hold 32 random bytes in standard base64 (e.g. `head -c 32 /dev/urandom | base64`)".into())
        })?;
    let key: [u8; KEY_LEN] = decoded.as_slice().try_into().map_err(|_| {
        problem(format!(
            "decodes to {} bytes; the master key must be exactly 32 bytes",
            decoded.len()
        ))
    })?;
    Ok(MasterKey(key))
}

/// The key configured through the environment, if any.
fn configured_key(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<MasterKey>, SecretError> {
    match (env(MASTER_KEY_ENV), env(MASTER_KEY_FILE_ENV)) {
        (Some(_), Some(_)) => Err(SecretError::MasterKey {
            origin: format!("`{MASTER_KEY_ENV}` and `{MASTER_KEY_FILE_ENV}`"),
            problem: "both are set; set only one".into(),
        }),
        (Some(value), None) => {
            parse_key(value.as_bytes(), &format!("`{MASTER_KEY_ENV}`"), false).map(Some)
        }
        (None, Some(file)) => {
            let path = PathBuf::from(&file);
            let bytes = fs::read(&path).map_err(|source| SecretError::MasterKeyIo {
                path: file.clone(),
                source,
            })?;
            parse_key(
                &bytes,
                &format!("`{MASTER_KEY_FILE_ENV}` file `{file}`"),
                true,
            )
            .map(Some)
        }
        (None, None) => Ok(None),
    }
}

/// Reads `STATE_ROOT/master.key` if it exists.
fn root_key(root: &Path) -> Result<Option<MasterKey>, SecretError> {
    let path = root.join(MASTER_KEY_FILE);
    match fs::read(&path) {
        Ok(bytes) => parse_key(&bytes, &format!("`{}`", path.display()), true).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SecretError::MasterKeyIo {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Creates `STATE_ROOT/master.key` (0600) with a fresh key, or returns the one another process
/// created first. The file appears atomically with its full content (written to a private temp
/// file, then hard-linked into place, which fails if the name exists), so a concurrent reader
/// never sees a half-written key.
fn create_root_key(root: &Path) -> Result<MasterKey, SecretError> {
    let path = root.join(MASTER_KEY_FILE);
    let io_err = |p: &Path, source| SecretError::MasterKeyIo {
        path: p.display().to_string(),
        source,
    };
    let key: [u8; KEY_LEN] = random_bytes(KEY_LEN)?
        .try_into()
        .expect("random_bytes returns exactly the requested length");
    let suffix = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(6)?);
    let tmp = root.join(format!(
        ".{MASTER_KEY_FILE}.{}.{suffix}.tmp",
        std::process::id()
    ));
    let write_tmp = || -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        let mut text = base64::engine::general_purpose::STANDARD.encode(key);
        text.push('\n');
        file.write_all(text.as_bytes())?;
        file.sync_all()
    };
    let res = write_tmp().and_then(|()| fs::hard_link(&tmp, &path));
    // The temp name is ours alone; failing to remove it leaves a harmless 0600 file.
    let _ = fs::remove_file(&tmp);
    match res {
        Ok(()) => Ok(MasterKey(key)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            root_key(root)?.ok_or_else(|| io_err(&path, e))
        }
        Err(e) => Err(io_err(&path, e)),
    }
}

/// Production environment lookup for the master key variables. Non-UTF-8 values are passed on
/// lossily so that they fail base64 parsing with a clear message instead of being ignored.
fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// Slot metadata for listings; never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub secret_ref: String,
    /// Unix ms of the last rotation.
    pub updated_at_ms: i64,
    /// A previous value is stored (its grace window may already have ended).
    pub has_previous: bool,
    /// Unix ms until which the previous value may verify inbound requests.
    pub previous_valid_until_ms: Option<i64>,
}

/// What [`SecretStore::rotate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub secret_ref: String,
    /// Unix ms of the rotation (the `now_ms` given).
    pub rotated_at_ms: i64,
    /// Unix ms until which the previous value still verifies; `None` when none was kept.
    pub grace_until_ms: Option<i64>,
    /// The previous value was kept for the grace window (false for a new slot or no grace).
    pub previous_kept: bool,
    /// The slot did not exist before.
    pub created: bool,
}

/// The state root's encrypted secret store: a [`Store`] plus the master key.
pub struct SecretStore {
    store: Store,
    /// `None` only for a store opened read-only with no key configured and no `master.key`; any
    /// attempt to read a slot then fails with [`SecretError::MasterKeyMissing`].
    key: Option<MasterKey>,
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStore")
            .field("root", &self.store.root())
            .field("has_key", &self.key.is_some())
            .finish()
    }
}

impl SecretStore {
    /// Opens the secret store of an existing state root without creating anything; Ok(None)
    /// when there is no state root / no database.
    pub fn open_existing(state_root: &Path) -> Result<Option<SecretStore>, SecretError> {
        SecretStore::open_existing_with(state_root, &process_env)
    }

    /// Opens for writing, creating the state root, db and master key as needed.
    pub fn open_or_create(state_root: &Path) -> Result<SecretStore, SecretError> {
        SecretStore::open_or_create_with(state_root, &process_env)
    }

    /// [`SecretStore::open_existing`] with an explicit environment (tests).
    fn open_existing_with(
        state_root: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<SecretStore>, SecretError> {
        let Some(store) = Store::open_existing(state_root)? else {
            return Ok(None);
        };
        let key = match configured_key(env)? {
            Some(key) => Some(key),
            None => root_key(state_root)?,
        };
        if let Some(key) = &key {
            // Read-only: verify a check value if one exists, never write one.
            if let Some(check) = store.meta_get(KEY_CHECK_META)? {
                verify_key_check(key, &check)?;
            }
        }
        Ok(Some(SecretStore { store, key }))
    }

    /// [`SecretStore::open_or_create`] with an explicit environment (tests).
    fn open_or_create_with(
        state_root: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<SecretStore, SecretError> {
        let store = Store::open(state_root)?;
        let key = match configured_key(env)? {
            Some(key) => key,
            None => {
                // Read the check value BEFORE looking for master.key: a process that generates
                // the key links master.key first and writes the check value after, so seeing the
                // check value guarantees that a generated master.key is visible to the read below.
                let has_check = store.meta_get(KEY_CHECK_META)?.is_some();
                match root_key(state_root)? {
                    Some(key) => key,
                    // Values sealed under a key we cannot find: generating a new one would only
                    // produce a store half of which can never be read.
                    None if has_check => {
                        return Err(SecretError::MasterKeyMissing {
                            path: state_root.join(MASTER_KEY_FILE).display().to_string(),
                        })
                    }
                    None => create_root_key(state_root)?,
                }
            }
        };
        ensure_key_check(&store, &key)?;
        Ok(SecretStore {
            store,
            key: Some(key),
        })
    }

    /// The state root directory.
    pub fn root(&self) -> &Path {
        self.store.root()
    }

    fn key(&self) -> Result<&MasterKey, SecretError> {
        self.key
            .as_ref()
            .ok_or_else(|| SecretError::MasterKeyMissing {
                path: self.root().join(MASTER_KEY_FILE).display().to_string(),
            })
    }

    fn open_sealed(&self, secret_ref: &str, sealed: &Sealed) -> Result<Secret, SecretError> {
        let undecryptable = || SecretError::Undecryptable {
            secret_ref: secret_ref.to_string(),
        };
        let plaintext = self
            .key()?
            .open(sealed, secret_ref.as_bytes())
            .ok_or_else(undecryptable)?;
        // Only UTF-8 is ever sealed; anything else means the bytes were altered.
        String::from_utf8(plaintext)
            .map(Secret::new)
            .map_err(|_| undecryptable())
    }

    /// Current value of a slot; Ok(None) when the slot does not exist.
    pub fn get(&self, secret_ref: &str) -> Result<Option<Secret>, SecretError> {
        validate_secret_ref(secret_ref)?;
        match self.store.secret_slot(secret_ref)? {
            None => Ok(None),
            Some(slot) => self.open_sealed(secret_ref, &slot.current).map(Some),
        }
    }

    /// Values that may VERIFY an inbound request now: current, plus the previous one while its
    /// grace window lasts (`now_ms < previous_valid_until_ms`; now_ms given by caller). The
    /// current value comes first. A missing slot or a blank current value is an error.
    pub fn verification_values(
        &self,
        secret_ref: &str,
        now_ms: i64,
    ) -> Result<Vec<Secret>, SecretError> {
        validate_secret_ref(secret_ref)?;
        let slot = self
            .store
            .secret_slot(secret_ref)?
            .ok_or_else(|| SecretError::SlotMissing {
                secret_ref: secret_ref.to_string(),
            })?;
        let current = self.open_sealed(secret_ref, &slot.current)?;
        if current.is_blank() {
            return Err(SecretError::SlotEmpty {
                secret_ref: secret_ref.to_string(),
            });
        }
        let mut values = vec![current];
        if let (Some(previous), Some(until)) = (&slot.previous, slot.previous_valid_until_ms) {
            if now_ms < until {
                let previous = self.open_sealed(secret_ref, previous)?;
                if !previous.is_blank() {
                    values.push(previous);
                }
            }
        }
        Ok(values)
    }

    /// Writes a new value (rotation), keeping the previous for `grace`; records the rotation
    /// without values. A zero grace keeps nothing. `source` is recorded (`env`, `file`, `stdin`,
    /// `generate`, `api`…).
    pub fn rotate(
        &self,
        secret_ref: &str,
        value: Secret,
        grace: Option<Duration>,
        source: &str,
        now_ms: i64,
    ) -> Result<Rotation, SecretError> {
        validate_secret_ref(secret_ref)?;
        if value.is_blank() {
            return Err(SecretError::EmptyValue {
                secret_ref: secret_ref.to_string(),
            });
        }
        let key = self.key()?;
        // A store opened with `open_existing` may predate any secret: make sure the key check
        // exists (and matches) before sealing anything under this key.
        ensure_key_check(&self.store, key)?;
        let sealed = key
            .seal(value.expose().as_bytes(), secret_ref.as_bytes())
            .map_err(|()| SecretError::Encrypt {
                secret_ref: secret_ref.to_string(),
            })?;
        let keep_previous_until_ms = grace.filter(|g| !g.is_zero()).map(|g| {
            let ms = i64::try_from(g.as_millis()).unwrap_or(i64::MAX);
            now_ms.saturating_add(ms)
        });
        let outcome = self.store.write_secret_slot(&SlotWrite {
            secret_ref,
            sealed,
            keep_previous_until_ms,
            now_ms,
            source,
        })?;
        Ok(Rotation {
            secret_ref: secret_ref.to_string(),
            rotated_at_ms: now_ms,
            grace_until_ms: keep_previous_until_ms.filter(|_| outcome.previous_kept),
            previous_kept: outcome.previous_kept,
            created: outcome.created,
        })
    }

    /// Slot metadata for listings (no values): ref, updated_at_ms, has_previous,
    /// previous_valid_until_ms. Needs no master key.
    pub fn list(&self) -> Result<Vec<SlotInfo>, SecretError> {
        Ok(self
            .store
            .secret_slots()?
            .into_iter()
            .map(|s| SlotInfo {
                secret_ref: s.secret_ref,
                updated_at_ms: s.updated_at_ms,
                has_previous: s.has_previous,
                previous_valid_until_ms: s.previous_valid_until_ms,
            })
            .collect())
    }
}

fn key_check_bytes(sealed: &Sealed) -> Vec<u8> {
    let mut bytes = sealed.nonce.clone();
    bytes.extend_from_slice(&sealed.ciphertext);
    bytes
}

fn verify_key_check(key: &MasterKey, stored: &[u8]) -> Result<(), SecretError> {
    if stored.len() < NONCE_LEN {
        return Err(SecretError::WrongMasterKey);
    }
    let (nonce, ciphertext) = stored.split_at(NONCE_LEN);
    let sealed = Sealed {
        nonce: nonce.to_vec(),
        ciphertext: ciphertext.to_vec(),
    };
    match key.open(&sealed, KEY_CHECK_AAD) {
        Some(label) if label == KEY_CHECK_LABEL => Ok(()),
        _ => Err(SecretError::WrongMasterKey),
    }
}

/// Verifies the store's key check value, writing it first if the store has none. When two
/// processes race, the loser verifies the winner's value.
fn ensure_key_check(store: &Store, key: &MasterKey) -> Result<(), SecretError> {
    if let Some(check) = store.meta_get(KEY_CHECK_META)? {
        return verify_key_check(key, &check);
    }
    let sealed = key
        .seal(KEY_CHECK_LABEL, KEY_CHECK_AAD)
        .map_err(|()| SecretError::Encrypt {
            secret_ref: KEY_CHECK_META.to_string(),
        })?;
    if store.meta_insert_if_absent(KEY_CHECK_META, &key_check_bytes(&sealed))? {
        return Ok(());
    }
    match store.meta_get(KEY_CHECK_META)? {
        Some(check) => verify_key_check(key, &check),
        None => Err(SecretError::WrongMasterKey),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEY_B: &str = "HxwdHhscGRoXGBUWExQREg8QDQ4LDAkKBwgFBgMEAQI=";

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn secret(s: &str) -> Secret {
        Secret::new(s.to_string())
    }

    fn exposed(values: &[Secret]) -> Vec<&str> {
        values.iter().map(Secret::expose).collect()
    }

    fn open_with_key(root: &Path, key: &str) -> Result<SecretStore, SecretError> {
        SecretStore::open_or_create_with(root, &env_of(&[(MASTER_KEY_ENV, key)]))
    }

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
    fn round_trip_and_rotation_history() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open_with_key(tmp.path(), KEY_A).unwrap();
        assert!(store.get("a.b").unwrap().is_none());
        let first = store
            .rotate("a.b", secret("one"), None, "test", 1_000)
            .unwrap();
        assert!(first.created && !first.previous_kept);
        assert_eq!(first.grace_until_ms, None);
        assert_eq!(store.get("a.b").unwrap().unwrap().expose(), "one");

        // A second handle with the same key reads what the first wrote.
        let again = open_with_key(tmp.path(), KEY_A).unwrap();
        assert_eq!(again.get("a.b").unwrap().unwrap().expose(), "one");
        let listed = again.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].secret_ref, "a.b");
        assert!(!listed[0].has_previous);
    }

    #[test]
    fn ciphertext_is_not_the_plaintext() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open_with_key(tmp.path(), KEY_A).unwrap();
        store
            .rotate("a.b", secret("plain-marker-value"), None, "test", 1)
            .unwrap();
        drop(store);
        let mut on_disk = Vec::new();
        for name in ["state.db", "state.db-wal"] {
            if let Ok(bytes) = fs::read(tmp.path().join(name)) {
                on_disk.extend(bytes);
            }
        }
        let needle = b"plain-marker-value";
        assert!(!on_disk.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn grace_window_uses_the_given_clock() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open_with_key(tmp.path(), KEY_A).unwrap();
        store
            .rotate("a.b", secret("old"), None, "test", 1_000)
            .unwrap();
        let rot = store
            .rotate(
                "a.b",
                secret("new"),
                Some(Duration::from_secs(60)),
                "test",
                2_000,
            )
            .unwrap();
        assert!(rot.previous_kept && !rot.created);
        assert_eq!(rot.grace_until_ms, Some(62_000));
        assert_eq!(store.get("a.b").unwrap().unwrap().expose(), "new");

        let check = |now_ms: i64, expected: &[&str]| {
            let values = store.verification_values("a.b", now_ms).unwrap();
            assert_eq!(exposed(&values), expected, "at {now_ms}");
        };
        check(2_000, &["new", "old"]);
        check(61_999, &["new", "old"]);
        check(62_000, &["new"]);
        check(100_000, &["new"]);

        let info = &store.list().unwrap()[0];
        assert!(info.has_previous);
        assert_eq!(info.previous_valid_until_ms, Some(62_000));

        // Rotating without grace drops the previous value at once.
        store
            .rotate("a.b", secret("newest"), None, "test", 3_000)
            .unwrap();
        check(3_000, &["newest"]);
        // Zero grace keeps nothing either.
        let rot = store
            .rotate("a.b", secret("last"), Some(Duration::ZERO), "test", 4_000)
            .unwrap();
        assert!(!rot.previous_kept);
        check(4_000, &["last"]);
    }

    #[test]
    fn grace_on_a_new_slot_keeps_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open_with_key(tmp.path(), KEY_A).unwrap();
        let rot = store
            .rotate("a.b", secret("v"), Some(Duration::from_secs(60)), "test", 0)
            .unwrap();
        assert!(rot.created && !rot.previous_kept);
        assert_eq!(rot.grace_until_ms, None);
    }

    #[test]
    fn wrong_master_key_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        open_with_key(tmp.path(), KEY_A)
            .unwrap()
            .rotate("a.b", secret("v"), None, "test", 0)
            .unwrap();
        let err = open_with_key(tmp.path(), KEY_B).unwrap_err();
        assert!(matches!(err, SecretError::WrongMasterKey), "{err:?}");
        assert_eq!(err.exit_status(), ExitStatus::Unavailable);
        assert!(err
            .to_string()
            .contains("written with a different master key"));
        let err = SecretStore::open_existing_with(tmp.path(), &env_of(&[(MASTER_KEY_ENV, KEY_B)]))
            .unwrap_err();
        assert!(matches!(err, SecretError::WrongMasterKey), "{err:?}");
    }

    #[test]
    fn a_slot_under_another_key_does_not_decrypt() {
        // No key check can catch a slot sealed under another key if the check itself was sealed
        // with the current one; the slot must still fail clearly, not return garbage.
        let tmp = tempfile::tempdir().unwrap();
        let store = open_with_key(tmp.path(), KEY_A).unwrap();
        store.rotate("a.b", secret("v"), None, "test", 0).unwrap();
        let other = SecretStore {
            store: Store::open(tmp.path()).unwrap(),
            key: Some(parse_key(KEY_B.as_bytes(), "test", false).unwrap()),
        };
        let err = other.get("a.b").unwrap_err();
        assert!(matches!(err, SecretError::Undecryptable { .. }), "{err:?}");
        assert!(err.to_string().contains("`a.b`"));
    }

    #[test]
    fn associated_data_binds_a_value_to_its_slot() {
        let key = parse_key(KEY_A.as_bytes(), "test", false).unwrap();
        let sealed = key.seal(b"value", b"slot.one").unwrap();
        assert_eq!(
            key.open(&sealed, b"slot.one").as_deref(),
            Some(&b"value"[..])
        );
        assert_eq!(key.open(&sealed, b"slot.two"), None);

        // Through the store: copy one slot's ciphertext into another slot's row.
        let tmp = tempfile::tempdir().unwrap();
        let store = open_with_key(tmp.path(), KEY_A).unwrap();
        store
            .rotate("slot.one", secret("one"), None, "test", 0)
            .unwrap();
        store
            .rotate("slot.two", secret("two"), None, "test", 0)
            .unwrap();
        let one = store.store.secret_slot("slot.one").unwrap().unwrap();
        store
            .store
            .write_secret_slot(&SlotWrite {
                secret_ref: "slot.two",
                sealed: one.current,
                keep_previous_until_ms: None,
                now_ms: 1,
                source: "tamper",
            })
            .unwrap();
        let err = store.get("slot.two").unwrap_err();
        assert!(matches!(err, SecretError::Undecryptable { .. }), "{err:?}");
        assert_eq!(store.get("slot.one").unwrap().unwrap().expose(), "one");
    }

    #[test]
    fn master_key_file_and_generated_key() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        // Reads never create anything.
        assert!(SecretStore::open_existing_with(&root, &env_of(&[]))
            .unwrap()
            .is_none());
        assert!(!root.exists());

        let store = SecretStore::open_or_create_with(&root, &env_of(&[])).unwrap();
        let key_path = root.join(MASTER_KEY_FILE);
        let mode = fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        store.rotate("a.b", secret("v"), None, "test", 0).unwrap();
        drop(store);

        // The generated key is base64 text; KHEISH_MASTER_KEY_FILE pointing at it works too.
        let key_file = key_path.display().to_string();
        let via_file = SecretStore::open_or_create_with(
            &root,
            &env_of(&[(MASTER_KEY_FILE_ENV, key_file.as_str())]),
        )
        .unwrap();
        assert_eq!(via_file.get("a.b").unwrap().unwrap().expose(), "v");

        // Removing master.key: reads have no key, writes refuse to mint a new one.
        fs::remove_file(&key_path).unwrap();
        let reader = SecretStore::open_existing_with(&root, &env_of(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(reader.list().unwrap().len(), 1);
        assert!(matches!(
            reader.get("a.b").unwrap_err(),
            SecretError::MasterKeyMissing { .. }
        ));
        assert!(!key_path.exists());
        assert!(matches!(
            SecretStore::open_or_create_with(&root, &env_of(&[])).unwrap_err(),
            SecretError::MasterKeyMissing { .. }
        ));
        assert!(!key_path.exists());
    }

    #[test]
    fn raw_32_byte_key_file() {
        let tmp = tempfile::tempdir().unwrap();
        let key_file = tmp.path().join("raw.key");
        fs::write(&key_file, [7u8; 32]).unwrap();
        let file = key_file.display().to_string();
        let env = env_of(&[(MASTER_KEY_FILE_ENV, file.as_str())]);
        let root = tmp.path().join("state");
        let store = SecretStore::open_or_create_with(&root, &env).unwrap();
        store.rotate("a.b", secret("v"), None, "test", 0).unwrap();
        assert!(!root.join(MASTER_KEY_FILE).exists());
        let again = SecretStore::open_existing_with(&root, &env)
            .unwrap()
            .unwrap();
        assert_eq!(again.get("a.b").unwrap().unwrap().expose(), "v");
    }

    fn key_problem(value: &str) -> String {
        let tmp = tempfile::tempdir().unwrap();
        let err = open_with_key(tmp.path(), value).unwrap_err();
        assert!(matches!(err, SecretError::MasterKey { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("`KHEISH_MASTER_KEY`"), "{msg}");
        if !value.trim().is_empty() {
            assert!(!msg.contains(value.trim()), "message echoes the key: {msg}");
        }
        msg
    }

    #[test]
    fn malformed_master_keys_are_named_not_echoed() {
        assert!(key_problem("not*base64*at*all").contains("not valid base64"));
        assert!(key_problem("c2hvcnQta2V5").contains("decodes to 9 bytes"));
        assert!(key_problem("  ").contains("is empty"));
        let tmp = tempfile::tempdir().unwrap();
        let err = SecretStore::open_or_create_with(
            tmp.path(),
            &env_of(&[(MASTER_KEY_ENV, KEY_A), (MASTER_KEY_FILE_ENV, "/x")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("both are set"), "{err}");
        let err = SecretStore::open_or_create_with(
            tmp.path(),
            &env_of(&[(MASTER_KEY_FILE_ENV, "/nonexistent/kheish.key")]),
        )
        .unwrap_err();
        assert!(matches!(err, SecretError::MasterKeyIo { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/kheish.key"));
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
    fn blank_values_are_refused_on_write() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open_with_key(tmp.path(), KEY_A).unwrap();
        let err = store
            .rotate("a.b", secret(" \n"), None, "test", 0)
            .unwrap_err();
        assert!(matches!(err, SecretError::EmptyValue { .. }), "{err:?}");
        assert!(store.get("a.b").unwrap().is_none());
    }

    #[test]
    fn store_errors_keep_exit_4_through_the_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, "x").unwrap();
        let err = open_with_key(&file.join("state"), KEY_A).unwrap_err();
        assert!(matches!(err, SecretError::Store(_)), "{err:?}");
        let err = anyhow::Error::new(err).context("rotating");
        assert_eq!(crate::exit::status_for(&err), ExitStatus::Unavailable);
    }
}
