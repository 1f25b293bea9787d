//! authgate's own HTTP/1.1 server connection: request heads parsed with `httparse`, the
//! pipeline run on the connection's task, responses written with their framing.
//!
//! Why not hyper's server here: per keep-alive request its dispatcher, body channel and
//! encoder cost about a third of all the instructions a proxied request takes. This loop does
//! the same protocol work directly: one read for a small head, zero-copy header values sliced
//! from the read buffer, and the response head coalesced with the first body bytes into one
//! write. HTTP/2 (ALPN, or prior knowledge in clear) still goes to hyper.
//!
//! Protocol rules kept here, in one place:
//! - framing (RFC 9112 §6): Transfer-Encoding must end in `chunked` and is refused in
//!   HTTP/1.0; Content-Length must be digits, equal when repeated; both together are flagged
//!   for the pipeline, which refuses the request (smuggling guard) and closes the connection;
//! - heads over the buffer limit get 431, unparsable ones 400, both as JSON and with the
//!   connection closed;
//! - keep-alive: HTTP/1.1 unless `Connection: close`, HTTP/1.0 only with `keep-alive`;
//!   a request body that was not read to its end closes the connection after the response;
//! - `Expect: 100-continue`: the interim response is written when the body is first read,
//!   so a request refused before forwarding never makes the client send its body;
//! - trailers reach the client only on a chunked response to a request with `TE: trailers`;
//! - a WebSocket upgrade hands the raw connection (and any bytes already read) to the tunnel
//!   once the 101 is written.
//!
//! Timeouts: the connection task owns one timer for its whole life. It is only ever moved
//! earlier; a timer that fires before the real deadline is re-armed then (at most once per
//! timeout period), so a busy keep-alive connection does no timer work per request.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, Sleep};

use crate::body::{BoxError, ProxyBody, boxed, empty};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::http1::fields::{has_token, parse_digits};
use crate::http1::request::{RequestHead, RequestHeadError, RequestLimits, parse_request_head};
use crate::http1::response::{BodyFraming, ResponseContext, frame_response};
use crate::http1::{BodyDecoder, encode_chunk_header, encode_last_chunk};
use crate::pipeline::{self, Answer, ConnInfo, ErrorAnswer};

/// Bytes read per call while a request body streams.
const BODY_READ_CHUNK: usize = 64 * 1024;
/// Body frames up to this size are copied next to the head (or the chunk header) so that
/// both leave in one write; larger ones are written from their own buffer.
const COALESCE_LIMIT: usize = 16 * 1024;

/// Limits and timeouts of one connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    /// What a request head is held to (size, `_` in field names).
    pub(super) limits: RequestLimits,
    pub(super) header_timeout: Duration,
    pub(super) idle_timeout: Duration,
}

