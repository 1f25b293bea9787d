//! The key cache in front of the key source (SPEC §4.1, "Cache semantics").
//!
//! | entry age            | valid key                         | unknown key        |
//! |----------------------|-----------------------------------|--------------------|
//! | < cache_ttl          | served, no lookup                 | 401 while < negative_ttl, no lookup |
//! | < stale_if_error     | served at once, refreshed in the background (one refresh per key) | |
//! | older / absent       | looked up now; concurrent requests for one key share one lookup | |
//!
//! Unknown keys live in a store of their own (`negative_cache_capacity` hashes, no record):
//! a flood of distinct unknown keys evicts other unknown keys, never a validated one. Lookups
//! that leave the process spend the source-lookup budget (`flood.rs`); a miss without a token
//! is a 503 and no lookup, a background refresh without one keeps serving the stale entry.
//!
//! A failed lookup never turns into "unknown": it keeps a recently validated key working
//! (stale-if-error) and answers 503 for everything else (fail closed). A cache hit does no I/O
//! and takes no lock shared across keys.
//!
//! The cache is quick_cache (sharded, CLOCK-Pro eviction, bounded by `cache_capacity`), not
//! moka: moka's bookkeeping alone costs 370-420 bytes per entry, which would put a million
//! cached keys far over a 500 MB budget, and its reads are 5-20x slower. Freshness is decided
//! here from `validated_at`, so the cache needs no timers of its own.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{broadcast, watch};

use super::clock::{Nanos, nanos};
use super::flood::{FailureLimiter, LookupBudget};
use super::settings::{ApiKeySettings, ChecksumPolicy};
use super::unknown::UnknownKeys;
use super::{
    KeyHash, KeyRecord, KeySource, SourceError, Timestamp, is_well_formed, verify_checksum,
};
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
    /// `authgate_key_source_throttled_total`: lookups refused for want of a budget token.
    pub throttled: Counter,
    /// `authgate_auth_failures_limited_total`: API-key requests refused because their client
    /// failed too often.
    pub failures_limited: Counter,
}

impl KeyMetrics {
    /// The key store's handles on `authgate_key_cache_total` and
    /// `authgate_key_source_requests_total`.
    pub fn of(metrics: &Metrics) -> Self {
        Self {
            throttled: metrics.key_source_throttled.clone(),
            failures_limited: metrics.auth_failures_limited.clone(),
            ..Self::from_families(&metrics.key_cache, &metrics.key_source)
        }
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
            throttled: Counter::default(),
            failures_limited: Counter::default(),
        }
    }
}

/// A validated key (unknown keys are in `KeyStore::negative`).
#[derive(Debug)]
struct CacheEntry {
    identity: Arc<Identity>,
    /// `KeyStore::clock` nanoseconds.
    validated_at: u64,
    /// Set while a background refresh runs, so a busy key triggers one refresh, not many.
    refreshing: AtomicBool,
}

impl CacheEntry {
    fn new(identity: Arc<Identity>, validated_at: u64) -> Arc<Self> {
        Arc::new(Self {
            identity,
            validated_at,
            refreshing: AtomicBool::new(false),
        })
    }
}

/// A failed background refresh of one key is retried no sooner than this.
pub const REFRESH_RETRY: Duration = Duration::from_secs(1);

type Lookup = Result<Option<Arc<Identity>>, LookupError>;

/// Why a lookup gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LookupError {
    /// The source failed (stale-if-error applies).
    Source(SourceError),
    /// The source-lookup budget had no token: nothing was asked.
    Throttled,
}

/// Validates API keys: format, cache, source.
#[derive(Debug)]
pub struct KeyStore {
    settings: ApiKeySettings,
    cache: quick_cache::sync::Cache<KeyHash, Arc<CacheEntry>>,
    /// Unknown keys and when the source said so; bounded apart from `cache`, so unknown keys
    /// never displace validated ones.
    negative: UnknownKeys,
    /// Tokens for lookups that leave the process; `None` for in-memory sources.
    budget: Option<LookupBudget>,
    /// Failed authentications per client IP; `None` when `failed_auth_limit = "off"`.
    failures: Option<FailureLimiter>,
    /// Lookups in progress, so concurrent misses for one key share one lookup.
    inflight: DashMap<KeyHash, watch::Receiver<Option<Lookup>>>,
    /// Bumped by `invalidate_all`: an answer read from the source before a key-file reload
    /// is not cached after it (it could be a record the reload just revoked).
    generation: std::sync::atomic::AtomicU64,
    source: KeySource,
    metrics: KeyMetrics,
    /// Reads the age of cached entries (every request with an API key reads it once).
    clock: Nanos,
    /// `settings.cache_ttl`, `stale_if_error` and `negative_ttl` in `clock` nanoseconds.
    cache_ttl: u64,
    stale_if_error: u64,
    negative_ttl: u64,
}

