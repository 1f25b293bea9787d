//! What the key service stores and answers with: a key's lifecycle record, audit events and
//! usage buckets. Pure data; `database.rs` keeps it, `api.rs` renders it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::keys::record::{KeyRecord, RecordRate};
use crate::keys::{KeyHash, Timestamp};

/// Characters of a key id after its `key_` prefix: 12 of time (milliseconds, base32, so ids
/// sort by creation and keyset pages stay stable while keys are created) and 14 random.
pub const KEY_ID_CHARS: usize = 26;

/// One API key in the store: the record the gateway enforces (SPEC §4.1) and its history.
/// Holds the key's hash (the lookup index) and never the key.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKey {
    /// What a request with this key runs as; `record.revoked` is set with `revoked_at`.
    pub record: KeyRecord,
    pub hash: KeyHash,
    pub name: String,
    pub created_at: Timestamp,
    /// The subject that created it (`admin` for the admin listener, `cli` for the CLI).
    pub created_by: String,
    pub revoked_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    /// The key this one replaced (`rotate`), and the key that replaced this one.
    pub rotated_from: Option<String>,
    pub rotated_to: Option<String>,
}

impl StoredKey {
    pub fn key_id(&self) -> &str {
        &self.record.key_id
    }

    pub fn tenant_id(&self) -> &str {
        &self.record.tenant_id
    }

    pub fn user_id(&self) -> Option<&str> {
        self.record.user_id.as_deref()
    }

    /// Usable now: neither revoked nor expired.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.record.status(now) == "active"
    }

    /// The JSON a caller sees (RECORD): the §4.1 fields and the lifecycle, with the hash cut
    /// to its first 8 hex characters.
    pub fn view(&self) -> KeyView<'_> {
        let record = &self.record;
        KeyView {
            key_id: &record.key_id,
            name: &self.name,
            tenant_id: &record.tenant_id,
            user_id: record.user_id.as_deref(),
            scopes: &record.scopes,
            rate_limit: record.rate_limit,
            tokens_per_minute: record.tokens_per_minute,
            expires_at: record.expires_at,
            revoked: record.revoked,
            custom_claims: &record.custom_claims,
            description: record.description.as_deref(),
            hash_prefix: self.hash.short(),
            created_at: self.created_at,
            created_by: &self.created_by,
            revoked_at: self.revoked_at,
            last_used_at: self.last_used_at,
            rotated_from: self.rotated_from.as_deref(),
            rotated_to: self.rotated_to.as_deref(),
        }
    }
}

/// RECORD, as rendered. Optional fields are always present (`null`), so clients can rely on
/// the shape.
#[derive(Debug, Serialize)]
pub struct KeyView<'k> {
    pub key_id: &'k str,
    pub name: &'k str,
    pub tenant_id: &'k str,
    pub user_id: Option<&'k str>,
    pub scopes: &'k [String],
    pub rate_limit: Option<RecordRate>,
    pub tokens_per_minute: Option<u64>,
    pub expires_at: Option<Timestamp>,
    pub revoked: bool,
    pub custom_claims: &'k BTreeMap<String, String>,
    pub description: Option<&'k str>,
    pub hash_prefix: String,
    pub created_at: Timestamp,
    pub created_by: &'k str,
    pub revoked_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    pub rotated_from: Option<&'k str>,
    pub rotated_to: Option<&'k str>,
}

/// Which keys a listing covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFilter {
    /// `None` only for the admin listener and the CLI: every tenant.
    pub tenant_id: Option<String>,
    pub user_id: Option<String>,
}

/// One audited mutation (or refused attempt at one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// Store order; the page token of the audit log. Set by the store.
    #[serde(skip)]
    pub seq: i64,
    pub time: Timestamp,
    /// Whose tenant the event belongs to (the target key's); `None` for tenant-less events.
    #[serde(skip)]
    pub tenant_id: Option<String>,
    /// `subject@tenant` of the caller, `admin` for the admin token, `cli` for the CLI.
    pub actor: String,
    /// `create`, `update`, `revoke`, `rotate`, `import`.
    pub action: String,
    /// The key id acted on.
    pub target: String,
    /// `ok`, or the error code that refused it.
    pub result: String,
    pub request_id: Option<String>,
}

/// A key's refusals by the SPEC §7 code authgate answered with (`RATE_LIMITED`, …): one
/// entry per code that occurred, so at most [`crate::error::CODES`]`.len()` of them.
pub type Refusals = BTreeMap<String, u64>;

