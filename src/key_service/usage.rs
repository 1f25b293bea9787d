//! Per-key usage without a database write per request: counters in memory, written in
//! batches every `database.usage_flush`.
//!
//! A request adds to its key's counters (a sharded map: no global lock, an allocation only
//! the first time a key is seen in an interval). A refusal also counts under its SPEC §7 code:
//! one slot per code of the closed list [`CODES`], allocated at the key's first refusal in the
//! interval, so a key that is never refused pays nothing for the breakdown and a refused one
//! holds at most `CODES.len()` counters. The flusher swaps the counts out, stamps them with
//! the hour of the flush (so no request reads a clock for this) and writes one batch. While
//! the database is down, unwritten batches wait in a bounded queue; what does not fit is
//! dropped and counted, never blocking a request.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use dashmap::DashMap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::database::KeyDatabase;
use super::model::{Refusals, UsageCounts, UsageDelta};
use crate::error::CODES;
use crate::keys::Timestamp;
use crate::telemetry::ResultLabels;

/// Distinct keys counted in one interval, at most (the map is drained every interval).
pub const MAX_KEYS_PER_INTERVAL: usize = 100_000;
/// Unwritten batches kept while the database is down, at most.
pub const MAX_PENDING_BATCHES: usize = 64;

/// One counter per code of [`CODES`], in its order.
type ReasonCounters = [AtomicU64; CODES.len()];

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    refused: AtomicU64,
    tokens: AtomicU64,
    /// Set at the key's first refusal in the interval.
    reasons: OnceLock<Box<ReasonCounters>>,
}

