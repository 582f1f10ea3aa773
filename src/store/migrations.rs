//! The schema of `state.db` as an ordered, append-only list of migrations keyed by
//! `PRAGMA user_version` (SPEC §3). This module owns schema DDL; it does no other SQL.
//!
//! Rules (cargo's, for its own SQLite cache; written down so nobody has to rediscover them):
//!
//! - **Never edit, reorder or remove a migration that has shipped.** Databases in the field have
//!   already run it; a change would only reach fresh databases and the two would drift apart.
//!   Fix a shipped mistake with a new migration.
//! - **Only append.** The version of migration `i` in [`MIGRATIONS`] is `i + 1`; the database's
//!   `user_version` is the number of migrations it has run. Appending an entry is the whole job:
//!   [`SUPPORTED_VERSION`] follows from the list's length.
//! - **One migration, one transaction.** All pending migrations run inside one
//!   `BEGIN IMMEDIATE` transaction that re-reads `user_version` first, so two processes opening
//!   a fresh state root at the same moment cannot both apply the same step.
//! - **A database newer than this binary is refused and left untouched**
//!   ([`super::StoreError::NewerSchema`]): an older binary cannot know what a newer schema means.
//! - Migrations hold schema only (tables, indexes). They do not write rows that depend on the
//!   environment (master keys, config), which would make a replay on another machine differ.

use rusqlite::{Connection, TransactionBehavior};

use super::{sqlite_error, StoreError};

/// One schema step. Its version is its position in [`MIGRATIONS`] plus one.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// A short description, for error messages and `sqlite3 .schema` readers.
    pub name: &'static str,
    /// The DDL, run with `execute_batch` inside the migration transaction.
    pub sql: &'static str,
    /// True when `sql` edits `sqlite_schema` itself (`PRAGMA writable_schema`, SQLite's documented
    /// way to change a CHECK constraint without rebuilding the table; such SQL ends with
    /// `PRAGMA writable_schema = RESET`, which reloads this connection's schema): [`migrate`]
    /// then bumps `PRAGMA schema_version` in the same transaction, so every other connection
    /// re-reads the schema too.
    pub edits_schema_text: bool,
}