/// Serves HTTP/1.1 requests on one connection until it closes, times out, is upgraded or the
/// gateway drains. `buf` holds bytes already read from the connection.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve<R, W>(
    rd: R,
    mut wr: W,
    mut buf: BytesMut,
    conn: Arc<ConnInfo>,
    gateway: Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
    settings: Settings,
) where
    R: AsyncRead + Unpin + Send + Sync + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut rd = Some(rd);
    let mut out = BytesMut::with_capacity(4096);
    let connected = Instant::now();
    let timer =
        tokio::time::sleep_until(connected + settings.header_timeout.min(settings.idle_timeout));
    let mut timer = pin!(timer);
    let seen = *shutdown.borrow_and_update();
    let mut shutdown_state = ShutdownState {
        seen,
        probe: shutdown.clone(),
        registered: false,
    };
    // Unconstrained: with the task's cooperative budget spent (after a pipelined burst),
    // `changed()` would return Pending without registering, and `ShutdownState` only
    // polls it again once the signal has come; the signal would then wake nothing.
    let shutdown_changed = tokio::task::unconstrained(shutdown.changed());
    let mut shutdown_changed = pin!(shutdown_changed);
    // When the current wait for a head started counting (see `wait_deadline`).
    let mut idle_since = connected;
    let mut first_request = true;

    loop {
        let Some(reader) = rd.as_mut() else { return };
        // 1. The next head.
        let wait = HeadWait {
            settings,
            first_request,
            idle_since,
        };
        let head = read_head(
            reader,
            &mut buf,
            wait,
            timer.as_mut(),
            shutdown_changed.as_mut(),
            &mut shutdown_state,
        )
        .await;
        let head = match head {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(refusal) => {
                let error = match refusal {
                    HeadError::Refused(RequestHeadError::TooLarge) => GatewayError::HeadersTooLarge,
                    HeadError::Refused(RequestHeadError::Invalid(reason)) => {
                        GatewayError::BadRequest(reason)
                    }
                    HeadError::Io(error) => {
                        tracing::debug!(%error, "Connection ended while reading a request head.");
                        return;
                    }
                };
                let _ = write_refusal(&mut wr, &mut out, error).await;
                return;
            }
        };
        first_request = false;

        // 2. The request, with a body that reads from this connection when it has one.
        let RequestHead {
            method,
            uri,
            version: request_version,
            headers,
            mut keep_alive,
            body,
            expect_continue,
            wants_upgrade,
            trailers_allowed,
        } = head;
        let method_is_head = method == Method::HEAD;
        let mut request = Request::new(empty());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = request_version;
        *request.headers_mut() = headers;
        let mut body_return = None;
        let mut gate = None;
        if let Some(decoder) = body {
            let (tx, rx) = oneshot::channel();
            body_return = Some(rx);
            let continue_gate = expect_continue.then(|| Arc::new(ContinueGate::default()));
            gate.clone_from(&continue_gate);
            let Some(reader) = rd.take() else { return };
            *request.body_mut() = boxed(RequestBody {
                reader: Some(reader),
                buf: std::mem::take(&mut buf),
                decoder,
                give_back: Some(tx),
                gate: continue_gate,
            });
        }
        let mut upgrade_tx = None;
        if wants_upgrade {
            let (tx, rx) = oneshot::channel();
            upgrade_tx = Some(tx);
            let slot = Arc::new(std::sync::Mutex::new(rx));
            request.extensions_mut().insert(ClientUpgrade(slot));
        }

        // 3. The pipeline, answering `Expect: 100-continue` when the body is first read.
        let handling = pin!(pipeline::answer(gateway.clone(), conn.clone(), request));
        let answer = match gate {
            None => handling.await,
            Some(gate) => match run_with_continue(handling, &gate, &mut wr).await {
                Ok(answer) => answer,
                Err(_) => return,
            },
        };

        // 4. The response. A request body that is not back, or not read to its end, means
        //    the next head would start in its middle: the response announces the close.
        let mut unread_body = false;
        if let Some(mut rx) = body_return {
            match rx.try_recv() {
                Ok(returned) => {
                    rd = Some(returned.reader);
                    buf = returned.rest;
                    unread_body = !returned.finished;
                }
                Err(_) => unread_body = true,
            }
        }
        if gateway.is_draining() || unread_body {
            keep_alive = false;
        }
        let mut context = ResponseContext {
            method_is_head,
            request_version,
            upgrading: false,
        };
        let written = match answer {
            Answer::Response(response) => {
                context.upgrading =
                    response.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade_tx.is_some();
                let response_to = ResponseTo {
                    context,
                    trailers_allowed,
                };
                write_response(&mut wr, &mut out, response, response_to, &mut keep_alive).await
            }
            Answer::Error(answer) => {
                write_error(&mut wr, &mut out, answer, context, &mut keep_alive).await
            }
        };
        let upgrading = context.upgrading;
        if let Err(error) = written {
            tracing::debug!(%error, "Connection ended while writing a response.");
            return;
        }

        // 5. Upgrade, close, or go on with the next request.
        if upgrading {
            if let (Some(tx), Some(reader)) = (upgrade_tx, rd.take()) {
                let _ = tx.send(Upgraded {
                    pre: buf.split().freeze(),
                    reader: Box::new(reader),
                    writer: Box::new(wr),
                });
            }
            return;
        }
        if !keep_alive {
            let _ = wr.shutdown().await;
            if unread_body && let Some(reader) = rd.take() {
                linger(reader).await;
            }
            return;
        }
        idle_since = Instant::now();
    }
}

