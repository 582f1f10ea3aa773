//! The next `getUpdates` offset of each polling Telegram connector (SPEC §9.2): read when a
//! poller starts, written after each processed batch. One short statement each; the poller
//! is the only writer of its connector's row.

use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};

impl Store {
    /// The saved next offset of Telegram connector `name`, if it ever processed a batch.
    pub fn poll_offset(&self, name: &str) -> Result<Option<i64>, StoreError> {
        self.conn()
            .prepare_cached(
                "SELECT next_offset FROM telegram_poll_offsets WHERE connector_name = ?1",
            )
            .and_then(|mut st| st.query_row([name], |row| row.get(0)).optional())
            .map_err(|e| self.err("reading a telegram poll offset", e))
    }

    /// Saves `next_offset` for connector `name` (durably, before the poller asks for more).
    pub fn save_poll_offset(
        &self,
        name: &str,
        next_offset: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let op = "saving a telegram poll offset";
        let tx = self.write_tx(op)?;
        tx.prepare_cached(
            "INSERT INTO telegram_poll_offsets (connector_name, next_offset, updated_at_ms)
             VALUES (?1, ?2, ?3)
             ON CONFLICT (connector_name) DO UPDATE SET next_offset = excluded.next_offset,
                 updated_at_ms = excluded.updated_at_ms",
        )
        .and_then(|mut st| st.execute(params![name, next_offset, now_ms]))
        .map_err(|e| self.err(op, e))?;
        tx.commit().map_err(|e| self.err(op, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_saved_per_connector() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.poll_offset("bot").unwrap(), None);
        store.save_poll_offset("bot", 42, 1).unwrap();
        store.save_poll_offset("bot", 43, 2).unwrap();
        store.save_poll_offset("other", 7, 2).unwrap();
        assert_eq!(store.poll_offset("bot").unwrap(), Some(43));
        assert_eq!(store.poll_offset("other").unwrap(), Some(7));
    }
}
