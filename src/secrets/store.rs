//! The state root's encrypted secret store (SPEC §4): [`SecretStore`] with its master key,
//! rotation with a grace window for the previous value, and slot metadata ([`SlotInfo`]).
//!
//! Every value is sealed with XChaCha20-Poly1305 under a 32-byte master key, with the slot's ref
//! as associated data (a ciphertext copied into another slot does not open). The SQL lives in
//! `store::secret_slots`, which only ever sees sealed bytes; this module owns the key and the
//! cipher. It must not print, put a value in an error message, or write SQL of its own.
//!
//! The master key comes from `KHEISH_MASTER_KEY` (standard base64), or `KHEISH_MASTER_KEY_FILE`
//! (base64 text, or exactly 32 raw bytes), or else `STATE_ROOT/master.key`, generated with mode
//! 0600 on the first write (reads never create it). A check value sealed under the key is kept
//! in `store_meta`, so a different key is reported as such instead of producing garbage.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::{random_bytes, validate_secret_ref, Secret, SecretError};
use crate::store::secret_slots::{Sealed, SlotWrite};
use crate::store::Store;

/// Environment variable holding the master key as standard base64.
pub const MASTER_KEY_ENV: &str = "KHEISH_MASTER_KEY";
/// Environment variable naming a file that holds the master key.
pub const MASTER_KEY_FILE_ENV: &str = "KHEISH_MASTER_KEY_FILE";
/// The generated master key's file name inside the state root.
pub const MASTER_KEY_FILE: &str = "master.key";

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
    pub(super) fn open_or_create_with(
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

    /// The database under the secret store, for writes that must commit together with slot
    /// writes (the runtime connector store).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Seals `value` for slot `secret_ref` into a write the caller commits (with
    /// [`Store::put_runtime_connector`]); no previous value is kept. Refuses an invalid ref or a
    /// blank value like [`SecretStore::rotate`].
    pub fn sealed_write<'a>(
        &self,
        secret_ref: &'a str,
        value: &Secret,
        source: &'a str,
        now_ms: i64,
    ) -> Result<SlotWrite<'a>, SecretError> {
        self.sealed_rotation(secret_ref, value, None, source, now_ms)
    }

    /// [`SecretStore::sealed_write`] that keeps the slot's current value for `grace` (for
    /// inbound verification only, as [`SecretStore::rotate`] does); a zero or absent grace
    /// keeps nothing.
    pub fn sealed_rotation<'a>(
        &self,
        secret_ref: &'a str,
        value: &Secret,
        grace: Option<Duration>,
        source: &'a str,
        now_ms: i64,
    ) -> Result<SlotWrite<'a>, SecretError> {
        validate_secret_ref(secret_ref)?;
        if value.is_blank() {
            return Err(SecretError::EmptyValue {
                secret_ref: secret_ref.to_string(),
            });
        }
        let key = self.key()?;
        ensure_key_check(&self.store, key)?;
        let sealed = key
            .seal(value.expose().as_bytes(), secret_ref.as_bytes())
            .map_err(|()| SecretError::Encrypt {
                secret_ref: secret_ref.to_string(),
            })?;
        Ok(SlotWrite {
            secret_ref,
            sealed,
            keep_previous_until_ms: grace_until(grace, now_ms),
            now_ms,
            source,
        })
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
        let write = self.sealed_rotation(secret_ref, &value, grace, source, now_ms)?;
        let keep_previous_until_ms = write.keep_previous_until_ms;
        let outcome = self.store.write_secret_slot(&write)?;
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

/// The end of a grace window that starts at `now_ms`; `None` for no or a zero grace.
fn grace_until(grace: Option<Duration>, now_ms: i64) -> Option<i64> {
    grace.filter(|g| !g.is_zero()).map(|g| {
        let ms = i64::try_from(g.as_millis()).unwrap_or(i64::MAX);
        now_ms.saturating_add(ms)
    })
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
    use super::super::test_support::*;
    use super::*;

    fn exposed(values: &[Secret]) -> Vec<&str> {
        values.iter().map(Secret::expose).collect()
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
        assert!(err.is_unavailable());
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
    fn blank_values_are_refused_on_write() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open_with_key(tmp.path(), KEY_A).unwrap();
        let err = store
            .rotate("a.b", secret(" \n"), None, "test", 0)
            .unwrap_err();
        assert!(matches!(err, SecretError::EmptyValue { .. }), "{err:?}");
        assert!(store.get("a.b").unwrap().is_none());
    }
}
