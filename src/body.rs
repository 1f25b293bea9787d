//! Body types: the boxed body used both ways, a size-limited request body, a request body that
//! can be taken back after a failed connect, and a response body that reports when it ends.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Error type carried by every body authgate moves.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The one body type used for requests to upstreams and responses to clients.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A complete in-memory body (error responses, admin answers).
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON answer authgate gives itself (errors, the admin API, the key service).
pub fn json_response(
    status: http::StatusCode,
    body: &serde_json::Value,
) -> http::Response<ProxyBody> {
    let mut response = http::Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Boxes any body whose error converts into `BoxError`.
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// Raised by [`LimitedBody`] when a streamed request body passes `max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the route's max_body_bytes")]
pub struct BodyTooLarge;

pin_project_lite::pin_project! {
    /// Streams a request body and fails it once more than `remaining` bytes went through.
    /// Used for chunked bodies whose size is not known up front (a declared Content-Length
    /// over the limit is refused before anything is forwarded).
    #[derive(Debug)]
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        remaining: u64,
    }
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: u64) -> Self {
        Self {
            inner,
            remaining: limit,
        }
    }
}

impl<B> Body for LimitedBody<B>
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
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > *this.remaining {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    *this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
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
    /// Counts the bytes of a request body as they stream through (for `bytes_in`).
    #[derive(Debug)]
    pub struct CountingBody<B> {
        #[pin]
        inner: B,
        counter: Option<Arc<AtomicU64>>,
    }
}

impl<B> CountingBody<B> {
    pub fn new(inner: B, counter: Option<Arc<AtomicU64>>) -> Self {
        Self { inner, counter }
    }
}

impl<B> Body for CountingBody<B>
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
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(counter)) = (frame.data_ref(), this.counter.as_ref()) {
                    counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
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
    /// A request body without its trailers (the pipeline's strip step): header rules
    /// (identity stripping, hop-by-hop) cannot vouch for them, and an HTTP/2 upstream would
    /// receive them as headers such as `x-auth-tenant-id`.
    #[derive(Debug)]
    pub struct DropTrailers<B> {
        #[pin]
        inner: B,
    }
}

impl<B> DropTrailers<B> {
    pub fn new(inner: B) -> Self {
        Self { inner }
    }
}

impl<B> Body for DropTrailers<B>
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
        let mut this = self.project();
        loop {
            return match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => continue,
                Poll::Ready(Some(result)) => Poll::Ready(Some(result.map_err(Into::into))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that stays reclaimable until the upstream client first polls it.
///
/// hyper's client consumes the request even when the connection attempt fails, which would
/// lose the body of a request we want to send to the next upstream. The client only polls
/// the body after it has a connection, so a body that was never polled can be taken back
/// with [`ReclaimableBody::reclaim`] and sent elsewhere, byte for byte.
#[derive(Debug)]
pub struct ReclaimableBody {
    slot: Arc<Mutex<Option<ProxyBody>>>,
    taken: Option<ProxyBody>,
    hint: SizeHint,
    end_stream: bool,
}

/// The handle that gives back a [`ReclaimableBody`]'s body if it was never polled.
#[derive(Debug, Clone)]
pub struct BodyReclaimer {
    slot: Arc<Mutex<Option<ProxyBody>>>,
    hint: SizeHint,
    end_stream: bool,
}

impl ReclaimableBody {
    pub fn new(body: ProxyBody) -> (Self, BodyReclaimer) {
        let hint = body.size_hint();
        let end_stream = body.is_end_stream();
        let slot = Arc::new(Mutex::new(Some(body)));
        (
            Self {
                slot: slot.clone(),
                taken: None,
                hint,
                end_stream,
            },
            BodyReclaimer {
                slot,
                hint,
                end_stream,
            },
        )
    }
}

impl BodyReclaimer {
    /// The body, if the client never started sending it.
    pub fn reclaim(&self) -> Option<ProxyBody> {
        self.slot.lock().ok().and_then(|mut slot| slot.take())
    }

    /// A new reclaimable body over the same slot, for the next attempt, if the body was
    /// never started: this reclaimer keeps working for every later attempt.
    pub fn retry(&self) -> Option<ReclaimableBody> {
        let unsent = self.slot.lock().ok().is_some_and(|slot| slot.is_some());
        unsent.then(|| ReclaimableBody {
            slot: self.slot.clone(),
            taken: None,
            hint: self.hint,
            end_stream: self.end_stream,
        })
    }
}

impl Body for ReclaimableBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.taken.is_none() {
            let body = self.slot.lock().ok().and_then(|mut slot| slot.take());
            match body {
                Some(body) => self.taken = Some(body),
                None => return Poll::Ready(None),
            }
        }
        match self.taken.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.taken {
            Some(body) => body.is_end_stream(),
            None => self.end_stream,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.taken {
            Some(body) => body.size_hint(),
            None => self.hint,
        }
    }
}

/// Called once when a response body has been fully sent, failed, or was dropped by the
/// client: the access log and duration metrics are written there, so a streamed response is
/// logged with its real duration and size.
pub trait BodyCompletion: Send + Sync + 'static {
    fn complete(&mut self, bytes_sent: u64, outcome: BodyOutcome);
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyOutcome {
    Finished,
    Failed,
    Dropped,
}

pin_project_lite::pin_project! {
    /// Wraps a response body, counts the bytes it sends and runs a [`BodyCompletion`] once.
    pub struct ObservedBody<C: BodyCompletion> {
        #[pin]
        inner: ProxyBody,
        bytes: u64,
        completion: Option<C>,
    }

    impl<C: BodyCompletion> PinnedDrop for ObservedBody<C> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(mut completion) = this.completion.take() {
                completion.complete(*this.bytes, BodyOutcome::Dropped);
            }
        }
    }
}

