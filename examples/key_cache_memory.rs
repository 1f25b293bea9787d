//! Resident memory of the API-key cache with N validated keys (default 1,000,000).
//!
//!     cargo run --release --example key_cache_memory -- 1000000
//!
//! Prints RSS before the keys are validated and after, and the difference per cached key.
//! The key source is an in-memory map built first, so its own memory is not counted.

use std::collections::BTreeMap;
use std::time::Duration;

use authgate::config::KeySourceSettings;
use authgate::keys::cache::{KeyMetrics, KeyStoreSettings};
use authgate::keys::{KeyHash, KeyMap, KeyRecord, KeySource, KeyStore};

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let keys: Vec<String> = (0..n).map(|i| format!("sgk_bench{i:0>36}")).collect();
    let mut map = KeyMap::with_capacity(n);
    for (i, key) in keys.iter().enumerate() {
        map.insert(
            KeyHash::of(key),
            KeyRecord {
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
            },
        );
    }
    let settings = KeyStoreSettings {
        prefix: "sgk_".into(),
        min_length: 32,
        cache_ttl: Duration::from_secs(3600),
        negative_ttl: Duration::from_secs(5),
        stale_if_error: Duration::from_secs(3600),
        cache_capacity: 2_000_000,
        source: KeySourceSettings::File("memory".into()),
    };
    let store = KeyStore::new(settings, KeySource::Memory(map), KeyMetrics::default());
    let before = rss_mb();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        for key in &keys {
            store.authenticate(key).await.unwrap();
        }
    });
    let cached = store.cached_len();
    let after = rss_mb();
    println!(
        "cached keys: {cached}\nRSS before: {before:.1} MB\nRSS after: {after:.1} MB\ncache: {:.1} MB ({:.0} bytes per key)",
        after - before,
        (after - before) * 1024.0 * 1024.0 / cached.max(1) as f64
    );
}
