//! The key service's operations: each checks the caller (policy), changes the database, makes
//! the change take effect at once (instant revocation, key-cache invalidation here and on
//! every instance) and leaves an audit event. Transport-free: `api.rs` maps HTTP onto it.

use std::sync::Arc;
use std::time::Duration;

use super::database::{DbError, KeyDatabase};
use super::model::{AuditEvent, KeyFilter, StoredKey, UsageBucket, new_key_id};
use super::policy::{Caller, Grant, Refusal};
use super::settings::ManagementSettings;
use super::sync::KeyChanges;
use super::usage::UsageRecorder;
use crate::keys::record::{KeyRecord, RecordRate};
use crate::keys::{KeyHash, Timestamp, generate_key};
use crate::revocation::{ApplyError, Kind, Revoker, Target};

/// The longest rotation grace: the old key must not live on indefinitely.
pub const MAX_GRACE: Duration = Duration::from_secs(30 * 86_400);
/// `rotate` without a grace: the old key keeps working this long.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(86_400);

/// Why an operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// 400: what the caller sent cannot be a key.
    #[error("{0}")]
    Invalid(String),
    /// 409: a limit reached, or a state that forbids the change.
    #[error("{0}")]
    Conflict(String),
    /// 503: the database is down (or its answer unreadable).
    #[error("the key database is unavailable")]
    Unavailable(String),
    /// 507-like: the revocation list is full; the database says revoked already.
    #[error("{0}")]
    RevocationFull(String),
}

impl From<DbError> for ServiceError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::Conflict(message) => Self::Conflict(message),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// What a new key gets: the parts a caller may choose.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub name: String,
    pub description: Option<String>,
    /// The operator names the tenant; others create in their own.
    pub tenant_id: Option<String>,
    pub user_id: Option<String>,
    pub grant: Grant,
}

/// A change to a key; `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct KeyChange {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<Option<Timestamp>>,
    pub rate_limit: Option<Option<RecordRate>>,
    pub tokens_per_minute: Option<Option<u64>>,
    pub custom_claims: Option<std::collections::BTreeMap<String, String>>,
}

/// A key as created: the plain key, shown once, and its record.
#[derive(Debug)]
pub struct Created {
    pub key: String,
    pub stored: StoredKey,
}

/// The key service of one gateway: its database and how changes take effect.
#[derive(Debug)]
pub struct KeyService {
    db: KeyDatabase,
    revoker: Revoker,
    usage: Arc<UsageRecorder>,
    changes: KeyChanges,
}

impl KeyService {
    pub fn new(
        db: KeyDatabase,
        revoker: Revoker,
        usage: Arc<UsageRecorder>,
        changes: KeyChanges,
    ) -> Self {
        Self {
            db,
            revoker,
            usage,
            changes,
        }
    }

    pub fn database(&self) -> &KeyDatabase {
        &self.db
    }

    pub fn usage(&self) -> &Arc<UsageRecorder> {
        &self.usage
    }

    /// Creates a key for the caller (or, for admins, someone in their tenant).
    pub async fn create(
        &self,
        caller: &Caller,
        settings: &ManagementSettings,
        prefix: &str,
        new: NewKey,
        request_id: &str,
    ) -> Result<Created, ServiceError> {
        let (tenant_id, user_id) =
            caller.owner_of_new_key(new.tenant_id.as_deref(), new.user_id.as_deref())?;
        let grant = caller.bound_grant(new.grant)?;
        let now = Timestamp::now();
        if grant.expires_at.is_some_and(|at| at <= now) {
            return Err(ServiceError::Invalid(
                "expires_at must be in the future".to_owned(),
            ));
        }
        if let Some(user) = &user_id {
            let held = self
                .db
                .count_active_user_keys(&tenant_id, user, now)
                .await?;
            if held >= settings.max_keys_per_user {
                return Err(ServiceError::Conflict(format!(
                    "user {user:?} holds {held} active keys, the most key_management.max_keys_per_user allows"
                )));
            }
        }
        let (key, key_id) = new_credential(prefix)?;
        let record = KeyRecord {
            key_id,
            tenant_id,
            user_id,
            scopes: grant.scopes,
            rate_limit: grant.rate_limit,
            tokens_per_minute: grant.tokens_per_minute,
            expires_at: grant.expires_at,
            revoked: false,
            custom_claims: grant.custom_claims,
            description: new.description,
        };
        record.validate().map_err(ServiceError::Invalid)?;
        let stored = StoredKey {
            record,
            hash: KeyHash::of(&key),
            name: new.name,
            created_at: now,
            created_by: caller.actor(),
            revoked_at: None,
            last_used_at: None,
            rotated_from: None,
            rotated_to: None,
        };
        self.db.insert_key(&stored).await?;
        // A lookup of this hash before it existed may have left a negative entry somewhere.
        self.changes.announce(stored.hash).await;
        self.audit(caller, "create", &stored, "ok", request_id)
            .await;
        Ok(Created { key, stored })
    }

