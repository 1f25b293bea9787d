//! Responses on the wire: heads with their framing, bodies coalesced or chunked, trailers,
//! authgate's own JSON answers and refusals, and the cached `Date`.

use std::io;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, Response, StatusCode, Version};
use http_body::Body;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use crate::body::ProxyBody;
use crate::error::{FieldValue, GatewayError};
use crate::http1::fields::{has_token, parse_digits};
use crate::http1::response::{BodyFraming, ResponseContext, frame_response};
use crate::http1::{encode_chunk_header, encode_last_chunk};
use crate::pipeline::{AllowedAnswer, ErrorAnswer};

/// Body frames up to this size are copied next to the head (or the chunk header) so that
/// both leave in one write; larger ones are written from their own buffer.
const COALESCE_LIMIT: usize = 16 * 1024;

/// How far a streaming response pushes the connection's head timer: past any stream's life
/// in practice (a stream that outlives it costs one wake-up a day).
const TIMER_PARKED: Duration = Duration::from_secs(24 * 60 * 60);

/// What the connection holds that a response waiting for the upstream's next bytes has no
/// use for: its read buffer (released while empty) and its head timer (parked).
pub(super) struct Waiting<'a> {
    read_buf: &'a mut BytesMut,
    timer: Pin<&'a mut Sleep>,
    timer_parked: bool,
}

impl<'a> Waiting<'a> {
    pub(super) fn new(read_buf: &'a mut BytesMut, timer: Pin<&'a mut Sleep>) -> Self {
        Self {
            read_buf,
            timer,
            timer_parked: false,
        }
    }

    /// A response waiting for its next frame (a stream: SSE, a long completion) keeps no
    /// buffer it does not use: the output buffer was just written out, and the read buffer
    /// holds nothing while no pipelined request follows. Each comes back (allocated as
    /// needed) when next used. Thousands of open streams then cost their state, not 4 + 8 KiB
    /// of idle buffers each.
    ///
    /// The head timer is still armed for the wait before this request and would fire in the
    /// middle of a long stream, waking the task for nothing (one wake-up per stream). It is
    /// parked once per response; the next wait for a head arms it again (`read_head` moves it
    /// earlier). A response whose body is ready with its head never comes here.
    fn release(&mut self, out: &mut BytesMut) {
        if out.is_empty() && out.capacity() > 0 {
            *out = BytesMut::new();
        }
        if self.read_buf.is_empty() && self.read_buf.capacity() > 0 {
            *self.read_buf = BytesMut::new();
        }
        if !self.timer_parked {
            self.timer.as_mut().reset(Instant::now() + TIMER_PARKED);
            self.timer_parked = true;
        }
    }
}

/// What the request decides about its response: framing, and whether trailers may follow.
#[derive(Clone, Copy)]
pub(super) struct ResponseTo {
    pub(super) context: ResponseContext,
    pub(super) trailers_allowed: bool,
}

