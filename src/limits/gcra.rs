//! GCRA arithmetic, shared by the in-process limiter and (as Lua) by the Redis script.
//!
//! A principal's whole state is one number, its *theoretical arrival time* (TAT): the instant
//! at which its allowance is full again. `TAT <= now` means "full" (and is the same as having no
//! state at all, which is why idle principals can be forgotten without losing anything).
//!
//! Requests: each costs one `interval` (1 s / rate). A request is admitted when, after adding
//! its cost, the TAT is at most `burst × interval` ahead of now; an admitted request moves the
//! TAT, a refused one changes nothing.
//!
//! Token budgets: each token costs `60 s / tokens_per_minute`. Charges are applied after the
//! fact and always (the upstream already did the work); a request is refused while the TAT is
//! more than 60 s ahead of now, i.e. while the budget is below zero.
//!
//! Times are plain integers in one unit (nanoseconds locally, microseconds in Redis), so the
//! same functions serve both.

use super::settings::Rate;

/// Nanoseconds per second, the local unit.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A request quota: `burst` at once, refilled at one request per `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gcra {
    /// Time units per request (at least 1).
    pub interval: u64,
    pub burst: u32,
}

/// What a limit looks like to the client right now (the `RateLimit-*` headers, SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    /// The burst.
    pub limit: u32,
    /// Requests that could be made right now.
    pub remaining: u32,
    /// Whole seconds until `remaining` is back to `limit`.
    pub reset_secs: u64,
}

/// A refused request: the state plus the wait, in whole seconds (at least 1, rounded up so a
/// retry after it succeeds unless someone else spends the allowance first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub retry_after_secs: u64,
    pub state: Option<LimitState>,
    /// Set when the token budget refused: its `tokens_per_minute` (none are left).
    pub budget_tokens_per_minute: Option<u64>,
}

impl Gcra {
    /// `units_per_sec` is the time unit (nanoseconds: `NANOS_PER_SEC`).
    pub fn new(rate: Rate, units_per_sec: u64) -> Self {
        // Rates are validated to (0, 1e9]; the interval never rounds to 0.
        let interval = (units_per_sec as f64 / rate.per_second).round();
        let interval = if interval >= u64::MAX as f64 {
            u64::MAX
        } else {
            (interval as u64).max(1)
        };
        Self {
            interval,
            burst: rate.burst.get(),
        }
    }

    /// How far ahead of now the TAT may be.
    fn tolerance(&self) -> u64 {
        self.interval.saturating_mul(u64::from(self.burst))
    }

    /// One request at `now`: `Ok(new TAT)` when admitted, `Err(wait)` in time units otherwise.
    pub fn acquire(&self, tat: u64, now: u64) -> Result<u64, u64> {
        let next = tat.max(now).saturating_add(self.interval);
        let ahead = next - now;
        if ahead <= self.tolerance() {
            Ok(next)
        } else {
            Err(ahead - self.tolerance())
        }
    }

    /// The client's view of a TAT at `now`.
    pub fn state(&self, tat: u64, now: u64, units_per_sec: u64) -> LimitState {
        let ahead = tat.saturating_sub(now);
        let spare = self.tolerance().saturating_sub(ahead);
        LimitState {
            limit: self.burst,
            remaining: u32::try_from(spare / self.interval).unwrap_or(u32::MAX),
            reset_secs: ahead.div_ceil(units_per_sec),
        }
    }
}

/// A token budget: `tokens_per_minute`, refilled continuously.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget {
    pub tokens_per_minute: u64,
    /// One minute in time units: how far ahead the TAT may be before the budget is negative.
    pub window: u64,
}

/// The most debt a single charge can build: a misreported cost must not lock a principal out
/// for years (or overflow).
const MAX_DEBT_WINDOWS: u64 = 24 * 60;

impl Budget {
    pub fn new(tokens_per_minute: u64, units_per_sec: u64) -> Self {
        Self {
            tokens_per_minute: tokens_per_minute.max(1),
            window: units_per_sec * 60,
        }
    }

    /// The time `tokens` take to refill, rounded up. Computed per charge rather than from a
    /// rounded per-token time: at 100M tokens/min one token is 0.6 µs, and rounding that to
    /// whole microseconds (Redis' unit) would change the budget by up to 67 %.
    pub fn cost(&self, tokens: u64) -> u64 {
        let cost = (u128::from(tokens) * u128::from(self.window))
            .div_ceil(u128::from(self.tokens_per_minute));
        u64::try_from(cost).unwrap_or(u64::MAX)
    }

    /// The most debt one principal can owe, in time units.
    pub fn max_debt(&self) -> u64 {
        self.window.saturating_mul(MAX_DEBT_WINDOWS)
    }

