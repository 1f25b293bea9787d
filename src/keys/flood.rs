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
/// The buckets live in a direct-mapped table: a client bucket hashes to one slot, which holds
/// the bucket's tag and its GCRA state. A client whose tag is not in its slot has never
/// failed (or was forgotten), so the check of every request that authenticates as usual is
/// one load and a compare: no map, no clock, no lock. A failure from a bucket whose slot holds
/// another bucket takes the slot over, which only forgives the other one's debt (as an LRU
/// bound would); the slot's hash is keyed per process, so a client cannot choose whose slot
/// it lands in.
#[derive(Debug)]
pub struct FailureLimiter {
    quota: Gcra,
    slots: Box<[Slot]>,
    /// `hash >> shift` is a slot index (the table has a power-of-two length).
    shift: u32,
    /// Keys the slot hash, so that which clients share a slot is not known in advance.
    seed: u64,
    clock: Nanos,
}

/// One slot: the tag of the client bucket it holds (0 when none) and that bucket's GCRA state.
/// Two words, not one: when two buckets race for one slot, one may be charged the other's
/// failure; that needs a hash collision and concurrency, and costs one failure's worth.
#[derive(Debug, Default)]
struct Slot {
    tag: AtomicU64,
    tat: AtomicU64,
}

/// What [`FailureLimiter::standing`] found of a client: its slot and tag, and (for a client
/// with a debt) the time it was read.
#[derive(Debug)]
pub struct Standing {
    slot: usize,
    tag: u64,
    /// `Some(now)` when the slot held this client at the check.
    checked_at: Option<u64>,
}

impl FailureLimiter {
    pub fn new(rate: Rate) -> Self {
        Self::with_capacity(rate, FAILED_AUTH_TRACKED_CLIENTS)
    }

    /// A table of `capacity` slots, rounded up to a power of two.
    pub fn with_capacity(rate: Rate, capacity: usize) -> Self {
        let slots = capacity.clamp(2, 1 << 24).next_power_of_two();
        let mut seed = [0u8; 8];
        // Without an OS random source the table still works; only its layout is predictable.
        let _ = getrandom::fill(&mut seed);
        Self {
            quota: Gcra::new(rate, NANOS_PER_SEC),
            slots: (0..slots).map(|_| Slot::default()).collect(),
            shift: 64 - slots.trailing_zeros(),
            seed: u64::from_le_bytes(seed) | 1,
            clock: Nanos::new(),
        }
    }

    /// `Err(retry_after_secs)` while `client` has no failure left to spend. A client that
    /// never failed costs a load and a compare (the clock is read only for clients in debt).
    pub fn check(&self, client: IpAddr) -> Result<(), u64> {
        self.standing(client).map(drop)
    }

    /// `check` at `now` nanoseconds (tests drive the clock).
    pub fn check_at(&self, client: IpAddr, now: u64) -> Result<(), u64> {
        self.standing_with(client, || now).map(drop)
    }

    /// [`Self::check`], keeping what it found for [`Self::record`]: a failure that follows
    /// spends from the slot already found, without hashing again or a second clock read.
    pub fn standing(&self, client: IpAddr) -> Result<Standing, u64> {
        self.standing_with(client, || self.clock.now())
    }

    fn standing_with(&self, client: IpAddr, now: impl FnOnce() -> u64) -> Result<Standing, u64> {
        let (slot, tag) = self.slot_of(client);
        let mut standing = Standing {
            slot,
            tag,
            checked_at: None,
        };
        let entry = &self.slots[slot];
        if entry.tag.load(Ordering::Acquire) != tag {
            return Ok(standing);
        }
        let now = now();
        // A peek: would one more failure fit? Nothing is spent here.
        match self.quota.acquire(entry.tat.load(Ordering::Acquire), now) {
            Ok(_) => {
                standing.checked_at = Some(now);
                Ok(standing)
            }
            Err(wait) => Err(retry_after_secs(wait, NANOS_PER_SEC)),
        }
    }

    /// The failed authentication of a client whose [`Standing`] was taken at its start.
    pub fn record(&self, standing: Standing) {
        // The moment of the check stands for the failure: microseconds apart.
        let now = standing.checked_at.unwrap_or_else(|| self.clock.now());
        self.spend(standing.slot, standing.tag, now);
    }

    /// One failed authentication from `client`, now.
    pub fn record_failure(&self, client: IpAddr) {
        self.record_failure_at(client, self.clock.now());
    }

    /// One failed authentication from `client` at `now` nanoseconds.
    pub fn record_failure_at(&self, client: IpAddr, now: u64) {
        let (slot, tag) = self.slot_of(client);
        self.spend(slot, tag, now);
    }

    /// Spends one failure of the bucket `tag` from `slot`, taking the slot over when it holds
    /// another bucket (a full bucket to start from).
    fn spend(&self, slot: usize, tag: u64, now: u64) {
        let entry = &self.slots[slot];
        if entry.tag.load(Ordering::Acquire) != tag {
            entry.tat.store(0, Ordering::Release);
            entry.tag.store(tag, Ordering::Release);
        }
        // An empty bucket stays empty; the failure itself needs no room.
        let _ = acquire(&self.quota, &entry.tat, now);
    }

    /// The slot and tag of `client`'s bucket. The tag is a bijection of the bucket's address
    /// (IPv4, or the upper 64 bits of an IPv6 /64), so two buckets share a tag only when an
    /// IPv4 address meets an IPv6 network inside ::/32 (reserved space), or when
    /// a tag is 0 (which marks an empty slot) and becomes 1.
    fn slot_of(&self, client: IpAddr) -> (usize, u64) {
        let address = match bucket_of(client) {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64,
        };
        // Multiplying by an odd number and xor-shifting are both invertible.
        let mixed = (address ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let tag = (mixed ^ (mixed >> 29)).max(1);
        ((mixed >> self.shift) as usize, tag)
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

    #[test]
    fn the_client_map_is_bounded_whatever_the_number_of_addresses() {
        let limiter = FailureLimiter::with_capacity(rate(5.0, 50), 1_000);
        for i in 0..100_000u32 {
            limiter.record_failure_at(IpAddr::V4(i.into()), S);
        }
        assert!(limiter.len() <= 1_000 + 1_000 / 10, "{}", limiter.len());
    }

    #[test]
    fn a_client_that_never_failed_is_not_refused_for_another_in_its_slot() {
        // Two slots for thousands of clients: every slot is shared, but only the bucket
        // whose tag a slot holds is in debt there.
        let limiter = FailureLimiter::with_capacity(rate(1.0, 2), 2);
        let attacker: IpAddr = "198.51.100.1".parse().unwrap();
        for _ in 0..3 {
            limiter.record_failure_at(attacker, S);
        }
        assert!(limiter.check_at(attacker, S).is_err());
        for i in 0..10_000u32 {
            let client = IpAddr::V4((0x0A00_0000 + i).into());
            assert_eq!(limiter.check_at(client, S), Ok(()), "{client}");
        }
        // A failure of a client in the attacker's slot takes it over: the attacker's debt is
        // forgotten (forgiven), never handed to the newcomer.
        let newcomer = (0..10_000u32)
            .map(|i| IpAddr::V4((0x0A00_0000 + i).into()))
            .find(|client| limiter.slot_of(*client).0 == limiter.slot_of(attacker).0)
            .unwrap();
        limiter.record_failure_at(newcomer, S);
        assert_eq!(limiter.check_at(newcomer, S), Ok(()), "one failure of two");
        assert_eq!(limiter.check_at(attacker, S), Ok(()));
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
