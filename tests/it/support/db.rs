//! The tests' own view of a state root's `state.db`, independent of kheishctl's `store`: opened
//! read-only with rusqlite (beside a running daemon or after it), with the few queries tests
//! assert on — row counts, pragmas, the receipts and runs of a connector, secret slots
//! decrypted with XChaCha20-Poly1305 and the slot ref as associated data (SPEC §4), and the
//! rotation log. That also proves secrets are encrypted at rest.
//!
//! The one write is [`set_user_version`], which makes a database look as if a newer kheishctl
//! had migrated it; tests that need other rows seed them themselves, next to the test.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

/// Which value of a secret slot to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Current,
    /// The value kept for a `--grace` window.
    Previous,
}

/// A read-only connection to `<state root>/state.db`.
pub struct StateDb {
    conn: Connection,
    path: PathBuf,
}

impl StateDb {
    /// Opens the state root's database read-only (panics when it cannot be opened).
    pub fn open(state_root: &Path) -> StateDb {
        let path = state_root.join("state.db");
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("opening {} read-only: {e}", path.display()));
        StateDb { conn, path }
    }

    /// `SELECT count(*) FROM table`.
    pub fn count(&self, table: &str) -> i64 {
        assert!(
            table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "not a table name: {table:?}"
        );
        self.conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("counting {table} in {}: {e}", self.path.display()))
    }

    /// The value of `PRAGMA name`, integers as decimal text.
    pub fn pragma(&self, name: &str) -> String {
        assert!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "not a pragma name: {name:?}"
        );
        let value: rusqlite::types::Value = self
            .conn
            .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("PRAGMA {name} on {}: {e}", self.path.display()));
        match value {
            rusqlite::types::Value::Integer(i) => i.to_string(),
            rusqlite::types::Value::Text(t) => t,
            other => format!("{other:?}"),
        }
    }

    /// Every run's status: run id -> status.
    pub fn run_statuses(&self) -> HashMap<String, String> {
        let mut stmt = self
            .conn
            .prepare("SELECT run_id, status FROM runs")
            .unwrap_or_else(|e| panic!("reading runs in {}: {e}", self.path.display()));
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap_or_else(|e| panic!("reading runs in {}: {e}", self.path.display()));
        rows.map(|r| r.expect("a runs row")).collect()
    }

    /// Deliveries by status: status -> count.
    pub fn delivery_states(&self) -> HashMap<String, i64> {
        let mut stmt = self
            .conn
            .prepare("SELECT status, count(*) FROM deliveries GROUP BY status")
            .unwrap_or_else(|e| panic!("reading deliveries in {}: {e}", self.path.display()));
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap_or_else(|e| panic!("reading deliveries in {}: {e}", self.path.display()));
        rows.map(|r| r.expect("a deliveries row")).collect()
    }

    /// The receipts of one connector: stored receipt key → run id.
    pub fn receipt_runs(
        &self,
        connector_kind: &str,
        connector_name: &str,
    ) -> HashMap<String, String> {
        self.rows(
            "SELECT receipt_key, run_id FROM receipts WHERE connector_kind = ?1 AND connector_name = ?2",
            [connector_kind, connector_name],
        )
        .into_iter()
        .collect()
    }

    /// The runs of one connector: `(run id, parsed metadata)`.
    pub fn run_metadata(&self, connector_kind: &str, connector_name: &str) -> Vec<(String, Value)> {
        self.rows::<String, String>(
            "SELECT run_id, metadata FROM runs WHERE connector_kind = ?1 AND connector_name = ?2",
            [connector_kind, connector_name],
        )
        .into_iter()
        .map(|(run_id, metadata)| {
            let metadata = serde_json::from_str(&metadata)
                .unwrap_or_else(|e| panic!("run {run_id} has metadata that is not JSON ({e})"));
            (run_id, metadata)
        })
        .collect()
    }

    /// A secret slot's value, decrypted with `master_key_b64` (standard base64 of 32 bytes);
    /// `None` when the slot holds no such value. Panics when the slot does not exist or does
    /// not decrypt.
    pub fn secret_value(
        &self,
        master_key_b64: &str,
        secret_ref: &str,
        slot: Slot,
    ) -> Option<String> {
        let sql = match slot {
            Slot::Current => "SELECT nonce, ciphertext FROM secret_slots WHERE secret_ref = ?1",
            Slot::Previous => {
                "SELECT previous_nonce, previous_ciphertext FROM secret_slots WHERE secret_ref = ?1"
            }
        };
        let (nonce, ciphertext): (Option<Vec<u8>>, Option<Vec<u8>>) = self
            .conn
            .query_row(sql, [secret_ref], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap_or_else(|e| panic!("reading secret slot {secret_ref}: {e}"));
        let (nonce, ciphertext) = (nonce?, ciphertext?);
        let key = base64::engine::general_purpose::STANDARD
            .decode(master_key_b64)
            .expect("the master key is standard base64");
        let cipher = XChaCha20Poly1305::new_from_slice(&key).expect("a 32-byte master key");
        let plaintext = cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: secret_ref.as_bytes(),
                },
            )
            .expect("the slot decrypts with the key it was written with");
        Some(String::from_utf8(plaintext).expect("a UTF-8 secret"))
    }

    /// The rotation log of one slot, oldest first: `(grace_until_ms, source)`.
    pub fn secret_rotations(&self, secret_ref: &str) -> Vec<(Option<i64>, String)> {
        self.rows(
            "SELECT grace_until_ms, source FROM secret_rotations WHERE secret_ref = ?1 ORDER BY id",
            [secret_ref],
        )
    }

    fn rows<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Vec<(A, B)> {
        self.conn
            .prepare(sql)
            .and_then(|mut stmt| {
                stmt.query_map(params, |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()
            })
            .unwrap_or_else(|e| panic!("{sql} on {}: {e}", self.path.display()))
    }
}

/// Sets `PRAGMA user_version` of the state root's database, as a newer kheishctl's migration
/// would have left it.
pub fn set_user_version(state_root: &Path, version: i64) {
    let path = state_root.join("state.db");
    Connection::open(&path)
        .and_then(|conn| conn.pragma_update(None, "user_version", version))
        .unwrap_or_else(|e| panic!("setting user_version of {}: {e}", path.display()));
}
