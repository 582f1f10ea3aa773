//! [`StoreError`], and the one classification of SQLite failures: by SQLite's result code
//! (rusqlite's `ErrorCode`), never by message text. Each storage fault has its own variant whose
//! message names the real cause and what to do about it, so a full disk is never reported as a
//! lock (SPEC §5, §15).
//!
//! [`sqlite_error`] is the single conversion from rusqlite errors; it also marks the state root
//! as failing in [`super::health`] when the fault stops commits (disk full, I/O error, read-only,
//! cannot open, corrupt), which is what `/readyz` reports.

use std::io;

/// What a state-database failure was, from SQLite's primary result code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageFault {
    /// `SQLITE_FULL`: the file system holding the state root has no space left.
    DiskFull,
    /// `SQLITE_IOERR`: the operating system reported an I/O error.
    IoError,
    /// `SQLITE_BUSY` / `SQLITE_LOCKED`: another process (or connection) held the lock.
    Locked,
    /// `SQLITE_CORRUPT` / `SQLITE_NOTADB`: the file is damaged or not a database.
    Corrupt,
    /// `SQLITE_READONLY` / `SQLITE_PERM`: a read-only file system, or missing write permission.
    ReadOnly,
    /// `SQLITE_CANTOPEN`: the database or its `-wal`/`-shm` file could not be opened.
    CannotOpen,
}

impl StorageFault {
    /// The fault of a rusqlite error, from its result code; `None` for anything else
    /// (constraint violations, type errors, misuse).
    pub(crate) fn of(err: &rusqlite::Error) -> Option<StorageFault> {
        use rusqlite::ErrorCode as C;
        let rusqlite::Error::SqliteFailure(e, _) = err else {
            return None;
        };
        match e.code {
            C::DiskFull => Some(StorageFault::DiskFull),
            C::SystemIoFailure => Some(StorageFault::IoError),
            C::DatabaseBusy | C::DatabaseLocked => Some(StorageFault::Locked),
            C::DatabaseCorrupt | C::NotADatabase => Some(StorageFault::Corrupt),
            C::ReadOnly | C::PermissionDenied => Some(StorageFault::ReadOnly),
            C::CannotOpen => Some(StorageFault::CannotOpen),
            _ => None,
        }
    }

    /// True when no commit can succeed until the cause goes away (everything but a lock held
    /// by someone else, which passes by itself): the daemon is then not ready.
    pub fn blocks_commits(self) -> bool {
        !matches!(self, StorageFault::Locked)
    }

    /// Stable machine-readable name (`storage_fault` member of problems, log fields).
    pub fn code(self) -> &'static str {
        match self {
            StorageFault::DiskFull => "disk_full",
            StorageFault::IoError => "io_error",
            StorageFault::Locked => "locked",
            StorageFault::Corrupt => "corrupt",
            StorageFault::ReadOnly => "read_only",
            StorageFault::CannotOpen => "cannot_open",
        }
    }

    /// The cause in a few words, without any path: for HTTP details, which strangers read.
    pub fn cause(self) -> &'static str {
        match self {
            StorageFault::DiskFull => "its disk is full",
            StorageFault::IoError => "the disk reported an I/O error",
            StorageFault::Locked => "it is locked by another process",
            StorageFault::Corrupt => "the database file is corrupt",
            StorageFault::ReadOnly => "it is read-only (file system or permissions)",
            StorageFault::CannotOpen => "it cannot be opened",
        }
    }
}

