//! A key as table columns and back: written from a checked record, read back with every
//! column checked, so a damaged row is `Corrupt`, never a panic or a wrong key.

use std::collections::BTreeMap;

use sqlx::any::AnyRow;
use sqlx::{Any, Row as _};

use super::DbError;
use super::errors::corrupt;
use crate::key_service::model::StoredKey;
use crate::keys::record::{KeyRecord, RecordRate};
use crate::keys::{KeyHash, Timestamp};

/// A key as its column values.
pub(super) struct KeyRow {
    key_id: String,
    hash: String,
    tenant_id: String,
    user_id: Option<String>,
    name: String,
    scopes: String,
    rate_limit: Option<String>,
    tokens_per_minute: Option<i64>,
    expires_at: Option<i64>,
    revoked: i64,
    custom_claims: String,
    description: Option<String>,
    created_at: i64,
    created_by: String,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
    rotated_from: Option<String>,
    rotated_to: Option<String>,
}

pub(super) type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;

impl KeyRow {
    /// Refuses what could not be read back: an invalid record, or a count too large for a
    /// BIGINT.
    pub(super) fn from_key(key: &StoredKey) -> Result<Self, DbError> {
        let record = &key.record;
        record
            .validate()
            .map_err(|message| DbError::Corrupt(format!("refusing to store the key: {message}")))?;
        // PostgreSQL's TEXT cannot hold NUL; refusing it on both engines keeps them alike.
        // (Scopes and claims travel as JSON, where NUL is escaped.)
        let texts = [
            Some(record.key_id.as_str()),
            Some(record.tenant_id.as_str()),
            record.user_id.as_deref(),
            Some(key.name.as_str()),
            record.description.as_deref(),
            Some(key.created_by.as_str()),
            key.rotated_from.as_deref(),
            key.rotated_to.as_deref(),
        ];
        if texts.into_iter().flatten().any(|text| text.contains('\0')) {
            return Err(DbError::Corrupt(
                "refusing to store the key: a text field contains a NUL character".into(),
            ));
        }
        let json = |value: Result<String, serde_json::Error>| {
            value.map_err(|error| DbError::Corrupt(format!("cannot encode the key: {error}")))
        };
        let tokens_per_minute = record
            .tokens_per_minute
            .map(|tokens| {
                i64::try_from(tokens)
                    .map_err(|_| DbError::Corrupt("tokens_per_minute is too large to store".into()))
            })
            .transpose()?;
        Ok(Self {
            key_id: record.key_id.clone(),
            hash: key.hash.to_hex(),
            tenant_id: record.tenant_id.clone(),
            user_id: record.user_id.clone(),
            name: key.name.clone(),
            scopes: json(serde_json::to_string(&record.scopes))?,
            rate_limit: record
                .rate_limit
                .map(|rate| json(serde_json::to_string(&rate)))
                .transpose()?,
            tokens_per_minute,
            expires_at: record.expires_at.map(|at| at.0),
            revoked: i64::from(record.revoked),
            custom_claims: json(serde_json::to_string(&record.custom_claims))?,
            description: record.description.clone(),
            created_at: key.created_at.0,
            created_by: key.created_by.clone(),
            revoked_at: key.revoked_at.map(|at| at.0),
            last_used_at: key.last_used_at.map(|at| at.0),
            rotated_from: key.rotated_from.clone(),
            rotated_to: key.rotated_to.clone(),
        })
    }

    /// Binds `$1`…`$18` of [`INSERT_KEY`]: the key id, the hash, then the fields.
    pub(super) fn bind_insert<'q>(&'q self, query: AnyQuery<'q>) -> AnyQuery<'q> {
        self.bind_fields(query.bind(self.key_id.as_str()).bind(self.hash.as_str()))
    }

    /// Binds `$1`…`$17` of [`UPDATE_KEY`]: the key id, then the fields (the hash never
    /// changes).
    pub(super) fn bind_update<'q>(&'q self, query: AnyQuery<'q>) -> AnyQuery<'q> {
        self.bind_fields(query.bind(self.key_id.as_str()))
    }

