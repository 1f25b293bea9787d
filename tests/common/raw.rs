//! Raw-socket test kit: a client connection that writes bytes exactly as given and parses the
//! responses off the wire, a hand-written upstream that records the request heads it reads,
//! and the gateways put between them. For tests about bytes that an ordinary HTTP client or
//! server would normalize or refuse before a test could see them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::Duration;

use authgate::http1::BodyDecoder;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{TestGateway, TestPki, key_record, public_route, status_of};

/// Bound on any single wait for bytes from the gateway.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on waiting for the gateway to close a connection it should close.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

// =============================================================================================
// Panics anywhere but in the test code
// =============================================================================================

static GATEWAY_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static PANIC_HOOK: Once = Once::new();

/// Records every panic whose location is outside `tests/` (the gateway's code or a library
/// it calls); connection tasks swallow panics, so this is the only way to see them. The
/// gateway helpers below turn it on; `assert_no_gateway_panics` checks.
pub fn watch_for_gateway_panics() {
    PANIC_HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info
                .location()
                .is_some_and(|location| location.file().contains("tests/"));
            if !in_tests {
                GATEWAY_PANICS
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(info.to_string());
            }
            default(info);
        }));
    });
}

#[track_caller]
pub fn assert_no_gateway_panics() {
    let panics = GATEWAY_PANICS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert!(panics.is_empty(), "the gateway panicked: {panics:#?}");
}

// =============================================================================================
// Raw client
// =============================================================================================

/// One response as read off the wire.
#[derive(Debug, Default)]
pub struct RawResponse {
    pub status: u16,
    /// The status line and header lines, as sent.
    pub head: String,
    /// Header names lowercased, values trimmed, in wire order.
    pub headers: Vec<(String, String)>,
    /// The decoded body (chunked framing removed).
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
    /// The body had no length and no chunking: it ended with the connection.
    pub close_delimited: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }

    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn connection_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    /// `error.code` of a JSON error body ("" otherwise).
    pub fn code(&self) -> String {
        self.json()
            .and_then(|json| json["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Asserts a gateway error: status, JSON content type, `error.code`, a request id and a
    /// Date header.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str, context: &str) {
        assert_eq!(self.status, status, "{context}: {self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{context}: {self:?}"
        );
        assert_eq!(self.code(), code, "{context}: {self:?}");
        assert!(self.header("x-request-id").is_some(), "{context}: {self:?}");
        self.assert_date(context);
    }

    /// Asserts exactly one Date header, holding an HTTP date.
    #[track_caller]
    pub fn assert_date(&self, context: &str) {
        assert_eq!(self.header_count("date"), 1, "{context}: {self:?}");
        let date = self.header("date").unwrap();
        assert!(
            httpdate::parse_http_date(date).is_ok(),
            "{context}: not an HTTP date: {date:?}"
        );
    }
}

/// How a connection ended when we waited for the gateway to close it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Eof,
    Reset,
    StillOpen,
    MoreData(Vec<u8>),
}

impl Ended {
    pub fn closed(&self) -> bool {
        matches!(self, Self::Eof | Self::Reset)
    }
}

enum Filled {
    Data,
    Eof,
    Reset,
    Timeout,
}

/// A raw client connection: writes bytes, reads responses (several, for keep-alive), and
/// watches for the close. Generic over the stream so that the same client runs over TLS.
#[derive(Debug)]
pub struct RawConn<S = TcpStream> {
    stream: S,
    /// Bytes read but not yet consumed by a parsed response.
    pub buf: Vec<u8>,
    /// Every byte ever read, for scans (e.g. "no 100 Continue was ever sent").
    pub received: Vec<u8>,
}