/// Every migration this binary knows, oldest first. APPEND ONLY (see the module docs).
pub const MIGRATIONS: &[Migration] = &[
    // Version 1: the encrypted secret store (SPEC §4).
    Migration {
        name: "store metadata and the secret store",
        sql: "
            -- Small key/value facts about the store itself, e.g. the master-key check value.
            CREATE TABLE store_meta (
                key   TEXT PRIMARY KEY NOT NULL,
                value BLOB NOT NULL
            ) STRICT;

            -- One row per secret ref. Values are AEAD-sealed by `secrets`; the store never sees
            -- plaintext. The previous value is kept only while a rotation's grace window lasts.
            CREATE TABLE secret_slots (
                secret_ref              TEXT PRIMARY KEY NOT NULL,
                nonce                   BLOB NOT NULL,
                ciphertext              BLOB NOT NULL,
                previous_nonce          BLOB,
                previous_ciphertext     BLOB,
                previous_valid_until_ms INTEGER,
                created_at_ms           INTEGER NOT NULL,
                updated_at_ms           INTEGER NOT NULL,
                CHECK ((previous_nonce IS NULL) = (previous_ciphertext IS NULL))
            ) STRICT;

            -- Audit trail of rotations: who/when/how long the previous value stays valid. No values.
            CREATE TABLE secret_rotations (
                id             INTEGER PRIMARY KEY,
                secret_ref     TEXT NOT NULL,
                rotated_at_ms  INTEGER NOT NULL,
                grace_until_ms INTEGER,
                source         TEXT NOT NULL
            ) STRICT;
            CREATE INDEX secret_rotations_by_ref ON secret_rotations (secret_ref, rotated_at_ms);
        ",
        edits_schema_text: false,
    },
    // Version 2: durable ingress (SPEC §3, §6, §11.1): sessions, bindings, runs, outputs,
    // receipts and stored assets. JSON columns hold canonical JSON written by `serde_json`.
    Migration {
        name: "sessions, runs, receipts and assets",
        sql: "
            CREATE TABLE sessions (
                session_id       TEXT PRIMARY KEY NOT NULL,
                created_at_ms    INTEGER NOT NULL,
                updated_at_ms    INTEGER NOT NULL,
                -- `connector:KIND/NAME` when ingress created it, `control_plane` for PUT.
                created_by       TEXT NOT NULL,
                persona_id       TEXT,
                capability_scope TEXT NOT NULL,
                credential_scope TEXT NOT NULL,
                -- Default reply targets: JSON array of {plugin, address}.
                reply_targets    TEXT NOT NULL,
                metadata         TEXT NOT NULL
            ) STRICT;

            -- A binding key maps to at most one session; a bound key is never re-bound.
            CREATE TABLE session_bindings (
                binding_key   TEXT PRIMARY KEY NOT NULL,
                session_id    TEXT NOT NULL REFERENCES sessions (session_id),
                created_at_ms INTEGER NOT NULL
            ) STRICT;
            CREATE INDEX session_bindings_by_session ON session_bindings (session_id);

            -- `seq` orders runs by creation (claim order, listings).
            CREATE TABLE runs (
                seq                 INTEGER PRIMARY KEY,
                run_id              TEXT NOT NULL UNIQUE,
                session_id          TEXT NOT NULL REFERENCES sessions (session_id),
                connector_kind      TEXT NOT NULL,
                connector_name      TEXT NOT NULL,
                status              TEXT NOT NULL
                    CHECK (status IN ('queued', 'claimed', 'completed', 'failed')),
                actor_id            TEXT NOT NULL,
                -- {content?, input_items?, attachments?} as accepted (assets by id).
                input               TEXT NOT NULL,
                metadata            TEXT NOT NULL,
                -- Reply-target snapshot taken at ingress: JSON array of {plugin, address}.
                reply_targets       TEXT NOT NULL,
                -- {persona_id, capability_scope, credential_scope} handed to the handler.
                policy              TEXT NOT NULL,
                created_at_ms       INTEGER NOT NULL,
                updated_at_ms       INTEGER NOT NULL,
                claim_owner         TEXT,
                claim_expires_at_ms INTEGER,
                claim_count         INTEGER NOT NULL DEFAULT 0,
                finished_at_ms      INTEGER,
                error               TEXT
            ) STRICT;
            CREATE INDEX runs_by_status ON runs (status, seq);
            CREATE INDEX runs_by_session ON runs (session_id, seq);
            CREATE INDEX runs_by_connector ON runs (connector_kind, connector_name, seq);

            -- Output queued by a handler; each becomes deliveries (one per reply target).
            CREATE TABLE run_outputs (
                seq           INTEGER PRIMARY KEY,
                output_id     TEXT NOT NULL UNIQUE,
                run_id        TEXT NOT NULL REFERENCES runs (run_id),
                content       TEXT,
                parts         TEXT,
                -- Explicit override targets (JSON array) or NULL to use the run's snapshot.
                reply_targets TEXT,
                created_at_ms INTEGER NOT NULL
            ) STRICT;
            CREATE INDEX run_outputs_by_run ON run_outputs (run_id, seq);

            -- Ingress receipts: raw idempotency keys are never stored, only hashes.
            CREATE TABLE receipts (
                receipt_key          TEXT PRIMARY KEY NOT NULL,
                connector_kind       TEXT NOT NULL,
                connector_name       TEXT NOT NULL,
                key_sha256           TEXT NOT NULL,
                fingerprint          TEXT NOT NULL,
                status               TEXT NOT NULL CHECK (status IN ('submitted')),
                run_id               TEXT NOT NULL REFERENCES runs (run_id),
                session_id           TEXT NOT NULL,
                received_at_ms       INTEGER NOT NULL,
                duplicate_hits       INTEGER NOT NULL DEFAULT 0,
                last_duplicate_at_ms INTEGER
            ) STRICT;
            CREATE INDEX receipts_by_connector ON receipts (connector_kind, connector_name, received_at_ms);
            CREATE INDEX receipts_by_time ON receipts (received_at_ms);
            CREATE INDEX receipts_by_run ON receipts (run_id);
            CREATE INDEX receipts_by_session ON receipts (session_id, received_at_ms);

            -- Inline assets from ingress payloads, referenced from runs by id.
            CREATE TABLE assets (
                asset_id      TEXT PRIMARY KEY NOT NULL,
                media_type    TEXT NOT NULL,
                file_name     TEXT,
                sha256        TEXT NOT NULL,
                size          INTEGER NOT NULL,
                data          BLOB NOT NULL,
                created_at_ms INTEGER NOT NULL
            ) STRICT;
        ",
        edits_schema_text: false,
    },
    // Version 3: the delivery queue (SPEC §11.3–§11.6).
    Migration {
        name: "delivery queue and per-target state",
        sql: "
            -- One delivery per (output, target); a replay is a new row pointing at its source.
            CREATE TABLE deliveries (
                seq                       INTEGER PRIMARY KEY,
                delivery_id               TEXT NOT NULL UNIQUE,
                output_id                 TEXT NOT NULL REFERENCES run_outputs (output_id),
                run_id                    TEXT NOT NULL,
                session_id                TEXT NOT NULL,
                connector_kind            TEXT NOT NULL,
                connector_name            TEXT NOT NULL,
                plugin                    TEXT NOT NULL,
                address                   TEXT NOT NULL,
                target_key                TEXT NOT NULL,
                status                    TEXT NOT NULL
                    CHECK (status IN ('pending', 'retrying', 'delivered', 'dead_lettered')),
                attempts                  INTEGER NOT NULL DEFAULT 0,
                next_attempt_at_ms        INTEGER NOT NULL,
                lease_owner               TEXT,
                lease_expires_at_ms       INTEGER,
                last_error                TEXT,
                last_error_code           TEXT,
                last_http_status          INTEGER,
                -- Per-step progress of multi-step transports (JSON).
                progress                  TEXT,
                created_at_ms             INTEGER NOT NULL,
                updated_at_ms             INTEGER NOT NULL,
                delivered_at_ms           INTEGER,
                dead_lettered_at_ms       INTEGER,
                resolution                TEXT,
                resolved_at_ms            INTEGER,
                replayed_from_delivery_id TEXT REFERENCES deliveries (delivery_id)
            ) STRICT;
            -- Open deliveries of a target in creation order: the FIFO.
            CREATE INDEX deliveries_open_by_target ON deliveries (target_key, seq)
                WHERE status IN ('pending', 'retrying');
            CREATE INDEX deliveries_by_status ON deliveries (status, updated_at_ms);
            CREATE INDEX deliveries_by_run ON deliveries (run_id, seq);
            CREATE INDEX deliveries_by_output ON deliveries (output_id);
            CREATE INDEX deliveries_replays ON deliveries (replayed_from_delivery_id)
                WHERE replayed_from_delivery_id IS NOT NULL;

            -- One row per target that has open deliveries: its FIFO head, when the head is due,
            -- the lease of the worker sending it, and the circuit breaker. Claiming picks a due,
            -- unleased, unpaused target here, so it costs the same with 10 or 100 000 pending.
            CREATE TABLE delivery_targets (
                target_key           TEXT PRIMARY KEY NOT NULL,
                plugin               TEXT NOT NULL,
                head_seq             INTEGER NOT NULL,
                next_attempt_at_ms   INTEGER NOT NULL,
                lease_owner          TEXT,
                lease_expires_at_ms  INTEGER,
                consecutive_failures INTEGER NOT NULL DEFAULT 0,
                paused_until_ms      INTEGER NOT NULL DEFAULT 0,
                open_count           INTEGER NOT NULL
            ) STRICT, WITHOUT ROWID;
            CREATE INDEX delivery_targets_due ON delivery_targets (next_attempt_at_ms);
        ",
        edits_schema_text: false,
    },
    // Version 4: indexes that every pipeline write paid for without a query needing them (issue
    // 10, constant cost at depth). `deliveries_by_status` carried `updated_at_ms`, which every
    // claim and settlement changes, so each lease rewrote an index entry; by status alone (rowid
    // = creation order within a status) it serves the same listings, counts and pruning, and a
    // lease touches no index. `runs_by_status` kept every finished run forever; the claim only
    // looks at queued and claimed runs, so the index keeps just those and stays small however
    // many runs have completed (a listing by a final status reads the table newest first).
    // Before, the claim query scanned the runs table in `seq` order past every finished run
    // (the planner found no index for its OR), so a claim cost grew with the database.
    Migration {
        name: "leaner pipeline indexes",
        sql: "
            DROP INDEX deliveries_by_status;
            CREATE INDEX deliveries_by_status ON deliveries (status);
            DROP INDEX runs_by_status;
            CREATE INDEX runs_open ON runs (seq, status) WHERE status IN ('queued', 'claimed');
        ",
        edits_schema_text: false,
    },
    // Version 5: the runtime connector store (SPEC §12, issue 12). One JSON document per
    // daemon-managed connector, in the connector file's own field names (secret fields as
    // `*_secret_ref` / `*_env`, never a value). `version` of `store_meta`
    // `runtime_connectors_version` is bumped by every change, so a watcher compares one number.
    Migration {
        name: "runtime connector store",
        sql: "
            CREATE TABLE runtime_connectors (
                kind          TEXT NOT NULL,
                name          TEXT NOT NULL,
                document      TEXT NOT NULL,
                created_at_ms INTEGER NOT NULL,
                updated_at_ms INTEGER NOT NULL,
                PRIMARY KEY (kind, name)
            ) STRICT, WITHOUT ROWID;
        ",
        edits_schema_text: false,
    },
    // Version 6: the next `getUpdates` offset of each polling Telegram connector (SPEC §9.2),
    // written after each processed batch so a restart neither loses nor repeats updates.
    Migration {
        name: "telegram poll offsets",
        sql: "
            CREATE TABLE telegram_poll_offsets (
                connector_name TEXT PRIMARY KEY NOT NULL,
                next_offset    INTEGER NOT NULL,
                updated_at_ms  INTEGER NOT NULL
            ) STRICT, WITHOUT ROWID;
        ",
        edits_schema_text: false,
    },
    // Version 7: fewer B-trees per accepted event (issue 10: "keep only the indexes a query
    // needs"). An accepted event wrote its receipt into six B-trees and each new binding into
    // three; the commit's cost is mostly the WAL frames of the pages those inserts dirty, and an
    // index keyed by session dirties one page per active session per commit.
    // - `session_bindings_by_session`: no query reads bindings by session. Dropped.
    // - `session_bindings` becomes WITHOUT ROWID: the row lives in its primary-key B-tree, so a
    //   binding is one B-tree insert instead of a rowid table plus the key's index.
    // - `receipts_by_session`: a receipt's session is its run's session (both are written in
    //   the one accept transaction and runs are never deleted), so the session filter of
    //   `GET /v1/receipts` reads the session's runs (`runs_by_session`) and their receipts
    //   (`receipts_by_run`).
    Migration {
        name: "leaner ingress indexes",
        sql: "
            DROP INDEX session_bindings_by_session;
            DROP INDEX receipts_by_session;
            CREATE TABLE session_bindings_v7 (
                binding_key   TEXT PRIMARY KEY NOT NULL,
                session_id    TEXT NOT NULL REFERENCES sessions (session_id),
                created_at_ms INTEGER NOT NULL
            ) STRICT, WITHOUT ROWID;
            INSERT INTO session_bindings_v7 (binding_key, session_id, created_at_ms)
                SELECT binding_key, session_id, created_at_ms FROM session_bindings;
            DROP TABLE session_bindings;
            ALTER TABLE session_bindings_v7 RENAME TO session_bindings;
        ",
        edits_schema_text: false,
    },
    // Version 8: CHECK constraints without a 4-value `IN` list. SQLite evaluates
    // `status IN ('a', 'b', 'c', 'd')` by building a temporary B-tree of the list, again for
    // every INSERT and every UPDATE of `status`: a quarter of each run insert's cost in the
    // profile of batch ingress, and the same on every delivery settlement. The same condition
    // written with `=` and `OR` is compared in place. Existing rows satisfy both forms, so the
    // constraint text is replaced in `sqlite_schema` (SQLite's documented procedure for changing
    // a CHECK constraint, see "ALTER TABLE" in its documentation) instead of copying the tables.
    Migration {
        name: "status checks without temporary tables",
        sql: "
            PRAGMA writable_schema = ON;
            UPDATE sqlite_schema
               SET sql = replace(sql,
                   'CHECK (status IN (''queued'', ''claimed'', ''completed'', ''failed''))',
                   'CHECK (status = ''queued'' OR status = ''claimed'' OR status = ''completed'' OR status = ''failed'')')
             WHERE type = 'table' AND name = 'runs';
            UPDATE sqlite_schema
               SET sql = replace(sql,
                   'CHECK (status IN (''pending'', ''retrying'', ''delivered'', ''dead_lettered''))',
                   'CHECK (status = ''pending'' OR status = ''retrying'' OR status = ''delivered'' OR status = ''dead_lettered'')')
             WHERE type = 'table' AND name = 'deliveries';
            PRAGMA writable_schema = RESET;
        ",
        edits_schema_text: true,
    },
    // Version 9: the FIFO index covers every delivery, not only the open ones. As a partial
    // index (`WHERE status IN ('pending', 'retrying')`) it lost an entry at every settlement,
    // and the heads of N targets sit on N different pages of it, so a round settling one
    // delivery per target dirtied one index page per target: most of the WAL each settlement
    // commit wrote. Keyed on (target_key, seq) for all rows, a settlement leaves it alone (the
    // key does not change). Every open delivery of a target has a seq at or after the target's
    // head (the queue only closes heads, and new rows get higher seqs), so the queries that
    // walk it start at the head and stay as short as before however much history is kept.
    Migration {
        name: "delivery FIFO index over every delivery",
        sql: "
            DROP INDEX deliveries_open_by_target;
            CREATE INDEX deliveries_by_target ON deliveries (target_key, seq);
        ",
        edits_schema_text: false,
    },
    // Version 10: the runs-by-session index starts with the session's creation time. Keyed on
    // (session_id, seq), a run of a NEW session went into the middle of the index, next to
    // its neighbours by name: a Slack thread or a Telegram chat is named by channel, so new
    // threads over 64 channels dirtied up to 64 index pages per commit, one per channel.
    // Keyed on (session_created_at_ms, session_id, seq), the runs of new sessions go to the
    // end of the index, and the runs of one session stay together in seq order, so the
    // session filters (run and receipt listings) still read one range. Every existing run is
    // given its session's creation time here (one pass over `runs`).
    Migration {
        name: "runs by session, oldest sessions first",
        sql: "
            ALTER TABLE runs ADD COLUMN session_created_at_ms INTEGER NOT NULL DEFAULT 0;
            UPDATE runs SET session_created_at_ms = coalesce(
                (SELECT created_at_ms FROM sessions WHERE sessions.session_id = runs.session_id), 0);
            DROP INDEX runs_by_session;
            CREATE INDEX runs_by_session ON runs (session_created_at_ms, session_id, seq);
        ",
        edits_schema_text: false,
    },
    // Version 11: a session can be bound to its own id without a `session_bindings` row. Ingress
    // used to bind a new Slack thread's or Telegram chat's natural id (which is also the new
    // session's id) with a row: a second B-tree keyed like `sessions`, one more scattered page
    // per new session and commit. `self_bound = 1` now says the same on the session row:
    // look-ups of a binding key fall back to a self-bound session of that id, for every
    // event and connector, as they found the row before. Existing sessions keep their rows.
    Migration {
        name: "sessions bound to their own id",
        sql: "
            ALTER TABLE sessions ADD COLUMN self_bound INTEGER NOT NULL DEFAULT 0
                CHECK (self_bound = 0 OR self_bound = 1);
        ",
        edits_schema_text: false,
    },
];