/// How long, and how many bytes, a closing connection keeps reading a body it did not want.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// Reads and discards what the client still sends after a response that closed the
/// connection with its request body unread (nginx's lingering close): closing with unread
/// bytes makes the kernel reset the connection, which can destroy the response before the
/// client has read it. Bounded in time and bytes.
async fn linger<R: AsyncRead + Unpin>(mut reader: R) {
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

/// Why no request head came: a refusal to answer, or the connection failed.
#[derive(Debug)]
enum HeadError {
    Refused(RequestHeadError),
    Io(io::Error),
}

impl From<RequestHeadError> for HeadError {
    fn from(error: RequestHeadError) -> Self {
        Self::Refused(error)
    }
}

/// What the wait for the next head is held to.
#[derive(Clone, Copy)]
struct HeadWait {
    settings: Settings,
    first_request: bool,
    idle_since: Instant,
}

impl HeadWait {
    /// With nothing of the head read yet: a new connection has header_read_timeout to start
    /// its first request, a kept-alive one idle_timeout to start the next. Once part of a
    /// head is in, it has header_read_timeout from then.
    fn deadline(&self, head_started: Option<Instant>) -> Instant {
        match head_started {
            Some(started) => started + self.settings.header_timeout,
            None if self.first_request => self.idle_since + self.settings.header_timeout,
            None => self.idle_since + self.settings.idle_timeout,
        }
    }
}

/// Reads until `buf` holds a whole head and parses it. `Ok(None)`: the connection closed
/// cleanly, timed out, or the gateway is draining, between requests.
async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    wait: HeadWait,
    mut timer: Pin<&mut Sleep>,
    mut shutdown: Pin<&mut impl Future<Output = Result<(), watch::error::RecvError>>>,
    shutdown_state: &mut ShutdownState,
) -> Result<Option<RequestHead>, HeadError> {
    let mut head_started = None;
    loop {
        if !buf.is_empty() {
            if let Some(head) = parse_request_head(buf, &wait.settings.limits)? {
                return Ok(Some(head));
            }
            head_started.get_or_insert_with(Instant::now);
        } else if shutdown_state.seen {
            return Ok(None);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let deadline = wait.deadline(head_started);
        // Never armed later than the deadline: a head that starts on a kept-alive
        // connection is held to header_read_timeout, not to the idle deadline.
        if deadline < timer.deadline() {
            timer.as_mut().reset(deadline);
        }
        let read = reader.read_buf(buf);
        let mut read = pin!(read);
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = read.as_mut().poll(cx) {
                return Poll::Ready(Event::Read(result));
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
            if shutdown_state.should_poll() && shutdown.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Shutdown);
            }
            shutdown_state.registered = true;
            Poll::Pending
        })
        .await;
        match event {
            Event::Read(Ok(0)) if buf.is_empty() => return Ok(None),
            Event::Read(Ok(0)) => return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Event::Read(Ok(_)) => {}
            Event::Read(Err(error)) => return Err(HeadError::Io(error)),
            Event::Timer => {
                let now = Instant::now();
                if now >= deadline {
                    if buf.is_empty() {
                        tracing::debug!("Connection idle; closing it.");
                    } else {
                        tracing::debug!(
                            "Request headers not received in time; closing the connection."
                        );
                    }
                    return Ok(None);
                }
                timer.as_mut().reset(deadline);
            }
            // Between requests the connection closes now; a head in progress is finished
            // and answered with `Connection: close`.
            Event::Shutdown => shutdown_state.seen = true,
        }
    }
}

/// How a connection watches the gateway's shutdown signal while it waits for a head.
struct ShutdownState {
    /// The signal came: close between requests.
    seen: bool,
    /// A second receiver, only read: `has_changed` is one atomic load.
    probe: watch::Receiver<bool>,
    /// The pinned `changed()` future was polled once. Its registration (with this task's
    /// waker, which never changes) stays until the signal comes, so later waits poll it
    /// again only once `probe` says the signal came: polling it takes the channel's lock,
    /// on every request otherwise.
    registered: bool,
}

impl ShutdownState {
    fn should_poll(&self) -> bool {
        !self.seen && (!self.registered || self.probe.has_changed().unwrap_or(true))
    }
}

enum Event {
    Read(io::Result<usize>),
    Timer,
    Shutdown,
}

