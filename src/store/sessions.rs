//! Sessions through the control plane (SPEC §6.5): read one, the field-aware upsert of
//! `PUT /v1/sessions/{id}`, and replacing a session's default reply targets.
//!
//! Ingress creates sessions inside its accepting transaction (`store::writer`, which also owns
//! the session row mapping); this module must not create sessions on the ingress path or
//! resolve which session an event belongs to (that is `crate::sessions`).

use rusqlite::{params, OptionalExtension};
use serde_json::{Map, Value};

use super::runs::{to_json, RunError};
use super::writer::{session_from_row, SESSION_COLUMNS};
use super::{Store, StoreError};
use crate::model::reply::ReplyTarget;
use crate::model::run::{PolicySnapshot, Session};

/// `created_by` of sessions made through `PUT /v1/sessions/{id}`.
pub const CONTROL_PLANE_CREATOR: &str = "control_plane";

/// A field-aware session upsert (`PUT /v1/sessions/{id}`): `Some` members change, `None`
/// members keep their stored value (or take the default on create).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionChanges {
    /// `Some(None)` clears the persona.
    pub persona_id: Option<Option<String>>,
    pub capability_scope: Option<Map<String, Value>>,
    pub credential_scope: Option<Map<String, Value>>,
    /// Default reply targets (already validated).
    pub reply_targets: Option<Vec<ReplyTarget>>,
    pub metadata: Option<Map<String, Value>>,
}

