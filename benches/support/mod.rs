//! Shared by the benchmarks and the memory examples: polling a future that must not wait, a
//! key store over N synthetic API keys, and the process's resident memory.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use authgate::keys::cache::KeyMetrics;
use authgate::keys::settings::{ApiKeySettings, ChecksumPolicy, KeySourceSettings};
use authgate::keys::{KeyHash, KeyMap, KeyRecord, KeySource, KeyStore};
use authgate::limits::settings::Rate;

/// Resident memory of this process in MB (VmRSS from /proc/self/status; 0 if unreadable).
pub fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Polls once with a no-op waker: cache hits never wait, so no runtime is measured.
pub fn poll_once<F: std::future::Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("expected an answer without waiting (a cache hit)"),
    }
}

/// A store whose in-memory source knows `n` keys (none validated yet), and the keys.
pub fn synthetic_store(n: usize) -> (Arc<KeyStore>, Vec<String>) {
    let keys: Vec<String> = (0..n).map(|i| format!("sgk_bench{i:0>36}")).collect();
    let mut map = KeyMap::with_capacity(n);
    for (i, key) in keys.iter().enumerate() {
        let record = KeyRecord {
            key_id: format!("key_{i}"),
            tenant_id: format!("tenant_{}", i % 1000),
            user_id: Some(format!("user_{i}")),
            scopes: vec!["inference:write".into()],
            rate_limit: None,
            tokens_per_minute: None,
            expires_at: None,
            revoked: false,
            custom_claims: BTreeMap::from([("plan".to_owned(), "pro".to_owned())]),
            description: None,
        };
        map.insert(KeyHash::of(key), record);
    }
    let settings = ApiKeySettings {
        prefix: "sgk_".into(),
        min_length: 32,
        cache_ttl: Duration::from_secs(3600),
        negative_ttl: Duration::from_secs(5),
        stale_if_error: Duration::from_secs(3600),
        cache_capacity: 2_000_000,
        negative_cache_capacity: 65_536,
        max_source_lookups_per_second: 1_000,
        failed_auth_limit: Rate::new(5.0, 50).ok(),
        checksum: ChecksumPolicy::Off,
        source: KeySourceSettings::File("memory".into()),
        in_use: true,
    };
    let store = KeyStore::new(settings, KeySource::Memory(map), KeyMetrics::default());
    (store, keys)
}

/// Validates every key once, so all of them are cached.
pub fn warm(store: &Arc<KeyStore>, keys: &[String]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        for key in keys {
            store.authenticate(key.as_bytes()).await.unwrap();
        }
    });
}
