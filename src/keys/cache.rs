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
//!
//! The cache is quick_cache (sharded, CLOCK-Pro eviction, bounded by `cache_capacity`), not
//! moka: moka's bookkeeping alone costs 370-420 bytes per entry, which would put a million
//! cached keys far over a 500 MB budget, and its reads are 5-20x slower. Freshness is decided
//! here from `validated_at`, so the cache needs no timers of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{broadcast, watch};

use super::settings::ApiKeySettings;
use super::{KeyHash, KeyRecord, KeySource, SourceError, Timestamp, is_well_formed};
use crate::auth::{AuthMethod, Identity, IdentityFields};
use crate::error::GatewayError;
use crate::limits::settings::Rate;
use crate::telemetry::{Metrics, ResultLabels};

/// Counters the store updates, resolved once so the hot path only does an atomic add.
#[derive(Debug, Clone, Default)]
pub struct KeyMetrics {
    /// `authgate_key_cache_total{result=...}`.
    pub hit: Counter,
    pub miss: Counter,
    pub stale: Counter,
    pub negative: Counter,
    /// `authgate_key_source_requests_total{result=...}`.
    pub found: Counter,
    pub not_found: Counter,
    pub error: Counter,
}

impl KeyMetrics {
    /// The key store's handles on `authgate_key_cache_total` and
    /// `authgate_key_source_requests_total`.
    pub fn of(metrics: &Metrics) -> Self {
        Self::from_families(&metrics.key_cache, &metrics.key_source)
    }

    /// Resolves the labelled counters of the two families.
    pub fn from_families(
        cache: &Family<ResultLabels, Counter>,
        source: &Family<ResultLabels, Counter>,
    ) -> Self {
        let get = |family: &Family<ResultLabels, Counter>, result: &'static str| {
            family.get_or_create(&ResultLabels { result }).clone()
        };
        Self {
            hit: get(cache, "hit"),
            miss: get(cache, "miss"),
            stale: get(cache, "stale"),
            negative: get(cache, "negative"),
            found: get(source, "found"),
            not_found: get(source, "not_found"),
            error: get(source, "error"),
        }
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

/// A failed background refresh of one key is retried no sooner than this.
pub const REFRESH_RETRY: Duration = Duration::from_secs(1);

type Lookup = Result<Option<Arc<Identity>>, SourceError>;

/// Validates API keys: format, cache, source.
#[derive(Debug)]
pub struct KeyStore {
    settings: ApiKeySettings,
    cache: quick_cache::sync::Cache<KeyHash, Arc<CacheEntry>>,
    /// Lookups in progress, so concurrent misses for one key share one lookup.
    inflight: DashMap<KeyHash, watch::Receiver<Option<Lookup>>>,
    /// Bumped by `invalidate_all`: an answer read from the source before a key-file reload
    /// is not cached after it (it could be a record the reload just revoked).
    generation: std::sync::atomic::AtomicU64,
    source: KeySource,
    metrics: KeyMetrics,
}

impl KeyStore {
    pub fn new(settings: ApiKeySettings, source: KeySource, metrics: KeyMetrics) -> Arc<Self> {
        let capacity = usize::try_from(settings.cache_capacity).unwrap_or(usize::MAX);
        let cache = quick_cache::sync::Cache::new(capacity);
        Arc::new(Self {
            settings,
            cache,
            inflight: DashMap::new(),
            generation: std::sync::atomic::AtomicU64::new(0),
            source,
            metrics,
        })
    }

    pub fn settings(&self) -> &ApiKeySettings {
        &self.settings
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// Drops every cached decision (after the key file changed).
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.clear();
    }

    /// Drops the cached decision for one key.
    pub fn invalidate(&self, hash: &KeyHash) {
        self.cache.remove(hash);
    }

