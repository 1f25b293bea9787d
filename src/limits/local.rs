//! In-process limiter state: one GCRA TAT per (limit, principal) in a sharded map.
//!
//! Bounded by forgetting: an entry whose TAT has passed means "full allowance", exactly what a
//! missing entry means, so the housekeeping pass drops it without changing any decision. The
//! map therefore only holds principals that used their allowance within the last burst window
//! (or still owe budget tokens). The store lives in the gateway, not in a config snapshot, so a
//! reload keeps every state whose limit did not change (keys include the quota).

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, QuantaClock, Reference};

use super::gcra::{Budget, Gcra};

/// A limit's state key: a 128-bit hash of (limit, quota, principal). Two independent 64-bit
/// seeds make an accidental merge of two principals' allowances practically impossible
/// (2^-128 per pair) while keeping lookups free of allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LimitKey(u128);

/// Builds [`LimitKey`]s; the seeds are random per process.
#[derive(Debug, Default)]
pub struct KeyHasher {
    high: foldhash::fast::RandomState,
    low: foldhash::fast::RandomState,
}

impl KeyHasher {
    /// Parts are length-prefixed, so `("ab", "c")` and `("a", "bc")` differ.
    pub fn key(&self, parts: &[&[u8]]) -> LimitKey {
        let hash = |state: &foldhash::fast::RandomState| {
            let mut hasher = state.build_hasher();
            for part in parts {
                hasher.write_usize(part.len());
                hasher.write(part);
            }
            hasher.finish()
        };
        LimitKey((u128::from(hash(&self.high)) << 64) | u128::from(hash(&self.low)))
    }
}

/// TATs in nanoseconds since the store's creation, read from a governor clock (quanta in
/// production, `FakeRelativeClock` in tests).
#[derive(Debug)]
pub struct LocalStore<C: Clock = QuantaClock> {
    clock: C,
    origin: C::Instant,
    tats: DashMap<LimitKey, AtomicU64, foldhash::fast::RandomState>,
    pub hasher: KeyHasher,
}

impl Default for LocalStore<QuantaClock> {
    fn default() -> Self {
        Self::with_clock(QuantaClock::default())
    }
}

impl<C: Clock> LocalStore<C> {
    pub fn with_clock(clock: C) -> Self {
        let origin = clock.now();
        Self {
            clock,
            origin,
            tats: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            hasher: KeyHasher::default(),
        }
    }

    /// Nanoseconds since the store was created.
    pub fn now(&self) -> u64 {
        self.clock.now().duration_since(self.origin).as_u64()
    }

    /// The TAT of `key` (0 = no state = full).
    pub fn tat(&self, key: LimitKey) -> u64 {
        self.tats
            .get(&key)
            .map_or(0, |tat| tat.load(Ordering::Acquire))
    }

    /// Check and count one request as one atomic step: `Ok(new TAT)` or `Err(wait)`; a
    /// refused request leaves the state untouched.
    pub fn acquire(&self, key: LimitKey, quota: Gcra, now: u64) -> Result<u64, u64> {
        self.update(key, |tat| quota.acquire(tat, now))
    }

    /// Gives back one request counted by [`acquire`](Self::acquire) (a later check refused
    /// the request, and refused requests consume nothing). GCRA increments commute, so
    /// subtracting one interval is exact even if other requests were counted in between.
    pub fn refund(&self, key: LimitKey, quota: Gcra) {
        if let Some(tat) = self.tats.get(&key) {
            let _ = tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.saturating_sub(quota.interval))
            });
        }
    }

    /// Spends `tokens` of a budget (always: the upstream already did the work).
    pub fn charge(&self, key: LimitKey, budget: Budget, tokens: u64, now: u64) {
        let _ = self.update::<()>(key, |tat| Ok(budget.charge(tat, now, tokens)));
    }

    /// Applies `step` to the TAT with a compare-and-swap loop; stores the new TAT on `Ok`.
    fn update<E>(&self, key: LimitKey, step: impl Fn(u64) -> Result<u64, E>) -> Result<u64, E> {
        // Fast path: an existing entry under the shard's read lock.
        if let Some(tat) = self.tats.get(&key) {
            return cas(&tat, step);
        }
        // First sight: a request (burst >= 1) or a charge always succeeds from a full
        // allowance, so the new entry is always used.
        let entry = self.tats.entry(key).or_insert_with(|| AtomicU64::new(0));
        cas(&entry, step)
    }

    /// Drops every entry whose TAT has passed (a full allowance, same as no entry).
    /// Returns how many entries remain.
    pub fn forget_idle(&self) -> usize {
        let now = self.now();
        self.tats.retain(|_, tat| tat.load(Ordering::Acquire) > now);
        let held = self.tats.len();
        // Give memory back after a burst of principals, but do not reallocate a map whose
        // size is stable on every pass.
        if self.tats.capacity() > 4 * held + 4096 {
            self.tats.shrink_to_fit();
        }
        held
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.tats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tats.is_empty()
    }
}

