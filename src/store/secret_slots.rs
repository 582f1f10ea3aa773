//! Secret-store slots at rest (SPEC §4): the SQL behind [`crate::secrets::SecretStore`].
//!
//! This module stores and returns sealed bytes only. It never sees a plaintext value and knows
//! nothing about the cipher; `secrets` seals before writing and opens after reading.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{Store, StoreError};

/// An AEAD-sealed value as stored: the nonce and the ciphertext (including the tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// One slot as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSlotRecord {
    pub secret_ref: String,
    /// The current value: used for everything, outbound and inbound.
    pub current: Sealed,
    /// The value before the last rotation, kept for inbound verification during its grace window.
    pub previous: Option<Sealed>,
    /// Unix ms until which `previous` may verify inbound requests (exclusive).
    pub previous_valid_until_ms: Option<i64>,
    /// Unix ms of the first write of this slot.
    pub created_at_ms: i64,
    /// Unix ms of the last rotation.
    pub updated_at_ms: i64,
}

/// Slot metadata for listings; no sealed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSlotSummary {
    pub secret_ref: String,
    pub updated_at_ms: i64,
    /// A previous value is stored (its window may have ended; see `previous_valid_until_ms`).
    pub has_previous: bool,
    pub previous_valid_until_ms: Option<i64>,
}

/// One rotation to write.
#[derive(Debug, Clone)]
pub struct SlotWrite<'a> {
    pub secret_ref: &'a str,
    /// The new current value, already sealed.
    pub sealed: Sealed,
    /// Keep the current value as `previous` until this unix ms; `None` drops any previous value.
    pub keep_previous_until_ms: Option<i64>,
    /// Unix ms of this write.
    pub now_ms: i64,
    /// Where the value came from (`env`, `file`, `stdin`, `generate`, `api`…), for the audit row.
    pub source: &'a str,
}

/// What a rotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotWriteOutcome {
    /// The slot did not exist before.
    pub created: bool,
    /// The old current value was kept as `previous` (the slot existed and a window was asked).
    pub previous_kept: bool,
}