impl KeyStore {
    pub fn new(settings: ApiKeySettings, source: KeySource, metrics: KeyMetrics) -> Arc<Self> {
        let capacity = usize::try_from(settings.cache_capacity).unwrap_or(usize::MAX);
        let cache = quick_cache::sync::Cache::new(capacity);
        let negative_capacity =
            usize::try_from(settings.negative_cache_capacity).unwrap_or(usize::MAX);
        let negative = UnknownKeys::new(negative_capacity);
        let budget = source
            .lookups_are_remote()
            .then(|| LookupBudget::new(settings.max_source_lookups_per_second));
        let failures = settings.failed_auth_limit.map(FailureLimiter::new);
        let (settings_ttl, settings_stale, settings_negative) = (
            settings.cache_ttl,
            settings.stale_if_error,
            settings.negative_ttl,
        );
        Arc::new(Self {
            settings,
            cache,
            negative,
            budget,
            failures,
            inflight: DashMap::new(),
            generation: std::sync::atomic::AtomicU64::new(0),
            source,
            metrics,
            clock: Nanos::new(),
            cache_ttl: nanos(settings_ttl),
            stale_if_error: nanos(settings_stale),
            negative_ttl: nanos(settings_negative),
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
        self.negative.clear();
    }

    /// Drops the cached decision for one key.
    pub fn invalidate(&self, hash: &KeyHash) {
        self.cache.remove(hash);
        self.negative.remove(hash);
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

    /// Cached validated keys (for tests and memory reports).
    pub fn cached_len(&self) -> usize {
        self.cache.len()
    }

    /// Remembered unknown keys (for tests and memory reports).
    pub fn negative_len(&self) -> usize {
        self.negative.len()
    }

    /// Authenticates an API key from `client`: refused at once (429) while the client is over
    /// its failed-authentication allowance, else [`KeyStore::authenticate`], whose refusals
    /// (malformed, bad checksum, unknown, revoked, expired) spend from that allowance.
    pub async fn authenticate_from(
        self: &Arc<Self>,
        key: &[u8],
        client: impl FnOnce() -> IpAddr,
    ) -> Result<Arc<Identity>, GatewayError> {
        // The client address is worked out only when a limiter will read it.
        let Some(failures) = &self.failures else {
            return self.authenticate(key).await;
        };
        let client = client();
        // Before the format check, the hash and the cache: a client that keeps failing costs
        // a scan of its set in the limiter's table and a clock read, whatever it sends.
        let standing = match failures.standing(client) {
            Ok(standing) => standing,
            Err(retry_after_secs) => {
                self.metrics.failures_limited.inc();
                return Err(GatewayError::RateLimited { retry_after_secs });
            }
        };
        let result = self.authenticate(key).await;
        if let Err(GatewayError::InvalidKey | GatewayError::KeyRevoked | GatewayError::KeyExpired) =
            result
        {
            failures.record(standing);
        }
        result
    }

    /// Authenticates an API key: the identity, or the 401/503 SPEC §4.1 names.
    pub async fn authenticate(self: &Arc<Self>, key: &[u8]) -> Result<Arc<Identity>, GatewayError> {
        if !is_well_formed(key, &self.settings.prefix, self.settings.min_length) {
            return Err(GatewayError::InvalidKey);
        }
        // Before hashing: garbage that cannot be a generated key costs a CRC, no lookup.
        if self.settings.checksum == ChecksumPolicy::Required
            && !verify_checksum(key, &self.settings.prefix)
        {
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
        // Unknown first: its marks make it free for a validated key, and a refused key (the
        // path a flood drives) then costs one map read, not two. A key in both stores is a
        // moment of a lookup's answer being stored; either answer is that of the source.
        if let Some(refused) = self.unknown_cached(&hash) {
            return Some(refused);
        }
        let entry = self.cache.get(&hash)?;
        let age = self.clock.now().saturating_sub(entry.validated_at);
        let identity = &entry.identity;
        if age < self.cache_ttl {
            self.metrics.hit.inc();
            Some(check(identity))
        } else if age < self.stale_if_error {
            self.metrics.stale.inc();
            if !entry.refreshing.swap(true, Ordering::AcqRel) {
                self.spawn_refresh(hash, entry.clone());
            }
            Some(check(identity))
        } else {
            None
        }
    }

    /// A 401 for a key the source called unknown within `negative_ttl`.
    fn unknown_cached(&self, hash: &KeyHash) -> Option<Result<Arc<Identity>, GatewayError>> {
        let at = self.negative.get(hash)?;
        if self.clock.now().saturating_sub(at) < self.negative_ttl {
            self.metrics.negative.inc();
            Some(Err(GatewayError::InvalidKey))
        } else {
            None
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
            Err(LookupError::Throttled) => Err(GatewayError::KeySourceThrottled),
            Err(LookupError::Source(_)) => Err(GatewayError::AuthBackendUnavailable),
        }
    }

    /// One lookup per key at a time; every concurrent caller gets its result. The caller that
    /// starts a lookup takes a budget token first; callers that join it take none.
    ///
    /// The lookup runs in its own task, which also removes the in-flight entry: a caller that
    /// goes away (client disconnect, HTTP/2 reset) can neither leave the entry behind nor
    /// cancel the lookup the other callers wait for, and its result is still cached.
    async fn lookup_coalesced(self: &Arc<Self>, hash: KeyHash) -> Lookup {
        let mut receiver = match self.inflight.entry(hash) {
            dashmap::Entry::Occupied(entry) => entry.get().clone(),
            dashmap::Entry::Vacant(entry) => {
                if self
                    .budget
                    .as_ref()
                    .is_some_and(|budget| !budget.try_take())
                {
                    self.metrics.throttled.inc();
                    return Err(LookupError::Throttled);
                }
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
                .unwrap_or_else(|| Err(LookupError::Source(SourceError("lookup lost".into())))),
            Err(_) => Err(LookupError::Source(SourceError(
                "the lookup task ended without an answer".into(),
            ))),
        }
    }

    /// A lookup that finished between a caller's cache miss and now already stored its answer.
    async fn cached_or_lookup(&self, hash: KeyHash) -> Lookup {
        if let Some(entry) = self.cache.get(&hash)
            && self.clock.now().saturating_sub(entry.validated_at) < self.cache_ttl
        {
            return Ok(Some(entry.identity.clone()));
        }
        if self
            .negative
            .get(&hash)
            .is_some_and(|at| self.clock.now().saturating_sub(at) < self.negative_ttl)
        {
            return Ok(None);
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
                self.negative.remove(&hash);
                self.cache
                    .insert(hash, CacheEntry::new(identity.clone(), self.clock.now()));
                Ok(Some(identity))
            }
            Ok(None) => {
                self.metrics.not_found.inc();
                // A key deleted at the source stops being served from its stale entry.
                self.cache.remove(&hash);
                self.negative.insert(hash, self.clock.now());
                Ok(None)
            }
            Err(error) => {
                self.metrics.error.inc();
                tracing::warn!(key_hash = %hash.short(), source = self.source.kind(), error = %error, "Key lookup failed.");
                Err(LookupError::Source(error))
            }
        }
    }

    fn spawn_refresh(self: &Arc<Self>, hash: KeyHash, entry: Arc<CacheEntry>) {
        let store = self.clone();
        tokio::spawn(async move {
            // On failure, or without a budget token, the old entry stays (stale-if-error); a new
            // answer replaces it. A busy key retries at most once per REFRESH_RETRY.
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    use super::*;
    use crate::keys::settings::KeySourceSettings;
    use crate::keys::{KeyMap, generate_key};

    fn record(key_id: &str) -> KeyRecord {
        KeyRecord {
            key_id: key_id.into(),
            tenant_id: "acme".into(),
            user_id: None,
            scopes: Vec::new(),
            rate_limit: None,
            tokens_per_minute: None,
            expires_at: None,
            revoked: false,
            custom_claims: BTreeMap::new(),
            description: None,
        }
    }

    fn settings(cache_capacity: u64, negative_cache_capacity: u64) -> ApiKeySettings {
        ApiKeySettings {
            prefix: "sgk_".into(),
            min_length: 32,
            cache_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(3600),
            stale_if_error: Duration::from_secs(3600),
            cache_capacity,
            negative_cache_capacity,
            max_source_lookups_per_second: 1_000,
            failed_auth_limit: Rate::new(5.0, 50).ok(),
            checksum: ChecksumPolicy::Off,
            source: KeySourceSettings::File("memory".into()),
            in_use: true,
        }
    }

    fn store(settings: ApiKeySettings, keys: &[(&str, &str)]) -> Arc<KeyStore> {
        let map: KeyMap = keys
            .iter()
            .map(|(key, key_id)| (KeyHash::of(key), record(key_id)))
            .collect();
        KeyStore::new(settings, KeySource::Memory(map), KeyMetrics::default())
    }

    /// The store of unknown keys is bounded apart from the valid keys: 100k unknown keys
    /// later, the valid key is still a hit, with no lookup.
    #[tokio::test]
    async fn a_flood_of_unknown_keys_never_evicts_a_valid_key() {
        let valid = generate_key("sgk_").unwrap();
        // A main cache far smaller than the flood: unknown keys sharing it would evict.
        let store = store(settings(16, 1_000), &[(valid.as_str(), "key-1")]);
        store.authenticate(valid.as_bytes()).await.unwrap();
        for i in 0..100_000u32 {
            let unknown = format!("sgk_unknown{i:0>32}");
            assert_eq!(
                store.authenticate(unknown.as_bytes()).await.unwrap_err(),
                GatewayError::InvalidKey
            );
        }
        assert_eq!(store.metrics.not_found.get(), 100_000);
        assert!(store.negative_len() <= 1_100, "{}", store.negative_len());
        assert_eq!(store.cached_len(), 1);
        let lookups = store.metrics.found.get();
        let hits = store.metrics.hit.get();
        let identity = store.authenticate(valid.as_bytes()).await.unwrap();
        assert_eq!(identity.key_id(), Some("key-1"));
        assert_eq!(store.metrics.hit.get(), hits + 1);
        assert_eq!(
            store.metrics.found.get(),
            lookups,
            "no lookup for the valid key"
        );
    }

    /// Unknown keys are still answered from their own store within `negative_ttl`, counted
    /// as `negative`, and a key that becomes known leaves it.
    #[tokio::test]
    async fn unknown_keys_are_remembered_in_their_own_store() {
        let unknown = generate_key("sgk_").unwrap();
        let store = store(settings(16, 16), &[]);
        for _ in 0..3 {
            assert!(store.authenticate(unknown.as_bytes()).await.is_err());
        }
        assert_eq!(store.metrics.not_found.get(), 1);
        assert_eq!(store.metrics.negative.get(), 2);
        assert_eq!((store.negative_len(), store.cached_len()), (1, 0));
        store.invalidate(&KeyHash::of(&unknown));
        assert_eq!(store.negative_len(), 0);
    }

    #[tokio::test]
    async fn a_required_checksum_refuses_bad_keys_before_any_lookup() {
        let good = generate_key("sgk_").unwrap();
        let legacy = format!("sgk_{}", "a".repeat(40));
        let mut settings = settings(16, 16);
        settings.checksum = ChecksumPolicy::Required;
        let store = store(
            settings,
            &[(good.as_str(), "good"), (legacy.as_str(), "legacy")],
        );
        assert!(store.authenticate(good.as_bytes()).await.is_ok());
        let mut bad = good.clone().into_bytes();
        bad[10] = if bad[10] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            store.authenticate(&bad).await.unwrap_err(),
            GatewayError::InvalidKey
        );
        assert_eq!(
            store.authenticate(legacy.as_bytes()).await.unwrap_err(),
            GatewayError::InvalidKey
        );
        assert_eq!(
            store.metrics.miss.get(),
            1,
            "only the good key was looked up"
        );
        // With the check off, the key without a checksum works.
        let store = self::store(self::settings(16, 16), &[(legacy.as_str(), "legacy")]);
        assert!(store.authenticate(legacy.as_bytes()).await.is_ok());
    }

    #[tokio::test]
    async fn a_client_that_keeps_failing_is_refused_before_the_format_check() {
        let valid = generate_key("sgk_").unwrap();
        let mut settings = settings(16, 16);
        settings.failed_auth_limit = Rate::new(1.0, 3).ok();
        let store = store(settings, &[(valid.as_str(), "key-1")]);
        let bad: IpAddr = "198.51.100.1".parse().unwrap();
        let good: IpAddr = "198.51.100.2".parse().unwrap();
        for garbage in [
            &b"sgk_short"[..],
            b"sgk_!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
            b"sgk_",
        ] {
            assert_eq!(
                store.authenticate_from(garbage, || bad).await.unwrap_err(),
                GatewayError::InvalidKey
            );
        }
        // The allowance is spent: even a valid key from this client is refused, unlooked at.
        let misses = store.metrics.miss.get();
        assert!(matches!(
            store.authenticate_from(valid.as_bytes(), || bad).await,
            Err(GatewayError::RateLimited {
                retry_after_secs: 1
            })
        ));
        assert_eq!(store.metrics.failures_limited.get(), 1);
        assert_eq!(store.metrics.miss.get(), misses);
        assert!(
            store
                .authenticate_from(valid.as_bytes(), || good)
                .await
                .is_ok()
        );
        // Successes spend nothing.
        for _ in 0..10 {
            assert!(
                store
                    .authenticate_from(valid.as_bytes(), || good)
                    .await
                    .is_ok()
            );
        }
    }
}