fn cas<E>(tat: &AtomicU64, step: impl Fn(u64) -> Result<u64, E>) -> Result<u64, E> {
    let mut current = tat.load(Ordering::Acquire);
    loop {
        let next = step(current)?;
        match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(next),
            Err(actual) => current = actual,
        }
    }
}

/// How often idle principals are forgotten.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);

/// Runs [`LocalStore::forget_idle`] every [`HOUSEKEEPING_INTERVAL`] on a blocking thread (a
/// pass over a million entries takes milliseconds and must not stall a request worker) until
/// the store is dropped. `report` receives the remaining entry count.
pub fn spawn_housekeeping(
    store: &std::sync::Arc<LocalStore>,
    report: impl Fn(usize) + Send + Sync + 'static,
) {
    let store = std::sync::Arc::downgrade(store);
    let report = std::sync::Arc::new(report);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(store) = store.upgrade() else { return };
            let report = report.clone();
            let _ = tokio::task::spawn_blocking(move || report(store.forget_idle())).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use governor::clock::FakeRelativeClock;

    use super::*;
    use crate::limits::gcra::NANOS_PER_SEC;
    use crate::limits::settings::Rate;

    fn quota(per_second: f64, burst: u32) -> Gcra {
        Gcra::new(
            Rate {
                per_second,
                burst: NonZeroU32::new(burst).unwrap(),
            },
            NANOS_PER_SEC,
        )
    }

    #[test]
    fn refused_requests_consume_nothing_and_the_rate_recovers() {
        let clock = FakeRelativeClock::default();
        let store = LocalStore::with_clock(clock.clone());
        let key = store.hasher.key(&[b"k", b"alice"]);
        let quota = quota(10.0, 5);
        // A client sending at 2x the rate for 10 s gets exactly burst + rate x time.
        let mut admitted = 0;
        for _ in 0..200 {
            if store.acquire(key, quota, store.now()).is_ok() {
                admitted += 1;
            }
            clock.advance(Duration::from_millis(50));
        }
        // burst + one per 100 ms over the 9.95 s between the first and the last request.
        assert_eq!(admitted, 5 + 99);
    }

    #[test]
    fn refund_returns_exactly_one_request() {
        let store = LocalStore::with_clock(FakeRelativeClock::default());
        let key = store.hasher.key(&[b"k", b"bob"]);
        let quota = quota(1.0, 2);
        store.acquire(key, quota, store.now()).unwrap();
        store.acquire(key, quota, store.now()).unwrap();
        assert!(store.acquire(key, quota, store.now()).is_err());
        store.refund(key, quota);
        assert!(store.acquire(key, quota, store.now()).is_ok());
        assert!(store.acquire(key, quota, store.now()).is_err());
    }

    #[test]
    fn idle_principals_are_forgotten_and_memory_is_bounded() {
        let clock = FakeRelativeClock::default();
        let store = LocalStore::with_clock(clock.clone());
        let quota = quota(100.0, 10);
        for i in 0..1_000_000u32 {
            let key = store.hasher.key(&[b"k", &i.to_le_bytes()]);
            store.acquire(key, quota, store.now()).unwrap();
        }
        assert_eq!(store.len(), 1_000_000);
        // Still within their window: nothing may be forgotten (that would reset allowances).
        assert_eq!(store.forget_idle(), 1_000_000);
        clock.advance(Duration::from_millis(11));
        assert_eq!(store.forget_idle(), 0);
        assert!(store.is_empty());
    }

    #[test]
    fn keys_separate_limits_and_principals() {
        let hasher = KeyHasher::default();
        assert_ne!(hasher.key(&[b"ab", b"c"]), hasher.key(&[b"a", b"bc"]));
        assert_ne!(hasher.key(&[b"k", b"x"]), hasher.key(&[b"t", b"x"]));
        assert_eq!(hasher.key(&[b"k", b"x"]), hasher.key(&[b"k", b"x"]));
    }
}