    /// Everything after the key id and the hash, in [`KEY_COLUMNS`] order: the same for both
    /// statements.
    pub(super) fn bind_fields<'q>(&'q self, query: AnyQuery<'q>) -> AnyQuery<'q> {
        query
            .bind(self.tenant_id.as_str())
            .bind(self.user_id.as_deref())
            .bind(self.name.as_str())
            .bind(self.scopes.as_str())
            .bind(self.rate_limit.as_deref())
            .bind(self.tokens_per_minute)
            .bind(self.expires_at)
            .bind(self.revoked)
            .bind(self.custom_claims.as_str())
            .bind(self.description.as_deref())
            .bind(self.created_at)
            .bind(self.created_by.as_str())
            .bind(self.revoked_at)
            .bind(self.last_used_at)
            .bind(self.rotated_from.as_deref())
            .bind(self.rotated_to.as_deref())
    }
}

/// Reads a row of [`KEY_COLUMNS`] back into a key, checking everything a hand-edited or
/// damaged row could get wrong.
pub(super) fn key_from_row(row: &AnyRow) -> Result<StoredKey, DbError> {
    let key_id: String = row.try_get(0).map_err(corrupt("key row"))?;
    let bad = |what: &str| DbError::Corrupt(format!("key {key_id:?}: {what}"));
    let get_text = |index: usize| -> Result<String, DbError> {
        row.try_get(index).map_err(|error| bad(&error.to_string()))
    };
    let get_opt_text = |index: usize| -> Result<Option<String>, DbError> {
        row.try_get(index).map_err(|error| bad(&error.to_string()))
    };
    let get_int = |index: usize| -> Result<i64, DbError> {
        row.try_get(index).map_err(|error| bad(&error.to_string()))
    };
    let get_opt_int = |index: usize| -> Result<Option<i64>, DbError> {
        row.try_get(index).map_err(|error| bad(&error.to_string()))
    };
    let hash_text = get_text(1)?;
    let hash = KeyHash::from_hex(&hash_text)
        .filter(|hash| hash.to_hex() == hash_text)
        .ok_or_else(|| bad("the stored hash is not 64 lowercase hex characters"))?;
    let scopes: Vec<String> =
        serde_json::from_str(&get_text(5)?).map_err(|error| bad(&format!("scopes: {error}")))?;
    let rate_limit: Option<RecordRate> = get_opt_text(6)?
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|error| bad(&format!("rate_limit: {error}")))?;
    let tokens_per_minute = get_opt_int(7)?
        .map(u64::try_from)
        .transpose()
        .map_err(|_| bad("negative tokens_per_minute"))?;
    let revoked = match get_int(9)? {
        0 => false,
        1 => true,
        other => return Err(bad(&format!("revoked is {other}, not 0 or 1"))),
    };
    let custom_claims: BTreeMap<String, String> = serde_json::from_str(&get_text(10)?)
        .map_err(|error| bad(&format!("custom_claims: {error}")))?;
    let record = KeyRecord {
        key_id: key_id.clone(),
        tenant_id: get_text(2)?,
        user_id: get_opt_text(3)?,
        scopes,
        rate_limit,
        tokens_per_minute,
        expires_at: get_opt_int(8)?.map(Timestamp),
        revoked,
        custom_claims,
        description: get_opt_text(11)?,
    };
    record.validate().map_err(|message| bad(&message))?;
    Ok(StoredKey {
        record,
        hash,
        name: get_text(4)?,
        created_at: Timestamp(get_int(12)?),
        created_by: get_text(13)?,
        revoked_at: get_opt_int(14)?.map(Timestamp),
        last_used_at: get_opt_int(15)?.map(Timestamp),
        rotated_from: get_opt_text(16)?,
        rotated_to: get_opt_text(17)?,
    })
}
