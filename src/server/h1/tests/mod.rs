//! The connection loop over an in-memory pipe (`tokio::io::duplex`) on paused time, with a
//! scripted handler instead of the gateway. Here: the handler and the client end of a
//! connection; `timers` (header_read_timeout, idle_timeout) and `exchanges` (keep-alive,
//! pipelining, HTTP/1.0, `Expect: 100-continue`, unread bodies and the lingering close, the
//! upgrade hand-off, the drain, refused heads, response framing) are the tests.
//!
//! Time moves only when a test says so (`tokio::time::advance`), so every timer is checked
//! at its edge: open 1 ms before the deadline, closed at it. Between steps the test only
//! yields (`settle`), which lets the connection task run without moving the clock.

mod exchanges;
mod timers;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use super::body::{LINGER_BYTES, LINGER_TIME};
use super::*;
use crate::body::{BoxError, ProxyBody, full};
use crate::headers::RequestId;
use crate::http1::request::RequestLimits;
use crate::pipeline::ErrorAnswer;

const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const MS: Duration = Duration::from_millis(1);
/// The request id the scripted 401 carries (a generated one would differ per run).
const REQUEST_ID: &str = "test-request-id";

// =============================================================================================
// The scripted handler
// =============================================================================================

/// Answers by path, and records what it was asked.
#[derive(Debug, Default)]
struct Script {
    draining: AtomicBool,
    /// `METHOD target` of every request, in order.
    seen: Mutex<Vec<String>>,
    /// `/wait` answers once this is notified.
    release: Notify,
    /// `/slow-stream` and `/counted-stream` send their second frame once this is notified.
    stream_gate: Arc<Notify>,
    /// How often the connection polled `/counted-stream`'s body.
    stream_polls: Arc<AtomicUsize>,
    /// The connection `/upgrade` got; the test takes it.
    upgraded: Mutex<Option<oneshot::Receiver<io::Result<Upgraded>>>>,
}

impl Handler for Script {
    fn answer(
        self: &Arc<Self>,
        _conn: &Arc<ConnInfo>,
        request: Request<ProxyBody>,
    ) -> impl Future<Output = Answer> + Send {
        let script = self.clone();
        async move { script.run(request).await }
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

impl Script {
    async fn run(&self, request: Request<ProxyBody>) -> Answer {
        let target = request.uri().to_string();
        self.seen
            .lock()
            .unwrap()
            .push(format!("{} {target}", request.method()));
        match request.uri().path() {
            // Reads the body to its end and sends it back.
            "/echo" => match request.into_body().collect().await {
                Ok(body) => ok(full(body.to_bytes())),
                Err(error) => ok(full(format!("body error: {error}"))),
            },
            // Answers without reading the body (the request is dropped here).
            "/ignore" => ok(full("ignored")),
            // An answer authgate gives itself, which does not close by its own choice.
            "/401" => {
                let mut answer = ErrorAnswer::for_head(GatewayError::AuthMissing);
                answer.close = false;
                answer.request_id = request_id(REQUEST_ID);
                Answer::Error(answer)
            }
            "/stream" => {
                let pieces =
                    ["one", "two"].map(|piece| Ok::<_, BoxError>(Frame::data(Bytes::from(piece))));
                ok(crate::body::boxed(StreamBody::new(
                    futures_util::stream::iter(pieces),
                )))
            }
            // A stream that waits between its frames, as SSE does.
            "/slow-stream" => ok(slow_stream(&self.stream_gate)),
            // The same, counting the polls of its body.
            "/counted-stream" => ok(crate::body::boxed(CountedPolls {
                inner: slow_stream(&self.stream_gate),
                polls: self.stream_polls.clone(),
            })),
            // The head says 5 bytes; a 204 has none, and says nothing about a length.
            "/204" => {
                let mut response = Response::new(full("12345"));
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("5"));
                Answer::Response(response)
            }
            // An allowed forward-auth check: its identity's fields come serialized.
            "/allowed" => Answer::Allowed(crate::pipeline::AllowedAnswer::unrecorded(
                Bytes::from_static(b"x-auth-method: api_key\r\nx-auth-user-id: \r\n"),
                request_id(REQUEST_ID),
            )),
            "/wait" => {
                self.release.notified().await;
                ok(full("waited"))
            }
            "/upgrade" => {
                let Some(upgrade) = request.extensions().get::<ClientUpgrade>().cloned() else {
                    return ok(full("no upgrade offered"));
                };
                let (tx, rx) = oneshot::channel();
                *self.upgraded.lock().unwrap() = Some(rx);
                tokio::spawn(async move {
                    let _ = tx.send(upgrade.await);
                });
                let mut response = Response::new(empty());
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                response
                    .headers_mut()
                    .insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
                Answer::Response(response)
            }
            _ => ok(full("hello")),
        }
    }
}

/// "one" at once, then "two" once `gate` is notified, then the end.
fn slow_stream(gate: &Arc<Notify>) -> ProxyBody {
    let gate = gate.clone();
    let frames = futures_util::stream::unfold(0u8, move |step| {
        let gate = gate.clone();
        async move {
            let frame = match step {
                0 => "one",
                1 => {
                    gate.notified().await;
                    "two"
                }
                _ => return None,
            };
            Some((Ok::<_, BoxError>(Frame::data(Bytes::from(frame))), step + 1))
        }
    });
    crate::body::boxed(StreamBody::new(frames))
}

/// A body that counts how often it is polled: a poll that finds nothing new is a wake-up
/// of the connection task for nothing.
struct CountedPolls {
    inner: ProxyBody,
    polls: Arc<AtomicUsize>,
}

impl http_body::Body for CountedPolls {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }
}