impl Store {
    /// Reads one slot; `None` when it does not exist.
    pub fn secret_slot(&self, secret_ref: &str) -> Result<Option<SecretSlotRecord>, StoreError> {
        self.conn()
            .query_row(
                "SELECT nonce, ciphertext, previous_nonce, previous_ciphertext,
                        previous_valid_until_ms, created_at_ms, updated_at_ms
                 FROM secret_slots WHERE secret_ref = ?1",
                [secret_ref],
                |row| {
                    let previous_nonce: Option<Vec<u8>> = row.get(2)?;
                    let previous_ciphertext: Option<Vec<u8>> = row.get(3)?;
                    Ok(SecretSlotRecord {
                        secret_ref: secret_ref.to_string(),
                        current: Sealed {
                            nonce: row.get(0)?,
                            ciphertext: row.get(1)?,
                        },
                        previous: match (previous_nonce, previous_ciphertext) {
                            (Some(nonce), Some(ciphertext)) => Some(Sealed { nonce, ciphertext }),
                            _ => None,
                        },
                        previous_valid_until_ms: row.get(4)?,
                        created_at_ms: row.get(5)?,
                        updated_at_ms: row.get(6)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(&format!("reading secret slot `{secret_ref}`"), e))
    }

    /// Every slot's metadata, ordered by ref.
    pub fn secret_slots(&self) -> Result<Vec<SecretSlotSummary>, StoreError> {
        let op = "listing secret slots";
        let mut stmt = self
            .conn()
            .prepare(
                "SELECT secret_ref, updated_at_ms, previous_ciphertext IS NOT NULL,
                        previous_valid_until_ms
                 FROM secret_slots ORDER BY secret_ref",
            )
            .map_err(|e| self.err(op, e))?;
        let rows = stmt
            .query_map([], |row| {
                Ok(SecretSlotSummary {
                    secret_ref: row.get(0)?,
                    updated_at_ms: row.get(1)?,
                    has_previous: row.get(2)?,
                    previous_valid_until_ms: row.get(3)?,
                })
            })
            .map_err(|e| self.err(op, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(op, e))
    }

    /// Writes a new current value and the audit row in one short transaction. The old current
    /// value moves to `previous` inside SQL (no read-modify-write race with another writer).
    pub fn write_secret_slot(&self, write: &SlotWrite<'_>) -> Result<SlotWriteOutcome, StoreError> {
        let op = format!("rotating secret slot `{}`", write.secret_ref);
        let tx = rusqlite::Transaction::new_unchecked(self.conn(), TransactionBehavior::Immediate)
            .map_err(|e| self.err(&op, e))?;
        let outcome = write_slot_in(&tx, write).map_err(|e| self.err(&op, e))?;
        tx.commit().map_err(|e| self.err(&op, e))?;
        Ok(outcome)
    }

    /// Deletes a slot and its rotation history; `false` when it did not exist. Callers check
    /// first that no connector references it (SPEC §4).
    pub fn delete_secret_slot(&self, secret_ref: &str) -> Result<bool, StoreError> {
        let op = format!("deleting secret slot `{secret_ref}`");
        let tx = rusqlite::Transaction::new_unchecked(self.conn(), TransactionBehavior::Immediate)
            .map_err(|e| self.err(&op, e))?;
        let n = tx
            .execute(
                "DELETE FROM secret_slots WHERE secret_ref = ?1",
                [secret_ref],
            )
            .map_err(|e| self.err(&op, e))?;
        tx.execute(
            "DELETE FROM secret_rotations WHERE secret_ref = ?1",
            [secret_ref],
        )
        .map_err(|e| self.err(&op, e))?;
        tx.commit().map_err(|e| self.err(&op, e))?;
        Ok(n > 0)
    }

    /// Number of recorded rotations of one slot (audit; used by tests and listings).
    pub fn secret_rotation_count(&self, secret_ref: &str) -> Result<u64, StoreError> {
        self.conn()
            .query_row(
                "SELECT COUNT(*) FROM secret_rotations WHERE secret_ref = ?1",
                [secret_ref],
                |row| row.get(0),
            )
            .map_err(|e| self.err("counting secret rotations", e))
    }
}

/// The rotation of [`Store::write_secret_slot`] inside a transaction the caller commits (the
/// runtime connector store writes slots and the connector document together).
pub(crate) fn write_slot_in(
    tx: &rusqlite::Transaction<'_>,
    write: &SlotWrite<'_>,
) -> rusqlite::Result<SlotWriteOutcome> {
    // SQLite evaluates every right-hand side against the row as it was, so `nonce` below is
    // the old current value.
    let updated = tx.execute(
        "UPDATE secret_slots SET
            previous_nonce          = CASE WHEN ?1 IS NULL THEN NULL ELSE nonce END,
            previous_ciphertext     = CASE WHEN ?1 IS NULL THEN NULL ELSE ciphertext END,
            previous_valid_until_ms = ?1,
            nonce                   = ?2,
            ciphertext              = ?3,
            updated_at_ms           = ?4
         WHERE secret_ref = ?5",
        params![
            write.keep_previous_until_ms,
            write.sealed.nonce,
            write.sealed.ciphertext,
            write.now_ms,
            write.secret_ref
        ],
    )?;
    let created = updated == 0;
    if created {
        tx.execute(
            "INSERT INTO secret_slots (secret_ref, nonce, ciphertext, created_at_ms, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?4)",
            params![
                write.secret_ref,
                write.sealed.nonce,
                write.sealed.ciphertext,
                write.now_ms
            ],
        )?;
    }
    let previous_kept = !created && write.keep_previous_until_ms.is_some();
    tx.execute(
        "INSERT INTO secret_rotations (secret_ref, rotated_at_ms, grace_until_ms, source)
         VALUES (?1, ?2, ?3, ?4)",
        params![
            write.secret_ref,
            write.now_ms,
            write.keep_previous_until_ms.filter(|_| previous_kept),
            write.source
        ],
    )?;
    Ok(SlotWriteOutcome {
        created,
        previous_kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(tag: u8) -> Sealed {
        Sealed {
            nonce: vec![tag; 24],
            ciphertext: vec![tag; 40],
        }
    }

    fn write(store: &Store, tag: u8, keep: Option<i64>, now_ms: i64) -> SlotWriteOutcome {
        store
            .write_secret_slot(&SlotWrite {
                secret_ref: "a.b",
                sealed: sealed(tag),
                keep_previous_until_ms: keep,
                now_ms,
                source: "test",
            })
            .unwrap()
    }

    #[test]
    fn rotation_moves_current_to_previous_only_with_a_window() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        assert_eq!(store.secret_slot("a.b").unwrap(), None);

        let first = write(&store, 1, Some(500), 100);
        assert_eq!(
            first,
            SlotWriteOutcome {
                created: true,
                previous_kept: false
            }
        );
        let slot = store.secret_slot("a.b").unwrap().unwrap();
        assert_eq!(slot.current, sealed(1));
        assert_eq!(slot.previous, None);
        assert_eq!(slot.previous_valid_until_ms, None);

        let second = write(&store, 2, Some(900), 200);
        assert!(second.previous_kept && !second.created);
        let slot = store.secret_slot("a.b").unwrap().unwrap();
        assert_eq!(slot.current, sealed(2));
        assert_eq!(slot.previous, Some(sealed(1)));
        assert_eq!(slot.previous_valid_until_ms, Some(900));
        assert_eq!((slot.created_at_ms, slot.updated_at_ms), (100, 200));

        let third = write(&store, 3, None, 300);
        assert!(!third.previous_kept);
        let slot = store.secret_slot("a.b").unwrap().unwrap();
        assert_eq!(slot.current, sealed(3));
        assert_eq!(slot.previous, None);

        assert_eq!(store.secret_rotation_count("a.b").unwrap(), 3);
        let listed = store.secret_slots().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].updated_at_ms, 300);
        assert!(!listed[0].has_previous);
    }
}
