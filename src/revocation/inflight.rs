//! What is running with which credential, and how it is cut.
//!
//! Every authenticated request registers its identity here for as long as it runs (waiting for
//! the upstream, streaming its response, tunnelling a WebSocket). A revocation scans the
//! registry and cuts the requests whose identity it names: each holder of the request's
//! [`Cut`] (the response body, the request body, the wait for response headers, the tunnel)
//! sees it at its next poll and is woken now if it waits.
//!
//! The registry is sharded by worker thread, so registering costs one uncontended lock, never a
//! global one; only a revocation visits every shard. Cut signals are recycled within a shard,
//! so a request that ends without being cut costs no allocation.
//!
//! The shard locks are spin locks that yield to the scheduler while taken: a shard is held
//! for a few vector operations (a revocation's scan: one shard at a time), almost never
//! contended, and a spin lock is released with a plain store where `std::sync::Mutex` needs
//! an atomic swap, which is a measurable part of what every request pays here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use spin::mutex::{SpinMutex, SpinMutexGuard};
use spin::relax::Yield;

use crate::auth::Identity;
use crate::body::BoxError;

/// Shards of the registry: enough that worker threads rarely share one.
const SHARDS: usize = 64;
/// Unused cut signals kept per shard for the next requests.
const SPARE_SIGNALS: usize = 256;

/// Who waits on a cut: the response side (header wait, response body, tunnel: one after the
/// other) and the request body, which streams at the same time.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    Response = 0,
    Request = 1,
}

/// One request's cut signal, shared by its registry entry and whatever moves its bytes.
#[derive(Debug, Default)]
struct Signal {
    cut: AtomicBool,
    wakers: [AtomicWaker; 2],
    /// A waker was registered: cleared before the signal is recycled (a plain flag, so a
    /// request that never waited pays no atomic read-modify-write for it).
    waited: AtomicBool,
}

/// A handle on one request's cut signal.
#[derive(Debug, Clone)]
pub struct Cut(Arc<Signal>);

impl Cut {
    pub fn is_cut(&self) -> bool {
        self.0.cut.load(Ordering::Acquire)
    }

    /// `Ready` once cut; otherwise registers the waker of `side` and stays `Pending`.
    pub fn poll_cut(&self, side: Side, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_cut() {
            return Poll::Ready(());
        }
        if !self.0.waited.load(Ordering::Relaxed) {
            self.0.waited.store(true, Ordering::Relaxed);
        }
        self.0.wakers[side as usize].register(cx.waker());
        // Checked again: a cut between the first check and the registration woke no one.
        if self.is_cut() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Resolves when the request is cut.
    pub fn cancelled(self, side: Side) -> Cancelled {
        Cancelled {
            cut: self,
            side,
            _tracked: None,
        }
    }

    fn cut(&self) -> bool {
        if self.0.cut.swap(true, Ordering::AcqRel) {
            return false;
        }
        for waker in &self.0.wakers {
            waker.wake();
        }
        true
    }
}

/// The future of [`Cut::cancelled`] and [`Tracked::cancelled`].
#[derive(Debug)]
pub struct Cancelled {
    cut: Cut,
    side: Side,
    /// Keeps the request registered while something (a tunnel) waits on it.
    _tracked: Option<Tracked>,
}

impl Future for Cancelled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.cut.poll_cut(self.side, cx)
    }
}

/// A registered request: the registry it belongs to (several gateways may share a process),
/// who it runs as, and its signal.
type Entry = (u64, Arc<Identity>, Arc<Signal>);

/// One registry per process: a request's guard then needs no reference to it (no reference
/// count to move per request); each gateway's entries carry its [`InFlight`] id.
static SHARD_TABLE: std::sync::LazyLock<Box<[ShardLock]>> =
    std::sync::LazyLock::new(|| (0..SHARDS).map(|_| ShardLock::default()).collect());

/// A shard behind its lock; contended, a waiter yields its thread between attempts.
type ShardLock = SpinMutex<Shard, Yield>;

#[derive(Debug, Default)]
struct Shard {
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// Signals of requests that ended uncut, reset, for the next registrations.
    spare: Vec<Arc<Signal>>,
}

/// A gateway's view of the registry of requests in flight.
#[derive(Debug)]
pub struct InFlight {
    id: u64,
}

impl Default for InFlight {
    fn default() -> Self {
        Self::new()
    }
}