fn ok(body: ProxyBody) -> Answer {
    Answer::Response(Response::new(body))
}

/// `id` as a request id (the one way to make one from text is a client's header).
fn request_id(id: &str) -> RequestId {
    let mut headers = HeaderMap::new();
    headers.insert("x-request-id", HeaderValue::from_str(id).unwrap());
    RequestId::from_client(&headers).unwrap()
}

// =============================================================================================
// A connection to drive
// =============================================================================================

/// The client end of one served connection.
#[derive(Debug)]
struct Client {
    io: DuplexStream,
    script: Arc<Script>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// The server closed its side (the client read EOF).
    closed: bool,
}

fn settings(header_timeout: Duration, idle_timeout: Duration) -> Settings {
    Settings {
        limits: RequestLimits::default(),
        header_timeout,
        idle_timeout,
    }
}

fn conn_info() -> Arc<ConnInfo> {
    let peer: std::net::SocketAddr = ([192, 0, 2, 7], 40000).into();
    let slot = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
    Arc::new(ConnInfo {
        peer,
        peer_header: crate::headers::peer_header(peer.ip()),
        tls: false,
        activity: None,
        slot: Arc::new(slot),
        tunnels: Arc::default(),
    })
}

impl Client {
    /// A connection served with `settings` from now on (the task has started: its timers
    /// count from this instant, not from whenever the test first yields).
    async fn start(settings: Settings) -> Self {
        Self::start_with(settings, "").await
    }

    /// The same, with `read_already` in the buffer the loop starts with, as the bytes the
    /// accept side read to tell HTTP/1 from HTTP/2.
    async fn start_with(settings: Settings, read_already: &str) -> Self {
        // Bigger than any response here: the server never waits for the client to read.
        let (io, server) = tokio::io::duplex(256 * 1024);
        let (rd, wr) = tokio::io::split(server);
        let script = Arc::new(Script::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut buf = BytesMut::with_capacity(8 * 1024);
        buf.extend_from_slice(read_already.as_bytes());
        let task = tokio::spawn(serve(
            rd,
            wr,
            buf,
            conn_info(),
            script.clone(),
            shutdown_rx,
            settings,
        ));
        settle().await;
        Self {
            io,
            script,
            shutdown,
            task,
            closed: false,
        }
    }

    async fn with_timeouts() -> Self {
        Self::start(settings(HEADER_TIMEOUT, IDLE_TIMEOUT)).await
    }

    /// Writes `bytes` (a server that stopped reading may refuse them: that is not an error),
    /// and lets the connection task see them before the clock moves on.
    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let _ = self.io.write_all(bytes.as_ref()).await;
        settle().await;
    }

