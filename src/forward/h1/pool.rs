//! Idle keep-alive connections to one upstream, and the guard that keeps bytes an upstream
//! wrote after a complete response from answering the next request.
//!
//! A connection goes back to the pool only with an empty read buffer and a socket that is
//! not readable at check-in. Beyond that:
//!
//! - **Swept while idle.** Once a second a pool-wide task closes every idle connection that
//!   received bytes or EOF (tokio's reported readiness: no syscall for a silent socket) and
//!   those idle past the timeout. Check-in and checkout ask the same question, so a
//!   connection with input is never handed to a request, swept yet or not. (A waker
//!   registered on every idle socket closed them the moment input came, but cost about 150
//!   instructions on every proxied request; a second's delay in closing a socket the
//!   checkout would refuse anyway is the better trade.)
//! - **Proven quiet after a bodiless response.** After a response that has no body by
//!   definition (HEAD, 204, 304) or that came after skipped 1xx responses, a misbehaving
//!   upstream may still write the body it should not have (or more interim responses).
//!   Such a connection is on probation: it is handed out only after [`QUIET_PERIOD`] without
//!   input, checked with a `recv(MSG_PEEK)` syscall that does not depend on when the reactor
//!   last polled. A checkout prefers a connection that is not on probation; if only one on
//!   probation is idle it waits out the rest of its period (ending early, and opening a new
//!   connection, if input arrives). These responses are rare, so the extra syscall and
//!   timer stay off the fast path.
//! - **The fast path keeps its syscalls.** After an ordinary response with a length, check-in
//!   adds only the readiness poll above (a lock and a waker store), and the checkout probe
//!   asks tokio whether the socket was reported readable: no syscall, no allocation, no
//!   task wake-up. What remains is a window: bytes that arrive after the next request was
//!   written on the connection, or before it but not yet seen by the reactor, are read as
//!   that request's answer. Closing it would cost a syscall, or a wait, before every reuse;
//!   bytes that arrive while the connection is idle close it instead.
//!
//! A TLS connection is probed through its session, so a record without application data
//! (a session ticket) does not close it; the kernel's peek cannot tell records apart, so
//! on probation any incoming record ends the connection, which costs only a reconnection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::super::{POOL_IDLE_TIMEOUT, POOL_MAX_IDLE_PER_HOST};
use super::conn::{Conn, READ_BUFFER, WRITE_BUFFER};

/// How long a connection on probation must stay silent before it is reused. A body sent
/// where none belongs is written by the same handler right after the head, so it trails the
/// head by the handler's next write plus the sender's scheduling delay and network jitter.
/// 20 ms covers a sender descheduled for a few time slices on a busy host (Linux aims to
/// run every runnable task within 6 to 24 ms) and a LAN's jitter; with 10 ms, bodies sent
/// 5 ms after the head still got through in 1 to 2 trials of 60 on a loaded 2-core VM
/// (docs/performance.md). The cost: a request that can only reuse such a connection waits
/// at most this long, once per bodiless response.
pub(super) const QUIET_PERIOD: Duration = Duration::from_millis(20);

/// How often idle connections are swept for input or EOF (and for the idle timeout).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Idle connections, most recently used last.
#[derive(Debug)]
pub(super) struct IdleConns {
    idle: Mutex<VecDeque<Idle>>,
    /// Whether the sweeping task runs.
    watching: AtomicBool,
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    /// When it is past the idle timeout: computed at check-in, so taking one out compares
    /// instants instead of subtracting them.
    expires: Instant,
    /// On probation: not reused before this instant, and only if proven quiet then.
    quiet_at: Option<Instant>,
}

impl Default for IdleConns {
    fn default() -> Self {
        Self {
            idle: Mutex::new(VecDeque::new()),
            watching: AtomicBool::new(false),
        }
    }
}

impl IdleConns {
    /// An idle connection that is still open and, if it was on probation, proven quiet.
    pub(super) async fn checkout(&self) -> Option<Conn> {
        loop {
            let (mut conn, quiet_at) = self.pop()?;
            let usable = match quiet_at {
                None => conn.is_open(),
                Some(at) => Self::prove_quiet(&conn, at).await,
            };
            if usable {
                return Some(conn);
            }
        }
    }

