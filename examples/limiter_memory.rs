//! Resident memory of the local rate limiter with N distinct principals (default 1,000,000),
//! and what is left once they are idle and housekeeping has run.
//!
//!     cargo run --release --example limiter_memory -- 1000000
//!
//! Every principal makes one request against a 1,000 req/s limit (its state is needed for
//! 1 ms), so after a short pause every entry is idle and `forget_idle` drops it, exactly what
//! the gateway's 10 s housekeeping pass does.

#[path = "../benches/support/mod.rs"]
mod support;

/// The allocator the `authgate` binary uses (src/main.rs), so RSS is what a gateway pays.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::num::NonZeroU32;
use std::time::Duration;

use authgate::limits::gcra::{Gcra, NANOS_PER_SEC};
use authgate::limits::local::LocalStore;
use authgate::limits::settings::Rate;
use support::rss_mb;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let quota = Gcra::new(
        Rate {
            per_second: 1_000.0,
            burst: NonZeroU32::MIN,
        },
        NANOS_PER_SEC,
    );
    let store = LocalStore::default();
    let before = rss_mb();
    for principal in 0..n {
        let key = store
            .hasher
            .key(&[b"k", format!("key-{principal}").as_bytes()]);
        let _ = store.acquire(key, quota, store.now());
    }
    let held = store.len();
    let filled = rss_mb();
    // A plain synchronous program: no async worker to block.
    #[allow(clippy::disallowed_methods)]
    std::thread::sleep(Duration::from_millis(50));
    let left = store.forget_idle();
    let after = rss_mb();
    println!(
        "principals: {held}\nRSS before: {before:.1} MB\nRSS with every principal held: {filled:.1} MB ({:.0} bytes per principal)\nafter forget_idle: {left} principals, RSS {after:.1} MB",
        (filled - before) * 1024.0 * 1024.0 / held.max(1) as f64
    );
}
