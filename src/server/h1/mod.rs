//! authgate's own HTTP/1.1 server connection: request heads parsed by
//! [`crate::http1::request`], the [`Handler`] (the gateway's pipeline) run on the
//! connection's task, responses written with their framing.
//!
//! Here: the connection loop and its timers. Beside it: `body` (request bodies read on
//! demand, `Expect: 100-continue`, lingering close), `write` (responses on the wire),
//! `upgrade` (the WebSocket hand-off), and `tests` (the loop over an in-memory pipe, on
//! paused time, with a scripted handler).
//!
//! Why not hyper's server here: per keep-alive request its dispatcher, body channel and
//! encoder cost about a third of all the instructions a proxied request takes. This loop does
//! the same protocol work directly: one read for a small head, zero-copy header values sliced
//! from the read buffer, and the response head coalesced with the first body bytes into one
//! write. HTTP/2 (ALPN, or prior knowledge in clear) still goes to hyper.
//!
//! Protocol rules kept here, in one place:
//! - framing (RFC 9112 §6) is the head parser's: what it refuses never reaches the handler;
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
//! Timeouts: the connection task owns one timer for its whole life. Waiting for a head only
//! ever moves it earlier; a timer that fires before the real deadline is re-armed then (at
//! most once per timeout period), so a busy keep-alive connection does no timer work per
//! request. A response that waits for its upstream's next bytes (a stream) parks it far
//! ahead once, so a long stream is not woken by a head timeout that cannot apply to it.

mod body;
#[cfg(test)]
mod tests;
mod write;

use crate::connection::{ClientUpgrade, Upgraded};

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use http::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, Sleep};

use crate::body::{boxed, empty};
use crate::error::GatewayError;
use crate::http1::request::{RequestHead, RequestHeadError, RequestLimits, parse_request_head};
use crate::http1::response::ResponseContext;
use crate::pipeline::{Answer, ConnInfo};

use super::Handler;

use body::{ContinueGate, RequestBody, linger, run_with_continue};
use write::{ResponseTo, Waiting, write_allowed, write_error, write_refusal, write_response};

/// Limits and timeouts of one connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    /// What a request head is held to (size, `_` in field names).
    pub(super) limits: RequestLimits,
    pub(super) header_timeout: Duration,
    pub(super) idle_timeout: Duration,
}

/// Serves HTTP/1.1 requests on one connection with `handler` until it closes, times out, is
/// upgraded or the handler drains. `buf` holds bytes already read from the connection.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve<R, W, H>(
    rd: R,
    mut wr: W,
    mut buf: BytesMut,
    conn: Arc<ConnInfo>,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
    settings: Settings,
) where
    R: AsyncRead + Unpin + Send + Sync + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
    H: Handler,
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
                    NoHead::Refused(RequestHeadError::TooLarge) => GatewayError::HeadersTooLarge,
                    NoHead::Refused(RequestHeadError::Invalid(reason)) => {
                        GatewayError::BadRequest(reason)
                    }
                    NoHead::Io(error) => {
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
            request.extensions_mut().insert(ClientUpgrade::new(rx));
        }

        // 3. The handler, answering `Expect: 100-continue` when the body is first read.
        let handling = pin!(handler.answer(&conn, request));
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
        if handler.is_draining() || unread_body {
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
                let waiting = Waiting::new(&mut buf, timer.as_mut());
                write_response(
                    &mut wr,
                    &mut out,
                    response,
                    response_to,
                    &mut keep_alive,
                    waiting,
                )
                .await
            }
            Answer::Error(answer) => {
                write_error(&mut wr, &mut out, answer, context, &mut keep_alive).await
            }
            Answer::Allowed(answer) => {
                write_allowed(&mut wr, &mut out, answer, context, &mut keep_alive).await
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
                let _ = tx.send(Upgraded::new(
                    buf.split().freeze(),
                    Box::new(reader),
                    Box::new(wr),
                ));
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

/// Why no request head came: a refusal to answer, or the connection failed.
#[derive(Debug)]
enum NoHead {
    Refused(RequestHeadError),
    Io(io::Error),
}

impl From<RequestHeadError> for NoHead {
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
) -> Result<Option<RequestHead>, NoHead> {
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
            Event::Read(Ok(0)) => return Err(NoHead::Io(io::ErrorKind::UnexpectedEof.into())),
            Event::Read(Ok(_)) => {}
            Event::Read(Err(error)) => return Err(NoHead::Io(error)),
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
