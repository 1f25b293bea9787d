//! The rate-limit step at scale: what a request pays for its limit check when the limiter
//! already holds 1,000,000 principals.
//!
//! - `local_check/1000000`: the in-process limiter check for a random principal out of
//!   1,000,000 (and out of 10,000, for comparison): hash its limit key (as `Limits` does, no allocation), read the clock, and
//!   check-and-count in `LocalStore` (one sharded-map lookup and one compare-and-swap).
//!   `key_hash` and `clock_now` measure the first two parts alone; `random_read_floor` is one
//!   read of a random cache line in a table as large as the map, the hardware floor under any
//!   lookup at that size.
//! - `admit_api_key/...`: the whole `Limits::admit` for a cached API-key identity through the
//!   public API: resolving the limit (key > route > default), the key hashes, the clock, the
//!   check-and-count, and the `RateLimit-*` state; once with only a principal limit and once
//!   with a tenant aggregate on top (two checks). 65,536 identities are cycled in a store that
//!   holds 1,000,000 principals, so cache misses are included.
//!
//! Random principals on purpose: one hot key would stay in cache and flatter the numbers.
//! The limits are high enough that every request is admitted, so the measured path is the one
//! admitted traffic takes (a refusal does the same lookups and skips the write).
//! Target (issue 5): median <= 200 ns for the local check at 1,000,000 principals.

mod support;

use std::hint::black_box;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use authgate::auth::{AuthMethod, Identity, IdentityFields};
use authgate::limits::Limits;
use authgate::limits::gcra::{Gcra, NANOS_PER_SEC};
use authgate::limits::local::{LimitKey, LocalStore};
use authgate::limits::settings::Rate;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::Method;
use support::poll_once;

const PRINCIPALS: u32 = 1_000_000;
/// Identities cycled through `Limits::admit` (as many distinct keys as `benches/auth.rs`).
const IDENTITIES: u32 = 65_536;

/// A cheap, deterministic pseudo-random sequence (xorshift64), so the index costs ~1 ns.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (((self.0 >> 32) * u64::from(n)) >> 32) as u32
    }
}

/// 10,000 requests per second with a burst of 10,000: every check in the benchmark is admitted.
fn generous() -> Rate {
    Rate {
        per_second: 10_000.0,
        burst: NonZeroU32::new(10_000).unwrap(),
    }
}

/// The limit key of principal `i`, built like `Limits` builds one (kind, route, principal).
fn principal_key(store: &LocalStore, i: u32) -> LimitKey {
    store
        .hasher
        .key(&[b"d", b"", b"k", black_box(&i.to_le_bytes())])
}

fn bench_local(c: &mut Criterion) {
    let quota = Gcra::new(generous(), NANOS_PER_SEC);
    let mut group = c.benchmark_group("limits");
    let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
    // The whole local check: hash the principal's limit key, read the clock, check and count.
    // At 10,000 principals the map stays in the CPU caches; at 1,000,000 (about 70 MB) most
    // lookups miss them, which is what a large deployment pays.
    for principals in [10_000, PRINCIPALS] {
        let store = LocalStore::default();
        for i in 0..principals {
            store
                .acquire(principal_key(&store, i), quota, store.now())
                .unwrap();
        }
        assert_eq!(store.len(), principals as usize);
        group.bench_function(BenchmarkId::new("local_check", principals), |b| {
            b.iter(|| {
                let key = principal_key(&store, rng.below(principals));
                black_box(store.acquire(key, quota, store.now()))
            });
        });
    }
    // The floor under any map of that size: one dependent read of a random cache line out of
    // as much memory as the map holds for 1,000,000 entries (64 MB of slots), i.e. one cache
    // and TLB miss. A pointer chase (each read gives the next index) so that misses cannot
    // overlap, just as the map's lookup cannot start before its key is hashed.
    let slots = pointer_chase(PRINCIPALS as usize, 8, &mut rng);
    let mut at = 0usize;
    group.bench_function(BenchmarkId::new("random_read_floor", PRINCIPALS), |b| {
        b.iter(|| {
            at = slots[at * 8];
            at
        });
    });
    drop(slots);
    // Its parts: the key hash and the clock read (governor's quanta clock).
    let store = LocalStore::default();
    group.bench_function("key_hash", |b| {
        b.iter(|| principal_key(&store, rng.below(PRINCIPALS)));
    });
    group.bench_function("clock_now", |b| b.iter(|| store.now()));
    group.finish();
}

