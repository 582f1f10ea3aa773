//! Control-plane authentication (SPEC §5.2): `Authorization: Bearer <admin token>` on every
//! control route, also on loopback; compared in constant time; failed attempts are limited per
//! client address so the token cannot be guessed at line rate. A second, read-only token (when
//! configured) is accepted on `GET`/`HEAD` routes only; a write with it is 403 `readonly_token`.
//!
//! Tokens read from a file are re-read when the file changes (checked at most once a second,
//! on the next control request), so a token is rotated without a restart. A changed file that
//! cannot be read, is empty, or would make the two tokens equal leaves the token in force and
//! says so in the log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::secrets::{self, constant_time_eq, Secret, SecretError};

/// Failures allowed per client within [`WINDOW`] before further attempts are refused with 429.
const MAX_FAILURES: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);
/// How often a token file's metadata is looked at.
const RECHECK: Duration = Duration::from_secs(1);

/// Why a control request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRefusal {
    /// 401: missing, duplicate, malformed or wrong token.
    Unauthorized(&'static str),
    /// 429: too many failures from this client; retry after this many seconds.
    Locked { retry_after_secs: u64 },
    /// 403 `readonly_token`: the read-only token on a route that writes.
    ReadOnly,
}

/// Which token a request presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Admin,
    ReadOnly,
}

/// What identifies one version of a token file: a rewrite or a rename over it changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        ino: meta.ino(),
    })
}

/// When a token file was last looked at, and what it looked like then.
type LastLook = Mutex<(Instant, Option<FileStamp>)>;

/// One token and, when it came from a file, what is needed to notice that the file changed.
struct Watched {
    value: RwLock<Secret>,
    file: Option<(PathBuf, LastLook)>,
}

impl Watched {
    fn new(value: Secret, file: Option<&Path>, now: Instant) -> Watched {
        Watched {
            value: RwLock::new(value),
            file: file.map(|p| (p.to_path_buf(), Mutex::new((now, stamp(p))))),
        }
    }

    fn matches(&self, presented: &[u8]) -> bool {
        let value = self.value.read().unwrap_or_else(|p| p.into_inner());
        constant_time_eq(presented, value.expose().as_bytes())
    }

    /// The new value when the file changed since the last look (at most once per [`RECHECK`]).
    fn changed(&self, now: Instant) -> Option<(PathBuf, Result<Secret, SecretError>)> {
        let (path, state) = self.file.as_ref()?;
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_duration_since(state.0) < RECHECK {
            return None;
        }
        state.0 = now;
        let current = stamp(path);
        if current == state.1 {
            return None;
        }
        state.1 = current;
        Some((path.clone(), secrets::read_value_file(path)))
    }

    /// True when the token file changed since it was last read: a rotation the periodic
    /// [`AdminAuth::refresh`] has not picked up yet.
    fn rotation_pending(&self) -> bool {
        let Some((path, state)) = self.file.as_ref() else {
            return false;
        };
        let recorded = state.lock().unwrap_or_else(|p| p.into_inner()).1;
        stamp(path) != recorded
    }

    fn set(&self, value: Secret) {
        *self.value.write().unwrap_or_else(|p| p.into_inner()) = value;
    }

    fn equals(&self, other: &Secret) -> bool {
        self.matches(other.expose().as_bytes())
    }
}

/// The control-plane tokens and the per-client failure counters.
pub struct AdminAuth {
    admin: Watched,
    readonly: Option<Watched>,
    failures: Mutex<HashMap<Option<IpAddr>, (u32, Instant)>>,
}

/// A token value and the file it came from, if it came from one (re-read when it changes).
pub struct TokenSource {
    pub value: Secret,
    pub file: Option<PathBuf>,
}

impl AdminAuth {
    /// The admin token alone (tests, and daemons without a read-only token).
    pub fn new(token: Secret) -> AdminAuth {
        AdminAuth::with_sources(
            TokenSource {
                value: token,
                file: None,
            },
            None,
        )
        .expect("one token cannot clash with itself")
    }

