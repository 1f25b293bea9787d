//! Resident memory of the API-key cache with N validated keys (default 1,000,000).
//!
//!     cargo run --release --example key_cache_memory -- 1000000
//!
//! Prints RSS before the keys are validated and after, and the difference per cached key.
//! The key source is an in-memory map built first, so its own memory is not counted.

#[path = "../benches/support/mod.rs"]
mod support;

/// The allocator the `authgate` binary uses (src/main.rs), so RSS is what a gateway pays.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use support::rss_mb;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let (store, keys) = support::synthetic_store(n);
    let before = rss_mb();
    support::warm(&store, &keys);
    let cached = store.cached_len();
    let after = rss_mb();
    println!(
        "cached keys: {cached}\nRSS before: {before:.1} MB\nRSS after: {after:.1} MB\ncache: {:.1} MB ({:.0} bytes per key)",
        after - before,
        (after - before) * 1024.0 * 1024.0 / cached.max(1) as f64
    );
}