    /// The caller's view of one key (unknown and foreign keys alike: not found).
    pub async fn get(&self, caller: &Caller, key_id: &str) -> Result<StoredKey, ServiceError> {
        let key = self.db.key_by_id(key_id).await?;
        Ok(caller.visible(key)?)
    }

    /// One page of the keys the caller may see, and the token of the next.
    pub async fn list(
        &self,
        filter: &KeyFilter,
        after: Option<&str>,
        page_size: u32,
    ) -> Result<(Vec<StoredKey>, Option<String>), ServiceError> {
        // One more than asked tells whether another page follows.
        let mut keys = self.db.list_keys(filter, after, page_size + 1).await?;
        let next = if keys.len() > page_size as usize {
            keys.truncate(page_size as usize);
            keys.last().map(|key| key.key_id().to_owned())
        } else {
            None
        };
        Ok((keys, next))
    }

    /// Changes a key's name, description, grant or expiry, within what the caller holds.
    pub async fn update(
        &self,
        caller: &Caller,
        key_id: &str,
        change: KeyChange,
        request_id: &str,
    ) -> Result<StoredKey, ServiceError> {
        let mut key = self.get(caller, key_id).await?;
        if key.record.revoked {
            return Err(ServiceError::Conflict(
                "the key is revoked; create a new one".to_owned(),
            ));
        }
        let record = &key.record;
        let wanted = Grant {
            scopes: change.scopes.unwrap_or_else(|| record.scopes.clone()),
            rate_limit: change.rate_limit.unwrap_or(record.rate_limit),
            tokens_per_minute: change.tokens_per_minute.unwrap_or(record.tokens_per_minute),
            expires_at: change.expires_at.unwrap_or(record.expires_at),
            custom_claims: change
                .custom_claims
                .unwrap_or_else(|| record.custom_claims.clone()),
        };
        let grant = caller.bound_grant(wanted)?;
        if change
            .expires_at
            .flatten()
            .is_some_and(|at| at <= Timestamp::now())
        {
            return Err(ServiceError::Invalid(
                "expires_at must be in the future (revoke the key to end it now)".to_owned(),
            ));
        }
        if let Some(name) = change.name {
            key.name = name;
        }
        if let Some(description) = change.description {
            key.record.description = description;
        }
        key.record.scopes = grant.scopes;
        key.record.rate_limit = grant.rate_limit;
        key.record.tokens_per_minute = grant.tokens_per_minute;
        key.record.expires_at = grant.expires_at;
        key.record.custom_claims = grant.custom_claims;
        key.record.validate().map_err(ServiceError::Invalid)?;
        if !self.db.update_key(&key).await? {
            return Err(Refusal::NotFound.into());
        }
        self.changes.announce(key.hash).await;
        self.audit(caller, "update", &key, "ok", request_id).await;
        Ok(key)
    }

    /// Revokes a key: stored as revoked, refused from now on on every instance, and its
    /// requests in flight cut. Revoking a revoked key answers as the first time did.
    pub async fn revoke(
        &self,
        caller: &Caller,
        key_id: &str,
        request_id: &str,
    ) -> Result<(StoredKey, usize), ServiceError> {
        let mut key = self.get(caller, key_id).await?;
        if !key.record.revoked {
            key.record.revoked = true;
            key.revoked_at = Some(Timestamp::now());
            // The database first: it is what every instance reads after the revocation
            // list's entry expires.
            if !self.db.update_key(&key).await? {
                return Err(Refusal::NotFound.into());
            }
        }
        let aborted = self.revoke_now(key.hash).await?;
        self.audit(caller, "revoke", &key, "ok", request_id).await;
        Ok((key, aborted))
    }

