//! Request bodies read from the connection on demand, the `Expect: 100-continue` gate
//! between a body and its connection, and the lingering close after a body left unread.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::body::BoxError;
use crate::http1::BodyDecoder;

/// Bytes read per call while a request body streams.
const BODY_READ_CHUNK: usize = 64 * 1024;

/// How long, and how many bytes, a closing connection keeps reading a body it did not want.
pub(super) const LINGER_TIME: Duration = Duration::from_secs(2);
pub(super) const LINGER_BYTES: usize = 1024 * 1024;

/// Reads and discards what the client still sends after a response that closed the
/// connection with its request body unread (nginx's lingering close): closing with unread
/// bytes makes the kernel reset the connection, which can destroy the response before the
/// client has read it. Bounded in time and bytes.
pub(super) async fn linger<R: AsyncRead + Unpin>(mut reader: R) {
    let drain = async {
        let mut scratch = vec![0; 16 * 1024];
        let mut total = 0;
        while total < LINGER_BYTES {
            match reader.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// A request body read from the connection on demand. Once read to its end it hands the
/// reader (and any bytes after the body) back to the connection for the next request;
/// dropped before that, the connection closes after the response.
pub(super) struct RequestBody<R> {
    pub(super) reader: Option<R>,
    pub(super) buf: BytesMut,
    pub(super) decoder: BodyDecoder,
    pub(super) give_back: Option<oneshot::Sender<Returned<R>>>,
    pub(super) gate: Option<Arc<ContinueGate>>,
}

/// Why a request body could not be read from the client. The forwarding step answers 400
/// for these (the client's fault), not 502.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("malformed request body")]
    Malformed(#[source] crate::http1::DecodeError),
    #[error("the client ended the request body early")]
    Truncated,
    #[error("reading the request body failed")]
    Read(#[source] io::Error),
}

/// The reader a request body hands back, with what follows the body and whether the body
/// was read to its end.
pub(super) struct Returned<R> {
    pub(super) reader: R,
    pub(super) rest: BytesMut,
    pub(super) finished: bool,
}

impl<R> RequestBody<R> {
    fn give_back(&mut self, finished: bool) {
        if let (Some(reader), Some(tx)) = (self.reader.take(), self.give_back.take()) {
            let rest = std::mem::take(&mut self.buf);
            let _ = tx.send(Returned {
                reader,
                rest,
                finished,
            });
        }
    }

    fn finish(&mut self) {
        self.give_back(true);
    }
}

impl<R> Drop for RequestBody<R> {
    /// Dropped before its end: the reader still goes back, so the connection can drain what
    /// the client keeps sending before closing (see `linger`).
    fn drop(&mut self) {
        self.give_back(false);
    }
}

impl<R: AsyncRead + Unpin + Send + Sync> Body for RequestBody<R> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(gate) = &this.gate {
            if !gate.poll_sent(cx) {
                return Poll::Pending;
            }
            this.gate = None;
        }
        loop {
            match this.decoder.decode(&mut this.buf) {
                Ok(Some(frame)) => {
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) if this.decoder.is_done() => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(error) => {
                    return Poll::Ready(Some(Err(Box::new(ClientBodyError::Malformed(error)))));
                }
            }
            let Some(reader) = this.reader.as_mut() else {
                return Poll::Ready(None);
            };
            this.buf.reserve(BODY_READ_CHUNK);
            let read = pin!(reader.read_buf(&mut this.buf));
            match read.poll(cx) {
                Poll::Ready(Ok(0)) => {
                    let error = match this.decoder.eof() {
                        Ok(()) => ClientBodyError::Truncated,
                        Err(error) => ClientBodyError::Malformed(error),
                    };
                    return Poll::Ready(Some(Err(Box::new(error))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => {
                    return Poll::Ready(Some(Err(Box::new(ClientBodyError::Read(error)))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder.size_hint()
    }
}

/// `Expect: 100-continue` between a request body and its connection: the body asks, the
/// connection writes `100 Continue`, the body goes on. Only requests that expect it have one.
#[derive(Debug, Default)]
pub(super) struct ContinueGate {
    inner: std::sync::Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    asked: bool,
    sent: bool,
    body_waker: Option<Waker>,
    conn_waker: Option<Waker>,
}

impl ContinueGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The body's side: `true` once `100 Continue` is out; asks for it otherwise.
    fn poll_sent(&self, cx: &mut Context<'_>) -> bool {
        let mut state = self.lock();
        if state.sent {
            return true;
        }
        state.asked = true;
        state.body_waker = Some(cx.waker().clone());
        if let Some(waker) = state.conn_waker.take() {
            waker.wake();
        }
        false
    }

    /// The connection's side: whether the body asked (registering to hear when it does).
    fn poll_asked(&self, cx: &mut Context<'_>) -> bool {
        let mut state = self.lock();
        if state.asked && !state.sent {
            return true;
        }
        state.conn_waker = Some(cx.waker().clone());
        false
    }

    fn mark_sent(&self) {
        let mut state = self.lock();
        state.sent = true;
        if let Some(waker) = state.body_waker.take() {
            waker.wake();
        }
    }
}

/// Runs the pipeline future and writes `100 Continue` when its request body first asks.
pub(super) async fn run_with_continue<F, W>(
    mut handling: Pin<&mut F>,
    gate: &ContinueGate,
    wr: &mut W,
) -> io::Result<F::Output>
where
    F: Future,
    W: AsyncWrite + Unpin,
{
    loop {
        let step = std::future::poll_fn(|cx| {
            if let Poll::Ready(response) = handling.as_mut().poll(cx) {
                return Poll::Ready(Some(response));
            }
            if gate.poll_asked(cx) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        match step {
            Some(response) => return Ok(response),
            None => {
                wr.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                wr.flush().await?;
                gate.mark_sent();
            }
        }
    }
}