impl RawConn<TcpStream> {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        // Each write goes out as the test wrote it, not merged with the next one.
        stream.set_nodelay(true).unwrap();
        Self::over(stream)
    }

    /// One request on a fresh connection; the response and the connection.
    pub async fn exchange(
        addr: SocketAddr,
        bytes: impl AsRef<[u8]>,
    ) -> (Option<RawResponse>, Self) {
        let mut conn = Self::connect(addr).await;
        conn.send(bytes).await;
        let response = conn.read_response().await;
        (response, conn)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawConn<S> {
    pub fn over(stream: S) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            received: Vec::new(),
        }
    }

    /// Writes, ignoring errors (the gateway may close early on purpose).
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let _ = self.stream.write_all(bytes.as_ref()).await;
        let _ = self.stream.flush().await;
    }

    /// Half-closes the write side (the client says it sends nothing more).
    pub async fn finish_writing(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    async fn fill_within(&mut self, limit: Duration) -> Filled {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(limit, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) => Filled::Eof,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                self.received.extend_from_slice(&chunk[..n]);
                Filled::Data
            }
            // tokio-rustls reports a close without close_notify as an error too.
            Ok(Err(_)) => Filled::Reset,
            Err(_) => Filled::Timeout,
        }
    }

    /// Reads more bytes into `buf`; false on EOF, error or timeout.
    pub async fn fill(&mut self) -> bool {
        matches!(self.fill_within(READ_TIMEOUT).await, Filled::Data)
    }

    /// Reads one response; `None` if no complete head came.
    pub async fn read_response(&mut self) -> Option<RawResponse> {
        self.read_response_inner(false).await
    }

    /// Reads the response to a HEAD request: whatever its headers say, no body follows.
    pub async fn read_head_response(&mut self) -> Option<RawResponse> {
        self.read_response_inner(true).await
    }

    /// The body is framed as RFC 9112 §6.3 says: none for HEAD, 1xx, 204 and 304; chunked
    /// before Content-Length; otherwise until the connection closes.
    async fn read_response_inner(&mut self, to_head: bool) -> Option<RawResponse> {
        let head_end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status = status_of(lines.next().unwrap_or_default());
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut response = RawResponse {
            status,
            head,
            headers,
            ..RawResponse::default()
        };
        let bodiless = to_head || (100..200).contains(&status) || status == 204 || status == 304;
        if bodiless {
            return Some(response);
        }
        if response
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            let (body, trailers) = self.read_chunked().await;
            response.body = body;
            response.trailers = trailers;
        } else if let Some(length) = response
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            while self.buf.len() < length {
                if !self.fill().await {
                    break;
                }
            }
            let take = length.min(self.buf.len());
            response.body = self.buf.drain(..take).collect();
        } else {
            while self.fill().await {}
            response.body = std::mem::take(&mut self.buf);
            response.close_delimited = true;
        }
        Some(response)
    }

    /// The next CRLF-terminated line (without its CRLF); `None` on EOF.
    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(at) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                self.buf.drain(..at + 2);
                return Some(line);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn read_chunked(&mut self) -> (Vec<u8>, Vec<(String, String)>) {
        let mut body = Vec::new();
        loop {
            let Some(line) = self.line().await else {
                return (body, Vec::new());
            };
            let size_text = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .unwrap_or_else(|_| panic!("bad chunk size line from the gateway: {line:?}"));
            if size == 0 {
                let mut trailers = Vec::new();
                while let Some(line) = self.line().await {
                    if line.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        trailers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
                    }
                }
                return (body, trailers);
            }
            while self.buf.len() < size + 2 {
                if !self.fill().await {
                    return (body, Vec::new());
                }
            }
            body.extend_from_slice(&self.buf[..size]);
            assert_eq!(
                &self.buf[size..size + 2],
                b"\r\n",
                "chunk data not followed by CRLF"
            );
            self.buf.drain(..size + 2);
        }
    }

    /// Waits up to `limit` for the gateway to close the connection.
    pub async fn wait_closed_within(&mut self, limit: Duration) -> Ended {
        if !self.buf.is_empty() {
            return Ended::MoreData(std::mem::take(&mut self.buf));
        }
        match self.fill_within(limit).await {
            Filled::Eof => Ended::Eof,
            Filled::Reset => Ended::Reset,
            Filled::Timeout => Ended::StillOpen,
            Filled::Data => Ended::MoreData(std::mem::take(&mut self.buf)),
        }
    }

    pub async fn wait_closed(&mut self) -> Ended {
        self.wait_closed_within(CLOSE_TIMEOUT).await
    }

    pub async fn assert_closed(&mut self, context: &str) {
        let ended = self.wait_closed().await;
        assert!(
            ended.closed(),
            "{context}: the gateway did not close the connection: {ended:?}"
        );
    }
}

