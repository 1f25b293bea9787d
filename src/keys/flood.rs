//! Defences of the key source against floods of unknown keys: a global budget of source
//! lookups per second, and a limiter of failed API-key authentications per client IP.
//!
//! ```text
//! API key ─▶ client IP over its failure allowance? ── yes ─▶ 429, nothing else looked at
//!              │ no
//!              ▼
//!            format, checksum, hash, cache ─▶ miss ─▶ lookup token? ── no ─▶ 503, no lookup
//!              │ refused (401)                          │ yes
//!              ▼                                        ▼
//!            the client IP spends from its allowance   key source
//! ```
//! Both are GCRA (see `limits::gcra`): one number per bucket, updated with a compare-and-swap,
//! so neither takes a lock. Neither is consulted on a cache hit of a valid key except for the
//! per-IP check, one load from the limiter's table.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use super::clock::Nanos;
use crate::limits::gcra::{Gcra, NANOS_PER_SEC, retry_after_secs};
use crate::limits::settings::Rate;

/// Client addresses (IPv4, or IPv6 /64 networks) whose failures are remembered at once: the
/// slots of the limiter's table, 16 bytes each (1 MB, allocated at start). A client
/// whose slot another failing client takes over is forgotten, which only forgives its failures.
pub const FAILED_AUTH_TRACKED_CLIENTS: usize = 65_536;

/// One more request through the GCRA state in `tat` at `now`: `Ok` when admitted (and
/// recorded), `Err(wait)` otherwise (nothing changes).
fn acquire(quota: &Gcra, tat: &AtomicU64, now: u64) -> Result<(), u64> {
    let mut current = tat.load(Ordering::Acquire);
    loop {
        let next = quota.acquire(current, now)?;
        match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(()),
            Err(actual) => current = actual,
        }
    }
}

/// The source-lookup budget: `per_second` lookups a second, a burst of one second's worth.
#[derive(Debug)]
pub struct LookupBudget {
    quota: Gcra,
    tat: AtomicU64,
    clock: Nanos,
}

impl LookupBudget {
    pub fn new(per_second: u32) -> Self {
        let per_second = per_second.max(1);
        let rate = Rate {
            per_second: f64::from(per_second),
            burst: std::num::NonZeroU32::MIN.saturating_add(per_second - 1),
        };
        Self {
            quota: Gcra::new(rate, NANOS_PER_SEC),
            tat: AtomicU64::new(0),
            clock: Nanos::new(),
        }
    }

    /// Takes a token for one lookup; `false` when the budget is spent for now.
    pub fn try_take(&self) -> bool {
        self.try_take_at(self.clock.now())
    }

    /// `try_take` at `now` nanoseconds (tests drive the clock).
    pub fn try_take_at(&self, now: u64) -> bool {
        acquire(&self.quota, &self.tat, now).is_ok()
    }
}

/// Failed API-key authentications per client: each failure spends from the client's bucket;
/// an empty bucket refuses the client's API keys until it refills.
///
/// The buckets live in a set-associative table: a client bucket hashes (keyed per process) to
/// a set of [`WAYS`] slots, each holding a bucket's tag and its GCRA state. A client whose tag
/// is in no way of its set has never failed (or was forgotten), so the check of a request
/// that authenticates as usual is a scan of one set: no map, no clock, no lock. A failure from
/// a new bucket takes the way with the least debt (an empty or refilled one when there is
/// one, so nothing is forgiven); a bucket in debt is forgotten only when every way of its set
/// is in debt at once, which takes [`WAYS`] other failing clients that hash to the same set.
#[derive(Debug)]
pub struct FailureLimiter {
    quota: Gcra,
    slots: Box<[Slot]>,
    /// `mixed >> shift` (see [`Self::set_of`]) is a set number; sets are a power of two.
    shift: u32,
    /// Keys the hash, so that which clients share a set is not known in advance.
    seed: u64,
    /// One bit per hash of a client bucket, set by its first failure: a client whose bit is
    /// clear has never failed, so the check of a request that authenticates as usual is one
    /// load, not a scan of its set. Bits are never cleared (clearing one could skip a client
    /// the table still holds); a flood from many addresses only brings back the scan.
    failed: Box<[AtomicU64]>,
    clock: Nanos,
}

/// Bits of [`FailureLimiter::failed`] (8 KiB).
const FAILED_BITS: usize = 1 << 16;

/// Slots per set: eight tags are one cache line to scan.
const WAYS: usize = 8;

/// One slot: the tag of the client bucket it holds (0 when none) and that bucket's GCRA state.
/// Two words, not one: a bucket that takes a way over while the old owner's failures are in
/// flight may be charged some of them (it needs the old owner failing at that very moment, and
/// costs at most its concurrent requests' worth).
#[derive(Debug, Default)]
struct Slot {
    tag: AtomicU64,
    tat: AtomicU64,
}

