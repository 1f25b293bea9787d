//! The whole API-key authenticate step for a cached key, as the pipeline runs it: parse the
//! Authorization header, check the key's format, SHA-256 it, look it up in the moka cache,
//! check revocation and expiry, and hand back the shared identity (headers prebuilt).
//!
//! Measured with 10,000 and 1,000,000 cached keys, cycling through 65,536 different keys so
//! cache and TLB misses are included (a single hot key would flatter the numbers). The future
//! is polled once with a no-op waker: a cache hit never awaits, so no runtime is measured.
//! Targets (issue 3): median <= 300 ns at 10k keys, <= 1.5 us at 1M.

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use authgate::auth::authenticate;
use authgate::keys::KeyStore;
use authgate::routes::policy::AuthPolicy;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use support::{poll_once, synthetic_store, warm};

/// A store with `n` keys, every one of them already validated into the cache.
fn warm_store(n: usize) -> (Arc<KeyStore>, Vec<String>) {
    let (store, keys) = synthetic_store(n);
    warm(&store, &keys);
    (store, keys)
}

fn bench_authenticate(c: &mut Criterion) {
    let mut group = c.benchmark_group("api_key_authenticate_cached");
    group.measurement_time(Duration::from_secs(5));
    let policy = AuthPolicy::Required {
        api_key: true,
        jwt: true,
    };
    for n in [10_000usize, 1_000_000] {
        let (store, keys) = warm_store(n);
        let headers: Vec<HeaderMap> = keys
            .iter()
            .step_by((n / 65_536).max(1))
            .take(65_536)
            .map(|key| {
                let mut map = HeaderMap::new();
                map.insert(
                    AUTHORIZATION,
                    HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
                );
                map
            })
            .collect();
        let metrics = authgate::auth::AuthMetrics::new(Default::default());
        let mut i = 0usize;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                i = (i + 1) % headers.len();
                let identity = poll_once(authenticate(
                    policy,
                    black_box(&headers[i]),
                    None,
                    &authgate::auth::KeyHeaders::default(),
                    || std::net::IpAddr::from([192, 0, 2, 1]),
                    "sgk_",
                    Some(&store),
                    None,
                    &metrics,
                    &mut authgate::auth::refusal::AuthReport::default(),
                    |_| Ok(()),
                ));
                black_box(identity.unwrap());
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_authenticate);
criterion_main!(benches);
