//! The process exit codes of SPEC §1.2, as one enum, and the mapping from typed errors to them.
//!
//! Nothing else in the crate picks a numeric exit code: commands return an [`ExitStatus`] or an
//! error, and `main` turns an error into a status with [`status_for`].

use std::process::ExitCode;

/// Exit status of a `kheishctl` invocation (SPEC §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: success.
    Success,
    /// 1: the command ran and found a failure (invalid config, signature mismatch, dead letter,
    /// lookup found nothing).
    Failure,
    /// 2: usage error; clap exits with this itself, we use it only for usage problems clap cannot
    /// see (for example a flag combination that depends on a file's content).
    Usage,
    /// 3: a deadline passed with work left (`drain-deliveries --timeout`).
    Deadline,
    /// 4: the state root or the config could not be opened or parsed (I/O, corrupt database,
    /// schema newer than this binary).
    Unavailable,
}

impl ExitStatus {
    /// The numeric code of this status.
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Usage => 2,
            ExitStatus::Deadline => 3,
            ExitStatus::Unavailable => 4,
        }
    }
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> ExitCode {
        ExitCode::from(status.code())
    }
}

/// An error that carries the exit status it must produce. Library code wraps errors in it (or
/// returns a typed error listed in [`status_for`]) where the spec fixes the exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StatusError {
    pub status: ExitStatus,
    pub message: String,
}

impl StatusError {
    pub fn new(status: ExitStatus, message: impl Into<String>) -> StatusError {
        StatusError {
            status,
            message: message.into(),
        }
    }
}

/// Picks the exit status for an error that reached `main`: typed errors anywhere in the chain
/// decide; anything else is a plain failure (1). Never matches on message text.
pub fn status_for(err: &anyhow::Error) -> ExitStatus {
    // A status attached with `.context(StatusError …)` is found by anyhow's own downcast, not by
    // walking the chain of sources.
    if let Some(e) = err.downcast_ref::<StatusError>() {
        return e.status;
    }
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<StatusError>() {
            return e.status;
        }
        if let Some(e) = cause.downcast_ref::<crate::secrets::SecretError>() {
            return secret_status(e);
        }
        if cause.is::<crate::store::StoreError>() {
            // The state root could not be opened or used (SPEC §1.2).
            return ExitStatus::Unavailable;
        }
        if cause.is::<crate::daemon::StartRefused>() {
            return ExitStatus::Unavailable;
        }
        if cause.is::<crate::config::LoadError>() {
            return ExitStatus::Unavailable;
        }
    }
    ExitStatus::Failure
}

/// The exit status of a secret error (SPEC §1.2): 4 when the state root, its database or the
/// master key cannot be used, 1 for a missing or bad value.
pub fn secret_status(err: &crate::secrets::SecretError) -> ExitStatus {
    if err.is_unavailable() {
        ExitStatus::Unavailable
    } else {
        ExitStatus::Failure
    }
}

/// True when the error chain contains a broken pipe (stdout closed by `head` and the like);
/// `main` exits 0 then, as ripgrep does.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        let io_kind = match cause.downcast_ref::<std::io::Error>() {
            Some(e) => Some(e.kind()),
            // serde_json keeps the io::Error inside (its `source` skips it): `--json` output
            // into a closed pipe fails as a serde_json error.
            None => cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind),
        };
        io_kind == Some(std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_spec_table() {
        let table = [
            (ExitStatus::Success, 0),
            (ExitStatus::Failure, 1),
            (ExitStatus::Usage, 2),
            (ExitStatus::Deadline, 3),
            (ExitStatus::Unavailable, 4),
        ];
        for (status, code) in table {
            assert_eq!(status.code(), code, "{status:?}");
        }
    }

    #[test]
    fn status_error_in_chain_decides() {
        let err = anyhow::Error::new(StatusError::new(ExitStatus::Deadline, "late"))
            .context("draining deliveries");
        assert_eq!(status_for(&err), ExitStatus::Deadline);
        assert_eq!(status_for(&anyhow::anyhow!("plain")), ExitStatus::Failure);
    }

    #[test]
    fn status_attached_as_context_decides() {
        let err =
            anyhow::anyhow!("inner").context(StatusError::new(ExitStatus::Unavailable, "outer"));
        assert_eq!(status_for(&err), ExitStatus::Unavailable);
    }

    #[test]
    fn broken_pipe_is_detected_through_context() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "pipe");
        let err = anyhow::Error::new(io).context("writing stdout");
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }

    #[test]
    fn typed_errors_deep_in_the_chain_decide() {
        use crate::secrets::SecretError;
        let err = anyhow::Error::new(SecretError::WrongMasterKey).context("rotating");
        assert_eq!(status_for(&err), ExitStatus::Unavailable);
        let err = anyhow::Error::new(SecretError::InlineEmpty).context("reading");
        assert_eq!(status_for(&err), ExitStatus::Failure);
        let err = anyhow::Error::new(crate::daemon::StartRefused("bad config".into()));
        assert_eq!(status_for(&err), ExitStatus::Unavailable);
    }

    #[test]
    fn broken_pipe_inside_a_json_error_is_detected() {
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let err = anyhow::Error::new(serde_json::Error::io(io)).context("printing");
        assert!(is_broken_pipe(&err));
        let other = anyhow::Error::new(serde_json::from_str::<u8>("x").unwrap_err());
        assert!(!is_broken_pipe(&other));
    }
}