impl<C: BodyCompletion> std::fmt::Debug for ObservedBody<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedBody")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl<C: BodyCompletion> ObservedBody<C> {
    pub fn new(inner: ProxyBody, completion: C) -> Self {
        let mut body = Self {
            inner,
            bytes: 0,
            completion: Some(completion),
        };
        // A body that is already complete (an empty error body) never gets polled to the end
        // by hyper, so finish it now.
        if body.inner.is_end_stream()
            && let Some(mut completion) = body.completion.take()
        {
            completion.complete(0, BodyOutcome::Finished);
        }
        body
    }
}

impl<C: BodyCompletion> Body for ObservedBody<C> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut completion) = this.completion.take() {
                    completion.complete(*this.bytes, BodyOutcome::Failed);
                }
            }
            Poll::Ready(None) => {
                if let Some(mut completion) = this.completion.take() {
                    completion.complete(*this.bytes, BodyOutcome::Finished);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limited_body_fails_past_the_limit() {
        let body = LimitedBody::new(Full::new(Bytes::from_static(b"0123456789")), 9);
        assert!(body.collect().await.is_err());
        let body = LimitedBody::new(Full::new(Bytes::from_static(b"0123456789")), 10);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 10);
    }

    #[tokio::test]
    async fn request_trailers_are_dropped_and_data_is_counted() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-auth-tenant-id", http::HeaderValue::from_static("evil"));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::trailers(trailers)),
        ];
        let counter = Arc::new(AtomicU64::new(0));
        // As the pipeline stacks them: counted as received, trailers dropped by the strip step.
        let body = DropTrailers::new(CountingBody::new(
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)),
            Some(counter.clone()),
        ));
        let collected = body.collect().await.unwrap();
        assert!(
            collected.trailers().is_none(),
            "client trailers must not pass"
        );
        assert_eq!(collected.to_bytes(), "hello");
        assert_eq!(counter.load(Ordering::Relaxed), 5);
    }

    #[tokio::test]
    async fn reclaimable_body_comes_back_only_if_never_polled() {
        let (body, reclaimer) = ReclaimableBody::new(full("abc"));
        drop(body);
        let back = reclaimer.reclaim().unwrap();
        assert_eq!(back.collect().await.unwrap().to_bytes(), "abc");

        let (body, reclaimer) = ReclaimableBody::new(full("abc"));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");
        assert!(reclaimer.reclaim().is_none());

        // Several failed attempts in a row: each retry hands out the untouched body again.
        let (body, reclaimer) = ReclaimableBody::new(full("abc"));
        drop(body);
        drop(reclaimer.retry().unwrap());
        let third = reclaimer.retry().unwrap();
        assert_eq!(third.collect().await.unwrap().to_bytes(), "abc");
        assert!(reclaimer.retry().is_none());
    }

    struct Record(Arc<Mutex<Vec<(u64, BodyOutcome)>>>);
    impl BodyCompletion for Record {
        fn complete(&mut self, bytes: u64, outcome: BodyOutcome) {
            self.0.lock().unwrap().push((bytes, outcome));
        }
    }

    #[tokio::test]
    async fn observed_body_reports_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let body = ObservedBody::new(full("hello"), Record(seen.clone()));
        let _ = body.collect().await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![(5, BodyOutcome::Finished)]);

        let seen = Arc::new(Mutex::new(Vec::new()));
        drop(ObservedBody::new(full("hello"), Record(seen.clone())));
        assert_eq!(*seen.lock().unwrap(), vec![(0, BodyOutcome::Dropped)]);
    }
}