/// A request body read from the connection on demand. Once read to its end it hands the
/// reader (and any bytes after the body) back to the connection for the next request;
/// dropped before that, the connection closes after the response.
struct RequestBody<R> {
    reader: Option<R>,
    buf: BytesMut,
    decoder: BodyDecoder,
    give_back: Option<oneshot::Sender<Returned<R>>>,
    gate: Option<Arc<ContinueGate>>,
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
struct Returned<R> {
    reader: R,
    rest: BytesMut,
    finished: bool,
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
struct ContinueGate {
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
async fn run_with_continue<F, W>(
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

/// The client side of a WebSocket upgrade: resolves to the raw connection once the 101 has
/// been written. Placed in the request's extensions by the HTTP/1.1 server (extensions must
/// be `Clone`, hence the shared slot; only one clone ever gets the connection).
#[derive(Debug, Clone)]
pub struct ClientUpgrade(Arc<std::sync::Mutex<oneshot::Receiver<Upgraded>>>);

impl Future for ClientUpgrade {
    type Output = io::Result<Upgraded>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut receiver = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Pin::new(&mut *receiver).poll(cx).map(|result| {
            result.map_err(|_| io::Error::other("the client connection was not upgraded"))
        })
    }
}

/// An upgraded client connection: bytes the server had already read, then the socket.
pub struct Upgraded {
    pre: Bytes,
    reader: Box<dyn AsyncRead + Unpin + Send>,
    writer: Box<dyn AsyncWrite + Unpin + Send>,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("buffered", &self.pre.len())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}

/// What the request decides about its response: framing, and whether trailers may follow.
#[derive(Clone, Copy)]
struct ResponseTo {
    context: ResponseContext,
    trailers_allowed: bool,
}

/// Writes a head and, unless the request was HEAD or the status has none, the body.
/// `keep_alive` comes back false when the connection cannot carry another request.
async fn write_response<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut BytesMut,
    response: Response<ProxyBody>,
    request: ResponseTo,
    keep_alive: &mut bool,
) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let status = parts.status;
    out.clear();
    write_status_line(out, status);
    // One pass over the headers: what the connection must know is noted on the way.
    let mut declared = None;
    let mut has_date = false;
    for (name, value) in &parts.headers {
        // Framing and connection fields are this connection's to set (`frame_response`).
        if name == CONNECTION {
            if has_token(value.as_bytes(), b"close") {
                *keep_alive = false;
            }
            continue;
        }
        if name == TRANSFER_ENCODING {
            continue;
        }
        if name == CONTENT_LENGTH {
            // The first valid one is the upstream's length; none is repeated as it came.
            if declared.is_none() {
                declared = parse_digits(value.as_bytes());
            }
            continue;
        }
        has_date |= name == DATE;
        write_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let framing = frame_response(&request.context, status, declared, body.size_hint().exact());
    if let Some(length) = framing.content_length {
        write_content_length(out, length);
    }
    if framing.body == BodyFraming::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if framing.closes() {
        *keep_alive = false;
    }
    let framing = framing.body;
    finish_head(out, request.context, *keep_alive, !has_date);
    drop(parts);

    if matches!(framing, BodyFraming::None) {
        // HEAD, 1xx, 204, 304: no body is sent (hyper drops it unread too).
        drop(body);
        return write_out(wr, out).await;
    }
    let mut body = pin!(body);
    let mut sent: u64 = 0;
    loop {
        // A frame that is ready now joins what is buffered; otherwise the buffer goes out
        // before waiting, so a stream (SSE) reaches the client event by event.
        let ready = std::future::poll_fn(|cx| {
            Poll::Ready(match body.as_mut().poll_frame(cx) {
                Poll::Ready(frame) => Some(frame),
                Poll::Pending => None,
            })
        })
        .await;
        let frame = match ready {
            Some(frame) => frame,
            None => {
                write_out(wr, out).await?;
                std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        // Coalescing stops at a bound: a fast upstream must not fill this buffer faster
        // than the client reads it.
        if out.len() >= COALESCE_LIMIT {
            write_out(wr, out).await?;
        }
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                // The response cannot be completed: the client must see it cut short.
                *keep_alive = false;
                write_out(wr, out).await?;
                return Err(io::Error::other(error));
            }
            None => {
                let trailers_allowed = request.trailers_allowed;
                return finish_body(wr, out, &framing, sent, None, trailers_allowed, keep_alive)
                    .await;
            }
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                let Ok(trailers) = frame.into_trailers() else {
                    continue;
                };
                let trailers_allowed = request.trailers_allowed;
                return finish_body(
                    wr,
                    out,
                    &framing,
                    sent,
                    Some(&trailers),
                    trailers_allowed,
                    keep_alive,
                )
                .await;
            }
        };
        if data.is_empty() {
            continue;
        }
        if let BodyFraming::Length(length) = framing {
            let room = length - sent;
            if data.len() as u64 > room {
                // More than announced: send what was announced, then close.
                data.truncate(usize::try_from(room).unwrap_or(usize::MAX));
                *keep_alive = false;
            }
        }
        sent += data.len() as u64;
        let chunked = matches!(framing, BodyFraming::Chunked);
        if chunked {
            encode_chunk_header(data.len(), out);
        }
        if data.len() <= COALESCE_LIMIT {
            out.extend_from_slice(&data);
        } else {
            write_out(wr, out).await?;
            wr.write_all(&data).await?;
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        if matches!(framing, BodyFraming::Length(length) if sent >= length) {
            // Everything announced is out; the body is dropped (as hyper does).
            return finish_body(wr, out, &framing, sent, None, false, keep_alive).await;
        }
    }
}

/// Ends the body: the last chunk (with trailers when the client accepts them), or a check
/// that a length-framed body delivered what it announced.
async fn finish_body<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut BytesMut,
    framing: &BodyFraming,
    sent: u64,
    trailers: Option<&HeaderMap>,
    trailers_allowed: bool,
    keep_alive: &mut bool,
) -> io::Result<()> {
    match framing {
        BodyFraming::Chunked => {
            encode_last_chunk(trailers.filter(|_| trailers_allowed), out);
        }
        BodyFraming::Length(length) if sent < *length => {
            // The body ended short of its Content-Length: the client must not take the
            // next bytes as a response.
            *keep_alive = false;
        }
        BodyFraming::Close => *keep_alive = false,
        BodyFraming::Length(_) | BodyFraming::None => {}
    }
    write_out(wr, out).await
}

async fn write_out<W: AsyncWrite + Unpin>(wr: &mut W, out: &mut BytesMut) -> io::Result<()> {
    if !out.is_empty() {
        wr.write_all(out).await?;
        out.clear();
    }
    wr.flush().await
}

fn write_status_line(out: &mut BytesMut, status: StatusCode) {
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    // A reason must be written: many parsers expect one.
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn write_content_length(out: &mut BytesMut, length: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A refusal written before the pipeline could run (the head itself was unusable); the
/// connection closes after it.
async fn write_refusal<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut BytesMut,
    error: GatewayError,
) -> io::Result<()> {
    let context = ResponseContext {
        method_is_head: false,
        request_version: Version::HTTP_11,
        upgrading: false,
    };
    write_error(wr, out, ErrorAnswer::for_head(error), context, &mut false).await?;
    wr.shutdown().await
}

/// Writes an answer authgate gives itself, head and JSON body in one write, with no header
/// map on the way: the same headers `ErrorAnswer::into_response` puts in a `Response`.
async fn write_error<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut BytesMut,
    answer: ErrorAnswer,
    request: ResponseContext,
    keep_alive: &mut bool,
) -> io::Result<()> {
    if answer.close {
        *keep_alive = false;
    }
    let body = answer.error.json_body(&answer.request_id);
    out.clear();
    write_status_line(out, answer.error.status());
    out.extend_from_slice(b"content-type: application/json\r\n");
    if let Some((name, value)) = answer.error.extra_header() {
        write_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(state) = answer.rate_limit {
        let mut number = itoa::Buffer::new();
        for (name, value) in crate::limits::header_fields(state) {
            write_header(
                out,
                name.as_str().as_bytes(),
                number.format(value).as_bytes(),
            );
        }
    }
    write_header(out, b"x-request-id", answer.request_id.as_bytes());
    write_content_length(out, body.len() as u64);
    finish_head(out, request, *keep_alive, true);
    let sent = if request.method_is_head {
        0
    } else {
        out.extend_from_slice(&body);
        body.len() as u64
    };
    let written = write_out(wr, out).await;
    answer.sent(sent, written.is_ok());
    written
}

fn write_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The last lines of every response head: `date` (unless the upstream sent one) and the
/// connection's fate.
fn finish_head(out: &mut BytesMut, request: ResponseContext, keep_alive: bool, date: bool) {
    if date {
        write_header(out, b"date", &http_date());
    }
    if request.upgrading {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if request.request_version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The `Date` header value, formatted once per second per thread.
fn http_date() -> [u8; 29] {
    use std::cell::Cell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    CACHED.with(|cached| {
        let (at, text) = cached.get();
        if at == second {
            return text;
        }
        let mut text = [0; 29];
        let formatted = httpdate::fmt_http_date(now);
        let bytes = formatted.as_bytes();
        let len = bytes.len().min(29);
        text[..len].copy_from_slice(&bytes[..len]);
        cached.set((second, text));
        text
    })
}
