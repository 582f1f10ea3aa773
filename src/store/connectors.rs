//! The runtime connector store at rest (SPEC §12): one JSON document per daemon-managed
//! connector, keyed by kind and name. Documents use the connector file's field names, with
//! secret fields only as `*_secret_ref` / `*_env` (values live in the secret slots).
//!
//! A connector change and the secret slots it writes commit in ONE transaction, so a failed
//! write leaves neither. Every change bumps `runtime_connectors_version` in `store_meta`; the
//! daemon's watcher compares that one number to notice a change made by another process.

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde_json::Value;

use super::secret_slots::{write_slot_in, SlotWrite, SlotWriteOutcome};
use super::{Store, StoreError};
use crate::model::ConnectorKind;

const VERSION_KEY: &str = "runtime_connectors_version";

/// One stored daemon-managed connector.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConnectorRecord {
    pub kind: ConnectorKind,
    pub name: String,
    /// The connector's document (a JSON object in the file's field names).
    pub document: Value,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// What [`Store::put_runtime_connector`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    /// The connector did not exist before.
    pub created: bool,
}

/// What [`Store::put_runtime_connector`] did, with what each slot write did (in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutWithSlots {
    pub connector: PutOutcome,
    pub slots: Vec<SlotWriteOutcome>,
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String, i64, i64)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