impl InFlight {
    pub fn new() -> Self {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Registers a request until the returned guard is dropped.
    pub fn register(&self, identity: &Arc<Identity>) -> Tracked {
        let shard = shard_of_this_thread();
        let (slot, signal) = {
            let mut guard = lock(&SHARD_TABLE[shard]);
            let signal = guard.spare.pop().unwrap_or_default();
            let entry = Some((self.id, identity.clone(), signal.clone()));
            let slot = match guard.free.pop() {
                Some(slot) => {
                    guard.slots[slot as usize] = entry;
                    slot
                }
                None => {
                    guard.slots.push(entry);
                    u32::try_from(guard.slots.len() - 1).unwrap_or(u32::MAX)
                }
            };
            (slot, signal)
        };
        Tracked {
            cut: Cut(signal),
            shard,
            slot,
        }
    }

    /// Cuts every registered request whose identity `matches`; returns how many were cut now
    /// (requests cut before are not counted again).
    pub fn cut_matching(&self, matches: impl Fn(&Identity) -> bool) -> usize {
        let mut cut = 0;
        for shard in SHARD_TABLE.iter() {
            let guard = lock(shard);
            for (owner, identity, signal) in guard.slots.iter().flatten() {
                if *owner == self.id && matches(identity) && Cut(signal.clone()).cut() {
                    cut += 1;
                }
            }
        }
        cut
    }

    /// Requests registered now.
    pub fn len(&self) -> usize {
        SHARD_TABLE
            .iter()
            .map(|shard| {
                let guard = lock(shard);
                guard
                    .slots
                    .iter()
                    .flatten()
                    .filter(|(owner, ..)| *owner == self.id)
                    .count()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A request's registration: its [`Cut`], and its entry, removed on drop.
#[derive(Debug)]
pub struct Tracked {
    cut: Cut,
    shard: usize,
    slot: u32,
}

impl Tracked {
    pub fn cut(&self) -> &Cut {
        &self.cut
    }

    /// Resolves when the request is cut, keeping it registered until then or until dropped:
    /// what a WebSocket tunnel, which outlives its HTTP exchange, selects on.
    pub fn cancelled(self) -> Cancelled {
        Cancelled {
            cut: self.cut.clone(),
            side: Side::Response,
            _tracked: Some(self),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut guard = lock(&SHARD_TABLE[self.shard]);
        let Some((_, _, signal)) = guard
            .slots
            .get_mut(self.slot as usize)
            .and_then(Option::take)
        else {
            return;
        };
        guard.free.push(self.slot);
        // Reused only when nothing else holds it (this guard and the entry just taken): a
        // request body may still hold a clone, and a cut signal is never reset.
        if Arc::strong_count(&signal) == 2
            && !signal.cut.load(Ordering::Acquire)
            && guard.spare.len() < SPARE_SIGNALS
        {
            if signal.waited.load(Ordering::Relaxed) {
                for waker in &signal.wakers {
                    drop(waker.take());
                }
                signal.waited.store(false, Ordering::Relaxed);
            }
            guard.spare.push(signal);
        }
    }
}

fn shard_of_this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|shard| *shard)
}

fn lock(shard: &ShardLock) -> SpinMutexGuard<'_, Shard, Yield> {
    // Not poisoned by a panic: every change to a shard is complete before anything in it can
    // panic.
    shard.lock()
}

/// The error a cut body ends with: the server closes the client connection (a client sees its
/// stream end early), and dropping the upstream side closes the upstream connection.
#[derive(Debug, thiserror::Error)]
#[error("the request's credential was revoked")]
pub struct Revoked;

pin_project_lite::pin_project! {
    /// A body that ends with [`Revoked`] once its request is cut, checked before every frame
    /// and woken while it waits. `tracked` (the response side) keeps the registration alive
    /// until the body is done.
    pub struct CutBody<B> {
        #[pin]
        inner: B,
        cut: Cut,
        side: Side,
        tracked: Option<Tracked>,
    }
}

impl<B> CutBody<B> {
    /// The response body: it holds the registration until it ends.
    pub fn response(inner: B, tracked: Tracked) -> Self {
        Self {
            inner,
            cut: tracked.cut.clone(),
            side: Side::Response,
            tracked: Some(tracked),
        }
    }

    /// The request body on its way upstream.
    pub fn request(inner: B, cut: Cut) -> Self {
        Self {
            inner,
            cut,
            side: Side::Request,
            tracked: None,
        }
    }
}

impl<B> Body for CutBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if this.cut.is_cut() {
            return Poll::Ready(Some(Err(Box::new(Revoked))));
        }
        match this.inner.poll_frame(cx) {
            Poll::Pending => match this.cut.poll_cut(*this.side, cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Revoked)))),
                Poll::Pending => Poll::Pending,
            },
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) => {
                // Done: the request no longer runs with the credential.
                this.tracked.take();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A future (the wait for the upstream's response headers) that gives up once its request
    /// is cut.
    pub struct CutFuture<'c, F> {
        #[pin]
        inner: F,
        cut: &'c Cut,
    }
}

impl<'c, F> CutFuture<'c, F> {
    pub fn new(inner: F, cut: &'c Cut) -> Self {
        Self { inner, cut }
    }
}

