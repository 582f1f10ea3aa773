//! Credential leases of `child_process` sidecars (SPEC §10.7): the live table of the one lease
//! each running child holds. The sidecar supervisor (`daemon::sidecars`) issues a lease when it
//! spawns a child (a fresh random token handed to the child as
//! `KHEISH_EXTERNAL_CONNECTOR_CREDENTIAL_TOKEN`) and revokes it when that child exits or is
//! stopped; the credential route (`server::credentials`) checks a presented token here and
//! learns which secret ref it may read.
//!
//! A lease is bound to its connector, to the env keys declared when it was issued and to the
//! concrete secret ref of each key: a reload that remaps a key to another ref makes the old
//! token useless for it. Only a SHA-256 digest of the token is kept, compared in constant time.
//! Secret VALUES never pass through here: the route resolves them from the secret store at
//! request time. Nothing here does I/O beyond the OS random source.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::model::run::new_id;
use crate::secrets::{self, Secret, SecretError};

/// How long a lease is valid after its child was spawned (SPEC §10.7: 5 minutes).
pub const LEASE_TTL_MS: i64 = 5 * 60 * 1000;
/// Random bytes in a lease token (SPEC §10.7: at least 32).
pub const TOKEN_BYTES: usize = 32;

/// One env key a lease may read, and the secret ref it was bound to at issue time.
#[derive(Debug, Clone)]
struct Grant {
    env_key: String,
    secret_ref: String,
    grant_id: String,
}

/// The lease of one running child.
#[derive(Debug)]
struct Lease {
    lease_id: String,
    token_sha256: [u8; 32],
    grants: Vec<Grant>,
    expires_at_ms: i64,
}

/// What the supervisor gets when it issues a lease: the token to hand to the child (its only
/// copy outside this table's digest) and the id to revoke it by.
#[derive(Debug)]
pub struct Issued {
    pub token: Secret,
    pub lease_id: String,
    pub expires_at_ms: i64,
}

/// A checked lease: what the route may read and report. The value itself is resolved by the
/// caller from `secret_ref`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub secret_ref: String,
    pub lease_id: String,
    pub grant_id: String,
    pub expires_at_ms: i64,
}

/// Why a credential request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRefusal {
    /// The connector does not declare this env key (404): checked before the token, from the
    /// config in force, so an undeclared key answers the same to everyone.
    UndeclaredKey,
    /// No lease of this connector matches the token, it expired, was revoked, does not cover
    /// the key, or the key now maps to another secret ref (401).
    Unauthorized,
}

/// The lease table: at most one live lease per connector name.
#[derive(Debug, Default)]
pub struct Leases {
    by_connector: Mutex<HashMap<String, Lease>>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Leases {
    pub fn new() -> Leases {
        Leases::default()
    }

    /// Issues a fresh lease for `connector` covering `slots` (`ENV_KEY -> secret ref`), valid
    /// [`LEASE_TTL_MS`] from `now_ms`. It replaces (revokes) any lease the connector held.
    pub fn issue(
        &self,
        connector: &str,
        slots: &[(String, String)],
        now_ms: i64,
    ) -> Result<Issued, SecretError> {
        let token = secrets::generate(TOKEN_BYTES)?;
        let lease_id = new_id("lease", now_ms);
        let expires_at_ms = now_ms.saturating_add(LEASE_TTL_MS);
        let grants = slots
            .iter()
            .map(|(env_key, secret_ref)| Grant {
                env_key: env_key.clone(),
                secret_ref: secret_ref.clone(),
                grant_id: new_id("grant", now_ms),
            })
            .collect();
        let lease = Lease {
            lease_id: lease_id.clone(),
            token_sha256: digest(token.expose().as_bytes()),
            grants,
            expires_at_ms,
        };
        self.lock().insert(connector.to_string(), lease);
        Ok(Issued {
            token,
            lease_id,
            expires_at_ms,
        })
    }

    /// Revokes lease `lease_id` of `connector` (its child exited or is being restarted); a
    /// newer lease of the connector is left alone.
    pub fn revoke(&self, connector: &str, lease_id: &str) {
        let mut leases = self.lock();
        if leases
            .get(connector)
            .is_some_and(|l| l.lease_id == lease_id)
        {
            leases.remove(connector);
        }
    }

    /// Revokes whatever lease `connector` holds (connector removed).
    pub fn revoke_all(&self, connector: &str) {
        self.lock().remove(connector);
    }

    /// Checks a credential request: `declared` is the connector's `credential_slots` in the
    /// config in force now (`None` for an unknown connector, answered like an undeclared key).
    pub fn check(
        &self,
        connector: &str,
        declared: Option<&[(String, String)]>,
        env_key: &str,
        token: &[u8],
        now_ms: i64,
    ) -> Result<Granted, LeaseRefusal> {
        let current_ref = declared
            .and_then(|slots| slots.iter().find(|(k, _)| k == env_key))
            .map(|(_, r)| r)
            .ok_or(LeaseRefusal::UndeclaredKey)?;
        let presented = digest(token);
        let leases = self.lock();
        let lease = leases.get(connector).ok_or(LeaseRefusal::Unauthorized)?;
        // Both digests are 32 bytes, so the comparison takes the same time whatever matches.
        if !secrets::constant_time_eq(&presented, &lease.token_sha256)
            || now_ms >= lease.expires_at_ms
        {
            return Err(LeaseRefusal::Unauthorized);
        }
        let grant = lease
            .grants
            .iter()
            .find(|g| g.env_key == env_key && &g.secret_ref == current_ref)
            .ok_or(LeaseRefusal::Unauthorized)?;
        Ok(Granted {
            secret_ref: grant.secret_ref.clone(),
            lease_id: lease.lease_id.clone(),
            grant_id: grant.grant_id.clone(),
            expires_at_ms: lease.expires_at_ms,
        })
    }

    /// Number of live (unrevoked) leases, expired ones included.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.by_connector.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, r)| (k.to_string(), r.to_string()))
            .collect()
    }

