//! Gives memory freed by finished connections back to the OS once load drops.
//!
//! The binary allocates with mimalloc, which holds freed pages for a purge delay (1 s) and
//! returns them only from inside a later allocator call that frees a page. A gateway that
//! just closed thousands of streams and then sits quiet makes no such call, so the memory
//! those streams used stayed resident until the next burst of traffic (measured: 33 MB after
//! 4,000 streams closed, against 14 MB idle; docs/performance.md). A task that frees one
//! large block every [`NUDGE_INTERVAL`] is such a call: it lets the purges that are due run,
//! at the cost of one allocation per interval. With another allocator it is harmless.

use std::time::Duration;

use tokio::task::JoinHandle;

/// How often the allocator is given the chance to purge: twice the purge delay, so memory is
/// back within a few seconds of the last connection closing.
const NUDGE_INTERVAL: Duration = Duration::from_secs(2);

/// Above mimalloc's largest pooled object size (512 KiB), so the block gets a page of its own
/// and freeing it frees that page, the event on which due purges run. It is never touched, so
/// it costs no resident memory.
const NUDGE_BYTES: usize = 1 << 20;

/// Starts the task; the server aborts it when it stops.
pub(super) fn spawn_return_of_freed_memory() -> JoinHandle<()> {
    tokio::spawn(async {
        let mut ticks = tokio::time::interval(NUDGE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            // black_box: an allocation that is freed unused may otherwise be optimised away.
            drop(std::hint::black_box(Vec::<u8>::with_capacity(NUDGE_BYTES)));
        }
    })
}