/// The schema version this binary writes and understands: the number of migrations.
pub const SUPPORTED_VERSION: i64 = MIGRATIONS.len() as i64;

/// Reads `PRAGMA user_version` (a read; takes no write lock).
pub(crate) fn user_version(conn: &Connection, path: &str) -> Result<i64, StoreError> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| sqlite_error(path, "reading the schema version", e))
}

/// Fails with [`StoreError::NewerSchema`] when the database was written by a newer binary.
pub(crate) fn refuse_newer(found: i64, path: &str) -> Result<(), StoreError> {
    if found > SUPPORTED_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_string(),
            found,
            supported: SUPPORTED_VERSION,
        });
    }
    Ok(())
}

/// Brings the database up to [`SUPPORTED_VERSION`]. Idempotent; safe to run from several
/// processes at once. Writes nothing when the schema is current or newer.
pub(crate) fn migrate(conn: &Connection, path: &str) -> Result<(), StoreError> {
    let found = user_version(conn, path)?;
    refuse_newer(found, path)?;
    if found == SUPPORTED_VERSION {
        return Ok(());
    }
    // IMMEDIATE takes the write lock up front, so the version read below cannot go stale before
    // we write; another process migrating at the same time waits (busy_timeout) and then sees
    // the work done.
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
        .map_err(|e| sqlite_error(path, "starting the schema migration", e))?;
    let found = user_version(&tx, path)?;
    refuse_newer(found, path)?;
    for (idx, migration) in MIGRATIONS.iter().enumerate() {
        let version = idx as i64 + 1;
        if version <= found {
            continue;
        }
        let applying = |e| {
            sqlite_error(
                path,
                &format!("applying migration {version} ({})", migration.name),
                e,
            )
        };
        tx.execute_batch(migration.sql).map_err(applying)?;
        if migration.edits_schema_text {
            let cookie: i64 = tx
                .query_row("PRAGMA schema_version", [], |row| row.get(0))
                .map_err(applying)?;
            // PRAGMA does not take bound parameters; the value is read just above.
            tx.execute_batch(&format!("PRAGMA schema_version = {}", cookie + 1))
                .map_err(applying)?;
        }
    }
    // PRAGMA does not take bound parameters; the value is our own constant.
    tx.execute_batch(&format!("PRAGMA user_version = {SUPPORTED_VERSION}"))
        .map_err(|e| sqlite_error(path, "recording the schema version", e))?;
    tx.commit()
        .map_err(|e| sqlite_error(path, "committing the schema migration", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_names(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap();
        stmt.query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn migrating_twice_is_idempotent() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn, ":memory:").unwrap();
        let first = table_names(&conn);
        migrate(&conn, ":memory:").unwrap();
        assert_eq!(table_names(&conn), first);
        assert_eq!(user_version(&conn, ":memory:").unwrap(), SUPPORTED_VERSION);
        for table in ["secret_rotations", "secret_slots", "store_meta"] {
            assert!(first.iter().any(|t| t == table), "{table} in {first:?}");
        }
    }

    #[test]
    fn every_migration_runs_from_every_older_version() {
        // Simulates databases left at each intermediate version by older binaries.
        for start in 0..=SUPPORTED_VERSION {
            let conn = Connection::open_in_memory().unwrap();
            for migration in &MIGRATIONS[..start as usize] {
                conn.execute_batch(migration.sql).unwrap();
            }
            conn.execute_batch(&format!("PRAGMA user_version = {start}"))
                .unwrap();
            migrate(&conn, ":memory:").unwrap();
            assert_eq!(user_version(&conn, ":memory:").unwrap(), SUPPORTED_VERSION);
        }
    }

    /// Brings `conn` (foreign keys on) to schema `version` as an older binary left it, with
    /// session `s1`.
    fn at_version(conn: &Connection, version: usize) {
        conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        for migration in &MIGRATIONS[..version] {
            conn.execute_batch(migration.sql).unwrap();
        }
        conn.execute_batch(&format!(
            "PRAGMA user_version = {version};
             INSERT INTO sessions VALUES ('s1', 1, 1, 'control_plane', NULL, 'c', 'k', '[]', '{{}}');"
        ))
        .unwrap();
    }

    #[test]
    fn migration_7_keeps_every_binding_and_drops_only_unread_indexes() {
        let conn = Connection::open_in_memory().unwrap();
        at_version(&conn, 6);
        conn.execute_batch(
            "INSERT INTO session_bindings VALUES ('key-a', 's1', 5), ('key-b', 's1', 6);",
        )
        .unwrap();
        migrate(&conn, ":memory:").unwrap();
        let bindings: Vec<(String, String, i64)> = conn
            .prepare(
                "SELECT binding_key, session_id, created_at_ms FROM session_bindings ORDER BY 1",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            bindings,
            vec![
                ("key-a".to_string(), "s1".to_string(), 5),
                ("key-b".to_string(), "s1".to_string(), 6)
            ]
        );
        // A bound key is still never re-bound, and a binding still needs its session.
        assert!(conn
            .execute("INSERT INTO session_bindings VALUES ('key-a', 's1', 7)", [])
            .is_err());
        assert!(conn
            .execute(
                "INSERT INTO session_bindings VALUES ('key-c', 'nope', 7)",
                []
            )
            .is_err());
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL ORDER BY 1")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for gone in ["session_bindings_by_session", "receipts_by_session"] {
            assert!(!indexes.iter().any(|i| i == gone), "{gone} in {indexes:?}");
        }
        for kept in [
            "receipts_by_connector",
            "receipts_by_time",
            "receipts_by_run",
            "runs_by_session",
        ] {
            assert!(
                indexes.iter().any(|i| i == kept),
                "{kept} missing: {indexes:?}"
            );
        }
    }

    /// The opcodes of `EXPLAIN sql`.
    fn opcodes(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
        let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
        let rows = stmt
            .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(1))
            .unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn migration_8_checks_status_in_place_and_still_refuses_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let conn = Connection::open(&path).unwrap();
        at_version(&conn, 7);
        conn.execute_batch(
            "INSERT INTO runs (run_id, session_id, connector_kind, connector_name, status, actor_id,
                 input, metadata, reply_targets, policy, created_at_ms, updated_at_ms)
             VALUES ('r1', 's1', 'http', 'n', 'queued', 'a', '{}', '{}', '[]', '{}', 1, 1);",
        )
        .unwrap();
        // A connection opened before the migration sees the new schema afterwards.
        let other = Connection::open(&path).unwrap();
        let before = other
            .query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))
            .unwrap();
        migrate(&conn, "state.db").unwrap();
        let after = other
            .query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))
            .unwrap();
        assert!(after > before, "{before} -> {after}");

        let insert_run = "INSERT INTO runs (run_id, session_id, connector_kind, connector_name, \
             status, actor_id, input, metadata, reply_targets, policy, created_at_ms, updated_at_ms) \
             VALUES (?1, 's1', 'http', 'n', ?2, 'a', '{}', '{}', '[]', '{}', 1, 1)";
        let settle = "UPDATE deliveries SET status = ?1 WHERE seq = ?2";
        for c in [&conn, &other] {
            for sql in [insert_run, settle] {
                let ops = opcodes(c, sql);
                assert!(
                    !ops.iter().any(|op| op == "OpenEphemeral"),
                    "{sql}: {ops:?}"
                );
            }
            let refused = c
                .execute(insert_run, rusqlite::params!["r-bad", "bogus"])
                .unwrap_err();
            assert!(refused.to_string().contains("CHECK"), "{refused}");
        }
        conn.execute(insert_run, rusqlite::params!["r2", "claimed"])
            .unwrap();
        let count: i64 = conn
            .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 2);
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    #[test]
    fn newer_schema_is_refused_without_writing() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA user_version = 999").unwrap();
        let err = migrate(&conn, ":memory:").unwrap_err();
        assert!(
            matches!(err, StoreError::NewerSchema { found: 999, supported, .. } if supported == SUPPORTED_VERSION),
            "{err:?}"
        );
        assert!(table_names(&conn).is_empty());
        assert_eq!(user_version(&conn, ":memory:").unwrap(), 999);
    }

    #[test]
    fn migration_10_keys_runs_by_session_on_creation_time_and_fills_it_in() {
        let conn = Connection::open_in_memory().unwrap();
        at_version(&conn, 9);
        conn.execute_batch(
            "INSERT INTO sessions VALUES ('old', 5, 5, 'control_plane', NULL, 'c', 'k', '[]', '{}'),
                                         ('new', 9, 9, 'control_plane', NULL, 'c', 'k', '[]', '{}');
             INSERT INTO runs (run_id, session_id, connector_kind, connector_name, status, actor_id,
                 input, metadata, reply_targets, policy, created_at_ms, updated_at_ms)
             VALUES ('r1', 'old', 'http', 'n', 'queued', 'a', '{}', '{}', '[]', '{}', 10, 10),
                    ('r2', 'new', 'http', 'n', 'queued', 'a', '{}', '{}', '[]', '{}', 11, 11),
                    ('r3', 'old', 'http', 'n', 'queued', 'a', '{}', '{}', '[]', '{}', 12, 12);",
        )
        .unwrap();
        migrate(&conn, ":memory:").unwrap();
        let filled: Vec<(String, i64)> = conn
            .prepare("SELECT run_id, session_created_at_ms FROM runs ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            filled,
            [("r1", 5), ("r2", 9), ("r3", 5)]
                .map(|(r, t)| (r.to_string(), t))
                .to_vec()
        );
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_index_info('runs_by_session') ORDER BY seqno")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(columns, ["session_created_at_ms", "session_id", "seq"]);
    }

    #[test]
    fn migration_11_adds_self_bound_sessions_and_keeps_the_rest_unbound() {
        let conn = Connection::open_in_memory().unwrap();
        at_version(&conn, 10);
        conn.execute_batch(
            "INSERT INTO sessions VALUES ('old', 5, 5, 'connector:slack/s', NULL, 'c', 'k', '[]', '{}');",
        )
        .unwrap();
        migrate(&conn, ":memory:").unwrap();
        let flag: i64 = conn
            .query_row(
                "SELECT self_bound FROM sessions WHERE session_id = 'old'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(flag, 0, "sessions from before keep their binding rows");
        assert!(conn
            .execute(
                "INSERT INTO sessions VALUES ('bad', 5, 5, 'c', NULL, 'c', 'k', '[]', '{}', 2)",
                []
            )
            .is_err());
    }
}
