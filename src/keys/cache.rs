//! The key cache in front of the key source (SPEC §4.1, "Cache semantics").
//!
//! | entry age            | valid key                         | unknown key        |
//! |----------------------|-----------------------------------|--------------------|
//! | < cache_ttl          | served, no lookup                 | 401 while < negative_ttl, no lookup |
//! | < stale_if_error     | served at once, refreshed in the background (one refresh per key) | |
//! | older / absent       | looked up now; concurrent requests for one key share one lookup | |
//!
//! A failed lookup never turns into "unknown": it keeps a recently validated key working
//! (stale-if-error) and answers 503 for everything else (fail closed). A cache hit does no I/O
//! and takes no lock shared across keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use moka::Expiry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::OnceCell;

use super::{KeyHash, KeyRecord, KeySource, SourceError, Timestamp, is_well_formed};
use crate::auth::{AuthMethod, Identity};
use crate::config::Rate;
use crate::error::GatewayError;
use crate::telemetry::ResultLabels;

/// Settings from `[api_keys]` and `[identity]` the store needs.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyStoreSettings {
    pub prefix: String,
    pub min_length: usize,
    pub cache_ttl: Duration,
    pub negative_ttl: Duration,
    pub stale_if_error: Duration,
    pub cache_capacity: u64,
    pub header_prefix: String,
    /// Compared on reload: a different source means a new store.
    pub source: crate::config::KeySourceSettings,
}

/// Counters the store updates.
#[derive(Debug, Clone, Default)]
pub struct KeyMetrics {
    /// `authgate_key_cache_total{result="hit|miss|stale|negative"}`.
    pub cache: Family<ResultLabels, Counter>,
    /// `authgate_key_source_requests_total{result="found|not_found|error"}`.
    pub source: Family<ResultLabels, Counter>,
}

impl KeyMetrics {
    fn cache(&self, result: &'static str) {
        self.cache.get_or_create(&ResultLabels { result }).inc();
    }

    fn source(&self, result: &'static str) {
        self.source.get_or_create(&ResultLabels { result }).inc();
    }
}

#[derive(Debug)]
enum EntryState {
    Valid(Arc<Identity>),
    Unknown,
}

#[derive(Debug)]
struct CacheEntry {
    state: EntryState,
    validated_at: Instant,
    /// Set while a background refresh runs, so a busy key triggers one refresh, not many.
    refreshing: AtomicBool,
}

impl CacheEntry {
    fn new(state: EntryState) -> Arc<Self> {
        Arc::new(Self {
            state,
            validated_at: Instant::now(),
            refreshing: AtomicBool::new(false),
        })
    }
}

/// Unknown keys live `negative_ttl`; valid ones as long as they may still be served stale.
struct EntryExpiry {
    valid: Duration,
    unknown: Duration,
}

impl Expiry<KeyHash, Arc<CacheEntry>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &KeyHash,
        value: &Arc<CacheEntry>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(match value.state {
            EntryState::Valid(_) => self.valid,
            EntryState::Unknown => self.unknown,
        })
    }

    fn expire_after_update(
        &self,
        key: &KeyHash,
        value: &Arc<CacheEntry>,
        now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, now)
    }
}

type Lookup = Result<Option<Arc<Identity>>, SourceError>;

/// Validates API keys: format, cache, source.
#[derive(Debug)]
pub struct KeyStore {
    settings: KeyStoreSettings,
    cache: moka::sync::Cache<KeyHash, Arc<CacheEntry>>,
    /// Lookups in progress, so concurrent misses for one key share one lookup.
    inflight: DashMap<KeyHash, Arc<OnceCell<Lookup>>>,
    source: KeySource,
    metrics: KeyMetrics,
}

impl KeyStore {
    pub fn new(settings: KeyStoreSettings, source: KeySource, metrics: KeyMetrics) -> Arc<Self> {
        let cache = moka::sync::Cache::builder()
            .max_capacity(settings.cache_capacity)
            .expire_after(EntryExpiry {
                valid: settings.cache_ttl.max(settings.stale_if_error),
                unknown: settings.negative_ttl,
            })
            .build();
        Arc::new(Self {
            settings,
            cache,
            inflight: DashMap::new(),
            source,
            metrics,
        })
    }