impl Counters {
    fn refuse(&self, code: &str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        // Every code the gateway answers with is listed (pinned by a test in error.rs); one
        // that is not would count in the total only, never grow the breakdown.
        if let Some(slot) = CODES.iter().position(|known| *known == code) {
            let reasons = self
                .reasons
                .get_or_init(|| Box::new(std::array::from_fn(|_| AtomicU64::new(0))));
            reasons[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The breakdown by code, codes that occurred only.
    fn refusals(reasons: Option<Box<ReasonCounters>>) -> Refusals {
        let Some(reasons) = reasons else {
            return Refusals::new();
        };
        CODES
            .iter()
            .zip(reasons.iter())
            .filter_map(|(code, count)| {
                let count = count.load(Ordering::Relaxed);
                (count > 0).then(|| ((*code).to_owned(), count))
            })
            .collect()
    }
}

/// The usage counters of one gateway.
#[derive(Debug)]
pub struct UsageRecorder {
    counts: DashMap<Box<str>, Counters, foldhash::fast::RandomState>,
    pending: Mutex<VecDeque<Vec<UsageDelta>>>,
    dropped: Counter,
    flushes: Family<ResultLabels, Counter>,
}

impl UsageRecorder {
    pub fn new(dropped: Counter, flushes: Family<ResultLabels, Counter>) -> Arc<Self> {
        Arc::new(Self {
            counts: DashMap::default(),
            pending: Mutex::default(),
            dropped,
            flushes,
        })
    }

    /// One request made with the key; `refusal` is the SPEC §7 code when authgate answered
    /// it with an error.
    pub fn request(&self, key_id: &str, refusal: Option<&str>) {
        self.add(key_id, |counters| {
            counters.requests.fetch_add(1, Ordering::Relaxed);
            if let Some(code) = refusal {
                counters.refuse(code);
            }
        });
    }

    /// Tokens the upstream reported for a request made with the key.
    pub fn tokens(&self, key_id: &str, tokens: u64) {
        self.add(key_id, |counters| {
            counters.tokens.fetch_add(tokens, Ordering::Relaxed);
        });
    }

    fn add(&self, key_id: &str, count: impl Fn(&Counters)) {
        if let Some(counters) = self.counts.get(key_id) {
            count(&counters);
            return;
        }
        if self.counts.len() >= MAX_KEYS_PER_INTERVAL {
            self.dropped.inc();
            return;
        }
        count(&self.counts.entry(key_id.into()).or_default());
    }

    /// Takes the counts so far, stamped with the hour of `now`.
    pub fn drain(&self, now: Timestamp) -> Vec<UsageDelta> {
        let hour = now.0 - now.0.rem_euclid(3600);
        let keys: Vec<Box<str>> = self
            .counts
            .iter()
            .map(|entry| entry.key().clone())
            .collect();
        let mut batch = Vec::with_capacity(keys.len());
        for key in keys {
            // Removed, so a key idle for an interval costs nothing; counts added between the
            // read and the removal land in a new entry, counted in the next batch.
            let Some((key_id, counters)) = self.counts.remove(&key) else {
                continue;
            };
            let counts = UsageCounts {
                requests: counters.requests.into_inner(),
                refused: counters.refused.into_inner(),
                tokens: counters.tokens.into_inner(),
                refusals: Counters::refusals(counters.reasons.into_inner()),
            };
            batch.push(UsageDelta {
                key_id: key_id.into(),
                hour,
                counts,
                last_used_at: now,
            });
        }
        batch
    }

    /// Writes the pending batches and the counts so far; a batch the database does not
    /// take waits for the next flush (bounded).
    pub async fn flush(&self, database: &KeyDatabase) {
        let batch = self.drain(Timestamp::now());
        {
            let mut pending = lock(&self.pending);
            if !batch.is_empty() {
                pending.push_back(batch);
            }
            while pending.len() > MAX_PENDING_BATCHES {
                if let Some(lost) = pending.pop_front() {
                    self.dropped.inc_by(lost.len() as u64);
                }
            }
        }
        loop {
            let Some(batch) = lock(&self.pending).pop_front() else {
                return;
            };
            match database.add_usage(&batch).await {
                Ok(()) => {
                    self.flushes
                        .get_or_create(&ResultLabels { result: "success" })
                        .inc();
                }
                Err(error) => {
                    self.flushes
                        .get_or_create(&ResultLabels { result: "error" })
                        .inc();
                    tracing::warn!(%error, "Could not write key usage; kept for the next flush.");
                    lock(&self.pending).push_front(batch);
                    return;
                }
            }
        }
    }

    /// Flushes every `interval` while the recorder lives. (The server flushes once more when
    /// it stops: [`crate::gateway::Gateway::flush_usage`].)
    pub fn spawn_flusher(self: &Arc<Self>, database: KeyDatabase, interval: Duration) {
        let recorder: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(recorder) = recorder.upgrade() else {
                    return;
                };
                recorder.flush(&database).await;
            }
        });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only the flusher and drains take it; every change is complete before a panic could occur.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder() -> Arc<UsageRecorder> {
        UsageRecorder::new(Counter::default(), Family::default())
    }

    #[test]
    fn counts_add_up_per_key_and_drain_once() {
        let usage = recorder();
        for _ in 0..3 {
            usage.request("key_a", None);
        }
        usage.request("key_a", Some("RATE_LIMITED"));
        usage.tokens("key_a", 120);
        usage.request("key_b", None);
        let mut batch = usage.drain(Timestamp(7_200 + 59));
        batch.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].key_id, "key_a");
        assert_eq!(batch[0].hour, 7_200);
        assert_eq!(
            batch[0].counts,
            UsageCounts {
                requests: 4,
                refused: 1,
                tokens: 120,
                refusals: Refusals::from([("RATE_LIMITED".to_owned(), 1)]),
            }
        );
        assert_eq!(batch[1].counts.requests, 1);
        assert!(batch[1].counts.refusals.is_empty());
        assert!(usage.drain(Timestamp(7_300)).is_empty(), "drained");
    }

    #[test]
    fn refusals_add_up_by_code_and_sum_to_the_total() {
        let usage = recorder();
        for _ in 0..3 {
            usage.request("key_a", Some("RATE_LIMITED"));
        }
        usage.request("key_a", Some("INSUFFICIENT_SCOPE"));
        usage.request("key_a", Some("UPSTREAM_UNAVAILABLE"));
        usage.request("key_a", Some("RATE_LIMITED"));
        usage.request("key_a", None);
        let batch = usage.drain(Timestamp(0));
        let counts = &batch[0].counts;
        assert_eq!((counts.requests, counts.refused), (7, 6));
        assert_eq!(
            counts.refusals,
            Refusals::from([
                ("INSUFFICIENT_SCOPE".to_owned(), 1),
                ("RATE_LIMITED".to_owned(), 4),
                ("UPSTREAM_UNAVAILABLE".to_owned(), 1),
            ])
        );
        assert_eq!(counts.refusals.values().sum::<u64>(), counts.refused);
        // The next interval starts from nothing.
        usage.request("key_a", Some("TENANT_NOT_ALLOWED"));
        let next = usage.drain(Timestamp(3_600));
        assert_eq!(
            next[0].counts.refusals,
            Refusals::from([("TENANT_NOT_ALLOWED".to_owned(), 1)])
        );
    }

    #[test]
    fn a_key_never_refused_holds_no_breakdown() {
        let usage = recorder();
        for _ in 0..100 {
            usage.request("key_a", None);
        }
        usage.tokens("key_a", 5);
        assert!(usage.counts.get("key_a").unwrap().reasons.get().is_none());
        usage.request("key_a", Some("RATE_LIMITED"));
        assert!(usage.counts.get("key_a").unwrap().reasons.get().is_some());
    }

    #[test]
    fn the_breakdown_is_bounded_by_the_list_of_codes() {
        let usage = recorder();
        // Every code many times, and texts that are no code at all (hostile or future
        // values): the breakdown never holds more than one entry per listed code.
        for round in 0..50 {
            for code in CODES {
                usage.request("key_a", Some(code));
            }
            usage.request("key_a", Some(&format!("NOT_A_CODE_{round}")));
            usage.request("key_a", Some(""));
        }
        let batch = usage.drain(Timestamp(0));
        let counts = &batch[0].counts;
        assert_eq!(counts.refusals.len(), CODES.len());
        assert!(counts.refusals.values().all(|count| *count == 50));
        assert!(
            counts
                .refusals
                .keys()
                .all(|code| CODES.contains(&code.as_str()))
        );
        // Unknown texts are refusals all the same: in the total, not in the breakdown.
        assert_eq!(counts.refused, 50 * (CODES.len() as u64 + 2));
        assert_eq!(counts.requests, counts.refused);
    }

    #[test]
    fn distinct_keys_are_bounded_and_the_excess_counted() {
        let dropped = Counter::default();
        let usage = UsageRecorder::new(dropped.clone(), Family::default());
        for i in 0..MAX_KEYS_PER_INTERVAL + 10 {
            usage.request(&format!("key_{i}"), None);
        }
        assert_eq!(usage.counts.len(), MAX_KEYS_PER_INTERVAL);
        assert_eq!(dropped.get(), 10);
        // Keys already counted keep counting.
        usage.request("key_0", None);
        assert_eq!(dropped.get(), 10);
    }
}