    /// Drops cached answers for keys announced as changed (the key service, here or on
    /// another instance), for as long as the store lives. A lookup already under way may
    /// have read the old record: it is answered but not cached. A store that fell behind
    /// the announcements drops everything, since it cannot tell which keys it missed.
    pub fn follow_changes(self: &Arc<Self>, mut changes: broadcast::Receiver<KeyHash>) {
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let change = changes.recv().await;
                let Some(store) = store.upgrade() else {
                    return;
                };
                match change {
                    Ok(hash) => {
                        store.generation.fetch_add(1, Ordering::AcqRel);
                        store.invalidate(&hash);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => store.invalidate_all(),
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Cached entries (for tests and memory reports).
    pub fn cached_len(&self) -> usize {
        self.cache.len()
    }

    /// Authenticates an API key: the identity, or the 401/503 SPEC §4.1 names.
    pub async fn authenticate(self: &Arc<Self>, key: &[u8]) -> Result<Arc<Identity>, GatewayError> {
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
        if let Some(decided) = self.authenticate_cached(hash) {
            return decided;
        }
        // Boxed: the lookup future (control-plane call included) is large, and every
        // request's future would otherwise carry and copy it, cache hit or not.
        Box::pin(self.authenticate_miss(hash)).await
    }

    /// The cache alone: a decision for a fresh (or usable stale) entry, `None` on a miss.
    fn authenticate_cached(
        self: &Arc<Self>,
        hash: KeyHash,
    ) -> Option<Result<Arc<Identity>, GatewayError>> {
        let entry = self.cache.get(&hash)?;
        let age = entry.validated_at.elapsed();
        match &entry.state {
            EntryState::Unknown if age < self.settings.negative_ttl => {
                self.metrics.negative.inc();
                Some(Err(GatewayError::InvalidKey))
            }
            EntryState::Valid(identity) if age < self.settings.cache_ttl => {
                self.metrics.hit.inc();
                Some(check(identity))
            }
            EntryState::Valid(identity) if age < self.settings.stale_if_error => {
                self.metrics.stale.inc();
                if !entry.refreshing.swap(true, Ordering::AcqRel) {
                    self.spawn_refresh(hash, entry.clone());
                }
                Some(check(identity))
            }
            _ => None,
        }
    }

    async fn authenticate_miss(
        self: &Arc<Self>,
        hash: KeyHash,
    ) -> Result<Arc<Identity>, GatewayError> {
        self.metrics.miss.inc();
        match self.lookup_coalesced(hash).await {
            Ok(Some(identity)) => check(&identity),
            Ok(None) => Err(GatewayError::InvalidKey),
            Err(_) => Err(GatewayError::AuthBackendUnavailable),
        }
    }

    /// One lookup per key at a time; every concurrent caller gets its result.
    ///
    /// The lookup runs in its own task, which also removes the in-flight entry: a caller that
    /// goes away (client disconnect, HTTP/2 reset) can neither leave the entry behind nor
    /// cancel the lookup the other callers wait for, and its result is still cached.
    async fn lookup_coalesced(self: &Arc<Self>, hash: KeyHash) -> Lookup {
        let mut receiver = match self.inflight.entry(hash) {
            dashmap::Entry::Occupied(entry) => entry.get().clone(),
            dashmap::Entry::Vacant(entry) => {
                let (sender, receiver) = watch::channel(None);
                entry.insert(receiver.clone());
                let store = self.clone();
                tokio::spawn(async move {
                    let result = store.cached_or_lookup(hash).await;
                    let _ = sender.send(Some(result));
                    store.inflight.remove(&hash);
                });
                receiver
            }
        };
        match receiver.wait_for(Option::is_some).await {
            Ok(result) => result
                .clone()
                .unwrap_or_else(|| Err(SourceError("lookup lost".into()))),
            Err(_) => Err(SourceError(
                "the lookup task ended without an answer".into(),
            )),
        }
    }

    /// A lookup that finished between a caller's cache miss and now already stored its answer.
    async fn cached_or_lookup(&self, hash: KeyHash) -> Lookup {
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
    }

    async fn lookup_and_store(&self, hash: KeyHash) -> Lookup {
        let generation = self.generation.load(Ordering::Acquire);
        let answer = self.source.lookup(&hash).await;
        if self.generation.load(Ordering::Acquire) != generation {
            // The key set changed while we looked: ask the new one instead.
            return Box::pin(self.lookup_and_store(hash)).await;
        }
        match answer {
            Ok(Some(record)) => {
                self.metrics.found.inc();
                let identity = Arc::new(identity_from_record(&record, hash));
                self.cache
                    .insert(hash, CacheEntry::new(EntryState::Valid(identity.clone())));
                Ok(Some(identity))
            }
            Ok(None) => {
                self.metrics.not_found.inc();
                self.cache
                    .insert(hash, CacheEntry::new(EntryState::Unknown));
                Ok(None)
            }
            Err(error) => {
                self.metrics.error.inc();
                tracing::warn!(key_hash = %hash.short(), source = self.source.kind(), error = %error, "Key lookup failed.");
                Err(error)
            }
        }
    }

    fn spawn_refresh(self: &Arc<Self>, hash: KeyHash, entry: Arc<CacheEntry>) {
        let store = self.clone();
        tokio::spawn(async move {
            // On failure the old entry stays (stale-if-error); a new answer replaces it. A busy
            // key retries a failed refresh at most once per REFRESH_RETRY, not per request.
            if store.lookup_coalesced(hash).await.is_err() {
                tokio::time::sleep(REFRESH_RETRY).await;
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
pub fn identity_from_record(record: &KeyRecord, hash: KeyHash) -> Identity {
    let claims: Vec<(&str, &str)> = record
        .custom_claims
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    Identity::new(
        AuthMethod::ApiKey,
        &IdentityFields {
            subject: &record.key_id,
            tenant_id: Some(&record.tenant_id),
            user_id: record.user_id.as_deref(),
            key_id: Some(&record.key_id),
            issuer: None,
            scopes: &record.scopes,
            claims: &claims,
            // Records were validated when read: an invalid quota never gets here.
            rate_limit: record
                .rate_limit
                .and_then(|rate| Rate::new(rate.requests_per_second, rate.burst).ok()),
            tokens_per_minute: record.tokens_per_minute,
            expires_at: record.expires_at,
            revoked: record.revoked,
            jwt_id: None,
            key_hash: Some(hash),
        },
    )
}