/// One request on a fresh connection; the connection is dropped after the response.
pub async fn raw_once(addr: SocketAddr, request: impl AsRef<[u8]>) -> Option<RawResponse> {
    RawConn::exchange(addr, request).await.0
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

// =============================================================================================
// Raw upstream
// =============================================================================================

/// An upstream speaking HTTP/1.1 by hand: `serve` runs for each accepted connection, and
/// every request head it reads is recorded as it came off the wire.
#[derive(Debug)]
pub struct RawUpstream {
    pub addr: SocketAddr,
    /// Every request head read, with the number of the connection it came on (0 first).
    heads: Arc<Mutex<Vec<(usize, String)>>>,
    connections: Arc<AtomicUsize>,
}

impl RawUpstream {
    pub async fn start<F, Fut>(serve: F) -> Self
    where
        F: Fn(Peer) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::start_with(None, serve).await
    }

    /// Answers every request (bodiless requests only: a body would be read as the next head)
    /// with `respond(head)`, on keep-alive connections.
    pub async fn answering<F>(respond: F) -> Self
    where
        F: Fn(&str) -> Vec<u8> + Send + Sync + 'static,
    {
        let respond = Arc::new(respond);
        Self::start(move |mut peer| {
            let respond = respond.clone();
            async move {
                while let Some(head) = peer.head().await {
                    peer.send(&respond(&head)).await;
                }
            }
        })
        .await
    }

    /// Speaks TLS (certificate for localhost from `pki`) before HTTP/1.1.
    pub async fn start_tls<F, Fut>(pki: &TestPki, serve: F) -> Self
    where
        F: Fn(Peer) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config());
        Self::start_with(Some(acceptor), serve).await
    }

    async fn start_with<F, Fut>(tls: Option<tokio_rustls::TlsAcceptor>, serve: F) -> Self
    where
        F: Fn(Peer) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let serve = Arc::new(serve);
        let (seen, count) = (heads.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                stream.set_nodelay(true).unwrap();
                let conn = count.fetch_add(1, Ordering::SeqCst);
                let (tls, seen, serve) = (tls.clone(), seen.clone(), serve.clone());
                tokio::spawn(async move {
                    let stream: Box<dyn Io> = match tls {
                        None => Box::new(stream),
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => Box::new(stream),
                            // A client that does not trust the certificate gives up here.
                            Err(_) => return,
                        },
                    };
                    let peer = Peer {
                        stream,
                        buf: BytesMut::new(),
                        conn,
                        heads: seen,
                    };
                    serve(peer).await;
                });
            }
        });
        Self {
            addr,
            heads,
            connections,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Every request head read so far (each ending with its blank line), with the number of
    /// its connection.
    pub fn heads(&self) -> Vec<(usize, String)> {
        self.heads.lock().unwrap().clone()
    }

    /// The request target of every head read so far, in order.
    pub fn targets(&self) -> Vec<String> {
        self.heads()
            .iter()
            .filter_map(|(_, head)| head.split(' ').nth(1).map(str::to_owned))
            .collect()
    }
}

/// A plain or TLS upstream connection.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One upstream connection, as `RawUpstream::start` hands it to its script.
pub struct Peer {
    /// The connection itself, for a script that takes it over (e.g. after a 101).
    pub stream: Box<dyn Io>,
    /// Bytes read but not yet consumed as a head or a body.
    pub buf: BytesMut,
    /// The number of this connection (0 first).
    pub conn: usize,
    heads: Arc<Mutex<Vec<(usize, String)>>>,
}