impl Store {
    fn to_record(
        &self,
        (kind, name, document, created_at_ms, updated_at_ms): (String, String, String, i64, i64),
    ) -> Result<RuntimeConnectorRecord, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt {
            path: self.db_path.clone(),
            source: what.into(),
        };
        let kind: ConnectorKind = kind.parse().map_err(|_| {
            corrupt(format!(
                "runtime connector `{name}` has unknown kind `{kind}`"
            ))
        })?;
        let document = serde_json::from_str(&document)
            .map_err(|e| corrupt(format!("runtime connector `{kind}/{name}`: {e}")))?;
        Ok(RuntimeConnectorRecord {
            kind,
            name,
            document,
            created_at_ms,
            updated_at_ms,
        })
    }

    /// Every daemon-managed connector, by kind then name.
    pub fn runtime_connectors(&self) -> Result<Vec<RuntimeConnectorRecord>, StoreError> {
        let op = "listing runtime connectors";
        let mut stmt = self
            .conn()
            .prepare_cached(
                "SELECT kind, name, document, created_at_ms, updated_at_ms
                 FROM runtime_connectors ORDER BY kind, name",
            )
            .map_err(|e| self.err(op, e))?;
        let rows = stmt
            .query_map([], row_to_record)
            .map_err(|e| self.err(op, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(op, e))?;
        rows.into_iter().map(|r| self.to_record(r)).collect()
    }

    /// One daemon-managed connector.
    pub fn runtime_connector(
        &self,
        kind: ConnectorKind,
        name: &str,
    ) -> Result<Option<RuntimeConnectorRecord>, StoreError> {
        let op = "reading a runtime connector";
        let row = self
            .conn()
            .query_row(
                "SELECT kind, name, document, created_at_ms, updated_at_ms
                 FROM runtime_connectors WHERE kind = ?1 AND name = ?2",
                params![kind.as_str(), name],
                row_to_record,
            )
            .optional()
            .map_err(|e| self.err(op, e))?;
        row.map(|r| self.to_record(r)).transpose()
    }

    /// A number that changes with every change of the runtime connector store.
    pub fn runtime_connectors_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .meta_get(VERSION_KEY)?
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    /// Creates or replaces one connector document and writes `slots` in the same transaction.
    pub fn put_runtime_connector(
        &self,
        kind: ConnectorKind,
        name: &str,
        document: &Value,
        slots: &[SlotWrite<'_>],
        now_ms: i64,
    ) -> Result<PutOutcome, StoreError> {
        self.put_runtime_connector_with_slots(kind, name, document, slots, now_ms)
            .map(|out| out.connector)
    }

    /// [`Store::put_runtime_connector`], also telling what each slot write did (a slot written
    /// with `keep_previous_until_ms` keeps its old value for that grace window, as a rotation).
    pub fn put_runtime_connector_with_slots(
        &self,
        kind: ConnectorKind,
        name: &str,
        document: &Value,
        slots: &[SlotWrite<'_>],
        now_ms: i64,
    ) -> Result<PutWithSlots, StoreError> {
        let op = format!("writing runtime connector `{kind}/{name}`");
        let tx = rusqlite::Transaction::new_unchecked(self.conn(), TransactionBehavior::Immediate)
            .map_err(|e| self.err(&op, e))?;
        let mut slot_outcomes = Vec::with_capacity(slots.len());
        for slot in slots {
            slot_outcomes.push(write_slot_in(&tx, slot).map_err(|e| self.err(&op, e))?);
        }
        let updated = tx
            .execute(
                "UPDATE runtime_connectors SET document = ?3, updated_at_ms = ?4
                 WHERE kind = ?1 AND name = ?2",
                params![kind.as_str(), name, document.to_string(), now_ms],
            )
            .map_err(|e| self.err(&op, e))?;
        if updated == 0 {
            tx.execute(
                "INSERT INTO runtime_connectors (kind, name, document, created_at_ms, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?4)",
                params![kind.as_str(), name, document.to_string(), now_ms],
            )
            .map_err(|e| self.err(&op, e))?;
        }
        bump_version(&tx).map_err(|e| self.err(&op, e))?;
        tx.commit().map_err(|e| self.err(&op, e))?;
        Ok(PutWithSlots {
            connector: PutOutcome {
                created: updated == 0,
            },
            slots: slot_outcomes,
        })
    }

    /// Removes one connector document; `false` when there was none.
    pub fn delete_runtime_connector(
        &self,
        kind: ConnectorKind,
        name: &str,
    ) -> Result<bool, StoreError> {
        let op = format!("deleting runtime connector `{kind}/{name}`");
        let tx = rusqlite::Transaction::new_unchecked(self.conn(), TransactionBehavior::Immediate)
            .map_err(|e| self.err(&op, e))?;
        let n = tx
            .execute(
                "DELETE FROM runtime_connectors WHERE kind = ?1 AND name = ?2",
                params![kind.as_str(), name],
            )
            .map_err(|e| self.err(&op, e))?;
        if n > 0 {
            bump_version(&tx).map_err(|e| self.err(&op, e))?;
        }
        tx.commit().map_err(|e| self.err(&op, e))?;
        Ok(n > 0)
    }
}

fn bump_version(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO store_meta (key, value) VALUES (?1, CAST('1' AS BLOB))
         ON CONFLICT (key) DO UPDATE SET
            value = CAST(CAST(CAST(CAST(value AS TEXT) AS INTEGER) + 1 AS TEXT) AS BLOB)",
        [VERSION_KEY],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_round_trip_and_every_change_bumps_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.runtime_connectors_version().unwrap(), 0);
        let doc = json!({"name": "d", "platform": "discord"});
        let out = store
            .put_runtime_connector(ConnectorKind::External, "d", &doc, &[], 10)
            .unwrap();
        assert!(out.created);
        assert_eq!(store.runtime_connectors_version().unwrap(), 1);
        let doc2 = json!({"name": "d", "platform": "discord", "fixed_session_id": "s"});
        let out = store
            .put_runtime_connector(ConnectorKind::External, "d", &doc2, &[], 20)
            .unwrap();
        assert!(!out.created);
        let got = store
            .runtime_connector(ConnectorKind::External, "d")
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.document, got.created_at_ms, got.updated_at_ms),
            (doc2, 10, 20)
        );
        assert_eq!(store.runtime_connectors().unwrap().len(), 1);
        assert!(store
            .delete_runtime_connector(ConnectorKind::External, "d")
            .unwrap());
        assert!(!store
            .delete_runtime_connector(ConnectorKind::External, "d")
            .unwrap());
        assert_eq!(store.runtime_connectors_version().unwrap(), 3);
        assert!(store.runtime_connectors().unwrap().is_empty());
    }
}
