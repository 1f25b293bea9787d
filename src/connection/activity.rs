//! What an HTTP/2 connection's timer reads to tell an idle connection from a busy one:
//! counters the pipeline updates without locks as requests start and finish.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// No head in progress.
const NO_HEAD: u64 = u64::MAX;

/// Per-connection activity, updated without locks by the pipeline.
#[derive(Debug)]
pub struct ConnActivity {
    epoch: Instant,
    last_activity_ms: AtomicU64,
    head_started_ms: AtomicU64,
    active_requests: AtomicU32,
}

impl Default for ConnActivity {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnActivity {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            // The first request's head is "in progress" from the moment the connection opens:
            // a client that connects and sends nothing is held to header_read_timeout.
            head_started_ms: AtomicU64::new(0),
            active_requests: AtomicU32::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The pipeline has a complete request head.
    pub fn request_started(&self) {
        self.active_requests.fetch_add(1, Ordering::Relaxed);
        self.head_started_ms.store(NO_HEAD, Ordering::Relaxed);
    }

    /// The response has been sent (or abandoned).
    pub fn request_finished(&self) {
        self.active_requests.fetch_sub(1, Ordering::Relaxed);
        self.last_activity_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// What to do at `now`: keep going until a deadline, or close.
    pub(crate) fn check(&self, header_timeout: Duration, idle_timeout: Duration) -> Verdict {
        let now = self.now_ms();
        if self.active_requests.load(Ordering::Relaxed) > 0 {
            return Verdict::WaitUntil(Instant::now() + idle_timeout);
        }
        let head = self.head_started_ms.load(Ordering::Relaxed);
        if head != NO_HEAD {
            let deadline = head + header_timeout.as_millis() as u64;
            return if now >= deadline {
                Verdict::HeaderTimeout
            } else {
                Verdict::WaitUntil(Instant::now() + Duration::from_millis(deadline - now))
            };
        }
        let deadline =
            self.last_activity_ms.load(Ordering::Relaxed) + idle_timeout.as_millis() as u64;
        if now >= deadline {
            Verdict::Idle
        } else {
            Verdict::WaitUntil(Instant::now() + Duration::from_millis(deadline - now))
        }
    }
}

pub(crate) enum Verdict {
    WaitUntil(Instant),
    HeaderTimeout,
    Idle,
}