impl Peer {
    /// The next request head (recorded), or `None` once the gateway closed the connection.
    /// Bytes that are not UTF-8 (obs-text) are kept as U+FFFD rather than ending the script.
    pub async fn head(&mut self) -> Option<String> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = self.buf.split_to(end + 4);
                let head = String::from_utf8_lossy(&head).into_owned();
                self.heads.lock().unwrap().push((self.conn, head.clone()));
                return Some(head);
            }
            if self.stream.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    /// Exactly `len` body bytes.
    pub async fn body(&mut self, len: usize) -> Vec<u8> {
        while self.buf.len() < len {
            assert!(self.stream.read_buf(&mut self.buf).await.unwrap() > 0);
        }
        self.buf.split_to(len).to_vec()
    }

    /// A chunked request body, decoded with authgate's own decoder.
    pub async fn chunked_body(&mut self) -> Vec<u8> {
        let mut decoder = BodyDecoder::chunked();
        let mut body = Vec::new();
        loop {
            while let Some(frame) = decoder.decode(&mut self.buf).unwrap() {
                body.extend_from_slice(&frame.into_data().unwrap());
            }
            if decoder.is_done() {
                return body;
            }
            assert!(self.stream.read_buf(&mut self.buf).await.unwrap() > 0);
        }
    }

    /// Writes, ignoring a gateway that already went away.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads and discards everything until the gateway closes; returns the byte count.
    pub async fn drain(&mut self) -> usize {
        let mut total = self.buf.len();
        let mut scratch = vec![0u8; 64 * 1024];
        while let Ok(read @ 1..) = self.stream.read(&mut scratch).await {
            total += read;
        }
        total
    }
}

/// The value of the field `name` (any case) in a recorded request head.
pub fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (field, value) = line.split_once(':')?;
        field.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

// =============================================================================================
// Gateways
// =============================================================================================

// Every gateway from these helpers runs with the panic watch on, so that any test can end
// with `assert_no_gateway_panics`.

/// A gateway with one public route, `pub` on `/pub/`, to `upstream` (a URL).
pub async fn gateway_to_pub(upstream: &str) -> TestGateway {
    watch_for_gateway_panics();
    TestGateway::start(&public_route("pub", "/pub/", upstream)).await
}

/// A gateway with one public route, `root` on `/`, to `upstream` (a URL): every path goes
/// there unchanged.
pub async fn gateway_to_root(upstream: &str) -> TestGateway {
    watch_for_gateway_panics();
    TestGateway::start(&public_route("root", "/", upstream)).await
}

/// A gateway with `/pub/` (public), `/private/` (API key) and `/ws/` (public, WebSocket)
/// routes to `upstream` (a URL), and `[server]` lines from `server`. Returns it with a valid
/// key for `/private/`.
pub async fn gateway_with_key_to(upstream: &str, server: &str) -> (TestGateway, String) {
    watch_for_gateway_panics();
    let key = authgate::keys::generate_key("sgk_").unwrap();
    let keys = key_record(
        &key,
        "key_id = \"k1\"\ntenant_id = \"acme\"\nuser_id = \"alice\"\nscopes = [\"inference:write\"]",
    );
    let config = format!(
        "[server]\n{server}\n[api_keys]\nfile = \"keys.toml\"\n\n{}[[routes]]\nname = \"private\"\nmatch = {{ path_prefix = \"/private/\" }}\nupstream = \"{upstream}\"\nauth = [\"api_key\"]\n\n{}websocket = true\n",
        public_route("pub", "/pub/", upstream),
        public_route("ws", "/ws/", upstream),
    );
    let gw = TestGateway::start_with_files(&config, &[("keys.toml", keys.as_bytes())]).await;
    (gw, key)
}