    /// Both tokens; refused when the read-only token equals the admin token.
    pub fn with_sources(
        admin: TokenSource,
        readonly: Option<TokenSource>,
    ) -> Result<AdminAuth, &'static str> {
        if let Some(ro) = &readonly {
            if constant_time_eq(
                ro.value.expose().as_bytes(),
                admin.value.expose().as_bytes(),
            ) {
                return Err("the read-only token must differ from the admin token");
            }
        }
        let now = Instant::now();
        Ok(AdminAuth {
            admin: Watched::new(admin.value, admin.file.as_deref(), now),
            readonly: readonly.map(|ro| Watched::new(ro.value, ro.file.as_deref(), now)),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Re-reads token files that changed; returns one log line per reload or refused reload
    /// (paths only, never a value).
    pub fn refresh(&self, now: Instant) -> Vec<String> {
        let mut log = Vec::new();
        let watched = [
            ("admin", Some(&self.admin)),
            ("read-only", self.readonly.as_ref()),
        ];
        for (i, (what, token)) in watched.into_iter().enumerate() {
            let Some(token) = token else { continue };
            let Some((path, read)) = token.changed(now) else {
                continue;
            };
            let other = if i == 0 {
                self.readonly.as_ref()
            } else {
                Some(&self.admin)
            };
            match read {
                Ok(value) if value.expose().is_empty() => log.push(format!(
                    "{what} token file {} is empty; the previous token stays in force",
                    path.display()
                )),
                Ok(value) if other.is_some_and(|o| o.equals(&value)) => log.push(format!(
                    "{what} token file {} now holds the other token; the read-only and admin \
                     tokens must differ, so the previous token stays in force",
                    path.display()
                )),
                Ok(value) => {
                    token.set(value);
                    log.push(format!("{what} token re-read from {}", path.display()));
                }
                Err(e) => log.push(format!(
                    "{what} token file changed but cannot be read ({e}); the previous token \
                     stays in force"
                )),
            }
        }
        log
    }

    /// Checks the `Authorization` header values of one request from `client`; `write` is true
    /// for every method but `GET` and `HEAD`.
    pub fn check(
        &self,
        client: Option<IpAddr>,
        authorization: &[&str],
        write: bool,
        now: Instant,
    ) -> Result<Access, AdminRefusal> {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((count, since)) = failures.get(&client) {
            let elapsed = now.saturating_duration_since(*since);
            if *count >= MAX_FAILURES && elapsed < WINDOW {
                return Err(AdminRefusal::Locked {
                    retry_after_secs: (WINDOW - elapsed).as_secs().max(1),
                });
            }
        }
        let verdict = match authorization {
            [] => Err(AdminRefusal::Unauthorized(
                "missing `Authorization: Bearer <admin token>` header",
            )),
            [_, _, ..] => Err(AdminRefusal::Unauthorized(
                "duplicate `Authorization` header",
            )),
            [value] => match value.trim().split_once(' ') {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                    let token = token.trim().as_bytes();
                    // Both comparisons always run, so timing does not say which token matched.
                    let admin = self.admin.matches(token);
                    let readonly = self.readonly.as_ref().is_some_and(|r| r.matches(token));
                    if admin {
                        Ok(Access::Admin)
                    } else if readonly {
                        Ok(Access::ReadOnly)
                    } else {
                        Err(AdminRefusal::Unauthorized("admin token does not match"))
                    }
                }
                _ => Err(AdminRefusal::Unauthorized(
                    "`Authorization` is not a `Bearer` token",
                )),
            },
        };
        match &verdict {
            Ok(_) => {
                failures.remove(&client);
            }
            // A token file rewritten in the last second holds a token not in force yet: a
            // client that already uses it is not counted towards the lockout (it gets 401 until
            // the re-read, at most a second later, then succeeds).
            Err(_)
                if self.admin.rotation_pending()
                    || self
                        .readonly
                        .as_ref()
                        .is_some_and(Watched::rotation_pending) => {}
            Err(_) => {
                let entry = failures.entry(client).or_insert((0, now));
                if now.saturating_duration_since(entry.1) >= WINDOW {
                    *entry = (0, now);
                }
                entry.0 += 1;
            }
        }
        match verdict {
            Ok(Access::ReadOnly) if write => Err(AdminRefusal::ReadOnly),
            other => other,
        }
    }
}

/// Where the admin token came from (for the startup log; never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOrigin {
    Env(String),
    File(PathBuf),
    /// `STATE_ROOT/admin.token`, `true` when generated by this start.
    StateRoot(PathBuf, bool),
}