    /// `Err(wait)` while the budget is below zero.
    pub fn check(&self, tat: u64, now: u64) -> Result<(), u64> {
        let ahead = tat.saturating_sub(now);
        if ahead > self.window {
            Err(ahead - self.window)
        } else {
            Ok(())
        }
    }

    /// The TAT after spending `tokens` at `now`.
    pub fn charge(&self, tat: u64, now: u64, tokens: u64) -> u64 {
        let ahead = tat
            .saturating_sub(now)
            .saturating_add(self.cost(tokens))
            .min(self.max_debt());
        now.saturating_add(ahead)
    }
}

/// Whole seconds, rounded up, at least 1 (a `Retry-After: 0` invites a hot retry loop).
pub fn retry_after_secs(wait: u64, units_per_sec: u64) -> u64 {
    wait.div_ceil(units_per_sec).max(1)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    const S: u64 = NANOS_PER_SEC;

    fn gcra(per_second: f64, burst: u32) -> Gcra {
        Gcra::new(
            Rate {
                per_second,
                burst: NonZeroU32::new(burst).unwrap(),
            },
            S,
        )
    }

    #[test]
    fn a_full_burst_is_admitted_then_one_per_interval() {
        let quota = gcra(2.0, 3);
        let mut tat = 0;
        let now = 10 * S;
        for remaining in [2, 1, 0] {
            tat = quota.acquire(tat, now).unwrap();
            assert_eq!(quota.state(tat, now, S).remaining, remaining);
        }
        let wait = quota.acquire(tat, now).unwrap_err();
        assert_eq!(wait, S / 2, "the next request fits one interval later");
        assert_eq!(retry_after_secs(wait, S), 1);
        // Exactly at the wait it is admitted, and not a nanosecond before.
        assert!(quota.acquire(tat, now + wait - 1).is_err());
        assert!(quota.acquire(tat, now + wait).is_ok());
    }

    #[test]
    fn reset_is_the_time_until_the_allowance_is_full_again() {
        let quota = gcra(1.0, 5);
        let now = 100 * S;
        let mut tat = 0;
        for _ in 0..5 {
            tat = quota.acquire(tat, now).unwrap();
        }
        let state = quota.state(tat, now, S);
        assert_eq!(state.remaining, 0);
        assert_eq!(state.reset_secs, 5);
        assert_eq!(quota.state(tat, now + 5 * S, S).remaining, 5);
        // A principal with no state is full.
        assert_eq!(
            quota.state(0, now, S),
            LimitState {
                limit: 5,
                remaining: 5,
                reset_secs: 0
            }
        );
    }

    #[test]
    fn slow_rates_round_the_retry_up() {
        let quota = gcra(0.1, 1);
        let tat = quota.acquire(0, S).unwrap();
        let wait = quota.acquire(tat, S + 1).unwrap_err();
        assert_eq!(retry_after_secs(wait, S), 10);
    }

    #[test]
    fn extreme_quotas_saturate_instead_of_overflowing() {
        let quota = gcra(1e-12, u32::MAX);
        assert!(quota.acquire(u64::MAX - 1, u64::MAX - 1).is_ok());
        let fast = gcra(1e9, 1);
        assert_eq!(fast.interval, 1);
    }

    #[test]
    fn budgets_refuse_only_below_zero_and_cap_the_debt() {
        let budget = Budget::new(600, S); // 10 tokens/s, 100 ms per token
        let now = 1_000 * S;
        let tat = budget.charge(0, now, 600);
        assert!(
            budget.check(tat, now).is_ok(),
            "exactly zero is not below zero"
        );
        let tat = budget.charge(tat, now, 10);
        let wait = budget.check(tat, now).unwrap_err();
        assert_eq!(wait, S);
        assert!(budget.check(tat, now + S).is_ok());
        // Large budgets stay exact in microseconds (Redis' unit): 100M/min and 40M/min.
        for tokens_per_minute in [100_000_000, 40_000_000, 7_000_000] {
            let budget = Budget::new(tokens_per_minute, 1_000_000);
            let after_a_minute = budget.charge(0, 0, tokens_per_minute);
            assert_eq!(after_a_minute, budget.window, "{tokens_per_minute}");
            assert!(budget.check(after_a_minute, 0).is_ok());
            assert!(
                budget
                    .check(budget.charge(after_a_minute, 0, 2), 0)
                    .is_err()
            );
        }
        // A wildly misreported cost saturates at the cap.
        let tat = budget.charge(0, now, u64::MAX);
        assert_eq!(tat - now, budget.window * MAX_DEBT_WINDOWS);
    }
}
