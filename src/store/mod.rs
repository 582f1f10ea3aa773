//! The state root: one directory holding `state.db` (SQLite) and the master key. The only module
//! that imports rusqlite or contains SQL.

use crate::exit::ExitStatus;

/// Errors opening or using the state root.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state root {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// The exit status an error of this kind produces (SPEC §1.2).
    pub fn exit_status(&self) -> ExitStatus {
        ExitStatus::Unavailable
    }
}
