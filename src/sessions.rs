//! Session resolution and `session_policy` enforcement (SPEC §6.5), used by ingress both
//! before the rate limit (on a read connection) and again inside the accepting transaction.
//! Its refusals are its own [`SessionError`]; ingress maps them onto its answers.

use crate::config::SessionPolicy;
use crate::model::run::{NewSession, PolicySnapshot, Session};
use crate::store::writer::IngressOps;
use crate::store::StoreError;

/// What an event offers to find its session, in resolution order.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    /// `fixed_session_id` of the connector, else the (authenticated) payload `session_id`.
    pub explicit: Option<String>,
    /// The event's binding keys, trimmed, sorted and deduplicated.
    pub binding_keys: Vec<String>,
    /// The id derived from the event (§6.5 step 4), when one can be derived.
    pub natural_id: Option<String>,
    /// Said in the 400 when nothing resolves.
    pub unresolved_hint: String,
    pub policy: SessionPolicy,
    /// `connector:KIND/NAME`, recorded on sessions this event creates.
    pub created_by: String,
}

impl SessionRequest {
    /// The request of an event whose session follows from where it was said (a Slack thread,
    /// a Telegram chat): the connector's `fixed_session_id`, the natural id, and as binding keys
    /// the natural id plus the connector's `additional_binding_keys`. `connector` is `KIND/NAME`.
    pub fn natural(
        common: &crate::config::Common,
        connector: &str,
        natural: String,
        unresolved_hint: &str,
    ) -> SessionRequest {
        let mut keys = vec![natural.clone()];
        keys.extend(common.binding_keys.iter().cloned());
        keys.sort();
        keys.dedup();
        SessionRequest {
            explicit: common.fixed_session_id.clone(),
            natural_id: Some(natural),
            binding_keys: keys,
            unresolved_hint: unresolved_hint.to_string(),
            policy: common.session_policy.clone(),
            created_by: format!("connector:{connector}"),
        }
    }
}

/// The resolved session: an existing one, or one to create in the accepting transaction.
#[derive(Debug, Clone)]
pub enum Resolution {
    Existing(Session),
    New(NewSession),
}

impl Resolution {
    pub fn session_id(&self) -> &str {
        match self {
            Resolution::Existing(s) => &s.session_id,
            Resolution::New(s) => &s.session_id,
        }
    }

    pub fn policy(&self) -> &PolicySnapshot {
        match self {
            Resolution::Existing(s) => &s.policy,
            Resolution::New(s) => &s.policy,
        }
    }
}

/// Why no session could be used for an event (SPEC §6.5).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no session could be resolved: {hint}")]
    Unresolved { hint: String },
    #[error("session `{session_id}` does not exist and this connector's session_policy.create_if_missing is false")]
    NotFound { session_id: String },
    #[error("session `{session_id}` was created with a different persona or scope than this connector's session_policy")]
    PolicyConflict { session_id: String },
    #[error(
        "the event's binding keys are bound to two different sessions (`{first}` and `{second}`)"
    )]
    AmbiguousBinding { first: String, second: String },
    /// Reading sessions or bindings failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The policy snapshot a connector's `session_policy` records.
pub fn snapshot(policy: &SessionPolicy) -> PolicySnapshot {
    PolicySnapshot {
        persona_id: policy.persona_id.clone(),
        capability_scope: policy.capability_scope.clone(),
        credential_scope: policy.credential_scope.clone(),
    }
}