    fn check(
        leases: &Leases,
        declared: Option<&[(String, String)]>,
        key: &str,
        token: &str,
        now: i64,
    ) -> Result<String, LeaseRefusal> {
        leases
            .check("d", declared, key, token.as_bytes(), now)
            .map(|g| g.secret_ref)
    }

    #[test]
    fn a_lease_serves_its_declared_keys_until_it_expires() {
        let leases = Leases::new();
        let declared = slots(&[("BOT_TOKEN", "c.d.bot"), ("API_KEY", "c.d.api")]);
        let issued = leases.issue("d", &declared, 1_000).unwrap();
        let token = issued.token.expose().to_string();
        // >= 32 random bytes as URL-safe base64 without padding.
        assert_eq!(token.len(), 43);
        assert_eq!(issued.expires_at_ms, 1_000 + LEASE_TTL_MS);
        let d = Some(declared.as_slice());
        assert_eq!(
            check(&leases, d, "BOT_TOKEN", &token, 1_001),
            Ok("c.d.bot".into())
        );
        assert_eq!(
            check(&leases, d, "API_KEY", &token, 1_001),
            Ok("c.d.api".into())
        );
        let granted = leases
            .check("d", d, "BOT_TOKEN", token.as_bytes(), 2)
            .unwrap();
        assert_eq!(granted.lease_id, issued.lease_id);
        assert!(granted.grant_id.starts_with("grant_"));
        // Expired at exactly expires_at_ms.
        assert_eq!(
            check(&leases, d, "BOT_TOKEN", &token, issued.expires_at_ms),
            Err(LeaseRefusal::Unauthorized)
        );
    }

    #[test]
    fn undeclared_keys_and_unknown_connectors_are_404_before_the_token() {
        let leases = Leases::new();
        let declared = slots(&[("BOT_TOKEN", "c.d.bot")]);
        let token = leases.issue("d", &declared, 0).unwrap().token;
        let d = Some(declared.as_slice());
        assert_eq!(
            check(&leases, d, "OTHER", token.expose(), 1),
            Err(LeaseRefusal::UndeclaredKey)
        );
        assert_eq!(
            check(&leases, d, "OTHER", "wrong", 1),
            Err(LeaseRefusal::UndeclaredKey)
        );
        assert_eq!(
            check(&leases, None, "BOT_TOKEN", token.expose(), 1),
            Err(LeaseRefusal::UndeclaredKey)
        );
    }

    #[test]
    fn wrong_revoked_and_replaced_tokens_are_refused() {
        let leases = Leases::new();
        let declared = slots(&[("BOT_TOKEN", "c.d.bot")]);
        let d = Some(declared.as_slice());
        assert_eq!(
            check(&leases, d, "BOT_TOKEN", "anything", 1),
            Err(LeaseRefusal::Unauthorized),
            "no lease at all"
        );
        let first = leases.issue("d", &declared, 0).unwrap();
        assert_eq!(
            check(&leases, d, "BOT_TOKEN", "wrong", 1),
            Err(LeaseRefusal::Unauthorized)
        );
        assert_eq!(
            check(&leases, d, "BOT_TOKEN", "", 1),
            Err(LeaseRefusal::Unauthorized)
        );
        // A restart issues a new lease: the old token stops working at once.
        let second = leases.issue("d", &declared, 10).unwrap();
        assert_ne!(first.token.expose(), second.token.expose());
        assert_eq!(
            check(&leases, d, "BOT_TOKEN", first.token.expose(), 11),
            Err(LeaseRefusal::Unauthorized)
        );
        // Revoking the old lease id leaves the new one alone; revoking the new one ends it.
        leases.revoke("d", &first.lease_id);
        assert!(check(&leases, d, "BOT_TOKEN", second.token.expose(), 11).is_ok());
        leases.revoke("d", &second.lease_id);
        assert_eq!(
            check(&leases, d, "BOT_TOKEN", second.token.expose(), 11),
            Err(LeaseRefusal::Unauthorized)
        );
        assert!(leases.is_empty());
    }

    #[test]
    fn a_lease_is_bound_to_the_secret_ref_and_the_connector() {
        let leases = Leases::new();
        let declared = slots(&[("BOT_TOKEN", "c.d.bot")]);
        let token = leases.issue("d", &declared, 0).unwrap().token;
        // The key was remapped to another slot by a reload: the old lease does not serve it.
        let remapped = slots(&[("BOT_TOKEN", "c.d.other")]);
        assert_eq!(
            check(
                &leases,
                Some(remapped.as_slice()),
                "BOT_TOKEN",
                token.expose(),
                1
            ),
            Err(LeaseRefusal::Unauthorized)
        );
        // A key added by a reload was not part of the lease.
        let grown = slots(&[("BOT_TOKEN", "c.d.bot"), ("NEW", "c.d.new")]);
        assert_eq!(
            check(&leases, Some(grown.as_slice()), "NEW", token.expose(), 1),
            Err(LeaseRefusal::Unauthorized)
        );
        // Another connector's name with this token: no lease there.
        assert_eq!(
            leases.check(
                "e",
                Some(declared.as_slice()),
                "BOT_TOKEN",
                token.expose().as_bytes(),
                1
            ),
            Err(LeaseRefusal::Unauthorized)
        );
        leases.revoke_all("d");
        assert!(leases.is_empty());
    }
}