impl Store {
    /// One session by id.
    pub fn get_session(&self, session_id: &str) -> Result<Option<Session>, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?1"),
                [session_id],
                session_from_row,
            )
            .optional()
            .map_err(|e| self.err("reading a session", e))
    }

    /// Creates the session (`created_by = "control_plane"`, unset members empty) or applies
    /// `changes` to the stored one. Returns the session and whether it was created.
    pub fn put_session(
        &self,
        session_id: &str,
        changes: &SessionChanges,
        now_ms: i64,
    ) -> Result<(Session, bool), StoreError> {
        let op = "writing a session";
        let tx = self.write_tx(op)?;
        let existing = tx
            .query_row(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?1"),
                [session_id],
                session_from_row,
            )
            .optional()
            .map_err(|e| self.err(op, e))?;
        let created = existing.is_none();
        let mut session = existing.unwrap_or_else(|| Session {
            session_id: session_id.to_string(),
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            created_by: CONTROL_PLANE_CREATOR.to_string(),
            policy: PolicySnapshot::default(),
            reply_targets: Vec::new(),
            metadata: Map::new(),
        });
        if let Some(persona_id) = &changes.persona_id {
            session.policy.persona_id = persona_id.clone();
        }
        if let Some(scope) = &changes.capability_scope {
            session.policy.capability_scope = scope.clone();
        }
        if let Some(scope) = &changes.credential_scope {
            session.policy.credential_scope = scope.clone();
        }
        if let Some(targets) = &changes.reply_targets {
            session.reply_targets = targets.clone();
        }
        if let Some(metadata) = &changes.metadata {
            session.metadata = metadata.clone();
        }
        session.updated_at_ms = now_ms;
        tx.execute(
            "INSERT INTO sessions (session_id, created_at_ms, updated_at_ms, created_by, persona_id,
                 capability_scope, credential_scope, reply_targets, metadata)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (session_id) DO UPDATE SET
                 updated_at_ms = excluded.updated_at_ms,
                 persona_id = excluded.persona_id,
                 capability_scope = excluded.capability_scope,
                 credential_scope = excluded.credential_scope,
                 reply_targets = excluded.reply_targets,
                 metadata = excluded.metadata",
            params![
                session.session_id,
                session.created_at_ms,
                session.updated_at_ms,
                session.created_by,
                session.policy.persona_id,
                to_json(&session.policy.capability_scope),
                to_json(&session.policy.credential_scope),
                to_json(&session.reply_targets),
                to_json(&session.metadata),
            ],
        )
        .map_err(|e| self.err(op, e))?;
        tx.commit().map_err(|e| self.err(op, e))?;
        Ok((session, created))
    }

    /// Replaces a session's default reply targets (already validated).
    pub fn set_session_reply_targets(
        &self,
        session_id: &str,
        targets: &[ReplyTarget],
        now_ms: i64,
    ) -> Result<Session, RunError> {
        self.conn()
            .query_row(
                &format!(
                    "UPDATE sessions SET reply_targets = ?2, updated_at_ms = ?3
                     WHERE session_id = ?1 RETURNING {SESSION_COLUMNS}"
                ),
                params![session_id, to_json(&targets), now_ms],
                session_from_row,
            )
            .optional()
            .map_err(|e| self.err("writing session reply targets", e))?
            .ok_or_else(|| RunError::SessionNotFound {
                session_id: session_id.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::runs::test_support::*;

    #[test]
    fn put_session_creates_then_updates_field_by_field() {
        let (_tmp, store) = store();
        let mut scope = Map::new();
        scope.insert("tools".into(), json!(["search"]));
        let (created, was_created) = store
            .put_session(
                "sess-1",
                &SessionChanges {
                    persona_id: Some(Some("helper".into())),
                    capability_scope: Some(scope.clone()),
                    reply_targets: Some(vec![target("https://example.com/a")]),
                    ..SessionChanges::default()
                },
                T0,
            )
            .unwrap();
        assert!(was_created);
        assert_eq!(created.created_by, CONTROL_PLANE_CREATOR);
        assert_eq!(created.policy.persona_id.as_deref(), Some("helper"));
        assert_eq!(created.policy.capability_scope, scope);
        assert!(created.metadata.is_empty());
        assert_eq!(store.get_session("sess-1").unwrap().unwrap(), created);

        let mut metadata = Map::new();
        metadata.insert("team".into(), json!("ops"));
        let (updated, was_created) = store
            .put_session(
                "sess-1",
                &SessionChanges {
                    persona_id: Some(None),
                    metadata: Some(metadata.clone()),
                    ..SessionChanges::default()
                },
                T0 + 5,
            )
            .unwrap();
        assert!(!was_created);
        assert_eq!(updated.policy.persona_id, None);
        assert_eq!(
            updated.policy.capability_scope, scope,
            "absent members stay"
        );
        assert_eq!(updated.reply_targets, created.reply_targets);
        assert_eq!(updated.metadata, metadata);
        assert_eq!(updated.created_at_ms, T0);
        assert_eq!(updated.updated_at_ms, T0 + 5);
        assert_eq!(store.get_session("sess-1").unwrap().unwrap(), updated);
    }

    #[test]
    fn put_session_keeps_an_ingress_sessions_creator() {
        let (_tmp, store) = store();
        insert_session(&store, "http:orders:abc");
        let (session, created) = store
            .put_session("http:orders:abc", &SessionChanges::default(), T0 + 1)
            .unwrap();
        assert!(!created);
        assert_eq!(session.created_by, "connector:http/orders");
        assert_eq!(session.policy.persona_id.as_deref(), Some("helper"));
    }

    #[test]
    fn session_reply_targets_are_replaced() {
        let (_tmp, store) = store();
        insert_session(&store, "s9");
        let targets = vec![
            target("https://example.com/1"),
            target("https://example.com/2"),
        ];
        let session = store
            .set_session_reply_targets("s9", &targets, T0 + 1)
            .unwrap();
        assert_eq!(session.reply_targets, targets);
        assert_eq!(
            store.get_session("s9").unwrap().unwrap().reply_targets,
            targets
        );
        let err = store
            .set_session_reply_targets("nope", &targets, T0)
            .unwrap_err();
        assert!(matches!(err, RunError::SessionNotFound { .. }), "{err:?}");
    }
}