    /// Lets the connection task run until it waits again (time does not move), then takes
    /// what it wrote; notes whether it closed.
    async fn output(&mut self) -> String {
        settle().await;
        let mut out = Vec::new();
        let mut chunk = vec![0; 64 * 1024];
        while !self.closed {
            match self.io.read(&mut chunk).now_or_never() {
                Some(Ok(0) | Err(_)) => self.closed = true,
                Some(Ok(n)) => out.extend_from_slice(&chunk[..n]),
                None => break,
            }
        }
        without_date(&String::from_utf8_lossy(&out))
    }

    /// Asserts that nothing came and the connection is still open.
    async fn assert_quiet(&mut self, context: &str) {
        assert_eq!(self.output().await, "", "{context}");
        assert!(!self.closed, "{context}: closed");
    }

    /// Asserts that the connection closed without writing anything more.
    async fn assert_closed_silently(&mut self, context: &str) {
        assert_eq!(self.output().await, "", "{context}");
        assert!(self.closed, "{context}: still open");
    }

    /// Asserts that the connection closes without writing anything exactly `wait` from now:
    /// still open 1 ms before (`what`: the timeout, for the messages).
    async fn assert_closes_after(&mut self, wait: Duration, what: &str) {
        tokio::time::advance(wait - MS).await;
        self.assert_quiet(&format!("1 ms before {what}")).await;
        tokio::time::advance(MS).await;
        self.assert_closed_silently(&format!("at {what}")).await;
    }

    /// The requests the handler saw.
    fn seen(&self) -> Vec<String> {
        self.script.seen.lock().unwrap().clone()
    }

    /// What the gateway does on SIGTERM, for one connection: drain, then signal.
    fn shut_down(&self) {
        self.script.draining.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
    }
}

/// Yields often enough for the connection task (and what it spawned) to run until it waits.
async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

/// Response bytes without their `date` lines (the only part that depends on the wall clock);
/// every head must have had exactly one.
fn without_date(text: &str) -> String {
    let heads = text.matches("HTTP/1.1 ").count() - text.matches("HTTP/1.1 100 ").count();
    let dates = text.matches("\r\ndate: ").count();
    assert_eq!(dates, heads, "one date per final response head: {text:?}");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\r\ndate: ") {
        out.push_str(&rest[..at]);
        let line_end = rest[at + 2..]
            .find("\r\n")
            .map_or(rest.len(), |end| at + 2 + end);
        rest = &rest[line_end..];
    }
    out.push_str(rest);
    out
}

fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: h1.test\r\n\r\n")
}

/// The bytes of a 200 with a length-framed body (`extra`: the connection's field, if any).
fn ok_bytes(body: &str, extra: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// The bytes of an answer authgate writes itself, with `id` as its request id.
fn error_bytes(error: &GatewayError, id: &str, extra: &str) -> String {
    let body = error.json_body(&request_id(id));
    let status = error.status();
    let challenge = error
        .extra_header()
        .map(|(name, value)| format!("{name}: {}\r\n", value.to_str().unwrap()))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n{challenge}x-request-id: {id}\r\n\
         content-length: {}\r\n{extra}\r\n{}",
        status.as_str(),
        status.canonical_reason().unwrap(),
        body.len(),
        String::from_utf8(body).unwrap()
    )
}

/// The `x-request-id` a response carries.
fn id_of(response: &str) -> &str {
    let start = response.find("x-request-id: ").unwrap() + "x-request-id: ".len();
    let end = start + response[start..].find("\r\n").unwrap();
    &response[start..end]
}