/// `n` slots `stride` words apart forming one random cycle (Sattolo's shuffle): slot `i * stride`
/// holds the next index.
fn pointer_chase(n: usize, stride: usize, rng: &mut Xorshift) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u32) as usize;
        order.swap(i, j);
    }
    let mut slots = vec![0usize; n * stride];
    for i in 0..n {
        slots[order[i] * stride] = order[(i + 1) % n];
    }
    slots
}

/// A config with one API-key route and the given `[rate_limits]` section.
fn config(rate_limits: &str) -> authgate::config::Config {
    let text = format!(
        "[api_keys]\nsource = \"file\"\nfile = \"keys.toml\"\n\n[rate_limits]\n{rate_limits}\n\n\
         [[routes]]\nname = \"api\"\nmatch = {{ path_prefix = \"/api/\" }}\n\
         upstream = \"http://127.0.0.1:9000\"\nauth = [\"api_key\"]\n"
    );
    authgate::config::load_str(Path::new("bench.toml"), &text).expect("bench config compiles")
}

fn identity(i: u32) -> Arc<Identity> {
    let key_id = format!("key_{i}");
    let tenant = format!("tenant_{}", i % 1000);
    let scopes = ["api".to_owned()];
    Arc::new(Identity::new(
        AuthMethod::ApiKey,
        &IdentityFields {
            subject: &key_id,
            key_id: Some(&key_id),
            tenant_id: Some(&tenant),
            scopes: &scopes,
            ..IdentityFields::default()
        },
    ))
}

fn bench_admit(c: &mut Criterion) {
    let metrics = authgate::telemetry::Metrics::new();
    let identities: Vec<Arc<Identity>> = (0..IDENTITIES).map(identity).collect();
    let mut group = c.benchmark_group("limits");
    group.measurement_time(Duration::from_secs(5));
    let cases = [
        (
            "admit_api_key/principal",
            "default = { requests_per_second = 10000, burst = 10000 }",
        ),
        (
            "admit_api_key/principal+tenant",
            "default = { requests_per_second = 10000, burst = 10000 }\n\
             tenant = { requests_per_second = 1000000, burst = 1000000 }",
        ),
    ];
    for (name, section) in cases {
        let config = config(section);
        let route = config
            .routes
            .find(None, &Method::GET, "/api/x")
            .expect("the api route")
            .clone();
        let store = Arc::new(LocalStore::default());
        let limits = Arc::new(
            Limits::new(
                &config.rate_limits,
                store.clone(),
                None,
                metrics.limits.clone(),
            )
            .expect("local limiter"),
        );
        // The measured identities first, then unrelated principals up to 1,000,000 states.
        for identity in &identities {
            poll_once(limits.admit(&route, &http::Method::POST, identity)).expect("admitted");
        }
        let quota = Gcra::new(generous(), NANOS_PER_SEC);
        let mut i = 0u32;
        while store.len() < PRINCIPALS as usize {
            let key = store.hasher.key(&[b"filler", &i.to_le_bytes()]);
            store.acquire(key, quota, store.now()).unwrap();
            i += 1;
        }
        let mut rng = Xorshift(0x2545_F491_4F6C_DD1D);
        group.bench_function(BenchmarkId::new(name, PRINCIPALS), |b| {
            b.iter(|| {
                let identity = &identities[rng.below(IDENTITIES) as usize];
                let admission =
                    poll_once(limits.admit(&route, &http::Method::POST, black_box(identity)));
                black_box(admission.expect("admitted").state)
            });
        });
    }
    group.finish();
}

/// The reference the issue names: governor's keyed limiter (`check_key` on its DashMap store)
/// with 1,000,000 principals, random keys. Same machine, same run: it shows how much of the
/// cost at that size is the machine's memory latency rather than our limiter.
fn bench_governor_reference(c: &mut Criterion) {
    use governor::{Quota, RateLimiter};
    let quota = Quota::per_second(NonZeroU32::new(10_000).unwrap())
        .allow_burst(NonZeroU32::new(10_000).unwrap());
    let limiter = RateLimiter::keyed(quota);
    for i in 0..u64::from(PRINCIPALS) {
        let _ = limiter.check_key(&i);
    }
    let mut rng = Xorshift(0x1234_5678_9ABC_DEF1);
    let mut group = c.benchmark_group("limits");
    group.bench_function(BenchmarkId::new("governor_keyed", PRINCIPALS), |b| {
        b.iter(|| black_box(limiter.check_key(&u64::from(rng.below(PRINCIPALS)))));
    });
    group.finish();
}

criterion_group!(benches, bench_local, bench_admit, bench_governor_reference);
criterion_main!(benches);
