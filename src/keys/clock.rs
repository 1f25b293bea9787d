//! A monotonic clock in nanoseconds since the clock was made, from quanta: a read is a
//! timestamp-counter read and a multiply, where `std::time::Instant` is a `clock_gettime` and
//! its differences are `Duration` arithmetic. The key checks read it on every request.

use governor::clock::{Clock, QuantaClock, Reference};

/// Nanoseconds since an origin (monotonic and cheap to read).
#[derive(Debug, Clone)]
pub struct Nanos {
    clock: QuantaClock,
    origin: <QuantaClock as Clock>::Instant,
}

impl Nanos {
    pub fn new() -> Self {
        let clock = QuantaClock::default();
        let origin = clock.now();
        Self { clock, origin }
    }

    pub fn now(&self) -> u64 {
        self.clock.now().duration_since(self.origin).as_u64()
    }
}

impl Default for Nanos {
    fn default() -> Self {
        Self::new()
    }
}

/// `duration` in nanoseconds, saturating (a configured duration beyond 584 years is forever).
pub fn nanos(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_forward_in_nanoseconds() {
        let clock = Nanos::new();
        let before = clock.now();
        let started = std::time::Instant::now();
        // Spun rather than slept: a sleep would block a runtime worker elsewhere in the crate.
        while started.elapsed() < std::time::Duration::from_millis(20) {
            std::hint::spin_loop();
        }
        let elapsed = clock.now() - before;
        assert!(elapsed >= 15_000_000, "{elapsed}");
        assert!(elapsed < 10_000_000_000, "{elapsed}");
        assert_eq!(nanos(std::time::Duration::MAX), u64::MAX);
        assert_eq!(nanos(std::time::Duration::from_millis(3)), 3_000_000);
    }
}