/// Errors opening or using the state root. Every variant maps to exit 4 (SPEC §1.2).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file-system operation on the state root failed.
    #[error("cannot access the state root `{path}`; check --state-root / KHEISH_STATE_ROOT and its permissions")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The state root directory could not be created.
    #[error(
        "cannot create the state root directory `{path}`; check --state-root / KHEISH_STATE_ROOT"
    )]
    CreateDir {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The state root path exists but is not a directory.
    #[error("the state root `{path}` is not a directory; point --state-root / KHEISH_STATE_ROOT at a directory")]
    NotADirectory { path: String },
    /// `state.db` could not be created or opened.
    #[error("cannot open the state database `{path}`; check the state root's permissions")]
    OpenDb {
        path: String,
        #[source]
        source: io::Error,
    },
    /// `state.db` is not a SQLite database, or SQLite found it damaged.
    #[error("the state database `{path}` is not a valid SQLite database (corrupt or not a kheishctl state root); restore it from a backup or move it away")]
    Corrupt {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database was written by a newer kheishctl; it is left untouched.
    #[error("the state database `{path}` has schema version {found}, newer than this kheishctl supports ({supported}); upgrade kheishctl (the database was not modified)")]
    NewerSchema {
        path: String,
        found: i64,
        supported: i64,
    },
    /// The database could not take a write in time. With no `detail`, another process held
    /// SQLite's lock past the busy timeout (`SQLITE_BUSY`/`SQLITE_LOCKED`); otherwise `detail`
    /// says what stopped this process's writer (it has shut down). Callers answer "retry later".
    #[error(
        "the state database `{path}` {} while {op}{}; retry, or check for a stuck kheishctl process",
        busy_what(.detail),
        busy_why(.detail)
    )]
    Busy {
        /// `state.db`'s path.
        path: String,
        /// What was being done ("claiming a delivery").
        op: String,
        /// Why, when it was not another process's lock.
        detail: Option<String>,
    },
    /// `SQLITE_FULL`: the file system of the state root is full.
    #[error("the state database's disk is full (`{path}`) while {op}; free space on that file system — new events are refused with 503 until a commit succeeds")]
    DiskFull { path: String, op: String },
    /// `SQLITE_IOERR`: the operating system failed a read, write or sync. `code` is SQLite's
    /// extended result code, which says which.
    #[error("an I/O error hit the state database `{path}` while {op} ({}); check the disk and the kernel log (dmesg) — new events are refused with 503 until a commit succeeds", io_what(.code))]
    IoError { path: String, op: String, code: i32 },
    /// `SQLITE_READONLY` / `SQLITE_PERM`: the database cannot be written.
    #[error("the state database `{path}` is read-only while {op} (a read-only file system, or the file, its -wal/-shm files or the state root are not writable by this user); remount it read-write or fix the owner and permissions — new events are refused with 503 until a commit succeeds")]
    ReadOnly { path: String, op: String },
    /// `SQLITE_CANTOPEN`: the database or one of its side files could not be opened.
    #[error("SQLite cannot open the state database `{path}` or its -wal/-shm files while {op}; check that the state root exists and is writable by this user, and that the open-files limit is not exhausted")]
    CannotOpen { path: String, op: String },
    /// Any other SQLite failure.
    #[error("state database `{path}`: {op} failed")]
    Sqlite {
        path: String,
        op: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// [`StoreError::Busy`]'s verb: the lock of another process, or a write that failed here.
fn busy_what(detail: &Option<String>) -> &'static str {
    match detail {
        None => "stayed locked by another process",
        Some(_) => "could not be written",
    }
}