    /// A new key with the same settings; the old one keeps working for `grace`, then expires.
    pub async fn rotate(
        &self,
        caller: &Caller,
        prefix: &str,
        key_id: &str,
        grace: Duration,
        request_id: &str,
    ) -> Result<(Created, StoredKey), ServiceError> {
        if grace > MAX_GRACE {
            return Err(ServiceError::Invalid(format!(
                "grace is at most {} days",
                MAX_GRACE.as_secs() / 86_400
            )));
        }
        let mut old = self.get(caller, key_id).await?;
        if old.record.revoked {
            return Err(ServiceError::Conflict(
                "the key is revoked; create a new one".to_owned(),
            ));
        }
        if let Some(next) = &old.rotated_to {
            return Err(ServiceError::Conflict(format!(
                "the key was rotated already (to {next})"
            )));
        }
        let now = Timestamp::now();
        if !old.is_active(now) {
            return Err(ServiceError::Conflict("the key has expired".to_owned()));
        }
        // The new key may not grant more than the caller holds now, even if the old one did.
        let grant = caller.bound_grant(Grant {
            scopes: old.record.scopes.clone(),
            rate_limit: old.record.rate_limit,
            tokens_per_minute: old.record.tokens_per_minute,
            expires_at: old.record.expires_at,
            custom_claims: old.record.custom_claims.clone(),
        })?;
        let (key, new_id) = new_credential(prefix)?;
        let new = StoredKey {
            record: KeyRecord {
                key_id: new_id,
                scopes: grant.scopes,
                rate_limit: grant.rate_limit,
                tokens_per_minute: grant.tokens_per_minute,
                expires_at: grant.expires_at,
                custom_claims: grant.custom_claims,
                revoked: false,
                ..old.record.clone()
            },
            hash: KeyHash::of(&key),
            name: old.name.clone(),
            created_at: now,
            created_by: caller.actor(),
            revoked_at: None,
            last_used_at: None,
            rotated_from: Some(old.key_id().to_owned()),
            rotated_to: None,
        };
        let grace_secs = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        let grace_end = Timestamp(now.0.saturating_add(grace_secs));
        old.record.expires_at = Some(
            old.record
                .expires_at
                .map_or(grace_end, |at| at.min(grace_end)),
        );
        old.rotated_to = Some(new.key_id().to_owned());
        self.db.rotate(&old, &new).await?;
        self.changes.announce(old.hash).await;
        self.changes.announce(new.hash).await;
        if grace.is_zero() {
            // No grace: the old key ends now, its running requests too.
            self.revoke_now(old.hash).await?;
        }
        self.audit(caller, "rotate", &old, "ok", request_id).await;
        Ok((Created { key, stored: new }, old))
    }

    /// Hourly usage of a key the caller may see, in `[from, to)`.
    pub async fn usage_of(
        &self,
        caller: &Caller,
        key_id: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<UsageBucket>, ServiceError> {
        let key = self.get(caller, key_id).await?;
        Ok(self.db.usage(key.key_id(), from, to).await?)
    }

    /// One page of the audit log the caller may read.
    pub async fn audit_log(
        &self,
        caller: &Caller,
        after: Option<i64>,
        limit: u32,
    ) -> Result<(Vec<AuditEvent>, Option<i64>), ServiceError> {
        let tenant = caller.audit_scope()?;
        let mut events = self
            .db
            .list_audit(tenant.as_deref(), after, limit + 1)
            .await?;
        let next = if events.len() > limit as usize {
            events.truncate(limit as usize);
            events.last().map(|event| event.seq)
        } else {
            None
        };
        Ok((events, next))
    }

    /// Records a refused management call (the audit log lists attempts too).
    pub async fn audit_refusal(
        &self,
        caller: &Caller,
        action: &str,
        target: &str,
        result: &str,
        request_id: &str,
    ) {
        let tenant = caller.tenant_id.as_deref();
        self.record(caller, action, target, tenant, result, request_id)
            .await;
    }

    async fn audit(
        &self,
        caller: &Caller,
        action: &str,
        key: &StoredKey,
        result: &str,
        request_id: &str,
    ) {
        let tenant = Some(key.tenant_id());
        self.record(caller, action, key.key_id(), tenant, result, request_id)
            .await;
    }

    /// One audit event, written; the change is made already, so a lost row must not undo
    /// it, but it must be seen.
    async fn record(
        &self,
        caller: &Caller,
        action: &str,
        target: &str,
        tenant_id: Option<&str>,
        result: &str,
        request_id: &str,
    ) {
        let event = AuditEvent {
            seq: 0,
            time: Timestamp::now(),
            tenant_id: tenant_id.map(str::to_owned),
            actor: caller.actor(),
            action: action.to_owned(),
            target: target.to_owned(),
            result: result.to_owned(),
            request_id: Some(request_id.to_owned()),
        };
        if let Err(error) = self.db.append_audit(&event).await {
            tracing::error!(%error, action = %event.action, target = %event.target, "Could not write an audit event.");
        }
    }

    /// Instant revocation of a key by its hash (here, then on every instance).
    async fn revoke_now(&self, hash: KeyHash) -> Result<usize, ServiceError> {
        let target = Target {
            kind: Kind::KeyHash,
            value: hash.to_hex().into(),
            issuer: None,
        };
        let revoked = match self.revoker.revoke(target).await {
            Ok(revoked) => revoked,
            Err(error @ ApplyError::Full(_)) => {
                return Err(ServiceError::RevocationFull(error.to_string()));
            }
            Err(error @ ApplyError::Expired) => {
                return Err(ServiceError::Invalid(error.to_string()));
            }
        };
        // Without Redis the revocation reaches the other instances through the database.
        self.changes
            .announce_revocation(&revoked.outcome.revocation, revoked.cluster)
            .await;
        self.changes.announce(hash).await;
        Ok(revoked.outcome.aborted)
    }
}

/// A new key and the id it is stored under, both from the OS random generator.
fn new_credential(prefix: &str) -> Result<(String, String), ServiceError> {
    let failed = |error: getrandom::Error| {
        ServiceError::Unavailable(format!("the system random generator failed: {error}"))
    };
    let key = generate_key(prefix).map_err(failed)?;
    let key_id = new_key_id().map_err(failed)?;
    Ok((key, key_id))
}