impl<F: Future> Future for CutFuture<'_, F> {
    /// `None` when cut.
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.cut.is_cut() {
            return Poll::Ready(None);
        }
        match this.inner.poll(cx) {
            Poll::Ready(output) => Poll::Ready(Some(output)),
            Poll::Pending => match this.cut.poll_cut(Side::Response, cx) {
                Poll::Ready(()) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthMethod, IdentityFields};
    use http_body_util::BodyExt;

    fn identity(key_id: &str) -> Arc<Identity> {
        Arc::new(Identity::new(
            AuthMethod::ApiKey,
            &IdentityFields {
                subject: key_id,
                key_id: Some(key_id),
                ..IdentityFields::default()
            },
        ))
    }

    #[test]
    fn registrations_come_and_go_and_slots_are_reused() {
        let inflight = InFlight::new();
        let a = inflight.register(&identity("a"));
        let b = inflight.register(&identity("b"));
        assert_eq!(inflight.len(), 2);
        let (a_shard, a_slot) = (a.shard, a.slot);
        drop(a);
        assert_eq!(inflight.len(), 1);
        let c = inflight.register(&identity("c"));
        assert_eq!(
            (c.shard, c.slot),
            (a_shard, a_slot),
            "a freed slot is reused"
        );
        assert_eq!(inflight.len(), 2);
        // Another gateway's registry in the same process sees none of them.
        assert!(InFlight::new().is_empty());
        drop((b, c));
        assert!(inflight.is_empty());
    }

    #[test]
    fn a_cut_reaches_matching_requests_once() {
        let inflight = InFlight::new();
        let a1 = inflight.register(&identity("a"));
        let a2 = inflight.register(&identity("a"));
        let b = inflight.register(&identity("b"));
        let matches_a = |identity: &Identity| identity.key_id() == Some("a");
        assert_eq!(inflight.cut_matching(matches_a), 2);
        assert!(a1.cut().is_cut() && a2.cut().is_cut());
        assert!(!b.cut().is_cut());
        assert_eq!(inflight.cut_matching(matches_a), 0, "counted once");
    }

    #[tokio::test]
    async fn a_waiting_body_is_woken_and_ends_with_an_error() {
        let inflight = InFlight::new();
        let tracked = inflight.register(&identity("a"));
        let mut body = CutBody::response(OneFrameThenSilence(false), tracked);
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "first");
        let waiting = tokio::spawn(async move { body.frame().await });
        tokio::task::yield_now().await;
        assert_eq!(inflight.cut_matching(|_| true), 1);
        let ended = waiting.await.unwrap().unwrap();
        assert!(ended.unwrap_err().is::<Revoked>());
        assert!(
            inflight.is_empty(),
            "dropping the body released the registration"
        );
    }

    #[tokio::test]
    async fn a_waiting_upload_is_woken_and_ends_while_the_registration_stays() {
        let inflight = InFlight::new();
        let tracked = inflight.register(&identity("a"));
        let mut upload = CutBody::request(OneFrameThenSilence(false), tracked.cut().clone());
        assert_eq!(
            upload.frame().await.unwrap().unwrap().into_data().unwrap(),
            "first"
        );
        let waiting = tokio::spawn(async move { upload.frame().await });
        tokio::task::yield_now().await;
        assert_eq!(inflight.cut_matching(|_| true), 1);
        assert!(waiting.await.unwrap().unwrap().unwrap_err().is::<Revoked>());
        // The request body holds no registration: the response side (here `tracked`) does.
        assert_eq!(inflight.len(), 1);
        drop(tracked);
        assert!(inflight.is_empty());
    }

    /// An upstream that sends one frame and then nothing, never waking its reader.
    struct OneFrameThenSilence(bool);

    impl Body for OneFrameThenSilence {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if self.0 {
                return Poll::Pending;
            }
            self.0 = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first")))))
        }
    }

    #[tokio::test]
    async fn a_cut_ends_the_wait_for_headers_and_a_tunnel_task() {
        let inflight = InFlight::new();
        let tracked = inflight.register(&identity("a"));
        let cut = tracked.cut().clone();
        let wait =
            tokio::spawn(async move { CutFuture::new(std::future::pending::<()>(), &cut).await });
        tokio::task::yield_now().await;
        assert_eq!(inflight.cut_matching(|_| true), 1);
        assert_eq!(wait.await.unwrap(), None);

        // A tunnel holds the registration for as long as it runs.
        let tunnel = tokio::spawn(inflight.register(&identity("b")).cancelled());
        tokio::task::yield_now().await;
        assert_eq!(inflight.len(), 2);
        assert_eq!(inflight.cut_matching(|id| id.key_id() == Some("b")), 1);
        tunnel.await.unwrap();
        drop(tracked);
        assert!(inflight.is_empty());
    }
}