/// Resolves the session for `req` (first rule that applies) and checks the policy; also says
/// whether every binding key of `req` is already bound to the resolved session. Bindings are
/// never re-bound or removed, so when that holds the accepting transaction has no binding to
/// write and skips the inserts.
pub fn resolve_noting_bindings(
    ops: &IngressOps<'_>,
    req: &SessionRequest,
    now_ms: i64,
) -> Result<(Resolution, bool), SessionError> {
    let mut keys_bound = req.binding_keys.is_empty();
    let session_id = match &req.explicit {
        Some(id) => id.clone(),
        None => {
            // A self-bound session counts as bound to its own id (migration 11).
            let bound = ops.bound_sessions(&req.binding_keys)?;
            keys_bound = bound.len() == req.binding_keys.len();
            let mut ids: Vec<&String> = bound.iter().map(|(_, s)| s).collect();
            ids.sort();
            ids.dedup();
            match ids.as_slice() {
                [] => req
                    .natural_id
                    .clone()
                    .ok_or_else(|| SessionError::Unresolved {
                        hint: req.unresolved_hint.clone(),
                    })?,
                [one] => (*one).clone(),
                [first, second, ..] => {
                    return Err(SessionError::AmbiguousBinding {
                        first: (*first).clone(),
                        second: (*second).clone(),
                    })
                }
            }
        }
    };
    let wanted = snapshot(&req.policy);
    match ops.session(&session_id)? {
        Some(existing) => {
            if existing.policy != wanted {
                return Err(SessionError::PolicyConflict { session_id });
            }
            Ok((Resolution::Existing(existing), keys_bound))
        }
        None if req.policy.create_if_missing => Ok((
            Resolution::New(NewSession {
                session_id,
                created_by: req.created_by.clone(),
                policy: wanted,
                reply_targets: Vec::new(),
                metadata: Default::default(),
                now_ms,
            }),
            false,
        )),
        None => Err(SessionError::NotFound { session_id }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// The resolution alone, for the tests of the resolution order.
    fn resolve(
        ops: &IngressOps<'_>,
        req: &SessionRequest,
        now_ms: i64,
    ) -> Result<Resolution, SessionError> {
        resolve_noting_bindings(ops, req, now_ms).map(|(resolution, _)| resolution)
    }

    fn req(
        explicit: Option<&str>,
        keys: &[&str],
        natural: Option<&str>,
        create: bool,
    ) -> SessionRequest {
        SessionRequest {
            explicit: explicit.map(Into::into),
            binding_keys: keys.iter().map(|k| k.to_string()).collect(),
            natural_id: natural.map(Into::into),
            unresolved_hint: "send binding_keys".into(),
            policy: SessionPolicy {
                create_if_missing: create,
                ..SessionPolicy::default()
            },
            created_by: "connector:http/orders".into(),
        }
    }

    fn new_session(ops: &IngressOps<'_>, id: &str, persona: Option<&str>) {
        ops.insert_session(
            &NewSession {
                session_id: id.into(),
                created_by: "test".into(),
                policy: PolicySnapshot {
                    persona_id: persona.map(Into::into),
                    ..Default::default()
                },
                reply_targets: Vec::new(),
                metadata: Default::default(),
                now_ms: 1,
            },
            false,
        )
        .unwrap();
    }

    #[test]
    fn resolution_order_and_policy() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ops = store.ingress_ops();
        // Nothing to go on.
        assert!(matches!(
            resolve(&ops, &req(None, &[], None, true), 1),
            Err(SessionError::Unresolved { .. })
        ));
        // Natural id, created when allowed, refused when not.
        assert!(
            matches!(resolve(&ops, &req(None, &["k"], Some("nat"), true), 1), Ok(Resolution::New(s)) if s.session_id == "nat")
        );
        assert!(matches!(
            resolve(&ops, &req(None, &["k"], Some("nat"), false), 1),
            Err(SessionError::NotFound { .. })
        ));
        // A bound key wins over the natural id; two sessions are ambiguous.
        new_session(&ops, "s1", None);
        new_session(&ops, "s2", None);
        ops.bind_keys("s1", &["a".into()], None, false, 1).unwrap();
        ops.bind_keys("s2", &["b".into()], None, false, 1).unwrap();
        assert!(
            matches!(resolve(&ops, &req(None, &["a", "z"], Some("nat"), true), 1), Ok(Resolution::Existing(s)) if s.session_id == "s1")
        );
        assert!(matches!(
            resolve(&ops, &req(None, &["a", "b"], Some("nat"), true), 1),
            Err(SessionError::AmbiguousBinding { .. })
        ));
        // Explicit id wins over bindings.
        assert!(
            matches!(resolve(&ops, &req(Some("s2"), &["a"], None, false), 1), Ok(Resolution::Existing(s)) if s.session_id == "s2")
        );
        // A session created with another persona is refused.
        new_session(&ops, "s3", Some("other"));
        assert!(matches!(
            resolve(&ops, &req(Some("s3"), &[], None, true), 1),
            Err(SessionError::PolicyConflict { .. })
        ));
    }

    #[test]
    fn a_natural_id_is_bound_to_its_own_session_without_a_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ops = store.ingress_ops();
        let rows = || -> i64 {
            store
                .conn()
                .query_row("SELECT count(*) FROM session_bindings", [], |r| r.get(0))
                .unwrap()
        };
        // A Slack-like event: its natural id is one of its binding keys, with another key.
        let thread = req(None, &["slack:s:C1:1", "desk"], Some("slack:s:C1:1"), true);
        let (resolution, bound) = resolve_noting_bindings(&ops, &thread, 1).unwrap();
        let Resolution::New(session) = resolution else {
            panic!("a new thread is a new session")
        };
        assert!(!bound);
        // What the accepting transaction does: a self-bound session, no row for its own id.
        ops.insert_session(&session, true).unwrap();
        ops.bind_keys(
            "slack:s:C1:1",
            &thread.binding_keys,
            Some("slack:s:C1:1"),
            false,
            1,
        )
        .unwrap();
        assert_eq!(rows(), 1, "only `desk` got a row");
        let both = |keys: &[&str]| {
            ops.bound_sessions(&keys.iter().map(|k| k.to_string()).collect::<Vec<_>>())
                .unwrap()
        };
        assert_eq!(
            both(&["slack:s:C1:1", "desk"]),
            vec![
                ("slack:s:C1:1".to_string(), "slack:s:C1:1".to_string()),
                ("desk".to_string(), "slack:s:C1:1".to_string())
            ]
        );
        let (again, bound) = resolve_noting_bindings(&ops, &thread, 2).unwrap();
        assert!(matches!(again, Resolution::Existing(s) if s.session_id == "slack:s:C1:1"));
        assert!(bound, "nothing left to bind");
        // Any event may carry that id as a plain binding key and joins the thread's session,
        // as it joined it through the row before (another connector sharing the key).
        let plain = req(None, &["slack:s:C1:1"], Some("http:h:abc"), true);
        assert!(matches!(
            resolve_noting_bindings(&ops, &plain, 3),
            Ok((Resolution::Existing(s), true)) if s.session_id == "slack:s:C1:1"
        ));
        // As with a row, the thread's key and a key bound elsewhere are ambiguous.
        new_session(&ops, "other", None);
        ops.bind_keys("other", &["elsewhere".into()], None, false, 1)
            .unwrap();
        let mixed = req(
            None,
            &["slack:s:C1:1", "elsewhere"],
            Some("slack:s:C1:1"),
            true,
        );
        assert!(matches!(
            resolve_noting_bindings(&ops, &mixed, 4),
            Err(SessionError::AmbiguousBinding { .. })
        ));
        // A session that is not self-bound (the control plane's `PUT`, or one created before
        // migration 11, which has its row) binds nothing by its id alone.
        new_session(&ops, "slack:s:C2:1", None);
        assert!(both(&["slack:s:C2:1"]).is_empty());
        // A row wins over the session: a natural id bound elsewhere follows its row.
        ops.bind_keys("other", &["slack:s:C2:1".into()], None, false, 1)
            .unwrap();
        let moved = req(None, &["slack:s:C2:1"], Some("slack:s:C2:1"), true);
        assert!(matches!(
            resolve_noting_bindings(&ops, &moved, 5),
            Ok((Resolution::Existing(s), true)) if s.session_id == "other"
        ));
    }

    #[test]
    fn keys_count_as_bound_only_when_every_key_is_bound_to_the_resolved_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ops = store.ingress_ops();
        new_session(&ops, "s1", None);
        ops.bind_keys("s1", &["a".into(), "b".into()], None, false, 1)
            .unwrap();
        let bound = |r: &SessionRequest| resolve_noting_bindings(&ops, r, 1).unwrap().1;
        assert!(bound(&req(None, &["a", "b"], None, true)));
        assert!(bound(&req(None, &[], Some("s1"), true)));
        // One key still to bind, an explicit id the keys are not looked up for, a new session.
        assert!(!bound(&req(None, &["a", "z"], None, true)));
        assert!(!bound(&req(Some("s1"), &["a"], None, true)));
        assert!(!bound(&req(None, &["z"], Some("fresh"), true)));
    }
}
