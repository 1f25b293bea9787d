//! The HTTP/1.1 path to upstreams, `http://` and `https://` alike, WebSocket handshakes
//! included: a small keep-alive pool of connections per upstream (scheme, authority and
//! trust setting), and our own client codec ([`crate::http1`]) over them, run by the
//! request's task alone. So the same upstream bytes are framed the same way whatever the
//! scheme.
//!
//! Why not hyper's client: its h1 dispatcher (connection state machine, the channel between
//! request and connection, want/giver) cost about a third of all the instructions of a
//! proxied keep-alive GET. An exchange here is:
//!
//! ```text
//! checkout (idle, still open, proven quiet if on probation: see pool) or connect
//!   -> write the head (with the first body frame if it is ready): one write for a GET
//!   -> stream the rest of the body, reading the response head meanwhile: an early answer
//!      (413 during an upload) is returned at once and the connection is not reused
//!   -> Response whose body reads the connection as it is polled, frames split off the
//!      read buffer without copies
//!   -> body read to its end on a reusable connection: back to the pool; otherwise closed
//! ```
//!
//! A pooled connection that fails before any byte of the response came back is the
//! keep-alive race with the upstream's idle timeout; the request is sent again once, on a
//! new connection, when that is safe (see [`Exchange::resendable`]).
//!
//! A WebSocket upgrade is an ordinary exchange: on 101 the connection, with any bytes read
//! past the head, leaves in the response as an [`UpstreamUpgrade`] for the tunnel and is
//! never pooled again; any other answer is an ordinary response on that connection.

mod body;
mod conn;
mod pool;
mod upgrade;

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::header::UPGRADE;
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tokio::io::AsyncWrite;

use crate::body::{BoxError, ProxyBody};
use crate::http1::client::{
    FramingError, RequestFraming, ResponseHead, ResponseHeadError, encode_request_head,
    parse_response_head,
};
use crate::http1::{CHUNK_TERMINATOR, DecodeError, encode_chunk_header, encode_last_chunk};

use body::ResponseBody;
use conn::{Conn, Connector};
use pool::IdleConns;
pub use upgrade::UpstreamUpgrade;

/// Room made before each read of a response head.
const HEAD_READ: usize = 4 * 1024;

/// Why a request could not be sent.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be opened: the next upstream may be tried.
    Connect(io::Error),
    /// The exchange failed once the request was handed to a connection.
    Http(ExchangeError),
}