/// What [`FailureLimiter::standing`] found of a client: its set and tag, and (for a client the
/// table holds) its way and the time it was read.
#[derive(Debug)]
pub struct Standing {
    set: usize,
    tag: u64,
    found: Option<(usize, u64)>,
}

impl FailureLimiter {
    pub fn new(rate: Rate) -> Self {
        Self::with_capacity(rate, FAILED_AUTH_TRACKED_CLIENTS)
    }

    /// A table of at least `capacity` slots, in sets of [`WAYS`] (a power of two of them).
    pub fn with_capacity(rate: Rate, capacity: usize) -> Self {
        let sets = capacity
            .div_ceil(WAYS)
            .clamp(2, 1 << 21)
            .next_power_of_two();
        let mut seed = [0u8; 8];
        // Without an OS random source the table still works; only its layout is predictable.
        let _ = getrandom::fill(&mut seed);
        Self {
            quota: Gcra::new(rate, NANOS_PER_SEC),
            slots: (0..sets * WAYS).map(|_| Slot::default()).collect(),
            shift: 64 - sets.trailing_zeros(),
            seed: u64::from_le_bytes(seed),
            failed: (0..FAILED_BITS / 64).map(|_| AtomicU64::new(0)).collect(),
            clock: Nanos::new(),
        }
    }

    /// `Err(retry_after_secs)` while `client` has no failure left to spend. A client that
    /// never failed costs a bit test (its set is scanned, and the clock read, only for clients
    /// that failed before).
    pub fn check(&self, client: IpAddr) -> Result<(), u64> {
        self.standing(client).map(drop)
    }

    /// `check` at `now` nanoseconds (tests drive the clock).
    pub fn check_at(&self, client: IpAddr, now: u64) -> Result<(), u64> {
        self.standing_with(client, || now).map(drop)
    }

    /// [`Self::check`], keeping what it found for [`Self::record`]: a failure that follows
    /// spends from the way already found, without hashing again or a second clock read.
    // Two callers since the forward-auth check shares the stages: kept inlined into each
    // (outlined, the request path paid a call and lost the optimizations around it).
    #[inline(always)]
    pub fn standing(&self, client: IpAddr) -> Result<Standing, u64> {
        self.standing_with(client, || self.clock.now())
    }

    fn standing_with(&self, client: IpAddr, now: impl FnOnce() -> u64) -> Result<Standing, u64> {
        let (set, tag) = self.set_of(client);
        let mut standing = Standing {
            set,
            tag,
            found: None,
        };
        let (word, mask) = failed_bit(tag);
        if self.failed[word].load(Ordering::Relaxed) & mask == 0 {
            return Ok(standing);
        }
        let Some(way) = self.way_of(set, tag) else {
            return Ok(standing);
        };
        let now = now();
        // A peek: would one more failure fit? Nothing is spent here.
        match self
            .quota
            .acquire(self.slots[way].tat.load(Ordering::Acquire), now)
        {
            Ok(_) => {
                standing.found = Some((way, now));
                Ok(standing)
            }
            Err(wait) => Err(retry_after_secs(wait, NANOS_PER_SEC)),
        }
    }

    /// The failed authentication of a client whose [`Standing`] was taken at its start.
    pub fn record(&self, standing: Standing) {
        match standing.found {
            // The moment of the check stands for the failure: microseconds apart. The way is
            // spent from only if it still holds the client.
            Some((way, now)) if self.slots[way].tag.load(Ordering::Acquire) == standing.tag => {
                let _ = acquire(&self.quota, &self.slots[way].tat, now);
            }
            _ => self.spend(standing.set, standing.tag, self.clock.now()),
        }
    }

    /// One failed authentication from `client`, now.
    pub fn record_failure(&self, client: IpAddr) {
        self.record_failure_at(client, self.clock.now());
    }

    /// One failed authentication from `client` at `now` nanoseconds.
    pub fn record_failure_at(&self, client: IpAddr, now: u64) {
        let (set, tag) = self.set_of(client);
        self.spend(set, tag, now);
    }

    /// The slot of `set` that holds the bucket `tag`, if one does.
    fn way_of(&self, set: usize, tag: u64) -> Option<usize> {
        (set..set + WAYS).find(|&way| self.slots[way].tag.load(Ordering::Acquire) == tag)
    }