    /// The most recently used connection not waiting out its probation, else the most
    /// recent one on probation. One clock read, as before probation existed: the list is
    /// searched only when the newest is on probation.
    fn pop(&self) -> Option<(Conn, Option<Instant>)> {
        let mut idle = lock(&self.idle);
        let newest = idle.back()?;
        let now = Instant::now();
        if now >= newest.expires {
            // The newest is past the idle timeout, so every older one is too.
            let expired = std::mem::take(&mut *idle);
            drop(idle);
            drop(expired);
            return None;
        }
        let newest_index = idle.len() - 1;
        let ready = |entry: &Idle| entry.quiet_at.is_none_or(|at| at <= now);
        let index = if ready(newest) {
            newest_index
        } else {
            idle.iter()
                .rposition(|entry| ready(entry) && now < entry.expires)
                .unwrap_or(newest_index)
        };
        // The newest is the usual pick: taken off the back, with no shifting of the rest.
        let entry = if index == newest_index {
            idle.pop_back()?
        } else {
            idle.remove(index)?
        };
        Some((entry.conn, entry.quiet_at))
    }

    /// Waits until `at` unless input arrives first, then asks the kernel.
    async fn prove_quiet(conn: &Conn, at: Instant) -> bool {
        let at = tokio::time::Instant::from_std(at);
        if at > tokio::time::Instant::now() {
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = conn.readable() => return false,
            }
        }
        conn.is_quiet()
    }

    /// Puts `conn` back, on probation if `probation`. It must have read its response to the
    /// end; one with unread bytes or input waiting is closed instead.
    pub(super) fn checkin(self: &Arc<Self>, mut conn: Conn, probation: bool) {
        if !conn.read_buf.is_empty() {
            return;
        }
        if !conn.is_open() {
            return;
        }
        // An idle connection keeps no more buffer than a new one: a large response or
        // request head grew them, and hundreds of idle connections may wait per upstream.
        if conn.large_reads {
            // The buffer (or the allocation its spare room belongs to) may be that large.
            conn.read_buf = bytes::BytesMut::with_capacity(READ_BUFFER);
            conn.large_reads = false;
        }
        if conn.write_buf.capacity() > 4 * WRITE_BUFFER {
            conn.write_buf = bytes::BytesMut::with_capacity(WRITE_BUFFER);
        }
        let since = Instant::now();
        let expires = since + POOL_IDLE_TIMEOUT;
        let quiet_at = probation.then(|| since + QUIET_PERIOD);
        let mut idle = lock(&self.idle);
        if idle.len() >= POOL_MAX_IDLE_PER_HOST {
            return;
        }
        idle.push_back(Idle {
            conn,
            expires,
            quiet_at,
        });
        drop(idle);
        self.start_watcher();
    }

    /// Started on the first check-in, which always runs inside the runtime; ends with the
    /// pool.
    fn start_watcher(self: &Arc<Self>) {
        if self.watching.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.watching.store(false, Ordering::Relaxed);
            return;
        };
        let pool: Weak<Self> = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.sweep();
            }
        });
    }

    /// One pass over the idle connections under one lock: those past the idle timeout or that
    /// received bytes or EOF are closed (even when no request comes to notice them), and the
    /// rest give back their read buffers, allocated again when next used. After a burst of
    /// streams hundreds may wait per upstream, each holding a buffer sized for a response
    /// (16 KiB, its touched pages resident); kept for up to the idle timeout, they held memory
    /// the gateway no longer used. A connection in steady keep-alive use is rarely idle at the
    /// instant of a sweep, so this costs it an allocation only then.
    pub(super) fn sweep(&self) {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        // Closed outside the lock: dropping a TLS connection sends its close_notify.
        let mut closed = Vec::new();
        let mut readable = 0;
        let mut kept = VecDeque::with_capacity(idle.len());
        for mut entry in idle.drain(..) {
            if now >= entry.expires {
                closed.push(entry);
            } else if !entry.conn.is_open() {
                readable += 1;
                closed.push(entry);
            } else {
                entry.conn.release_empty_read_buffer();
                kept.push_back(entry);
            }
        }
        *idle = kept;
        drop(idle);
        drop(closed);
        if readable > 0 {
            tracing::debug!(
                count = readable,
                "Idle upstream connections received input; closed."
            );
        }
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent across a panic (plain pushes and pops).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A pooled-to-be connection and the upstream's end of it.
    async fn pair() -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        (super::super::conn::plain(stream), peer)
    }

    fn idle_count(pool: &IdleConns) -> usize {
        lock(&pool.idle).len()
    }

    /// Writes `bytes` (or closes, if empty) on `peer`, then waits until the reactor has seen
    /// it: loopback delivers at once, so when a second socket written after it is reported
    /// readable, the first was reported in the same or an earlier turn.
    async fn deliver(mut peer: TcpStream, bytes: &[u8]) -> TcpStream {
        if bytes.is_empty() {
            peer.shutdown().await.unwrap();
        } else {
            peer.write_all(bytes).await.unwrap();
        }
        let (marker, mut marker_peer) = pair().await;
        marker_peer.write_all(b"x").await.unwrap();
        marker.readable().await;
        peer
    }

    #[tokio::test]
    async fn input_that_reaches_an_idle_connection_keeps_it_from_every_request() {
        for stray in [&b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..], b""] {
            let pool = Arc::new(IdleConns::default());
            let (conn, peer) = pair().await;
            pool.checkin(conn, false);
            assert_eq!(idle_count(&pool), 1);
            let _peer = deliver(peer, stray).await;
            assert!(pool.checkout().await.is_none(), "{stray:?}");
            assert_eq!(idle_count(&pool), 0);
        }
        // A silent one is handed out.
        let pool = Arc::new(IdleConns::default());
        let (conn, _peer) = pair().await;
        pool.checkin(conn, false);
        assert!(pool.checkout().await.is_some());
    }

    /// The sweep closes, with no request to notice them, the idle connections that received
    /// bytes or EOF, and keeps the quiet ones.
    #[tokio::test]
    async fn the_sweep_closes_the_idle_connections_that_received_input_and_keeps_the_rest() {
        for stray in [&b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..], b""] {
            let pool = Arc::new(IdleConns::default());
            let (quiet, _quiet_peer) = pair().await;
            let (spoken_to, peer) = pair().await;
            pool.checkin(quiet, false);
            pool.checkin(spoken_to, false);
            let _peer = deliver(peer, stray).await;
            pool.sweep();
            assert_eq!(idle_count(&pool), 1, "{stray:?}");
            assert_eq!(lock(&pool.idle)[0].conn.read_buf.capacity(), 0);
            assert!(
                pool.checkout().await.is_some(),
                "the quiet one stays usable"
            );
        }
    }

    #[tokio::test]
    async fn a_swept_idle_connection_holds_no_read_buffer_and_is_still_handed_out() {
        let pool = Arc::new(IdleConns::default());
        let (conn, mut peer) = pair().await;
        assert!(
            conn.read_buf.capacity() > 0,
            "a new connection comes with its buffer"
        );
        pool.checkin(conn, false);
        pool.sweep();
        assert_eq!(lock(&pool.idle)[0].conn.read_buf.capacity(), 0);
        let mut conn = pool.checkout().await.expect("still reusable");
        // The next read allocates the buffer again.
        peer.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        let read = std::future::poll_fn(|cx| conn.poll_read(cx, READ_BUFFER)).await;
        assert_eq!(read.unwrap(), 17);
        assert_eq!(&conn.read_buf[..], b"HTTP/1.1 200 OK\r\n");
        assert!(conn.read_buf.capacity() >= READ_BUFFER);
    }

    #[tokio::test]
    async fn connection_with_input_waiting_is_not_checked_in() {
        let pool = Arc::new(IdleConns::default());
        let (conn, mut peer) = pair().await;
        peer.write_all(b"stray").await.unwrap();
        conn.readable().await;
        pool.checkin(conn, false);
        assert_eq!(idle_count(&pool), 0);

        let (mut conn, _peer) = pair().await;
        conn.read_buf.extend_from_slice(b"unread");
        pool.checkin(conn, false);
        assert_eq!(idle_count(&pool), 0);
    }

    #[tokio::test]
    async fn connection_on_probation_is_reused_only_if_it_stayed_quiet() {
        let pool = Arc::new(IdleConns::default());
        let (quiet, _quiet_peer) = pair().await;
        pool.checkin(quiet, true);
        assert!(pool.checkout().await.is_some(), "silent through its period");

        let (noisy, mut noisy_peer) = pair().await;
        pool.checkin(noisy, true);
        noisy_peer.write_all(b"late body").await.unwrap();
        assert!(pool.checkout().await.is_none(), "input during its period");
    }

    #[tokio::test]
    async fn checkout_prefers_a_connection_not_on_probation() {
        let pool = Arc::new(IdleConns::default());
        let (older, _older_peer) = pair().await;
        let (newer, _newer_peer) = pair().await;
        let older_port = older.stream_local_port();
        pool.checkin(older, false);
        pool.checkin(newer, true);
        let conn = pool.checkout().await.unwrap();
        assert_eq!(conn.stream_local_port(), older_port);
        assert_eq!(idle_count(&pool), 1, "the one on probation stays");
    }
}