/// How an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    #[error("the request cannot be framed")]
    Framing(#[from] FramingError),
    #[error("the request body is {0} than its Content-Length")]
    BodyLength(&'static str),
    #[error("the request body failed")]
    RequestBody(#[source] BoxError),
    #[error("writing the request to the upstream failed")]
    Write(#[source] io::Error),
    #[error("reading the response from the upstream failed")]
    Read(#[source] io::Error),
    #[error("the upstream closed the connection before a complete response head")]
    Closed,
    #[error("the upstream sent an invalid response head")]
    Head(#[from] ResponseHeadError),
    #[error("the upstream sent an invalid response body")]
    Body(#[from] DecodeError),
}

/// The pools of one client factory, so routes naming the same upstream share connections.
/// Keyed by scheme, authority and trust setting: a TLS pool never hands out a connection
/// verified against another CA setting. Looked up when a config is compiled, never per
/// request.
#[derive(Debug, Default)]
pub(crate) struct Pools {
    hosts: Mutex<HashMap<PoolKey, Arc<HostPool>>>,
}

/// `upstream_ca` of the TLS pools; always `None` for plain ones, which do not depend on it.
type PoolKey = (Scheme, Authority, Option<PathBuf>);

/// The TLS side of an HTTP/1.1 client: its trust setting and the configuration built from it.
#[derive(Debug)]
pub(crate) struct TlsSetting {
    pub(crate) extra_ca: Option<PathBuf>,
    pub(crate) config: Arc<rustls::ClientConfig>,
}

impl Pools {
    /// The pool for `scheme://authority`, created on first use; https goes over `tls`.
    pub(crate) fn host(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        tls: &TlsSetting,
    ) -> Arc<HostPool> {
        let https = *scheme == Scheme::HTTPS;
        let key = (
            scheme.clone(),
            authority.clone(),
            https.then(|| tls.extra_ca.clone()).flatten(),
        );
        pool::lock(&self.hosts)
            .entry(key)
            .or_insert_with(|| {
                let tls = https.then(|| tls.config.clone());
                Arc::new(HostPool {
                    connector: Connector::new(authority.clone(), tls),
                    idle: Arc::default(),
                })
            })
            .clone()
    }
}

/// One upstream: how to open connections to it, and its idle ones.
#[derive(Debug)]
pub(crate) struct HostPool {
    connector: Connector,
    idle: Arc<IdleConns>,
}

impl HostPool {
    /// Sends `request` (origin-form URI, Host set, hop-by-hop fields removed) on a pooled or
    /// new connection and waits for the response head. `field_lines` are written after the
    /// request's fields (see [`encode_request_head`]).
    pub(crate) async fn send(
        self: &Arc<Self>,
        request: Request<ProxyBody>,
        field_lines: &[u8],
    ) -> Result<Response<ProxyBody>, SendError> {
        // Only a WebSocket handshake keeps Upgrade (the pipeline removes it otherwise).
        let upgrade = request.headers().contains_key(UPGRADE);
        let (parts, mut body) = request.into_parts();
        let framing = RequestFraming::of(
            &parts.headers,
            body.is_end_stream(),
            body.size_hint().exact(),
        )
        .map_err(|error| SendError::Http(error.into()))?;
        if body.is_end_stream() && framing.length().is_some_and(|length| length > 0) {
            // Caught before a byte goes out, rather than leaving the upstream waiting.
            return Err(SendError::Http(ExchangeError::BodyLength("shorter")));
        }
        let (mut conn, mut reused) = match self.idle.checkout().await {
            Some(conn) => (conn, true),
            None => (self.connect().await?, false),
        };
        loop {
            let failure = match self
                .exchange(conn, &parts, field_lines, framing, body, upgrade)
                .await
            {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            match failure.unsent {
                Some(unsent) if reused => {
                    tracing::debug!(error = %failure.error, "Pooled upstream connection failed before responding; sending again on a new one.");
                    body = unsent;
                    conn = self.connect().await?;
                    reused = false;
                }
                _ => return Err(SendError::Http(failure.error)),
            }
        }
    }

    /// One request on `conn`, until the response head is in.
    async fn exchange(
        self: &Arc<Self>,
        conn: Conn,
        parts: &Parts,
        field_lines: &[u8],
        framing: RequestFraming,
        body: ProxyBody,
        upgrade: bool,
    ) -> Result<Response<ProxyBody>, Failure> {
        let mut exchange = Exchange::new(conn, parts, field_lines, framing, body);
        let head = std::future::poll_fn(|cx| exchange.poll_head(cx, &parts.method)).await;
        match head {
            Ok(head) => Ok(exchange.into_response(head, self.clone(), upgrade)),
            Err(error) => Err(Failure {
                unsent: exchange.resendable(&parts.method),
                error,
            }),
        }
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        self.connector.connect().await.map_err(SendError::Connect)
    }
}

/// An exchange that failed before its response head, with the request body if the request
/// may be sent again.
struct Failure {
    error: ExchangeError,
    unsent: Option<ProxyBody>,
}

/// How the rest of the request body goes out.
#[derive(Debug, Clone, Copy)]
enum Upload {
    /// Nothing to send: the body is complete and framed as empty (never polled).
    Nothing,
    /// Exactly this many more bytes.
    Length(u64),
    Chunked,
}

/// Why sending the request stopped.
enum SendFailure {
    Write(io::Error),
    Exchange(ExchangeError),
}

/// One request and its response on a connection. The future waiting for the response
/// head drives it first, then the response body: both keep sending the request body while
/// they read, so an upload and its response can overlap.
#[derive(Debug)]
struct Exchange {
    conn: Conn,
    /// A body frame being written, after `conn.write_buf`.
    data: Bytes,
    /// Framing written after `data` (the chunk's CRLF, possibly the last chunk too).
    tail: &'static [u8],
    /// The request body until it has ended; a complete body is kept unpolled, so the
    /// request can be sent again.
    body: Option<ProxyBody>,
    upload: Upload,
    body_polled: bool,
    /// The body's end (and its framing) has been encoded.
    body_ended: bool,
    /// The whole request went out.
    sent: bool,
    /// Some request byte was accepted by the socket.
    wrote: bool,
    /// Sending failed; the response may still come, but the connection is done after it.
    write_error: Option<io::Error>,
    /// Some response byte came in.
    received: bool,
}

impl Exchange {
    fn new(
        mut conn: Conn,
        parts: &Parts,
        field_lines: &[u8],
        framing: RequestFraming,
        body: ProxyBody,
    ) -> Self {
        let target = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        conn.write_buf.clear();
        encode_request_head(
            &parts.method,
            target,
            &parts.headers,
            field_lines,
            framing,
            &mut conn.write_buf,
        );
        let upload = match framing {
            RequestFraming::Empty => Upload::Nothing,
            RequestFraming::Declared(0) | RequestFraming::Sized(0) if body.is_end_stream() => {
                Upload::Nothing
            }
            RequestFraming::Declared(length) | RequestFraming::Sized(length) => {
                Upload::Length(length)
            }
            RequestFraming::Chunked => Upload::Chunked,
        };
        Self {
            conn,
            data: Bytes::new(),
            tail: b"",
            body: Some(body),
            upload,
            body_polled: false,
            body_ended: matches!(upload, Upload::Nothing),
            sent: false,
            wrote: false,
            write_error: None,
            received: false,
        }
    }

    /// The request body, if the failed request may go out again on another connection:
    /// nothing of the response came back, the body was never polled (so it is whole), and
    /// either the method is idempotent or no byte of the request was written.
    fn resendable(&mut self, method: &Method) -> Option<ProxyBody> {
        let safe = !self.received && !self.body_polled && (method.is_idempotent() || !self.wrote);
        if safe { self.body.take() } else { None }
    }

    /// Sends what it can, then reads until the final response head is in.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
    ) -> Poll<Result<ResponseHead, ExchangeError>> {
        if let Err(error) = self.poll_upload(cx) {
            return Poll::Ready(Err(error));
        }
        let mut parse = !self.conn.read_buf.is_empty();
        loop {
            if parse && let Some(head) = parse_response_head(&mut self.conn.read_buf, method)? {
                return Poll::Ready(Ok(head));
            }
            let before = self.conn.read_buf.len();
            let read = match ready!(self.conn.poll_read(cx, HEAD_READ)) {
                Ok(read) => read,
                Err(error) => return Poll::Ready(Err(self.failed_before_head(Some(error)))),
            };
            if read == 0 {
                return Poll::Ready(Err(self.failed_before_head(None)));
            }
            self.received = true;
            // A head can only have ended if a line did.
            parse = self.conn.read_buf[before..].contains(&b'\n');
        }
    }

    /// The error for a connection that ended (or failed to read) before the response head.
    /// A failed write says more than the read that followed it.
    fn failed_before_head(&mut self, read_error: Option<io::Error>) -> ExchangeError {
        match (self.write_error.take(), read_error) {
            (Some(write_error), _) => ExchangeError::Write(write_error),
            (None, Some(read_error)) => ExchangeError::Read(read_error),
            (None, None) => ExchangeError::Closed,
        }
    }

    /// Moves the request forward without waiting for it. A write error does not end the
    /// exchange: the upstream may have answered before it stopped reading (413 during an
    /// upload), so reading goes on and the connection is not reused.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Result<(), ExchangeError> {
        if self.sent || self.write_error.is_some() {
            return Ok(());
        }
        match self.poll_send(cx) {
            Poll::Ready(Ok(())) | Poll::Pending => Ok(()),
            Poll::Ready(Err(SendFailure::Write(error))) => {
                tracing::debug!(%error, "Writing the request to the upstream failed.");
                self.write_error = Some(error);
                // A body never polled stays, so the request can still be sent again.
                if self.body_polled {
                    self.body = None;
                }
                self.data = Bytes::new();
                self.tail = b"";
                Ok(())
            }
            Poll::Ready(Err(SendFailure::Exchange(error))) => Err(error),
        }
    }

    /// Writes the encoded bytes and pulls body frames until the request is sent or blocked.
    /// A frame is pulled before the pending bytes are written, so the head and the first
    /// frame go out in one write; the next frame only once the last one is written.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendFailure>> {
        loop {
            let mut body_pending = false;
            if !self.body_ended && self.data.is_empty() {
                match self.poll_body(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(error)) => {
                        return Poll::Ready(Err(SendFailure::Exchange(error)));
                    }
                    Poll::Pending => body_pending = true,
                }
            }
            if self.conn.write_buf.is_empty() && self.data.is_empty() && self.tail.is_empty() {
                if self.body_ended {
                    self.sent = true;
                    return Poll::Ready(Ok(()));
                }
                if body_pending {
                    return Poll::Pending;
                }
                continue;
            }
            ready!(self.poll_flush(cx)).map_err(SendFailure::Write)?;
        }
    }

    /// Writes `write_buf`, `data` and `tail`, in that order, with one vectored write each
    /// round.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let framing = self.conn.write_buf.len();
            if framing == 0 && self.data.is_empty() && self.tail.is_empty() {
                // A no-op on a plain socket; pushes out what a TLS session still holds.
                return Pin::new(&mut self.conn.stream).poll_flush(cx);
            }
            let stream = Pin::new(&mut self.conn.stream);
            let written = if self.data.is_empty() && self.tail.is_empty() {
                ready!(stream.poll_write(cx, &self.conn.write_buf))?
            } else {
                let slices = [
                    IoSlice::new(&self.conn.write_buf),
                    IoSlice::new(&self.data),
                    IoSlice::new(self.tail),
                ];
                ready!(stream.poll_write_vectored(cx, &slices))?
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wrote = true;
            let from_framing = written.min(framing);
            self.conn.write_buf.advance(from_framing);
            let rest = written - from_framing;
            let from_data = rest.min(self.data.len());
            self.data.advance(from_data);
            self.tail = &self.tail[rest - from_data..];
        }
    }

    /// Pulls one frame from the request body and encodes its framing.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        self.body_polled = true;
        let frame = match ready!(Pin::new(&mut *body).poll_frame(cx)) {
            None => return Poll::Ready(self.end_body(None)),
            Some(Err(error)) => return Poll::Ready(Err(ExchangeError::RequestBody(error))),
            Some(Ok(frame)) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            // Trailers are the last frame. Only the chunked coding can carry them.
            Err(frame) => return Poll::Ready(self.end_body(frame.into_trailers().ok().as_ref())),
        };
        let end = body.is_end_stream();
        if !data.is_empty() {
            match &mut self.upload {
                Upload::Length(remaining) => {
                    let Some(left) = remaining.checked_sub(data.len() as u64) else {
                        return Poll::Ready(Err(ExchangeError::BodyLength("longer")));
                    };
                    *remaining = left;
                }
                Upload::Chunked => {
                    encode_chunk_header(data.len(), &mut self.conn.write_buf);
                    // The last chunk rides along with the last data frame.
                    self.tail = if end {
                        b"\r\n0\r\n\r\n"
                    } else {
                        CHUNK_TERMINATOR
                    };
                }
                Upload::Nothing => return Poll::Ready(Err(ExchangeError::BodyLength("longer"))),
            }
            self.data = data;
            if end && matches!(self.upload, Upload::Chunked) {
                self.finish_body();
                return Poll::Ready(Ok(()));
            }
        }
        if end {
            return Poll::Ready(self.end_body(None));
        }
        Poll::Ready(Ok(()))
    }

    /// Encodes the end of the body: the last chunk, or a check that the declared length
    /// was met.
    fn end_body(&mut self, trailers: Option<&http::HeaderMap>) -> Result<(), ExchangeError> {
        match self.upload {
            Upload::Length(0) | Upload::Nothing => {}
            Upload::Length(_) => return Err(ExchangeError::BodyLength("shorter")),
            Upload::Chunked => encode_last_chunk(trailers, &mut self.conn.write_buf),
        }
        self.finish_body();
        Ok(())
    }

    fn finish_body(&mut self) {
        self.body_ended = true;
        self.body = None;
    }

    /// The response for `head`, whose body reads the rest of the exchange. A 101 to a
    /// WebSocket handshake carries the connection instead (see [`UpstreamUpgrade`]).
    fn into_response(
        self,
        head: ResponseHead,
        pool: Arc<HostPool>,
        upgrade: bool,
    ) -> Response<ProxyBody> {
        let ResponseHead {
            status,
            version,
            headers,
            reason,
            body: decoder,
            keep_alive,
            no_body,
            interim,
        } = head;
        let mut upgraded = None;
        let exchange = if status == StatusCode::SWITCHING_PROTOCOLS {
            // The whole request went out (a handshake has no body), nothing failed: the
            // connection now belongs to the tunnel. Otherwise it is closed.
            if upgrade && self.sent && self.write_error.is_none() {
                upgraded = Some(UpstreamUpgrade::new(upgrade::upgraded(self.conn)));
            }
            None
        } else {
            Some(self)
        };
        // A response that came before the whole request went out ends the connection: the
        // upstream may not read the rest.
        let reusable = keep_alive && exchange.as_ref().is_some_and(|exchange| exchange.sent);
        // Bytes after a response that has no body, or after interim responses, are likelier
        // than after any other: see the pool's probation.
        let body = ResponseBody::new(exchange, decoder, reusable, no_body || interim, pool);
        // Boxed as is: its error type is already the proxy's, no adapter needed.
        let mut response = Response::new(ProxyBody::new(body));
        if let Some(upgraded) = upgraded {
            response.extensions_mut().insert(upgraded);
        }
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        if let Some(reason) = reason
            && let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason)
        {
            // hyper's server writes it to the client, as the hyper client kept it.
            response.extensions_mut().insert(reason);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::empty;
    use std::time::Duration;
    use tokio::net::TcpStream;

    /// A connection whose peer has reset it: any write fails.
    async fn reset_connection() -> Conn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        socket2::SockRef::from(&peer)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(peer);
        // Let the reset arrive and the reactor see it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn::plain(stream)
    }

    async fn exchange_on_reset_connection(method: Method) -> Failure {
        let pool = Arc::new(HostPool {
            connector: Connector::new(Authority::from_static("127.0.0.1:1"), None),
            idle: Arc::default(),
        });
        let (parts, body) = Request::builder()
            .method(method)
            .uri("/x")
            .body(empty())
            .unwrap()
            .into_parts();
        let conn = reset_connection().await;
        match pool
            .exchange(conn, &parts, b"", RequestFraming::Empty, body, false)
            .await
        {
            Ok(response) => panic!("a reset connection answered: {response:?}"),
            Err(failure) => failure,
        }
    }

    /// An idle connection swept in the pool holds no read buffer: the next exchange on it
    /// must still write the request exactly and read a head split across reads and a chunked
    /// body byte for byte, and the connection must go back to the pool afterwards.
    #[tokio::test]
    async fn an_exchange_on_a_connection_whose_buffer_was_released_reads_every_byte() {
        use http_body_util::BodyExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut peer, _) = listener.accept().await.unwrap();
        let idle: Arc<pool::IdleConns> = Arc::default();
        idle.checkin(conn::plain(stream), false);
        idle.sweep();
        let conn = idle.checkout().await.unwrap();
        assert_eq!(conn.read_buf.capacity(), 0);

        let upstream = tokio::spawn(async move {
            let mut request = Vec::new();
            let mut chunk = [0u8; 256];
            while !request.ends_with(b"\r\n\r\n") {
                let n = peer.read(&mut chunk).await.unwrap();
                assert!(n > 0, "request ended early: {request:?}");
                request.extend_from_slice(&chunk[..n]);
            }
            for part in [
                &b"HTTP/1.1 200 OK\r\ntransfer-enc"[..],
                b"oding: chunked\r\n\r\n5\r\nhel",
                b"lo\r\n6\r\n world\r\n0\r\n\r\n",
            ] {
                peer.write_all(part).await.unwrap();
                peer.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            (request, peer)
        });
        let pool = Arc::new(HostPool {
            connector: Connector::new(Authority::from_static("127.0.0.1:1"), None),
            idle: idle.clone(),
        });
        let (parts, body) = Request::builder()
            .uri("/x")
            .header("host", "up")
            .body(empty())
            .unwrap()
            .into_parts();
        let response = pool
            .exchange(conn, &parts, b"", RequestFraming::Empty, body, false)
            .await
            .unwrap_or_else(|failure| panic!("no response: {:?}", failure.error));
        assert_eq!(response.status(), 200);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello world");
        let (request, _peer) = upstream.await.unwrap();
        assert_eq!(request, b"GET /x HTTP/1.1\r\nhost: up\r\n\r\n");
        assert!(idle.checkout().await.is_some(), "back in the pool");
    }

    #[tokio::test]
    async fn request_whose_write_failed_may_be_sent_again_whatever_its_method() {
        for method in [Method::GET, Method::POST] {
            let failure = exchange_on_reset_connection(method.clone()).await;
            assert!(
                matches!(failure.error, ExchangeError::Write(_)),
                "{method}: {:?}",
                failure.error
            );
            assert!(
                failure.unsent.is_some(),
                "{method}: nothing was written, so the request can go out again"
            );
        }
    }
}