/// Writes a head and, unless the request was HEAD or the status has none, the body.
/// `keep_alive` comes back false when the connection cannot carry another request.
pub(super) async fn write_response<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut BytesMut,
    response: Response<ProxyBody>,
    request: ResponseTo,
    keep_alive: &mut bool,
    mut waiting: Waiting<'_>,
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
                declared = parse_digits(value.as_bytes()).map(|length| (length, value));
            }
            continue;
        }
        has_date |= name == DATE;
        write_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let declared_length = declared.map(|(length, _)| length);
    let framing = frame_response(
        &request.context,
        status,
        declared_length,
        body.size_hint().exact(),
    );
    match (framing.content_length, declared) {
        // The upstream's own digits when they are what is announced: no reformatting.
        (Some(length), Some((declared, value))) if length == declared => {
            write_header(out, b"content-length", value.as_bytes());
        }
        (Some(length), _) => write_content_length(out, length),
        (None, _) => {}
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
                waiting.release(out);
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
        if data.len() <= COALESCE_LIMIT {
            // One allocation for the frame and its chunk framing when the buffer was released
            // while the stream waited (a no-op otherwise).
            out.reserve(data.len() + CHUNK_FRAMING);
        }
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

/// Most bytes a chunk's framing adds: the size line (16 hex digits at most) and two CRLFs.
const CHUNK_FRAMING: usize = 16 + 4;

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
pub(super) async fn write_refusal<W: AsyncWrite + Unpin>(
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
pub(super) async fn write_error<W: AsyncWrite + Unpin>(
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
    answer.fields(field_writer(out, &mut itoa::Buffer::new()));
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

/// An allowed forward-auth check, written straight into `out`: 200, the identity's fields as
/// they were serialized (valid names and values, no framing or connection field among them),
/// the answer's other fields, an empty body.
pub(super) async fn write_allowed<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut BytesMut,
    answer: AllowedAnswer,
    request: ResponseContext,
    keep_alive: &mut bool,
) -> io::Result<()> {
    if answer.close {
        *keep_alive = false;
    }
    out.clear();
    write_status_line(out, StatusCode::OK);
    out.extend_from_slice(&answer.identity_fields);
    answer.fields(field_writer(out, &mut itoa::Buffer::new()));
    write_content_length(out, 0);
    finish_head(out, request, *keep_alive, true);
    let written = write_out(wr, out).await;
    answer.sent(written.is_ok());
    written
}

/// Writes each field it is given into `out`: the emitter of `ErrorAnswer::fields` and
/// `AllowedAnswer::fields` on HTTP/1.1.
fn field_writer<'o>(
    out: &'o mut BytesMut,
    number: &'o mut itoa::Buffer,
) -> impl FnMut(&http::HeaderName, FieldValue<'_>) + 'o {
    move |name, value| {
        let value = match value {
            FieldValue::Static(text) => text.as_bytes(),
            FieldValue::Value(value) => value.as_bytes(),
            FieldValue::Number(value) => number.format(value).as_bytes(),
        };
        write_header(out, name.as_str().as_bytes(), value);
    }
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

#[cfg(test)]
mod waiting_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_waiting_stream_gives_back_empty_buffers_and_keeps_pipelined_bytes() {
        let mut timer = pin!(tokio::time::sleep(Duration::from_secs(10)));
        let mut out = BytesMut::with_capacity(4096);
        let mut read_buf = BytesMut::with_capacity(8192);
        Waiting::new(&mut read_buf, timer.as_mut()).release(&mut out);
        assert_eq!((out.capacity(), read_buf.capacity()), (0, 0));

        // A request pipelined behind the stream stays where it is, with its allocation.
        let mut read_buf = BytesMut::with_capacity(8192);
        read_buf.extend_from_slice(b"GET /next HTTP/1.1\r\n");
        let mut out = BytesMut::with_capacity(4096);
        Waiting::new(&mut read_buf, timer.as_mut()).release(&mut out);
        assert_eq!(out.capacity(), 0);
        assert_eq!(&read_buf[..], b"GET /next HTTP/1.1\r\n");
        assert!(read_buf.capacity() >= 8192 - 20);
    }

    /// The head timer is parked at the first wait of a response and left alone at the next.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_stream_parks_the_head_timer_once() {
        let mut timer = pin!(tokio::time::sleep(Duration::from_secs(10)));
        let mut read_buf = BytesMut::new();
        let mut out = BytesMut::new();
        let start = Instant::now();
        let mut waiting = Waiting::new(&mut read_buf, timer.as_mut());
        waiting.release(&mut out);
        let parked = waiting.timer.deadline();
        assert_eq!(parked, start + TIMER_PARKED);
        tokio::time::advance(Duration::from_secs(60)).await;
        waiting.release(&mut out);
        assert_eq!(waiting.timer.deadline(), parked, "parked once per response");
    }
}