/// [`StoreError::Busy`]'s `: detail`, when there is one.
fn busy_why(detail: &Option<String>) -> String {
    detail
        .as_ref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

/// [`StoreError::IoError`]'s description of its extended result code (SQLite's own table).
fn io_what(code: &i32) -> String {
    format!("SQLite: {}", rusqlite::ffi::code_to_str(*code))
}

impl StoreError {
    /// The storage fault behind this error, when it is one.
    pub fn fault(&self) -> Option<StorageFault> {
        match self {
            StoreError::DiskFull { .. } => Some(StorageFault::DiskFull),
            StoreError::IoError { .. } => Some(StorageFault::IoError),
            StoreError::ReadOnly { .. } => Some(StorageFault::ReadOnly),
            StoreError::CannotOpen { .. } => Some(StorageFault::CannotOpen),
            StoreError::Corrupt { .. } => Some(StorageFault::Corrupt),
            StoreError::Busy { detail: None, .. } => Some(StorageFault::Locked),
            _ => None,
        }
    }

    /// An equal error for another recipient (a failed batch commit fails every job of the
    /// batch with the same cause). Sources that cannot be cloned are carried as their text.
    pub(crate) fn duplicate(&self) -> StoreError {
        let io = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
        let boxed = |e: &(dyn std::error::Error + Send + Sync)| {
            Box::<dyn std::error::Error + Send + Sync>::from(e.to_string())
        };
        match self {
            StoreError::Io { path, source } => StoreError::Io {
                path: path.clone(),
                source: io(source),
            },
            StoreError::CreateDir { path, source } => StoreError::CreateDir {
                path: path.clone(),
                source: io(source),
            },
            StoreError::NotADirectory { path } => StoreError::NotADirectory { path: path.clone() },
            StoreError::OpenDb { path, source } => StoreError::OpenDb {
                path: path.clone(),
                source: io(source),
            },
            StoreError::Corrupt { path, source } => StoreError::Corrupt {
                path: path.clone(),
                source: boxed(source.as_ref()),
            },
            StoreError::NewerSchema {
                path,
                found,
                supported,
            } => StoreError::NewerSchema {
                path: path.clone(),
                found: *found,
                supported: *supported,
            },
            StoreError::Busy { path, op, detail } => StoreError::Busy {
                path: path.clone(),
                op: op.clone(),
                detail: detail.clone(),
            },
            StoreError::DiskFull { path, op } => StoreError::DiskFull {
                path: path.clone(),
                op: op.clone(),
            },
            StoreError::IoError { path, op, code } => StoreError::IoError {
                path: path.clone(),
                op: op.clone(),
                code: *code,
            },
            StoreError::ReadOnly { path, op } => StoreError::ReadOnly {
                path: path.clone(),
                op: op.clone(),
            },
            StoreError::CannotOpen { path, op } => StoreError::CannotOpen {
                path: path.clone(),
                op: op.clone(),
            },
            StoreError::Sqlite { path, op, source } => StoreError::Sqlite {
                path: path.clone(),
                op: op.clone(),
                source: boxed(source.as_ref()),
            },
        }
    }
}

/// Classifies a rusqlite error by its SQLite result code (never by message text): the typed
/// error and its fault. `store::health::sqlite_error` also records a fault that stops commits.
pub(crate) fn classify(
    path: &str,
    op: &str,
    err: rusqlite::Error,
) -> (StoreError, Option<StorageFault>) {
    let fault = StorageFault::of(&err);
    let (path, op) = (path.to_string(), op.to_string());
    let extended = match &err {
        rusqlite::Error::SqliteFailure(e, _) => e.extended_code,
        _ => 0,
    };
    let error = match fault {
        Some(StorageFault::DiskFull) => StoreError::DiskFull { path, op },
        Some(StorageFault::IoError) => StoreError::IoError {
            path,
            op,
            code: extended,
        },
        Some(StorageFault::Locked) => StoreError::Busy {
            path,
            op,
            detail: None,
        },
        Some(StorageFault::Corrupt) => StoreError::Corrupt {
            path,
            source: Box::new(err),
        },
        Some(StorageFault::ReadOnly) => StoreError::ReadOnly { path, op },
        Some(StorageFault::CannotOpen) => StoreError::CannotOpen { path, op },
        None => StoreError::Sqlite {
            path,
            op,
            source: Box::new(err),
        },
    };
    (error, fault)
}

/// The database path every variant built by [`classify`] carries.
pub(crate) fn db_path_of(err: &StoreError) -> &str {
    match err {
        StoreError::Io { path, .. }
        | StoreError::CreateDir { path, .. }
        | StoreError::NotADirectory { path }
        | StoreError::OpenDb { path, .. }
        | StoreError::Corrupt { path, .. }
        | StoreError::NewerSchema { path, .. }
        | StoreError::Busy { path, .. }
        | StoreError::DiskFull { path, .. }
        | StoreError::IoError { path, .. }
        | StoreError::ReadOnly { path, .. }
        | StoreError::CannotOpen { path, .. }
        | StoreError::Sqlite { path, .. } => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ffi;

    const DB: &str = "/srv/state/state.db";

    fn failure(extended: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(extended), None)
    }

    fn classify(extended: i32) -> StoreError {
        super::classify(DB, "committing accepted events", failure(extended)).0
    }

    #[test]
    fn every_storage_code_has_its_own_variant_and_message() {
        // (extended code, fault, variant check, words the message must contain)
        type Case = (
            i32,
            Option<StorageFault>,
            fn(&StoreError) -> bool,
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            (
                ffi::SQLITE_FULL,
                Some(StorageFault::DiskFull),
                |e| matches!(e, StoreError::DiskFull { .. }),
                &[
                    "disk is full",
                    DB,
                    "free space",
                    "503",
                    "committing accepted events",
                ],
            ),
            (
                ffi::SQLITE_IOERR_WRITE,
                Some(StorageFault::IoError),
                |e| matches!(e, StoreError::IoError { code, .. } if *code == ffi::SQLITE_IOERR_WRITE),
                &["I/O error", DB, "Error writing to disk", "dmesg"],
            ),
            (
                ffi::SQLITE_IOERR_FSYNC,
                Some(StorageFault::IoError),
                |e| matches!(e, StoreError::IoError { .. }),
                &["I/O error", "fsync"],
            ),
            (
                ffi::SQLITE_BUSY,
                Some(StorageFault::Locked),
                |e| matches!(e, StoreError::Busy { detail: None, .. }),
                &["locked by another process", DB],
            ),
            (
                ffi::SQLITE_LOCKED,
                Some(StorageFault::Locked),
                |e| matches!(e, StoreError::Busy { detail: None, .. }),
                &["locked by another process"],
            ),
            (
                ffi::SQLITE_CORRUPT,
                Some(StorageFault::Corrupt),
                |e| matches!(e, StoreError::Corrupt { .. }),
                &["not a valid SQLite database", "backup"],
            ),
            (
                ffi::SQLITE_NOTADB,
                Some(StorageFault::Corrupt),
                |e| matches!(e, StoreError::Corrupt { .. }),
                &["not a valid SQLite database"],
            ),
            (
                ffi::SQLITE_READONLY,
                Some(StorageFault::ReadOnly),
                |e| matches!(e, StoreError::ReadOnly { .. }),
                &["read-only", "permissions", DB],
            ),
            (
                ffi::SQLITE_READONLY_DBMOVED,
                Some(StorageFault::ReadOnly),
                |e| matches!(e, StoreError::ReadOnly { .. }),
                &["read-only"],
            ),
            (
                ffi::SQLITE_PERM,
                Some(StorageFault::ReadOnly),
                |e| matches!(e, StoreError::ReadOnly { .. }),
                &["read-only"],
            ),
            (
                ffi::SQLITE_CANTOPEN,
                Some(StorageFault::CannotOpen),
                |e| matches!(e, StoreError::CannotOpen { .. }),
                &["cannot open", DB, "open-files limit"],
            ),
            (
                ffi::SQLITE_CONSTRAINT_UNIQUE,
                None,
                |e| matches!(e, StoreError::Sqlite { .. }),
                &["committing accepted events failed"],
            ),
        ];
        for (code, fault, is_variant, words) in cases {
            let err = classify(*code);
            assert!(is_variant(&err), "code {code}: {err:?}");
            assert_eq!(err.fault(), *fault, "code {code}");
            let text = err.to_string();
            for word in *words {
                assert!(text.contains(word), "code {code}: {text:?} lacks {word:?}");
            }
            // Only a lock is reported as a lock.
            if *fault != Some(StorageFault::Locked) {
                assert!(!text.contains("locked"), "code {code}: {text:?}");
            }
            // The copy handed to every job of a failed batch says the same.
            assert_eq!(err.duplicate().to_string(), text, "code {code}");
            assert_eq!(err.duplicate().fault(), *fault, "code {code}");
        }
    }

    #[test]
    fn only_a_lock_lets_commits_continue() {
        for fault in [
            StorageFault::DiskFull,
            StorageFault::IoError,
            StorageFault::Corrupt,
            StorageFault::ReadOnly,
            StorageFault::CannotOpen,
        ] {
            assert!(fault.blocks_commits(), "{fault:?}");
            assert!(!fault.cause().contains(".db"), "no paths in HTTP causes");
        }
        assert!(!StorageFault::Locked.blocks_commits());
        assert_eq!(StorageFault::DiskFull.code(), "disk_full");
    }

    #[test]
    fn non_sqlite_errors_are_not_faults() {
        let (err, _) = super::classify(
            DB,
            "reading a receipt",
            rusqlite::Error::QueryReturnedNoRows,
        );
        assert!(matches!(err, StoreError::Sqlite { .. }), "{err:?}");
        assert_eq!(err.fault(), None);
    }

    #[test]
    fn writer_stopped_is_busy_without_a_fault() {
        let stopped = StoreError::Busy {
            path: DB.into(),
            op: "accepting an event".into(),
            detail: Some("the writer has stopped".into()),
        };
        assert_eq!(stopped.fault(), None);
        assert!(!stopped.to_string().contains("locked"));
    }
}