    /// Spends one failure of the bucket `tag` in `set`, taking the way with the least debt
    /// when the set does not hold the bucket yet (a full bucket to start from).
    fn spend(&self, set: usize, tag: u64, now: u64) {
        // Marked before the way is taken: a check that sees the bit clear finds no way either.
        let (word, mask) = failed_bit(tag);
        if self.failed[word].load(Ordering::Relaxed) & mask == 0 {
            self.failed[word].fetch_or(mask, Ordering::Release);
        }
        let way = self.way_of(set, tag).unwrap_or_else(|| {
            // Empty ways (tag 0) have a tat of 0, refilled ones a tat in the past: the least
            // debt forgives nothing while such a way exists.
            let victim = (set..set + WAYS)
                .min_by_key(|&way| self.slots[way].tat.load(Ordering::Acquire))
                .unwrap_or(set);
            self.slots[victim].tat.store(0, Ordering::Release);
            self.slots[victim].tag.store(tag, Ordering::Release);
            victim
        });
        // An empty bucket stays empty; the failure itself needs no room.
        let _ = acquire(&self.quota, &self.slots[way].tat, now);
    }

    /// The first slot of `client`'s set, and its bucket's tag. The tag is a keyed bijection of
    /// the bucket's address (IPv4, or the upper 64 bits of an IPv6 /64), so two buckets share a
    /// tag only when an IPv4 address meets an IPv6 network inside ::/32 (reserved space), or
    /// when a tag is 0 (which marks an empty slot) and becomes 1.
    fn set_of(&self, client: IpAddr) -> (usize, u64) {
        let address = match bucket_of(client) {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64,
        };
        // Each step (xor with the seed, multiplying by an odd number, xor-shifting) is
        // invertible; two rounds spread the seed through every bit of the set number.
        let mut mixed = (address ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        mixed ^= mixed >> 32;
        mixed = mixed.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        mixed ^= mixed >> 29;
        ((mixed >> self.shift) as usize * WAYS, mixed.max(1))
    }

    /// Clients remembered now (for tests and memory reports; counts the whole table).
    pub fn len(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.tag.load(Ordering::Relaxed) != 0)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Word and mask of a tag's bit in [`FailureLimiter::failed`] (the tag's low bits: it is
/// already a keyed mix of the address).
fn failed_bit(tag: u64) -> (usize, u64) {
    let bit = (tag as usize) % FAILED_BITS;
    (bit / 64, 1 << (bit % 64))
}

/// The bucket a client spends from: its IPv4 address, or its IPv6 /64 (one subscriber's
/// usual allocation: per-address buckets would give a single host 2^64 of them).
fn bucket_of(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(network.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NANOS_PER_SEC;

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate::new(per_second, burst).unwrap()
    }

    #[test]
    fn the_budget_gives_one_second_of_tokens_at_once_then_refills_at_its_rate() {
        let budget = LookupBudget::new(100);
        let now = 10 * S;
        let taken = (0..1_000).filter(|_| budget.try_take_at(now)).count();
        assert_eq!(taken, 100, "a burst of one second's worth");
        assert!(!budget.try_take_at(now));
        // 10 ms later: one more token.
        assert!(budget.try_take_at(now + S / 100));
        assert!(!budget.try_take_at(now + S / 100));
        // After a second: a full burst again, never more.
        let later = now + 2 * S;
        assert_eq!(
            (0..1_000).filter(|_| budget.try_take_at(later)).count(),
            100
        );
    }

    #[test]
    fn the_budget_bounds_lookups_over_time_to_rate_times_elapsed_plus_burst() {
        let budget = LookupBudget::new(50);
        let mut taken = 0;
        // 5 s in 1 ms steps, ten attempts each.
        for ms in 0..5_000u64 {
            for _ in 0..10 {
                taken += usize::from(budget.try_take_at(S + ms * S / 1_000));
            }
        }
        assert!(taken <= 50 * 5 + 50, "{taken}");
        assert!(taken >= 50 * 5, "{taken}");
    }

    #[test]
    fn failures_spend_the_burst_then_the_client_is_refused_until_it_refills() {
        let limiter = FailureLimiter::new(rate(5.0, 50));
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let other: IpAddr = "203.0.113.8".parse().unwrap();
        let now = 100 * S;
        for _ in 0..50 {
            assert_eq!(limiter.check_at(client, now), Ok(()));
            limiter.record_failure_at(client, now);
        }
        assert_eq!(
            limiter.check_at(client, now),
            Err(1),
            "refill of one failure: 200 ms"
        );
        // More failures while refused change nothing.
        limiter.record_failure_at(client, now);
        assert!(limiter.check_at(client, now).is_err());
        assert_eq!(
            limiter.check_at(other, now),
            Ok(()),
            "other clients are untouched"
        );
        // One failure refills every 200 ms.
        assert_eq!(limiter.check_at(client, now + S / 5), Ok(()));
        limiter.record_failure_at(client, now + S / 5);
        assert!(limiter.check_at(client, now + S / 5).is_err());
        // Ten seconds later the bucket is full again.
        let later = now + 11 * S;
        for _ in 0..50 {
            assert_eq!(limiter.check_at(client, later), Ok(()));
            limiter.record_failure_at(client, later);
        }
        assert!(limiter.check_at(client, later).is_err());
    }

    /// `count` IPv4 clients (from 10.0.0.0 up) that share `client`'s set.
    fn set_mates(limiter: &FailureLimiter, client: IpAddr, count: usize) -> Vec<IpAddr> {
        (0..1_000_000u32)
            .map(|i| IpAddr::V4((0x0A00_0000 + i).into()))
            .filter(|other| {
                *other != client && limiter.set_of(*other).0 == limiter.set_of(client).0
            })
            .take(count)
            .collect()
    }

    #[test]
    fn a_client_that_never_failed_is_not_refused_for_another_in_its_set() {
        // Two sets for thousands of clients: every set is shared, but only buckets whose tag
        // a way holds are in debt there.
        let limiter = FailureLimiter::with_capacity(rate(1.0, 2), 16);
        let attacker: IpAddr = "198.51.100.1".parse().unwrap();
        for _ in 0..3 {
            limiter.record_failure_at(attacker, S);
        }
        assert!(limiter.check_at(attacker, S).is_err());
        for i in 0..10_000u32 {
            let client = IpAddr::V4((0x0A00_0000 + i).into());
            assert_eq!(limiter.check_at(client, S), Ok(()), "{client}");
        }
    }

    #[test]
    fn clients_that_share_a_set_keep_their_own_debts() {
        // Taking turns in one set forgives nobody: each failing client holds a way of its own.
        let limiter = FailureLimiter::with_capacity(rate(1.0, 2), 16);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b = set_mates(&limiter, a, 1)[0];
        for _ in 0..3 {
            limiter.record_failure_at(a, S);
            limiter.record_failure_at(b, S);
        }
        assert!(limiter.check_at(a, S).is_err());
        assert!(limiter.check_at(b, S).is_err());
    }

    #[test]
    fn a_debtor_is_forgotten_only_when_every_way_of_its_set_is_in_debt() {
        let limiter = FailureLimiter::with_capacity(rate(1.0, 2), 16);
        let attacker: IpAddr = "198.51.100.1".parse().unwrap();
        for _ in 0..3 {
            limiter.record_failure_at(attacker, S);
        }
        let mates = set_mates(&limiter, attacker, WAYS);
        // Seven other clients fail once (a small debt each): the set is full, the attacker
        // is still held.
        for mate in &mates[..WAYS - 1] {
            limiter.record_failure_at(*mate, S);
        }
        assert!(limiter.check_at(attacker, S).is_err());
        // An eighth takes the way with the least debt: one of the seven, not the attacker.
        limiter.record_failure_at(mates[WAYS - 1], S);
        assert!(limiter.check_at(attacker, S).is_err());
        // Once the others' debts are paid (at 2 s; the attacker's runs to 3 s), seven
        // newcomers take their ways, never the attacker's.
        let later = S * 5 / 2;
        let (set, tag) = limiter.set_of(attacker);
        let newcomers = set_mates(&limiter, attacker, 2 * WAYS);
        for newcomer in &newcomers[WAYS..2 * WAYS - 1] {
            limiter.record_failure_at(*newcomer, later);
        }
        assert!(limiter.way_of(set, tag).is_some(), "still held");
        // Now every way is in debt: the next newcomer takes the least indebted, the attacker.
        limiter.record_failure_at(newcomers[2 * WAYS - 1], later);
        assert!(limiter.way_of(set, tag).is_none(), "forgotten");
    }

    #[test]
    fn the_client_table_is_bounded_whatever_the_number_of_addresses() {
        let limiter = FailureLimiter::with_capacity(rate(5.0, 50), 1_000);
        assert_eq!(
            limiter.slots.len(),
            1_024,
            "125 sets of 8, rounded up to 128"
        );
        for i in 0..100_000u32 {
            limiter.record_failure_at(IpAddr::V4(i.into()), S);
        }
        // Full, never grown; and the newest failing client is held, not dropped.
        assert_eq!(limiter.len(), limiter.slots.len());
        let newest = IpAddr::V4(99_999u32.into());
        let (set, tag) = limiter.set_of(newest);
        assert!(limiter.way_of(set, tag).is_some());
    }

    #[test]
    fn an_ipv6_client_spends_from_its_64_network_and_mapped_ipv4_from_the_ipv4_address() {
        let limiter = FailureLimiter::new(rate(1.0, 2));
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        limiter.record_failure_at(a, S);
        limiter.record_failure_at(b, S);
        assert!(limiter.check_at(a, S).is_err());
        assert_eq!(limiter.check_at(elsewhere, S), Ok(()));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        limiter.record_failure_at(v4, S);
        limiter.record_failure_at(mapped, S);
        assert!(limiter.check_at(v4, S).is_err());
    }
}