/// Counts for one key over one hour, as the usage flusher adds them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageCounts {
    pub requests: u64,
    /// Every refusal; `refusals` breaks it down by code.
    pub refused: u64,
    pub tokens: u64,
    pub refusals: Refusals,
}

/// A batch entry of the usage flusher: one key's counts in one hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    pub key_id: String,
    /// Start of the hour, Unix seconds (a multiple of 3600).
    pub hour: i64,
    pub counts: UsageCounts,
    /// The latest use in the batch, for `last_used_at`.
    pub last_used_at: Timestamp,
}

/// One bucket of `GET …/usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageBucket {
    pub start: Timestamp,
    pub requests: u64,
    pub refused: u64,
    pub tokens: u64,
    /// `refused` by code; `{}` when nothing was refused.
    pub refusals: Refusals,
}

impl UsageBucket {
    /// A bucket starting at `start` with nothing counted yet.
    pub fn empty(start: Timestamp) -> Self {
        Self {
            start,
            requests: 0,
            refused: 0,
            tokens: 0,
            refusals: Refusals::new(),
        }
    }

    /// Adds `other`'s counts to this bucket's (a day made of hours, a 24-hour summary).
    pub fn add(&mut self, other: &UsageBucket) {
        self.requests = self.requests.saturating_add(other.requests);
        self.refused = self.refused.saturating_add(other.refused);
        self.tokens = self.tokens.saturating_add(other.tokens);
        for (code, count) in &other.refusals {
            let sum = self.refusals.entry(code.clone()).or_default();
            *sum = sum.saturating_add(*count);
        }
    }
}

/// A new key id: `key_` + 12 base32 characters of the creation time in milliseconds + 14
/// random ones, so ids sort by creation (keyset pages) and never collide in practice.
pub fn new_key_id() -> Result<String, getrandom::Error> {
    let now_millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        });
    new_key_id_at(now_millis)
}

/// [`new_key_id`] for a creation time in milliseconds.
pub fn new_key_id_at(now_millis: u64) -> Result<String, getrandom::Error> {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut id = String::with_capacity(4 + KEY_ID_CHARS);
    id.push_str("key_");
    for shift in (0..12).rev() {
        let digit = (now_millis >> (shift * 5)) & 31;
        id.push(ALPHABET[digit as usize] as char);
    }
    let mut random = [0u8; 14];
    getrandom::fill(&mut random)?;
    for byte in random {
        id.push(ALPHABET[usize::from(byte & 31)] as char);
    }
    Ok(id)
}

/// A record built from its parts, for the CLI, the import and the tests.
pub fn record(key_id: &str, tenant_id: &str, user_id: Option<&str>, scopes: &[&str]) -> KeyRecord {
    KeyRecord {
        key_id: key_id.to_owned(),
        tenant_id: tenant_id.to_owned(),
        user_id: user_id.map(str::to_owned),
        scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
        rate_limit: None,
        tokens_per_minute: None,
        expires_at: None,
        revoked: false,
        custom_claims: BTreeMap::new(),
        description: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_sort_by_creation_and_differ() {
        let early = new_key_id_at(1_700_000_000_000).unwrap();
        let later = new_key_id_at(1_700_000_000_001).unwrap();
        let again = new_key_id_at(1_700_000_000_001).unwrap();
        assert_eq!(early.len(), 4 + KEY_ID_CHARS);
        assert!(early < later);
        assert_ne!(later, again);
        assert!(later[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn the_view_never_carries_the_hash_beyond_its_prefix() {
        let hash = KeyHash::of("sgk_example");
        let key = StoredKey {
            record: record("key_1", "acme", Some("alice"), &["read"]),
            hash,
            name: "ci".into(),
            created_at: Timestamp(1_700_000_000),
            created_by: "alice@acme".into(),
            revoked_at: None,
            last_used_at: None,
            rotated_from: None,
            rotated_to: None,
        };
        let json = serde_json::to_string(&key.view()).unwrap();
        assert!(json.contains(&format!("\"hash_prefix\":\"{}\"", hash.short())));
        assert!(!json.contains(&hash.to_hex()));
        assert!(json.contains("\"user_id\":\"alice\""));
        assert!(json.contains("\"last_used_at\":null"));
    }
}