impl TokenOrigin {
    /// The file a token came from, re-read when it changes.
    pub fn file(&self) -> Option<&Path> {
        match self {
            TokenOrigin::Env(_) => None,
            TokenOrigin::File(path) | TokenOrigin::StateRoot(path, _) => Some(path),
        }
    }
}

/// Resolves the read-only token (`--readonly-token-env` / `--readonly-token-file`), if any.
/// The caller refuses a blank value (it would match an empty bearer).
pub fn resolve_readonly_token(
    env_var: Option<&str>,
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(Secret, TokenOrigin)>, SecretError> {
    let (value, origin) = match (env_var, file) {
        (Some(var), _) => (
            secrets::value_from_env(var, env)?,
            TokenOrigin::Env(var.to_string()),
        ),
        (None, Some(path)) => (
            secrets::read_value_file(path)?,
            TokenOrigin::File(path.to_path_buf()),
        ),
        (None, None) => return Ok(None),
    };
    Ok(Some((value, origin)))
}

/// File name of the generated admin token inside the state root.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Resolves the admin token (SPEC §5.2): `--admin-token-env`, `--admin-token-file`, else
/// `STATE_ROOT/admin.token`, generated (0600) on first start.
pub fn resolve_token(
    env_var: Option<&str>,
    file: Option<&Path>,
    state_root: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Secret, TokenOrigin), SecretError> {
    if let Some(var) = env_var {
        return Ok((
            secrets::value_from_env(var, env)?,
            TokenOrigin::Env(var.to_string()),
        ));
    }
    if let Some(path) = file {
        return Ok((
            secrets::read_value_file(path)?,
            TokenOrigin::File(path.to_path_buf()),
        ));
    }
    let path = state_root.join(ADMIN_TOKEN_FILE);
    match secrets::read_value_file(&path) {
        Ok(token) => return Ok((token, TokenOrigin::StateRoot(path, false))),
        Err(SecretError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = secrets::generate(32)?;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(token.expose().as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()
        });
    match written {
        Ok(()) => Ok((token, TokenOrigin::StateRoot(path, true))),
        // Another daemon created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok((
            secrets::read_value_file(&path)?,
            TokenOrigin::StateRoot(path, false),
        )),
        Err(source) => Err(SecretError::Read {
            what: path.display().to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_checks_and_lockout() {
        let auth = AdminAuth::new(Secret::new("s3cret".into()));
        let ip: Option<IpAddr> = Some("127.0.0.1".parse().unwrap());
        let t0 = Instant::now();
        assert_eq!(
            auth.check(ip, &["Bearer s3cret"], true, t0),
            Ok(Access::Admin)
        );
        assert!(matches!(
            auth.check(ip, &[], false, t0),
            Err(AdminRefusal::Unauthorized(_))
        ));
        assert!(matches!(
            auth.check(ip, &["Bearer s3cret", "Bearer s3cret"], false, t0),
            Err(AdminRefusal::Unauthorized(_))
        ));
        // Two failures above; eight more reach the limit of ten.
        for _ in 0..8 {
            assert!(matches!(
                auth.check(ip, &["Bearer nope"], false, t0),
                Err(AdminRefusal::Unauthorized(_))
            ));
        }
        // Locked now, even with the right token; another client is not affected.
        assert!(matches!(
            auth.check(ip, &["Bearer s3cret"], false, t0),
            Err(AdminRefusal::Locked { .. })
        ));
        assert_eq!(
            auth.check(
                Some("10.0.0.1".parse().unwrap()),
                &["Bearer s3cret"],
                false,
                t0
            ),
            Ok(Access::Admin)
        );
        // The window passes.
        assert_eq!(
            auth.check(ip, &["Bearer s3cret"], false, t0 + WINDOW),
            Ok(Access::Admin)
        );
    }

    #[test]
    fn the_readonly_token_reads_but_never_writes() {
        let source = |v: &str| TokenSource {
            value: Secret::new(v.into()),
            file: None,
        };
        assert!(AdminAuth::with_sources(source("same"), Some(source("same"))).is_err());
        let auth = AdminAuth::with_sources(source("admin-tok"), Some(source("ro-tok"))).unwrap();
        let t0 = Instant::now();
        assert_eq!(
            auth.check(None, &["Bearer ro-tok"], false, t0),
            Ok(Access::ReadOnly)
        );
        assert_eq!(
            auth.check(None, &["Bearer ro-tok"], true, t0),
            Err(AdminRefusal::ReadOnly)
        );
        assert_eq!(
            auth.check(None, &["Bearer admin-tok"], true, t0),
            Ok(Access::Admin)
        );
    }

    #[test]
    fn token_files_are_re_read_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let admin_path = dir.path().join("admin");
        let ro_path = dir.path().join("ro");
        std::fs::write(&admin_path, "admin-1\n").unwrap();
        std::fs::write(&ro_path, "ro-1\n").unwrap();
        let auth = AdminAuth::with_sources(
            TokenSource {
                value: secrets::read_value_file(&admin_path).unwrap(),
                file: Some(admin_path.clone()),
            },
            Some(TokenSource {
                value: secrets::read_value_file(&ro_path).unwrap(),
                file: Some(ro_path.clone()),
            }),
        )
        .unwrap();
        let t0 = Instant::now();
        // Unchanged files: nothing to say.
        assert!(auth.refresh(t0 + RECHECK).is_empty());
        // A rewrite (other length, so the stamp differs even within one mtime tick).
        std::fs::write(&admin_path, "admin-two\n").unwrap();
        // Not looked at again within the recheck interval.
        assert!(auth.refresh(t0 + RECHECK).is_empty());
        let log = auth.refresh(t0 + RECHECK * 2);
        assert_eq!(log.len(), 1, "{log:?}");
        assert!(
            !log[0].contains("admin-two"),
            "a log line never has a value"
        );
        assert_eq!(
            auth.check(None, &["Bearer admin-two"], true, t0),
            Ok(Access::Admin)
        );
        assert!(auth.check(None, &["Bearer admin-1"], true, t0).is_err());
        // The read-only file now holds the admin token: refused, the old one stays.
        std::fs::write(&ro_path, "admin-two").unwrap();
        let log = auth.refresh(t0 + RECHECK * 3);
        assert!(log[0].contains("must differ"), "{log:?}");
        assert_eq!(
            auth.check(None, &["Bearer ro-1"], false, t0),
            Ok(Access::ReadOnly)
        );
        // An empty file keeps the token in force too.
        std::fs::write(&ro_path, "").unwrap();
        assert!(auth.refresh(t0 + RECHECK * 4)[0].contains("empty"));
        assert_eq!(
            auth.check(None, &["Bearer ro-1"], false, t0),
            Ok(Access::ReadOnly)
        );
    }

    #[test]
    fn a_client_using_a_rotated_token_before_the_re_read_is_not_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin");
        std::fs::write(&path, "admin-1\n").unwrap();
        let auth = AdminAuth::with_sources(
            TokenSource {
                value: secrets::read_value_file(&path).unwrap(),
                file: Some(path.clone()),
            },
            None,
        )
        .unwrap();
        let t0 = Instant::now();
        std::fs::write(&path, "admin-rotated\n").unwrap();
        // Before the periodic re-read the new token is refused, but never counted.
        for _ in 0..MAX_FAILURES * 2 {
            assert_eq!(
                auth.check(None, &["Bearer admin-rotated"], true, t0),
                Err(AdminRefusal::Unauthorized("admin token does not match"))
            );
        }
        auth.refresh(t0 + RECHECK);
        assert_eq!(
            auth.check(None, &["Bearer admin-rotated"], true, t0),
            Ok(Access::Admin)
        );
        // Once re-read, wrong tokens count again.
        for _ in 0..MAX_FAILURES {
            assert!(auth.check(None, &["Bearer nope"], true, t0).is_err());
        }
        assert!(matches!(
            auth.check(None, &["Bearer admin-rotated"], true, t0),
            Err(AdminRefusal::Locked { .. })
        ));
    }
}