    pub fn settings(&self) -> &KeyStoreSettings {
        &self.settings
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// Drops every cached decision (after the key file changed).
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    /// Drops the cached decision for one key.
    pub fn invalidate(&self, hash: &KeyHash) {
        self.cache.invalidate(hash);
    }

    /// Cached entries (approximate; for tests and memory reports).
    pub fn cached_len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Authenticates an API key: the identity, or the 401/503 SPEC §4.1 names.
    pub async fn authenticate(self: &Arc<Self>, key: &str) -> Result<Arc<Identity>, GatewayError> {
        if !is_well_formed(key, &self.settings.prefix, self.settings.min_length) {
            return Err(GatewayError::InvalidKey);
        }
        self.authenticate_hash(KeyHash::of(key)).await
    }

    /// The part after hashing (the plain key is no longer needed).
    pub async fn authenticate_hash(
        self: &Arc<Self>,
        hash: KeyHash,
    ) -> Result<Arc<Identity>, GatewayError> {
        if let Some(entry) = self.cache.get(&hash) {
            let age = entry.validated_at.elapsed();
            match &entry.state {
                EntryState::Unknown if age < self.settings.negative_ttl => {
                    self.metrics.cache("negative");
                    return Err(GatewayError::InvalidKey);
                }
                EntryState::Valid(identity) if age < self.settings.cache_ttl => {
                    self.metrics.cache("hit");
                    return check(identity);
                }
                EntryState::Valid(identity) if age < self.settings.stale_if_error => {
                    self.metrics.cache("stale");
                    if !entry.refreshing.swap(true, Ordering::AcqRel) {
                        self.spawn_refresh(hash, entry.clone());
                    }
                    return check(identity);
                }
                _ => {}
            }
        }
        self.metrics.cache("miss");
        match self.lookup_coalesced(hash).await {
            Ok(Some(identity)) => check(&identity),
            Ok(None) => Err(GatewayError::InvalidKey),
            Err(_) => Err(GatewayError::AuthBackendUnavailable),
        }
    }

    /// One lookup per key at a time; every concurrent caller gets its result.
    async fn lookup_coalesced(&self, hash: KeyHash) -> Lookup {
        let cell = self
            .inflight
            .entry(hash)
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let result = cell
            .get_or_init(|| async {
                // A lookup that finished between our cache miss and now already stored it.
                if let Some(entry) = self.cache.get(&hash) {
                    let age = entry.validated_at.elapsed();
                    match &entry.state {
                        EntryState::Valid(identity) if age < self.settings.cache_ttl => {
                            return Ok(Some(identity.clone()));
                        }
                        EntryState::Unknown if age < self.settings.negative_ttl => return Ok(None),
                        _ => {}
                    }
                }
                self.lookup_and_store(hash).await
            })
            .await
            .clone();
        self.inflight
            .remove_if(&hash, |_, current| Arc::ptr_eq(current, &cell));
        result
    }

    async fn lookup_and_store(&self, hash: KeyHash) -> Lookup {
        match self.source.lookup(&hash).await {
            Ok(Some(record)) => {
                self.metrics.source("found");
                let identity =
                    Arc::new(identity_from_record(&record, &self.settings.header_prefix));
                self.cache
                    .insert(hash, CacheEntry::new(EntryState::Valid(identity.clone())));
                Ok(Some(identity))
            }
            Ok(None) => {
                self.metrics.source("not_found");
                self.cache
                    .insert(hash, CacheEntry::new(EntryState::Unknown));
                Ok(None)
            }
            Err(error) => {
                self.metrics.source("error");
                tracing::warn!(key_hash = %hash.short(), source = self.source.kind(), error = %error, "Key lookup failed.");
                Err(error)
            }
        }
    }

    fn spawn_refresh(self: &Arc<Self>, hash: KeyHash, entry: Arc<CacheEntry>) {
        let store = self.clone();
        tokio::spawn(async move {
            // On failure the old entry stays (stale-if-error); a new answer replaces it.
            if store.lookup_coalesced(hash).await.is_err() {
                entry.refreshing.store(false, Ordering::Release);
            }
        });
    }
}

/// Per-request checks on a cached identity: revocation and expiry are never cached away.
fn check(identity: &Arc<Identity>) -> Result<Arc<Identity>, GatewayError> {
    if identity.revoked {
        return Err(GatewayError::KeyRevoked);
    }
    if identity.expires_at.is_some_and(|at| at <= Timestamp::now()) {
        return Err(GatewayError::KeyExpired);
    }
    Ok(identity.clone())
}

/// The identity an API-key record grants.
pub fn identity_from_record(record: &KeyRecord, header_prefix: &str) -> Identity {
    let claims: Vec<(String, String)> = record
        .custom_claims
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
        .collect();
    Identity {
        method: AuthMethod::ApiKey,
        subject: record.key_id.clone(),
        tenant_id: Some(record.tenant_id.clone()),
        user_id: record.user_id.clone(),
        key_id: Some(record.key_id.clone()),
        issuer: None,
        scopes: record.scopes.clone(),
        rate_limit: record.rate_limit.and_then(|rate| {
            std::num::NonZeroU32::new(rate.burst).map(|burst| Rate {
                per_second: rate.requests_per_second,
                burst,
            })
        }),
        tokens_per_minute: record.tokens_per_minute,
        expires_at: record.expires_at,
        revoked: record.revoked,
        headers: Vec::new(),
    }
    .with_headers(header_prefix, &claims)
}
